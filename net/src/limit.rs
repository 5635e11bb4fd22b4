//! Limits per source address block: a request rate ([`RateLimiter`], for `/enc_init`
//! handshakes) and a count of what is held at once ([`ConnLimiter`], for connections).
//!
//! Clients are told apart by address *block*, not address: an IPv6 host is usually given a
//! whole /64, so counting per /128 would let one host be a billion clients.
//! [`SourcePrefixes`] says how wide a block is (default /32 for IPv4, /64 for IPv6).
//!
//! Both tables are bounded ([`RateLimit::max_sources`], [`ConnLimits::max_sources`]): when
//! full, a block that is not in them yet is refused, as nginx's `limit_req` does when its
//! zone is full, rather than letting an attacker with many addresses grow them without end.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::server::Cidr;

/// How many leading bits of a source address name one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourcePrefixes {
    /// Bits of an IPv4 address (0–32; default 32, one host).
    pub v4: u8,
    /// Bits of an IPv6 address (0–128; default 64, one site's subnet).
    pub v6: u8,
}

impl Default for SourcePrefixes {
    fn default() -> Self {
        SourcePrefixes { v4: 32, v6: 64 }
    }
}

impl SourcePrefixes {
    /// The block `ip` belongs to. IPv4-mapped IPv6 addresses count as IPv4. Widths past the
    /// family's are taken as the whole address.
    pub fn block(&self, ip: IpAddr) -> Cidr {
        let ip = ip.to_canonical();
        let bits = if ip.is_ipv4() { self.v4.min(32) } else { self.v6.min(128) };
        Cidr::new(ip, bits).unwrap_or_else(|_| unreachable!("the width is clamped"))
    }
}

/// A rate per source block: `per_second` on average, `burst` at once.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Requests per second one block may make on average; 0 turns the limit off.
    pub per_second: u32,
    /// Requests one block may make at once after being quiet (at least 1).
    pub burst: u32,
    /// Blocks tracked at once; when the table is full, new blocks are refused.
    pub max_sources: usize,
    /// What one block is.
    pub prefixes: SourcePrefixes,
}

impl RateLimit {
    /// A limit of `per_second` with room for `burst`, on 65,536 blocks of the default widths.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimit { per_second, burst, max_sources: 65_536, prefixes: SourcePrefixes::default() }
    }

    /// No limit.
    pub fn off() -> Self {
        Self::new(0, 1)
    }
}

/// Why a request was refused, and when to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateRefused {
    /// When the block may make its next request (at least 1 s, for `Retry-After`).
    pub retry_after: Duration,
    /// The same, exactly (for a server that delays rather than refuses).
    pub wait: Duration,
}

/// What [`RateLimiter::admit`] decided for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Within the rate: go on.
    Now,
    /// Its turn comes after this wait (taken: go on then without asking again).
    After(Duration),
    /// Past the rate with the block's queue of waiting requests full: refuse it.
    Refused(RateRefused),
}

/// A token bucket per source block, as GCRA (one timestamp per block): each request moves
/// the block's "theoretical arrival time" one interval on; a request that would move it
/// more than `burst` intervals past now is refused. Sans-IO: every call takes `now`.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    interval: Duration,
    /// How far ahead of now a block's time may run: `(burst - 1)` intervals.
    tolerance: Duration,
    table: Mutex<RateTable>,
    refused: AtomicU64,
}

#[derive(Debug)]
struct RateTable {
    tat: HashMap<Cidr, Instant>,
    /// When a full table was last purged of blocks back at full burst.
    purged: Option<Instant>,
}

impl RateLimiter {
    /// A limiter enforcing `limit`.
    pub fn new(limit: RateLimit) -> Self {
        let interval = if limit.per_second == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / limit.per_second
        };
        let tolerance = interval * limit.burst.max(1).saturating_sub(1);
        RateLimiter {
            limit,
            interval,
            tolerance,
            table: Mutex::new(RateTable { tat: HashMap::new(), purged: None }),
            refused: AtomicU64::new(0),
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Counts one request from `ip` at `now`: `Ok` if its block is within the limit.
    ///
    /// # Errors
    /// [`RateRefused`] when the block is over its rate, or is new while the table is full
    /// (counted in [`refused`](Self::refused)).
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), RateRefused> {
        self.take_turn(ip, now, Duration::ZERO).map(|_| ())
    }

    /// Admits one request from `ip` at `now`, as nginx's `limit_req` with a delay: within
    /// the rate (and burst) at once; past it, the request takes the block's next free turn
    /// and waits for it ([`Admit::After`]: it is counted then, not checked again), as long
    /// as no more than `burst` requests of the block are waiting already; past that, or
    /// for a new block while the table is full, it is refused (counted in
    /// [`refused`](Self::refused)). Each waiting request has a turn of its own, so a block
    /// with many connections waiting wakes them one interval apart, never all at once.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Admit {
        // `burst` turns may be taken ahead of the rate, waiting.
        let queue = self.interval * self.limit.burst.max(1);
        match self.take_turn(ip, now, queue) {
            Ok(Duration::ZERO) => Admit::Now,
            Ok(wait) => Admit::After(wait),
            Err(r) => Admit::Refused(r),
        }
    }

    /// Takes the block's next turn for a request from `ip` at `now` if it comes within
    /// `max_wait`: how long the request waits for it (zero: within the limit).
    fn take_turn(
        &self,
        ip: IpAddr,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, RateRefused> {
        if self.limit.per_second == 0 {
            return Ok(Duration::ZERO);
        }
        let block = self.limit.prefixes.block(ip);
        let mut table = self.table.lock();
        let known = table.tat.get(&block).copied();
        if known.is_none() && table.tat.len() >= self.limit.max_sources {
            // Blocks whose time is past are at full burst, as if absent: drop them, at most
            // once a second so that a full table costs O(1) amortised per request.
            if table
                .purged
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
            {
                table.purged = Some(now);
                table.tat.retain(|_, tat| *tat > now);
            }
            if table.tat.len() >= self.limit.max_sources {
                drop(table);
                self.refused.fetch_add(1, Ordering::Relaxed);
                let d = Duration::from_secs(1);
                return Err(RateRefused { retry_after: d, wait: d });
            }
        }
        let tat = known.map_or(now, |t| t.max(now));
        let wait = tat.saturating_duration_since(now).saturating_sub(self.tolerance);
        if wait > max_wait {
            drop(table);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(RateRefused { retry_after: wait.max(Duration::from_secs(1)), wait });
        }
        table.tat.insert(block, tat + self.interval);
        Ok(wait)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Blocks tracked now.
    pub fn sources(&self) -> usize {
        self.table.lock().tat.len()
    }
}

/// Bounds on what is held at once: in all, and per source block.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnLimits {
    /// Most held in all; 0: no bound.
    pub max_total: usize,
    /// Most held by one source block; 0: no bound.
    pub per_source: usize,
    /// Blocks tracked at once (only with `per_source`); when full, new blocks are refused.
    pub max_sources: usize,
    /// What one block is.
    pub prefixes: SourcePrefixes,
}

impl Default for ConnLimits {
    /// No bound in all, none per block.
    fn default() -> Self {
        ConnLimits {
            max_total: 0,
            per_source: 0,
            max_sources: 65_536,
            prefixes: SourcePrefixes::default(),
        }
    }
}

/// Why [`ConnLimiter::acquire`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnRefused {
    /// [`ConnLimits::max_total`] are held.
    #[error("the total limit is reached")]
    Total,
    /// The source block holds [`ConnLimits::per_source`].
    #[error("the per-source limit is reached")]
    PerSource,
    /// [`ConnLimits::max_sources`] blocks are tracked and this one is new.
    #[error("too many sources")]
    Sources,
}

/// Counts what is held, in all and per source block; a [`ConnPermit`] gives its place back
/// when dropped. `Send + Sync`: share it in an `Arc`.
#[derive(Debug)]
pub struct ConnLimiter {
    limits: ConnLimits,
    state: Mutex<ConnState>,
    refused_total: AtomicU64,
    refused_source: AtomicU64,
}

#[derive(Debug, Default)]
struct ConnState {
    total: usize,
    per_block: HashMap<Cidr, usize>,
}

/// One held place of a [`ConnLimiter`], given back on drop.
#[derive(Debug)]
pub struct ConnPermit {
    limiter: Arc<ConnLimiter>,
    block: Option<Cidr>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut st = self.limiter.state.lock();
        st.total -= 1;
        if let Some(block) = self.block
            && let Some(n) = st.per_block.get_mut(&block)
        {
            *n -= 1;
            if *n == 0 {
                st.per_block.remove(&block);
            }
        }
    }
}

impl ConnLimiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(ConnLimiter {
            limits,
            state: Mutex::new(ConnState::default()),
            refused_total: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Takes a place for a peer at `ip` (`None`: a peer without an address, counted in the
    /// total only).
    ///
    /// # Errors
    /// [`ConnRefused`], counted ([`refused`](Self::refused)).
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnPermit, ConnRefused> {
        let l = &self.limits;
        let mut st = self.state.lock();
        if l.max_total != 0 && st.total >= l.max_total {
            drop(st);
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(ConnRefused::Total);
        }
        let block = match ip {
            Some(ip) if l.per_source != 0 => {
                let block = l.prefixes.block(ip);
                let held = st.per_block.get(&block).copied().unwrap_or(0);
                let refusal = if held >= l.per_source {
                    Some(ConnRefused::PerSource)
                } else if held == 0 && st.per_block.len() >= l.max_sources {
                    Some(ConnRefused::Sources)
                } else {
                    None
                };
                if let Some(r) = refusal {
                    drop(st);
                    self.refused_source.fetch_add(1, Ordering::Relaxed);
                    return Err(r);
                }
                *st.per_block.entry(block).or_insert(0) += 1;
                Some(block)
            }
            _ => None,
        };
        st.total += 1;
        Ok(ConnPermit { limiter: self.clone(), block })
    }

    /// Places held now.
    pub fn held(&self) -> usize {
        self.state.lock().total
    }

    /// Refusals so far: `(at the total limit, at a per-source limit or the table bound)`.
    pub fn refused(&self) -> (u64, u64) {
        (self.refused_total.load(Ordering::Relaxed), self.refused_source.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_by_prefix() {
        let p = SourcePrefixes { v4: 24, v6: 64 };
        assert_eq!(p.block(ip("10.1.2.3")), p.block(ip("10.1.2.200")));
        assert_ne!(p.block(ip("10.1.2.3")), p.block(ip("10.1.3.3")));
        assert_eq!(p.block(ip("::ffff:10.1.2.3")), p.block(ip("10.1.2.9")));
        assert_eq!(p.block(ip("2001:db8::1")), p.block(ip("2001:db8::ffff:1")));
        assert_ne!(p.block(ip("2001:db8::1")), p.block(ip("2001:db8:0:1::1")));
        let wide = SourcePrefixes { v4: 200, v6: 200 };
        assert_ne!(wide.block(ip("10.0.0.1")), wide.block(ip("10.0.0.2")));
    }

    /// On a virtual clock: past the burst each request gets a turn of its own, one
    /// interval after the one before; `burst` of them wait at most, later ones are refused
    /// until turns free up again.
    #[test]
    fn admitted_requests_wait_in_turns_of_their_own() {
        let t0 = Instant::now();
        let r = RateLimiter::new(RateLimit::new(10, 3));
        let me = ip("127.0.0.2");
        for _ in 0..3 {
            assert_eq!(r.admit(me, t0), Admit::Now);
        }
        let ms = Duration::from_millis;
        assert_eq!(r.admit(me, t0), Admit::After(ms(100)));
        assert_eq!(r.admit(me, t0), Admit::After(ms(200)));
        assert_eq!(r.admit(me, t0), Admit::After(ms(300)));
        let Admit::Refused(no) = r.admit(me, t0) else { panic!("the waiting room is full") };
        assert_eq!((no.wait, no.retry_after), (ms(400), Duration::from_secs(1)));
        assert_eq!(r.refused(), 1);
        // A refusal takes no turn; 100 ms on, one turn is served and one more may wait.
        assert_eq!(r.admit(me, t0 + ms(100)), Admit::After(ms(300)));
        assert!(matches!(r.admit(me, t0 + ms(100)), Admit::Refused(_)));
        assert_eq!(r.admit(ip("127.0.0.3"), t0), Admit::Now, "other blocks are not affected");
        assert_eq!(RateLimiter::new(RateLimit::off()).admit(me, t0), Admit::Now);
    }

    /// On a virtual clock: a burst, then one per interval; other blocks are not affected.
    #[test]
    fn rate_is_a_token_bucket_per_block() {
        let t0 = Instant::now();
        let r = RateLimiter::new(RateLimit::new(10, 5));
        for _ in 0..5 {
            r.check(ip("127.0.0.2"), t0).unwrap();
        }
        let refused = r.check(ip("127.0.0.2"), t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        // Another block has its own bucket.
        r.check(ip("127.0.0.3"), t0).unwrap();
        // 100 ms later one more token.
        let t = t0 + Duration::from_millis(100);
        r.check(ip("127.0.0.2"), t).unwrap();
        assert!(r.check(ip("127.0.0.2"), t).is_err());
        // Over 10 s a steady sender gets 10 per second, not more.
        let mut ok = 0;
        for ms in 0..10_000u64 {
            if r.check(ip("127.0.0.2"), t + Duration::from_millis(ms)).is_ok() {
                ok += 1;
            }
        }
        assert!((99..=101).contains(&ok), "{ok}");
        assert_eq!(r.refused(), 2 + (10_000 - ok));
        // Off: anything goes.
        let off = RateLimiter::new(RateLimit::off());
        for _ in 0..1000 {
            off.check(ip("127.0.0.2"), t0).unwrap();
        }
    }

    #[test]
    fn the_rate_table_is_bounded() {
        let t0 = Instant::now();
        let r = RateLimiter::new(RateLimit { max_sources: 3, ..RateLimit::new(1, 1) });
        for n in 1..=3 {
            r.check(ip(&format!("10.0.0.{n}")), t0).unwrap();
        }
        assert!(r.check(ip("10.0.0.4"), t0).is_err(), "a new block while full");
        assert_eq!(r.sources(), 3);
        // Two seconds on, the known blocks are back at full burst: purged, room again.
        r.check(ip("10.0.0.4"), t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(r.sources(), 1);
    }

    #[test]
    fn connections_in_all_and_per_block() {
        let l = ConnLimiter::new(ConnLimits {
            max_total: 5,
            per_source: 2,
            max_sources: 3,
            prefixes: SourcePrefixes::default(),
        });
        let a1 = l.acquire(Some(ip("127.0.0.2"))).unwrap();
        let _a2 = l.acquire(Some(ip("127.0.0.2"))).unwrap();
        assert_eq!(l.acquire(Some(ip("127.0.0.2"))).unwrap_err(), ConnRefused::PerSource);
        let _b = l.acquire(Some(ip("127.0.0.3"))).unwrap();
        let _c = l.acquire(Some(ip("127.0.0.4"))).unwrap();
        assert_eq!(l.acquire(Some(ip("127.0.0.5"))).unwrap_err(), ConnRefused::Sources);
        let _u = l.acquire(None).unwrap();
        assert_eq!(l.acquire(None).unwrap_err(), ConnRefused::Total);
        assert_eq!(l.held(), 5);
        drop(a1);
        let _a3 = l.acquire(Some(ip("127.0.0.2"))).unwrap();
        assert_eq!(l.refused(), (1, 2));
        drop(_a3);
        drop(_a2);
        assert_eq!(l.acquire(Some(ip("127.0.0.5"))).map(|_| ()), Ok(()), "a freed block");
        assert_eq!(l.held(), 3);
    }
}
