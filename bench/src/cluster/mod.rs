//! `dap-bench cluster`: what it costs to spread a dap service over several dapd nodes on
//! one Redis (issue 19, dapd's `[cluster]`, `docs/PROTOCOL.md` §10.1).
//!
//! One invocation starts a `redis-server` of its own and three dapd nodes on it (see
//! [`nodes`]), all on fresh loopback ports, and measures, in rounds that alternate the
//! order of the cases:
//!
//! 1. **pub/sub** ([`pubsub`]): one publisher session and one subscriber session on
//!    channel `'P'`, both on node a (*one*), then the publisher on node a and the
//!    subscriber on node b (*cross*: every message goes a → Redis → b). Each payload
//!    carries its publish time (`Instant`s of this process, which runs both ends). Three
//!    ways to pace the publisher ([`Pace`]): *acks*, `--window` PUBLISH messages
//!    unacknowledged, as fast as the ACKs come back (an ACK does not wait for the relay
//!    nor the subscriber, so this overloads whatever is slower); *e2e*, `--window`
//!    messages not yet received by the subscriber (the most the path carries with no
//!    queue filling); *paced*, `--rate` messages a second, one at a time (latency with
//!    the nodes far from busy). Reported: messages per second the subscriber receives,
//!    p50/p99 publish-to-receipt latency, messages lost.
//! 2. **set-ups** ([`setups`]): `--clients` threads, each doing full set-ups back to back
//!    (`POST /enc_init`, `POST /stream_ctl`, `GET /stream/E` → `101`, one 64-byte echo)
//!    with every step on one node over one connection (*one*), every step on one node over
//!    three connections (*one-3conn*, the control), or each step on another node (*spread*:
//!    the key is fetched from Redis by the second node, the session taken from Redis by the
//!    third); and over UDP, enc_init and stream_ctl on one node and the first datagram to
//!    its UDP port (*udp-one*: the node claims the session in Redis before it attaches), or
//!    enc_init, stream_ctl and the first datagram each at another node (*udp-spread*: the
//!    third node takes the session from Redis for that datagram). Reported: set-ups per
//!    second and p50/p99 set-up latency.
//!
//! Ratios are cross / one and spread / one within a round, medians over rounds. Nothing
//! is pinned: the nodes, Redis and the clients share the machine's CPUs, and the busy time
//! of the two CPUs that none of them accounts for is reported (`oth %`). Then each node's
//! cluster counters (`/metrics`) and WARN lines, and whether a node died.

mod nodes;
mod pubsub;
mod setups;

use std::time::{Duration, Instant};

use dap_stream::pubsub::Topic;

use self::nodes::{Cluster, NODES};
use self::pubsub::Pace;
use self::setups::Spread;
use crate::attacks::subject::Metrics;
use crate::report::{NOISY_OTHER_PCT, fmt_num, fmt_ratio, median, print_result_line};
use crate::servers::{self, CLIENT_CPU, SERVER_CPU};
use crate::{DapSource, procstat, resolve_example};

/// Options of `dap-bench cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Measured window of each run, in seconds.
    #[arg(long, default_value_t = 2.5)]
    pub secs: f64,
    /// Load before each window, in seconds.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Rounds; each round runs every case once, in an order that rotates.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// pub/sub: PUBLISH messages the publisher keeps in flight (modes `acks`: not yet
    /// acknowledged; `e2e`: not yet received by the subscriber).
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// pub/sub: PUBLISH messages per second of mode `paced`.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// pub/sub: bytes of each payload (at least 16: sequence number and publish time).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// set-ups: client threads, each doing one set-up at a time.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Run only `pubsub` or `setups` (for profiling).
    #[arg(long, hide = true)]
    pub only: Option<String>,
}

/// CPU use over a measured window: both benchmark CPUs' busy time, and the CPU time of
/// the run's own processes (this one, the nodes, Redis).
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// The window.
    pub wall: Duration,
    /// Busy time of CPUs 0 and 1 together.
    pub busy: Duration,
    /// CPU time of the run's processes.
    pub ours: Duration,
}

impl Usage {
    /// Sleeps until `from`, samples, sleeps until `to`, samples again.
    ///
    /// # Errors
    /// `/proc/stat` could not be read.
    pub fn over(pids: &[u32], from: Instant, to: Instant) -> Result<Usage, String> {
        let sample = || -> Result<(Duration, Duration), String> {
            let busy = procstat::cpus_busy_time(&[SERVER_CPU, CLIENT_CPU])
                .map_err(|e| format!("/proc/stat: {e}"))?;
            let me = std::process::id();
            let ours = std::iter::once(&me)
                .chain(pids)
                .map(|&p| procstat::process_cpu_time(p).unwrap_or_default())
                .sum();
            Ok((busy, ours))
        };
        std::thread::sleep(from.saturating_duration_since(Instant::now()));
        let (b0, o0) = sample()?;
        let t0 = Instant::now();
        std::thread::sleep(to.saturating_duration_since(Instant::now()));
        let (b1, o1) = sample()?;
        Ok(Usage { wall: t0.elapsed(), busy: b1.saturating_sub(b0), ours: o1.saturating_sub(o0) })
    }

    /// Busy time of both CPUs, in % of one CPU (200 % is both saturated).
    pub fn cpu_pct(&self) -> f64 {
        100.0 * self.busy.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Busy time of both CPUs not used by the run's processes, in % of one CPU.
    pub fn other_pct(&self) -> f64 {
        100.0 * self.busy.saturating_sub(self.ours).as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Whether other processes took a noticeable share of the CPUs (`!` in the tables).
    pub fn noisy(&self) -> bool {
        self.other_pct() > NOISY_OTHER_PCT
    }
}

/// p50 and p99 (nearest rank) of durations in ns, in µs; NaN when there are none.
pub fn percentiles_us(v: &mut [u64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_unstable();
    let at = |p: f64| {
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1e3
    };
    (at(50.0), at(99.0))
}

/// The pub/sub cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PubSubCase {
    /// Publisher and subscriber on node a.
    One,
    /// Publisher on node a, subscriber on node b.
    Cross,
}

impl PubSubCase {
    fn name(self) -> &'static str {
        match self {
            PubSubCase::One => "one",
            PubSubCase::Cross => "cross",
        }
    }
}

/// Set-up cases, in round 1's order.
const SETUP_CASES: [Spread; 5] =
    [Spread::One, Spread::OneThreeConns, Spread::Across, Spread::OneUdp, Spread::AcrossUdp];

/// The options, clamped to sane bounds.
#[derive(Debug, Clone)]
struct Settings {
    secs: Duration,
    warmup: Duration,
    rounds: usize,
    window: usize,
    payload: usize,
    rate: u32,
    clients: usize,
}

impl Settings {
    fn from_args(a: &ClusterArgs) -> Settings {
        Settings {
            secs: Duration::from_secs_f64(a.secs.clamp(0.2, 60.0)),
            warmup: Duration::from_secs_f64(a.warmup.clamp(0.0, 10.0)),
            rounds: a.rounds.clamp(1, 20),
            window: a.window.clamp(1, 4096),
            payload: a.payload.clamp(16, 65536),
            rate: a.rate.clamp(1, 100_000),
            clients: a.clients.clamp(1, 256),
        }
    }

    /// The pub/sub modes, in the order each round runs them.
    fn paces(&self) -> [Pace; 3] {
        [Pace::Acks, Pace::Received, Pace::Rate(self.rate)]
    }
}

/// One pub/sub run's result.
type PubSubRow = (usize, Pace, PubSubCase, pubsub::Outcome);
/// One set-up run's result.
type SetupRow = (usize, Spread, setups::Outcome);

/// Runs every pub/sub mode and case `s.rounds` times (the cases' order alternates from
/// round to round), printing a row each; returns the rows and the runs that failed.
fn pubsub_rounds(s: &Settings, c: &Cluster, noisy: &mut usize) -> (Vec<PubSubRow>, usize) {
    let at = |i: usize| (c.nodes[i].addr(), c.nodes[i].node_key);
    println!(
        "== pub/sub: 1 publisher + 1 subscriber, channel 'P', {}-byte payloads; one = both on {a}, cross = publisher on {a}, subscriber on {b}",
        s.payload,
        a = c.nodes[0].name,
        b = c.nodes[1].name
    );
    println!(
        "   modes: acks = at most {w} PUBLISH unacknowledged (an ACK: queued here and handed to the relay); e2e = at most {w} published and not yet received by the subscriber; paced = {} PUBLISH/s, each acknowledged before the next",
        s.rate,
        w = s.window
    );
    println!(
        "   columns: msgs/s = messages received by the subscriber in the window, per second; p50/p99 = publish to receipt; lost = published, never received; ooo = out of order; slow = ERROR slow-subscriber; cpu % = both CPUs busy (200 = saturated); oth % = of that, not the run's processes (! above {NOISY_OTHER_PCT}%)"
    );
    println!(
        "{:<5} {:<5} {:<5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>4} {:>4} {:>6} {:>6}",
        "round",
        "mode",
        "case",
        "msgs/s",
        "p50 us",
        "p99 us",
        "published",
        "received",
        "lost",
        "ooo",
        "slow",
        "cpu %",
        "oth %"
    );
    let mut rows = Vec::new();
    let mut failed = 0;
    for round in 0..s.rounds {
        for pace in s.paces() {
            let order = if round % 2 == 0 {
                [PubSubCase::One, PubSubCase::Cross]
            } else {
                [PubSubCase::Cross, PubSubCase::One]
            };
            for case in order {
                let sub = if case == PubSubCase::One { 0 } else { 1 };
                let name = format!("bench-{}-{}-{}", round + 1, pace.name(), case.name());
                let plan = pubsub::Plan {
                    publisher: at(0),
                    subscriber: at(sub),
                    topic: Topic::new(name).expect("a short topic"),
                    pace,
                    window: s.window,
                    payload: s.payload,
                    warmup: s.warmup,
                    secs: s.secs,
                    pids: c.pids(),
                };
                let head = format!("{:<5} {:<5} {:<5}", round + 1, pace.name(), case.name());
                let o = match pubsub::run(&plan) {
                    Ok(o) => o,
                    Err(e) => {
                        failed += 1;
                        println!("{head} FAILED: {e}");
                        continue;
                    }
                };
                let flag = if o.usage.noisy() { " !" } else { "" };
                *noisy += usize::from(o.usage.noisy());
                println!(
                    "{head} {:>9.0} {:>9.1} {:>9.1} {:>9} {:>9} {:>7} {:>4} {:>4} {:>6.1} {:>6.1}{flag}",
                    o.msgs_per_s,
                    o.p50_us,
                    o.p99_us,
                    o.published,
                    o.received,
                    o.lost,
                    o.out_of_order,
                    o.slow_errors,
                    o.usage.cpu_pct(),
                    o.usage.other_pct(),
                );
                if o.acked != o.published || o.acks_dropped > 0 {
                    println!(
                        "      ACKs: {} of {} PUBLISH; their `dropped` counts sum to {}",
                        o.acked, o.published, o.acks_dropped
                    );
                }
                if let Some(e) = &o.first_error {
                    println!("      first error: {e}");
                }
                rows.push((round, pace, case, o));
            }
        }
    }
    (rows, failed)
}

/// Runs every set-up case `s.rounds` times (the order rotates from round to round),
/// printing a row each; returns the rows and the runs that failed.
fn setup_rounds(s: &Settings, c: &Cluster, noisy: &mut usize) -> (Vec<SetupRow>, usize) {
    println!(
        "== set-ups: {} client threads, one set-up at a time each: POST /enc_init + POST /stream_ctl + GET /stream/E -> 101 + one 64-byte echo, fresh connections; client i starts at node i mod {NODES}",
        s.clients
    );
    println!(
        "   one = every step on one node, one connection; one-3conn = every step on one node, a connection each; spread = enc_init on node i, stream_ctl on i+1, stream on i+2, a connection each; udp-one = enc_init and stream_ctl on node i (one connection), the first datagram to node i's UDP port; udp-spread = enc_init on node i, stream_ctl on i+1, the first datagram to i+2's UDP port"
    );
    println!(
        "{:<5} {:<10} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6}",
        "round", "case", "setups/s", "p50 us", "p99 us", "failed", "cpu %", "oth %"
    );
    let nodes: Vec<_> = c.nodes.iter().map(|n| (n.addr(), n.node_key)).collect();
    let mut rows = Vec::new();
    let mut failed = 0;
    for round in 0..s.rounds {
        for i in 0..SETUP_CASES.len() {
            let spread = SETUP_CASES[(i + round) % SETUP_CASES.len()];
            let plan = setups::Plan {
                nodes: nodes.clone(),
                spread,
                clients: s.clients,
                warmup: s.warmup,
                secs: s.secs,
                pids: c.pids(),
            };
            let o = match setups::run(&plan) {
                Ok(o) => o,
                Err(e) => {
                    failed += 1;
                    println!("{:<5} {:<10} FAILED: {e}", round + 1, spread.name());
                    continue;
                }
            };
            let flag = if o.usage.noisy() { " !" } else { "" };
            *noisy += usize::from(o.usage.noisy());
            println!(
                "{:<5} {:<10} {:>9.0} {:>9.1} {:>9.1} {:>7} {:>6.1} {:>6.1}{flag}",
                round + 1,
                spread.name(),
                o.per_s,
                o.p50_us,
                o.p99_us,
                o.failed,
                o.usage.cpu_pct(),
                o.usage.other_pct(),
            );
            if let Some(e) = &o.first_error {
                println!("      first failure: {e}");
            }
            rows.push((round, spread, o));
        }
    }
    (rows, failed)
}

/// Comma-separated ratios with 3 decimals, for the "(rounds: …)" lists.
fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ")
}

/// `dap-bench cluster`: starts the cluster, runs the rounds, prints the tables and the
/// `RESULT` line; returns its pairs.
pub fn run(args: &ClusterArgs, dapd: DapSource) -> std::io::Result<Vec<(String, String)>> {
    let s = Settings::from_args(args);
    let only = args.only.as_deref();
    let Some(bin) = resolve_example(dapd, servers::DAPD) else {
        return Err(std::io::Error::other("dapd is not available"));
    };
    // Many short connections (set-ups), and TIME_WAIT sockets by the thousand.
    let _ = procstat::raise_nofile_limit();
    let started = Instant::now();
    let mut cluster = Cluster::start(&bin).map_err(std::io::Error::other)?;
    println!(
        "== cluster: {NODES} dapd nodes ({} workers each, unpinned, UDP on, log level warn, enc.max_keys {}) on one redis-server, all on loopback; {} round(s), warm-up {} s, window {} s per run; nothing pinned: nodes, Redis and clients share the CPUs",
        nodes::THREADS,
        nodes::MAX_KEYS,
        s.rounds,
        s.warmup.as_secs_f64(),
        s.secs.as_secs_f64()
    );
    println!("   dapd {} (cluster up in {:.1} s)", bin.display(), started.elapsed().as_secs_f64());
    for n in &cluster.nodes {
        println!("   node {} at {} (pid {}), log {}", n.name, n.addr(), n.pid(), n.log().display());
    }
    let mut noisy = 0usize;
    let (ps, ps_failed) = if only.is_none_or(|o| o == "pubsub") {
        pubsub_rounds(&s, &cluster, &mut noisy)
    } else {
        (Vec::new(), 0)
    };
    let (su, su_failed) = if only.is_none_or(|o| o == "setups") {
        setup_rounds(&s, &cluster, &mut noisy)
    } else {
        (Vec::new(), 0)
    };

    // Medians over rounds, and per-round ratios' medians.
    let ps_med = |pace: Pace, case: PubSubCase, f: fn(&pubsub::Outcome) -> f64| {
        let v: Vec<f64> =
            ps.iter().filter(|r| r.1 == pace && r.2 == case).map(|r| f(&r.3)).collect();
        median(&v)
    };
    let ps_ratio = |pace: Pace, f: fn(&pubsub::Outcome) -> f64| -> Vec<f64> {
        (0..s.rounds)
            .filter_map(|r| {
                let find =
                    |c| ps.iter().find(|x| x.0 == r && x.1 == pace && x.2 == c).map(|x| f(&x.3));
                Some(find(PubSubCase::Cross)? / find(PubSubCase::One)?)
            })
            .collect()
    };
    let su_med = |case: Spread, f: fn(&setups::Outcome) -> f64| {
        median(&su.iter().filter(|r| r.1 == case).map(|r| f(&r.2)).collect::<Vec<_>>())
    };
    let su_ratio_to = |case: Spread, base: Spread, f: fn(&setups::Outcome) -> f64| {
        (0..s.rounds)
            .filter_map(|r| {
                let find = |c| su.iter().find(|x| x.0 == r && x.1 == c).map(|x| f(&x.2));
                Some(find(case)? / find(base)?)
            })
            .collect::<Vec<f64>>()
    };
    let su_ratio = |case: Spread, f: fn(&setups::Outcome) -> f64| su_ratio_to(case, Spread::One, f);
    let msgs = |o: &pubsub::Outcome| o.msgs_per_s;
    let p50 = |o: &pubsub::Outcome| o.p50_us;
    let p99 = |o: &pubsub::Outcome| o.p99_us;
    let lost = |o: &pubsub::Outcome| o.lost as f64;
    let rate = |o: &setups::Outcome| o.per_s;
    let sp50 = |o: &setups::Outcome| o.p50_us;
    let sp99 = |o: &setups::Outcome| o.p99_us;
    println!("== medians over rounds");
    for pace in s.paces() {
        for case in [PubSubCase::One, PubSubCase::Cross] {
            if ps.iter().any(|r| r.1 == pace && r.2 == case) {
                println!(
                    "pub/sub {:<5} {:<9} {:>9.0} msgs/s  p50 {:>9.1} us  p99 {:>9.1} us  lost {:.0}",
                    pace.name(),
                    case.name(),
                    ps_med(pace, case, msgs),
                    ps_med(pace, case, p50),
                    ps_med(pace, case, p99),
                    ps_med(pace, case, lost),
                );
            }
        }
    }
    for case in SETUP_CASES {
        if su.iter().any(|r| r.1 == case) {
            println!(
                "set-ups {:<15} {:>9.0} /s      p50 {:>9.1} us  p99 {:>9.1} us",
                case.name(),
                su_med(case, rate),
                su_med(case, sp50),
                su_med(case, sp99)
            );
        }
    }
    let mut pairs = vec![("bench".to_string(), "cluster".to_string())];
    let mut kv = |k: &str, v: String| pairs.push((k.to_string(), v));
    for pace in s.paces() {
        let (r_msgs, r_p50, r_p99) =
            (ps_ratio(pace, msgs), ps_ratio(pace, p50), ps_ratio(pace, p99));
        if ps.iter().any(|r| r.1 == pace) {
            println!(
                "pub/sub {} cross/one: msgs/s {} (rounds: {}); p50 {} ({}); p99 {} ({})",
                pace.name(),
                fmt_ratio(median(&r_msgs)),
                list(&r_msgs),
                fmt_ratio(median(&r_p50)),
                list(&r_p50),
                fmt_ratio(median(&r_p99)),
                list(&r_p99)
            );
        }
        // The acks mode's keys are the bare names; the others carry the mode's.
        let pre = match pace {
            Pace::Acks => String::new(),
            p => format!("{}_", p.name()),
        };
        let (one, cross) = (PubSubCase::One, PubSubCase::Cross);
        if pace != Pace::Rate(s.rate) {
            kv(&format!("{pre}pubsub_one_msgs"), fmt_num(ps_med(pace, one, msgs), 0));
            kv(&format!("{pre}pubsub_cross_msgs"), fmt_num(ps_med(pace, cross, msgs), 0));
            kv(&format!("{pre}pubsub_ratio"), fmt_ratio(median(&r_msgs)));
        }
        kv(&format!("{pre}p50_one_us"), fmt_num(ps_med(pace, one, p50), 1));
        kv(&format!("{pre}p99_one_us"), fmt_num(ps_med(pace, one, p99), 1));
        kv(&format!("{pre}p50_cross_us"), fmt_num(ps_med(pace, cross, p50), 1));
        kv(&format!("{pre}p99_cross_us"), fmt_num(ps_med(pace, cross, p99), 1));
        kv(&format!("{pre}p50_ratio"), fmt_ratio(median(&r_p50)));
        kv(&format!("{pre}p99_ratio"), fmt_ratio(median(&r_p99)));
        let lost_sum: u64 = ps.iter().filter(|r| r.1 == pace).map(|r| r.3.lost).sum();
        kv(&format!("{pre}pubsub_lost"), lost_sum.to_string());
    }
    let (r_spread, r_3conn) =
        (su_ratio(Spread::Across, rate), su_ratio(Spread::OneThreeConns, rate));
    let (r_sp50, r_sp99) = (su_ratio(Spread::Across, sp50), su_ratio(Spread::Across, sp99));
    if !su.is_empty() {
        println!(
            "set-ups spread/one: setups/s {} (rounds: {}); p50 {} ({}); p99 {} ({}); one-3conn/one: setups/s {} ({})",
            fmt_ratio(median(&r_spread)),
            list(&r_spread),
            fmt_ratio(median(&r_sp50)),
            list(&r_sp50),
            fmt_ratio(median(&r_sp99)),
            list(&r_sp99),
            fmt_ratio(median(&r_3conn)),
            list(&r_3conn)
        );
    }
    kv("setup_one_per_s", fmt_num(su_med(Spread::One, rate), 0));
    kv("setup_one3conn_per_s", fmt_num(su_med(Spread::OneThreeConns, rate), 0));
    kv("setup_spread_per_s", fmt_num(su_med(Spread::Across, rate), 0));
    kv("setup_ratio", fmt_ratio(median(&r_spread)));
    kv("setup_3conn_ratio", fmt_ratio(median(&r_3conn)));
    kv("setup_p50_one_us", fmt_num(su_med(Spread::One, sp50), 0));
    kv("setup_p99_one_us", fmt_num(su_med(Spread::One, sp99), 0));
    kv("setup_p50_spread_us", fmt_num(su_med(Spread::Across, sp50), 0));
    kv("setup_p99_spread_us", fmt_num(su_med(Spread::Across, sp99), 0));
    kv("setup_p99_ratio", fmt_ratio(median(&r_sp99)));
    let r_udp = su_ratio_to(Spread::AcrossUdp, Spread::OneUdp, rate);
    let r_udp_p50 = su_ratio_to(Spread::AcrossUdp, Spread::OneUdp, sp50);
    if !su.is_empty() {
        println!(
            "udp set-ups spread/one: setups/s {} (rounds: {}); p50 {} ({})",
            fmt_ratio(median(&r_udp)),
            list(&r_udp),
            fmt_ratio(median(&r_udp_p50)),
            list(&r_udp_p50)
        );
    }
    kv("setup_udp_one_per_s", fmt_num(su_med(Spread::OneUdp, rate), 0));
    kv("setup_udp_spread_per_s", fmt_num(su_med(Spread::AcrossUdp, rate), 0));
    kv("setup_udp_ratio", fmt_ratio(median(&r_udp)));
    kv("setup_udp_p50_one_us", fmt_num(su_med(Spread::OneUdp, sp50), 0));
    kv("setup_udp_p50_spread_us", fmt_num(su_med(Spread::AcrossUdp, sp50), 0));
    kv("setup_udp_p99_spread_us", fmt_num(su_med(Spread::AcrossUdp, sp99), 0));
    let setup_failed: u64 = su.iter().map(|r| r.2.failed).sum();
    kv("setup_failed", setup_failed.to_string());
    kv("pubsub_slow", ps.iter().map(|r| r.3.slow_errors).sum::<u64>().to_string());
    kv("failed_runs", (ps_failed + su_failed).to_string());

    // What the nodes counted, and whether any of them died.
    println!("== the nodes' counters (/metrics, whole run)");
    let mut totals = NodeTotals::default();
    for n in cluster.nodes.iter_mut() {
        if let Some(st) = n.exited() {
            totals.exited += 1;
            println!("node {}: EXITED ({st}); see {}", n.name, n.log().display());
            continue;
        }
        match Metrics::fetch(n.addr()) {
            Ok(m) => totals.add(n.name, &m),
            Err(e) => println!("node {}: /metrics: {e}", n.name),
        }
        let warns = std::fs::read_to_string(n.log())
            .map(|t| t.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count())
            .unwrap_or(0);
        totals.warn_lines += warns;
    }
    println!("warn/error log lines, all nodes: {}", totals.warn_lines);
    drop(cluster);
    println!("total: {:.0} s", started.elapsed().as_secs_f64());
    kv("relay_dropped", fmt_num(totals.relay_dropped, 0));
    kv("redis_errors", fmt_num(totals.redis_errors, 0));
    kv("warn_lines", totals.warn_lines.to_string());
    kv("nodes_exited", totals.exited.to_string());
    kv("noisy_runs", noisy.to_string());
    print_result_line(&pairs);
    Ok(pairs)
}

/// The nodes' counters that say whether the cluster did what it promises, summed.
#[derive(Debug, Default)]
struct NodeTotals {
    relay_dropped: f64,
    redis_errors: f64,
    warn_lines: usize,
    exited: usize,
}

impl NodeTotals {
    /// Prints one node's line and adds what matters to the totals.
    fn add(&mut self, name: &str, m: &Metrics) {
        let get = |family: &str, labels: &[&str]| m.sum(family, labels).unwrap_or(f64::NAN);
        let relay = |dir: &str| get("dap_cluster_relay_total", &[&format!("dir=\"{dir}\"")]);
        let keys = |op: &str| get("dap_cluster_keys_total", &[&format!("op=\"{op}\"")]);
        let sess = |op: &str| get("dap_cluster_sessions_total", &[&format!("op=\"{op}\"")]);
        let errors = get("dap_cluster_redis_errors_total", &[]);
        println!(
            "node {name}: relay out {:.0} in {:.0} dropped {:.0}; redis errors {:.0}; keys published {:.0} fetched {:.0} missed {:.0}; sessions published {:.0} taken {:.0} missed {:.0}; replays {:.0}; pubsub published {:.0} delivered {:.0} slow-dropped {:.0}",
            relay("out"),
            relay("in"),
            relay("dropped"),
            errors,
            keys("published"),
            keys("fetched"),
            keys("missed"),
            sess("published"),
            sess("taken"),
            sess("missed"),
            get("dap_cluster_replays_total", &[]),
            get("dap_pubsub_published_total", &[]),
            get("dap_pubsub_delivered_total", &[]),
            get("dap_pubsub_slow_dropped_total", &[]),
        );
        self.relay_dropped += relay("dropped");
        self.redis_errors += errors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentiles_us(&mut v), (50.0, 99.0));
        let (a, b) = percentiles_us(&mut []);
        assert!(a.is_nan() && b.is_nan());
        assert_eq!(percentiles_us(&mut [3000]), (3.0, 3.0));
    }
}
