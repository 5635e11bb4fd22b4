//! `stream_client`: see `dap_tests::fuzz::stream_client` (tests/src/fuzz/stream_client.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::stream_client::run(data));
