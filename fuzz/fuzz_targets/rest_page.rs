//! See `flowplane::fuzz::rest_page` for what this target feeds and checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowplane::fuzz::rest_page(data));
