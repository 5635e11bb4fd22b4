//! `stream_path`: the `/stream/<channels>?session_id=<hex>` request as the server reads it,
//! against a table holding one pending session. The input is `[n u8][n % 8 channel ids]`
//! (the session's channels, `EF` when they are not valid ones), then a request head.
//!
//! The method and the `Upgrade` token decide 405 and 426; a session id is read only from
//! exactly one `session_id=` of 32 lowercase hex digits, and reads back to them; the channels
//! segment names the session's channels exactly when, percent-decoded (or as written), it
//! is their bytes; the encoding a client writes always names them; a session attaches once.

use std::time::{Duration, Instant};

use dap_net::enc::cipher::CipherSuite;
use dap_net::http::{HttpLimits, parse_request_head};
use dap_stream::server::parse_stream_target;
use dap_stream::session::{
    AttachError, SessionLimits, SessionParams, SessionTable, TransportKind, channels_to_url, hex,
    url_names_channels,
};

const ID: [u8; 16] = [0xab; 16];

/// The target.
pub fn run(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = usize::from(n % 8).min(rest.len());
    let (ids, request) = rest.split_at(n);
    let valid = |ids: &[u8]| {
        !ids.is_empty()
            && ids
                .iter()
                .enumerate()
                .all(|(i, c)| (0x21..=0x7e).contains(c) && !ids[..i].contains(c))
    };
    let channels = if valid(ids) { ids.to_vec() } else { b"EF".to_vec() };
    // What a client writes names the channels.
    assert!(url_names_channels(&channels_to_url(&channels), &channels));
    let Ok(Some((head, _))) = parse_request_head(request, &HttpLimits::default()) else { return };
    let target = match parse_stream_target(&head) {
        Ok(t) => t,
        Err((405, _)) => return assert_ne!(head.method(), "GET"),
        Err((426, _)) => {
            let token =
                head.headers().filter(|(n, _)| n.eq_ignore_ascii_case("upgrade")).take(1).any(
                    |(_, v)| {
                        v.split(|&b| b == b',')
                            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"dap-stream/2"))
                    },
                );
            return assert!(head.method() == "GET" && !token);
        }
        Err(e) => panic!("an unexpected refusal {e:?}"),
    };
    assert_eq!(head.method(), "GET");
    if let Some(rest) = head.path().strip_prefix("/stream/") {
        assert_eq!(target.channels, rest);
    }
    if let Some(id) = target.session_id {
        let written: Vec<&str> = head
            .query()
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|kv| kv.strip_prefix("session_id="))
            .collect();
        assert_eq!(written, [hex(&id).as_str()], "one id, lowercase, as written");
    }
    // The segment names exactly the ids it decodes to.
    if let Some(decoded) = percent_decoded(target.channels) {
        assert!(url_names_channels(target.channels, &decoded));
        assert_eq!(
            url_names_channels(target.channels, &channels),
            decoded == channels || target.channels.as_bytes() == channels
        );
    }
    let table = SessionTable::new(4);
    let now = Instant::now();
    let params = SessionParams {
        id: ID,
        suite: CipherSuite::ChaCha20Poly1305,
        secret: [1; 32],
        channels: channels.clone(),
        transport: TransportKind::Http,
        limits: SessionLimits::default(),
        udp_port: 0,
        client: None,
        unreliable: Vec::new(),
        udp: None,
    };
    table.insert(params, now, now + Duration::from_secs(60)).expect("room");
    let Some(id) = target.session_id else { return };
    match table.attach(&id, now) {
        Ok(p) => {
            assert_eq!(id, ID);
            assert_eq!(p.channels, channels);
            assert!(matches!(table.attach(&id, now), Err(AttachError::AlreadyAttached)));
            table.detach(&id);
        }
        Err(e) => {
            assert_ne!(id, ID);
            assert!(matches!(e, AttachError::Unknown));
        }
    }
}

/// `%XX` decoded (either case), independently of the server's decoder; `None` for a `%`
/// without two hex digits after it.
fn percent_decoded(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = s.as_bytes();
    while let Some((&c, rest)) = b.split_first() {
        if c == b'%' {
            let h = rest.get(..2)?;
            let h = std::str::from_utf8(h).ok()?;
            if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(h, 16).ok()?);
            b = &rest[2..];
        } else {
            out.push(c);
            b = rest;
        }
    }
    Some(out)
}
