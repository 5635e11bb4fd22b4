//! Budgets against an anonymous attacker (issue 18): each attack comes from its own
//! loopback source address, a legitimate client from another, and the test checks that the
//! attack is refused or bounded at its budget, counted, and that the legitimate client
//! keeps working throughout.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use dap_net::enc::cipher::CipherSuite;
use dap_net::enc::client::handshake_blocking;
use dap_net::enc::{EncInit, EncSession};
use dap_net::http::client::ClientConfig;
use dap_stream::MuxConfig;
use dap_stream::client::stream_ctl_blocking;
use dap_stream::codec::packet::{self, Opener, PacketType, Sealer};
use util::*;

/// A raw HTTP/1.1 connection from a chosen source address, keeping alive.
struct Raw {
    r: BufReader<TcpStream>,
}

/// One response: status, headers (names lowercased), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl Raw {
    fn connect_from(src: &str, to: SocketAddr) -> Raw {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let src: IpAddr = src.parse().unwrap();
        sock.bind(&SocketAddr::new(src, 0).into()).expect("bind the source address");
        sock.connect(&to.into()).expect("connect");
        let s: TcpStream = sock.into();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Raw { r: BufReader::new(s) }
    }

    fn post(&mut self, path: &str, body: &[u8]) -> Answer {
        // One write: a head and a body in two would wait on Nagle and delayed ACKs.
        let mut req =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        req.extend_from_slice(body);
        self.r.get_mut().write_all(&req).unwrap();
        self.read_answer()
    }

    fn read_answer(&mut self) -> Answer {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("a status line");
        let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).expect("a header line");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').expect("a header");
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse::<usize>().unwrap());
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).expect("the body");
        Answer { status, headers, body }
    }
}

/// The value of the sample `name{labels}` on `/metrics` (0 when absent).
fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A key the legitimate client has used (a stream_ctl request), and a check that it still
/// works: another stream_ctl with it.
fn use_key(w: &dap_reactor::Worker, base: &str, enc: &EncSession) -> bool {
    let http = ClientConfig::default();
    let r = stream_ctl_blocking(w, base, enc, b"E", None, MuxConfig::default(), &http);
    if let Err(e) = &r {
        eprintln!("stream_ctl: {e}");
    }
    r.is_ok()
}

/// A daemon with `cfg`, and a client reactor to make keys from 127.0.0.1.
struct Keyed {
    d: dap_server::Node,
    client: dap_reactor::Reactor,
    base: String,
}

impl Keyed {
    fn start(cfg: dap_server::Config) -> Keyed {
        let d = daemon(cfg);
        let base = format!("http://{}", d.local_addr());
        Keyed { d, client: client_reactor(), base }
    }

    fn worker(&self) -> &dap_reactor::Worker {
        &self.client.workers()[0]
    }

    /// A new key, through the real client handshake.
    fn key(&self) -> EncSession {
        let node = Some(self.d.node_public_key());
        let http = ClientConfig::default();
        handshake_blocking(self.worker(), &self.base, &CipherSuite::ALL, None, node, &http).unwrap()
    }

    /// Uses `enc` (a stream_ctl request); true if the node still knows it.
    fn use_key(&self, enc: &EncSession) -> bool {
        use_key(self.worker(), &self.base, enc)
    }
}

/// A key used for a stream survives a flood of 20,000 handshakes from another source: the
/// flood is cut to its burst by the per-source rate (429 with Retry-After, counted), the
/// handshakes it did get only push out never-used keys, and a third source is unaffected.
#[test]
fn a_key_in_use_survives_a_20000_handshake_flood_from_another_source() {
    let mut cfg = config(1);
    cfg.enc.max_keys = 64;
    cfg.enc.handshake_rate = 10;
    cfg.enc.handshake_burst = 300;
    let k = Keyed::start(cfg);
    let addr = k.d.local_addr();
    let enc = k.key();
    assert!(k.use_key(&enc), "the key works before the flood");

    let (_, body) = EncInit::start(&CipherSuite::ALL, None);
    let mut flood = Raw::connect_from("127.0.0.2", addr);
    let (mut ok, mut limited) = (0u32, 0u32);
    for _ in 0..20_000 {
        let a = flood.post("/enc_init", &body);
        match a.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(a.header("enc-error"), Some("rate-limited"));
                let after: u64 = a.header("retry-after").unwrap().parse().unwrap();
                assert!(after >= 1);
            }
            s => panic!("the flood got {s}: {:?}", String::from_utf8_lossy(&a.body)),
        }
    }
    // 300 at once, then 10 a second for as long as the flood lasted.
    assert!((300..2_000).contains(&ok), "{ok} handshakes got through");
    assert_eq!(ok + limited, 20_000);

    assert!(k.use_key(&enc), "the key in use survived the flood");
    // Another source has its own budget.
    let other = Raw::connect_from("127.0.0.3", addr).post("/enc_init", &body);
    assert_eq!(other.status, 200);
    let rate_limited = metric(addr, "dap_enc_errors_total{kind=\"rate_limited\"}");
    assert_eq!(rate_limited, f64::from(limited));
    // The store held 64: the flood's own keys made room for each other.
    let evicted = metric(addr, "dap_enc_keys_removed_total{reason=\"evicted\"}");
    assert!(evicted >= f64::from(ok) - 64.0, "{evicted} evicted for {ok} handshakes");
    assert!(metric(addr, "dap_enc_keys_used") >= 1.0);
}

/// A store full of keys in use answers new handshakes `503 busy` with `Retry-After`, and
/// evicts none of them.
#[test]
fn a_store_full_of_keys_in_use_refuses_handshakes_with_503() {
    let mut cfg = config(1);
    cfg.enc.max_keys = 3;
    let k = Keyed::start(cfg);
    let addr = k.d.local_addr();
    let keys: Vec<EncSession> = (0..3)
        .map(|_| {
            let enc = k.key();
            assert!(k.use_key(&enc));
            enc
        })
        .collect();
    let (_, body) = EncInit::start(&CipherSuite::ALL, None);
    let mut raw = Raw::connect_from("127.0.0.2", addr);
    for _ in 0..5 {
        let a = raw.post("/enc_init", &body);
        assert_eq!(a.status, 503);
        assert_eq!(a.header("enc-error"), Some("busy"));
        assert!(a.header("retry-after").is_some());
    }
    for enc in &keys {
        assert!(k.use_key(enc), "every key in use is still there");
    }
    assert_eq!(metric(addr, "dap_enc_errors_total{kind=\"busy\"}"), 5.0);
    assert_eq!(metric(addr, "dap_enc_keys_removed_total{reason=\"evicted\"}"), 0.0);
}

/// Whether the server closed `s` without answering (it was refused at accept).
fn closed_unanswered(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Connections holding half a request head, from one source: past the per-source bound
/// each new one is closed at accept and counted, another source is served throughout, and
/// the places come back when the held connections close.
#[test]
fn half_header_connections_are_bounded_per_source() {
    let mut cfg = config(1);
    cfg.listen.max_connections_per_source = 20;
    let d = daemon(cfg);
    let addr = d.local_addr();
    let half = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut held: Vec<Raw> = (0..20)
        .map(|_| {
            let mut r = Raw::connect_from("127.0.0.2", addr);
            r.r.get_mut().write_all(half).unwrap();
            r
        })
        .collect();
    // The bound is reached once the server has taken all 20: each further one is closed.
    wait_until("the 21st connection is refused", || {
        let mut extra = Raw::connect_from("127.0.0.2", addr);
        let _ = extra.r.get_mut().write_all(half);
        closed_unanswered(extra.r.get_mut())
    });
    for _ in 0..10 {
        let mut extra = Raw::connect_from("127.0.0.2", addr);
        let _ = extra.r.get_mut().write_all(half);
        assert!(closed_unanswered(extra.r.get_mut()));
    }
    // Each holds its half head, parked in storage of its size: not a read buffer.
    wait_until("the 20 half heads to be parked", || {
        metric(addr, "dap_buffer_bytes") == (20 * half.len()) as f64
    });
    // Another source is served.
    let mut legit = Raw::connect_from("127.0.0.3", addr);
    legit.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(legit.read_answer().status, 200);
    let limited =
        metric(addr, "dap_connections_refused_total{listener=\"plain\",reason=\"limit\"}");
    assert!(limited >= 10.0, "{limited}");
    assert!(metric(addr, "dap_connection_limit_refusals_total{limit=\"per_source\"}") >= 10.0);
    // The held connections finish their heads: answered (nothing acknowledged is lost).
    for r in &mut held[..5] {
        r.r.get_mut().write_all(b"1\r\n\r\n").unwrap();
        assert_eq!(r.read_answer().status, 200);
    }
    // Closing them gives the places back, and the bytes they held.
    held.clear();
    wait_until("the held bytes to come back", || metric(addr, "dap_buffer_bytes") == 0.0);
    wait_until("the source may connect again", || {
        let mut again = Raw::connect_from("127.0.0.2", addr);
        again.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").is_ok()
            && !closed_unanswered(again.r.get_mut())
    });
}

/// A stream attached by hand over a raw connection from a chosen source: the attacker's
/// side, which can send what a well-behaved client never would (half a message).
struct RawStream {
    tcp: TcpStream,
    sealer: Sealer,
    opener: Opener,
    buf: Vec<u8>,
    max_payload: usize,
}

impl RawStream {
    fn attach(k: &Keyed, src: &str) -> RawStream {
        let enc = k.key();
        let http = ClientConfig::default();
        let params =
            stream_ctl_blocking(k.worker(), &k.base, &enc, b"E", None, MuxConfig::default(), &http)
                .expect("stream_ctl");
        let mut raw = Raw::connect_from(src, k.d.local_addr());
        let req = dap_stream::transport::http::upgrade_request(&params, "x");
        raw.r.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        raw.r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 101"), "upgrade: {line:?}");
        while line != "\r\n" {
            line.clear();
            raw.r.read_line(&mut line).unwrap();
        }
        let buf = raw.r.buffer().to_vec();
        let (sealer, opener) = params.packet_keys(false);
        let max_payload = params.limits.max_payload;
        RawStream { tcp: raw.r.into_inner(), sealer, opener, buf, max_payload }
    }

    /// Sends one data frame on channel `E`: `first` names a message's total, `more` says
    /// whether frames follow.
    fn data(&mut self, first: Option<u32>, more: bool, len: usize) {
        let mut out = Vec::new();
        let start = Sealer::begin(&mut out);
        dap_stream::codec::frame::put_data_header(&mut out, b'E', 1, first, more, len);
        out.resize(out.len() + len, 7);
        self.sealer.seal(PacketType::Data, &mut out, start);
        self.tcp.write_all(&out).unwrap();
    }

    /// Reads packets until the server's CLOSE; returns its code and reason.
    fn close(&mut self) -> (u16, String) {
        loop {
            if let Ok(Some(h)) = packet::parse_header(&self.buf, self.max_payload)
                && self.buf.len() >= h.packet_len()
            {
                let plain = self.opener.open(&h, &mut self.buf).expect("a packet that opens");
                if h.ty == PacketType::Close {
                    return packet::parse_close(plain).expect("a CLOSE payload");
                }
                self.buf.drain(..h.packet_len());
                continue;
            }
            let mut chunk = [0u8; 65536];
            let n = self.tcp.read(&mut chunk).expect("the stream until its CLOSE");
            assert!(n > 0, "the connection ended without a CLOSE");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Streams that send part of a message and hold it: the server charges each the buffer it
/// reserves, refuses the one that would pass `stream.max_reassembly` (CLOSE code 4),
/// closes the rest once their messages sit idle past `stream.partial_timeout_ms` (code 2),
/// counts both, and gives the memory back; a legitimate client echoes throughout.
#[test]
fn held_partial_messages_are_bounded_and_time_out() {
    const WINDOW: usize = 256 << 10;
    let mut cfg = config(1);
    cfg.stream.max_message = 1 << 20;
    cfg.stream.max_reassembly = 4 * WINDOW;
    cfg.stream.max_session_reassembly = 1 << 20;
    cfg.stream.channel_window = WINDOW as u32;
    cfg.stream.partial_timeout_ms = 1_000;
    let k = Keyed::start(cfg);
    let addr = k.d.local_addr();
    let legit = open(&k.client, addr, k.d.node_public_key(), b"E").expect("legit session");
    let echo = |n: u8| {
        legit.channel(b'E').write_timeout(1, vec![n; 100], TIMEOUT).unwrap();
        assert_eq!(legit.next().data.as_ref(), &[n; 100][..]);
    };
    echo(0);
    // Four holders: each first frame reserves a window (the message is larger), 4 in all.
    let mut holders: Vec<RawStream> = (2..6)
        .map(|i| {
            let mut s = RawStream::attach(&k, &format!("127.0.0.{i}"));
            s.data(Some(1 << 20), true, 16 << 10);
            s
        })
        .collect();
    wait_until("the holders' buffers are charged", || {
        metric(addr, "dap_stream_reassembly_bytes") == (4 * WINDOW) as f64
    });
    echo(1);
    // A fifth would pass the budget: closed with code 4, and counted.
    let mut fifth = RawStream::attach(&k, "127.0.0.6");
    fifth.data(Some(1 << 20), true, 16 << 10);
    assert_eq!(fifth.close().0, 4);
    assert_eq!(metric(addr, "dap_stream_reassembly_refused_total"), 1.0);
    echo(2);
    // The holders' messages sit idle: each stream closes with code 2 and frees its buffer.
    for h in &mut holders {
        let (code, reason) = h.close();
        assert_eq!(code, 2, "{reason}");
    }
    wait_until("the buffers come back", || metric(addr, "dap_stream_reassembly_bytes") == 0.0);
    assert_eq!(metric(addr, "dap_stream_errors_total{kind=\"partial_timeout\"}"), 4.0);
    echo(3);
}

/// Connections that pipeline requests and never read the answers: past
/// `reactor.limits.buffer_budget` their output may only grow to the low-water mark, so
/// what they hold is bounded by the budget plus that mark and one input buffer each; new
/// connections are refused while the budget is exhausted (counted), a connection that was
/// already open is served throughout, and the memory comes back when the readers go.
#[test]
fn pipelining_non_readers_are_held_to_the_buffer_budget() {
    const BUDGET: usize = 1 << 20;
    const LOW: usize = 16 << 10;
    const IN_CAP: usize = 64 << 10;
    const N: usize = 40;
    let mut cfg = config(1);
    cfg.reactor.limits.buffer_budget = BUDGET;
    cfg.reactor.limits.buf_out_low_water = LOW;
    cfg.reactor.limits.buf_in_cap = IN_CAP;
    // Small answers (so the reader's own pipelined requests stay small) from a route
    // whose answer is a few KiB.
    let d = daemon(cfg);
    let addr = d.local_addr();
    let mut legit = Raw::connect_from("127.0.0.3", addr);
    legit.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(legit.read_answer().status, 200);

    let requests = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2_000);
    let attackers: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut r = Raw::connect_from("127.0.0.2", addr);
            let s = r.r.get_mut();
            s.set_nonblocking(true).unwrap();
            let _ = s.write(&requests);
            r.r.into_inner()
        })
        .collect();
    let mut sample = |name: &str| {
        legit.r.get_mut().write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let a = legit.read_answer();
        assert_eq!(a.status, 200, "the connection opened before the attack is served");
        let text = String::from_utf8(a.body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_until("the budget to hold writers back", || {
        sample("dap_buffer_budget_write_refusals_total") > 0.0
    });
    // Let the writers settle where the budget stops them, past it.
    let mut last = -1.0;
    wait_until("the buffers to pass the budget and stop growing", || {
        let now = sample("dap_buffer_bytes");
        let settled = now == last && now > BUDGET as f64;
        last = now;
        settled
    });
    let peak = sample("dap_buffer_peak_bytes");
    let bound = (BUDGET + N * (LOW + IN_CAP + (64 << 10))) as f64;
    assert!(peak <= bound, "peak {peak} over {bound}");
    // Exhausted: a new connection is refused at accept.
    let mut late = Raw::connect_from("127.0.0.4", addr);
    let _ = late.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(closed_unanswered(late.r.get_mut()));
    assert!(sample("dap_buffer_budget_refused_total") >= 1.0);
    // The readers go: memory comes back, new connections are served again.
    drop(attackers);
    wait_until("the buffers to come back", || sample("dap_buffer_bytes") < (64 << 10) as f64);
    let mut again = Raw::connect_from("127.0.0.4", addr);
    again.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(again.read_answer().status, 200);
}

/// dapd at its descriptor limit (a `prlimit` of 128): accepts fail, each failure is counted
/// and retried on a timer (no busy loop), the warning is logged at most five times in ten
/// seconds however many there are, a client connected before is served throughout, and
/// once the flood goes new clients are accepted again.
#[test]
fn accepts_at_the_descriptor_limit_are_counted_and_their_log_is_throttled() {
    let d = spawn_dapd_with(
        "budgets",
        "emfile",
        "[udp]\nenabled = false\n",
        &["prlimit", "--nofile=128:128"],
    );
    let mut legit = Raw::connect_from("127.0.0.3", d.addr);
    legit.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(legit.read_answer().status, 200);
    // Many more connections than descriptors: the kernel completes them (the backlog),
    // dapd cannot take them.
    let flood: Vec<TcpStream> =
        (0..400).map(|_| Raw::connect_from("127.0.0.2", d.addr).r.into_inner()).collect();
    // Asked on the connection made before: a new one would not be accepted now.
    let mut failed = || {
        legit.r.get_mut().write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let a = legit.read_answer();
        assert_eq!(a.status, 200, "the client connected before is served");
        let text = String::from_utf8(a.body).unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with("dap_worker_errors_total{") && l.contains("kind=\"accept_failed\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    wait_until("accepts to fail at the limit", || failed() >= 10.0);
    let warned = d.log.try_iter().filter(|l| l.contains("accept failed")).count();
    assert!((1..=5).contains(&warned), "{warned} accept warnings logged");
    // The flood goes: new clients are accepted again.
    drop(flood);
    wait_until("a new client is served again", || {
        let mut again = Raw::connect_from("127.0.0.4", d.addr);
        again.r.get_mut().set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        again.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").is_ok()
            && !closed_unanswered(again.r.get_mut())
    });
}
