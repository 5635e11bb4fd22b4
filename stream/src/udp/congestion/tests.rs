//! The controllers against RFC 9002 and RFC 9438, on a virtual clock.

use std::time::{Duration, Instant};

use super::cubic::time_to_w_max;
use super::*;

const MSS: u64 = 1200;
const RTT: Duration = Duration::from_millis(40);

fn rtt() -> RttEstimator {
    let mut r = RttEstimator::default();
    r.update(RTT, Duration::ZERO, Duration::from_millis(25));
    r
}

/// One round trip: a window's worth of datagrams sent at `now`, all acknowledged one RTT
/// later; returns the new `now`.
fn round(c: &mut dyn Controller, now: Instant) -> Instant {
    let sent = now;
    let at = now + RTT;
    let mut left = c.window();
    while left > 0 {
        let n = left.min(MSS);
        c.on_ack(at, sent, n, false, &rtt());
        left -= n;
    }
    at
}

#[test]
fn new_reno_slow_start_doubles_each_round_then_halves_on_loss() {
    let t0 = Instant::now();
    let mut c = NewReno::new(NewRenoConfig::default(), MSS);
    assert_eq!(c.window(), initial_window(MSS));
    assert_eq!(initial_window(MSS), 12_000);
    let now = round(&mut c, t0);
    assert_eq!(c.window(), 24_000);
    assert!(c.in_slow_start());
    c.on_congestion_event(now, now - RTT / 2, false, MSS);
    assert_eq!(c.window(), 12_000);
    assert!(!c.in_slow_start());
    // A loss of a packet sent before recovery began: no second reduction.
    c.on_congestion_event(now + RTT / 4, now - RTT / 4, false, MSS);
    assert_eq!(c.window(), 12_000);
    // Acks for packets sent before recovery began do not grow it either.
    c.on_ack(now + RTT / 2, now - RTT / 8, MSS, false, &rtt());
    assert_eq!(c.window(), 12_000);
    // Congestion avoidance: one datagram per window of acknowledged bytes.
    let after = round(&mut c, now + RTT);
    assert_eq!(c.window(), 12_000 + MSS);
    // Persistent congestion collapses to the minimum window.
    c.on_congestion_event(after + RTT, after + RTT / 2, true, 10 * MSS);
    assert_eq!(c.window(), minimum_window(MSS));
}

#[test]
fn app_limited_acks_grow_nothing() {
    let t0 = Instant::now();
    for mut c in [
        ControllerConfig::from_name("newreno").unwrap().build(MSS),
        ControllerConfig::default().build(MSS),
    ] {
        let w = c.window();
        c.on_ack(t0 + RTT, t0, 5 * MSS, true, &rtt());
        assert_eq!(c.window(), w, "{}", c.name());
    }
    assert!(ControllerConfig::from_name("bbr").is_none());
}

#[test]
fn time_spent_app_limited_does_not_count_in_cubics_epoch() {
    // Two CUBIC senders reduce at the same window; one then leaves it unfilled for 60 s.
    // Back to filling it, it must climb as the other does from the same point of its epoch,
    // not as if 60 s of the cubic had passed (which would send it to 1.5x per round).
    let t0 = Instant::now();
    let mut a = Cubic::new(CubicConfig::default(), MSS);
    let mut now = t0;
    while a.window() < 1000 * MSS {
        now = round(&mut a, now);
    }
    let mut b = a.clone();
    a.on_congestion_event(now, now, false, MSS);
    b.on_congestion_event(now, now, false, MSS);
    let reduced = a.window();
    let idle = Duration::from_secs(60);
    for k in 0..600u32 {
        let at = now + Duration::from_millis(100) * k;
        b.on_ack(at + RTT, at, MSS, true, &rtt());
    }
    assert_eq!(b.window(), reduced, "app-limited acknowledgments grow nothing");
    let a_next = round(&mut a, now + Duration::from_micros(1));
    let b_next = round(&mut b, now + idle + Duration::from_micros(1));
    assert!(b_next > a_next);
    let (wa, wb) = (a.window() as f64, b.window() as f64);
    assert!((wb - wa).abs() / wa < 0.01, "after the pause {wb}, without it {wa}");
    assert!(wb < reduced as f64 * 1.1, "grew {reduced} -> {wb} in one round");
}

#[test]
fn cubic_reduces_by_beta_and_climbs_back_to_w_max_around_k() {
    let t0 = Instant::now();
    let mut c = Cubic::new(CubicConfig::default(), MSS);
    // Slow start to a window of over 1,000 datagrams, then a loss there: large enough that
    // the cubic climb (300 datagrams in K ≈ 9 s) outruns the Reno-friendly estimate (about
    // 0.53 datagram per 40 ms round), so the window follows W_cubic.
    let mut now = t0;
    while c.window() < 1000 * MSS {
        now = round(&mut c, now);
    }
    let w_max = c.window();
    c.on_congestion_event(now, now, false, MSS);
    assert_eq!(c.window(), (w_max as f64 * 0.7) as u64);
    assert_eq!(c.w_max(), Some(w_max));
    // K = cbrt(W_max · (1 − β) / C) in datagrams and seconds.
    let k = time_to_w_max(&c).unwrap().as_secs_f64();
    let want = ((w_max as f64 / MSS as f64) * 0.3 / 0.4).cbrt();
    assert!((k - want).abs() < 0.01, "K = {k}, want {want}");
    // Round trips of 40 ms: concave up to W_max, within a few percent of it at K, convex
    // beyond; never more than 1.5× per round.
    let start = now;
    let mut at_k = None;
    let mut prev = c.window();
    while now.duration_since(start).as_secs_f64() < 2.0 * k {
        now = round(&mut c, now + Duration::from_micros(1));
        let w = c.window();
        assert!(w as f64 <= prev as f64 * 1.5 + 1.0, "grew too fast: {prev} -> {w}");
        assert!(w >= prev, "shrank without loss");
        prev = w;
        if at_k.is_none() && now.duration_since(start).as_secs_f64() >= k {
            at_k = Some(w);
        }
    }
    let at_k = at_k.unwrap() as f64;
    assert!((at_k - w_max as f64).abs() / (w_max as f64) < 0.06, "at K: {at_k} vs W_max {w_max}");
    assert!(c.window() > w_max, "convex probing beyond W_max");
}

#[test]
fn cubic_fast_convergence_lowers_w_max() {
    let t0 = Instant::now();
    let mut c = Cubic::new(CubicConfig::default(), MSS);
    let mut now = t0;
    while c.window() < 100 * MSS {
        now = round(&mut c, now);
    }
    let first = c.window();
    c.on_congestion_event(now, now, false, MSS);
    // Lose again soon, below the last W_max: W_max = cwnd · (1 + β) / 2.
    now = round(&mut c, now + Duration::from_micros(1));
    let cwnd = c.window();
    assert!(cwnd < first);
    c.on_congestion_event(now, now, false, MSS);
    assert_eq!(c.w_max(), Some((cwnd as f64 * 0.85) as u64));
}

#[test]
fn cubic_grows_at_least_like_reno_where_the_cubic_is_slower() {
    // A tiny C: W_cubic barely moves, so growth comes from the Reno-friendly W_est:
    // α_cubic = 3 · 0.3 / 1.7 ≈ 0.53 datagrams per round.
    let t0 = Instant::now();
    let config = CubicConfig { c: 1e-6, ..CubicConfig::default() };
    let mut c = Cubic::new(config, MSS);
    let mut now = round(&mut c, t0);
    c.on_congestion_event(now, now, false, MSS);
    let start = c.window();
    for _ in 0..20 {
        now = round(&mut c, now + Duration::from_micros(1));
    }
    // RFC 9438 §4.3: α_cubic per round until W_est reaches the window before the loss,
    // then 1 per round; the cubic term adds next to nothing with this C.
    let grown = (c.window() - start) as f64 / MSS as f64;
    let alpha = 3.0 * 0.3 / 1.7;
    assert!(grown >= alpha * 20.0 - 0.5 && grown <= 20.0, "{grown} datagrams in 20 rounds");
}

#[test]
fn persistent_congestion_collapses_cubic_too() {
    let t0 = Instant::now();
    let mut c = Cubic::new(CubicConfig::default(), MSS);
    let now = round(&mut c, t0);
    c.on_congestion_event(now, now, true, 10 * MSS);
    assert_eq!(c.window(), minimum_window(MSS));
    // Back in slow start up to ssthresh.
    assert!(c.in_slow_start());
    c.on_mss_update(1452);
    assert_eq!(c.window(), minimum_window(1452));
}

// HyStart++ (RFC 9406).

use super::hystart::{CSS_ROUNDS, N_RTT_SAMPLE, Phase};

/// One round trip with per-packet RTT samples, as a paced sender sees them: a window's
/// worth of datagrams sent 1 µs apart from `now`, each acknowledged `round_rtt` after it
/// was sent (one ACK each, so one sample each); returns the new `now`.
fn sampled_round(c: &mut dyn Controller, now: Instant, round_rtt: Duration) -> Instant {
    let mut est = rtt();
    let mut left = c.window();
    let mut sent = now;
    let mut at = now;
    while left > 0 {
        let n = left.min(MSS);
        at = sent + round_rtt;
        est.update(round_rtt, Duration::ZERO, Duration::from_millis(25));
        c.on_ack(at, sent, n, false, &est);
        left -= n;
        sent += Duration::from_micros(1);
    }
    at
}

/// NewReno and CUBIC, HyStart++ on or off as `hystart` says.
fn controllers(hystart: bool) -> [Box<dyn Controller>; 2] {
    [
        Box::new(NewReno::new(NewRenoConfig { hystart, ..NewRenoConfig::default() }, MSS)),
        Box::new(Cubic::new(CubicConfig { hystart, ..CubicConfig::default() }, MSS)),
    ]
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn with_a_constant_rtt_hystart_leaves_slow_start_doubling_until_the_loss() {
    for mut c in controllers(true) {
        let mut now = Instant::now();
        for _ in 0..10 {
            let w = c.window();
            now = sampled_round(c.as_mut(), now, RTT);
            assert_eq!(c.window(), 2 * w, "{}", c.name());
            assert_eq!(c.hystart_phase(), Some(Phase::SlowStart), "{}", c.name());
        }
        let w = c.window();
        c.on_congestion_event(now, now, false, MSS);
        assert!(c.window() < w && !c.in_slow_start(), "{}", c.name());
        assert_eq!(c.hystart_phase(), Some(Phase::Done), "{}", c.name());
    }
}

/// Four rounds at 40 ms, then 50 ms (a rise of 10 ms, over the 5 ms threshold of
/// 40 ms / 8): CSS from the fifth round's eighth sample, a quarter of the growth per round
/// after it, and congestion avoidance when the fifth round in CSS ends; no loss at all.
#[test]
fn a_rising_rtt_ends_slow_start_before_any_loss_through_five_rounds_of_css() {
    for mut c in controllers(true) {
        let name = c.name();
        let mut now = Instant::now();
        for _ in 0..4 {
            now = sampled_round(c.as_mut(), now, RTT);
        }
        let before = c.window();
        assert_eq!(before, 16 * initial_window(MSS), "{name}");
        now = sampled_round(c.as_mut(), now, 50 * MS);
        // Seven datagrams at full growth; from the eighth, whose sample showed the rise, a
        // quarter.
        let n = before / MSS;
        let full = N_RTT_SAMPLE as u64 - 1;
        let want = before + full * MSS + (n - full) * MSS / 4;
        assert_eq!(c.window(), want, "{name}");
        assert!(
            matches!(c.hystart_phase(), Some(Phase::Css { baseline, rounds: 0 }) if baseline == 50 * MS),
            "{name}: {:?}",
            c.hystart_phase()
        );
        // Four more rounds in CSS, each growing the window by a quarter.
        let mut growth = Vec::new();
        for _ in 1..CSS_ROUNDS {
            let w = c.window();
            now = sampled_round(c.as_mut(), now, 50 * MS);
            growth.push(c.window() as f64 / w as f64);
            assert!(c.in_slow_start(), "{name}");
        }
        eprintln!(
            "{name}: {want} bytes after the round CSS began in, growth per CSS round {growth:.3?}"
        );
        assert!(growth.iter().all(|g| (g - 1.25).abs() < 0.01), "{name}: {growth:?}");
        // The fifth CSS round ended with the first ACK of the next: congestion avoidance,
        // ssthresh at the window, without a loss.
        let w = c.window();
        sampled_round(c.as_mut(), now, 50 * MS);
        assert_eq!(c.hystart_phase(), Some(Phase::Done), "{name}");
        assert!(!c.in_slow_start(), "{name}");
        assert!(c.window() < w + w / 8, "{name}: congestion avoidance grows slowly");
        eprintln!("{name}: congestion avoidance from {w} bytes, {} after one round", c.window());
    }
}

#[test]
fn an_rtt_that_falls_back_during_css_resumes_slow_start() {
    for mut c in controllers(true) {
        let name = c.name();
        let mut now = Instant::now();
        for _ in 0..4 {
            now = sampled_round(c.as_mut(), now, RTT);
        }
        now = sampled_round(c.as_mut(), now, 50 * MS);
        assert!(matches!(c.hystart_phase(), Some(Phase::Css { .. })), "{name}");
        now = sampled_round(c.as_mut(), now, 50 * MS);
        // Back to 40 ms: below the 50 ms baseline once eight samples say so.
        now = sampled_round(c.as_mut(), now, RTT);
        assert_eq!(c.hystart_phase(), Some(Phase::SlowStart), "{name}");
        let w = c.window();
        sampled_round(c.as_mut(), now, RTT);
        assert_eq!(c.window(), 2 * w, "{name}: doubling again");
    }
}

#[test]
fn with_hystart_off_a_rising_rtt_changes_nothing() {
    for mut c in controllers(false) {
        let mut now = Instant::now();
        for i in 0..10u32 {
            let w = c.window();
            now = sampled_round(c.as_mut(), now, RTT + i * 10 * MS);
            assert_eq!(c.window(), 2 * w, "{}", c.name());
        }
        assert_eq!(c.hystart_phase(), None);
        assert!(c.in_slow_start());
    }
}

#[test]
fn hystart_applies_to_the_initial_slow_start_only() {
    for mut c in controllers(true) {
        let mut now = Instant::now();
        for _ in 0..3 {
            now = sampled_round(c.as_mut(), now, RTT);
        }
        // Persistent congestion: back to slow start below ssthresh, standard this time.
        c.on_congestion_event(now, now, true, 10 * MSS);
        now += RTT;
        for i in 0..2u32 {
            let w = c.window();
            now = sampled_round(c.as_mut(), now + MS, RTT + i * 20 * MS);
            assert_eq!(c.window(), 2 * w, "{}", c.name());
        }
        assert_eq!(c.hystart_phase(), Some(Phase::Done));
    }
}

// Undoing a spurious congestion event.

#[test]
fn new_reno_undoes_a_reduction_whose_loss_proves_spurious() {
    let t0 = Instant::now();
    let mut c = NewReno::new(NewRenoConfig::default(), MSS);
    let now = round(&mut c, t0);
    let before = c.window();
    let lost_sent = now - RTT / 2;
    c.on_congestion_event(now, lost_sent, false, MSS);
    assert_eq!(c.window(), before / 2);
    // A spurious loss of a packet older than the one that started the event belongs to
    // an earlier one: nothing changes.
    c.on_spurious_congestion(now + MS, lost_sent - MS);
    assert_eq!(c.window(), before / 2);
    // The packet whose loss started it arrives after all: window and slow start return.
    c.on_spurious_congestion(now + 2 * MS, lost_sent);
    assert_eq!(c.window(), before);
    assert!(c.in_slow_start());
    // Acks of packets sent during the undone recovery grow the window again.
    c.on_ack(now + 3 * MS, now + MS, MSS, false, &rtt());
    assert_eq!(c.window(), before + MSS);
    // Only once.
    c.on_spurious_congestion(now + 4 * MS, lost_sent);
    assert_eq!(c.window(), before + MSS);
}

#[test]
fn cubic_undoes_a_spurious_event_restoring_w_max_k_and_the_epoch() {
    let t0 = Instant::now();
    let mut c = Cubic::new(CubicConfig::default(), MSS);
    let mut now = t0;
    while c.window() < 100 * MSS {
        now = round(&mut c, now);
    }
    // A real loss: epoch 1.
    c.on_congestion_event(now, now, false, MSS);
    let (w_max, k) = (c.w_max(), time_to_w_max(&c));
    for _ in 0..5 {
        now = round(&mut c, now + MS);
    }
    let window = c.window();
    assert!(!c.in_slow_start());
    // A second event, from a loss that proves spurious.
    let lost_sent = now - RTT / 4;
    c.on_congestion_event(now, lost_sent, false, MSS);
    assert_eq!(c.window(), (window as f64 * 0.7) as u64);
    assert_ne!(c.w_max(), w_max);
    c.on_spurious_congestion(now + RTT / 2, lost_sent);
    assert_eq!(c.window(), window);
    assert_eq!((c.w_max(), time_to_w_max(&c)), (w_max, k));
    assert!(!c.in_slow_start());
    // Growth continues on the first epoch's curve.
    let after = round(&mut c, now + RTT);
    assert!(c.window() >= window);
    // A spurious loss from before the restored state is not undone again.
    c.on_spurious_congestion(after, lost_sent);
    assert_eq!((c.w_max(), time_to_w_max(&c)), (w_max, k));
}

#[test]
fn persistent_congestion_is_not_undone() {
    let t0 = Instant::now();
    for mut c in controllers(true) {
        let now = round(c.as_mut(), t0);
        c.on_congestion_event(now, now - MS, true, 10 * MSS);
        c.on_spurious_congestion(now + MS, now - MS);
        assert_eq!(c.window(), minimum_window(MSS), "{}", c.name());
    }
}

#[test]
fn a_ce_reduction_is_never_undone() {
    let t = Instant::now();
    let ms = std::time::Duration::from_millis(1);
    for name in ["newreno", "cubic"] {
        let mut cc = ControllerConfig::from_name(name).unwrap().build(1200);
        let before = cc.window();
        cc.on_ecn_ce(t + 100 * ms, t + 50 * ms);
        let reduced = cc.window();
        assert!(reduced < before, "{name}");
        // A loss of the same period later found spurious restores nothing.
        cc.on_spurious_congestion(t + 120 * ms, t + 60 * ms);
        assert_eq!(cc.window(), reduced, "{name}");
    }
}
