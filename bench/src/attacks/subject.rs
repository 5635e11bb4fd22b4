//! The subject of the attacks: a dapd process with a configuration file the harness writes,
//! its RSS sampled while it is attacked, and its `/metrics` read from a client of its own.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use dap_net::enc::NodeKey;

use crate::dapclient::HttpConn;
use crate::procstat;
use crate::servers::{self, ServerProc};

/// `[stream] max_reassembly` of every dapd run: the budget of the reassembly attack.
pub const MAX_REASSEMBLY: u64 = 64 << 20;
/// `[reactor.limits] buffer_budget`, when this dapd knows the key.
pub const BUFFER_BUDGET: u64 = 64 << 20;
/// `[http] request_rate` and `request_burst` per source block, when this dapd knows them:
/// nginx's canonical `limit_req` (`rate=10r/s burst=20`), what an operator of a public node
/// sets (dapd's default is no limit). A stream is one request however long it lasts.
pub const HTTP_REQUEST_RATE: u64 = 10;
/// See [`HTTP_REQUEST_RATE`].
pub const HTTP_REQUEST_BURST: u64 = 20;
/// `[listen] max_connections` (dapd's default, written out so the report matches it).
pub const MAX_CONNECTIONS: u64 = 16_384;
/// `[listen] max_connections_per_source` (dapd's default).
pub const MAX_CONNECTIONS_PER_SOURCE: u64 = 1024;
/// `[enc] max_keys` (dapd's default).
pub const MAX_KEYS: u64 = 10_000;
/// `[enc] handshake_rate` and `handshake_burst` (dapd's defaults).
pub const HANDSHAKE_RATE: u64 = 100;
/// See [`HANDSHAKE_RATE`].
pub const HANDSHAKE_BURST: u64 = 1000;
/// Reactor workers.
const THREADS: usize = 2;
/// Interval of the RSS sampler.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The source the harness reads `/metrics` from (neither the legitimate client nor an
/// attacker).
const METRICS_SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// How one dapd process is set up.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Write `[reactor.limits] buffer_budget` with this value (only a dapd that knows the
    /// key accepts it).
    pub buffer_budget: Option<u64>,
    /// Write `[http] request_rate` and `request_burst` (only a dapd that knows the keys
    /// accepts them).
    pub http_rate: bool,
    /// Start dapd with this `RLIMIT_NOFILE`, soft and hard (dapd raises its soft limit to
    /// the hard one itself, so both must be set).
    pub nofile: Option<u64>,
}

/// Whether `bin` knows `[reactor.limits] buffer_budget`: its `--print-default-config`
/// mentions it. A dapd that does not rejects the key as unknown.
pub fn supports_buffer_budget(bin: &Path) -> bool {
    supports_key(bin, "buffer_budget")
}

/// Whether `bin` knows `[http] request_rate` (as [`supports_buffer_budget`]).
pub fn supports_request_rate(bin: &Path) -> bool {
    supports_key(bin, "request_rate")
}

/// Whether `bin`'s `--print-default-config` mentions `key`.
fn supports_key(bin: &Path, key: &str) -> bool {
    Command::new(bin)
        .arg("--print-default-config")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(key))
}

/// A scratch directory for configuration files and node keys, removed when dropped.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// `$TMPDIR/dap-bench-attacks-PID`, empty.
    pub fn new() -> io::Result<ScratchDir> {
        ScratchDir::named("attacks")
    }

    /// `$TMPDIR/dap-bench-LABEL-PID`, empty.
    pub fn named(label: &str) -> io::Result<ScratchDir> {
        let d = std::env::temp_dir().join(format!("dap-bench-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d)?;
        Ok(ScratchDir(d))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A running dapd; killed and reaped when dropped.
#[derive(Debug)]
pub struct Dapd {
    server: ServerProc,
    /// The node's public key, for clients to pin.
    pub node_key: [u8; 32],
}

impl Dapd {
    /// Writes a node key and a configuration into `dir` (files named after `name`) and
    /// starts `bin --config FILE` on a fresh loopback port, its output in
    /// `bench/target/bench-logs/server-NAME.log`; returns once it accepts connections.
    pub fn start(bin: &Path, name: &'static str, dir: &Path, s: Settings) -> io::Result<Dapd> {
        let node = NodeKey::generate();
        let key_path = dir.join(format!("{name}.key"));
        let _ = fs::remove_file(&key_path);
        node.save(&key_path)
            .map_err(|e| io::Error::other(format!("{}: {e}", key_path.display())))?;
        let addr = servers::loopback_addr()?;
        let config_path = dir.join(format!("{name}.toml"));
        fs::write(&config_path, config_text(addr, &key_path, s.buffer_budget, s.http_rate))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(&config_path).env_remove("RUST_LOG");
        if let Some(n) = s.nofile {
            set_nofile_at_exec(&mut cmd, n);
        }
        let server = servers::start_command_unpinned(name, cmd, addr)?;
        Ok(Dapd { server, node_key: node.public_key() })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.server.pid
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.server.exited()
    }

    /// Lines dapd logged at WARN so far (its log is text, one event a line).
    pub fn warn_lines(&self) -> usize {
        fs::read_to_string(&self.server.log)
            .map(|t| t.lines().filter(|l| l.contains(" WARN ")).count())
            .unwrap_or(0)
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.server.log
    }
}

/// The configuration file: everything at dapd's defaults but the listener, two workers,
/// the node key, the budgets under test written out, and UDP off.
fn config_text(
    addr: SocketAddr,
    key: &Path,
    buffer_budget: Option<u64>,
    http_rate: bool,
) -> String {
    let mut limits = match buffer_budget {
        Some(b) => format!("\n[reactor.limits]\nbuffer_budget = {b}\n"),
        None => String::new(),
    };
    if http_rate {
        limits.push_str(&format!(
            "\n[http]\nrequest_rate = {HTTP_REQUEST_RATE}\nrequest_burst = {HTTP_REQUEST_BURST}\n"
        ));
    }
    // `{:?}` of an ASCII path is a valid TOML basic string.
    let key = format!("{:?}", key.display().to_string());
    format!(
        "# dap-bench memory: dapd under attack. Defaults but for these keys.\n\
         [listen]\n\
         addr = \"{addr}\"\n\
         max_connections = {MAX_CONNECTIONS}\n\
         max_connections_per_source = {MAX_CONNECTIONS_PER_SOURCE}\n\
         \n\
         [reactor]\n\
         threads = {THREADS}\n\
         {limits}\n\
         [enc]\n\
         node_key = {key}\n\
         max_keys = {MAX_KEYS}\n\
         handshake_rate = {HANDSHAKE_RATE}\n\
         handshake_burst = {HANDSHAKE_BURST}\n\
         \n\
         [stream]\n\
         max_reassembly = {MAX_REASSEMBLY}\n\
         \n\
         [udp]\n\
         enabled = false\n"
    )
}

/// Makes `cmd`'s process start with `RLIMIT_NOFILE` = `n` (soft and hard), set between
/// fork and exec.
fn set_nofile_at_exec(cmd: &mut Command, n: u64) {
    use std::os::unix::process::CommandExt;
    let lim = libc::rlimit { rlim_cur: n as libc::rlim_t, rlim_max: n as libc::rlim_t };
    // SAFETY: the closure runs in the child between fork and exec; it only calls
    // `setrlimit`, which is async-signal-safe, on a value copied into the closure, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Reads a process's `VmRSS` every 100 ms on a thread of its own and keeps the largest.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::Relaxed) {
                if let Ok(kib) = procstat::vm_rss_kib(pid) {
                    peak = peak.max(kib);
                }
                thread::sleep(SAMPLE_EVERY);
            }
            peak
        });
        RssSampler { stop, thread }
    }

    /// Stops sampling; the largest reading, in KiB (0 when none could be read).
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

/// A process's soft `RLIMIT_NOFILE` ("Max open files" in `/proc/PID/limits`), if readable
/// and finite.
pub fn nofile_limit(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Open descriptors of a process (0 when unreadable).
pub fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// dapd's `/metrics` text, for the figures the attacks report beside RSS.
#[derive(Debug)]
pub struct Metrics(String);

impl Metrics {
    /// Reads `/metrics` from `addr` (one request on a fresh connection from 127.0.0.3).
    pub fn fetch(addr: SocketAddr) -> Result<Metrics, String> {
        let mut c =
            HttpConn::connect_from(METRICS_SOURCE, addr).map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let r = c.exchange(req.as_bytes()).map_err(|e| format!("/metrics: {e}"))?;
        if r.status != 200 {
            return Err(format!("/metrics: status {}", r.status));
        }
        Ok(Metrics(String::from_utf8_lossy(&r.body).into_owned()))
    }

    /// The sum of every sample of family `name` whose labels contain each of `labels`
    /// (`kind="accept_failed"`, ...); `None` when there is none.
    pub fn sum(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((sample, value)) = line.rsplit_once(' ') else { continue };
            let (family, rest) = sample.split_once('{').unwrap_or((sample, ""));
            if family != name || !labels.iter().all(|l| rest.contains(l)) {
                continue;
            }
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

/// A metric as a RESULT value: an integer, or `nan` when it could not be read.
pub fn fmt_metric(v: Option<f64>) -> String {
    v.map_or_else(|| "nan".to_string(), |v| format!("{v:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_by_labels() {
        let m = Metrics(
            "# HELP x\nx{worker=\"0\",kind=\"a\"} 2\nx{worker=\"1\",kind=\"a\"} 3\nx{worker=\"1\",kind=\"b\"} 7\ny 4\n"
                .to_string(),
        );
        assert_eq!(m.sum("x", &["kind=\"a\""]), Some(5.0));
        assert_eq!(m.sum("x", &[]), Some(12.0));
        assert_eq!(m.sum("y", &[]), Some(4.0));
        assert_eq!(m.sum("z", &[]), None);
    }

    #[test]
    fn config_names_the_budgets() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8079));
        let t = config_text(addr, Path::new("/tmp/k.key"), Some(5), true);
        assert!(t.contains("node_key = \"/tmp/k.key\""));
        assert!(t.contains("[reactor.limits]\nbuffer_budget = 5\n"));
        assert!(t.contains("max_reassembly = 67108864"));
        assert!(!config_text(addr, Path::new("/k"), None, false).contains("buffer_budget"));
    }
}
