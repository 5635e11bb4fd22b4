//! Proc-thread counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::job::Priority;

/// A snapshot of one proc thread's counters (see [`ProcThread::stats`](crate::ProcThread)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcStats {
    /// Index of the thread in its pool.
    pub thread: usize,
    /// CPU the thread is pinned to; `None` if pinning was off or failed.
    pub pinned_cpu: Option<usize>,
    /// Jobs queued (or running) per priority, indexed by [`Priority::index`].
    pub depth: [u64; Priority::COUNT],
    /// Job runs (an `Again` job counts once per run).
    pub jobs_run: u64,
    /// Runs that returned [`Next::Again`](crate::Next::Again).
    pub requeued: u64,
    /// Jobs that panicked (caught; the thread lives on).
    pub panics: u64,
    /// Nanoseconds spent running jobs and timers.
    pub busy_ns: u64,
    /// Jobs dropped unrun by a stop.
    pub cancelled: u64,
    /// Periodic-job runs.
    pub periodic_runs: u64,
}

/// The published side, updated by the thread after each batch.
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    pub(crate) pinned_cpu: AtomicU64,
    pub(crate) jobs_run: AtomicU64,
    pub(crate) requeued: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) busy_ns: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) periodic_runs: AtomicU64,
}

/// No CPU (pinning off or failed).
pub(crate) const NO_CPU: u64 = u64::MAX;

impl StatsCell {
    pub(crate) fn new() -> Self {
        let cell = StatsCell::default();
        cell.pinned_cpu.store(NO_CPU, Relaxed);
        cell
    }

    pub(crate) fn publish(&self, local: &ProcStats) {
        self.jobs_run.store(local.jobs_run, Relaxed);
        self.requeued.store(local.requeued, Relaxed);
        self.panics.store(local.panics, Relaxed);
        self.busy_ns.store(local.busy_ns, Relaxed);
        self.periodic_runs.store(local.periodic_runs, Relaxed);
    }

    pub(crate) fn snapshot(&self, thread: usize, depth: [u64; Priority::COUNT]) -> ProcStats {
        let cpu = self.pinned_cpu.load(Relaxed);
        ProcStats {
            thread,
            pinned_cpu: (cpu != NO_CPU).then_some(cpu as usize),
            depth,
            jobs_run: self.jobs_run.load(Relaxed),
            requeued: self.requeued.load(Relaxed),
            panics: self.panics.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            periodic_runs: self.periodic_runs.load(Relaxed),
        }
    }
}
