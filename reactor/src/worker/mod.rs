//! Workers: one event loop per thread, owning its esockets.
//!
//! [`Worker`] is the `Send + Sync` side, usable from any thread: it posts closures and
//! messages into the worker's bounded inbox. [`WorkerCtx`] is the `!Send` side that only
//! exists on the worker's own thread, handed to callbacks and to [`Worker::exec`] closures:
//! it owns the poller, the esocket slab, the timer wheel and the buffer pool.

mod accept;
mod api;
mod run;
mod shared;
mod stream;

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use run::{StartHook, WAKER_TOKEN, ns_to_tick};
pub(crate) use shared::{AcceptedIo, Msg, Shared, WorkerSlot};

use crate::buffer::BufPool;
use crate::config::{Config, Limits};
use crate::esocket::{EsState, Esocket, EsocketHandle, EsocketKind, PostError};
use crate::slots::{SlotId, Slots};
use crate::stats::WorkerStats;
use crate::timer::TimerWheel;

/// A `Send + Sync` handle to one worker (cheap to clone).
#[derive(Clone, Debug)]
pub struct Worker {
    pub(crate) shared: Arc<Shared>,
}

impl Worker {
    /// Index of this worker in its reactor.
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// The CPU this worker pins itself to, if pinning is on (whether the pin succeeded shows
    /// in [`WorkerStats::pinned_cpu`]).
    pub fn assigned_cpu(&self) -> Option<usize> {
        self.shared.assigned_cpu
    }

    /// Runs `f` on the worker's thread with `&mut` access to it: add esockets, connect,
    /// start timers.
    ///
    /// # Errors
    /// [`PostError::Full`] when the inbox is full, [`PostError::Gone`] after the worker
    /// stopped; `f` does not run.
    pub fn exec(&self, f: impl FnOnce(&mut WorkerCtx) + Send + 'static) -> Result<(), PostError> {
        self.shared.post(Msg::Run(Box::new(f)))
    }

    /// Like [`exec`](Self::exec), waiting up to `timeout` for room in a full inbox.
    ///
    /// # Errors
    /// As [`exec`](Self::exec), once the timeout has passed.
    pub fn exec_timeout(
        &self,
        f: impl FnOnce(&mut WorkerCtx) + Send + 'static,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.shared.post_timeout(Msg::Run(Box::new(f)), timeout)
    }

    /// Attaches a value to this worker, replacing any earlier value of the same type. Crates
    /// built on the reactor use this to pair per-worker services with a worker (dap-proc
    /// attaches the proc thread that shares the worker's CPU).
    pub fn set_extension<T: Any + Send + Sync>(&self, value: Arc<T>) {
        let mut ext = self.shared.extensions.write();
        ext.retain(|e| !e.is::<T>());
        ext.push(value);
    }

    /// The value of type `T` attached with [`set_extension`](Self::set_extension).
    pub fn extension<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        extension(&self.shared)
    }

    /// A recent snapshot of the worker's counters (published once per loop turn).
    pub fn stats(&self) -> WorkerStats {
        self.shared.stats.snapshot(self.shared.index)
    }

    /// The load figure [`Reactor::worker_auto`](crate::Reactor::worker_auto) compares: live
    /// connections plus messages waiting in the inbox.
    pub fn load(&self) -> u64 {
        self.shared.load()
    }
}

fn extension<T: Any + Send + Sync>(shared: &Shared) -> Option<Arc<T>> {
    let ext = shared.extensions.read();
    ext.iter().find_map(|e| e.clone().downcast::<T>().ok())
}

/// Milliseconds per timer-wheel tick is 1; these convert loop time to ticks.
const NS_PER_TICK: u64 = 1_000_000;

/// What a timer-wheel entry is for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum TimerWhat {
    /// A timer esocket's tick.
    Tick,
    /// An outgoing connection's deadline.
    Connect,
    /// A graceful close's flush deadline.
    Linger,
    /// A listener paused by a transient accept error (out of fds) retries.
    AcceptRetry,
    /// A handler's deadline ([`Esocket::set_deadline`](crate::Esocket::set_deadline)).
    Deadline,
}

/// The worker's own state, reachable only on its thread (`!Send`): handed to
/// [`Worker::exec`] closures and reachable from callbacks through
/// [`Esocket::worker`](crate::Esocket::worker).
pub struct WorkerCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peers: Arc<[Arc<Shared>]>,
    pub(crate) cfg: Arc<Config>,
    pub(crate) registry: mio::Registry,
    pub(crate) slots: Slots<Box<EsState>>,
    pub(crate) timers: TimerWheel<(SlotId, TimerWhat)>,
    pub(crate) pool: BufPool,
    /// Esockets to drive again (unused readiness, deferred work), processed every turn.
    pub(crate) ready: Vec<SlotId>,
    /// Listeners waiting for a free slot.
    pub(crate) paused_listeners: Vec<SlotId>,
    /// Receive buffers shared by this worker's UDP esockets (taken while one reads).
    pub(crate) udp_batch: Option<crate::sys::udp::RecvBatch>,
    pub(crate) started: Instant,
    pub(crate) now: Instant,
    pub(crate) now_ns: u64,
    pub(crate) next_sweep_ns: u64,
    pub(crate) stopping: Option<Instant>,
    pub(crate) stats: WorkerStats,
    _not_send: PhantomData<*mut ()>,
}

impl std::fmt::Debug for WorkerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerCtx")
            .field("index", &self.shared.index)
            .field("esockets", &self.slots.len())
            .field("stopping", &self.stopping.is_some())
            .finish_non_exhaustive()
    }
}

impl WorkerCtx {
    pub(crate) fn new(
        shared: Arc<Shared>,
        peers: Arc<[Arc<Shared>]>,
        cfg: Arc<Config>,
        registry: mio::Registry,
    ) -> Self {
        let now = Instant::now();
        let limits = &cfg.limits;
        WorkerCtx {
            slots: Slots::new(limits.max_esockets),
            timers: TimerWheel::new(),
            pool: BufPool::new(limits.buf_in_cap, limits.pool_buffers),
            ready: Vec::new(),
            paused_listeners: Vec::new(),
            udp_batch: None,
            started: now,
            now,
            now_ns: 0,
            next_sweep_ns: 0,
            stopping: None,
            stats: WorkerStats { worker: shared.index, ..WorkerStats::default() },
            shared,
            peers,
            cfg,
            registry,
            _not_send: PhantomData,
        }
    }

    /// Index of this worker in its reactor.
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// A `Send` handle to this worker.
    pub fn worker(&self) -> Worker {
        Worker { shared: self.shared.clone() }
    }

    /// Handles to every worker of the reactor, this one included.
    pub fn peers(&self) -> Vec<Worker> {
        self.peers.iter().map(|shared| Worker { shared: shared.clone() }).collect()
    }

    /// The value of type `T` attached to this worker (see [`Worker::set_extension`]).
    pub fn extension<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        extension(&self.shared)
    }

    /// The time this loop turn started (one clock read per turn).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The worker's counters as of now.
    pub fn stats(&self) -> WorkerStats {
        let mut s = self.stats.clone();
        s.inbox_depth = self.shared.tx.len() as u64;
        s.pinned_cpu = self.shared.stats.snapshot(self.index()).pinned_cpu;
        s
    }

    /// True once a graceful stop has begun: new esockets are refused.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Runs `f` on a live esocket of this worker, then flushes what it wrote. `None` if the
    /// handle names no live esocket here — including the esocket whose callback is running
    /// now (use that callback's own `es`).
    pub fn with_esocket<R>(
        &mut self,
        handle: EsocketHandle,
        f: impl FnOnce(&mut Esocket<'_>) -> R,
    ) -> Option<R> {
        if handle.epoch != self.shared.epoch {
            return None;
        }
        let mut st = self.slots.take(handle.id)?;
        let r = f(&mut Esocket::new(&mut st, self));
        self.drive(&mut st);
        self.finish(st);
        Some(r)
    }

    /// The limits this worker runs with (buffer caps, table sizes).
    pub fn limits(&self) -> &Limits {
        &self.cfg.limits
    }

    pub(crate) fn pool(&mut self) -> &mut BufPool {
        &mut self.pool
    }

    pub(crate) fn handle_for(&self, id: SlotId) -> EsocketHandle {
        EsocketHandle {
            slot: self.shared.slot,
            epoch: self.shared.epoch,
            worker: self.shared.index as u32,
            id,
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.now_ns / NS_PER_TICK
    }

    pub(crate) fn count_out(&mut self, n: usize) {
        self.stats.bytes_out += n as u64;
    }

    /// Adds what a UDP esocket sent, and its GSO fallbacks, between two snapshots of its
    /// counters to the worker's.
    pub(crate) fn count_udp(
        &mut self,
        before: Option<crate::UdpStats>,
        after: Option<crate::UdpStats>,
    ) {
        if let (Some(b), Some(a)) = (before, after) {
            self.stats.datagrams_out += a.datagrams_out.saturating_sub(b.datagrams_out);
            self.stats.gso_fallbacks += a.gso_fallbacks.saturating_sub(b.gso_fallbacks);
        }
    }

    /// Publishes the live connection count (stream esockets), the load figure other threads
    /// compare.
    pub(crate) fn publish_conns(&self) {
        let live: u64 = [EsocketKind::Tcp, EsocketKind::Unix, EsocketKind::Pipe]
            .iter()
            .map(|k| self.stats.esockets[k.index()])
            .sum();
        self.shared.conns.store(live, std::sync::atomic::Ordering::Relaxed);
    }

    /// Puts an esocket on the ready list (once) so the loop drives it again.
    pub(crate) fn schedule(&mut self, st: &mut EsState) {
        if !st.queued {
            st.queued = true;
            self.ready.push(st.id);
        }
    }
}
