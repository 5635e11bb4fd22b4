//! `dap-bench stream`: one channel, encrypted bulk transfer over loopback, dap's stream
//! against rustls TLS 1.3 over TCP with the same AEAD, for ChaCha20-Poly1305 and AES-256-GCM.
//!
//! Both contenders run in this process, each run with fresh servers and clients:
//!
//! - **dap**: a `StreamServer` (route `/stream/` on dap-net's `HttpServer`, one reactor worker
//!   pinned to CPU 0 with its proc thread) whose channel `S` is a sink that counts the bytes
//!   of every message it is handed; the session is created in process with
//!   `StreamServer::stream_ctl` for channel `S` and the cipher under test. The client is
//!   `dap_stream::client::connect` on a reactor worker pinned to CPU 1 (so it attaches with
//!   `GET /stream/S` → `101`); its channel `S` sets `set_ready_to_write(true)` and, in
//!   `on_new` and every `packet_out`, writes messages of `--msg` bytes (one shared `Bytes`,
//!   no copy per message) while the channel takes them.
//! - **rustls**: a server thread pinned to CPU 0 accepts one TCP connection and reads a
//!   blocking `rustls::StreamOwned<ServerConnection, TcpStream>` into a `--msg` buffer,
//!   counting bytes; a client thread pinned to CPU 1 `write_all`s the same `--msg`-byte
//!   buffer in a loop into a blocking `StreamOwned<ClientConnection, TcpStream>`. TLS 1.3
//!   only, the one suite with the same AEAD, X25519, ring provider.
//!
//! Same direction (client → server), same application message size, same pinning, both
//! sockets `TCP_NODELAY`. After the connection is up and a warm-up, the bytes counted by the
//! server side over the window give MB/s (10^6 bytes of application data per second). For
//! each cipher the two contenders alternate their order across rounds; each ratio is dap /
//! rustls within a round, and the reported ratio is the median over rounds.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::http::server::{HttpConfig, HttpServer};
use dap_net::server::Server;
use dap_reactor::Reactor;
use dap_stream::session::TransportKind;
use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::transport::http::StreamEvent;
use dap_stream::{
    Channel, ChannelHandler, ChannelProcs, Message, MuxConfig, StreamConfig, StreamServer,
    StreamStats,
};

use crate::procstat;
use crate::report::{NOISY_OTHER_PCT, fmt_num, fmt_ratio, median, print_result_line};
use crate::servers::{CLIENT_CPU, SERVER_CPU};
use crate::tls::{self, Cert, CertKind, Cipher};

/// Options of `dap-bench stream`.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Measured window per run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Rounds; contenders alternate across rounds and ratios are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Warm-up after the connection is up, before the window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Application message (write) size in bytes, the same for both contenders.
    #[arg(long, default_value_t = 64 * 1024)]
    pub msg: usize,
    /// Also run dap with a key update every N packets (both ends) as a third contender,
    /// `dap-rekey`, and report its throughput against dap's default (`rekey_ratio_*`).
    #[arg(long)]
    pub rekey_packets: Option<u64>,
    /// Run only this contender and cipher, e.g. `dap-chacha` or `rustls-aes` (for profiling).
    #[arg(long, hide = true)]
    pub only: Option<String>,
}

/// How long a connection may take to come up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping a run may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Dap,
    Rustls,
    /// dap with `--rekey-packets`.
    DapRekey,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Dap => "dap",
            Who::Rustls => "rustls",
            Who::DapRekey => "dap-rekey",
        }
    }
}

/// One measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// What the counter counted over the window: application bytes received (`stream`),
    /// set-ups completed (`setup`).
    pub count: u64,
    /// Wall time.
    pub wall: Duration,
    /// Busy time of CPU 0 (the server's) and CPU 1 (the client's), from `/proc/stat`.
    pub busy: [Duration; 2],
    /// CPU time of this process (both ends run in it).
    pub proc_cpu: Duration,
}

impl Window {
    pub(crate) fn mb_per_s(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64() / 1e6
    }
    pub(crate) fn pct(&self, d: Duration) -> f64 {
        100.0 * d.as_secs_f64() / self.wall.as_secs_f64()
    }
    /// Busy CPU time per MB moved on CPU `i`, in microseconds.
    pub(crate) fn us_per_mb(&self, i: usize) -> f64 {
        self.busy[i].as_secs_f64() * 1e6 / (self.count as f64 / 1e6)
    }
    /// Busy time on CPUs 0-1 that this process does not account for (other processes).
    pub fn other_pct(&self) -> f64 {
        let all = self.busy[0] + self.busy[1];
        self.pct(all.saturating_sub(self.proc_cpu))
    }
}

/// Samples `counter`, the CPUs and the process over a window of `secs` after `warmup`.
pub fn measure(counter: &AtomicU64, warmup: f64, secs: f64) -> io::Result<Window> {
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let pid = std::process::id();
    let b0 = counter.load(Ordering::Relaxed);
    let c0 = [procstat::cpus_busy_time(&[SERVER_CPU])?, procstat::cpus_busy_time(&[CLIENT_CPU])?];
    let p0 = procstat::process_cpu_time(pid)?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b1 = counter.load(Ordering::Relaxed);
    let wall = t0.elapsed();
    let c1 = [procstat::cpus_busy_time(&[SERVER_CPU])?, procstat::cpus_busy_time(&[CLIENT_CPU])?];
    let p1 = procstat::process_cpu_time(pid)?;
    Ok(Window {
        count: b1 - b0,
        wall,
        busy: [c1[0].saturating_sub(c0[0]), c1[1].saturating_sub(c0[1])],
        proc_cpu: p1.saturating_sub(p0),
    })
}

/// Waits (at most `within`) for a client stream's `Connected`, past `Opened`; `what` names
/// it in errors.
pub fn wait_connected(
    rx: &crossbeam_channel::Receiver<StreamEvent>,
    within: Duration,
    what: &str,
) -> io::Result<dap_reactor::EsocketHandle> {
    let deadline = Instant::now() + within;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(StreamEvent::Opened { .. }) => {}
            Ok(StreamEvent::Connected { esocket, .. }) => return Ok(esocket),
            Ok(StreamEvent::Closed(e)) => return Err(io::Error::other(format!("{what}: {e}"))),
            Err(_) => return Err(io::Error::other(format!("{what} not up in time"))),
        }
    }
}

/// A reactor with one worker on `cpu` (unpinned when the two CPUs are not available).
pub fn one_worker_reactor(cpu: usize, name: &str) -> io::Result<Reactor> {
    let b = Reactor::builder().threads(1).name(name);
    if procstat::can_pin_two_cpus() { b.cpus(vec![cpu]).start() } else { b.pin(false).start() }
}

/// The server's sink: counts the bytes of every message.
pub(crate) struct Sink(pub(crate) Arc<AtomicU64>);

impl ChannelHandler for Sink {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        self.0.fetch_add(msg.data.len() as u64, Ordering::Relaxed);
    }
}

/// The client's source: writes `msg` while the channel takes it, until `stop`.
pub(crate) struct Source {
    pub(crate) msg: Bytes,
    pub(crate) stop: Arc<AtomicBool>,
}

impl Source {
    fn fill(&mut self, ch: &mut Channel<'_>) {
        while !self.stop.load(Ordering::Relaxed) && ch.can_write(self.msg.len()) {
            if ch.write(0, self.msg.clone()).is_err() {
                return;
            }
        }
    }
}

impl ChannelHandler for Source {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        ch.set_ready_to_write(true);
        self.fill(ch);
    }
    fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {}
    fn packet_out(&mut self, ch: &mut Channel<'_>) {
        self.fill(ch);
    }
}

pub(crate) fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// `dap-bench stream`'s dap run with its defaults (for `dap-bench udp`'s HTTP column).
pub(crate) fn run_dap_http(
    cipher: Cipher,
    msg: usize,
    warmup: f64,
    secs: f64,
) -> io::Result<Window> {
    run_dap(cipher, msg, warmup, secs, None)
}

/// One dap run: fresh server and client reactors.
fn run_dap(
    cipher: Cipher,
    msg: usize,
    warmup: f64,
    secs: f64,
    rekey: Option<u64>,
) -> io::Result<Window> {
    let received = Arc::new(AtomicU64::new(0));
    let reactor = one_worker_reactor(SERVER_CPU, "bench-srv")?;
    let _pool = dap_proc::ProcPool::builder().start_for(&reactor)?;
    let mut procs = ChannelProcs::new();
    let r = received.clone();
    procs.ch_proc_add(b'S', move |_| Box::new(Sink(r.clone()))).expect("valid id");
    let mut config = StreamConfig::default();
    if let Some(n) = rekey {
        config.limits.rekey_packets = n;
    }
    let stream = StreamServer::new(procs, config);
    let mut http = HttpServer::new(HttpConfig::default());
    stream.install_stream_route(&mut http);
    let running =
        http.start(&reactor, Server::builder().tcp(SocketAddr::from(([127, 0, 0, 1], 0))))?;
    let addr = running.server().tcp_addrs()[0];
    let req = CtlRequest {
        channels: b"S".to_vec(),
        suite: Some(cipher.dap()),
        transport: TransportKind::Http,
        unreliable: Vec::new(),
    };
    let answer = stream
        .stream_ctl(&req.encode(), None, Instant::now())
        .map_err(|e| io::Error::other(format!("stream_ctl: {e}")))?;
    let mut params = decode_answer(&answer, MuxConfig::default())
        .map_err(|e| io::Error::other(format!("stream_ctl answer: {e}")))?;
    if let Some(n) = rekey {
        params.limits.rekey_packets = n;
    }

    let client = one_worker_reactor(CLIENT_CPU, "bench-cli")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut cprocs = ChannelProcs::new();
    let (data, st) = (Bytes::from(pattern(msg)), stop.clone());
    cprocs
        .ch_proc_add(b'S', move |_| Box::new(Source { msg: data.clone(), stop: st.clone() }))
        .expect("valid id");
    let (tx, rx) = crossbeam_channel::unbounded();
    dap_stream::client::connect(
        client.worker(0).expect("one worker"),
        addr,
        params,
        Arc::new(cprocs),
        Arc::new(StreamStats::default()),
        CONNECT_TIMEOUT,
        Box::new(move |ev| {
            let _ = tx.send(ev);
        }),
    )
    .map_err(|e| io::Error::other(format!("connect: {e:?}")))?;
    let esocket = wait_connected(&rx, CONNECT_TIMEOUT + Duration::from_secs(1), "stream")?;
    let res = measure(&received, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    let _ = esocket.close();
    client.shutdown(STOP_TIMEOUT);
    let snap = stream.stats();
    drop(running);
    reactor.shutdown(STOP_TIMEOUT);
    if rekey.is_some() && snap.key_updates_received == 0 {
        return Err(io::Error::other("no key update happened"));
    }
    let w = res?;
    if snap.auth_failures + snap.sequence_errors + snap.protocol_errors > 0 {
        return Err(io::Error::other(format!("stream errors: {snap:?}")));
    }
    Ok(w)
}

/// One rustls run: fresh server and client threads.
fn run_rustls(
    cipher: Cipher,
    cert: &Cert,
    msg: usize,
    warmup: f64,
    secs: f64,
) -> io::Result<Window> {
    let server_cfg = tls::server_config(cipher, cert)?;
    let client_cfg = tls::client_config(cipher, cert)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pin = procstat::can_pin_two_cpus();

    let (rcv, stp) = (received.clone(), stop.clone());
    let server = std::thread::spawn(move || -> io::Result<String> {
        if pin {
            procstat::pin_current_thread(SERVER_CPU)?;
        }
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let tcp = loop {
            match listener.accept() {
                Ok((t, _)) => break t,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        };
        tcp.set_nonblocking(false)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(STOP_TIMEOUT))?;
        let conn = rustls::ServerConnection::new(server_cfg).map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let mut buf = vec![0u8; msg];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    rcv.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) if stp.load(Ordering::Relaxed) => break,
                Err(e) => return Err(e),
            }
        }
        let suite = s.conn.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite()));
        let version = s.conn.protocol_version().map(|v| format!("{v:?}"));
        Ok(format!("{}:{}", version.unwrap_or_default(), suite.unwrap_or_default()))
    });

    let stp = stop.clone();
    let client = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(CLIENT_CPU)?;
        }
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(STOP_TIMEOUT))?;
        let conn = rustls::ClientConnection::new(client_cfg, tls::server_name())
            .map_err(io::Error::other)?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let data = pattern(msg);
        while !stp.load(Ordering::Relaxed) {
            s.write_all(&data)?;
        }
        s.conn.send_close_notify();
        s.flush()?;
        let _ = s.sock.shutdown(std::net::Shutdown::Write);
        Ok(())
    });

    // Wait (bounded) for the first bytes: the handshake is done and data flows.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while received.load(Ordering::Relaxed) == 0 {
        if Instant::now() >= deadline || server.is_finished() || client.is_finished() {
            stop.store(true, Ordering::Relaxed);
            let s = server.join().map_err(|_| io::Error::other("server panicked"))?;
            let c = client.join().map_err(|_| io::Error::other("client panicked"))?;
            return Err(io::Error::other(format!(
                "rustls transfer did not start: server {s:?}, client {c:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let res = measure(&received, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    let c = client.join().map_err(|_| io::Error::other("client panicked"))?;
    let s = server.join().map_err(|_| io::Error::other("server panicked"))?;
    c?;
    let negotiated = s?;
    let want = format!("TLSv1_3:{:?}", cipher.rustls().suite());
    if negotiated != want {
        return Err(io::Error::other(format!("negotiated {negotiated}, expected {want}")));
    }
    res
}

/// One row of the table; `!` marks a run where other processes (or softirq work done in
/// kernel threads) took more than [`NOISY_OTHER_PCT`] of the two CPUs.
/// `who` is padded to `width` (the table's column).
pub(crate) fn print_row(round: &str, cipher: Cipher, who: &str, width: usize, w: &Window) {
    let flag = if w.other_pct() > NOISY_OTHER_PCT { " !" } else { "" };
    println!(
        "{:<5} {:<6} {:<width$} {:>9.1} {:>7.1} {:>7.1} {:>10.0} {:>10.0} {:>6.1}{flag}",
        round,
        cipher.name(),
        who,
        w.mb_per_s(),
        w.pct(w.busy[0]),
        w.pct(w.busy[1]),
        w.us_per_mb(0),
        w.us_per_mb(1),
        w.other_pct(),
    );
}

/// `dap-bench stream`: prints the table and the `RESULT` line; returns its pairs.
pub fn run(args: &StreamArgs) -> io::Result<Vec<(String, String)>> {
    let secs = args.secs.clamp(0.2, 600.0);
    let warmup = args.warmup.clamp(0.0, 60.0);
    let rounds = args.rounds.clamp(1, 50);
    let msg = args.msg.clamp(1, 16 << 20);
    let pinned = procstat::can_pin_two_cpus();
    if pinned {
        procstat::pin_current_thread(CLIENT_CPU)?;
    } else {
        println!("WARNING: CPUs 0 and 1 are not both available; nothing pinned");
    }
    let cert = Cert::generate(CertKind::Ed25519)?;
    println!(
        "== stream: one channel, encrypted bulk transfer client -> server over loopback, {msg}-byte messages; dap stream vs rustls 0.23 TLS 1.3 (ring), same AEAD; warm-up {warmup} s, window {secs} s, {rounds} round(s)"
    );
    println!(
        "   server (dap StreamServer sink on channel S / rustls StreamOwned reader) on CPU {SERVER_CPU}, client (dap stream client source / rustls StreamOwned writer) on CPU {CLIENT_CPU}{}",
        if pinned { "" } else { " (NOT pinned)" }
    );
    println!(
        "   columns: MB/s = application bytes received per second (10^6); cpu0/cpu1 % = busy time of CPU {SERVER_CPU} (server) / CPU {CLIENT_CPU} (client); us/MB = that CPU's busy time per MB moved; oth % = busy time on both CPUs not used by this process (! above {NOISY_OTHER_PCT}%)"
    );
    println!(
        "{:<5} {:<6} {:<6} {:>9} {:>7} {:>7} {:>10} {:>10} {:>6}",
        "round", "cipher", "who", "MB/s", "cpu0 %", "cpu1 %", "c0 us/MB", "c1 us/MB", "oth %"
    );
    let mut runs: Vec<(usize, Cipher, Who, Window)> = Vec::new();
    for round in 0..rounds {
        for cipher in Cipher::ALL {
            let mut order = if round % 2 == 0 {
                vec![Who::Dap, Who::Rustls]
            } else {
                vec![Who::Rustls, Who::Dap]
            };
            if args.rekey_packets.is_some() {
                order.insert(round % 3, Who::DapRekey);
            }
            for who in order {
                let me = format!("{}-{}", who.name(), cipher.name());
                if args.only.as_ref().is_some_and(|o| *o != me) {
                    continue;
                }
                let res = match who {
                    Who::Dap => run_dap(cipher, msg, warmup, secs, None),
                    Who::DapRekey => run_dap(cipher, msg, warmup, secs, args.rekey_packets),
                    Who::Rustls => run_rustls(cipher, &cert, msg, warmup, secs),
                };
                match res {
                    Ok(w) => {
                        print_row(&(round + 1).to_string(), cipher, who.name(), 6, &w);
                        runs.push((round, cipher, who, w));
                    }
                    Err(e) => println!(
                        "{:<5} {:<6} {:<6} FAILED: {e}",
                        round + 1,
                        cipher.name(),
                        who.name()
                    ),
                }
            }
        }
    }

    println!("== medians over rounds");
    let get = |c: Cipher, who: Who| -> Vec<&Window> {
        runs.iter().filter(|r| r.1 == c && r.2 == who).map(|r| &r.3).collect()
    };
    let mut pairs = Vec::new();
    let mut ratio_pairs = Vec::new();
    let mut rustls_pairs = Vec::new();
    let mut extra_pairs = Vec::new();
    for cipher in Cipher::ALL {
        for who in [Who::Dap, Who::Rustls, Who::DapRekey] {
            let ws = get(cipher, who);
            if ws.is_empty() {
                continue;
            }
            let col =
                |f: &dyn Fn(&Window) -> f64| median(&ws.iter().map(|w| f(w)).collect::<Vec<_>>());
            println!(
                "{:<5} {:<6} {:<6} {:>9.1} {:>7.1} {:>7.1} {:>10.0} {:>10.0} {:>6.1}",
                "med",
                cipher.name(),
                who.name(),
                col(&|w| w.mb_per_s()),
                col(&|w| w.pct(w.busy[0])),
                col(&|w| w.pct(w.busy[1])),
                col(&|w| w.us_per_mb(0)),
                col(&|w| w.us_per_mb(1)),
                col(&|w| w.other_pct()),
            );
        }
        let per_round: Vec<f64> = (0..rounds)
            .filter_map(|r| {
                let find = |who| runs.iter().find(|x| x.0 == r && x.1 == cipher && x.2 == who);
                Some(find(Who::Dap)?.3.mb_per_s() / find(Who::Rustls)?.3.mb_per_s())
            })
            .collect();
        let cpu_ratio: Vec<f64> = (0..rounds)
            .filter_map(|r| {
                let find = |who| runs.iter().find(|x| x.0 == r && x.1 == cipher && x.2 == who);
                let (d, t) = (&find(Who::Dap)?.3, &find(Who::Rustls)?.3);
                Some((d.us_per_mb(0) + d.us_per_mb(1)) / (t.us_per_mb(0) + t.us_per_mb(1)))
            })
            .collect();
        let rx_cpu_ratio: Vec<f64> = (0..rounds)
            .filter_map(|r| {
                let find = |who| runs.iter().find(|x| x.0 == r && x.1 == cipher && x.2 == who);
                Some(find(Who::Dap)?.3.us_per_mb(0) / find(Who::Rustls)?.3.us_per_mb(0))
            })
            .collect();
        let rekey_ratio: Vec<f64> = (0..rounds)
            .filter_map(|r| {
                let find = |who| runs.iter().find(|x| x.0 == r && x.1 == cipher && x.2 == who);
                Some(find(Who::DapRekey)?.3.mb_per_s() / find(Who::Dap)?.3.mb_per_s())
            })
            .collect();
        let rounds_txt: Vec<String> = per_round.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "{}: dap/rustls throughput ratio {} (rounds: {}); CPU per MB dap/rustls {}",
            cipher.name(),
            fmt_ratio(median(&per_round)),
            rounds_txt.join(", "),
            fmt_ratio(median(&cpu_ratio)),
        );
        println!(
            "{}: receiving side CPU per MB dap/rustls {}",
            cipher.name(),
            fmt_ratio(median(&rx_cpu_ratio))
        );
        if args.rekey_packets.is_some() {
            let txt: Vec<String> = rekey_ratio.iter().map(|x| format!("{x:.3}")).collect();
            println!(
                "{}: dap with key updates / dap throughput {} (rounds: {})",
                cipher.name(),
                fmt_ratio(median(&rekey_ratio)),
                txt.join(", ")
            );
        }
        let mbs = |who| median(&get(cipher, who).iter().map(|w| w.mb_per_s()).collect::<Vec<_>>());
        pairs.push((format!("{}_mbs", cipher.name()), fmt_num(mbs(Who::Dap), 1)));
        rustls_pairs.push((format!("rustls_{}_mbs", cipher.name()), fmt_num(mbs(Who::Rustls), 1)));
        ratio_pairs.push((format!("ratio_{}", cipher.name()), fmt_ratio(median(&per_round))));
        ratio_pairs.push((format!("cpu_ratio_{}", cipher.name()), fmt_ratio(median(&cpu_ratio))));
        extra_pairs
            .push((format!("rx_cpu_ratio_{}", cipher.name()), fmt_ratio(median(&rx_cpu_ratio))));
        if args.rekey_packets.is_some() {
            extra_pairs
                .push((format!("rekey_{}_mbs", cipher.name()), fmt_num(mbs(Who::DapRekey), 1)));
            extra_pairs
                .push((format!("rekey_ratio_{}", cipher.name()), fmt_ratio(median(&rekey_ratio))));
        }
    }
    // chacha_mbs aes_mbs rustls_chacha_mbs rustls_aes_mbs ratio_chacha ratio_aes, then extras.
    pairs.extend(rustls_pairs);
    let (ratios, cpu): (Vec<_>, Vec<_>) =
        ratio_pairs.into_iter().partition(|(k, _)| k.starts_with("ratio_"));
    pairs.extend(ratios);
    pairs.extend(cpu);
    pairs.extend(extra_pairs);
    let noisy = runs.iter().filter(|r| r.3.other_pct() > NOISY_OTHER_PCT).count();
    pairs.push(("noisy_runs".to_string(), noisy.to_string()));
    print_result_line(&pairs);
    Ok(pairs)
}
