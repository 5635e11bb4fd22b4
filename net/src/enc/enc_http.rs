//! enc_http on the wire, sans-IO: the headers, the nonces and associated data of each sealed
//! part, and opening a request / sealing a response on the server side (the client side is
//! [`EncSession`](super::EncSession)). `docs/PROTOCOL.md` §4 is the exact spec.
//!
//! A request to an enc route `PREFIX` is
//!
//! ```text
//! METHOD PREFIX<b64(seal(sub-path))>[?<b64(seal(query))>] HTTP/1.1
//! KeyID: <b64(key id)>
//! Enc-Seq: <counter, decimal>
//!
//! [seal(body)]
//! ```
//!
//! where `b64` is base64url without padding and every `seal` is AEAD under the
//! client→server key with nonce `part || counter`. The query and the body are left out when
//! empty; whether they are present is bound into every part's associated data, so neither
//! can be stripped or added. The response body is always sealed, under the server→client
//! key, with the response status in its associated data.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::cipher::{AeadKey, Nonce, TAG_LEN};
use super::key_id::KeyId;
use super::refusal::Refusal;

/// Request header carrying the [`KeyId`] (base64url, 22 characters).
pub const KEY_ID_HEADER: &str = "KeyID";
/// Request header carrying the request counter: decimal digits, a `u64`.
pub const SEQ_HEADER: &str = "Enc-Seq";
/// The first bytes of every enc_http associated data.
pub const AAD_LABEL: &[u8] = b"dap v1 enc_http";
/// Longest method token enc_http accepts.
pub const MAX_METHOD_LEN: usize = 32;
/// `flags` bit: the request has a sealed query.
pub const FLAG_QUERY: u8 = 1;
/// `flags` bit: the request has a sealed body.
pub const FLAG_BODY: u8 = 2;

/// The sealed parts of an exchange; each has its own nonce prefix (`docs/PROTOCOL.md` §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// The request's sub-path (client → server).
    Path,
    /// The request's query (client → server).
    Query,
    /// The request's body (client → server).
    Body,
    /// The response body (server → client).
    Response,
}

impl Part {
    /// The 4-byte nonce prefix, also in the associated data.
    pub fn prefix(self) -> [u8; 4] {
        match self {
            Part::Path => *b"path",
            Part::Query => *b"qury",
            Part::Body => *b"body",
            Part::Response => *b"resp",
        }
    }

    /// The nonce of this part in request `seq`.
    pub fn nonce(self, seq: u64) -> Nonce {
        Nonce::new(self.prefix(), seq)
    }
}

/// The associated data of one part:
/// `AAD_LABEL || key id || seq (u64 BE) || part prefix || flags || status (u16 BE) ||
/// len(method) (u8) || method`, with `status` 0 in the request's parts.
///
/// `method` must be at most [`MAX_METHOD_LEN`] bytes (callers check it first).
pub fn aad(key_id: &KeyId, seq: u64, part: Part, flags: u8, status: u16, method: &str) -> Vec<u8> {
    debug_assert!(method.len() <= MAX_METHOD_LEN);
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 32 + method.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(&key_id.0);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad.extend_from_slice(&part.prefix());
    aad.push(flags);
    aad.extend_from_slice(&status.to_be_bytes());
    aad.push(method.len() as u8);
    aad.extend_from_slice(method.as_bytes());
    aad
}

/// Seals `plain` as `part` of request `seq`.
#[allow(clippy::too_many_arguments)] // one per field of the associated data
pub(crate) fn seal_part(
    key: &AeadKey,
    key_id: &KeyId,
    seq: u64,
    part: Part,
    flags: u8,
    status: u16,
    method: &str,
    plain: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plain.len() + TAG_LEN);
    buf.extend_from_slice(plain);
    key.seal(part.nonce(seq), &aad(key_id, seq, part, flags, status, method), &mut buf);
    buf
}

/// Opens `part` of request `seq` in place; the plaintext's length, or `None` when
/// authentication fails.
#[allow(clippy::too_many_arguments)] // one per field of the associated data
pub(crate) fn open_part(
    key: &AeadKey,
    key_id: &KeyId,
    seq: u64,
    part: Part,
    flags: u8,
    status: u16,
    method: &str,
    sealed: &mut [u8],
) -> Option<usize> {
    let aad = aad(key_id, seq, part, flags, status, method);
    key.open(part.nonce(seq), &aad, sealed).ok().map(|p| p.len())
}

/// base64url without padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes canonical base64url without padding.
pub(crate) fn unb64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Parses an `Enc-Seq` value: 1 to 20 ASCII digits whose value fits a `u64`.
pub fn parse_seq(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// A request's parts, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedRequest {
    /// The sub-path after the route prefix.
    pub sub_path: String,
    /// The query, if one was sent.
    pub query: Option<String>,
    /// The body (empty when none was sent).
    pub body: Vec<u8>,
    /// The presence flags, for sealing the response.
    pub flags: u8,
}

/// Opens the sealed sub-path, query and body of request `seq` under the client→server key.
///
/// `sealed_path` is what follows the route prefix in the request path; `sealed_query` the
/// request's query (absent or empty: none); `body` the request body (empty: none).
///
/// # Errors
/// [`Refusal::Malformed`] for a method longer than [`MAX_METHOD_LEN`], bad base64, or a
/// sub-path or query that is not UTF-8 once opened; [`Refusal::AuthFailed`] when a part
/// fails authentication.
pub fn open_request(
    c2s: &AeadKey,
    key_id: &KeyId,
    seq: u64,
    method: &str,
    sealed_path: &str,
    sealed_query: Option<&str>,
    body: &[u8],
) -> Result<OpenedRequest, Refusal> {
    if method.len() > MAX_METHOD_LEN {
        return Err(Refusal::Malformed);
    }
    let sealed_query = sealed_query.filter(|q| !q.is_empty());
    let flags = if sealed_query.is_some() { FLAG_QUERY } else { 0 }
        | if body.is_empty() { 0 } else { FLAG_BODY };
    // Decode everything before any AEAD work: bad input costs no crypto.
    let mut path = unb64(sealed_path).ok_or(Refusal::Malformed)?;
    let mut query = match sealed_query {
        Some(q) => Some(unb64(q).ok_or(Refusal::Malformed)?),
        None => None,
    };
    let mut body = body.to_vec();
    let text = |mut v: Vec<u8>, len: usize| {
        v.truncate(len);
        String::from_utf8(v).map_err(|_| Refusal::Malformed)
    };
    let open = |part, buf: &mut Vec<u8>| {
        open_part(c2s, key_id, seq, part, flags, 0, method, buf).ok_or(Refusal::AuthFailed)
    };
    let path_len = open(Part::Path, &mut path)?;
    let query_len = match &mut query {
        Some(q) => Some(open(Part::Query, q)?),
        None => None,
    };
    if !body.is_empty() {
        let len = open(Part::Body, &mut body)?;
        body.truncate(len);
    }
    let sub_path = text(path, path_len)?;
    let query = match (query, query_len) {
        (Some(q), Some(len)) => Some(text(q, len)?),
        _ => None,
    };
    Ok(OpenedRequest { sub_path, query, body, flags })
}

/// Seals a response body for request `seq` under the server→client key.
pub fn seal_response(
    s2c: &AeadKey,
    key_id: &KeyId,
    seq: u64,
    method: &str,
    flags: u8,
    status: u16,
    body: &[u8],
) -> Vec<u8> {
    seal_part(s2c, key_id, seq, Part::Response, flags, status, method, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::cipher::CipherSuite;

    #[test]
    fn seq_values() {
        assert_eq!(parse_seq(b"0"), Some(0));
        assert_eq!(parse_seq(b"0042"), Some(42));
        assert_eq!(parse_seq(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_seq(b"18446744073709551616"), None);
        for bad in [&b""[..], b"+1", b"-1", b"1 ", b"0x10", b"123456789012345678901"] {
            assert_eq!(parse_seq(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_aad_layout() {
        let aad = aad(&KeyId([7; 16]), 0x0102, Part::Response, 3, 404, "GET");
        let mut want = b"dap v1 enc_http".to_vec();
        want.extend_from_slice(&[7; 16]);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        want.extend_from_slice(b"resp");
        want.extend_from_slice(&[3, 0x01, 0x94, 3]);
        want.extend_from_slice(b"GET");
        assert_eq!(aad, want);
    }

    #[test]
    fn parts_cannot_be_stripped_moved_or_mixed() {
        let key = AeadKey::new(CipherSuite::Aes256Gcm, &[3; 32]);
        let id = KeyId([1; 16]);
        let flags = FLAG_QUERY | FLAG_BODY;
        let seal = |part, seq, plain: &[u8]| {
            b64(&seal_part(&key, &id, seq, part, flags, 0, "POST", plain))
        };
        let path = seal(Part::Path, 5, b"a/b");
        let query = seal(Part::Query, 5, b"x=1");
        let body = unb64(&seal(Part::Body, 5, b"hello")).unwrap();
        let ok = open_request(&key, &id, 5, "POST", &path, Some(&query), &body).unwrap();
        assert_eq!((ok.sub_path.as_str(), ok.query.as_deref()), ("a/b", Some("x=1")));
        assert_eq!((ok.body.as_slice(), ok.flags), (&b"hello"[..], flags));
        let open = |seq: u64, method: &str, path: &str, query: Option<&str>, body: &[u8]| {
            open_request(&key, &id, seq, method, path, query, body).unwrap_err()
        };
        // Stripping the query or the body changes the flags: the path no longer opens.
        assert_eq!(open(5, "POST", &path, None, &body), Refusal::AuthFailed);
        assert_eq!(open(5, "POST", &path, Some(&query), b""), Refusal::AuthFailed);
        // Another counter, method, or a part in another's place.
        assert_eq!(open(6, "POST", &path, Some(&query), &body), Refusal::AuthFailed);
        assert_eq!(open(5, "PUT", &path, Some(&query), &body), Refusal::AuthFailed);
        assert_eq!(open(5, "POST", &query, Some(&path), &body), Refusal::AuthFailed);
        assert_eq!(open(5, "POST", "!!", Some(&query), &body), Refusal::Malformed);
        assert_eq!(open(5, &"M".repeat(33), &path, Some(&query), &body), Refusal::Malformed);
        let mut flipped = body.clone();
        flipped[0] ^= 1;
        assert_eq!(open(5, "POST", &path, Some(&query), &flipped), Refusal::AuthFailed);
    }
}
