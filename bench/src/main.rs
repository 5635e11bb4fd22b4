//! `dap-bench`: compares dap with its peers in the same run (see docs/BENCHMARKS.md).
//!
//! Every comparison subcommand prints a readable table and, as its last line, `RESULT`
//! followed by `key=value` pairs. Every run is bounded in time.

mod echo;
mod loadgen;
mod memory;
mod proc;
mod procstat;
mod report;
mod serve_mio;
mod serve_tokio;
mod servers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "dap-bench", about = "Benchmarks dap against tokio and a raw mio loop")]
struct Cli {
    /// Use this dap echo binary instead of building `<repo>/target/release/examples/echo`.
    #[arg(long, global = true, hide = true)]
    dap_bin: Option<PathBuf>,
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
    /// Echo throughput, latency and CPU per message: dap vs tokio vs mio.
    Echo(echo::EchoArgs),
    /// Resident memory per idle connection of the dap echo example.
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
    /// Runs every comparison in turn (echo, memory, proc).
    All {
        #[command(flatten)]
        echo: echo::EchoArgs,
        #[command(flatten)]
        memory: memory::MemoryArgs,
        #[command(flatten)]
        proc: proc::ProcArgs,
    },
}

/// Where the dap echo example comes from.
#[derive(Debug, Clone)]
pub(crate) enum DapSource {
    /// Build `<repo>/target/release/examples/echo` with cargo.
    Build,
    /// Use this binary (hidden `--dap-bin`).
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
    match src {
        DapSource::Resolved(p) => p,
        DapSource::Given(p) if p.is_file() => Some(p),
        DapSource::Given(p) => {
            println!("dap: SKIPPED: --dap-bin {} is not a file", p.display());
            None
        }
        DapSource::Build => match servers::build_dap_example() {
            Ok(p) => Some(p),
            Err(e) => {
                println!("dap: SKIPPED: cannot build the dap echo example: {e}");
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
        Cmd::Echo(a) => echo::run(&a, DapSource::from_arg(cli.dap_bin)).map(drop),
        Cmd::Memory(a) => memory::run(&a, DapSource::from_arg(cli.dap_bin)).map(drop),
        Cmd::Load { addr, pid, scenario, secs } => run_load(addr, pid, &scenario, secs),
        Cmd::Proc(a) => proc::run(&a)
            .map(|pairs| report::print_result_line(&pairs))
            .map_err(std::io::Error::other),
        Cmd::All { echo, memory, proc } => run_all(&echo, &memory, &proc, cli.dap_bin),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dap-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `all`: each comparison prints its own table and `RESULT`; the last line merges them all.
fn run_all(
    e: &echo::EchoArgs,
    m: &memory::MemoryArgs,
    p: &proc::ProcArgs,
    dap_bin: Option<PathBuf>,
) -> std::io::Result<()> {
    // Build (or check) dap once; both comparisons then use the same binary.
    let dap = resolve_dap(DapSource::from_arg(dap_bin));
    let mut pairs = echo::run(e, DapSource::Resolved(dap.clone()))?;
    println!();
    match memory::run(m, DapSource::Resolved(dap)) {
        Ok(p) => pairs.extend(p),
        Err(err) => {
            println!("memory: FAILED: {err}");
            pairs.push(("idle_conn_kib".to_string(), "nan".to_string()));
        }
    }
    println!();
    match proc::run(p) {
        Ok(p) => pairs.extend(p),
        Err(err) => println!("proc: FAILED: {err}"),
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
