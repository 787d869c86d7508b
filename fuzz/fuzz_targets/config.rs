//! The config loader on arbitrary text: diagnostics or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = starling_config::load_str(text, "fuzz.yml", &[]);
});
