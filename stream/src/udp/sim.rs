//! A simulated network on a virtual clock, for testing UDP engines without sockets: each
//! direction of each pair of addresses is a link with a propagation delay and jitter,
//! random loss, duplication and reordering, a bottleneck rate with a drop-tail queue, and
//! an MTU. Everything is decided by a seeded generator, so a run with the same seed and
//! the same inputs is the same run.
//!
//! The calling pattern is the engine's own: [`Network::send`] what an endpoint transmits
//! at `now`, ask [`Network::next_delivery`] when the next datagram arrives, advance the
//! clock, and [`Network::deliver`] what is due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ecn::Ecn;

/// One direction of a link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay, uniform in `[0, jitter]` (reorders datagrams).
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice.
    pub duplicate: f64,
    /// Bottleneck rate in bits per second (`None`: unlimited).
    pub rate_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops (drop-tail).
    pub queue_bytes: usize,
    /// The largest datagram that passes (UDP payload bytes); larger ones are dropped, as a
    /// path with a smaller MTU drops them (the "don't fragment" case).
    pub mtu: usize,
    /// An ECN-marking bottleneck: an ECN-capable datagram that finds more than this many
    /// bytes queued is marked CE instead of waiting its turn to be dropped (`None`: no
    /// marking, drop-tail only).
    pub ecn_mark_bytes: Option<usize>,
    /// The path clears the ECN field (a "bleaching" middlebox).
    pub ecn_bleach: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            rate_bps: None,
            queue_bytes: usize::MAX,
            mtu: 65_527,
            ecn_mark_bytes: None,
            ecn_bleach: false,
        }
    }
}

/// A datagram in flight or delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Its source.
    pub from: SocketAddr,
    /// Its destination.
    pub to: SocketAddr,
    /// When it arrives.
    pub at: Instant,
    /// The UDP payload.
    pub bytes: Vec<u8>,
    /// Its ECN codepoint on arrival.
    pub ecn: Ecn,
}

/// What the network did, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Delivered (duplicates included).
    pub delivered: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped by a full bottleneck queue.
    pub queue_drops: u64,
    /// Dropped for being over the MTU.
    pub mtu_drops: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams marked CE by a bottleneck.
    pub ce_marked: u64,
}

#[derive(Clone, Copy, Debug)]
struct Link {
    config: LinkConfig,
    /// When the bottleneck finishes sending what it holds.
    busy_until: Option<Instant>,
}

/// The simulated network.
#[derive(Debug)]
pub struct Network {
    default: LinkConfig,
    links: HashMap<(SocketAddr, SocketAddr), Link>,
    /// Bottlenecks shared by every source sending to one destination.
    shared: HashMap<SocketAddr, Link>,
    in_flight: BinaryHeap<Reverse<(Instant, u64)>>,
    datagrams: HashMap<u64, Datagram>,
    next_id: u64,
    rng: u64,
    stats: NetStats,
}

impl Network {
    /// A network whose links all start as `default`, with random decisions from `seed`.
    pub fn new(seed: u64, default: LinkConfig) -> Self {
        Network {
            default,
            links: HashMap::new(),
            shared: HashMap::new(),
            in_flight: BinaryHeap::new(),
            datagrams: HashMap::new(),
            next_id: 0,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            stats: NetStats::default(),
        }
    }

    /// Sets the link from `from` to `to` (one direction).
    pub fn set_link(&mut self, from: SocketAddr, to: SocketAddr, config: LinkConfig) {
        let busy_until = self.links.get(&(from, to)).and_then(|l| l.busy_until);
        self.links.insert((from, to), Link { config, busy_until });
    }

    /// Makes every datagram to `to`, whatever its source, cross one link with `config`
    /// (one queue, one rate): the shared bottleneck of competing flows.
    pub fn set_shared_link(&mut self, to: SocketAddr, config: LinkConfig) {
        self.shared.insert(to, Link { config, busy_until: None });
    }

    /// What happened so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.datagrams.len()
    }

    /// A uniform number in `[0, 1)` (xorshift64*).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Hands a datagram to the network at `now`, not ECN-capable.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        self.send_ecn(now, from, to, Ecn::NotEct, bytes);
    }

    /// Hands a datagram marked `ecn` to the network at `now`.
    pub fn send_ecn(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        mut ecn: Ecn,
        bytes: &[u8],
    ) {
        self.stats.sent += 1;
        let default = self.default;
        let shared = self.shared.contains_key(&to);
        let link = match self.shared.get(&to) {
            Some(l) => *l,
            None => {
                *self.links.entry((from, to)).or_insert(Link { config: default, busy_until: None })
            }
        };
        let c = link.config;
        if bytes.len() > c.mtu {
            self.stats.mtu_drops += 1;
            return;
        }
        // The bottleneck: serialisation at the rate, behind what it already holds.
        let mut depart = now;
        if let Some(rate) = c.rate_bps {
            let start = link.busy_until.map_or(now, |b| b.max(now));
            let queued = start.saturating_duration_since(now).as_secs_f64() * rate as f64 / 8.0;
            if queued + bytes.len() as f64 > c.queue_bytes as f64 {
                self.stats.queue_drops += 1;
                return;
            }
            if c.ecn_mark_bytes.is_some_and(|m| queued > m as f64)
                && matches!(ecn, Ecn::Ect0 | Ecn::Ect1)
            {
                ecn = Ecn::Ce;
                self.stats.ce_marked += 1;
            }
            depart = start + Duration::from_secs_f64(bytes.len() as f64 * 8.0 / rate as f64);
            let l = if shared { self.shared.get_mut(&to) } else { self.links.get_mut(&(from, to)) };
            if let Some(l) = l {
                l.busy_until = Some(depart);
            }
        }
        // Loss happens after the bottleneck (the datagram used its share of the link).
        if self.uniform() < c.loss {
            self.stats.lost += 1;
            return;
        }
        if c.ecn_bleach {
            ecn = Ecn::NotEct;
        }
        let copies = if self.uniform() < c.duplicate { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let jitter = c.jitter.mul_f64(self.uniform());
            let at = depart + c.delay + jitter;
            let id = self.next_id;
            self.next_id += 1;
            self.in_flight.push(Reverse((at, id)));
            self.datagrams.insert(id, Datagram { from, to, at, bytes: bytes.to_vec(), ecn });
        }
    }

    /// When the next datagram arrives.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|Reverse((at, _))| *at)
    }

    /// The next datagram due at or before `now`, in arrival order.
    pub fn deliver(&mut self, now: Instant) -> Option<Datagram> {
        let Reverse((at, id)) = *self.in_flight.peek()?;
        if at > now {
            return None;
        }
        self.in_flight.pop();
        self.stats.delivered += 1;
        self.datagrams.remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn drain(net: &mut Network) -> Vec<Datagram> {
        let mut out = Vec::new();
        while let Some(at) = net.next_delivery() {
            while let Some(d) = net.deliver(at) {
                out.push(d);
            }
        }
        out
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let cfg = LinkConfig {
            loss: 0.2,
            duplicate: 0.1,
            jitter: Duration::from_millis(5),
            ..LinkConfig::default()
        };
        let run = |seed| {
            let t0 = Instant::now();
            let mut net = Network::new(seed, cfg);
            for i in 0..500u16 {
                net.send(t0, addr(1), addr(2), &i.to_be_bytes());
            }
            drain(&mut net).into_iter().map(|d| (d.at - t0, d.bytes)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn loss_duplication_and_reordering_happen_at_their_rates() {
        let t0 = Instant::now();
        let cfg = LinkConfig {
            loss: 0.1,
            duplicate: 0.05,
            jitter: Duration::from_millis(20),
            ..LinkConfig::default()
        };
        let mut net = Network::new(1, cfg);
        for i in 0..10_000u16 {
            net.send(t0 + Duration::from_micros(i as u64 * 10), addr(1), addr(2), &i.to_be_bytes());
        }
        let got = drain(&mut net);
        let s = net.stats();
        assert!((900..1100).contains(&s.lost), "{s:?}");
        assert!((350..600).contains(&s.duplicated), "{s:?}");
        assert_eq!(got.len() as u64, s.delivered);
        let seqs: Vec<u16> =
            got.iter().map(|d| u16::from_be_bytes([d.bytes[0], d.bytes[1]])).collect();
        assert!(seqs.windows(2).any(|w| w[1] < w[0]), "jitter reorders");
        assert!(got.windows(2).all(|w| w[0].at <= w[1].at), "delivered in arrival order");
    }

    #[test]
    fn the_bottleneck_paces_and_its_queue_drops_the_tail() {
        let t0 = Instant::now();
        // 100 Mbit/s, 20 ms, a queue of 50 datagrams of 1,250 bytes.
        let cfg = LinkConfig {
            delay: Duration::from_millis(20),
            rate_bps: Some(100_000_000),
            queue_bytes: 50 * 1250,
            ..LinkConfig::default()
        };
        let mut net = Network::new(3, cfg);
        for _ in 0..100 {
            net.send(t0, addr(1), addr(2), &[0; 1250]);
        }
        assert_eq!(net.stats().queue_drops, 50);
        let got = drain(&mut net);
        assert_eq!(got.len(), 50);
        // 1,250 bytes take 100 µs at 100 Mbit/s: the last leaves after 5 ms.
        let last = got.last().unwrap().at - t0;
        assert_eq!(last, Duration::from_millis(25));
        // The MTU drops what is too large; an address change is simply a new link.
        net.set_link(addr(1), addr(2), LinkConfig { mtu: 1200, ..cfg });
        net.send(t0, addr(1), addr(2), &[0; 1201]);
        assert_eq!(net.stats().mtu_drops, 1);
        net.send(t0, addr(3), addr(2), &[0; 1201]);
        assert_eq!(drain(&mut net)[0].from, addr(3));
    }
}
