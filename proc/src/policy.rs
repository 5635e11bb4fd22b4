//! Which queued job runs next: priorities with aging.
//!
//! Every job gets a *virtual deadline* when it is queued: its enqueue time plus
//! `(Critical − priority) × aging`. A proc thread runs the job with the earliest virtual
//! deadline; on a tie, the higher priority. So a critical job queued now beats a low one
//! queued less than `3 × aging` ago, but a low job that has waited longer than that beats
//! any critical job queued after it. Within one priority, deadlines grow with enqueue time, so
//! each queue stays FIFO and only the five queue heads need comparing. The wait of a queued job
//! is therefore bounded by `(4 − priority) × aging` plus the run time of the jobs queued
//! before its virtual deadline — a steady stream of high-priority work cannot starve it.

use crate::job::Priority;

/// The virtual deadline of a job queued at `enqueued_ns` with priority index `p`.
pub(crate) fn virtual_deadline(enqueued_ns: u64, p: usize, aging_ns: u64) -> u64 {
    let slack = (Priority::COUNT - 1 - p.min(Priority::COUNT - 1)) as u64;
    enqueued_ns.saturating_add(slack.saturating_mul(aging_ns))
}

/// Picks the priority whose head job runs next, given each queue head's enqueue time.
pub(crate) fn pick(heads: [Option<u64>; Priority::COUNT], aging_ns: u64) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    // Highest priority first, so a tie keeps the higher one.
    for p in (0..Priority::COUNT).rev() {
        if let Some(enqueued) = heads[p] {
            let d = virtual_deadline(enqueued, p, aging_ns);
            if best.is_none_or(|(bd, _)| d < bd) {
                best = Some((d, p));
            }
        }
    }
    best.map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 10_000_000; // 10 ms

    #[test]
    fn fresh_jobs_run_by_priority() {
        assert_eq!(pick([Some(0); 5], A), Some(4));
        assert_eq!(pick([Some(0), Some(0), None, None, None], A), Some(1));
        assert_eq!(pick([None; 5], A), None);
    }

    #[test]
    fn waiting_raises_a_claim() {
        // A low job queued at 0 against a critical job queued at t: low wins once t > 3A.
        let low_at_0 = |t| pick([None, Some(0), None, None, Some(t)], A);
        assert_eq!(low_at_0(3 * A), Some(4), "tie goes to the higher priority");
        assert_eq!(low_at_0(3 * A + 1), Some(1));
    }

    /// A virtual-clock simulation: one low job, and a critical job arriving every 1 ms that
    /// takes 1 ms to run — the thread is saturated with critical work. The low job still runs
    /// within its bound.
    #[test]
    fn a_stream_of_critical_jobs_cannot_starve_a_low_one() {
        let ms = 1_000_000u64;
        let mut critical: std::collections::VecDeque<u64> = Default::default();
        let low = Some(0u64);
        let mut now = 0u64;
        let mut next_arrival = 0u64;
        let mut low_ran_at = None;
        while now < 1000 * ms {
            while next_arrival <= now {
                critical.push_back(next_arrival);
                next_arrival += ms;
            }
            let heads = [None, low, None, None, critical.front().copied()];
            match pick(heads, A) {
                Some(1) => {
                    low_ran_at = Some(now);
                    break;
                }
                Some(4) => {
                    critical.pop_front();
                }
                other => unreachable!("{other:?}"),
            }
            now += ms;
        }
        let ran = low_ran_at.expect("the low job ran");
        assert!(ran <= 3 * A + 2 * ms, "low job waited {} ms", ran / ms);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        assert_eq!(virtual_deadline(u64::MAX, 0, u64::MAX), u64::MAX);
        assert_eq!(pick([Some(u64::MAX); 5], u64::MAX), Some(4));
    }
}
