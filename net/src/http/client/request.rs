//! `Request`: what to send, built from a URL, and its serialisation.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use super::error::ClientError;
use super::url::{Host, Url};

/// The request method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the response has no body, whatever its headers say.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `OPTIONS`.
    Options,
}

impl Method {
    /// The method token as sent on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }

    /// Methods whose requests announce their body length even when it is zero: a server may
    /// answer 411 to a `POST` or `PUT` without `Content-Length`.
    fn always_has_length(self) -> bool {
        matches!(self, Method::Post | Method::Put)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One HTTP/1.1 request: method, where to, extra headers and a body, over plain TCP
/// (`http://`) or TLS (`https://`).
///
/// The client writes `Host` (from the URL, unless set with
/// [`with_header`](Self::with_header)), `Content-Length` (for a body, and always for `POST`
/// and `PUT`) and `Connection: close`: each request has a connection of its own.
///
/// ```
/// use dap_net::http::client::{Method, Request};
///
/// let req = Request::post("http://127.0.0.1:8080/submit?x=1", &b"hello"[..])?
///     .with_header("Content-Type", "text/plain")?;
/// assert_eq!(req.method(), Method::Post);
/// assert_eq!(req.target(), "/submit?x=1");
/// assert_eq!(req.addr(), Some("127.0.0.1:8080".parse().unwrap()));
///
/// // Names are not resolved here: resolve them, then say where to connect.
/// let req = Request::get("http://example.com/")?;
/// assert_eq!(req.unresolved_name(), Some("example.com"));
/// let req = req.resolve_to("192.0.2.7".parse().unwrap());
/// assert_eq!(req.addr(), Some("192.0.2.7:80".parse().unwrap()));
/// assert_eq!(req.host(), "example.com");
///
/// // https: TLS, port 443 by default; the certificate is checked against the URL's host.
/// let req = Request::get("https://example.com/")?.resolve_to("192.0.2.7".parse().unwrap());
/// assert!(req.is_tls());
/// assert_eq!(req.addr(), Some("192.0.2.7:443".parse().unwrap()));
/// # Ok::<(), dap_net::http::client::ClientError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Request {
    method: Method,
    url: Url,
    /// The address to connect to: the URL's literal, or what the caller resolved the name to.
    addr: Option<SocketAddr>,
    /// Extra headers, validated when added.
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

impl Request {
    /// A request with no body to `url` (`http://host[:port][/path][?query]`, or `https://`
    /// for TLS).
    ///
    /// # Errors
    /// [`ClientError::BadUrl`] when the URL cannot be used.
    pub fn new(method: Method, url: &str) -> Result<Request, ClientError> {
        let url = Url::parse(url).map_err(ClientError::BadUrl)?;
        let addr = match url.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, url.port)),
            Host::Name(_) => None,
        };
        Ok(Request { method, url, addr, headers: Vec::new(), body: Bytes::new() })
    }

    /// A plain-TCP (`http`) request to `target` (path and query, e.g. `/a?b=1`) at `addr`,
    /// with `Host` set to the address.
    ///
    /// # Errors
    /// [`ClientError::BadUrl`] when `target` does not start with `/` or holds characters
    /// that must be percent-encoded.
    pub fn for_addr(
        method: Method,
        addr: SocketAddr,
        target: &str,
    ) -> Result<Request, ClientError> {
        if !target.starts_with('/') {
            return Err(ClientError::BadUrl("the target must start with /"));
        }
        let authority = match addr.ip() {
            IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
            IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
        };
        Request::new(method, &format!("http://{authority}{target}"))
    }

    /// `GET url`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn get(url: &str) -> Result<Request, ClientError> {
        Request::new(Method::Get, url)
    }

    /// `HEAD url`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn head(url: &str) -> Result<Request, ClientError> {
        Request::new(Method::Head, url)
    }

    /// `POST url` with `body` (sent with its `Content-Length`).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn post(url: &str, body: impl Into<Bytes>) -> Result<Request, ClientError> {
        Ok(Request::new(Method::Post, url)?.with_body(body))
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = body.into();
        self
    }

    /// Adds a header. `Host` replaces the one taken from the URL.
    ///
    /// # Errors
    /// [`ClientError::BadRequest`] for a name that is not an HTTP token, a value holding CR,
    /// LF or NUL (either would let the value inject headers), or `Content-Length`,
    /// `Transfer-Encoding` or `Connection`, which the client sets itself so that the
    /// framing it writes is the framing it declares.
    pub fn with_header(
        mut self,
        name: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Request, ClientError> {
        let value = value.as_ref();
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(ClientError::BadRequest("invalid header name"));
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ClientError::BadRequest("invalid header value"));
        }
        if ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|reserved| name.eq_ignore_ascii_case(reserved))
        {
            return Err(ClientError::BadRequest("framing headers are set by the client"));
        }
        if name.eq_ignore_ascii_case("host") {
            self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
        }
        self.headers.push((name.to_owned(), value.to_vec()));
        Ok(self)
    }

    /// Connects to `ip` (on the URL's port) instead of resolving the URL's name; `Host`
    /// keeps the name, and so does TLS: for `https` the server's certificate is checked
    /// against the URL's host, not against `ip`. Also replaces the address of a URL that
    /// held a literal.
    pub fn resolve_to(mut self, ip: IpAddr) -> Request {
        self.addr = Some(SocketAddr::new(ip, self.url.port));
        self
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Whether the request runs over TLS (an `https://` URL).
    pub fn is_tls(&self) -> bool {
        self.url.tls
    }

    /// For TLS: the name the server's certificate must hold, also sent as SNI.
    pub(crate) fn server_name(&self) -> String {
        self.url.server_name()
    }

    /// The request-target sent on the request line (path and query).
    pub fn target(&self) -> &str {
        &self.url.target
    }

    /// The `Host` header that will be sent.
    pub fn host(&self) -> String {
        match self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")) {
            Some((_, v)) => String::from_utf8_lossy(v).into_owned(),
            None => self.url.host_header(),
        }
    }

    /// Where the request will connect; `None` while the URL's name is unresolved.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The URL's host name when the caller still has to resolve it (see
    /// [`resolve_to`](Self::resolve_to)).
    pub fn unresolved_name(&self) -> Option<&str> {
        match (&self.url.host, self.addr) {
            (Host::Name(name), None) => Some(name),
            _ => None,
        }
    }

    /// The extra headers, in the order added.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The request head exactly as it goes on the wire; the body follows it.
    pub fn encode_head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.target().len());
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(self.url.host_header().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if !self.body.is_empty() || self.method.always_has_length() {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(req: &Request) -> String {
        String::from_utf8(req.encode_head()).unwrap()
    }

    #[test]
    fn get_and_post_heads() {
        let req = Request::get("http://10.0.0.1:8080/a?b=1").unwrap();
        assert_eq!(
            head(&req),
            "GET /a?b=1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nConnection: close\r\n\r\n"
        );
        let req =
            Request::post("http://[::1]/p", "hello").unwrap().with_header("X-Trace", "t1").unwrap();
        assert_eq!(
            head(&req),
            "POST /p HTTP/1.1\r\nHost: [::1]\r\nX-Trace: t1\r\nContent-Length: 5\r\n\
             Connection: close\r\n\r\n"
        );
        assert_eq!(req.body(), &Bytes::from_static(b"hello"));
        let empty = Request::post("http://1.2.3.4/", Bytes::new()).unwrap();
        assert!(head(&empty).contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn host_can_be_replaced_and_names_resolved() {
        let req = Request::get("https://example.com:81/").unwrap();
        assert!(req.is_tls());
        assert_eq!(req.addr(), None);
        assert_eq!(req.unresolved_name(), Some("example.com"));
        let req = req.resolve_to("::1".parse().unwrap());
        assert_eq!(req.addr(), Some("[::1]:81".parse().unwrap()));
        assert_eq!(req.unresolved_name(), None);
        assert!(head(&req).contains("Host: example.com:81\r\n"));
        let req = req.with_header("host", "other").unwrap().with_header("HOST", "third").unwrap();
        assert_eq!(req.host(), "third");
        assert_eq!(req.server_name(), "example.com", "Host does not change the TLS name");
        assert_eq!(head(&req).to_ascii_lowercase().matches("host: ").count(), 1);
    }

    #[test]
    fn for_addr_builds_the_authority() {
        let req = Request::for_addr(Method::Get, "[::1]:9000".parse().unwrap(), "/x").unwrap();
        assert_eq!(req.host(), "[::1]:9000");
        assert_eq!(req.addr(), Some("[::1]:9000".parse().unwrap()));
        let req = Request::for_addr(Method::Head, "127.0.0.1:80".parse().unwrap(), "/").unwrap();
        assert_eq!(req.host(), "127.0.0.1");
        assert!(Request::for_addr(Method::Get, "127.0.0.1:80".parse().unwrap(), "x").is_err());
    }

    #[test]
    fn refuses_injection_and_framing_headers() {
        let req = || Request::get("http://1.2.3.4/").unwrap();
        let bad = |name: &str, value: &str| match req().with_header(name, value) {
            Err(ClientError::BadRequest(why)) => why,
            other => panic!("{name}: {value:?} accepted: {other:?}"),
        };
        assert_eq!(bad("X", "a\r\nEvil: 1"), "invalid header value");
        assert_eq!(bad("X", "a\0"), "invalid header value");
        assert_eq!(bad("X Y", "a"), "invalid header name");
        assert_eq!(bad("", "a"), "invalid header name");
        assert_eq!(bad("content-length", "5"), "framing headers are set by the client");
        assert_eq!(bad("Transfer-Encoding", "chunked"), "framing headers are set by the client");
        assert_eq!(bad("Connection", "keep-alive"), "framing headers are set by the client");
        assert!(req().with_header("X-Tab", "a\tb").is_ok());
        assert!(matches!(Request::get("http://h/ x"), Err(ClientError::BadUrl(_))));
    }
}
