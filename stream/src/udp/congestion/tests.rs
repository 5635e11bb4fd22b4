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
