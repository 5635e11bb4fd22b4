//! Packetization-layer path MTU discovery in the manner of RFC 8899 (DPLPMTUD), sans-IO.
//!
//! A connection starts at the base size every path carries (1,200 bytes of UDP payload) and
//! searches upward, by halving the interval between the largest size known to pass and the
//! smallest size known to fail, to the configured maximum:
//! - a probe is one ack-eliciting packet of exactly the size being tried (PING and padding),
//!   at most one outstanding at a time, sent only on a validated path and within the
//!   congestion window;
//! - an acknowledged probe raises the connection's datagram size to its size;
//! - a size whose probe is lost `max_probes` times in a row is taken as too large: the
//!   search continues below it. A lost probe is not a congestion signal (RFC 8899 §3,
//!   RFC 9000 §14.4): the window is not cut for it;
//! - the search ends when the interval is narrower than `precision`, and starts again after
//!   `raise_interval` (the path may have grown);
//! - **black holes**: if the path shrinks under the size in use, full-size packets vanish
//!   while small ones still pass. Three loss events in a row that lose packets larger than
//!   the base size while acknowledging none, or three probe timeouts in a row, drop the size
//!   back to the base and search again from there.

use std::time::{Duration, Instant};

use super::packet::MIN_DATAGRAM;

/// Path MTU settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtuConfig {
    /// The size to start at, known to pass (1,200: every path must carry it; smaller values
    /// are taken as 1,200).
    pub base: usize,
    /// The largest UDP payload to try (1,452: an Ethernet MTU under IPv6 and UDP headers).
    /// Equal to `base`, discovery is off.
    pub max: usize,
    /// Probes of one size lost in a row before the size is taken as too large (3).
    pub max_probes: u8,
    /// The search stops when the largest size that passed and the smallest that failed are
    /// closer than this (8 bytes).
    pub precision: usize,
    /// After a search ends, the time before the next one (10 minutes, RFC 8899's
    /// `PMTU_RAISE_TIMER`).
    pub raise_interval: Duration,
}

impl Default for MtuConfig {
    fn default() -> Self {
        MtuConfig {
            base: MIN_DATAGRAM,
            max: 1452,
            max_probes: 3,
            precision: 8,
            raise_interval: Duration::from_secs(600),
        }
    }
}

impl MtuConfig {
    /// A fixed datagram size, with no discovery (a path known in advance, benchmarks).
    pub fn fixed(size: usize) -> Self {
        let size = size.max(MIN_DATAGRAM);
        MtuConfig { base: size, max: size, ..MtuConfig::default() }
    }

    fn base(&self) -> usize {
        self.base.max(MIN_DATAGRAM)
    }

    fn max(&self) -> usize {
        self.max.max(self.base())
    }
}

/// Counters of path MTU discovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MtuStats {
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes lost (never a congestion signal).
    pub probes_lost: u64,
    /// Times a black hole sent the size back to the base.
    pub black_holes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Searching between `low` (passes) and `high` (the largest size not yet known to
    /// fail); `top`: `high` is still the maximum, untried.
    Search { low: usize, high: usize, fails: u8, top: bool },
    /// Done until this time.
    Done { until: Option<Instant> },
}

/// One path's MTU discovery.
#[derive(Clone, Debug)]
pub struct Mtu {
    config: MtuConfig,
    current: usize,
    phase: Phase,
    /// The size of the probe in flight.
    probing: Option<usize>,
    /// Loss events in a row that lost only packets larger than the base.
    suspicious: u32,
    stats: MtuStats,
}

/// Loss events in a row, losing large packets and acknowledging none, that mean a black
/// hole.
const BLACK_HOLE_EVENTS: u32 = 3;
/// Probe timeouts in a row that mean a black hole (the packets that went unanswered were
/// full-size). Two was too eager: at 1 % random loss a tail packet and its probe are both
/// lost now and then, and in the simulator 2 to 4 of 39 ten-minute transfers fell back to
/// the base size for nothing; with three, none did.
const BLACK_HOLE_PTOS: u32 = 3;

impl Mtu {
    /// Discovery starting at the base size (the first search starts at once).
    pub fn new(config: MtuConfig) -> Self {
        let base = config.base();
        let phase = if config.max() > base {
            Phase::Search { low: base, high: config.max(), fails: 0, top: true }
        } else {
            Phase::Done { until: None }
        };
        Mtu {
            config,
            current: base,
            phase,
            probing: None,
            suspicious: 0,
            stats: MtuStats::default(),
        }
    }

    /// The datagram size to send now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The largest datagram this connection may ever send.
    pub fn max(&self) -> usize {
        self.config.max()
    }

    /// The counters.
    pub fn stats(&self) -> MtuStats {
        self.stats
    }

    /// Whether a search is under way.
    pub fn searching(&self) -> bool {
        matches!(self.phase, Phase::Search { .. })
    }

    /// The size of the probe to send now, if one is due.
    pub fn probe_due(&mut self, now: Instant) -> Option<usize> {
        if let Phase::Done { until: Some(t) } = self.phase
            && now >= t
        {
            self.restart();
        }
        match self.phase {
            // The maximum first: most paths carry it, and then one probe is the search.
            Phase::Search { high, top: true, .. } if self.probing.is_none() => Some(high),
            // Then the middle, so a size that passes moves `low` and one that fails moves
            // `high`, and the interval halves either way.
            Phase::Search { low, high, .. } if self.probing.is_none() => {
                Some(low + (high - low).div_ceil(2))
            }
            _ => None,
        }
    }

    /// A probe of `size` bytes went out.
    pub fn on_probe_sent(&mut self, size: usize) {
        self.probing = Some(size);
        self.stats.probes_sent += 1;
    }

    /// When the next search starts (for the connection's timer).
    pub fn timer(&self) -> Option<Instant> {
        match self.phase {
            Phase::Done { until } => until,
            Phase::Search { .. } => None,
        }
    }

    fn restart(&mut self) {
        self.phase =
            Phase::Search { low: self.current, high: self.config.max(), fails: 0, top: true };
        self.probing = None;
        self.settle(None);
    }

    /// Ends the search once the interval is narrow enough.
    fn settle(&mut self, now: Option<Instant>) {
        if let Phase::Search { low, high, top: false, .. } = self.phase
            && (high <= low || high - low < self.config.precision.max(1))
        {
            let until = now.map(|t| t + self.config.raise_interval);
            self.phase = Phase::Done { until };
        }
    }

    /// The probe of `size` was acknowledged: the path carries it. Returns the new size.
    pub fn on_probe_acked(&mut self, now: Instant, size: usize) -> Option<usize> {
        if self.probing == Some(size) {
            self.probing = None;
        }
        self.suspicious = 0;
        let Phase::Search { low, high, .. } = self.phase else {
            return None;
        };
        if size <= low {
            return None;
        }
        self.phase = Phase::Search { low: size, high: high.max(size), fails: 0, top: false };
        self.settle(Some(now));
        (size > self.current).then(|| {
            self.current = size;
            size
        })
    }

    /// The probe of `size` was declared lost.
    pub fn on_probe_lost(&mut self, now: Instant, size: usize) {
        self.stats.probes_lost += 1;
        if self.probing == Some(size) {
            self.probing = None;
        }
        let Phase::Search { low, high, fails, top } = self.phase else { return };
        if size <= low || size > high {
            return;
        }
        let fails = fails + 1;
        self.phase = if fails >= self.config.max_probes.max(1) {
            Phase::Search { low, high: size - 1, fails: 0, top: false }
        } else {
            Phase::Search { low, high, fails, top }
        };
        self.settle(Some(now));
    }

    /// One loss event (one ACK's or timer's worth): whether it lost packets larger than the
    /// base and whether any acknowledged packet was. Returns the new size on a black hole.
    pub fn on_loss_event(&mut self, lost_large: bool, acked_large: bool) -> Option<usize> {
        if acked_large {
            self.suspicious = 0;
            return None;
        }
        if !lost_large || self.current <= self.config.base() {
            return None;
        }
        self.suspicious += 1;
        (self.suspicious >= BLACK_HOLE_EVENTS).then(|| self.black_hole())
    }

    /// An acknowledgement of packets larger than the base: full-size packets pass.
    pub fn on_large_acked(&mut self) {
        self.suspicious = 0;
    }

    /// `count` probe timeouts in a row. Returns the new size on a black hole.
    pub fn on_pto(&mut self, count: u32) -> Option<usize> {
        (count >= BLACK_HOLE_PTOS && self.current > self.config.base()).then(|| self.black_hole())
    }

    fn black_hole(&mut self) -> usize {
        self.stats.black_holes += 1;
        self.suspicious = 0;
        self.current = self.config.base();
        self.restart();
        self.current
    }

    /// Whether a packet of `bytes` is larger than the base (lost, it hints at a black hole).
    pub fn is_large(&self, bytes: u64) -> bool {
        bytes > self.config.base() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a path that carries `path` bytes, every probe answered at
    /// once; returns the size found and the probes lost.
    fn search(config: MtuConfig, path: usize) -> (usize, u64) {
        let now = Instant::now();
        let mut m = Mtu::new(config);
        for _ in 0..100 {
            let Some(size) = m.probe_due(now) else { break };
            m.on_probe_sent(size);
            if size <= path {
                m.on_probe_acked(now, size);
            } else {
                m.on_probe_lost(now, size);
            }
        }
        assert!(!m.searching(), "the search ends");
        (m.current(), m.stats().probes_lost)
    }

    #[test]
    fn the_search_finds_the_path_mtu_within_its_precision() {
        let config = MtuConfig::default();
        for path in [1200, 1201, 1280, 1400, 1451, 1452, 9000] {
            let (found, lost) = search(config, path);
            let path = path.min(config.max);
            assert!(found <= path && path - found < config.precision, "{path}: found {found}");
            // Each size that fails costs `max_probes` probes; a binary search tries few.
            assert!(lost <= 3 * 6, "{path}: {lost} probes lost");
        }
        let (found, _) = search(MtuConfig { max: 9000, precision: 1, ..config }, 8952);
        assert_eq!(found, 8952);
    }

    #[test]
    fn a_size_is_given_up_only_after_max_probes_losses() {
        let now = Instant::now();
        let mut m = Mtu::new(MtuConfig::default());
        let size = m.probe_due(now).unwrap();
        m.on_probe_sent(size);
        m.on_probe_lost(now, size);
        assert_eq!(m.probe_due(now), Some(size), "a lost probe is tried again");
        m.on_probe_sent(size);
        assert_eq!(m.probe_due(now), None, "one probe outstanding at a time");
        // A random loss of one probe does not end the size: it is tried again.
        m.on_probe_lost(now, size);
        assert_eq!(m.probe_due(now), Some(size));
        m.on_probe_sent(size);
        m.on_probe_acked(now, size);
        assert_eq!(m.current(), size);
    }

    #[test]
    fn a_fixed_size_never_probes() {
        let mut m = Mtu::new(MtuConfig::fixed(8952));
        assert_eq!(m.current(), 8952);
        assert_eq!(m.probe_due(Instant::now()), None);
        assert_eq!(m.timer(), None);
    }

    #[test]
    fn black_holes_send_the_size_back_to_the_base_and_search_again() {
        let now = Instant::now();
        let mut m = Mtu::new(MtuConfig::default());
        for _ in 0..20 {
            let Some(s) = m.probe_due(now) else { break };
            m.on_probe_sent(s);
            m.on_probe_acked(now, s);
        }
        assert_eq!(m.current(), 1452);
        // Losses of large packets broken by an acknowledged large one are just losses.
        assert_eq!(m.on_loss_event(true, false), None);
        assert_eq!(m.on_loss_event(true, false), None);
        assert_eq!(m.on_loss_event(true, true), None);
        assert_eq!(m.on_loss_event(true, false), None);
        assert_eq!(m.on_loss_event(true, false), None);
        // The third in a row is a black hole.
        assert_eq!(m.on_loss_event(true, false), Some(1200));
        assert_eq!(m.current(), 1200);
        assert_eq!(m.stats().black_holes, 1);
        assert!(m.searching(), "and the search starts again");
        // At the base size, losses are only losses.
        for _ in 0..5 {
            assert_eq!(m.on_loss_event(true, false), None);
        }
        // Probe timeouts in a row with large packets are one too.
        let s = m.probe_due(now).unwrap();
        m.on_probe_sent(s);
        m.on_probe_acked(now, s);
        assert_eq!(m.on_pto(1), None);
        assert_eq!(m.on_pto(2), None);
        assert_eq!(m.on_pto(3), Some(1200));
    }

    #[test]
    fn a_finished_search_starts_again_after_the_raise_interval() {
        let now = Instant::now();
        let config = MtuConfig { raise_interval: Duration::from_secs(60), ..MtuConfig::default() };
        let mut m = Mtu::new(config);
        while let Some(s) = m.probe_due(now) {
            m.on_probe_sent(s);
            if s <= 1300 {
                m.on_probe_acked(now, s);
            } else {
                m.on_probe_lost(now, s);
            }
        }
        let found = m.current();
        assert!((1293..=1300).contains(&found), "{found}");
        let at = m.timer().expect("a raise timer");
        assert_eq!(at, now + Duration::from_secs(60));
        assert_eq!(m.probe_due(at - Duration::from_millis(1)), None);
        let s = m.probe_due(at).expect("a new search");
        assert!(s > found);
    }
}
