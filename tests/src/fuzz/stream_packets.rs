//! `stream_packets`: stream packets that open, and what is inside them — CLOSE payloads
//! above all, which a stream reads only after a valid open. The first byte picks the
//! transport and the cipher (bit 0: HTTP / UDP; bit 1: ChaCha20-Poly1305 / AES-256-GCM);
//! on HTTP, bits 2–4 set how often the sender updates its key.
//!
//! HTTP: the rest is `[type u8][len u8][payload]` records, each sealed by the client's
//! sealer; a type byte with its top bit set also flips one bit of the sealed packet (at a
//! place the next byte picks). An intact packet must open to its payload, an altered one
//! must not; then it is handled as the stream does: DATA into a live mux, CLOSE read for
//! its code and reason (after which nothing is read), a mux error or a refused packet ends
//! the stream. A close reason re-encodes within its bound, cut on a character boundary.
//!
//! UDP: the rest is one packet's frames, sealed with the client's key: it must open to
//! them, and a CLOSE among them must read back its code and reason as the engine does.

use std::sync::Arc;

use dap_net::enc::cipher::CipherSuite;
use dap_stream::codec::keys::KeyChain;
use dap_stream::codec::packet::{
    self, Direction, MAX_REASON, Opener, PacketType, Sealer, close_payload, parse_close,
};
use dap_stream::transport::CloseCode;
use dap_stream::udp::frame::{self as udp_frame, Frame, Frames};
use dap_stream::udp::packet::{self as udp_packet, ConnectionId, Header, LABELS};
use dap_stream::{ChannelProcs, Mux, MuxConfig, SessionInfo};

use super::{Echo, NoWake};

const MAX_PAYLOAD: usize = 1 << 12;

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let suite = if which & 2 == 0 { CipherSuite::ChaCha20Poly1305 } else { CipherSuite::Aes256Gcm };
    if which & 1 == 0 {
        http(suite, u64::from(which >> 2 & 7) + 1, body);
    } else {
        udp(suite, body);
    }
}

fn http(suite: CipherSuite, update_after: u64, mut data: &[u8]) {
    let secret = [5u8; 32];
    let mut sealer =
        Sealer::new(KeyChain::new(suite, secret), Direction::ClientToServer, update_after);
    let limit = packet::confidentiality_limit(suite, MAX_PAYLOAD);
    let mut opener = Opener::new(KeyChain::new(suite, secret), Direction::ClientToServer, limit);
    let mut procs = ChannelProcs::new();
    for id in [b'E', b'F'] {
        procs.ch_proc_add(id, |_| Box::new(Echo)).expect("valid ids");
    }
    let info = SessionInfo { session_id: [0; 16], client: None };
    let mut mux = Mux::new(b"EF", &procs, info, MuxConfig::default());
    mux.start(Arc::new(NoWake));
    while data.len() >= 2 {
        let (t, len) = (data[0], usize::from(data[1]));
        let payload = &data[2..(2 + len).min(data.len())];
        data = &data[2 + payload.len()..];
        let ty = match t & 3 {
            0 => PacketType::Data,
            1 => PacketType::Keepalive,
            2 => PacketType::Alive,
            _ => PacketType::Close,
        };
        let mut buf = Vec::new();
        let start = Sealer::begin(&mut buf);
        buf.extend_from_slice(payload);
        sealer.seal(ty, &mut buf, start);
        let hdr = packet::parse_header(&buf, MAX_PAYLOAD)
            .expect("a sealed packet's header parses")
            .expect("a sealed packet's header is whole");
        assert_eq!((hdr.ty, hdr.packet_len()), (ty, buf.len()));
        if t & 0x80 != 0 {
            // Alter one bit: the packet must not open (or not even parse).
            let at = usize::from(data.first().copied().unwrap_or(0)) * 8 % (buf.len() * 8);
            buf[at / 8] ^= 1 << (at % 8);
            if let Ok(Some(h)) = packet::parse_header(&buf, MAX_PAYLOAD)
                && h.packet_len() <= buf.len()
            {
                assert!(opener.open(&h, &mut buf).is_err(), "an altered packet opened");
            }
            return;
        }
        let plain = opener.open(&hdr, &mut buf).expect("an intact packet opens");
        assert_eq!(&plain[..], payload);
        match ty {
            PacketType::Data => {
                if mux.handle_payload(plain).is_err() {
                    return;
                }
                let mut out = Vec::new();
                while out.len() < 1 << 16 && mux.poll_payload(&mut out, MAX_PAYLOAD) {}
            }
            PacketType::Close => {
                close(plain);
                return;
            }
            _ => {}
        }
    }
}

/// Reads a CLOSE payload as the stream does, and checks the reason's bounds.
fn close(plain: &[u8]) {
    let Ok((code, reason)) = parse_close(plain) else {
        assert!(plain.len() < 2);
        return;
    };
    assert_eq!(code, u16::from_be_bytes([plain[0], plain[1]]));
    let _ = CloseCode::from_u16(code);
    let sent = &plain[2..plain.len().min(2 + MAX_REASON)];
    if let Ok(text) = std::str::from_utf8(sent) {
        assert_eq!(reason, text);
    }
    // Sent back (as a peer's reason is logged and may be echoed), it stays in bounds.
    let mut again = Vec::new();
    close_payload(&mut again, code, &reason);
    assert!(again.len() <= 2 + MAX_REASON);
    let (c, r) = parse_close(&again).expect("an encoded close reads back");
    assert_eq!(c, code);
    assert!(reason.starts_with(&r));
}

fn udp(suite: CipherSuite, frames: &[u8]) {
    let key = KeyChain::with_labels(LABELS, suite, [6; 32]).key();
    let hdr = Header { cid: ConnectionId([1, 2, 3, 4, 5, 6, 7, 8]), key_phase: false, pn: 7 };
    let mut p = Vec::new();
    let start = udp_packet::begin(&mut p);
    p.extend_from_slice(frames);
    udp_packet::seal(&key, Direction::ClientToServer, &hdr, &mut p, start);
    let Ok(parsed) = udp_packet::parse_header(&p) else {
        // Too short a packet to be one (no frames at all).
        return;
    };
    assert_eq!(parsed.cid, hdr.cid);
    let plain = udp_packet::open(&key, Direction::ClientToServer, &parsed, &mut p)
        .expect("an intact packet opens");
    assert_eq!(&plain[..], frames);
    for f in Frames::new(plain) {
        let Ok(f) = f else { return };
        if let Frame::Close { code, reason } = f {
            assert!(reason.len() <= udp_frame::MAX_REASON);
            let text = String::from_utf8_lossy(reason);
            let mut again = Vec::new();
            udp_frame::put_close(&mut again, code, &text);
            match Frames::new(&again).next() {
                Some(Ok(Frame::Close { code: c, reason: r })) => {
                    assert_eq!(c, code);
                    assert!(text.as_bytes().starts_with(r));
                }
                other => panic!("a close frame reads back as {other:?}"),
            }
        }
    }
}
