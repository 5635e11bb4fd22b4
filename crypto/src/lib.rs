//! dap-crypto: ChaCha20-Poly1305 (RFC 8439) over a batch of messages under one key.
//!
//! A UDP transport seals and opens packets of about 1,400 bytes, dozens at a time (a GSO
//! batch out, a GRO batch in), all under one key. One message at a time, a ChaCha20-Poly1305
//! implementation cannot fill wide vectors at that size: 22 ChaCha20 blocks leave most of a
//! second 16-block pass idle, and Poly1305's chain of multiplications runs serially. Here the
//! messages of a batch share the vectors instead:
//!
//! * **ChaCha20**: 16 blocks per pass, taken from any messages (each lane has its own nonce
//!   and counter), so every pass but the batch's last is full;
//! * **Poly1305**: 16 messages at once, one per 64-bit lane in two interleaved sets of 8,
//!   in radix 2^44 with the AVX-512 IFMA multiply-adds (52-bit products), each lane running
//!   its own message's chain.
//!
//! It needs AVX-512 F, BW and IFMA ([`BatchKey::new`] returns `None` without them, and the
//! caller uses its usual AEAD). The output is RFC 8439's, byte for byte: the tests check it
//! against AWS-LC on random keys, nonces, lengths and batch shapes, and against the RFC's
//! vector. Nothing here branches on or indexes memory by secret data: the lanes of a pass
//! are chosen by message lengths, which are public.
#![deny(unsafe_code)]

/// Bytes of a ChaCha20-Poly1305 key.
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

impl Msg<'_> {
    fn well_formed(&self) -> bool {
        self.aad_len <= MAX_AAD && self.buf.len() >= self.aad_len + TAG_LEN
    }
}

/// A ChaCha20-Poly1305 key for batches.
#[derive(Clone)]
pub struct BatchKey {
    /// The key as ChaCha20's eight little-endian words; wiped on drop.
    words: zeroize::Zeroizing<[u32; 8]>,
}

impl std::fmt::Debug for BatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("BatchKey").finish_non_exhaustive()
    }
}

/// Whether this CPU runs the batch code (AVX-512 F, BW and IFMA).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512ifma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl BatchKey {
    /// The key, when this CPU can run the batch code ([`available`]).
    pub fn new(key: &[u8; KEY_LEN]) -> Option<Self> {
        if !available() {
            return None;
        }
        let mut words = [0u32; 8];
        for (w, c) in words.iter_mut().zip(key.chunks_exact(4)) {
            *w = u32::from_le_bytes(c.try_into().expect("4 bytes"));
        }
        Some(BatchKey { words: words.into() })
    }

    /// Encrypts every message's text in place and writes its tag after it.
    ///
    /// # Panics
    /// When a message's associated data is longer than [`MAX_AAD`] or its `buf` cannot hold
    /// the associated data and the tag (the caller lays the buffers out).
    pub fn seal(&self, msgs: &mut [Msg<'_>]) {
        assert!(msgs.iter().all(Msg::well_formed), "a batch message's layout is wrong");
        for group in msgs.chunks_mut(GROUP) {
            self.run(group, Mode::Seal, &mut [true; GROUP]);
        }
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
            self.run(group, Mode::Open, &mut good);
            ok[..group.len()].copy_from_slice(&good[..group.len()]);
        }
    }

    fn run(&self, group: &mut [Msg<'_>], mode: Mode, good: &mut [bool; GROUP]) {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: a BatchKey exists only when `available()` said the CPU has AVX-512 F,
            // BW and IFMA, the features `x86::run` is compiled for.
            #[allow(unsafe_code)]
            unsafe {
                x86::run(&self.words, group, mode, good)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (group, mode, good);
            unreachable!("BatchKey::new returns None off x86-64")
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

#[cfg(test)]
mod tests;
