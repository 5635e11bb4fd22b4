//! `enc_init`: see `dap_tests::fuzz::enc_init` (tests/src/fuzz/enc_init.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::enc_init::run(data));
