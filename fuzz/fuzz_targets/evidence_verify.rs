//! Fuzz the evidence verifier's parsers: any bytes as `manifest.json` and `audit.jsonl` are
//! refused with a reason naming the file and line, or parse; a parsed chain that matches its
//! manifest renders the derived files (runs, RPO, residency, report) without panicking, and
//! rendering twice gives the same bytes (verify compares them byte for byte).
//!
//! Input: two bytes (little-endian) giving the manifest's length, the manifest, then the
//! audit lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_coordinator::evidence::{check_chain, parse_audit_jsonl, parse_manifest, render_window};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = (usize::from(u16::from_le_bytes([data[0], data[1]]))).min(data.len() - 2);
    let (manifest, audit) = data[2..].split_at(split);
    let records = parse_audit_jsonl(audit);
    let Ok(m) = parse_manifest(manifest) else {
        return;
    };
    let Ok(records) = records else {
        return;
    };
    if check_chain(&records, &m.chain).is_err() {
        return;
    }
    let opts = m.options();
    let a = render_window(&records, &m.chain.first_prev_hash, &opts);
    let b = render_window(&records, &m.chain.first_prev_hash, &opts);
    assert_eq!(a.files, b.files, "rendering is not deterministic");
});
