//! CPU per `/enc_init` handshake, each side, as dap runs it (AWS-LC's X25519 and Ed25519),
//! next to the same primitives in ring (what rustls and quinn use in `dap-bench`):
//!
//! ```text
//! cargo run --release -p dap-net --example handshake_speed [-- ROUNDS]
//! ```
//!
//! The client's side is `EncInit::start` + `finish` (X25519 key pair, agreement, the node
//! signature checked); the server's is `handshake::accept` (X25519 key pair, agreement,
//! the response signed). Microseconds per call, one thread.

use std::hint::black_box;
use std::time::Instant;

use dap_net::enc::handshake::{self, AcceptParams};
use dap_net::enc::{CipherSuite, ClientAuth, EncInit, NodeKey};

fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let node = NodeKey::generate();
    let auth = ClientAuth::None;
    let params = AcceptParams {
        node: &node,
        suites: &CipherSuite::ALL,
        client_auth: &auth,
        key_ttl_secs: 600,
    };
    let pinned = Some(node.public_key());
    let (_, request) = EncInit::start(&[], None);
    let server = per_call(n, || {
        black_box(handshake::accept(black_box(&request), &params).unwrap());
    });
    let client = per_call(n, || {
        let (init, request) = EncInit::start(&[], None);
        let response = handshake::accept(&request, &params).unwrap().response;
        black_box(init.finish(&response, pinned).unwrap());
    }) - server;
    println!("dap enc_init: server {server:.1} us, client {client:.1} us (AWS-LC)");

    // The same primitives in ring.
    use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
    use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let peer = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
    let peer = peer.compute_public_key().unwrap().as_ref().to_vec();
    let kx = per_call(n, || {
        let k = EphemeralPrivateKey::generate(&X25519, &rng).unwrap();
        black_box(k.compute_public_key().unwrap());
        let peer = UnparsedPublicKey::new(&X25519, &peer);
        black_box(agreement::agree_ephemeral(k, &peer, |s| s[0]).unwrap());
    });
    let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let msg = [1u8; 32];
    let sign = per_call(n, || {
        black_box(pair.sign(black_box(&msg)));
    });
    let sig = pair.sign(&msg);
    let public = signature::UnparsedPublicKey::new(&signature::ED25519, pair.public_key());
    let verify = per_call(n, || public.verify(black_box(&msg), sig.as_ref()).unwrap());
    println!(
        "ring: X25519 key pair + agreement {kx:.1} us, Ed25519 sign {sign:.1} us, verify {verify:.1} us \
         (server {:.1} us, client {:.1} us of these)",
        kx + sign,
        kx + verify
    );
}
