//! dap-crypto: ChaCha20-Poly1305 (RFC 8439) and AES-256-GCM (NIST SP 800-38D) over a
//! batch of messages under one key.
//!
//! A UDP transport seals and opens packets of about 1,400 bytes, dozens at a time (a GSO
//! batch out, a GRO batch in), all under one key. One message at a time, an AEAD cannot fill
//! wide vectors at that size, and pays per-message work its bulk loop never sees. Here the
//! messages of a batch share that work:
//!
//! * **ChaCha20**: 16 blocks per pass, taken from any messages (each lane has its own nonce
//!   and counter), so every pass but the batch's last is full;
//! * **Poly1305**: 16 messages at once, one per 64-bit lane in two interleaved sets of 8,
//!   in radix 2^44 with the AVX-512 IFMA multiply-adds (52-bit products), each lane running
//!   its own message's chain;
//! * **AES-256-GCM**: the batch's initial counter blocks (the tags' masks) encrypted four per
//!   register; each message's counter mode and GHASH in one pass (VAES, VPCLMULQDQ), every
//!   block, the associated data's and the lengths block included, multiplied by its own
//!   precomputed power of H and the sum reduced once per packet (per 96 blocks in longer
//!   messages), where a one-at-a-time
//!   implementation hashes the associated data and the lengths block alone, reducing each.
//!
//! ChaCha20-Poly1305 needs AVX-512 F, BW and IFMA; AES-256-GCM AVX-512 F, BW and VL, VAES,
//! VPCLMULQDQ and AES-NI ([`BatchKey::new`] returns `None` without them, and the caller uses
//! its usual AEAD). The output is the standards', byte for byte: the tests check it against
//! AWS-LC on random keys, nonces, lengths and batch shapes, and against RFC 8439's vector and
//! the GCM specification's test case 16. Nothing here branches on or indexes memory by
//! secret data: the lanes of a pass are chosen by message lengths, which are public.
#![deny(unsafe_code)]

/// Bytes of a key (both ciphers).
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of the tag.
pub const TAG_LEN: usize = 16;
/// The longest associated data a message of a batch may have (bytes).
pub const MAX_AAD: usize = 64;
/// The most messages one call takes (the batch is split into groups of 16 internally).
pub const GROUP: usize = 16;

/// One message of a batch: `buf` is the associated data (its first `aad_len` bytes), then
/// the text, then [`TAG_LEN`] bytes for the tag.
#[derive(Debug)]
pub struct Msg<'a> {
    /// The message's nonce; never twice under one key.
    pub nonce: [u8; NONCE_LEN],
    /// Bytes of associated data at the start of `buf`, at most [`MAX_AAD`].
    pub aad_len: usize,
    /// Associated data, text, tag.
    pub buf: &'a mut [u8],
}

/// The longest text a message may have: GCM's 32-bit block counter, less its first two
/// values (2^36 - 32 bytes; ChaCha20's limit is higher).
pub const MAX_TEXT: u64 = (1 << 36) - 32;

impl Msg<'_> {
    fn well_formed(&self) -> bool {
        self.aad_len <= MAX_AAD
            && self.buf.len() >= self.aad_len + TAG_LEN
            && (self.buf.len() - self.aad_len - TAG_LEN) as u64 <= MAX_TEXT
    }
}

/// The AEADs with batch code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439): AVX-512 F, BW and IFMA.
    ChaCha20Poly1305,
    /// AES-256-GCM (NIST SP 800-38D, 96-bit nonces): AVX-512 F, BW and VL, VAES,
    /// VPCLMULQDQ, AES-NI and SSSE3.
    Aes256Gcm,
}

/// A key for batches.
#[derive(Clone)]
pub struct BatchKey {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    /// ChaCha20's eight little-endian key words; wiped on drop.
    ChaCha(zeroize::Zeroizing<[u32; 8]>),
    /// AES-256's round keys and GHASH's key; wiped on drop.
    #[cfg(target_arch = "x86_64")]
    Aes(Box<x86_aes::AesKeys>),
}

impl std::fmt::Debug for BatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("BatchKey").finish_non_exhaustive()
    }
}

/// Whether this CPU runs the batch code of `cipher`.
pub fn available(cipher: Cipher) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx512 = has!("avx512f") && has!("avx512bw");
        match cipher {
            Cipher::ChaCha20Poly1305 => avx512 && has!("avx512ifma"),
            Cipher::Aes256Gcm => {
                avx512
                    && has!("avx512vl")
                    && has!("vaes")
                    && has!("vpclmulqdq")
                    && has!("aes")
                    && has!("ssse3")
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = cipher;
        false
    }
}

impl BatchKey {
    /// The key, when this CPU can run the batch code of `cipher` ([`available`]).
    pub fn new(cipher: Cipher, key: &[u8; KEY_LEN]) -> Option<Self> {
        if !available(cipher) {
            return None;
        }
        let inner = match cipher {
            Cipher::ChaCha20Poly1305 => {
                let mut words = [0u32; 8];
                for (w, c) in words.iter_mut().zip(key.chunks_exact(4)) {
                    *w = u32::from_le_bytes(c.try_into().expect("4 bytes"));
                }
                Inner::ChaCha(words.into())
            }
            #[cfg(target_arch = "x86_64")]
            Cipher::Aes256Gcm => {
                // SAFETY: `available` said the CPU has AES-NI, SSSE3, AVX-512 F and BW and
                // VPCLMULQDQ.
                #[allow(unsafe_code)]
                let keys = unsafe { x86_aes::expand(key) };
                Inner::Aes(keys)
            }
            #[cfg(not(target_arch = "x86_64"))]
            Cipher::Aes256Gcm => return None,
        };
        Some(BatchKey { inner })
    }

    /// Encrypts every message's text in place and writes its tag after it.
    ///
    /// # Panics
    /// When a message's associated data is longer than [`MAX_AAD`], its text longer than
    /// [`MAX_TEXT`], or its `buf` cannot hold the associated data and the tag (the caller
    /// lays the buffers out).
    pub fn seal(&self, msgs: &mut [Msg<'_>]) {
        assert!(msgs.iter().all(Msg::well_formed), "a batch message's layout is wrong");
        for group in msgs.chunks_mut(GROUP) {
            self.run(group, &[], Mode::Seal, &mut [true; GROUP]);
        }
    }

    /// As [`seal`](Self::seal), but the text of message `i` ends with `tails[i]`, which is
    /// read from there: the last `tails[i].len()` bytes of the message's text in its buffer
    /// are written (the ciphertext), never read. A sender seals data where it lies (in its
    /// send buffer) without first copying it into the packet; the output is the same.
    /// (AES-256-GCM reads the tails in its pass; ChaCha20-Poly1305 copies them in first.)
    ///
    /// # Panics
    /// As `seal`, and when `tails` is not one per message or a tail is longer than its
    /// message's text.
    pub fn seal_gather(&self, msgs: &mut [Msg<'_>], tails: &[&[u8]]) {
        assert!(msgs.iter().all(Msg::well_formed), "a batch message's layout is wrong");
        assert_eq!(msgs.len(), tails.len(), "one tail per message");
        assert!(
            msgs.iter().zip(tails).all(|(m, t)| t.len() <= m.buf.len() - m.aad_len - TAG_LEN),
            "a tail longer than its message's text"
        );
        #[cfg(target_arch = "x86_64")]
        if let Inner::Aes(_) = &self.inner {
            for (group, tails) in msgs.chunks_mut(GROUP).zip(tails.chunks(GROUP)) {
                self.run(group, tails, Mode::Seal, &mut [true; GROUP]);
            }
            return;
        }
        for (m, t) in msgs.iter_mut().zip(tails) {
            let end = m.buf.len() - TAG_LEN;
            m.buf[end - t.len()..end].copy_from_slice(t);
        }
        self.seal(msgs);
    }

    /// Authenticates every message and decrypts those whose tag verifies, in place;
    /// `ok[i]` says whether message `i` did. A message that fails is left as it was; one too
    /// short to hold the tag (or with more than [`MAX_AAD`] bytes of associated data) fails.
    ///
    /// # Panics
    /// When `ok` is shorter than `msgs`.
    pub fn open(&self, msgs: &mut [Msg<'_>], ok: &mut [bool]) {
        assert!(ok.len() >= msgs.len(), "one result per message");
        for (group, ok) in msgs.chunks_mut(GROUP).zip(ok.chunks_mut(GROUP)) {
            let mut good = [false; GROUP];
            for (g, m) in good.iter_mut().zip(group.iter()) {
                *g = m.well_formed();
            }
            self.run(group, &[], Mode::Open, &mut good);
            ok[..group.len()].copy_from_slice(&good[..group.len()]);
        }
    }

    /// Seals or opens `group`; `tails` (sealing, AES-256-GCM only; empty otherwise) as
    /// [`seal_gather`](Self::seal_gather) takes them.
    fn run(&self, group: &mut [Msg<'_>], tails: &[&[u8]], mode: Mode, good: &mut [bool; GROUP]) {
        match &self.inner {
            #[cfg(target_arch = "x86_64")]
            Inner::ChaCha(words) => {
                // SAFETY: a ChaCha BatchKey exists only when `available` said the CPU has
                // AVX-512 F, BW and IFMA, the features `x86::run` is compiled for.
                #[allow(unsafe_code)]
                unsafe {
                    debug_assert!(tails.is_empty(), "ChaCha copies its tails in first");
                    x86::run(words, group, mode, good)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Inner::Aes(keys) => {
                // SAFETY: an AES BatchKey exists only when `available` said the CPU has
                // AVX-512 F, BW and VL, VAES, VPCLMULQDQ, AES-NI and SSSE3, the features
                // `x86_aes::run` is compiled for.
                #[allow(unsafe_code)]
                unsafe {
                    x86_aes::run(keys, group, tails, mode, good)
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Inner::ChaCha(_) => {
                let _ = (group, tails, mode, good);
                unreachable!("BatchKey::new returns None off x86-64")
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Seal,
    Open,
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86_aes;

#[cfg(test)]
mod tests;
