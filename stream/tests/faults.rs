//! Damaged, replayed, lost and malicious packets; slow readers; idle streams; expired
//! sessions. Each gets the documented outcome, is counted, and leaves other sessions alone.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use dap_stream::codec::frame::put_data_header;
use dap_stream::codec::packet::{self, PacketType, Sealer};
use dap_stream::session::SessionLimits;
use dap_stream::transport::StreamError;
use dap_stream::transport::http::upgrade_request;
use dap_stream::{HandleWriteError, MuxConfig, StreamConfig};
use util::relay::{Fault, relay};
use util::*;

/// Echo works on a fresh session of `srv`: the fault did not spread.
fn healthy(srv: &TestServer) {
    let c = connect(&srv.reactor, srv.addr, srv.session(b"E", None));
    c.channel(b'E').write(7, &b"ok?"[..]).unwrap();
    let (_, m) = c.messages.recv_timeout(TIMEOUT).expect("echo on a healthy session");
    assert_eq!(m.data, &b"ok?"[..]);
}

fn with_fault(fault: Fault) -> (TestServer, StreamError) {
    // A short keepalive: after a dropped packet, the client's next packet (a keepalive, as
    // it waits for an echo that cannot come) shows the gap.
    let limits =
        SessionLimits { keepalive: Duration::from_millis(200), ..SessionLimits::default() };
    let srv = echo_server(b"E", StreamConfig { limits, ..StreamConfig::default() });
    // Another session, open throughout, must not notice.
    let bystander = connect(&srv.reactor, srv.addr, srv.session(b"E", None));
    let addr = relay(srv.addr, fault);
    let c = connect(&srv.reactor, addr, srv.session(b"E", None));
    // One message at a time, each in its own packet: write, then wait for its echo or
    // for the end.
    let mut why = None;
    for i in 0..4u8 {
        if c.channel(b'E').write(i, vec![i; 100]).is_err() {
            break;
        }
        crossbeam_channel::select! {
            recv(c.messages) -> m => match m {
                Ok((_, m)) => assert_eq!(m.data, vec![i; 100]),
                // The handlers are gone: the stream ended.
                Err(_) => break,
            },
            recv(c.events) -> ev => {
                if let Ok(dap_stream::transport::http::StreamEvent::Closed(e)) = ev {
                    why = Some(e);
                    break;
                }
            }
            default(TIMEOUT) => panic!("neither echo nor close"),
        }
    }
    let why = why.unwrap_or_else(|| c.closed());
    bystander.channel(b'E').write(1, &b"fine"[..]).unwrap();
    assert_eq!(bystander.messages.recv_timeout(TIMEOUT).unwrap().1.data, &b"fine"[..]);
    healthy(&srv);
    (srv, why)
}

#[test]
fn a_flipped_bit_closes_the_stream_and_is_counted() {
    let (srv, why) = with_fault(Fault::Flip(1));
    wait_until("auth failure counted", || srv.stream.stats().auth_failures == 1);
    assert!(matches!(why, StreamError::PeerClosed { .. }), "{why:?}");
}

#[test]
fn a_replayed_packet_closes_the_stream_and_is_counted() {
    let (srv, _) = with_fault(Fault::Replay(1));
    wait_until("sequence error counted", || srv.stream.stats().sequence_errors == 1);
}

#[test]
fn a_dropped_packet_closes_the_stream_and_is_counted() {
    let (srv, _) = with_fault(Fault::Drop(0));
    wait_until("sequence error counted", || srv.stream.stats().sequence_errors == 1);
}

/// Opens a raw stream connection (upgrade done by hand) so the test can send any packet.
fn raw(srv: &TestServer, channels: &[u8]) -> (TcpStream, Sealer) {
    let params = srv.session(channels, None);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(upgrade_request(&params, "test").as_bytes()).unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    let (sealer, _) = params.packet_keys(false);
    (s, sealer)
}

fn send_frames(s: &mut TcpStream, sealer: &mut Sealer, frames: &[u8]) {
    let mut out = Vec::new();
    let start = Sealer::begin(&mut out);
    out.extend_from_slice(frames);
    sealer.seal(PacketType::Data, &mut out, start);
    s.write_all(&out).unwrap();
}

/// Reads until the server closes the connection.
fn until_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            return;
        }
    }
}

#[test]
fn a_frame_for_an_unknown_channel_closes_the_stream() {
    let srv = echo_server(b"E", StreamConfig::default());
    let (mut s, mut sealer) = raw(&srv, b"E");
    let mut f = Vec::new();
    put_data_header(&mut f, b'Z', 0, Some(1), false, 1);
    f.push(1);
    send_frames(&mut s, &mut sealer, &f);
    until_closed(&mut s);
    wait_until("unknown channel counted", || srv.stream.stats().unknown_channel == 1);
    healthy(&srv);
}

#[test]
fn a_message_over_the_limit_closes_the_stream() {
    let limits = SessionLimits {
        mux: MuxConfig { max_message: 1 << 20, ..MuxConfig::default() },
        ..SessionLimits::default()
    };
    let srv = echo_server(b"E", StreamConfig { limits, ..StreamConfig::default() });
    let (mut s, mut sealer) = raw(&srv, b"E");
    let mut f = Vec::new();
    put_data_header(&mut f, b'E', 0, Some((1 << 20) + 1), true, 10);
    f.extend_from_slice(&[0; 10]);
    send_frames(&mut s, &mut sealer, &f);
    until_closed(&mut s);
    wait_until("oversize message counted", || srv.stream.stats().oversize_messages == 1);
    healthy(&srv);
}

#[test]
fn garbage_after_the_upgrade_closes_the_stream() {
    let srv = echo_server(b"E", StreamConfig::default());
    let (mut s, _) = raw(&srv, b"E");
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    until_closed(&mut s);
    wait_until("decode error counted", || srv.stream.stats().decode_errors == 1);
}

#[test]
fn a_slow_reader_on_one_channel_does_not_stall_the_others_and_memory_stays_bounded() {
    let srv = echo_server(b"SF", StreamConfig::default());
    let params = srv.session(b"SF", None);
    // The client never reads 'S': its echoes back up into the server, which must stop
    // reading 'S' in turn, until the client's own writes to 'S' are refused.
    let c = connect_paused(&srv.reactor, srv.addr, params, b"S").unwrap();
    let slow = c.channel(b'S').clone();
    let mut accepted = 0usize;
    let chunk = vec![0u8; 16 << 10];
    let deadline = Instant::now() + TIMEOUT;
    let mut full_streak = 0;
    while full_streak < 50 {
        assert!(Instant::now() < deadline, "back-pressure never reached the writer");
        match slow.write(1, chunk.clone()) {
            Ok(()) => {
                accepted += chunk.len();
                full_streak = 0;
            }
            Err(HandleWriteError::Full(_)) => {
                full_streak += 1;
                // Meanwhile the other channel flows.
                c.channel(b'F').write(2, &b"ping"[..]).unwrap();
                let (id, m) = c.messages.recv_timeout(TIMEOUT).expect("fast channel answers");
                assert_eq!((id, &m.data[..]), (b'F', &b"ping"[..]));
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    // Everything between the writer and the paused reader is bounded by queues and
    // windows (client handle + send queue, server echo queue, both channel windows, the
    // sockets' buffers); an unbounded server would take writes forever.
    let bound = 4 * (256 << 10) + 2 * (256 << 10) + (8 << 20);
    assert!(accepted <= bound, "{accepted} bytes accepted for a reader that never reads");
}

#[test]
fn an_idle_peer_gets_keepalives_then_is_closed() {
    let limits = SessionLimits {
        keepalive: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(200),
        ..SessionLimits::default()
    };
    let srv = echo_server(b"E", StreamConfig { limits, ..StreamConfig::default() });
    // A client that answers keepalives stays up well past the idle timeout.
    let live = connect(&srv.reactor, srv.addr, srv.session(b"E", None));
    // A raw client that never answers is closed.
    let (mut s, _) = raw(&srv, b"E");
    until_closed(&mut s);
    wait_until("idle timeout counted", || srv.stream.stats().idle_timeouts == 1);
    wait_until("several keepalives", || srv.stream.stats().keepalives_sent >= 5);
    assert_eq!(srv.stream.stats().idle_timeouts, 1, "the answering client was kept");
    live.channel(b'E').write(1, &b"alive"[..]).unwrap();
    assert_eq!(live.messages.recv_timeout(TIMEOUT).unwrap().1.data, &b"alive"[..]);
}

#[test]
fn an_expired_session_cannot_attach() {
    let limits =
        SessionLimits { connect_timeout: Duration::from_millis(50), ..SessionLimits::default() };
    let srv = echo_server(b"E", StreamConfig { limits, ..StreamConfig::default() });
    let params = srv.session(b"E", None);
    let created = Instant::now();
    wait_until("the connect timeout passed", || created.elapsed() > Duration::from_millis(100));
    let err = try_connect(&srv.reactor, srv.addr, params).err().expect("refused");
    assert_eq!(err, StreamError::UpgradeRefused(404));
    let s = srv.stream.stats();
    assert_eq!((s.attach_unknown, s.sessions_expired), (1, 1));
}

#[test]
fn a_close_packet_from_the_peer_ends_the_stream_cleanly() {
    let srv = echo_server(b"E", StreamConfig::default());
    let (mut s, mut sealer) = raw(&srv, b"E");
    let mut out = Vec::new();
    let start = Sealer::begin(&mut out);
    packet::close_payload(&mut out, 0, "bye");
    sealer.seal(PacketType::Close, &mut out, start);
    s.write_all(&out).unwrap();
    until_closed(&mut s);
    wait_until("stream closed", || srv.stream.stats().streams_closed == 1);
    let st = srv.stream.stats();
    assert_eq!((st.streams_open, st.protocol_errors, st.decode_errors), (0, 0, 0));
}

#[test]
fn a_packet_sealed_under_a_retired_key_closes_the_stream() {
    let srv = echo_server(b"E", StreamConfig::default());
    let params = srv.session(b"E", None);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(upgrade_request(&params, "test").as_bytes()).unwrap();
    // A sender that updates its key every 2 packets, and a copy that never does.
    let mut p2 = params.clone();
    p2.limits.rekey_packets = 2;
    let (mut new, _) = p2.packet_keys(false);
    let (mut old, _) = params.packet_keys(false);
    let mut frame = Vec::new();
    put_data_header(&mut frame, b'E', 0, Some(1), false, 1);
    frame.push(b'x');
    // Packets 0 and 1 under generation 0, packet 2 under generation 1: echoed.
    for _ in 0..3 {
        send_frames(&mut s, &mut new, &frame);
    }
    // The lagging copy catches up to sequence 3, still under generation 0.
    for _ in 0..3 {
        let mut out = Vec::new();
        let start = Sealer::begin(&mut out);
        old.seal(PacketType::Keepalive, &mut out, start);
    }
    send_frames(&mut s, &mut old, &frame);
    until_closed(&mut s);
    wait_until("authentication failure counted", || srv.stream.stats().auth_failures == 1);
    let st = srv.stream.stats();
    assert_eq!(st.key_updates_received, 1, "the server followed the real update");
    healthy(&srv);
}

#[test]
fn a_version_1_client_is_refused_at_the_upgrade() {
    let srv = echo_server(b"E", StreamConfig::default());
    let params = srv.session(b"E", None);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let req = upgrade_request(&params, "test").replace("dap-stream/2", "dap-stream/1");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 426");
}
