//! `ProcThread`: one pinned thread with five bounded priority queues.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::job::{Job, Next, Priority};
use crate::stats::{ProcStats, StatsCell};

/// Why a job was not queued. The job is handed back.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The queue for this priority is at capacity: back off, wait
    /// ([`ProcThread::submit_timeout`]), or shed load.
    #[error("the proc queue is full")]
    Full(Job),
    /// The pool is stopping or stopped.
    #[error("the proc pool is stopped")]
    Stopped(Job),
}

impl SubmitError {
    /// The job that was not queued.
    pub fn into_job(self) -> Job {
        match self {
            SubmitError::Full(j) | SubmitError::Stopped(j) => j,
        }
    }

    /// True for [`SubmitError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, SubmitError::Full(_))
    }
}

impl std::fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SubmitError::Full(_) => "Full(..)",
            SubmitError::Stopped(_) => "Stopped(..)",
        })
    }
}

/// How a stop treats queued jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopMode {
    /// Run what is queued (until the deadline), then exit.
    Drain(Instant),
    /// Drop what is queued, then exit.
    Cancel,
}

/// A periodic job waiting to be picked up by its thread.
pub(crate) struct NewPeriodic {
    pub(crate) period: Duration,
    pub(crate) job: Job,
    pub(crate) cancelled: Arc<AtomicBool>,
}

/// What producers share with the thread, under one lock.
pub(crate) struct Inbox {
    pub(crate) queues: [VecDeque<(u64, Job)>; Priority::COUNT],
    pub(crate) periodic: Vec<NewPeriodic>,
    /// The thread is (about to be) waiting on `not_empty`.
    pub(crate) sleeping: bool,
    pub(crate) stop: Option<StopMode>,
}

/// A clock shared by a pool: the threads store a recent time after each batch, and
/// producers stamp jobs with it without reading the system clock themselves.
#[derive(Debug)]
pub(crate) struct Clock {
    pub(crate) start: Instant,
    pub(crate) coarse_ns: AtomicU64,
}

impl Clock {
    pub(crate) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub(crate) fn coarse_ns(&self) -> u64 {
        self.coarse_ns.load(Ordering::Relaxed)
    }
}

pub(crate) struct Inner {
    pub(crate) index: usize,
    pub(crate) inbox: Mutex<Inbox>,
    pub(crate) not_empty: Condvar,
    pub(crate) not_full: Condvar,
    /// Queued plus running jobs per priority. Producers increment under the inbox lock (so the
    /// capacity check is exact); the thread decrements as jobs finish.
    pub(crate) depth: [AtomicUsize; Priority::COUNT],
    /// Producers blocked in `submit_timeout`.
    pub(crate) waiting: AtomicUsize,
    pub(crate) capacity: usize,
    pub(crate) aging_ns: u64,
    pub(crate) clock: Arc<Clock>,
    pub(crate) stats: StatsCell,
}

/// A `Send + Sync` handle to one proc thread (cheap to clone).
#[derive(Clone)]
pub struct ProcThread {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcThread").field("index", &self.inner.index).finish_non_exhaustive()
    }
}

/// Cancels a periodic job; dropping the handle does not.
#[derive(Clone, Debug)]
pub struct PeriodicHandle {
    cancelled: Arc<AtomicBool>,
}

impl PeriodicHandle {
    /// Stops the job before its next run.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

impl ProcThread {
    /// Index of this thread in its pool (equal to its paired worker's index).
    pub fn index(&self) -> usize {
        self.inner.index
    }

    /// Queues a job without waiting.
    ///
    /// # Errors
    /// [`SubmitError::Full`] when this priority's queue is at capacity,
    /// [`SubmitError::Stopped`] once the pool is stopping; the job is handed back.
    pub fn submit(
        &self,
        priority: Priority,
        job: impl FnMut() -> Next + Send + 'static,
    ) -> Result<(), SubmitError> {
        self.submit_job(priority, Box::new(job), None)
    }

    /// Queues a job, waiting up to `timeout` for room.
    ///
    /// # Errors
    /// As [`submit`](Self::submit), once the timeout has passed.
    pub fn submit_timeout(
        &self,
        priority: Priority,
        job: impl FnMut() -> Next + Send + 'static,
        timeout: Duration,
    ) -> Result<(), SubmitError> {
        self.submit_job(priority, Box::new(job), Some(Instant::now() + timeout))
    }

    /// Queues an already boxed job (see [`submit`](Self::submit)).
    ///
    /// # Errors
    /// As [`submit`](Self::submit); with a deadline, waits for room until then.
    pub fn submit_job(
        &self,
        priority: Priority,
        job: Job,
        deadline: Option<Instant>,
    ) -> Result<(), SubmitError> {
        let inner = &*self.inner;
        let p = priority.index();
        let stamp = inner.clock.coarse_ns();
        let mut inbox = inner.inbox.lock();
        loop {
            if inbox.stop.is_some() {
                return Err(SubmitError::Stopped(job));
            }
            if inner.depth[p].load(Ordering::Relaxed) < inner.capacity {
                break;
            }
            let Some(deadline) = deadline else { return Err(SubmitError::Full(job)) };
            inner.waiting.fetch_add(1, Ordering::SeqCst);
            let timed_out = inner.not_full.wait_until(&mut inbox, deadline).timed_out();
            inner.waiting.fetch_sub(1, Ordering::SeqCst);
            if timed_out && inner.depth[p].load(Ordering::Relaxed) >= inner.capacity {
                return Err(SubmitError::Full(job));
            }
        }
        inbox.queues[p].push_back((stamp, job));
        inner.depth[p].fetch_add(1, Ordering::Relaxed);
        let wake = std::mem::take(&mut inbox.sleeping);
        drop(inbox);
        if wake {
            inner.not_empty.notify_one();
        }
        Ok(())
    }

    /// Runs `job` every `period` on this thread, on a fixed grid from now (no drift), until it
    /// returns [`Next::Done`] or the handle is cancelled. Periodic jobs run ahead of queued
    /// ones when they fall due.
    ///
    /// # Errors
    /// [`SubmitError::Stopped`] once the pool is stopping.
    pub fn add_periodic(
        &self,
        period: Duration,
        job: impl FnMut() -> Next + Send + 'static,
    ) -> Result<PeriodicHandle, SubmitError> {
        let job: Job = Box::new(job);
        let cancelled = Arc::new(AtomicBool::new(false));
        let mut inbox = self.inner.inbox.lock();
        if inbox.stop.is_some() {
            return Err(SubmitError::Stopped(job));
        }
        let period = period.max(Duration::from_micros(1));
        inbox.periodic.push(NewPeriodic { period, job, cancelled: cancelled.clone() });
        let wake = std::mem::take(&mut inbox.sleeping);
        drop(inbox);
        if wake {
            self.inner.not_empty.notify_one();
        }
        Ok(PeriodicHandle { cancelled })
    }

    /// Jobs queued or running, all priorities (the figure [`ProcPool::auto`] minimises).
    ///
    /// [`ProcPool::auto`]: crate::ProcPool::auto
    pub fn load(&self) -> usize {
        self.inner.depth.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    }

    /// A recent snapshot of the counters (published after each batch).
    pub fn stats(&self) -> ProcStats {
        let depth = std::array::from_fn(|p| self.inner.depth[p].load(Ordering::Relaxed) as u64);
        self.inner.stats.snapshot(self.inner.index, depth)
    }
}
