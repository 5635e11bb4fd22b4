//! `Response`: what the server answered.

use bytes::Bytes;

/// A complete response: the final (non-1xx) status, its headers and the decoded body.
///
/// Interim 1xx responses are skipped; chunked bodies arrive de-chunked, and trailer fields
/// are read and dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The status code, 100..=599.
    pub status: u16,
    /// The reason phrase as sent (empty when absent or not valid UTF-8).
    pub reason: String,
    /// 0 for an HTTP/1.0 response, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in the order received; names as sent (compare them case-insensitively,
    /// or use [`header`](Self::header)).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (empty for `HEAD`, 1xx, 204 and 304 responses).
    pub body: Bytes,
}

impl Response {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers_named(name).next()
    }

    /// The first value of a header as text, if it is valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of a header, by case-insensitive name, in order.
    pub fn headers_named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &v[..])
    }

    /// True for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_ignores_case() {
        let r = Response {
            status: 200,
            reason: "OK".into(),
            minor_version: 1,
            headers: vec![
                ("Content-Type".into(), b"text/plain".to_vec()),
                ("Set-Cookie".into(), b"a=1".to_vec()),
                ("set-cookie".into(), b"b=2".to_vec()),
                ("X-Bin".into(), vec![0xff]),
            ],
            body: Bytes::new(),
        };
        assert_eq!(r.header("content-type"), Some(&b"text/plain"[..]));
        assert_eq!(r.header_str("CONTENT-TYPE"), Some("text/plain"));
        assert_eq!(r.headers_named("SET-COOKIE").collect::<Vec<_>>(), [&b"a=1"[..], b"b=2"]);
        assert_eq!(r.header("x-bin"), Some(&[0xff][..]));
        assert_eq!(r.header_str("x-bin"), None);
        assert_eq!(r.header("missing"), None);
        assert!(r.is_success());
    }
}
