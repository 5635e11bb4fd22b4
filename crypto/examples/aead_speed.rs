//! AEAD throughput, AWS-LC one message at a time against the batch code, at a
//! UDP packet's size: `cargo run --release -p dap-crypto --example aead_speed [bytes] [batch]`.
//! With `AES=1` in the environment, AES-256-GCM instead.

use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use dap_crypto::{BatchKey, Msg, TAG_LEN};

const AAD: usize = 17;

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(1419, |s| s.parse().expect("bytes"));
    let batch: usize = args.next().map_or(32, |s| s.parse().expect("batch"));
    let key = [7u8; 32];
    let window = Duration::from_secs(2);

    let aes = std::env::var_os("AES").is_some();
    let alg = if aes { &AES_256_GCM } else { &CHACHA20_POLY1305 };
    let one = LessSafeKey::new(UnboundKey::new(alg, &key).unwrap());
    let mut buf = vec![1u8; AAD + size + TAG_LEN];
    let (mut bytes, start, mut n) = (0u64, Instant::now(), 0u64);
    while start.elapsed() < window {
        for _ in 0..batch {
            n += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&n.to_be_bytes());
            let (aad, rest) = buf.split_at_mut(AAD);
            let tag = one
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    &mut rest[..size],
                )
                .unwrap();
            rest[size..].copy_from_slice(tag.as_ref());
            bytes += size as u64;
        }
    }
    let aws = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;

    let cipher =
        if aes { dap_crypto::Cipher::Aes256Gcm } else { dap_crypto::Cipher::ChaCha20Poly1305 };
    let Some(bk) = BatchKey::new(cipher, &key) else {
        println!("aws-lc {aws:.0} MB/s; no batch code for {cipher:?} on this CPU");
        return;
    };
    let mut bufs = vec![vec![1u8; AAD + size + TAG_LEN]; batch];
    let (mut bytes, start) = (0u64, Instant::now());
    while start.elapsed() < window {
        let mut msgs: Vec<Msg<'_>> = bufs
            .iter_mut()
            .map(|b| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                Msg { nonce, aad_len: AAD, buf: b }
            })
            .collect();
        bk.seal(&mut msgs);
        bytes += (size * batch) as u64;
    }
    let batched = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    println!(
        "{cipher:?}, {size}-byte messages: aws-lc one at a time {aws:.0} MB/s, batches of {batch} {batched:.0} MB/s ({:.2}x)",
        batched / aws
    );
    // Opening: each batch sealed, then opened; the sealing's time (above) taken out.
    let mut ok = vec![false; batch];
    let (mut bytes, start) = (0u64, Instant::now());
    while start.elapsed() < window {
        let nonces: Vec<[u8; 12]> = (0..batch)
            .map(|_| {
                n += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&n.to_be_bytes());
                nonce
            })
            .collect();
        fn msgs<'a>(bufs: &'a mut [Vec<u8>], nonces: &[[u8; 12]]) -> Vec<Msg<'a>> {
            bufs.iter_mut()
                .zip(nonces)
                .map(|(b, &nonce)| Msg { nonce, aad_len: AAD, buf: b })
                .collect()
        }
        bk.seal(&mut msgs(&mut bufs, &nonces));
        bk.open(&mut msgs(&mut bufs, &nonces), &mut ok);
        assert!(ok.iter().all(|&o| o), "a message sealed here opens");
        bytes += (size * batch) as u64;
    }
    let both = start.elapsed().as_secs_f64() / (bytes as f64 / 1e6);
    let opened = 1.0 / (both - 1.0 / batched);
    println!("batches of {batch}, opening: {opened:.0} MB/s");
}
