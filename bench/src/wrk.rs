//! Runs wrk (the Debian package, `/usr/bin/wrk`) and reads its report.
//!
//! wrk takes whole seconds (`-d2s`); a window with a fraction (`--warmup 0.5`) runs wrk with
//! the next whole second and stops it with SIGINT at the requested time (wrk then prints its
//! report for the time it actually ran, as it does on Ctrl-C). wrk installs its SIGINT handler
//! only once its threads are started, and SIGINT kills it before that, so the signal waits
//! until `/proc/PID/status` shows the handler (which can lengthen a short window on a busy
//! machine; wrk's figures are for the time it really ran). Every run is bounded: wrk is killed
//! [`GRACE`] after its window should have ended.
//!
//! A run counts as failed when wrk reports socket errors (connect, read, write, timeout) or
//! non-2xx/3xx responses: those lines are parsed, never ignored.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procstat;

/// How long after its window wrk may take to print its report before it is killed.
const GRACE: Duration = Duration::from_secs(15);

/// One wrk invocation.
#[derive(Debug, Clone)]
pub struct WrkSpec {
    /// `http://…/` or `https://…/`.
    pub url: String,
    /// `-t`.
    pub threads: usize,
    /// `-c`.
    pub conns: usize,
    /// `-s SCRIPT URL -- ARGS`.
    pub script: Option<(PathBuf, Vec<String>)>,
    /// `taskset -c LIST` in front of wrk (None: run wrk with this thread's mask).
    pub cpus: Option<String>,
}

impl WrkSpec {
    /// The command line for a window of `secs` whole seconds.
    fn argv(&self, secs: u64) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(c) = &self.cpus {
            v.extend(["taskset".to_string(), "-c".to_string(), c.clone()]);
        }
        v.extend([
            "wrk".to_string(),
            format!("-t{}", self.threads),
            format!("-c{}", self.conns),
            format!("-d{secs}s"),
            "--latency".to_string(),
        ]);
        if let Some((path, _)) = &self.script {
            v.extend(["-s".to_string(), path.display().to_string()]);
        }
        v.push(self.url.clone());
        if let Some((_, args)) = &self.script
            && !args.is_empty()
        {
            v.push("--".to_string());
            v.extend(args.iter().cloned());
        }
        v
    }

    /// The command as it would be typed, for a window of `secs` seconds.
    pub fn display(&self, secs: f64) -> String {
        self.argv(whole_secs(secs)).join(" ")
    }
}

/// wrk's whole-second `-d` for a window of `secs` seconds.
fn whole_secs(secs: f64) -> u64 {
    (secs.ceil() as u64).max(1)
}

/// What wrk reported, and what the harness observed around it.
#[derive(Debug, Clone, Default)]
pub struct WrkReport {
    /// Responses completed (wrk's "N requests in").
    pub requests: u64,
    /// wrk's `Requests/sec:`.
    pub rps: f64,
    /// Median latency (microseconds), from `--latency`; NaN when wrk gave none.
    pub p50_us: f64,
    /// 99th percentile latency (microseconds); NaN when wrk gave none (see [`percentile_us`]).
    pub p99_us: f64,
    /// `Socket errors: connect C, read R, write W, timeout T`.
    pub err_connect: u64,
    /// Read errors.
    pub err_read: u64,
    /// Write errors.
    pub err_write: u64,
    /// Timeouts.
    pub err_timeout: u64,
    /// `Non-2xx or 3xx responses: N`.
    pub non2xx: u64,
    /// Wall time from spawning wrk to its exit.
    pub wall: Duration,
    /// CPU time wrk used (user + system).
    pub client_cpu: Duration,
    /// wrk's full output, for the log.
    pub raw: String,
}

impl WrkReport {
    /// Whether wrk reported any error: such a run is not counted.
    pub fn has_errors(&self) -> bool {
        self.err_connect + self.err_read + self.err_write + self.err_timeout + self.non2xx > 0
    }

    /// The errors, as wrk's own words.
    pub fn error_text(&self) -> String {
        let mut parts = Vec::new();
        if self.err_connect + self.err_read + self.err_write + self.err_timeout > 0 {
            parts.push(format!(
                "socket errors: connect {}, read {}, write {}, timeout {}",
                self.err_connect, self.err_read, self.err_write, self.err_timeout
            ));
        }
        if self.non2xx > 0 {
            parts.push(format!("non-2xx/3xx responses: {}", self.non2xx));
        }
        parts.join("; ")
    }
}

/// Whether wrk can be run.
pub fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs wrk for `secs` seconds and parses its report. Returns an error when wrk cannot run,
/// exits with a failure, overruns its window or prints no `Requests/sec:`; wrk's own error
/// lines are in the report (see [`WrkReport::has_errors`]).
pub fn run(spec: &WrkSpec, secs: f64) -> io::Result<WrkReport> {
    let whole = whole_secs(secs);
    let stop_early = (whole as f64 - secs) > 1e-3;
    let argv = spec.argv(whole);
    let cpu_before = procstat::reaped_children_cpu_time();
    let t0 = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", argv[0])))?;
    // wrk prints a few hundred bytes, but read both pipes on threads anyway so that a chatty
    // wrk can never block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as Box<dyn Read + Send>));
    let stop_at = t0 + Duration::from_secs_f64(secs);
    let kill_at = t0 + Duration::from_secs(whole) + GRACE;
    let mut interrupted = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        let now = Instant::now();
        if stop_early
            && !interrupted
            && now >= stop_at
            && procstat::catches_signal(child.id(), libc::SIGINT)
        {
            // SAFETY: `kill` has no memory-safety preconditions; the pid is our own child,
            // not yet reaped (try_wait returned None), so it cannot name another process.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            interrupted = true;
        }
        if now >= kill_at {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("wrk still running {GRACE:?} after its {whole} s window; killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let wall = t0.elapsed();
    let client_cpu = procstat::reaped_children_cpu_time().saturating_sub(cpu_before);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let raw = format!("$ {}\n{stdout}{stderr}", argv.join(" "));
    if !status.success() {
        return Err(io::Error::other(format!(
            "wrk failed ({status}): {}",
            stderr
                .trim()
                .lines()
                .chain(stdout.trim().lines())
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        )));
    }
    let mut rep = parse(&stdout).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{e}; wrk said: {}", stdout.trim()))
    })?;
    rep.wall = wall;
    rep.client_cpu = client_cpu;
    rep.raw = raw;
    Ok(rep)
}

/// Appends a run's raw wrk output to `bench/target/bench-logs/wrk.log`.
pub fn log(dir: &Path, header: &str, raw: &str) {
    use std::io::Write;
    if let Ok(mut f) =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join("wrk.log"))
    {
        let _ = writeln!(f, "### {header}\n{raw}");
    }
}

/// Parses wrk's report.
pub fn parse(text: &str) -> Result<WrkReport, String> {
    let mut r = WrkReport::default();
    let mut rps = None;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().map_err(|e| format!("bad Requests/sec: {e}"))?);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            for part in v.split(',') {
                let mut it = part.split_whitespace();
                let (Some(k), Some(n)) = (it.next(), it.next()) else { continue };
                let n: u64 = n.parse().map_err(|e| format!("bad socket error count: {e}"))?;
                match k {
                    "connect" => r.err_connect = n,
                    "read" => r.err_read = n,
                    "write" => r.err_write = n,
                    "timeout" => r.err_timeout = n,
                    _ => {}
                }
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non2xx = v.trim().parse().map_err(|e| format!("bad non-2xx count: {e}"))?;
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            r.requests = n.trim().parse().map_err(|e| format!("bad request count: {e}"))?;
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_us = percentile_us(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_us = percentile_us(v);
        }
    }
    r.rps = rps.ok_or("no Requests/sec: line")?;
    Ok(r)
}

/// A `--latency` percentile in microseconds; NaN when unreadable or `0.00us`, which wrk prints
/// for high percentiles with a pipelining script (it records one latency per batch).
fn percentile_us(v: &str) -> f64 {
    parse_time_us(v.trim()).filter(|x| *x > 0.0).unwrap_or(f64::NAN)
}

/// wrk's time format (`635.00us`, `1.23ms`, `2.00s`, `1.50m`) in microseconds.
fn parse_time_us(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let x: f64 = num.trim().parse().ok()?;
    let mul = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(x * mul)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 2s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   620.10us  100.00us   2.00ms   90.00%
    Req/Sec   100.00k     1.00k  110.00k    70.00%
  Latency Distribution
     50%  600.00us
     75%  650.00us
     90%  700.00us
     99%    1.20ms
  200000 requests in 2.00s, 24.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec: 100000.50
Transfer/sec:     12.00MB
";

    #[test]
    fn parses_report_and_errors() {
        let r = parse(SAMPLE).unwrap();
        assert_eq!(r.requests, 200_000);
        assert_eq!(r.rps, 100_000.5);
        assert_eq!(r.p50_us, 600.0);
        assert_eq!(r.p99_us, 1200.0);
        assert_eq!((r.err_connect, r.err_read, r.err_write, r.err_timeout), (0, 3, 0, 1));
        assert_eq!(r.non2xx, 7);
        assert!(r.has_errors());
    }

    #[test]
    fn clean_report_and_missing_rps() {
        let clean: String = SAMPLE
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        let r = parse(&clean).unwrap();
        assert!(!r.has_errors());
        assert!(parse("Running 2s test\n").is_err());
        let pipelined = SAMPLE.replace("   1.20ms", "0.00us");
        assert!(parse(&pipelined).unwrap().p99_us.is_nan());
    }

    #[test]
    fn whole_seconds_and_argv() {
        assert_eq!(whole_secs(0.5), 1);
        assert_eq!(whole_secs(2.0), 2);
        let spec = WrkSpec {
            url: "http://127.0.0.1:1/".into(),
            threads: 1,
            conns: 64,
            script: Some((PathBuf::from("p.lua"), vec!["16".into()])),
            cpus: Some("1".into()),
        };
        assert_eq!(
            spec.display(2.0),
            "taskset -c 1 wrk -t1 -c64 -d2s --latency -s p.lua http://127.0.0.1:1/ -- 16"
        );
    }
}
