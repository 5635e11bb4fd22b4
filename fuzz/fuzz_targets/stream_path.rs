//! `stream_path`: see `dap_tests::fuzz::stream_path` (tests/src/fuzz/stream_path.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::stream_path::run(data));
