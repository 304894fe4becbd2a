//! See `flowplane::fuzz::contract` for what this target feeds and checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowplane::fuzz::contract(data));
