//! `config`: see `dap_tests::fuzz::config` (tests/src/fuzz/config.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::config::run(data));
