//! `pubsub`: see `dap_tests::fuzz::pubsub` (tests/src/fuzz/pubsub.rs) for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dap_tests::fuzz::pubsub::run(data));
