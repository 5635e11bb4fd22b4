//! HyStart++ (RFC 9406): leaving slow start when the RTT starts to rise, before the
//! queue it is filling overflows.
//!
//! Classic slow start doubles the window each round until a loss, which on a path with a
//! deep buffer means the last round overshoots by up to a window's worth of drops.
//! HyStart++ watches the minimum RTT of each round instead (§4.2):
//!
//! - A *round* begins when the first packet sent after the previous round began is
//!   acknowledged. The engine gives the send time of each acknowledged packet, not
//!   packet numbers, so the round's start is marked by time: a round ends when a packet
//!   sent at or after its start is acknowledged (the RFC's `windowEnd` is "the next
//!   packet sent").
//! - Each ACK gives one RTT sample, the estimator's latest. Once a round has
//!   `N_RTT_SAMPLE` (8) samples and its minimum exceeds the previous round's by
//!   `clamp(last / 8, 4 ms, 16 ms)`, slow start ends and *Conservative Slow Start* (CSS)
//!   begins: growth is a quarter of slow start's (`CSS_GROWTH_DIVISOR` 4), with the
//!   round's minimum RTT as a baseline.
//! - In CSS, a round whose minimum RTT falls back below the baseline (after 8 samples)
//!   means the rise was not a queue building: slow start resumes. After `CSS_ROUNDS` (5)
//!   rounds in CSS (the one in which it began counts), congestion avoidance begins with
//!   `ssthresh = cwnd`.
//! - A loss in slow start or CSS is the controller's ordinary loss response; HyStart++ then
//!   has nothing more to do.
//!
//! `L`, the cap on growth per ACK, is infinite because this engine paces (§4.2). HyStart++
//! applies to the initial slow start only (§4.3): once `ssthresh` has been set by a loss,
//! slow start is the standard one.

use std::time::{Duration, Instant};

use crate::udp::rtt::RttEstimator;

/// RTT samples a round needs before its minimum is compared (`N_RTT_SAMPLE`).
pub const N_RTT_SAMPLE: u32 = 8;
/// The smallest RTT rise that ends slow start (`MIN_RTT_THRESH`).
pub const MIN_RTT_THRESH: Duration = Duration::from_millis(4);
/// The largest RTT rise needed to end slow start (`MAX_RTT_THRESH`).
pub const MAX_RTT_THRESH: Duration = Duration::from_millis(16);
/// The rise that ends slow start is the last round's minimum RTT over this
/// (`MIN_RTT_DIVISOR`), clamped to the two thresholds.
pub const MIN_RTT_DIVISOR: u32 = 8;
/// CSS grows by the acknowledged bytes over this (`CSS_GROWTH_DIVISOR`).
pub const CSS_GROWTH_DIVISOR: u64 = 4;
/// Rounds in CSS before congestion avoidance (`CSS_ROUNDS`).
pub const CSS_ROUNDS: u32 = 5;

/// Where HyStart++ is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Standard slow start, watching the RTT.
    SlowStart,
    /// Conservative slow start.
    Css {
        /// The minimum RTT of the round in which CSS began.
        baseline: Duration,
        /// Rounds that ended in CSS.
        rounds: u32,
    },
    /// Slow start is over (HyStart++ ended it or a loss did).
    Done,
}

/// What the controller does with one acknowledgement in slow start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Grow the window by this many bytes.
    Grow(u64),
    /// Enter congestion avoidance: `ssthresh = cwnd`, no growth from this ACK.
    EnterCongestionAvoidance,
}

/// The HyStart++ state of one controller.
#[derive(Clone, Copy, Debug)]
pub struct HyStart {
    phase: Phase,
    /// When the current round began (`None`: before the first ACK).
    round_start: Option<Instant>,
    last_round_min: Option<Duration>,
    current_round_min: Option<Duration>,
    samples: u32,
    /// The arrival time of the last ACK sampled: the controller hears of every packet an
    /// ACK acknowledges, with one RTT sample for all of them.
    last_sample_at: Option<Instant>,
}

impl Default for HyStart {
    fn default() -> Self {
        Self::new()
    }
}

impl HyStart {
    /// HyStart++ at the start of a connection.
    pub fn new() -> Self {
        HyStart {
            phase: Phase::SlowStart,
            round_start: None,
            last_round_min: None,
            current_round_min: None,
            samples: 0,
            last_sample_at: None,
        }
    }

    /// Where it is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether it is in conservative slow start.
    pub fn in_css(&self) -> bool {
        matches!(self.phase, Phase::Css { .. })
    }

    /// A congestion event (loss or ECN): the controller's normal response takes over.
    pub fn on_congestion(&mut self) {
        self.phase = Phase::Done;
    }

    /// `bytes` of a packet sent at `sent` were acknowledged at `now`, in slow start:
    /// what the window does.
    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, rtt: &RttEstimator) -> Step {
        if self.phase == Phase::Done {
            return Step::Grow(bytes);
        }
        if self.round_start.is_none_or(|start| sent >= start) {
            if let Phase::Css { rounds, .. } = &mut self.phase {
                *rounds += 1;
                if *rounds >= CSS_ROUNDS {
                    self.phase = Phase::Done;
                    return Step::EnterCongestionAvoidance;
                }
            }
            self.round_start = Some(now);
            self.last_round_min = self.current_round_min;
            self.current_round_min = None;
            self.samples = 0;
        }
        if rtt.has_sample() && self.last_sample_at != Some(now) {
            self.last_sample_at = Some(now);
            let latest = rtt.latest();
            self.current_round_min = Some(self.current_round_min.map_or(latest, |m| m.min(latest)));
            self.samples += 1;
            self.check();
        }
        match self.phase {
            Phase::Css { .. } => Step::Grow(bytes / CSS_GROWTH_DIVISOR),
            _ => Step::Grow(bytes),
        }
    }

    /// After a sample: the round's minimum against the last round's (slow start) or the
    /// baseline (CSS).
    fn check(&mut self) {
        if self.samples < N_RTT_SAMPLE {
            return;
        }
        let Some(current) = self.current_round_min else { return };
        match self.phase {
            Phase::SlowStart => {
                let Some(last) = self.last_round_min else { return };
                let thresh = (last / MIN_RTT_DIVISOR).clamp(MIN_RTT_THRESH, MAX_RTT_THRESH);
                if current >= last + thresh {
                    self.phase = Phase::Css { baseline: current, rounds: 0 };
                }
            }
            Phase::Css { baseline, .. } => {
                if current < baseline {
                    self.phase = Phase::SlowStart;
                }
            }
            Phase::Done => {}
        }
    }
}
