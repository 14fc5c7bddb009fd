//! Fuzzes the scan-capture tree file decoder: arbitrary bytes are refused with a message or
//! decode to a tree that re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_replicator::scan_capture::{decode_tree, encode_tree};

fuzz_target!(|data: &[u8]| {
    if let Ok((epoch, tree)) = decode_tree(data) {
        assert_eq!(encode_tree(epoch, &tree), data);
    }
});
