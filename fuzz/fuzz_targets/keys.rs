//! `keys`: see `dap_tests::fuzz::keys` (tests/src/fuzz/keys.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::keys::run(data));
