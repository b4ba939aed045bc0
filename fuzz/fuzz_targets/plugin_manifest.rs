//! Any text as a plugin manifest (`NAME.toml`): parsed or refused with a `LoadError`, never a
//! panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oms_plugin_runtime::Manifest;

fuzz_target!(|text: &str| {
    let _ = Manifest::parse(text, Path::new("fuzz.toml"));
});
