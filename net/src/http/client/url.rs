//! The small part of URL parsing an HTTP/1.1 client needs:
//! `http[s]://host[:port][/path][?query]`.
//!
//! Deliberately strict and small rather than a WHATWG URL parser: whatever is not plainly one
//! of the forms below is refused, so that nothing we put on the request line, in `Host` or in
//! the TLS server name was guessed at.
//!
//! * the scheme is `http` or `https` (any case); `https` means TLS, and the host as written
//!   (the name, or the address literal) is the name the server's certificate is checked
//!   against and sent as SNI — whatever address the request is sent to;
//! * the host is an IPv4 literal, a bracketed IPv6 literal (no zone id), or a DNS name of
//!   letters, digits, `-`, `_` and `.` (kept, lowercased, for the caller to resolve); for
//!   `https` the name must also be a valid TLS server name (no label starting or ending
//!   with `-`);
//! * the port is 1..=65535, 80 (`http`) or 443 (`https`) when absent;
//! * path and query are sent as written (they must already be percent-encoded: spaces,
//!   controls and non-ASCII bytes are refused); a fragment is dropped, as HTTP requires.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustls::pki_types::ServerName;

/// Where a URL points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// An address literal: connect to it directly.
    Ip(IpAddr),
    /// A name, lowercased, that must be resolved first.
    Name(String),
}

/// A parsed `http://` or `https://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Url {
    /// `https`: the connection runs TLS.
    pub(crate) tls: bool,
    pub(crate) host: Host,
    pub(crate) port: u16,
    /// Origin-form request-target: path (at least `/`) and query.
    pub(crate) target: String,
}

const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;
/// Longest DNS name (RFC 1035), without the trailing dot.
const MAX_NAME: usize = 253;

impl Url {
    /// Parses `s`; the error says what is wrong with it.
    pub(crate) fn parse(s: &str) -> Result<Url, &'static str> {
        if s.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err("spaces, control characters and non-ASCII must be percent-encoded");
        }
        let (scheme, rest) = s.split_once("://").ok_or("expected http[s]://host/...")?;
        let tls = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err("only http:// and https:// URLs are supported");
        };
        // The fragment never leaves the client.
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let target = match target.as_bytes().first() {
            None => "/".to_owned(),
            Some(b'?') => format!("/{target}"),
            Some(_) => target.to_owned(),
        };
        let default_port = if tls { HTTPS_PORT } else { HTTP_PORT };
        let (host, port) = parse_authority(authority, default_port)?;
        if let (true, Host::Name(name)) = (tls, &host)
            && ServerName::try_from(name.as_str()).is_err()
        {
            return Err("invalid host name");
        }
        Ok(Url { tls, host, port, target })
    }

    /// The name the server's certificate must hold, also sent as SNI: the URL's host name,
    /// or its address literal.
    pub(crate) fn server_name(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }

    /// The `Host` header value: the authority as written, minus a default port.
    pub(crate) fn host_header(&self) -> String {
        let host = match &self.host {
            Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Host::Name(name) => name.clone(),
        };
        let default_port = if self.tls { HTTPS_PORT } else { HTTP_PORT };
        if self.port == default_port { host } else { format!("{host}:{}", self.port) }
    }
}

fn parse_authority(authority: &str, default_port: u16) -> Result<(Host, u16), &'static str> {
    if authority.contains('@') {
        return Err("user information in URLs is not supported");
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (literal, after) = inner.split_once(']').ok_or("unterminated IPv6 literal")?;
        if literal.contains('%') {
            return Err("IPv6 zone ids are not supported");
        }
        let ip: Ipv6Addr = literal.parse().map_err(|_| "invalid IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the IPv6 literal")?),
        };
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("IPv6 addresses must be in brackets");
        }
        (parse_host(host)?, port)
    };
    Ok((host, parse_port(port, default_port)?))
}

fn parse_host(host: &str) -> Result<Host, &'static str> {
    if host.is_empty() {
        return Err("missing host");
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > MAX_NAME || !name.split('.').all(valid_label) {
        return Err("invalid host name");
    }
    // A name ending in a number is an IPv4 address in some other spelling ("1.2.3",
    // "0x7f.1"); refuse it rather than guess.
    if name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err("invalid IPv4 address");
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

fn parse_port(port: Option<&str>, default_port: u16) -> Result<u16, &'static str> {
    match port {
        // "http://host:/" is allowed by RFC 3986 and means the default port.
        None | Some("") => Ok(default_port),
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => match p.parse() {
            Ok(0) | Err(_) => Err("invalid port"),
            Ok(n) => Ok(n),
        },
        Some(_) => Err("invalid port"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn literals_names_ports_and_targets() {
        let u = ok("http://127.0.0.1:8080/a/b?x=1#frag");
        assert_eq!(u.host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(u.port, 8080);
        assert_eq!(u.target, "/a/b?x=1");
        assert_eq!(u.host_header(), "127.0.0.1:8080");

        let u = ok("HTTP://[::1]/");
        assert_eq!(u.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(u.port, 80);
        assert_eq!(u.host_header(), "[::1]");
        assert_eq!(ok("http://[::1]:81").host_header(), "[::1]:81");

        let u = ok("http://Example.COM.?q");
        assert_eq!(u.host, Host::Name("example.com".into()));
        assert_eq!(u.target, "/?q");
        assert_eq!(u.host_header(), "example.com");

        assert_eq!(ok("http://h").target, "/");
        assert_eq!(ok("http://h:/x").port, 80);
        assert_eq!(ok("http://h:65535").port, 65535);
        assert_eq!(ok("http://my_host-1.local").host, Host::Name("my_host-1.local".into()));
        assert!(!ok("http://h").tls);
    }

    #[test]
    fn https_default_port_and_server_name() {
        let u = ok("HTTPS://Example.com/x");
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert_eq!(u.host_header(), "example.com");
        assert_eq!(u.server_name(), "example.com");

        let u = ok("https://example.com:80/");
        assert_eq!(u.host_header(), "example.com:80");
        assert_eq!(ok("https://example.com:443/").host_header(), "example.com");
        assert_eq!(ok("http://example.com:443/").host_header(), "example.com:443");

        // Address literals are server names too; IPv6 without brackets.
        let u = ok("https://[::1]:8443/");
        assert_eq!((u.server_name().as_str(), u.host_header().as_str()), ("::1", "[::1]:8443"));
        assert_eq!(ok("https://127.0.0.1").server_name(), "127.0.0.1");
        assert_eq!(ok("https://my_host.local").server_name(), "my_host.local");

        // Accepted for http (the name only has to be resolvable), not as a TLS name.
        assert_eq!(ok("http://-a.example").host, Host::Name("-a.example".into()));
        assert_eq!(Url::parse("https://-a.example/").unwrap_err(), "invalid host name");
        assert_eq!(Url::parse("https://a-.example/").unwrap_err(), "invalid host name");
    }

    #[test]
    fn refuses_what_it_would_have_to_guess() {
        let bad = |s: &str| Url::parse(s).unwrap_err();
        assert_eq!(bad("ftp://h/"), "only http:// and https:// URLs are supported");
        assert_eq!(bad("h/x"), "expected http[s]://host/...");
        assert_eq!(bad("https://h:0/"), "invalid port");
        assert_eq!(bad("https://1.2.3/"), "invalid IPv4 address");
        assert_eq!(bad("http:///x"), "missing host");
        assert_eq!(bad("http://h:0/"), "invalid port");
        assert_eq!(bad("http://h:65536/"), "invalid port");
        assert_eq!(bad("http://h:+1/"), "invalid port");
        assert_eq!(bad("http://h:123456/"), "invalid port");
        assert_eq!(bad("http://::1/"), "IPv6 addresses must be in brackets");
        assert_eq!(bad("http://[::1/"), "unterminated IPv6 literal");
        assert_eq!(bad("http://[::1]x/"), "junk after the IPv6 literal");
        assert_eq!(bad("http://[fe80::1%25eth0]/"), "IPv6 zone ids are not supported");
        assert_eq!(bad("http://[1.2.3.4]/"), "invalid IPv6 address");
        assert_eq!(bad("http://u:p@h/"), "user information in URLs is not supported");
        assert_eq!(bad("http://1.2.3/"), "invalid IPv4 address");
        assert_eq!(bad("http://256.1.1.1/"), "invalid IPv4 address");
        assert_eq!(bad("http://a..b/"), "invalid host name");
        assert_eq!(bad("http://a!b/"), "invalid host name");
        assert!(bad("http://h/a b").contains("percent-encoded"));
        assert!(bad("http://h/\r\nX: y").contains("percent-encoded"));
        assert!(bad("http://h/é").contains("percent-encoded"));
        let long = format!("http://{}.com/", "a".repeat(64));
        assert_eq!(bad(&long), "invalid host name");
    }
}
