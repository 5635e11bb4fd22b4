//! `udp_conn`: a server UDP connection fed authentic packets whose frames the fuzzer
//! chooses. The input is a sequence of `[ecn:2 len:14][pn u16][frames]` records (the top
//! two bits of the first field are the datagram's ECN codepoint), each sealed with the
//! client's real key (so the frames reach the connection's logic: ACKs of anything, channel
//! data at any offset, credit, close...), interleaved with the connection's own transmits
//! and timers. Nothing may panic, and what it sends must stay within a datagram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_net::enc::cipher::CipherSuite;
use dap_stream::codec::keys::KeyChain;
use dap_stream::codec::packet::Direction;
use dap_stream::session::{SessionLimits, SessionParams, TransportKind};
use dap_stream::udp::connection::{Connection, ConnectionConfig, Side};
use dap_stream::udp::ecn::Ecn;
use dap_stream::udp::packet::{self, ConnectionId, Header, LABELS};
use dap_stream::{ChannelProcs, Mux, MuxConfig, SessionInfo};

use super::{Echo, NoWake};

/// The target.
pub fn run(data: &[u8]) {
    let params = SessionParams {
        unreliable: b"F".to_vec(),
        udp: None,
        id: [1; 16],
        suite: CipherSuite::ChaCha20Poly1305,
        secret: [2; 32],
        channels: b"EF".to_vec(),
        transport: TransportKind::Udp,
        limits: SessionLimits::default(),
        udp_port: 0,
        client: None,
    };
    let mut procs = ChannelProcs::new();
    procs.ch_proc_add(b'E', |_| Box::new(Echo)).expect("valid id");
    procs.ch_proc_add(b'F', |_| Box::new(Echo)).expect("valid id");
    let info = SessionInfo { session_id: [1; 16], client: None };
    let mux = Mux::new(b"EF", &procs, info, MuxConfig::default());
    let cid = ConnectionId([0, 1, 2, 3, 4, 5, 6, 7]);
    let peer = SocketAddr::from(([127, 0, 0, 1], 9));
    let t0 = Instant::now();
    let config = ConnectionConfig::default();
    let mut conn = Connection::new(Side::Server, &params, cid, None, mux, config, t0);
    conn.mux().start(Arc::new(NoWake));
    let (c2s, _) = params.udp_secrets();
    let key = KeyChain::with_labels(LABELS, params.suite, c2s).key();
    let mut rest = data;
    let mut now = t0;
    let mut buf = Vec::new();
    while rest.len() >= 4 {
        let first = u16::from_be_bytes([rest[0], rest[1]]);
        let ecn = Ecn::from_bits((first >> 14) as u8);
        let len = (first & 0x3fff) as usize;
        let pn = u16::from_be_bytes([rest[2], rest[3]]) as u64;
        rest = &rest[4..];
        let frames = &rest[..len.min(rest.len())];
        rest = &rest[frames.len()..];
        let mut p = Vec::new();
        let start = packet::begin(&mut p);
        p.extend_from_slice(frames);
        if frames.is_empty() {
            p.push(1);
        }
        let hdr = Header { cid, key_phase: false, pn };
        packet::seal(&key, Direction::ClientToServer, &hdr, &mut p, start);
        conn.handle_datagram_ecn(now, peer, Some(ecn), &mut p);
        now += Duration::from_millis(pn % 50);
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        for _ in 0..8 {
            let Some(t) = conn.poll_transmit(now, 4, &mut buf) else { break };
            assert!(t.size <= 4 * config.mtu.max.max(config.mtu.base));
            assert_eq!(t.size, buf.len());
        }
        while conn.poll_event().is_some() {}
    }
}
