//! The proc thread's loop: take queued jobs, run them by virtual deadline, fire periodic jobs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::job::{Job, Next, Priority};
use crate::policy;
use crate::stats::ProcStats;
use crate::thread::{Inner, StopMode};

/// Jobs run between two looks at the inbox.
const BATCH: usize = 256;
/// Checks of the inbox before sleeping; a short spin saves a futex round trip when work
/// arrives in quick succession (as replies to a flip do).
const SPIN: usize = 64;

struct Periodic {
    period_ns: u64,
    next_ns: u64,
    job: Job,
    cancelled: Arc<AtomicBool>,
}

struct Local {
    queues: [VecDeque<(u64, Job)>; Priority::COUNT],
    timers: BinaryHeap<Reverse<(u64, usize)>>,
    periodic: Vec<Option<Periodic>>,
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
        stats: ProcStats { thread: inner.index, ..ProcStats::default() },
    };
    loop {
        let stop = take_work(&inner, &mut local);
        match stop {
            Some(StopMode::Cancel) => break,
            Some(StopMode::Drain(deadline)) if local.is_empty() || Instant::now() >= deadline => {
                break;
            }
            _ => {}
        }
        let started = Instant::now();
        let now_ns = inner.clock.now_ns();
        inner.clock.coarse_ns.store(now_ns, Ordering::Relaxed);
        run_timers(&inner, &mut local, now_ns);
        run_batch(&inner, &mut local, now_ns);
        local.stats.busy_ns += started.elapsed().as_nanos() as u64;
        inner.stats.publish(&local.stats);
        if inner.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = inner.inbox.lock();
            inner.not_full.notify_all();
        }
    }
    // Whatever is left is cancelled: dropped unrun, and counted.
    let mut inbox = inner.inbox.lock();
    for p in 0..Priority::COUNT {
        let n = local.queues[p].len() + inbox.queues[p].len();
        local.stats.cancelled += n as u64;
        local.queues[p].clear();
        inbox.queues[p].clear();
        inner.depth[p].store(0, Ordering::Relaxed);
    }
    inbox.periodic.clear();
    inner.not_full.notify_all();
    drop(inbox);
    inner.stats.publish(&local.stats);
}

/// Moves queued jobs into the thread's own queues, sleeping while there is nothing to do.
/// Returns the stop mode once a stop was asked for.
fn take_work(inner: &Inner, local: &mut Local) -> Option<StopMode> {
    if local.is_empty() {
        for _ in 0..SPIN {
            if inner.depth.iter().any(|d| d.load(Ordering::Relaxed) > 0) {
                break;
            }
            std::hint::spin_loop();
        }
    }
    let mut inbox = inner.inbox.lock();
    loop {
        for new in inbox.periodic.drain(..) {
            let period_ns = new.period.as_nanos().min(u64::MAX as u128) as u64;
            let next_ns = inner.clock.now_ns().saturating_add(period_ns);
            let slot = local.periodic.len();
            local.periodic.push(Some(Periodic {
                period_ns,
                next_ns,
                job: new.job,
                cancelled: new.cancelled,
            }));
            local.timers.push(Reverse((next_ns, slot)));
        }
        for p in 0..Priority::COUNT {
            if local.queues[p].is_empty() {
                std::mem::swap(&mut local.queues[p], &mut inbox.queues[p]);
            } else {
                local.queues[p].append(&mut inbox.queues[p]);
            }
        }
        if let Some(stop) = inbox.stop {
            return Some(stop);
        }
        if !local.is_empty() {
            return None;
        }
        let now_ns = inner.clock.now_ns();
        match local.next_timer_ns() {
            Some(t) if t <= now_ns => return None,
            Some(t) => {
                inbox.sleeping = true;
                let _ = inner.not_empty.wait_for(&mut inbox, Duration::from_nanos(t - now_ns));
            }
            None => {
                inbox.sleeping = true;
                inner.not_empty.wait(&mut inbox);
            }
        }
        inbox.sleeping = false;
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
            continue;
        }
        local.stats.periodic_runs += 1;
        if run_one(&mut p.job, &mut local.stats, inner.index) == Next::Again {
            // On the grid from the first tick: lateness does not shift later ticks.
            p.next_ns = p.next_ns.saturating_add(p.period_ns);
            local.timers.push(Reverse((p.next_ns, slot)));
            local.periodic[slot] = Some(p);
        }
    }
    // Reuse the slots of finished periodic jobs once none is pending.
    if local.timers.is_empty() {
        local.periodic.clear();
    }
}

fn run_batch(inner: &Inner, local: &mut Local, now_ns: u64) {
    let mut finished = [0usize; Priority::COUNT];
    for _ in 0..BATCH {
        let heads = std::array::from_fn(|p| local.queues[p].front().map(|(t, _)| *t));
        let Some(p) = policy::pick(heads, inner.aging_ns) else { break };
        let Some((_, mut job)) = local.queues[p].pop_front() else { break };
        match run_one(&mut job, &mut local.stats, inner.index) {
            Next::Done => finished[p] += 1,
            Next::Again => {
                local.stats.requeued += 1;
                // Behind the work already queued at this priority.
                local.queues[p].push_back((now_ns, job));
            }
        }
    }
    for (p, n) in finished.into_iter().enumerate() {
        if n > 0 {
            inner.depth[p].fetch_sub(n, Ordering::Relaxed);
        }
    }
}
