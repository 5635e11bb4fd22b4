//! NewReno as RFC 9002 §7 specifies it for QUIC: slow start, congestion avoidance that
//! adds one datagram per window of acknowledged bytes, one reduction per recovery period,
//! and the minimum window after persistent congestion. The initial slow start is
//! HyStart++'s ([`super::hystart`]) unless the config turns it off.

use std::time::Instant;

use super::hystart::{HyStart, Phase, Step};
use super::{Controller, initial_window, minimum_window};
use crate::udp::rtt::RttEstimator;

/// NewReno's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NewRenoConfig {
    /// The window after a congestion event, as a fraction of the window before it
    /// (RFC 9002 `kLossReductionFactor`: 0.5).
    pub loss_reduction_factor: f64,
    /// Whether the initial slow start uses HyStart++ (RFC 9406) to end before a loss when
    /// the RTT rises (off). It cuts slow start's overshoot on a path the flow has to
    /// itself (a one-BDP bottleneck: 431 drops against 1,002), but a flow that joins a
    /// bottleneck another flow already fills sees that flow's queue as its own rising RTT,
    /// leaves slow start at a fraction of its share and, under CUBIC, takes tens of
    /// seconds to claim the rest (Jain's index over 20 s: 0.896 on, 0.987 off; see
    /// `two_flows_share_a_bottleneck_fairly`).
    pub hystart: bool,
}

impl Default for NewRenoConfig {
    fn default() -> Self {
        NewRenoConfig { loss_reduction_factor: 0.5, hystart: false }
    }
}

/// A NewReno controller.
#[derive(Clone, Debug)]
pub struct NewReno {
    config: NewRenoConfig,
    mss: u64,
    window: u64,
    ssthresh: u64,
    /// Packets sent before this were sent before the current recovery period began.
    recovery_start: Option<Instant>,
    /// Acknowledged bytes not yet turned into window growth in congestion avoidance.
    acked: u64,
    hystart: HyStart,
    /// The state just before the most recent reduction, to undo it if it proves spurious.
    undo: Option<Undo>,
}

/// NewReno's state before a congestion event, and which losses belong to the event.
#[derive(Clone, Copy, Debug)]
struct Undo {
    window: u64,
    ssthresh: u64,
    recovery_start: Option<Instant>,
    acked: u64,
    hystart: HyStart,
    /// The send time of the newest packet whose loss started the event.
    trigger: Instant,
    /// When the event began: its losses were all sent before.
    at: Instant,
}

impl NewReno {
    /// A controller in slow start with the initial window.
    pub fn new(config: NewRenoConfig, mss: u64) -> Self {
        NewReno {
            config,
            mss,
            window: initial_window(mss),
            ssthresh: u64::MAX,
            recovery_start: None,
            acked: 0,
            hystart: HyStart::new(),
            undo: None,
        }
    }

    fn in_recovery(&self, sent: Instant) -> bool {
        self.recovery_start.is_some_and(|r| sent <= r)
    }
}

impl Controller for NewReno {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        if app_limited || self.in_recovery(sent) {
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
        // One datagram per window of acknowledged bytes.
        self.acked += bytes;
        if self.acked >= self.window {
            self.acked -= self.window;
            self.window += self.mss;
        }
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, _: u64) {
        let before = Undo {
            window: self.window,
            ssthresh: self.ssthresh,
            recovery_start: self.recovery_start,
            acked: self.acked,
            hystart: self.hystart,
            trigger: sent,
            at: now,
        };
        self.hystart.on_congestion();
        if !self.in_recovery(sent) {
            self.undo = Some(before);
            self.recovery_start = Some(now);
            let reduced = (self.window as f64 * self.config.loss_reduction_factor) as u64;
            self.window = reduced.max(minimum_window(self.mss));
            self.ssthresh = self.window;
            self.acked = 0;
        }
        if persistent {
            // Persistent congestion is a long run of losses: not undone.
            self.undo = None;
            self.window = minimum_window(self.mss);
            self.acked = 0;
        }
    }

    fn forget_undo(&mut self) {
        self.undo = None;
    }

    /// Undoes the most recent reduction if the spurious loss belongs to it: sent no
    /// earlier than the packet whose loss started it, and before it began. The window,
    /// ssthresh and recovery period return to what they were, as RFC 9438 §4.9 describes
    /// for CUBIC (Linux's `tcp_undo_cwnd_reduction` does the same for Reno).
    fn on_spurious_congestion(&mut self, _now: Instant, sent: Instant) {
        let Some(u) = self.undo else { return };
        if sent < u.trigger || sent > u.at {
            return;
        }
        self.undo = None;
        self.window = self.window.max(u.window);
        self.ssthresh = u.ssthresh;
        self.recovery_start = u.recovery_start;
        self.acked = u.acked;
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
        "newreno"
    }
}
