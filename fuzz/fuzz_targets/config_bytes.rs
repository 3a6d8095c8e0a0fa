//! The configuration loader on arbitrary bytes: every input is accepted or rejected with
//! errors, never a panic (`fuzz/README.md`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // files are read as UTF-8 text; invalid bytes become U+FFFD, as the YAML still matters
    splitproxy_fuzz::check_config(&String::from_utf8_lossy(data));
});
