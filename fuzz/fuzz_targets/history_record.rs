//! Fuzz the point-in-time history codec: any bytes give a record, or a reason, never a panic
//! (segment headers, record headers and bodies are read back from disk after a crash).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_replicator::history::{
    decode_record_body, decode_segment_header, parse_record_header, RECORD_HEADER_LEN,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode_segment_header(data);
    if let Ok(h) = parse_record_header(data) {
        let end = (RECORD_HEADER_LEN as u64 + u64::from(h.name_len) + u64::from(h.stored_len))
            .min(data.len() as u64) as usize;
        let _ = decode_record_body(&h, &data[RECORD_HEADER_LEN.min(end)..end]);
    }
});
