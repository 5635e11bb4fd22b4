//! `stream_packets`: see `dap_tests::fuzz::stream_packets` (tests/src/fuzz/stream_packets.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::stream_packets::run(data));
