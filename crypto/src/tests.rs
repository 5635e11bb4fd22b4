use super::*;
use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

const BOTH: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

/// xorshift64*: test inputs only.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn fill(&mut self, b: &mut [u8]) {
        for x in b {
            *x = self.next() as u8;
        }
    }
}

struct Case {
    nonce: [u8; 12],
    aad_len: usize,
    /// aad || plaintext || 16 bytes of room.
    buf: Vec<u8>,
}

fn reference(cipher: Cipher, key: &[u8; 32], c: &Case) -> Vec<u8> {
    let alg = match cipher {
        Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        Cipher::Aes256Gcm => &AES_256_GCM,
    };
    let k = LessSafeKey::new(UnboundKey::new(alg, key).unwrap());
    let (aad, rest) = c.buf.split_at(c.aad_len);
    let mut text = rest[..rest.len() - TAG_LEN].to_vec();
    k.seal_in_place_append_tag(Nonce::assume_unique_for_key(c.nonce), Aad::from(aad), &mut text)
        .unwrap();
    let mut out = aad.to_vec();
    out.extend_from_slice(&text);
    out
}

fn cases(rng: &mut Rng, n: usize, max_text: usize) -> Vec<Case> {
    (0..n)
        .map(|_| {
            let mut nonce = [0u8; 12];
            rng.fill(&mut nonce);
            let aad_len = match rng.below(4) {
                0 => 17,
                1 => 0,
                _ => rng.below(MAX_AAD + 1),
            };
            let text = match rng.below(4) {
                0 => max_text,
                _ => rng.below(max_text + 1),
            };
            let mut buf = vec![0u8; aad_len + text + TAG_LEN];
            rng.fill(&mut buf[..aad_len + text]);
            Case { nonce, aad_len, buf }
        })
        .collect()
}

fn msgs(cs: &mut [Case]) -> Vec<Msg<'_>> {
    cs.iter_mut().map(|c| Msg { nonce: c.nonce, aad_len: c.aad_len, buf: &mut c.buf }).collect()
}

/// Runs `check` on 300 random batches for each cipher this CPU has batch code for, with
/// the cipher, the round, the key, the messages, what AWS-LC seals each to, and the
/// generator.
fn random_batches(
    seed: u64,
    mut check: impl FnMut(Cipher, usize, &BatchKey, Vec<Case>, Vec<Vec<u8>>, &mut Rng),
) {
    for cipher in BOTH {
        if BatchKey::new(cipher, &[0; 32]).is_none() {
            eprintln!("no batch code for {cipher:?} on this CPU: not exercised");
            continue;
        }
        let mut rng = Rng(seed);
        for round in 0..300 {
            let mut key = [0u8; 32];
            rng.fill(&mut key);
            let bk = BatchKey::new(cipher, &key).unwrap();
            let n = 1 + rng.below(40);
            let max_text = [0, 15, 64, 200, 1435, 1500, 9000][round % 7];
            let cs = cases(&mut rng, n, max_text);
            let want: Vec<Vec<u8>> = cs.iter().map(|c| reference(cipher, &key, c)).collect();
            check(cipher, round, &bk, cs, want, &mut rng);
        }
    }
}

#[test]
fn batches_seal_and_open_as_aws_lc_does() {
    random_batches(0x9e37_79b9_7f4a_7c15, |cipher, round, bk, mut cs, want, rng| {
        let n = cs.len();
        let plain: Vec<Vec<u8>> = cs.iter().map(|c| c.buf.clone()).collect();
        bk.seal(&mut msgs(&mut cs));
        for (i, (c, w)) in cs.iter().zip(&want).enumerate() {
            assert_eq!(&c.buf, w, "{cipher:?} round {round} message {i} of {n}: aad {}", c.aad_len);
        }
        // Open them back, with some tampered: exactly those fail and stay as they were.
        let mut bad = vec![false; n];
        for (c, b) in cs.iter_mut().zip(bad.iter_mut()) {
            if rng.below(5) == 0 {
                let at = rng.below(c.buf.len());
                c.buf[at] ^= 1 << rng.below(8);
                *b = true;
            }
        }
        let before: Vec<Vec<u8>> = cs.iter().map(|c| c.buf.clone()).collect();
        let mut ok = vec![false; n];
        bk.open(&mut msgs(&mut cs), &mut ok);
        for i in 0..n {
            assert_eq!(ok[i], !bad[i], "{cipher:?} round {round} message {i}");
            if ok[i] {
                let l = cs[i].buf.len() - TAG_LEN;
                assert_eq!(cs[i].buf[..l], plain[i][..l], "{cipher:?} round {round} message {i}");
            } else {
                assert_eq!(cs[i].buf, before[i], "a failed message is left as it was");
            }
        }
    });
}

#[test]
fn nist_gcm_test_case_16() {
    // AES-256-GCM, 60 bytes of text, 20 of associated data (the GCM specification's test
    // case 16).
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    };
    let key: [u8; 32] =
        hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308").try_into().unwrap();
    let Some(bk) = BatchKey::new(Cipher::Aes256Gcm, &key) else { return };
    let nonce: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
    let text = hex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    );
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let mut buf = [aad.clone(), text, vec![0; TAG_LEN]].concat();
    bk.seal(&mut [Msg { nonce, aad_len: aad.len(), buf: &mut buf }]);
    let ct = hex(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
    );
    let tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");
    assert_eq!(buf[aad.len()..aad.len() + ct.len()], ct[..]);
    assert_eq!(buf[buf.len() - TAG_LEN..], tag[..]);
}

#[test]
fn rfc_8439_section_2_8_2() {
    let key: [u8; 32] = std::array::from_fn(|i| 0x80 + i as u8);
    let Some(bk) = BatchKey::new(Cipher::ChaCha20Poly1305, &key) else { return };
    let nonce = [0x07, 0, 0, 0, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47];
    let aad = [0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7];
    let text = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
    let mut buf = aad.to_vec();
    buf.extend_from_slice(text);
    buf.extend_from_slice(&[0; TAG_LEN]);
    bk.seal(&mut [Msg { nonce, aad_len: aad.len(), buf: &mut buf }]);
    let tag = &buf[buf.len() - TAG_LEN..];
    assert_eq!(
        tag,
        [
            0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60,
            0x06, 0x91
        ]
    );
    assert_eq!(buf[aad.len()..aad.len() + 4], [0xd3, 0x1a, 0x8d, 0x34]);
}

#[test]
fn short_or_malformed_messages_fail_to_open_without_touching_the_others() {
    for cipher in BOTH {
        let key = [3u8; 32];
        let Some(bk) = BatchKey::new(cipher, &key) else { continue };
        let mut rng = Rng(7);
        let mut cs = cases(&mut rng, 3, 100);
        for c in &mut cs {
            let sealed = reference(cipher, &key, c);
            c.buf = sealed;
        }
        let mut short = vec![1u8; 10];
        let mut ok = [true; 4];
        {
            let mut m = msgs(&mut cs);
            m.insert(1, Msg { nonce: [0; 12], aad_len: 0, buf: &mut short });
            bk.open(&mut m, &mut ok);
        }
        assert_eq!(ok, [true, false, true, true], "{cipher:?}");
        assert_eq!(short, [1u8; 10]);
    }
}

#[test]
fn aes_gcm_runs_of_powers_end_where_they_should() {
    // GHASH takes a message in runs of up to 96 blocks: lengths on both sides of each run's
    // end, with every associated data length that moves where the text's blocks fall.
    let key: [u8; 32] = std::array::from_fn(|i| i as u8 * 3);
    let Some(bk) = BatchKey::new(Cipher::Aes256Gcm, &key) else { return };
    let mut rng = Rng(5);
    let mut texts: Vec<usize> = (85 * 16..100 * 16).step_by(7).collect();
    texts.extend([191 * 16, 192 * 16, 193 * 16 - 1, 9000, 9001]);
    for aad_len in [0, 1, 16, 17, 48, 49, 64] {
        let mut cs: Vec<Case> = texts
            .iter()
            .map(|&t| {
                let mut nonce = [0u8; 12];
                rng.fill(&mut nonce);
                let mut buf = vec![0u8; aad_len + t + TAG_LEN];
                rng.fill(&mut buf[..aad_len + t]);
                Case { nonce, aad_len, buf }
            })
            .collect();
        let want: Vec<Vec<u8>> = cs.iter().map(|c| reference(Cipher::Aes256Gcm, &key, c)).collect();
        let plain: Vec<Vec<u8>> = cs.iter().map(|c| c.buf.clone()).collect();
        bk.seal(&mut msgs(&mut cs));
        for (c, w) in cs.iter().zip(&want) {
            assert!(c.buf == *w, "aad {aad_len}, text {}", c.buf.len() - aad_len - TAG_LEN);
        }
        let last = cs.len() - 1;
        cs[last].buf[aad_len] ^= 0x80;
        let before = cs[last].buf.clone();
        let mut ok = vec![false; cs.len()];
        bk.open(&mut msgs(&mut cs), &mut ok);
        for (i, c) in cs.iter().enumerate() {
            let l = c.buf.len() - TAG_LEN;
            if i == last {
                assert!(!ok[i] && c.buf == before, "a forgery is left as it came");
            } else {
                assert!(ok[i] && c.buf[..l] == plain[i][..l], "aad {aad_len}, message {i}");
            }
        }
    }
}

#[test]
fn sealing_from_tails_writes_what_sealing_in_place_does() {
    random_batches(0x2545_f491_4f6c_dd1d, |cipher, round, bk, mut cs, want, rng| {
        let n = cs.len();
        // Each text's tail (none, all of it, or any split: across a 64-byte group, on
        // one's edge) moved out to a buffer of its own, and the buffer there scribbled
        // over: only the tail may be read.
        let tails: Vec<Vec<u8>> = cs
            .iter_mut()
            .map(|c| {
                let text = c.buf.len() - c.aad_len - TAG_LEN;
                let len = match rng.below(4) {
                    0 => 0,
                    1 => text,
                    2 => text.min(64 * rng.below(4)),
                    _ => rng.below(text + 1),
                };
                let end = c.buf.len() - TAG_LEN;
                let tail = c.buf[end - len..end].to_vec();
                c.buf[end - len..end].fill(0xa5);
                tail
            })
            .collect();
        let tail_refs: Vec<&[u8]> = tails.iter().map(|t| &t[..]).collect();
        bk.seal_gather(&mut msgs(&mut cs), &tail_refs);
        for (i, (c, w)) in cs.iter().zip(&want).enumerate() {
            assert_eq!(
                &c.buf,
                w,
                "{cipher:?} round {round} message {i} of {n}: aad {}, tail {}",
                c.aad_len,
                tails[i].len()
            );
        }
    });
}
