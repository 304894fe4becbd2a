//! See `flowplane::fuzz::csv_file` for what this target feeds and checks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flowplane::fuzz::csv_file(data));
