//! dap-tests: end-to-end tests over real loopback sockets, and the helpers they share.
//!
//! Per-crate integration tests live beside each crate (`reactor/tests/…`); this crate holds the
//! tests that cross crates (client ↔ dapd, stream over HTTP and UDP) as they arrive.
#![forbid(unsafe_code)]
