//! TEMPORARY stub; replaced by the hierarchical wheel.
use std::collections::BTreeMap;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    generation: u32,
}
#[derive(Debug)]
pub struct TimerWheel<T> {
    map: BTreeMap<(u64, u32), (u32, T)>,
    dl: std::collections::HashMap<u32, (u64, u32)>,
    next: u32,
    elapsed: u64,
}
impl<T> TimerWheel<T> {
    pub fn new() -> Self {
        TimerWheel { map: BTreeMap::new(), dl: Default::default(), next: 0, elapsed: 0 }
    }
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        self.next += 1;
        let k = TimerKey { index: self.next, generation: 0 };
        self.map.insert((deadline, self.next), (self.next, value));
        self.dl.insert(self.next, (deadline, self.next));
        k
    }
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        let e = self.dl.remove(&key.index)?;
        self.map.remove(&e).map(|v| v.1)
    }
    pub fn next_deadline(&self) -> Option<u64> {
        self.map.keys().next().map(|k| k.0)
    }
    pub fn poll(&mut self, now: u64) -> Option<(TimerKey, u64, T)> {
        let (&k, _) = self.map.iter().next()?;
        if k.0 > now {
            return None;
        }
        let (_, v) = self.map.remove(&k)?;
        self.dl.remove(&k.1);
        Some((TimerKey { index: k.1, generation: 0 }, k.0, v))
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
}
