//! The configuration loader on structured documents (`splitproxy_fuzz::model`) written
//! as YAML: validation, cross-references and table builds, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|file: splitproxy_fuzz::model::File| {
    splitproxy_fuzz::check_config(&file.to_yaml());
});
