//! `KeyStore`: the server's table of enc_init keys — concurrent, bounded, expiring. Sans-IO:
//! every call that depends on time takes `now`.
//!
//! # Concurrency
//!
//! The table is split into up to 16 shards by the key id's first byte, each behind its own
//! `parking_lot` mutex; ids are uniformly random, so load spreads evenly and requests on
//! different keys rarely meet on a lock. A lock is held only to look up, insert or mark a
//! counter: the AEAD work runs outside it, on a shared [`KeyMaterial`].
//!
//! # Bound and eviction
//!
//! The store holds at most [`KeyStoreConfig::max_keys`] keys in all. Each shard keeps its
//! keys in a queue by last use (a key goes to the back when it is made and each time a
//! request authenticates with it; its older place goes stale and is skipped), so the front
//! of each queue is that shard's least recently used key. Inserting into a full store
//! first removes expired keys (a sweep, at most once a second while the store stays full;
//! idle-expired keys are also the ones at the fronts), then, if it is still full, the key
//! unused the longest across the whole store: the oldest of the shards' fronts. That is
//! the order `docs/PROTOCOL.md` §4.8 states. A flood of handshakes can push out idle keys
//! but never makes the store grow, and a key in active use is the last to go. Inserts take
//! one store-wide lock (a handshake costs far more than the few shard locks it takes);
//! lookups take only their shard's. Both kinds of removal are counted
//! ([`KeyStoreStats`]).
//!
//! # Expiry
//!
//! A key expires when it has not been used for [`KeyStoreConfig::idle_ttl`] (only an
//! authenticated request counts as a use) or when it is older than
//! [`KeyStoreConfig::max_age`]. Expired keys are removed lazily — by a lookup that finds
//! them (which reports [`LookupError::Expired`] once; afterwards the key is unknown), by
//! eviction, or by [`KeyStore::sweep`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::cipher::{AeadKey, CipherSuite};
use super::key_id::KeyId;
use super::keys::PUBLIC_KEY_LEN;
use super::replay::{ReplayError, ReplayWindow};

const MAX_SHARDS: usize = 16;

/// While the store stays full, how often an insert sweeps it for expired keys before it
/// evicts one that is still valid.
const SWEEP_WHEN_FULL: Duration = Duration::from_secs(1);

/// The store's bound and key lifetimes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStoreConfig {
    /// Most keys held at once (at least 1). Default 10,000; a key takes about 1.5 KiB.
    pub max_keys: usize,
    /// A key unused this long expires (default 10 min). Sent to clients in whole seconds.
    pub idle_ttl: Duration,
    /// A key older than this expires, however busy (default 24 h), so that no key
    /// protects an unbounded amount of traffic.
    pub max_age: Duration,
}

impl Default for KeyStoreConfig {
    fn default() -> Self {
        KeyStoreConfig {
            max_keys: 10_000,
            idle_ttl: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// What one key is: the negotiated suite, a key per direction, and who holds it.
pub struct KeyMaterial {
    /// The AEAD cipher.
    pub suite: CipherSuite,
    /// Opens what the client sends (client → server).
    pub c2s: AeadKey,
    /// Seals what the server sends (server → client).
    pub s2c: AeadKey,
    /// The client's Ed25519 public key, when it authenticated with a certificate.
    pub client: Option<[u8; PUBLIC_KEY_LEN]>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // AeadKey's own Debug never shows key bytes.
        f.debug_struct("KeyMaterial")
            .field("suite", &self.suite)
            .field("client", &self.client.map(|k| super::keys::public_key_to_base64(&k)))
            .finish_non_exhaustive()
    }
}

/// What other layers may learn about a key (no secrets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The AEAD cipher.
    pub suite: CipherSuite,
    /// The authenticated client key, if any.
    pub client: Option<[u8; PUBLIC_KEY_LEN]>,
    /// When the handshake made it.
    pub created: Instant,
    /// Its last authenticated use (its creation, before any).
    pub last_used: Instant,
}

/// Why a key could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No key with this id.
    #[error("unknown key")]
    Unknown,
    /// The key expired (and has now been removed).
    #[error("expired key")]
    Expired,
}

/// Why a request counter could not be used with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UseError {
    /// No key with this id.
    #[error("unknown key")]
    Unknown,
    /// The key expired (and has now been removed).
    #[error("expired key")]
    Expired,
    /// The counter was used before, or is too old to tell.
    #[error("replayed counter: {0}")]
    Replay(ReplayError),
}

impl From<LookupError> for UseError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::Unknown => UseError::Unknown,
            LookupError::Expired => UseError::Expired,
        }
    }
}

/// The store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStoreStats {
    /// Keys held now (expired ones not yet removed included).
    pub live: usize,
    /// Keys ever inserted.
    pub inserted: u64,
    /// Keys removed because they expired (by lookup, eviction or sweep).
    pub expired: u64,
    /// Keys still valid that were evicted to make room (least recently used).
    pub evicted: u64,
}

struct Slot {
    material: Arc<KeyMaterial>,
    created: Instant,
    last_used: Instant,
    /// Which of the key's places in its shard's queue is current: each use queues it again
    /// at the back with a new stamp, and places with an older stamp are stale.
    stamp: u32,
    window: ReplayWindow,
}

struct Shard {
    map: HashMap<KeyId, Slot>,
    /// Keys by last use (or insertion), least recent first, with the stamp of that use.
    /// Stale places (an older stamp, or a key removed some other way) are skipped when they
    /// reach the front, and dropped when the queue is compacted; it holds at most twice
    /// the live keys' places plus 16.
    queue: VecDeque<(KeyId, u32)>,
}

/// The server's keys: see the [module docs](self). `Send + Sync`; share it by reference or
/// in an `Arc`.
pub struct KeyStore {
    shards: Box<[Mutex<Shard>]>,
    config: KeyStoreConfig,
    /// Keys held, in all shards.
    count: AtomicUsize,
    /// Serialises inserts (and so evictions); holds when a full store was last swept.
    inserting: Mutex<Option<Instant>>,
    inserted: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// An empty store. A `max_keys` of 0 is taken as 1.
    pub fn new(config: KeyStoreConfig) -> Self {
        let max = config.max_keys.max(1);
        let n = max.min(MAX_SHARDS);
        let shards = (0..n)
            .map(|_| Mutex::new(Shard { map: HashMap::new(), queue: VecDeque::new() }))
            .collect();
        KeyStore {
            shards,
            config: KeyStoreConfig { max_keys: max, ..config },
            count: AtomicUsize::new(0),
            inserting: Mutex::new(None),
            inserted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &KeyStoreConfig {
        &self.config
    }

    fn shard(&self, id: &KeyId) -> &Mutex<Shard> {
        &self.shards[usize::from(id.0[0]) % self.shards.len()]
    }

    fn is_expired(&self, slot: &Slot, now: Instant) -> bool {
        now.saturating_duration_since(slot.last_used) > self.config.idle_ttl
            || now.saturating_duration_since(slot.created) > self.config.max_age
    }

    /// Adds a key made at `now`, evicting as the [module docs](self) say if the store is
    /// full. An existing key with the same id (a 2^-128 chance for CSPRNG ids) is replaced.
    pub fn insert(&self, id: KeyId, material: KeyMaterial, now: Instant) {
        let mut last_sweep = self.inserting.lock();
        let present = self.shard(&id).lock().map.contains_key(&id);
        if !present && self.count.load(Ordering::SeqCst) >= self.config.max_keys {
            if last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_WHEN_FULL) {
                *last_sweep = Some(now);
                self.sweep(now);
            }
            while self.count.load(Ordering::SeqCst) >= self.config.max_keys {
                if !self.evict_oldest(now) {
                    break;
                }
            }
        }
        let mut guard = self.shard(&id).lock();
        let shard = &mut *guard;
        let slot = Slot {
            material: Arc::new(material),
            created: now,
            last_used: now,
            stamp: 0,
            window: ReplayWindow::new(),
        };
        // A replaced key's old places go stale with its stamp.
        let stamp = shard.map.get(&id).map_or(0, |old| old.stamp.wrapping_add(1));
        if shard.map.insert(id, Slot { stamp, ..slot }).is_none() {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        shard.queue.push_back((id, stamp));
        Self::compact(shard);
        self.inserted.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops stale places once they outnumber the live ones: O(1) amortised per push.
    fn compact(shard: &mut Shard) {
        if shard.queue.len() > 2 * shard.map.len() + 16 {
            let Shard { map, queue, .. } = shard;
            queue.retain(|(id, stamp)| map.get(id).is_some_and(|s| s.stamp == *stamp));
        }
    }

    /// Drops the stale places at the front of `shard`'s queue; returns the live key
    /// there (the shard's least recently used) with its stamp and last use.
    fn front(shard: &mut Shard) -> Option<(KeyId, u32, Instant)> {
        while let Some(&(id, stamp)) = shard.queue.front() {
            match shard.map.get(&id) {
                Some(slot) if slot.stamp == stamp => return Some((id, stamp, slot.last_used)),
                _ => {
                    shard.queue.pop_front();
                }
            }
        }
        None
    }

    /// Removes the key unused the longest in the whole store (the oldest of the shards'
    /// fronts), counted as expired if it had expired, else as evicted. False when the
    /// store is empty.
    fn evict_oldest(&self, now: Instant) -> bool {
        // A request may use the chosen key between the look and the removal: then look
        // again (it went to its queue's back). Bounded; then take the front as it is.
        for attempt in 0..4 {
            let oldest = self
                .shards
                .iter()
                .enumerate()
                .filter_map(|(i, sh)| Self::front(&mut sh.lock()).map(|f| (i, f)))
                .min_by_key(|(_, (_, _, used))| *used);
            let Some((i, (id, stamp, _))) = oldest else { return false };
            let mut shard = self.shards[i].lock();
            let current = Self::front(&mut shard);
            if current.is_some_and(|(cid, cstamp, _)| cid == id && cstamp == stamp) || attempt == 3
            {
                let Some((id, _, _)) = current else { continue };
                shard.queue.pop_front();
                let slot = shard.map.remove(&id).expect("the front is live");
                self.count.fetch_sub(1, Ordering::SeqCst);
                let counter =
                    if self.is_expired(&slot, now) { &self.expired } else { &self.evicted };
                counter.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Runs `f` on a live key's slot; removes the key if it has expired.
    fn with_slot<R>(
        &self,
        id: &KeyId,
        now: Instant,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Result<R, LookupError> {
        let mut shard = self.shard(id).lock();
        let slot = shard.map.get_mut(id).ok_or(LookupError::Unknown)?;
        if self.is_expired(slot, now) {
            shard.map.remove(id);
            self.count.fetch_sub(1, Ordering::SeqCst);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Err(LookupError::Expired);
        }
        Ok(f(slot))
    }

    /// The key `id` and whether `counter` is still unused with it: the first step of
    /// serving a request. Does not count as a use.
    ///
    /// # Errors
    /// [`UseError`]: unknown, expired (then removed), or a counter already used.
    pub fn begin(
        &self,
        id: &KeyId,
        counter: u64,
        now: Instant,
    ) -> Result<Arc<KeyMaterial>, UseError> {
        self.with_slot(id, now, |slot| {
            slot.window.check(counter).map_err(UseError::Replay)?;
            Ok(slot.material.clone())
        })?
    }

    /// Marks `counter` as used with key `id` and the key as used at `now`: the step after
    /// the request authenticated. Exactly one of several concurrent commits of one counter
    /// succeeds.
    ///
    /// # Errors
    /// [`UseError`]: unknown, expired, or the counter was used meanwhile.
    pub fn commit(&self, id: &KeyId, counter: u64, now: Instant) -> Result<(), UseError> {
        let mut guard = self.shard(id).lock();
        let shard = &mut *guard;
        let slot = shard.map.get_mut(id).ok_or(UseError::Unknown)?;
        if self.is_expired(slot, now) {
            shard.map.remove(id);
            self.count.fetch_sub(1, Ordering::SeqCst);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Err(UseError::Expired);
        }
        slot.window.accept(counter).map_err(UseError::Replay)?;
        slot.last_used = slot.last_used.max(now);
        // Most recently used now: to the back of the queue (its older place goes stale).
        slot.stamp = slot.stamp.wrapping_add(1);
        let stamp = slot.stamp;
        shard.queue.push_back((*id, stamp));
        Self::compact(shard);
        Ok(())
    }

    /// What is known about key `id`, for other layers (e.g. the client identity behind a
    /// stream request). Does not count as a use.
    ///
    /// # Errors
    /// [`LookupError`]: unknown, or expired (then removed).
    pub fn info(&self, id: &KeyId, now: Instant) -> Result<KeyInfo, LookupError> {
        self.with_slot(id, now, |slot| KeyInfo {
            suite: slot.material.suite,
            client: slot.material.client,
            created: slot.created,
            last_used: slot.last_used,
        })
    }

    /// The key material of `id`, for other layers that seal or open with it. Does not
    /// count as a use.
    ///
    /// # Errors
    /// [`LookupError`]: unknown, or expired (then removed).
    pub fn material(&self, id: &KeyId, now: Instant) -> Result<Arc<KeyMaterial>, LookupError> {
        self.with_slot(id, now, |slot| slot.material.clone())
    }

    /// Forgets key `id`; true if it was there.
    pub fn remove(&self, id: &KeyId) -> bool {
        let removed = self.shard(id).lock().map.remove(id).is_some();
        if removed {
            self.count.fetch_sub(1, Ordering::SeqCst);
        }
        removed
    }

    /// Removes every expired key; returns how many. Call it now and then (e.g. from a
    /// timer) to return memory early; the bound holds without it.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut total = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let before = shard.map.len();
            shard.map.retain(|_, slot| !self.is_expired(slot, now));
            let gone = before - shard.map.len();
            self.count.fetch_sub(gone, Ordering::SeqCst);
            total += gone;
        }
        self.expired.fetch_add(total as u64, Ordering::Relaxed);
        total
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The counters.
    pub fn stats(&self) -> KeyStoreStats {
        KeyStoreStats {
            live: self.len(),
            inserted: self.inserted.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> KeyMaterial {
        let suite = CipherSuite::ChaCha20Poly1305;
        KeyMaterial {
            suite,
            c2s: AeadKey::new(suite, &[1; 32]),
            s2c: AeadKey::new(suite, &[2; 32]),
            client: Some([9; 32]),
        }
    }

    fn id(n: u16) -> KeyId {
        let mut id = [0u8; 16];
        id[..2].copy_from_slice(&n.to_le_bytes());
        KeyId(id)
    }

    fn store(max_keys: usize) -> KeyStore {
        KeyStore::new(KeyStoreConfig {
            max_keys,
            idle_ttl: Duration::from_secs(10),
            max_age: Duration::from_secs(100),
        })
    }

    #[test]
    fn lookup_use_and_replay() {
        let t0 = Instant::now();
        let s = store(10);
        s.insert(id(1), material(), t0);
        assert_eq!(s.begin(&id(2), 0, t0).unwrap_err(), UseError::Unknown);
        let m = s.begin(&id(1), 0, t0).unwrap();
        assert_eq!(m.client, Some([9; 32]));
        // Checking does not use the counter; committing does, once.
        assert!(s.begin(&id(1), 0, t0).is_ok());
        s.commit(&id(1), 0, t0).unwrap();
        assert_eq!(s.commit(&id(1), 0, t0), Err(UseError::Replay(ReplayError::Seen)));
        assert_eq!(s.begin(&id(1), 0, t0).unwrap_err(), UseError::Replay(ReplayError::Seen));
        assert_eq!(s.info(&id(1), t0).unwrap().client, Some([9; 32]));
        assert!(s.remove(&id(1)));
        assert_eq!(s.info(&id(1), t0), Err(LookupError::Unknown));
    }

    #[test]
    fn idle_ttl_and_max_age_on_a_virtual_clock() {
        let t0 = Instant::now();
        let s = store(10);
        s.insert(id(1), material(), t0);
        s.insert(id(2), material(), t0);
        // Key 1 stays busy: a use every 9 s keeps it alive past the idle TTL...
        let mut t = t0;
        for c in 0..10 {
            t += Duration::from_secs(9);
            s.begin(&id(1), c, t).unwrap();
            s.commit(&id(1), c, t).unwrap();
        }
        // ...while key 2, idle, expired; the first lookup says so, then it is gone.
        assert_eq!(s.info(&id(2), t), Err(LookupError::Expired));
        assert_eq!(s.info(&id(2), t), Err(LookupError::Unknown));
        // info() is not a use: key 1 expires 10 s after its last commit.
        assert!(s.info(&id(1), t + Duration::from_secs(10)).is_ok());
        assert_eq!(s.info(&id(1), t + Duration::from_secs(11)), Err(LookupError::Expired));
        // However busy, a key dies at max_age.
        s.insert(id(3), material(), t0);
        let mut t = t0;
        for c in 0..12 {
            t += Duration::from_secs(9);
            if t.duration_since(t0) > Duration::from_secs(100) {
                assert_eq!(s.begin(&id(3), c, t).unwrap_err(), UseError::Expired);
                break;
            }
            s.commit(&id(3), c, t).unwrap();
        }
        assert_eq!(s.stats().expired, 3);
    }

    #[test]
    fn the_bound_holds_expired_go_first_then_the_least_recently_used() {
        let t0 = Instant::now();
        let s = KeyStore::new(KeyStoreConfig { max_keys: 4, ..store(4).config().clone() });
        // Ids in different shards and in the same one: the bound is the store's.
        let ids: Vec<KeyId> = [0u16, 1, 16, 2, 3, 32].into_iter().map(id).collect();
        for (i, k) in ids[..4].iter().enumerate() {
            s.insert(*k, material(), t0 + Duration::from_secs(i as u64));
        }
        // Key 0 is used late: key 1 is now the least recently used.
        s.commit(&ids[0], 0, t0 + Duration::from_secs(5)).unwrap();
        s.insert(ids[4], material(), t0 + Duration::from_secs(6));
        assert_eq!(s.info(&ids[1], t0 + Duration::from_secs(6)), Err(LookupError::Unknown));
        for k in [0, 2, 3, 4] {
            assert!(s.info(&ids[k], t0 + Duration::from_secs(6)).is_ok(), "key {k}");
        }
        assert_eq!(s.stats().evicted, 1);
        // Much later every key has expired: the insert sweeps them (expired, none evicted).
        let late = t0 + Duration::from_secs(30);
        s.insert(ids[5], material(), late);
        let st = s.stats();
        assert_eq!((st.live, st.evicted, st.expired, st.inserted), (1, 1, 4, 6));
    }

    /// PROTOCOL §4.8: the key unused the longest goes first, across the whole store, and
    /// every place of `max_keys` is used.
    #[test]
    fn eviction_keeps_the_most_recently_made_keys_in_order() {
        for max in [3usize, 8, 20] {
            let t0 = Instant::now();
            let s = KeyStore::new(KeyStoreConfig { max_keys: max, ..store(max).config().clone() });
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let ids: Vec<KeyId> = (0..max + 5)
                .map(|_| {
                    let mut k = [0u8; 16];
                    for b in &mut k {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        *b = rng as u8;
                    }
                    KeyId(k)
                })
                .collect();
            for (i, k) in ids.iter().enumerate() {
                s.insert(*k, material(), t0 + Duration::from_millis(100 * i as u64));
                assert_eq!(s.len(), (i + 1).min(max), "max {max}: every place is used");
            }
            let now = t0 + Duration::from_millis(100 * ids.len() as u64);
            let kept: Vec<usize> =
                (0..ids.len()).filter(|&i| s.info(&ids[i], now).is_ok()).collect();
            let want: Vec<usize> = (ids.len() - max..ids.len()).collect();
            assert_eq!(kept, want, "max {max}: the newest keys stay");
            assert_eq!(s.stats().evicted, 5);
        }
    }

    #[test]
    fn a_flood_never_grows_the_store() {
        let t0 = Instant::now();
        let s = store(100);
        for i in 0..5000u32 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            s.insert(KeyId(k), material(), t0);
            assert!(s.len() <= 100);
        }
        assert_eq!(s.len(), 100);
        assert_eq!(s.stats().evicted, 4900);
        assert_eq!(s.sweep(t0 + Duration::from_secs(11)), 100);
        assert!(s.is_empty());
    }
}
