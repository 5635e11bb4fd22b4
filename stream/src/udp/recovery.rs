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
//! - Reordering is not loss (§6.1 lets the thresholds adapt): packets declared lost are
//!   remembered for a while, and one acknowledged after all was a *spurious* loss. It is
//!   reported ([`AckOutcome::spurious`]) so the congestion controller can undo its
//!   reduction, counted, and, with [`RecoveryConfig::adaptive_reordering`], raises the
//!   thresholds to the reordering it revealed, as Linux's RACK and picoquic do (see
//!   [`Recovery::packet_threshold`] and [`Recovery::time_threshold`] for the rules).
//!
//! `F` is whatever the engine needs to know about a packet's contents to retransmit its
//! data: the engine retransmits data, never packets.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::ack::THIN_DELAY;
use super::rtt::{GRANULARITY, RttEstimator};

/// Packet threshold (RFC 9002 `kPacketThreshold`).
pub const PACKET_THRESHOLD: u64 = 3;
/// Time threshold (RFC 9002 `kTimeThreshold`, 9/8), in eighths of an RTT.
pub const TIME_THRESHOLD_EIGHTHS: u32 = 9;
/// Persistent congestion threshold (RFC 9002 `kPersistentCongestionThreshold`).
pub const PERSISTENT_CONGESTION_THRESHOLD: u32 = 3;

/// Loss detection's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// Whether spurious losses raise the packet and time thresholds (on). Off, the
    /// thresholds stay RFC 9002's; spurious losses are still recognised and reported.
    pub adaptive_reordering: bool,
    /// The highest the packet threshold goes (256; never below RFC 9002's 3). High is
    /// cheap: the time threshold still declares a loss after about an RTT however high
    /// this is, so it only matters when many packets are sent per RTT, which is exactly
    /// when jitter reorders many of them (Linux caps its reordering degree at 300,
    /// `tcp_max_reordering`).
    pub max_packet_threshold: u64,
    /// The highest the time threshold goes, in eighths of an RTT (16: 2 RTTs; never below
    /// RFC 9002's 9).
    pub max_time_threshold_eighths: u32,
    /// Packets declared lost that are remembered, to recognise a late acknowledgement
    /// (the 1,024 most recent).
    pub lost_memory: usize,
    /// How long a lost packet is remembered, in RTTs (`max(smoothed, latest)`) after it
    /// was declared lost (4): an acknowledgement later than that is not reordering.
    pub lost_memory_rtts: u32,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            adaptive_reordering: true,
            max_packet_threshold: 256,
            max_time_threshold_eighths: 16,
            lost_memory: 1024,
            lost_memory_rtts: 4,
        }
    }
}

/// A packet declared lost and later acknowledged: the loss was spurious.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpuriousLoss {
    /// Its packet number.
    pub pn: u64,
    /// When it was sent.
    pub sent: Instant,
    /// Its size on the wire.
    pub bytes: u64,
    /// Whether it counted against the congestion window (its loss was a congestion
    /// event's).
    pub in_flight: bool,
}

/// What is remembered of a packet declared lost.
#[derive(Clone, Copy, Debug)]
struct Lost {
    sent: Instant,
    bytes: u64,
    in_flight: bool,
    /// When it was declared lost.
    declared: Instant,
    /// The largest packet number acknowledged then: the reordering distance it was lost
    /// at is this minus its number.
    largest_acked: u64,
    /// Whether the time threshold declared it (else the packet threshold alone did).
    by_time: bool,
}

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
    /// Packets newly acknowledged, lowest first ([`Recovery::on_ack`]; empty from
    /// [`Recovery::on_ack_with`], which hands them to its visitor instead).
    pub acked: Vec<(u64, SentPacket<F>)>,
    /// How many packets were newly acknowledged.
    pub newly_acked: usize,
    /// The largest of them, and when it was sent.
    pub newest: Option<(u64, Instant)>,
    /// Packets declared lost by this ACK, lowest first.
    pub lost: Vec<(u64, SentPacket<F>)>,
    /// Whether an RTT sample was taken.
    pub rtt_sample: bool,
    /// Whether the lost packets show persistent congestion.
    pub persistent_congestion: bool,
    /// Packets declared lost earlier that this ACK acknowledged, lowest first.
    pub spurious: Vec<SpuriousLoss>,
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

/// Sent packets by number, oldest first. Packet numbers only rise, so they sit in a deque
/// in order: a number is found by its distance from the first (else by binary search), a
/// range is visited in one pass, and an acknowledged or lost packet leaves a hole that is
/// dropped once it reaches the front. No tree node per packet, as a `BTreeMap` would take.
#[derive(Debug)]
struct SentMap<F> {
    slots: VecDeque<(u64, Option<SentPacket<F>>)>,
    /// Slots holding a packet.
    live: usize,
}

impl<F> SentMap<F> {
    fn new() -> Self {
        SentMap { slots: VecDeque::new(), live: 0 }
    }

    /// Packets held.
    fn len(&self) -> usize {
        self.live
    }

    /// Slots, holes included: what the map costs in memory.
    fn span(&self) -> usize {
        self.slots.len()
    }

    /// Adds packet `pn`, above every number held; returns whether it was added.
    #[inline(always)]
    fn insert(&mut self, pn: u64, p: SentPacket<F>) -> bool {
        if self.slots.back().is_some_and(|(last, _)| *last >= pn) {
            return false;
        }
        self.slots.push_back((pn, Some(p)));
        self.live += 1;
        true
    }

    /// The index of the first slot numbered `pn` or above. Numbers rise by at least one a
    /// slot, so it is at most `pn` less the first number, and exactly that while every
    /// number sent is held (the common case: found without a search).
    fn index(&self, pn: u64) -> usize {
        let Some(&(first, _)) = self.slots.front() else { return 0 };
        let at_most = pn.saturating_sub(first).min(self.slots.len() as u64) as usize;
        if self.slots.get(at_most).is_some_and(|(n, _)| *n == pn) {
            return at_most;
        }
        let (mut lo, mut hi) = (0, at_most);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.slots[mid].0 < pn {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn remove(&mut self, pn: u64) -> Option<SentPacket<F>> {
        let i = self.index(pn);
        let (n, slot) = self.slots.get_mut(i)?;
        if *n != pn {
            return None;
        }
        let p = slot.take()?;
        self.live -= 1;
        self.trim();
        Some(p)
    }

    /// Takes every packet numbered in `r`, lowest first.
    fn take_range(&mut self, r: RangeInclusive<u64>, mut f: impl FnMut(u64, SentPacket<F>)) {
        let mut i = self.index(*r.start());
        while let Some(&(n, _)) = self.slots.get(i)
            && n <= *r.end()
        {
            // From the oldest on (the common case: an ACK of what was sent first), each
            // slot leaves the record as it is visited, not emptied and trimmed after.
            let taken = if i == 0 {
                self.slots.pop_front().and_then(|(_, p)| p)
            } else {
                i += 1;
                self.slots[i - 1].1.take()
            };
            if let Some(p) = taken {
                self.live -= 1;
                f(n, p);
            }
        }
        self.trim();
    }

    /// The packets numbered below `pn`, lowest first.
    fn below(&self, pn: u64) -> impl Iterator<Item = (u64, &SentPacket<F>)> {
        self.slots
            .iter()
            .take_while(move |(n, _)| *n < pn)
            .filter_map(|(n, p)| p.as_ref().map(|p| (*n, p)))
    }

    /// Drops the holes at the front.
    fn trim(&mut self) {
        while matches!(self.slots.front(), Some((_, None))) {
            self.slots.pop_front();
        }
    }
}

/// The sender's loss recovery.
#[derive(Debug)]
pub struct Recovery<F> {
    sent: SentMap<F>,
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
    config: RecoveryConfig,
    /// Packets declared lost recently, by number (at most `config.lost_memory`).
    lost: BTreeMap<u64, Lost>,
    packet_threshold: u64,
    /// In eighths of an RTT.
    time_threshold: u32,
    /// When a spurious loss last raised the time threshold.
    time_raised: Option<Instant>,
    spurious_losses: u64,
}

impl<F> Recovery<F> {
    /// Loss recovery tracking at most `max_tracked` packets, with the default
    /// [`RecoveryConfig`].
    pub fn new(max_tracked: usize) -> Self {
        Self::with_config(max_tracked, RecoveryConfig::default())
    }

    /// Loss recovery tracking at most `max_tracked` packets.
    pub fn with_config(max_tracked: usize, config: RecoveryConfig) -> Self {
        Recovery {
            sent: SentMap::new(),
            max_tracked: max_tracked.max(1),
            largest_acked: None,
            bytes_in_flight: 0,
            ack_eliciting_in_flight: 0,
            pto_count: 0,
            loss_time: None,
            last_ack_eliciting: None,
            first_sample: None,
            config,
            lost: BTreeMap::new(),
            packet_threshold: PACKET_THRESHOLD,
            time_threshold: TIME_THRESHOLD_EIGHTHS,
            time_raised: None,
            spurious_losses: 0,
        }
    }

    /// The packet threshold: a packet is lost once one sent this many later is
    /// acknowledged. RFC 9002's 3 until a spurious loss shows reordering deeper than that;
    /// then (with adaptive reordering) the distance that loss was declared at plus one
    /// (the largest packet number acknowledged then, minus its own, plus one), so that
    /// the same reordering no longer declares a loss, up to
    /// [`RecoveryConfig::max_packet_threshold`]. This is Linux's reordering degree
    /// (`tp->reordering`, raised on a DSACK to the distance seen) under RFC 9002 §6.1.1's
    /// permission to adapt; it never goes down, as a reordering path stays one.
    pub fn packet_threshold(&self) -> u64 {
        self.packet_threshold
    }

    /// The time threshold in eighths of an RTT: RFC 9002's 9 (9/8) until the time
    /// threshold declares a loss that proves spurious; then (with adaptive reordering) one
    /// eighth more, at most once per smoothed RTT, up to
    /// [`RecoveryConfig::max_time_threshold_eighths`]. Steps rather than a jump to what the
    /// late packet needed, and one per round trip, as RACK widens its reordering window
    /// (RFC 8985 §6.2: `reo_wnd_mult` grows by one per round trip with a DSACK): a burst
    /// of late acknowledgements from one delay spike raises it once, while lasting
    /// reordering keeps raising it until it fits. A loss the packet threshold declared
    /// does not raise it: waiting longer would not have saved that one.
    pub fn time_threshold(&self) -> u32 {
        self.time_threshold
    }

    /// Losses declared and then acknowledged, since the start.
    pub fn spurious_losses(&self) -> u64 {
        self.spurious_losses
    }

    /// Packets declared lost that are still remembered.
    pub fn remembered_lost(&self) -> usize {
        self.lost.len()
    }

    /// The time-threshold loss delay: `time_threshold / 8 · max(smoothed, latest)`, at
    /// least the granularity (RFC 9002 §6.1.2 with 9/8).
    fn loss_delay(&self, rtt: &RttEstimator) -> Duration {
        (rtt.get().max(rtt.latest()) * self.time_threshold / 8).max(GRANULARITY)
    }

    /// Forgets lost packets declared more than `lost_memory_rtts` RTTs ago. They are
    /// declared in packet-number order, so the oldest come first.
    fn forget_lost(&mut self, now: Instant, rtt: &RttEstimator) {
        let keep = rtt.get().max(rtt.latest()) * self.config.lost_memory_rtts;
        while let Some(e) = self.lost.first_entry() {
            if now.saturating_duration_since(e.get().declared) <= keep {
                break;
            }
            e.remove();
        }
    }

    /// A remembered lost packet `pn` was acknowledged at `now`: counts it and adapts.
    fn on_spurious(&mut self, now: Instant, pn: u64, l: Lost, rtt: &RttEstimator) -> SpuriousLoss {
        self.spurious_losses += 1;
        if self.config.adaptive_reordering {
            let cap = self.config.max_packet_threshold.max(PACKET_THRESHOLD);
            let distance = l.largest_acked.saturating_sub(pn).saturating_add(1);
            self.packet_threshold = self.packet_threshold.max(distance.min(cap));
            let cap = self.config.max_time_threshold_eighths.max(TIME_THRESHOLD_EIGHTHS);
            if l.by_time && self.time_raised.is_none_or(|t| now >= t + rtt.get()) {
                self.time_threshold = (self.time_threshold + 1).min(cap);
                self.time_raised = Some(now);
            }
        }
        SpuriousLoss { pn, sent: l.sent, bytes: l.bytes, in_flight: l.in_flight }
    }

    /// Bytes in flight (counted against the congestion window).
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// Packets tracked.
    pub fn tracked(&self) -> usize {
        self.sent.len()
    }

    /// How many more packets can be tracked before [`is_full`](Self::is_full) says so.
    pub fn room(&self) -> usize {
        (self.max_tracked.saturating_sub(self.sent.len()))
            .min((2 * self.max_tracked).saturating_sub(self.sent.span()))
    }

    /// Whether no more packets can be tracked until ACKs free room: `max_tracked` are
    /// outstanding, or the record spans twice that many packet numbers (acknowledged ones
    /// behind an old outstanding packet still take room until it is acknowledged or lost).
    pub fn is_full(&self) -> bool {
        self.sent.len() >= self.max_tracked || self.sent.span() >= 2 * self.max_tracked
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
    // (Inlined into the sender's packet loop: see `Connection::finish_packet`.)
    #[inline(always)]
    pub fn on_sent(&mut self, pn: u64, packet: SentPacket<F>) -> Result<(), TrackFull> {
        if self.is_full() {
            return Err(TrackFull);
        }
        let (in_flight, bytes, eliciting, time) =
            (packet.in_flight, packet.bytes, packet.ack_eliciting, packet.time);
        let added = self.sent.insert(pn, packet);
        debug_assert!(added, "packet numbers must rise");
        if !added {
            return Err(TrackFull);
        }
        if in_flight {
            self.bytes_in_flight += bytes;
        }
        if eliciting {
            self.ack_eliciting_in_flight += 1;
            self.last_ack_eliciting = Some(time);
        }
        Ok(())
    }

    fn remove(&mut self, pn: u64) -> Option<SentPacket<F>> {
        let p = self.sent.remove(pn)?;
        self.forget(&p);
        Some(p)
    }

    /// Takes a packet that left the record out of the counts.
    fn forget(&mut self, p: &SentPacket<F>) {
        if p.in_flight {
            self.bytes_in_flight -= p.bytes;
        }
        if p.ack_eliciting {
            self.ack_eliciting_in_flight -= 1;
        }
    }

    /// Processes an ACK received at `now`: `ranges` highest first (as the frame lists
    /// them), `ack_delay` as reported; takes an RTT sample when the largest acknowledged
    /// packet is newly acknowledged and ack-eliciting among them (RFC 9002 §5.1). The
    /// packets newly acknowledged are in the outcome's `acked`.
    pub fn on_ack(
        &mut self,
        now: Instant,
        ranges: impl IntoIterator<Item = RangeInclusive<u64>>,
        ack_delay: Duration,
        max_ack_delay: Duration,
        rtt: &mut RttEstimator,
    ) -> AckOutcome<F> {
        let mut acked = Vec::new();
        let mut out = self
            .on_ack_with(now, ranges, ack_delay, max_ack_delay, rtt, |pn, p| acked.push((pn, p)));
        out.acked = acked;
        out
    }

    /// [`on_ack`](Self::on_ack), handing each packet newly acknowledged to `visit` as it
    /// leaves the record, lowest number first, instead of gathering them (a bulk ACK
    /// acknowledges dozens).
    pub fn on_ack_with(
        &mut self,
        now: Instant,
        ranges: impl IntoIterator<Item = RangeInclusive<u64>>,
        ack_delay: Duration,
        max_ack_delay: Duration,
        rtt: &mut RttEstimator,
        mut visit: impl FnMut(u64, SentPacket<F>),
    ) -> AckOutcome<F> {
        // Lowest first, whatever order they came in, so that packets are handed over in
        // order.
        let mut ranges: smallvec::SmallVec<[RangeInclusive<u64>; 8]> = ranges.into_iter().collect();
        ranges.sort_unstable_by_key(|r| *r.start());
        let (mut newly_acked, mut newest, mut any_eliciting) = (0, None, false);
        self.forget_lost(now, rtt);
        let mut spurious = Vec::new();
        for r in ranges {
            let late: Vec<u64> = self.lost.range(r.clone()).map(|(&pn, _)| pn).collect();
            for pn in late {
                if let Some(l) = self.lost.remove(&pn) {
                    spurious.push(self.on_spurious(now, pn, l, rtt));
                }
            }
            let (mut in_flight, mut eliciting) = (0, 0);
            self.sent.take_range(r, |pn, p| {
                in_flight += if p.in_flight { p.bytes } else { 0 };
                eliciting += usize::from(p.ack_eliciting);
                any_eliciting |= p.ack_eliciting;
                newly_acked += 1;
                // Ranges lowest first, each taken lowest first: the last is the largest.
                newest = Some((pn, p.time));
                visit(pn, p);
            });
            self.bytes_in_flight -= in_flight;
            self.ack_eliciting_in_flight -= eliciting;
        }
        spurious.sort_by_key(|s| s.pn);
        let mut rtt_sample = false;
        if let Some((l, sent)) = newest {
            self.largest_acked = self.largest_acked.max(Some(l));
            if Some(l) == self.largest_acked && any_eliciting {
                rtt.update(now.saturating_duration_since(sent), ack_delay, max_ack_delay);
                self.first_sample.get_or_insert(now);
                rtt_sample = true;
            }
            self.pto_count = 0;
        }
        let lost = if newly_acked == 0 { Vec::new() } else { self.detect_lost(now, rtt) };
        let persistent_congestion = self.persistent(&lost, rtt, max_ack_delay);
        AckOutcome {
            acked: Vec::new(),
            newly_acked,
            newest,
            lost,
            rtt_sample,
            persistent_congestion,
            spurious,
        }
    }

    /// Declares lost what the packet or time threshold says, and sets `loss_time`.
    fn detect_lost(&mut self, now: Instant, rtt: &RttEstimator) -> Vec<(u64, SentPacket<F>)> {
        self.loss_time = None;
        let Some(largest) = self.largest_acked else { return Vec::new() };
        let delay = self.loss_delay(rtt);
        let lost_before = now.checked_sub(delay);
        let mut lost_pns = Vec::new();
        for (pn, p) in self.sent.below(largest) {
            let by_time = lost_before.is_some_and(|t| p.time <= t);
            if by_time || largest >= pn.saturating_add(self.packet_threshold) {
                lost_pns.push((pn, by_time));
            } else {
                let at = p.time + delay;
                self.loss_time = Some(self.loss_time.map_or(at, |l| l.min(at)));
            }
        }
        let mut lost = Vec::with_capacity(lost_pns.len());
        for (pn, by_time) in lost_pns {
            let p = self.remove(pn).expect("listed");
            self.remember_lost(pn, &p, now, largest, by_time);
            lost.push((pn, p));
        }
        lost
    }

    /// Remembers a packet declared lost, dropping the oldest beyond `lost_memory`.
    fn remember_lost(
        &mut self,
        pn: u64,
        p: &SentPacket<F>,
        now: Instant,
        largest_acked: u64,
        by_time: bool,
    ) {
        if self.config.lost_memory == 0 {
            return;
        }
        let l = Lost {
            sent: p.time,
            bytes: p.bytes,
            in_flight: p.in_flight,
            declared: now,
            largest_acked,
            by_time,
        };
        if let Entry::Vacant(v) = self.lost.entry(pn) {
            v.insert(l);
        }
        while self.lost.len() > self.config.lost_memory {
            self.lost.pop_first();
        }
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
    /// else the PTO of the last ack-eliciting packet, `(pto_base + delay) · 2^pto_count`
    /// (`delay`: `max_ack_delay` while a single ack-eliciting packet is in flight, else
    /// what a thinning peer may take, a quarter of the RTT, at most 1 ms).
    pub fn timer(&self, rtt: &RttEstimator, max_ack_delay: Duration) -> Option<Instant> {
        if self.loss_time.is_some() {
            return self.loss_time;
        }
        if self.ack_eliciting_in_flight == 0 {
            return None;
        }
        // The peer acknowledges two ack-eliciting packets at once, or thinning within a
        // quarter of its round trip, at most 1 ms (PROTOCOL §11.4.1), so its full ACK delay
        // is only waited for when one alone is in flight (as RACK-TLP adds the delayed-ACK
        // timer only for a flight of one, RFC 8985 §7.2). Without this, a lost tail on a
        // short path waits out 25 ms per probe for an ACK that is not delayed; with a whole
        // millisecond where a quarter RTT is due, a loopback relay dropping 5 % of the
        // datagrams carries 30 % less.
        let delay = if self.ack_eliciting_in_flight >= 2 {
            (rtt.get() / 4).min(THIN_DELAY).min(max_ack_delay)
        } else {
            max_ack_delay
        };
        let pto = (rtt.pto_base() + delay) * 2u32.saturating_pow(self.pto_count.min(16));
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

    #[test]
    fn the_sent_map_finds_numbers_with_and_without_gaps() {
        let t = Instant::now();
        let mut m = SentMap::new();
        assert_eq!(m.index(5), 0);
        // Dense from 10, then gaps (numbers not held: untracked packets).
        let held: Vec<u64> = (10..20).chain([22, 23, 30, 31, 32, 40]).collect();
        for &pn in &held {
            assert!(m.insert(pn, pkt(t)));
        }
        for pn in 0..45 {
            let want = held.partition_point(|&n| n < pn);
            assert_eq!(m.index(pn), want, "pn {pn}");
        }
        // Holes at the front are dropped (the search starts from the new first number),
        // others stay as slots.
        assert!(m.remove(10).is_some());
        assert!(m.remove(12).is_some());
        assert_eq!(m.index(11), 0);
        assert_eq!(m.index(12), 1);
        assert_eq!(m.index(13), 2);
        let mut taken = Vec::new();
        m.take_range(13..=30, |n, _| taken.push(n));
        assert_eq!(taken, [13, 14, 15, 16, 17, 18, 19, 22, 23, 30]);
        assert_eq!(m.len(), 4);
        assert_eq!(m.index(31), 12);
        assert_eq!(m.index(41), 15);
    }

    #[test]
    fn the_probe_timeout_waits_for_the_peers_full_ack_delay_only_for_a_flight_of_one() {
        let t = Instant::now();
        let rtt = RttEstimator::default();
        let mut r: Recovery<()> = Recovery::new(16);
        r.on_sent(1, pkt(t)).unwrap();
        let one = r.timer(&rtt, MAD).unwrap() - t;
        assert_eq!(one, rtt.pto_base() + MAD, "one in flight: the peer may delay its ACK");
        r.on_sent(2, pkt(t)).unwrap();
        let two = r.timer(&rtt, MAD).unwrap() - t;
        assert_eq!(
            two,
            rtt.pto_base() + THIN_DELAY,
            "two in flight: the peer acknowledges within a quarter RTT, at most 1 ms"
        );
        // On a short path, a quarter of it.
        let mut short = RttEstimator::default();
        short.update(Duration::from_micros(400), Duration::ZERO, MAD);
        let two = r.timer(&short, MAD).unwrap() - t;
        assert_eq!(two, short.pto_base() + short.get() / 4);
    }

    #[test]
    fn the_sent_record_keeps_holes_until_they_reach_the_front() {
        let t = Instant::now();
        let mut rtt = RttEstimator::default();
        let mut r: Recovery<()> = Recovery::new(4);
        for pn in [1, 2, 3, 5] {
            r.on_sent(pn, pkt(t)).unwrap();
        }
        assert!(r.is_full());
        assert_eq!(r.on_sent(6, pkt(t)), Err(TrackFull));
        // 1 stays out (not yet past the packet threshold): 2 and 3 leave holes behind it.
        let out = r.on_ack(t + MS, [3..=3, 2..=2], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(out.acked.iter().map(|(pn, _)| *pn).collect::<Vec<_>>(), [2, 3]);
        assert!(out.lost.is_empty());
        assert_eq!((r.tracked(), r.bytes_in_flight()), (2, 2400));
        r.on_sent(7, pkt(t)).unwrap();
        r.on_sent(8, pkt(t)).unwrap();
        assert!(r.is_full());
        // A range over numbers never tracked (4, 6) and holes takes just the packets.
        let out = r.on_ack(t + 2 * MS, [1..=7], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(out.acked.iter().map(|(pn, _)| *pn).collect::<Vec<_>>(), [1, 5, 7]);
        assert_eq!((r.tracked(), r.bytes_in_flight()), (1, 1200));
        assert!(!r.is_full(), "the holes went with the front");
        // A number that does not rise is refused, never misfiled.
        #[cfg(not(debug_assertions))]
        assert_eq!(r.on_sent(8, pkt(t)), Err(TrackFull));
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

    fn pns(v: &[(u64, SentPacket<()>)]) -> Vec<u64> {
        v.iter().map(|p| p.0).collect()
    }

    #[test]
    fn a_loss_by_the_packet_threshold_then_acknowledged_is_spurious_and_raises_the_threshold() {
        for adaptive_reordering in [true, false] {
            let t = Instant::now();
            let mut rtt = RttEstimator::default();
            let config = RecoveryConfig { adaptive_reordering, ..RecoveryConfig::default() };
            let mut r = Recovery::with_config(1000, config);
            for pn in 0..5 {
                r.on_sent(pn, pkt(t + pn as u32 * MS)).unwrap();
            }
            // 4 arrives first: 0 and 1 are 3 or more below it, declared lost.
            let out = r.on_ack(t + 50 * MS, [4..=4], Duration::ZERO, MAD, &mut rtt);
            assert_eq!(pns(&out.lost), [0, 1]);
            assert!(out.spurious.is_empty());
            // Then 0 to 3 arrive: 0 and 1 were reordered, not lost.
            let out = r.on_ack(t + 52 * MS, [0..=3], Duration::ZERO, MAD, &mut rtt);
            assert_eq!(pns(&out.acked), [2, 3]);
            assert_eq!(out.spurious.iter().map(|s| s.pn).collect::<Vec<_>>(), [0, 1]);
            assert_eq!(out.spurious[1].sent, t + MS);
            assert_eq!(r.spurious_losses(), 2);
            assert_eq!(r.remembered_lost(), 0);
            // 0 was lost 4 below the largest acknowledged: the threshold becomes 5.
            assert_eq!(r.packet_threshold(), if adaptive_reordering { 5 } else { 3 });
            // The packet threshold declared them: the time threshold stays RFC 9002's.
            assert_eq!(r.time_threshold(), TIME_THRESHOLD_EIGHTHS);
            // The same reordering again: nothing is declared lost (adaptive), 10 and 11
            // are (fixed).
            let t1 = t + 60 * MS;
            for pn in 10..15 {
                r.on_sent(pn, pkt(t1 + (pn - 10) as u32 * MS)).unwrap();
            }
            let out = r.on_ack(t1 + 50 * MS, [14..=14], Duration::ZERO, MAD, &mut rtt);
            let want: &[u64] = if adaptive_reordering { &[] } else { &[10, 11] };
            assert_eq!(pns(&out.lost), want);
        }
    }

    /// Packet 0 sent at `t`, 1 at `t + 1 ms`; 1 acknowledged 100 ms later, and 0 declared
    /// lost by the time threshold when the loss timer fires, then acknowledged 5 ms after
    /// that. Returns when.
    fn late_by_time(r: &mut Recovery<()>, rtt: &mut RttEstimator, pn: u64, t: Instant) -> Instant {
        r.on_sent(pn, pkt(t)).unwrap();
        r.on_sent(pn + 1, pkt(t + MS)).unwrap();
        r.on_ack(t + 101 * MS, [pn + 1..=pn + 1], Duration::ZERO, MAD, rtt);
        let at = r.timer(rtt, MAD).unwrap();
        let Timeout::Lost { lost, .. } = r.on_timeout(at, rtt, MAD) else { panic!("not lost") };
        assert_eq!(pns(&lost), [pn]);
        let out = r.on_ack(at + 5 * MS, [pn..=pn], Duration::ZERO, MAD, rtt);
        assert_eq!(out.spurious.len(), 1);
        at + 5 * MS
    }

    #[test]
    fn the_time_threshold_rises_by_an_eighth_per_round_trip_of_spurious_losses_up_to_its_cap() {
        let t = Instant::now();
        let mut rtt = RttEstimator::default();
        let config = RecoveryConfig { max_time_threshold_eighths: 12, ..RecoveryConfig::default() };
        let mut r = Recovery::with_config(1000, config);
        let mut now = t;
        let mut seen = Vec::new();
        for i in 0..10 {
            now = late_by_time(&mut r, &mut rtt, 2 * i, now + MS);
            seen.push(r.time_threshold());
        }
        // One step per loss here: each is more than an RTT after the last.
        assert_eq!(seen, [10, 11, 12, 12, 12, 12, 12, 12, 12, 12]);
        // Two spurious losses within one RTT raise it once.
        let mut r = Recovery::<()>::new(1000);
        let mut rtt = RttEstimator::default();
        for pn in 0..3 {
            r.on_sent(pn, pkt(t + pn as u32 * MS)).unwrap();
        }
        r.on_ack(t + 101 * MS, [2..=2], Duration::ZERO, MAD, &mut rtt);
        let at = r.timer(&rtt, MAD).unwrap();
        let Timeout::Lost { lost, .. } = r.on_timeout(at + 2 * MS, &rtt, MAD) else { panic!() };
        assert_eq!(pns(&lost), [0, 1]);
        r.on_ack(at + 3 * MS, [0..=0], Duration::ZERO, MAD, &mut rtt);
        r.on_ack(at + 4 * MS, [1..=1], Duration::ZERO, MAD, &mut rtt);
        assert_eq!((r.spurious_losses(), r.time_threshold()), (2, 10));
    }

    #[test]
    fn thresholds_never_exceed_their_caps_nor_go_below_rfc_9002() {
        let t = Instant::now();
        // Caps below RFC 9002's values: the thresholds stay at 3 and 9/8.
        for (max_p, max_t, want_p, want_t) in [(1, 4, 3, 9), (8, 11, 8, 11)] {
            let config = RecoveryConfig {
                max_packet_threshold: max_p,
                max_time_threshold_eighths: max_t,
                ..RecoveryConfig::default()
            };
            let mut r = Recovery::with_config(1000, config);
            let mut rtt = RttEstimator::default();
            // Reordering by 50 packets, over and over.
            let mut now = t;
            for round in 0..5u64 {
                let base = 1000 + round * 100;
                for pn in base..base + 51 {
                    r.on_sent(pn, pkt(now)).unwrap();
                }
                r.on_ack(now + 40 * MS, [base + 50..=base + 50], Duration::ZERO, MAD, &mut rtt);
                r.on_ack(now + 41 * MS, [base..=base + 49], Duration::ZERO, MAD, &mut rtt);
                now += 50 * MS;
            }
            for i in 0..5 {
                now = late_by_time(&mut r, &mut rtt, 2000 + 2 * i, now + 200 * MS);
            }
            assert!(r.spurious_losses() > 5);
            assert_eq!((r.packet_threshold(), r.time_threshold()), (want_p, want_t));
        }
    }

    #[test]
    fn the_memory_of_lost_packets_is_bounded_in_number_and_in_time() {
        let t = Instant::now();
        let config = RecoveryConfig { lost_memory: 4, ..RecoveryConfig::default() };
        let mut r = Recovery::with_config(1000, config);
        let mut rtt = RttEstimator::default();
        for pn in 0..14 {
            r.on_sent(pn, pkt(t)).unwrap();
        }
        // 0 to 10 declared lost, only the 4 most recent (7 to 10) remembered.
        let out = r.on_ack(t + 40 * MS, [13..=13], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(out.lost.len(), 11);
        assert_eq!(r.remembered_lost(), 4);
        let out = r.on_ack(t + 41 * MS, [0..=10], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(out.spurious.iter().map(|s| s.pn).collect::<Vec<_>>(), [7, 8, 9, 10]);
        // Forgotten after 4 RTTs: an acknowledgement later than that is not counted.
        let mut r = Recovery::<()>::new(1000);
        for pn in 0..4 {
            r.on_sent(pn, pkt(t)).unwrap();
        }
        r.on_ack(t + 40 * MS, [3..=3], Duration::ZERO, MAD, &mut rtt);
        assert_eq!(r.remembered_lost(), 1);
        let out = r.on_ack(t + 250 * MS, [0..=0], Duration::ZERO, MAD, &mut rtt);
        assert!(out.spurious.is_empty());
        assert_eq!((r.remembered_lost(), r.spurious_losses()), (0, 0));
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
