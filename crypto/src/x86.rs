//! The AVX-512 code: ChaCha20 16 blocks per pass, Poly1305 16 messages at once.
//!
//! Pointers: every message's buffer is turned into one raw base pointer at the start of
//! [`run`], and from then on only that pointer (and offsets inside its buffer, computed
//! from the public lengths) is used, never the `&mut [u8]` again, so no two live
//! references alias.
//!
//! The Poly1305 gathers take the scratch array as their base and reach the texts through
//! offsets relative to it: the hardware computes base + offset as plain addresses, and the
//! compiler treats a gather as a read of unknown memory, so the stores of the ChaCha20 pass
//! before it stay ordered before it. Every address a gather reads is inside a buffer this
//! call borrows (the SAFETY comment at the gather says which).

use std::arch::x86_64::*;

use super::{GROUP, MAX_AAD, Mode, Msg, TAG_LEN};

const M44: u64 = (1 << 44) - 1;
const M42: u64 = (1 << 42) - 1;
/// "expand 32-byte k".
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
/// Poly1305 scratch per lane: the padded associated data (at most four blocks), the padded
/// last partial block of text, the lengths block.
const SCRATCH: usize = MAX_AAD + 32;

/// One message, as raw parts.
#[derive(Clone, Copy)]
pub(super) struct Part {
    pub(super) base: *mut u8,
    pub(super) aad_len: usize,
    pub(super) text_len: usize,
    /// Sealing from a tail (AES-256-GCM only): text bytes from `split` on are read from
    /// `ext` (byte `k` at `ext + k - split`), not from the buffer. `split` is `text_len`
    /// without one.
    pub(super) split: usize,
    pub(super) ext: *const u8,
    /// The nonce as three little-endian words.
    nonce: [u32; 3],
}

impl Part {
    const NONE: Part = Part {
        base: std::ptr::null_mut(),
        aad_len: 0,
        text_len: 0,
        split: 0,
        ext: std::ptr::null(),
        nonce: [0; 3],
    };

    pub(super) fn text(&self) -> *mut u8 {
        self.base.wrapping_add(self.aad_len)
    }

    pub(super) fn tag(&self) -> *mut u8 {
        self.base.wrapping_add(self.aad_len + self.text_len)
    }

    /// The nonce as three little-endian words (bytes 0..4, 4..8, 8..12).
    pub(super) fn nonce_words(&self) -> [u32; 3] {
        self.nonce
    }
}

/// The raw parts of the messages `good` says take part (the others stay `Part::NONE`).
pub(super) fn parts_of(group: &mut [Msg<'_>], good: &[bool; GROUP]) -> [Part; GROUP] {
    debug_assert!(group.len() <= GROUP);
    let mut parts = [Part::NONE; GROUP];
    for ((p, m), g) in parts.iter_mut().zip(group.iter_mut()).zip(good.iter()) {
        if !*g {
            continue;
        }
        let mut nonce = [0u32; 3];
        for (w, c) in nonce.iter_mut().zip(m.nonce.chunks_exact(4)) {
            *w = u32::from_le_bytes(c.try_into().expect("4 bytes"));
        }
        let text_len = m.buf.len() - m.aad_len - TAG_LEN;
        *p = Part {
            base: m.buf.as_mut_ptr(),
            aad_len: m.aad_len,
            text_len,
            split: text_len,
            ext: std::ptr::null(),
            nonce,
        };
    }
    parts
}

/// Seals or opens up to [`GROUP`] messages; `good[i]` is whether message `i` takes part
/// (well formed) on entry and, for [`Mode::Open`], whether it verified on return.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and IFMA.
#[target_feature(enable = "avx512f,avx512bw,avx512ifma")]
pub(super) unsafe fn run(
    key: &[u32; 8],
    group: &mut [Msg<'_>],
    mode: Mode,
    good: &mut [bool; GROUP],
) {
    let parts = parts_of(group, good);
    let n = group.len();
    let live: [bool; GROUP] = std::array::from_fn(|i| i < n && good[i]);

    // Block 0 of every message: its one-time Poly1305 key (r, s).
    let ctr = [0u32; 16];
    let mut nw = [[0u32; 16]; 3];
    for (i, p) in parts.iter().enumerate() {
        for (k, w) in nw.iter_mut().enumerate() {
            w[i] = p.nonce[k];
        }
    }
    let b0 = chacha16(key, ld(&ctr), ld(&nw[0]), ld(&nw[1]), ld(&nw[2]));
    let s_words: [[u32; 16]; 4] = std::array::from_fn(|k| st(b0[4 + k]));

    let mut tags = [[0u8; TAG_LEN]; GROUP];
    if mode == Mode::Seal {
        xor_pass(key, &parts, &live);
    }
    let h = poly16([poly_key(&b0, false), poly_key(&b0, true)], &parts, &live);
    for i in 0..n {
        if !live[i] {
            continue;
        }
        let s = s_words[0][i] as u128
            | (s_words[1][i] as u128) << 32
            | (s_words[2][i] as u128) << 64
            | (s_words[3][i] as u128) << 96;
        tags[i] = finish(h[0][i], h[1][i], h[2][i], s);
    }
    match mode {
        Mode::Seal => {
            for (p, t) in parts.iter().zip(&tags).take(n) {
                // SAFETY: the tag's 16 bytes end the message's buffer (`Part::tag`), which
                // this call borrows exclusively; `t` is a separate local array.
                unsafe { std::ptr::copy_nonoverlapping(t.as_ptr(), p.tag(), TAG_LEN) };
            }
        }
        Mode::Open => {
            let mut verified = [false; GROUP];
            for i in 0..n {
                if !live[i] {
                    continue;
                }
                let mut got = [0u8; TAG_LEN];
                // SAFETY: as above, the 16 tag bytes at the end of a borrowed buffer.
                unsafe { std::ptr::copy_nonoverlapping(parts[i].tag(), got.as_mut_ptr(), TAG_LEN) };
                let diff = got.iter().zip(&tags[i]).fold(0u8, |d, (a, b)| d | (a ^ b));
                verified[i] = diff == 0;
            }
            xor_pass(key, &parts, &verified);
            for (g, v) in good.iter_mut().zip(verified) {
                *g = v;
            }
        }
    }
}

/// XORs the key stream (blocks 1 on) into the text of every message `take` names, 16
/// blocks per pass drawn from any of them.
#[target_feature(enable = "avx512f,avx512bw,avx512ifma")]
fn xor_pass(key: &[u32; 8], parts: &[Part; GROUP], take: &[bool; GROUP]) {
    let mut m = 0usize;
    let mut block = 0usize;
    loop {
        let mut ctr = [0u32; 16];
        let mut nw = [[0u32; 16]; 3];
        let mut dst = [std::ptr::null_mut::<u8>(); 16];
        let mut len = [0usize; 16];
        let mut k = 0;
        while k < 16 && m < GROUP {
            let p = &parts[m];
            if !take[m] || block * 64 >= p.text_len {
                m += 1;
                block = 0;
                continue;
            }
            ctr[k] = (block + 1) as u32;
            for (j, w) in nw.iter_mut().enumerate() {
                w[k] = p.nonce[j];
            }
            dst[k] = p.text().wrapping_add(block * 64);
            len[k] = (p.text_len - block * 64).min(64);
            k += 1;
            block += 1;
        }
        if k == 0 {
            return;
        }
        let x = chacha16(key, ld(&ctr), ld(&nw[0]), ld(&nw[1]), ld(&nw[2]));
        let ks = transpose(x);
        for l in 0..k {
            if len[l] == 64 {
                // SAFETY: `dst[l]` starts a 64-byte block inside its message's text, which
                // this call borrows exclusively (block * 64 + 64 <= text_len).
                unsafe {
                    let v = _mm512_loadu_si512(dst[l].cast());
                    _mm512_storeu_si512(dst[l].cast(), _mm512_xor_si512(v, ks[l]));
                }
            } else {
                let mask: __mmask64 = (1u64 << len[l]) - 1;
                // SAFETY: the masked load and store touch only the `len[l]` bytes left in
                // the message's text from `dst[l]`; masked-off bytes are never accessed.
                unsafe {
                    let v = _mm512_maskz_loadu_epi8(mask, dst[l].cast());
                    _mm512_mask_storeu_epi8(dst[l].cast(), mask, _mm512_xor_si512(v, ks[l]));
                }
            }
        }
    }
}

#[target_feature(enable = "avx512f")]
fn ld(a: &[u32; 16]) -> __m512i {
    // SAFETY: `a` is 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn st(v: __m512i) -> [u32; 16] {
    let mut a = [0u32; 16];
    // SAFETY: `a` is 64 writable bytes; the store is unaligned.
    unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), v) };
    a
}

#[target_feature(enable = "avx512f")]
fn st64(v: __m512i) -> [u64; 8] {
    let mut a = [0u64; 8];
    // SAFETY: `a` is 64 writable bytes; the store is unaligned.
    unsafe { _mm512_storeu_si512(a.as_mut_ptr().cast(), v) };
    a
}

#[target_feature(enable = "avx512f")]
fn ld64(a: &[u64; 8]) -> __m512i {
    // SAFETY: `a` is 64 readable bytes; the load is unaligned.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f")]
fn quarter(x: &mut [__m512i; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = _mm512_add_epi32(x[a], x[b]);
    x[d] = _mm512_rol_epi32::<16>(_mm512_xor_si512(x[d], x[a]));
    x[c] = _mm512_add_epi32(x[c], x[d]);
    x[b] = _mm512_rol_epi32::<12>(_mm512_xor_si512(x[b], x[c]));
    x[a] = _mm512_add_epi32(x[a], x[b]);
    x[d] = _mm512_rol_epi32::<8>(_mm512_xor_si512(x[d], x[a]));
    x[c] = _mm512_add_epi32(x[c], x[d]);
    x[b] = _mm512_rol_epi32::<7>(_mm512_xor_si512(x[b], x[c]));
}

/// Sixteen ChaCha20 blocks, lane `j` of word vector `i` being word `i` of block `j`
/// (counter and nonce words per lane).
#[target_feature(enable = "avx512f")]
fn chacha16(key: &[u32; 8], ctr: __m512i, n0: __m512i, n1: __m512i, n2: __m512i) -> [__m512i; 16] {
    let s = |w: u32| _mm512_set1_epi32(w as i32);
    let init = [
        s(SIGMA[0]),
        s(SIGMA[1]),
        s(SIGMA[2]),
        s(SIGMA[3]),
        s(key[0]),
        s(key[1]),
        s(key[2]),
        s(key[3]),
        s(key[4]),
        s(key[5]),
        s(key[6]),
        s(key[7]),
        ctr,
        n0,
        n1,
        n2,
    ];
    let mut x = init;
    for _ in 0..10 {
        quarter(&mut x, 0, 4, 8, 12);
        quarter(&mut x, 1, 5, 9, 13);
        quarter(&mut x, 2, 6, 10, 14);
        quarter(&mut x, 3, 7, 11, 15);
        quarter(&mut x, 0, 5, 10, 15);
        quarter(&mut x, 1, 6, 11, 12);
        quarter(&mut x, 2, 7, 8, 13);
        quarter(&mut x, 3, 4, 9, 14);
    }
    for (v, i) in x.iter_mut().zip(init) {
        *v = _mm512_add_epi32(*v, i);
    }
    x
}

/// The 16x16 word transpose: from word vectors to one vector per block (its 64 bytes in
/// order).
#[target_feature(enable = "avx512f")]
fn transpose(a: [__m512i; 16]) -> [__m512i; 16] {
    // Pairs of words, then pairs of pairs, inside each 128-bit quarter.
    let mut b = [_mm512_setzero_si512(); 16];
    for i in (0..16).step_by(2) {
        b[i] = _mm512_unpacklo_epi32(a[i], a[i + 1]);
        b[i + 1] = _mm512_unpackhi_epi32(a[i], a[i + 1]);
    }
    let mut c = [_mm512_setzero_si512(); 16];
    for i in (0..16).step_by(4) {
        c[i] = _mm512_unpacklo_epi64(b[i], b[i + 2]);
        c[i + 1] = _mm512_unpackhi_epi64(b[i], b[i + 2]);
        c[i + 2] = _mm512_unpacklo_epi64(b[i + 1], b[i + 3]);
        c[i + 3] = _mm512_unpackhi_epi64(b[i + 1], b[i + 3]);
    }
    // Quarter q of c[4g + k] now holds words 4g..4g+4 of block 4q + k: a 4x4 transpose of
    // quarters per k.
    let mut out = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        let (x0, x1, x2, x3) = (c[k], c[4 + k], c[8 + k], c[12 + k]);
        let d0 = _mm512_shuffle_i32x4::<0x44>(x0, x1);
        let d1 = _mm512_shuffle_i32x4::<0xee>(x0, x1);
        let d2 = _mm512_shuffle_i32x4::<0x44>(x2, x3);
        let d3 = _mm512_shuffle_i32x4::<0xee>(x2, x3);
        out[k] = _mm512_shuffle_i32x4::<0x88>(d0, d2);
        out[4 + k] = _mm512_shuffle_i32x4::<0xdd>(d0, d2);
        out[8 + k] = _mm512_shuffle_i32x4::<0x88>(d1, d3);
        out[12 + k] = _mm512_shuffle_i32x4::<0xdd>(d1, d3);
    }
    out
}

/// Poly1305's `r` for the messages of one half of the group, clamped, in radix 2^44:
/// `[r0, r1, r2, 20 * r1, 20 * r2]`.
#[target_feature(enable = "avx512f")]
fn poly_key(b0: &[__m512i; 16], high: bool) -> [__m512i; 5] {
    let half = |v: __m512i| {
        let h = if high { _mm512_extracti64x4_epi64::<1>(v) } else { _mm512_castsi512_si256(v) };
        _mm512_cvtepu32_epi64(h)
    };
    let q = |v: u64| _mm512_set1_epi64(v as i64);
    let lo = _mm512_or_si512(half(b0[0]), _mm512_slli_epi64::<32>(half(b0[1])));
    let hi = _mm512_or_si512(half(b0[2]), _mm512_slli_epi64::<32>(half(b0[3])));
    let lo = _mm512_and_si512(lo, q(0x0fff_fffc_0fff_ffff));
    let hi = _mm512_and_si512(hi, q(0x0fff_fffc_0fff_fffc));
    let r0 = _mm512_and_si512(lo, q(M44));
    let r1 = _mm512_and_si512(
        _mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)),
        q(M44),
    );
    let r2 = _mm512_srli_epi64::<24>(hi);
    let x20 = |v: __m512i| _mm512_add_epi64(_mm512_slli_epi64::<4>(v), _mm512_slli_epi64::<2>(v));
    [r0, r1, r2, x20(r1), x20(r2)]
}

/// Poly1305 over RFC 8439's AEAD input (associated data, zero padding, text, zero padding,
/// the two lengths) of up to 16 messages, one per 64-bit lane in two sets of 8 whose
/// independent chains interleave; returns the accumulators' limbs (`h[limb][message]`,
/// not yet fully reduced).
#[target_feature(enable = "avx512f,avx512ifma")]
fn poly16(r: [[__m512i; 5]; 2], parts: &[Part; GROUP], live: &[bool; GROUP]) -> [[u64; 16]; 3] {
    // The blocks not read in place: padded associated data, a padded partial last block of
    // text, the lengths.
    let mut scratch = [[0u8; SCRATCH]; GROUP];
    let (mut a, mut af, mut nb) = ([[0u64; 8]; 2], [[0u64; 8]; 2], [[0u64; 8]; 2]);
    let (mut sa, mut ct, mut st_) = ([[0u64; 8]; 2], [[0u64; 8]; 2], [[0u64; 8]; 2]);
    let origin = scratch.as_ptr() as u64;
    for (i, sc) in scratch.iter_mut().enumerate() {
        let (set, l) = (i / 8, i % 8);
        let here = sc.as_ptr() as u64;
        sa[set][l] = here;
        if !live[i] {
            continue;
        }
        let p = &parts[i];
        // SAFETY: the associated data is the first `aad_len` (<= MAX_AAD) bytes of the
        // message's buffer; `sc` has room for it.
        unsafe { std::ptr::copy_nonoverlapping(p.base, sc.as_mut_ptr(), p.aad_len) };
        let ab = p.aad_len.div_ceil(16);
        let full = p.text_len / 16;
        let rem = p.text_len % 16;
        let mut at = ab * 16;
        if rem > 0 {
            // SAFETY: the last `rem` bytes of the text, inside the borrowed buffer; `sc`
            // has 16 bytes at `at` (at <= 64).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    p.text().wrapping_add(full * 16),
                    sc.as_mut_ptr().add(at),
                    rem,
                )
            };
            at += 16;
        }
        sc[at..at + 8].copy_from_slice(&(p.aad_len as u64).to_le_bytes());
        sc[at + 8..at + 16].copy_from_slice(&(p.text_len as u64).to_le_bytes());
        let tail = (at + 16) / 16 - ab;
        a[set][l] = ab as u64;
        af[set][l] = (ab + full) as u64;
        nb[set][l] = (ab + full + tail) as u64;
        ct[set][l] = (p.text() as u64).wrapping_sub(16 * ab as u64);
        st_[set][l] = here.wrapping_sub(16 * full as u64);
    }
    let steps = nb.iter().flatten().copied().max().unwrap_or(0);
    let q = |v: u64| _mm512_set1_epi64(v as i64);
    // Addresses relative to the scratch array, the gathers' base.
    let rel = |v: &[u64; 8]| _mm512_sub_epi64(ld64(v), q(origin));
    let base = scratch.as_ptr().cast::<i64>();
    let zero = _mm512_setzero_si512();
    let (m44, m42) = (q(M44), q(M42));
    let hibit = q(1 << 40);
    let (x5, x5120) = (q(5), q(5120));
    let mut h = [[zero; 3]; 2];
    let va = [ld64(&a[0]), ld64(&a[1])];
    let vaf = [ld64(&af[0]), ld64(&af[1])];
    let vnb = [ld64(&nb[0]), ld64(&nb[1])];
    let vsa = [rel(&sa[0]), rel(&sa[1])];
    let vct = [rel(&ct[0]), rel(&ct[1])];
    let vst = [rel(&st_[0]), rel(&st_[1])];
    let sets = if live[8..].iter().any(|&l| l) { 2 } else { 1 };
    for j in 0..steps {
        let jv = q(j);
        let off = q(16 * j);
        for s in 0..sets {
            let [r0, r1, r2, s1, s2] = r[s];
            let active = _mm512_cmplt_epu64_mask(jv, vnb[s]);
            let in_a = _mm512_cmplt_epu64_mask(jv, va[s]);
            let in_af = _mm512_cmplt_epu64_mask(jv, vaf[s]);
            let addr = _mm512_mask_blend_epi64(
                in_af,
                _mm512_add_epi64(vst[s], off),
                _mm512_add_epi64(vct[s], off),
            );
            let addr = _mm512_mask_blend_epi64(in_a, addr, _mm512_add_epi64(vsa[s], off));
            // SAFETY: for every active lane, `base + addr` is a 16-byte block of its
            // message's input: in the scratch array (associated data, tail, lengths) or in
            // the text of its borrowed buffer (a full block, `16 * (j - ab) + 16 <=
            // text_len`); inactive lanes are masked off and read nothing.
            let (lo, hi) = unsafe {
                (
                    _mm512_mask_i64gather_epi64::<1>(zero, active, addr, base),
                    _mm512_mask_i64gather_epi64::<1>(
                        zero,
                        active,
                        _mm512_add_epi64(addr, q(8)),
                        base,
                    ),
                )
            };
            let [h0, h1, h2] = h[s];
            let m0 = _mm512_and_si512(lo, m44);
            let m1 = _mm512_and_si512(
                _mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)),
                m44,
            );
            let m2 = _mm512_or_si512(_mm512_srli_epi64::<24>(hi), hibit);
            let a0 = _mm512_add_epi64(h0, m0);
            let a1 = _mm512_add_epi64(h1, m1);
            let a2 = _mm512_add_epi64(h2, m2);
            // d0 = a0 r0 + a1 20 r2 + a2 20 r1; d1 = a0 r1 + a1 r0 + a2 20 r2;
            // d2 = a0 r2 + a1 r1 + a2 r0 (2^132 = 20 mod 2^130 - 5), each as the low 52
            // bits and the high 52 bits of the products.
            let a = [a0, a1, a2];
            let (lo0, hi0) = (dot_lo(a, [r0, s2, s1]), dot_hi(a, [r0, s2, s1]));
            let (lo1, hi1) = (dot_lo(a, [r1, r0, s2]), dot_hi(a, [r1, r0, s2]));
            let (lo2, hi2) = (dot_lo(a, [r2, r1, r0]), dot_hi(a, [r2, r1, r0]));
            // The high halves weigh 2^52 more: 2^8 of the next limb, and for d2, 2^140 =
            // 5 * 2^10 mod 2^130 - 5 (hi2 < 2^38, so the product fits 52 bits).
            let t0 = _mm512_madd52lo_epu64(lo0, hi2, x5120);
            let t1 = _mm512_add_epi64(lo1, _mm512_slli_epi64::<8>(hi0));
            let t2 = _mm512_add_epi64(lo2, _mm512_slli_epi64::<8>(hi1));
            // One parallel carry: every limb below 2^45 again.
            let c0 = _mm512_srli_epi64::<44>(t0);
            let c1 = _mm512_srli_epi64::<44>(t1);
            let c2 = _mm512_srli_epi64::<42>(t2);
            let n0 = _mm512_madd52lo_epu64(_mm512_and_si512(t0, m44), c2, x5);
            let n1 = _mm512_add_epi64(_mm512_and_si512(t1, m44), c0);
            let n2 = _mm512_add_epi64(_mm512_and_si512(t2, m42), c1);
            h[s] = [
                _mm512_mask_blend_epi64(active, h0, n0),
                _mm512_mask_blend_epi64(active, h1, n1),
                _mm512_mask_blend_epi64(active, h2, n2),
            ];
        }
    }
    let mut out = [[0u64; 16]; 3];
    for (s, hs) in h.iter().enumerate() {
        for (k, v) in hs.iter().enumerate() {
            out[k][s * 8..s * 8 + 8].copy_from_slice(&st64(*v));
        }
    }
    out
}

/// The sum of the low 52 bits of the three products `a[i] * b[i]` (each input below 2^52).
#[target_feature(enable = "avx512f,avx512ifma")]
fn dot_lo(a: [__m512i; 3], b: [__m512i; 3]) -> __m512i {
    let z = _mm512_setzero_si512();
    _mm512_add_epi64(
        _mm512_madd52lo_epu64(_mm512_madd52lo_epu64(z, a[0], b[0]), a[1], b[1]),
        _mm512_madd52lo_epu64(z, a[2], b[2]),
    )
}

/// The sum of the high 52 bits (bits 52 to 103) of the three products `a[i] * b[i]`.
#[target_feature(enable = "avx512f,avx512ifma")]
fn dot_hi(a: [__m512i; 3], b: [__m512i; 3]) -> __m512i {
    let z = _mm512_setzero_si512();
    _mm512_add_epi64(
        _mm512_madd52hi_epu64(_mm512_madd52hi_epu64(z, a[0], b[0]), a[1], b[1]),
        _mm512_madd52hi_epu64(z, a[2], b[2]),
    )
}

/// Reduces an accumulator fully modulo 2^130 - 5 and adds `s`: the tag. Constant time.
fn finish(mut h0: u64, mut h1: u64, mut h2: u64, s: u128) -> [u8; 16] {
    let mut c = h0 >> 44;
    h0 &= M44;
    h1 += c;
    c = h1 >> 44;
    h1 &= M44;
    h2 += c;
    c = h2 >> 42;
    h2 &= M42;
    h0 += c * 5;
    c = h0 >> 44;
    h0 &= M44;
    h1 += c;
    c = h1 >> 44;
    h1 &= M44;
    h2 += c;
    // h < 2 (2^130 - 5): subtract p once if h + 5 reaches 2^130.
    let mut g0 = h0 + 5;
    c = g0 >> 44;
    g0 &= M44;
    let mut g1 = h1 + c;
    c = g1 >> 44;
    g1 &= M44;
    let g2 = h2 + c;
    let take = 0u64.wrapping_sub(g2 >> 42);
    let g2 = g2 & M42;
    h0 = (h0 & !take) | (g0 & take);
    h1 = (h1 & !take) | (g1 & take);
    h2 = (h2 & !take) | (g2 & take);
    let v = (h0 as u128) | ((h1 as u128) << 44) | ((h2 as u128) << 88);
    v.wrapping_add(s).to_le_bytes()
}
