//! Key chains: one direction's sequence of secrets and the AEAD key of each, for key
//! updates (`docs/PROTOCOL.md` §5 for the stream, §11 for UDP).
//!
//! `secret_0` comes from the session; `secret_{n+1} = HKDF-Expand(secret_n, update label)`
//! and the key of generation `n` is `HKDF-Expand(secret_n, key label)`. The stream and the
//! UDP transport use the same construction with their own labels, so no key of one can be
//! the key of the other.

use dap_net::enc::cipher::{AeadKey, CipherSuite, KEY_LEN, hkdf_expand_secret};

/// HKDF-Expand info of a stream packet key from its direction's secret.
pub const LABEL_KEY: &[u8] = b"dap v2 stream key";
/// HKDF-Expand info of a stream direction's next secret from its current one.
pub const LABEL_KEY_UPDATE: &[u8] = b"dap v2 stream key update";

/// The two labels of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyLabels {
    /// HKDF-Expand info of a generation's key.
    pub key: &'static [u8],
    /// HKDF-Expand info of the next generation's secret.
    pub update: &'static [u8],
}

/// The stream's labels (§5).
pub const STREAM_LABELS: KeyLabels = KeyLabels { key: LABEL_KEY, update: LABEL_KEY_UPDATE };

/// One direction's chain of secrets.
#[derive(Clone)]
pub struct KeyChain {
    labels: KeyLabels,
    suite: CipherSuite,
    secret: [u8; KEY_LEN],
    generation: u64,
}

impl std::fmt::Debug for KeyChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("KeyChain")
            .field("suite", &self.suite)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl KeyChain {
    /// A stream chain starting at `secret_0`.
    pub fn new(suite: CipherSuite, secret0: [u8; KEY_LEN]) -> Self {
        Self::with_labels(STREAM_LABELS, suite, secret0)
    }

    /// A chain with its own labels starting at `secret_0`.
    pub fn with_labels(labels: KeyLabels, suite: CipherSuite, secret0: [u8; KEY_LEN]) -> Self {
        KeyChain { labels, suite, secret: secret0, generation: 0 }
    }

    /// The cipher.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The current generation (0 for the session's first key).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The raw key bytes of the current generation (tests and vectors). The key is
    /// derived at each update only, never per packet.
    pub fn key_bytes(&self) -> [u8; KEY_LEN] {
        hkdf_expand_secret(&self.secret, self.labels.key)
    }

    /// The AEAD key of the current generation.
    pub fn key(&self) -> AeadKey {
        AeadKey::new(self.suite, &self.key_bytes())
    }

    /// Moves to the next generation; the current secret is overwritten.
    pub fn advance(&mut self) {
        self.secret = hkdf_expand_secret(&self.secret, self.labels.update);
        self.generation += 1;
    }

    /// The next generation, leaving this one as it is (a receiver tries it before it
    /// commits to it).
    pub fn next(&self) -> KeyChain {
        let mut n = self.clone();
        n.advance();
        n
    }

    /// The current secret (tests and vectors).
    #[cfg(test)]
    pub(crate) fn secret(&self) -> [u8; KEY_LEN] {
        self.secret
    }
}
