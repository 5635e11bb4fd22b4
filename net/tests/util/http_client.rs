//! Helpers for the HTTP client tests: a reactor that counts callbacks, one-connection
//! servers on std sockets that answer with canned bytes, and the project's own HTTP server
//! over TLS with a fresh self-signed certificate.
//!
//! Every wait is bounded by [`TIMEOUT`]; nothing sleeps to synchronise. The only sleeps are
//! the short pauses of polling loops that re-check a condition until a deadline.

// Each test file that includes this module uses a different subset of it.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use dap_net::http::client::{self, ClientConfig, ClientError, Request, Response};
use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits, RunningHttp};
use dap_net::tls::{self, Trust};
use dap_reactor::{Reactor, Worker};

/// The bound on every wait. Generous: the machines are shared and have 2 cores.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Receives from a channel, failing the test after [`TIMEOUT`].
#[track_caller]
pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(TIMEOUT) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
        Err(RecvTimeoutError::Disconnected) => panic!("channel closed while waiting for {what}"),
    }
}

/// Starts a small unpinned reactor.
#[track_caller]
pub fn reactor(threads: usize) -> Reactor {
    Reactor::builder()
        .threads(threads)
        .pin(false)
        .name("http-client-test")
        .start()
        .expect("reactor starts")
}

/// Stops a reactor and waits for its threads, failing the test after [`TIMEOUT`].
#[track_caller]
pub fn shutdown(reactor: Reactor) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        reactor.shutdown(Duration::from_secs(1));
        let _ = tx.send(());
    });
    recv(&rx, "the reactor to stop");
}

/// A one-worker reactor whose requests are all checked to call back exactly once.
pub struct Client {
    reactor: Reactor,
    calls: Vec<Arc<AtomicUsize>>,
}

impl Client {
    #[track_caller]
    pub fn new() -> Client {
        Client { reactor: reactor(1), calls: Vec::new() }
    }

    pub fn worker(&self) -> &Worker {
        self.reactor.worker(0).expect("worker 0")
    }

    /// Runs `req` through [`client::fetch_on`] and waits for its callback.
    #[track_caller]
    pub fn fetch(&mut self, req: Request, config: ClientConfig) -> Result<Response, ClientError> {
        let calls = Arc::new(AtomicUsize::new(0));
        self.calls.push(calls.clone());
        let (tx, rx) = mpsc::channel();
        client::fetch_on(self.worker(), req, config, move |_, result| {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send(result);
        })
        .expect("the request is posted");
        recv(&rx, "the request's callback")
    }

    /// Stops the reactor and checks that every callback ran exactly once: by the time the
    /// worker has exited, anything still pending would have been delivered.
    #[track_caller]
    pub fn finish(self) {
        shutdown(self.reactor);
        for (i, calls) in self.calls.iter().enumerate() {
            assert_eq!(calls.load(Ordering::SeqCst), 1, "callback of request {i}");
        }
    }
}

/// What a test server read: the request head as text, and the body its Content-Length
/// announced.
#[derive(Debug)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

impl Received {
    /// The value of a request header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A server for exactly one connection, on its own thread.
pub struct Server {
    pub addr: SocketAddr,
    received: Receiver<Received>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `bind` (port 0), accepts one connection, reads one request, reports it,
    /// then hands the stream to `reply`. The stream closes when `reply` returns.
    #[track_caller]
    pub fn start(bind: &str, reply: impl FnOnce(&mut TcpStream) + Send + 'static) -> Server {
        let listener = TcpListener::bind(bind).expect("test server binds");
        Server::on(listener, reply)
    }

    /// As [`start`](Self::start), on an existing listener.
    pub fn on(
        listener: TcpListener,
        reply: impl FnOnce(&mut TcpStream) + Send + 'static,
    ) -> Server {
        let addr = listener.local_addr().expect("local addr");
        let (tx, received) = mpsc::channel();
        let thread = thread::spawn(move || {
            let Some(mut stream) = accept(&listener) else { return };
            let Some(request) = read_request(&mut stream) else { return };
            let _ = tx.send(request);
            reply(&mut stream);
        });
        Server { addr, received, thread: Some(thread) }
    }

    /// `http://addr` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The request the server read.
    #[track_caller]
    pub fn received(&self) -> Received {
        recv(&self.received, "the server to read the request")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take()
            && !thread::panicking()
        {
            // Every step of the thread is bounded, so this join is too.
            t.join().expect("test server thread");
        }
    }
}

/// Accepts one connection within [`TIMEOUT`], as a blocking stream with bounded reads and
/// writes.
pub fn accept(listener: &TcpListener) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                stream.set_read_timeout(Some(TIMEOUT)).ok()?;
                stream.set_write_timeout(Some(TIMEOUT)).ok()?;
                let _ = stream.set_nodelay(true);
                return Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
}

/// Reads a request head, then as many body bytes as its Content-Length says.
fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut received = Received { head, body: buf[head_end..].to_vec() };
    let length: usize = received.header("content-length").map_or(Some(0), |v| v.parse().ok())?;
    while received.body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        received.body.extend_from_slice(&chunk[..n]);
    }
    Some(received)
}

/// Writes `bytes` and keeps the connection open until the client closes it (bounded): proves
/// the client finished without waiting for the server to close.
pub fn reply_and_wait_for_close(bytes: &'static [u8]) -> impl FnOnce(&mut TcpStream) + Send {
    move |stream| {
        stream.write_all(bytes).expect("server writes");
        wait_for_close(stream);
    }
}

/// Writes `bytes` and closes.
pub fn reply_and_close(bytes: &'static [u8]) -> impl FnOnce(&mut TcpStream) + Send {
    move |stream| stream.write_all(bytes).expect("server writes")
}

/// Reads until end of stream or an error, within [`TIMEOUT`].
pub fn wait_for_close(stream: &mut TcpStream) {
    let mut sink = [0u8; 1024];
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A config whose timeouts end a broken test quickly but not spuriously.
pub fn config() -> ClientConfig {
    let mut c = ClientConfig::default();
    c.connect_timeout = TIMEOUT;
    c.response_timeout = TIMEOUT;
    c
}

/// A TCP port on 127.0.0.1 that nothing listens on: bound, then released.
pub fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr
}

/// A listening address whose accept queue is full, so that a connect to it hangs in SYN_SENT
/// (Linux drops SYNs to a full queue): a reactor with backlog 0 whose only worker is held
/// busy, and connects that fill the queue. Drop the guard to release everything.
pub struct Unanswered {
    pub addr: SocketAddr,
    release: Option<mpsc::Sender<()>>,
    reactor: Option<Reactor>,
    _fillers: Vec<TcpStream>,
}

impl Unanswered {
    #[track_caller]
    pub fn new() -> Unanswered {
        let reactor = Reactor::builder().threads(1).pin(false).backlog(0).start().expect("reactor");
        let listening = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &dap_reactor::PeerAddr| None)
            .expect("listen");
        let addr = listening.local_addr().expect("listener addr");
        // Hold the worker so that it never accepts; bounded in case the test dies first.
        let (release, held) = mpsc::channel::<()>();
        let (busy_tx, busy) = mpsc::channel();
        reactor
            .worker(0)
            .unwrap()
            .exec(move |_| {
                let _ = busy_tx.send(());
                let _ = held.recv_timeout(TIMEOUT);
            })
            .expect("hold the worker");
        recv(&busy, "the listener's worker to be held");
        let mut fillers = Vec::new();
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fillers.push(s),
                Err(e) if e.kind() == ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the accept queue: {e}"),
            }
            assert!(fillers.len() < 64, "the accept queue never filled");
        }
        Unanswered { addr, release: Some(release), reactor: Some(reactor), _fillers: fillers }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(reactor) = self.reactor.take() {
            shutdown(reactor);
        }
    }
}

#[path = "../http_util/cert.rs"]
mod cert;
pub use cert::Cert;

impl Cert {
    /// A client config (test timeouts) that trusts exactly this certificate.
    pub fn pinned(&self) -> ClientConfig {
        let mut c = config();
        c.tls = Some(tls::client_config(Trust::Pinned(self.der.clone())).expect("pinned config"));
        c
    }

    /// A client config (test timeouts) with this certificate as its only root: unlike
    /// [`pinned`](Self::pinned), the server's name is checked.
    pub fn as_root(&self) -> ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut c = config();
        c.tls = Some(Arc::new(tls));
        c
    }
}

/// The project's HTTP server over TLS, on a reactor of its own, listening on 127.0.0.1:
/// `/hello` answers `hello`; `/echo` answers with the request's body, and its method and
/// `Host` in `X-Method` and `X-Host`.
pub struct HttpsServer {
    pub addr: SocketAddr,
    running: Option<RunningHttp>,
    reactor: Option<Reactor>,
}

impl HttpsServer {
    #[track_caller]
    pub fn start(cert: &Cert) -> HttpsServer {
        let reactor = reactor(1);
        let mut http = HttpServer::new(HttpConfig::default());
        http.add_inline("/hello", RouteLimits::default(), |_| {
            dap_net::http::Response::text(200, "hello")
        });
        http.add_inline("/echo", RouteLimits::default(), |req| {
            dap_net::http::Response::new(200)
                .header("X-Method", req.method().to_string())
                .header("X-Host", req.header("host").unwrap_or_default().to_vec())
                .body(req.body.clone())
        });
        let server_config = cert.server_config();
        http.tls(server_config);
        let running = http
            .start(&reactor, dap_net::server::Server::builder().tcp("127.0.0.1:0".parse().unwrap()))
            .expect("https server starts");
        let addr = running.server().tcp_addrs()[0];
        HttpsServer { addr, running: Some(running), reactor: Some(reactor) }
    }

    /// `https://host:port` followed by `path`, for this server's port.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        drop(self.running.take());
        if let Some(reactor) = self.reactor.take() {
            shutdown(reactor);
        }
    }
}
