//! Event esockets: a u64 counter with eventfd semantics (adds accumulate until read).

use std::io;
use std::sync::Arc;

use crate::sys::eventfd::EventFd;

/// Signals an event esocket from any thread (`Send + Sync + Clone`).
///
/// Values added before the worker reads are summed, and the callback receives the sum: like
/// an eventfd, an event is a counter, not a queue.
#[derive(Clone, Debug)]
pub struct EventSender {
    pub(crate) ev: Arc<EventFd>,
}

impl EventSender {
    /// Adds `value` to the counter and wakes the worker; zero does nothing.
    ///
    /// # Errors
    /// `InvalidInput` for `u64::MAX` (an eventfd cannot hold it); `WouldBlock` if the counter
    /// would pass `u64::MAX - 1` (the worker is not reading).
    pub fn signal(&self, value: u64) -> io::Result<()> {
        if value == u64::MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an event adds at most u64::MAX - 1",
            ));
        }
        self.ev.add(value)
    }
}
