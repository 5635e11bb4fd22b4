//! The exact forms of requests and packets that `docs/PROTOCOL.md` §5–§8 pins down, sent by
//! hand: the stream_ctl request-target, cipher codes, channel ids in the `/stream/` URL, the
//! upgrade headers and the session id's case, and what a receiver does with odd packets.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use dap_net::enc::cipher::CipherSuite;
use dap_net::enc::client::handshake_blocking;
use dap_net::enc::{EncSession, SealedRequest};
use dap_net::http::client::ClientConfig;
use dap_stream::StreamConfig;
use dap_stream::codec::frame::{self, put_data_header};
use dap_stream::codec::packet::{self, Opener, PacketType, Sealer};
use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::session::{SessionParams, TransportKind, hex};
use dap_stream::transport::http::upgrade_request;
use util::*;

/// Reads one HTTP response head (up to the blank line) from `s`.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("response head");
        head.push(b[0]);
    }
    String::from_utf8(head).expect("ASCII head")
}

fn status_of(head: &str) -> u16 {
    head.get(9..12).and_then(|s| s.parse().ok()).expect("status line")
}

/// Sends `raw` on a new connection and reads the whole answer (the request asks to close).
fn exchange(srv: &TestServer, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(raw).unwrap();
    let head = read_head(&mut s);
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    (status_of(&head), head.to_ascii_lowercase(), body)
}

/// `POST target` with `sealed`'s headers and body, as an enc_http client sends it.
fn post(srv: &TestServer, target: &str, sealed: &SealedRequest) -> (u16, String, Vec<u8>) {
    let mut raw = format!("POST {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in &sealed.headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str(&format!("Content-Length: {}\r\n\r\n", sealed.body.len()));
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(&sealed.body);
    exchange(srv, &raw)
}

fn enc_session(srv: &TestServer) -> EncSession {
    let client = client_reactor();
    let w = client.worker(0).unwrap();
    let pin = Some(srv.enc.node_public_key());
    handshake_blocking(w, &srv.base_url(), &CipherSuite::ALL, None, pin, &ClientConfig::default())
        .expect("handshake")
}

fn ctl_body(channels: &[u8]) -> Vec<u8> {
    let req = CtlRequest {
        channels: channels.to_vec(),
        suite: None,
        transport: TransportKind::Http,
        unreliable: Vec::new(),
    };
    req.encode()
}

#[test]
fn the_stream_ctl_target_is_the_path_then_the_sealed_sub_path_with_no_slash() {
    let srv = echo_server(b"E", StreamConfig::default());
    let enc = enc_session(&srv);
    let sealed = enc.seal_request("POST", "", None, &ctl_body(b"E")).unwrap();
    // `/stream_ctl/` then the sealed sub-path: the `/` is not base64url.
    let (status, head, _) = post(&srv, &format!("/stream_ctl/{}", sealed.path_suffix), &sealed);
    assert_eq!(status, 400);
    assert!(head.contains("enc-error: malformed"), "{head}");
    // The refusal used nothing up: the same request, at `/stream_ctl<sealed>`, is served.
    assert_eq!(sealed.target("/stream_ctl"), format!("/stream_ctl{}", sealed.path_suffix));
    let (status, _, body) = post(&srv, &sealed.target("/stream_ctl"), &sealed);
    assert_eq!(status, 200);
    let answer = enc.open_response(&sealed, 200, &body).unwrap();
    decode_answer(&answer, Default::default()).expect("a session");
    // A sub-path and a query are opened (so authenticated) and ignored.
    let sealed = enc.seal_request("POST", "x/y", Some("a=b"), &ctl_body(b"E")).unwrap();
    let (status, _, body) = post(&srv, &sealed.target("/stream_ctl"), &sealed);
    assert_eq!(status, 200);
    decode_answer(&enc.open_response(&sealed, 200, &body).unwrap(), Default::default()).unwrap();
    assert_eq!(srv.stream.stats().sessions_created, 2);
}

#[test]
fn stream_ctl_names_the_first_unknown_channel_in_a_sealed_404() {
    let srv = echo_server(b"E", StreamConfig::default());
    let enc = enc_session(&srv);
    let sealed = enc.seal_request("POST", "", None, &ctl_body(b"EZY")).unwrap();
    let (status, head, body) = post(&srv, &sealed.target("/stream_ctl"), &sealed);
    assert_eq!(status, 404);
    assert!(!head.contains("enc-error"), "a sealed answer, not an enc_http refusal");
    let reason = enc.open_response(&sealed, 404, &body).unwrap();
    assert_eq!(String::from_utf8(reason).unwrap(), "unknown channel 'Z'");
}

#[test]
fn an_undefined_cipher_code_is_400_and_a_defined_one_not_offered_is_406() {
    let config = StreamConfig { suites: vec![CipherSuite::ChaCha20Poly1305], ..Default::default() };
    let srv = echo_server(b"E", config);
    let now = Instant::now();
    let ctl = |cipher: u8, transport: u8| {
        srv.stream.stream_ctl(&[1, cipher, transport, 1, b'E'], None, now)
    };
    assert_eq!(ctl(0x03, 1).unwrap_err().status(), 400);
    assert_eq!(ctl(0xff, 1).unwrap_err().status(), 400);
    assert_eq!(ctl(0x02, 1).unwrap_err().status(), 406);
    assert_eq!(ctl(0x01, 3).unwrap_err().status(), 400, "an undefined transport");
    assert_eq!(ctl(0x01, 2).unwrap_err().status(), 406, "UDP, not served here");
    assert!(ctl(0x01, 1).is_ok() && ctl(0x00, 1).is_ok());
}

/// A `GET /stream/...` upgrade request, written out by hand.
fn upgrade(srv: &TestServer, target: &str, extra_headers: &str) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let raw = format!("GET {target} HTTP/1.1\r\nHost: test\r\n{extra_headers}\r\n");
    s.write_all(raw.as_bytes()).unwrap();
    let head = read_head(&mut s);
    let status = status_of(&head);
    (s, status)
}

fn send(s: &mut TcpStream, sealer: &mut Sealer, ty: PacketType, payload: &[u8]) {
    let mut out = Vec::new();
    let start = Sealer::begin(&mut out);
    out.extend_from_slice(payload);
    sealer.seal(ty, &mut out, start);
    s.write_all(&out).unwrap();
}

/// Reads the server's next packet: its type and payload.
fn recv(s: &mut TcpStream, opener: &mut Opener, params: &SessionParams) -> (PacketType, Vec<u8>) {
    let mut buf = vec![0u8; packet::HEADER_LEN];
    s.read_exact(&mut buf).expect("a packet header");
    let hdr = packet::parse_header(&buf, params.limits.max_payload).unwrap().unwrap();
    buf.resize(hdr.packet_len(), 0);
    s.read_exact(&mut buf[packet::HEADER_LEN..]).expect("a packet body");
    let plain = opener.open(&hdr, &mut buf).expect("an authentic packet");
    (hdr.ty, plain.to_vec())
}

/// Echo through a stream opened by hand: one message of type 9 on `chan`.
fn echo_once(s: &mut TcpStream, params: &SessionParams, chan: u8) {
    let (mut sealer, mut opener) = params.packet_keys(false);
    let mut f = Vec::new();
    put_data_header(&mut f, chan, 9, Some(2), false, 2);
    f.extend_from_slice(b"hi");
    send(s, &mut sealer, PacketType::Data, &f);
    loop {
        let (ty, plain) = recv(s, &mut opener, params);
        if ty != PacketType::Data {
            continue;
        }
        let mut at = &plain[..];
        while !at.is_empty() {
            let (fr, n) = frame::decode(at).unwrap();
            at = &at[n..];
            if let frame::Frame::Data { chan: c, ty, payload, .. } = fr {
                assert_eq!((c, ty, payload), (chan, 9, &b"hi"[..]));
                return;
            }
        }
    }
}

#[test]
fn the_upgrade_needs_the_upgrade_token_not_connection_and_one_lowercase_session_id() {
    let srv = echo_server(b"E", StreamConfig::default());
    let token = "Upgrade: dap-stream/2\r\n";
    // No Upgrade header (Connection alone): 426.
    let p = srv.session(b"E", None);
    let target = format!("/stream/E?session_id={}", hex(&p.id));
    assert_eq!(upgrade(&srv, &target, "Connection: Upgrade\r\n").1, 426);
    // A session id of the wrong length, not hex, in uppercase, or given twice (even the
    // same twice): 400 (PROTOCOL §6).
    let id = hex(&p.id);
    for bad in [
        format!("/stream/E?session_id={}", &id[1..]),
        format!("/stream/E?session_id=%{}", &id[1..]),
        format!("/stream/E?session_id={}", id.to_ascii_uppercase()),
        format!("/stream/E?session_id={id}&session_id={id}"),
        format!("/stream/E?session_id={id}&x=1&session_id=00"),
        "/stream/E?x=1".to_string(),
    ] {
        assert_eq!(upgrade(&srv, &bad, token).1, 400, "{bad}");
    }
    // None spent the session. The token among others, in another case, without
    // `Connection: Upgrade`, and the session id after another parameter: 101.
    let target = format!("/stream/E?x=1&session_id={id}");
    let (mut s, status) = upgrade(&srv, &target, "Upgrade: websocket, DAP-Stream/2\r\n");
    assert_eq!(status, 101);
    echo_once(&mut s, &p, b'E');
}

#[test]
fn requests_without_host_get_400() {
    let srv = echo_server(b"E", StreamConfig::default());
    let p = srv.session(b"E", None);
    let raw = format!(
        "GET /stream/E?session_id={} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: dap-stream/2\r\n\r\n",
        hex(&p.id)
    );
    assert_eq!(exchange(&srv, raw.as_bytes()).0, 400);
    let init = b"POST /enc_init HTTP/1.1\r\nContent-Length: 1\r\n\r\n\x01";
    assert_eq!(exchange(&srv, init).0, 400);
    // The session is still pending: the refusal came before the route.
    let target = format!("/stream/E?session_id={}", hex(&p.id));
    assert_eq!(upgrade(&srv, &target, "Upgrade: dap-stream/2\r\n").1, 101);
}

#[test]
fn any_printable_channel_id_travels_in_the_url_percent_encoded() {
    let ids = b"/?#%E";
    let srv = echo_server(ids, StreamConfig::default());
    // dap's own client encodes them.
    let p = srv.session(ids, None);
    let req = upgrade_request(&p, "test");
    assert!(req.starts_with("GET /stream/%2F%3F%23%25E?session_id="), "{req}");
    let c = connect(&srv.reactor, srv.addr, p);
    for &id in ids {
        c.channel(id).write(1, vec![id]).unwrap();
        let (got, m) = c.messages.recv_timeout(TIMEOUT).unwrap();
        assert_eq!((got, &m.data[..]), (id, &[id][..]));
    }
    // Lowercase hex digits decode too.
    let p = srv.session(b"/#", None);
    let target = format!("/stream/%2f%23?session_id={}", hex(&p.id));
    let (mut s, status) = upgrade(&srv, &target, "Upgrade: dap-stream/2\r\n");
    assert_eq!(status, 101);
    echo_once(&mut s, &p, b'#');
    // Ids written raw (those a URL can carry) are still taken as they are.
    let p = srv.session(b"%/E", None);
    let target = format!("/stream/%/E?session_id={}", hex(&p.id));
    assert_eq!(upgrade(&srv, &target, "Upgrade: dap-stream/2\r\n").1, 101);
    // Other channels than the session's: 400, and the session is spent.
    let p = srv.session(b"#E", None);
    let id = hex(&p.id);
    let wrong = format!("/stream/%23%45%45?session_id={id}");
    assert_eq!(upgrade(&srv, &wrong, "Upgrade: dap-stream/2\r\n").1, 400);
    let right = format!("/stream/%23E?session_id={id}");
    assert_eq!(upgrade(&srv, &right, "Upgrade: dap-stream/2\r\n").1, 404);
}

/// A stream attached by hand, with its keys.
fn raw_stream(srv: &TestServer) -> (TcpStream, SessionParams, Sealer, Opener) {
    let p = srv.session(b"E", None);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(upgrade_request(&p, "test").as_bytes()).unwrap();
    assert_eq!(status_of(&read_head(&mut s)), 101);
    let (sealer, opener) = p.packet_keys(false);
    (s, p, sealer, opener)
}

#[test]
fn a_keepalive_with_a_payload_is_answered_alive_and_its_payload_ignored() {
    let srv = echo_server(b"E", StreamConfig::default());
    let (mut s, p, mut sealer, mut opener) = raw_stream(&srv);
    send(&mut s, &mut sealer, PacketType::Keepalive, b"ignored bytes");
    loop {
        match recv(&mut s, &mut opener, &p) {
            (PacketType::Alive, payload) => {
                assert!(payload.is_empty());
                break;
            }
            (PacketType::Data, _) => {}
            other => panic!("{other:?}"),
        }
    }
    // The stream goes on.
    let mut f = Vec::new();
    put_data_header(&mut f, b'E', 9, Some(2), false, 2);
    f.extend_from_slice(b"hi");
    send(&mut s, &mut sealer, PacketType::Data, &f);
    loop {
        if recv(&mut s, &mut opener, &p).0 == PacketType::Data {
            break;
        }
    }
    let st = srv.stream.stats();
    assert_eq!((st.protocol_errors, st.decode_errors), (0, 0));
}

#[test]
fn a_close_is_not_answered() {
    let srv = echo_server(b"E", StreamConfig::default());
    let (mut s, _, mut sealer, _) = raw_stream(&srv);
    let mut close = Vec::new();
    packet::close_payload(&mut close, 0, "bye");
    send(&mut s, &mut sealer, PacketType::Close, &close);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the server sent {} bytes after a CLOSE", rest.len());
    // A CLOSE too short to hold a code ends the stream the same way.
    let (mut s, _, mut sealer, _) = raw_stream(&srv);
    send(&mut s, &mut sealer, PacketType::Close, b"x");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    wait_until("both streams closed", || srv.stream.stats().streams_closed == 2);
    assert_eq!(srv.stream.stats().decode_errors, 0);
}

/// Sends `frames` in one DATA packet and expects the server to close the stream with
/// CLOSE code 1, counting a decode error.
fn refused_as_malformed(frames: &[u8]) {
    let srv = echo_server(b"E", StreamConfig::default());
    let (mut s, p, mut sealer, mut opener) = raw_stream(&srv);
    send(&mut s, &mut sealer, PacketType::Data, frames);
    loop {
        match recv(&mut s, &mut opener, &p) {
            (PacketType::Close, payload) => {
                assert_eq!(packet::parse_close(&payload).unwrap().0, 1);
                break;
            }
            (PacketType::Data, _) => {}
            other => panic!("{other:?}"),
        }
    }
    wait_until("decode error counted", || srv.stream.stats().decode_errors == 1);
}

#[test]
fn a_data_frame_on_channel_0_is_fatal() {
    let mut f = Vec::new();
    put_data_header(&mut f, 0, 1, Some(1), false, 1);
    f.push(b'x');
    refused_as_malformed(&f);
}

#[test]
fn a_credit_frame_of_the_wrong_length_is_fatal() {
    // Version 1's 4-byte limit, on the connection.
    refused_as_malformed(&[0, 1, 0x80, 0, 0, 0, 0, 4, 0, 1, 0, 0]);
}

#[test]
fn echo_returns_every_message_with_its_type_and_bytes_in_order() {
    let srv = echo_server(b"E", StreamConfig::default());
    let c = connect(&srv.reactor, srv.addr, srv.session(b"E", None));
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let sent: Vec<(u8, Vec<u8>)> =
        vec![(0, Vec::new()), (255, b"x".to_vec()), (7, big), (1, b"last".to_vec())];
    for (ty, data) in &sent {
        c.channel(b'E').write_timeout(*ty, data.clone(), TIMEOUT).unwrap();
    }
    for (ty, data) in &sent {
        let (id, m) = c.messages.recv_timeout(TIMEOUT).expect("an echo");
        assert_eq!((id, m.ty, &m.data[..]), (b'E', *ty, &data[..]));
    }
}
