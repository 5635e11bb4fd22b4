//! Typed queues: items sent from any thread, delivered one by one to a callback on the worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};

use crate::esocket::Esocket;
use crate::sys::eventfd::EventFd;

/// Why an item could not be queued; the item is handed back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueSendError<T> {
    /// The queue is at capacity: the worker is behind. Retry, wait, or shed load.
    #[error("queue is full")]
    Full(T),
    /// The queue esocket has closed.
    #[error("queue is closed")]
    Closed(T),
}

impl<T> QueueSendError<T> {
    /// The item that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            QueueSendError::Full(t) | QueueSendError::Closed(t) => t,
        }
    }
}

/// The sending side of a queue esocket: `Send + Sync + Clone` when `T: Send`.
#[derive(Debug)]
pub struct QueueSender<T> {
    tx: Sender<T>,
    wake: Arc<Wake>,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender { tx: self.tx.clone(), wake: self.wake.clone() }
    }
}

/// The eventfd that wakes the worker, and a flag so that a burst of items costs one wake.
#[derive(Debug)]
pub(crate) struct Wake {
    pub(crate) ev: Arc<EventFd>,
    pub(crate) pending: AtomicBool,
    /// The queue esocket is gone: senders get their item back instead of queueing it.
    pub(crate) closed: AtomicBool,
}

impl Wake {
    fn ring(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // Only fails if the counter would overflow, which needs 2^64 - 1 unread rings.
            let _ = self.ev.add(1);
        }
    }
}

impl<T> QueueSender<T> {
    /// Queues an item without waiting.
    ///
    /// # Errors
    /// [`QueueSendError::Full`] at capacity, [`QueueSendError::Closed`] once the esocket is
    /// gone; the item is handed back either way.
    pub fn send(&self, item: T) -> Result<(), QueueSendError<T>> {
        if self.wake.closed.load(Ordering::SeqCst) {
            return Err(QueueSendError::Closed(item));
        }
        match self.tx.try_send(item) {
            Ok(()) => {
                self.wake.ring();
                Ok(())
            }
            Err(TrySendError::Full(t)) => Err(QueueSendError::Full(t)),
            Err(TrySendError::Disconnected(t)) => Err(QueueSendError::Closed(t)),
        }
    }

    /// Queues an item, waiting up to `timeout` for room.
    ///
    /// # Errors
    /// As [`send`](Self::send), once the timeout has passed.
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), QueueSendError<T>> {
        if self.wake.closed.load(Ordering::SeqCst) {
            return Err(QueueSendError::Closed(item));
        }
        match self.tx.send_timeout(item, timeout) {
            Ok(()) => {
                self.wake.ring();
                Ok(())
            }
            Err(SendTimeoutError::Timeout(t)) => Err(QueueSendError::Full(t)),
            Err(SendTimeoutError::Disconnected(t)) => Err(QueueSendError::Closed(t)),
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// True when no item is waiting.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }
}

/// The callback that receives a queue's items.
pub(crate) type ItemFn<T> = Box<dyn FnMut(&mut Esocket<'_>, T)>;

/// Type-erased receiving side, owned by the queue esocket.
pub(crate) trait QueueDrain {
    /// Delivers up to `budget` items; returns whether items remain.
    fn drain(&mut self, es: &mut Esocket<'_>, budget: usize) -> bool;

    /// Items waiting.
    fn pending(&self) -> usize;

    /// Closes the queue to senders and drops what is left; returns how many items.
    fn discard(&mut self) -> u64;
}

pub(crate) struct Drain<T> {
    rx: Receiver<T>,
    wake: Arc<Wake>,
    cb: ItemFn<T>,
}

impl<T> QueueDrain for Drain<T> {
    fn drain(&mut self, es: &mut Esocket<'_>, budget: usize) -> bool {
        // Clear before receiving: an item sent after this point rings again. A swap (not a
        // store) reads the sender's flag, so every item sent before it is visible below.
        self.wake.pending.swap(false, Ordering::AcqRel);
        for _ in 0..budget {
            match self.rx.try_recv() {
                Ok(item) => (self.cb)(es, item),
                Err(_) => return false,
            }
            if es.is_closing() {
                return false;
            }
        }
        !self.rx.is_empty()
    }

    fn pending(&self) -> usize {
        self.rx.len()
    }

    fn discard(&mut self) -> u64 {
        self.wake.closed.store(true, Ordering::SeqCst);
        let mut n = 0;
        while self.rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }
}

/// Builds both halves of a queue of `capacity` items.
pub(crate) fn pair<T: 'static>(
    capacity: usize,
    ev: Arc<EventFd>,
    cb: ItemFn<T>,
) -> (QueueSender<T>, Box<dyn QueueDrain>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let wake =
        Arc::new(Wake { ev, pending: AtomicBool::new(false), closed: AtomicBool::new(false) });
    (QueueSender { tx, wake: wake.clone() }, Box::new(Drain { rx, wake, cb }))
}
