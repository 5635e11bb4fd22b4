//! `ProcThread`: one pinned thread with five bounded priority queues.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};

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

/// Messages to the thread that are not jobs.
pub(crate) enum Control {
    Periodic(NewPeriodic),
    Stop(StopMode),
}

/// A queued job and the pool-clock time it was queued at.
pub(crate) type Queued = (u64, Job);

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

/// Control messages (periodic jobs, stop) one thread may have waiting.
pub(crate) const CONTROL_CAPACITY: usize = 1024;

pub(crate) struct Inner {
    pub(crate) index: usize,
    /// One bounded, lock-free queue per priority: producers never take a lock, and a full
    /// queue hands the job back.
    pub(crate) tx: [Sender<Queued>; Priority::COUNT],
    pub(crate) rx: [Receiver<Queued>; Priority::COUNT],
    pub(crate) control_tx: Sender<Control>,
    pub(crate) control_rx: Receiver<Control>,
    /// Set by a stop: new jobs are refused.
    pub(crate) stopped: AtomicBool,
    /// Set by the thread after its last drain. A producer whose job landed after that
    /// cancels (and counts) what is left itself, so no accepted job is lost unaccounted.
    pub(crate) exited: AtomicBool,
    /// Jobs the thread has taken but not finished, per priority, as of its last batch.
    pub(crate) taken: [AtomicUsize; Priority::COUNT],
    /// Jobs queued or running, all priorities, as of the thread's last batch: a hint for
    /// `ProcPool::auto` that producers read but never write.
    pub(crate) backlog: AtomicUsize,
    pub(crate) aging_ns: u64,
    pub(crate) clock: Arc<Clock>,
    pub(crate) stats: StatsCell,
}

impl Inner {
    pub(crate) fn new(index: usize, capacity: usize, aging_ns: u64, clock: Arc<Clock>) -> Self {
        let (tx, rx): (Vec<_>, Vec<_>) =
            (0..Priority::COUNT).map(|_| crossbeam_channel::bounded(capacity.max(1))).unzip();
        let (control_tx, control_rx) = crossbeam_channel::bounded(CONTROL_CAPACITY);
        Inner {
            index,
            tx: tx.try_into().unwrap_or_else(|_| unreachable!("five senders")),
            rx: rx.try_into().unwrap_or_else(|_| unreachable!("five receivers")),
            control_tx,
            control_rx,
            stopped: AtomicBool::new(false),
            exited: AtomicBool::new(false),
            taken: Default::default(),
            backlog: AtomicUsize::new(0),
            aging_ns,
            clock,
            stats: StatsCell::new(),
        }
    }

    /// Drops every job still queued, counting them as cancelled.
    pub(crate) fn cancel_queued(&self) -> u64 {
        let mut n = 0;
        for rx in &self.rx {
            while rx.try_recv().is_ok() {
                n += 1;
            }
        }
        self.stats.cancelled.fetch_add(n, Ordering::Relaxed);
        n
    }
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

/// A deadline a century away, for "no deadline".
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
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
        // No representable deadline means wait as long as it takes.
        let deadline = Instant::now().checked_add(timeout).unwrap_or_else(far_future);
        self.submit_job(priority, Box::new(job), Some(deadline))
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
        if inner.stopped.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped(job));
        }
        let item = (inner.clock.coarse_ns(), job);
        let tx = &inner.tx[priority.index()];
        let sent = match deadline {
            None => tx.try_send(item).map_err(|e| match e {
                TrySendError::Full((_, job)) => SubmitError::Full(job),
                TrySendError::Disconnected((_, job)) => SubmitError::Stopped(job),
            }),
            Some(deadline) => tx.send_deadline(item, deadline).map_err(|e| match e {
                SendTimeoutError::Timeout((_, job)) => SubmitError::Full(job),
                SendTimeoutError::Disconnected((_, job)) => SubmitError::Stopped(job),
            }),
        };
        if sent.is_ok() {
            // Pairs with the thread's store of `exited` before its last drain: either the
            // thread sees this job, or we see `exited` and account for the job here.
            std::sync::atomic::fence(Ordering::SeqCst);
            if inner.exited.load(Ordering::SeqCst) {
                inner.cancel_queued();
            }
        }
        sent
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
        if self.inner.stopped.load(Ordering::Acquire) {
            return Err(SubmitError::Stopped(job));
        }
        let cancelled = Arc::new(AtomicBool::new(false));
        let period = period.max(Duration::from_micros(1));
        let new = NewPeriodic { period, job, cancelled: cancelled.clone() };
        match self.inner.control_tx.try_send(Control::Periodic(new)) {
            Ok(()) => Ok(PeriodicHandle { cancelled }),
            Err(TrySendError::Full(Control::Periodic(n))) => Err(SubmitError::Full(n.job)),
            Err(TrySendError::Disconnected(Control::Periodic(n))) => {
                Err(SubmitError::Stopped(n.job))
            }
            Err(_) => unreachable!("the message handed back is the one sent"),
        }
    }

    /// Jobs queued or running, all priorities, as of the thread's last batch (the figure
    /// [`ProcPool::auto`] compares). Reading it costs producers no lock.
    ///
    /// [`ProcPool::auto`]: crate::ProcPool::auto
    pub fn load(&self) -> usize {
        self.inner.backlog.load(Ordering::Relaxed)
    }

    /// A snapshot of the counters: queue depths now (plus what the thread had taken at its
    /// last batch), the rest as of the last batch.
    pub fn stats(&self) -> ProcStats {
        let inner = &self.inner;
        let depth = std::array::from_fn(|p| {
            (inner.rx[p].len() + inner.taken[p].load(Ordering::Relaxed)) as u64
        });
        inner.stats.snapshot(inner.index, depth)
    }
}
