//! `udp_endpoint`: a worker's UDP endpoint, holding two server connections and one client
//! connection, fed arbitrary datagrams from arbitrary sources. The input is a sequence of
//! `[len/8 u8][from u8][pick u8][bytes]` records, where `pick` may splice the id of a held
//! connection (or of another worker) into the datagram so that lookups hit. Nothing the
//! fuzzer writes can authenticate, so every datagram must be routed or dropped and counted,
//! no connection may report itself connected, and the servers, which have not heard from
//! their clients, must send nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_net::enc::cipher::CipherSuite;
use dap_stream::session::{SessionLimits, SessionParams, TransportKind};
use dap_stream::udp::connection::Event;
use dap_stream::udp::ecn::Ecn;
use dap_stream::udp::endpoint::{Endpoint, EndpointConfig, Routed};
use dap_stream::udp::packet::ConnectionId;
use dap_stream::{ChannelProcs, Mux, MuxConfig, SessionInfo};

use super::{Echo, NoWake};

fn params(n: u8) -> SessionParams {
    SessionParams {
        unreliable: b"F".to_vec(),
        udp: None,
        id: [n; 16],
        suite: if n.is_multiple_of(2) {
            CipherSuite::ChaCha20Poly1305
        } else {
            CipherSuite::Aes256Gcm
        },
        secret: [n.wrapping_add(1); 32],
        channels: b"EF".to_vec(),
        transport: TransportKind::Udp,
        limits: SessionLimits::default(),
        udp_port: 0,
        client: None,
    }
}

fn mux(p: &SessionParams) -> Mux {
    let mut procs = ChannelProcs::new();
    procs.ch_proc_add(b'E', |_| Box::new(Echo)).expect("valid id");
    procs.ch_proc_add(b'F', |_| Box::new(Echo)).expect("valid id");
    let info = SessionInfo { session_id: p.id, client: None };
    Mux::new(&p.channels, &procs, info, MuxConfig::default())
}

/// The target.
pub fn run(data: &[u8]) {
    let t0 = Instant::now();
    let mut ep = Endpoint::new(EndpointConfig {
        worker: 3,
        max_connections: 8,
        ..EndpointConfig::default()
    });
    let server = SocketAddr::from(([127, 0, 0, 2], 443));
    let mut cids = Vec::new();
    for n in 0..2 {
        let p = params(n);
        cids.push(ep.accept(t0, &p, mux(&p)).expect("room for two"));
    }
    let p = params(7);
    let client_cid = ConnectionId([3, 9, 9, 9, 9, 9, 9, 9]);
    cids.push(ep.connect(t0, &p, client_cid, server, mux(&p)).expect("room for three"));
    for &cid in &cids {
        ep.connection(cid).expect("held").mux().start(Arc::new(NoWake));
    }
    let mut now = t0;
    let mut rest = data;
    let mut buf = Vec::new();
    let (mut fed, mut routed) = (0u64, 0u64);
    while rest.len() >= 3 {
        let (len, from, pick) = (rest[0] as usize * 8, rest[1], rest[2]);
        rest = &rest[3..];
        let mut d = rest[..len.min(rest.len())].to_vec();
        rest = &rest[d.len()..];
        // Splice a known id (or one of another worker) where the id goes.
        if d.len() >= 9 && pick % 4 != 0 {
            let cid = match pick % 4 {
                1 => cids[pick as usize / 4 % cids.len()],
                2 => ConnectionId([pick, 1, 2, 3, 4, 5, 6, 7]),
                _ => ConnectionId([3, pick, 0, 0, 0, 0, 0, 0]),
            };
            d[0] = 0x40 | (d[0] & 0x20);
            d[1..9].copy_from_slice(&cid.0);
        }
        let src = SocketAddr::from(([127, 0, 0, 1 + from % 4], 1000 + from as u16));
        let ecn = Ecn::from_bits(pick >> 6);
        fed += 1;
        match ep.handle_datagram_ecn(now, src, Some(ecn), &mut d) {
            Routed::Connection(cid) => {
                assert!(cids.contains(&cid));
                routed += 1;
            }
            Routed::Forward(w) => assert_ne!(w, 3),
            Routed::Dropped => {}
        }
        now += Duration::from_millis(from as u64 % 64);
        if ep.poll_timeout().is_some_and(|t| t <= now) {
            ep.handle_timeout(now);
        }
        for _ in 0..4 {
            let Some(t) = ep.poll_transmit(now, 4, &mut buf) else { break };
            assert_eq!(t.destination, server, "only the client sends, and only to its server");
            assert_eq!(t.size, buf.len());
        }
        while let Some((_, e)) = ep.poll_event() {
            assert!(!matches!(e, Event::Connected), "nothing authentic arrived");
        }
    }
    let s = ep.stats();
    assert_eq!(s.not_ours + s.unknown_connection + s.forwarded + routed, fed);
}
