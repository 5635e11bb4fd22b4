//! The test vectors of `docs/PROTOCOL.md` §11.6: the UDP key schedule and three packets
//! (two client→server, one server→client; every frame type among them), both ciphers. If one of these fails, the spec and the code disagree.

use dap_net::enc::cipher::CipherSuite;

use super::frame::{self, EcnCounts};
use super::packet::{self, ConnectionId, Header, LABELS};
use crate::codec::frame::put_data_header;
use crate::codec::keys::KeyChain;
use crate::codec::packet::Direction;
use crate::session::{SessionLimits, SessionParams, TransportKind, hex};

fn params(suite: CipherSuite) -> SessionParams {
    SessionParams {
        unreliable: Vec::new(),
        udp: None,
        id: core::array::from_fn(|i| i as u8),
        suite,
        secret: core::array::from_fn(|i| 0x20 + i as u8),
        channels: b"E".to_vec(),
        transport: TransportKind::Udp,
        limits: SessionLimits::default(),
        udp_port: 0,
        client: None,
    }
}

const CID: ConnectionId = ConnectionId([0x01, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7]);

/// Two client→server packets, number 0 under generation 0 and number 1 under generation
/// 1, then server→client packet number 2 under generation 0.
fn packets(suite: CipherSuite) -> [String; 3] {
    let (c2s, _) = params(suite).udp_secrets();
    let mut chain = KeyChain::with_labels(LABELS, suite, c2s);
    let one = |pn: u64, frames: &[u8], chain: &KeyChain| {
        let hdr = Header { cid: CID, key_phase: chain.generation() % 2 == 1, pn };
        let mut out = Vec::new();
        let start = packet::begin(&mut out);
        out.extend_from_slice(frames);
        packet::seal(&chain.key(), Direction::ClientToServer, &hdr, &mut out, start);
        hex(&out)
    };
    let mut f = Vec::new();
    frame::put_ping(&mut f);
    let mut msg = Vec::new();
    put_data_header(&mut msg, b'E', 1, Some(5), false, 5);
    msg.extend_from_slice(b"hello");
    frame::put_channel_data(&mut f, b'E', 0, &msg);
    frame::put_credit(&mut f, 0, 1 << 20);
    frame::put_ack(&mut f, &[5..=7, 0..=2], 100, None);
    let p0 = one(0, &f, &chain);
    chain.advance();
    let mut g = Vec::new();
    frame::put_path_challenge(&mut g, *b"dapchall");
    frame::put_ack(&mut g, &[9..=9], 0, Some(EcnCounts { ect0: 10, ect1: 0, ce: 1 }));
    frame::put_close(&mut g, 0, "bye");
    let p1 = one(1, &g, &chain);
    let (_, s2c) = params(suite).udp_secrets();
    let chain = KeyChain::with_labels(LABELS, suite, s2c);
    let mut h = Vec::new();
    frame::put_blocked(&mut h, b'E', 1 << 18);
    frame::put_datagram(&mut h, b'V', 7, b"tick");
    frame::put_path_response(&mut h, *b"dapchall");
    frame::put_padding(&mut h, 5);
    let hdr = Header { cid: CID, key_phase: false, pn: 2 };
    let mut out = Vec::new();
    let start = packet::begin(&mut out);
    out.extend_from_slice(&h);
    packet::seal(&chain.key(), Direction::ServerToClient, &hdr, &mut out, start);
    [p0, p1, hex(&out)]
}

/// c2s secret_0, s2c secret_0, c2s key_0, c2s secret_1, c2s key_1, s2c key_0.
const KEYS: [&str; 6] = [
    "b080f9299c5819ba9465abfdeb821eec8096fa23052acbf95ffc8892bfc14bb3",
    "dd83b90bd934a80e73cb0d08c295de9e5897c26d3bbdaeb256ba9bfdf9f1715d",
    "1d741e774d385471159b0f652ac0c9f48b3a0792a4e32109ac6146980714585a",
    "381fc91a4caa599a5c021e2bc710947d0abc62054a745d67a7fc55a994fc574f",
    "fc71375034ae9a41d2b09847d2c3bbb5776af2391d65fadc0b13ff71c4903d0e",
    "6e7c2b5b9ab36f2967bdb2508d11f22b75ed75166faf7f06027676eeec4279e9",
];

const CHACHA: [&str; 3] = [
    "4001a1a2a3a4a5a6a700000000000000000ccc0570ad2de4df8e016319bd3b41c399921fa701711cd7fa0dad7bdab2116ed005ca2c77f8be5d5a1f62ee6c9c123d60ace80183239287748e49eeea64a12f6e08d3a1e4da44708bed94c5cde3e94727a783",
    "6001a1a2a3a4a5a6a7000000000000000195f4122bb652f6b52ee7fbe6e9c40d5a0356194b6dc36ce25e4bccaf5673296886857bb3ed0cf5def072352259a9fb970a47a22b400eae65eb27c131e74cf8ab2cd0d477ee9369ba790ade",
    "4001a1a2a3a4a5a6a700000000000000028879fa1e4e1665b4c3d10c91dd951293b8dafe8f63f1c21ceed0d0780a71df74d43fb90b150992ad0cc16311271289d65f",
];

const AES: [&str; 3] = [
    "4001a1a2a3a4a5a6a70000000000000000fa0c21673738a72e56f235287640a0974b84f3a2f51012ac12e0423ede1b25dc71663a2b17580b2847fbf7e7f7c62c46084522e0f990f8495f73517caae42345eb07413e85c882bbddb3c2da532e44437898f6",
    "6001a1a2a3a4a5a6a70000000000000001360213b2f2340b8604c0ab6c9cddc5281c2dde1c946fc48b26075bb67aa1b58f80e262084527aaf552ce5badac1966446aa07116882b80441a026e32a7b1433d8a536bd773a529c6b977b0",
    "4001a1a2a3a4a5a6a70000000000000002dd16b20648164f3620a130f322b110caa350247b3b8beee210ffded2a4922e5734c7dec97a44a817e5e0ac7e2aae9542f7",
];

#[test]
fn udp_keys_match_the_spec() {
    let (c2s, s2c) = params(CipherSuite::ChaCha20Poly1305).udp_secrets();
    let mut ch = KeyChain::with_labels(LABELS, CipherSuite::ChaCha20Poly1305, c2s);
    let key0 = ch.key_bytes();
    ch.advance();
    let s2c_key0 = KeyChain::with_labels(LABELS, CipherSuite::ChaCha20Poly1305, s2c).key_bytes();
    let got =
        [hex(&c2s), hex(&s2c), hex(&key0), hex(&ch.secret()), hex(&ch.key_bytes()), hex(&s2c_key0)];
    assert_eq!(got, KEYS);
}

#[test]
fn udp_packets_match_the_spec() {
    let got = [packets(CipherSuite::ChaCha20Poly1305), packets(CipherSuite::Aes256Gcm)];
    assert_eq!(got[0], CHACHA);
    assert_eq!(got[1], AES);
}

#[test]
fn the_spec_packets_open_and_decode() {
    for (suite, list) in [(CipherSuite::ChaCha20Poly1305, CHACHA), (CipherSuite::Aes256Gcm, AES)] {
        let (c2s, s2c) = params(suite).udp_secrets();
        let mut chain = KeyChain::with_labels(LABELS, suite, c2s);
        for (i, h) in list.iter().enumerate() {
            let dir = if i == 2 {
                chain = KeyChain::with_labels(LABELS, suite, s2c);
                Direction::ServerToClient
            } else {
                Direction::ClientToServer
            };
            let mut bytes: Vec<u8> = (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let hdr = packet::parse_header(&bytes).unwrap();
            assert_eq!((hdr.cid, hdr.pn, hdr.key_phase), (CID, i as u64, i == 1));
            if hdr.key_phase {
                chain.advance();
            }
            let plain = packet::open(&chain.key(), dir, &hdr, &mut bytes).expect("opens");
            let frames: Vec<_> = frame::Frames::new(plain).collect::<Result<_, _>>().unwrap();
            assert_eq!(frames.len(), [4, 3, 4][i]);
        }
    }
}
