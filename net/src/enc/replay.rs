//! `ReplayWindow`: which request counters a key has already accepted (RFC 6479's bitmap,
//! as WireGuard and IPsec use it).
//!
//! A client may have several requests in flight on several connections, so counters can
//! arrive out of order; the window accepts any counter not seen before that is newer than
//! the newest one minus [`REPLAY_WINDOW`], and refuses the rest. The bitmap is a ring of
//! 64-bit blocks indexed by `counter / 64`: moving the window forward clears the blocks it
//! passes instead of shifting bits, so an accept costs O(1) whatever the jump.

/// How far behind the newest accepted counter a counter may be and still be accepted.
pub const REPLAY_WINDOW: u64 = (BLOCKS as u64 - 1) * 64;

const BLOCKS: usize = 16;

/// Why a counter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The counter was accepted before.
    #[error("counter already used")]
    Seen,
    /// The counter is [`REPLAY_WINDOW`] or more behind the newest accepted one: it cannot
    /// be told from a replay any more.
    #[error("counter too old")]
    TooOld,
}

/// The counters one key has accepted. 136 bytes; no allocation.
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    /// The newest accepted counter; meaningless while `any` is false.
    top: u64,
    /// Whether any counter has been accepted.
    any: bool,
    /// Bit `c % 64` of block `(c / 64) % BLOCKS` is set when counter `c` (within the
    /// window) was accepted. Blocks ahead of `top`'s are kept clear.
    bits: [u64; BLOCKS],
}

impl ReplayWindow {
    /// A window that has accepted nothing.
    pub fn new() -> Self {
        ReplayWindow::default()
    }

    /// Whether `counter` would be accepted; changes nothing. Check before the (costly)
    /// authentication, [`accept`](Self::accept) after it, so that forged requests cannot
    /// use up counters.
    ///
    /// # Errors
    /// [`ReplayError`] when `counter` would be refused.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if !self.any || counter > self.top {
            return Ok(());
        }
        if self.top - counter >= REPLAY_WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (block, bit) = Self::index(counter);
        if self.bits[block] & bit != 0 { Err(ReplayError::Seen) } else { Ok(()) }
    }

    /// Records `counter` as used, if [`check`](Self::check) allows it.
    ///
    /// # Errors
    /// [`ReplayError`] when `counter` is refused; nothing changes then.
    pub fn accept(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if !self.any {
            self.any = true;
            self.top = counter;
        } else if counter > self.top {
            // Clear the blocks the window moves over: they held counters now too old.
            let steps = (counter / 64 - self.top / 64).min(BLOCKS as u64);
            let first = self.top / 64;
            for i in 1..=steps {
                self.bits[((first + i) % BLOCKS as u64) as usize] = 0;
            }
            self.top = counter;
        }
        let (block, bit) = Self::index(counter);
        self.bits[block] |= bit;
        Ok(())
    }

    /// The newest accepted counter, if any.
    pub fn newest(&self) -> Option<u64> {
        self.any.then_some(self.top)
    }

    fn index(counter: u64) -> (usize, u64) {
        (((counter / 64) % BLOCKS as u64) as usize, 1u64 << (counter % 64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_and_replays() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.newest(), None);
        for c in 0..200 {
            assert_eq!(w.accept(c), Ok(()));
        }
        assert_eq!(w.accept(150), Err(ReplayError::Seen));
        assert_eq!(w.accept(205), Ok(()));
        assert_eq!(w.accept(203), Ok(()), "late but new");
        assert_eq!(w.accept(203), Err(ReplayError::Seen));
        assert_eq!(w.check(204), Ok(()));
        assert_eq!(w.newest(), Some(205));
    }

    #[test]
    fn the_window_edge() {
        let mut w = ReplayWindow::new();
        w.accept(10_000).unwrap();
        assert_eq!(w.check(10_000 - REPLAY_WINDOW), Err(ReplayError::TooOld));
        assert_eq!(w.accept(10_000 - REPLAY_WINDOW + 1), Ok(()));
        // A big jump clears everything behind.
        w.accept(1 << 40).unwrap();
        assert_eq!(w.accept((1 << 40) - 1), Ok(()));
        assert_eq!(w.accept(10_000), Err(ReplayError::TooOld));
        // The far end of the counter space.
        w.accept(u64::MAX).unwrap();
        assert_eq!(w.accept(u64::MAX), Err(ReplayError::Seen));
        assert_eq!(w.accept(u64::MAX - 5), Ok(()));
    }

    /// Against a reference set: a pseudo-random walk of counters, each accepted exactly
    /// when it is new and within the window.
    #[test]
    fn matches_a_reference_model() {
        let mut w = ReplayWindow::new();
        let mut seen = std::collections::HashSet::new();
        let mut top: Option<u64> = None;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut base = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            base += x % 3;
            let c = (base + x % 1200).saturating_sub(600);
            let want_ok = match top {
                None => true,
                Some(t) => c > t || (t - c < REPLAY_WINDOW && !seen.contains(&c)),
            };
            assert_eq!(w.accept(c).is_ok(), want_ok, "counter {c}, top {top:?}");
            if want_ok {
                seen.insert(c);
                top = Some(top.map_or(c, |t| t.max(c)));
            }
        }
    }
}
