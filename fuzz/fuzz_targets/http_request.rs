//! `http_request`: see `dap_tests::fuzz::http_request` (tests/src/fuzz/http_request.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::http_request::run(data));
