//! The receiving side of acknowledgements, sans-IO: which packet numbers arrived (for
//! duplicate detection and ACK ranges), and when an ACK is owed (RFC 9000 §13.2): after
//! every second ack-eliciting packet, at once for a packet out of order, otherwise within
//! `max_ack_delay`.
//!
//! **Thinning** (PROTOCOL §11.4.1): once the peer sends steadily, an ACK per two packets
//! costs both ends a datagram, a system call and a trip through the loss recovery for a
//! handful of packets, while the peer's window holds hundreds. Over each round trip this
//! end counts the ack-eliciting packets it received; the next round trip it acknowledges at
//! once only after an eighth of that count (at least 2, at most a configured bound), so the
//! sender still hears about eight times per round trip, as TCP's receivers thin ACKs under
//! GRO and Chromium's QUIC decimates them. Two or more packets waiting are acknowledged
//! within a quarter of the round trip (at most 1 ms) all the same, so a sender that stops
//! is not kept waiting, and a lone packet within `max_ack_delay` as before. Anything out
//! of order, a gap, or a CE mark is still acknowledged at once. Without a round-trip
//! estimate (before this end's first ack-eliciting packet is acknowledged, and after the
//! path changes) it acknowledges every second packet.
//!
//! The ranges are bounded: past `max_ranges` the oldest are forgotten, and a packet below
//! everything still tracked is refused as a possible duplicate (the peer retransmits data,
//! never packets, so nothing is lost by refusing it).

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::frame::{self, EcnCounts};

/// While thinning, the share of the last round trip's ack-eliciting packets after which an
/// ACK is owed at once (an eighth: about eight ACKs per round trip).
const THIN_SHARE: u32 = 8;
/// While thinning, the longest two or more ack-eliciting packets wait for their ACK (a
/// quarter of the round trip, at most this).
pub const THIN_DELAY: Duration = Duration::from_millis(1);

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
    max_ack_delay: Duration,
    ecn: Option<EcnCounts>,
    /// A new range or packet since the last ACK sent.
    changed: bool,
    /// Packets below this are no longer reported: the peer acknowledged an ACK that
    /// covered them (RFC 9000 §13.2.4). They still count as seen.
    report_floor: u64,
    /// Thinning: ack-eliciting packets after which an ACK is owed at once (2 until the
    /// peer sends steadily), its bound, this end's round-trip estimate, and the current
    /// round trip's window (its end and the packets counted in it).
    threshold: u32,
    max_threshold: u32,
    rtt: Option<Duration>,
    window_end: Option<Instant>,
    window_count: u32,
    /// Arrival of the first ack-eliciting packet not yet acknowledged.
    first_at: Option<Instant>,
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
            max_ack_delay,
            ecn: None,
            changed: false,
            report_floor: 0,
            threshold: 2,
            max_threshold: 2,
            rtt: None,
            window_end: None,
            window_count: 0,
            first_at: None,
        }
    }

    /// Thins ACKs while the peer sends steadily, acknowledging at once after at most
    /// `max_threshold` ack-eliciting packets (2 or less: every second packet, always).
    pub fn with_thinning(mut self, max_threshold: u32) -> Self {
        self.max_threshold = max_threshold.max(2);
        self
    }

    /// This end's smoothed round-trip time, `None` without a sample (the path changed):
    /// thinning needs it, and stops without it.
    pub fn set_rtt(&mut self, rtt: Option<Duration>) {
        if rtt.is_none() {
            self.threshold = 2;
            self.window_end = None;
        }
        self.rtt = rtt;
    }

    /// The ack-eliciting packets after which an ACK is owed at once (2 unless thinning).
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// Counts an ack-eliciting packet received at `now` in the current round trip's
    /// window, and at the end of a window sets the threshold for the next from its count.
    fn count(&mut self, now: Instant) {
        let Some(rtt) = self.rtt.filter(|_| self.max_threshold > 2) else { return };
        match self.window_end {
            Some(end) if now < end => {}
            Some(end) => {
                // A window with nothing in the round trip before `now`: the peer paused,
                // and what it sent before says nothing of what it sends now.
                self.threshold = if now < end + rtt {
                    (self.window_count / THIN_SHARE).clamp(2, self.max_threshold)
                } else {
                    2
                };
                self.window_count = 0;
                self.window_end = Some(now + rtt);
            }
            None => {
                self.window_count = 0;
                self.window_end = Some(now + rtt);
            }
        }
        self.window_count = self.window_count.saturating_add(1);
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
            self.count(now);
            self.eliciting += 1;
            if self.eliciting >= self.threshold {
                self.immediate = true;
            }
            self.first_at.get_or_insert(now);
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

    /// When an ACK is owed: now (`Some(now)` or earlier) after the threshold's count of
    /// ack-eliciting packets (2 unless thinning) or one out of order; while fewer wait,
    /// a quarter of the round trip (at most [`THIN_DELAY`]) after the first of two or more,
    /// else `max_ack_delay` after a lone one.
    pub fn ack_deadline(&self) -> Option<Instant> {
        if self.eliciting == 0 {
            return None;
        }
        // `max_ack_delay` after the first unacknowledged one, at the latest.
        let deadline = self.first_at.map(|t| t + self.max_ack_delay);
        if self.immediate {
            return self.largest_at.or(deadline);
        }
        match (self.eliciting >= 2, self.rtt, self.first_at) {
            (true, Some(rtt), Some(first)) => {
                Some(first + (rtt / 4).min(THIN_DELAY).min(self.max_ack_delay))
            }
            _ => deadline,
        }
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
        self.first_at = None;
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

    /// A thinning tracker that has seen `per_rtt` ack-eliciting packets, evenly spread,
    /// over one 10 ms round trip from `t` (acknowledging as it went), and the next packet
    /// number.
    fn thinned(t: Instant, per_rtt: u64) -> (AckTracker, u64) {
        let rtt = Duration::from_millis(10);
        let mut a = AckTracker::new(64, MAD).with_thinning(256);
        a.set_rtt(Some(rtt));
        let mut out = Vec::new();
        for pn in 0..per_rtt {
            let at = t + rtt * pn as u32 / per_rtt as u32;
            a.on_received(at, pn, true);
            if a.ack_due(at) {
                out.clear();
                a.write_ack(at, &mut out, 8);
            }
        }
        (a, per_rtt)
    }

    #[test]
    fn a_steady_sender_is_acknowledged_after_an_eighth_of_a_round_trips_packets() {
        let t = Instant::now();
        let rtt = Duration::from_millis(10);
        // The first round trip: every second packet, as without thinning.
        let (mut a, next) = thinned(t, 800);
        assert_eq!(a.threshold(), 2);
        // The next one starts: 800 / 8.
        let t1 = t + rtt;
        let mut out = Vec::new();
        for k in 0..99 {
            a.on_received(t1, next + k, true);
            assert!(!a.ack_due(t1), "packet {k}");
        }
        assert_eq!(a.threshold(), 100);
        a.on_received(t1, next + 99, true);
        assert!(a.ack_due(t1), "the hundredth");
        assert!(a.write_ack(t1, &mut out, 8).is_some());
        // At most the bound, however fast the sender.
        let (a, _) = thinned(t, 100_000);
        let mut b = a.clone();
        b.on_received(t + rtt, 100_000, true);
        assert_eq!(b.threshold(), 256);
        // A sender too slow to thin for keeps ACKs every second packet.
        let (mut a, next) = thinned(t, 20);
        a.on_received(t + rtt, next, true);
        assert_eq!(a.threshold(), 2);
    }

    #[test]
    fn thinning_still_acknowledges_gaps_at_once_and_two_packets_within_a_quarter_rtt() {
        let t = Instant::now();
        let rtt = Duration::from_millis(10);
        let (mut a, next) = thinned(t, 800);
        let t1 = t + rtt;
        a.on_received(t1, next, true);
        let mut out = Vec::new();
        a.write_ack(t1, &mut out, 8);
        // A lone packet: within max_ack_delay, as always.
        a.on_received(t1, next + 1, true);
        assert_eq!(a.ack_deadline(), Some(t1 + MAD));
        // Two: within a quarter of the round trip, at most 1 ms.
        a.on_received(t1 + Duration::from_micros(100), next + 2, true);
        assert_eq!(a.ack_deadline(), Some(t1 + THIN_DELAY));
        a.set_rtt(Some(Duration::from_micros(400)));
        assert_eq!(a.ack_deadline(), Some(t1 + Duration::from_micros(100)));
        a.set_rtt(Some(rtt));
        // A gap: at once.
        a.on_received(t1 + Duration::from_micros(200), next + 5, true);
        assert!(a.ack_due(t1 + Duration::from_micros(200)));
        a.write_ack(t1, &mut out, 8);
        // Out of order: at once.
        a.on_received(t1 + Duration::from_micros(300), next + 4, true);
        assert!(a.ack_due(t1 + Duration::from_micros(300)));
        a.write_ack(t1, &mut out, 8);
        // CE: at once.
        a.on_received(t1 + Duration::from_micros(300), next + 6, true);
        a.ack_now();
        assert!(a.ack_due(t1 + Duration::from_micros(300)));
    }

    #[test]
    fn thinning_stops_after_a_pause_and_without_a_round_trip_estimate() {
        let t = Instant::now();
        let rtt = Duration::from_millis(10);
        let (a, next) = thinned(t, 800);
        // A round trip and more with nothing: what came before says nothing of now.
        let mut b = a.clone();
        b.on_received(t + rtt * 3, next, true);
        assert_eq!(b.threshold(), 2);
        b.on_received(t + rtt * 3, next + 1, true);
        assert!(b.ack_due(t + rtt * 3));
        // The path changed: no estimate, no thinning.
        let mut c = a.clone();
        c.on_received(t + rtt, next, true);
        assert_eq!(c.threshold(), 100);
        c.set_rtt(None);
        assert_eq!(c.threshold(), 2);
        c.on_received(t + rtt, next + 1, true);
        assert!(c.ack_due(t + rtt));
        // Thinning off: every second packet however steady the sender.
        let mut d = AckTracker::new(64, MAD);
        d.set_rtt(Some(rtt));
        for pn in 0..2000 {
            d.on_received(t + rtt * pn / 800, pn as u64, true);
        }
        assert_eq!(d.threshold(), 2);
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
