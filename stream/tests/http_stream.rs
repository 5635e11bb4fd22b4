//! The stream over an upgraded HTTP connection, end to end over loopback.

mod util;

use std::collections::HashMap;
use std::time::Instant;

use dap_net::enc::cipher::CipherSuite;
use dap_stream::StreamConfig;
use util::*;

/// Message sizes sent on every channel: 1 byte to 4 MiB.
const SIZES: [usize; 9] = [1, 100, 1000, 16_383, 16_384, 65_537, 300_000, 1 << 20, 4 << 20];

fn pattern(id: u8, i: usize, n: usize) -> Vec<u8> {
    let mut x = (id as u32) << 16 | i as u32;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

/// Key updates every `rekey` packets on both ends (`None`: the default interval).
fn eight_channels_both_ways(suite: CipherSuite, rekey: Option<u64>) {
    let ids = b"ABCDEFGH";
    let mut config = StreamConfig::default();
    if let Some(n) = rekey {
        config.limits.rekey_packets = n;
    }
    let srv = echo_server(ids, config);
    let mut params = srv.session(ids, Some(suite));
    if let Some(n) = rekey {
        params.limits.rekey_packets = n;
    }
    let client = connect(&srv.reactor, srv.addr, params);
    // One writer thread per channel, all at once.
    let mut sent: HashMap<u8, Vec<Vec<u8>>> = HashMap::new();
    let writers: Vec<_> = ids
        .iter()
        .map(|&id| {
            let h = client.channel(id).clone();
            let msgs: Vec<Vec<u8>> =
                SIZES.iter().enumerate().map(|(i, &n)| pattern(id, i, n)).collect();
            sent.insert(id, msgs.clone());
            std::thread::spawn(move || {
                for (i, m) in msgs.into_iter().enumerate() {
                    h.write_timeout(i as u8, m, TIMEOUT).expect("write");
                }
            })
        })
        .collect();
    let mut got: HashMap<u8, Vec<Vec<u8>>> = HashMap::new();
    let deadline = Instant::now() + TIMEOUT;
    for _ in 0..ids.len() * SIZES.len() {
        let (id, msg) = client.messages.recv_deadline(deadline).expect("echo in time");
        let list = got.entry(id).or_default();
        assert_eq!(msg.ty as usize, list.len(), "messages of one channel arrive in order");
        list.push(msg.data.to_vec());
    }
    for w in writers {
        w.join().unwrap();
    }
    let digest = |m: &HashMap<u8, Vec<Vec<u8>>>| {
        let mut all = Vec::new();
        for id in ids {
            for msg in &m[id] {
                all.extend_from_slice(&sha256(msg));
            }
        }
        sha256(&all)
    };
    assert_eq!(digest(&sent), digest(&got), "SHA-256 of all sent equals all received");
    let s = srv.stream.stats();
    assert_eq!((s.sessions_attached, s.auth_failures, s.sequence_errors), (1, 0, 0));
    if rekey.is_some() {
        let c = client.stats.snapshot();
        // Each end moved to a new key at least 100 times, and followed the other's moves.
        for (who, sent, received) in [
            ("server", s.key_updates_sent, s.key_updates_received),
            ("client", c.key_updates_sent, c.key_updates_received),
        ] {
            assert!(sent >= 100 && received >= 100, "{who}: {sent} sent, {received} received");
        }
    }
}

#[test]
fn eight_channels_echo_every_size_chacha() {
    eight_channels_both_ways(CipherSuite::ChaCha20Poly1305, None);
}

#[test]
fn eight_channels_echo_every_size_aes() {
    eight_channels_both_ways(CipherSuite::Aes256Gcm, None);
}

#[test]
fn eight_channels_echo_every_size_with_a_key_update_every_8_packets() {
    eight_channels_both_ways(CipherSuite::Aes256Gcm, Some(8));
    eight_channels_both_ways(CipherSuite::ChaCha20Poly1305, Some(8));
}

#[test]
fn a_session_attaches_once() {
    let srv = echo_server(b"E", StreamConfig::default());
    let params = srv.session(b"E", None);
    let first = connect(&srv.reactor, srv.addr, params.clone());
    let second = try_connect(&srv.reactor, srv.addr, params).err().expect("second attach refused");
    assert_eq!(second, dap_stream::transport::StreamError::UpgradeRefused(409));
    assert_eq!(srv.stream.stats().attach_twice, 1);
    // The first stream is unaffected.
    first.channel(b'E').write(1, &b"still here"[..]).unwrap();
    let (_, m) = first.messages.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(m.data, &b"still here"[..]);
}
