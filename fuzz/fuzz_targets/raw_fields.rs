//! See `flowplane::fuzz::raw_fields` for what this target feeds and checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowplane::fuzz::raw_fields(data));
