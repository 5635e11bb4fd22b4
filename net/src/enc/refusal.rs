//! `Refusal`: every way the enc layer says no, with its status and the machine-readable
//! reason it sends in the `Enc-Error` header.

use std::fmt;

/// The response header naming why the enc layer refused a request (`/enc_init` or an
/// enc_http route). Its value is one [`Refusal::reason`] token; answers from an enc route's
/// handler never carry it.
pub const ENC_ERROR_HEADER: &str = "Enc-Error";

/// Why the enc layer refused a request. [`status`](Self::status) and
/// [`reason`](Self::reason) are what goes on the wire (`docs/PROTOCOL.md` §3.6 and §4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// enc_http: no key with this id (never issued, evicted, or forgotten after expiring).
    /// 401: run `/enc_init` again.
    UnknownKey,
    /// enc_http: the key is known but past its idle TTL or maximum age. 401: run
    /// `/enc_init` again.
    ExpiredKey,
    /// enc_http: a missing or undecodable `KeyID` or `Enc-Seq` header, sub-path or query,
    /// or plaintext that is not UTF-8 where text is required. 400.
    Malformed,
    /// enc_http: a sealed part failed authentication (a wrong key, a flipped bit, a part
    /// moved from another request). 400.
    AuthFailed,
    /// enc_http: the request counter was already used, or is too far behind the newest. 400.
    Replay,
    /// enc_http: `HEAD` (an enc response always has a sealed body). 405.
    Method,
    /// enc_http: the route's handler panicked or answered a status without a body. 500.
    Internal,
    /// `/enc_init`: a body that does not decode. 400.
    BadInit,
    /// `/enc_init`: a protocol version the server does not speak. 400.
    UnsupportedVersion,
    /// `/enc_init`: a KEM the server does not support (version 1: any). 400.
    UnsupportedKem,
    /// `/enc_init`: extensions the server does not support (version 1: any). 400.
    UnsupportedExtension,
    /// `/enc_init`: no offered suite is allowed by the server. 400.
    NoCommonSuite,
    /// `/enc_init`: the client certificate's signature does not verify. 400.
    BadSignature,
    /// `/enc_init`: the ephemeral public key gives an all-zero shared secret. 400.
    BadKey,
    /// `/enc_init`: the server requires a client certificate and none was sent. 403.
    AuthRequired,
    /// `/enc_init`: the client certificate is not on the server's allow list. 403.
    NotAllowed,
    /// `/enc_init`: too many handshakes from the client's address block; the response's
    /// `Retry-After` says when the next one may succeed. 429.
    RateLimited,
    /// `/enc_init`: the key store is full of keys in use, and those are never evicted for
    /// new ones; `Retry-After` suggests when to try again. 503.
    Busy,
}

impl Refusal {
    /// Every refusal.
    pub const ALL: [Refusal; 18] = [
        Refusal::UnknownKey,
        Refusal::ExpiredKey,
        Refusal::Malformed,
        Refusal::AuthFailed,
        Refusal::Replay,
        Refusal::Method,
        Refusal::Internal,
        Refusal::BadInit,
        Refusal::UnsupportedVersion,
        Refusal::UnsupportedKem,
        Refusal::UnsupportedExtension,
        Refusal::NoCommonSuite,
        Refusal::BadSignature,
        Refusal::BadKey,
        Refusal::AuthRequired,
        Refusal::NotAllowed,
        Refusal::RateLimited,
        Refusal::Busy,
    ];

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Refusal::UnknownKey | Refusal::ExpiredKey => 401,
            Refusal::AuthRequired | Refusal::NotAllowed => 403,
            Refusal::Method => 405,
            Refusal::RateLimited => 429,
            Refusal::Internal => 500,
            Refusal::Busy => 503,
            _ => 400,
        }
    }

    /// The `Enc-Error` token.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownKey => "unknown-key",
            Refusal::ExpiredKey => "expired-key",
            Refusal::Malformed => "malformed",
            Refusal::AuthFailed => "auth-failed",
            Refusal::Replay => "replay",
            Refusal::Method => "method",
            Refusal::Internal => "internal",
            Refusal::BadInit => "bad-init",
            Refusal::UnsupportedVersion => "unsupported-version",
            Refusal::UnsupportedKem => "unsupported-kem",
            Refusal::UnsupportedExtension => "unsupported-extension",
            Refusal::NoCommonSuite => "no-common-suite",
            Refusal::BadSignature => "bad-signature",
            Refusal::BadKey => "bad-key",
            Refusal::AuthRequired => "auth-required",
            Refusal::NotAllowed => "not-allowed",
            Refusal::RateLimited => "rate-limited",
            Refusal::Busy => "busy",
        }
    }

    /// The refusal with this `Enc-Error` token, if there is one.
    pub fn from_reason(token: &str) -> Option<Self> {
        Refusal::ALL.into_iter().find(|r| r.reason() == token)
    }

    /// True for the refusals after which a client should run `/enc_init` again.
    pub fn needs_new_key(self) -> bool {
        matches!(self, Refusal::UnknownKey | Refusal::ExpiredKey)
    }

    /// True for the refusals that say "not now" rather than "no": the same request may
    /// succeed later, after the response's `Retry-After`.
    pub fn is_transient(self) -> bool {
        matches!(self, Refusal::RateLimited | Refusal::Busy)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason(), self.status())
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_round_trip() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_reason(r.reason()), Some(r));
            assert!(r.reason().bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
        assert_eq!(Refusal::from_reason("nope"), None);
        assert_eq!(Refusal::ExpiredKey.status(), 401);
        assert_eq!(Refusal::NotAllowed.status(), 403);
        assert_eq!(Refusal::Replay.status(), 400);
    }
}
