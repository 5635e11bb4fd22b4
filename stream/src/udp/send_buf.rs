//! A channel's send side over UDP, sans-IO: the bytes of the channel's stream from the
//! oldest unacknowledged one on, what has been sent, acknowledged, or declared lost. Lost
//! ranges go out again (in new packets, with new numbers) before new data: the transport
//! retransmits data, never packets.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

/// A set of disjoint, non-adjacent byte ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    /// Adds `r`, merging with what touches it.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut s, mut e) = (r.start, r.end);
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=e)
            .rev()
            .take_while(|&(_, &end)| end >= s)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in touching {
            self.0.remove(&a);
            s = s.min(a);
            e = e.max(b);
        }
        self.0.insert(s, e);
    }

    /// Removes `r`, splitting what it cuts.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .0
            .range(..r.end)
            .rev()
            .take_while(|&(_, &end)| end > r.start)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in hit {
            self.0.remove(&a);
            if a < r.start {
                self.0.insert(a, r.start);
            }
            if b > r.end {
                self.0.insert(r.end, b);
            }
        }
    }

    /// The lowest range.
    pub fn first(&self) -> Option<Range<u64>> {
        self.0.first_key_value().map(|(&a, &b)| a..b)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.0.iter().map(|(&a, &b)| a..b)
    }
}

/// One channel's send buffer.
#[derive(Clone, Debug, Default)]
pub struct SendBuf {
    /// The bytes from offset `base` on, in a ring: the acknowledged prefix leaves from the
    /// front without moving what stays, so each byte is copied once, when written.
    data: VecDeque<u8>,
    base: u64,
    /// The next new byte to send.
    unsent: u64,
    /// Acknowledged ranges above `base` (everything below `base` is acknowledged).
    acked: RangeSet,
    /// Ranges declared lost and not yet sent again.
    lost: RangeSet,
}

impl SendBuf {
    /// An empty buffer at offset 0.
    pub fn new() -> Self {
        SendBuf::default()
    }

    /// Appends bytes to the stream.
    pub fn write(&mut self, bytes: &[u8]) {
        self.data.extend(bytes);
    }

    /// The end of the stream written so far.
    pub fn end(&self) -> u64 {
        self.base + self.data.len() as u64
    }

    /// Bytes held: written and not acknowledged below the first gap.
    pub fn held(&self) -> usize {
        self.data.len()
    }

    /// Where the bytes from `start` towards `end` stop being contiguous in the ring.
    fn contiguous(&self, start: u64, end: u64) -> u64 {
        let first = self.data.as_slices().0.len() as u64;
        let wrap = self.base + first;
        if start < wrap { end.min(wrap) } else { end }
    }

    /// The bytes from `start` towards `end`, as far as they are contiguous in the ring
    /// (they stop short of `end` where the ring wraps).
    fn slice(&self, start: u64, end: u64) -> &[u8] {
        let (a, b) = self.data.as_slices();
        let (s, e) = ((start - self.base) as usize, (end - self.base) as usize);
        if s < a.len() { &a[s..e.min(a.len())] } else { &b[s - a.len()..e - a.len()] }
    }

    /// Bytes never sent.
    pub fn unsent(&self) -> u64 {
        self.end() - self.unsent
    }

    /// Whether anything waits to be sent (lost or new).
    pub fn has_data(&self) -> bool {
        !self.lost.is_empty() || self.unsent < self.end()
    }

    /// Whether every byte written has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.held() == 0
    }

    /// The next bytes to send, at most `max`, lost ones first: their offset and the bytes.
    /// `limit` is the peer's credit (an absolute offset) for new bytes; lost bytes were
    /// within it when first sent.
    pub fn next(&mut self, max: usize, limit: u64) -> Option<(u64, &[u8])> {
        if max == 0 {
            return None;
        }
        if let Some(r) = self.lost.first() {
            let end = self.contiguous(r.start, r.end.min(r.start + max as u64));
            self.lost.remove(r.start..end);
            return Some((r.start, self.slice(r.start, end)));
        }
        let end = self.end().min(limit).min(self.unsent + max as u64);
        if end <= self.unsent {
            return None;
        }
        let start = self.unsent;
        let end = self.contiguous(start, end);
        self.unsent = end;
        Some((start, self.slice(start, end)))
    }

    /// The bytes `r` were acknowledged; frees the acknowledged prefix.
    pub fn on_acked(&mut self, r: Range<u64>) {
        let r = r.start.max(self.base)..r.end.min(self.end());
        if r.is_empty() {
            return;
        }
        self.acked.insert(r.clone());
        self.lost.remove(r);
        if let Some(first) = self.acked.first()
            && first.start <= self.base
        {
            let n = (first.end - self.base) as usize;
            self.data.drain(..n);
            self.base = first.end;
            self.acked.remove(0..first.end);
        }
    }

    /// The bytes `r` were in a packet declared lost: they go out again unless acknowledged
    /// meanwhile (in another packet).
    pub fn on_lost(&mut self, r: Range<u64>) {
        let r = r.start.max(self.base)..r.end.min(self.unsent);
        if r.is_empty() {
            return;
        }
        let mut missing = RangeSet::default();
        missing.insert(r);
        for a in self.acked.iter() {
            missing.remove(a);
        }
        for m in missing.iter() {
            self.lost.insert(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::assemble::Assembler;

    #[test]
    fn range_sets_merge_and_split() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..30);
        assert_eq!(s.first(), Some(10..40));
        assert_eq!(s.iter().count(), 1);
        s.remove(15..25);
        assert_eq!(s.iter().collect::<Vec<_>>(), [10..15, 25..40]);
        s.insert(0..5);
        s.remove(0..100);
        assert!(s.is_empty());
    }

    #[test]
    fn lost_bytes_go_out_again_first_and_acks_free_the_prefix() {
        let mut b = SendBuf::new();
        b.write(&[7; 100]);
        let (o1, d1) = b.next(40, u64::MAX).unwrap();
        assert_eq!((o1, d1.len()), (0, 40));
        let (o2, _) = b.next(40, u64::MAX).unwrap();
        assert_eq!(o2, 40);
        b.on_acked(40..80);
        assert_eq!(b.held(), 100, "the prefix 0..40 is not acknowledged yet");
        b.on_lost(0..40);
        let (o3, d3) = b.next(25, u64::MAX).unwrap();
        assert_eq!((o3, d3.len()), (0, 25), "lost bytes first");
        let (o4, d4) = b.next(100, u64::MAX).unwrap();
        assert_eq!((o4, d4.len()), (25, 15));
        b.on_acked(0..40);
        assert_eq!(b.held(), 20);
        // Credit bounds new bytes.
        assert_eq!(b.next(100, 90).map(|(o, d)| (o, d.len())), Some((80, 10)));
        assert!(b.next(100, 90).is_none());
        // A loss of bytes acknowledged meanwhile sends nothing again.
        b.on_lost(80..90);
        b.on_acked(80..90);
        assert!(b.next(100, 90).is_none());
    }

    #[test]
    fn a_lossy_schedule_delivers_the_stream_exactly() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut b = SendBuf::new();
        b.write(&data);
        let mut a = Assembler::new();
        let mut out = Vec::new();
        let mut x = 7u64;
        let mut rounds = 0;
        while !b.all_acked() {
            rounds += 1;
            assert!(rounds < 10_000);
            let mut sent = Vec::new();
            while let Some((o, d)) = b.next(1000, u64::MAX) {
                sent.push((o, d.to_vec()));
            }
            for (o, d) in sent {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = o..o + d.len() as u64;
                if (x >> 33) % 10 < 3 {
                    b.on_lost(r); // 30 % loss
                } else {
                    a.insert(o, &d, u64::MAX, |c| out.extend_from_slice(c)).unwrap();
                    b.on_acked(r);
                }
            }
        }
        assert_eq!(out, data);
    }
}
