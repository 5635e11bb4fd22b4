//! `dap-bench memory`: resident memory per idle connection of the dap echo example, and per
//! idle stream session of the stream_server example.
//!
//! Connections: the echo server runs with one worker pinned to CPU 0. Its `VmRSS` is read once
//! it is idle, then N connections are opened, each does one 1-byte echo round trip (so every
//! connection has been accepted and has been through the read and write paths), and they sit
//! idle until `VmRSS` settles. The result is (RSS after - RSS before) / N.
//!
//! Sessions: `dap-stream`'s `stream_server` example (one worker and its proc thread, pinned to
//! CPU 0, a node key the harness generates). 64 warm-up sessions are opened, used and closed
//! (the worker's buffer pool and the tables reach their working size), then `VmRSS` is read
//! once idle; then M sessions are opened, each on its own connection with the full set-up
//! (`POST /enc_init`, `POST /stream_ctl` for channels `EABC`, `GET /stream/EABC` → `101`) and
//! one 64-byte echo round trip on each of its 4 channels, and held open, idle. The result is
//! (RSS after - RSS before) / M: the stream session, its 4 channels, its upgraded HTTP
//! connection and its enc key, everything the server keeps per idle session.
//!
//! Attacks: then the daemon, dapd, against a hostile internet, one fresh process per attack
//! (see [`crate::attacks`]): its RSS at idle, at the attack's peak and 10 s after, and a
//! legitimate client's echo latency meanwhile, against bars.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::enc::NodeKey;

use crate::attacks::{self, AttackList};
use crate::dapclient::{self, StreamClient};
use crate::report::{self, fmt_ratio};
use crate::servers::{self, Kind, Placement};
use crate::{DapSource, procstat, resolve_dap, resolve_example};

/// Options of the `memory` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Idle connections to open (the fd cap here is 20,000 per process; 0: skip that part).
    #[arg(long, default_value_t = 9000)]
    pub conns: usize,
    /// Server to measure (testing aid: mio and tokio prove the harness without dap).
    #[arg(long, value_enum, default_value = "dap", hide = true)]
    pub server: Kind,
    /// Idle stream sessions to open (each one connection; 0: skip the session part).
    #[arg(long, default_value_t = 4000)]
    pub sessions: usize,
    /// Attacks on dapd to run, in their fixed order: `all`, `none`, or a comma-separated
    /// list of reassembly, half_header, pipeline, handshake_flood, accept_emfile.
    #[arg(long, default_value = "all", value_parser = attacks::parse_list)]
    pub attacks: AttackList,
}

/// Longest time to open all connections and do their round trips.
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Polling interval and bounds for "RSS has stabilised".
const RSS_POLL: Duration = Duration::from_millis(250);
const RSS_STABLE_READINGS: usize = 4;
const RSS_SETTLE_MAX: Duration = Duration::from_secs(15);

/// Longest time to open all sessions and do their round trips: the server closes a session
/// after 60 s without input, so the whole measurement must end well before.
const SESSIONS_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Warm-up sessions, opened, used and closed before the baseline.
const WARMUP_SESSIONS: usize = 64;
/// The channels of every idle session.
const SESSION_CHANNELS: &[u8] = b"EABC";

/// Runs the memory measurements asked for (idle connections, idle sessions, attacks);
/// prints their lines and one `RESULT`, and returns its pairs.
pub fn run(
    args: &MemoryArgs,
    dap: DapSource,
    stream_server: DapSource,
    dapd: DapSource,
) -> io::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    if args.conns > 0 {
        match idle_connections(args, dap) {
            Ok(p) => pairs.extend(p),
            Err(e) => {
                println!("memory: connections FAILED: {e}");
                pairs.push(("idle_conn_kib".to_string(), "nan".to_string()));
            }
        }
    }
    if args.sessions > 0 {
        let v = match idle_sessions(args.sessions, stream_server) {
            Ok(v) => v,
            Err(e) => {
                println!("memory: sessions FAILED: {e}");
                "nan".to_string()
            }
        };
        pairs.push(("idle_session_kib".to_string(), v));
    }
    if !args.attacks.is_empty() {
        pairs.extend(attacks::run(&args.attacks, dapd));
    }
    report::print_result_line(&pairs);
    Ok(pairs)
}

/// Idle connections to the echo example.
fn idle_connections(args: &MemoryArgs, dap: DapSource) -> io::Result<Vec<(String, String)>> {
    let n = args.conns;
    let nofile = procstat::raise_nofile_limit()?;
    if (n as u64) + 64 > nofile {
        return Err(io::Error::other(format!(
            "{n} connections need more than the fd limit {nofile}"
        )));
    }
    let dap = if args.server == Kind::Dap { resolve_dap(dap) } else { None };
    if args.server == Kind::Dap && dap.is_none() {
        println!("memory: SKIPPED: the dap echo example is not available");
        return Ok(vec![("idle_conn_kib".to_string(), "nan".to_string())]);
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
    Ok(vec![("idle_conn_kib".to_string(), value)])
}

/// Idle stream sessions on the stream_server example; returns KiB per session.
fn idle_sessions(n: usize, src: DapSource) -> io::Result<String> {
    let nofile = procstat::raise_nofile_limit()?;
    if (n as u64) + 64 > nofile {
        return Err(io::Error::other(format!("{n} sessions need more than the fd limit {nofile}")));
    }
    let Some(bin) = resolve_example(src, servers::STREAM_SERVER) else {
        println!("memory: sessions SKIPPED: the stream_server example is not available");
        return Ok("nan".to_string());
    };
    if procstat::can_pin_two_cpus() {
        procstat::pin_current_thread(servers::CLIENT_CPU)?;
    }
    // A node key of our own, so that the client can pin it.
    let node = NodeKey::generate();
    let key_path = servers::log_dir().join("stream-node.key");
    let _ = std::fs::remove_file(&key_path);
    node.save(&key_path).map_err(|e| io::Error::other(format!("{}: {e}", key_path.display())))?;
    let addr = servers::loopback_addr()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["--addr", &addr.to_string(), "--threads", "1", "--node-key"]).arg(&key_path);
    let server = servers::start_command("stream_server", cmd, addr, Placement::Pinned)?;
    println!(
        "== memory: stream_server pid {} on CPUs {} at {}; {n} idle sessions, channels {}, one echo round trip per channel",
        server.pid,
        procstat::cpus_allowed_list(server.pid),
        server.addr,
        String::from_utf8_lossy(SESSION_CHANNELS),
    );
    let node_key = node.public_key();
    let msg = Bytes::from(vec![b'x'; 64]);
    let open_one = |i: usize| -> io::Result<StreamClient> {
        let (conn, params) = dapclient::open_session(server.addr, node_key, SESSION_CHANNELS, None)
            .map_err(|e| io::Error::other(format!("session {i}: {e}")))?;
        let mut c = StreamClient::new(conn, &params);
        c.echo_each(SESSION_CHANNELS, &msg)
            .map_err(|e| io::Error::other(format!("session {i}: {e}")))?;
        Ok(c)
    };
    let warm: Vec<StreamClient> = (0..WARMUP_SESSIONS).map(open_one).collect::<io::Result<_>>()?;
    drop(warm);
    let (before, stable_before) = settled_rss(server.pid)?;

    let deadline = Instant::now() + SESSIONS_OPEN_TIMEOUT;
    let mut sessions = Vec::with_capacity(n);
    let t_open = Instant::now();
    for i in 0..n {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("only {i} of {n} sessions done after {SESSIONS_OPEN_TIMEOUT:?}"),
            ));
        }
        sessions.push(open_one(i)?);
    }
    let open_time = t_open.elapsed();
    let (after, stable_after) = settled_rss(server.pid)?;
    let per_session = (after as f64 - before as f64) / n as f64;
    drop(sessions);
    drop(server);
    let note = if stable_before && stable_after { "" } else { " (RSS had not fully settled)" };
    println!(
        "memory: server=stream_server sessions={n} channels={} rss_before={before} KiB rss_after={after} KiB delta={} KiB per_session={per_session:.2} KiB (opened + echoed in {:.2} s){note}",
        String::from_utf8_lossy(SESSION_CHANNELS),
        after as i64 - before as i64,
        open_time.as_secs_f64()
    );
    Ok(if per_session.is_finite() { format!("{per_session:.2}") } else { fmt_ratio(per_session) })
}

/// Waits (bounded) until `VmRSS` reads the same [`RSS_STABLE_READINGS`] times in a row;
/// returns the last reading and whether it settled.
pub(crate) fn settled_rss(pid: u32) -> io::Result<(u64, bool)> {
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
