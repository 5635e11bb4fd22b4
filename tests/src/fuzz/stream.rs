//! `stream`: the stream decoders. The first byte picks the target: 0, received DATA
//! payloads into a live mux of channels `E` and `F` (frame decoder, reassembly, flow
//! control), then whatever the mux has to send back; 1, the stream packet header parser and
//! opener (nothing may open without the key); 2, the stream_ctl request and answer decoders
//! (a decoded request re-encodes to the same bytes). Nothing may panic.

use std::sync::Arc;

use dap_net::enc::cipher::CipherSuite;
use dap_stream::codec::packet::{self, Direction, KeyChain, Opener};
use dap_stream::session::TransportKind;
use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::{ChannelProcs, Mux, MuxConfig, SessionInfo};

use super::{Echo, NoWake};

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => {
            let mut procs = ChannelProcs::new();
            for id in [b'E', b'F'] {
                procs.ch_proc_add(id, |_| Box::new(Echo)).expect("valid ids");
            }
            let config = MuxConfig {
                max_message: 1 << 16,
                channel_window: 4096,
                conn_window: 8192,
                ..MuxConfig::default()
            };
            let info = SessionInfo { session_id: [0; 16], client: None };
            let mut mux = Mux::new(b"EF", &procs, info, config);
            mux.start(Arc::new(NoWake));
            // Split the input into payloads at 0xff bytes, so several packets reach it.
            for payload in body.split(|&b| b == 0xff) {
                if mux.handle_payload(payload).is_err() {
                    break;
                }
                let mut out = Vec::new();
                while mux.poll_payload(&mut out, 1 << 14) {
                    out.clear();
                }
                mux.notify_writable();
            }
        }
        1 => {
            let chain = KeyChain::new(CipherSuite::ChaCha20Poly1305, [3; 32]);
            let mut opener = Opener::new(chain, Direction::ClientToServer, 1 << 62);
            let mut buf = body.to_vec();
            if let Ok(Some(hdr)) = packet::parse_header(&buf, 1 << 16)
                && buf.len() >= hdr.packet_len()
            {
                assert!(opener.open(&hdr, &mut buf).is_err(), "forged packet opened");
            }
        }
        _ => {
            if let Ok(req) = CtlRequest::decode(body) {
                // Canonical bytes, except that a UDP request may leave out an empty list of
                // unreliable channels (PROTOCOL §5: absent means 0), which encode writes.
                let e = req.encode();
                let short = req.transport == TransportKind::Udp
                    && req.unreliable.is_empty()
                    && e[..e.len() - 1] == *body;
                assert!(e == body || short, "{e:?} from {body:?}");
                assert_eq!(CtlRequest::decode(&e).map(|r| r.encode()), Ok(e));
            }
            let _ = decode_answer(body, MuxConfig::default());
        }
    }
}
