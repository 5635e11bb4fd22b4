//! `udp_endpoint`: see `dap_tests::fuzz::udp_endpoint` (tests/src/fuzz/udp_endpoint.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::udp_endpoint::run(data));
