//! Writes to a channel from any thread.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::transport::Wake;

/// Why a write through a [`ChannelHandle`] was refused; the message comes back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleWriteError {
    /// The channel's handle queue is full (back-pressure): retry later, or use
    /// [`ChannelHandle::write_timeout`].
    #[error("the channel's queue is full")]
    Full(Bytes),
    /// The session has ended.
    #[error("the session is closed")]
    Closed(Bytes),
    /// The message is over the session's message limit.
    #[error("message over the size limit")]
    TooLarge(Bytes),
}

struct Queue {
    items: VecDeque<(u8, Bytes)>,
    bytes: usize,
    closed: bool,
}

/// What a channel shares with its handles.
pub(crate) struct ChanShared {
    pub(crate) id: u8,
    queue: Mutex<Queue>,
    room: Condvar,
    /// Bound of the handle queue (bytes); one message is always taken when it is empty.
    max_bytes: usize,
    /// The largest message (lowered for an unreliable channel).
    max_message: AtomicUsize,
    /// Tells the transport there is something to send; set when the stream attaches.
    waker: OnceLock<Arc<dyn Wake>>,
}

impl ChanShared {
    /// Lowers the largest message a handle may write (an unreliable channel's is one
    /// datagram's worth).
    pub(crate) fn set_max_message(&self, max: usize) {
        self.max_message.store(max, Ordering::Relaxed);
    }

    pub(crate) fn new(id: u8, max_bytes: usize, max_message: usize) -> Arc<Self> {
        Arc::new(ChanShared {
            id,
            queue: Mutex::new(Queue { items: VecDeque::new(), bytes: 0, closed: false }),
            room: Condvar::new(),
            max_bytes,
            max_message: AtomicUsize::new(max_message),
            waker: OnceLock::new(),
        })
    }

    pub(crate) fn set_waker(&self, waker: Arc<dyn Wake>) {
        let _ = self.waker.set(waker);
    }

    /// Hands queued messages to `take` while `fits(len)` says there is room for the next;
    /// wakes blocked writers.
    pub(crate) fn drain(
        &self,
        mut fits: impl FnMut(usize) -> bool,
        mut take: impl FnMut(u8, Bytes),
    ) {
        let mut q = self.queue.lock();
        let mut moved = false;
        while q.items.front().is_some_and(|(_, data)| fits(data.len())) {
            let (ty, data) = q.items.pop_front().expect("front was Some");
            q.bytes -= data.len();
            take(ty, data);
            moved = true;
        }
        if moved {
            self.room.notify_all();
        }
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.lock().items.is_empty()
    }

    /// Messages in the queue.
    pub(crate) fn queued_messages(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// The session is going away: refuse further writes, keep what is queued (it is still
    /// sent). A writer that got `Ok` has its message sent; one that comes after hears
    /// `Closed`. Returns whether anything is queued.
    pub(crate) fn seal(&self) -> bool {
        let mut q = self.queue.lock();
        q.closed = true;
        self.room.notify_all();
        !q.items.is_empty()
    }

    /// The session ended: refuse further writes and free what waits.
    pub(crate) fn close(&self) {
        let mut q = self.queue.lock();
        q.closed = true;
        q.items.clear();
        q.bytes = 0;
        self.room.notify_all();
    }
}

/// Writes to one channel from any thread (`Send + Sync`, cheap to clone).
///
/// Messages go to a bounded per-channel queue that the session's worker drains as the peer
/// grants credit; the worker is woken when the queue turns non-empty.
#[derive(Clone)]
pub struct ChannelHandle {
    shared: Arc<ChanShared>,
}

impl std::fmt::Debug for ChannelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelHandle").field("id", &(self.shared.id as char)).finish()
    }
}

impl ChannelHandle {
    pub(crate) fn new(shared: Arc<ChanShared>) -> Self {
        ChannelHandle { shared }
    }

    /// The channel id.
    pub fn id(&self) -> u8 {
        self.shared.id
    }

    /// The largest message this channel takes, in bytes (the session's limit; an
    /// unreliable channel's is one datagram's worth).
    pub fn max_message(&self) -> usize {
        self.shared.max_message.load(Ordering::Relaxed)
    }

    /// Queues a message without waiting.
    ///
    /// # Errors
    /// [`HandleWriteError::Full`] when the queue is at its bound (one message is always
    /// taken into an empty queue), `Closed` after the session ended, `TooLarge` over the
    /// message limit. The message is handed back.
    ///
    /// # Broadcasting, and `Full`
    /// A handler that fans one message out to many sessions (a chat room, a topic) must
    /// not wait on one slow reader: `Full` means that reader's queue is at its bound
    /// because it does not read as fast as the others write. Decide per reader, never by
    /// blocking the loop: drop the message for that reader and count it (what the
    /// built-in `'P'` does, `dap_pubsub_slow_dropped_total`), or, when a gap is not acceptable,
    /// tell it and let it go (close its session, and it reconnects and resynchronises).
    /// [`write_timeout`](Self::write_timeout) is for a single writer that can afford to
    /// wait, off the reactor's threads. `Closed` means the session ended: forget the
    /// handle (its [`ChannelHandler::on_delete`](crate::ChannelHandler::on_delete) says
    /// so too).
    ///
    /// ```
    /// use dap_stream::{ChannelHandle, HandleWriteError};
    ///
    /// /// Sends `line` to every member; returns how many were dropped for slow readers,
    /// /// and forgets members whose session ended.
    /// fn broadcast(members: &mut Vec<ChannelHandle>, line: bytes::Bytes) -> usize {
    ///     let mut dropped = 0;
    ///     members.retain(|m| match m.write(0, line.clone()) {
    ///         Ok(()) => true,
    ///         Err(HandleWriteError::Full(_)) => {
    ///             dropped += 1; // this reader misses the line; the others do not wait
    ///             true
    ///         }
    ///         Err(_) => false, // closed (or over the limit: never for a chat line)
    ///     });
    ///     dropped
    /// }
    /// ```
    pub fn write(&self, ty: u8, data: impl Into<Bytes>) -> Result<(), HandleWriteError> {
        self.push(ty, data.into(), None)
    }

    /// Queues a message, waiting up to `timeout` for room.
    ///
    /// # Errors
    /// As [`write`](Self::write); `Full` once the timeout has passed.
    pub fn write_timeout(
        &self,
        ty: u8,
        data: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(), HandleWriteError> {
        self.push(ty, data.into(), Some(Instant::now() + timeout))
    }

    fn push(&self, ty: u8, data: Bytes, until: Option<Instant>) -> Result<(), HandleWriteError> {
        let s = &self.shared;
        if data.len() > s.max_message.load(Ordering::Relaxed) {
            return Err(HandleWriteError::TooLarge(data));
        }
        let mut q = s.queue.lock();
        loop {
            if q.closed {
                return Err(HandleWriteError::Closed(data));
            }
            if q.items.is_empty() || q.bytes + data.len() <= s.max_bytes {
                break;
            }
            match until {
                Some(t) if Instant::now() < t => {
                    s.room.wait_until(&mut q, t);
                }
                _ => return Err(HandleWriteError::Full(data)),
            }
        }
        let was_empty = q.items.is_empty();
        q.bytes += data.len();
        q.items.push_back((ty, data));
        drop(q);
        if was_empty && let Some(w) = s.waker.get() {
            w.wake();
        }
        Ok(())
    }
}
