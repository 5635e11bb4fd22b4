//! `http_request`: the HTTP request-head parser and, when a head parses with a chunked body,
//! the chunked decoder on the rest, split at a fuzzer-chosen point (the first byte). Neither
//! may panic, and what they report must be self-consistent.

use dap_net::http::{BodyFraming, ChunkedDecoder, HttpLimits, parse_request_head};

/// The target.
pub fn run(data: &[u8]) {
    let limits = HttpLimits::default();
    let Some((&split, data)) = data.split_first() else { return };
    match parse_request_head(data, &limits) {
        Ok(Some((head, used))) => {
            assert!(used <= data.len());
            assert!(used <= limits.max_header_bytes);
            assert!(head.target().len() <= limits.max_url);
            if let BodyFraming::Length(n) = head.body {
                assert!(n > 0 && n <= limits.max_body);
            }
            if head.body == BodyFraming::Chunked {
                let body = &data[used..];
                let cut = usize::from(split).min(body.len());
                let mut dec = ChunkedDecoder::new(limits.max_body);
                let mut out = Vec::new();
                if let Ok(a) = dec.decode(&body[..cut], &mut out)
                    && !dec.is_done()
                {
                    assert_eq!(a, cut);
                    let _ = dec.decode(&body[cut..], &mut out);
                }
                assert!(out.len() as u64 <= limits.max_body);
                assert_eq!(out.len() as u64, dec.total());
            }
        }
        Ok(None) => assert!(data.len() <= limits.max_header_bytes),
        Err(e) => assert!([400, 413, 414, 431, 501, 505].contains(&e.status())),
    }
}
