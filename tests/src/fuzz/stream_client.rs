//! `stream_client`: what a client reads from the server before its stream is up. The first
//! byte picks: even, the answer to the upgrade request (`101` with the stream's `Upgrade`
//! token, or a refusal); odd, the stream_ctl answer (status 200 when bit 1 is set, else the
//! next two bytes), read as a client reads it, then used as a client uses it: the upgrade
//! request it leads to (which the server must read back to the same session and channels),
//! the packet keys, and, for UDP, the server's address and a client connection that sends
//! its first datagrams and runs its timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_net::http::{HttpLimits, parse_request_head};
use dap_stream::client::{CtlError, read_ctl_answer, udp_server_addr};
use dap_stream::server::parse_stream_target;
use dap_stream::session::ctl::encode_answer;
use dap_stream::session::{SessionParams, TransportKind, url_names_channels};
use dap_stream::transport::http::{parse_upgrade_response, upgrade_request};
use dap_stream::udp::connection::{Connection, ConnectionConfig, Side};
use dap_stream::udp::packet::ConnectionId;
use dap_stream::{ChannelProcs, Mux, MuxConfig, SessionInfo};

use super::{Echo, NoWake};

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    if which % 2 == 0 {
        upgrade_answer(body);
        return;
    }
    let (status, body) = match body {
        _ if which & 2 != 0 => (200, body),
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return,
    };
    match read_ctl_answer(status, body, MuxConfig::default()) {
        Ok(params) => {
            assert_eq!(status, 200);
            assert_eq!(encode_answer(&params), body, "one encoding per answer");
            use_answer(params);
        }
        Err(CtlError::Refused { status: s, reason }) => {
            assert!(s == status && status != 200);
            assert!(reason.chars().count() <= 256);
        }
        Err(CtlError::BadAnswer(_)) => assert_eq!(status, 200),
        Err(e) => panic!("reading an answer made no request: {e}"),
    }
}

fn upgrade_answer(body: &[u8]) {
    match parse_upgrade_response(body) {
        Ok(Some(n)) => {
            assert!(n <= body.len() && body[..n].ends_with(b"\n"));
            // The head is complete at `n` bytes, and not before.
            assert_eq!(parse_upgrade_response(&body[..n]), Ok(Some(n)));
            assert_eq!(parse_upgrade_response(&body[..n - 1]), Ok(None));
            let head = String::from_utf8_lossy(&body[..n]).to_ascii_lowercase();
            assert!(head.contains("dap-stream/2"), "an upgrade without the token");
        }
        Ok(None) => {}
        Err(status) => assert!(status != 101 || !body.is_empty()),
    }
}

/// Does with an answer what a client does.
fn use_answer(params: SessionParams) {
    assert!(params.limits.max_payload >= 1024);
    assert!(!params.channels.is_empty());
    assert!(params.unreliable.iter().all(|c| params.channels.contains(c)));
    // The upgrade request names the session and its channels so the server finds both.
    let req = upgrade_request(&params, "node.test:8079");
    let (head, used) = parse_request_head(req.as_bytes(), &HttpLimits::default())
        .expect("the upgrade request parses")
        .expect("the upgrade request is complete");
    assert_eq!(used, req.len());
    let target = parse_stream_target(&head).expect("the server takes the upgrade request");
    assert_eq!(target.session_id, Some(params.id));
    assert!(url_names_channels(target.channels, &params.channels));
    let _keys = params.packet_keys(false);
    let mut procs = ChannelProcs::new();
    for &id in &params.channels {
        procs.ch_proc_add(id, |_| Box::new(Echo)).expect("channels of an answer are valid");
    }
    let info = SessionInfo { session_id: params.id, client: None };
    let mut mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
    if params.transport == TransportKind::Http {
        mux.start(Arc::new(NoWake));
        let mut out = Vec::new();
        while out.len() < 1 << 16 && mux.poll_payload(&mut out, params.limits.max_payload) {}
        return;
    }
    let route = params.udp.clone().expect("a UDP answer has its route");
    let ctl = SocketAddr::from(([192, 0, 2, 1], 8079));
    let server = match udp_server_addr(&params, ctl) {
        Ok(a) => a,
        Err(_) => {
            assert!(route.host.parse::<std::net::IpAddr>().is_err());
            return;
        }
    };
    assert_eq!(server.port(), params.udp_port);
    if route.host.is_empty() {
        assert_eq!(server.ip(), ctl.ip());
    }
    let config = ConnectionConfig {
        idle_timeout: params.limits.idle_timeout,
        keepalive: params.limits.keepalive,
        rekey_packets: params.limits.rekey_packets,
        ..Default::default()
    };
    let t0 = Instant::now();
    let cid = ConnectionId(route.cid);
    let mut conn = Connection::new(Side::Client, &params, cid, Some(server), mux, config, t0);
    conn.mux().start(Arc::new(NoWake));
    let mut buf = Vec::new();
    let mut now = t0;
    for step in 0..6u32 {
        for _ in 0..4 {
            let Some(t) = conn.poll_transmit(now, 4, &mut buf) else { break };
            assert_eq!(t.destination, server);
            assert_eq!(t.size, buf.len());
        }
        while conn.poll_event().is_some() {}
        now = match conn.poll_timeout() {
            Some(t) if t > now => t,
            _ => now + Duration::from_millis(1 << (2 * step)),
        };
        conn.handle_timeout(now);
    }
}
