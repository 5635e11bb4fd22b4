//! Per-worker counters.
//!
//! The worker keeps plain counters while it runs and publishes them with relaxed atomic
//! stores once per loop turn, so the hot path never pays for a locked instruction and any
//! thread can read a recent snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::EsocketKind;

/// A snapshot of one worker's counters (see [`Worker::stats`](crate::Worker::stats)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Index of the worker in its reactor.
    pub worker: usize,
    /// CPU the worker is pinned to; `None` if pinning was off or failed.
    pub pinned_cpu: Option<usize>,
    /// Live esockets by kind, indexed by [`EsocketKind::index`].
    pub esockets: [u64; EsocketKind::COUNT],
    /// Loop turns (returns from the poller).
    pub loop_turns: u64,
    /// Readiness events handled.
    pub events: u64,
    /// Bytes read from sockets, pipes and datagrams.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Datagrams received on UDP esockets (a coalesced GRO run counts each datagram).
    pub datagrams_in: u64,
    /// Datagrams handed to the kernel by UDP esockets (a GSO send counts each segment).
    pub datagrams_out: u64,
    /// UDP esockets whose GSO sends the kernel refused, so they fell back to one message per
    /// datagram.
    pub gso_fallbacks: u64,
    /// Nanoseconds spent outside the poller (doing work).
    pub busy_ns: u64,
    /// Messages waiting in the inbox at the last publish.
    pub inbox_depth: u64,
    /// Messages dropped because their esocket no longer exists.
    pub dropped_dead: u64,
    /// Connections accepted by this worker's listeners (or handed to it).
    pub accepted: u64,
    /// Esockets closed by the idle sweep.
    pub idle_closed: u64,
    /// Esockets closed because cross-thread writes overflowed their output cap.
    pub overflow_closed: u64,
    /// Accepted sockets closed at once because no worker had room.
    pub accept_dropped: u64,
    /// `accept` calls that failed for want of descriptors or memory (the connection stays
    /// in the backlog; the listener rests 100 ms).
    pub accept_failed: u64,
    /// Connections closed because they held parked partial input while the reactor's
    /// buffers were past [`Limits::buffer_budget`](crate::Limits::buffer_budget).
    pub budget_closed: u64,
    /// Accepted sockets closed at once because the buffers were past the budget.
    pub budget_refused: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Callbacks, closures and start hooks that panicked (each caught; a callback's esocket
    /// was closed with [`ReactorError::HandlerPanicked`](crate::ReactorError::HandlerPanicked)).
    pub handler_panics: u64,
}

impl WorkerStats {
    /// Live esockets of one kind.
    pub fn esockets_of(&self, kind: EsocketKind) -> u64 {
        self.esockets[kind.index()]
    }

    /// Live esockets of every kind.
    pub fn esockets_total(&self) -> u64 {
        self.esockets.iter().sum()
    }
}

macro_rules! cell {
    ($($field:ident),* $(,)?) => {
        /// The published side of [`WorkerStats`], shared with other threads.
        #[derive(Debug, Default)]
        pub(crate) struct StatsCell {
            pub(crate) esockets: [AtomicU64; EsocketKind::COUNT],
            pub(crate) pinned: AtomicBool,
            pub(crate) pinned_cpu: AtomicU64,
            $(pub(crate) $field: AtomicU64,)*
        }

        impl StatsCell {
            pub(crate) fn publish(&self, s: &WorkerStats) {
                for (cell, v) in self.esockets.iter().zip(s.esockets) {
                    cell.store(v, Relaxed);
                }
                $(self.$field.store(s.$field, Relaxed);)*
            }

            pub(crate) fn snapshot(&self, worker: usize) -> WorkerStats {
                let mut s = WorkerStats {
                    worker,
                    pinned_cpu: self
                        .pinned
                        .load(Relaxed)
                        .then(|| self.pinned_cpu.load(Relaxed) as usize),
                    ..WorkerStats::default()
                };
                for (v, cell) in s.esockets.iter_mut().zip(&self.esockets) {
                    *v = cell.load(Relaxed);
                }
                $(s.$field = self.$field.load(Relaxed);)*
                s
            }
        }
    };
}

cell!(
    loop_turns,
    events,
    bytes_in,
    bytes_out,
    datagrams_in,
    datagrams_out,
    gso_fallbacks,
    busy_ns,
    inbox_depth,
    dropped_dead,
    accepted,
    idle_closed,
    overflow_closed,
    accept_dropped,
    accept_failed,
    budget_closed,
    budget_refused,
    timers_fired,
    handler_panics,
);
