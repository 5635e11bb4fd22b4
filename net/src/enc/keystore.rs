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
//! The store holds at most [`KeyStoreConfig::max_keys`] keys in all, of two kinds: keys
//! *never used* since their handshake, and keys an authenticated request has used. An
//! anonymous flood of handshakes makes only the first kind, so the two are kept apart and
//! the flood can only ever push out its own kind:
//!
//! * Each shard keeps two queues, one per kind, in order of last use (a key goes to the
//!   back of the never-used queue when it is made, and to the back of the used queue each
//!   time a request authenticates with it; its older place goes stale and is skipped), so
//!   each queue's front is that shard's least recently used key of its kind.
//! * Inserting into a full store first removes expired keys (a sweep, at most once a second
//!   while the store stays full), then, if it is still full, the never-used key made the
//!   longest ago across the whole store (the oldest of the shards' never-used fronts).
//! * A used key is never evicted to make room: when every key held is a used one that has
//!   not expired, the insert is refused ([`StoreFull`]) and the handshake answers
//!   `503 busy` (`docs/PROTOCOL.md` §3.7 and §4.8).
//!
//! So a key in use survives any number of handshakes, and the store never grows. Inserts
//! take one store-wide lock (a handshake costs far more than the few shard locks it takes);
//! lookups take only their shard's. Every removal and refusal is counted
//! ([`KeyStoreStats`]).
//!
//! # Expiry
//!
//! A used key expires when it has not been used for [`KeyStoreConfig::idle_ttl`] (only an
//! authenticated request counts as a use); a key never used expires
//! [`KeyStoreConfig::unused_ttl`] after its handshake (short: a client uses its key at
//! once); any key expires when it is older than [`KeyStoreConfig::max_age`]. Expired keys
//! are removed lazily — by a lookup that finds them (which reports
//! [`LookupError::Expired`] once; afterwards the key is unknown), by eviction, or by
//! [`KeyStore::sweep`].

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
    /// A key no request has used expires this long after its handshake (default 30 s,
    /// never longer than `idle_ttl`), so that keys an anonymous flood makes go quickly.
    pub unused_ttl: Duration,
}

impl Default for KeyStoreConfig {
    fn default() -> Self {
        KeyStoreConfig {
            max_keys: 10_000,
            idle_ttl: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
            unused_ttl: Duration::from_secs(30),
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

impl KeyMaterial {
    /// The key in a form another node can load ([`from_bytes`](Self::from_bytes)): the
    /// suite's code, the two directions' key bytes, then 0, or 1 and the client's key.
    /// Secret: a cluster seals it before it leaves the node.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = Vec::with_capacity(1 + 2 * 32 + 1 + PUBLIC_KEY_LEN);
        out.push(self.suite.code());
        out.extend_from_slice(self.c2s.secret());
        out.extend_from_slice(self.s2c.secret());
        match &self.client {
            Some(k) => {
                out.push(1);
                out.extend_from_slice(k);
            }
            None => out.push(0),
        }
        out.into()
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote; `None` for anything else.
    pub fn from_bytes(b: &[u8]) -> Option<KeyMaterial> {
        let (&code, rest) = b.split_first()?;
        let suite = CipherSuite::from_code(code)?;
        let (c2s, rest) = rest.split_first_chunk::<32>()?;
        let (s2c, rest) = rest.split_first_chunk::<32>()?;
        let client = match rest {
            [0] => None,
            [1, key @ ..] => Some(<[u8; PUBLIC_KEY_LEN]>::try_from(key).ok()?),
            _ => return None,
        };
        Some(KeyMaterial {
            suite,
            c2s: AeadKey::new(suite, c2s),
            s2c: AeadKey::new(suite, s2c),
            client,
        })
    }
}

/// Keys shared with the other nodes of a cluster: a key made by `/enc_init` on one node is
/// usable on all. The enc server calls it on proc threads only (never on a reactor worker),
/// so an implementation may block, within a short timeout of its own. Every method is best
/// effort: when the shared store cannot be reached, the node carries on with its own keys.
pub trait SharedKeys: Send + Sync + 'static {
    /// A key this node just made ([`KeyMaterial::to_bytes`]), before its client hears
    /// of it; it expires after `idle` without use.
    fn publish(&self, id: &KeyId, material: &[u8], idle: Duration);
    /// A key another node made, if the shared store has it.
    fn fetch(&self, id: &KeyId) -> Option<zeroize::Zeroizing<Vec<u8>>>;
    /// Claims request number `seq` of key `id` for this node, cluster-wide, and renews the
    /// key's idle time: `Some(false)` when another node took it already (a replay),
    /// `None` when the shared store cannot say (the node's own replay window still holds).
    fn claim(&self, id: &KeyId, seq: u64, idle: Duration) -> Option<bool>;
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

/// Why [`KeyStore::insert`] did not store a key: every key held is a used one that has not
/// expired, and used keys are never evicted to make room for new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the key store is full of keys in use")]
pub struct StoreFull;

/// The store's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStoreStats {
    /// Keys held now (expired ones not yet removed included).
    pub live: usize,
    /// Of those, keys a request has used.
    pub used: usize,
    /// Keys ever inserted.
    pub inserted: u64,
    /// Keys removed because they expired (by lookup, eviction or sweep).
    pub expired: u64,
    /// Never-used keys still valid that were evicted to make room (the oldest first).
    pub evicted: u64,
    /// Inserts refused because the store was full of used keys ([`StoreFull`]).
    pub refused: u64,
}

struct Slot {
    material: Arc<KeyMaterial>,
    created: Instant,
    last_used: Instant,
    /// Which of the key's places in its shard's queues is current: each use queues it again
    /// at the back with a new stamp, and places with an older stamp are stale.
    stamp: u32,
    /// A request has used it (it moved from the never-used queue to the used one).
    used: bool,
    window: ReplayWindow,
}

/// Which of a shard's queues.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unused,
    Used,
}

struct Shard {
    map: HashMap<KeyId, Slot>,
    /// Never-used keys by insertion, oldest first, with their stamp.
    unused: VecDeque<(KeyId, u32)>,
    /// Used keys by last use, least recent first, with the stamp of that use.
    ///
    /// In both queues, stale places (an older stamp, or a key removed some other way) are
    /// skipped when they reach the front, and dropped when the queue is compacted; the two
    /// hold at most twice the live keys' places plus 16 each.
    used: VecDeque<(KeyId, u32)>,
    /// Used keys in `map`.
    used_count: usize,
}

impl Shard {
    fn queue(&mut self, kind: Kind) -> &mut VecDeque<(KeyId, u32)> {
        match kind {
            Kind::Unused => &mut self.unused,
            Kind::Used => &mut self.used,
        }
    }

    /// Removes `id`, keeping `used_count` true.
    fn take(&mut self, id: &KeyId) -> Option<Slot> {
        let slot = self.map.remove(id)?;
        self.used_count -= usize::from(slot.used);
        Some(slot)
    }
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
    refused: AtomicU64,
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
            .map(|_| {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    unused: VecDeque::new(),
                    used: VecDeque::new(),
                    used_count: 0,
                })
            })
            .collect();
        let unused_ttl = config.unused_ttl.min(config.idle_ttl);
        KeyStore {
            shards,
            config: KeyStoreConfig { max_keys: max, unused_ttl, ..config },
            count: AtomicUsize::new(0),
            inserting: Mutex::new(None),
            inserted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
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
        let idle = if slot.used { self.config.idle_ttl } else { self.config.unused_ttl };
        now.saturating_duration_since(slot.last_used) > idle
            || now.saturating_duration_since(slot.created) > self.config.max_age
    }

    /// Adds a key made at `now`, never used yet; if the store is full, first removes
    /// expired keys, then the oldest never-used key, as the [module docs](self) say. An
    /// existing key with the same id (a 2^-128 chance for CSPRNG ids) is replaced.
    ///
    /// # Errors
    /// [`StoreFull`] when every key held is a used key that has not expired: nothing was
    /// stored, nothing was evicted (counted in [`KeyStoreStats::refused`]).
    pub fn insert(&self, id: KeyId, material: KeyMaterial, now: Instant) -> Result<(), StoreFull> {
        let mut last_sweep = self.inserting.lock();
        let present = self.shard(&id).lock().map.contains_key(&id);
        if !present && self.count.load(Ordering::SeqCst) >= self.config.max_keys {
            if last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_WHEN_FULL) {
                *last_sweep = Some(now);
                self.sweep(now);
            }
            while self.count.load(Ordering::SeqCst) >= self.config.max_keys {
                // The oldest never-used key, else a used key that has expired since the
                // last sweep (the least recently used one is the first to expire).
                if !self.evict_oldest(Kind::Unused, now, false)
                    && !self.evict_oldest(Kind::Used, now, true)
                {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(StoreFull);
                }
            }
        }
        let mut guard = self.shard(&id).lock();
        let shard = &mut *guard;
        // A replaced key's old places go stale with its stamp.
        let stamp = shard.take(&id).map_or(0, |old| {
            self.count.fetch_sub(1, Ordering::SeqCst);
            old.stamp.wrapping_add(1)
        });
        let slot = Slot {
            material: Arc::new(material),
            created: now,
            last_used: now,
            stamp,
            used: false,
            window: ReplayWindow::new(),
        };
        shard.map.insert(id, slot);
        self.count.fetch_add(1, Ordering::SeqCst);
        shard.unused.push_back((id, stamp));
        Self::compact(shard, Kind::Unused);
        self.inserted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether `(id, stamp)` is the current place of a live key of `kind`.
    fn is_current(map: &HashMap<KeyId, Slot>, id: &KeyId, stamp: u32, kind: Kind) -> bool {
        map.get(id).is_some_and(|s| s.stamp == stamp && s.used == (kind == Kind::Used))
    }

    /// Drops stale places once they outnumber the live ones: O(1) amortised per push.
    fn compact(shard: &mut Shard, kind: Kind) {
        let live = match kind {
            Kind::Used => shard.used_count,
            Kind::Unused => shard.map.len() - shard.used_count,
        };
        if shard.queue(kind).len() > 2 * live + 16 {
            let Shard { map, unused, used, .. } = shard;
            let queue = if kind == Kind::Used { used } else { unused };
            queue.retain(|(id, stamp)| Self::is_current(map, id, *stamp, kind));
        }
    }

    /// Drops the stale places at the front of `shard`'s `kind` queue; returns the live key
    /// there (the shard's least recently used of that kind) with its stamp and last use.
    fn front(shard: &mut Shard, kind: Kind) -> Option<(KeyId, u32, Instant)> {
        while let Some(&(id, stamp)) = shard.queue(kind).front() {
            if Self::is_current(&shard.map, &id, stamp, kind) {
                return Some((id, stamp, shard.map[&id].last_used));
            }
            shard.queue(kind).pop_front();
        }
        None
    }

    /// Removes the `kind` key unused the longest in the whole store (the oldest of the
    /// shards' fronts), counted as expired if it had expired, else as evicted; with
    /// `only_expired`, only if it has expired. False when there is none to remove.
    fn evict_oldest(&self, kind: Kind, now: Instant, only_expired: bool) -> bool {
        // A request may use the chosen key between the look and the removal: then look
        // again (it went to another place). Bounded; then take the front as it is.
        for attempt in 0..4 {
            let oldest = self
                .shards
                .iter()
                .enumerate()
                .filter_map(|(i, sh)| Self::front(&mut sh.lock(), kind).map(|f| (i, f)))
                .min_by_key(|(_, (_, _, used))| *used);
            let Some((i, (id, stamp, _))) = oldest else { return false };
            let mut shard = self.shards[i].lock();
            let current = Self::front(&mut shard, kind);
            if current.is_some_and(|(cid, cstamp, _)| cid == id && cstamp == stamp) || attempt == 3
            {
                let Some((id, _, _)) = current else { continue };
                let expired = self.is_expired(&shard.map[&id], now);
                if only_expired && !expired {
                    return false;
                }
                shard.queue(kind).pop_front();
                shard.take(&id);
                self.count.fetch_sub(1, Ordering::SeqCst);
                let counter = if expired { &self.expired } else { &self.evicted };
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
            shard.take(id);
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
            shard.take(id);
            self.count.fetch_sub(1, Ordering::SeqCst);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return Err(UseError::Expired);
        }
        slot.window.accept(counter).map_err(UseError::Replay)?;
        slot.last_used = slot.last_used.max(now);
        let first_use = !slot.used;
        slot.used = true;
        // Most recently used now: to the back of the used queue (its older place, in
        // either queue, goes stale).
        slot.stamp = slot.stamp.wrapping_add(1);
        let stamp = slot.stamp;
        shard.used_count += usize::from(first_use);
        shard.used.push_back((*id, stamp));
        Self::compact(shard, Kind::Used);
        if first_use {
            Self::compact(shard, Kind::Unused);
        }
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
        let removed = self.shard(id).lock().take(id).is_some();
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
            let mut guard = shard.lock();
            let shard = &mut *guard;
            let before = shard.map.len();
            let mut used_gone = 0;
            shard.map.retain(|_, slot| {
                let keep = !self.is_expired(slot, now);
                used_gone += usize::from(!keep && slot.used);
                keep
            });
            shard.used_count -= used_gone;
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
            used: self.shards.iter().map(|s| s.lock().used_count).sum(),
            inserted: self.inserted.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
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
            unused_ttl: Duration::from_secs(10),
        })
    }

    #[test]
    fn lookup_use_and_replay() {
        let t0 = Instant::now();
        let s = store(10);
        s.insert(id(1), material(), t0).unwrap();
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
        s.insert(id(1), material(), t0).unwrap();
        s.insert(id(2), material(), t0).unwrap();
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
        s.insert(id(3), material(), t0).unwrap();
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
            s.insert(*k, material(), t0 + Duration::from_secs(i as u64)).unwrap();
        }
        // Key 0 is used late: key 1 is now the least recently used.
        s.commit(&ids[0], 0, t0 + Duration::from_secs(5)).unwrap();
        s.insert(ids[4], material(), t0 + Duration::from_secs(6)).unwrap();
        assert_eq!(s.info(&ids[1], t0 + Duration::from_secs(6)), Err(LookupError::Unknown));
        for k in [0, 2, 3, 4] {
            assert!(s.info(&ids[k], t0 + Duration::from_secs(6)).is_ok(), "key {k}");
        }
        assert_eq!(s.stats().evicted, 1);
        // Much later every key has expired: the insert sweeps them (expired, none evicted).
        let late = t0 + Duration::from_secs(30);
        s.insert(ids[5], material(), late).unwrap();
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
                s.insert(*k, material(), t0 + Duration::from_millis(100 * i as u64)).unwrap();
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
            s.insert(KeyId(k), material(), t0).unwrap();
            assert!(s.len() <= 100);
        }
        assert_eq!(s.len(), 100);
        assert_eq!(s.stats().evicted, 4900);
        assert_eq!(s.sweep(t0 + Duration::from_secs(11)), 100);
        assert!(s.is_empty());
    }

    /// A key a request has used survives any flood of handshakes: only never-used keys are
    /// evicted, and a store full of used keys refuses new ones instead.
    #[test]
    fn used_keys_are_never_evicted_and_a_full_store_of_them_refuses() {
        let t0 = Instant::now();
        let s = KeyStore::new(KeyStoreConfig {
            max_keys: 4,
            unused_ttl: Duration::from_secs(2),
            ..store(4).config().clone()
        });
        for k in 0..4 {
            s.insert(id(k), material(), t0).unwrap();
        }
        s.commit(&id(0), 0, t0).unwrap();
        s.commit(&id(1), 0, t0).unwrap();
        // The flood: 20,000 handshakes, newer than every key held.
        for n in 0..20_000u32 {
            let mut k = [0xffu8; 16];
            k[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
            let t = t0 + Duration::from_millis(1 + u64::from(n) / 100);
            s.insert(KeyId(k), material(), t).unwrap();
            assert_eq!(s.len(), 4);
        }
        let t = t0 + Duration::from_secs(1);
        for k in [0, 1] {
            assert!(s.begin(&id(k), 1, t).is_ok(), "used key {k} survives the flood");
        }
        for k in [2, 3] {
            assert_eq!(s.info(&id(k), t), Err(LookupError::Unknown), "never-used key {k} went");
        }
        let st = s.stats();
        assert_eq!((st.used, st.evicted, st.refused), (2, 20_000, 0));
        // Fill the store with used keys: the next handshake is refused, nothing evicted.
        let newest: Vec<KeyId> = (10..12).map(id).collect();
        for k in &newest {
            s.insert(*k, material(), t).unwrap();
            s.commit(k, 0, t).unwrap();
        }
        assert_eq!(s.stats().used, 4);
        assert_eq!(s.insert(id(99), material(), t), Err(StoreFull));
        assert_eq!(s.insert(id(98), material(), t + Duration::from_secs(5)), Err(StoreFull));
        let st = s.stats();
        assert_eq!((st.live, st.refused), (4, 2));
        for k in [id(0), id(1), newest[0], newest[1]] {
            assert!(s.info(&k, t + Duration::from_secs(5)).is_ok());
        }
        // Once used keys expire (idle TTL 10 s), new keys have room again.
        s.insert(id(97), material(), t + Duration::from_secs(11)).unwrap();
        assert!(s.stats().expired >= 1);
    }

    /// A never-used key lives `unused_ttl`; a first use moves it to the idle TTL.
    #[test]
    fn a_never_used_key_expires_after_the_unused_ttl() {
        let t0 = Instant::now();
        let s = KeyStore::new(KeyStoreConfig {
            unused_ttl: Duration::from_secs(2),
            ..store(10).config().clone()
        });
        s.insert(id(1), material(), t0).unwrap();
        s.insert(id(2), material(), t0).unwrap();
        s.commit(&id(1), 0, t0 + Duration::from_secs(1)).unwrap();
        let t = t0 + Duration::from_secs(3);
        assert_eq!(s.info(&id(2), t), Err(LookupError::Expired));
        assert!(s.info(&id(1), t).is_ok());
        assert!(s.info(&id(1), t0 + Duration::from_secs(11)).is_ok());
        assert_eq!(s.info(&id(1), t0 + Duration::from_secs(12)), Err(LookupError::Expired));
        // The unused TTL is never longer than the idle TTL.
        let long = KeyStore::new(KeyStoreConfig {
            unused_ttl: Duration::from_secs(1000),
            ..store(10).config().clone()
        });
        assert_eq!(long.config().unused_ttl, Duration::from_secs(10));
        let st = s.stats();
        assert_eq!((st.live, st.used), (0, 0));
    }
}
