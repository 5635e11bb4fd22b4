//! CUBIC, RFC 9438: after a congestion event the window follows
//! `W_cubic(t) = C · (t − K)³ + W_max` (in datagrams, `t` in seconds since the event), a
//! concave climb back to the window where loss happened and a convex probe beyond it; in
//! its Reno-friendly region (small windows, short RTTs) it grows at least as fast as Reno
//! would, by `W_est`. Slow start and the minimum window are RFC 9002's; the initial slow
//! start is HyStart++'s ([`super::hystart`]) unless the config turns it off.

use std::time::Instant;

use super::hystart::{HyStart, Phase, Step};
use super::{Controller, initial_window, minimum_window};
use crate::udp::rtt::RttEstimator;

/// CUBIC's settings (RFC 9438 §4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CubicConfig {
    /// `C`: how fast the window grows, in datagrams per second³ (0.4).
    pub c: f64,
    /// `β_cubic`: the window after a congestion event as a fraction of the one before (0.7).
    pub beta: f64,
    /// Fast convergence: a flow that lost at a window below its last `W_max` lowers
    /// `W_max` further, releasing bandwidth to newer flows (on).
    pub fast_convergence: bool,
    /// Whether the initial slow start uses HyStart++ (RFC 9406) to end before a loss when
    /// the RTT rises (off). It cuts slow start's overshoot on a path the flow has to
    /// itself (a one-BDP bottleneck: 431 drops against 1,002), but a flow that joins a
    /// bottleneck another flow already fills sees that flow's queue as its own rising RTT,
    /// leaves slow start at a fraction of its share and, under CUBIC, takes tens of
    /// seconds to claim the rest (Jain's index over 20 s: 0.896 on, 0.987 off; see
    /// `two_flows_share_a_bottleneck_fairly`).
    pub hystart: bool,
}

impl Default for CubicConfig {
    fn default() -> Self {
        CubicConfig { c: 0.4, beta: 0.7, fast_convergence: true, hystart: false }
    }
}

/// The state since the last congestion event.
#[derive(Clone, Copy, Debug)]
struct Epoch {
    start: Instant,
    /// `W_max` in bytes.
    w_max: f64,
    /// `K` in seconds.
    k: f64,
    /// The Reno-friendly estimate, in bytes.
    w_est: f64,
    /// The window just before the event, in bytes (`cwnd_prior`).
    prior: f64,
}

/// A CUBIC controller.
#[derive(Clone, Debug)]
pub struct Cubic {
    config: CubicConfig,
    mss: u64,
    window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    epoch: Option<Epoch>,
    /// The last `W_max`, for fast convergence.
    last_w_max: f64,
    hystart: HyStart,
    /// The state just before the most recent reduction, to undo it if it proves spurious.
    undo: Option<Undo>,
    /// Since when the sender has been leaving the window unfilled (application- or
    /// flow-control-limited): that time does not count in the epoch's `t`.
    app_limited_since: Option<Instant>,
}

/// CUBIC's state before a congestion event (RFC 9438 §4.9: `cwnd`, `ssthresh`, `W_max`,
/// `K` and the epoch, here all in [`Epoch`]), and which losses belong to the event.
#[derive(Clone, Copy, Debug)]
struct Undo {
    window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    epoch: Option<Epoch>,
    last_w_max: f64,
    hystart: HyStart,
    /// The send time of the newest packet whose loss started the event.
    trigger: Instant,
    /// When the event began: its losses were all sent before.
    at: Instant,
}

impl Cubic {
    /// A controller in slow start with the initial window.
    pub fn new(config: CubicConfig, mss: u64) -> Self {
        Cubic {
            config,
            mss,
            window: initial_window(mss),
            ssthresh: u64::MAX,
            recovery_start: None,
            epoch: None,
            last_w_max: 0.0,
            hystart: HyStart::new(),
            undo: None,
            app_limited_since: None,
        }
    }

    fn in_recovery(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|r| sent <= r)
    }

    /// `W_cubic(t)` in bytes.
    fn w_cubic(&self, e: &Epoch, t: f64) -> f64 {
        let d = t - e.k;
        self.config.c * d * d * d * self.mss as f64 + e.w_max
    }

    /// `W_max` of the current epoch (tests).
    #[cfg(test)]
    pub(crate) fn w_max(&self) -> Option<u64> {
        self.epoch.map(|e| e.w_max as u64)
    }
}

impl Controller for Cubic {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        if app_limited {
            // RFC 9438 §5.8: the window does not grow, and the epoch's clock stops, so that
            // W_cubic does not leap ahead when the sender fills the window again.
            self.app_limited_since.get_or_insert(now);
            return;
        }
        if let Some(since) = self.app_limited_since.take()
            && let Some(e) = self.epoch.as_mut()
        {
            e.start += now.saturating_duration_since(since);
        }
        if self.in_recovery(sent) {
            return;
        }
        if self.window < self.ssthresh {
            // HyStart++ only in the initial slow start (RFC 9406 §4.3).
            if !self.config.hystart || self.ssthresh != u64::MAX {
                self.window += bytes;
                return;
            }
            match self.hystart.on_ack(now, sent, bytes, rtt) {
                Step::Grow(n) => self.window += n,
                Step::EnterCongestionAvoidance => self.ssthresh = self.window,
            }
            return;
        }
        let cwnd = self.window as f64;
        let mss = self.mss as f64;
        // Congestion avoidance without an epoch (slow start ended another way): start one
        // at the current window.
        let e = *self.epoch.get_or_insert(Epoch {
            start: now,
            w_max: cwnd,
            k: 0.0,
            w_est: cwnd,
            prior: cwnd,
        });
        let t = now.saturating_duration_since(e.start).as_secs_f64();
        // Reno-friendly estimate (§4.3): α_cubic per window of acknowledged bytes, 1 once
        // W_est has reached the window before the event.
        let alpha = if e.w_est >= e.prior {
            1.0
        } else {
            3.0 * (1.0 - self.config.beta) / (1.0 + self.config.beta)
        };
        let w_est = e.w_est + alpha * mss * bytes as f64 / cwnd;
        if let Some(ep) = self.epoch.as_mut() {
            ep.w_est = w_est;
        }
        let w_cubic_now = self.w_cubic(&e, t);
        let target = if w_cubic_now < w_est {
            // The Reno-friendly region.
            w_est
        } else {
            // §4.4–4.5: aim at W_cubic one RTT ahead, between cwnd and 1.5 · cwnd.
            self.w_cubic(&e, t + rtt.get().as_secs_f64()).clamp(cwnd, 1.5 * cwnd)
        };
        if target > cwnd {
            let grow = ((target - cwnd) * bytes as f64 / cwnd).max(0.0);
            self.window = (cwnd + grow) as u64;
        }
    }

    /// RFC 9438 grows the window per ACK by the bytes it acknowledges (§4.2's `segments
    /// acked`): one step for all of them, rather than one per packet. HyStart++ still sees
    /// each packet, as it samples their RTTs.
    fn on_ack_packets(
        &mut self,
        now: Instant,
        packets: &[(Instant, u64)],
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        if self.config.hystart && self.ssthresh == u64::MAX && self.window < self.ssthresh {
            return super::ack_each(self, now, packets, app_limited, rtt);
        }
        // Send times rise with packet numbers: the packets sent before recovery began (which
        // do not grow the window) come first.
        let bytes: u64 = packets.iter().filter(|(s, _)| !self.in_recovery(*s)).map(|p| p.1).sum();
        if let Some(&(newest, _)) = packets.last()
            && bytes > 0
        {
            self.on_ack(now, newest, bytes, app_limited, rtt);
        }
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, _: u64) {
        let before = Undo {
            window: self.window,
            ssthresh: self.ssthresh,
            recovery_start: self.recovery_start,
            epoch: self.epoch,
            last_w_max: self.last_w_max,
            hystart: self.hystart,
            trigger: sent,
            at: now,
        };
        self.hystart.on_congestion();
        if !self.in_recovery(sent) {
            self.undo = Some(before);
            self.recovery_start = Some(now);
            let cwnd = self.window as f64;
            let beta = self.config.beta;
            let w_max = if self.config.fast_convergence && cwnd < self.last_w_max {
                cwnd * (1.0 + beta) / 2.0
            } else {
                cwnd
            };
            self.last_w_max = w_max;
            let reduced = ((cwnd * beta) as u64).max(minimum_window(self.mss));
            self.window = reduced;
            self.ssthresh = reduced;
            let k = ((w_max - reduced as f64) / self.mss as f64 / self.config.c).max(0.0).cbrt();
            self.epoch = Some(Epoch { start: now, w_max, k, w_est: reduced as f64, prior: cwnd });
        }
        if persistent {
            // Persistent congestion is a long run of losses: not undone.
            self.undo = None;
            self.window = minimum_window(self.mss);
            self.epoch = None;
        }
    }

    fn forget_undo(&mut self) {
        self.undo = None;
    }

    /// RFC 9438 §4.9: a congestion event found spurious restores `cwnd`, `ssthresh`,
    /// `W_max`, `K` and the epoch saved just before it. The spurious loss belongs to the
    /// most recent event if it was sent no earlier than the packet whose loss started it
    /// and before it began; an older event's state is gone (one level of undo, as in
    /// Linux). The epoch's clock is not shifted: the time spent in the undone reduction
    /// counts as time in the restored epoch, so the cubic curve does not stall.
    fn on_spurious_congestion(&mut self, _now: Instant, sent: Instant) {
        let Some(u) = self.undo else { return };
        if sent < u.trigger || sent > u.at {
            return;
        }
        self.undo = None;
        self.window = self.window.max(u.window);
        self.ssthresh = u.ssthresh;
        self.recovery_start = u.recovery_start;
        self.epoch = u.epoch;
        self.last_w_max = u.last_w_max;
        self.hystart = u.hystart;
    }

    fn on_mss_update(&mut self, mss: u64) {
        self.mss = mss;
        self.window = self.window.max(minimum_window(mss));
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    fn hystart_phase(&self) -> Option<Phase> {
        self.config.hystart.then(|| self.hystart.phase())
    }

    fn name(&self) -> &'static str {
        "cubic"
    }
}

/// How long after a congestion event CUBIC's window is back at `W_max` (tests).
#[cfg(test)]
pub(crate) fn time_to_w_max(c: &Cubic) -> Option<std::time::Duration> {
    c.epoch.map(|e| std::time::Duration::from_secs_f64(e.k))
}
