//! Request heads: parsing with httparse, then the framing rules of RFC 9112 §6, so that
//! every request this accepts has exactly one interpretation (no request smuggling).

use std::fmt;
use std::mem::MaybeUninit;

/// Limits applied while reading a request head and its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpLimits {
    /// Bytes of request line plus headers (default 16 KiB); beyond: 431.
    pub max_header_bytes: usize,
    /// Header fields (default 64); beyond: 431.
    pub max_headers: usize,
    /// Request-target length (default 8 KiB); beyond: 414.
    pub max_url: usize,
    /// Body bytes (default 1 MiB; routes may set their own); beyond: 413.
    pub max_body: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_url: 8 * 1024,
            max_body: 1024 * 1024,
        }
    }
}

/// Why a request head was refused. Every variant maps to one status; after any of them the
/// connection can no longer be trusted and is closed once the answer is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Malformed request line or header, bad framing headers, missing Host (400).
    BadRequest(&'static str),
    /// The request-target is longer than `max_url` (414).
    UriTooLong,
    /// The head is larger than `max_header_bytes`, or has more than `max_headers` fields (431).
    HeadersTooLarge,
    /// A declared body is larger than `max_body` (413).
    BodyTooLarge,
    /// A transfer coding other than `chunked` (501).
    UnsupportedTransferCoding,
    /// An HTTP version other than 1.0 or 1.1 (505).
    VersionNotSupported,
}

impl ParseError {
    /// The status to answer with.
    pub fn status(self) -> u16 {
        match self {
            ParseError::BadRequest(_) => 400,
            ParseError::UriTooLong => 414,
            ParseError::HeadersTooLarge => 431,
            ParseError::BodyTooLarge => 413,
            ParseError::UnsupportedTransferCoding => 501,
            ParseError::VersionNotSupported => 505,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::BadRequest(why) => write!(f, "bad request: {why}"),
            other => write!(f, "{}", super::reason(other.status())),
        }
    }
}

impl std::error::Error for ParseError {}

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, validated request head (owned, so the input buffer can be consumed).
///
/// It holds one copy of the head's bytes and the positions of the method, target and header
/// fields in it: two allocations per request, however many headers it has.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The head as received, request line to blank line.
    raw: Box<[u8]>,
    method: Span,
    target: Span,
    /// Name and value of each header field, in order.
    fields: Vec<(Span, Span)>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// How the body is delimited.
    pub body: BodyFraming,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1).
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header was sent.
    pub upgrade: bool,
}

/// A byte range of [`RequestHead::raw`]; heads are far smaller than 4 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// Where `part`, a slice of `base`, lies in it (empty if it is not inside it).
    fn of(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        match start.checked_add(part.len()) {
            Some(end) if end <= base.len() && end <= u32::MAX as usize => {
                Span { start: start as u32, end: end as u32 }
            }
            _ => Span { start: 0, end: 0 },
        }
    }
}

impl RequestHead {
    fn bytes(&self, span: Span) -> &[u8] {
        self.raw.get(span.start as usize..span.end as usize).unwrap_or_default()
    }

    /// Text the parser checked to be a token or a request-target (visible ASCII).
    fn text(&self, span: Span) -> &str {
        std::str::from_utf8(self.bytes(span)).unwrap_or_default()
    }

    /// The method token, e.g. `GET`.
    pub fn method(&self) -> &str {
        self.text(self.method)
    }

    /// The request-target as sent (origin-form path and query, usually).
    pub fn target(&self) -> &str {
        self.text(self.target)
    }

    /// Header fields in order: names as sent (compare case-insensitively) and raw values.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|&(n, v)| (self.text(n), self.bytes(v)))
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target().split_once('?').map(|(_, q)| q)
    }
}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are left out: they may carry credentials.
        f.debug_struct("RequestHead")
            .field("method", &self.method())
            .field("target", &self.target())
            .field("minor_version", &self.minor_version)
            .field("headers", &self.headers().map(|(n, _)| n).collect::<Vec<_>>())
            .field("body", &self.body)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

/// Whether a line of `head` ends in LF without CR before it.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// Parses a request head at the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (and within limits), or the head and the
/// number of bytes it took.
///
/// # Errors
/// A [`ParseError`] whose [`status`](ParseError::status) is the answer to send.
pub fn parse_request_head(
    buf: &[u8],
    limits: &HttpLimits,
) -> Result<Option<(RequestHead, usize)>, ParseError> {
    // Stack storage for a typical head, left uninitialised (httparse writes before it
    // reads); the limit itself may be larger.
    let mut small = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 64];
    let mut large;
    let headers: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= small.len() {
        &mut small[..limits.max_headers]
    } else {
        large = Vec::with_capacity(limits.max_headers);
        large.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut large
    };
    let mut req = httparse::Request::new(&mut []);
    let status = req.parse_with_uninit_headers(buf, headers);
    // The request-target can be judged before the head is complete: a client sending a huge
    // URL slowly gets 414, not 431.
    if let Some(path) = req.path {
        if path.len() > limits.max_url {
            return Err(ParseError::UriTooLong);
        }
    } else if status.as_ref().is_ok_and(|s| s.is_partial()) && url_too_long(buf, limits) {
        return Err(ParseError::UriTooLong);
    }
    let len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(ParseError::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadersTooLarge),
        Err(httparse::Error::Version) => {
            return Err(if buf.starts_with(b"PRI ") || has_http_version_token(buf) {
                ParseError::VersionNotSupported
            } else {
                ParseError::BadRequest("invalid HTTP version")
            });
        }
        Err(httparse::Error::HeaderName) => {
            return Err(ParseError::BadRequest("invalid header name"));
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(ParseError::BadRequest("invalid header value"));
        }
        Err(_) => return Err(ParseError::BadRequest("malformed request line or header")),
    };
    if len > limits.max_header_bytes {
        return Err(ParseError::HeadersTooLarge);
    }
    if has_bare_lf(&buf[..len]) {
        // httparse takes a lone LF as a line end (RFC 9112 §2.2 allows it); a proxy in
        // front that does not would see other lines, so it is refused (no smuggling).
        return Err(ParseError::BadRequest("a line ends in a bare LF, not CRLF"));
    }
    let method = req.method.ok_or(ParseError::BadRequest("no method"))?;
    let target = req.path.ok_or(ParseError::BadRequest("no request-target"))?;
    let minor_version = req.version.ok_or(ParseError::BadRequest("no version"))?;
    if minor_version > 1 {
        return Err(ParseError::VersionNotSupported);
    }
    if target.is_empty() {
        return Err(ParseError::BadRequest("empty request-target"));
    }
    let head = validate(&buf[..len], method, target, minor_version, req.headers, limits)?;
    Ok(Some((head, len)))
}

/// True when the first line has been going on for longer than a URL may be.
fn url_too_long(buf: &[u8], limits: &HttpLimits) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let Some(sp) = line.iter().position(|&b| b == b' ') else { return false };
    let rest = &line[sp + 1..];
    let target_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    target_len > limits.max_url
}

/// A request line ending in `HTTP/<something>`: a version, just not one we speak.
fn has_http_version_token(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    line.rsplit(|&b| b == b' ').next().is_some_and(|v| v.starts_with(b"HTTP/"))
}

fn validate(
    raw: &[u8],
    method: &str,
    target: &str,
    minor_version: u8,
    headers: &[httparse::Header<'_>],
    limits: &HttpLimits,
) -> Result<RequestHead, ParseError> {
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut upgrade_header = false;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // A list of identical values is one value (RFC 9110 §8.6); anything else is fatal.
            for part in h.value.split(|&b| b == b',') {
                let n = parse_length(trim(part))?;
                match content_length {
                    Some(prev) if prev != n => {
                        return Err(ParseError::BadRequest("conflicting Content-Length"));
                    }
                    _ => content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in h.value.split(|&b| b == b',') {
                let coding = trim(coding);
                if coding.is_empty() {
                    continue;
                }
                if chunked {
                    // Anything after chunked means chunked is not the final coding.
                    return Err(ParseError::BadRequest("chunked must be the final coding"));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(ParseError::UnsupportedTransferCoding);
                }
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = trim(token);
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    upgrade_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                expect_continue = minor_version == 1;
            } else {
                return Err(ParseError::BadRequest("unsupported expectation"));
            }
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Err(ParseError::BadRequest("both Content-Length and Transfer-Encoding"));
    }
    if transfer_encoding && minor_version == 0 {
        return Err(ParseError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if transfer_encoding && !chunked {
        return Err(ParseError::BadRequest("Transfer-Encoding without a coding"));
    }
    if minor_version == 1 && hosts != 1 {
        return Err(ParseError::BadRequest("HTTP/1.1 needs exactly one Host"));
    }
    let body = match (chunked, content_length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0) | None) => BodyFraming::None,
        (false, Some(n)) if n > limits.max_body => return Err(ParseError::BodyTooLarge),
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = if minor_version == 0 { keep_alive_token && !close } else { !close };
    let fields = headers
        .iter()
        .map(|h| (Span::of(raw, h.name.as_bytes()), Span::of(raw, h.value)))
        .collect();
    Ok(RequestHead {
        raw: raw.into(),
        method: Span::of(raw, method.as_bytes()),
        target: Span::of(raw, target.as_bytes()),
        fields,
        minor_version,
        body,
        keep_alive,
        expect_continue,
        upgrade: upgrade_token && upgrade_header,
    })
}

/// Content-Length: 1*DIGIT, no sign, no overflow.
fn parse_length(v: &[u8]) -> Result<u64, ParseError> {
    content_length(v).ok_or(ParseError::BadRequest("malformed Content-Length"))
}

/// A Content-Length value (1*DIGIT: no sign, no spaces inside, no overflow), shared by the
/// request and response parsers so both read lengths the same way.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Strips optional whitespace (SP / HTAB) around a field value.
pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<(RequestHead, usize)>, ParseError> {
        parse_request_head(raw.as_bytes(), &HttpLimits::default())
    }

    fn status(raw: &str) -> u16 {
        match parse(raw) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn a_simple_get() {
        let raw = "GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\n\r\nrest";
        let (head, len) = parse(raw).unwrap().unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!(head.method(), "GET");
        assert_eq!(head.path(), "/a/b");
        assert_eq!(head.query(), Some("x=1"));
        assert_eq!(head.body, BodyFraming::None);
        assert!(head.keep_alive);
        assert_eq!(head.header("HOST"), Some(&b"h"[..]));
    }

    /// RFC 9112 §2.2 lets a server take a bare LF as a line end; a proxy in front may not,
    /// and would see other headers: refused, wherever it is.
    #[test]
    fn bare_lf_line_ends_are_refused() {
        for raw in [
            "GET / HTTP/1.1\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n\n",
            "GET / HTTP/1.1\nHost: h\n\n",
            "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(
                parse(raw).map(|_| ()),
                Err(ParseError::BadRequest("a line ends in a bare LF, not CRLF")),
                "{raw:?}"
            );
        }
        assert_eq!(status("\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), 200);
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost: h\r\n"), 0);
        assert_eq!(status("GE"), 0);
    }

    #[test]
    fn framing_rules() {
        let h = |extra: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
        assert_eq!(
            parse(&h("Content-Length: 5\r\n")).unwrap().unwrap().0.body,
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse(&h("Content-Length: 5, 5\r\n")).unwrap().unwrap().0.body,
            BodyFraming::Length(5)
        );
        assert_eq!(
            parse(&h("Transfer-Encoding: chunked\r\n")).unwrap().unwrap().0.body,
            BodyFraming::Chunked
        );
        assert_eq!(status(&h("Content-Length: 5\r\nContent-Length: 6\r\n")), 400);
        assert_eq!(status(&h("Content-Length: -1\r\n")), 400);
        assert_eq!(status(&h("Content-Length: +5\r\n")), 400);
        assert_eq!(status(&h("Content-Length: 99999999999999999999999\r\n")), 400);
        assert_eq!(status(&h("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n")), 400);
        assert_eq!(status(&h("Transfer-Encoding: gzip\r\n")), 501);
        assert_eq!(status(&h("Transfer-Encoding: chunked, gzip\r\n")), 400);
        assert_eq!(status(&h("Transfer-Encoding: gzip, chunked\r\n")), 501);
        assert_eq!(status(&h("Content-Length: 2000000\r\n")), 413);
        assert_eq!(status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    }

    #[test]
    fn malformed_heads_are_refused() {
        assert_eq!(status("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), 400, "space before colon");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"), 400, "obs-fold");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: h\0\r\n\r\n"), 400, "NUL in a value");
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), 505);
        assert_eq!(status("GET / FTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("\x01\x02garbage\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: h\r\nExpect: teapot\r\n\r\n"), 400);
    }

    #[test]
    fn limits_give_their_statuses() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(9000));
        assert_eq!(status(&long), 414);
        // A huge URL still arriving is refused before the head completes.
        let arriving = format!("GET /{}", "a".repeat(9000));
        assert_eq!(status(&arriving), 414);
        let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n")), 431);
        let big = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n", "v".repeat(17 * 1024));
        assert_eq!(status(&big), 431, "an incomplete head past the byte limit");
    }

    #[test]
    fn connection_semantics() {
        let ka = |raw: &str| parse(raw).unwrap().unwrap().0.keep_alive;
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
        let head =
            parse("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n").unwrap().unwrap().0;
        assert!(head.expect_continue);
        let up = parse("GET /s HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: dap\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(up.upgrade);
    }
}

/// A whole request, as a simple handler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The head.
    pub head: RequestHead,
    /// The body, chunked coding removed.
    pub body: bytes::Bytes,
    /// The client's address (`None` on Unix sockets).
    pub peer: Option<std::net::SocketAddr>,
}

impl Request {
    /// The method token.
    pub fn method(&self) -> &str {
        self.head.method()
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The query part of the target, if any.
    pub fn query(&self) -> Option<&str> {
        self.head.query()
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(name)
    }
}
