//! The AES-256-GCM batch code: VAES counter mode eight registers (32 blocks) at a time, and
//! GHASH with VPCLMULQDQ four blocks per register against precomputed powers of H, so that
//! a whole packet (up to 96 blocks of GHASH input) is hashed with one reduction.
//!
//! One message at a time, an AES-GCM implementation spends a third of a 1,400-byte packet
//! outside its bulk loop: the associated data and the lengths block each hashed alone with
//! a full reduction, the initial counter block encrypted alone, a tail. Here the products of
//! every block of a message with its power of H (block `j` of `n` times `H^(n-j)`) are summed
//! unreduced and reduced once at the end, the associated data and the lengths block join
//! that sum like any other block, and the batch's initial counter blocks are encrypted
//! together, four per register.
//!
//! GHASH works on byte-reflected blocks (each 16-byte block reversed), where the field's
//! multiplication is a carry-less product shifted left by one bit and reduced modulo
//! x^128 + x^7 + x^2 + x + 1 (Gueron and Kounavis, "Intel Carry-Less Multiplication
//! Instruction and its Usage for Computing the GCM Mode"). Pointers are handled as in
//! `x86.rs`: one raw base per message, offsets computed from the public lengths.

use std::arch::x86_64::*;

use super::x86::{Part, parts_of};
use super::{GROUP, Mode, Msg};

/// Runs the pass macro `$pass` for `$groups` 64-byte groups left, with its register count
/// (at most eight) as a literal, so that each size is its own unrolled code.
macro_rules! by_registers {
    ($groups:expr, $pass:ident) => {
        match $groups {
            1 => $pass!(1),
            2 => $pass!(2),
            3 => $pass!(3),
            4 => $pass!(4),
            5 => $pass!(5),
            6 => $pass!(6),
            7 => $pass!(7),
            _ => $pass!(8),
        }
    };
}

/// Powers of H kept per key. A message whose GHASH input (padded associated data, padded
/// text, lengths block) is at most this many blocks long is reduced once: a 1,452-byte
/// datagram's is 91. A longer one is hashed in runs of up to this many blocks, one
/// reduction each.
const POWERS: usize = 96;

/// The round keys and the powers of the hash key of one AES-256-GCM key.
#[derive(Clone)]
pub(super) struct AesKeys {
    /// The 15 round keys.
    rk: [[u8; 16]; 15],
    /// `rpow[k]` = H^(POWERS - k), byte-reflected (`rpow[POWERS - 1]` is H), then three
    /// zero blocks so that four consecutive entries can always be loaded.
    rpow: [[u8; 16]; POWERS + 3],
    /// `kpow[k]`: the XOR of the two 64-bit halves of `rpow[k]`, in both halves (the
    /// Karatsuba middle operand), then three zero blocks.
    kpow: [[u8; 16]; POWERS + 3],
}

impl Drop for AesKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.rk.zeroize();
        self.rpow.zeroize();
        self.kpow.zeroize();
    }
}

/// Expands `key` and computes the powers of H.
///
/// # Safety
/// The CPU must have AES-NI, SSSE3, AVX-512 F and BW, and VPCLMULQDQ.
#[target_feature(enable = "aes,ssse3,avx512f,avx512bw,vpclmulqdq")]
pub(super) unsafe fn expand(key: &[u8; 32]) -> Box<AesKeys> {
    #[inline]
    #[target_feature(enable = "aes,ssse3")]
    fn spread(mut k: __m128i, t: __m128i) -> __m128i {
        let mut s = _mm_slli_si128::<4>(k);
        k = _mm_xor_si128(k, s);
        s = _mm_slli_si128::<4>(s);
        k = _mm_xor_si128(k, s);
        s = _mm_slli_si128::<4>(s);
        _mm_xor_si128(_mm_xor_si128(k, s), t)
    }
    #[target_feature(enable = "aes,ssse3")]
    fn even<const RCON: i32>(a: __m128i, b: __m128i) -> __m128i {
        spread(a, _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<RCON>(b)))
    }
    #[target_feature(enable = "aes,ssse3")]
    fn odd(a: __m128i, b: __m128i) -> __m128i {
        spread(b, _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(a)))
    }
    let k0 = ld128(key[..16].try_into().expect("16 bytes"));
    let k1 = ld128(key[16..].try_into().expect("16 bytes"));
    let mut rk = [_mm_setzero_si128(); 15];
    rk[0] = k0;
    rk[1] = k1;
    rk[2] = even::<0x01>(rk[0], rk[1]);
    rk[3] = odd(rk[2], rk[1]);
    rk[4] = even::<0x02>(rk[2], rk[3]);
    rk[5] = odd(rk[4], rk[3]);
    rk[6] = even::<0x04>(rk[4], rk[5]);
    rk[7] = odd(rk[6], rk[5]);
    rk[8] = even::<0x08>(rk[6], rk[7]);
    rk[9] = odd(rk[8], rk[7]);
    rk[10] = even::<0x10>(rk[8], rk[9]);
    rk[11] = odd(rk[10], rk[9]);
    rk[12] = even::<0x20>(rk[10], rk[11]);
    rk[13] = odd(rk[12], rk[11]);
    rk[14] = even::<0x40>(rk[12], rk[13]);
    let mut x = rk[0];
    for k in &rk[1..14] {
        x = _mm_aesenc_si128(x, *k);
    }
    x = _mm_aesenclast_si128(x, rk[14]);
    let h = _mm512_zextsi128_si512(_mm_shuffle_epi8(x, bswap128()));
    let mut keys = Box::new(AesKeys {
        rk: rk.map(|k| st128(k)),
        rpow: [[0; 16]; POWERS + 3],
        kpow: [[0; 16]; POWERS + 3],
    });
    let mut p = h;
    keys.rpow[POWERS - 1] = st128(_mm512_castsi512_si128(p));
    for k in (0..POWERS - 1).rev() {
        p = gfmul(p, h);
        keys.rpow[k] = st128(_mm512_castsi512_si128(p));
    }
    for k in 0..POWERS {
        let r = keys.rpow[k];
        for i in 0..8 {
            keys.kpow[k][i] = r[i] ^ r[i + 8];
            keys.kpow[k][i + 8] = r[i] ^ r[i + 8];
        }
    }
    keys
}

/// Seals or opens up to [`GROUP`] messages, as `x86::run` does for ChaCha20-Poly1305:
/// `good[i]` is whether message `i` takes part (well formed) on entry and, for
/// [`Mode::Open`], whether it verified on return. Opening hashes and decrypts in one pass;
/// a message that then fails to verify is encrypted back (counter mode alone), so that it
/// is left as it came.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VL, VAES, VPCLMULQDQ, AES-NI and SSSE3.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,ssse3,sse4.1")]
pub(super) unsafe fn run(
    keys: &AesKeys,
    group: &mut [Msg<'_>],
    tails: &[&[u8]],
    mode: Mode,
    good: &mut [bool; GROUP],
) {
    let mut parts = parts_of(group, good);
    // Sealing from tails: each message's text ends with its tail, read from there.
    for (p, t) in parts.iter_mut().zip(tails) {
        if mode == Mode::Seal && !t.is_empty() && t.len() <= p.text_len {
            p.split = p.text_len - t.len();
            p.ext = t.as_ptr();
        }
    }
    let n = group.len();
    let live: [bool; GROUP] = std::array::from_fn(|i| i < n && good[i]);
    let rk: [__m512i; 15] = std::array::from_fn(|r| _mm512_broadcast_i32x4(ld128(&keys.rk[r])));
    let masks = tag_masks(&rk, &parts);
    match mode {
        Mode::Seal => {
            for i in (0..n).filter(|&i| live[i]) {
                let s = seal_or_open::<true>(&rk, keys, &parts[i]);
                let t = _mm_xor_si128(s, ld128(&masks[i]));
                // SAFETY: the tag's 16 bytes end the message's buffer (`Part::tag`), which
                // this call borrows exclusively; the store is unaligned.
                unsafe { _mm_storeu_si128(parts[i].tag().cast(), t) };
            }
        }
        Mode::Open => {
            let mut verified = [false; GROUP];
            for i in (0..n).filter(|&i| live[i]) {
                // Hashed and decrypted in one pass; encrypted back if the tag is wrong.
                let s = seal_or_open::<false>(&rk, keys, &parts[i]);
                // SAFETY: the 16 tag bytes at the end of a borrowed buffer; unaligned load.
                let got = unsafe { _mm_loadu_si128(parts[i].tag().cast()) };
                // Every byte compared at once (one PTEST), whatever the first difference:
                // no branch or early exit depends on where the tags differ.
                let diff = _mm_xor_si128(_mm_xor_si128(got, s), ld128(&masks[i]));
                verified[i] = _mm_testz_si128(diff, diff) == 1;
                if !verified[i] {
                    // Counter mode is its own inverse: the text is as it came.
                    crypt::<true, false>(&rk, keys, &parts[i]);
                }
            }
            *good = verified;
        }
    }
}

/// [`crypt`] with hashing, or [`crypt_short`] where it applies.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,ssse3")]
fn seal_or_open<const SEAL: bool>(rk: &[__m512i; 15], keys: &AesKeys, p: &Part) -> __m128i {
    if p.aad_len <= 64 && p.aad_len.div_ceil(16) + p.text_len.div_ceil(16) < POWERS {
        crypt_short::<SEAL>(rk, keys, p)
    } else {
        crypt::<SEAL, true>(rk, keys, p)
    }
}

/// E(K, J0) of every message (J0 = nonce || 1, the mask of its tag), four per register.
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn tag_masks(rk: &[__m512i; 15], parts: &[Part; GROUP]) -> [[u8; 16]; GROUP] {
    // J0 = nonce || 1 (big-endian): the last word's byte 15 is 1.
    let j0 = |i: usize| nonce_block(&parts[i], 0x0100_0000);
    let mut x: [__m512i; GROUP / 4] = std::array::from_fn(|q| {
        let v = _mm512_castsi128_si512(j0(4 * q));
        let v = _mm512_inserti32x4::<1>(v, j0(4 * q + 1));
        let v = _mm512_inserti32x4::<2>(v, j0(4 * q + 2));
        let v = _mm512_inserti32x4::<3>(v, j0(4 * q + 3));
        _mm512_xor_si512(v, rk[0])
    });
    rounds(&mut x, rk);
    let mut out = [[0u8; 16]; GROUP];
    for (q, v) in x.iter().enumerate() {
        // SAFETY: `out[4q..4q + 4]` is 64 writable bytes.
        unsafe { _mm512_storeu_si512(out[4 * q..].as_mut_ptr().cast(), *v) };
    }
    out
}

/// AES rounds 1 to 14 on every register (round 0's key already added).
#[inline]
#[target_feature(enable = "avx512f,vaes")]
fn rounds<const N: usize>(x: &mut [__m512i; N], rk: &[__m512i; 15]) {
    for r in &rk[1..14] {
        for v in x.iter_mut() {
            *v = _mm512_aesenc_epi128(*v, *r);
        }
    }
    for v in x.iter_mut() {
        *v = _mm512_aesenclast_epi128(*v, rk[14]);
    }
}

/// The counter blocks of a message, as a register's four lanes are built: the nonce
/// template OR'd with the big-endian counters.
struct Counters {
    /// The nonce in bytes 0..12 of each lane, zeros after.
    nonce: __m512i,
    /// Lane `l`'s counter (native order) in its last 32-bit word.
    next: __m512i,
    /// Four in each lane's last word.
    step: __m512i,
    /// Moves each lane's last word to big-endian and clears the rest.
    be: __m512i,
}

impl Counters {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new(p: &Part) -> Self {
        Counters {
            nonce: _mm512_broadcast_i32x4(nonce_block(p, 0)),
            // The text's key stream starts at counter 2 (J0 + 1).
            next: _mm512_set_epi32(5, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0),
            step: _mm512_set_epi32(4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0),
            be: _mm512_broadcast_i32x4(_mm_set_epi8(
                12, 13, 14, 15, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128, -128,
                -128,
            )),
        }
    }

    /// The next four counter blocks, round key 0 added.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn take(&mut self, rk0: __m512i) -> __m512i {
        let b = _mm512_or_si512(self.nonce, _mm512_shuffle_epi8(self.next, self.be));
        self.next = _mm512_add_epi32(self.next, self.step);
        _mm512_xor_si512(b, rk0)
    }
}

/// Counter mode over the text of `p`, in place, and (with `HASH`) GHASH over its input
/// (associated data, padding, ciphertext, padding, the two bit lengths), in one pass of up
/// to eight registers of key stream at a time. The hashing is interleaved with the AES
/// rounds, one 64-byte group per round, so that the carry-less multiplier works while the
/// AES unit does: opening hashes the groups a pass is about to decrypt (read before it
/// writes them), sealing the groups the pass before encrypted. Returns S (the tag before its
/// mask; zeros without `HASH`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,ssse3")]
fn crypt<const SEAL: bool, const HASH: bool>(
    rk: &[__m512i; 15],
    keys: &AesKeys,
    p: &Part,
) -> __m128i {
    let bswap = _mm512_broadcast_i32x4(bswap128());
    let aad_blocks = p.aad_len.div_ceil(16);
    let len = p.text_len;
    let n = aad_blocks + len.div_ceil(16) + 1;
    let mut g = Ghash::new(keys, aad_blocks, n);
    if HASH && aad_blocks > 0 {
        // SAFETY: the masked load reads only the `aad_len` (<= 64) bytes of associated data
        // at the start of the borrowed buffer; the padding comes out zero.
        let d = unsafe { _mm512_maskz_loadu_epi8(low_bytes(p.aad_len), p.base.cast()) };
        g.absorb(_mm512_shuffle_epi8(d, bswap), 0, aad_blocks);
    }
    let text = p.text();
    // Text bytes hashed so far (whole groups of 64, the last one partial).
    let mut hashed = 0usize;
    // Hashes the next group of ciphertext, as it is in the buffer, if it is before `$end`.
    macro_rules! hash_next {
        ($end:expr) => {
            if HASH && hashed < $end {
                let rest = len - hashed;
                let src = text.wrapping_add(hashed);
                let d = if rest >= 64 {
                    // SAFETY: 64 bytes of text from `src` (hashed + 64 <= text_len).
                    unsafe { _mm512_loadu_si512(src.cast()) }
                } else {
                    // SAFETY: the masked load reads only the `rest` bytes left of the text;
                    // the padding comes out zero.
                    unsafe { _mm512_maskz_loadu_epi8(low_bytes(rest), src.cast()) }
                };
                let j = aad_blocks + hashed / 16;
                g.absorb(_mm512_shuffle_epi8(d, bswap), j, rest.div_ceil(16).min(4));
                hashed += 64;
            }
        };
    }
    let mut c = Counters::new(p);
    let mut at = 0;
    // One pass of `$n` registers from text byte `at`.
    macro_rules! pass {
        ($n:literal) => {{
            // What this pass may hash: sealing, what earlier passes wrote; opening, its own
            // groups too, before it overwrites them.
            let end = if SEAL { at } else { len.min(at + 64 * $n) };
            let mut x = [_mm512_setzero_si512(); $n];
            for v in &mut x {
                *v = c.take(rk[0]);
            }
            for r in &rk[1..14] {
                for v in &mut x {
                    *v = _mm512_aesenc_epi128(*v, *r);
                }
                hash_next!(end);
            }
            for (k, v) in x.iter().enumerate() {
                let ks = _mm512_aesenclast_epi128(*v, rk[14]);
                xor_text(p, at + 64 * k, ks);
            }
            at += 64 * $n;
        }};
    }
    while at < len {
        by_registers!((len - at).div_ceil(64), pass);
    }
    if !HASH {
        return _mm_setzero_si128();
    }
    while hashed < len {
        hash_next!(len);
    }
    let l = _mm512_zextsi128_si512(lengths_block(p.aad_len, len));
    g.absorb(l, n - 1, 1);
    g.finish()
}

/// [`crypt`] for the common case, every UDP packet: associated data of at most 64 bytes and
/// a GHASH input of at most [`POWERS`] blocks, so one run with one reduction, and counters
/// below 256 (only their last byte changes). Its passes keep a fixed shape: the counter
/// blocks stepped by one addition, the 64-byte groups to hash taken during the rounds
/// (sealing, those the pass before wrote, one a round from round 1; opening, its own,
/// spread over the rounds), and the group positions, hence the powers of H, known in
/// advance.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,ssse3")]
fn crypt_short<const SEAL: bool>(rk: &[__m512i; 15], keys: &AesKeys, p: &Part) -> __m128i {
    let bswap = _mm512_broadcast_i32x4(bswap128());
    let aad_blocks = p.aad_len.div_ceil(16);
    let len = p.text_len;
    let n = aad_blocks + len.div_ceil(16) + 1;
    // (What keeps the unchecked table reads below inside the tables.)
    assert!(p.aad_len <= 64 && n <= POWERS, "crypt_short takes packet-sized messages");
    // Block j of the input is multiplied by H^(n - j): `rpow[first + j]`.
    let first = POWERS - n;
    let text = p.text();
    let groups = len.div_ceil(64);
    let (mut lo, mut mid, mut hi) =
        (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
    // Absorbs the byte-reflected blocks `d` (zeros past the input), blocks j..j + 4.
    macro_rules! absorb {
        ($d:expr, $j:expr) => {{
            let d = $d;
            let at = first + $j;
            debug_assert!(at + 4 <= POWERS + 3);
            // SAFETY: at = POWERS - n + j with j < n <= POWERS (asserted above), so
            // at + 4 <= POWERS + 3: four entries inside the table, its three zero blocks
            // included, read without a bounds check on the hot path.
            let h = unsafe { _mm512_loadu_si512(keys.rpow.as_ptr().add(at).cast()) };
            // SAFETY: as above, in the table of the same length.
            let k = unsafe { _mm512_loadu_si512(keys.kpow.as_ptr().add(at).cast()) };
            let dk = _mm512_xor_si512(d, _mm512_shuffle_epi32::<0b01_00_11_10>(d));
            lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128::<0x00>(d, h));
            hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128::<0x11>(d, h));
            mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128::<0x00>(dk, k));
        }};
    }
    // Text group `q` as it is in the buffer, zeros past the text.
    macro_rules! load_group {
        ($q:expr) => {{
            let q = $q;
            let src = text.wrapping_add(64 * q);
            if 64 * q + 64 <= len {
                // SAFETY: 64 bytes of text from `src`.
                unsafe { _mm512_loadu_si512(src.cast()) }
            } else {
                // SAFETY: the masked load reads only the text's last `len - 64q` bytes.
                unsafe { _mm512_maskz_loadu_epi8(low_bytes(len - 64 * q), src.cast()) }
            }
        }};
    }
    if aad_blocks > 0 {
        // SAFETY: the masked load reads only the `aad_len` (<= 64) bytes of associated data
        // at the start of the borrowed buffer.
        let d = unsafe { _mm512_maskz_loadu_epi8(low_bytes(p.aad_len), p.base.cast()) };
        absorb!(_mm512_shuffle_epi8(d, bswap), 0);
    }
    // Counters 2..5 in the lanes' last byte; four more per register.
    let mut ctr = _mm512_or_si512(
        _mm512_broadcast_i32x4(nonce_block(p, 0)),
        _mm512_set_epi32(5 << 24, 0, 0, 0, 4 << 24, 0, 0, 0, 3 << 24, 0, 0, 0, 2 << 24, 0, 0, 0),
    );
    let step =
        _mm512_set_epi32(4 << 24, 0, 0, 0, 4 << 24, 0, 0, 0, 4 << 24, 0, 0, 0, 4 << 24, 0, 0, 0);
    // The next group to hash, and the first of the pass.
    let mut hq = 0usize;
    let mut q0 = 0usize;
    macro_rules! pass {
        ($m:literal) => {{
            let mut x = [_mm512_setzero_si512(); $m];
            for v in &mut x {
                *v = _mm512_xor_si512(ctr, rk[0]);
                ctr = _mm512_add_epi32(ctr, step);
            }
            // Sealing hashes what earlier passes wrote; opening, this pass's groups before
            // it overwrites them.
            let hash_end = if SEAL { q0 } else { q0 + $m };
            // The rounds that hash a group and those that do not, as separate loops: a test
            // of what is left to hash in every round cost more instructions than the packet
            // path, bound by how many the core issues, could spare (session 21, with the
            // unchecked load below: 98 -> 87 ns sealing a 1,419-byte packet).
            let hashing = (hash_end - hq).min(13);
            macro_rules! round {
                ($r:expr) => {
                    let r: usize = $r;
                    for v in &mut x {
                        *v = _mm512_aesenc_epi128(*v, rk[r]);
                    }
                };
            }
            macro_rules! hash {
                () => {
                    let d = if SEAL {
                        // SAFETY: 64 bytes of text from group `hq`: sealing hashes here only
                        // the groups of passes before, all whole (only the text's last group
                        // may be short, and it is in the last pass).
                        unsafe { _mm512_loadu_si512(text.wrapping_add(64 * hq).cast()) }
                    } else {
                        load_group!(hq)
                    };
                    absorb!(_mm512_shuffle_epi8(d, bswap), aad_blocks + 4 * hq);
                    hq += 1;
                };
            }
            // Opening spreads its hashing over the rounds, first in pairs of rounds with
            // one group hashed, then one a round: a group's three multiplications take
            // longer than a round of eight registers, and hashed in consecutive rounds they
            // held the rounds back (session 21: sealing and opening a 1,419-byte packet
            // 183-186 -> 175-180 ns). Sealing, where this measured nothing, hashes one
            // group a round from the first.
            let pairs = if SEAL { 0 } else { hashing.min(13 - hashing) };
            let mut r = 1;
            for _ in 0..pairs {
                round!(r);
                hash!();
                round!(r + 1);
                r += 2;
            }
            for _ in pairs..hashing {
                round!(r);
                hash!();
                r += 1;
            }
            while r < 14 {
                round!(r);
                r += 1;
            }
            // Each register's group written out in turn, the pass's registers named one by
            // one (`get` of a literal index, settled at compile time): as a loop, which the
            // compiler did not unroll, the registers went to the stack after the last round
            // and came back one per iteration (session 21: `aes_cycles 1419 16`, the best
            // of 9, 101-104 -> 97-100 ns sealing).
            macro_rules! out {
                ($k:literal) => {
                    if let Some(v) = x.get($k) {
                        let ks = _mm512_aesenclast_epi128(*v, rk[14]);
                        let at = 64 * (q0 + $k);
                        let dst = text.wrapping_add(at);
                        // Whole groups by the fixed-size form of `input` (one load, or two
                        // masked ones across a tail's split), the last, short one masked: no
                        // general walk (`xor_text`) in the unrolled pass.
                        if at + 64 <= len {
                            let t = _mm512_xor_si512(input(p, at, 64), ks);
                            // SAFETY: 64 bytes of the buffer's text from `dst` (at + 64 <=
                            // text_len).
                            unsafe { _mm512_storeu_si512(dst.cast(), t) };
                        } else {
                            let n = len - at;
                            let t = _mm512_xor_si512(input(p, at, n), ks);
                            // SAFETY: the masked store writes only the text's last `n` bytes,
                            // from `dst`, inside the borrowed buffer.
                            unsafe { _mm512_mask_storeu_epi8(dst.cast(), low_bytes(n), t) };
                        }
                    }
                };
            }
            out!(0);
            out!(1);
            out!(2);
            out!(3);
            out!(4);
            out!(5);
            out!(6);
            out!(7);
            q0 += $m;
        }};
    }
    while q0 < groups {
        by_registers!(groups - q0, pass);
    }
    while hq < groups {
        absorb!(_mm512_shuffle_epi8(load_group!(hq), bswap), aad_blocks + 4 * hq);
        hq += 1;
    }
    absorb!(_mm512_zextsi128_si512(lengths_block(p.aad_len, len)), n - 1);
    let (lo, hi) = (fold(lo), fold(hi));
    let x = reduce(lo, _mm512_xor_si512(fold(mid), _mm512_xor_si512(lo, hi)), hi);
    _mm_shuffle_epi8(_mm512_castsi512_si128(x), bswap128())
}

/// XORs `ks` into the text of `p` from byte `at` (as many of its 64 bytes as the text has
/// there), writing the result to the buffer: the text read is the buffer's before the
/// split and the tail's after it ([`input`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn xor_text(p: &Part, at: usize, ks: __m512i) {
    if at >= p.text_len {
        return;
    }
    let len = p.text_len - at;
    let dst = p.text().wrapping_add(at);
    let v = _mm512_xor_si512(input(p, at, len.min(64)), ks);
    if len >= 64 {
        // SAFETY: 64 bytes of the text from `dst` (at + 64 <= text_len), inside the
        // borrowed buffer.
        unsafe { _mm512_storeu_si512(dst.cast(), v) };
    } else {
        // SAFETY: the masked store touches only the `len` bytes of the text from `dst`
        // (at + len = text_len), inside the borrowed buffer.
        unsafe { _mm512_mask_storeu_epi8(dst.cast(), low_bytes(len), v) };
    }
}

/// The `n` (1 to 64) text bytes of `p` from byte `at` (zeros past them): from the buffer
/// before the split, from the tail after it, from both across it.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn input(p: &Part, at: usize, n: usize) -> __m512i {
    if at + n <= p.split {
        let src = p.text().wrapping_add(at);
        if n == 64 {
            // SAFETY: 64 bytes of the buffer's text from `src` (at + 64 <= split <= text_len).
            unsafe { _mm512_loadu_si512(src.cast()) }
        } else {
            // SAFETY: the masked load reads only the `n` bytes of the buffer's text from
            // `src` (at + n <= split).
            unsafe { _mm512_maskz_loadu_epi8(low_bytes(n), src.cast()) }
        }
    } else if at >= p.split {
        let src = p.ext.wrapping_add(at - p.split);
        if n == 64 {
            // SAFETY: 64 bytes of the tail from `src` (at + 64 <= text_len, and the tail
            // holds text bytes split..text_len), borrowed for the call.
            unsafe { _mm512_loadu_si512(src.cast()) }
        } else {
            // SAFETY: the masked load reads only the `n` tail bytes from `src`.
            unsafe { _mm512_maskz_loadu_epi8(low_bytes(n), src.cast()) }
        }
    } else {
        // Across the split: the first `k` bytes from the buffer, the rest from the tail.
        let k = p.split - at;
        // SAFETY: the masked load reads only the `k` buffer bytes from `at` (at + k = split).
        let head =
            unsafe { _mm512_maskz_loadu_epi8(low_bytes(k), p.text().wrapping_add(at).cast()) };
        // Lane j >= k takes tail byte j - k: the base is `k` bytes before the tail, and the
        // lanes below `k`, which would be there, are masked off.
        let base = p.ext.wrapping_sub(k);
        // SAFETY: the masked load reads only lanes k..n, tail bytes 0..n - k (at + n <=
        // text_len); masked-off lanes are not accessed.
        unsafe { _mm512_mask_loadu_epi8(head, low_bytes(n) & !low_bytes(k), base.cast()) }
    }
}

/// A message's GHASH as it is absorbed: the unreduced sums of the products of its blocks
/// with their powers of H, over the current run of blocks.
struct Ghash<'k> {
    rpow: &'k [[u8; 16]; POWERS + 3],
    kpow: &'k [[u8; 16]; POWERS + 3],
    /// Blocks of associated data (the first text block's index).
    aad_blocks: usize,
    /// Blocks in all.
    n: usize,
    /// Where the current run ends (its last block is multiplied by H).
    end: usize,
    /// Where the current run starts (the reduced hash so far joins that block).
    start: usize,
    /// The reduced hash of the runs before (lane 0).
    x: __m512i,
    /// The sums of the low halves' products, of the high halves', and of the Karatsuba
    /// middle products ((a_lo + a_hi)(b_lo + b_hi); the cross terms are this plus the
    /// other two).
    lo: __m512i,
    mid: __m512i,
    hi: __m512i,
}

impl<'k> Ghash<'k> {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn new(keys: &'k AesKeys, aad_blocks: usize, n: usize) -> Self {
        let z = _mm512_setzero_si512();
        let mut g = Ghash {
            rpow: &keys.rpow,
            kpow: &keys.kpow,
            aad_blocks,
            n,
            end: 0,
            start: 0,
            x: z,
            lo: z,
            mid: z,
            hi: z,
        };
        g.end = g.run_end(0);
        g
    }

    /// Where a run starting at block `j` (the start of a group) ends: the input's end if it
    /// is near enough, else the furthest start of a group of text within reach.
    fn run_end(&self, j: usize) -> usize {
        if self.n - j <= POWERS {
            self.n
        } else {
            let a = self.aad_blocks;
            a + 4 * ((j + POWERS - a) / 4)
        }
    }

    /// Absorbs the `c` (1 to 4) byte-reflected blocks of `d` (its other lanes zero), the
    /// blocks `j..j + c` of the input.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
    fn absorb(&mut self, mut d: __m512i, j: usize, c: usize) {
        if j + c > self.end {
            // Runs end only where groups start: this group starts the next run.
            debug_assert_eq!(j, self.end);
            // (`fold` leaves the sum in every lane: only lane 0's joins the next block.)
            self.x = _mm512_maskz_mov_epi64(0b11, self.sum());
            let z = _mm512_setzero_si512();
            (self.lo, self.mid, self.hi) = (z, z, z);
            self.start = j;
            self.end = self.run_end(j);
        }
        if j == self.start {
            d = _mm512_xor_si512(d, self.x);
        }
        // H^(end - j) for block j, then the lower powers; past the run's end, zeros (or
        // powers against zero lanes of `d`).
        let at = POWERS - (self.end - j);
        // SAFETY: end - j is 1..=POWERS, so entries `at .. at + 4` are inside the table
        // (its three zero blocks included).
        let h = unsafe { _mm512_loadu_si512(self.rpow[at..].as_ptr().cast()) };
        // SAFETY: as above, in the table of the same length.
        let k = unsafe { _mm512_loadu_si512(self.kpow[at..].as_ptr().cast()) };
        // d_lo + d_hi in each lane's low half.
        let dk = _mm512_xor_si512(d, _mm512_shuffle_epi32::<0b01_00_11_10>(d));
        self.lo = _mm512_xor_si512(self.lo, _mm512_clmulepi64_epi128::<0x00>(d, h));
        self.hi = _mm512_xor_si512(self.hi, _mm512_clmulepi64_epi128::<0x11>(d, h));
        self.mid = _mm512_xor_si512(self.mid, _mm512_clmulepi64_epi128::<0x00>(dk, k));
    }

    /// The reduced sum of the run so far, in every lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    fn sum(&self) -> __m512i {
        let (lo, hi) = (fold(self.lo), fold(self.hi));
        reduce(lo, _mm512_xor_si512(fold(self.mid), _mm512_xor_si512(lo, hi)), hi)
    }

    /// The hash (S before the tag's mask), in GCM's byte order.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,vpclmulqdq,ssse3")]
    fn finish(&self) -> __m128i {
        let x = self.sum();
        _mm_shuffle_epi8(_mm512_castsi512_si128(x), bswap128())
    }
}

/// The block of `p`'s nonce (bytes 0..12) and `last` (bytes 12..16, little-endian), built
/// in registers: bytes written to memory and read back as one block wait for the stores to
/// reach the cache (a store is not forwarded to a wider load), and with them for every
/// instruction before, which would keep one message's work from overlapping the last's.
#[inline]
#[target_feature(enable = "sse2")]
fn nonce_block(p: &Part, last: u32) -> __m128i {
    let [w0, w1, w2] = p.nonce_words();
    _mm_set_epi32(last as i32, w2 as i32, w1 as i32, w0 as i32)
}

/// GHASH's last block, the bit lengths of the associated data and of the text (64 bits
/// each, big-endian), byte-reflected: reversed, the text's length is the low half and the
/// associated data's the high one, each in the machine's order. Built in registers rather
/// than written to memory as two halves and read back whole (a load the stores cannot be
/// forwarded to; within the noise in `aes_cycles`, session 21).
#[inline]
#[target_feature(enable = "sse2")]
fn lengths_block(aad_len: usize, text_len: usize) -> __m128i {
    _mm_set_epi64x((aad_len as u64 * 8) as i64, (text_len as u64 * 8) as i64)
}

/// The mask of the lowest `n` (at most 64) bytes.
#[inline]
fn low_bytes(n: usize) -> __mmask64 {
    if n >= 64 { !0 } else { (1u64 << n) - 1 }
}

#[target_feature(enable = "ssse3")]
fn bswap128() -> __m128i {
    _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

#[target_feature(enable = "sse2")]
fn ld128(a: &[u8; 16]) -> __m128i {
    // SAFETY: `a` is 16 readable bytes; the load is unaligned.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

#[target_feature(enable = "sse2")]
fn st128(v: __m128i) -> [u8; 16] {
    let mut a = [0u8; 16];
    // SAFETY: `a` is 16 writable bytes; the store is unaligned.
    unsafe { _mm_storeu_si128(a.as_mut_ptr().cast(), v) };
    a
}

/// The XOR of a register's four 128-bit lanes, in every lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn fold(v: __m512i) -> __m512i {
    let v = _mm512_xor_si512(v, _mm512_shuffle_i64x2::<0b01_00_11_10>(v, v));
    _mm512_xor_si512(v, _mm512_shuffle_i64x2::<0b10_11_00_01>(v, v))
}

/// Four GF(2^128) products at once (one per 128-bit lane), byte-reflected operands.
#[target_feature(enable = "avx512f,avx512bw,vpclmulqdq")]
fn gfmul(a: __m512i, b: __m512i) -> __m512i {
    let lo = _mm512_clmulepi64_epi128::<0x00>(a, b);
    let mid = _mm512_xor_si512(
        _mm512_clmulepi64_epi128::<0x10>(a, b),
        _mm512_clmulepi64_epi128::<0x01>(a, b),
    );
    let hi = _mm512_clmulepi64_epi128::<0x11>(a, b);
    reduce(lo, mid, hi)
}

/// The field element of a carry-less product given as its low, middle (the two cross
/// products' sum) and high parts, per lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn reduce(lo: __m512i, mid: __m512i, hi: __m512i) -> __m512i {
    let mut lo = _mm512_xor_si512(lo, _mm512_bslli_epi128::<8>(mid));
    let mut hi = _mm512_xor_si512(hi, _mm512_bsrli_epi128::<8>(mid));
    // The 256-bit product hi:lo, shifted left one bit (the reflection).
    let c_lo = _mm512_srli_epi32::<31>(lo);
    let c_hi = _mm512_srli_epi32::<31>(hi);
    lo = _mm512_slli_epi32::<1>(lo);
    hi = _mm512_slli_epi32::<1>(hi);
    let carry = _mm512_bsrli_epi128::<12>(c_lo);
    lo = _mm512_or_si512(lo, _mm512_bslli_epi128::<4>(c_lo));
    hi = _mm512_or_si512(_mm512_or_si512(hi, _mm512_bslli_epi128::<4>(c_hi)), carry);
    // Reduction, first phase.
    let m = _mm512_xor_si512(
        _mm512_xor_si512(_mm512_slli_epi32::<31>(lo), _mm512_slli_epi32::<30>(lo)),
        _mm512_slli_epi32::<25>(lo),
    );
    let rest = _mm512_bsrli_epi128::<4>(m);
    lo = _mm512_xor_si512(lo, _mm512_bslli_epi128::<12>(m));
    // Second phase.
    let t = _mm512_xor_si512(
        _mm512_xor_si512(_mm512_srli_epi32::<1>(lo), _mm512_srli_epi32::<2>(lo)),
        _mm512_xor_si512(_mm512_srli_epi32::<7>(lo), rest),
    );
    _mm512_xor_si512(hi, _mm512_xor_si512(lo, t))
}
