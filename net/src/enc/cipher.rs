//! The AEAD ciphers (AWS-LC's, through aws-lc-rs) and the HKDF key schedule (ring's) every
//! encrypted part of dap shares.
//!
//! Keys are always one per direction, so a nonce need only be unique within one direction
//! under one key: dap builds it from a 4-byte prefix (the purpose, see [`Nonce`]) and a 64-bit
//! counter that the sender never repeats. Exact layouts are in `docs/PROTOCOL.md`.

use aws_lc_rs::aead;
use ring::hkdf;

/// Length of every AEAD key and of every secret dap derives (bytes).
pub const KEY_LEN: usize = 32;
/// Length of the authentication tag appended to every ciphertext (bytes).
pub const TAG_LEN: usize = 16;
/// Length of a nonce (bytes).
pub const NONCE_LEN: usize = 12;

/// The negotiable AEAD ciphers. The discriminant is the wire code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CipherSuite {
    /// ChaCha20-Poly1305 (RFC 8439), the default: fast without AES hardware.
    ChaCha20Poly1305 = 1,
    /// AES-256-GCM, for machines with AES-NI and CLMUL.
    Aes256Gcm = 2,
}

impl CipherSuite {
    /// Every suite, in the server's order of preference.
    pub const ALL: [CipherSuite; 2] = [CipherSuite::ChaCha20Poly1305, CipherSuite::Aes256Gcm];

    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The suite with wire code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(CipherSuite::ChaCha20Poly1305),
            2 => Some(CipherSuite::Aes256Gcm),
            _ => None,
        }
    }

    /// The name used in configuration files and logs.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::ChaCha20Poly1305 => "chacha20-poly1305",
            CipherSuite::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The suite named `name` (as in [`name`](Self::name)), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        CipherSuite::ALL.into_iter().find(|s| s.name() == name)
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            CipherSuite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            CipherSuite::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

/// A nonce: a 4-byte purpose prefix and a 64-bit big-endian counter.
///
/// Under one key, the sender must never use one (prefix, counter) pair twice; every user of
/// [`AeadKey`] in dap keeps a counter that only grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonce {
    // Kept as its two parts and laid out only inside the AEAD call: a 12-byte array built
    // by the caller in pieces and loaded whole by the callee stalls store-to-load
    // forwarding on every packet.
    prefix: [u8; 4],
    counter: u64,
}

impl Nonce {
    /// The nonce `prefix || counter` (big-endian).
    #[inline]
    pub fn new(prefix: [u8; 4], counter: u64) -> Self {
        Nonce { prefix, counter }
    }

    /// The 12 bytes, as on the wire (`docs/PROTOCOL.md`).
    #[inline]
    pub fn bytes(self) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&self.prefix);
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        n
    }
}

/// Authentication failed: the ciphertext, its tag, the nonce or the associated data is not
/// what the sender sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct OpenError;

/// How many messages the batch code seals or opens at once: a caller that handles a batch
/// in parts of this size keeps each part in the nearest cache.
pub use dap_crypto::GROUP as BATCH_GROUP;
/// One message of a batch ([`AeadKey::seal_batch`], [`AeadKey::open_batch`]): its nonce
/// (as [`Nonce::bytes`] lays it out), and a buffer holding the associated data (the first
/// `aad_len` bytes, at most [`dap_crypto::MAX_AAD`]), the text, then room for the tag.
pub use dap_crypto::Msg as BatchMsg;

/// One direction's AEAD key.
pub struct AeadKey {
    key: aead::LessSafeKey,
    /// The key of the batch code, made at the first batch where the CPU runs it (AVX-512
    /// IFMA for ChaCha20-Poly1305; VAES and VPCLMULQDQ for AES-256-GCM, whose powers of the
    /// hash key take 1.5 KiB that a key never used for batches should not carry).
    batch: std::sync::OnceLock<Option<dap_crypto::BatchKey>>,
    /// Whether this CPU runs the batch code for the cipher (asked once: the UDP engine asks
    /// for every packet).
    batches: bool,
    suite: CipherSuite,
    /// The bytes it was made from, for [`secret`](Self::secret); wiped on drop.
    secret: zeroize::Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        f.debug_struct("AeadKey").field("suite", &self.suite).finish_non_exhaustive()
    }
}

impl AeadKey {
    /// A key for `suite` from 32 secret bytes.
    pub fn new(suite: CipherSuite, secret: &[u8; KEY_LEN]) -> Self {
        let unbound = aead::UnboundKey::new(suite.algorithm(), secret)
            .expect("both suites take 32-byte keys");
        AeadKey {
            key: aead::LessSafeKey::new(unbound),
            batch: std::sync::OnceLock::new(),
            batches: dap_crypto::available(Self::batch_cipher(suite)),
            suite,
            secret: (*secret).into(),
        }
    }

    fn batch_cipher(suite: CipherSuite) -> dap_crypto::Cipher {
        match suite {
            CipherSuite::ChaCha20Poly1305 => dap_crypto::Cipher::ChaCha20Poly1305,
            CipherSuite::Aes256Gcm => dap_crypto::Cipher::Aes256Gcm,
        }
    }

    fn batch_key(&self) -> Option<&dap_crypto::BatchKey> {
        self.batch
            .get_or_init(|| dap_crypto::BatchKey::new(Self::batch_cipher(self.suite), &self.secret))
            .as_ref()
    }

    /// Whether [`seal_batch`](Self::seal_batch) and [`open_batch`](Self::open_batch) run
    /// a batch faster than one message at a time would (the CPU runs `dap-crypto`'s batch
    /// code for this cipher); they work either way.
    pub fn batches(&self) -> bool {
        self.batches
    }

    /// Seals every message of `msgs` in place, each tag in the last [`TAG_LEN`] bytes of
    /// its buffer: the same bytes as [`seal_detached`](Self::seal_detached) one by one.
    ///
    /// # Panics
    /// When a message's buffer cannot hold its associated data and the tag, or the
    /// associated data is longer than [`dap_crypto::MAX_AAD`] (the caller lays these out).
    pub fn seal_batch(&self, msgs: &mut [BatchMsg<'_>]) {
        if let Some(b) = self.batch_key() {
            return b.seal(msgs);
        }
        for m in msgs {
            let (aad, rest) = m.buf.split_at_mut(m.aad_len);
            let (text, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
            tag.copy_from_slice(&self.seal_with(m.nonce, aad, text));
        }
    }

    /// As [`seal_batch`](Self::seal_batch), but the text of message `i` ends with
    /// `tails[i]`, read from there: the buffer's last text bytes are written, not read
    /// ([`dap_crypto::BatchKey::seal_gather`]). A sender seals data where it lies.
    ///
    /// # Panics
    /// As `seal_batch`, and when `tails` is not one per message or a tail is longer than
    /// its message's text.
    pub fn seal_batch_gather(&self, msgs: &mut [BatchMsg<'_>], tails: &[&[u8]]) {
        if let Some(b) = self.batch_key() {
            return b.seal_gather(msgs, tails);
        }
        assert_eq!(msgs.len(), tails.len(), "one tail per message");
        for (m, t) in msgs.iter_mut().zip(tails) {
            let end = m.buf.len() - TAG_LEN;
            m.buf[end - t.len()..end].copy_from_slice(t);
        }
        self.seal_batch(msgs);
    }

    /// Authenticates every message of `msgs` and decrypts in place those that verify;
    /// `ok[i]` says whether message `i` did (one too short for its tag does not). What a
    /// message that fails holds afterwards is unspecified.
    ///
    /// # Panics
    /// When `ok` is shorter than `msgs`.
    pub fn open_batch(&self, msgs: &mut [BatchMsg<'_>], ok: &mut [bool]) {
        if let Some(b) = self.batch_key() {
            return b.open(msgs, ok);
        }
        assert!(ok.len() >= msgs.len(), "one result per message");
        for (m, ok) in msgs.iter_mut().zip(ok) {
            *ok = m.buf.len() >= m.aad_len + TAG_LEN && {
                let (aad, rest) = m.buf.split_at_mut(m.aad_len);
                self.open_with(m.nonce, aad, rest).is_ok()
            };
        }
    }

    /// The 32 bytes the key was made from: only for sealing it into storage other nodes
    /// share (a cluster's, under a key of its own). Never log them.
    pub fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// The cipher.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// Encrypts `buf` in place and appends the [`TAG_LEN`]-byte tag.
    pub fn seal(&self, nonce: Nonce, aad: &[u8], buf: &mut Vec<u8>) {
        let tag = self.seal_detached(nonce, aad, buf);
        buf.extend_from_slice(&tag);
    }

    /// Encrypts `buf` in place and returns the tag, for callers that place it themselves.
    #[inline]
    pub fn seal_detached(&self, nonce: Nonce, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        self.seal_with(nonce.bytes(), aad, buf)
    }

    /// [`seal_detached`](Self::seal_detached) with the nonce's 12 bytes.
    #[inline]
    fn seal_with(&self, nonce: [u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                buf,
            )
            .expect("dap never seals more than the AEAD's limit in one message");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `buf` (ciphertext followed by its tag) in place and returns the plaintext,
    /// a prefix of `buf`.
    ///
    /// # Errors
    /// [`OpenError`] when authentication fails; `buf` then holds nothing useful.
    #[inline]
    pub fn open<'a>(
        &self,
        nonce: Nonce,
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        self.open_with(nonce.bytes(), aad, buf)
    }

    /// [`open`](Self::open) with the nonce's 12 bytes.
    #[inline]
    fn open_with<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        self.key
            .open_in_place(aead::Nonce::assume_unique_for_key(nonce), aead::Aad::from(aad), buf)
            .map_err(|_| OpenError)
    }
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` from `ikm`, then expand `info` to 32 bytes.
///
/// Every `info` dap uses is an ASCII label that starts `dap v1 ` and names its purpose and
/// direction, so no two keys can ever coincide (the labels are listed in `docs/PROTOCOL.md`).
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; KEY_LEN] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    hkdf_expand(&prk, info)
}

/// HKDF-Extract with SHA-256: the pseudo-random key that [`hkdf_expand`] expands.
pub fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm)
}

/// HKDF-Expand with SHA-256 to 32 bytes.
pub fn hkdf_expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; KEY_LEN] {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            KEY_LEN
        }
    }
    let mut out = [0u8; KEY_LEN];
    prk.expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is within HKDF-SHA256's output limit");
    out
}

/// HKDF-Expand with SHA-256 to 32 bytes, with `secret` (itself the output of HKDF, so
/// uniformly random) taken as the pseudo-random key: the step of a key-update chain.
pub fn hkdf_expand_secret(secret: &[u8; KEY_LEN], info: &[u8]) -> [u8; KEY_LEN] {
    hkdf_expand(&hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret), info)
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
/// If the operating system has no working random source (nothing secure can run then).
pub fn random_bytes(buf: &mut [u8]) {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf).expect("the OS random source failed");
}

/// Compares two secrets in time that depends only on their lengths.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_for_both_suites() {
        for suite in CipherSuite::ALL {
            let key = AeadKey::new(suite, &[7u8; KEY_LEN]);
            let mut buf = b"hello".to_vec();
            key.seal(Nonce::new(*b"test", 1), b"aad", &mut buf);
            assert_eq!(buf.len(), 5 + TAG_LEN);
            let plain = key.open(Nonce::new(*b"test", 1), b"aad", &mut buf).unwrap();
            assert_eq!(plain, b"hello");
        }
    }

    #[test]
    fn batches_seal_and_open_as_one_message_at_a_time_does() {
        // With the batch code where the CPU runs it, and on the fallback (one message at a
        // time through AWS-LC) as a CPU without it takes.
        for (suite, fallback) in CipherSuite::ALL.into_iter().flat_map(|s| [(s, false), (s, true)])
        {
            let mut key = AeadKey::new(suite, &[9u8; KEY_LEN]);
            if fallback {
                key.batches = false;
                key.batch.set(None).expect("no batch key made yet");
            }
            // Sizes around the blocks and the vector widths; 17 bytes of associated data
            // as a UDP header has.
            let sizes = [0usize, 1, 15, 16, 17, 63, 64, 65, 500, 1419, 1435, 4000];
            let mut bufs: Vec<Vec<u8>> = sizes
                .iter()
                .map(|&n| (0..17 + n + TAG_LEN).map(|i| (i * 7 + n) as u8).collect())
                .collect();
            let want: Vec<Vec<u8>> = bufs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let mut text = b[17..b.len() - TAG_LEN].to_vec();
                    key.seal(Nonce::new(*b"bat\0", i as u64), &b[..17], &mut text);
                    [&b[..17], &text[..]].concat()
                })
                .collect();
            fn msgs(bufs: &mut [Vec<u8>]) -> Vec<BatchMsg<'_>> {
                let mut out = Vec::new();
                for (i, b) in bufs.iter_mut().enumerate() {
                    let nonce = Nonce::new(*b"bat\0", i as u64).bytes();
                    out.push(BatchMsg { nonce, aad_len: 17, buf: b });
                }
                out
            }
            // From tails: each text's last bytes (up to 700 of them) read from elsewhere,
            // the buffer's bytes there scribbled over.
            let mut gathered = bufs.clone();
            let tails: Vec<Vec<u8>> = gathered
                .iter_mut()
                .map(|b| {
                    let end = b.len() - TAG_LEN;
                    let len = (end - 17).min(700);
                    let t = b[end - len..end].to_vec();
                    b[end - len..end].fill(0x5a);
                    t
                })
                .collect();
            let tail_refs: Vec<&[u8]> = tails.iter().map(|t| &t[..]).collect();
            key.seal_batch_gather(&mut msgs(&mut gathered), &tail_refs);
            assert_eq!(gathered, want, "{suite:?} from tails");
            key.seal_batch(&mut msgs(&mut bufs));
            assert_eq!(bufs, want, "{suite:?}");
            bufs[3][20] ^= 1;
            let mut ok = vec![false; bufs.len()];
            key.open_batch(&mut msgs(&mut bufs), &mut ok);
            for (i, ok) in ok.iter().enumerate() {
                assert_eq!(*ok, i != 3, "{suite:?} message {i}");
                if *ok {
                    let n = sizes[i];
                    let plain: Vec<u8> = (17..17 + n).map(|j| (j * 7 + n) as u8).collect();
                    assert_eq!(bufs[i][17..17 + n], plain[..], "{suite:?} message {i}");
                }
            }
        }
    }

    #[test]
    fn a_wrong_nonce_aad_or_bit_fails_to_open() {
        let key = AeadKey::new(CipherSuite::ChaCha20Poly1305, &[7u8; KEY_LEN]);
        let mut sealed = b"hello".to_vec();
        key.seal(Nonce::new(*b"test", 1), b"aad", &mut sealed);
        let mut b = sealed.clone();
        assert_eq!(key.open(Nonce::new(*b"test", 2), b"aad", &mut b), Err(OpenError));
        let mut b = sealed.clone();
        assert_eq!(key.open(Nonce::new(*b"test", 1), b"aaX", &mut b), Err(OpenError));
        let mut b = sealed.clone();
        b[0] ^= 1;
        assert_eq!(key.open(Nonce::new(*b"test", 1), b"aad", &mut b), Err(OpenError));
    }

    #[test]
    fn hkdf_matches_rfc5869_case_1_prefix() {
        // RFC 5869 A.1 (first 32 bytes of the 42-byte OKM).
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let okm = hkdf_sha256(&salt, &ikm, &info);
        let want = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf";
        let got: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
