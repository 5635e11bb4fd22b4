//! The `Date` header: IMF-fixdate, formatted at most once per second.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Formats a time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §5.6.7).
/// Times before 1970 format as the epoch.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Caches the formatted `Date` value for the current second; one per worker.
#[derive(Debug, Default)]
pub struct DateCache {
    second: u64,
    value: String,
    /// Until when (monotonic) `value` is still the current second, for [`DateCache::get_at`].
    fresh_until: Option<Instant>,
}

impl DateCache {
    /// The `Date` value for `now`, re-formatted only when the second changes.
    pub fn get(&mut self, now: SystemTime) -> &str {
        let second = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        if self.value.is_empty() || second != self.second {
            self.second = second;
            self.value = http_date(now);
        }
        &self.value
    }

    /// The `Date` value at `now`, a monotonic time the caller already has (a reactor worker's
    /// turn time): the wall clock is read only when `now` may have crossed into the next
    /// second, so a busy server reads it about once a second instead of once per response.
    /// A `now` older than the real time by a turn's length makes the value late by as much.
    pub fn get_at(&mut self, now: Instant) -> &str {
        if self.fresh_until.is_some_and(|until| now < until) && !self.value.is_empty() {
            return &self.value;
        }
        let wall = SystemTime::now();
        let into_second = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).subsec_nanos();
        // The wall clock was read after `now`: the second ends no earlier than this.
        self.fresh_until =
            now.checked_add(Duration::from_nanos(1_000_000_000 - u64::from(into_second)));
        self.get(wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        let at = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(http_date(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(at(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(at(1_795_219_200)), "Sat, 21 Nov 2026 00:00:00 GMT");
    }

    #[test]
    fn cache_reformats_once_per_second() {
        let mut cache = DateCache::default();
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let first = cache.get(t).to_owned();
        assert_eq!(cache.get(t + Duration::from_millis(999)), first);
        assert_ne!(cache.get(t + Duration::from_secs(1)), first);
    }

    #[test]
    fn cache_at_a_monotonic_time_reads_the_clock_again_after_a_second() {
        let mut cache = DateCache::default();
        let t0 = Instant::now();
        let first = cache.get_at(t0).to_owned();
        assert_eq!(first.len(), "Sun, 06 Nov 1994 08:49:37 GMT".len());
        let until = cache.fresh_until.expect("set by get_at");
        assert!(until > t0 && until <= t0 + Duration::from_secs(1));
        // Within the second: the cached text, even one from another second (the wall clock
        // is not read).
        cache.value = "cached".into();
        cache.second = 0;
        assert_eq!(cache.get_at(t0), "cached");
        // Past it: the wall clock is read again, and the text follows it.
        assert_ne!(cache.get_at(until), "cached");
        assert!(cache.fresh_until.expect("set again") > until);
    }
}
