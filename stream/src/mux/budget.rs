//! [`ReassemblyBudget`]: the bytes every session of a server may hold in messages still
//! being reassembled, together.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Bytes held in unfinished messages across sessions, and their bound.
///
/// A message larger than one data frame is reassembled as its frames arrive, and its
/// bytes are granted as they arrive, so a peer could hold a message one byte short of
/// complete and make the server keep it. Each byte that goes into an unfinished message is
/// charged here first; a byte that would take the total past the bound ends that stream
/// (CLOSE code 4, `docs/PROTOCOL.md` §7) and frees what it held, while streams whose
/// messages fit carry on. Bytes are given back when their message completes or the stream
/// ends. Shared by every mux of a server (`Arc`); a few relaxed atomics.
#[derive(Debug)]
pub struct ReassemblyBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicU64,
}

impl ReassemblyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(ReassemblyBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Takes `n` bytes; false (and counted) when they do not fit.
    pub(crate) fn try_charge(&self, n: usize) -> bool {
        let r = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
            u.checked_add(n).filter(|&t| t <= self.limit)
        });
        match r {
            Ok(before) => {
                self.peak.fetch_max(before + n, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Gives back `n` bytes taken by [`try_charge`](Self::try_charge).
    pub(crate) fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The most held at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Streams ended because their message did not fit.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}
