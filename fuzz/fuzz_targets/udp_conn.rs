//! `udp_conn`: see `dap_tests::fuzz::udp_conn` (tests/src/fuzz/udp_conn.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::udp_conn::run(data));
