//! dap-net: servers, the HTTP/1.1 server and client, TLS, DNS, and the encryption handshake.
//!
//! Listeners spread over the reactor workers, an HTTP/1.1 server with streaming handlers on the
//! worker and whole-request ("simple") handlers on proc threads, an HTTP client on the reactor,
//! rustls layered into the esocket read/write path, a DNS resolver and a small authoritative
//! server, and `enc` (`/enc_init` and encrypted requests).
//!
//! The modules:
//!
//! * [`server`]: listeners spread over the workers, with allow and deny lists.
//! * [`limit`]: rates and counts per source address block (handshakes, connections).
//! * [`http`]: the sans-IO HTTP/1.1 pieces (request heads with RFC 9112 framing rules,
//!   chunked decoding, `Date`), the [server](http::server) (streaming handlers on the
//!   worker, whole-request "simple" handlers on proc threads) and the
//!   [client](http::client).
//! * [`tls`]: rustls layered into the esocket read/write path, server and client.
//! * [`dns`]: a resolver on UDP esockets and a small authoritative server.
//! * [`enc`]: the `/enc_init` handshake (X25519, Ed25519 node key and optional client
//!   certificates, HKDF-SHA256) and enc_http, requests whose sub-path, query and body are
//!   sealed with ChaCha20-Poly1305 or AES-256-GCM; the exact wire format is
//!   `docs/PROTOCOL.md`.
#![forbid(unsafe_code)]

pub mod dns;
pub mod enc;
pub mod histogram;
pub mod http;
pub mod limit;
pub mod server;
pub mod tls;
