//! Loss detection and probe timeouts, RFC 9002 §6, sans-IO: the sender's record of the
//! packets it has sent, what an ACK acknowledges and declares lost, and when the loss
//! timer fires.
//!
//! - A packet is lost once a packet sent at least 3 later is acknowledged (packet
//!   threshold), or once it is older than 9/8 of the RTT and something sent after it was
//!   acknowledged (time threshold).
//! - Without an acknowledgement for a probe timeout (PTO), the sender probes. A PTO is not a
//!   loss: nothing is declared lost and the window is not cut; the timeout doubles with each
//!   PTO in a row.
//! - Lost ack-eliciting packets that span more than the persistent-congestion duration, with
//!   nothing acknowledged in between, are persistent congestion (§7.6).
//!
//! `F` is whatever the engine needs to know about a packet's contents to retransmit its
//! data: the engine retransmits data, never packets.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::rtt::{GRANULARITY, RttEstimator};

/// Packet threshold (RFC 9002 `kPacketThreshold`).
pub const PACKET_THRESHOLD: u64 = 3;
/// Persistent congestion threshold (RFC 9002 `kPersistentCongestionThreshold`).
pub const PERSISTENT_CONGESTION_THRESHOLD: u32 = 3;

/// One packet sent and not yet acknowledged or lost.
#[derive(Clone, Debug)]
pub struct SentPacket<F> {
    /// When it was sent.
    pub time: Instant,
    /// Its size on the wire (UDP payload).
    pub bytes: u64,
    /// Whether it asks for an ACK.
    pub ack_eliciting: bool,
    /// Whether it counts against the congestion window (ack-eliciting or padding).
    pub in_flight: bool,
    /// What the engine needs to retransmit its contents.
    pub info: F,
}

/// The record of sent packets is full: send nothing new until ACKs free it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many packets in flight to track")]
pub struct TrackFull;

/// What one ACK frame did.
#[derive(Debug)]
pub struct AckOutcome<F> {
    /// Packets newly acknowledged, lowest first.
    pub acked: Vec<(u64, SentPacket<F>)>,
    /// Packets declared lost by this ACK, lowest first.
    pub lost: Vec<(u64, SentPacket<F>)>,
    /// Whether an RTT sample was taken.
    pub rtt_sample: bool,
    /// Whether the lost packets show persistent congestion.
    pub persistent_congestion: bool,
}

/// What the loss timer did when it fired.
#[derive(Debug)]
pub enum Timeout<F> {
    /// The time threshold passed: these packets are lost.
    Lost {
        /// The packets, lowest first.
        lost: Vec<(u64, SentPacket<F>)>,
        /// Whether they show persistent congestion.
        persistent_congestion: bool,
    },
    /// A probe timeout: send this many ack-eliciting probes (new data if there is any,
    /// else data in flight again, else a PING).
    Probe(u8),
}

/// The sender's loss recovery.
#[derive(Debug)]
pub struct Recovery<F> {
    sent: BTreeMap<u64, SentPacket<F>>,
    max_tracked: usize,
    largest_acked: Option<u64>,
    bytes_in_flight: u64,
    ack_eliciting_in_flight: usize,
    pto_count: u32,
    /// The earliest time a packet in `sent` crosses the time threshold.
    loss_time: Option<Instant>,
    last_ack_eliciting: Option<Instant>,
    /// When the first RTT sample was taken: only packets sent after it count towards
    /// persistent congestion.
    first_sample: Option<Instant>,
}

impl<F> Recovery<F> {
    /// Loss recovery tracking at most `max_tracked` packets.
    pub fn new(max_tracked: usize) -> Self {
        Recovery {
            sent: BTreeMap::new(),
            max_tracked: max_tracked.max(1),
            largest_acked: None,
            bytes_in_flight: 0,
            ack_eliciting_in_flight: 0,
            pto_count: 0,
            loss_time: None,
            last_ack_eliciting: None,
            first_sample: None,
        }
    }

    /// Bytes in flight (counted against the congestion window).
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// Packets tracked.
    pub fn tracked(&self) -> usize {
        self.sent.len()
    }

    /// Whether no more packets can be tracked until ACKs free room.
    pub fn is_full(&self) -> bool {
        self.sent.len() >= self.max_tracked
    }

    /// PTOs in a row without an acknowledgement.
    pub fn pto_count(&self) -> u32 {
        self.pto_count
    }

    /// The largest packet number acknowledged.
    pub fn largest_acked(&self) -> Option<u64> {
        self.largest_acked
    }

    /// Records packet `pn` as sent. Packet numbers must rise.
    ///
    /// # Errors
    /// [`TrackFull`] when `max_tracked` packets are outstanding.
    pub fn on_sent(&mut self, pn: u64, packet: SentPacket<F>) -> Result<(), TrackFull> {
        if self.sent.len() >= self.max_tracked {
            return Err(TrackFull);
        }
        if packet.in_flight {
            self.bytes_in_flight += packet.bytes;
        }
        if packet.ack_eliciting {
            self.ack_eliciting_in_flight += 1;
            self.last_ack_eliciting = Some(packet.time);
        }
        self.sent.insert(pn, packet);
        Ok(())
    }

    fn remove(&mut self, pn: u64) -> Option<SentPacket<F>> {
        let p = self.sent.remove(&pn)?;
        if p.in_flight {
            self.bytes_in_flight -= p.bytes;
        }
        if p.ack_eliciting {
            self.ack_eliciting_in_flight -= 1;
        }
        Some(p)
    }

    /// Processes an ACK received at `now`: `ranges` highest first (as the frame lists
    /// them), `ack_delay` as reported; takes an RTT sample when the largest acknowledged
    /// packet is newly acknowledged and ack-eliciting among them (RFC 9002 §5.1).
    pub fn on_ack(
        &mut self,
        now: Instant,
        ranges: impl IntoIterator<Item = RangeInclusive<u64>>,
        ack_delay: Duration,
        max_ack_delay: Duration,
        rtt: &mut RttEstimator,
    ) -> AckOutcome<F> {
        let mut acked = Vec::new();
        let mut largest_new: Option<u64> = None;
        for r in ranges {
            let pns: Vec<u64> = self.sent.range(r).map(|(&pn, _)| pn).collect();
            for pn in pns {
                let p = self.remove(pn).expect("listed");
                largest_new = largest_new.max(Some(pn));
                acked.push((pn, p));
            }
        }
        acked.sort_by_key(|(pn, _)| *pn);
        let mut rtt_sample = false;
        if let Some(l) = largest_new {
            self.largest_acked = self.largest_acked.max(Some(l));
            let (_, p) = acked.iter().find(|(pn, _)| *pn == l).expect("acked");
            if Some(l) == self.largest_acked && acked.iter().any(|(_, p)| p.ack_eliciting) {
                rtt.update(now.saturating_duration_since(p.time), ack_delay, max_ack_delay);
                self.first_sample.get_or_insert(now);
                rtt_sample = true;
            }
            self.pto_count = 0;
        }
        let lost = if acked.is_empty() { Vec::new() } else { self.detect_lost(now, rtt) };
        let persistent_congestion = self.persistent(&lost, rtt, max_ack_delay);
        AckOutcome { acked, lost, rtt_sample, persistent_congestion }
    }

    /// Declares lost what the packet or time threshold says, and sets `loss_time`.
    fn detect_lost(&mut self, now: Instant, rtt: &RttEstimator) -> Vec<(u64, SentPacket<F>)> {
        self.loss_time = None;
        let Some(largest) = self.largest_acked else { return Vec::new() };
        let delay = rtt.loss_delay();
        let lost_before = now.checked_sub(delay);
        let mut lost_pns = Vec::new();
        for (&pn, p) in self.sent.range(..largest) {
            let by_time = lost_before.is_some_and(|t| p.time <= t);
            if by_time || largest >= pn + PACKET_THRESHOLD {
                lost_pns.push(pn);
            } else {
                let at = p.time + delay;
                self.loss_time = Some(self.loss_time.map_or(at, |l| l.min(at)));
            }
        }
        lost_pns.into_iter().map(|pn| (pn, self.remove(pn).expect("listed"))).collect()
    }

    /// RFC 9002 §7.6: ack-eliciting lost packets, with no packet acknowledged between
    /// them (consecutive packet numbers here: an acknowledged one would break the run),
    /// sent after the first RTT sample, spanning more than the persistent-congestion
    /// duration.
    fn persistent(
        &self,
        lost: &[(u64, SentPacket<F>)],
        rtt: &RttEstimator,
        max_ack_delay: Duration,
    ) -> bool {
        let Some(first_sample) = self.first_sample else { return false };
        let duration = (rtt.get() + (rtt.var() * 4).max(GRANULARITY) + max_ack_delay)
            * PERSISTENT_CONGESTION_THRESHOLD;
        let mut run: Option<(u64, Instant, Instant)> = None; // (last pn, first time, last time)
        for (pn, p) in lost {
            if !p.ack_eliciting || p.time < first_sample {
                run = None;
                continue;
            }
            run = match run {
                Some((last, first, _)) if *pn == last + 1 => Some((*pn, first, p.time)),
                _ => Some((*pn, p.time, p.time)),
            };
            if let Some((_, first, last)) = run
                && last.saturating_duration_since(first) > duration
            {
                return true;
            }
        }
        false
    }

    /// When the loss timer fires: the time threshold of the oldest unacknowledged packet,
    /// else the PTO of the last ack-eliciting packet, `(pto_base + max_ack_delay) · 2^pto_count`.
    pub fn timer(&self, rtt: &RttEstimator, max_ack_delay: Duration) -> Option<Instant> {
        if self.loss_time.is_some() {
            return self.loss_time;
        }
        if self.ack_eliciting_in_flight == 0 {
            return None;
        }
        let pto = (rtt.pto_base() + max_ack_delay) * 2u32.saturating_pow(self.pto_count.min(16));
        self.last_ack_eliciting.map(|t| t + pto)
    }

    /// The loss timer fired at `now`.
    pub fn on_timeout(
        &mut self,
        now: Instant,
        rtt: &RttEstimator,
        max_ack_delay: Duration,
    ) -> Timeout<F> {
        if self.loss_time.is_some_and(|t| t <= now) {
            let lost = self.detect_lost(now, rtt);
            let persistent_congestion = self.persistent(&lost, rtt, max_ack_delay);
            return Timeout::Lost { lost, persistent_congestion };
        }
        self.pto_count += 1;
        // Two probes once the first went unanswered.
        Timeout::Probe(if self.pto_count > 1 { 2 } else { 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAD: Duration = Duration::from_millis(25);
    const MS: Duration = Duration::from_millis(1);

    fn pkt(time: Instant) -> SentPacket<()> {
        SentPacket { time, bytes: 1200, ack_eliciting: true, in_flight: true, info: () }
    }

    fn sample(r: &mut Recovery<()>, rtt: &mut RttEstimator, t: Instant) {
        // Packet 1000 sent at t, acked 100 ms later: an RTT sample of 100 ms.
        r.on_sent(1000, pkt(t)).unwrap();
        r.on_ack(t + 100 * MS, [1000..=1000], Duration::ZERO, MAD, rtt);
    }

    #[test]
    fn the_packet_threshold_declares_loss_and_a_reordered_packet_is_not_lost() {
        let t = Instant::now();
        let mut rtt = RttEstimator::default();
        let mut r = Recovery::new(1000);
        for pn in 0..6 {
            r.on_sent(pn, pkt(t + pn as u32 * MS)).unwrap();
        }
        assert_eq!(r.bytes_in_flight(), 6 * 1200);
        // 3 and 4 acknowledged: 0 and 1 are 3 or more below 4 → lost; 2 only 2 below.
        let out = r.on_ack(t + 50 * MS, [3..=4], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(out.acked.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(out.lost.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1]);
        assert!(out.rtt_sample);
        assert_eq!(rtt.latest(), 46 * MS);
        // 2 waits for the time threshold: the loss timer is armed for it.
        let at = r.timer(&rtt, MAD).unwrap();
        assert_eq!(at, t + 2 * MS + rtt.loss_delay());
        assert_eq!(r.bytes_in_flight(), 2 * 1200);
    }

    #[test]
    fn the_time_threshold_fires_through_the_timer() {
        let t = Instant::now();
        let mut rtt = RttEstimator::default();
        let mut r = Recovery::new(1000);
        r.on_sent(0, pkt(t)).unwrap();
        r.on_sent(1, pkt(t + MS)).unwrap();
        r.on_ack(t + 40 * MS, [1..=1], Duration::ZERO, MAD, &mut rtt);
        let at = r.timer(&rtt, MAD).unwrap();
        match r.on_timeout(at, &rtt, MAD) {
            Timeout::Lost { lost, persistent_congestion } => {
                assert_eq!(lost.iter().map(|p| p.0).collect::<Vec<_>>(), [0]);
                assert!(!persistent_congestion);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn a_tail_loss_gets_probes_with_backoff_and_a_pto_declares_nothing_lost() {
        let t = Instant::now();
        let mut rtt = RttEstimator::default();
        let mut r = Recovery::new(1000);
        sample(&mut r, &mut rtt, t);
        let t1 = t + 200 * MS;
        r.on_sent(0, pkt(t1)).unwrap();
        let pto1 = r.timer(&rtt, MAD).unwrap();
        assert_eq!(pto1, t1 + rtt.pto_base() + MAD);
        assert!(matches!(r.on_timeout(pto1, &rtt, MAD), Timeout::Probe(1)));
        assert_eq!(r.tracked(), 1, "a PTO is not a loss");
        let pto2 = r.timer(&rtt, MAD).unwrap();
        assert_eq!(pto2 - t1, (pto1 - t1) * 2);
        assert!(matches!(r.on_timeout(pto2, &rtt, MAD), Timeout::Probe(2)));
        // The probe's ACK resets the backoff.
        r.on_sent(1, pkt(pto2)).unwrap();
        r.on_ack(pto2 + 100 * MS, [1..=1], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(r.pto_count(), 0);
    }

    #[test]
    fn persistent_congestion_needs_a_long_unbroken_run_of_losses() {
        let t = Instant::now();
        let mut rtt = RttEstimator::default();
        let mut r = Recovery::new(1000);
        sample(&mut r, &mut rtt, t);
        // duration = (100 + 4 · 50 + 25) · 3 = 975 ms.
        let t1 = t + 200 * MS;
        for pn in 0..10u64 {
            r.on_sent(pn, pkt(t1 + (pn as u32) * 150 * MS)).unwrap();
        }
        r.on_sent(10, pkt(t1 + 1600 * MS)).unwrap();
        let out = r.on_ack(t1 + 1700 * MS, [10..=10], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(out.lost.len(), 10);
        assert!(out.persistent_congestion);

        // The same losses with one packet in the middle acknowledged: no run is long enough.
        let mut rtt = RttEstimator::default();
        let mut r = Recovery::new(1000);
        sample(&mut r, &mut rtt, t);
        for pn in 0..10u64 {
            r.on_sent(pn, pkt(t1 + (pn as u32) * 150 * MS)).unwrap();
        }
        r.on_sent(10, pkt(t1 + 1600 * MS)).unwrap();
        let out = r.on_ack(t1 + 1700 * MS, [10..=10, 5..=5], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(out.lost.len(), 9);
        assert!(!out.persistent_congestion);
    }

    #[test]
    fn tracking_is_bounded() {
        let t = Instant::now();
        let mut r = Recovery::new(2);
        r.on_sent(0, pkt(t)).unwrap();
        r.on_sent(1, pkt(t)).unwrap();
        assert_eq!(r.on_sent(2, pkt(t)), Err(TrackFull));
    }
}
