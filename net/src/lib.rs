//! dap-net: servers, the HTTP/1.1 server and client, TLS, DNS, and the encryption handshake.
//!
//! Listeners spread over the reactor workers, an HTTP/1.1 server with streaming handlers on the
//! worker and whole-request ("simple") handlers on proc threads, an HTTP client on the reactor,
//! rustls layered into the esocket read/write path, a DNS resolver and a small authoritative
//! server, and `enc` (`/enc_init` and encrypted requests).
//!
//! This crate is a skeleton until the net issue lands; see `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
