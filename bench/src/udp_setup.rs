//! `dap-bench udp`'s set-ups: full session set-ups per second over UDP, dap against quinn's
//! full QUIC handshakes, each on a fresh connection, `--setup-conns` (8) in flight, server on
//! CPU 0 and load generator on CPU 1.
//!
//! What one set-up is:
//!
//! - **dap-udp**: on a fresh TCP connection, `POST /enc_init` (X25519, the node's Ed25519
//!   signature checked against the pinned node key) and `POST /stream_ctl` sealed under the
//!   new key, asking for channel `E` (echo), AES-256-GCM, transport UDP; the answer carries
//!   the connection id and the UDP port (the host is the one stream_ctl was reached at). The
//!   TCP connection is closed, a fresh UDP socket (ephemeral port) sends the first
//!   datagram, which carries a 1-byte message on `E`, and the set-up is complete when its
//!   echo is back. The client then closes the UDP connection (one CLOSE packet), so that the
//!   server forgets it at once instead of at its idle timeout.
//! - **quinn**: a full QUIC handshake (TLS 1.3 with rustls and ring, AES-256-GCM, X25519,
//!   an Ed25519 certificate verified by the client, no resumption, no 0-RTT), then one
//!   bidirectional stream carrying 1 byte each way; complete when the echo is read. The
//!   client then closes the connection.
//!
//! Servers, in this process, on CPU 0. dap: dap-net's `HttpServer` with `EncServer` and
//! `StreamServer` (`/enc_init`, `/stream_ctl`), and the same `StreamServer` serving UDP
//! (`serve_udp`) on the same reactor worker, with its proc thread (also CPU 0), in two
//! modes as `dap-bench setup` runs them: `dap-proc`, `/enc_init` and `/stream_ctl` on the
//! proc thread (the library's default), and `dap-worker`, on the reactor worker (as quinn does its
//! handshakes on its endpoint's thread); the faster by median is reported. quinn: an endpoint on a current-thread tokio
//! runtime, a task per connection that accepts the stream, echoes it and waits for the
//! client's close. Both with their libraries' default transport settings (path MTU
//! discovery included).
//!
//! The load generators, on CPU 1:
//!
//! - dap: one thread, one mio (epoll) loop, `setup`'s [`load`](crate::setup::load) with
//!   [`DapUdpAttempt`]. It
//!   drives the same sans-IO pieces a client uses: [`DapExchange`] for the two HTTP steps,
//!   then the UDP engine's client [`Connection`] (built as
//!   `dap_stream::client::udp_connect_on` builds it) on its own mio UDP socket, in the same
//!   loop, its timers among the loop's deadlines. Why not a dap-reactor client worker: the
//!   TCP steps are already sans-IO in this loop, and handing each session over to a
//!   reactor thread would add a cross-thread hand-off per set-up that no client needs; one
//!   loop keeps the client's cost what the protocol costs. ECN is off on this client (the
//!   socket neither sets nor reads the codepoint).
//! - quinn: one current-thread tokio runtime, one client endpoint (one socket, as quinn's
//!   users run it), one task per set-up in flight, each looping connect → echo → close.
//!
//! Each attempt is bounded (5 s); a failed or timed-out set-up is counted, reported in the
//! table's `fail` column and in `RESULT` (`setup_failed`, `quinn_setup_failed`), and
//! replaced.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::enc::{EncConfig, EncServer, NodeKey};
use dap_net::http::server::{HttpConfig, HttpServer};
use dap_net::server::Server;
use dap_stream::echo::{ECHO, Echo};
use dap_stream::session::TransportKind;
use dap_stream::transport::{CloseCode, Wake};
use dap_stream::udp::connection::{Connection, Event};
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, StreamConfig, StreamServer};
use mio::{Interest, Registry, Token};

use crate::bulk::{Window, measure, one_worker_reactor};
use crate::dapclient::{self, DapExchange};
use crate::procstat;
use crate::relay::join_bounded;
use crate::servers::{CLIENT_CPU, SERVER_CPU};
use crate::setup::{Attempt, Counts, SETUP_TIMEOUT, drive, log_line};
use crate::tls::{Cert, Cipher};

/// The cipher of both contenders' set-ups.
pub const CIPHER: Cipher = Cipher::Aes;

/// How long stopping a run may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A run's window (its count in set-ups), failed set-ups and the first failure's text.
pub type SetupRun = (Window, u64, Option<String>);

/// The client's channel `E`: sends one byte when the channel opens; its echo ends the set-up.
struct Ping {
    echoed: Arc<AtomicBool>,
}

impl ChannelHandler for Ping {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        let _ = ch.write(1, Bytes::from_static(b"x"));
    }

    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        if msg.data == b"x"[..] {
            self.echoed.store(true, Ordering::Relaxed);
        }
    }
}

/// The load loop calls the engine itself after every event: nothing to wake.
struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// What every dap attempt of a run shares.
pub struct DapUdpProto {
    /// The HTTP server (enc_init, stream_ctl).
    ctl: SocketAddr,
    /// The node key the client pins.
    node: [u8; 32],
}

enum Phase {
    /// enc_init and stream_ctl on a fresh TCP connection.
    Ctl { sock: mio::net::TcpStream, ex: Box<DapExchange> },
    /// The session on its own UDP socket: first datagram out, echo awaited.
    Udp { sock: mio::net::UdpSocket, conn: Box<Connection>, echoed: Arc<AtomicBool> },
}

/// One dap set-up over UDP under way (see the module docs).
pub struct DapUdpAttempt {
    phase: Phase,
    started: Instant,
    /// Transmit buffer of the UDP engine.
    buf: Vec<u8>,
}

/// Largest datagram the client reads (the server sends at most 1,452 bytes by default).
const RECV_BUF: usize = 4096;

impl DapUdpAttempt {
    /// stream_ctl answered: the session moves onto a fresh UDP socket, its first datagram
    /// (carrying `Ping`'s byte) goes out.
    fn enter_udp(
        &mut self,
        proto: &DapUdpProto,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Result<(), String> {
        let Phase::Ctl { sock, ex } = &mut self.phase else { return Ok(()) };
        let _ = registry.deregister(sock);
        let params = ex.take_params().ok_or("stream_ctl: no session")?;
        let server = dap_stream::client::udp_server_addr(&params, proto.ctl)?;
        let std_sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("udp bind: {e}"))?;
        std_sock.set_nonblocking(true).map_err(|e| format!("udp: {e}"))?;
        let mut udp = mio::net::UdpSocket::from_std(std_sock);
        registry
            .register(&mut udp, token, Interest::READABLE)
            .map_err(|e| format!("udp register: {e}"))?;
        let echoed = Arc::new(AtomicBool::new(false));
        let mut procs = ChannelProcs::new();
        let e = echoed.clone();
        procs
            .ch_proc_add(ECHO, move |_| Box::new(Ping { echoed: e.clone() }))
            .map_err(|e| format!("channel: {e}"))?;
        // As `udp_connect_on` configures it, but for ECN (see the module docs).
        let conn = dapclient::udp_client_connection(&params, server, &procs, false, now)?;
        // The TCP connection is dropped (closed) here.
        self.phase = Phase::Udp { sock: udp, conn: Box::new(conn), echoed };
        if let Phase::Udp { conn, .. } = &mut self.phase {
            conn.mux().start(Arc::new(NoWake));
        }
        Ok(())
    }

    /// Reads what arrived, runs the engine's timer, sends what it has; `Ok(true)` once the
    /// echo is back (the CLOSE then sent).
    fn udp_step(&mut self, now: Instant) -> Result<bool, String> {
        let Phase::Udp { sock, conn, echoed } = &mut self.phase else { return Ok(false) };
        let mut rx = [0u8; RECV_BUF];
        loop {
            match sock.recv_from(&mut rx) {
                Ok((n, from)) => conn.handle_datagram(now, from, &mut rx[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("udp recv: {e}")),
            }
        }
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        let done = echoed.load(Ordering::Relaxed);
        if done {
            conn.close(now, CloseCode::Normal as u16);
        }
        while let Some(t) = conn.poll_transmit(now, 1, &mut self.buf) {
            let seg = t.segment_size.unwrap_or(t.size).max(1);
            for d in self.buf[..t.size].chunks(seg) {
                match sock.send_to(d, t.destination) {
                    Ok(_) => {}
                    // Lost, as on any full queue: the engine sends it again.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("udp send: {e}")),
                }
            }
        }
        if done {
            return Ok(true);
        }
        while let Some(ev) = conn.poll_event() {
            if let Event::Closed(reason) = ev {
                return Err(format!("udp connection closed: {reason:?}"));
            }
        }
        Ok(false)
    }
}

impl Attempt for DapUdpAttempt {
    type Proto = DapUdpProto;

    fn open(proto: &DapUdpProto, registry: &Registry, token: Token) -> io::Result<Self> {
        let mut sock =
            mio::net::TcpStream::from_std(dapclient::connect_fresh_nonblocking(proto.ctl)?);
        let ex = DapExchange::start(
            proto.ctl,
            proto.node,
            &[ECHO],
            Some(CIPHER.dap()),
            TransportKind::Udp,
        );
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(DapUdpAttempt {
            phase: Phase::Ctl { sock, ex: Box::new(ex) },
            started: Instant::now(),
            buf: Vec::with_capacity(2048),
        })
    }

    fn advance(
        &mut self,
        proto: &DapUdpProto,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Result<bool, String> {
        if let Phase::Ctl { sock, ex } = &mut self.phase {
            if !ex.advance(sock)? {
                return Ok(false);
            }
            self.enter_udp(proto, registry, token, now)?;
        }
        self.udp_step(now)
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Ctl { .. } => None,
            Phase::Udp { conn, .. } => conn.poll_timeout(),
        }
    }

    fn started(&self) -> Instant {
        self.started
    }

    fn close(mut self, registry: &Registry) {
        match &mut self.phase {
            Phase::Ctl { sock, .. } => {
                let _ = registry.deregister(sock);
            }
            Phase::Udp { sock, .. } => {
                let _ = registry.deregister(sock);
            }
        }
    }
}

/// One dap run: a fresh server (HTTP + enc + stream, UDP served on the same worker).
pub fn run_dap(conns: usize, enc_on_worker: bool, warmup: f64, secs: f64) -> io::Result<SetupRun> {
    let reactor = one_worker_reactor(SERVER_CPU, "bench-srv")?;
    let _pool = dap_proc::ProcPool::builder().start_for(&reactor)?;
    let mut procs = ChannelProcs::new();
    procs.ch_proc_add(ECHO, |_| Box::new(Echo::default())).expect("valid id");
    let mut enc_cfg = EncConfig::default();
    // Set-ups per second is CPU per set-up: a public node's per-source handshake limit and
    // its key store's size are policy (the peer has neither), so neither may cut the run
    // short. Every set-up leaves a key its stream_ctl used, which the store keeps for its
    // idle TTL (10 min): a run's 20,000-40,000 keys must fit.
    enc_cfg.handshake_rate = dap_net::limit::RateLimit::off();
    enc_cfg.store.max_keys = crate::setup::SETUP_MAX_KEYS;
    enc_cfg.handshake_on_worker = enc_on_worker;
    let enc = EncServer::new(NodeKey::generate(), enc_cfg);
    let stream = StreamServer::new(procs, StreamConfig::default());
    let mut http = HttpServer::new(HttpConfig::default());
    enc.install(&mut http);
    stream.install(&mut http, &enc);
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let running = http.start(&reactor, Server::builder().tcp(any))?;
    stream.serve_udp(&reactor, any)?;
    let ctl = running.server().tcp_addrs()[0];
    let proto = DapUdpProto { ctl, node: enc.node_public_key() };
    let res = drive::<DapUdpAttempt>(proto, conns, warmup, secs);
    let st = stream.stats();
    let udp = stream.udp_counters().map(|c| {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "attached={} closed={} attach_failed={} datagrams_in={} datagrams_out={}",
            l(&c.attached),
            l(&c.closed),
            l(&c.attach_failed),
            l(&c.datagrams_in),
            l(&c.datagrams_out)
        )
    });
    drop(running);
    reactor.shutdown(STOP_TIMEOUT);
    log_line(
        "udp-setup-server-stats.log",
        &format!(
            "dap-udp sessions_created={} ctl_refused={} udp: {}",
            st.sessions_created,
            st.ctl_refused,
            udp.unwrap_or_default()
        ),
    );
    res
}

/// One quinn set-up on `ep`: handshake, 1 byte each way on a bidirectional stream, close.
async fn quinn_once(ep: &quinn::Endpoint, server: SocketAddr) -> Result<(), String> {
    let conn = ep
        .connect(server, "127.0.0.1")
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
    send.write_all(b"x").await.map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    let echo = recv.read_to_end(16).await.map_err(|e| format!("read: {e}"))?;
    conn.close(0u32.into(), b"done");
    if echo != b"x" {
        return Err(format!("echo {echo:?}"));
    }
    Ok(())
}

/// The quinn server's side of one connection: the handshake, the echo, then the client's
/// close (bounded), so that the echo is delivered before the connection goes.
async fn quinn_serve(incoming: quinn::Incoming) -> Result<(), String> {
    let conn = incoming.await.map_err(|e| format!("handshake: {e}"))?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| format!("accept_bi: {e}"))?;
    let data = recv.read_to_end(16).await.map_err(|e| format!("read: {e}"))?;
    send.write_all(&data).await.map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    let _ = tokio::time::timeout(SETUP_TIMEOUT, conn.closed()).await;
    Ok(())
}

/// One quinn run: a fresh server endpoint on CPU 0, the client's on CPU 1.
pub fn run_quinn(cert: &Cert, conns: usize, warmup: f64, secs: f64) -> io::Result<SetupRun> {
    let (server_cfg, client_cfg) = crate::udp::quinn_configs(CIPHER, cert, None)?;
    let pin = procstat::can_pin_two_cpus();
    let (ep_tx, ep_rx) = crossbeam_channel::bounded(1);
    let server = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(SERVER_CPU)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let ep = quinn::Endpoint::server(server_cfg, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let _ = ep_tx.send(ep.clone());
            // Ends when the endpoint is closed (by the harness, once the run is over).
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let _ = quinn_serve(incoming).await;
                });
            }
            Ok(())
        })
    });
    let server_ep: quinn::Endpoint = ep_rx
        .recv_timeout(STOP_TIMEOUT)
        .map_err(|_| io::Error::other("quinn server did not start"))?;
    let addr = server_ep.local_addr()?;

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (c, st) = (counts.clone(), stop.clone());
    let client = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(CLIENT_CPU)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            ep.set_default_client_config(client_cfg);
            let tasks: Vec<_> = (0..conns)
                .map(|_| {
                    let (ep, c, st) = (ep.clone(), c.clone(), st.clone());
                    tokio::spawn(async move {
                        while !st.load(Ordering::Relaxed) {
                            match tokio::time::timeout(SETUP_TIMEOUT, quinn_once(&ep, addr)).await {
                                Ok(Ok(())) => {
                                    c.done.fetch_add(1, Ordering::Relaxed);
                                }
                                Ok(Err(e)) => c.fail(e),
                                Err(_) => c.fail("set-up timed out".to_string()),
                            }
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            ep.close(0u32.into(), b"");
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
            Ok(())
        })
    });
    let res = measure(&counts.done, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    // Each task ends after its set-up in progress, itself bounded by SETUP_TIMEOUT.
    let c = join_bounded(client, SETUP_TIMEOUT + STOP_TIMEOUT);
    server_ep.close(0u32.into(), b"");
    let s = join_bounded(server, STOP_TIMEOUT);
    c??;
    s??;
    let (failed, first) = counts.failures();
    Ok((res?, failed, first))
}
