//! Congestion control, sans-IO: a [`Controller`] trait and one file per algorithm,
//! [`NewReno`] (RFC 9002 §7) and [`Cubic`] (RFC 9438, with its Reno-friendly region). The
//! engine reports what happens to its packets; the controller answers with a window in
//! bytes, which bounds the bytes in flight. Windows are in bytes and `mss` is the current
//! maximum datagram payload the engine sends.
//!
//! Either can leave its initial slow start with HyStart++ (RFC 9406, [`hystart`]), turned
//! on by `hystart: true` in its config: when the minimum RTT of a round rises by more than
//! `clamp(min_rtt / 8, 4 ms, 16 ms)` over the last round's, growth drops to a quarter
//! (conservative slow start) for up to five rounds, and then congestion avoidance begins
//! without a loss; if the RTT falls back, slow start resumes. It is off by default, for
//! the fairness it costs a flow joining a busy bottleneck (see `CubicConfig::hystart`):
//! classic slow start runs to the first loss.

mod cubic;
pub mod hystart;
mod new_reno;

use std::time::Instant;

pub use cubic::{Cubic, CubicConfig};
pub use new_reno::{NewReno, NewRenoConfig};

use super::rtt::RttEstimator;

/// [`Controller::on_ack`] for each packet one ACK acknowledged (the default of
/// [`Controller::on_ack_packets`]).
pub fn ack_each<C: Controller + ?Sized>(
    c: &mut C,
    now: Instant,
    packets: &[(Instant, u64)],
    app_limited: bool,
    rtt: &RttEstimator,
) {
    for &(sent, bytes) in packets {
        c.on_ack(now, sent, bytes, app_limited, rtt);
    }
}

/// What the engine tells a congestion controller, and the window it answers with.
pub trait Controller: std::fmt::Debug + Send {
    /// Bytes of a newly acknowledged packet sent at `sent` were acknowledged at `now`.
    /// `app_limited`: the sender had less to send than the window allowed, so the window
    /// was not what limited it (and should not grow from this).
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    );

    /// The packets one ACK newly acknowledged, oldest first, as (sent, bytes). The default
    /// hands each to [`on_ack`](Self::on_ack); a controller whose growth is defined per
    /// ACK rather than per packet takes them at once.
    fn on_ack_packets(
        &mut self,
        now: Instant,
        packets: &[(Instant, u64)],
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        ack_each(self, now, packets, app_limited, rtt);
    }

    /// Packets sent at or before `sent` were declared lost at `now` (one call per loss
    /// event, with the send time of the newest lost packet). `persistent`: the losses span
    /// more than the persistent-congestion duration (RFC 9002 §7.6).
    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        persistent: bool,
        lost_bytes: u64,
    );

    /// ECN reported congestion (CE marks grew) for a packet sent at `sent`: a congestion
    /// event without loss. A CE mark is congestion the network saw, never a reordering:
    /// the reduction stands (and confirms one under way), so nothing is left to undo.
    fn on_ecn_ce(&mut self, now: Instant, sent: Instant) {
        self.on_congestion_event(now, sent, false, 0);
        self.forget_undo();
    }

    /// Drops the state saved to undo the last reduction (it is known to be real).
    fn forget_undo(&mut self) {}

    /// A packet sent at `sent`, declared lost at some earlier point, was acknowledged at
    /// `now` after all (loss recovery's spurious-loss detection; `sent` is the newest such
    /// packet an ACK revealed). A controller may undo the reduction of the congestion
    /// event that loss belonged to (RFC 9438 §4.9); by default it does nothing.
    ///
    /// The engine passes `sent` (beyond the `now` an undo needs) because only the send
    /// time tells to which congestion event a loss belonged.
    fn on_spurious_congestion(&mut self, now: Instant, sent: Instant) {
        let _ = (now, sent);
    }

    /// The path's datagram size changed (path MTU discovery).
    fn on_mss_update(&mut self, mss: u64);

    /// The congestion window: the bytes that may be in flight.
    fn window(&self) -> u64;

    /// Whether the controller is in slow start (conservative slow start included).
    fn in_slow_start(&self) -> bool;

    /// Where HyStart++ is, for metrics and tests (`None`: the controller does not use it).
    fn hystart_phase(&self) -> Option<hystart::Phase> {
        None
    }

    /// The name, for metrics.
    fn name(&self) -> &'static str;
}

/// Which controller a connection runs, and its settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ControllerConfig {
    /// NewReno.
    NewReno(NewRenoConfig),
    /// CUBIC (the default).
    Cubic(CubicConfig),
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig::Cubic(CubicConfig::default())
    }
}

impl ControllerConfig {
    /// A controller for a new connection whose datagrams carry `mss` bytes.
    pub fn build(&self, mss: u64) -> Box<dyn Controller> {
        match self {
            ControllerConfig::NewReno(c) => Box::new(NewReno::new(*c, mss)),
            ControllerConfig::Cubic(c) => Box::new(Cubic::new(*c, mss)),
        }
    }

    /// The controller named `name` (`newreno` or `cubic`) with default settings.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "newreno" => Some(ControllerConfig::NewReno(NewRenoConfig::default())),
            "cubic" => Some(ControllerConfig::Cubic(CubicConfig::default())),
            _ => None,
        }
    }
}

/// RFC 9002 §7.2: the initial window, `min(10 · mss, max(14,720, 2 · mss))`.
pub fn initial_window(mss: u64) -> u64 {
    (10 * mss).min((2 * mss).max(14_720))
}

/// RFC 9002 §7.2: the minimum window, `2 · mss`.
pub fn minimum_window(mss: u64) -> u64 {
    2 * mss
}

#[cfg(test)]
mod tests;
