//! `dns`: see `dap_tests::fuzz::dns` (tests/src/fuzz/dns.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::dns::run(data));
