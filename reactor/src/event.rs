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
    /// `WouldBlock` if the counter would overflow `u64::MAX - 1` (the worker is not reading).
    pub fn signal(&self, value: u64) -> io::Result<()> {
        self.ev.add(value)
    }
}
