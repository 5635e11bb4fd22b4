//! `dap-bench udp`: one connection, one channel (one unidirectional stream for quinn),
//! encrypted bulk over loopback UDP, dap's UDP transport against quinn 0.11 (rustls, ring),
//! for AES-256-GCM and ChaCha20-Poly1305 at 1,452-byte datagrams; and, in the same run,
//! dap's own stream over HTTP for the `udp / http` ratio.
//!
//! - **dap**: a `StreamServer` serving UDP (`serve_udp`, one socket on one reactor worker
//!   pinned to CPU 0) whose channel `S` is a sink counting message bytes; the session comes
//!   from `StreamServer::stream_ctl` in process (transport UDP, the cipher under test).
//!   The client is `dap_stream::client::udp_connect_on` on a reactor worker pinned to
//!   CPU 1, writing `--msg`-byte messages on `S` while the channel takes them. Datagrams
//!   are 1,452 bytes at both ends (path MTU discovery finds that first).
//! - **quinn**: a server endpoint in a current-thread tokio runtime on a thread pinned to
//!   CPU 0 accepts one connection and one unidirectional stream and reads chunks, counting
//!   bytes; the client, the same way on CPU 1, writes `--msg`-byte buffers in a loop. TLS
//!   1.3 with the one suite under test (AES-128-GCM only for QUIC's Initial packets, as
//!   QUIC requires), X25519, MTU fixed at 1,452 (no discovery), quinn's other defaults.
//! - **dap-http**: `dap-bench stream`'s dap run, for the ratio of UDP to HTTP.
//!
//! The window, CPU accounting and the order of contenders follow `dap-bench stream`.
//!
//! Then, in the same invocation, set-ups per second: dap's full set-up (enc_init,
//! stream_ctl for transport UDP, the first datagram's echo) against quinn's full handshake
//! and a 1-byte echo, fresh connections, `--setup-conns` (8) in flight; see
//! [`crate::udp_setup`]. `--no-bulk` and `--no-setups` (hidden) run one part only.
//!
//! [`run_dap`] and [`run_quinn`] also serve `dap-bench udp-loss`, which puts a lossy relay
//! between the two ends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_stream::session::TransportKind;
use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::udp::mtu::MtuConfig;
use dap_stream::{ChannelProcs, MuxConfig, StreamConfig, StreamServer, StreamStats};

use crate::bulk::{Sink, Source, Window, measure, one_worker_reactor, pattern, print_row};
use crate::procstat;
use crate::relay::{Loss, Relay, RelayStats, join_bounded};
use crate::report::{fmt_num, fmt_ratio, median, print_result_line};
use crate::servers::{CLIENT_CPU, SERVER_CPU};
use crate::tls::{self, Cert, CertKind, Cipher};
use crate::udp_setup;

/// Options of `dap-bench udp`.
#[derive(Debug, Clone, clap::Args)]
pub struct UdpArgs {
    /// Measured window per run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Rounds; contenders alternate across rounds and ratios are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Warm-up after the connection is up, before the window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Application message (write) size in bytes, the same for every contender.
    #[arg(long, default_value_t = 64 * 1024)]
    pub msg: usize,
    /// Run only this contender, e.g. `dap-udp` (for profiling).
    #[arg(long, hide = true)]
    pub only: Option<String>,
    /// Run only this cipher, `aes` or `chacha` (for profiling).
    #[arg(long, hide = true)]
    pub cipher: Option<String>,
    /// Set-ups the load generator keeps in flight, each on its own fresh connection.
    #[arg(long, default_value_t = 8)]
    pub setup_conns: usize,
    /// Skip the bulk transfers (only the set-ups; for profiling).
    #[arg(long, hide = true)]
    pub no_bulk: bool,
    /// Skip the set-ups (only the bulk transfers; for profiling).
    #[arg(long, hide = true)]
    pub no_setups: bool,
}

const DATAGRAM: usize = 1452;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One bulk run's window, and what the relay did when it went through one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BulkRun {
    /// The measured window (its count in bytes received).
    pub(crate) window: Window,
    /// The relay's counters, over the whole run.
    pub(crate) relay: Option<RelayStats>,
}

/// A relay in front of `server` when `loss` asks for one, and the address the client is to
/// send to.
fn route(server: SocketAddr, loss: Option<Loss>) -> io::Result<(Option<Relay>, SocketAddr)> {
    match loss {
        Some(l) => {
            let r = Relay::start(server, l)?;
            let a = r.addr();
            Ok((Some(r), a))
        }
        None => Ok((None, server)),
    }
}

/// One dap-over-UDP run, directly or (with `loss`) through a lossy relay.
pub(crate) fn run_dap(
    cipher: Cipher,
    msg: usize,
    warmup: f64,
    secs: f64,
    loss: Option<Loss>,
) -> io::Result<BulkRun> {
    let received = Arc::new(AtomicU64::new(0));
    let reactor = one_worker_reactor(SERVER_CPU, "bench-srv")?;
    let _pool = dap_proc::ProcPool::builder().start_for(&reactor)?;
    let mut procs = ChannelProcs::new();
    let r = received.clone();
    procs.ch_proc_add(b'S', move |_| Box::new(Sink(r.clone()))).expect("valid id");
    let mut config = StreamConfig::default();
    config.udp.connection.mtu = MtuConfig::fixed(DATAGRAM);
    let stream = StreamServer::new(procs, config);
    let server_addr = stream.serve_udp(&reactor, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let (relay, addr) = route(server_addr, loss)?;
    let req = CtlRequest {
        channels: b"S".to_vec(),
        suite: Some(cipher.dap()),
        transport: TransportKind::Udp,
        unreliable: Vec::new(),
    };
    let answer = stream
        .stream_ctl(&req.encode(), None, Instant::now())
        .map_err(|e| io::Error::other(format!("stream_ctl: {e}")))?;
    let params = decode_answer(&answer, MuxConfig::default())
        .map_err(|e| io::Error::other(format!("stream_ctl answer: {e}")))?;

    let client = one_worker_reactor(CLIENT_CPU, "bench-cli")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut cprocs = ChannelProcs::new();
    let (data, st) = (Bytes::from(pattern(msg)), stop.clone());
    cprocs
        .ch_proc_add(b'S', move |_| Box::new(Source { msg: data.clone(), stop: st.clone() }))
        .expect("valid id");
    let (tx, rx) = crossbeam_channel::unbounded();
    let worker = client.worker(0).expect("one worker");
    worker
        .exec(move |ctx| {
            let sink: dap_stream::transport::http::EventSink = Box::new(move |ev| {
                let _ = tx.send(ev);
            });
            let stats = Arc::new(StreamStats::default());
            let _ = dap_stream::client::udp_connect_on(
                ctx,
                addr,
                params,
                &cprocs,
                stats,
                CONNECT_TIMEOUT,
                sink,
            );
        })
        .map_err(|e| io::Error::other(format!("client worker: {e:?}")))?;
    let esocket =
        crate::bulk::wait_connected(&rx, CONNECT_TIMEOUT + Duration::from_secs(1), "udp session")?;
    let res = measure(&received, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    let _ = esocket.close();
    client.shutdown(STOP_TIMEOUT);
    reactor.shutdown(STOP_TIMEOUT);
    let relay = relay.map(Relay::stop);
    Ok(BulkRun { window: res?, relay })
}

/// The transport settings both quinn ends use: MTU fixed at the datagram size.
fn quinn_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_mtu(DATAGRAM as u16);
    t.min_mtu(DATAGRAM as u16);
    t.mtu_discovery_config(None);
    Arc::new(t)
}

/// QUIC's Initial packets are always AES-128-GCM; the suite under test protects the rest.
fn initial_suite() -> io::Result<rustls::quic::Suite> {
    rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .ok_or_else(|| io::Error::other("no QUIC initial suite"))
}

const ALPN: &[u8] = b"dap-bench";

/// quinn's server and client configs: TLS 1.3 with `cipher` only (AES-128-GCM for the
/// Initial packets), X25519, `cert`, ALPN `dap-bench`, no 0-RTT, no resumption, and the
/// given transport settings (`None`: quinn's defaults).
pub(crate) fn quinn_configs(
    cipher: Cipher,
    cert: &Cert,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> io::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let mut server_tls = (*tls::server_config(cipher, cert)?).clone();
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    server_tls.max_early_data_size = 0;
    let mut client_tls = (*tls::client_config(cipher, cert)?).clone();
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::with_initial(
        Arc::new(server_tls),
        initial_suite()?,
    )
    .map_err(io::Error::other)?;
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::with_initial(
        Arc::new(client_tls),
        initial_suite()?,
    )
    .map_err(io::Error::other)?;
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(client_crypto));
    if let Some(t) = transport {
        server_cfg.transport_config(t.clone());
        client_cfg.transport_config(t);
    }
    Ok((server_cfg, client_cfg))
}

/// One quinn run: server and client threads, each a current-thread runtime; directly or
/// (with `loss`) through a lossy relay.
pub(crate) fn run_quinn(
    cipher: Cipher,
    cert: &Cert,
    msg: usize,
    warmup: f64,
    secs: f64,
    loss: Option<Loss>,
) -> io::Result<BulkRun> {
    let (server_cfg, client_cfg) = quinn_configs(cipher, cert, Some(quinn_transport()))?;

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let pin = procstat::can_pin_two_cpus();
    let (addr_tx, addr_rx) = crossbeam_channel::bounded(1);
    // Both ends' connections, for the harness to close them from here once the run is over:
    // a local close ends both loops at once, whatever they wait for, and no end waits for
    // its idle timeout if the peer's CONNECTION_CLOSE is lost.
    let (conn_tx, conn_rx) = crossbeam_channel::unbounded::<quinn::Connection>();
    let (rcv, stp, ctx) = (received.clone(), stop.clone(), conn_tx.clone());
    let server = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(SERVER_CPU)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let ep = quinn::Endpoint::server(server_cfg, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let _ = addr_tx.send(ep.local_addr()?);
            let incoming = ep.accept().await.ok_or_else(|| io::Error::other("no connection"))?;
            let conn = incoming.await.map_err(io::Error::other)?;
            let _ = ctx.send(conn.clone());
            let mut recv = conn.accept_uni().await.map_err(io::Error::other)?;
            while !stp.load(Ordering::Relaxed) {
                match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(c)) => {
                        rcv.fetch_add(c.bytes.len() as u64, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            conn.close(0u32.into(), b"done");
            Ok(())
        })
    });
    let server_addr = addr_rx
        .recv_timeout(CONNECT_TIMEOUT)
        .map_err(|_| io::Error::other("quinn server did not start"))?;
    let (relay, addr) = route(server_addr, loss)?;
    let stp = stop.clone();
    let client = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(CLIENT_CPU)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            ep.set_default_client_config(client_cfg);
            let conn = ep
                .connect(addr, "127.0.0.1")
                .map_err(io::Error::other)?
                .await
                .map_err(io::Error::other)?;
            let _ = conn_tx.send(conn.clone());
            let mut send = conn.open_uni().await.map_err(io::Error::other)?;
            let data = Bytes::from(pattern(msg));
            while !stp.load(Ordering::Relaxed) {
                if send.write_chunk(data.clone()).await.is_err() {
                    break;
                }
            }
            Ok(())
        })
    });
    let close_all = || {
        stop.store(true, Ordering::Relaxed);
        for c in conn_rx.try_iter() {
            c.close(0u32.into(), b"done");
        }
    };
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while received.load(Ordering::Relaxed) == 0 {
        if Instant::now() >= deadline || server.is_finished() || client.is_finished() {
            close_all();
            return Err(io::Error::other("quinn transfer did not start"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let res = measure(&received, warmup, secs);
    close_all();
    let c = join_bounded(client, STOP_TIMEOUT);
    let s = join_bounded(server, STOP_TIMEOUT);
    let relay = relay.map(Relay::stop);
    if let Err(e) = c.and(s) {
        println!("      quinn: {e}");
    }
    Ok(BulkRun { window: res?, relay })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Dap,
    Quinn,
    DapHttp,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Dap => "dap-udp",
            Who::Quinn => "quinn",
            Who::DapHttp => "dap-http",
        }
    }
}

/// `dap-bench udp`: prints the table and the `RESULT` line; returns its pairs.
pub fn run(args: &UdpArgs) -> io::Result<Vec<(String, String)>> {
    let secs = args.secs.clamp(0.2, 600.0);
    let warmup = args.warmup.clamp(0.0, 60.0);
    let rounds = args.rounds.clamp(1, 50);
    let msg = args.msg.clamp(1, 16 << 20);
    let cert = Cert::generate(CertKind::Ed25519)?;
    let mut pairs = Vec::new();
    if !args.no_bulk {
        pairs.extend(run_bulk(args, &cert, msg, warmup, secs, rounds)?);
    }
    if !args.no_setups {
        pairs.extend(run_setups(args, &cert, warmup, secs, rounds));
    }
    print_result_line(&pairs);
    Ok(pairs)
}

/// The bulk part of `dap-bench udp`: its table; returns its `RESULT` pairs.
fn run_bulk(
    args: &UdpArgs,
    cert: &Cert,
    msg: usize,
    warmup: f64,
    secs: f64,
    rounds: usize,
) -> io::Result<Vec<(String, String)>> {
    println!(
        "== udp: bulk over loopback UDP, {DATAGRAM}-byte datagrams, {msg}-byte writes, {secs} s x {rounds} round(s) (pinned: {})",
        procstat::can_pin_two_cpus()
    );
    println!(
        "{:<5} {:<6} {:<8} {:>9} {:>7} {:>7} {:>10} {:>10} {:>6}",
        "round", "cipher", "who", "MB/s", "srv %", "cli %", "srv us/MB", "cli us/MB", "oth %"
    );
    let mut pairs = Vec::new();
    for cipher in [Cipher::Aes, Cipher::ChaCha] {
        if args.cipher.as_deref().is_some_and(|c| c != cipher.name()) {
            continue;
        }
        let (mut dap, mut quinn, mut http) = (Vec::new(), Vec::new(), Vec::new());
        let (mut ratio, mut vs_http) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let order = if round % 2 == 1 {
                [Who::Dap, Who::Quinn, Who::DapHttp]
            } else {
                [Who::Quinn, Who::DapHttp, Who::Dap]
            };
            let mut got = [None, None, None];
            for who in order {
                if args.only.as_deref().is_some_and(|o| o != who.name()) {
                    got[who as usize] = Some(f64::NAN);
                    continue;
                }
                let w = match who {
                    Who::Dap => run_dap(cipher, msg, warmup, secs, None)?.window,
                    Who::Quinn => run_quinn(cipher, cert, msg, warmup, secs, None)?.window,
                    Who::DapHttp => crate::bulk::run_dap_http(cipher, msg, warmup, secs)?,
                };
                print_row(&round.to_string(), cipher, who.name(), 8, &w);
                got[who as usize] = Some(w.mb_per_s());
            }
            let [Some(d), Some(q), Some(h)] = got else { unreachable!("all three ran") };
            dap.push(d);
            quinn.push(q);
            http.push(h);
            ratio.push(d / q);
            vs_http.push(d / h);
        }
        let name = cipher.name();
        pairs.push((format!("udp_{name}_mbs"), fmt_num(median(&dap), 1)));
        pairs.push((format!("quinn_{name}_mbs"), fmt_num(median(&quinn), 1)));
        pairs.push((format!("http_{name}_mbs"), fmt_num(median(&http), 1)));
        pairs.push((format!("ratio_{name}"), fmt_ratio(median(&ratio))));
        pairs.push((format!("udp_vs_http_{name}"), fmt_ratio(median(&vs_http))));
    }
    Ok(pairs)
}

/// The set-ups part of `dap-bench udp` (see [`crate::udp_setup`]): its table; returns its
/// `RESULT` pairs. A run that fails is reported in the table and counts as missing.
fn run_setups(
    args: &UdpArgs,
    cert: &Cert,
    warmup: f64,
    secs: f64,
    rounds: usize,
) -> Vec<(String, String)> {
    let conns = args.setup_conns.clamp(1, 1024);
    let log = crate::servers::log_dir().join("udp-setup-server-stats.log");
    let _ = std::fs::remove_file(log);
    println!(
        "== udp set-ups: full set-ups per second on fresh connections, {conns} in flight, {secs} s x {rounds} round(s), server on CPU {SERVER_CPU}, load generator on CPU {CLIENT_CPU} (pinned: {})",
        procstat::can_pin_two_cpus()
    );
    println!(
        "   dap-proc / dap-worker: POST /enc_init + POST /stream_ctl (UDP, channel E, AES-256-GCM) on a fresh TCP connection, then a fresh UDP socket: first datagram with a 1-byte message on E, its echo back; enc_init and stream_ctl on the proc thread (the default) / on the reactor worker (EncConfig::handshake_on_worker, as quinn does its handshakes on its endpoint's thread)"
    );
    println!(
        "   quinn: full QUIC handshake (rustls, ring, TLS 1.3, AES-256-GCM, X25519, Ed25519 certificate, no resumption, no 0-RTT), then 1 byte each way on a bidirectional stream"
    );
    println!(
        "{:<5} {:<10} {:>11} {:>7} {:>7} {:>11} {:>11} {:>6} {:>7}",
        "round", "who", "setups/s", "cpu0 %", "cpu1 %", "c0 us/set", "c1 us/set", "oth %", "fail"
    );
    // dap in both enc_init modes, and quinn; the order rotates across rounds.
    const NAMES: [&str; 3] = ["dap-proc", "dap-worker", "quinn"];
    let mut rates: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut failed = [0u64; 3];
    for round in 1..=rounds {
        let mut order = [0usize, 1, 2];
        order.rotate_left((round - 1) % 3);
        let mut got = [f64::NAN; 3];
        for who in order {
            let name = NAMES[who];
            let skip = args.only.as_deref().is_some_and(|o| {
                o != name && !(o == Who::Dap.name() && who < 2) && !(o == "quinn" && who == 2)
            });
            if skip {
                continue;
            }
            let res = match who {
                0 | 1 => udp_setup::run_dap(conns, who == 1, warmup, secs),
                _ => udp_setup::run_quinn(cert, conns, warmup, secs),
            };
            match res {
                Ok((w, f, first)) => {
                    crate::setup::print_row(&round.to_string(), name, &w, f);
                    if let Some(e) = first {
                        println!("      first failure: {e}");
                    }
                    failed[who] += f;
                    got[who] = w.count as f64 / w.wall.as_secs_f64();
                }
                Err(e) => println!("{round:<5} {name:<10} FAILED: {e}"),
            }
        }
        for (r, g) in rates.iter_mut().zip(got) {
            r.push(g);
        }
    }
    // Reported: the faster of dap's two modes (by median), its ratio per round to quinn.
    let best = if median(&rates[1]) > median(&rates[0]) { 1 } else { 0 };
    let ratio: Vec<f64> = rates[best].iter().zip(&rates[2]).map(|(d, q)| d / q).collect();
    let rounds_txt: Vec<String> = ratio.iter().map(|x| fmt_ratio(*x)).collect();
    println!(
        "set-ups: dap-proc {} /s, dap-worker {} /s, quinn {} /s (medians); {}/quinn ratio {} (rounds: {})",
        fmt_num(median(&rates[0]), 0),
        fmt_num(median(&rates[1]), 0),
        fmt_num(median(&rates[2]), 0),
        NAMES[best],
        fmt_ratio(median(&ratio)),
        rounds_txt.join(", ")
    );
    vec![
        ("setups_per_s".to_string(), fmt_num(median(&rates[best]), 0)),
        ("quinn_handshakes_per_s".to_string(), fmt_num(median(&rates[2]), 0)),
        ("setup_ratio".to_string(), fmt_ratio(median(&ratio))),
        ("setups_proc_per_s".to_string(), fmt_num(median(&rates[0]), 0)),
        ("setups_worker_per_s".to_string(), fmt_num(median(&rates[1]), 0)),
        ("setup_failed".to_string(), (failed[0] + failed[1]).to_string()),
        ("quinn_setup_failed".to_string(), failed[2].to_string()),
    ]
}
