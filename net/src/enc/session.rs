//! `EncSession`: the client's half of an enc_init key — seals requests, opens responses.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::cipher::{AeadKey, CipherSuite, KEY_LEN};
use super::enc_http::{
    self, FLAG_BODY, FLAG_QUERY, KEY_ID_HEADER, MAX_METHOD_LEN, Part, SEQ_HEADER,
};
use super::key_id::KeyId;
use super::keys::{PUBLIC_KEY_LEN, public_key_to_base64};

/// Why a request could not be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Every request counter of this key has been used: run `/enc_init` again.
    #[error("request counters exhausted; a new key is needed")]
    CountersExhausted,
    /// The method is empty or longer than 32 bytes.
    #[error("method empty or longer than 32 bytes")]
    BadMethod,
}

/// Why a response could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenResponseError {
    /// The body failed authentication: it is not the server's answer to this request with
    /// this status (tampered, truncated, or not sealed at all).
    #[error("response failed authentication")]
    AuthFailed,
}

/// A request ready to send: put [`target`](Self::target) on the request line, add the
/// [`headers`](Self::headers), send the [`body`](Self::body); keep the value to open the
/// response with [`EncSession::open_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRequest {
    /// The method, as sealed (it is bound into every part).
    pub method: String,
    /// The sealed sub-path in base64url: appended to the route prefix.
    pub path_suffix: String,
    /// The sealed query in base64url, when there is a query.
    pub query: Option<String>,
    /// `KeyID` and `Enc-Seq`.
    pub headers: Vec<(&'static str, String)>,
    /// The sealed body; empty when the plaintext body is.
    pub body: Vec<u8>,
    /// The request counter.
    pub seq: u64,
    flags: u8,
}

impl SealedRequest {
    /// The request-target for a route mounted at `prefix` (e.g. `/api/`): the prefix, the
    /// sealed sub-path, and `?` with the sealed query if there is one.
    pub fn target(&self, prefix: &str) -> String {
        let mut t = String::with_capacity(prefix.len() + self.path_suffix.len() + 64);
        t.push_str(prefix);
        t.push_str(&self.path_suffix);
        if let Some(q) = &self.query {
            t.push('?');
            t.push_str(q);
        }
        t
    }
}

/// The client's half of a key made by `/enc_init` (see [`EncInit`](super::EncInit)).
///
/// `Send + Sync`: one session may seal requests from several threads; each gets a counter
/// of its own. Counters start at 0 and only grow, so no nonce is ever used twice under
/// this key. The server accepts counters out of order within a window (see
/// [`REPLAY_WINDOW`](super::REPLAY_WINDOW)), so requests may be sent on several connections
/// at once, as long as none falls that far behind the newest.
pub struct EncSession {
    key_id: KeyId,
    suite: CipherSuite,
    c2s: AeadKey,
    s2c: AeadKey,
    node_key: [u8; PUBLIC_KEY_LEN],
    key_ttl: Duration,
    next_seq: AtomicU64,
}

// One session seals requests from several threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<EncSession>();
};

impl fmt::Debug for EncSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncSession")
            .field("key_id", &self.key_id)
            .field("suite", &self.suite)
            .field("node_key", &public_key_to_base64(&self.node_key))
            .field("key_ttl", &self.key_ttl)
            .field("next_seq", &self.next_seq.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl EncSession {
    pub(crate) fn new(
        key_id: KeyId,
        suite: CipherSuite,
        c2s: &[u8; KEY_LEN],
        s2c: &[u8; KEY_LEN],
        node_key: [u8; PUBLIC_KEY_LEN],
        key_ttl: Duration,
    ) -> Self {
        EncSession {
            key_id,
            suite,
            c2s: AeadKey::new(suite, c2s),
            s2c: AeadKey::new(suite, s2c),
            node_key,
            key_ttl,
            next_seq: AtomicU64::new(0),
        }
    }

    /// The key's id (sent as `KeyID`).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The negotiated cipher.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The server's node public key, as verified in the handshake (pin it for next time).
    pub fn node_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.node_key
    }

    /// The idle time after which the server forgets the key, as it announced it (whole
    /// seconds).
    pub fn key_ttl(&self) -> Duration {
        self.key_ttl
    }

    /// The counter the next sealed request will use.
    pub fn next_seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    /// Seals a request to an enc route: `sub_path` is what follows the route prefix,
    /// `query` the query (`None` or empty: none), `body` the body (empty: none).
    ///
    /// # Errors
    /// [`SealError`]: no counter left, or a method that is empty or longer than 32 bytes.
    pub fn seal_request(
        &self,
        method: &str,
        sub_path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<SealedRequest, SealError> {
        if method.is_empty() || method.len() > MAX_METHOD_LEN {
            return Err(SealError::BadMethod);
        }
        // u64::MAX itself is never handed out, so the counter cannot wrap.
        let seq = self
            .next_seq
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| s.checked_add(1))
            .map_err(|_| SealError::CountersExhausted)?;
        let query = query.filter(|q| !q.is_empty());
        let flags = if query.is_some() { FLAG_QUERY } else { 0 }
            | if body.is_empty() { 0 } else { FLAG_BODY };
        let seal = |part, plain: &[u8]| {
            enc_http::seal_part(&self.c2s, &self.key_id, seq, part, flags, 0, method, plain)
        };
        let path_suffix = enc_http::b64(&seal(Part::Path, sub_path.as_bytes()));
        let query = query.map(|q| enc_http::b64(&seal(Part::Query, q.as_bytes())));
        let body = if body.is_empty() { Vec::new() } else { seal(Part::Body, body) };
        Ok(SealedRequest {
            method: method.to_string(),
            path_suffix,
            query,
            headers: vec![(KEY_ID_HEADER, self.key_id.to_base64()), (SEQ_HEADER, seq.to_string())],
            body,
            seq,
            flags,
        })
    }

    /// Opens the body of the server's answer to `req`, sent with `status`.
    ///
    /// Only answers from the route's handler are sealed; refusals by the enc layer carry an
    /// [`Enc-Error`](super::ENC_ERROR_HEADER) header and a plain body instead.
    ///
    /// # Errors
    /// [`OpenResponseError::AuthFailed`] when the body is not what the server sealed.
    pub fn open_response(
        &self,
        req: &SealedRequest,
        status: u16,
        body: &[u8],
    ) -> Result<Vec<u8>, OpenResponseError> {
        let mut buf = body.to_vec();
        let len = enc_http::open_part(
            &self.s2c,
            &self.key_id,
            req.seq,
            Part::Response,
            req.flags,
            status,
            &req.method,
            &mut buf,
        )
        .ok_or(OpenResponseError::AuthFailed)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Sets the next counter, for tests that need a particular one (a replay, the end of
    /// the counter space). Using a counter twice reuses a nonce: never do it with real data.
    #[doc(hidden)]
    pub fn set_next_seq_for_tests(&self, seq: u64) {
        self.next_seq.store(seq, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enc::enc_http::{open_request, seal_response};

    fn session() -> EncSession {
        EncSession::new(
            KeyId([4; 16]),
            CipherSuite::ChaCha20Poly1305,
            &[1; 32],
            &[2; 32],
            [0; 32],
            Duration::from_secs(600),
        )
    }

    #[test]
    fn requests_open_on_the_server_and_responses_on_the_client() {
        let s = session();
        let c2s = AeadKey::new(s.suite, &[1; 32]);
        let s2c = AeadKey::new(s.suite, &[2; 32]);
        for (query, body) in [(None, &b""[..]), (Some("q=1"), &b"payload"[..])] {
            let req = s.seal_request("POST", "x/y", query, body).unwrap();
            assert_eq!(req.headers[0], ("KeyID", KeyId([4; 16]).to_base64()));
            assert_eq!(req.headers[1].0, "Enc-Seq");
            assert!(req.target("/api/").starts_with("/api/"));
            assert_eq!(req.target("/p/").contains('?'), query.is_some());
            let opened = open_request(
                &c2s,
                &s.key_id(),
                req.seq,
                "POST",
                &req.path_suffix,
                req.query.as_deref(),
                &req.body,
            )
            .unwrap();
            assert_eq!((opened.sub_path.as_str(), opened.query.as_deref()), ("x/y", query));
            assert_eq!(opened.body, body);
            let resp = seal_response(&s2c, &s.key_id(), req.seq, "POST", opened.flags, 201, b"ok");
            assert_eq!(s.open_response(&req, 201, &resp).unwrap(), b"ok");
            // Another status, or another request's counter, does not open.
            assert_eq!(s.open_response(&req, 200, &resp), Err(OpenResponseError::AuthFailed));
        }
        assert_eq!(s.next_seq(), 2);
    }

    #[test]
    fn counters_never_repeat_or_wrap() {
        let s = session();
        let a = s.seal_request("GET", "", None, b"").unwrap();
        let b = s.seal_request("GET", "", None, b"").unwrap();
        assert_ne!(a.seq, b.seq);
        assert_ne!(a.path_suffix, b.path_suffix);
        s.set_next_seq_for_tests(u64::MAX - 1);
        assert_eq!(s.seal_request("GET", "", None, b"").unwrap().seq, u64::MAX - 1);
        assert_eq!(s.seal_request("GET", "", None, b""), Err(SealError::CountersExhausted));
        assert_eq!(s.seal_request("", "", None, b""), Err(SealError::BadMethod));
        assert!(!format!("{s:?}").contains("[1, 1"));
    }
}
