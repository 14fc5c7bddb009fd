//! Fuzzes the volume quarantine file decoder: arbitrary bytes are refused with a byte offset
//! or decode to records whose data fits the block size, and every range read back is in bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_replicator::quarantine::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = decode(data) {
        for (i, d) in &q.blocks {
            assert!(!d.is_empty() && d.len() <= q.block_size as usize);
            let off = i.saturating_mul(u64::from(q.block_size));
            let _ = q.range(off, d.len() as u64);
        }
    }
});
