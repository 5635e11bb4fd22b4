//! `dap-bench`: compares dap with its peers in the same run (see docs/BENCHMARKS.md).
//!
//! Every comparison subcommand prints a readable table and, as its last line, `RESULT`
//! followed by `key=value` pairs. Every run is bounded in time.

mod attacks;
mod bulk;
mod certs;
mod cluster;
mod dapclient;
mod echo;
mod http;
mod loadgen;
mod memory;
mod proc;
mod procstat;
mod relay;
mod report;
mod serve_hyper;
mod serve_mio;
mod serve_raw_http;
mod serve_tokio;
mod servers;
mod setup;
mod tls;
mod udp;
mod udp_loss;
mod udp_setup;
mod udp_sim;
mod wrk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dap-bench",
    about = "Benchmarks dap against tokio, hyper, rustls and a raw mio loop"
)]
struct Cli {
    /// Use this dap echo binary instead of building `<repo>/target/release/examples/echo`.
    #[arg(long, global = true, hide = true)]
    dap_bin: Option<PathBuf>,
    /// Use this dap hello binary instead of building `<repo>/target/release/examples/hello`.
    #[arg(long, global = true, hide = true)]
    dap_hello_bin: Option<PathBuf>,
    /// Use this stream_server binary instead of building
    /// `<repo>/target/release/examples/stream_server`.
    #[arg(long, global = true, hide = true)]
    dap_stream_bin: Option<PathBuf>,
    /// Use this dapd binary instead of building `<repo>/target/release/dapd`.
    #[arg(long, global = true, hide = true)]
    dapd_bin: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Tokio echo server, one worker (a contender; started by `echo`).
    ServeTokio {
        /// Address to listen on.
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Raw mio echo server, one event loop per thread (the limit; started by `echo`).
    ServeMio {
        /// Address to listen on (every loop binds it with SO_REUSEPORT).
        #[arg(long)]
        addr: SocketAddr,
        /// Event-loop threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// The cheapest HTTP responder a mio loop can be: counts request heads, sends a canned
    /// answer (the limit of `http`; started by it).
    #[command(hide = true)]
    ServeRawHttp {
        /// Address to listen on (every loop binds it with SO_REUSEPORT).
        #[arg(long)]
        addr: SocketAddr,
        /// Event-loop threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// hyper 1.x hello server (the HTTP peer; started by `http` and `https`).
    #[command(hide = true)]
    ServeHyper {
        /// Address to listen on.
        #[arg(long)]
        addr: SocketAddr,
        /// Workers: 1 is a current_thread runtime, N > 1 a multi_thread runtime.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Certificate chain (PEM): serve HTTPS.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Echo throughput, latency and CPU per message: dap vs tokio vs mio.
    Echo(echo::EchoArgs),
    /// Resident memory per idle connection of the dap echo example, and per idle stream
    /// session (4 channels) of the stream_server example; then dapd's memory and a
    /// legitimate client's latency under five attacks.
    Memory(memory::MemoryArgs),
    /// Load only: one scenario against a running echo server (for profiling).
    #[command(hide = true)]
    Load {
        /// Server address.
        #[arg(long)]
        addr: SocketAddr,
        /// Server process id (for its CPU time).
        #[arg(long)]
        pid: u32,
        /// d1, d16 or big.
        #[arg(long, default_value = "d1")]
        scenario: String,
        /// Measured seconds.
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
    /// dap-proc job throughput vs a crossbeam-channel pool, and flip latency.
    Proc(proc::ProcArgs),
    /// HTTP requests per second with wrk: dap-net's hello vs hyper (1 worker, 2 workers,
    /// 16-deep pipelining).
    Http(http::HttpArgs),
    /// HTTPS keep-alive requests per second with wrk: dap-net's hello vs hyper + tokio-rustls.
    Https(http::HttpArgs),
    /// Encrypted bulk transfer on one channel: dap's stream vs rustls TLS 1.3 over TCP
    /// (ChaCha20-Poly1305 and AES-256-GCM).
    Stream(bulk::StreamArgs),
    /// The UDP engine's own ceiling: two engines in memory on one thread, one channel,
    /// encrypted bulk (both ciphers, 1,452- and 8,952-byte datagrams)
    UdpSim(udp_sim::UdpSimArgs),
    /// Encrypted bulk over loopback UDP: dap's UDP transport vs quinn 0.11 (and dap's HTTP
    /// stream in the same run), both ciphers, 1,452-byte datagrams; then full set-ups per
    /// second over UDP (enc_init + stream_ctl + first datagram's echo) vs quinn's handshakes
    Udp(udp::UdpArgs),
    /// Bulk throughput through a lossy relay (0, 1, 5, 10 % of datagrams dropped each way):
    /// dap's UDP transport vs quinn 0.11, AES-256-GCM, 1,452-byte datagrams
    UdpLoss(udp_loss::UdpLossArgs),
    /// Session set-ups per second (enc_init + stream_ctl + stream connect) vs full rustls
    /// TLS 1.3 handshakes per second, fresh connections.
    Setup(setup::SetupArgs),
    /// dapd's `[cluster]`: three nodes on one Redis; pub/sub with publisher and subscriber
    /// on one node vs on two, and set-ups with every step on one node vs each on another
    Cluster(cluster::ClusterArgs),
    /// Runs every comparison in turn (echo, memory, proc, http, https, stream, setup).
    All(AllArgs),
}

/// Options of `all`: one `--rounds` for every comparison; the others as in each subcommand
/// (http and https take theirs as `--http-secs` and `--http-warmup`).
#[derive(Debug, clap::Args)]
struct AllArgs {
    /// echo: measured window per scenario, in seconds.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Rounds of every comparison; ratios are medians over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// echo: warm-up before each measured window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// echo: repeat a run disturbed by other processes up to this many times.
    #[arg(long, default_value_t = 0)]
    retry_noisy: usize,
    /// memory: idle connections to open.
    #[arg(long, default_value_t = 9000)]
    conns: usize,
    /// memory: idle stream sessions to open.
    #[arg(long, default_value_t = 4000)]
    sessions: usize,
    /// memory: attacks on dapd (`all`, `none`, or a comma-separated list).
    #[arg(long, default_value = "all", value_parser = attacks::parse_list)]
    attacks: attacks::AttackList,
    /// proc: jobs per producer per round.
    #[arg(long, default_value_t = 500_000)]
    jobs: usize,
    /// proc: flips timed for the latency figure.
    #[arg(long, default_value_t = 20_000)]
    flips: usize,
    /// http, https: measured wrk window per run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    http_secs: f64,
    /// http, https: warm-up wrk run before each measured one, in seconds.
    #[arg(long, default_value_t = 1.0)]
    http_warmup: f64,
    /// stream, setup: measured window per run, in seconds (their warm-up is `--warmup`).
    #[arg(long, default_value_t = 5.0)]
    stream_secs: f64,
}

/// Where a dap example (echo or hello) comes from.
#[derive(Debug, Clone)]
pub(crate) enum DapSource {
    /// Build `<repo>/target/release/examples/NAME` with cargo.
    Build,
    /// Use this binary (hidden `--dap-bin`, `--dap-hello-bin`).
    Given(PathBuf),
    /// Already resolved by the caller (`all` builds once for every comparison).
    Resolved(Option<PathBuf>),
}

impl DapSource {
    fn from_arg(dap_bin: Option<PathBuf>) -> Self {
        dap_bin.map_or(DapSource::Build, DapSource::Given)
    }
}

/// The dap echo example, or `None` (with the reason printed) when it is not available, so
/// that the other contenders still run.
pub(crate) fn resolve_dap(src: DapSource) -> Option<PathBuf> {
    resolve_example(src, servers::ECHO)
}

/// The dap example `ex`, or `None` (with the reason printed) when it is not available, so
/// that the other contenders still run.
pub(crate) fn resolve_example(src: DapSource, ex: servers::Example) -> Option<PathBuf> {
    match src {
        DapSource::Resolved(p) => p,
        DapSource::Given(p) if p.is_file() => Some(p),
        DapSource::Given(p) => {
            println!("dap: SKIPPED: the given {} binary {} is not a file", ex.name, p.display());
            None
        }
        DapSource::Build => match servers::build_example(ex) {
            Ok(p) => Some(p),
            Err(e) => {
                println!(
                    "dap: SKIPPED: cannot build the dap {} {}: {e}",
                    ex.name,
                    ex.target.noun()
                );
                None
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Record the starting affinity mask before anything pins this thread.
    let _ = procstat::can_pin_two_cpus();
    let res = match cli.cmd {
        Cmd::ServeTokio { addr } => serve_tokio::run(addr),
        Cmd::ServeMio { addr, threads } => serve_mio::run(addr, threads),
        Cmd::ServeRawHttp { addr, threads } => serve_raw_http::run(addr, threads),
        Cmd::ServeHyper { addr, threads, cert, key } => {
            serve_hyper::run(addr, threads, cert.zip(key))
        }
        Cmd::Echo(a) => echo::run(&a, DapSource::from_arg(cli.dap_bin)).map(drop),
        Cmd::Memory(a) => memory::run(
            &a,
            DapSource::from_arg(cli.dap_bin),
            DapSource::from_arg(cli.dap_stream_bin),
            DapSource::from_arg(cli.dapd_bin),
        )
        .map(drop),
        Cmd::Load { addr, pid, scenario, secs } => run_load(addr, pid, &scenario, secs),
        Cmd::Proc(a) => proc::run(&a)
            .map(|pairs| report::print_result_line(&pairs))
            .map_err(std::io::Error::other),
        Cmd::Http(a) => http::run_http(&a, DapSource::from_arg(cli.dap_hello_bin)).map(drop),
        Cmd::Https(a) => http::run_https(&a, DapSource::from_arg(cli.dap_hello_bin)).map(drop),
        Cmd::Stream(a) => bulk::run(&a).map(drop),
        Cmd::Udp(a) => udp::run(&a).map(drop),
        Cmd::UdpLoss(a) => udp_loss::run(&a).map(drop),
        Cmd::UdpSim(a) => {
            udp_sim::run_all(&a);
            Ok(())
        }
        Cmd::Setup(a) => setup::run(&a).map(drop),
        Cmd::Cluster(a) => cluster::run(&a, DapSource::from_arg(cli.dapd_bin)).map(drop),
        Cmd::All(a) => {
            let bins = AllBins {
                dap: cli.dap_bin,
                hello: cli.dap_hello_bin,
                stream_server: cli.dap_stream_bin,
                dapd: cli.dapd_bin,
            };
            run_all(&a, bins)
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dap-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The binaries given on the command line (hidden options), for `all`.
#[derive(Debug)]
struct AllBins {
    dap: Option<PathBuf>,
    hello: Option<PathBuf>,
    stream_server: Option<PathBuf>,
    dapd: Option<PathBuf>,
}

/// `all`: each comparison prints its own table and `RESULT`; the last line merges them all
/// (http's, https's, stream's and setup's keys prefixed `http_`, `https_`, `stream_` and
/// `setup_`).
fn run_all(a: &AllArgs, bins: AllBins) -> std::io::Result<()> {
    let e = &echo::EchoArgs {
        secs: a.secs,
        slice: 0.5,
        rounds: a.rounds,
        warmup: a.warmup,
        retry_noisy: a.retry_noisy,
    };
    let m = &memory::MemoryArgs {
        conns: a.conns,
        server: servers::Kind::Dap,
        sessions: a.sessions,
        attacks: a.attacks.clone(),
    };
    let st = &bulk::StreamArgs {
        secs: a.stream_secs,
        rounds: a.rounds,
        warmup: a.warmup,
        msg: 64 * 1024,
        rekey_packets: None,
        only: None,
    };
    let su = &setup::SetupArgs {
        secs: a.stream_secs,
        rounds: a.rounds,
        warmup: a.warmup,
        conns: 32,
        cert: tls::CertKind::Ed25519,
        channels: "E".to_string(),
        only: None,
    };
    let p = &proc::ProcArgs { jobs: a.jobs, rounds: a.rounds, flips: a.flips };
    let h = &http::HttpArgs { secs: a.http_secs, rounds: a.rounds, warmup: a.http_warmup };
    // Build (or check) each example once; the comparisons then use the same binaries.
    let dap = resolve_dap(DapSource::from_arg(bins.dap));
    let hello = resolve_example(DapSource::from_arg(bins.hello), servers::HELLO);
    let stream_server =
        resolve_example(DapSource::from_arg(bins.stream_server), servers::STREAM_SERVER);
    let dapd = DapSource::from_arg(bins.dapd);
    let mut pairs = echo::run(e, DapSource::Resolved(dap.clone()))?;
    println!();
    match memory::run(m, DapSource::Resolved(dap), DapSource::Resolved(stream_server), dapd) {
        Ok(p) => pairs.extend(p),
        Err(err) => {
            println!("memory: FAILED: {err}");
            pairs.push(("idle_conn_kib".to_string(), "nan".to_string()));
            pairs.push(("idle_session_kib".to_string(), "nan".to_string()));
        }
    }
    println!();
    match proc::run(p) {
        Ok(p) => pairs.extend(p),
        Err(err) => println!("proc: FAILED: {err}"),
    }
    println!();
    match http::run_http(h, DapSource::Resolved(hello.clone())) {
        Ok(p) => pairs.extend(p.into_iter().map(|(k, v)| (format!("http_{k}"), v))),
        Err(err) => {
            println!("http: FAILED: {err}");
            pairs.push(("http_ratio".to_string(), "NA".to_string()));
        }
    }
    println!();
    match http::run_https(h, DapSource::Resolved(hello)) {
        Ok(p) => pairs.extend(p.into_iter().map(|(k, v)| (format!("https_{k}"), v))),
        Err(err) => {
            println!("https: FAILED: {err}");
            pairs.push(("https_ratio".to_string(), "NA".to_string()));
        }
    }
    println!();
    match bulk::run(st) {
        Ok(p) => pairs.extend(p.into_iter().map(|(k, v)| (format!("stream_{k}"), v))),
        Err(err) => {
            println!("stream: FAILED: {err}");
            pairs.push(("stream_ratio_chacha".to_string(), "nan".to_string()));
            pairs.push(("stream_ratio_aes".to_string(), "nan".to_string()));
        }
    }
    println!();
    match setup::run(su) {
        Ok(p) => pairs.extend(p.into_iter().map(|(k, v)| (format!("setup_{k}"), v))),
        Err(err) => {
            println!("setup: FAILED: {err}");
            pairs.push(("setup_ratio".to_string(), "nan".to_string()));
        }
    }
    report::print_result_line(&pairs);
    Ok(())
}

/// `load`: one scenario, printed raw.
fn run_load(addr: SocketAddr, pid: u32, scenario: &str, secs: u64) -> std::io::Result<()> {
    let sc = loadgen::SCENARIOS
        .iter()
        .find(|s| s.name == scenario)
        .ok_or_else(|| std::io::Error::other(format!("unknown scenario {scenario}")))?;
    let window = std::time::Duration::from_secs(secs);
    let m = loadgen::run(addr, pid, sc, std::time::Duration::from_secs(1), window)?;
    println!(
        "{}: {:.0} msgs/s, server {:.0} ns/msg ({:.1}% cpu), client {:.0} ns/msg",
        sc.name,
        m.msgs_per_sec(),
        m.server_ns_per_msg(),
        m.server_cpu_pct(),
        m.client_ns_per_msg()
    );
    Ok(())
}
