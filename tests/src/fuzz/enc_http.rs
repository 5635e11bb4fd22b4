//! `enc_http`: requests to an enc route as the server reads them: the `KeyID` and
//! `Enc-Seq` headers, the sealed sub-path and query, the sealed body, through
//! `EncServer::serve_request` with one key in the store (fixed key bytes, so a seed can
//! hold an authentic request). The first byte picks:
//!
//! - even: the rest is a whole request (head, then the body: `Content-Length` bytes, or
//!   what follows). Whatever it is, the handler runs only for a request whose every part is
//!   exactly what sealing its plaintext under the key gives, and a refusal names its reason
//!   (`Enc-Error`) with the matching status. A request served once is refused when replayed.
//! - odd: `[method u8][seq u64][flip u16]`, then the sub-path, query and body separated by
//!   `0xff`: the target seals them, sends the request, and the handler must see exactly
//!   them (a sub-path or query that is not UTF-8 is refused as malformed); then one bit of
//!   the request (where `flip` says) is flipped and the request sent again, and the
//!   handler must not run: nothing opens without the key, nor twice.

use std::cell::RefCell;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;

use dap_net::enc::cipher::{AeadKey, CipherSuite};
use dap_net::enc::enc_http::{self, FLAG_BODY, FLAG_QUERY, KEY_ID_HEADER, Part, SEQ_HEADER};
use dap_net::enc::{
    ENC_ERROR_HEADER, EncConfig, EncRequest, EncServer, KeyId, KeyMaterial, NodeKey, Refusal,
};
use dap_net::http::{HttpLimits, Request, Response, parse_request_head};

/// The route prefix.
pub const PREFIX: &str = "/e/";
/// The id of the one key in the store.
pub const KEY_ID: KeyId = KeyId([0x11; 16]);
/// The client→server key's bytes.
const C2S: [u8; 32] = [0x22; 32];
/// The server→client key's bytes.
const S2C: [u8; 32] = [0x33; 32];
const SUITE: CipherSuite = CipherSuite::ChaCha20Poly1305;

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    if which % 2 == 0 {
        raw(body);
    } else {
        sealed(body);
    }
}

/// What the handler saw: method, sub-path, query, body.
type Seen = (String, String, Option<String>, Vec<u8>);

/// A server with the key, and its route's handler recording what it gets.
struct Node {
    server: EncServer,
    now: Instant,
}

impl Node {
    fn new() -> Self {
        let server = EncServer::new(NodeKey::from_seed(&[7; 32]), EncConfig::default());
        let now = Instant::now();
        let material = KeyMaterial {
            suite: SUITE,
            c2s: AeadKey::new(SUITE, &C2S),
            s2c: AeadKey::new(SUITE, &S2C),
            client: None,
        };
        server.store().insert(KEY_ID, material, now).expect("an empty store takes a key");
        Node { server, now }
    }

    /// Serves `req`: the response, and what the handler saw if it ran.
    fn serve(&self, req: &Request) -> (Response, Option<Seen>) {
        let seen = RefCell::new(None);
        let handler = |r: &EncRequest| {
            assert_eq!(r.key_id, KEY_ID);
            *seen.borrow_mut() =
                Some((r.method.clone(), r.sub_path.clone(), r.query.clone(), r.body.clone()));
            Response::new(200).body(&b"done"[..])
        };
        let resp = self.server.serve_request(PREFIX, req, &handler, self.now);
        let seen = seen.into_inner();
        match &seen {
            Some(_) => assert_eq!(resp.status, 200),
            None => {
                let reason = resp
                    .headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(ENC_ERROR_HEADER))
                    .map(|(_, v)| std::str::from_utf8(v).expect("a token"))
                    .expect("a refusal says why");
                let refusal = Refusal::from_reason(reason).expect("a known reason");
                assert_eq!(refusal.status(), resp.status);
            }
        }
        (resp, seen)
    }
}

/// Parses a request as the server does (the body: `Content-Length` bytes, else the rest).
fn request(bytes: &[u8]) -> Option<Request> {
    let (head, used) = parse_request_head(bytes, &HttpLimits::default()).ok()??;
    let rest = &bytes[used..];
    let body = match head.body {
        dap_net::http::BodyFraming::Length(n) => &rest[..rest.len().min(n as usize)],
        _ => rest,
    };
    Some(Request { head, body: Bytes::copy_from_slice(body), peer: None })
}

/// Seals one part as a client does.
fn seal(seq: u64, part: Part, flags: u8, method: &str, plain: &[u8]) -> Vec<u8> {
    let key = AeadKey::new(SUITE, &C2S);
    let mut buf = plain.to_vec();
    key.seal(part.nonce(seq), &enc_http::aad(&KEY_ID, seq, part, flags, 0, method), &mut buf);
    buf
}

/// The bytes of a request to the route, sealed as a client does (for the target, and for
/// seed corpora). `method` must be an HTTP token of at most 32 bytes.
pub fn sealed_request(method: &str, seq: u64, path: &[u8], query: &[u8], body: &[u8]) -> Vec<u8> {
    sealed_request_as(method, method, seq, path, query, body)
}

/// [`sealed_request`] sent with method `on_wire` but sealed as if for `method`.
fn sealed_request_as(
    on_wire: &str,
    method: &str,
    seq: u64,
    path: &[u8],
    query: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let flags =
        if query.is_empty() { 0 } else { FLAG_QUERY } | if body.is_empty() { 0 } else { FLAG_BODY };
    let mut out = format!(
        "{on_wire} {PREFIX}{}",
        URL_SAFE_NO_PAD.encode(seal(seq, Part::Path, flags, method, path))
    );
    if !query.is_empty() {
        out.push('?');
        out.push_str(&URL_SAFE_NO_PAD.encode(seal(seq, Part::Query, flags, method, query)));
    }
    let sealed_body =
        if body.is_empty() { Vec::new() } else { seal(seq, Part::Body, flags, method, body) };
    out.push_str(&format!(
        " HTTP/1.1\r\nHost: node.test\r\n{KEY_ID_HEADER}: {}\r\n{SEQ_HEADER}: {seq}\r\n\
         Content-Length: {}\r\n\r\n",
        KEY_ID.to_base64(),
        sealed_body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(&sealed_body);
    out
}

fn raw(bytes: &[u8]) {
    let Some(req) = request(bytes) else { return };
    // The header forms: one spelling each.
    if let Some(id) = req.header(KEY_ID_HEADER).and_then(KeyId::from_base64) {
        assert_eq!(id.to_base64().as_bytes(), req.header(KEY_ID_HEADER).expect("there"));
    }
    if let Some(v) = req.header(SEQ_HEADER)
        && let Some(n) = enc_http::parse_seq(v)
    {
        let digits = std::str::from_utf8(v).expect("digits");
        let significant = digits.trim_start_matches('0');
        assert_eq!(if significant.is_empty() { "0" } else { significant }, n.to_string());
    }
    let node = Node::new();
    let (_, seen) = node.serve(&req);
    let Some((method, path, query, body)) = seen else { return };
    // It ran: the request is exactly the sealing of what the handler saw.
    let seq = req.header(SEQ_HEADER).and_then(enc_http::parse_seq).expect("a counter");
    let query = query.unwrap_or_default();
    let again = request(&sealed_request(&method, seq, path.as_bytes(), query.as_bytes(), &body))
        .expect("a sealed request parses");
    assert_eq!(req.path(), again.path());
    assert_eq!(req.query().filter(|q| !q.is_empty()), again.query());
    assert_eq!(req.body, again.body);
    // And it opens once only.
    assert!(node.serve(&req).1.is_none(), "a replay was served");
}

const METHODS: [&str; 8] = [
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "HEAD",
    "OPTIONS",
    "THE-LONGEST-METHOD-TOKEN-ALLOWED",
];

fn sealed(data: &[u8]) {
    let [m, s0, s1, s2, s3, s4, s5, s6, s7, f0, f1, rest @ ..] = data else { return };
    let method = METHODS[usize::from(*m) % METHODS.len()];
    let method = if m & 0x80 != 0 { format!("{method}X") } else { method.to_string() };
    let seq = u64::from_be_bytes([*s0, *s1, *s2, *s3, *s4, *s5, *s6, *s7]);
    let mut parts = rest.splitn(3, |&b| b == 0xff);
    let (path, query, body) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    // A client cannot seal for a method over 32 bytes: such a request is sealed for its
    // first 32 (and must be refused all the same).
    let bytes = sealed_request_as(&method, &method[..method.len().min(32)], seq, path, query, body);
    let req = request(&bytes).expect("a sealed request parses");
    let node = Node::new();
    let (resp, seen) = node.serve(&req);
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned);
    match (text(path), text(query)) {
        _ if method == "HEAD" || method.len() > 32 => assert!(seen.is_none()),
        (Ok(p), Ok(q)) => {
            let q = (!q.is_empty()).then_some(q);
            assert_eq!(seen, Some((method.clone(), p, q, body.to_vec())));
            // The answer opens under the other key, bound to this request.
            let flags = if query.is_empty() { 0 } else { FLAG_QUERY }
                | if body.is_empty() { 0 } else { FLAG_BODY };
            let key = AeadKey::new(SUITE, &S2C);
            let aad = enc_http::aad(&KEY_ID, seq, Part::Response, flags, 200, &method);
            let mut sealed = resp.body.to_vec();
            let opened = key.open(Part::Response.nonce(seq), &aad, &mut sealed).expect("opens");
            assert_eq!(&opened[..], b"done");
        }
        _ => {
            assert!(seen.is_none());
            assert_eq!(resp.status, 400);
        }
    }
    // One bit flipped anywhere: never served (a copy that still authenticates is a replay).
    let at = usize::from(u16::from_be_bytes([*f0, *f1])) % (bytes.len() * 8);
    let mut altered = bytes.clone();
    altered[at / 8] ^= 1 << (at % 8);
    if let Some(req) = request(&altered) {
        assert!(node.serve(&req).1.is_none(), "an altered request was served");
    }
}
