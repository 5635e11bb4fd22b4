//! The socket layer over real loopback sockets. Sockets block with a read timeout, so every
//! wait is bounded and nothing sleeps.

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::time::Duration;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One received datagram, owned.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    data: Vec<u8>,
    from: SocketAddr,
    ecn: Ecn,
    dst: Option<IpAddr>,
}

/// A socket and its state; `None` when the address family is missing here (no `::1`).
struct End {
    sock: UdpSocket,
    io: UdpIo,
    batch: RecvBatch,
    /// Messages the kernel returned, over all receives (a GRO run counts once).
    messages: usize,
}

fn end(addr: &str, opts: UdpOptions) -> Option<End> {
    end_with(addr, opts, MAX_GSO_SEGMENTS, RECV_SLOT)
}

fn end_with(addr: &str, opts: UdpOptions, segments: usize, slot: usize) -> Option<End> {
    let sock = match UdpSocket::bind(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot bind {addr} ({e}); skipping");
            return None;
        }
    };
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let io = UdpIo::new(sock.as_fd(), opts, segments).unwrap();
    Some(End { sock, io, batch: RecvBatch::new(8, slot), messages: 0 })
}

impl End {
    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    #[track_caller]
    fn send(&mut self, t: &UdpTransmit<'_>) {
        let n = self.io.send(self.sock.as_raw_fd(), t).expect("send");
        assert_eq!(n, t.contents.len(), "the kernel took the whole transmit");
    }

    /// Receives until `want` datagrams came (each wait bounded by the read timeout).
    #[track_caller]
    fn recv(&mut self, want: usize) -> Vec<Got> {
        let mut got = Vec::new();
        while got.len() < want {
            let fd = self.sock.as_raw_fd();
            self.io.recv(fd, &mut self.batch, MAX_RECV_BATCH).expect("datagrams in time");
            let mut batch = self.batch.datagrams();
            self.messages += batch.messages();
            let before = got.len();
            got.extend(batch.iter().map(|d| Got {
                data: d.data.to_vec(),
                from: d.from,
                ecn: d.ecn,
                dst: d.dst,
            }));
            // The writable view splits the batch the same way.
            let mut n = 0;
            for (d, g) in batch.iter_mut().zip(&got[before..]) {
                assert_eq!((&*d.data, d.from, d.ecn, d.dst), (&g.data[..], g.from, g.ecn, g.dst));
                n += 1;
            }
            assert_eq!(n, got.len() - before, "iter_mut yields every datagram");
        }
        assert_eq!(got.len(), want, "no more datagrams than sent");
        got
    }
}

/// `n` segments of `size` bytes and a last one of `last`, each segment's bytes distinct.
fn payload(n: usize, size: usize, last: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0..size).map(move |j| (i * 31 + j) as u8))
        .chain((0..last).map(|j| (j as u8) ^ 0xa5))
        .collect()
}

fn pair(ip: &str, tx: UdpOptions, rx: UdpOptions) -> Option<(End, End)> {
    Some((end(&format!("{ip}:0"), tx)?, end(&format!("{ip}:0"), rx)?))
}

fn gso_batch_arrives_whole(ip: &str, tx_opts: UdpOptions, rx_opts: UdpOptions) {
    let Some((mut tx, mut rx)) = pair(ip, tx_opts, rx_opts) else { return };
    let data = payload(10, 1200, 500);
    let t = UdpTransmit::new(rx.addr(), &data).with_segment_size(1200);
    tx.send(&t);
    let got = rx.recv(11);
    for (g, want) in got.iter().zip(data.chunks(1200)) {
        assert_eq!(g.data, want);
        assert_eq!(g.from, tx.addr());
    }
    assert_eq!(got[10].data.len(), 500, "the short last segment arrives as it was");
    assert_eq!(tx.io.stats.datagrams_out, 11);
    assert_eq!(rx.io.stats.datagrams_in, 11);
    assert_eq!(tx.io.stats.gso_sends, u64::from(tx.io.stats.gso));
    assert_eq!(tx.io.stats.gso_fallbacks, 0);
    eprintln!(
        "{ip}: gso={} gro={} messages={} gro_batches={}",
        tx.io.stats.gso, rx.io.stats.gro, rx.messages, rx.io.stats.gro_batches
    );
    if !rx_opts.gro {
        assert_eq!(rx.messages, 11, "without GRO every datagram is its own message");
        assert_eq!(rx.io.stats.gro_batches, 0);
    }
}

#[test]
fn options_take_on_loopback_sockets_of_both_families() {
    for ip in ["127.0.0.1", "[::1]", "[::]"] {
        let opts = UdpOptions::default().dont_fragment(true);
        let Some(e) = end(&format!("{ip}:0"), opts) else { continue };
        let s = e.io.stats;
        eprintln!("{ip}: {s:?}");
        assert!(s.recv_ecn && s.recv_dst && s.dont_fragment, "{ip}: {s:?}");
        // GSO and GRO depend on the kernel (both are here, 6.x); a missing one is counted.
        assert_eq!(s.option_failures, u64::from(!s.gso) + u64::from(!s.gro), "{ip}: {s:?}");
    }
}

#[test]
fn a_gso_send_of_n_segments_arrives_as_n_datagrams_with_the_short_last_one() {
    gso_batch_arrives_whole("127.0.0.1", UdpOptions::default(), UdpOptions::default());
    gso_batch_arrives_whole("[::1]", UdpOptions::default(), UdpOptions::default());
}

#[test]
fn forced_no_gso_and_forced_no_gro_carry_the_same_datagrams() {
    let off = UdpOptions::default().gso(false).gro(false);
    for ip in ["127.0.0.1", "[::1]"] {
        gso_batch_arrives_whole(ip, UdpOptions::default().gso(false), UdpOptions::default());
        gso_batch_arrives_whole(ip, UdpOptions::default(), UdpOptions::default().gro(false));
        gso_batch_arrives_whole(ip, off, off);
    }
    let e = end("127.0.0.1:0", off.dont_fragment(false)).unwrap();
    assert!(!e.io.stats.gso && !e.io.stats.gro && !e.io.stats.dont_fragment);
    assert_eq!(e.io.stats.option_failures, 0, "what is not asked for is not a failure");
}

#[test]
fn ecn_codepoints_sent_are_read_back() {
    for ip in ["127.0.0.1", "[::1]"] {
        let Some((mut tx, mut rx)) = pair(ip, UdpOptions::default(), UdpOptions::default()) else {
            continue;
        };
        let to = rx.addr();
        tx.send(&UdpTransmit::new(to, b"ect0").with_ecn(Ecn::Ect0));
        tx.send(&UdpTransmit::new(to, b"ce-1ce-2ce").with_ecn(Ecn::Ce).with_segment_size(4));
        tx.send(&UdpTransmit::new(to, b"ect1").with_ecn(Ecn::Ect1));
        tx.send(&UdpTransmit::new(to, b"plain"));
        let got: Vec<_> = rx.recv(6).into_iter().map(|g| (g.data, g.ecn)).collect();
        let want: Vec<(Vec<u8>, Ecn)> = vec![
            (b"ect0".to_vec(), Ecn::Ect0),
            (b"ce-1".to_vec(), Ecn::Ce),
            (b"ce-2".to_vec(), Ecn::Ce),
            (b"ce".to_vec(), Ecn::Ce),
            (b"ect1".to_vec(), Ecn::Ect1),
            (b"plain".to_vec(), Ecn::NotEct),
        ];
        assert_eq!(got, want, "{ip}");
    }
}

#[test]
fn the_destination_address_is_reported_and_the_source_ip_can_be_chosen() {
    for (wild, lo, other) in [("0.0.0.0", "127.0.0.1", "127.0.0.2"), ("[::]", "::1", "::1")] {
        let Some(mut rx) = end(&format!("{wild}:0"), UdpOptions::default()) else { continue };
        let Some(mut tx) = end(&format!("{wild}:0"), UdpOptions::default()) else { continue };
        let lo: IpAddr = lo.parse().unwrap();
        let other: IpAddr = other.parse().unwrap();
        let to = SocketAddr::new(lo, rx.addr().port());
        tx.send(&UdpTransmit::new(to, b"to lo").with_src_ip(other));
        let got = rx.recv(1);
        assert_eq!(got[0].dst, Some(lo), "the wildcard socket learns where it was reached");
        assert_eq!(got[0].from, SocketAddr::new(other, tx.addr().port()));
    }
}

#[test]
fn a_kernel_refusal_of_gso_turns_it_off_counts_it_and_still_delivers() {
    let (mut tx, mut rx) = pair("127.0.0.1", UdpOptions::default(), UdpOptions::default()).unwrap();
    if !tx.io.stats.gso {
        eprintln!("no GSO in this kernel; nothing to refuse");
        return;
    }
    // Without UDP checksums the kernel cannot offload segmentation and refuses GSO sends
    // (udp_send_skb: EINVAL), as a kernel or device without GSO would.
    set_opt(tx.sock.as_raw_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).unwrap();
    let data = payload(4, 1000, 10);
    let t = UdpTransmit::new(rx.addr(), &data).with_segment_size(1000).with_ecn(Ecn::Ect0);
    tx.send(&t);
    let errno = tx.io.gso_refusal().and_then(io::Error::raw_os_error);
    eprintln!("a refused GSO send failed with errno {errno:?}");
    assert!(matches!(errno, Some(libc::EINVAL | libc::EIO)));
    assert_eq!(tx.io.stats.gso_fallbacks, 1);
    assert!(!tx.io.stats.gso, "GSO stays off for the socket");
    let got = rx.recv(5);
    assert!(got.iter().map(|g| g.data.as_slice()).eq(data.chunks(1000)));
    assert!(got.iter().all(|g| g.ecn == Ecn::Ect0));
    tx.send(&t);
    assert_eq!(rx.recv(5).len(), 5);
    assert_eq!(tx.io.stats.gso_fallbacks, 1, "one refusal, one fallback");
    assert_eq!(tx.io.stats.gso_sends, 0);
}

#[test]
fn a_batch_over_the_segment_cap_leaves_in_several_gso_sends() {
    let Some(mut tx) = end_with("127.0.0.1:0", UdpOptions::default(), 4, RECV_SLOT) else {
        return;
    };
    let mut rx = end("127.0.0.1:0", UdpOptions::default()).unwrap();
    let data = payload(9, 300, 1);
    tx.send(&UdpTransmit::new(rx.addr(), &data).with_segment_size(300));
    assert_eq!(tx.io.stats.gso_sends, 3);
    let got = rx.recv(10);
    assert!(got.iter().map(|g| g.data.as_slice()).eq(data.chunks(300)));
}

#[test]
fn a_datagram_larger_than_its_slot_is_dropped_and_counted() {
    let mut tx = end("127.0.0.1:0", UdpOptions::default()).unwrap();
    let mut rx = end_with("127.0.0.1:0", UdpOptions::default(), 64, 100).unwrap();
    tx.send(&UdpTransmit::new(rx.addr(), &[7u8; 200]));
    tx.send(&UdpTransmit::new(rx.addr(), &[8u8; 50]));
    tx.send(&UdpTransmit::new(rx.addr(), &[]));
    let got = rx.recv(2);
    assert_eq!(got[0].data, [8u8; 50]);
    assert!(got[1].data.is_empty(), "an empty datagram is a datagram");
    assert_eq!(rx.io.stats.recv_truncated, 1);
}

#[test]
fn a_dual_stack_socket_talks_to_ipv4_peers_with_ecn_and_destination() {
    let Some(mut dual) = end("[::]:0", UdpOptions::default()) else { return };
    if SockRef::from(&dual.sock).only_v6().unwrap_or(true) {
        eprintln!("IPv6 sockets are v6-only here; skipping");
        return;
    }
    let mut v4 = end("127.0.0.1:0", UdpOptions::default()).unwrap();
    let to = SocketAddr::new("127.0.0.1".parse().unwrap(), dual.addr().port());
    v4.send(&UdpTransmit::new(to, b"hello six").with_ecn(Ecn::Ect0));
    let got = dual.recv(1);
    assert_eq!(got[0].data, b"hello six");
    assert_eq!(got[0].from.ip().to_canonical(), v4.addr().ip());
    assert_eq!(got[0].ecn, Ecn::Ect0);
    assert_eq!(got[0].dst.map(|ip| ip.to_canonical()), Some(to.ip()));
    // Answer to the address as it came (mapped) and as plain IPv4: both reach the peer.
    let data = payload(2, 100, 7);
    dual.send(&UdpTransmit::new(got[0].from, &data).with_segment_size(100).with_ecn(Ecn::Ce));
    dual.send(&UdpTransmit::new(v4.addr(), b"plain v4").with_ecn(Ecn::Ect1));
    let back = v4.recv(4);
    assert!(back[..3].iter().all(|g| g.ecn == Ecn::Ce));
    assert!(back[..3].iter().map(|g| g.data.as_slice()).eq(data.chunks(100)));
    assert_eq!((back[3].data.as_slice(), back[3].ecn), (&b"plain v4"[..], Ecn::Ect1));
}

#[test]
fn malformed_control_data_is_skipped_without_panicking() {
    let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut meta = RecvMeta { slot: 0, len: 10, stride: 10, from, ecn: Ecn::NotEct, dst: None };
    let mut ctrl = CmsgBuf::new();
    let mut enc = Encoder { buf: &mut ctrl, len: 0 };
    enc.push(libc::IPPROTO_IP, libc::IP_TOS, 0b11u8);
    enc.push(libc::SOL_UDP, libc::UDP_GRO, 4 as c_int);
    let len = enc.len;
    decode_cmsgs(&ctrl.0[..len], &mut meta);
    assert_eq!((meta.ecn, meta.stride), (Ecn::Ce, 4));
    // Cut anywhere, lengths forged: never a panic, never a read past the end.
    for cut in 0..len {
        decode_cmsgs(&ctrl.0[..cut], &mut meta);
    }
    for forged in [0usize, 1, CMSG_HDR - 1, 1 << 20, usize::MAX] {
        let mut bad = ctrl;
        let mut h: libc::cmsghdr = read_pod(&bad.0).unwrap();
        h.cmsg_len = forged as _;
        write_pod(&mut bad.0, h);
        decode_cmsgs(&bad.0[..len], &mut meta);
    }
    // A GRO size of zero or a negative one leaves the stride whole.
    let mut z = CmsgBuf::new();
    let mut enc = Encoder { buf: &mut z, len: 0 };
    enc.push(libc::SOL_UDP, libc::UDP_GRO, -5 as c_int);
    let zl = enc.len;
    let mut m = RecvMeta { stride: 10, ..meta };
    decode_cmsgs(&z.0[..zl], &mut m);
    assert_eq!(m.stride, 0, "decoded as nothing usable; recv() then keeps the length");
}

#[test]
fn a_connected_socket_sends_to_its_peer_without_a_name_and_elsewhere_with_one() {
    for ip in ["127.0.0.1", "[::1]"] {
        let opts = UdpOptions::default();
        let addr = format!("{ip}:0");
        let (Some(mut rx), Some(mut other)) = (end(&addr, opts), end(&addr, opts)) else {
            continue;
        };
        let sock = UdpSocket::bind(&addr).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        sock.connect(rx.addr()).unwrap();
        let io = UdpIo::new(sock.as_fd(), opts, MAX_GSO_SEGMENTS).unwrap();
        assert_eq!(io.peer, Some(rx.addr()));
        assert!(io.socket_tos.is_some(), "{ip}: the codepoint can live in the socket");
        let mut tx = End { sock, io, batch: RecvBatch::new(8, RECV_SLOT), messages: 0 };
        // To the peer, with no name: a GSO batch marked ECT(0), then CE, then Not-ECT, the
        // codepoint in the socket's traffic class.
        let data = payload(4, 1200, 100);
        let to = rx.addr();
        tx.send(&UdpTransmit::new(to, &data).with_segment_size(1200).with_ecn(Ecn::Ect0));
        tx.send(&UdpTransmit::new(to, b"ce").with_ecn(Ecn::Ce));
        tx.send(&UdpTransmit::new(to, b"plain"));
        let got = rx.recv(7);
        let want: Vec<(&[u8], Ecn)> = data
            .chunks(1200)
            .map(|c| (c, Ecn::Ect0))
            .chain([(&b"ce"[..], Ecn::Ce), (&b"plain"[..], Ecn::NotEct)])
            .collect();
        let got_: Vec<(&[u8], Ecn)> = got.iter().map(|g| (&g.data[..], g.ecn)).collect();
        assert_eq!(got_, want, "{ip}");
        assert!(got.iter().all(|g| g.from == tx.addr()));
        // Anywhere else: named, with its own codepoint, whatever the socket carried last.
        tx.send(&UdpTransmit::new(to, b"ect0").with_ecn(Ecn::Ect0));
        tx.send(&UdpTransmit::new(other.addr(), b"elsewhere"));
        tx.send(&UdpTransmit::new(other.addr(), b"ect1").with_ecn(Ecn::Ect1));
        assert_eq!(rx.recv(1)[0].ecn, Ecn::Ect0);
        let got: Vec<_> = other.recv(2).into_iter().map(|g| (g.data, g.ecn, g.from)).collect();
        assert_eq!(
            got,
            [
                (b"elsewhere".to_vec(), Ecn::NotEct, tx.addr()),
                (b"ect1".to_vec(), Ecn::Ect1, tx.addr())
            ],
            "{ip}"
        );
        // An unconnected socket has no peer, and codepoints go per message.
        assert_eq!((rx.io.peer, rx.io.socket_tos), (None, None));
    }
}
