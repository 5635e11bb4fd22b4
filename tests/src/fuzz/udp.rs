//! `udp`: the UDP transport's decoders. The first byte picks: even, a datagram's header
//! (with routing by connection id) and opener (nothing opens without the key); odd, a
//! decrypted payload's frames, whose ACK ranges are walked to the end and whose frames
//! re-encode to the same bytes.

use dap_net::enc::cipher::{AeadKey, CipherSuite};
use dap_stream::codec::packet::Direction;
use dap_stream::udp::frame::{self, Frame, Frames};
use dap_stream::udp::packet;

/// The target.
pub fn run(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else { return };
    if pick % 2 == 0 {
        let mut buf = body.to_vec();
        let peeked = packet::peek_cid(&buf);
        if let Ok(hdr) = packet::parse_header(&buf) {
            assert_eq!(peeked, Some(hdr.cid));
            let key = AeadKey::new(CipherSuite::ChaCha20Poly1305, &[3; 32]);
            assert!(
                packet::open(&key, Direction::ClientToServer, &hdr, &mut buf).is_none(),
                "forged packet opened"
            );
        }
        return;
    }
    let mut again = Vec::new();
    for f in Frames::new(body) {
        let Ok(f) = f else { return };
        match f {
            Frame::Padding(n) => frame::put_padding(&mut again, n),
            Frame::Ping => frame::put_ping(&mut again),
            Frame::Ack(a) => {
                let ranges: Vec<_> = a.iter().collect();
                assert!(ranges.windows(2).all(|w| w[1].end() + 1 < *w[0].start()));
                assert!(frame::put_ack(&mut again, &ranges, a.delay_us, a.ecn));
            }
            Frame::ChannelData { chan, offset, data } => {
                frame::put_channel_data(&mut again, chan, offset, data)
            }
            Frame::Credit { chan, limit } => frame::put_credit(&mut again, chan, limit),
            Frame::Blocked { chan, limit } => frame::put_blocked(&mut again, chan, limit),
            Frame::Datagram { chan, ty, data } => frame::put_datagram(&mut again, chan, ty, data),
            Frame::PathChallenge(d) => frame::put_path_challenge(&mut again, d),
            Frame::PathResponse(d) => frame::put_path_response(&mut again, d),
            Frame::Close { code, reason } => {
                // Reasons are kept as bytes; re-encode only valid UTF-8 exactly.
                match std::str::from_utf8(reason) {
                    Ok(r) => frame::put_close(&mut again, code, r),
                    Err(_) => return,
                }
            }
        }
    }
    assert_eq!(again, body, "frames re-encode to the same bytes");
}
