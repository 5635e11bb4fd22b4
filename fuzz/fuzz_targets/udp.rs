//! `udp`: see `dap_tests::fuzz::udp` (tests/src/fuzz/udp.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::udp::run(data));
