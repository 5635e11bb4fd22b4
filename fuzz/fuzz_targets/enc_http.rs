//! `enc_http`: see `dap_tests::fuzz::enc_http` (tests/src/fuzz/enc_http.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::enc_http::run(data));
