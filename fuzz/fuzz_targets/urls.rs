//! `urls`: see `dap_tests::fuzz::urls` (tests/src/fuzz/urls.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::urls::run(data));
