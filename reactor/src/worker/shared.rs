//! The part of a worker other threads see: its inbox, waker, counters and load.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};

use super::WorkerCtx;
use crate::esocket::{Esocket, Factory, PeerAddr, PostError};
use crate::slots::SlotId;
use crate::stats::StatsCell;

/// A socket accepted by a listener in spread mode, on its way to another worker.
#[derive(Debug)]
pub(crate) enum AcceptedIo {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
}

/// A message to a worker.
pub(crate) enum Msg {
    Write(SlotId, Bytes),
    SendTo(SlotId, Bytes, SocketAddr),
    SetReadable(SlotId, bool),
    SetWritable(SlotId, bool),
    Close(SlotId),
    Exec(SlotId, Box<dyn FnOnce(&mut Esocket<'_>) + Send>),
    Run(Box<dyn FnOnce(&mut WorkerCtx) + Send>),
    Adopt(AcceptedIo, PeerAddr, Factory),
    Stop(Instant),
}

/// Shared state of one running worker.
pub(crate) struct Shared {
    pub(crate) index: usize,
    /// The CPU this worker is configured to pin to (`None` with pinning off).
    pub(crate) assigned_cpu: Option<usize>,
    /// Unique per worker start, process-wide; handles carry it so a reused registry slot
    /// never accepts messages meant for a worker that has stopped.
    pub(crate) epoch: u64,
    pub(crate) tx: Sender<Msg>,
    pub(crate) waker: mio::Waker,
    /// Set by the first sender after the worker last looked at its inbox; lets a burst of
    /// messages cost one wake-up (one eventfd write) instead of one each.
    pub(crate) notified: AtomicBool,
    pub(crate) stats: StatsCell,
    /// Live connections (stream esockets) on this worker, for least-loaded placement.
    pub(crate) conns: AtomicU64,
    /// The esocket table is full (kept current on every insert and removal), so a spreading
    /// listener does not hand a connection to a worker that would have to drop it.
    pub(crate) full: AtomicBool,
    pub(crate) slot: &'static WorkerSlot,
    /// Per-worker values other crates attach (the paired proc thread, say), one per type.
    pub(crate) extensions: RwLock<Vec<Arc<dyn Any + Send + Sync>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("index", &self.index).field("epoch", &self.epoch).finish()
    }
}

impl Shared {
    fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            // A failed wake means the poller is gone: the worker is exiting and will not
            // read the message anyway.
            let _ = self.waker.wake();
        }
    }

    pub(crate) fn post(&self, msg: Msg) -> Result<(), PostError> {
        self.try_post(msg).map_err(|(e, _)| e)
    }

    /// Like `post`, handing the message back on failure.
    pub(crate) fn try_post(&self, msg: Msg) -> Result<(), (PostError, Msg)> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(m)) => Err((PostError::Full, m)),
            Err(TrySendError::Disconnected(m)) => Err((PostError::Gone, m)),
        }
    }

    pub(crate) fn post_timeout(&self, msg: Msg, timeout: Duration) -> Result<(), PostError> {
        match self.tx.send_timeout(msg, timeout) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(SendTimeoutError::Timeout(_)) => Err(PostError::Full),
            Err(SendTimeoutError::Disconnected(_)) => Err(PostError::Gone),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The load figure `worker_auto` minimises: live connections plus queued messages.
    pub(crate) fn load(&self) -> u64 {
        self.conns.load(Ordering::Relaxed) + self.tx.len() as u64
    }
}

/// A process-wide, never-freed slot that names a running worker.
///
/// Handles must be `Copy`, so they cannot hold an `Arc`; they hold `&'static WorkerSlot`
/// instead. Slots are recycled through a free list when a worker stops, so the memory kept is
/// bounded by the largest number of workers ever running at once (a few hundred bytes each).
pub(crate) struct WorkerSlot {
    current: RwLock<Option<Arc<Shared>>>,
}

static FREE_SLOTS: Mutex<Vec<&'static WorkerSlot>> = Mutex::new(Vec::new());
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

impl WorkerSlot {
    pub(crate) fn acquire() -> &'static WorkerSlot {
        FREE_SLOTS
            .lock()
            .pop()
            .unwrap_or_else(|| Box::leak(Box::new(WorkerSlot { current: RwLock::new(None) })))
    }

    pub(crate) fn next_epoch() -> u64 {
        NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn install(&'static self, shared: Arc<Shared>) {
        *self.current.write() = Some(shared);
    }

    /// Detaches the worker and recycles the slot.
    pub(crate) fn release(&'static self) {
        *self.current.write() = None;
        FREE_SLOTS.lock().push(self);
    }

    pub(crate) fn post(&self, epoch: u64, msg: Msg) -> Result<(), PostError> {
        self.try_post(epoch, msg).map_err(|(e, _)| e)
    }

    pub(crate) fn try_post(&self, epoch: u64, msg: Msg) -> Result<(), (PostError, Msg)> {
        match &*self.current.read() {
            Some(shared) if shared.epoch == epoch => shared.try_post(msg),
            _ => Err((PostError::Gone, msg)),
        }
    }

    pub(crate) fn post_timeout(
        &self,
        epoch: u64,
        msg: Msg,
        timeout: Duration,
    ) -> Result<(), PostError> {
        // Never block while holding the lock: the worker takes it to detach on exit.
        let shared = match &*self.current.read() {
            Some(shared) if shared.epoch == epoch => shared.clone(),
            _ => return Err(PostError::Gone),
        };
        shared.post_timeout(msg, timeout)
    }
}
