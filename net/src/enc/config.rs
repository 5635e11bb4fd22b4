//! `EncConfig` and `ClientAuth`: what an [`EncServer`](super::EncServer) accepts.

use super::allow_list::AllowList;
use super::cipher::CipherSuite;
use super::keys::PUBLIC_KEY_LEN;
use super::keystore::KeyStoreConfig;
use crate::limit::RateLimit;

/// Whether `/enc_init` wants a client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// Certificates are not used: one that is sent is ignored (not verified), and keys
    /// have no client identity.
    #[default]
    None,
    /// A certificate may be sent; if it is, its signature must verify (else 400
    /// `bad-signature`) and the key carries the client's public key as its identity. Any
    /// client key is accepted.
    Optional,
    /// A certificate must be sent (else 403 `auth-required`), its key must be on the list
    /// (else 403 `not-allowed`) and its signature must verify (else 400 `bad-signature`).
    Required(AllowList),
}

impl ClientAuth {
    /// Whether `key` may hold a key under this policy (after its signature verified).
    pub(crate) fn allows(&self, key: &[u8; PUBLIC_KEY_LEN]) -> bool {
        match self {
            ClientAuth::None | ClientAuth::Optional => true,
            ClientAuth::Required(list) => list.contains(key),
        }
    }
}

/// Settings of an [`EncServer`](super::EncServer). Every bound is configurable.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EncConfig {
    /// The suites the server accepts, in its order of preference: the handshake picks the
    /// first one the client also offers. Default: [`CipherSuite::ALL`] (ChaCha20-Poly1305
    /// first). Empty: every handshake fails with `no-common-suite`.
    pub suites: Vec<CipherSuite>,
    /// The key store's bound and lifetimes (default 10,000 keys, 10 min idle, 24 h age).
    pub store: KeyStoreConfig,
    /// Client certificates (default: not used).
    pub client_auth: ClientAuth,
    /// The largest `/enc_init` body accepted; beyond: 413. Default 4 KiB (a version-1
    /// request is at most 153 bytes; the rest is room for a post-quantum KEM).
    pub max_init_body: u64,
    /// Run `/enc_init` on the connection's worker instead of a proc thread, and with it the
    /// cheap enc routes ([`EncServer::add_cheap_route`](crate::enc::EncServer::add_cheap_route):
    /// `/stream_ctl`). A handshake costs two X25519 and one or two Ed25519 operations
    /// (about 30 µs on the server), so the default (`false`) keeps that off the event loop.
    pub handshake_on_worker: bool,
    /// Handshakes per source address block (`docs/PROTOCOL.md` §3.7): beyond it, `429
    /// rate-limited` with `Retry-After`. Default 100 per second with bursts of 1,000 per /32
    /// or /64; [`RateLimit::off`] for none.
    pub handshake_rate: RateLimit,
}

impl Default for EncConfig {
    fn default() -> Self {
        EncConfig {
            suites: CipherSuite::ALL.to_vec(),
            store: KeyStoreConfig::default(),
            client_auth: ClientAuth::None,
            max_init_body: 4096,
            handshake_on_worker: false,
            handshake_rate: RateLimit::new(100, 1000),
        }
    }
}
