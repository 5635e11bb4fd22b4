//! Round-trip time estimation, RFC 9002 §5, sans-IO.
//!
//! `min_rtt` is the smallest sample; `smoothed` and `var` are the exponentially weighted
//! mean and deviation of samples adjusted for the peer's acknowledgement delay. The delay is
//! capped at the peer's `max_ack_delay` and subtracted only where RFC 9002 §5.3 allows it:
//! never below `min_rtt`. Keys come from stream_ctl, so a connection is "confirmed" from
//! its first packet and the cap always applies.

use std::time::Duration;

/// Timer granularity (RFC 9002 `kGranularity`): 1 ms.
pub const GRANULARITY: Duration = Duration::from_millis(1);
/// The RTT assumed before any sample (RFC 9002 `kInitialRtt`): 333 ms.
pub const INITIAL_RTT: Duration = Duration::from_millis(333);

/// One connection's RTT estimate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new(INITIAL_RTT)
    }
}

impl RttEstimator {
    /// An estimator that assumes `initial` until the first sample.
    pub fn new(initial: Duration) -> Self {
        RttEstimator { latest: initial, smoothed: None, var: initial / 2, min: initial }
    }

    /// Takes a sample: `rtt` from sending the largest newly acknowledged packet to receiving
    /// its ACK, `ack_delay` as the ACK reported it, `max_ack_delay` the peer's bound.
    pub fn update(&mut self, rtt: Duration, ack_delay: Duration, max_ack_delay: Duration) {
        self.latest = rtt;
        let Some(smoothed) = self.smoothed else {
            self.min = rtt;
            self.smoothed = Some(rtt);
            self.var = rtt / 2;
            return;
        };
        self.min = self.min.min(rtt);
        let ack_delay = ack_delay.min(max_ack_delay);
        let adjusted = if rtt >= self.min + ack_delay { rtt - ack_delay } else { rtt };
        let dev = smoothed.abs_diff(adjusted);
        self.var = (self.var * 3 + dev) / 4;
        self.smoothed = Some((smoothed * 7 + adjusted) / 8);
    }

    /// The smoothed RTT (the initial RTT before any sample).
    pub fn get(&self) -> Duration {
        self.smoothed.unwrap_or(self.latest)
    }

    /// The latest sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// The smallest sample.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The RTT deviation.
    pub fn var(&self) -> Duration {
        self.var
    }

    /// Whether a sample has been taken.
    pub fn has_sample(&self) -> bool {
        self.smoothed.is_some()
    }

    /// The probe timeout before backoff and without `max_ack_delay`:
    /// `smoothed + max(4 · var, granularity)` (RFC 9002 §6.2.1).
    pub fn pto_base(&self) -> Duration {
        self.get() + (self.var * 4).max(GRANULARITY)
    }

    /// The loss delay of the time threshold: `9/8 · max(smoothed, latest)`, at least the
    /// granularity (RFC 9002 §6.1.2).
    pub fn loss_delay(&self) -> Duration {
        (self.get().max(self.latest) * 9 / 8).max(GRANULARITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_sample_sets_everything() {
        let mut r = RttEstimator::default();
        assert_eq!(r.get(), INITIAL_RTT);
        assert_eq!(r.pto_base(), INITIAL_RTT + INITIAL_RTT / 2 * 4);
        r.update(100 * MS, 20 * MS, 25 * MS);
        assert_eq!(
            (r.get(), r.var(), r.min(), r.latest()),
            (100 * MS, 50 * MS, 100 * MS, 100 * MS)
        );
    }

    #[test]
    fn ack_delay_is_capped_and_never_taken_below_min_rtt() {
        let mut r = RttEstimator::default();
        r.update(100 * MS, Duration::ZERO, 25 * MS);
        // 130 ms with 20 ms of ack delay: adjusted to 110.
        r.update(130 * MS, 20 * MS, 25 * MS);
        assert_eq!(r.get(), (100 * MS * 7 + 110 * MS) / 8);
        // A claimed delay of 1 s is capped at max_ack_delay (25 ms): adjusted to 125.
        let mut a = RttEstimator::default();
        a.update(100 * MS, Duration::ZERO, 25 * MS);
        a.update(150 * MS, 1000 * MS, 25 * MS);
        assert_eq!(a.get(), (100 * MS * 7 + 125 * MS) / 8);
        // Subtracting would go below min_rtt (100): the sample is taken whole.
        let mut b = RttEstimator::default();
        b.update(100 * MS, Duration::ZERO, 25 * MS);
        b.update(110 * MS, 20 * MS, 25 * MS);
        assert_eq!(b.get(), (100 * MS * 7 + 110 * MS) / 8);
        assert_eq!(b.min(), 100 * MS);
    }

    #[test]
    fn loss_delay_and_pto_follow_rfc_9002() {
        let mut r = RttEstimator::default();
        r.update(80 * MS, Duration::ZERO, 25 * MS);
        assert_eq!(r.loss_delay(), 90 * MS);
        assert_eq!(r.pto_base(), 80 * MS + 4 * 40 * MS);
        let mut tiny = RttEstimator::default();
        tiny.update(Duration::from_micros(10), Duration::ZERO, 25 * MS);
        assert_eq!(tiny.loss_delay(), GRANULARITY);
    }
}
