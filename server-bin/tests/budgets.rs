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
    // Closing them gives the places back.
    held.clear();
    wait_until("the source may connect again", || {
        let mut again = Raw::connect_from("127.0.0.2", addr);
        again.r.get_mut().write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").is_ok()
            && !closed_unanswered(again.r.get_mut())
    });
}
