//! `dap-bench setup`: full dap session set-ups per second against full rustls TLS 1.3
//! handshakes per second, each on a fresh TCP connection.
//!
//! Servers, in this process, on CPU 0:
//!
//! - **dap-proc** / **dap-worker**: dap-net's `HttpServer` with `EncServer` (`/enc_init`) and
//!   `StreamServer` (`/stream_ctl`, `/stream/`; echo channels), one reactor worker pinned to
//!   CPU 0 and its proc thread (also CPU 0). `dap-proc` runs `/enc_init` on the proc thread
//!   (the default, `EncConfig::handshake_on_worker = false`), `dap-worker` on the worker.
//!   `/stream_ctl` is an enc route and runs where `/enc_init` does.
//! - **rustls**: tokio-rustls on a `current_thread` tokio runtime, one thread pinned to CPU 0,
//!   a task per connection that completes the server handshake (it has read the client's
//!   Finished) and drops the connection. TLS 1.3 only, `TLS13_CHACHA20_POLY1305_SHA256`,
//!   X25519, no tickets, no session cache; an Ed25519 certificate by default (the
//!   signature algorithm of dap's node key; `--cert p256` for ECDSA P-256).
//!
//! The load generator, pinned to CPU 1, is one thread running one mio (epoll) loop with
//! `--conns` set-ups in flight, each on its own fresh non-blocking TCP connection
//! (`TCP_NODELAY`, from one of 250 loopback source addresses so that `TIME_WAIT` never fills
//! the ephemeral ports); a finished set-up's connection is closed (FIN) and replaced at once.
//! It drives the same sans-IO client pieces a real client uses. dap ([`DapSetup`], through
//! [`DapExchange`]):
//! `POST /enc_init` (X25519; the node's signature verified against the pinned node key),
//! `POST /stream_ctl` sealed under the new key (ChaCha20-Poly1305, channels `--channels`),
//! `GET /stream/…` with `Upgrade`, `101` read — three requests on one keep-alive connection.
//! rustls: `ClientConnection` driven with `write_tls` / `read_tls` / `process_new_packets`
//! until the handshake is done and the client's Finished is written (the certificate chain
//! and the handshake signature verified, as every TLS client does).
//!
//! A set-up counts when the client has it complete. Contenders rotate (A B C, B C A, C A B);
//! each ratio is dap / rustls within a round; reported: the median over rounds, for the
//! faster of dap's two modes (by median set-ups per second).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dap_net::enc::{CipherSuite, EncConfig, EncServer, NodeKey};
use dap_net::http::server::{HttpConfig, HttpServer};
use dap_net::server::Server;
use dap_stream::session::TransportKind;
use dap_stream::{ChannelProcs, StreamConfig, StreamServer};
use mio::{Events, Interest, Poll, Registry, Token};

use crate::bulk::{Window, measure, one_worker_reactor};
#[cfg(doc)]
use crate::dapclient::DapSetup;
use crate::dapclient::{self, DapExchange};
use crate::procstat;
use crate::report::{NOISY_OTHER_PCT, fmt_num, fmt_ratio, median, print_result_line};
use crate::servers::{CLIENT_CPU, SERVER_CPU};
use crate::tls::{self, Cert, CertKind, Cipher};

/// Options of `dap-bench setup`.
#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Measured window per run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Rounds; contenders rotate across rounds and ratios are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Warm-up before each window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Set-ups the load generator keeps in flight, each on its own connection.
    #[arg(long, default_value_t = 32)]
    pub conns: usize,
    /// Key type of rustls's certificate.
    #[arg(long, value_enum, default_value = "ed25519")]
    pub cert: CertKind,
    /// dap: the channels each session asks for (echo channels).
    #[arg(long, default_value = "E")]
    pub channels: String,
    /// Run only this contender (`dap-proc`, `dap-worker` or `rustls`; for profiling).
    #[arg(long, hide = true)]
    pub only: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    DapProc,
    DapWorker,
    Rustls,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::DapProc => "dap-proc",
            Who::DapWorker => "dap-worker",
            Who::Rustls => "rustls",
        }
    }
}

/// Round 0's order; round r rotates it left by r.
const ORDER: [Who; 3] = [Who::DapProc, Who::DapWorker, Who::Rustls];

/// How long stopping a run may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `EncConfig::store.max_keys` of the set-up benches' servers (this and `udp`'s): room for
/// every key a run's set-ups leave (about 1.5 KiB each).
pub const SETUP_MAX_KEYS: usize = 200_000;

/// Set-ups completed by the clients, failures, and the first failure's text.
#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) first_error: Mutex<Option<String>>,
}

impl Counts {
    pub(crate) fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
    }

    /// Failures so far and the first one's text.
    pub(crate) fn failures(&self) -> (u64, Option<String>) {
        let first = self.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.failed.load(Ordering::Relaxed), first)
    }
}

/// One set-up under way in [`load`]'s epoll loop, on its own fresh connection(s).
///
/// [`load`] calls [`advance`](Self::advance) on every readiness event of the attempt's
/// token and whenever its [`deadline`](Self::deadline) has come, until it says the set-up
/// is complete or failed; then it [`close`](Self::close)s it and opens the next.
pub(crate) trait Attempt: Sized {
    /// What every attempt of a run shares (server address, keys, configs).
    type Proto: Send + 'static;

    /// Starts a set-up, its sockets registered with `registry` under `token`.
    fn open(proto: &Self::Proto, registry: &Registry, token: Token) -> io::Result<Self>;

    /// Goes as far as the sockets allow without blocking: `Ok(true)` once the set-up is
    /// complete, `Err` once it failed.
    fn advance(
        &mut self,
        proto: &Self::Proto,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) -> Result<bool, String>;

    /// When [`advance`](Self::advance) must run again without a readiness event (a timer of
    /// a sans-IO engine); `None`: only on events.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// When the set-up began.
    fn started(&self) -> Instant;

    /// Ends it: deregisters and closes its sockets.
    fn close(self, registry: &Registry);
}

/// What the load generator sets up.
#[derive(Clone)]
enum Proto {
    /// dap: enc_init + stream_ctl for these channels + the upgrade, pinning this node key.
    Dap { node: [u8; 32], channels: Vec<u8> },
    /// A full TLS 1.3 handshake.
    Tls(Arc<rustls::ClientConfig>),
}

enum State {
    Dap(Box<DapExchange>),
    Tls(Box<rustls::ClientConnection>),
}

/// One set-up under way.
struct Conn {
    sock: mio::net::TcpStream,
    state: State,
    started: Instant,
}

/// A set-up still under way after this long is counted failed and replaced.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected)
}

impl Attempt for Conn {
    type Proto = (Proto, SocketAddr);

    /// Starts a set-up on a fresh non-blocking connection.
    fn open(proto: &Self::Proto, registry: &Registry, token: Token) -> io::Result<Conn> {
        let (proto, addr) = (&proto.0, proto.1);
        let mut sock = mio::net::TcpStream::from_std(dapclient::connect_fresh_nonblocking(addr)?);
        let state = match proto {
            Proto::Dap { node, channels } => {
                let suite = Some(CipherSuite::ChaCha20Poly1305);
                State::Dap(Box::new(DapExchange::start(
                    addr,
                    *node,
                    channels,
                    suite,
                    TransportKind::Http,
                )))
            }
            Proto::Tls(cfg) => State::Tls(Box::new(
                rustls::ClientConnection::new(cfg.clone(), tls::server_name())
                    .map_err(io::Error::other)?,
            )),
        };
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(Conn { sock, state, started: Instant::now() })
    }

    /// `Ok(true)` once the set-up is complete (dap: `101` read; TLS: handshake done and the
    /// client's Finished written).
    fn advance(
        &mut self,
        _: &Self::Proto,
        _: &Registry,
        _: Token,
        _: Instant,
    ) -> Result<bool, String> {
        let Conn { sock, state, .. } = self;
        match state {
            State::Dap(ex) => ex.advance(sock),
            State::Tls(conn) => loop {
                while conn.wants_write() {
                    match conn.write_tls(sock) {
                        Ok(_) => {}
                        Err(e) if would_block(&e) => return Ok(false),
                        Err(e) => return Err(format!("write: {e}")),
                    }
                }
                if !conn.is_handshaking() {
                    return Ok(true);
                }
                match conn.read_tls(sock) {
                    Ok(0) => return Err("the server closed the connection".to_string()),
                    Ok(_) => {
                        conn.process_new_packets().map_err(|e| format!("tls: {e}"))?;
                    }
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) => return Err(format!("read: {e}")),
                }
            },
        }
    }

    fn started(&self) -> Instant {
        self.started
    }

    fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.sock);
    }
}

/// The load generator: one thread, one mio (epoll) loop, `conns` set-ups in flight, each on
/// its own fresh connection; a finished (or failed) one is closed and replaced at once.
pub(crate) fn load<A: Attempt>(
    proto: &A::Proto,
    conns: usize,
    counts: &Counts,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut slots: Vec<Option<A>> = (0..conns).map(|_| None).collect();
    let fill = |i: usize, slots: &mut Vec<Option<A>>, poll: &Poll| match A::open(
        proto,
        poll.registry(),
        Token(i),
    ) {
        Ok(a) => slots[i] = Some(a),
        Err(e) => counts.fail(format!("connect: {e}")),
    };
    // Advances slot `i`; a set-up that ended is closed and replaced.
    let step = |i: usize, now: Instant, slots: &mut Vec<Option<A>>, poll: &Poll| {
        let Some(a) = slots[i].as_mut() else { return };
        match a.advance(proto, poll.registry(), Token(i), now) {
            Ok(false) => return,
            Ok(true) => {
                counts.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => counts.fail(e),
        }
        if let Some(a) = slots[i].take() {
            a.close(poll.registry());
        }
        fill(i, slots, poll);
    };
    for i in 0..conns {
        fill(i, &mut slots, &poll);
    }
    let mut last_scan = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Wake for the earliest engine timer, and at least every 10 ms to see `stop`.
        let now = Instant::now();
        let next = slots.iter().flatten().filter_map(A::deadline).min();
        let wait = next.map_or(Duration::from_millis(10), |t| {
            t.saturating_duration_since(now).min(Duration::from_millis(10))
        });
        poll.poll(&mut events, Some(wait))?;
        let now = Instant::now();
        for ev in events.iter() {
            step(ev.token().0, now, &mut slots, &poll);
        }
        for i in 0..conns {
            if slots[i].as_ref().and_then(A::deadline).is_some_and(|t| t <= now) {
                step(i, now, &mut slots, &poll);
            }
        }
        // Twice a second: fail set-ups that hang, refill slots whose connect failed (a
        // broken server thus costs a retry per slot per half second, not a busy loop).
        if last_scan.elapsed() >= Duration::from_millis(500) {
            last_scan = Instant::now();
            for i in 0..conns {
                if slots[i].as_ref().is_some_and(|a| a.started().elapsed() > SETUP_TIMEOUT) {
                    counts.fail("set-up timed out".to_string());
                    if let Some(a) = slots[i].take() {
                        a.close(poll.registry());
                    }
                }
                if slots[i].is_none() {
                    fill(i, &mut slots, &poll);
                }
            }
        }
    }
    for a in slots.into_iter().flatten() {
        a.close(poll.registry());
    }
    Ok(())
}

/// Runs the load generator on CPU 1 with `proto`, measures, stops it: the window, the
/// failed set-ups and the first failure's text.
pub(crate) fn drive<A: Attempt>(
    proto: A::Proto,
    conns: usize,
    warmup: f64,
    secs: f64,
) -> io::Result<(Window, u64, Option<String>)> {
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let pin = procstat::can_pin_two_cpus();
    let (c, st) = (counts.clone(), stop.clone());
    let thread = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(CLIENT_CPU)?;
        }
        load::<A>(&proto, conns, &c, &st)
    });
    let res = measure(&counts.done, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    // The loop checks `stop` at least every 10 ms.
    let lg = thread.join().map_err(|_| io::Error::other("load generator panicked"))?;
    let (failed, first) = counts.failures();
    lg?;
    Ok((res?, failed, first))
}

/// One dap run: a fresh server, `on_worker` choosing where `/enc_init` runs.
fn run_dap(
    args: &SetupArgs,
    on_worker: bool,
    warmup: f64,
    secs: f64,
) -> io::Result<(Window, u64, Option<String>)> {
    let reactor = one_worker_reactor(SERVER_CPU, "bench-srv")?;
    let _pool = dap_proc::ProcPool::builder().start_for(&reactor)?;
    let mut procs = ChannelProcs::new();
    for &id in args.channels.as_bytes() {
        procs
            .ch_proc_add(id, |_| Box::new(dap_stream::echo::Echo::default()))
            .map_err(|e| io::Error::other(format!("--channels: {e}")))?;
    }
    let mut enc_cfg = EncConfig::default();
    // Set-ups per second is CPU per set-up: a public node's per-source handshake limit and
    // its key store's size are policy (the peer has neither), so neither may cut the run
    // short. Every set-up leaves a key its stream_ctl used, which the store keeps for its
    // idle TTL (10 min): a run's 20,000-40,000 keys must fit.
    enc_cfg.handshake_rate = dap_net::limit::RateLimit::off();
    enc_cfg.store.max_keys = SETUP_MAX_KEYS;
    enc_cfg.handshake_on_worker = on_worker;
    let enc = EncServer::new(NodeKey::generate(), enc_cfg);
    let stream = StreamServer::new(procs, StreamConfig::default());
    let mut http = HttpServer::new(HttpConfig::default());
    enc.install(&mut http);
    stream.install(&mut http, &enc);
    let running =
        http.start(&reactor, Server::builder().tcp(SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let addr = running.server().tcp_addrs()[0];
    let proto =
        Proto::Dap { node: enc.node_public_key(), channels: args.channels.as_bytes().to_vec() };
    let res = drive::<Conn>((proto, addr), args.conns, warmup, secs);
    let st = stream.stats();
    let es = enc.stats();
    drop(running);
    reactor.shutdown(STOP_TIMEOUT);
    let (w, failed, first) = res?;
    log_server_stats(&format!(
        "sessions_created={} attached={} enc={:?}",
        st.sessions_created, st.sessions_attached, es
    ));
    Ok((w, failed, first))
}

/// Server-side counters, for the log only (not printed in the table).
fn log_server_stats(s: &str) {
    log_line("setup-server-stats.log", s);
}

/// Appends a line to `file` in the bench log directory (best effort).
pub(crate) fn log_line(file: &str, s: &str) {
    let path = crate::servers::log_dir().join(file);
    let line = format!("{s}\n");
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}

/// One rustls run: a fresh tokio-rustls server thread on CPU 0.
fn run_rustls(
    args: &SetupArgs,
    cert: &Cert,
    warmup: f64,
    secs: f64,
) -> io::Result<(Window, u64, Option<String>)> {
    let server_cfg = tls::server_config(Cipher::ChaCha, cert)?;
    let client_cfg = tls::client_config(Cipher::ChaCha, cert)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let pin = procstat::can_pin_two_cpus();
    let (stp, acc) = (stop.clone(), accepted.clone());
    let server = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(SERVER_CPU)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
            loop {
                let (tcp, _) = listener.accept().await?;
                if stp.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let _ = tcp.set_nodelay(true);
                let (acceptor, acc) = (acceptor.clone(), acc.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        acc.fetch_add(1, Ordering::Relaxed);
                        drop(tls);
                    }
                });
            }
        })
    });
    let res = drive::<Conn>((Proto::Tls(client_cfg), addr), args.conns, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    // Wake the accept loop so that it sees `stop`.
    let _ = TcpStream::connect_timeout(&addr, STOP_TIMEOUT);
    let srv = server.join().map_err(|_| io::Error::other("rustls server panicked"))?;
    let out = res?;
    srv?;
    log_server_stats(&format!("rustls server handshakes={}", accepted.load(Ordering::Relaxed)));
    Ok(out)
}

/// One row of a set-ups table (`setup`'s, `udp`'s): set-ups per second, the busy time of
/// CPU 0 and CPU 1 in % and per set-up, others' share, failures.
pub(crate) fn print_row(round: &str, who: &str, w: &Window, failed: u64) {
    let n = w.count as f64;
    let flag = if w.other_pct() > NOISY_OTHER_PCT { " !" } else { "" };
    println!(
        "{:<5} {:<10} {:>11.0} {:>7.1} {:>7.1} {:>11.1} {:>11.1} {:>6.1} {:>7}{flag}",
        round,
        who,
        n / w.wall.as_secs_f64(),
        100.0 * w.busy[0].as_secs_f64() / w.wall.as_secs_f64(),
        100.0 * w.busy[1].as_secs_f64() / w.wall.as_secs_f64(),
        w.busy[0].as_secs_f64() * 1e6 / n,
        w.busy[1].as_secs_f64() * 1e6 / n,
        w.other_pct(),
        failed,
    );
}

/// `dap-bench setup`: prints the table and the `RESULT` line; returns its pairs.
pub fn run(args: &SetupArgs) -> io::Result<Vec<(String, String)>> {
    let secs = args.secs.clamp(0.2, 600.0);
    let warmup = args.warmup.clamp(0.0, 60.0);
    let rounds = args.rounds.clamp(1, 50);
    let mut args = args.clone();
    args.conns = args.conns.clamp(1, 4096);
    if args.channels.is_empty() {
        args.channels = "E".to_string();
    }
    let pinned = procstat::can_pin_two_cpus();
    if pinned {
        procstat::pin_current_thread(CLIENT_CPU)?;
    } else {
        println!("WARNING: CPUs 0 and 1 are not both available; nothing pinned");
    }
    let cert = Cert::generate(args.cert)?;
    println!(
        "== setup: full session set-ups per second on fresh TCP connections; warm-up {warmup} s, window {secs} s, {rounds} round(s), load generator on CPU {CLIENT_CPU} (one epoll thread, {} set-ups in flight), servers on CPU {SERVER_CPU}{}",
        args.conns,
        if pinned { "" } else { " (NOT pinned)" }
    );
    println!(
        "   dap: POST /enc_init + POST /stream_ctl (channels {}, ChaCha20-Poly1305) + GET /stream/ -> 101, one keep-alive connection; dap-proc: enc_init on the proc thread, dap-worker: on the worker",
        args.channels
    );
    println!(
        "   rustls 0.23 (ring) via tokio-rustls, current_thread runtime: full TLS 1.3 handshake, TLS13_CHACHA20_POLY1305_SHA256, X25519, {:?} certificate, no tickets, no resumption",
        args.cert
    );
    println!(
        "   columns: setups/s = set-ups (handshakes) completed by the clients per second; cpu0/cpu1 % = busy time of CPU {SERVER_CPU} (server) / CPU {CLIENT_CPU} (clients); us/setup = that CPU's busy time per set-up; oth % = busy time on both CPUs not used by this process (! above {NOISY_OTHER_PCT}%); fail = failed set-ups"
    );
    println!(
        "{:<5} {:<10} {:>11} {:>7} {:>7} {:>11} {:>11} {:>6} {:>7}",
        "round", "who", "setups/s", "cpu0 %", "cpu1 %", "c0 us/set", "c1 us/set", "oth %", "fail"
    );
    let _ = std::fs::remove_file(crate::servers::log_dir().join("setup-server-stats.log"));
    let mut runs: Vec<(usize, Who, Window)> = Vec::new();
    let mut failures = 0u64;
    for round in 0..rounds {
        for i in 0..ORDER.len() {
            let who = ORDER[(i + round) % ORDER.len()];
            if args.only.as_ref().is_some_and(|o| o != who.name()) {
                continue;
            }
            let res = match who {
                Who::DapProc => run_dap(&args, false, warmup, secs),
                Who::DapWorker => run_dap(&args, true, warmup, secs),
                Who::Rustls => run_rustls(&args, &cert, warmup, secs),
            };
            match res {
                Ok((w, failed, first)) => {
                    print_row(&(round + 1).to_string(), who.name(), &w, failed);
                    if let Some(e) = first {
                        println!("      first failure: {e}");
                    }
                    failures += failed;
                    runs.push((round, who, w));
                }
                Err(e) => println!("{:<5} {:<10} FAILED: {e}", round + 1, who.name()),
            }
        }
    }
    let rate = |w: &Window| w.count as f64 / w.wall.as_secs_f64();
    let med_rate = |who: Who| {
        median(&runs.iter().filter(|r| r.1 == who).map(|r| rate(&r.2)).collect::<Vec<_>>())
    };
    println!("== medians over rounds");
    for who in ORDER {
        let ws: Vec<&Window> = runs.iter().filter(|r| r.1 == who).map(|r| &r.2).collect();
        if ws.is_empty() {
            continue;
        }
        let col = |f: &dyn Fn(&Window) -> f64| median(&ws.iter().map(|w| f(w)).collect::<Vec<_>>());
        println!(
            "{:<5} {:<10} {:>11.0} {:>7.1} {:>7.1} {:>11.1} {:>11.1}",
            "med",
            who.name(),
            col(&|w| rate(w)),
            col(&|w| 100.0 * w.busy[0].as_secs_f64() / w.wall.as_secs_f64()),
            col(&|w| 100.0 * w.busy[1].as_secs_f64() / w.wall.as_secs_f64()),
            col(&|w| w.busy[0].as_secs_f64() * 1e6 / w.count as f64),
            col(&|w| w.busy[1].as_secs_f64() * 1e6 / w.count as f64),
        );
    }
    let ratios = |who: Who| -> Vec<f64> {
        (0..rounds)
            .filter_map(|r| {
                let find = |x| runs.iter().find(|y| y.0 == r && y.1 == x).map(|y| rate(&y.2));
                Some(find(who)? / find(Who::Rustls)?)
            })
            .collect()
    };
    let cpu_ratios = |who: Who| -> Vec<f64> {
        (0..rounds)
            .filter_map(|r| {
                let find = |x| {
                    runs.iter()
                        .find(|y| y.0 == r && y.1 == x)
                        .map(|y| y.2.busy[0].as_secs_f64() / y.2.count as f64)
                };
                Some(find(who)? / find(Who::Rustls)?)
            })
            .collect()
    };
    for who in [Who::DapProc, Who::DapWorker] {
        let r: Vec<String> = ratios(who).iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "{}/rustls: ratio {} (rounds: {}); server CPU per set-up {}/rustls {}",
            who.name(),
            fmt_ratio(median(&ratios(who))),
            r.join(", "),
            who.name(),
            fmt_ratio(median(&cpu_ratios(who))),
        );
    }
    let (p, w) = (med_rate(Who::DapProc), med_rate(Who::DapWorker));
    let best =
        if w.is_finite() && (!p.is_finite() || w > p) { Who::DapWorker } else { Who::DapProc };
    println!(
        "faster dap mode: {} (enc_init on the {})",
        best.name(),
        if best == Who::DapWorker { "worker" } else { "proc thread" }
    );
    let noisy = runs.iter().filter(|r| r.2.other_pct() > NOISY_OTHER_PCT).count();
    let pairs = vec![
        ("setups_per_s".to_string(), fmt_num(med_rate(best), 0)),
        ("rustls_handshakes_per_s".to_string(), fmt_num(med_rate(Who::Rustls), 0)),
        ("ratio".to_string(), fmt_ratio(median(&ratios(best)))),
        ("mode".to_string(), if best == Who::DapWorker { "worker" } else { "proc" }.to_string()),
        ("proc_setups_per_s".to_string(), fmt_num(p, 0)),
        ("worker_setups_per_s".to_string(), fmt_num(w, 0)),
        ("proc_ratio".to_string(), fmt_ratio(median(&ratios(Who::DapProc)))),
        ("worker_ratio".to_string(), fmt_ratio(median(&ratios(Who::DapWorker)))),
        ("cpu_ratio".to_string(), fmt_ratio(median(&cpu_ratios(best)))),
        ("failed".to_string(), failures.to_string()),
        ("noisy_runs".to_string(), noisy.to_string()),
    ];
    print_result_line(&pairs);
    Ok(pairs)
}
