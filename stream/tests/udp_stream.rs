//! Sessions over the UDP transport on real loopback sockets: the server's per-worker
//! sockets and endpoints (`StreamServer::serve_udp`), and a client made of the engine's
//! `Connection` driven over a plain std socket.

mod util;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::session::{SessionParams, TransportKind};
use dap_stream::transport::Wake;
use dap_stream::udp::connection::{CloseReason, Connection, ConnectionConfig, Event, Side};
use dap_stream::udp::packet::ConnectionId;
use dap_stream::{CID_TAGGED, SharedSessions, StreamConfig, StreamServer, Taken, udp_share_name};
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, Mux, MuxConfig, SessionInfo};
use parking_lot::Mutex;
use util::udp_relay::{Impair, UdpRelay};
use util::{TIMEOUT, echo_server};

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

/// Records what arrives on a channel (and, beside it, the channel of each message).
struct Record(Arc<Mutex<Vec<Message>>>, Arc<Mutex<Vec<u8>>>);
impl ChannelHandler for Record {
    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        let mut log = self.0.lock();
        self.1.lock().push(ch.id());
        log.push(msg);
    }
}

/// A client session over UDP: stream_ctl straight on the server (no enc_http: that path
/// is the HTTP tests'), then the engine over a std socket.
struct UdpClient {
    conn: Connection,
    sock: UdpSocket,
    got: Arc<Mutex<Vec<Message>>>,
    chans: Arc<Mutex<Vec<u8>>>,
    buf: Vec<u8>,
    rx: Vec<u8>,
    events: Vec<Event>,
}

impl UdpClient {
    fn open(server: &StreamServer, addr: SocketAddr, unreliable: &[u8]) -> Self {
        Self::open_with(server, addr, addr, b"EV", unreliable)
    }

    fn open_via(
        server: &StreamServer,
        addr: SocketAddr,
        via: SocketAddr,
        unreliable: &[u8],
    ) -> Self {
        Self::open_with(server, addr, via, b"EV", unreliable)
    }

    /// A session on `channels`, sending to `via` (`addr` itself, or a relay in front of it).
    fn open_with(
        server: &StreamServer,
        addr: SocketAddr,
        via: SocketAddr,
        channels: &[u8],
        unreliable: &[u8],
    ) -> Self {
        let params = ctl(server, channels, unreliable);
        assert_eq!(params.udp_port, addr.port(), "the port actually bound is announced");
        Self::on(&params, via)
    }

    /// A client of session `params` (its channels), sending to `via`.
    fn on(params: &SessionParams, via: SocketAddr) -> Self {
        let channels = &params.channels;
        let route = params.udp.clone().expect("a UDP answer names a connection id");
        assert_eq!(route.host, "", "no host announced: the one stream_ctl was reached at");
        let got = Arc::new(Mutex::new(Vec::new()));
        let chans = Arc::new(Mutex::new(Vec::new()));
        let mut procs = ChannelProcs::new();
        for &id in channels {
            let (log, ids) = (got.clone(), chans.clone());
            procs.ch_proc_add(id, move |_| Box::new(Record(log.clone(), ids.clone()))).unwrap();
        }
        let info = SessionInfo { session_id: params.id, client: None };
        let mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
        let config = ConnectionConfig::default();
        let cid = ConnectionId(route.cid);
        let mut conn =
            Connection::new(Side::Client, params, cid, Some(via), mux, config, Instant::now());
        conn.mux().start(Arc::new(NoWake));
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        UdpClient {
            conn,
            sock,
            got,
            chans,
            buf: Vec::new(),
            rx: vec![0; 65_536],
            events: Vec::new(),
        }
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
        self.write_on(b'E', ty, data)
    }

    fn write_on(&mut self, chan: u8, ty: u8, data: Vec<u8>) -> bool {
        self.conn.mux().with_channel(chan, |ch| ch.write(ty, data).is_ok()).unwrap_or(false)
    }
}

/// stream_ctl for a UDP session on `channels`, straight on the server.
fn ctl(server: &StreamServer, channels: &[u8], unreliable: &[u8]) -> SessionParams {
    let req = CtlRequest {
        channels: channels.to_vec(),
        suite: None,
        transport: TransportKind::Udp,
        unreliable: unreliable.to_vec(),
    };
    let answer = server.stream_ctl(&req.encode(), None, Instant::now()).expect("stream_ctl");
    decode_answer(&answer, MuxConfig::default()).expect("answer")
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

/// Like `Record`, with the channel: what arrived, by channel.
struct RecordOn(u8, Arc<Mutex<Vec<(u8, Message)>>>);
impl ChannelHandler for RecordOn {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        self.1.lock().push((self.0, msg));
    }
}

#[test]
fn eight_channels_echo_every_size_up_to_four_mebibytes() {
    const IDS: &[u8] = b"ABCDEFGH";
    let srv = echo_server(IDS, StreamConfig::default());
    let addr = srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut c = UdpClient::open_with(&srv.stream, addr, addr, IDS, b"");
    // Messages per channel, each channel its own sizes; channel A also carries 4 MiB.
    let sizes = |id: u8| -> Vec<usize> {
        let mut v = vec![1, 100, 1_163, 16_384, 65_537, 300_000];
        if id == b'A' {
            v.push(4 << 20);
        }
        v
    };
    let data = |id: u8, i: usize, n: usize| pattern(i * 131 + id as usize, n);
    let total: usize = IDS.iter().map(|&id| sizes(id).len()).sum();
    let mut next: Vec<usize> = vec![0; IDS.len()];
    let start = Instant::now();
    while c.got.lock().len() < total {
        assert!(start.elapsed() < Duration::from_secs(120), "{} of {total}", c.got.lock().len());
        for (k, &id) in IDS.iter().enumerate() {
            let s = sizes(id);
            while next[k] < s.len() && c.write_on(id, next[k] as u8, data(id, next[k], s[next[k]]))
            {
                next[k] += 1;
            }
        }
        c.turn();
    }
    // Each channel's echoes, in its order, equal to what it sent.
    let (got, chans) = (c.got.lock(), c.chans.lock());
    for &id in IDS {
        let s = sizes(id);
        let mine: Vec<&Message> =
            got.iter().zip(chans.iter()).filter(|(_, c)| **c == id).map(|(m, _)| m).collect();
        assert_eq!(mine.len(), s.len(), "channel {}", id as char);
        for (i, m) in mine.iter().enumerate() {
            assert!(m.ty as usize == i && m.data == data(id, i, s[i]), "{} {i}", id as char);
        }
    }
}

#[test]
fn a_thousand_udp_clients_on_two_workers_each_echo() {
    use dap_stream::udp::endpoint::{Endpoint, EndpointConfig};
    let srv = echo_server(b"E", StreamConfig::default());
    let addr = srv.stream.serve_udp(&srv.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    // A thousand client connections in one endpoint behind one socket: connection ids,
    // not addresses, tell them apart.
    let mut ep =
        Endpoint::new(EndpointConfig { max_connections: 2000, ..EndpointConfig::default() });
    let got: Arc<Mutex<Vec<(u8, Message)>>> = Arc::default();
    let mut cids = Vec::new();
    const N: usize = 1000;
    for i in 0..N {
        let req = CtlRequest {
            channels: b"E".to_vec(),
            suite: None,
            transport: TransportKind::Udp,
            unreliable: Vec::new(),
        };
        let answer = srv.stream.stream_ctl(&req.encode(), None, Instant::now()).unwrap();
        let params = decode_answer(&answer, MuxConfig::default()).unwrap();
        let mut procs = ChannelProcs::new();
        let log = got.clone();
        procs.ch_proc_add(b'E', move |_| Box::new(RecordOn(b'E', log.clone()))).unwrap();
        let info = SessionInfo { session_id: params.id, client: None };
        let mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
        let cid = ConnectionId(params.udp.clone().unwrap().cid);
        let cid = ep.connect(Instant::now(), &params, cid, addr, mux).unwrap();
        let conn = ep.connection(cid).unwrap();
        conn.mux().start(Arc::new(NoWake));
        let msg = (i as u32).to_be_bytes().to_vec();
        conn.mux().with_channel(b'E', |ch| ch.write(1, msg).unwrap()).unwrap();
        cids.push(cid);
    }
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
    let (mut buf, mut rx) = (Vec::new(), vec![0u8; 65_536]);
    let start = Instant::now();
    while got.lock().len() < N {
        assert!(start.elapsed() < Duration::from_secs(120), "{} of {N} echoed", got.lock().len());
        let now = Instant::now();
        while let Some(t) = ep.poll_transmit(now, 16, &mut buf) {
            for d in buf[..t.size].chunks(t.segment_size.unwrap_or(t.size)) {
                // A full socket buffer drops it, as a network would: the engine resends.
                let _ = sock.send_to(d, t.destination);
            }
        }
        while let Ok((n, from)) = sock.recv_from(&mut rx) {
            ep.handle_datagram(Instant::now(), from, &mut rx[..n]);
            sock.set_nonblocking(true).unwrap();
        }
        sock.set_nonblocking(false).unwrap();
        let now = Instant::now();
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        while ep.poll_event().is_some() {}
    }
    let mut seen: Vec<u32> = got
        .lock()
        .iter()
        .map(|(_, m)| u32::from_be_bytes(m.data[..4].try_into().unwrap()))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..N as u32).collect::<Vec<_>>(), "each client got its own echo, once");
    let u = srv.stream.udp_counters().unwrap();
    assert_eq!(u.attached.load(Ordering::Relaxed), N as u64);
    assert!(u.forwarded.load(Ordering::Relaxed) > 0, "both workers served");
}

/// The shared store of a cluster, in memory (dapd's is Redis: server-bin's cluster tests).
#[derive(Default)]
struct MemStore {
    sessions: Mutex<std::collections::HashMap<[u8; 16], Vec<u8>>>,
    takes: std::sync::atomic::AtomicU64,
}

impl SharedSessions for MemStore {
    fn publish(&self, name: &[u8; 16], blob: &[u8], _ttl: Duration) -> bool {
        let mut s = self.sessions.lock();
        if s.contains_key(name) {
            return false;
        }
        s.insert(*name, blob.to_vec());
        true
    }

    fn take(&self, name: &[u8; 16]) -> Taken {
        self.takes.fetch_add(1, Ordering::Relaxed);
        match self.sessions.lock().remove(name) {
            Some(b) => Taken::Found(b.into()),
            None => Taken::Absent,
        }
    }

    fn cid_tag(&self, body: &[u8; CID_TAGGED]) -> [u8; 2] {
        let h = body.iter().fold(0x9e37u16, |h, &b| h.rotate_left(5) ^ b as u16);
        h.to_be_bytes()
    }
}

/// Two servers sharing one store stand for two nodes of a cluster: a UDP session made on
/// one attaches on the other with its first datagram there, including an id that names a
/// worker only the first has (x runs 3 workers, y 2); it attaches once (its datagrams on
/// the node that made it then find it taken); a session streamed where it was made is
/// claimed in the store first; an id without the cluster's tag never reaches the store.
#[test]
fn a_udp_session_attaches_on_another_node_of_a_cluster_once() {
    let store = Arc::new(MemStore::default());
    let x = util::echo_server_threads(b"EV", StreamConfig::default(), 3);
    let y = echo_server(b"EV", StreamConfig::default());
    x.stream.share_sessions(store.clone());
    y.stream.share_sessions(store.clone());
    let x_addr = x.stream.serve_udp(&x.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let y_addr = y.stream.serve_udp(&y.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let echo = |c: &mut UdpClient, n: usize| {
        let msg = pattern(n, 3000 + n);
        assert!(c.write(1, msg.clone()));
        let start = Instant::now();
        while c.got.lock().is_empty() {
            assert!(start.elapsed() < TIMEOUT, "session {n} got no echo");
            c.turn();
        }
        assert!(c.got.lock()[0].data == msg);
    };
    // x picks its workers in turn: the third session names x's worker 2.
    let mut workers = Vec::new();
    for n in 0..3 {
        let p = ctl(&x.stream, b"EV", b"");
        workers.push(p.udp.as_ref().unwrap().cid[0]);
        let mut c = UdpClient::on(&p, y_addr);
        echo(&mut c, n);
    }
    assert!(workers.contains(&2), "{workers:?}");
    let (xu, yu) = (x.stream.udp_counters().unwrap(), y.stream.udp_counters().unwrap());
    assert_eq!(yu.cluster_taken.load(Ordering::Relaxed), 3);
    assert_eq!(yu.attached.load(Ordering::Relaxed), 3);
    assert_eq!(xu.attached.load(Ordering::Relaxed), 0);

    // Attached on y first: its datagrams to x then find it taken, and nothing answers.
    let p = ctl(&x.stream, b"EV", b"");
    echo(&mut UdpClient::on(&p, y_addr), 3);
    let mut late = UdpClient::on(&p, x_addr);
    assert!(late.write(1, b"late".to_vec()));
    let start = Instant::now();
    while x.stream.stats().attach_twice == 0 {
        assert!(start.elapsed() < TIMEOUT, "x never found the session taken");
        late.turn();
    }
    assert_eq!(xu.attached.load(Ordering::Relaxed), 0);
    assert!(late.got.lock().is_empty());

    // An HTTP attach naming a UDP session's shared name (the connection id is on the wire
    // in the clear) is an unknown session, and takes nothing from the store.
    let p = ctl(&x.stream, b"EV", b"");
    let name = udp_share_name(&p.udp.as_ref().unwrap().cid);
    let mut forged = p.clone();
    forged.id = name;
    let mut tcp = std::net::TcpStream::connect(y.addr).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    let req = dap_stream::transport::http::upgrade_request(&forged, "y");
    std::io::Write::write_all(&mut tcp, req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut tcp, &mut head).unwrap();
    assert_eq!(&head[9..12], b"404");
    assert!(store.sessions.lock().contains_key(&name), "still in the store");
    echo(&mut UdpClient::on(&p, y_addr), 5);

    // Made on x, streamed on x: claimed in the store, then attached there.
    let takes = store.takes.load(Ordering::Relaxed);
    let p = ctl(&x.stream, b"EV", b"");
    echo(&mut UdpClient::on(&p, x_addr), 4);
    assert_eq!(xu.attached.load(Ordering::Relaxed), 1);
    assert_eq!(store.takes.load(Ordering::Relaxed), takes + 1);
    assert!(store.sessions.lock().is_empty(), "every session was taken");

    // An id no node tagged: counted, the store never asked.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut junk = vec![0x40u8; 100];
    junk[1..9].copy_from_slice(&[0, 9, 9, 9, 9, 9, 9, 9]);
    let tag = store.cid_tag(junk[1..7].try_into().unwrap());
    junk[7] = !tag[0];
    junk[8] = !tag[1];
    let missed = yu.cluster_missed.load(Ordering::Relaxed);
    let takes = store.takes.load(Ordering::Relaxed);
    sock.send_to(&junk, y_addr).unwrap();
    let start = Instant::now();
    while yu.cluster_missed.load(Ordering::Relaxed) == missed {
        assert!(start.elapsed() < TIMEOUT, "the untagged datagram was never counted");
        std::thread::yield_now();
    }
    assert_eq!(store.takes.load(Ordering::Relaxed), takes);
}

/// [`MemStore`] whose `take` waits until the gate opens (at most [`TIMEOUT`]).
#[derive(Default)]
struct GatedStore {
    inner: MemStore,
    open: Mutex<bool>,
    opened: parking_lot::Condvar,
}

impl GatedStore {
    fn open_gate(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

impl SharedSessions for GatedStore {
    fn publish(&self, name: &[u8; 16], blob: &[u8], ttl: Duration) -> bool {
        self.inner.publish(name, blob, ttl)
    }

    fn take(&self, name: &[u8; 16]) -> Taken {
        let mut open = self.open.lock();
        let deadline = Instant::now() + TIMEOUT;
        while !*open && Instant::now() < deadline {
            self.opened.wait_until(&mut open, deadline);
        }
        drop(open);
        self.inner.take(name)
    }

    fn cid_tag(&self, body: &[u8; CID_TAGGED]) -> [u8; 2] {
        self.inner.cid_tag(body)
    }
}

/// While a session is being taken from the cluster's store, its worker holds at most
/// `udp_cluster_held` datagrams for it and runs at most `udp_cluster_lookups` lookups;
/// the rest are dropped and counted. Once the store answers, the session attaches with
/// the datagrams held, and the echo comes back.
#[test]
fn a_cluster_lookup_holds_a_bounded_number_of_datagrams_and_lookups() {
    let store = Arc::new(GatedStore::default());
    let x = echo_server(b"EV", StreamConfig::default());
    let config = StreamConfig { udp_cluster_lookups: 1, udp_cluster_held: 3, ..Default::default() };
    let y = echo_server(b"EV", config);
    x.stream.share_sessions(store.clone());
    y.stream.share_sessions(store.clone());
    x.stream.serve_udp(&x.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let y_addr = y.stream.serve_udp(&y.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let yu = y.stream.udp_counters().unwrap();
    let dropped = || yu.cluster_dropped.load(Ordering::Relaxed);
    let wait_dropped = |n: u64| {
        let start = Instant::now();
        while dropped() < n {
            assert!(start.elapsed() < TIMEOUT, "{} dropped, not {n}", dropped());
            std::thread::yield_now();
        }
    };
    // x picks its two workers in turn: sessions 0 and 2 name the same one, so the same
    // worker of y takes both.
    let sessions: Vec<SessionParams> = (0..3).map(|_| ctl(&x.stream, b"EV", b"")).collect();
    let worker = |p: &SessionParams| p.udp.as_ref().unwrap().cid[0];
    assert_eq!(worker(&sessions[0]), worker(&sessions[2]));
    // Session 0's first datagram, five times: the first starts the lookup, two more are
    // held, two are dropped.
    let mut c = UdpClient::on(&sessions[0], y_addr);
    let msg = pattern(7, 500);
    assert!(c.write(1, msg.clone()));
    let now = Instant::now();
    let t = c.conn.poll_transmit(now, 1, &mut c.buf).expect("a first datagram");
    let first = c.buf[..t.segment_size.unwrap_or(t.size)].to_vec();
    for _ in 0..5 {
        c.sock.send_to(&first, y_addr).unwrap();
    }
    wait_dropped(2);
    // Session 2 on the same worker of y: its one lookup is taken, so it is dropped.
    let mut d = UdpClient::on(&sessions[2], y_addr);
    assert!(d.write(1, msg.clone()));
    let t = d.conn.poll_transmit(now, 1, &mut d.buf).expect("a first datagram");
    d.sock.send_to(&d.buf[..t.segment_size.unwrap_or(t.size)], y_addr).unwrap();
    wait_dropped(3);
    assert_eq!(yu.attached.load(Ordering::Relaxed), 0);
    // The store answers: session 0 attaches with what was held, and echoes.
    store.open_gate();
    let start = Instant::now();
    while c.got.lock().is_empty() {
        assert!(start.elapsed() < TIMEOUT, "no echo once the store answered");
        c.turn();
    }
    assert!(c.got.lock()[0].data == msg);
    assert_eq!(yu.cluster_taken.load(Ordering::Relaxed), 1);
    assert_eq!(dropped(), 3);
}

/// A draining node takes no session from the cluster: the session stays in the store, and
/// the node that made it serves it.
#[test]
fn a_draining_node_leaves_cluster_sessions_to_the_others() {
    let store = Arc::new(MemStore::default());
    let x = echo_server(b"EV", StreamConfig::default());
    let y = echo_server(b"EV", StreamConfig::default());
    x.stream.share_sessions(store.clone());
    y.stream.share_sessions(store.clone());
    let x_addr = x.stream.serve_udp(&x.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let y_addr = y.stream.serve_udp(&y.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let report = y.stream.drain(Duration::from_secs(5));
    assert_eq!(report.left_open, 0);
    let p = ctl(&x.stream, b"EV", b"");
    let mut c = UdpClient::on(&p, y_addr);
    assert!(c.write(1, b"to y".to_vec()));
    let yu = y.stream.udp_counters().unwrap();
    let start = Instant::now();
    while yu.cluster_dropped.load(Ordering::Relaxed) == 0 {
        assert!(start.elapsed() < TIMEOUT, "y never dropped the datagram");
        c.turn();
    }
    assert_eq!(store.takes.load(Ordering::Relaxed), 0, "y asked the store nothing");
    assert_eq!(store.sessions.lock().len(), 1);
    let mut c = UdpClient::on(&p, x_addr);
    assert!(c.write(1, b"to x".to_vec()));
    let start = Instant::now();
    while c.got.lock().is_empty() {
        assert!(start.elapsed() < TIMEOUT, "x never served its session");
        c.turn();
    }
    assert_eq!(c.got.lock()[0].data.as_ref(), b"to x");
}

/// A worker starts at most `udp_cluster_lookup_rate` lookups a second, whatever the ids:
/// past it the datagram is dropped (counted), and the client's next try, once the budget
/// has refilled, gets through.
#[test]
fn cluster_lookups_are_bounded_per_second() {
    let store = Arc::new(MemStore::default());
    let x = echo_server(b"EV", StreamConfig::default());
    let y = echo_server(b"EV", StreamConfig { udp_cluster_lookup_rate: 1, ..Default::default() });
    x.stream.share_sessions(store.clone());
    y.stream.share_sessions(store.clone());
    x.stream.serve_udp(&x.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let y_addr = y.stream.serve_udp(&y.reactor, "127.0.0.1:0".parse().unwrap()).unwrap();
    let yu = y.stream.udp_counters().unwrap();
    // Sessions 0 and 2 name the same worker of x, so the same worker of y takes both.
    let sessions: Vec<SessionParams> = (0..3).map(|_| ctl(&x.stream, b"EV", b"")).collect();
    let echo = |p: &SessionParams, what: &[u8]| {
        let mut c = UdpClient::on(p, y_addr);
        assert!(c.write(1, what.to_vec()));
        let start = Instant::now();
        while c.got.lock().is_empty() {
            assert!(start.elapsed() < TIMEOUT, "no echo");
            c.turn();
        }
    };
    let start = Instant::now();
    echo(&sessions[0], b"first");
    assert_eq!(yu.cluster_dropped.load(Ordering::Relaxed), 0);
    // Within the same second the worker's budget is spent: the next session's first try is
    // dropped; a later try gets through.
    echo(&sessions[2], b"second");
    if start.elapsed() < Duration::from_millis(900) {
        assert!(yu.cluster_dropped.load(Ordering::Relaxed) >= 1);
    }
    assert_eq!(yu.cluster_taken.load(Ordering::Relaxed), 2);
}
