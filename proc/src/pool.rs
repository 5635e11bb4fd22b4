//! `ProcPool`: starting, pairing with a reactor, choosing a thread, stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dap_reactor::Reactor;
use parking_lot::Mutex;

use crate::run;
use crate::thread::{Clock, Control, Inner, ProcThread, StopMode};

/// Builds a [`ProcPool`]; see [`ProcPool::builder`].
#[derive(Clone, Debug)]
pub struct ProcPoolBuilder {
    threads: usize,
    pin: bool,
    cpus: Option<Vec<Option<usize>>>,
    capacity: usize,
    aging: Duration,
    name: String,
    nice: i32,
}

impl Default for ProcPoolBuilder {
    fn default() -> Self {
        ProcPoolBuilder {
            threads: 0,
            pin: true,
            cpus: None,
            capacity: 8_192,
            aging: Duration::from_millis(10),
            name: "dap-proc".to_owned(),
            nice: 0,
        }
    }
}

impl ProcPoolBuilder {
    /// Thread count; 0 (the default) means one per CPU this process may use.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Pin each thread to a CPU (default on); a failed pin is a warning.
    pub fn pin(mut self, on: bool) -> Self {
        self.pin = on;
        self
    }

    /// The CPUs to pin to, used round-robin (default: the CPUs this process may use).
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = Some(cpus.into_iter().map(Some).collect());
        self
    }

    /// Jobs one thread may hold waiting per priority (default 8,192; the thread may have
    /// up to 256 more taken for its current batch). Each queue's storage is allocated when
    /// the pool starts: about 32 bytes per slot.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// How much waiting lifts a job by one priority level (default 10 ms); see the crate
    /// docs on aging.
    pub fn aging(mut self, aging: Duration) -> Self {
        self.aging = aging;
        self
    }

    /// The threads' nice value, 0 to 19 (default 0: the reactor's priority). Above 0 the
    /// scheduler prefers the reactor workers on a busy CPU: a flood of long jobs then
    /// slows the jobs, not the event loops' answers. Linux; elsewhere ignored.
    pub fn nice(mut self, nice: i32) -> Self {
        self.nice = nice.clamp(0, 19);
        self
    }

    /// Thread name prefix (default `dap-proc`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts a pool of its own.
    ///
    /// # Errors
    /// A thread could not be spawned.
    pub fn start(self) -> std::io::Result<ProcPool> {
        let allowed = dap_reactor::allowed_cpus();
        let n = if self.threads == 0 { allowed.len().max(1) } else { self.threads };
        let cpus: Vec<Option<usize>> = match &self.cpus {
            Some(c) if !c.is_empty() => (0..n).map(|i| c[i % c.len()]).collect(),
            _ => (0..n).map(|i| Some(allowed[i % allowed.len()])).collect(),
        };
        ProcPool::spawn(&self, cpus)
    }

    /// Starts one thread per worker of `reactor`, each pinned to its worker's CPU, and
    /// attaches thread *i* to worker *i* (so `worker.proc()` and `es.flip(..)` find it).
    ///
    /// # Errors
    /// A thread could not be spawned.
    pub fn start_for(self, reactor: &Reactor) -> std::io::Result<ProcPool> {
        let cpus = reactor.workers().iter().map(|w| w.assigned_cpu()).collect();
        let pool = ProcPool::spawn(&self, cpus)?;
        for (worker, thread) in reactor.workers().iter().zip(&pool.threads) {
            worker.set_extension(Arc::new(thread.clone()));
        }
        Ok(pool)
    }
}

/// A pool of pinned callback-processor threads.
///
/// Dropping the pool drains it: queued jobs run (for up to 5 s), then the threads exit.
pub struct ProcPool {
    threads: Vec<ProcThread>,
    joins: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ProcPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcPool").field("threads", &self.threads.len()).finish_non_exhaustive()
    }
}

/// How long dropping a pool lets queued jobs run.
const DROP_DRAIN: Duration = Duration::from_secs(5);

impl ProcPool {
    /// A builder with the defaults: one pinned thread per CPU, 8,192 waiting jobs per
    /// priority per thread, 10 ms aging.
    pub fn builder() -> ProcPoolBuilder {
        ProcPoolBuilder::default()
    }

    /// A default pool paired with `reactor` (see [`ProcPoolBuilder::start_for`]).
    ///
    /// # Errors
    /// A thread could not be spawned.
    pub fn for_reactor(reactor: &Reactor) -> std::io::Result<ProcPool> {
        ProcPool::builder().start_for(reactor)
    }

    fn spawn(b: &ProcPoolBuilder, cpus: Vec<Option<usize>>) -> std::io::Result<ProcPool> {
        let clock = Arc::new(Clock { start: Instant::now(), coarse_ns: AtomicU64::new(0) });
        let pool =
            ProcPool { threads: Vec::with_capacity(cpus.len()), joins: Mutex::new(Vec::new()) };
        let mut pool = pool;
        for (index, cpu) in cpus.into_iter().enumerate() {
            let aging_ns = b.aging.as_nanos().min(u64::MAX as u128) as u64;
            let inner = Arc::new(Inner::new(index, b.capacity, aging_ns, clock.clone()));
            let cpu = cpu.filter(|_| b.pin);
            let thread_inner = inner.clone();
            let nice = b.nice;
            let spawned =
                std::thread::Builder::new().name(format!("{}-{index}", b.name)).spawn(move || {
                    if let Some(cpu) = cpu {
                        match dap_reactor::pin_current_thread(cpu) {
                            Ok(()) => thread_inner.stats.pinned_cpu.store(cpu as u64, Ordering::Relaxed),
                            Err(e) => tracing::warn!(thread = index, cpu, error = %e, "pinning failed; proc thread runs unpinned"),
                        }
                    }
                    if nice != 0
                        && let Err(e) = dap_reactor::set_current_thread_nice(nice)
                    {
                        tracing::warn!(thread = index, nice, error = %e, "proc thread keeps the default priority");
                    }
                    run::run(thread_inner);
                });
            match spawned {
                Ok(join) => {
                    pool.joins.lock().push(join);
                    pool.threads.push(ProcThread { inner });
                }
                Err(e) => {
                    pool.stop_cancel();
                    pool.wait();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Number of threads.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Always false: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// All threads, by index.
    pub fn threads(&self) -> &[ProcThread] {
        &self.threads
    }

    /// Thread `i` (paired with worker `i` in a pool started for a reactor).
    pub fn thread(&self, i: usize) -> Option<&ProcThread> {
        self.threads.get(i)
    }

    /// The least-loaded thread: fewest jobs queued or running as of each thread's last
    /// batch ([`ProcThread::load`]). Ties rotate (per calling thread, so concurrent
    /// producers share no counter), so equal threads share the work.
    pub fn auto(&self) -> &ProcThread {
        thread_local! {
            static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        }
        let n = self.threads.len();
        let start = NEXT.with(|c| {
            let v = c.get();
            c.set(v.wrapping_add(1));
            v
        }) % n;
        (0..n)
            .map(|k| &self.threads[(start + k) % n])
            .min_by_key(|t| t.load())
            .expect("a pool has at least one thread")
    }

    /// Stops taking jobs and lets the threads run what is queued until `timeout` passes;
    /// jobs still queued then are cancelled (dropped unrun, counted in
    /// [`ProcStats::cancelled`](crate::ProcStats)). Periodic jobs stop at once. Returns at once;
    /// [`wait`](Self::wait) for the threads.
    pub fn stop_drain(&self, timeout: Duration) {
        let deadline =
            Instant::now().checked_add(timeout).unwrap_or_else(crate::thread::far_future);
        self.stop(StopMode::Drain(deadline));
    }

    /// Stops taking jobs and drops every queued job unrun (counted); a job already running
    /// finishes. Returns at once; [`wait`](Self::wait) for the threads.
    pub fn stop_cancel(&self) {
        self.stop(StopMode::Cancel);
    }

    fn stop(&self, mode: StopMode) {
        for t in &self.threads {
            t.inner.stopped.store(true, Ordering::SeqCst);
            // The control queue only fills if the thread is wedged in a job; then the stop
            // waits for room rather than being lost.
            let _ = t.inner.control_tx.send(Control::Stop(mode));
        }
    }

    /// Waits for every thread to exit (after a stop).
    pub fn wait(&self) {
        for join in std::mem::take(&mut *self.joins.lock()) {
            if join.join().is_err() {
                tracing::error!("a proc thread panicked outside a job");
            }
        }
        for t in &self.threads {
            t.inner.cancel_queued();
        }
    }
}

impl Drop for ProcPool {
    fn drop(&mut self) {
        if !self.joins.lock().is_empty() {
            self.stop_drain(DROP_DRAIN);
            self.wait();
        }
    }
}
