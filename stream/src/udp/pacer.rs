//! Pacing, sans-IO: spreads a congestion window over a round trip instead of sending it
//! at once, which would fill the bottleneck's queue (RFC 9002 §7.7).
//!
//! A token bucket fills at `1.25 · window / smoothed RTT` bytes per second. Its capacity is
//! about 1 ms of data at that rate, and never less than a batch of datagrams, so that each
//! wake-up releases a burst large enough to fill a GSO batch rather than one or two
//! packets; and it never exceeds the window. When the bucket is short, [`Pacer::delay`]
//! says when a whole batch will be available, not merely the next packet.

use std::time::{Duration, Instant};

/// The pacer's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PacerConfig {
    /// The time worth of data one burst may carry (1 ms).
    pub burst: Duration,
    /// The fewest datagrams a burst may carry (10: one GSO batch).
    pub min_burst_datagrams: u64,
    /// Rate = `gain` × window / RTT (1.25, RFC 9002 §7.7's N).
    pub gain: f64,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig { burst: Duration::from_millis(1), min_burst_datagrams: 10, gain: 1.25 }
    }
}

/// One connection's pacer.
#[derive(Clone, Debug)]
pub struct Pacer {
    config: PacerConfig,
    tokens: u64,
    last: Instant,
}

impl Pacer {
    /// A pacer with a full bucket.
    pub fn new(config: PacerConfig, now: Instant, window: u64, mss: u64, rtt: Duration) -> Self {
        let mut p = Pacer { config, tokens: 0, last: now };
        p.tokens = p.capacity(window, mss, rtt);
        p
    }

    fn rate(&self, window: u64, rtt: Duration) -> f64 {
        self.config.gain * window as f64 / rtt.as_secs_f64().max(1e-6)
    }

    /// The bucket's capacity in bytes for this window, datagram size and RTT.
    pub fn capacity(&self, window: u64, mss: u64, rtt: Duration) -> u64 {
        let by_time = (self.rate(window, rtt) * self.config.burst.as_secs_f64()) as u64;
        by_time.max(self.config.min_burst_datagrams * mss).min(window.max(mss))
    }

    fn refill(&mut self, now: Instant, window: u64, mss: u64, rtt: Duration) {
        let cap = self.capacity(window, mss, rtt);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let add = (self.rate(window, rtt) * elapsed) as u64;
        self.tokens = self.tokens.saturating_add(add).min(cap);
        self.last = now;
    }

    /// `None` when a datagram of `bytes` may leave now; otherwise when the next burst may.
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: u64,
        window: u64,
        mss: u64,
        rtt: Duration,
    ) -> Option<Instant> {
        // Within one batch `now` does not move: nothing to add since the last call.
        if now != self.last || self.tokens < bytes {
            self.refill(now, window, mss, rtt);
        }
        if self.tokens >= bytes {
            return None;
        }
        // Wait for a batch, not a single packet.
        let cap = self.capacity(window, mss, rtt);
        let want = bytes.max(self.config.min_burst_datagrams * mss).min(cap.max(bytes));
        let missing = want.saturating_sub(self.tokens) as f64;
        let wait = Duration::from_secs_f64(missing / self.rate(window, rtt));
        Some(now + wait.max(Duration::from_micros(1)))
    }

    /// The bytes that may leave now, as the last [`delay`](Self::delay) left the bucket
    /// (within one batch, where `now` does not move, nothing is added meanwhile).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// A datagram of `bytes` left.
    pub fn on_sent(&mut self, bytes: u64) {
        self.tokens = self.tokens.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSS: u64 = 1452;

    #[test]
    fn a_burst_of_a_batch_goes_at_once_then_the_rest_is_spread() {
        let t0 = Instant::now();
        // 100 Mbit/s at 40 ms: a window of 500 KB; rate 1.25 · 500 KB / 40 ms = 15.6 MB/s,
        // 15.6 KB per ms: about 10 datagrams per burst.
        let (window, rtt) = (500_000, Duration::from_millis(40));
        let mut p = Pacer::new(PacerConfig::default(), t0, window, MSS, rtt);
        let cap = p.capacity(window, MSS, rtt);
        assert_eq!(cap, 15_625);
        let mut sent = 0;
        while p.delay(t0, MSS, window, MSS, rtt).is_none() {
            p.on_sent(MSS);
            sent += MSS;
        }
        assert_eq!(sent, 10 * MSS, "one burst of ten datagrams");
        // The next wake-up is for a batch, about 1 ms later, not for one datagram.
        let at = p.delay(t0, MSS, window, MSS, rtt).unwrap();
        let wait = at - t0;
        assert!(
            wait >= Duration::from_micros(800) && wait <= Duration::from_micros(1000),
            "{wait:?}"
        );
        let mut again = 0;
        while p.delay(at, MSS, window, MSS, rtt).is_none() {
            p.on_sent(MSS);
            again += 1;
        }
        assert!(again >= 9, "{again} datagrams in the second burst");
    }

    #[test]
    fn over_a_round_trip_the_window_leaves_at_the_pacing_rate() {
        let t0 = Instant::now();
        let (window, rtt) = (200_000, Duration::from_millis(20));
        let mut p = Pacer::new(PacerConfig::default(), t0, window, MSS, rtt);
        let mut now = t0;
        let mut sent = 0u64;
        while sent < window {
            match p.delay(now, MSS, window, MSS, rtt) {
                None => {
                    p.on_sent(MSS);
                    sent += MSS;
                }
                Some(at) => now = at,
            }
        }
        // At 1.25 × window per RTT, a window takes about 0.8 RTT (less the first burst).
        let took = now - t0;
        assert!(took >= rtt * 7 / 10 && took <= rtt * 85 / 100, "{took:?}");
    }

    #[test]
    fn small_windows_are_never_paced_below_one_datagram() {
        let t0 = Instant::now();
        let mut p = Pacer::new(PacerConfig::default(), t0, 2 * MSS, MSS, Duration::from_secs(1));
        assert!(p.delay(t0, MSS, 2 * MSS, MSS, Duration::from_secs(1)).is_none());
        assert!(p.capacity(2 * MSS, MSS, Duration::from_secs(1)) >= MSS);
    }
}
