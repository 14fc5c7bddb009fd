//! Fuzzes the runbook parser and validator: any text gives a runbook or diagnostics naming
//! file:line:column, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = tandem_runbooks::Runbook::parse(text, "fuzz.toml") {
            let _ = e.to_string();
        }
    }
});
