//! `memory`'s attacks: dapd, the real daemon, against a hostile internet (issue 18).
//!
//! Each attack gets a fresh dapd (two workers, UDP off, the budgets under test written into
//! its configuration file; see [`subject`]) so that RSS figures do not mix, and goes
//! through the same steps:
//!
//! 1. warm-up: a few sessions opened, used and closed; then the legitimate client (one
//!    stream session from 127.0.0.2 through the real handshake, see [`legit`]) does 2,000
//!    paced echo round trips on channel `E`, and dapd's `VmRSS` is read once stable:
//!    *idle* RSS and *idle* latency;
//! 2. the attack runs from its own source addresses ([`kinds`]) while the legitimate
//!    client goes on with its round trips, each timed (a failure is counted and the client
//!    sets up a new session), and dapd's `VmRSS` is sampled every 100 ms: *peak* RSS and
//!    latency *under attack*;
//! 3. the attack closes every socket it opened; 10 s later `VmRSS` is read again: *after*.
//!
//! Three bars: `peak <= idle + budget + 64 MiB` (the budget in bytes of the configuration
//! key that bounds the attack; 0 where that bound is a count), `after <= idle + 32 MiB`,
//! and `p99 under attack <= 10 x p99 idle`.

mod kinds;
mod legit;
/// dapd as a subprocess, its scratch directory and its `/metrics` (also used by `cluster`).
pub(crate) mod subject;

use std::net::SocketAddr;
use std::path::Path;
use std::thread;
use std::time::Duration;

use bytes::Bytes;

use self::kinds::{Outcome, Target};
use self::legit::{Legit, percentile_us};
use self::subject::{Dapd, Metrics, RssSampler, ScratchDir, Settings};
use crate::report::{self, fmt_num};
use crate::servers::{self, CLIENT_CPU, SERVER_CPU};
use crate::{DapSource, dapclient, memory, procstat, resolve_example};

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// 20 sessions each send all but the last KiB of a 16 MiB message, and wait.
    Reassembly,
    /// 16,000 connections with half a request head each.
    HalfHeader,
    /// 400 connections pipelining `GET /metrics` without reading the answers.
    Pipeline,
    /// 20,000 `POST /enc_init` from one source.
    HandshakeFlood,
    /// 2,000 connections against a dapd limited to 1,024 files.
    AcceptEmfile,
}

impl Attack {
    /// Every attack, in the order they run.
    pub const ALL: [Attack; 5] = [
        Attack::Reassembly,
        Attack::HalfHeader,
        Attack::Pipeline,
        Attack::HandshakeFlood,
        Attack::AcceptEmfile,
    ];

    /// Its name in `--attacks`, tables and `RESULT` lines.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Reassembly => "reassembly",
            Attack::HalfHeader => "half_header",
            Attack::Pipeline => "pipeline",
            Attack::HandshakeFlood => "handshake_flood",
            Attack::AcceptEmfile => "accept_emfile",
        }
    }

    /// The name of its dapd's log (`bench/target/bench-logs/server-NAME.log`).
    fn log_name(self) -> &'static str {
        match self {
            Attack::Reassembly => "dapd-reassembly",
            Attack::HalfHeader => "dapd-half_header",
            Attack::Pipeline => "dapd-pipeline",
            Attack::HandshakeFlood => "dapd-handshake_flood",
            Attack::AcceptEmfile => "dapd-accept_emfile",
        }
    }

    fn run(self, t: Target) -> Result<Outcome, String> {
        match self {
            Attack::Reassembly => kinds::reassembly(t),
            Attack::HalfHeader => kinds::half_header(t),
            Attack::Pipeline => kinds::pipeline(t),
            Attack::HandshakeFlood => kinds::handshake_flood(t),
            Attack::AcceptEmfile => kinds::accept_emfile(t),
        }
    }

    /// The configuration value that bounds what the attack can make dapd hold.
    fn budget(self, buffer_budget: Option<u64>) -> Budget {
        let conns = Budget {
            key: "listen.max_connections",
            value: subject::MAX_CONNECTIONS,
            unit: Unit::Count,
        };
        match self {
            Attack::Reassembly => Budget {
                key: "stream.max_reassembly",
                value: subject::MAX_REASSEMBLY,
                unit: Unit::Bytes,
            },
            Attack::HalfHeader | Attack::Pipeline => match buffer_budget {
                Some(b) => {
                    Budget { key: "reactor.limits.buffer_budget", value: b, unit: Unit::Bytes }
                }
                None => conns,
            },
            Attack::HandshakeFlood => {
                Budget { key: "enc.max_keys", value: subject::MAX_KEYS, unit: Unit::Count }
            }
            Attack::AcceptEmfile => {
                Budget { key: "RLIMIT_NOFILE", value: kinds::EMFILE_NOFILE, unit: Unit::Count }
            }
        }
    }
}

/// The attacks to run (`--attacks`), in [`Attack::ALL`]'s order, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttackList(Vec<Attack>);

impl AttackList {
    /// Whether no attack is to run.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Parses `--attacks`: `all`, `none`, or names separated by commas (`-` may stand for `_`).
///
/// # Errors
/// An unknown name (the message lists the known ones).
pub fn parse_list(s: &str) -> Result<AttackList, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok(AttackList(Attack::ALL.to_vec()));
    }
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(AttackList(Vec::new()));
    }
    let mut wanted = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let norm = name.replace('-', "_").to_ascii_lowercase();
        let a = Attack::ALL.into_iter().find(|a| a.name() == norm).ok_or_else(|| {
            let known: Vec<&str> = Attack::ALL.iter().map(|a| a.name()).collect();
            format!("unknown attack {name:?} (known: all, none, {})", known.join(", "))
        })?;
        wanted.push(a);
    }
    Ok(AttackList(Attack::ALL.into_iter().filter(|a| wanted.contains(a)).collect()))
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Bytes: the bar allows this much above idle (and 64 MiB more).
    Bytes,
    /// Things (connections, keys, files): the bar allows 64 MiB above idle.
    Count,
}

/// The bound an attack meets.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// The configuration key (or the resource limit) that sets it.
    key: &'static str,
    /// Its value.
    value: u64,
    /// What it counts.
    unit: Unit,
}

impl Budget {
    /// Bytes the peak bar allows above idle for it.
    fn bytes(self) -> u64 {
        match self.unit {
            Unit::Bytes => self.value,
            Unit::Count => 0,
        }
    }

    fn describe(self) -> String {
        match self.unit {
            Unit::Bytes => format!("{} = {} B ({})", self.key, self.value, mib(self.value >> 10)),
            Unit::Count => format!("{} = {} (a count: 0 bytes)", self.key, self.value),
        }
    }
}

/// Round trips of the legitimate client on the idle node.
const IDLE_ROUND_TRIPS: usize = 2000;
/// Sessions opened, used and closed before anything is measured.
const WARMUP_SESSIONS: usize = 8;
/// When "after" is read, counted from the attack's end.
const AFTER: Duration = Duration::from_secs(10);
/// The peak bar's allowance above idle + budget.
const PEAK_SLACK: u64 = 64 << 20;
/// The after bar's allowance above idle.
const AFTER_SLACK: u64 = 32 << 20;
/// The latency bar: p99 under attack at most this many times p99 idle.
const P99_FACTOR: f64 = 10.0;

/// Runs the attacks of `list` against dapd (built, or given with `--dapd-bin`); prints a
/// human line and a `RESULT` line for each, then a table. Returns `attack_NAME=pass|fail`
/// pairs (`nan` for an attack that could not run) for `memory`'s `RESULT`.
pub fn run(list: &AttackList, dapd: DapSource) -> Vec<(String, String)> {
    let nan = |list: &AttackList| -> Vec<(String, String)> {
        list.0.iter().map(|a| (format!("attack_{}", a.name()), "nan".to_string())).collect()
    };
    let Some(bin) = resolve_example(dapd, servers::DAPD) else {
        println!("memory: attacks SKIPPED: dapd is not available");
        return nan(list);
    };
    let buffer_budget = subject::supports_buffer_budget(&bin).then_some(subject::BUFFER_BUDGET);
    let http_rate = subject::supports_request_rate(&bin);
    // The attacks, the legitimate client and dapd share both CPUs as on a real host (the
    // idle-connection part may have pinned this thread).
    if procstat::can_pin_two_cpus() {
        let _ = procstat::pin_current_thread_cpus(&[SERVER_CPU, CLIENT_CPU]);
    }
    let dir = match ScratchDir::new() {
        Ok(d) => d,
        Err(e) => {
            println!("memory: attacks FAILED: scratch directory: {e}");
            return nan(list);
        }
    };
    println!(
        "== memory attacks: {} against {} ({}), a fresh dapd each, 2 workers, UDP off; [reactor.limits] buffer_budget {}",
        list.0.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
        bin.display(),
        dir.path().display(),
        match buffer_budget {
            Some(b) => format!("= {b} (this dapd knows the key)"),
            None => "not set (this dapd does not know the key)".to_string(),
        }
    );
    let mut reports = Vec::new();
    let mut pairs = Vec::new();
    for &a in &list.0 {
        match run_one(a, &bin, dir.path(), buffer_budget, http_rate) {
            Ok(r) => {
                r.print();
                pairs.push((
                    format!("attack_{}", a.name()),
                    if r.passed() { "pass" } else { "fail" }.to_string(),
                ));
                reports.push(r);
            }
            Err(e) => {
                println!("memory attack {}: FAILED: {e}", a.name());
                report::print_result_line(&[
                    ("attack".to_string(), a.name().to_string()),
                    ("error".to_string(), "1".to_string()),
                ]);
                pairs.push((format!("attack_{}", a.name()), "nan".to_string()));
            }
        }
    }
    print_table(&reports);
    pairs
}

/// Everything measured for one attack.
#[derive(Debug)]
struct Report {
    attack: Attack,
    budget: Budget,
    idle_kib: u64,
    idle_settled: bool,
    peak_kib: u64,
    /// `None` when dapd was gone.
    after_kib: Option<u64>,
    p50_idle_us: f64,
    p99_idle_us: f64,
    p50_attack_us: f64,
    p99_attack_us: f64,
    rtts_attack: usize,
    errors: u64,
    first_error: Option<String>,
    warn_lines: usize,
    /// dapd's open descriptors at idle and when "after" was read: the same when every
    /// connection of the attack is gone, so that RSS still held is the allocator's.
    fds_idle: usize,
    fds_after: usize,
    /// How dapd ended, if it did before it was stopped.
    exited: Option<String>,
    outcome: Outcome,
}

impl Report {
    fn peak_ok(&self) -> bool {
        self.peak_kib <= self.idle_kib + ((self.budget.bytes() + PEAK_SLACK) >> 10)
    }

    fn after_ok(&self) -> bool {
        self.after_kib.is_some_and(|a| a <= self.idle_kib + (AFTER_SLACK >> 10))
    }

    fn p99_ok(&self) -> bool {
        self.p99_attack_us.is_finite() && self.p99_attack_us <= P99_FACTOR * self.p99_idle_us
    }

    fn passed(&self) -> bool {
        self.peak_ok() && self.after_ok() && self.p99_ok() && self.exited.is_none()
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let bar = |ok: bool| if ok { "pass" } else { "fail" }.to_string();
        let kv = |k: &str, v: String| (k.to_string(), v);
        let mut p = vec![
            kv("attack", self.attack.name().to_string()),
            kv("budget_key", self.budget.key.to_string()),
            kv("budget", self.budget.value.to_string()),
            kv(
                "budget_unit",
                match self.budget.unit {
                    Unit::Bytes => "bytes",
                    Unit::Count => "count",
                }
                .to_string(),
            ),
            kv("budget_bytes", self.budget.bytes().to_string()),
            kv("idle_kib", self.idle_kib.to_string()),
            kv("peak_kib", self.peak_kib.to_string()),
            kv("after_kib", self.after_kib.map_or_else(|| "nan".to_string(), |a| a.to_string())),
            kv("p50_idle_us", fmt_num(self.p50_idle_us, 1)),
            kv("p99_idle_us", fmt_num(self.p99_idle_us, 1)),
            kv("p50_attack_us", fmt_num(self.p50_attack_us, 1)),
            kv("p99_attack_us", fmt_num(self.p99_attack_us, 1)),
            kv("legit_rtts", self.rtts_attack.to_string()),
            kv("legit_errors", self.errors.to_string()),
            kv("warn_lines", self.warn_lines.to_string()),
            kv("fds_idle", self.fds_idle.to_string()),
            kv("fds_after", self.fds_after.to_string()),
            kv("peak_ok", bar(self.peak_ok())),
            kv("after_ok", bar(self.after_ok())),
            kv("p99_ok", bar(self.p99_ok())),
        ];
        if self.exited.is_some() {
            p.push(kv("dapd_exited", "1".to_string()));
        }
        p.extend(self.outcome.pairs.iter().cloned());
        p
    }

    fn print(&self) {
        let mark = |ok: bool| if ok { "PASS" } else { "FAIL" };
        let settled = if self.idle_settled { "" } else { " (had not settled)" };
        println!(
            "memory attack {}: budget {}; dapd RSS idle {}{settled}, peak {}, {} s after {}; \
             legit echo p50/p99 idle {:.0}/{:.0} us, under attack {:.0}/{:.0} us ({} round trips, {} errors); \
             dapd WARN lines {}, open files idle {} / after {}",
            self.attack.name(),
            self.budget.describe(),
            mib(self.idle_kib),
            mib(self.peak_kib),
            AFTER.as_secs(),
            self.after_kib.map_or_else(|| "n/a".to_string(), mib),
            self.p50_idle_us,
            self.p99_idle_us,
            self.p50_attack_us,
            self.p99_attack_us,
            self.rtts_attack,
            self.errors,
            self.warn_lines,
            self.fds_idle,
            self.fds_after,
        );
        println!(
            "  bars: peak <= idle + budget + 64 MiB ({}): {}; after <= idle + 32 MiB ({}): {}; p99 under attack <= 10 x idle ({:.0} us): {}",
            mib(self.idle_kib + ((self.budget.bytes() + PEAK_SLACK) >> 10)),
            mark(self.peak_ok()),
            mib(self.idle_kib + (AFTER_SLACK >> 10)),
            mark(self.after_ok()),
            P99_FACTOR * self.p99_idle_us,
            mark(self.p99_ok()),
        );
        println!("  {}", self.outcome.detail);
        if let Some(e) = &self.first_error {
            println!("  legit client's first failure: {e}");
        }
        if let Some(e) = &self.exited {
            println!("  dapd EXITED during the attack: {e}");
        }
        report::print_result_line(&self.pairs());
    }
}

/// KiB as MiB with one decimal.
fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One attack on a fresh dapd: warm-up, idle figures, the attack with the legitimate
/// client and the RSS sampler running, and RSS [`AFTER`] its end.
fn run_one(
    a: Attack,
    bin: &Path,
    dir: &Path,
    buffer_budget: Option<u64>,
    http_rate: bool,
) -> Result<Report, String> {
    let settings = Settings {
        buffer_budget,
        http_rate,
        nofile: (a == Attack::AcceptEmfile).then_some(kinds::EMFILE_NOFILE),
    };
    let mut d = Dapd::start(bin, a.log_name(), dir, settings).map_err(|e| format!("dapd: {e}"))?;
    let (pid, addr) = (d.pid(), d.addr());
    println!("== memory attack {}: dapd pid {pid} at {addr}, log {}", a.name(), d.log().display());
    warm_up(addr, d.node_key)?;
    let mut legit = Legit::start(addr, d.node_key, IDLE_ROUND_TRIPS);
    let idle_rtts = legit.idle()?;
    let (idle_kib, idle_settled) =
        memory::settled_rss(pid).map_err(|e| format!("dapd's RSS: {e}"))?;
    let fds_idle = subject::open_fds(pid);

    let sampler = RssSampler::start(pid);
    legit.go();
    let outcome = a.run(Target { addr, node_key: d.node_key, pid });
    let run = legit.finish();
    // "RSS 10 s after" is the measurement itself: the one fixed wait of the run.
    thread::sleep(AFTER);
    let exited = d.exited().map(|st| st.to_string());
    let after_kib = procstat::vm_rss_kib(pid).ok();
    let fds_after = subject::open_fds(pid);
    let peak_kib = sampler.stop().max(after_kib.unwrap_or(0));
    let mut outcome = outcome.unwrap_or_else(|e| Outcome {
        detail: format!("the attack FAILED: {e}"),
        pairs: vec![("attack_error".to_string(), "1".to_string())],
    });
    if a == Attack::AcceptEmfile {
        // dapd has its descriptors back: how often accept failed, all told.
        let failed = Metrics::fetch(addr)
            .ok()
            .and_then(|m| m.sum("dap_worker_errors_total", &["kind=\"accept_failed\""]));
        outcome.pairs.push(("accept_failed".to_string(), subject::fmt_metric(failed)));
        outcome
            .detail
            .push_str(&format!("; dapd counted {} failed accepts", subject::fmt_metric(failed)));
    }
    Ok(Report {
        attack: a,
        budget: a.budget(buffer_budget),
        idle_kib,
        idle_settled,
        peak_kib,
        after_kib,
        p50_idle_us: percentile_us(&idle_rtts, 50.0),
        p99_idle_us: percentile_us(&idle_rtts, 99.0),
        p50_attack_us: percentile_us(&run.rtts, 50.0),
        p99_attack_us: percentile_us(&run.rtts, 99.0),
        rtts_attack: run.rtts.len(),
        errors: run.errors,
        first_error: run.first_error,
        warn_lines: d.warn_lines(),
        fds_idle,
        fds_after,
        exited,
        outcome,
    })
}

/// A few sessions opened, used and closed, so that the idle figure is a node that has
/// served (buffers pooled, tables at their working size).
fn warm_up(addr: SocketAddr, node_key: [u8; 32]) -> Result<(), String> {
    let msg = Bytes::from(vec![b'w'; 4096]);
    for i in 0..WARMUP_SESSIONS {
        let (conn, params) = dapclient::open_session(addr, node_key, b"E", None)
            .map_err(|e| format!("warm-up session {i}: {e}"))?;
        let mut c = dapclient::StreamClient::new(conn, &params);
        for _ in 0..8 {
            c.echo_each(b"E", &msg).map_err(|e| format!("warm-up session {i}: {e}"))?;
        }
    }
    Ok(())
}

/// Every attack's figures side by side.
fn print_table(reports: &[Report]) {
    if reports.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<16} {:<34} {:>9} {:>9} {:>9} {:>8} {:>10} {:>6} {:>5} {:>5} {:>5}",
        "attack",
        "budget",
        "idle MiB",
        "peak MiB",
        "after MiB",
        "p99 idle",
        "p99 attack",
        "errors",
        "peak",
        "after",
        "p99"
    );
    let mark = |ok: bool| if ok { "pass" } else { "FAIL" };
    for r in reports {
        let budget = match r.budget.unit {
            Unit::Bytes => format!("{} {} MiB", r.budget.key, r.budget.value >> 20),
            Unit::Count => format!("{} {}", r.budget.key, r.budget.value),
        };
        println!(
            "{:<16} {:<34} {:>9.1} {:>9.1} {:>9} {:>6.0}us {:>8.0}us {:>6} {:>5} {:>5} {:>5}",
            r.attack.name(),
            budget,
            r.idle_kib as f64 / 1024.0,
            r.peak_kib as f64 / 1024.0,
            r.after_kib.map_or_else(|| "n/a".to_string(), |a| format!("{:.1}", a as f64 / 1024.0)),
            r.p99_idle_us,
            r.p99_attack_us,
            r.errors,
            mark(r.peak_ok()),
            mark(r.after_ok()),
            mark(r.p99_ok()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_lists() {
        assert_eq!(parse_list("all").unwrap().0, Attack::ALL.to_vec());
        assert!(parse_list("none").unwrap().is_empty());
        assert_eq!(
            parse_list("pipeline, reassembly,half-header").unwrap().0,
            vec![Attack::Reassembly, Attack::HalfHeader, Attack::Pipeline]
        );
        assert!(parse_list("slowloris").is_err());
    }

    #[test]
    fn budget_in_bytes_only_for_byte_budgets() {
        assert_eq!(Attack::Reassembly.budget(None).bytes(), 64 << 20);
        assert_eq!(Attack::HalfHeader.budget(None).bytes(), 0);
        assert_eq!(Attack::Pipeline.budget(Some(5)).bytes(), 5);
        assert_eq!(Attack::HandshakeFlood.budget(Some(5)).bytes(), 0);
    }
}
