//! `dap-bench udp-loss`: the throughput of one bulk transfer through a lossy link, dap's UDP
//! transport against quinn 0.11, at several loss rates.
//!
//! Each run is `dap-bench udp`'s bulk run (one connection, one channel or unidirectional
//! stream, client → server, 64 KiB writes, AES-256-GCM, 1,452-byte datagrams, server on
//! CPU 0 and client on CPU 1) with a [`Relay`](crate::relay::Relay) between the two ends
//! that drops `--loss` % of the datagrams in each direction, each datagram independently
//! (a seeded PRNG per direction; the seed is `--seed` plus the round, the same for both
//! contenders of a round). Data and acknowledgements are thinned alike. Nothing else is
//! impaired: no delay beyond the relay's own hop, no reordering, no rate limit.
//!
//! Before the table, the relay alone is measured (a blast through it at 0 % loss, see
//! [`crate::relay::measure_alone`]), so that a reader can check it was not the bottleneck:
//! the 0 % rows must stay well below that figure.
//!
//! Per loss rate the contenders alternate their order over the rounds; each ratio is
//! dap / quinn within a round, and the reported one is the median over rounds. Each row
//! also shows the share of datagrams the relay actually dropped (both directions) and the
//! kernel's receive-buffer drops over the run (any UDP socket: `RcvbufErrors` of
//! `/proc/net/snmp`), which should be 0: a drop there is loss nobody asked for.

use std::io;

use crate::bulk::Window;
use crate::procstat;
use crate::relay::{self, Loss};
use crate::report::{NOISY_OTHER_PCT, fmt_num, fmt_ratio, median, print_result_line};
use crate::servers::{CLIENT_CPU, SERVER_CPU};
use crate::tls::{Cert, CertKind, Cipher};
use crate::udp::{BulkRun, run_dap, run_quinn};

/// Options of `dap-bench udp-loss`.
#[derive(Debug, Clone, clap::Args)]
pub struct UdpLossArgs {
    /// Measured window per run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Rounds; contenders alternate across rounds and ratios are medians over rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Warm-up after the connection is up, before the window, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Loss rates to run, in % of datagrams dropped in each direction.
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 1.0, 5.0, 10.0])]
    pub loss: Vec<f64>,
    /// Application message (write) size in bytes, the same for both contenders.
    #[arg(long, default_value_t = 64 * 1024)]
    pub msg: usize,
    /// Seed of the relay's drop pattern (plus the round number).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Run only this contender, `dap-udp` or `quinn` (for profiling).
    #[arg(long, hide = true)]
    pub only: Option<String>,
    /// Skip the measurement of the relay alone.
    #[arg(long, hide = true)]
    pub no_relay_check: bool,
}

/// The cipher of every run.
const CIPHER: Cipher = Cipher::Aes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Dap,
    Quinn,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Dap => "dap-udp",
            Who::Quinn => "quinn",
        }
    }
}

/// A loss rate as a `RESULT` key part: `5` for 5 %, `0_5` for 0.5 %.
fn loss_key(pct: f64) -> String {
    if pct.fract() == 0.0 { format!("{}", pct as u64) } else { format!("{pct}").replace('.', "_") }
}

fn print_row(round: usize, pct: f64, who: Who, run: &BulkRun, kernel_drops: Option<u64>) {
    let w: &Window = &run.window;
    let flag = if w.other_pct() > NOISY_OTHER_PCT { " !" } else { "" };
    let dropped = run.relay.map_or(f64::NAN, |r| r.dropped_pct());
    let failed = run.relay.map_or(0, |r| r.send_failed);
    println!(
        "{:<5} {:>6} {:<8} {:>9.1} {:>7.1} {:>7.1} {:>6.1} {:>8.2} {:>7} {:>7}{flag}",
        round,
        pct,
        who.name(),
        w.mb_per_s(),
        w.pct(w.busy[0]),
        w.pct(w.busy[1]),
        w.other_pct(),
        dropped,
        failed,
        kernel_drops.map_or("?".to_string(), |k| k.to_string()),
    );
}

/// `dap-bench udp-loss`: prints the tables and the `RESULT` line; returns its pairs.
pub fn run(args: &UdpLossArgs) -> io::Result<Vec<(String, String)>> {
    let secs = args.secs.clamp(0.2, 600.0);
    let warmup = args.warmup.clamp(0.0, 60.0);
    let rounds = args.rounds.clamp(1, 50);
    let msg = args.msg.clamp(1, 16 << 20);
    let levels: Vec<f64> = args.loss.iter().map(|l| l.clamp(0.0, 100.0)).collect();
    let cert = Cert::generate(CertKind::Ed25519)?;
    let pinned = procstat::can_pin_two_cpus();
    println!(
        "== udp-loss: bulk client -> server through a relay dropping a share of datagrams each way, AES-256-GCM, 1,452-byte datagrams, {msg}-byte writes, warm-up {warmup} s, window {secs} s, {rounds} round(s); server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}, relay unpinned{}",
        if pinned { "" } else { " (NOTHING pinned)" }
    );
    let mut pairs = Vec::new();
    let mut relay_alone = f64::NAN;
    if !args.no_relay_check {
        match relay::measure_alone(warmup.min(0.5), secs) {
            Ok((w, st)) => {
                relay_alone = w.mb_per_s();
                println!(
                    "relay alone (blast from CPU {CLIENT_CPU} through the relay to a sink on CPU {SERVER_CPU}, 0 % loss): {:.1} MB/s, {:.2} M datagrams/s at the sink; relay send failures {}",
                    w.mb_per_s(),
                    w.mb_per_s() / 1452.0,
                    st.send_failed
                );
            }
            Err(e) => println!("relay alone: FAILED: {e}"),
        }
    }
    println!(
        "   columns: MB/s = application bytes received per second (10^6); cpu0/cpu1 % = busy time of CPU {SERVER_CPU} / CPU {CLIENT_CPU} (the relay runs on either); oth % = busy time on both CPUs not used by this process; drop % = datagrams the relay dropped (both ways); sendf = datagrams the relay could not send; kern = datagrams the kernel dropped on full receive buffers (any UDP socket)"
    );
    println!(
        "{:<5} {:>6} {:<8} {:>9} {:>7} {:>7} {:>6} {:>8} {:>7} {:>7}",
        "round", "loss %", "who", "MB/s", "cpu0 %", "cpu1 %", "oth %", "drop %", "sendf", "kern"
    );
    let mut summary = Vec::new();
    for &pct in &levels {
        let (mut dap, mut quinn, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=rounds {
            let order =
                if round % 2 == 1 { [Who::Dap, Who::Quinn] } else { [Who::Quinn, Who::Dap] };
            let loss = Loss { fraction: pct / 100.0, seed: args.seed.wrapping_add(round as u64) };
            let mut got = [f64::NAN; 2];
            for who in order {
                if args.only.as_deref().is_some_and(|o| o != who.name()) {
                    continue;
                }
                let k0 = relay::udp_rcvbuf_errors();
                let res = match who {
                    Who::Dap => run_dap(CIPHER, msg, warmup, secs, Some(loss)),
                    Who::Quinn => run_quinn(CIPHER, &cert, msg, warmup, secs, Some(loss)),
                };
                let kernel = relay::udp_rcvbuf_errors().zip(k0).map(|(a, b)| a.saturating_sub(b));
                match res {
                    Ok(run) => {
                        print_row(round, pct, who, &run, kernel);
                        got[who as usize] = run.window.mb_per_s();
                    }
                    Err(e) => println!("{round:<5} {pct:>6} {:<8} FAILED: {e}", who.name()),
                }
            }
            dap.push(got[0]);
            quinn.push(got[1]);
            ratio.push(got[0] / got[1]);
        }
        let key = loss_key(pct);
        pairs.push((format!("udp_loss{key}_mbs"), fmt_num(median(&dap), 1)));
        pairs.push((format!("quinn_loss{key}_mbs"), fmt_num(median(&quinn), 1)));
        pairs.push((format!("ratio_loss{key}"), fmt_ratio(median(&ratio))));
        summary.push((pct, median(&dap), median(&quinn), median(&ratio), ratio));
    }
    println!("== medians over rounds");
    println!("{:>6} {:<8} {:>9} {:>8}   rounds", "loss %", "who", "MB/s", "ratio");
    for (pct, d, q, r, rs) in summary {
        let rs: Vec<String> = rs.iter().map(|x| fmt_ratio(*x)).collect();
        println!("{pct:>6} {:<8} {:>9} {:>8}", "dap-udp", fmt_num(d, 1), fmt_ratio(r));
        println!("{pct:>6} {:<8} {:>9} {:>8}   {}", "quinn", fmt_num(q, 1), "", rs.join(", "));
    }
    pairs.push(("relay_alone_mbs".to_string(), fmt_num(relay_alone, 1)));
    print_result_line(&pairs);
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::loss_key;

    #[test]
    fn loss_keys() {
        assert_eq!(loss_key(0.0), "0");
        assert_eq!(loss_key(10.0), "10");
        assert_eq!(loss_key(0.5), "0_5");
    }
}
