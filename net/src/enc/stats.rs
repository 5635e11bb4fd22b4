//! Counters of an [`EncServer`](super::EncServer).

use std::sync::atomic::{AtomicU64, Ordering};

use super::keystore::KeyStoreStats;
use super::refusal::Refusal;

/// Live counters; one relaxed atomic add per event (each event also costs an AEAD or a
/// handshake, next to which the shared cache line is noise).
#[derive(Debug, Default)]
pub(crate) struct EncStats {
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
    handshakes_forbidden: AtomicU64,
    handshakes_rate_limited: AtomicU64,
    handshakes_busy: AtomicU64,
    requests_ok: AtomicU64,
    unknown_key: AtomicU64,
    expired_key: AtomicU64,
    malformed: AtomicU64,
    auth_failures: AtomicU64,
    replays: AtomicU64,
    handler_failures: AtomicU64,
    /// How long answering `/enc_init` took (the handshake's work, on its thread).
    pub(crate) init_latency: crate::histogram::LatencyHistogram,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl EncStats {
    pub(crate) fn handshake_ok(&self) {
        bump(&self.handshakes_ok);
    }

    pub(crate) fn handshake_refused(&self, r: Refusal) {
        bump(&self.handshakes_failed);
        match r {
            Refusal::AuthRequired | Refusal::NotAllowed => bump(&self.handshakes_forbidden),
            Refusal::RateLimited => bump(&self.handshakes_rate_limited),
            Refusal::Busy => bump(&self.handshakes_busy),
            _ => {}
        }
    }

    pub(crate) fn request_ok(&self) {
        bump(&self.requests_ok);
    }

    pub(crate) fn request_refused(&self, r: Refusal) {
        bump(match r {
            Refusal::UnknownKey => &self.unknown_key,
            Refusal::ExpiredKey => &self.expired_key,
            Refusal::AuthFailed => &self.auth_failures,
            Refusal::Replay => &self.replays,
            Refusal::Internal => &self.handler_failures,
            _ => &self.malformed,
        });
    }

    pub(crate) fn snapshot(&self, store: KeyStoreStats) -> EncStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EncStatsSnapshot {
            handshakes_ok: get(&self.handshakes_ok),
            handshakes_failed: get(&self.handshakes_failed),
            handshakes_forbidden: get(&self.handshakes_forbidden),
            handshakes_rate_limited: get(&self.handshakes_rate_limited),
            handshakes_busy: get(&self.handshakes_busy),
            requests_ok: get(&self.requests_ok),
            unknown_key: get(&self.unknown_key),
            expired_key: get(&self.expired_key),
            malformed: get(&self.malformed),
            auth_failures: get(&self.auth_failures),
            replays: get(&self.replays),
            handler_failures: get(&self.handler_failures),
            keys_live: store.live,
            keys_used: store.used,
            keys_evicted: store.evicted,
            keys_expired: store.expired,
        }
    }
}

/// A copy of an [`EncServer`](super::EncServer)'s counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncStatsSnapshot {
    /// Handshakes answered `200`.
    pub handshakes_ok: u64,
    /// Handshakes refused (400, 403, 429 and 503).
    pub handshakes_failed: u64,
    /// Of those, refused for the client certificate policy (403).
    pub handshakes_forbidden: u64,
    /// Of those, refused because the source block was over its rate (429 `rate-limited`).
    pub handshakes_rate_limited: u64,
    /// Of those, refused because the key store was full of keys in use (503 `busy`).
    pub handshakes_busy: u64,
    /// enc_http requests answered by their handler (with a sealed body).
    pub requests_ok: u64,
    /// enc_http requests naming a key the server does not have (401 `unknown-key`).
    pub unknown_key: u64,
    /// enc_http requests naming an expired key (401 `expired-key`).
    pub expired_key: u64,
    /// enc_http requests that could not be decoded (400 `malformed`, 405 `method`).
    pub malformed: u64,
    /// enc_http requests with a part that failed authentication (400 `auth-failed`).
    pub auth_failures: u64,
    /// enc_http requests with a used or too old counter (400 `replay`).
    pub replays: u64,
    /// Handlers that panicked or answered without a body (500 `internal`).
    pub handler_failures: u64,
    /// Keys in the store now.
    pub keys_live: usize,
    /// Of those, keys a request has used (never evicted to make room).
    pub keys_used: usize,
    /// Valid never-used keys evicted to make room.
    pub keys_evicted: u64,
    /// Keys removed after expiring.
    pub keys_expired: u64,
}
