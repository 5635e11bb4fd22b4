//! The test vectors published in `docs/PROTOCOL.md` §9: the stream key schedule, its key
//! update, and one packet of each type. If one of these fails, the spec and the code
//! disagree.

use dap_net::enc::cipher::CipherSuite;

use super::frame::{put_blocked, put_credit, put_data_header};
use super::packet::{self, KeyChain, PacketType, Sealer};
use crate::session::{SessionLimits, SessionParams, TransportKind, hex};

fn params(suite: CipherSuite) -> SessionParams {
    SessionParams {
        unreliable: Vec::new(),
        udp: None,
        id: core::array::from_fn(|i| i as u8),
        suite,
        secret: core::array::from_fn(|i| 0x20 + i as u8),
        channels: b"E".to_vec(),
        transport: TransportKind::Http,
        // The vector's sender updates its key after every 2 packets.
        limits: SessionLimits { rekey_packets: 2, ..SessionLimits::default() },
        udp_port: 0,
        client: None,
    }
}

/// The four packets of the vector, client to server, sequence 0 to 3 (0 and 1 under key
/// generation 0, 2 and 3 under generation 1).
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
    put_blocked(&mut data, b'E', 262144);
    one(PacketType::Data, &data);
    one(PacketType::Keepalive, &[]);
    one(PacketType::Alive, &[]);
    let mut close = Vec::new();
    packet::close_payload(&mut close, 0, "bye");
    one(PacketType::Close, &close);
    out
}

const C2S_SECRET_0: &str = "6f37679d131fa54da850c0e3b7e6912de68fac699b3e50da27d54da8face78df";
const S2C_SECRET_0: &str = "5a3cda37417191d6f5bb956c4cb2e6f6eca89d1ebc3e64fc95ed551716df0227";
const C2S_KEY_0: &str = "53acc28493226ccd12a72119a989e0abd825ae8fdda141abe9cf3e03f7f5ce60";
const C2S_SECRET_1: &str = "d21e37ba9b47ed044c3a45596a7531ac6e176e7747bccaab03fd4f063433c063";
const C2S_KEY_1: &str = "019d1072b0ae5d26bf04bf1aac2066fe7698f22e970dbcbec08db48de018fb26";

const CHACHA: [&str; 4] = [
    "4453020100000041000000000000000062b16e726874080f886d9b672a1d9e96b70ef9ed8251a807682bb95fc7a6f13af9166fcaf5466806cc55b71ff6e369d4162cb2626706e6ebc7b6d59c296f0b1c2c",
    "445302020000001000000000000000015b39926a9afc611ac2eb2db5b70724d1",
    "4453028300000010000000000000000270746a8e02e26b59adcabb420046f08f",
    "44530284000000150000000000000003c134fe4993e38d40bef0bcebe03552c32b935f3c03",
];

const AES: [&str; 4] = [
    "44530201000000410000000000000000e8cbcf41b1fb2b5e400be424b9dc2d747f04fd4007dc5b98dab3b0e80b3976a08eede53c889bb73a4d1c678633ab433e1fbb6e6172ec805a9134c2fea4594beaa9",
    "4453020200000010000000000000000176379cdf44da95aabf46bff781ec475c",
    "4453028300000010000000000000000260d7a7ca2f644b6a4bf8478f6dd22956",
    "445302840000001500000000000000031cc382f49e6866f33eeaf57b79649b80f40936fb3c",
];

fn chain() -> KeyChain {
    let (c2s, _) = params(CipherSuite::ChaCha20Poly1305).keys();
    KeyChain::new(CipherSuite::ChaCha20Poly1305, c2s)
}

#[test]
fn stream_keys_match_the_spec() {
    let (c2s, s2c) = params(CipherSuite::ChaCha20Poly1305).keys();
    let mut ch = chain();
    let key0 = ch.key_bytes();
    ch.advance();
    let got = [hex(&c2s), hex(&s2c), hex(&key0), hex(&ch.secret()), hex(&ch.key_bytes())];
    assert_eq!(got, [C2S_SECRET_0, S2C_SECRET_0, C2S_KEY_0, C2S_SECRET_1, C2S_KEY_1]);
}

#[test]
fn packets_match_the_spec() {
    let got = [packets(CipherSuite::ChaCha20Poly1305), packets(CipherSuite::Aes256Gcm)];
    assert_eq!(got[0], CHACHA);
    assert_eq!(got[1], AES);
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
        assert_eq!(opener.updates(), 1);
    }
}
