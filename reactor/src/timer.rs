//! A hierarchical hashed timer wheel, sans-IO, in the style of tokio's `runtime/time/wheel`.
//!
//! # Why a wheel and not one fd per timer
//!
//! A worker owns many esockets whose idle, handshake and retransmit timeouts are armed and
//! cancelled far more often than they fire. A timerfd each would cost an fd, an epoll
//! registration and a syscall per arm and per cancel. Instead the worker keeps its timers here,
//! sleeps in `epoll_wait` until [`TimerWheel::next_deadline`] and then drains
//! [`TimerWheel::poll`]: arming and cancelling are O(1) in user space, one sleep covers every
//! timer. The wheel reads no clock; the caller passes `u64` ticks (one tick is one millisecond).
//!
//! # Layout
//!
//! Six levels of 64 slots. A slot at level `L` is `64^L` ticks wide, so level `L` spans
//! `64^(L+1)` ticks and the whole wheel `64^6 = 2^36` ticks (about 795 days at 1 ms). A timer is
//! filed at the level of the highest 6-bit group in which its deadline differs from `elapsed`,
//! in the slot named by that group of the deadline. So every timer at level `L` lies in the
//! level-`L` span that `elapsed` is in, in a later slot than `elapsed`'s; everything at a lower
//! level therefore fires before anything at a higher one. Each level keeps a `u64` bitmap of
//! occupied slots, so the earliest non-empty slot is the lowest set bit of the lowest non-empty
//! level: O(levels), however sparse the wheel is.
//!
//! # Cascading
//!
//! When time reaches the start of an occupied slot at level `L > 0`, that slot's timers are
//! re-filed relative to the new `elapsed` and land at lower levels. A timer thus moves down at
//! most five times before it fires, and [`TimerWheel::poll`] jumps straight from one occupied
//! slot to the next, so advancing by any amount (a loop that slept an hour) costs
//! O(pending timers x levels), never O(ticks).
//!
//! # Edges
//!
//! A deadline at or before `elapsed` goes on an *expired* list, drained by the next poll. One
//! past the end of the current `2^36`-tick span cannot be hashed into a slot, so its placement
//! is clamped: it waits on an *overflow* list that is re-filed once time enters a later span.
//! Its deadline stays exact, so it still fires precisely then (`u64::MAX` is in effect never).
//!
//! Timers live in a `Vec`-backed slab with a free list, so arming allocates nothing once the
//! slab has grown to the peak number of pending timers. Each slot and extra list heads an
//! intrusive doubly linked list threaded through the slab, making removal by [`TimerKey`] O(1).

use std::cmp::Reverse;

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
/// Low bits of a tick that vary within one span of the whole wheel (`64^6` ticks).
const SPAN_MASK: u64 = (1 << (SLOT_BITS as usize * LEVELS)) - 1;
/// List ids `0..EXPIRED` are the wheel's slots (`level * SLOTS + slot`); two lists follow.
const EXPIRED: usize = LEVELS * SLOTS;
const OVERFLOW: usize = EXPIRED + 1;
const LISTS: usize = OVERFLOW + 1;
/// Null link; also why the slab can never use index `u32::MAX`.
const NIL: u32 = u32::MAX;

/// Key of a pending timer: slot index + generation; a stale key never touches a newer timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}

#[derive(Debug)]
struct Entry<T> {
    /// `None` while the entry is on the free list.
    value: Option<T>,
    deadline: u64,
    /// Bumped on every release, so keys handed out for an earlier occupant stop matching.
    generation: u32,
    /// The list the entry is on, so `remove` can fix its head and the occupancy bitmap.
    list: u16,
    prev: u32,
    /// Doubles as the free-list link while vacant.
    next: u32,
}

/// Hierarchical timer wheel: 6 levels x 64 slots over `2^36` ticks, exact deadlines beyond.
#[derive(Debug)]
pub struct TimerWheel<T> {
    entries: Vec<Entry<T>>,
    free_head: u32,
    /// Head of each list; boxed because 386 heads would make the wheel awkward to move around.
    heads: Box<[u32; LISTS]>,
    /// Per level, bit `s` set iff slot `s` is non-empty.
    occupied: [u64; LEVELS],
    elapsed: u64,
    len: usize,
    /// Scratch for ordering overflow timers that fall due together; kept for its allocation.
    due: Vec<(u64, u32)>,
    /// Times a timer was (re-)filed, so tests can bound the work a jump of time costs.
    #[cfg(test)]
    filings: usize,
}

impl<T> Default for TimerWheel<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose time starts at tick 0.
    pub fn new() -> Self {
        TimerWheel {
            entries: Vec::new(),
            free_head: NIL,
            heads: Box::new([NIL; LISTS]),
            occupied: [0; LEVELS],
            elapsed: 0,
            len: 0,
            due: Vec::new(),
            #[cfg(test)]
            filings: 0,
        }
    }

    /// The tick the wheel has been advanced to; it only ever grows.
    #[allow(dead_code, reason = "wheel API the worker does not call yet")]
    pub fn elapsed(&self) -> u64 {
        self.elapsed
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no timer is pending.
    #[allow(dead_code, reason = "wheel API the worker does not call yet")]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms a timer for `deadline`; one at or before [`elapsed`](Self::elapsed) is due at the
    /// next [`poll`](Self::poll). Any `u64` deadline is accepted and kept exact.
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let index = if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next;
            entry.value = Some(value);
            entry.deadline = deadline;
            index
        } else {
            // Only reachable with 2^32 - 1 timers pending, i.e. >100 GiB of slab: memory runs
            // out first, so this is the one panic left in the wheel.
            let index = u32::try_from(self.entries.len())
                .ok()
                .filter(|&index| index != NIL)
                .expect("timer slab exhausted");
            self.entries.push(Entry {
                value: Some(value),
                deadline,
                generation: 0,
                list: 0,
                prev: NIL,
                next: NIL,
            });
            index
        };
        self.len += 1;
        self.file(index);
        let generation = self.entries[index as usize].generation;
        TimerKey { index, generation }
    }

    /// Cancels a pending timer in O(1) and hands back its value; `None` if `key` is stale
    /// (the timer already fired or was removed).
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        self.lookup(key)?;
        self.unlink(key.index);
        self.release(key.index)
    }

    /// The deadline of a pending timer, or `None` if `key` is stale.
    #[allow(dead_code, reason = "wheel API the worker does not call yet")]
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.lookup(key).map(|entry| entry.deadline)
    }

    /// The exact earliest deadline among pending timers, or `None` if there are none.
    ///
    /// Costs O(levels) plus a scan of the one list that must hold the minimum: all of its
    /// timers come before every timer on any other list, but within it they are unordered.
    pub fn next_deadline(&self) -> Option<u64> {
        let list = if self.heads[EXPIRED] != NIL { EXPIRED } else { self.next_expiration()?.0 };
        let mut earliest = u64::MAX;
        let mut cursor = self.heads[list];
        while cursor != NIL {
            let entry = &self.entries[cursor as usize];
            earliest = earliest.min(entry.deadline);
            cursor = entry.next;
        }
        Some(earliest)
    }

    /// Pops one timer whose deadline is at or before `now`, as `(key, deadline, value)`;
    /// `None` once no pending timer is due, at which point [`elapsed`](Self::elapsed) is `now`.
    ///
    /// Timers come out in deadline order, except that those already overdue when inserted come
    /// first, in no particular order. A `now` before `elapsed` is treated as `elapsed`.
    pub fn poll(&mut self, now: u64) -> Option<(TimerKey, u64, T)> {
        let now = now.max(self.elapsed);
        loop {
            let head = self.heads[EXPIRED];
            if head != NIL {
                self.unlink(head);
                let entry = &self.entries[head as usize];
                let (index, generation, deadline) = (head, entry.generation, entry.deadline);
                let key = TimerKey { index, generation };
                return self.release(head).map(|value| (key, deadline, value));
            }
            match self.next_expiration() {
                Some((OVERFLOW, at)) if at <= now => self.drain_overflow(now),
                Some((list, at)) if at <= now => {
                    // Stopping at the slot's start rather than at `now` keeps the slot's timers
                    // in deadline order as they cascade down.
                    self.elapsed = at;
                    let mut cursor = self.detach(list);
                    while cursor != NIL {
                        let next = self.entries[cursor as usize].next;
                        self.file(cursor);
                        cursor = next;
                    }
                }
                _ => {
                    // No slot starts at or before `now`, so every filed timer still lies after
                    // `now` in the same spans as before: jumping is safe.
                    self.elapsed = now;
                    return None;
                }
            }
        }
    }

    fn lookup(&self, key: TimerKey) -> Option<&Entry<T>> {
        self.entries
            .get(key.index as usize)
            .filter(|entry| entry.value.is_some() && entry.generation == key.generation)
    }

    /// The earliest non-empty list besides `EXPIRED`, and the tick at which it must be handled.
    fn next_expiration(&self) -> Option<(usize, u64)> {
        for (level, &occupied) in self.occupied.iter().enumerate() {
            if occupied != 0 {
                let slot = u64::from(occupied.trailing_zeros());
                let shift = level as u32 * SLOT_BITS;
                debug_assert!(slot > (self.elapsed >> shift) & SLOT_MASK);
                // Cannot overflow: the result lies within the level's span that holds `elapsed`.
                let span_start = self.elapsed & !((1 << (shift + SLOT_BITS)) - 1);
                return Some((level * SLOTS + slot as usize, span_start + (slot << shift)));
            }
        }
        // Saturation only happens in the last span, where no deadline can overflow it.
        (self.heads[OVERFLOW] != NIL)
            .then(|| (OVERFLOW, (self.elapsed | SPAN_MASK).saturating_add(1)))
    }

    /// Re-files the overflow list once time has left the current span.
    fn drain_overflow(&mut self, now: u64) {
        // Overflow is only chosen when every level is empty, so `elapsed` may jump straight to
        // `now`: going span by span would make a huge jump cost O(ticks / 2^36).
        self.elapsed = now;
        let mut due = std::mem::take(&mut self.due);
        let mut cursor = self.detach(OVERFLOW);
        while cursor != NIL {
            let entry = &self.entries[cursor as usize];
            let next = entry.next;
            if entry.deadline <= now {
                due.push((entry.deadline, cursor));
            } else {
                self.file(cursor);
            }
            cursor = next;
        }
        // They may span many ticks; pushing latest-first leaves them in deadline order.
        due.sort_unstable_by_key(|&(deadline, _)| Reverse(deadline));
        for &(_, index) in &due {
            self.push(EXPIRED, index);
        }
        due.clear();
        self.due = due;
    }

    /// Puts an unlinked entry on the list its deadline calls for, relative to `elapsed`.
    fn file(&mut self, index: u32) {
        #[cfg(test)]
        {
            self.filings += 1;
        }
        let deadline = self.entries[index as usize].deadline;
        let list = if deadline <= self.elapsed {
            EXPIRED
        } else if deadline > self.elapsed | SPAN_MASK {
            OVERFLOW
        } else {
            let level = level_for(self.elapsed, deadline);
            let slot = (deadline >> (level as u32 * SLOT_BITS)) & SLOT_MASK;
            level * SLOTS + slot as usize
        };
        self.push(list, index);
    }

    fn push(&mut self, list: usize, index: u32) {
        let head = self.heads[list];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let entry = &mut self.entries[index as usize];
        entry.list = list as u16;
        entry.prev = NIL;
        entry.next = head;
        self.heads[list] = index;
        if list < EXPIRED {
            self.occupied[list / SLOTS] |= 1 << (list % SLOTS);
        }
    }

    fn unlink(&mut self, index: u32) {
        let entry = &self.entries[index as usize];
        let (list, prev, next) = (usize::from(entry.list), entry.prev, entry.next);
        if prev != NIL {
            self.entries[prev as usize].next = next;
        } else {
            self.heads[list] = next;
            if next == NIL && list < EXPIRED {
                self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
            }
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
    }

    /// Empties a whole list at once; its entries keep their `next` links for the caller to walk.
    fn detach(&mut self, list: usize) -> u32 {
        if list < EXPIRED {
            self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
        }
        std::mem::replace(&mut self.heads[list], NIL)
    }

    /// Returns an unlinked entry to the free list.
    fn release(&mut self, index: u32) -> Option<T> {
        let entry = &mut self.entries[index as usize];
        entry.generation = entry.generation.wrapping_add(1);
        entry.prev = NIL;
        entry.next = self.free_head;
        self.free_head = index;
        self.len -= 1;
        entry.value.take()
    }
}

/// The level for a deadline in `(elapsed, elapsed | SPAN_MASK]`: that of the highest 6-bit
/// group in which the two differ.
fn level_for(elapsed: u64, deadline: u64) -> usize {
    // Or-ing in the lowest group maps differences confined to it onto level 0.
    let differing = (elapsed ^ deadline) | SLOT_MASK;
    let highest_bit = 63 - differing.leading_zeros();
    (highest_bit / SLOT_BITS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The pending set as the wheel should see it: (deadline, id) -> key.
    type Model = BTreeMap<(u64, u64), TimerKey>;

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound.max(1)
        }
    }

    /// Polls one timer, keeping only (deadline, value).
    fn fire<V>(wheel: &mut TimerWheel<V>, now: u64) -> Option<(u64, V)> {
        wheel.poll(now).map(|(_, deadline, value)| (deadline, value))
    }

    fn check(wheel: &TimerWheel<u64>, model: &Model) {
        assert_eq!(wheel.len(), model.len());
        assert_eq!(wheel.is_empty(), model.is_empty());
        let earliest = model.keys().next().map(|&(deadline, _)| deadline);
        assert_eq!(wheel.next_deadline(), earliest);
    }

    /// Polls until `None`, checking that exactly the due set comes out, in the promised order.
    fn drain(wheel: &mut TimerWheel<u64>, model: &mut Model, now: u64) {
        let start = wheel.elapsed();
        let mut last = 0;
        while let Some((key, deadline, id)) = wheel.poll(now) {
            assert!(deadline <= now.max(start), "{deadline} fired at {now}");
            assert_eq!(model.remove(&(deadline, id)), Some(key));
            assert_eq!(wheel.deadline(key), None);
            if deadline <= start {
                assert_eq!(last, 0, "an overdue timer came out after a fresh one");
            } else {
                assert!(deadline >= last, "{deadline} came out after {last}");
                last = deadline;
            }
        }
        assert_eq!(wheel.elapsed(), now.max(start));
        let left_behind = model.range(..=(now, u64::MAX)).next();
        assert!(left_behind.is_none(), "{left_behind:?} is due");
        check(wheel, model);
    }

    #[test]
    fn randomized_against_model() {
        for seed in 1..=8u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut wheel = TimerWheel::new();
            // Also start just before a span boundary and close to the end of time.
            let origin = [0, rng.next() >> 1, SPAN_MASK - 1_000, u64::MAX - (1 << 52)];
            assert!(wheel.poll(origin[seed as usize % 4]).is_none());
            let mut model = Model::new();
            // Every key ever issued, so that removals also exercise stale keys.
            let mut issued: Vec<(TimerKey, u64, u64)> = Vec::new();
            for step in 0..5_000u64 {
                let elapsed = wheel.elapsed();
                let earliest = model.keys().next().map_or(elapsed, |&(d, _)| d);
                match rng.below(100) {
                    0..=44 => {
                        let deadline = match rng.below(9) {
                            0 => elapsed.saturating_sub(rng.below(100)),
                            1 | 2 => elapsed.saturating_add(rng.below(70)),
                            3 => elapsed.saturating_add(rng.below(5_000)),
                            4 => elapsed.saturating_add(rng.below(1 << 24)),
                            5 => elapsed.saturating_add(rng.below(1 << 40)),
                            6 => elapsed.saturating_add(rng.next() >> rng.below(64)),
                            7 => rng.next(),
                            _ => u64::MAX - rng.below(3),
                        };
                        let key = wheel.insert(deadline, step);
                        assert_eq!(wheel.deadline(key), Some(deadline));
                        model.insert((deadline, step), key);
                        issued.push((key, deadline, step));
                    }
                    45..=69 if !issued.is_empty() => {
                        // Half live timers, half any key ever issued (mostly stale by now).
                        let (key, deadline, id) = if rng.below(2) == 0 && !model.is_empty() {
                            let pick = rng.below(model.len() as u64) as usize;
                            let (&(deadline, id), &key) = model.iter().nth(pick).unwrap();
                            (key, deadline, id)
                        } else {
                            issued[rng.below(issued.len() as u64) as usize]
                        };
                        let live = model.remove(&(deadline, id)).is_some();
                        assert_eq!(wheel.deadline(key), live.then_some(deadline));
                        assert_eq!(wheel.remove(key), live.then_some(id));
                        assert_eq!(wheel.remove(key), None);
                    }
                    70..=79 => {
                        // A partial drain, so later inserts and removes meet a half-advanced wheel.
                        let now = elapsed.saturating_add(rng.below(300));
                        let n = rng.below(4) as usize;
                        for (key, deadline, id) in std::iter::from_fn(|| wheel.poll(now)).take(n) {
                            assert!(deadline <= now);
                            assert_eq!(model.remove(&(deadline, id)), Some(key));
                        }
                    }
                    _ => {
                        let now = match rng.below(20) {
                            0 => elapsed.saturating_sub(5),
                            1..=8 => elapsed.saturating_add(rng.below(70)),
                            9..=13 => elapsed.saturating_add(rng.below(10_000)),
                            14 | 15 => elapsed.saturating_add(rng.below(1 << 38)),
                            16 => earliest,
                            17 => elapsed.saturating_add(rng.next() >> (20 + rng.below(44))),
                            18 => earliest.saturating_sub(1),
                            19 if step > 4_900 => u64::MAX,
                            _ => elapsed.saturating_add(1),
                        };
                        drain(&mut wheel, &mut model, now);
                    }
                }
                check(&wheel, &model);
            }
            drain(&mut wheel, &mut model, u64::MAX);
        }
    }

    #[test]
    fn periodic_rearm_does_not_drift() {
        // Re-arming from the deadline rather than from `now` keeps the period when polled late.
        for lateness in [0, 3, 9] {
            let mut wheel = TimerWheel::new();
            let mut key = wheel.insert(10, "tick");
            for due in (10..=1_000).step_by(10) {
                assert_eq!(wheel.next_deadline(), Some(due));
                assert!(wheel.poll(due - 1).is_none() || lateness > 0);
                assert_eq!(wheel.poll(due + lateness), Some((key, due, "tick")));
                assert!(wheel.poll(due + lateness).is_none());
                if due < 1_000 {
                    let stale = key;
                    key = wheel.insert(due + 10, "tick");
                    // Same slot, new generation: the fired timer's key must not reach the new one.
                    assert_eq!((key.index, wheel.remove(stale)), (stale.index, None));
                }
            }
            assert!(wheel.is_empty());
        }
    }

    /// Offsets just around slot and level edges, up to beyond the whole wheel.
    fn boundaries() -> impl Iterator<Item = u64> {
        let widths = (1..=7).map(|power| 64u64.pow(power));
        let edges = widths.flat_map(|w| [w - 1, w, w + 1, 2 * w - 1, 2 * w, 63 * w]);
        [1, 2, 3].into_iter().chain(edges)
    }

    #[test]
    fn cascading_boundaries_fire_exactly_when_due() {
        let cube = 64u64.pow(3);
        for origin in [0, 1, 63, 4_095, cube - 2, cube * cube + 7, SPAN_MASK - 4] {
            for offset in boundaries() {
                let target = origin + offset;
                // Straight to the edge, then approaching it in steps that land on the slot
                // edges of every level on the way.
                for stepped in [false, true] {
                    let mut wheel = TimerWheel::new();
                    assert!(wheel.poll(origin).is_none());
                    wheel.insert(target, offset);
                    for power in (0..=7).rev().filter(|_| stepped) {
                        let now = target - 64u64.pow(power).min(offset);
                        assert!(wheel.poll(now).is_none(), "{target} fired at {now}");
                        assert_eq!(wheel.next_deadline(), Some(target));
                    }
                    assert!(wheel.poll(target - 1).is_none(), "{target} fired early");
                    assert_eq!(fire(&mut wheel, target), Some((target, offset)));
                    assert!(wheel.is_empty());
                }
            }
        }
    }

    #[test]
    fn far_future_and_extreme_inputs_do_not_panic() {
        let mut wheel = TimerWheel::new();
        let never = wheel.insert(u64::MAX, 0);
        let (next_span, far) = (1 << 36, (1_000 << 36) | 17);
        wheel.insert(next_span, 1);
        wheel.insert(far, 2);
        wheel.insert(u64::MAX - 1, 3);
        wheel.insert(0, 4);
        assert_eq!(wheel.next_deadline(), Some(0));
        assert_eq!(fire(&mut wheel, 0), Some((0, 4)));
        assert_eq!(wheel.next_deadline(), Some(next_span));
        assert!(wheel.poll(next_span - 1).is_none());
        assert_eq!(wheel.deadline(never), Some(u64::MAX));
        assert_eq!(wheel.remove(TimerKey { index: 99, ..never }), None);
        assert_eq!(fire(&mut wheel, u64::MAX - 1), Some((next_span, 1)));
        assert_eq!(fire(&mut wheel, u64::MAX - 1), Some((far, 2)));
        assert_eq!(fire(&mut wheel, u64::MAX - 1), Some((u64::MAX - 1, 3)));
        assert!(wheel.poll(u64::MAX - 1).is_none());
        assert_eq!(wheel.next_deadline(), Some(u64::MAX));
        assert_eq!(wheel.poll(u64::MAX), Some((never, u64::MAX, 0)));
        assert!(wheel.poll(u64::MAX).is_none());

        // At the end of time everything is due at once, and time cannot move backwards.
        let late = wheel.insert(u64::MAX, 5);
        wheel.insert(7, 6);
        assert_eq!(wheel.next_deadline(), Some(7));
        assert_eq!(wheel.remove(late), Some(5));
        assert_eq!(fire(&mut wheel, 0), Some((7, 6)));
        assert!(wheel.poll(0).is_none());
        assert_eq!(wheel.elapsed(), u64::MAX);
    }

    #[test]
    fn huge_jumps_skip_empty_time() {
        // One timer 2^20 spans away: walking span by span would re-file it 2^20 times.
        let mut wheel = TimerWheel::new();
        wheel.insert(1 << 56, ());
        assert_eq!(fire(&mut wheel, u64::MAX), Some((1 << 56, ())));
        assert_eq!(wheel.filings, 1);

        // Each timer is filed once on insert and then cascades at most five times.
        let mut wheel = TimerWheel::new();
        let mut rng = XorShift(7);
        let mut deadlines: Vec<u64> = (0..2_000u64)
            .map(|i| match i % 4 {
                0 => rng.below(3_600_000),
                1 => rng.below(1 << 36),
                2 => rng.next() >> 1,
                _ => (i << 40) | rng.below(1 << 40),
            })
            .collect();
        for &deadline in &deadlines {
            wheel.insert(deadline, ());
        }
        deadlines.sort_unstable();
        let fired: Vec<_> = std::iter::from_fn(|| wheel.poll(u64::MAX)).map(|t| t.1).collect();
        assert_eq!(fired, deadlines);
        let filings = wheel.filings;
        assert!(filings <= deadlines.len() * LEVELS, "{filings} filings");
    }
}
