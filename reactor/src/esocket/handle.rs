//! `EsocketHandle`: reaching an esocket from any thread (DAP's `_mt` functions).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::Esocket;
use crate::slots::SlotId;
use crate::worker::{Msg, WorkerSlot};

/// A closure run on an esocket's worker with `&mut` access to it.
pub type ExecFn = Box<dyn FnOnce(&mut Esocket<'_>) + Send>;

/// Why a message could not be posted to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostError {
    /// The worker's inbox is full: back off and retry, or use a `_timeout` variant.
    #[error("the worker's inbox is full")]
    Full,
    /// The worker has stopped; the message was not delivered.
    #[error("the worker has stopped")]
    Gone,
}

/// A `Send + Sync + Copy` name for an esocket: its worker plus slot and generation.
///
/// Methods post a message to the owning worker and return as soon as it is queued; the
/// worker applies it on its next loop turn. A message for an esocket that has closed meanwhile
/// is dropped there and counted in [`WorkerStats::dropped_dead`](crate::WorkerStats); it can
/// never reach a newer esocket that reuses the slot, because the generation differs.
#[derive(Clone, Copy)]
pub struct EsocketHandle {
    pub(crate) slot: &'static WorkerSlot,
    pub(crate) epoch: u64,
    pub(crate) worker: u32,
    pub(crate) id: SlotId,
}

impl std::fmt::Debug for EsocketHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EsocketHandle(w{}:{}.{})", self.worker, self.id.index, self.id.generation)
    }
}

impl PartialEq for EsocketHandle {
    fn eq(&self, other: &Self) -> bool {
        self.epoch == other.epoch && self.id == other.id
    }
}

impl Eq for EsocketHandle {}

impl std::hash::Hash for EsocketHandle {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.epoch.hash(state);
        self.id.hash(state);
    }
}

impl EsocketHandle {
    /// Index of the owning worker in its reactor.
    pub fn worker_index(&self) -> usize {
        self.worker as usize
    }

    fn post(&self, msg: Msg) -> Result<(), PostError> {
        self.slot.post(self.epoch, msg)
    }

    /// Queues bytes for output (no copy). Writes from handles may exceed the output cap by
    /// [`Limits::handle_write_slack`](crate::Limits); past that the esocket is closed with an
    /// error rather than grow without bound.
    ///
    /// # Errors
    /// [`PostError::Full`] when the worker's inbox is full, [`PostError::Gone`] when the
    /// worker has stopped. Either way the data was not queued.
    pub fn write(&self, data: impl Into<Bytes>) -> Result<(), PostError> {
        self.post(Msg::Write(self.id, data.into()))
    }

    /// Like [`write`](Self::write), but waits up to `timeout` for room in a full inbox.
    ///
    /// # Errors
    /// As [`write`](Self::write), once the timeout has passed.
    pub fn write_timeout(
        &self,
        data: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.slot.post_timeout(self.epoch, Msg::Write(self.id, data.into()), timeout)
    }

    /// Sends a datagram from a UDP esocket.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn send_to(&self, data: impl Into<Bytes>, to: SocketAddr) -> Result<(), PostError> {
        self.post(Msg::SendTo(self.id, data.into(), to))
    }

    /// Pauses or resumes reading.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn set_readable(&self, on: bool) -> Result<(), PostError> {
        self.post(Msg::SetReadable(self.id, on))
    }

    /// Sets or clears write interest.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn set_writable(&self, on: bool) -> Result<(), PostError> {
        self.post(Msg::SetWritable(self.id, on))
    }

    /// Closes gracefully (queued output is flushed first).
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn close(&self) -> Result<(), PostError> {
        self.post(Msg::Close(self.id))
    }

    /// Like [`exec`](Self::exec) for an already boxed closure, handing it back when it
    /// cannot be posted, so the caller can retry later without losing it.
    ///
    /// # Errors
    /// As [`write`](Self::write), with the closure.
    pub fn try_exec(&self, f: ExecFn) -> Result<(), (PostError, ExecFn)> {
        match self.slot.try_post(self.epoch, Msg::Exec(self.id, f)) {
            Ok(()) => Ok(()),
            Err((e, Msg::Exec(_, f))) => Err((e, f)),
            Err((_, _)) => unreachable!("the message handed back is the one posted"),
        }
    }

    /// Like [`exec`](Self::exec), but waits up to `timeout` for room in a full inbox.
    ///
    /// # Errors
    /// As [`write`](Self::write), once the timeout has passed; `f` is dropped unrun.
    pub fn exec_timeout(
        &self,
        f: impl FnOnce(&mut Esocket<'_>) + Send + 'static,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.slot.post_timeout(self.epoch, Msg::Exec(self.id, Box::new(f)), timeout)
    }

    /// Runs `f` with `&mut` access to the esocket on its worker. Dropped (and counted) if the
    /// esocket is gone by then.
    ///
    /// # Errors
    /// As [`write`](Self::write).
    pub fn exec(&self, f: impl FnOnce(&mut Esocket<'_>) + Send + 'static) -> Result<(), PostError> {
        self.post(Msg::Exec(self.id, Box::new(f)))
    }
}
