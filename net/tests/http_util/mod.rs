//! Helpers for the HTTP server tests: servers with test routes, a raw client, bounded waits.
#![allow(dead_code)]

pub mod cert;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dap_net::http::Response;
use dap_net::http::server::{
    BodyFlow, Exchange, HttpConfig, HttpServer, ProcHandler, RouteLimits, RunningHttp,
};
use dap_net::server::Server;
use dap_proc::ProcPool;
use dap_reactor::{Esocket, Handler, Reactor};

/// Every wait in these tests ends within this.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A reactor, its proc pool and an HTTP server with the test routes.
pub struct TestServer {
    pub http: RunningHttp,
    pub addr: SocketAddr,
    pub pool: Option<ProcPool>,
    pub reactor: Reactor,
    /// Holds the answers of `/gate` (on a proc thread) until [`TestServer::open_gate`].
    gate: Arc<Gate>,
}

impl TestServer {
    pub fn stats(&self) -> dap_net::http::server::HttpStatsSnapshot {
        self.http.stats()
    }

    /// Lets every `/gate` request (waiting or future) be answered.
    pub fn open_gate(&self) {
        *self.gate.open.lock().unwrap() = true;
        self.gate.cv.notify_all();
    }
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    /// Waits (at most [`TIMEOUT`]) for the gate to open; whether it did.
    fn pass(&self) -> bool {
        let open = self.open.lock().unwrap();
        let (open, _) = self.cv.wait_timeout_while(open, TIMEOUT, |o| !*o).unwrap();
        *open
    }
}

/// Default timeouts, proc pool attached.
pub fn server() -> TestServer {
    server_with(HttpConfig::default(), true)
}

/// Timeouts of 300 ms, for the slow-client tests.
pub fn short_server() -> TestServer {
    let mut config = HttpConfig::default();
    config.header_timeout = Duration::from_millis(300);
    config.body_timeout = Duration::from_millis(300);
    config.keep_alive_timeout = Duration::from_millis(300);
    config.write_timeout = Duration::from_millis(300);
    server_with(config, true)
}

pub fn server_with(config: HttpConfig, with_pool: bool) -> TestServer {
    let reactor = Reactor::builder().threads(2).pin(false).start().expect("reactor");
    let pool = with_pool.then(|| ProcPool::builder().pin(false).start_for(&reactor).expect("pool"));
    let mut http = HttpServer::new(config);
    http.add_inline("/", RouteLimits::default(), |_| Response::text(200, "Hello, World!"));
    // Answers with the query, so pipelined answers can be told apart.
    http.add_inline("/q", RouteLimits::default(), |req| {
        Response::text(200, req.query().unwrap_or("").to_string())
    });
    http.add_simple("/echo", RouteLimits::default().max_body(1024), |req| {
        Response::new(200).body(req.body.clone())
    });
    http.add_simple("/pq", RouteLimits::default(), |req| {
        Response::text(200, req.query().unwrap_or("").to_string())
    });
    http.add_simple("/len", RouteLimits::default().length_required(true), |req| {
        Response::text(200, req.body.len().to_string())
    });
    http.add_simple("/panic", RouteLimits::default(), |_| panic!("a handler panics on purpose"));
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    http.add_simple("/gate", RouteLimits::default(), move |_| {
        if g.pass() { Response::text(200, "opened") } else { Response::text(504, "gate shut") }
    });
    http.add_inline("/big", RouteLimits::default(), |_| {
        Response::new(200).body(vec![b'x'; 1 << 20])
    });
    // A whole-request handler for a tree of paths: answers with the path it was given.
    http.add_simple_prefix("/tree/", RouteLimits::default(), |req| {
        Response::text(200, req.path().to_string())
    });
    http.add_proc("/stream/", |_| Box::new(Chunks { left: 5 }));
    http.add_proc("/upgrade", |_| Box::new(Upgrader));
    http.add_proc("/later", |_| Box::new(Later));
    let http =
        http.start(&reactor, Server::builder().tcp("127.0.0.1:0".parse().unwrap())).expect("start");
    let addr = http.server().tcp_addrs()[0];
    TestServer { http, addr, pool, reactor, gate }
}

/// Streams `left` chunks of "chunk\n", one per `data_write`.
struct Chunks {
    left: u32,
}

impl ProcHandler for Chunks {
    fn request_done(&mut self, ex: &mut Exchange<'_, '_>) {
        ex.start(
            200,
            vec![("Content-Type".into(), bytes::Bytes::from_static(b"text/plain"))],
            None,
        );
    }

    fn data_write(&mut self, ex: &mut Exchange<'_, '_>) -> BodyFlow {
        if self.left == 0 {
            return BodyFlow::Done;
        }
        match ex.write(b"chunk\n") {
            Ok(_) => {
                self.left -= 1;
                BodyFlow::More
            }
            Err(_) => BodyFlow::More,
        }
    }
}

/// Answers 101 and hands the connection to an echo handler.
struct Upgrader;

impl ProcHandler for Upgrader {
    fn headers_read(&mut self, ex: &mut Exchange<'_, '_>) {
        if !ex.request().upgrade {
            ex.respond(Response::text(426, "upgrade required"));
            return;
        }
        ex.upgrade(
            Response::new(101).header("Connection", "upgrade").header("Upgrade", "echo"),
            Box::new(Echo),
        );
    }

    fn request_done(&mut self, _: &mut Exchange<'_, '_>) {}
}

struct Echo;

impl Handler for Echo {
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        let _ = es.copy_in_to_out();
    }
}

/// Answers from another thread after the request is read.
struct Later;

impl ProcHandler for Later {
    fn request_done(&mut self, ex: &mut Exchange<'_, '_>) {
        let responder = ex.responder();
        std::thread::spawn(move || {
            let _ = responder.respond(Response::text(200, "later"));
        });
    }
}

/// A connected client with read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Reads one response from `s` (`head_only`: the request was HEAD). Bytes after it stay in
/// `pending` for the next call.
pub struct Reader {
    pub s: TcpStream,
    pending: Vec<u8>,
}

impl Reader {
    pub fn new(s: TcpStream) -> Self {
        Reader { s, pending: Vec::new() }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.s.write_all(data).expect("send");
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut buf = [0u8; 16384];
        let n = self.s.read(&mut buf)?;
        self.pending.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// The next response; panics if the connection closes first or the wait runs out.
    #[track_caller]
    pub fn response(&mut self, head_only: bool) -> Resp {
        self.try_response(head_only).expect("a response")
    }

    /// The next response, or `None` if the connection closed before one began.
    #[track_caller]
    pub fn try_response(&mut self, head_only: bool) -> Option<Resp> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            match r.parse(&self.pending).expect("well-formed response head") {
                httparse::Status::Complete(n) => {
                    let status = r.code.unwrap();
                    let hs: Vec<(String, String)> = r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
                        .collect();
                    self.pending.drain(..n);
                    let mut resp = Resp { status, headers: hs, body: Vec::new() };
                    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
                        return Some(resp);
                    }
                    if let Some(len) = resp.header("content-length") {
                        let len: usize = len.parse().unwrap();
                        while self.pending.len() < len {
                            assert!(Instant::now() < deadline, "timed out reading a body");
                            assert!(self.fill().expect("read body") > 0, "closed mid-body");
                        }
                        resp.body = self.pending.drain(..len).collect();
                    } else if resp.header("transfer-encoding").is_some() {
                        resp.body = self.chunked(deadline);
                    } else {
                        while self.fill().map(|n| n > 0).unwrap_or(false) {}
                        resp.body = std::mem::take(&mut self.pending);
                    }
                    return Some(resp);
                }
                httparse::Status::Partial => {
                    assert!(Instant::now() < deadline, "timed out waiting for a response");
                    match self.fill() {
                        Ok(0) => {
                            assert!(self.pending.is_empty(), "closed mid-head");
                            return None;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
                        Err(e) => panic!("reading a response: {e}"),
                    }
                }
            }
        }
    }

    fn chunked(&mut self, deadline: Instant) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(Instant::now() < deadline, "timed out reading a chunk");
                assert!(self.fill().expect("read chunk") > 0, "closed mid-chunk");
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&self.pending[..line_end]).unwrap().trim(),
                16,
            )
            .unwrap();
            self.pending.drain(..line_end + 2);
            while self.pending.len() < size + 2 {
                assert!(Instant::now() < deadline, "timed out reading a chunk");
                assert!(self.fill().expect("read chunk") > 0, "closed mid-chunk");
            }
            body.extend(self.pending.drain(..size));
            self.pending.drain(..2);
            if size == 0 {
                return body;
            }
        }
    }

    /// Reads exactly `n` bytes (after any already buffered).
    #[track_caller]
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        while self.pending.len() < n {
            assert!(Instant::now() < deadline, "timed out reading {n} bytes");
            assert!(self.fill().expect("read") > 0, "closed early");
        }
        self.pending.drain(..n).collect()
    }

    /// True if nothing arrives (no byte, no end of stream) for `d`. A bound on how long to
    /// look, not a synchronisation: it can only miss a fault that shows later.
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        self.s.set_read_timeout(Some(d)).unwrap();
        let got = self.fill();
        self.s.set_read_timeout(Some(TIMEOUT)).unwrap();
        matches!(got, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut)
    }

    /// Ends our side, then waits for the server to close; true on an orderly close or
    /// reset. (A server that lingers after an error waits for exactly this.)
    pub fn closed(&mut self) -> bool {
        let _ = self.s.shutdown(std::net::Shutdown::Write);
        self.closed_by_server()
    }

    /// Waits, our side still open, for the server to close on its own.
    pub fn closed_by_server(&mut self) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
        false
    }
}

/// Sends one raw request on a fresh connection and reads one response.
#[track_caller]
pub fn exchange(addr: SocketAddr, raw: &[u8]) -> (Resp, Reader) {
    let mut r = Reader::new(connect(addr));
    r.send(raw);
    let resp = r.response(raw.starts_with(b"HEAD "));
    (resp, r)
}

/// A plain `GET /` on a fresh connection answers 200: the server is up.
#[track_caller]
pub fn assert_serving(addr: SocketAddr) {
    let (resp, _) = exchange(addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"Hello, World!");
}

/// Polls `cond` until it holds or the wait runs out.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn shared<T>(v: T) -> Arc<T> {
    Arc::new(v)
}
