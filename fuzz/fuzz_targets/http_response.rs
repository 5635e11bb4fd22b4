//! `http_response`: see `dap_tests::fuzz::http_response` (tests/src/fuzz/http_response.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::http_response::run(data));
