//! The test vectors published in `docs/PROTOCOL.md` §9: the stream key schedule and one
//! packet of each type. If one of these fails, the spec and the code disagree.

use dap_net::enc::cipher::CipherSuite;

use super::frame::{put_credit, put_data_header};
use super::packet::{self, PacketType, Sealer};
use crate::session::{SessionLimits, SessionParams, TransportKind, hex};

fn params(suite: CipherSuite) -> SessionParams {
    SessionParams {
        id: core::array::from_fn(|i| i as u8),
        suite,
        secret: core::array::from_fn(|i| 0x20 + i as u8),
        channels: b"E".to_vec(),
        transport: TransportKind::Http,
        limits: SessionLimits::default(),
        udp_port: 0,
        client: None,
    }
}

/// The four packets of the vector, client to server, sequence 0 to 3.
fn packets(suite: CipherSuite) -> Vec<String> {
    let (mut sealer, _) = params(suite).packet_keys(false);
    let mut out = Vec::new();
    let mut one = |ty: PacketType, payload: &[u8]| {
        let mut p = Vec::new();
        let start = Sealer::begin(&mut p);
        p.extend_from_slice(payload);
        sealer.seal(ty, &mut p, start);
        out.push(hex(&p));
    };
    let mut data = Vec::new();
    put_data_header(&mut data, b'E', 1, Some(5), false, 5);
    data.extend_from_slice(b"hello");
    put_credit(&mut data, 0, 65536);
    one(PacketType::Data, &data);
    one(PacketType::Keepalive, &[]);
    one(PacketType::Alive, &[]);
    let mut close = Vec::new();
    packet::close_payload(&mut close, 0, "bye");
    one(PacketType::Close, &close);
    out
}

const C2S: &str = "78c69b2ee0c0e154c77898ff203709849312e4edc792067fdc6f5869dc5639ad";
const S2C: &str = "6df7be72c1e9fc9367a643cf691011c18054a371e7546702bfca6b10b3223170";

const CHACHA: [&str; 4] = [
    "445301010000002d00000000000000007b875d691c3ba0b5d3a8c8b07d08ded92c01dfed747087a1435a3c5c1065b19664f27b1d25b1d1066ad6cde481",
    "445301020000001000000000000000019a55e6476a526717c93b2114178fe4b8",
    "4453010300000010000000000000000279fb406e3a52c9fb10c6db9d1d1f8f51",
    "44530104000000150000000000000003cfa1e8dc054cfeef2cbf2222b948cfd5966069ab0e",
];

const AES: [&str; 4] = [
    "445301010000002d00000000000000007a4f3813315282c2fc2d1a52a42c874b0029e2f6e20047ff435204ad59a5cb5f6a31187cdd59a4731699151c26",
    "445301020000001000000000000000018e1f6034e25ec7ae100c74f4d7cc1ce9",
    "445301030000001000000000000000021c9d91fc860c3e9dc307e45ae4ee89ac",
    "44530104000000150000000000000003167f83f203f74910a42e3f43d6eb1d70fcc2078cee",
];

#[test]
fn stream_keys_match_the_spec() {
    let (c2s, s2c) = params(CipherSuite::ChaCha20Poly1305).keys();
    assert_eq!((hex(&c2s).as_str(), hex(&s2c).as_str()), (C2S, S2C));
}

#[test]
fn packets_match_the_spec() {
    assert_eq!(packets(CipherSuite::ChaCha20Poly1305), CHACHA);
    assert_eq!(packets(CipherSuite::Aes256Gcm), AES);
}

#[test]
fn the_spec_packets_open_on_the_server() {
    for (suite, list) in [(CipherSuite::ChaCha20Poly1305, CHACHA), (CipherSuite::Aes256Gcm, AES)] {
        let (_, mut opener) = params(suite).packet_keys(true);
        for h in list {
            let mut bytes: Vec<u8> = (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let hdr = packet::parse_header(&bytes, 1 << 16).unwrap().unwrap();
            opener.open(&hdr, &mut bytes).expect("opens");
        }
    }
}
