//! `ClientError`: why a request did not produce a response.

use std::io;

use dap_reactor::ReactorError;

use super::parser::ResponseParseError;

/// Why a request failed. Exactly one of these, or a [`Response`](super::Response), reaches
/// the callback of every request.
///
/// Match on the variants, never on the `Display` text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL could not be used: neither `http://` nor `https://`, no host, a bad port,
    /// characters that must be percent-encoded. The text says which.
    #[error("bad URL: {0}")]
    BadUrl(&'static str),
    /// A header given to the request builder cannot be sent: an invalid name or value, or a
    /// framing header the client sets itself (`Content-Length`, `Transfer-Encoding`,
    /// `Connection`).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The URL names a host, and this client does not resolve names: resolve it first (e.g.
    /// with `dap_net::dns`) and pass the address with
    /// [`Request::resolve_to`](super::Request::resolve_to).
    #[error("name resolution is not done here; resolve {0:?} first and use Request::resolve_to")]
    Unresolved(String),
    /// The connection could not be made (refused, unreachable, ...).
    #[error("connect failed: {0}")]
    Connect(io::ErrorKind),
    /// The connection was not made within
    /// [`ClientConfig::connect_timeout`](super::ClientConfig::connect_timeout).
    #[error("connect timed out")]
    ConnectTimeout,
    /// The complete response did not arrive within
    /// [`ClientConfig::response_timeout`](super::ClientConfig::response_timeout) of the
    /// connection being made.
    #[error("no complete response within the response timeout")]
    ResponseTimeout,
    /// The response passed [`ClientConfig::max_response_bytes`](super::ClientConfig), or its
    /// head passed `max_header_bytes` or `max_headers`. The connection was closed; nothing
    /// beyond the limit was kept.
    #[error("response larger than the configured limit")]
    TooLarge,
    /// The server sent something that is not a valid HTTP/1.x response, or whose framing is
    /// ambiguous (conflicting `Content-Length`, `Content-Length` with `Transfer-Encoding`, a
    /// transfer coding other than `chunked`).
    #[error("bad response: {0}")]
    BadResponse(&'static str),
    /// The TLS session of an `https` request failed: the server's certificate was refused
    /// (untrusted, expired, not for the URL's host, not the pinned one), the handshake
    /// failed, the server sent a TLS alert, or rustls refused the configuration. The text is
    /// rustls's reason, for people; the request never reached the server as plaintext.
    #[error("TLS failed: {0}")]
    Tls(String),
    /// An `https` request with [`ClientConfig::tls`](super::ClientConfig::tls) unset, on a
    /// system whose root certificates could not be loaded (none found, unreadable store).
    /// Nothing was sent; set `tls` to a configuration of your own.
    #[error("no usable system root certificates: {0}")]
    NoRoots(String),
    /// The server closed the connection before the response was complete.
    #[error("connection closed before the response was complete")]
    Closed,
    /// Any other I/O or reactor failure after the connection was made (a reset, the worker
    /// stopping, a full esocket table). Reactor reasons can be read with
    /// [`ReactorError::of`].
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

impl ClientError {
    /// The error for a failure reported by the reactor; `connected` tells a failed connect
    /// from a failure later on.
    pub(crate) fn from_io(err: &io::Error, connected: bool) -> ClientError {
        if let Some(tls) = tls_failure(err) {
            return ClientError::Tls(tls.to_string());
        }
        match ReactorError::of(err) {
            Some(ReactorError::ConnectTimeout) => ClientError::ConnectTimeout,
            // The reactor's own reasons (table full, stopping, ...) are not connect failures.
            Some(r) => ClientError::Io(r.into()),
            None if !connected => ClientError::Connect(err.kind()),
            None => ClientError::Io(copy_io(err)),
        }
    }
}

impl From<ResponseParseError> for ClientError {
    fn from(e: ResponseParseError) -> Self {
        match e {
            ResponseParseError::Malformed(why) => ClientError::BadResponse(why),
            ResponseParseError::TooLarge => ClientError::TooLarge,
            ResponseParseError::Incomplete => ClientError::Closed,
        }
    }
}

/// The rustls error inside `err`, if the TLS layer is what failed (it reports `InvalidData`
/// carrying the rustls error; see `crate::tls`).
fn tls_failure(err: &io::Error) -> Option<&rustls::Error> {
    if err.kind() != io::ErrorKind::InvalidData {
        return None;
    }
    err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
}

/// `io::Error` is not `Clone`; callbacks get a reference, the request's caller an owned error.
fn copy_io(err: &io::Error) -> io::Error {
    match err.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(err.kind(), err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactor_reasons_map_to_their_variants() {
        let timeout: io::Error = ReactorError::ConnectTimeout.into();
        assert!(matches!(ClientError::from_io(&timeout, false), ClientError::ConnectTimeout));
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            ClientError::from_io(&refused, false),
            ClientError::Connect(io::ErrorKind::ConnectionRefused)
        ));
        let reset = io::Error::from_raw_os_error(104);
        match ClientError::from_io(&reset, true) {
            ClientError::Io(e) => assert_eq!(e.raw_os_error(), Some(104)),
            other => panic!("unexpected {other:?}"),
        }
        let bad_cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        match ClientError::from_io(&bad_cert, true) {
            ClientError::Tls(why) => assert!(why.contains("UnknownIssuer"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
        // Other invalid data is not a TLS failure.
        let other = io::Error::new(io::ErrorKind::InvalidData, "not tls");
        assert!(matches!(ClientError::from_io(&other, true), ClientError::Io(_)));
        let stopping: io::Error = ReactorError::Stopping.into();
        match ClientError::from_io(&stopping, false) {
            ClientError::Io(e) => assert_eq!(ReactorError::of(&e), Some(ReactorError::Stopping)),
            other => panic!("unexpected {other:?}"),
        }
    }
}
