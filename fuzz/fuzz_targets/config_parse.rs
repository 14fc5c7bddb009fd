//! Fuzz the topology parser and validator: any text gives a topology or a diagnostic, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tandem_core::config::Topology::parse(text, "fuzz.toml").map_err(|e| e.to_string());
    }
});
