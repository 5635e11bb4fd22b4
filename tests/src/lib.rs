//! dap-tests: end-to-end tests over real loopback sockets, and the helpers they share.
//!
//! Per-crate integration tests live beside each crate (`reactor/tests/…`); this crate holds the
//! tests that cross crates (client ↔ dapd, stream over HTTP and UDP) as they arrive, and the
//! bodies of the fuzz targets ([`fuzz`]), which `fuzz/` runs under libFuzzer and
//! `tests/fuzz_corpus.rs` replays over the corpus on the stable toolchain.
#![forbid(unsafe_code)]

pub mod fuzz;
