//! A channel's send side over UDP, sans-IO: the bytes of the channel's stream from the
//! oldest unacknowledged one on, what has been sent, acknowledged, or declared lost. Lost
//! ranges go out again (in new packets, with new numbers) before new data: the transport
//! retransmits data, never packets.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
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
        if r.is_empty() || self.0.is_empty() {
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
///
/// The bytes are held as chunks: slices of the application's messages, taken without
/// copying, and frame headers gathered in a small staging buffer. Each byte is copied once
/// on its way out, into the packet that carries it (and again into each retransmission).
#[derive(Clone, Debug, Default)]
pub struct SendBuf {
    /// The bytes from offset `base` on, in order, each chunk with its stream offset. The
    /// first chunk may start before `base` (its acknowledged head is kept until all of it
    /// is acknowledged).
    chunks: VecDeque<(u64, Bytes)>,
    /// Where small writes are gathered; each write leaves it as a chunk of its own buffer.
    staged: BytesMut,
    /// Chunks dropped from the front so far, and the absolute index of the chunk the last
    /// copy ended in: sends go forward through the chunks, so the next copy starts there
    /// or just after, without a search.
    dropped: usize,
    cursor: usize,
    base: u64,
    end: u64,
    /// The next new byte to send.
    unsent: u64,
    /// Acknowledged ranges above `base` (everything below `base` is acknowledged).
    acked: RangeSet,
    /// Ranges declared lost and not yet sent again.
    lost: RangeSet,
}

/// Bytes the staging buffer for small writes grows by.
const STAGING: usize = 4096;

impl SendBuf {
    /// An empty buffer at offset 0.
    pub fn new() -> Self {
        SendBuf::default()
    }

    /// Appends bytes to the stream, copying them (for small pieces such as frame headers).
    pub fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.staged.capacity() < bytes.len() {
            self.staged.reserve(bytes.len().max(STAGING));
        }
        self.staged.extend_from_slice(bytes);
        let chunk = self.staged.split().freeze();
        self.push(chunk);
    }

    /// Appends bytes to the stream without copying them.
    pub fn write_bytes(&mut self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.push(bytes);
        }
    }

    fn push(&mut self, chunk: Bytes) {
        let len = chunk.len() as u64;
        self.chunks.push_back((self.end, chunk));
        self.end += len;
    }

    /// The end of the stream written so far.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes held: written and not acknowledged below the first gap.
    pub fn held(&self) -> usize {
        (self.end - self.base) as usize
    }

    /// Bytes never sent.
    pub fn unsent(&self) -> u64 {
        self.end - self.unsent
    }

    /// Whether anything waits to be sent (lost or new).
    pub fn has_data(&self) -> bool {
        !self.lost.is_empty() || self.unsent < self.end
    }

    /// Whether every byte written has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.held() == 0
    }

    /// Takes the next range to send, at most `max` bytes, lost bytes first. `limit` is the
    /// peer's credit (an absolute offset) for new bytes; lost bytes were within it when
    /// first sent. Copy its bytes out with [`copy_to`](Self::copy_to).
    pub fn take(&mut self, max: usize, limit: u64) -> Option<Range<u64>> {
        if max == 0 {
            return None;
        }
        if let Some(r) = self.lost.first() {
            let r = r.start..r.end.min(r.start + max as u64);
            self.lost.remove(r.clone());
            return Some(r);
        }
        let end = self.end.min(limit).min(self.unsent + max as u64);
        if end <= self.unsent {
            return None;
        }
        let r = self.unsent..end;
        self.unsent = end;
        Some(r)
    }

    /// Appends the bytes of `r` (within what is held) to `out`.
    pub fn copy_to(&mut self, r: Range<u64>, out: &mut Vec<u8>) {
        debug_assert!(r.start >= self.base && r.end <= self.end);
        let mut last = None;
        for (i, piece) in self.pieces(r) {
            out.extend_from_slice(piece);
            last = Some(i);
        }
        if let Some(i) = last {
            self.cursor = self.dropped + i;
        }
    }

    /// The bytes of `r` (within what is held), chunk by chunk, each with its chunk's index.
    fn pieces(&self, r: Range<u64>) -> impl Iterator<Item = (usize, &[u8])> {
        let mut i = self.find(r.start);
        let mut at = r.start;
        std::iter::from_fn(move || {
            if at >= r.end {
                return None;
            }
            let (s, b) = self.chunks.get(i)?;
            let from = (at - s) as usize;
            let to = ((r.end - s) as usize).min(b.len());
            at = s + to as u64;
            i += 1;
            Some((i - 1, &b[from..to]))
        })
    }

    /// Where the last contiguous piece of `r` (non-empty, within what is held) starts, and
    /// the chunk that holds it (a number that stays valid until acknowledgements drop
    /// chunks): the bytes from there to `r.end` lie in that one chunk, so
    /// [`slice`](Self::slice) can lend them.
    pub fn last_piece(&mut self, r: Range<u64>) -> (u64, usize) {
        // From the chunk where `r` starts (the cursor stays there, for the copy of the
        // pieces before the last), on to the one where it ends.
        let mut i = self.find(r.start);
        self.cursor = self.dropped + i;
        while let Some((s, b)) = self.chunks.get(i)
            && s + (b.len() as u64) < r.end
        {
            i += 1;
        }
        match self.chunks.get(i) {
            Some((s, _)) => ((*s).max(r.start).min(r.end), self.dropped + i),
            None => (r.end, self.dropped + i),
        }
    }

    /// The bytes of `r` where they lie, if chunk `chunk` (as [`last_piece`](Self::last_piece)
    /// named it) holds them all.
    pub fn slice(&self, chunk: usize, r: Range<u64>) -> Option<&[u8]> {
        if r.is_empty() {
            return Some(&[]);
        }
        let (s, b) = self.chunks.get(chunk.checked_sub(self.dropped)?)?;
        let from = r.start.checked_sub(*s)? as usize;
        let to = (r.end - s) as usize;
        b.get(from..to)
    }

    /// Copies the bytes of `r` (within what is held) into `out`, of the same length.
    pub fn copy_into(&self, r: Range<u64>, out: &mut [u8]) {
        let mut k = 0;
        for (_, piece) in self.pieces(r) {
            out[k..k + piece.len()].copy_from_slice(piece);
            k += piece.len();
        }
    }

    /// The index of the chunk holding `offset`: the cursor's chunk or one of its neighbours
    /// (the one before, the next two: a message's small header chunk lies between two of
    /// its payload's), else found by binary search (a retransmission).
    fn find(&self, offset: u64) -> usize {
        let holds = |i: usize| {
            self.chunks.get(i).is_some_and(|(s, b)| *s <= offset && offset < s + b.len() as u64)
        };
        let hint = self.cursor.saturating_sub(self.dropped);
        for i in [hint, hint + 1, hint + 2, hint.wrapping_sub(1)] {
            if holds(i) {
                return i;
            }
        }
        self.chunks.partition_point(|(s, b)| s + b.len() as u64 <= offset)
    }

    /// The bytes `r` were acknowledged; frees the acknowledged prefix.
    pub fn on_acked(&mut self, r: Range<u64>) {
        let r = r.start.max(self.base)..r.end.min(self.end);
        if r.is_empty() {
            return;
        }
        if r.start == self.base && self.acked.is_empty() {
            // In order, the common case: the prefix moves without touching the sets.
            self.lost.remove(r.clone());
            self.base = r.end;
        } else {
            self.acked.insert(r.clone());
            self.lost.remove(r);
            if let Some(first) = self.acked.first()
                && first.start <= self.base
            {
                self.base = first.end;
                self.acked.remove(0..first.end);
            }
        }
        while let Some((s, b)) = self.chunks.front()
            && s + b.len() as u64 <= self.base
        {
            self.chunks.pop_front();
            self.dropped += 1;
        }
    }

    /// The bytes `r` were in a packet declared lost: they go out again unless acknowledged
    /// meanwhile (in another packet).
    pub fn on_lost(&mut self, r: Range<u64>) {
        let r = r.start.max(self.base)..r.end.min(self.unsent);
        if r.is_empty() {
            return;
        }
        if self.acked.is_empty() {
            self.lost.insert(r);
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
    fn the_last_piece_of_a_range_is_lent_where_it_lies_and_any_range_copied() {
        let mut b = SendBuf::new();
        b.write(b"abc");
        let big: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        b.write_bytes(Bytes::from(big.clone()));
        b.write(b"de");
        let all: Vec<u8> = [&b"abc"[..], &big, b"de"].concat();
        // A range ending in the big chunk: its piece there starts where the chunk does.
        assert_eq!(b.last_piece(1..900), (3, 1));
        assert_eq!(b.slice(1, 3..900), Some(&big[..897]));
        // Within one chunk: all of it.
        assert_eq!(b.last_piece(10..20), (10, 1));
        assert_eq!(b.slice(1, 10..20), Some(&all[10..20]));
        // Ending in the last chunk; within the first.
        assert_eq!(b.last_piece(500..1005), (1003, 2));
        assert_eq!(b.last_piece(0..2), (0, 0));
        assert_eq!(b.slice(0, 0..2), Some(&b"ab"[..]));
        // Across chunks, or from the wrong one, nothing is lent; copied, it is all there.
        assert_eq!(b.slice(0, 2..5), None);
        assert_eq!(b.slice(2, 10..20), None);
        let mut out = vec![0u8; 1003];
        b.copy_into(2..1005, &mut out);
        assert_eq!(out, all[2..1005]);
        assert_eq!(b.slice(0, 7..7), Some(&[][..]));
        // Chunk numbers outlive acknowledgements that drop the chunks before.
        b.on_acked(0..3);
        assert_eq!(b.slice(1, 3..10), Some(&big[..7]));
        assert_eq!(b.slice(0, 0..2), None);
    }

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
        assert_eq!(b.take(40, u64::MAX), Some(0..40));
        assert_eq!(b.take(40, u64::MAX), Some(40..80));
        b.on_acked(40..80);
        assert_eq!(b.held(), 100, "the prefix 0..40 is not acknowledged yet");
        b.on_lost(0..40);
        assert_eq!(b.take(25, u64::MAX), Some(0..25), "lost bytes first");
        assert_eq!(b.take(100, u64::MAX), Some(25..40));
        b.on_acked(0..40);
        assert_eq!(b.held(), 20);
        // Credit bounds new bytes.
        assert_eq!(b.take(100, 90), Some(80..90));
        assert!(b.take(100, 90).is_none());
        // A loss of bytes acknowledged meanwhile sends nothing again.
        b.on_lost(80..90);
        b.on_acked(80..90);
        assert!(b.take(100, 90).is_none());
    }

    #[test]
    fn a_lossy_schedule_delivers_the_stream_exactly() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut b = SendBuf::new();
        // Written as the mux writes: small copied headers between uncopied slices.
        let data = Bytes::from(data);
        let mut at = 0;
        while at < data.len() {
            let n = (at % 3001 + 1).min(data.len() - at);
            b.write(&data[at..at + n.min(7)]);
            b.write_bytes(data.slice(at + n.min(7)..at + n));
            at += n;
        }
        let mut a = Assembler::new();
        let mut out = Vec::new();
        let mut x = 7u64;
        let mut rounds = 0;
        while !b.all_acked() {
            rounds += 1;
            assert!(rounds < 10_000);
            let mut sent = Vec::new();
            while let Some(r) = b.take(1000, u64::MAX) {
                let mut d = Vec::new();
                b.copy_to(r.clone(), &mut d);
                assert_eq!(d.len() as u64, r.end - r.start);
                sent.push((r.start, d));
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
