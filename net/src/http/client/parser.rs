//! `ResponseParser`: reads one response from bytes, sans-IO.
//!
//! The parser owns no socket and reads no clock: the connection handler feeds it whatever
//! arrived, and calls [`ResponseParser::finish`] when the peer closed. A TLS layer that
//! presents plaintext, a fuzzer, or a test feeding one byte at a time drive it the same way.

use bytes::Bytes;

use super::config::ClientConfig;
use super::request::Method;
use super::response::Response;
use crate::http::request::trim;
use crate::http::{ChunkedDecoder, ChunkedError};

/// Most body bytes reserved up front for a declared `Content-Length`: the declaration is the
/// peer's word, so memory grows with bytes that actually arrive.
const MAX_RESERVE: usize = 64 * 1024;
/// Header fields held on the stack while parsing; larger limits use the heap.
const STACK_HEADERS: usize = 64;

/// Why a response was refused. After any of these the connection cannot be trusted and is
/// closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseParseError {
    /// Not a valid HTTP/1.x response, or framing that could be read more than one way.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// Past `max_response_bytes`, `max_header_bytes` or `max_headers`.
    #[error("response larger than the configured limit")]
    TooLarge,
    /// [`ResponseParser::finish`] was called before the response was complete.
    #[error("the response is incomplete")]
    Incomplete,
}

/// What a [`ResponseParser::feed`] call achieved.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // Returned once per response; boxing would only add an allocation.
pub enum Parsed {
    /// All the input was taken; more is needed (or, for a body read until the connection
    /// closes, [`ResponseParser::finish`]).
    Partial,
    /// The response is complete. `used` bytes of this input belonged to it; anything after
    /// them is not part of this response.
    Complete {
        /// The response.
        response: Response,
        /// Input bytes taken by this call.
        used: usize,
    },
}

/// Framing of a response body (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `HEAD`, 1xx, 204 and 304: the head is all there is.
    None,
    Length(u64),
    Chunked,
    /// No length given: the body ends when the server closes the connection.
    UntilClose,
}

#[derive(Clone, Debug)]
enum State {
    /// Reading a head into `head_buf` (interim 1xx heads come back here).
    Head,
    /// Body bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    /// The response was handed out.
    Done,
    /// Refused; every later call reports the same error.
    Failed(ResponseParseError),
}

/// The final response head, kept while its body arrives.
#[derive(Clone, Debug)]
struct Head {
    status: u16,
    reason: String,
    minor_version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

/// Reads one HTTP/1.x response, incrementally, under hard limits.
///
/// Call [`feed`](Self::feed) with bytes as they arrive until it returns
/// [`Parsed::Complete`] or an error. If the peer closes the connection first, call
/// [`finish`](Self::finish): that completes a body delimited by the close, and reports
/// [`ResponseParseError::Incomplete`] otherwise. After a complete response or an error the
/// parser is spent.
///
/// Memory is bounded by the configuration: the head buffer by `max_header_bytes`, the body
/// by `max_response_bytes`; a `Content-Length` beyond the limit is refused as soon as the
/// head is read, before any body byte is stored.
///
/// ```
/// use dap_net::http::client::{ClientConfig, Method, Parsed, ResponseParser};
///
/// let mut p = ResponseParser::new(Method::Get, &ClientConfig::default());
/// assert!(matches!(p.feed(b"HTTP/1.1 200 OK\r\nContent-Len")?, Parsed::Partial));
/// match p.feed(b"gth: 2\r\n\r\nhi")? {
///     Parsed::Complete { response, used } => {
///         assert_eq!(response.status, 200);
///         assert_eq!(&response.body[..], b"hi");
///         assert_eq!(used, 12);
///     }
///     Parsed::Partial => unreachable!(),
/// }
/// # Ok::<(), dap_net::http::client::ResponseParseError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ResponseParser {
    /// The request was `HEAD`: no body, whatever the headers say.
    head_request: bool,
    max_response: u64,
    max_header_bytes: usize,
    max_headers: usize,
    state: State,
    /// The head read so far; at most `max_header_bytes`. Only used in `State::Head`.
    head_buf: Vec<u8>,
    /// Bytes taken so far (every head, and the body as sent); at most `max_response`.
    seen: u64,
    /// The final head, while the body arrives.
    head: Option<Head>,
    body: Vec<u8>,
}

impl ResponseParser {
    /// A parser for the response to a `method` request, under `config`'s limits.
    pub fn new(method: Method, config: &ClientConfig) -> ResponseParser {
        ResponseParser {
            head_request: method == Method::Head,
            max_response: config.max_response_bytes,
            max_header_bytes: config.max_header_bytes,
            max_headers: config.max_headers,
            state: State::Head,
            head_buf: Vec::new(),
            seen: 0,
            head: None,
            body: Vec::new(),
        }
    }

    /// Takes bytes that arrived.
    ///
    /// # Errors
    /// [`ResponseParseError::Malformed`] or [`ResponseParseError::TooLarge`]; the same error
    /// again on every later call.
    pub fn feed(&mut self, input: &[u8]) -> Result<Parsed, ResponseParseError> {
        let result = self.feed_inner(input);
        if let Err(e) = result {
            self.state = State::Failed(e);
            self.head_buf = Vec::new();
            self.body = Vec::new();
        }
        result
    }

    /// The peer closed the connection: completes a body that runs until the close.
    ///
    /// # Errors
    /// [`ResponseParseError::Incomplete`] when the response was not complete (nothing, part
    /// of a head, or a body short of its length or final chunk); an earlier error again.
    pub fn finish(&mut self) -> Result<Response, ResponseParseError> {
        match self.state {
            State::UntilClose => {
                self.state = State::Done;
                self.build()
            }
            State::Failed(e) => Err(e),
            State::Done => Err(ResponseParseError::Malformed("the response was already complete")),
            State::Head | State::Length(_) | State::Chunked(_) => {
                self.state = State::Failed(ResponseParseError::Incomplete);
                Err(ResponseParseError::Incomplete)
            }
        }
    }

    fn feed_inner(&mut self, input: &[u8]) -> Result<Parsed, ResponseParseError> {
        let mut i = 0;
        loop {
            let rest = &input[i..];
            match &mut self.state {
                State::Failed(e) => return Err(*e),
                State::Done => {
                    return Err(ResponseParseError::Malformed("the response was already complete"));
                }
                State::Head => {
                    if rest.is_empty() {
                        return Ok(Parsed::Partial);
                    }
                    let start = self.head_buf.len();
                    let take = self.max_header_bytes.saturating_sub(start).min(rest.len());
                    let new = &rest[..take];
                    self.head_buf.extend_from_slice(new);
                    // Every head ends in LF, so only new input holding one can complete it:
                    // a head trickling in byte by byte is parsed once per line, not per byte.
                    if new.contains(&b'\n')
                        && let Some((head, len)) = parse_head(&self.head_buf, self.max_headers)?
                    {
                        // Earlier input was parsed when it arrived and was incomplete, so the
                        // head ends in this input.
                        let used = len
                            .checked_sub(start)
                            .ok_or(ResponseParseError::Malformed("head ended in earlier input"))?;
                        count(&mut self.seen, used as u64, self.max_response)?;
                        i += used;
                        self.head_buf.clear();
                        if let Some(response) = self.start_body(head)? {
                            return Ok(Parsed::Complete { response, used: i });
                        }
                        continue;
                    }
                    count(&mut self.seen, take as u64, self.max_response)?;
                    i += take;
                    if self.head_buf.len() >= self.max_header_bytes {
                        return Err(ResponseParseError::TooLarge);
                    }
                }
                State::Length(left) => {
                    let n = rest.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    self.body.extend_from_slice(&rest[..n]);
                    count(&mut self.seen, n as u64, self.max_response)?;
                    i += n;
                    *left -= n as u64;
                    if *left == 0 {
                        return Ok(Parsed::Complete { response: self.done()?, used: i });
                    }
                    return Ok(Parsed::Partial);
                }
                State::Chunked(decoder) => {
                    let used = decoder.decode(rest, &mut self.body).map_err(|e| match e {
                        ChunkedError::TooLarge => ResponseParseError::TooLarge,
                        ChunkedError::Malformed(why) => ResponseParseError::Malformed(why),
                    })?;
                    let done = decoder.is_done();
                    // Counts chunk framing and trailers too: the cap is on bytes received.
                    count(&mut self.seen, used as u64, self.max_response)?;
                    i += used;
                    if done {
                        return Ok(Parsed::Complete { response: self.done()?, used: i });
                    }
                    return Ok(Parsed::Partial);
                }
                State::UntilClose => {
                    // Checked before storing: nothing past the cap is kept.
                    count(&mut self.seen, rest.len() as u64, self.max_response)?;
                    self.body.extend_from_slice(rest);
                    return Ok(Parsed::Partial);
                }
            }
        }
    }

    /// Sets up for the body of `head`; returns the response if the head was all of it.
    fn start_body(&mut self, head: Head) -> Result<Option<Response>, ResponseParseError> {
        if (100..200).contains(&head.status) && head.status != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response follows.
            return Ok(None);
        }
        let framing = framing(&head, self.head_request)?;
        self.head = Some(head);
        let remaining = self.max_response.saturating_sub(self.seen);
        self.state = match framing {
            Framing::None | Framing::Length(0) => return self.done().map(Some),
            Framing::Length(n) if n > remaining => return Err(ResponseParseError::TooLarge),
            Framing::Length(n) => {
                self.body.reserve(usize::try_from(n).unwrap_or(usize::MAX).min(MAX_RESERVE));
                State::Length(n)
            }
            Framing::Chunked => State::Chunked(ChunkedDecoder::new(remaining)),
            Framing::UntilClose => State::UntilClose,
        };
        Ok(None)
    }

    fn done(&mut self) -> Result<Response, ResponseParseError> {
        self.state = State::Done;
        self.build()
    }

    fn build(&mut self) -> Result<Response, ResponseParseError> {
        let head = self.head.take().ok_or(ResponseParseError::Malformed("no response head"))?;
        Ok(Response {
            status: head.status,
            reason: head.reason,
            minor_version: head.minor_version,
            headers: head.headers,
            body: Bytes::from(std::mem::take(&mut self.body)),
        })
    }
}

/// Adds `n` bytes to the running total, refusing to pass `max`.
fn count(seen: &mut u64, n: u64, max: u64) -> Result<(), ResponseParseError> {
    *seen = seen.saturating_add(n);
    if *seen > max {
        return Err(ResponseParseError::TooLarge);
    }
    Ok(())
}

/// Parses a response head at the start of `buf`: `None` while incomplete.
fn parse_head(buf: &[u8], max_headers: usize) -> Result<Option<(Head, usize)>, ResponseParseError> {
    use ResponseParseError::{Malformed, TooLarge};
    let mut small = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut large;
    let headers: &mut [httparse::Header<'_>] = if max_headers <= STACK_HEADERS {
        &mut small[..max_headers]
    } else {
        large = vec![httparse::EMPTY_HEADER; max_headers];
        &mut large
    };
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TooLarge),
        Err(httparse::Error::Version) => return Err(Malformed("not an HTTP/1.x status line")),
        Err(httparse::Error::Status) => return Err(Malformed("invalid status line")),
        Err(httparse::Error::HeaderName) => return Err(Malformed("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(Malformed("invalid header value")),
        Err(_) => return Err(Malformed("malformed status line or header")),
    };
    let status = resp.code.ok_or(Malformed("no status code"))?;
    if !(100..=599).contains(&status) {
        return Err(Malformed("status code out of range"));
    }
    let minor_version = resp.version.ok_or(Malformed("no version"))?;
    let headers = resp.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect();
    let reason = resp.reason.unwrap_or("").to_owned();
    Ok(Some((Head { status, reason, minor_version, headers }, len)))
}

/// How the body of a response is delimited (RFC 9112 §6.3), refusing anything ambiguous.
fn framing(head: &Head, head_request: bool) -> Result<Framing, ResponseParseError> {
    use ResponseParseError::Malformed;
    if head_request || head.status < 200 || head.status == 204 || head.status == 304 {
        return Ok(Framing::None);
    }
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("content-length") {
            // A list of identical values is one value (RFC 9110 §8.6); anything else is fatal.
            for part in value.split(|&b| b == b',') {
                let n = parse_length(trim(part))?;
                match length {
                    Some(prev) if prev != n => return Err(Malformed("conflicting Content-Length")),
                    _ => length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in value.split(|&b| b == b',').map(trim).filter(|c| !c.is_empty()) {
                if chunked {
                    return Err(Malformed("chunked must be the final transfer coding"));
                }
                // We send no TE header, so a server may apply no other coding (RFC 9112 §6.1).
                if !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(Malformed("unsupported transfer coding"));
                }
                chunked = true;
            }
        }
    }
    if transfer_encoding {
        // Either could be what an intermediary believed: one request per connection makes
        // response splitting moot, but a response read two ways is not one to trust.
        if length.is_some() {
            return Err(Malformed("both Content-Length and Transfer-Encoding"));
        }
        if head.minor_version == 0 {
            return Err(Malformed("Transfer-Encoding in an HTTP/1.0 response"));
        }
        if !chunked {
            return Err(Malformed("Transfer-Encoding without a coding"));
        }
        return Ok(Framing::Chunked);
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// Content-Length: 1*DIGIT, no sign, no overflow.
fn parse_length(v: &[u8]) -> Result<u64, ResponseParseError> {
    crate::http::request::content_length(v)
        .ok_or(ResponseParseError::Malformed("malformed Content-Length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResponseParseError::{Incomplete, Malformed, TooLarge};

    fn config() -> ClientConfig {
        ClientConfig::default()
    }

    /// Feeds `pieces` in order; at the end, `finish` if the response is still partial.
    /// Returns the response and the input bytes it took.
    fn run(
        method: Method,
        cfg: &ClientConfig,
        pieces: &[&[u8]],
    ) -> Result<(Response, usize), ResponseParseError> {
        let mut p = ResponseParser::new(method, cfg);
        let mut offset = 0;
        for piece in pieces {
            match p.feed(piece)? {
                Parsed::Complete { response, used } => {
                    assert!(used <= piece.len());
                    return Ok((response, offset + used));
                }
                Parsed::Partial => offset += piece.len(),
            }
        }
        p.finish().map(|r| (r, offset))
    }

    /// Parses `raw` whole, split in two at every position, and one byte at a time; all must
    /// agree. Returns the result of the whole parse.
    fn parse_every_way(
        method: Method,
        cfg: &ClientConfig,
        raw: &[u8],
    ) -> Result<(Response, usize), ResponseParseError> {
        let whole = run(method, cfg, &[raw]);
        for k in 0..=raw.len() {
            let (a, b) = raw.split_at(k);
            assert_eq!(run(method, cfg, &[a, b]), whole, "split at {k}");
        }
        let bytes: Vec<&[u8]> = raw.chunks(1).collect();
        assert_eq!(run(method, cfg, &bytes), whole, "byte by byte");
        whole
    }

    fn ok(raw: &[u8]) -> (Response, usize) {
        parse_every_way(Method::Get, &config(), raw).unwrap()
    }

    fn err(raw: &[u8]) -> ResponseParseError {
        parse_every_way(Method::Get, &config(), raw).unwrap_err()
    }

    #[test]
    fn content_length_body() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let (r, used) = ok(raw);
        assert_eq!((r.status, r.reason.as_str(), r.minor_version), (200, "OK", 1));
        assert_eq!(r.header("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(&r.body[..], b"hello");
        assert_eq!(&raw[used..], b"EXTRA");
        let (r, _) = ok(b"HTTP/1.0 404 Not Found\r\nContent-Length: 3, 3\r\n\r\nnop");
        assert_eq!((r.status, r.minor_version, &r.body[..]), (404, 0, &b"nop"[..]));
        let (r, used) = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nX");
        assert!(r.body.is_empty());
        assert_eq!(used, 38);
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4;name=value\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\nEXTRA";
        let (r, used) = ok(raw);
        assert_eq!(&r.body[..], b"Wikipedia");
        assert_eq!(&raw[used..], b"EXTRA");
        let (r, _) = ok(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n");
        assert!(r.body.is_empty());
    }

    #[test]
    fn body_until_close() {
        let (r, used) = ok(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nall of this");
        assert_eq!(&r.body[..], b"all of this");
        assert_eq!(used, 41);
        let (r, _) = ok(b"HTTP/1.0 200 OK\r\n\r\n");
        assert!(r.body.is_empty());
    }

    #[test]
    fn heads_without_bodies() {
        let cfg = config();
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nNEXT";
        let (r, used) = parse_every_way(Method::Head, &cfg, raw).unwrap();
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), Some(&b"100"[..]));
        assert_eq!(&raw[used..], b"NEXT");
        let (r, _) = parse_every_way(
            Method::Head,
            &cfg,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        assert!(r.body.is_empty());
        for status in ["204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 7\r\n\r\nNEXT");
            let (r, used) = ok(raw.as_bytes());
            assert!(r.body.is_empty());
            assert_eq!(&raw.as_bytes()[used..], b"NEXT");
        }
        // 101 ends the exchange; this client does not switch protocols.
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw";
        let (r, used) = ok(raw);
        assert_eq!((r.status, used), (101, raw.len() - 3));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n\
                    HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let (r, used) = ok(raw);
        assert_eq!(r.status, 201);
        assert_eq!(r.header("link"), None, "headers of interim responses are dropped");
        assert_eq!(&r.body[..], b"ok");
        assert_eq!(used, raw.len());
    }

    #[test]
    fn reason_may_be_missing() {
        let (r, _) = ok(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((r.status, r.reason.as_str()), (200, ""));
        let (r, _) = ok(b"HTTP/1.1 299 Whatever You Like\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.reason, "Whatever You Like");
    }

    #[test]
    fn malformed_responses_are_refused() {
        let m = |why: &'static str| Malformed(why);
        assert_eq!(err(b"garbage\r\n\r\n"), m("not an HTTP/1.x status line"));
        assert_eq!(err(b"HTTP/2.0 200 OK\r\n\r\n"), m("not an HTTP/1.x status line"));
        assert_eq!(err(b"HTTP/1.1 2000 OK\r\n\r\n"), m("invalid status line"));
        assert_eq!(err(b"HTTP/1.1 OK\r\n\r\n"), m("invalid status line"));
        assert_eq!(err(b"HTTP/1.1 099 Low\r\n\r\n"), m("status code out of range"));
        assert_eq!(err(b"HTTP/1.1 600 High\r\n\r\n"), m("status code out of range"));
        assert_eq!(err(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n"), m("invalid header name"));
        assert_eq!(err(b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n"), m("invalid header value"));
        let framing = |h: &str| err(format!("HTTP/1.1 200 OK\r\n{h}\r\n\r\n").as_bytes());
        assert_eq!(
            framing("Content-Length: 5\r\nContent-Length: 6"),
            m("conflicting Content-Length")
        );
        assert_eq!(framing("Content-Length: 5, 6"), m("conflicting Content-Length"));
        assert_eq!(framing("Content-Length: -1"), m("malformed Content-Length"));
        assert_eq!(framing("Content-Length: +5"), m("malformed Content-Length"));
        assert_eq!(framing("Content-Length: "), m("malformed Content-Length"));
        assert_eq!(
            framing("Content-Length: 99999999999999999999999"),
            m("malformed Content-Length")
        );
        assert_eq!(
            framing("Content-Length: 5\r\nTransfer-Encoding: chunked"),
            m("both Content-Length and Transfer-Encoding")
        );
        assert_eq!(framing("Transfer-Encoding: gzip"), m("unsupported transfer coding"));
        assert_eq!(framing("Transfer-Encoding: gzip, chunked"), m("unsupported transfer coding"));
        assert_eq!(
            framing("Transfer-Encoding: chunked, gzip"),
            m("chunked must be the final transfer coding")
        );
        assert_eq!(framing("Transfer-Encoding: "), m("Transfer-Encoding without a coding"));
        assert_eq!(
            err(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            m("Transfer-Encoding in an HTTP/1.0 response")
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            m("missing chunk size")
        );
    }

    #[test]
    fn incomplete_responses_report_incomplete() {
        assert_eq!(err(b""), Incomplete);
        assert_eq!(err(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"), Incomplete);
        assert_eq!(err(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"), Incomplete);
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello"),
            Incomplete
        );
    }

    #[test]
    fn limits_hold() {
        let mut cfg = config();
        cfg.max_response_bytes = 100;
        // Head plus body exactly at the cap is fine; one more byte is not.
        let at_cap = |extra: u64| {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: NN\r\n\r\n";
            let len = 100 - head.len() as u64 + extra;
            let mut raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
            raw.resize(raw.len() + len as usize, b'x');
            raw
        };
        assert_eq!(run(Method::Get, &cfg, &[&at_cap(0)[..]]).unwrap().0.body.len(), 61);
        // A declared length past the cap is refused before any body byte arrives.
        let over = at_cap(1);
        assert_eq!(run(Method::Get, &cfg, &[&over[..39]]).unwrap_err(), TooLarge);
        let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        until_close.extend_from_slice(&[b'x'; 82]);
        assert_eq!(parse_every_way(Method::Get, &cfg, &until_close).unwrap_err(), TooLarge);
        until_close.pop();
        assert_eq!(parse_every_way(Method::Get, &cfg, &until_close).unwrap().0.body.len(), 81);
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n\
                        10\r\n0123456789abcdef\r\n0\r\n\r\n";
        assert_eq!(parse_every_way(Method::Get, &cfg, chunked).unwrap_err(), TooLarge);
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(5);
        assert_eq!(parse_every_way(Method::Get, &cfg, &interim).unwrap_err(), TooLarge);

        let mut cfg = config();
        cfg.max_header_bytes = 64;
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "v".repeat(64));
        assert_eq!(parse_every_way(Method::Get, &cfg, long.as_bytes()).unwrap_err(), TooLarge);
        let short = b"HTTP/1.1 200 OK\r\nX: v\r\nContent-Length: 1\r\n\r\nb";
        assert_eq!(parse_every_way(Method::Get, &cfg, short).unwrap().0.body.len(), 1);
        cfg.max_header_bytes = 0;
        assert_eq!(run(Method::Get, &cfg, &[b"H"]).unwrap_err(), TooLarge);

        let mut cfg = config();
        cfg.max_headers = 2;
        let three = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(parse_every_way(Method::Get, &cfg, three).unwrap_err(), TooLarge);
        cfg.max_headers = 100;
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 0\r\n\r\n");
        assert_eq!(run(Method::Get, &cfg, &[raw.as_bytes()]).unwrap_err(), TooLarge);
        cfg.max_headers = 101;
        assert_eq!(run(Method::Get, &cfg, &[raw.as_bytes()]).unwrap().0.headers.len(), 101);
    }

    #[test]
    fn a_spent_parser_stays_spent() {
        let mut p = ResponseParser::new(Method::Get, &config());
        assert_eq!(p.feed(b"junk\r\n").unwrap_err(), Malformed("not an HTTP/1.x status line"));
        assert_eq!(
            p.feed(b"HTTP/1.1 200 OK\r\n\r\n").unwrap_err(),
            Malformed("not an HTTP/1.x status line")
        );
        assert_eq!(p.finish().unwrap_err(), Malformed("not an HTTP/1.x status line"));

        let mut p = ResponseParser::new(Method::Get, &config());
        assert!(matches!(
            p.feed(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap(),
            Parsed::Complete { .. }
        ));
        assert!(matches!(p.feed(b"more"), Err(Malformed(_))));
        assert!(matches!(p.finish(), Err(Malformed(_))));
    }
}
