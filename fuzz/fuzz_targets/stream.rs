//! `stream`: see `dap_tests::fuzz::stream` (tests/src/fuzz/stream.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::stream::run(data));
