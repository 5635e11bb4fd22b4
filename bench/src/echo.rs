//! `dap-bench echo`: dap's echo example against tokio and a raw mio loop, in one run.
//!
//! Every server runs with one worker, pinned to CPU 0; the load generator runs here, pinned to
//! CPU 1. In each round, each scenario gets freshly spawned servers, one per contender, all
//! started and warmed up before measuring and killed and reaped after it. The measured time is
//! cut into short slices (`--slice`, 0.5 s) in which the contenders take turns, the order
//! rotating slice by slice (A B C, B C A, C A B, ...): drift of the shared machine over seconds
//! then hits every contender alike, where back-to-back runs of several seconds each let it
//! decide the ratio. A contender's figures in a round are the sums over its slices; each ratio
//! is the median over rounds of the per-round ratio.

use std::time::Duration;

use crate::loadgen::{self, Measurement, SCENARIOS};
use crate::report::{self, fmt_ratio, median};
use crate::servers::{self, Kind};
use crate::{DapSource, procstat, resolve_dap};

/// Options of the `echo` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct EchoArgs {
    /// Measured time per scenario and contender in each round, in seconds (the sum of its
    /// slices).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Length of one measured slice, in seconds: within a round the contenders take turns
    /// slice by slice, so that drift of the shared machine hits them alike.
    #[arg(long, default_value_t = 0.5)]
    pub slice: f64,
    /// Rounds; contenders are interleaved across rounds and ratios are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Warm-up of each contender before a scenario's slices, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Measure a slice again, up to this many times, while other processes disturb it (more
    /// than the `!` threshold); the disturbed attempt is dropped.
    #[arg(long, default_value_t = 0)]
    pub retry_noisy: usize,
}

/// Order of the contenders in round 0; round r rotates it left by r.
const ORDER: [Kind; 3] = [Kind::Dap, Kind::Tokio, Kind::Mio];

struct Run {
    round: usize,
    scen: usize,
    kind: Kind,
    m: Measurement,
}

/// Runs the echo comparison; prints tables and the `RESULT` line, and returns its pairs.
pub fn run(args: &EchoArgs, dap: DapSource) -> std::io::Result<Vec<(String, String)>> {
    let secs = args.secs.clamp(0.1, 600.0);
    let warmup = args.warmup.clamp(0.0, 60.0);
    let rounds = args.rounds.clamp(1, 50);
    let retries = args.retry_noisy.min(5);
    let slice_secs = args.slice.clamp(0.05, secs);
    let slices = (secs / slice_secs).round().max(1.0) as usize;
    let slice = Duration::from_secs_f64(secs / slices as f64);
    let warm = Duration::from_secs_f64(warmup);

    let dap = resolve_dap(dap);
    let pinned = procstat::can_pin_two_cpus();
    if pinned {
        procstat::pin_current_thread(servers::CLIENT_CPU)?;
    } else {
        println!(
            "WARNING: CPUs 0 and 1 are not both available; server and load generator NOT pinned"
        );
    }
    println!(
        "== echo: servers on CPU {}, load generator on CPU {}; warm-up {warmup} s, then {secs} s per contender in {slices} alternating slices of {:.2} s, {rounds} round(s)",
        servers::SERVER_CPU,
        servers::CLIENT_CPU,
        slice.as_secs_f64()
    );
    for sc in &SCENARIOS {
        println!(
            "   {:<4} {} conns x {} B messages, depth {}",
            sc.name, sc.conns, sc.msg_size, sc.depth
        );
    }

    println!(
        "   every round and scenario spawns fresh servers (checked to be pinned) and kills them afterwards\n   \
         columns: msgs/s, MB/s (payload echoed) and p50/p99 round trip per message over the contender's slices; \
         srv/cli ns/msg: CPU time per message of the server process / load generator; \
         srv/cli/oth %: CPU use in % of one CPU, oth = anything else on CPUs {}-{} (! above {}%)",
        servers::SERVER_CPU,
        servers::CLIENT_CPU,
        report::NOISY_OTHER_PCT
    );
    let mut runs: Vec<Run> = Vec::new();
    report::print_run_header();
    for round in 0..rounds {
        let order: Vec<Kind> = (0..ORDER.len())
            .map(|i| ORDER[(i + round) % ORDER.len()])
            .filter(|k| *k != Kind::Dap || dap.is_some())
            .collect();
        let names: Vec<&str> = order.iter().map(|k| k.name()).collect();
        println!("-- round {} order: {}", round + 1, names.join(" "));
        for (si, sc) in SCENARIOS.iter().enumerate() {
            // Fresh servers for the scenario, all started before any is loaded: idle ones
            // cost nothing, and no state carries over between scenarios.
            let mut live: Vec<(Kind, servers::ServerProc, loadgen::Session)> = Vec::new();
            for &kind in &order {
                let server = match servers::start(kind, dap.as_deref()) {
                    Ok(s) => s,
                    Err(e) => {
                        report::print_run_error(round + 1, sc.name, kind.name(), &e.to_string());
                        continue;
                    }
                };
                let cpus = procstat::cpus_allowed_list(server.pid);
                if pinned && cpus != servers::SERVER_CPU.to_string() {
                    println!("WARNING: {} pid {} runs on CPUs {cpus}", server.name, server.pid);
                }
                let opened = loadgen::Session::open(server.addr, server.pid, sc)
                    .and_then(|mut ses| ses.warm_up(warm).map(|()| ses));
                match opened {
                    Ok(ses) => live.push((kind, server, ses)),
                    Err(e) => {
                        report::print_run_error(round + 1, sc.name, kind.name(), &e.to_string())
                    }
                }
            }
            // The measured slices: contenders take turns, the order rotating slice by slice.
            let mut failed = vec![false; live.len()];
            for k in 0..slices {
                for j in 0..live.len() {
                    let i = (j + k) % live.len();
                    if failed[i] {
                        continue;
                    }
                    let (kind, _, ses) = &mut live[i];
                    let mut tries = 0;
                    loop {
                        match ses.measure(slice) {
                            Ok(sl)
                                if report::NOISY_OTHER_PCT < sl.other_cpu_pct()
                                    && tries < retries =>
                            {
                                ses.discard(&sl);
                                tries += 1;
                            }
                            Ok(sl) => {
                                ses.keep(&sl);
                                break;
                            }
                            Err(e) => {
                                report::print_run_error(
                                    round + 1,
                                    sc.name,
                                    kind.name(),
                                    &e.to_string(),
                                );
                                failed[i] = true;
                                break;
                            }
                        }
                    }
                }
            }
            for (i, (kind, server, ses)) in live.into_iter().enumerate() {
                drop(server);
                if failed[i] {
                    continue;
                }
                let m = ses.finish();
                report::print_run_row(round + 1, sc.name, kind.name(), &m);
                runs.push(Run { round, scen: si, kind, m });
            }
        }
    }

    println!("== medians over rounds");
    report::print_run_header();
    for (si, sc) in SCENARIOS.iter().enumerate() {
        for kind in ORDER {
            let ms: Vec<&Measurement> =
                runs.iter().filter(|r| r.scen == si && r.kind == kind).map(|r| &r.m).collect();
            if !ms.is_empty() {
                report::print_median_row(sc.name, kind.name(), &ms);
            }
        }
    }

    // Median over rounds of a per-round ratio f(a) / f(b).
    let ratio = |si: usize, a: Kind, b: Kind, f: fn(&Measurement) -> f64| {
        let per_round: Vec<f64> = (0..rounds)
            .filter_map(|round| {
                let find =
                    |k: Kind| runs.iter().find(|r| r.round == round && r.scen == si && r.kind == k);
                Some(f(&find(a)?.m) / f(&find(b)?.m))
            })
            .collect();
        median(&per_round)
    };

    println!(
        "== ratios: median over rounds of the per-round ratio (msgs/s: >1 = first is faster; cpu/msg: <1 = first is cheaper)"
    );
    println!(
        "{:<5} {:>10} {:>10} {:>10} {:>14} {:>14} {:>14}",
        "scen",
        "dap/tokio",
        "dap/mio",
        "mio/tokio",
        "cpu dap/tokio",
        "cpu dap/mio",
        "cpu mio/tokio"
    );
    let thr = Measurement::msgs_per_sec;
    let cpu = Measurement::server_ns_per_msg;
    let mut pairs = Vec::new();
    let mut extra = Vec::new();
    for (si, sc) in SCENARIOS.iter().enumerate() {
        let row = [
            ratio(si, Kind::Dap, Kind::Tokio, thr),
            ratio(si, Kind::Dap, Kind::Mio, thr),
            ratio(si, Kind::Mio, Kind::Tokio, thr),
            ratio(si, Kind::Dap, Kind::Tokio, cpu),
            ratio(si, Kind::Dap, Kind::Mio, cpu),
            ratio(si, Kind::Mio, Kind::Tokio, cpu),
        ];
        println!(
            "{:<5} {:>10} {:>10} {:>10} {:>14} {:>14} {:>14}",
            sc.name,
            fmt_ratio(row[0]),
            fmt_ratio(row[1]),
            fmt_ratio(row[2]),
            fmt_ratio(row[3]),
            fmt_ratio(row[4]),
            fmt_ratio(row[5])
        );
        let n = sc.name;
        pairs.push((format!("{n}_vs_tokio"), fmt_ratio(row[0])));
        // The five headline keys: big is only compared with tokio.
        if si < 2 {
            pairs.push((format!("{n}_vs_mio"), fmt_ratio(row[1])));
        } else {
            extra.push((format!("{n}_vs_mio"), fmt_ratio(row[1])));
        }
        extra.push((format!("{n}_cpu_vs_tokio"), fmt_ratio(row[3])));
        extra.push((format!("{n}_cpu_vs_mio"), fmt_ratio(row[4])));
        extra.push((format!("{n}_mio_vs_tokio"), fmt_ratio(row[2])));
    }
    let noisy = runs.iter().filter(|r| report::is_noisy(&r.m)).count();
    if noisy > 0 {
        println!(
            "NOTE: {noisy} of {} runs (flagged !) had other processes using more than {}% of a CPU on the benchmark CPUs: treat their figures with care",
            runs.len(),
            report::NOISY_OTHER_PCT
        );
    }
    extra.push(("noisy_runs".to_string(), noisy.to_string()));
    if dap.is_none() {
        println!("NOTE: dap was skipped (its echo example is not available): dap ratios are nan");
    }
    pairs.extend(extra);
    report::print_result_line(&pairs);
    Ok(pairs)
}
