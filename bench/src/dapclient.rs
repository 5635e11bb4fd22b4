//! A blocking dap stream client over a plain `std::net::TcpStream`, built from the library's
//! sans-IO pieces, for `setup`, `udp` (its set-ups) and `memory`.
//!
//! [`open_session`] does the three steps of a session set-up on ONE keep-alive connection:
//! `POST /enc_init` (X25519 + the node's Ed25519 signature, checked against the pinned node
//! key), `POST /stream_ctl` sealed with the new enc key, and `GET /stream/<channels>` with
//! `Upgrade: dap-stream/2`, answered `101`. [`StreamClient`] then carries the session's
//! [`Mux`] over the same socket (sealing and opening stream packets itself).
//!
//! [`DapSetup`] is those steps without I/O; [`DapExchange`] drives it over a non-blocking
//! socket, for the load generators. With transport UDP the set-up ends at the stream_ctl
//! answer: the session then moves onto UDP, which is the caller's part.
//!
//! For `memory`'s attacks a session can also come from a chosen source address
//! ([`open_session_from`]), send all but the end of a message
//! ([`StreamClient::send_partial`]) and then sit on it, answering keepalives
//! ([`StreamClient::hold`]).
//!
//! For `cluster`, a set-up can send each step to another node ([`open_session_across`],
//! and over UDP [`open_udp_session`] then [`udp_echo`] to a third),
//! and a client made with [`StreamClient::with_inbox`] keeps the messages that arrive, so
//! that it can speak channel `'P'` ([`StreamClient::subscribe`],
//! [`StreamClient::queue_pubsub`], [`StreamClient::next_pubsub`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::enc::{CipherSuite, EncInit, EncSession, SealedRequest};
use dap_stream::codec::frame;
use dap_stream::codec::packet::{self, PacketType, Sealer};
use dap_stream::pubsub::{PUBSUB, PubSubMsg, Topic};
use dap_stream::session::SessionParams;
use dap_stream::session::TransportKind;
use dap_stream::session::ctl::CtlRequest;
use dap_stream::transport::Wake;
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, Mux, MuxConfig, SessionInfo};

/// Bound of every blocking read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest response head or body read.
const MAX_RESPONSE: usize = 64 << 10;

/// One HTTP/1.1 keep-alive connection with its read buffer.
pub struct HttpConn {
    /// The socket.
    pub tcp: TcpStream,
    /// Bytes read and not consumed yet.
    pub buf: Vec<u8>,
}

/// A response: status, the `Upgrade` header's value, and the body (`Content-Length` framed).
pub struct Resp {
    /// The status.
    pub status: u16,
    /// Whether it carried an `Enc-Error` header (an enc refusal).
    pub enc_error: Option<String>,
    /// The `Upgrade` header.
    pub upgrade: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpConn {
    /// Connects (bounded, from a fresh loopback source address: see [`connect_fresh`]), with
    /// `TCP_NODELAY` and bounded reads and writes.
    pub fn connect(addr: SocketAddr) -> io::Result<HttpConn> {
        HttpConn::over(connect_fresh(addr)?)
    }

    /// Connects (bounded) from the loopback address `src` (port chosen at `connect`), with
    /// `TCP_NODELAY` and bounded reads and writes: one client of several on one machine.
    pub fn connect_from(src: IpAddr, addr: SocketAddr) -> io::Result<HttpConn> {
        let sock = socket_from(src)?;
        sock.connect_timeout(&addr.into(), IO_TIMEOUT)?;
        HttpConn::over(sock.into())
    }

    fn over(tcp: TcpStream) -> io::Result<HttpConn> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(HttpConn { tcp, buf: Vec::with_capacity(4096) })
    }

    /// Sends one request (head and body in one write) and reads its response. A `101` ends
    /// at its head: what follows belongs to the upgraded protocol and stays in `buf`.
    pub fn exchange(&mut self, request: &[u8]) -> io::Result<Resp> {
        self.tcp.write_all(request)?;
        loop {
            if let Some((resp, used)) = parse_response(&self.buf).map_err(bad)? {
                self.buf.drain(..used);
                return Ok(resp);
            }
            self.fill()?;
        }
    }

    /// Reads once more into `buf`; EOF is an error.
    fn fill(&mut self) -> io::Result<()> {
        if self.buf.len() > MAX_RESPONSE + 4096 {
            return Err(bad("response too long".to_string()));
        }
        let mut chunk = [0u8; 16 << 10];
        let n = self.tcp.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Source addresses [`connect_fresh`] cycles through: 127.0.0.2 to 127.0.0.251.
const SOURCES: u32 = 250;
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

/// Connects to `addr` (bounded) from the next of [`SOURCES`] loopback addresses, the port
/// chosen at `connect` (`IP_BIND_ADDRESS_NO_PORT`).
///
/// The set-up benchmark opens a connection per set-up, ~100,000 a minute, and closes each
/// from the client side (a normal FIN), which leaves it in `TIME_WAIT` for 60 s. From one
/// source address those would fill the ~28,000 ephemeral ports, and `connect` gets slower the
/// fuller they are, more so for whoever runs later; spread over 250 source addresses they
/// never matter.
pub fn connect_fresh(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = fresh_socket(addr)?;
    sock.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    Ok(sock.into())
}

/// As [`connect_fresh`], non-blocking: the connect is under way when this returns.
pub fn connect_fresh_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = fresh_socket(addr)?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    match sock.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(sock.into())
}

/// A TCP socket bound to the next source address (port left to `connect`).
fn fresh_socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCES;
    if addr.ip().is_loopback() {
        socket_from(IpAddr::from([127, 0, 0, 2 + n as u8]))
    } else {
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
    }
}

/// A blocking TCP socket bound to the address `src`, its port left to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`, so that thousands of them from one address do not run out
/// of ports at `bind`). Several loopback addresses stand for several clients.
pub fn socket_from(src: IpAddr) -> io::Result<socket2::Socket> {
    use std::os::fd::AsRawFd;
    let domain = if src.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid, open socket owned by `sock`; the option value points to a
    // live `c_int` and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    sock.bind(&SocketAddr::new(src, 0).into())?;
    Ok(sock)
}

/// Parses one whole response at the start of `buf`: `Ok(None)` until it is all there;
/// otherwise the response and the bytes it took. A `101` ends at its head.
pub fn parse_response(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE {
            return Err("response head too long".to_string());
        }
        return Ok(None);
    };
    let head_len = end + 4;
    let head = String::from_utf8_lossy(&buf[..end]);
    let status: u16 = head
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len = if status == 101 {
        0
    } else {
        header("content-length")
            .ok_or_else(|| format!("no Content-Length in {head:?}"))?
            .parse::<usize>()
            .map_err(|e| format!("bad Content-Length: {e}"))?
    };
    if len > MAX_RESPONSE {
        return Err(format!("response body of {len} bytes"));
    }
    if buf.len() < head_len + len {
        return Ok(None);
    }
    let resp = Resp {
        status,
        enc_error: header("enc-error"),
        upgrade: header("upgrade"),
        body: buf[head_len..head_len + len].to_vec(),
    };
    Ok(Some((resp, head_len + len)))
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// A `POST` request with a body and extra headers.
pub fn post(target: &str, host: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A session set-up, sans-IO: the requests to send, in order, and what to make of each
/// answer. Used by [`open_session`] (blocking) and, through [`DapExchange`], by the epoll
/// load generators of `setup` and `udp`.
pub struct DapSetup {
    host: String,
    node_key: [u8; 32],
    channels: Vec<u8>,
    suite: Option<CipherSuite>,
    transport: TransportKind,
    step: Step,
}

enum Step {
    /// `POST /enc_init` sent.
    Init(EncInit),
    /// `POST /stream_ctl` sent.
    Ctl(Box<(EncSession, SealedRequest)>),
    /// `GET /stream/…` sent.
    Upgrade(SessionParams),
    /// `101` received (HTTP), or the stream_ctl answer (UDP).
    Done(SessionParams),
    /// Failed.
    Broken,
}

impl DapSetup {
    /// Starts a set-up with the server at `addr`: enc_init (pinning `node_key`), then
    /// stream_ctl for `channels` (cipher `suite`, or the server's choice) over `transport`,
    /// then, for HTTP, the upgrade. Returns the state and the first request to send.
    pub fn start(
        addr: SocketAddr,
        node_key: [u8; 32],
        channels: &[u8],
        suite: Option<CipherSuite>,
        transport: TransportKind,
    ) -> (DapSetup, Vec<u8>) {
        let host = addr.to_string();
        let (init, body) = EncInit::start(&CipherSuite::ALL, None);
        let req = post("/enc_init", &host, &[], &body);
        let s = DapSetup {
            host,
            node_key,
            channels: channels.to_vec(),
            suite,
            transport,
            step: Step::Init(init),
        };
        (s, req)
    }

    /// Takes the answer to the last request: the next request to send, or `None` when the
    /// stream is up (HTTP: `101`) or the session is granted (UDP: the stream_ctl answer).
    ///
    /// # Errors
    /// A refusal or an answer that does not check out; the set-up is over.
    pub fn on_response(&mut self, r: Resp) -> Result<Option<Vec<u8>>, String> {
        match std::mem::replace(&mut self.step, Step::Broken) {
            Step::Init(init) => {
                if r.status != 200 {
                    return Err(format!("enc_init: status {} ({:?})", r.status, r.enc_error));
                }
                let enc = init
                    .finish(&r.body, Some(self.node_key))
                    .map_err(|e| format!("enc_init: {e}"))?;
                let ctl = CtlRequest {
                    channels: self.channels.clone(),
                    suite: self.suite,
                    transport: self.transport,
                    unreliable: Vec::new(),
                };
                let sealed = enc
                    .seal_request("POST", "", None, &ctl.encode())
                    .map_err(|e| format!("seal: {e}"))?;
                let headers: Vec<(&str, &str)> =
                    sealed.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let req = post(&sealed.target("/stream_ctl"), &self.host, &headers, &sealed.body);
                self.step = Step::Ctl(Box::new((enc, sealed)));
                Ok(Some(req))
            }
            Step::Ctl(ctl) => {
                let (enc, sealed) = *ctl;
                if let Some(reason) = r.enc_error {
                    return Err(format!("stream_ctl: enc refusal {} {reason}", r.status));
                }
                let answer = enc
                    .open_response(&sealed, r.status, &r.body)
                    .map_err(|e| format!("stream_ctl answer: {e}"))?;
                let params =
                    dap_stream::client::read_ctl_answer(r.status, &answer, MuxConfig::default())
                        .map_err(|e| format!("stream_ctl: {e}"))?;
                if self.transport == TransportKind::Udp {
                    if params.udp.is_none() {
                        return Err("stream_ctl: a UDP answer without a connection id".into());
                    }
                    self.step = Step::Done(params);
                    return Ok(None);
                }
                let req = dap_stream::transport::http::upgrade_request(&params, &self.host);
                self.step = Step::Upgrade(params);
                Ok(Some(req.into_bytes()))
            }
            Step::Upgrade(params) => {
                let token = dap_stream::transport::http::UPGRADE_TOKEN;
                if r.status != 101 || !r.upgrade.is_some_and(|u| u.eq_ignore_ascii_case(token)) {
                    return Err(format!("upgrade: status {}", r.status));
                }
                self.step = Step::Done(params);
                Ok(None)
            }
            Step::Done(_) | Step::Broken => Err("set-up already over".to_string()),
        }
    }

    /// The session, once the stream is up (taken: a second call gives `None`).
    pub fn take_params(&mut self) -> Option<SessionParams> {
        match std::mem::replace(&mut self.step, Step::Broken) {
            Step::Done(p) => Some(p),
            _ => None,
        }
    }

    /// The requests made from now on go to `addr` (their `Host`): call it before
    /// [`on_response`](Self::on_response) makes the request another node will get.
    pub fn retarget(&mut self, addr: SocketAddr) {
        self.host = addr.to_string();
    }
}

/// A [`DapSetup`] driven over a non-blocking socket: each request written as the socket
/// takes it, each answer read as it arrives, never waiting.
pub struct DapExchange {
    setup: DapSetup,
    /// The request being written, and how much of it went.
    out: Vec<u8>,
    off: usize,
    /// Answer bytes read and not parsed yet.
    buf: Vec<u8>,
}

impl DapExchange {
    /// Starts a set-up (see [`DapSetup::start`]); nothing is written before
    /// [`advance`](Self::advance).
    pub fn start(
        addr: SocketAddr,
        node_key: [u8; 32],
        channels: &[u8],
        suite: Option<CipherSuite>,
        transport: TransportKind,
    ) -> DapExchange {
        let (setup, out) = DapSetup::start(addr, node_key, channels, suite, transport);
        DapExchange { setup, out, off: 0, buf: Vec::with_capacity(1024) }
    }

    /// Goes as far as `sock` allows without blocking: `Ok(true)` once the set-up's last
    /// answer is in (a connect still under way reads as `WouldBlock`).
    ///
    /// # Errors
    /// The socket failed or closed, or an answer did not check out.
    pub fn advance(&mut self, sock: &mut (impl Read + Write)) -> Result<bool, String> {
        let would_block = |e: &io::Error| {
            matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected)
        };
        loop {
            while self.off < self.out.len() {
                match sock.write(&self.out[self.off..]) {
                    Ok(n) => self.off += n,
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            if let Some((resp, used)) = parse_response(&self.buf)? {
                self.buf.drain(..used);
                match self.setup.on_response(resp)? {
                    Some(next) => {
                        self.out = next;
                        self.off = 0;
                    }
                    None => return Ok(true),
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk) {
                Ok(0) => return Err("the server closed the connection".to_string()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// The session, once [`advance`](Self::advance) said the set-up is complete (taken: a
    /// second call gives `None`).
    pub fn take_params(&mut self) -> Option<SessionParams> {
        self.setup.take_params()
    }
}

/// A full session set-up on a fresh blocking connection to `addr` (see [`DapSetup`]).
/// Returns the connection (its `buf` holds any stream bytes that followed the `101`) and the
/// session.
pub fn open_session(
    addr: SocketAddr,
    node_key: [u8; 32],
    channels: &[u8],
    suite: Option<CipherSuite>,
) -> Result<(HttpConn, SessionParams), String> {
    let conn = HttpConn::connect(addr).map_err(|e| format!("connect: {e}"))?;
    set_up(conn, addr, node_key, channels, suite)
}

/// As [`open_session`], from the loopback address `src` (one client among several).
pub fn open_session_from(
    src: IpAddr,
    addr: SocketAddr,
    node_key: [u8; 32],
    channels: &[u8],
    suite: Option<CipherSuite>,
) -> Result<(HttpConn, SessionParams), String> {
    let conn = HttpConn::connect_from(src, addr).map_err(|e| format!("connect from {src}: {e}"))?;
    set_up(conn, addr, node_key, channels, suite)
}

/// A full session set-up with each step at its own address (nodes of a cluster), each on a
/// fresh blocking connection: `POST /enc_init` at `at[0]` (whose node key is `node_key`),
/// `POST /stream_ctl` at `at[1]`, `GET /stream/…` at `at[2]`. Returns the last connection
/// (the stream's) and the session.
pub fn open_session_across(
    at: [SocketAddr; 3],
    node_key: [u8; 32],
    channels: &[u8],
    suite: Option<CipherSuite>,
) -> Result<(HttpConn, SessionParams), String> {
    let (mut setup, mut req) =
        DapSetup::start(at[0], node_key, channels, suite, TransportKind::Http);
    for (i, &addr) in at.iter().enumerate() {
        let mut conn = HttpConn::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        let r = conn.exchange(&req).map_err(|e| format!("exchange with {addr}: {e}"))?;
        if let Some(&next) = at.get(i + 1) {
            setup.retarget(next);
        }
        match setup.on_response(r)? {
            Some(next) if i + 1 < at.len() => req = next,
            Some(_) => return Err("a request after the upgrade".to_string()),
            None if i + 1 == at.len() => {
                let params = setup.take_params().ok_or("no session")?;
                return Ok((conn, params));
            }
            None => return Err(format!("set-up over after step {}", i + 1)),
        }
    }
    Err("no address".to_string())
}

/// A UDP session's set-up, each step on a fresh blocking connection: `POST /enc_init` at
/// `at[0]` (whose node key is `node_key`), `POST /stream_ctl` (transport UDP) at `at[1]`
/// (one connection for both when they are the same address). Returns the session; its
/// datagrams are the caller's ([`udp_echo`]).
pub fn open_udp_session(
    at: [SocketAddr; 2],
    node_key: [u8; 32],
    channels: &[u8],
    suite: Option<CipherSuite>,
) -> Result<SessionParams, String> {
    let (mut setup, req) = DapSetup::start(at[0], node_key, channels, suite, TransportKind::Udp);
    let mut conn = HttpConn::connect(at[0]).map_err(|e| format!("connect {}: {e}", at[0]))?;
    let r = conn.exchange(&req).map_err(|e| format!("exchange with {}: {e}", at[0]))?;
    setup.retarget(at[1]);
    let req = setup.on_response(r)?.ok_or("set-up over after enc_init")?;
    if at[1] != at[0] {
        conn = HttpConn::connect(at[1]).map_err(|e| format!("connect {}: {e}", at[1]))?;
    }
    let r = conn.exchange(&req).map_err(|e| format!("exchange with {}: {e}", at[1]))?;
    if setup.on_response(r)?.is_some() {
        return Err("a request after stream_ctl".to_string());
    }
    setup.take_params().ok_or_else(|| "no session".to_string())
}

/// Longest wait of [`udp_echo`].
const UDP_ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// Notes that the echo came back.
struct Echoed(Arc<AtomicBool>);

impl ChannelHandler for Echoed {
    fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The client's engine connection for session `params` to `server` (its channels handled
/// by `procs`), configured as `dap_stream::client::udp_connect_on` configures it but for
/// `ecn`; its mux not started yet.
pub fn udp_client_connection(
    params: &SessionParams,
    server: SocketAddr,
    procs: &ChannelProcs,
    ecn: bool,
    now: Instant,
) -> Result<dap_stream::udp::connection::Connection, String> {
    use dap_stream::udp::connection::{Connection, ConnectionConfig, Side};
    let cid = params.udp.as_ref().ok_or("stream_ctl: no connection id")?.cid;
    let info = SessionInfo { session_id: params.id, client: None };
    let mux = Mux::new(&params.channels, procs, info, params.limits.mux);
    let config = ConnectionConfig {
        idle_timeout: params.limits.idle_timeout,
        keepalive: params.limits.keepalive,
        rekey_packets: params.limits.rekey_packets,
        ecn,
        ..ConnectionConfig::default()
    };
    let cid = dap_stream::udp::packet::ConnectionId(cid);
    Ok(Connection::new(Side::Client, params, cid, Some(server), mux, config, now))
}

/// Session `params` over UDP from a fresh socket to `server`: `data` on channel `id` in the
/// first datagram, its echo back (bounded), then CLOSE (as `udp`'s set-ups do).
pub fn udp_echo(
    params: &SessionParams,
    server: SocketAddr,
    id: u8,
    data: &Bytes,
) -> Result<(), String> {
    use dap_stream::transport::CloseCode;
    use dap_stream::udp::connection::{ConnectionConfig, Event};
    let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("udp bind: {e}"))?;
    let echoed = Arc::new(AtomicBool::new(false));
    let mut procs = ChannelProcs::new();
    let e = echoed.clone();
    procs.ch_proc_add(id, move |_| Box::new(Echoed(e.clone()))).map_err(|e| e.to_string())?;
    let now = Instant::now();
    let ecn = ConnectionConfig::default().ecn;
    let mut conn = udp_client_connection(params, server, &procs, ecn, now)?;
    conn.mux().start(Arc::new(NoWake));
    let sent = conn.mux().with_channel(id, |ch| ch.write(1, data.clone()).is_ok());
    if sent != Some(true) {
        return Err(format!("channel {}: write refused", id as char));
    }
    let deadline = now + UDP_ECHO_TIMEOUT;
    let (mut tx, mut rx) = (Vec::with_capacity(2048), vec![0u8; 65_536]);
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err("udp: no echo in time".to_string());
        }
        let done = echoed.load(Ordering::Relaxed);
        if done {
            conn.close(now, CloseCode::Normal as u16);
        }
        while let Some(t) = conn.poll_transmit(now, 1, &mut tx) {
            let seg = t.segment_size.unwrap_or(t.size).max(1);
            for d in tx[..t.size].chunks(seg) {
                sock.send_to(d, t.destination).map_err(|e| format!("udp send: {e}"))?;
            }
        }
        if done {
            return Ok(());
        }
        while let Some(ev) = conn.poll_event() {
            if let Event::Closed(reason) = ev {
                return Err(format!("udp connection closed: {reason:?}"));
            }
        }
        // Wait for a datagram, at most until the engine's next timer (1 ms at least).
        let wait = conn.poll_timeout().map_or(Duration::from_millis(50), |t| {
            t.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(50))
        });
        sock.set_read_timeout(Some(wait)).map_err(|e| format!("udp: {e}"))?;
        match sock.recv_from(&mut rx) {
            Ok((n, from)) => conn.handle_datagram(Instant::now(), from, &mut rx[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("udp recv: {e}")),
        }
        let now = Instant::now();
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
    }
}

/// The three steps of a set-up over `conn`.
fn set_up(
    mut conn: HttpConn,
    addr: SocketAddr,
    node_key: [u8; 32],
    channels: &[u8],
    suite: Option<CipherSuite>,
) -> Result<(HttpConn, SessionParams), String> {
    let (mut setup, mut req) =
        DapSetup::start(addr, node_key, channels, suite, TransportKind::Http);
    loop {
        let r = conn.exchange(&req).map_err(|e| format!("exchange: {e}"))?;
        match setup.on_response(r)? {
            Some(next) => req = next,
            None => break,
        }
    }
    let params = setup.take_params().ok_or("no session")?;
    Ok((conn, params))
}

/// Wakes nobody: the blocking client polls its mux itself after every write.
struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// Counts the messages that arrive, on every channel.
struct Count(Arc<AtomicUsize>);

impl ChannelHandler for Count {
    fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The messages a client made with [`StreamClient::with_inbox`] has received and not
/// handed out yet: channel id and message, in arrival order. The mux calls the handlers
/// on the client's own thread, so the lock is never contended.
type Inbox = Arc<Mutex<VecDeque<(u8, Message)>>>;

/// Keeps the messages that arrive on channel `id` in the inbox (and counts them).
struct Keep {
    id: u8,
    count: Arc<AtomicUsize>,
    inbox: Inbox,
}

impl ChannelHandler for Keep {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).push_back((self.id, msg));
    }
}

/// Longest time [`StreamClient::send_partial`] may take.
const PARTIAL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often [`StreamClient::hold`] looks at its stop flag.
const HOLD_POLL: Duration = Duration::from_millis(100);

/// The client end of an attached session, over its blocking socket.
pub struct StreamClient {
    conn: HttpConn,
    mux: Mux,
    sealer: Sealer,
    opener: packet::Opener,
    max_payload: usize,
    received: Arc<AtomicUsize>,
    /// The code of the server's CLOSE, once one arrived.
    close_code: Option<u16>,
    /// The messages received and not handed out yet ([`with_inbox`](Self::with_inbox)
    /// only; otherwise they are only counted).
    inbox: Option<Inbox>,
    /// The socket's read timeout as last set (reads of [`next_message`](Self::next_message)
    /// wait at most what their caller allows).
    read_timeout: Duration,
}

impl StreamClient {
    /// Carries `params` over `conn` (as [`open_session`] left it); the messages that arrive
    /// are counted, not kept.
    pub fn new(conn: HttpConn, params: &SessionParams) -> StreamClient {
        StreamClient::build(conn, params, false)
    }

    /// As [`new`](Self::new), keeping every message that arrives, on every channel, for
    /// [`next_message`](Self::next_message) (and [`next_pubsub`](Self::next_pubsub)).
    pub fn with_inbox(conn: HttpConn, params: &SessionParams) -> StreamClient {
        StreamClient::build(conn, params, true)
    }

    fn build(conn: HttpConn, params: &SessionParams, keep: bool) -> StreamClient {
        let received = Arc::new(AtomicUsize::new(0));
        let inbox: Option<Inbox> = keep.then(Inbox::default);
        let mut procs = ChannelProcs::new();
        for &id in &params.channels {
            let r = received.clone();
            let added = match &inbox {
                Some(inbox) => {
                    let inbox = inbox.clone();
                    procs.ch_proc_add(id, move |_| {
                        Box::new(Keep { id, count: r.clone(), inbox: inbox.clone() })
                    })
                }
                None => procs.ch_proc_add(id, move |_| Box::new(Count(r.clone()))),
            };
            added.expect("valid channel id");
        }
        let info = SessionInfo { session_id: params.id, client: None };
        let mut mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
        mux.start(Arc::new(NoWake));
        let (sealer, opener) = params.packet_keys(false);
        StreamClient {
            conn,
            mux,
            sealer,
            opener,
            max_payload: params.limits.max_payload,
            received,
            close_code: None,
            inbox,
            read_timeout: IO_TIMEOUT,
        }
    }

    /// The code of the CLOSE the server sent (4: over budget, `docs/PROTOCOL.md` §7), if
    /// it sent one.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Sends the first `upto` bytes of the message `data` (type 1) on channel `id` and
    /// stops there, leaving the message unfinished: `upto` must be less than `data.len()`.
    /// Reads the server's CREDIT frames while its credit is used up, so that the server's
    /// flow control, not this client, decides how fast it goes.
    ///
    /// The mux cuts the message into data frames of at most `max_frame` bytes and packs
    /// frames into payloads (PROTOCOL §8); every data frame has a header of at least
    /// [`frame::HEADER_LEN`] bytes, so a payload asked for with room for `left +
    /// HEADER_LEN` bytes carries at most `left` bytes of the message. The rest stays queued
    /// in the mux, and is never sent as long as nothing else flushes this client.
    ///
    /// # Errors
    /// The write failed, the server closed the stream ([`close_code`](Self::close_code)
    /// says why), or it took longer than a minute.
    pub fn send_partial(&mut self, id: u8, data: &Bytes, upto: usize) -> Result<(), String> {
        if upto >= data.len() {
            return Err(format!("{upto} bytes of a {}-byte message is not partial", data.len()));
        }
        let base = self.mux.counters().bytes_out;
        match self.mux.with_channel(id, |ch| ch.write(1, data.clone())) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("write on {:?}: {e}", id as char)),
            None => return Err(format!("no channel {:?}", id as char)),
        }
        let deadline = Instant::now() + PARTIAL_TIMEOUT;
        loop {
            let sent = (self.mux.counters().bytes_out - base) as usize;
            if sent >= upto {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("only {sent} of {upto} bytes sent after {PARTIAL_TIMEOUT:?}"));
            }
            let room = self.max_payload.min(upto - sent + frame::HEADER_LEN);
            let mut out = Vec::with_capacity(room + packet::OVERHEAD);
            let start = Sealer::begin(&mut out);
            if self.mux.poll_payload(&mut out, room) {
                self.sealer.seal(PacketType::Data, &mut out, start);
                self.conn.tcp.write_all(&out).map_err(|e| format!("write: {e}"))?;
                continue;
            }
            self.mux.notify_writable();
            // No credit left: the server's CREDIT frames let us go on.
            self.read_packets()?;
        }
    }

    /// Sits on the session until `stop` is set, sending nothing of its own but answering
    /// the server's keepalives with ALIVE (so the server sees a live peer) and taking its
    /// CREDIT frames. Looks at `stop` at least every 100 ms.
    ///
    /// # Errors
    /// The server closed the stream ([`close_code`](Self::close_code) says why) or the
    /// connection failed.
    pub fn hold(&mut self, stop: &AtomicBool) -> Result<(), String> {
        self.conn.tcp.set_read_timeout(Some(HOLD_POLL)).map_err(|e| format!("socket: {e}"))?;
        let r = self.hold_loop(stop);
        let _ = self.conn.tcp.set_read_timeout(Some(IO_TIMEOUT));
        r
    }

    fn hold_loop(&mut self, stop: &AtomicBool) -> Result<(), String> {
        while !stop.load(Ordering::Relaxed) {
            self.read_and_handle()?;
        }
        Ok(())
    }

    /// Reads once (a read timeout is no error) and handles every whole packet; returns
    /// whether anything arrived.
    fn read_and_handle(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 16 << 10];
        match self.conn.tcp.read(&mut chunk) {
            Ok(0) => Err("the server closed the connection".to_string()),
            Ok(n) => {
                self.conn.buf.extend_from_slice(&chunk[..n]);
                self.handle_packets()?;
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Sends `data` on every channel of the session and waits (bounded) until all the echoes
    /// are back.
    pub fn echo_each(&mut self, ids: &[u8], data: &Bytes) -> Result<(), String> {
        let want = self.received.load(Ordering::Relaxed) + ids.len();
        for &id in ids {
            match self.mux.with_channel(id, |ch| ch.write(1, data.clone())) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(format!("write on {:?}: {e}", id as char)),
                None => return Err(format!("no channel {:?}", id as char)),
            }
        }
        self.flush()?;
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.received.load(Ordering::Relaxed) < want {
            if Instant::now() >= deadline {
                return Err("echo timed out".to_string());
            }
            self.read_packets()?;
            self.flush()?;
        }
        Ok(())
    }

    /// Queues message `data` of type `ty` on channel `id`; nothing is sent before
    /// [`flush`](Self::flush) (or a read of [`next_message`](Self::next_message)).
    ///
    /// # Errors
    /// No such channel, or the channel refused the write (its send queue is full: flush
    /// and read first).
    pub fn queue(&mut self, id: u8, ty: u8, data: Bytes) -> Result<(), String> {
        match self.mux.with_channel(id, |ch| ch.write(ty, data)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(format!("write on {:?}: {e}", id as char)),
            None => Err(format!("no channel {:?}", id as char)),
        }
    }

    /// The next message received, on any channel, waiting at most about `wait` for one
    /// (`wait` zero: only what is already here). Reading also answers keepalives and sends
    /// what the mux has to send (CREDIT frames, queued messages the server's credit now
    /// lets go). Only for a client made with [`with_inbox`](Self::with_inbox).
    ///
    /// # Errors
    /// Not an inbox client, the connection failed or closed, or the server closed the
    /// stream.
    pub fn next_message(&mut self, wait: Duration) -> Result<Option<(u8, Message)>, String> {
        let inbox = self.inbox.clone().ok_or("not an inbox client")?;
        let deadline = Instant::now() + wait;
        let whole = |buf: &[u8], max| matches!(packet::parse_header(buf, max), Ok(Some(h)) if buf.len() >= h.packet_len());
        loop {
            if let Some(m) = inbox.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
                return Ok(Some(m));
            }
            if whole(&self.conn.buf, self.max_payload) {
                self.handle_packets()?;
                self.flush()?;
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.set_read_timeout((deadline - now).min(IO_TIMEOUT))?;
            if self.read_and_handle()? {
                self.flush()?;
            }
        }
    }

    /// Sets the socket's read timeout to `d` (at least 1 ms) unless it is within a
    /// millisecond of that already: one system call per change, not per read.
    fn set_read_timeout(&mut self, d: Duration) -> Result<(), String> {
        let d = d.max(Duration::from_millis(1));
        if d.abs_diff(self.read_timeout) >= Duration::from_millis(1) {
            self.conn.tcp.set_read_timeout(Some(d)).map_err(|e| format!("socket: {e}"))?;
            self.read_timeout = d;
        }
        Ok(())
    }

    /// Queues a `'P'` message (PROTOCOL §10); nothing is sent before
    /// [`flush`](Self::flush).
    ///
    /// # Errors
    /// As [`queue`](Self::queue).
    pub fn queue_pubsub(&mut self, msg: &PubSubMsg) -> Result<(), String> {
        self.queue(PUBSUB, msg.ty(), Bytes::from(msg.encode()))
    }

    /// The next `'P'` message received (messages of other channels are dropped), waiting
    /// at most about `wait`, as [`next_message`](Self::next_message).
    ///
    /// # Errors
    /// As [`next_message`](Self::next_message), and a `'P'` message that does not decode.
    pub fn next_pubsub(&mut self, wait: Duration) -> Result<Option<PubSubMsg>, String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((id, m)) = self.next_message(left)? else { return Ok(None) };
            if id == PUBSUB {
                return PubSubMsg::decode(m.ty, &m.data)
                    .map(Some)
                    .map_err(|e| format!("'P' message of type {:#04x}: {e}", m.ty));
            }
        }
    }

    /// Subscribes to `topic` and waits (at most 5 s) for its SUBSCRIBED; `'P'` messages
    /// that come before it are dropped.
    ///
    /// # Errors
    /// The server answered ERROR, or no SUBSCRIBED came in time, or as
    /// [`next_pubsub`](Self::next_pubsub).
    pub fn subscribe(&mut self, topic: &Topic) -> Result<(), String> {
        self.queue_pubsub(&PubSubMsg::Subscribe { topic: topic.clone() })?;
        self.flush()?;
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_pubsub(left)? {
                Some(PubSubMsg::Subscribed { topic: t }) if t == *topic => return Ok(()),
                Some(PubSubMsg::Error { code, .. }) => {
                    return Err(format!("SUBSCRIBE refused: {}", code.name()));
                }
                Some(_) => {}
                None => return Err(format!("no SUBSCRIBED within {IO_TIMEOUT:?}")),
            }
        }
    }

    /// Seals and sends everything the mux has to send.
    pub fn flush(&mut self) -> Result<(), String> {
        loop {
            let mut out = Vec::with_capacity(1024);
            let start = Sealer::begin(&mut out);
            if !self.mux.poll_payload(&mut out, self.max_payload) {
                break;
            }
            self.sealer.seal(PacketType::Data, &mut out, start);
            self.conn.tcp.write_all(&out).map_err(|e| format!("write: {e}"))?;
        }
        self.mux.notify_writable();
        Ok(())
    }

    /// Reads once (unless whole packets are already buffered) and handles every whole
    /// packet.
    fn read_packets(&mut self) -> Result<(), String> {
        let whole = |buf: &[u8], max| matches!(packet::parse_header(buf, max), Ok(Some(h)) if buf.len() >= h.packet_len());
        if !whole(&self.conn.buf, self.max_payload) {
            self.conn.fill().map_err(|e| format!("read: {e}"))?;
        }
        self.handle_packets()
    }

    /// Handles every whole packet in the read buffer.
    fn handle_packets(&mut self) -> Result<(), String> {
        loop {
            let buf = &mut self.conn.buf;
            let hdr = match packet::parse_header(buf, self.max_payload) {
                Ok(Some(h)) if buf.len() >= h.packet_len() => h,
                Ok(_) => return Ok(()),
                Err(e) => return Err(format!("bad packet: {e}")),
            };
            let plain = self.opener.open(&hdr, buf).map_err(|e| format!("open: {e}"))?;
            match hdr.ty {
                PacketType::Data => {
                    self.mux.handle_payload(plain).map_err(|e| format!("mux: {e}"))?
                }
                PacketType::Keepalive => {
                    let mut out = Vec::with_capacity(packet::OVERHEAD);
                    let start = Sealer::begin(&mut out);
                    self.sealer.seal(PacketType::Alive, &mut out, start);
                    self.conn.tcp.write_all(&out).map_err(|e| format!("write: {e}"))?;
                }
                PacketType::Alive => {}
                PacketType::Close => {
                    let (code, reason) = packet::parse_close(plain).unwrap_or((1, String::new()));
                    self.close_code = Some(code);
                    return Err(format!("the server closed the stream (code {code}: {reason})"));
                }
            }
            self.conn.buf.drain(..hdr.packet_len());
        }
    }
}
