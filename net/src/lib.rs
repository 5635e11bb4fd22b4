//! dap-net: servers, the HTTP/1.1 server and client, TLS, DNS, and the encryption handshake.
//!
//! Listeners spread over the reactor workers, an HTTP/1.1 server with streaming handlers on the
//! worker and whole-request ("simple") handlers on proc threads, an HTTP client on the reactor,
//! rustls layered into the esocket read/write path, a DNS resolver and a small authoritative
//! server, and `enc` (`/enc_init` and encrypted requests).
//!
//! So far: [`http`], the sans-IO HTTP/1.1 pieces (request heads with RFC 9112 framing
//! rules, chunked decoding, `Date`). The servers, client, TLS, DNS and enc follow.
#![forbid(unsafe_code)]

pub mod dns;
pub mod enc;
pub mod http;
pub mod server;
pub mod tls;
