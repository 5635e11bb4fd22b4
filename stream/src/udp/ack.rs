//! The receiving side of acknowledgements, sans-IO: which packet numbers arrived (for
//! duplicate detection and ACK ranges), and when an ACK is owed (RFC 9000 §13.2): after
//! every second ack-eliciting packet, at once for a packet out of order, otherwise within
//! `max_ack_delay`.
//!
//! The ranges are bounded: past `max_ranges` the oldest are forgotten, and a packet below
//! everything still tracked is refused as a possible duplicate (the peer retransmits data,
//! never packets, so nothing is lost by refusing it).

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::frame::{self, EcnCounts};

/// What to do with a received packet number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// New: process the packet.
    New,
    /// Seen before, or older than anything tracked: drop it and count it.
    Duplicate,
}

/// One connection's received packet numbers and ACK schedule.
#[derive(Clone, Debug)]
pub struct AckTracker {
    /// Disjoint, non-adjacent, ascending.
    ranges: VecDeque<RangeInclusive<u64>>,
    max_ranges: usize,
    /// Below this, everything is treated as seen (ranges forgotten past the bound).
    floor: u64,
    largest_at: Option<Instant>,
    /// Ack-eliciting packets since the last ACK sent.
    eliciting: u32,
    immediate: bool,
    deadline: Option<Instant>,
    max_ack_delay: Duration,
    ecn: Option<EcnCounts>,
    /// A new range or packet since the last ACK sent.
    changed: bool,
    /// Packets below this are no longer reported: the peer acknowledged an ACK that
    /// covered them (RFC 9000 §13.2.4). They still count as seen.
    report_floor: u64,
}

impl AckTracker {
    /// A tracker keeping at most `max_ranges` ranges and acknowledging within
    /// `max_ack_delay`.
    pub fn new(max_ranges: usize, max_ack_delay: Duration) -> Self {
        AckTracker {
            ranges: VecDeque::new(),
            max_ranges: max_ranges.max(1),
            floor: 0,
            largest_at: None,
            eliciting: 0,
            immediate: false,
            deadline: None,
            max_ack_delay,
            ecn: None,
            changed: false,
            report_floor: 0,
        }
    }

    /// The largest packet number received.
    pub fn largest(&self) -> Option<u64> {
        self.ranges.back().map(|r| *r.end())
    }

    fn seen(&self, pn: u64) -> bool {
        if pn < self.floor {
            return true;
        }
        // In order, the common case: above everything seen.
        if self.ranges.back().is_none_or(|r| *r.end() < pn) {
            return false;
        }
        // The ranges are ascending and disjoint: the first that ends at or after `pn` is
        // the only one that can hold it.
        let i = self.ranges.partition_point(|r| *r.end() < pn);
        self.ranges.get(i).is_some_and(|r| r.contains(&pn))
    }

    /// Checks packet number `pn` of a packet that authenticated, before its frames are
    /// processed. A duplicate changes nothing.
    pub fn check(&self, pn: u64) -> Received {
        if self.seen(pn) { Received::Duplicate } else { Received::New }
    }

    /// Records packet `pn` (after [`check`](Self::check) said `New` and the packet was
    /// processed), received at `now`.
    pub fn on_received(&mut self, now: Instant, pn: u64, ack_eliciting: bool) {
        if self.seen(pn) {
            return;
        }
        let largest = self.largest();
        // Out of order (below the largest) or past a gap: acknowledge at once, so the peer
        // learns of the gap quickly (RFC 9000 §13.2.1).
        if largest.is_some_and(|l| pn < l || pn > l + 1) {
            self.immediate |= ack_eliciting;
        }
        if largest.is_none_or(|l| pn > l) {
            self.largest_at = Some(now);
        }
        self.insert(pn);
        self.changed = true;
        if ack_eliciting {
            self.eliciting += 1;
            if self.eliciting >= 2 {
                self.immediate = true;
            }
            self.deadline.get_or_insert(now + self.max_ack_delay);
        }
    }

    fn insert(&mut self, pn: u64) {
        // In order, the common case: the next number extends the highest range.
        if let Some(last) = self.ranges.back_mut()
            && *last.end() + 1 == pn
        {
            *last = *last.start()..=pn;
            return;
        }
        // Find the first range that ends at or after pn - 1.
        let i = self.ranges.partition_point(|r| *r.end() + 1 < pn);
        if i < self.ranges.len() && *self.ranges[i].start() <= pn + 1 {
            let r = &mut self.ranges[i];
            let (s, e) = ((*r.start()).min(pn), (*r.end()).max(pn));
            *r = s..=e;
            // Merge with the next one if they now touch.
            if i + 1 < self.ranges.len() && *self.ranges[i + 1].start() <= e + 1 {
                let next = self.ranges.remove(i + 1).expect("checked");
                self.ranges[i] = s..=*next.end();
            }
        } else {
            self.ranges.insert(i, pn..=pn);
        }
        while self.ranges.len() > self.max_ranges {
            let old = self.ranges.pop_front().expect("non-empty");
            self.floor = self.floor.max(old.end() + 1);
        }
    }

    /// Acknowledge as soon as anything ack-eliciting waits (a packet marked CE arrived).
    pub fn ack_now(&mut self) {
        self.immediate = true;
    }

    /// The ECN counts to report (when the driver reports codepoints).
    pub fn set_ecn(&mut self, ecn: EcnCounts) {
        self.ecn = Some(ecn);
    }

    /// When an ACK is owed: now (`Some(now)` or earlier) after two ack-eliciting packets
    /// or one out of order, else `max_ack_delay` after the first unacknowledged one.
    pub fn ack_deadline(&self) -> Option<Instant> {
        if self.eliciting == 0 {
            return None;
        }
        if self.immediate { self.largest_at.or(self.deadline) } else { self.deadline }
    }

    /// Whether an ACK is due at `now`.
    pub fn ack_due(&self, now: Instant) -> bool {
        self.ack_deadline().is_some_and(|d| d <= now)
    }

    /// Whether anything arrived since the last ACK sent (an ACK may ride along on a packet
    /// that goes out anyway).
    pub fn has_news(&self) -> bool {
        self.changed
    }

    /// The peer acknowledged a packet carrying an ACK whose largest was `largest`: it knows
    /// of everything up to there, which need not be reported again.
    pub fn on_ack_acked(&mut self, largest: u64) {
        self.report_floor = self.report_floor.max(largest.saturating_add(1));
    }

    /// The ranges still to report, highest first, clipped at the report floor.
    fn reportable(&self) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        let floor = self.report_floor;
        self.ranges
            .iter()
            .rev()
            .take_while(move |r| *r.end() >= floor)
            .map(move |r| (*r.start()).max(floor)..=*r.end())
    }

    /// Bytes the ACK frame would take with at most `max_ranges` ranges.
    pub fn ack_len(&self, max_ranges: usize) -> usize {
        frame::ack_len(self.reportable().count().min(max_ranges), self.ecn.is_some())
    }

    /// The most ranges an ACK may carry in `room` bytes (0: not even one fits).
    pub fn ranges_fitting(&self, room: usize) -> usize {
        let one = frame::ack_len(1, self.ecn.is_some());
        if room < one { 0 } else { 1 + (room - one) / 8 }
    }

    /// Appends an ACK of the most recent ranges (at most `max_ranges`, highest first, none
    /// the peer is known to have seen acknowledged) and resets the schedule. Returns the
    /// largest packet number acknowledged, or `None`, appending nothing, when there is
    /// nothing to report (the schedule is reset all the same: nothing is owed).
    pub fn write_ack(&mut self, now: Instant, out: &mut Vec<u8>, max_ranges: usize) -> Option<u64> {
        let ranges: Vec<_> = self.reportable().take(max_ranges.max(1)).collect();
        let delay = self.largest_at.map_or(0, |t| now.saturating_duration_since(t).as_micros());
        let delay = u32::try_from(delay).unwrap_or(u32::MAX);
        self.eliciting = 0;
        self.immediate = false;
        self.deadline = None;
        self.changed = false;
        if !frame::put_ack(out, &ranges, delay, self.ecn) {
            return None;
        }
        ranges.first().map(|r| *r.end())
    }

    /// The ranges held, ascending (tests).
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> Vec<RangeInclusive<u64>> {
        self.ranges.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::frame::{Frame, Frames};

    const MAD: Duration = Duration::from_millis(25);

    #[test]
    fn ranges_merge_and_duplicates_are_refused() {
        let t = Instant::now();
        let mut a = AckTracker::new(16, MAD);
        for pn in [0, 1, 2, 5, 7, 6, 4] {
            assert_eq!(a.check(pn), Received::New);
            a.on_received(t, pn, true);
        }
        assert_eq!(a.ranges(), [0..=2, 4..=7]);
        assert_eq!(a.check(6), Received::Duplicate);
        a.on_received(t, 3, true);
        assert_eq!(a.ranges(), [0..=7]);
        a.on_received(t, 10, false);
        let mut out = Vec::new();
        assert!(a.write_ack(t, &mut out, 8).is_some());
        let [Ok(Frame::Ack(ack))] = Frames::new(&out).collect::<Vec<_>>()[..] else { panic!() };
        assert_eq!(ack.iter().collect::<Vec<_>>(), [10..=10, 0..=7]);
    }

    #[test]
    fn an_ack_is_owed_after_two_eliciting_packets_or_max_ack_delay() {
        let t = Instant::now();
        let mut a = AckTracker::new(16, MAD);
        a.on_received(t, 0, true);
        assert_eq!(a.ack_deadline(), Some(t + MAD));
        assert!(!a.ack_due(t));
        a.on_received(t + MAD / 5, 1, true);
        assert!(a.ack_due(t + MAD / 5), "every second ack-eliciting packet");
        let mut out = Vec::new();
        assert!(a.write_ack(t + MAD / 5, &mut out, 8).is_some());
        assert_eq!(a.ack_deadline(), None);
        // ACK-only packets are recorded but owe nothing.
        a.on_received(t + MAD, 2, false);
        assert_eq!(a.ack_deadline(), None);
        assert!(a.has_news());
        // A gap: acknowledge at once.
        a.on_received(t + MAD * 2, 5, true);
        assert!(a.ack_due(t + MAD * 2));
    }

    #[test]
    fn the_ack_delay_is_measured_from_the_largest() {
        let t = Instant::now();
        let mut a = AckTracker::new(16, MAD);
        a.on_received(t, 0, true);
        let mut out = Vec::new();
        a.write_ack(t + Duration::from_micros(1500), &mut out, 8);
        let [Ok(Frame::Ack(ack))] = Frames::new(&out).collect::<Vec<_>>()[..] else { panic!() };
        assert_eq!(ack.delay_us, 1500);
    }

    #[test]
    fn ranges_are_bounded_and_what_falls_off_counts_as_seen() {
        let t = Instant::now();
        let mut a = AckTracker::new(3, MAD);
        for pn in [0, 2, 4, 6, 8] {
            a.on_received(t, pn, true);
        }
        assert_eq!(a.ranges(), [4..=4, 6..=6, 8..=8]);
        // 0 to 2 fell below what is tracked: refused rather than risk a replay (1 was never
        // received, but nothing tells it apart any more). 3 and 5 are known never to have
        // arrived.
        assert_eq!(a.check(1), Received::Duplicate);
        assert_eq!(a.check(2), Received::Duplicate);
        assert_eq!(a.check(3), Received::New);
        assert_eq!(a.check(5), Received::New);
        let mut out = Vec::new();
        assert!(a.write_ack(t, &mut out, 2).is_some());
        let [Ok(Frame::Ack(ack))] = Frames::new(&out).collect::<Vec<_>>()[..] else { panic!() };
        assert_eq!(ack.iter().collect::<Vec<_>>(), [8..=8, 6..=6]);
    }

    #[test]
    fn ranges_the_peer_saw_acknowledged_are_not_reported_again() {
        let t = Instant::now();
        let mut a = AckTracker::new(64, MAD);
        for pn in (0..40).filter(|pn| pn % 4 != 1) {
            a.on_received(t, pn, true);
        }
        let mut out = Vec::new();
        assert_eq!(a.write_ack(t, &mut out, 64), Some(39));
        let full = out.len();
        // The peer acknowledged the packet that carried that ACK: only what came after is
        // reported from now on, though everything stays seen.
        a.on_ack_acked(39);
        a.on_received(t, 41, true);
        a.on_received(t, 43, true);
        out.clear();
        assert_eq!(a.write_ack(t, &mut out, 64), Some(43));
        assert!(out.len() < full);
        let Some(Ok(Frame::Ack(ack))) = Frames::new(&out).next() else { panic!("an ACK") };
        assert_eq!(ack.iter().collect::<Vec<_>>(), vec![43..=43, 41..=41]);
        assert_eq!(a.check(4), Received::Duplicate);
        // A late packet below the floor owes nothing to report: the schedule is reset.
        a.on_ack_acked(43);
        a.on_received(t, 37, true);
        a.on_received(t, 33, true);
        assert!(a.ack_due(t));
        out.clear();
        assert_eq!(a.write_ack(t, &mut out, 64), None);
        assert!(out.is_empty() && !a.ack_due(t + MAD * 2));
    }
}
