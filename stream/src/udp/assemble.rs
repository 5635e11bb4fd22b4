//! A channel's receive side over UDP, sans-IO: CHANNEL_DATA segments arrive at byte
//! offsets, in any order, repeated or overlapping; the channel's stream comes out in order
//! and exactly once. Each channel has its own, so a lost packet holds up only the channels
//! whose bytes it carried.
//!
//! Bounded: nothing beyond `limit` (the credit granted to the peer, an absolute offset) is
//! accepted, so what waits out of order is at most the window the receiver chose.

use std::collections::BTreeMap;

/// Why a segment was refused: the peer broke flow control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("data past the granted limit: {end} > {limit}")]
pub struct PastLimit {
    /// Where the segment ended.
    pub end: u64,
    /// The limit granted.
    pub limit: u64,
}

/// One channel's reassembly.
#[derive(Clone, Debug, Default)]
pub struct Assembler {
    /// Bytes before this have been handed out.
    delivered: u64,
    /// Out-of-order segments by offset; none overlaps another or lies below `delivered`.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Bytes in `pending`.
    buffered: usize,
    /// The highest offset seen (exclusive end).
    highest: u64,
}

impl Assembler {
    /// An empty channel stream.
    pub fn new() -> Self {
        Assembler::default()
    }

    /// Bytes handed out so far: the next offset expected.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Bytes waiting out of order.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// The end of the furthest byte received (for flow control: what the peer has sent).
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// Takes a segment at `offset`, then hands every byte now in order to `deliver`
    /// (zero or more times, in order). Bytes already delivered or already waiting are
    /// dropped silently (retransmissions).
    ///
    /// # Errors
    /// [`PastLimit`] when the segment ends past `limit`; nothing is kept.
    pub fn insert(
        &mut self,
        offset: u64,
        data: &[u8],
        limit: u64,
        mut deliver: impl FnMut(&[u8]),
    ) -> Result<(), PastLimit> {
        let end = offset + data.len() as u64;
        if end > limit {
            return Err(PastLimit { end, limit });
        }
        self.highest = self.highest.max(end);
        // Trim what was delivered already.
        let (mut offset, mut data) = (offset, data);
        if offset < self.delivered {
            let skip = (self.delivered - offset).min(data.len() as u64) as usize;
            data = &data[skip..];
            offset += skip as u64;
        }
        if data.is_empty() {
            return Ok(());
        }
        if offset == self.delivered {
            // In order: straight out, then whatever it unblocks.
            deliver(data);
            self.delivered += data.len() as u64;
            self.drain(&mut deliver);
            return Ok(());
        }
        self.store(offset, data);
        Ok(())
    }

    /// Keeps the parts of `[offset, offset + data.len())` not already waiting.
    fn store(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let mut at = offset;
        // Walk the waiting segments that overlap, filling the holes between them.
        let overlapping: Vec<(u64, u64)> = self
            .pending
            .range(..end)
            .filter(|(o, v)| **o + v.len() as u64 > offset)
            .map(|(o, v)| (*o, *o + v.len() as u64))
            .collect();
        for (s, e) in overlapping {
            if s > at {
                self.put(at, &data[(at - offset) as usize..(s - offset) as usize]);
            }
            at = at.max(e);
        }
        if at < end {
            self.put(at, &data[(at - offset) as usize..]);
        }
    }

    fn put(&mut self, offset: u64, data: &[u8]) {
        self.buffered += data.len();
        self.pending.insert(offset, data.to_vec());
    }

    fn drain(&mut self, deliver: &mut impl FnMut(&[u8])) {
        while let Some(entry) = self.pending.first_entry() {
            let o = *entry.key();
            if o > self.delivered {
                break;
            }
            let v = entry.remove();
            self.buffered -= v.len();
            let skip = (self.delivered - o).min(v.len() as u64) as usize;
            if skip < v.len() {
                deliver(&v[skip..]);
                self.delivered += (v.len() - skip) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(a: &mut Assembler, offset: u64, data: &[u8], out: &mut Vec<u8>) {
        a.insert(offset, data, 1 << 20, |b| out.extend_from_slice(b)).unwrap();
    }

    #[test]
    fn reordered_repeated_and_overlapping_segments_come_out_once_in_order() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut a = Assembler::new();
        let mut out = Vec::new();
        collect(&mut a, 50, &data[50..70], &mut out);
        collect(&mut a, 60, &data[60..90], &mut out);
        collect(&mut a, 10, &data[10..30], &mut out);
        collect(&mut a, 50, &data[50..70], &mut out);
        assert!(out.is_empty());
        assert_eq!(a.buffered(), 20 + 20 + 20);
        collect(&mut a, 0, &data[0..15], &mut out);
        assert_eq!(out, &data[..30]);
        collect(&mut a, 25, &data[25..55], &mut out);
        assert_eq!(out, &data[..90]);
        collect(&mut a, 0, &data[..100], &mut out);
        assert_eq!(out, data);
        assert_eq!((a.delivered(), a.buffered(), a.highest()), (100, 0, 100));
    }

    #[test]
    fn data_past_the_limit_is_refused_and_kept_out() {
        let mut a = Assembler::new();
        let err = a.insert(90, &[0; 20], 100, |_| unreachable!()).unwrap_err();
        assert_eq!(err, PastLimit { end: 110, limit: 100 });
        assert_eq!(a.buffered(), 0);
        assert!(a.insert(80, &[0; 20], 100, |_| {}).is_ok());
    }

    #[test]
    fn a_random_schedule_delivers_exactly_the_stream() {
        // A deterministic shuffle of overlapping segments, each sent twice.
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut segs = Vec::new();
        let mut x = 12345u64;
        let mut off = 0;
        while off < data.len() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = 1 + (x >> 33) as usize % 300;
            let end = (off + len).min(data.len());
            let back = ((x >> 20) as usize % 50).min(off);
            segs.push((off - back, end));
            segs.push((off, end));
            off = end;
        }
        for i in (1..segs.len()).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            segs.swap(i, (x >> 33) as usize % (i + 1));
        }
        let mut a = Assembler::new();
        let mut out = Vec::new();
        for (s, e) in segs {
            collect(&mut a, s as u64, &data[s..e], &mut out);
        }
        assert_eq!(out, data);
        assert_eq!(a.buffered(), 0);
    }
}
