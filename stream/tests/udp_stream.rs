//! Sessions over the UDP transport on real loopback sockets: the server's per-worker
//! sockets and endpoints (`StreamServer::serve_udp`), and a client made of the engine's
//! `Connection` driven over a plain std socket.

mod util;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dap_stream::session::TransportKind;
use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::transport::Wake;
use dap_stream::udp::connection::{CloseReason, Connection, ConnectionConfig, Event, Side};
use dap_stream::udp::packet::ConnectionId;
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, Mux, MuxConfig, SessionInfo};
use dap_stream::{StreamConfig, StreamServer};
use parking_lot::Mutex;
use util::udp_relay::{Impair, UdpRelay};
use util::{TIMEOUT, echo_server};

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

/// Records what arrives on a channel.
struct Record(Arc<Mutex<Vec<Message>>>);
impl ChannelHandler for Record {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        self.0.lock().push(msg);
    }
}

/// A client session over UDP: stream_ctl straight on the server (no enc_http: that path
/// is the HTTP tests'), then the engine over a std socket.
struct UdpClient {
    conn: Connection,
    sock: UdpSocket,
    got: Arc<Mutex<Vec<Message>>>,
    buf: Vec<u8>,
    rx: Vec<u8>,
    events: Vec<Event>,
}

impl UdpClient {
    fn open(server: &StreamServer, addr: SocketAddr, unreliable: &[u8]) -> Self {
        Self::open_via(server, addr, addr, unreliable)
    }

    /// As [`open`](Self::open), sending to `via` (a relay in front of `addr`).
    fn open_via(
        server: &StreamServer,
        addr: SocketAddr,
        via: SocketAddr,
        unreliable: &[u8],
    ) -> Self {
        let req = CtlRequest {
            channels: b"EV".to_vec(),
            suite: None,
            transport: TransportKind::Udp,
            unreliable: unreliable.to_vec(),
        };
        let answer = server.stream_ctl(&req.encode(), None, Instant::now()).expect("stream_ctl");
        let params = decode_answer(&answer, MuxConfig::default()).expect("answer");
        assert_eq!(params.udp_port, addr.port(), "the port actually bound is announced");
        let route = params.udp.clone().expect("a UDP answer names a connection id");
        assert_eq!(route.host, "", "no host announced: the one stream_ctl was reached at");
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut procs = ChannelProcs::new();
        for id in [b'E', b'V'] {
            let log = got.clone();
            procs.ch_proc_add(id, move |_| Box::new(Record(log.clone()))).unwrap();
        }
        let info = SessionInfo { session_id: params.id, client: None };
        let mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
        let config = ConnectionConfig::default();
        let cid = ConnectionId(route.cid);
        let mut conn =
            Connection::new(Side::Client, &params, cid, Some(via), mux, config, Instant::now());
        conn.mux().start(Arc::new(NoWake));
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        UdpClient { conn, sock, got, buf: Vec::new(), rx: vec![0; 65_536], events: Vec::new() }
    }

    /// One turn: send what the connection has, read what came (waiting at most 2 ms),
    /// run its timers.
    fn turn(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.conn.poll_transmit(now, 16, &mut self.buf) {
            for d in self.buf[..t.size].chunks(t.segment_size.unwrap_or(t.size)) {
                self.sock.send_to(d, t.destination).unwrap();
            }
        }
        while let Ok((n, from)) = self.sock.recv_from(&mut self.rx) {
            self.conn.handle_datagram(Instant::now(), from, &mut self.rx[..n]);
            self.sock.set_nonblocking(true).unwrap();
        }
        self.sock.set_nonblocking(false).unwrap();
        let now = Instant::now();
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        while let Some(e) = self.conn.poll_event() {
            self.events.push(e);
        }
    }

    fn write(&mut self, ty: u8, data: Vec<u8>) -> bool {
        self.conn.mux().with_channel(b'E', |ch| ch.write(ty, data).is_ok()).unwrap_or(false)
    }
}

/// A pattern that differs per message and per byte.
fn pattern(i: usize, n: usize) -> Vec<u8> {
    (0..n).map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8).collect()
}

#[test]
fn a_megabyte_echoes_intact_over_udp() {
    let srv = echo_server(b"EV", StreamConfig::default());
    let addr = srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = UdpClient::open(&srv.stream, addr, b"");
    let want: Vec<Vec<u8>> = (0..16).map(|i| pattern(i, 65_536)).collect();
    let mut next = 0;
    let start = Instant::now();
    while c.got.lock().len() < want.len() {
        assert!(start.elapsed() < TIMEOUT, "echoed {} of {}", c.got.lock().len(), want.len());
        while next < want.len() && c.write(next as u8, want[next].clone()) {
            next += 1;
        }
        c.turn();
    }
    let got = c.got.lock();
    for (i, m) in got.iter().enumerate() {
        assert_eq!((m.ty as usize, m.data.len()), (i, want[i].len()));
        assert!(m.data == want[i], "message {i} differs");
    }
    let u = srv.stream.udp_counters().unwrap();
    assert_eq!(u.attached.load(Ordering::Relaxed), 1);
    assert!(u.datagrams_in.load(Ordering::Relaxed) > 16);
    assert!(c.conn.stats().packets_in > 16);
}

#[test]
fn datagrams_on_the_wrong_worker_are_handed_to_the_right_one() {
    // Two workers share the port; the kernel picks a socket by the client's address, the
    // server picked the connection's worker at stream_ctl: about half the clients land on
    // the other worker. Clients come until one has (the chance that 64 in a row do not is
    // 2^-64), and every one of them is answered.
    let srv = echo_server(b"EV", StreamConfig::default());
    let addr = srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let u = srv.stream.udp_counters().unwrap();
    let mut clients = 0;
    while u.forwarded.load(Ordering::Relaxed) == 0 {
        assert!(clients < 64, "no datagram was ever forwarded");
        clients += 1;
        let mut c = UdpClient::open(&srv.stream, addr, b"");
        let msg = pattern(clients, 3000);
        assert!(c.write(1, msg.clone()));
        let start = Instant::now();
        while c.got.lock().is_empty() {
            assert!(start.elapsed() < TIMEOUT, "client {clients} got no echo");
            c.turn();
        }
        assert!(c.got.lock()[0].data == msg);
    }
    assert_eq!(u.attached.load(Ordering::Relaxed), clients as u64);
    assert_eq!(u.forward_failed.load(Ordering::Relaxed), 0);
}

#[test]
fn stream_ctl_offers_udp_only_once_it_is_served_and_unknown_ids_are_dropped() {
    let srv = echo_server(b"EV", StreamConfig::default());
    let req = CtlRequest {
        channels: b"E".to_vec(),
        suite: None,
        transport: TransportKind::Udp,
        unreliable: Vec::new(),
    };
    let refused = srv.stream.stream_ctl(&req.encode(), None, Instant::now()).unwrap_err();
    assert_eq!(refused.status(), 406);
    let addr = srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).is_err());
    // A datagram with a made-up id is dropped, never answered.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut junk = vec![0x40u8; 100];
    junk[1..9].copy_from_slice(&[0, 9, 9, 9, 9, 9, 9, 9]);
    sock.send_to(&junk, addr).unwrap();
    let mut b = [0u8; 2048];
    assert!(sock.recv_from(&mut b).is_err(), "nothing answers a stranger");
    let u = srv.stream.udp_counters().unwrap();
    let start = Instant::now();
    while u.datagrams_in.load(Ordering::Relaxed) == 0 {
        assert!(start.elapsed() < TIMEOUT);
        std::thread::yield_now();
    }
    assert_eq!(u.attached.load(Ordering::Relaxed), 0);
}

#[test]
fn a_drain_sends_every_echo_it_owes_then_close_going_away() {
    let srv = echo_server(b"EV", StreamConfig::default());
    let addr = srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = UdpClient::open(&srv.stream, addr, b"");
    let want: Vec<Vec<u8>> = (0..8).map(|i| pattern(i, 30_000)).collect();
    for (i, m) in want.iter().enumerate() {
        assert!(c.write(i as u8, m.clone()));
    }
    // Once the first echo is back, the server drains while traffic is in flight.
    let start = Instant::now();
    while c.got.lock().is_empty() {
        assert!(start.elapsed() < TIMEOUT);
        c.turn();
    }
    let stream = srv.stream.clone();
    let drain = std::thread::spawn(move || stream.drain(Duration::from_secs(20)));
    while !c.events.iter().any(|e| matches!(e, Event::Closed(_))) {
        assert!(start.elapsed() < TIMEOUT, "no CLOSE: {:?}", c.events);
        c.turn();
    }
    let report = drain.join().unwrap();
    assert_eq!(report.left_open, 0, "{report:?}");
    assert!(
        c.events.iter().any(|e| matches!(e, Event::Closed(CloseReason::Peer { code: 3, .. }))),
        "{:?}",
        c.events
    );
    // What came back is whole, in order: the messages the server took, every one echoed.
    let got = c.got.lock();
    assert!(!got.is_empty());
    for (i, m) in got.iter().enumerate() {
        assert!(m.ty as usize == i && m.data == want[i], "echo {i}");
    }
    // A new UDP session is refused while draining.
    let req = CtlRequest {
        channels: b"E".to_vec(),
        suite: None,
        transport: TransportKind::Udp,
        unreliable: Vec::new(),
    };
    assert_eq!(
        srv.stream.stream_ctl(&req.encode(), None, Instant::now()).unwrap_err().status(),
        503
    );
}

#[test]
fn twenty_mebibytes_cross_a_lossy_relay_and_survive_a_nat_rebinding() {
    // 10 % loss, 2 % duplication and 5 % reordering each way; halfway through, the relay's
    // server-facing port changes, as a NAT's mapping does.
    let srv = echo_server(b"EV", StreamConfig::default());
    let addr = srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let imp = Impair { loss: 0.10, duplicate: 0.02, reorder: 0.05 };
    let relay = UdpRelay::start(addr, imp, imp, 7);
    let mut c = UdpClient::open_via(&srv.stream, addr, relay.addr, b"");
    const N: usize = 320; // 320 x 64 KiB = 20 MiB
    let mut next = 0;
    let mut rebound = false;
    let start = Instant::now();
    let limit = Duration::from_secs(300);
    while c.got.lock().len() < N {
        let got = c.got.lock().len();
        assert!(start.elapsed() < limit, "echoed {got} of {N}: {:?}", c.conn.stats());
        if !rebound && got >= N / 2 {
            relay.rebind();
            rebound = true;
        }
        while next < N && c.write(next as u8, pattern(next, 65_536)) {
            next += 1;
        }
        c.turn();
    }
    for (i, m) in c.got.lock().iter().enumerate() {
        assert!(m.ty == i as u8 && m.data == pattern(i, 65_536), "message {i} differs");
    }
    let u = srv.stream.udp_counters().unwrap();
    assert_eq!(u.migrations.load(Ordering::Relaxed), 1, "the new path was validated and used");
    let lost = relay.stats.lost.load(Ordering::Relaxed);
    eprintln!(
        "20 MiB echoed in {:?}; relay lost {lost}, reordered {}, duplicated {}, stale {}; client {:?}",
        start.elapsed(),
        relay.stats.reordered.load(Ordering::Relaxed),
        relay.stats.duplicated.load(Ordering::Relaxed),
        relay.stats.stale.load(Ordering::Relaxed),
        c.conn.stats()
    );
    assert!(lost > 100);
}
