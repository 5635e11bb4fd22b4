//! `dap-bench memory`: resident memory per idle connection of the dap echo example.
//!
//! The server runs with one worker pinned to CPU 0. Its `VmRSS` is read once it is idle, then
//! N connections are opened, each does one 1-byte echo round trip (so every connection has been
//! accepted and has been through the read and write paths), and they sit idle until `VmRSS`
//! settles. The result is (RSS after - RSS before) / N.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::report::{self, fmt_ratio};
use crate::servers::{self, Kind};
use crate::{DapSource, procstat, resolve_dap};

/// Options of the `memory` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Idle connections to open (the fd cap here is 20,000 per process).
    #[arg(long, default_value_t = 9000)]
    pub conns: usize,
    /// Server to measure (testing aid: mio and tokio prove the harness without dap).
    #[arg(long, value_enum, default_value = "dap", hide = true)]
    pub server: Kind,
}

/// Longest time to open all connections and do their round trips.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Polling interval and bounds for "RSS has stabilised".
const RSS_POLL: Duration = Duration::from_millis(250);
const RSS_STABLE_READINGS: usize = 4;
const RSS_SETTLE_MAX: Duration = Duration::from_secs(15);

/// Runs the memory measurement; prints its lines and `RESULT`, and returns its pairs.
pub fn run(args: &MemoryArgs, dap: DapSource) -> io::Result<Vec<(String, String)>> {
    let n = args.conns.max(1);
    let nofile = procstat::raise_nofile_limit()?;
    if (n as u64) + 64 > nofile {
        return Err(io::Error::other(format!(
            "{n} connections need more than the fd limit {nofile}"
        )));
    }
    let dap = if args.server == Kind::Dap { resolve_dap(dap) } else { None };
    if args.server == Kind::Dap && dap.is_none() {
        println!("memory: SKIPPED: the dap echo example is not available");
        let pairs = vec![("idle_conn_kib".to_string(), "nan".to_string())];
        report::print_result_line(&pairs);
        return Ok(pairs);
    }
    if procstat::can_pin_two_cpus() {
        procstat::pin_current_thread(servers::CLIENT_CPU)?;
    }
    let server = servers::start(args.server, dap.as_deref())?;
    println!(
        "== memory: {} server pid {} on CPUs {} at {}; {n} idle connections",
        server.name,
        server.pid,
        procstat::cpus_allowed_list(server.pid),
        server.addr
    );
    let (before, stable_before) = settled_rss(server.pid)?;

    let deadline = Instant::now() + OPEN_TIMEOUT;
    let mut conns = Vec::with_capacity(n);
    let t_open = Instant::now();
    for i in 0..n {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("only {i} of {n} connections done after {OPEN_TIMEOUT:?}"),
            ));
        }
        let mut s = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5))
            .map_err(|e| io::Error::new(e.kind(), format!("connection {i}: {e}")))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .map_err(|e| io::Error::new(e.kind(), format!("echo on connection {i}: {e}")))?;
        if b[0] != b'x' {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "wrong byte echoed"));
        }
        conns.push(s);
    }
    let open_time = t_open.elapsed();
    let (after, stable_after) = settled_rss(server.pid)?;
    let per_conn = (after as f64 - before as f64) / n as f64;
    drop(conns);
    drop(server);

    let note = if stable_before && stable_after { "" } else { " (RSS had not fully settled)" };
    println!(
        "memory: server={} conns={n} rss_before={before} KiB rss_after={after} KiB delta={} KiB per_conn={per_conn:.2} KiB (opened + echoed in {:.2} s){note}",
        args.server.name(),
        after as i64 - before as i64,
        open_time.as_secs_f64()
    );
    let value = if per_conn.is_finite() { format!("{per_conn:.2}") } else { fmt_ratio(per_conn) };
    let pairs = vec![("idle_conn_kib".to_string(), value)];
    report::print_result_line(&pairs);
    Ok(pairs)
}

/// Waits (bounded) until `VmRSS` reads the same [`RSS_STABLE_READINGS`] times in a row;
/// returns the last reading and whether it settled.
fn settled_rss(pid: u32) -> io::Result<(u64, bool)> {
    let deadline = Instant::now() + RSS_SETTLE_MAX;
    let mut last = procstat::vm_rss_kib(pid)?;
    let mut same = 1;
    while same < RSS_STABLE_READINGS {
        if Instant::now() >= deadline {
            return Ok((last, false));
        }
        std::thread::sleep(RSS_POLL);
        let now = procstat::vm_rss_kib(pid)?;
        if now == last {
            same += 1;
        } else {
            same = 1;
            last = now;
        }
    }
    Ok((last, true))
}
