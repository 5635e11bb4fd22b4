//! `urls`: the URLs the HTTP client takes and the uplinks a dap client is given. The first
//! byte picks:
//!
//! - even: the rest is a URL for `Request::new`. A URL it takes gives a request-target
//!   without a fragment, spaces or controls, and a head that, when the target is plain
//!   RFC 3986, our own server reads back to the same target and `Host`; and the URL built
//!   again from the scheme, `Host` and target is the same request.
//! - odd: the rest is an uplink as `dap-cli --uplink` takes it (`[http[s]://]host:port[/]`,
//!   the scheme and trailing slashes cut, then `Uplink::parse`): an uplink it takes shows
//!   as text that reads back to it, and one with a host name makes the URL a client builds
//!   on it for an HTTPS uplink (`https://HOST:PORT`).

use dap_client::Uplink;
use dap_net::http::client::{Method, Request};
use dap_net::http::{HttpLimits, parse_request_head};

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(body);
    if which % 2 == 0 {
        url(&text);
    } else {
        uplink(&text);
    }
}

/// RFC 3986 characters of a path and query (percent-encoded triplets aside).
fn plain(target: &str) -> bool {
    target.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b))
}

fn url(text: &str) {
    let Ok(req) = Request::new(Method::Get, text) else { return };
    let target = req.target();
    assert!(target.starts_with('/'));
    assert!(target.bytes().all(|b| b > b' ' && b < 0x7f && b != b'#'), "{target:?}");
    assert!(req.addr().is_some() != req.unresolved_name().is_some());
    let host = req.host();
    let head = req.encode_head();
    if plain(target) {
        let (parsed, used) = parse_request_head(&head, &HttpLimits::default())
            .expect("our server takes the head")
            .expect("the head is whole");
        assert_eq!(used, head.len());
        assert_eq!(parsed.target(), target);
        assert_eq!(parsed.header("host"), Some(host.as_bytes()));
    }
    let scheme = if req.is_tls() { "https" } else { "http" };
    let again = Request::new(Method::Get, &format!("{scheme}://{host}{target}"))
        .expect("the URL built again is taken");
    assert_eq!(again.target(), target);
    assert_eq!(again.host(), host);
    assert_eq!(again.addr(), req.addr());
    assert_eq!(again.unresolved_name(), req.unresolved_name());
    assert_eq!(again.is_tls(), req.is_tls());
}

fn uplink(text: &str) {
    // What dap-cli does with its --uplink (client/src/bin/dap-cli/main.rs).
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text)
        .trim_end_matches('/');
    let Ok(up) = Uplink::parse(rest) else { return };
    let shown = up.to_string();
    assert_eq!(Uplink::parse(&shown).ok(), Some(up.clone()), "{text:?} shows as {shown:?}");
    if let Uplink::Host(name, port) = &up {
        assert_eq!(Uplink::new(name, *port).ok(), Some(up.clone()));
        if *port != 0 {
            let req = Request::new(Method::Post, &format!("https://{name}:{port}/enc_init"))
                .unwrap_or_else(|e| panic!("uplink {text:?}: {e}"));
            assert_eq!(req.unresolved_name(), Some(name.trim_end_matches('.')));
        }
    }
}
