//! [`LogThrottle`]: at most a few log lines per window from one call site, with a count of
//! what was left out, so that a flood (accept failures at the descriptor limit, refused
//! connections) cannot fill the disk or drown other lines.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Lets through at most `per_window` events per `window`; the first one let through after
/// some were held back reports how many (as the kernel's `printk_ratelimit` does).
/// `const`-constructible for a `static` per call site; `Sync`.
///
/// ```
/// use std::time::Duration;
/// use dap_reactor::LogThrottle;
///
/// static ACCEPT_FAILED: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));
/// # let e = "too many open files";
/// if let Some(suppressed) = ACCEPT_FAILED.check() {
///     tracing::warn!(error = %e, suppressed, "accept failed; retrying shortly");
/// }
/// ```
#[derive(Debug)]
pub struct LogThrottle {
    per_window: u32,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the current window began (`None`: no event yet).
    began: Option<Instant>,
    /// Events let through in the current window.
    passed: u32,
    /// Events held back since the last one let through.
    suppressed: u64,
    /// Events held back in all.
    total_suppressed: u64,
}

impl LogThrottle {
    /// At most `per_window` events (at least 1) per `window`.
    pub const fn new(per_window: u32, window: Duration) -> Self {
        LogThrottle {
            per_window: if per_window == 0 { 1 } else { per_window },
            window,
            state: Mutex::new(State { began: None, passed: 0, suppressed: 0, total_suppressed: 0 }),
        }
    }

    /// Counts an event now: `Some(n)` to log it, `n` being how many were held back since
    /// the last one logged; `None` to hold it back.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) at `now` (a virtual clock for tests).
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock();
        if st.began.is_none_or(|b| now.saturating_duration_since(b) >= self.window) {
            st.began = Some(now);
            st.passed = 0;
        }
        if st.passed < self.per_window {
            st.passed += 1;
            Some(std::mem::take(&mut st.suppressed))
        } else {
            st.suppressed += 1;
            st.total_suppressed += 1;
            None
        }
    }

    /// Events held back since this throttle was made.
    pub fn total_suppressed(&self) -> u64 {
        self.state.lock().total_suppressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_window_and_counted() {
        let t = LogThrottle::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let passed: Vec<_> =
            (0..1000u64).filter_map(|i| t.check_at(t0 + Duration::from_millis(i))).collect();
        assert_eq!(passed, [0, 0, 0]);
        assert_eq!(t.total_suppressed(), 997);
        // The next window: the first line says how many were left out.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.check_at(later), Some(997));
        assert_eq!(t.check_at(later), Some(0));
        assert_eq!(t.check_at(later), Some(0));
        assert_eq!(t.check_at(later), None);
        assert_eq!(t.check_at(later + Duration::from_secs(10)), Some(1));
    }
}
