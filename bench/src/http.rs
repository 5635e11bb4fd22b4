//! `dap-bench http` and `dap-bench https`: dap-net's `hello` example against a hyper 1.x hello
//! server (`serve-hyper`), loaded by wrk.
//!
//! Every run gets a freshly spawned server, checked with one real request (status 200, body
//! `Hello, World!`; over TLS for `https`, trusting exactly the generated certificate), then a
//! warm-up wrk run and the measured one against the same server, which is then killed and
//! reaped. Within a round, each scenario runs against every contender back to back; their
//! order rotates across rounds (A B C, B C A, C A B ...); each ratio is the median over rounds
//! of the per-round ratio. `http` has a third contender, `raw` (`serve-raw-http`), the limit:
//! a mio loop that counts request heads and sends a canned answer. Its rate shows where wrk
//! itself, not the server, caps a scenario (`raw_vs_hyper` near 1: no server can be much
//! faster than hyper there with this load generator). A wrk run that reports socket errors or non-2xx/3xx responses is printed
//! as such and left out of medians and ratios.
//!
//! Scenarios of `http`: `w1` one worker each, server pinned to CPU 0 and wrk to CPU 1 (the
//! headline); `w2` two workers each, server and wrk both unpinned over CPUs 0-1; `p16` one
//! worker, 16 requests pipelined per write. `https`: `tls`, one worker, keep-alive over TLS.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use crate::certs::{self, Certs};
use crate::report::{NOISY_OTHER_PCT, median};
use crate::servers::{self, Placement, ServerProc};
use crate::wrk::{self, WrkReport, WrkSpec};
use crate::{DapSource, procstat, resolve_example};

/// Options of the `http` and `https` subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// Measured wrk window per run, in seconds (wrk takes whole seconds; a fraction stops wrk
    /// early with SIGINT).
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Rounds; contenders alternate across rounds and ratios are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Warm-up wrk run before each measured one, in seconds (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

/// Connections wrk keeps open (`-c`), and its threads (`-t`).
const WRK_CONNS: usize = 64;
const WRK_THREADS: usize = 1;
/// What every answer must carry.
const HELLO: &[u8] = b"Hello, World!";
/// How long the pre-run request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    Dap,
    Hyper,
    /// `serve-raw-http`, the limit: what wrk reaches against a server that costs almost
    /// nothing (plain HTTP only).
    Raw,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Dap => "dap",
            Contender::Hyper => "hyper",
            Contender::Raw => "raw",
        }
    }
}

/// Round 0's order of `http`; round r rotates it left by r.
const HTTP_ORDER: [Contender; 3] = [Contender::Dap, Contender::Hyper, Contender::Raw];
/// Round 0's order of `https` (the raw limit speaks no TLS).
const HTTPS_ORDER: [Contender; 2] = [Contender::Dap, Contender::Hyper];

/// One load shape.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    /// Name in tables.
    name: &'static str,
    /// Prefix of its `RESULT` keys (the headline scenario has none).
    prefix: &'static str,
    /// Workers of each server (`--threads`).
    threads: usize,
    /// Where the server runs; wrk runs on CPU 1 when the server is pinned, else on both.
    placement: Placement,
    /// Requests per write (1: no pipelining).
    depth: usize,
}

const HTTP_SCENARIOS: [Scenario; 3] = [
    Scenario { name: "w1", prefix: "", threads: 1, placement: Placement::Pinned, depth: 1 },
    Scenario { name: "w2", prefix: "w2_", threads: 2, placement: Placement::Both, depth: 1 },
    Scenario { name: "p16", prefix: "p16_", threads: 1, placement: Placement::Pinned, depth: 16 },
];

const HTTPS_SCENARIOS: [Scenario; 1] =
    [Scenario { name: "tls", prefix: "", threads: 1, placement: Placement::Pinned, depth: 1 }];

/// `http` or `https`.
struct Suite {
    name: &'static str,
    scenarios: &'static [Scenario],
    /// The contenders, in round 0's order.
    order: &'static [Contender],
    /// PEM files and the probe's client config, for `https`.
    tls: Option<(Certs, Arc<rustls::ClientConfig>)>,
}

/// One measured run.
struct Run {
    round: usize,
    scen: usize,
    who: Contender,
    wrk: WrkReport,
    server_cpu: Duration,
    other_cpu: Duration,
}

impl Run {
    fn counted(&self) -> bool {
        !self.wrk.has_errors()
    }
    fn pct(&self, d: Duration) -> f64 {
        100.0 * d.as_secs_f64() / self.wrk.wall.as_secs_f64()
    }
    /// Server CPU time per request, in microseconds.
    fn srv_us_per_req(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.wrk.requests as f64
    }
    fn noisy(&self) -> bool {
        self.pct(self.other_cpu) > NOISY_OTHER_PCT
    }
    /// Whether wrk itself was near the limit of a CPU: the load generator, not the server,
    /// may then be what caps the rps, and ratios are pulled towards 1.
    fn wrk_bound(&self) -> bool {
        self.pct(self.wrk.client_cpu) >= WRK_BOUND_PCT
    }
}

/// wrk CPU use (% of one CPU) from which a run is flagged `^` (load-generator bound).
const WRK_BOUND_PCT: f64 = 90.0;

/// A table cell: `x` with `prec` decimals, `-` when unknown.
fn cell(x: f64, prec: usize) -> String {
    if x.is_finite() { format!("{x:.prec$}") } else { "-".to_string() }
}

/// `dap-bench http`: prints the tables and the `RESULT` line; returns its pairs.
pub fn run_http(args: &HttpArgs, dap: DapSource) -> io::Result<Vec<(String, String)>> {
    let suite = Suite { name: "http", scenarios: &HTTP_SCENARIOS, order: &HTTP_ORDER, tls: None };
    run_suite(&suite, args, dap)
}

/// `dap-bench https`: prints the tables and the `RESULT` line; returns its pairs.
pub fn run_https(args: &HttpArgs, dap: DapSource) -> io::Result<Vec<(String, String)>> {
    let certs = certs::generate()?;
    let client = probe_client_config(&certs.cert_der)?;
    let suite = Suite {
        name: "https",
        scenarios: &HTTPS_SCENARIOS,
        order: &HTTPS_ORDER,
        tls: Some((certs, client)),
    };
    run_suite(&suite, args, dap)
}

fn run_suite(suite: &Suite, args: &HttpArgs, dap: DapSource) -> io::Result<Vec<(String, String)>> {
    let secs = args.secs.clamp(0.1, 600.0);
    let warmup = args.warmup.clamp(0.0, 60.0);
    let rounds = args.rounds.clamp(1, 50);
    if !wrk::available() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "wrk not found (install the Debian package: apt-get install wrk)",
        ));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pipeline.lua");
    if suite.scenarios.iter().any(|s| s.depth > 1) && !script.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is missing", script.display()),
        ));
    }
    let mut dap = resolve_example(dap, servers::HELLO);
    let pinned = procstat::can_pin_two_cpus();
    if pinned {
        procstat::pin_current_thread(servers::CLIENT_CPU)?;
    } else {
        println!("WARNING: CPUs 0 and 1 are not both available; servers and wrk NOT pinned");
    }
    let scheme = if suite.tls.is_some() { "https" } else { "http" };
    let spec_for = |sc: &Scenario, addr: SocketAddr| WrkSpec {
        url: format!("{scheme}://{addr}/"),
        threads: WRK_THREADS,
        conns: WRK_CONNS,
        script: (sc.depth > 1).then(|| (script.clone(), vec![sc.depth.to_string()])),
        cpus: pinned.then(|| match sc.placement {
            Placement::Pinned => servers::CLIENT_CPU.to_string(),
            Placement::Both => Placement::Both.cpu_list(),
        }),
    };

    println!(
        "== {}: dap-net hello vs hyper 1.x hello{}; wrk -t{WRK_THREADS} -c{WRK_CONNS}, keep-alive; warm-up {warmup} s, window {secs} s, {rounds} round(s)",
        suite.name,
        if suite.tls.is_some() {
            " over TLS (rustls 0.23 + ring under hyper; self-signed P-256 cert in bench/target/bench-certs/)"
        } else {
            ""
        }
    );
    let example_addr: SocketAddr = ([127, 0, 0, 1], 0).into();
    for sc in suite.scenarios {
        let placement = match (sc.placement, pinned) {
            (_, false) => "nothing pinned".to_string(),
            (Placement::Pinned, true) => format!(
                "server pinned to CPU {}, wrk to CPU {}",
                servers::SERVER_CPU,
                servers::CLIENT_CPU
            ),
            (Placement::Both, true) => format!(
                "server and wrk NOT pinned to one CPU: both may use CPUs {}",
                Placement::Both.cpu_list()
            ),
        };
        let shape =
            if sc.depth > 1 { format!(", {}-deep pipelining", sc.depth) } else { String::new() };
        println!("   {:<4} {} worker(s) each{shape}; {placement}", sc.name, sc.threads);
        println!("        {}", spec_for(sc, example_addr).display(secs).replace(":0/", ":PORT/"));
    }
    let tls_args = suite.tls.as_ref().map_or(String::new(), |(c, _)| {
        format!(" --cert {} --key {}", c.cert.display(), c.key.display())
    });
    println!(
        "   dap:   {} --addr 127.0.0.1:PORT --threads N{tls_args}",
        dap.as_ref().map_or_else(|| "<hello example>".to_string(), |p| p.display().to_string())
    );
    println!(
        "   hyper: dap-bench serve-hyper --addr 127.0.0.1:PORT --threads N{tls_args}   (N=1: current_thread runtime; N>1: multi_thread with N workers)"
    );
    if suite.order.contains(&Contender::Raw) {
        println!(
            "   raw:   dap-bench serve-raw-http --addr 127.0.0.1:PORT --threads N   (the limit: counts request heads, sends a canned answer; no parsing)"
        );
    }
    println!(
        "   every run spawns a fresh server, checks one GET / answers 200 \"Hello, World!\", warms up, measures, kills it\n   \
         columns: rps = wrk Requests/sec; p50/p99 = wrk latency percentiles; srv us/req = server CPU time per request; \
         srv/cli/oth % = CPU use in % of one CPU by the server / wrk / anything else on CPUs {}-{} (! above {NOISY_OTHER_PCT}%; \
         ^ when wrk is at {WRK_BOUND_PCT}% or more: the load generator may be the limit)",
        servers::SERVER_CPU,
        servers::CLIENT_CPU
    );

    // Pre-flight: can each contender serve this suite at all? dap's hello may not be built, or
    // (for https) may not take --cert/--key yet: then it is skipped, and hyper still measured.
    let first = &suite.scenarios[0];
    if let Some(bin) = dap.clone()
        && let Err(e) = start_and_probe(Contender::Dap, Some(&bin), first, suite)
    {
        println!("dap: SKIPPED: {e}");
        dap = None;
    }
    start_and_probe(Contender::Hyper, None, first, suite)
        .map_err(|e| io::Error::other(format!("hyper: {e}")))?;

    let log_dir = servers::log_dir();
    let _ = std::fs::remove_file(log_dir.join("wrk.log"));
    let mut runs: Vec<Run> = Vec::new();
    let mut tls_seen: Vec<(String, u64)> = Vec::new();
    print_run_header();
    for round in 0..rounds {
        let all = suite.order;
        let order: Vec<Contender> = (0..all.len())
            .map(|i| all[(i + round) % all.len()])
            .filter(|c| *c != Contender::Dap || dap.is_some())
            .collect();
        let names: Vec<&str> = order.iter().map(|c| c.name()).collect();
        println!("-- round {} order: {}", round + 1, names.join(" "));
        for (si, sc) in suite.scenarios.iter().enumerate() {
            for &who in &order {
                let fail = |e: &dyn std::fmt::Display| {
                    println!("{:<5} {:<5} {:<6} FAILED: {e}", round + 1, sc.name, who.name())
                };
                let server = match start_and_probe(who, dap.as_deref(), sc, suite) {
                    Ok(s) => s,
                    Err(e) => {
                        fail(&e);
                        continue;
                    }
                };
                let want = sc.placement.cpu_list();
                let cpus = procstat::cpus_allowed_list(server.pid);
                if pinned && cpus != want {
                    println!(
                        "WARNING: {} pid {} runs on CPUs {cpus}, not {want}",
                        server.name, server.pid
                    );
                }
                let spec = spec_for(sc, server.addr);
                let header = format!("round {} {} {}", round + 1, sc.name, who.name());
                if warmup > 0.0 {
                    match wrk::run(&spec, warmup) {
                        Ok(w) => wrk::log(&log_dir, &format!("{header} warm-up"), &w.raw),
                        Err(e) => {
                            fail(&format_args!("warm-up: {e}"));
                            continue;
                        }
                    }
                }
                let srv0 = match procstat::process_cpu_time(server.pid) {
                    Ok(t) => t,
                    Err(e) => {
                        fail(&format_args!("server gone after the warm-up: {e}"));
                        continue;
                    }
                };
                let busy0 = procstat::cpus_busy_time(&[servers::SERVER_CPU, servers::CLIENT_CPU])?;
                let res = wrk::run(&spec, secs);
                let srv1 = procstat::process_cpu_time(server.pid);
                let busy1 = procstat::cpus_busy_time(&[servers::SERVER_CPU, servers::CLIENT_CPU])?;
                let rep = match (res, srv1) {
                    (Ok(r), Ok(s1)) => {
                        let server_cpu = s1.saturating_sub(srv0);
                        let other_cpu = busy1
                            .saturating_sub(busy0)
                            .saturating_sub(server_cpu)
                            .saturating_sub(r.client_cpu);
                        (r, server_cpu, other_cpu)
                    }
                    (Err(e), _) => {
                        fail(&e);
                        continue;
                    }
                    (_, Err(e)) => {
                        fail(&format_args!("server gone during the run: {e}"));
                        continue;
                    }
                };
                drop(server);
                wrk::log(&log_dir, &header, &rep.0.raw);
                if who == Contender::Hyper && suite.tls.is_some() {
                    merge_tls_seen(&mut tls_seen, &servers::log_dir().join("server-hyper.log"));
                }
                let run =
                    Run { round, scen: si, who, wrk: rep.0, server_cpu: rep.1, other_cpu: rep.2 };
                print_run_row(&run, sc.name);
                runs.push(run);
            }
        }
    }

    // Medians over the counted (error-free) runs.
    println!("== medians over rounds (runs with wrk errors left out)");
    print_run_header();
    let counted = |si: usize, who: Contender| -> Vec<&Run> {
        runs.iter().filter(|r| r.scen == si && r.who == who && r.counted()).collect()
    };
    for (si, sc) in suite.scenarios.iter().enumerate() {
        for &who in suite.order {
            let rs = counted(si, who);
            if rs.is_empty() {
                continue;
            }
            let col =
                |f: &dyn Fn(&Run) -> f64| median(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            println!(
                "{:<5} {:<5} {:<6} {:>11.0} {:>9} {:>9} {:>11.2} {:>6.1} {:>6.1} {:>6.1}",
                "med",
                sc.name,
                who.name(),
                col(&|r| r.wrk.rps),
                cell(col(&|r| r.wrk.p50_us), 1),
                cell(col(&|r| r.wrk.p99_us), 1),
                col(&|r| r.srv_us_per_req()),
                col(&|r| r.pct(r.server_cpu)),
                col(&|r| r.pct(r.wrk.client_cpu)),
                col(&|r| r.pct(r.other_cpu)),
            );
        }
    }

    // Per-round ratios, then their medians.
    println!(
        "== dap/hyper per round: rps ratio (>1: dap serves more) and server CPU per request ratio (<1: dap is cheaper)"
    );
    println!(
        "{:<5} {:<5} {:>11} {:>11} {:>8} {:>10}",
        "scen", "round", "dap rps", "hyper rps", "ratio", "cpu ratio"
    );
    let find = |round: usize, si: usize, who: Contender| {
        runs.iter().find(|r| r.round == round && r.scen == si && r.who == who && r.counted())
    };
    let na = |x: f64, prec: usize| {
        if x.is_finite() { format!("{x:.prec$}") } else { "NA".to_string() }
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut extra: Vec<(String, String)> = Vec::new();
    for (si, sc) in suite.scenarios.iter().enumerate() {
        let mut ratios = Vec::new();
        let mut cpu_ratios = Vec::new();
        for round in 0..rounds {
            let d = find(round, si, Contender::Dap);
            let h = find(round, si, Contender::Hyper);
            let ratio = match (d, h) {
                (Some(d), Some(h)) => d.wrk.rps / h.wrk.rps,
                _ => f64::NAN,
            };
            let cpu_ratio = match (d, h) {
                (Some(d), Some(h)) => d.srv_us_per_req() / h.srv_us_per_req(),
                _ => f64::NAN,
            };
            ratios.push(ratio);
            cpu_ratios.push(cpu_ratio);
            println!(
                "{:<5} {:<5} {:>11} {:>11} {:>8} {:>10}",
                sc.name,
                round + 1,
                d.map_or("-".to_string(), |r| format!("{:.0}", r.wrk.rps)),
                h.map_or("-".to_string(), |r| format!("{:.0}", r.wrk.rps)),
                na(ratio, 3),
                na(cpu_ratio, 3)
            );
        }
        let med_rps = |who: Contender| {
            median(&counted(si, who).iter().map(|r| r.wrk.rps).collect::<Vec<_>>())
        };
        let (d_rps, h_rps) = (med_rps(Contender::Dap), med_rps(Contender::Hyper));
        let (ratio, cpu_ratio) = (median(&ratios), median(&cpu_ratios));
        println!(
            "{:<5} {:<5} {:>11} {:>11} {:>8} {:>10}",
            sc.name,
            "med",
            na(d_rps, 0),
            na(h_rps, 0),
            na(ratio, 3),
            na(cpu_ratio, 3)
        );
        let p = sc.prefix;
        if suite.order.contains(&Contender::Raw) {
            // The limit: how far above hyper a server that costs almost nothing gets with
            // this load generator, and how close dap comes to it.
            let per_round = |a: Contender, b: Contender| {
                let v: Vec<f64> = (0..rounds)
                    .filter_map(|round| {
                        Some(find(round, si, a)?.wrk.rps / find(round, si, b)?.wrk.rps)
                    })
                    .collect();
                median(&v)
            };
            let raw_vs_hyper = per_round(Contender::Raw, Contender::Hyper);
            let ours_vs_raw = per_round(Contender::Dap, Contender::Raw);
            println!(
                "{:<5} {:<5} raw rps {} (the limit); raw/hyper {}; dap/raw {}",
                sc.name,
                "med",
                na(med_rps(Contender::Raw), 0),
                na(raw_vs_hyper, 3),
                na(ours_vs_raw, 3)
            );
            extra.push((format!("{p}raw_rps"), na(med_rps(Contender::Raw), 0)));
            extra.push((format!("{p}raw_vs_hyper"), na(raw_vs_hyper, 3)));
            extra.push((format!("{p}ours_vs_raw"), na(ours_vs_raw, 3)));
        }
        if dap.is_some() {
            pairs.push((format!("{p}ours_rps"), na(d_rps, 0)));
        }
        pairs.push((format!("{p}hyper_rps"), na(h_rps, 0)));
        pairs.push((format!("{p}ratio"), na(ratio, 3)));
        extra.push((format!("{p}cpu_ratio"), na(cpu_ratio, 3)));
    }

    if !tls_seen.is_empty() {
        let list: Vec<String> =
            tls_seen.iter().map(|(k, n)| format!("{k} (at least {n} handshakes)")).collect();
        println!(
            "hyper's TLS handshakes, from its log (wrk's plus one probe per run): {}",
            list.join(", ")
        );
        if let Some((k, _)) = tls_seen.iter().max_by_key(|(_, n)| *n) {
            extra.push(("hyper_tls".to_string(), k.replace(' ', ":")));
        }
    }
    let errors = runs.iter().filter(|r| !r.counted()).count();
    if errors > 0 {
        println!(
            "NOTE: {errors} of {} runs had wrk errors (marked ERR above): they are left out of medians and ratios",
            runs.len()
        );
    }
    let noisy = runs.iter().filter(|r| r.noisy()).count();
    if noisy > 0 {
        println!(
            "NOTE: {noisy} of {} runs (flagged !) had other processes using more than {NOISY_OTHER_PCT}% of a CPU on the benchmark CPUs",
            runs.len()
        );
    }
    let bound = runs.iter().filter(|r| r.wrk_bound()).count();
    if bound > 0 {
        println!(
            "NOTE: in {bound} of {} runs (flagged ^) wrk used {WRK_BOUND_PCT}% or more of a CPU: the load generator may cap the rps there, pulling ratios towards 1",
            runs.len()
        );
    }
    if dap.is_none() {
        println!("NOTE: dap was skipped: RESULT carries hyper's figures only, ratios are NA");
    }
    extra.push(("error_runs".to_string(), errors.to_string()));
    extra.push(("noisy_runs".to_string(), noisy.to_string()));
    extra.push(("wrk_bound_runs".to_string(), bound.to_string()));
    pairs.extend(extra);
    crate::report::print_result_line(&pairs);
    Ok(pairs)
}

fn print_run_header() {
    println!(
        "{:<5} {:<5} {:<6} {:>11} {:>9} {:>9} {:>11} {:>6} {:>6} {:>6}",
        "round",
        "scen",
        "server",
        "rps",
        "p50 us",
        "p99 us",
        "srv us/req",
        "srv %",
        "cli %",
        "oth %"
    );
}

fn print_run_row(r: &Run, scen: &str) {
    let mut flags = String::new();
    if r.noisy() {
        flags.push_str(" !");
    }
    if r.wrk_bound() {
        flags.push_str(" ^");
    }
    if r.wrk.has_errors() {
        flags.push_str(&format!(" ERR ({}), not counted", r.wrk.error_text()));
    }
    println!(
        "{:<5} {:<5} {:<6} {:>11.0} {:>9} {:>9} {:>11.2} {:>6.1} {:>6.1} {:>6.1}{flags}",
        r.round + 1,
        scen,
        r.who.name(),
        r.wrk.rps,
        cell(r.wrk.p50_us, 1),
        cell(r.wrk.p99_us, 1),
        r.srv_us_per_req(),
        r.pct(r.server_cpu),
        r.pct(r.wrk.client_cpu),
        r.pct(r.other_cpu),
    );
}

/// Starts `who` for scenario `sc` on a fresh port and checks that it answers one request.
fn start_and_probe(
    who: Contender,
    dap_bin: Option<&Path>,
    sc: &Scenario,
    suite: &Suite,
) -> io::Result<ServerProc> {
    let addr = servers::loopback_addr()?;
    let mut cmd = match who {
        Contender::Dap => {
            let bin = dap_bin.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "dap hello example not built")
            })?;
            Command::new(bin)
        }
        Contender::Hyper => {
            let mut c = Command::new(std::env::current_exe()?);
            c.arg("serve-hyper");
            c
        }
        Contender::Raw => {
            let mut c = Command::new(std::env::current_exe()?);
            c.arg("serve-raw-http");
            c
        }
    };
    cmd.args(["--addr", &addr.to_string(), "--threads", &sc.threads.to_string()]);
    // Where the server shares its CPUs with wrk (w2), dap's workers must not be pinned
    // either: hyper's threads are not, and a pinned worker cannot move away from wrk.
    if who == Contender::Dap && sc.placement == Placement::Both {
        cmd.arg("--no-pin");
    }
    if let Some((certs, _)) = &suite.tls {
        cmd.arg("--cert").arg(&certs.cert).arg("--key").arg(&certs.key);
    }
    let server = servers::start_command(who.name(), cmd, addr, sc.placement)?;
    probe(server.addr, suite.tls.as_ref().map(|(_, c)| c)).map_err(|e| {
        io::Error::other(format!(
            "{} on {} does not answer GET / as expected{}: {e}",
            who.name(),
            server.addr,
            if suite.tls.is_some() { " over TLS" } else { "" }
        ))
    })?;
    Ok(server)
}

/// A rustls client (ring provider) that trusts exactly the generated certificate.
fn probe_client_config(cert_der: &[u8]) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert_der.to_vec()))
        .map_err(|e| io::Error::other(format!("trust store: {e}")))?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| io::Error::other(format!("rustls: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Sends `GET /` and checks the answer: 200, `Content-Type: text/plain`, body `Hello, World!`.
fn probe(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<(), String> {
    let tcp =
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(|e| e.to_string())?;
    let req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let (head, body) = match tls {
        None => exchange(tcp, req)?,
        Some(cfg) => {
            let name = ServerName::IpAddress(addr.ip().into());
            let conn = rustls::ClientConnection::new(cfg.clone(), name)
                .map_err(|e| format!("tls: {e}"))?;
            exchange(rustls::StreamOwned::new(conn, tcp), req)?
        }
    };
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let ctype = header(&head, "content-type").unwrap_or_default();
    if !ctype.starts_with("text/plain") {
        return Err(format!("Content-Type {ctype:?}"));
    }
    if body != HELLO {
        return Err(format!("body {:?}", String::from_utf8_lossy(&body)));
    }
    Ok(())
}

/// Writes `req` and reads one response with a `Content-Length` body.
fn exchange<S: Read + Write>(mut s: S, req: &[u8]) -> Result<(String, Vec<u8>), String> {
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    s.flush().map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = header(&head, "content-length")
                .ok_or("no Content-Length")?
                .parse()
                .map_err(|e| format!("bad Content-Length: {e}"))?;
            let start = end + 4;
            if buf.len() >= start + len {
                return Ok((head, buf[start..start + len].to_vec()));
            }
        }
        if buf.len() > 64 * 1024 {
            return Err("response longer than 64 KiB".to_string());
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "connection closed after {} bytes: {:?}",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Value of header `name` (lower case) in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Reads `serve-hyper: tls VERSION SUITE handshakes=N` lines and keeps the largest N per
/// (version, suite), adding it to `seen`.
fn merge_tls_seen(seen: &mut Vec<(String, u64)>, log: &PathBuf) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut this_run: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("serve-hyper: tls ") else { continue };
        let Some((key, n)) = rest.rsplit_once(" handshakes=") else { continue };
        let Ok(n) = n.trim().parse::<u64>() else { continue };
        match this_run.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = e.1.max(n),
            None => this_run.push((key.to_string(), n)),
        }
    }
    for (k, n) in this_run {
        match seen.iter_mut().find(|(s, _)| *s == k) {
            Some(e) => e.1 += n,
            None => seen.push((k, n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 13";
        assert_eq!(header(head, "content-length").as_deref(), Some("13"));
        assert_eq!(header(head, "Content-Type").as_deref(), Some("text/plain"));
        assert_eq!(header(head, "date"), None);
    }
}
