//! The proc thread's loop: take queued jobs, run them by virtual deadline, fire periodic jobs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Select;

use crate::job::{Job, Next, Priority};
use crate::policy;
use crate::stats::ProcStats;
use crate::thread::{Control, Inner, Queued, StopMode};

/// Jobs run between two looks at the queues; also the most taken from one queue at a time.
const BATCH: usize = 256;
/// Looks at the queues before sleeping: a short spin saves a futex round trip when work
/// arrives in quick succession (as replies to a flip do).
const SPIN: usize = 64;

struct Periodic {
    period_ns: u64,
    next_ns: u64,
    job: Job,
    cancelled: Arc<AtomicBool>,
}

struct Local {
    queues: [VecDeque<Queued>; Priority::COUNT],
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    periodic: Vec<Option<Periodic>>,
    /// Slots of `periodic` whose job has ended, for reuse: the table stays as large as the
    /// most periodic jobs alive at once.
    free_periodic: Vec<usize>,
    stop: Option<StopMode>,
    stats: ProcStats,
}

impl Local {
    fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    fn next_timer_ns(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }
}

fn run_one(job: &mut Job, stats: &mut ProcStats, thread: usize) -> Next {
    stats.jobs_run += 1;
    match panic::catch_unwind(AssertUnwindSafe(job)) {
        Ok(next) => next,
        Err(_) => {
            stats.panics += 1;
            tracing::error!(thread, "proc job panicked; dropped");
            Next::Done
        }
    }
}

pub(crate) fn run(inner: Arc<Inner>) {
    let mut local = Local {
        queues: Default::default(),
        timers: BinaryHeap::new(),
        periodic: Vec::new(),
        free_periodic: Vec::new(),
        stop: None,
        stats: ProcStats { thread: inner.index, ..ProcStats::default() },
    };
    loop {
        take_work(&inner, &mut local);
        match local.stop {
            Some(StopMode::Cancel) => break,
            Some(StopMode::Drain(deadline))
                if (local.is_empty() && inner.rx.iter().all(|r| r.is_empty()))
                    || Instant::now() >= deadline =>
            {
                break;
            }
            _ => {}
        }
        if local.is_empty() && local.stop.is_none() && !timer_due(&inner, &local) {
            sleep(&inner, &local);
            continue;
        }
        let started = Instant::now();
        let now_ns = inner.clock.now_ns();
        inner.clock.coarse_ns.store(now_ns, Ordering::Relaxed);
        run_timers(&inner, &mut local, now_ns);
        run_batch(&inner, &mut local, now_ns);
        local.stats.busy_ns += started.elapsed().as_nanos() as u64;
        publish(&inner, &local);
    }
    // Whatever is left is cancelled: dropped unrun, and counted.
    inner.stopped.store(true, Ordering::SeqCst);
    let mut left: u64 = local.queues.iter().map(|q| q.len() as u64).sum();
    local.queues.iter_mut().for_each(VecDeque::clear);
    inner.stats.cancelled.fetch_add(left, Ordering::Relaxed);
    left += inner.cancel_queued();
    inner.exited.store(true, Ordering::SeqCst);
    // A job that landed between the drain above and `exited`: ours to cancel, or the
    // producer's (it checks `exited` after sending).
    left += inner.cancel_queued();
    if left > 0 {
        tracing::debug!(thread = inner.index, cancelled = left, "proc thread stopped");
    }
    while inner.control_rx.try_recv().is_ok() {}
    publish(&inner, &local);
}

fn publish(inner: &Inner, local: &Local) {
    inner.stats.publish(&local.stats);
    let mut backlog = 0;
    for p in 0..Priority::COUNT {
        let taken = local.queues[p].len();
        inner.taken[p].store(taken, Ordering::Relaxed);
        backlog += taken + inner.rx[p].len();
    }
    inner.backlog.store(backlog, Ordering::Relaxed);
}

fn timer_due(inner: &Inner, local: &Local) -> bool {
    local.next_timer_ns().is_some_and(|t| t <= inner.clock.now_ns())
}

/// Takes control messages, and up to a batch of jobs from each queue.
fn take_work(inner: &Inner, local: &mut Local) {
    while let Ok(control) = inner.control_rx.try_recv() {
        match control {
            Control::Periodic(new) => {
                let period_ns = new.period.as_nanos().min(u64::MAX as u128) as u64;
                let next_ns = inner.clock.now_ns().saturating_add(period_ns);
                let job =
                    Some(Periodic { period_ns, next_ns, job: new.job, cancelled: new.cancelled });
                let slot = match local.free_periodic.pop() {
                    Some(slot) => {
                        local.periodic[slot] = job;
                        slot
                    }
                    None => {
                        local.periodic.push(job);
                        local.periodic.len() - 1
                    }
                };
                local.timers.push(Reverse((next_ns, slot)));
            }
            Control::Stop(mode) => {
                // Cancel overrides a drain; of two drains the earlier deadline holds.
                local.stop = Some(match (local.stop, mode) {
                    (Some(StopMode::Cancel), _) | (_, StopMode::Cancel) => StopMode::Cancel,
                    (Some(StopMode::Drain(a)), StopMode::Drain(b)) => StopMode::Drain(a.min(b)),
                    (None, m) => m,
                });
                // Periodic jobs stop at once in both modes.
                local.timers.clear();
                local.periodic.clear();
                local.free_periodic.clear();
            }
        }
    }
    for (queue, rx) in local.queues.iter_mut().zip(&inner.rx) {
        // Keep at most a batch taken per priority: the bound on queued jobs stays the
        // channel's capacity plus one batch.
        while queue.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => queue.push_back(item),
                Err(_) => break,
            }
        }
    }
}

/// Waits for a job, a control message, or the next periodic job.
fn sleep(inner: &Inner, local: &Local) {
    for _ in 0..SPIN {
        if inner.rx.iter().any(|r| !r.is_empty()) || !inner.control_rx.is_empty() {
            return;
        }
        std::hint::spin_loop();
    }
    let mut sel = Select::new();
    for rx in &inner.rx {
        sel.recv(rx);
    }
    sel.recv(&inner.control_rx);
    match local.next_timer_ns() {
        Some(t) => {
            let wait = t.saturating_sub(inner.clock.now_ns());
            let _ = sel.ready_timeout(Duration::from_nanos(wait));
        }
        None => {
            sel.ready();
        }
    }
}

fn run_timers(inner: &Inner, local: &mut Local, now_ns: u64) {
    while let Some(&Reverse((due, slot))) = local.timers.peek() {
        if due > now_ns {
            break;
        }
        local.timers.pop();
        let Some(mut p) = local.periodic[slot].take() else { continue };
        if p.cancelled.load(Ordering::Acquire) {
            local.free_periodic.push(slot);
            continue;
        }
        local.stats.periodic_runs += 1;
        if run_one(&mut p.job, &mut local.stats, inner.index) == Next::Again {
            // On the grid from the first tick: lateness does not shift later ticks.
            p.next_ns = p.next_ns.saturating_add(p.period_ns);
            local.timers.push(Reverse((p.next_ns, slot)));
            local.periodic[slot] = Some(p);
        } else {
            local.free_periodic.push(slot);
        }
    }
}

fn run_batch(inner: &Inner, local: &mut Local, now_ns: u64) {
    for _ in 0..BATCH {
        let heads = std::array::from_fn(|p| local.queues[p].front().map(|(t, _)| *t));
        let Some(p) = policy::pick(heads, inner.aging_ns) else { break };
        let Some((_, mut job)) = local.queues[p].pop_front() else { break };
        if run_one(&mut job, &mut local.stats, inner.index) == Next::Again {
            local.stats.requeued += 1;
            // Behind the work already queued at this priority.
            local.queues[p].push_back((now_ns, job));
        }
    }
}
