//! `http_response`: the HTTP client's response parser. The first byte sets the request
//! method (bit 0: `HEAD`), the limits (bit 1: small ones) and how the rest arrives (bit 2:
//! one byte at a time; else in two pieces, cut where the second byte says). Whatever the
//! pieces, the parser must read the same response as when it gets everything at once, or
//! refuse it both ways; a
//! response must say how many bytes were its own, and those bytes alone must give the same
//! response; a body must keep to its declared length and to the limits.

use dap_net::http::client::Response;
use dap_net::http::client::{ClientConfig, Method, Parsed, ResponseParseError, ResponseParser};

/// The target.
pub fn run(data: &[u8]) {
    let [flags, cut, data @ ..] = data else { return };
    let method = if flags & 1 != 0 { Method::Head } else { Method::Get };
    let mut config = ClientConfig::default();
    if flags & 2 != 0 {
        config.max_response_bytes = 1024;
        config.max_header_bytes = 256;
        config.max_headers = 8;
    }
    let whole = drive(method, &config, &[data]);
    let pieces: Vec<&[u8]> = if flags & 4 != 0 {
        data.chunks(1).collect()
    } else {
        let at = usize::from(*cut) * data.len() / 256;
        vec![&data[..at], &data[at..]]
    };
    let split = drive(method, &config, &pieces);
    // A response is read the same whatever the pieces. A refusal may differ in kind: a
    // head is parsed only once a piece brings a line end, so bytes that would be refused
    // as malformed can wait for more and end as incomplete or too large instead.
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the response depends on how the bytes arrive"),
        (Err(_), Err(_)) => {}
        _ => panic!("{whole:?} whole, {split:?} in pieces"),
    }
    let Ok((resp, used)) = whole else { return };
    assert!(used <= data.len());
    assert!((100..=599).contains(&resp.status) && resp.status / 100 != 1 || resp.status == 101);
    assert!(resp.body.len() as u64 <= config.max_response_bytes);
    if method == Method::Head || matches!(resp.status, 101 | 204 | 304) {
        assert!(resp.body.is_empty());
    }
    if let Some(v) = resp.header("content-length")
        && !resp.body.is_empty()
        && resp.header("transfer-encoding").is_none()
    {
        let n: u64 = std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.split(',').next()?.trim().parse().ok())
            .expect("a body framed by Content-Length has a valid one");
        assert_eq!(resp.body.len() as u64, n);
    }
    // The bytes it took are the whole response.
    assert_eq!(drive(method, &config, &[&data[..used]]), Ok((resp, used)));
}

/// Feeds `pieces` in turn, then reports the end of the connection: the response and the
/// bytes it took, or the error.
fn drive(
    method: Method,
    config: &ClientConfig,
    pieces: &[&[u8]],
) -> Result<(Response, usize), ResponseParseError> {
    let mut p = ResponseParser::new(method, config);
    let mut taken = 0;
    for piece in pieces {
        match p.feed(piece)? {
            Parsed::Complete { response, used } => {
                assert!(used <= piece.len());
                return Ok((response, taken + used));
            }
            Parsed::Partial => taken += piece.len(),
        }
    }
    let response = p.finish()?;
    Ok((response, taken))
}
