//! UDP esockets: datagrams in through `on_datagram` (or in batches through `on_datagrams`),
//! out through `send_to` (local and handle) and `send_batch` (GSO).

mod util;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use crossbeam_channel::Sender;
use dap_reactor::{
    Datagrams, Ecn, Esocket, EsocketHandle, EsocketKind, Handler, Reactor, UdpOptions, UdpTransmit,
};
use util::{Ev, Events, Mode, Recorder};

#[track_caller]
fn client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    s
}

#[track_caller]
fn bound(reactor: &Reactor, addr: SocketAddr, mode: Mode) -> (EsocketHandle, SocketAddr, Events) {
    let (rec, events) = Recorder::new(mode);
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.bind_udp(addr, rec.boxed()))
            .unwrap();
    assert!(matches!(events.next(), Ev::New(_, EsocketKind::Udp)));
    let local = util::on_esocket(handle, |es| es.local_addr().unwrap());
    assert_ne!(local.port(), 0);
    (handle, local, events)
}

#[track_caller]
fn recv_from(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("a datagram");
    (buf[..n].to_vec(), from)
}

#[test]
fn bound_udp_receives_datagrams_and_answers_with_send_to() {
    let reactor = util::reactor(1);
    let (_handle, server, events) = bound(&reactor, "127.0.0.1:0".parse().unwrap(), Mode::Echo);
    let sock = client("127.0.0.1");
    for msg in [&b"ping"[..], b"second datagram", b""] {
        sock.send_to(msg, server).unwrap();
        match events.wait_for("on_datagram", |e| matches!(e, Ev::Datagram(..))) {
            Ev::Datagram(data, from) => {
                assert_eq!(data, msg);
                assert_eq!(from, sock.local_addr().unwrap());
            }
            _ => unreachable!(),
        }
        assert_eq!(recv_from(&sock), (msg.to_vec(), server));
    }
    util::shutdown(reactor);
}

#[test]
fn handle_send_to_sends_from_another_thread() {
    let reactor = util::reactor(1);
    let (handle, server, _events) = bound(&reactor, "127.0.0.1:0".parse().unwrap(), Mode::Consume);
    let sock = client("127.0.0.1");
    let to = sock.local_addr().unwrap();
    std::thread::spawn(move || handle.send_to(&b"from a handle"[..], to).unwrap()).join().unwrap();
    assert_eq!(recv_from(&sock), (b"from a handle".to_vec(), server));
    util::shutdown(reactor);
}

#[test]
fn added_udp_socket_works_and_has_no_stream_output() {
    let reactor = util::reactor(1);
    let std_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = std_sock.local_addr().unwrap();
    let (rec, events) = Recorder::new(Mode::Echo);
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.add_udp(std_sock, rec.boxed()))
            .unwrap();
    let kind = util::on_esocket(handle, |es| es.write(b"no").unwrap_err().kind());
    assert_eq!(kind, ErrorKind::Unsupported);
    let sock = client("127.0.0.1");
    sock.send_to(b"added", server).unwrap();
    assert_eq!(recv_from(&sock), (b"added".to_vec(), server));
    events.wait_for("on_datagram", |e| matches!(e, Ev::Datagram(..)));
    util::shutdown(reactor);
}

#[test]
fn udp_over_ipv6_loopback_when_available() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("::1 is not available here; skipping");
        return;
    }
    let reactor = util::reactor(1);
    let (_handle, server, _events) = bound(&reactor, "[::1]:0".parse().unwrap(), Mode::Echo);
    let sock = client("[::1]");
    sock.send_to(b"six", server).unwrap();
    assert_eq!(recv_from(&sock), (b"six".to_vec(), server));
    util::shutdown(reactor);
}

/// What a [`GsoEcho`] saw of one batch.
#[derive(Debug)]
struct Seen {
    datagrams: usize,
    ecn: Vec<Ecn>,
    dst: Vec<Option<IpAddr>>,
}

/// Echoes each batch to its senders with GSO: a run of datagrams from one source, all of
/// the first one's size but a shorter last, goes back as one ECT(0)-marked transmit.
struct GsoEcho {
    seen: Sender<Seen>,
}

impl GsoEcho {
    fn send(es: &mut Esocket<'_>, run: &[u8], to: Option<SocketAddr>, size: usize) {
        if let Some(to) = to {
            let t = UdpTransmit::new(to, run).with_segment_size(size).with_ecn(Ecn::Ect0);
            es.send_batch(&t).expect("the batch is sent or queued");
        }
    }
}

impl Handler for GsoEcho {
    fn on_datagrams(&mut self, es: &mut Esocket<'_>, batch: &mut Datagrams<'_>) {
        let (mut run, mut to, mut size) = (Vec::new(), None, 0);
        for d in batch.iter() {
            let continues = to == Some(d.from) && d.data.len() <= size && run.len() % size == 0;
            if !continues {
                Self::send(es, &run, to, size);
                run.clear();
                to = Some(d.from);
                size = d.data.len().max(1);
            }
            run.extend_from_slice(d.data);
        }
        Self::send(es, &run, to, size);
        let _ = self.seen.send(Seen {
            datagrams: batch.len(),
            ecn: batch.iter().map(|d| d.ecn).collect(),
            dst: batch.iter().map(|d| d.dst).collect(),
        });
    }
}

#[test]
fn a_batch_handler_echoes_with_gso_and_a_plain_socket_gets_every_datagram_back() {
    const COUNT: usize = 40;
    let off = UdpOptions::default().gso(false).gro(false);
    // The third run makes the kernel refuse GSO (no UDP checksums: EINVAL), as a kernel or
    // device without it would: the worker falls back and still echoes everything.
    for (options, refuse) in
        [(UdpOptions::default(), false), (off, false), (UdpOptions::default(), true)]
    {
        let reactor = util::reactor(1);
        let worker = reactor.worker(0).unwrap();
        let (tx, seen) = crossbeam_channel::unbounded();
        let handle = util::on_worker(worker, move |w| {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            if refuse {
                no_udp_checksums(&sock);
            }
            w.add_udp_with(sock, options, Box::new(GsoEcho { seen: tx }))
        })
        .unwrap();
        let server = util::on_esocket(handle, |es| es.local_addr().unwrap());
        let sock = client("127.0.0.1");
        socket2::SockRef::from(&sock).set_tos_v4(u32::from(Ecn::Ect0.bits())).unwrap();
        // Equal-size datagrams with a short one every tenth: batches split into runs.
        let sent: Vec<Vec<u8>> = (0..COUNT)
            .map(|i| util::pattern(i as u64 * 7, if i % 10 == 9 { 100 } else { 1200 }))
            .collect();
        // Reading paused while they all go, so the worker finds them queued and reads them
        // in full batches (`Limits::udp_recv_batch`, 8) whatever the scheduling.
        util::on_esocket(handle, |es| es.set_readable(false));
        for d in &sent {
            sock.send_to(d, server).unwrap();
        }
        util::on_esocket(handle, |es| es.set_readable(true));
        for (i, want) in sent.iter().enumerate() {
            let mut buf = [0u8; 2048];
            let (n, from) = sock.recv_from(&mut buf).expect("an echoed datagram");
            assert_eq!(from, server);
            assert_eq!(&buf[..n], &want[..], "datagram {i} comes back as it went");
        }
        let (mut got, mut largest) = (0, 0);
        while got < COUNT {
            let s = util::recv(&seen, "a batch");
            assert!(s.ecn.iter().all(|e| *e == Ecn::Ect0), "{s:?}");
            assert!(s.dst.iter().all(|d| *d == Some(server.ip())), "{s:?}");
            got += s.datagrams;
            largest = largest.max(s.datagrams);
        }
        assert_eq!(got, COUNT);
        let stats = util::on_esocket(handle, |es| es.udp_stats().unwrap());
        eprintln!("{options:?}: largest batch {largest}, {stats:?}");
        assert_eq!((stats.datagrams_in, stats.datagrams_out), (COUNT as u64, COUNT as u64));
        assert_eq!(largest, 8, "full batches");
        let fallbacks = u64::from(refuse);
        assert_eq!(stats.gso, options.gso && !refuse);
        assert_eq!(stats.gso_fallbacks, fallbacks);
        if stats.gso {
            assert!(stats.gso_sends >= 4, "each batch starts a run of 8 or more: {stats:?}");
        } else {
            assert_eq!(stats.gso_sends, 0);
        }
        let w = util::wait_stats(worker, "datagram counts", |s| {
            s.datagrams_in == COUNT as u64 && s.datagrams_out == COUNT as u64
        });
        assert_eq!(w.gso_fallbacks, fallbacks);
        util::shutdown(reactor);
    }
}

/// Turns UDP checksums off on a socket (`SO_NO_CHECK`), which makes the kernel refuse GSO.
fn no_udp_checksums(sock: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed with its address.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_NO_CHECK: {}", std::io::Error::last_os_error());
}
