//! Sealing and opening the same batch of packet-sized messages again and again, for
//! profiling the AES-GCM batch code: `cargo run --release -p dap-crypto --example
//! aes_cycles [size] [batch] [secs]`.

use std::time::Instant;

use dap_crypto::{BatchKey, Cipher, Msg, TAG_LEN};

const AAD: usize = 17;

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().map_or(1419, |s| s.parse().expect("bytes"));
    let batch: usize = args.next().map_or(16, |s| s.parse().expect("batch"));
    let secs: f64 = args.next().map_or(2.0, |s| s.parse().expect("seconds"));
    let Some(bk) = BatchKey::new(Cipher::Aes256Gcm, &[7u8; 32]) else {
        println!("no AES batch code on this CPU");
        return;
    };
    let mut bufs = vec![vec![1u8; AAD + size + TAG_LEN]; batch];
    let mut msgs: Vec<Msg<'_>> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
            Msg { nonce, aad_len: AAD, buf: b }
        })
        .collect();
    // Sealing alone, then sealing and opening (each open undoes the seal before it):
    // opening is the difference.
    let mut ok = vec![false; batch];
    let mut per_msg = [0f64; 2];
    for (k, open) in [false, true].into_iter().enumerate() {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed().as_secs_f64() < secs {
            for _ in 0..64 {
                bk.seal(&mut msgs);
                if open {
                    bk.open(&mut msgs, &mut ok);
                    assert!(ok.iter().all(|&o| o));
                }
            }
            n += 64 * batch as u64;
        }
        per_msg[k] = start.elapsed().as_secs_f64() * 1e9 / n as f64;
    }
    let (seal, open) = (per_msg[0], per_msg[1] - per_msg[0]);
    let mbs = |ns: f64| size as f64 / ns * 1e3;
    println!(
        "{size} B x {batch}: seal {seal:.1} ns/msg ({:.0} MB/s), open {open:.1} ns/msg ({:.0} MB/s)",
        mbs(seal),
        mbs(open)
    );
}
