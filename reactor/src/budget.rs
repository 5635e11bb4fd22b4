//! [`BufferBudget`]: the input and output buffer memory every connection of a reactor holds,
//! together, and its bound.
//!
//! Each esocket's buffers are bounded on their own (`buf_in_cap`, `buf_out_cap`); this is the
//! bound above them, so that many connections cannot add up to more memory than the node
//! has. What is counted is what an esocket holds between callbacks: the storage behind
//! unconsumed input and the bytes of queued output. Each worker settles an esocket's share
//! after every callback round (one relaxed atomic add, and only when the share changed).
//!
//! At the bound:
//! - **output**: writes see less room. An esocket may always queue up to its low-water mark
//!   (so every connection can still answer), but past that, only what the budget has left;
//!   beyond it writes return `WouldBlock`, the handler stops reading that peer, and its
//!   `on_write` fires as output drains, as with a full `buf_out`;
//! - **input**: an esocket whose peer sent part of a message and went quiet (its socket is
//!   drained and the handler left bytes waiting) holds that input parked, in storage of its
//!   exact size. Past the bound, an esocket holding more than [`PARKED_FREE`] parked bytes
//!   is closed with [`ReactorError::BufferBudget`](crate::ReactorError::BufferBudget):
//!   the peer was using the node as storage;
//! - **accepts**: connections accepted while the total is past the bound are closed at once,
//!   before any handler sees them.
//!
//! So the memory held is at most the budget, plus up to the low-water mark and
//! [`PARKED_FREE`] per connection, plus one callback's output per worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Parked input an esocket may hold whatever the budget says (a request cut by the network
/// in the middle of its head must not cost the connection its life).
pub const PARKED_FREE: usize = 4096;

/// The bytes held in esocket buffers across the workers of a reactor, and their bound.
///
/// One per reactor, shared by its workers; read it through
/// [`Reactor::buffer_budget`](crate::Reactor::buffer_budget) (metrics).
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    closed: AtomicU64,
    refused_accepts: AtomicU64,
    write_refusals: AtomicU64,
}

impl BufferBudget {
    /// A budget of `limit` bytes (0: no bound; still counted).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(BufferBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            closed: AtomicU64::new(0),
            refused_accepts: AtomicU64::new(0),
            write_refusals: AtomicU64::new(0),
        })
    }

    /// The bound in bytes (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most held at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Esockets closed because they held parked input past the bound.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Connections closed at accept because the total was past the bound.
    pub fn refused_accepts(&self) -> u64 {
        self.refused_accepts.load(Ordering::Relaxed)
    }

    /// Writes that found less room than the esocket's own cap because of the bound.
    pub fn write_refusals(&self) -> u64 {
        self.write_refusals.load(Ordering::Relaxed)
    }

    /// True when the bound is set and the total is past it.
    pub fn is_over(&self) -> bool {
        self.limit != 0 && self.used() > self.limit
    }

    /// Bytes left under the bound; `None` when there is no bound.
    pub(crate) fn room(&self) -> Option<usize> {
        (self.limit != 0).then(|| self.limit.saturating_sub(self.used()))
    }

    /// Moves an esocket's share from `old` to `new` bytes.
    pub(crate) fn settle(&self, old: usize, new: usize) {
        if new > old {
            let now = self.used.fetch_add(new - old, Ordering::Relaxed) + (new - old);
            self.peak.fetch_max(now, Ordering::Relaxed);
        } else if old > new {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    pub(crate) fn note_closed(&self) {
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_refused_accept(&self) {
        self.refused_accepts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn note_write_refusal(&self) {
        self.write_refusals.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_and_bounds() {
        let b = BufferBudget::new(100);
        assert_eq!(b.room(), Some(100));
        b.settle(0, 60);
        b.settle(0, 50);
        assert!(b.is_over());
        assert_eq!(b.room(), Some(0));
        assert_eq!(b.peak(), 110);
        b.settle(60, 10);
        assert_eq!(b.used(), 60);
        assert!(!b.is_over());
        assert_eq!(b.room(), Some(40));
        let none = BufferBudget::new(0);
        none.settle(0, 1 << 40);
        assert_eq!(none.room(), None);
        assert!(!none.is_over());
    }
}
