//! Responses: what handlers return, and how a head is written on the wire.

use std::borrow::Cow;

use bytes::Bytes;

/// Response header fields: names usually `&'static str`, values usually static or shared
/// bytes, so that building a typical response allocates nothing but the list.
pub type Headers = Vec<(Cow<'static, str>, Bytes)>;

/// A whole response: status, headers and body. The server adds `Date`, `Content-Length` and
/// `Connection` itself; do not set them (they would be sent twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Headers,
    /// The body (left out for `HEAD` requests and for 1xx, 204 and 304 answers).
    pub body: Bytes,
}

impl Response {
    /// A response with `status` and no body.
    pub fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Bytes::new() }
    }

    /// A `text/plain; charset=utf-8` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body(Bytes::from(body.into()))
    }

    /// Adds a header field.
    pub fn header(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

/// Whether a response with this status carries a body at all (RFC 9110 §6.4.1).
pub(crate) fn status_has_body(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

/// How the body of a response head is announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyLen {
    /// `Content-Length: n`.
    Known(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 only; 1.0 peers get close-delimited bodies).
    Chunked,
    /// Neither header: the body ends when the connection closes (HTTP/1.0 streaming), or the
    /// status has no body.
    None,
}

/// Writes a status line and headers, ending with the blank line.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(Cow<'static, str>, Bytes)],
    len: BodyLen,
    date: &str,
    close: bool,
    keep_alive_1_0: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, status);
    out.push(b' ');
    out.extend_from_slice(super::reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        // Names and values were chosen by the application; CR or LF in them would split the
        // response (header injection), so such fields are left out.
        if is_token(name.as_bytes()) && !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        } else {
            tracing::warn!(header = %name, "response header with forbidden bytes left out");
        }
    }
    match len {
        BodyLen::Known(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyLen::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyLen::None => {}
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if keep_alive_1_0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn push_status(out: &mut Vec<u8>, status: u16) {
    let s = status.clamp(100, 999);
    out.extend_from_slice(&[
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]);
}

pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Frames one chunk of a chunked body: size line, data, CRLF. Empty data is the last chunk.
pub(crate) fn push_chunk_header(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_well_formed() {
        let mut out = Vec::new();
        let headers: Headers = vec![("X-A".into(), Bytes::from_static(b"1"))];
        write_head(&mut out, 200, &headers, BodyLen::Known(13), "D", false, false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nDate: D\r\nX-A: 1\r\nContent-Length: 13\r\n\r\n");
        out.clear();
        write_head(&mut out, 404, &[], BodyLen::Chunked, "D", true, false);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nDate: D\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn injected_headers_are_left_out() {
        let mut out = Vec::new();
        let headers: Headers = vec![
            ("X-Bad".into(), Bytes::from_static(b"a\r\nSet-Cookie: x")),
            ("Bad Name".into(), Bytes::from_static(b"v")),
        ];
        write_head(&mut out, 200, &headers, BodyLen::None, "D", false, false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nDate: D\r\n\r\n");
    }

    #[test]
    fn numbers_and_chunk_sizes() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
        out.clear();
        push_chunk_header(&mut out, 0x1a2b);
        push_chunk_header(&mut out, 0);
        assert_eq!(out, b"1a2b\r\n0\r\n");
    }
}
