//! A slab whose keys carry a generation, so that a key outlives its entry safely.
//!
//! Esocket ids are `(index, generation)`. Freeing an entry bumps the slot's generation, so a
//! message or an epoll event that still carries the old id finds a mismatch and is dropped
//! instead of reaching whatever esocket reuses the slot next.
//!
//! An entry can be *taken* out for the length of a callback (the slot is marked busy and keeps
//! its generation), which lets the callback hold `&mut` to its own esocket and to the worker at
//! the same time.

/// Index and generation of an occupied slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct SlotId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl SlotId {
    /// Packs the id into a mio token: generation in the high half, index in the low half.
    pub(crate) fn to_token(self) -> mio::Token {
        mio::Token(((self.generation as usize) << 32) | self.index as usize)
    }

    /// The inverse of [`SlotId::to_token`].
    pub(crate) fn from_token(token: mio::Token) -> Self {
        SlotId { index: token.0 as u32, generation: (token.0 >> 32) as u32 }
    }
}

#[derive(Debug)]
enum State<T> {
    Vacant { next_free: u32 },
    Occupied(T),
    Busy,
}

#[derive(Debug)]
struct Entry<T> {
    generation: u32,
    state: State<T>,
}

const NIL: u32 = u32::MAX;

/// Generational slab with a hard capacity.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: usize,
    capacity: usize,
}

impl<T> Slots<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        // u32 indices, and NIL is reserved.
        let capacity = capacity.clamp(1, (u32::MAX - 1) as usize);
        Slots { entries: Vec::new(), free_head: NIL, len: 0, capacity }
    }

    /// Occupied plus busy entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Reserves a slot and stores the value built from its id; `None` when full.
    pub(crate) fn insert_with(&mut self, make: impl FnOnce(SlotId) -> T) -> Option<SlotId> {
        if self.is_full() {
            return None;
        }
        let index = if self.free_head != NIL {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            match entry.state {
                State::Vacant { next_free } => self.free_head = next_free,
                _ => unreachable!("free list points at an occupied slot"),
            }
            index
        } else {
            self.entries.push(Entry { generation: 0, state: State::Busy });
            (self.entries.len() - 1) as u32
        };
        let entry = &mut self.entries[index as usize];
        let id = SlotId { index, generation: entry.generation };
        entry.state = State::Occupied(make(id));
        self.len += 1;
        Some(id)
    }

    #[cfg(test)]
    fn entry(&self, id: SlotId) -> Option<&Entry<T>> {
        self.entries.get(id.index as usize).filter(|e| e.generation == id.generation)
    }

    fn entry_mut(&mut self, id: SlotId) -> Option<&mut Entry<T>> {
        self.entries.get_mut(id.index as usize).filter(|e| e.generation == id.generation)
    }

    pub(crate) fn get_mut(&mut self, id: SlotId) -> Option<&mut T> {
        match &mut self.entry_mut(id)?.state {
            State::Occupied(value) => Some(value),
            _ => None,
        }
    }

    /// True if the id names a live entry, taken out or not.
    #[cfg(test)]
    pub(crate) fn contains(&self, id: SlotId) -> bool {
        matches!(self.entry(id).map(|e| &e.state), Some(State::Occupied(_) | State::Busy))
    }

    /// Takes the value out for a callback; the slot stays reserved (busy) under the same id.
    pub(crate) fn take(&mut self, id: SlotId) -> Option<T> {
        let entry = self.entry_mut(id)?;
        match std::mem::replace(&mut entry.state, State::Busy) {
            State::Occupied(value) => Some(value),
            other => {
                entry.state = other;
                None
            }
        }
    }

    /// Puts a taken value back.
    pub(crate) fn put_back(&mut self, id: SlotId, value: T) {
        if let Some(entry) = self.entry_mut(id) {
            debug_assert!(matches!(entry.state, State::Busy));
            entry.state = State::Occupied(value);
        }
    }

    /// Frees a slot (occupied or busy) and bumps its generation; returns the value if present.
    pub(crate) fn remove(&mut self, id: SlotId) -> Option<T> {
        let free_head = self.free_head;
        let entry = self.entry_mut(id)?;
        if matches!(entry.state, State::Vacant { .. }) {
            return None;
        }
        let old = std::mem::replace(&mut entry.state, State::Vacant { next_free: free_head });
        entry.generation = entry.generation.wrapping_add(1);
        self.free_head = id.index;
        self.len -= 1;
        match old {
            State::Occupied(value) => Some(value),
            _ => None,
        }
    }

    /// Ids of every occupied (not busy) entry.
    pub(crate) fn ids(&self) -> Vec<SlotId> {
        let mut ids = Vec::with_capacity(self.len);
        self.for_each_id(|id| ids.push(id));
        ids
    }

    pub(crate) fn for_each_id(&self, mut f: impl FnMut(SlotId)) {
        for (index, entry) in self.entries.iter().enumerate() {
            if matches!(entry.state, State::Occupied(_)) {
                f(SlotId { index: index as u32, generation: entry.generation });
            }
        }
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (SlotId, &mut T)> {
        self.entries.iter_mut().enumerate().filter_map(|(index, entry)| match &mut entry.state {
            State::Occupied(value) => {
                Some((SlotId { index: index as u32, generation: entry.generation }, value))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_never_reach_a_reused_slot() {
        let mut slots = Slots::new(4);
        let a = slots.insert_with(|_| "a").unwrap();
        assert_eq!(slots.remove(a), Some("a"));
        let b = slots.insert_with(|_| "b").unwrap();
        assert_eq!(a.index, b.index, "slot is reused");
        assert_ne!(a.generation, b.generation);
        assert!(slots.get_mut(a).is_none());
        assert!(slots.take(a).is_none());
        assert!(slots.remove(a).is_none());
        assert_eq!(slots.get_mut(b), Some(&mut "b"));
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let mut slots = Slots::new(2);
        let a = slots.insert_with(|_| 1).unwrap();
        slots.insert_with(|_| 2).unwrap();
        assert!(slots.insert_with(|_| 3).is_none());
        slots.remove(a);
        assert!(slots.insert_with(|_| 3).is_some());
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn take_and_put_back_keep_the_id() {
        let mut slots = Slots::new(2);
        let a = slots.insert_with(|id| id).unwrap();
        let value = slots.take(a).unwrap();
        assert_eq!(value, a);
        assert!(slots.contains(a));
        assert!(slots.take(a).is_none(), "busy");
        assert!(slots.ids().is_empty(), "busy entries are not listed");
        slots.put_back(a, value);
        assert_eq!(slots.ids(), vec![a]);
        // Removing a busy entry frees it too.
        slots.take(a).unwrap();
        assert!(slots.remove(a).is_none());
        assert!(!slots.contains(a));
        assert_eq!(slots.len(), 0);
    }

    #[test]
    fn token_round_trip() {
        let id = SlotId { index: 7, generation: 0xdead_beef };
        assert_eq!(SlotId::from_token(id.to_token()), id);
    }
}
