//! Fuzz the frame decoder: any input is refused with a typed error or decodes to a frame that
//! re-encodes to the same changes; it never panics and never allocates past the hard limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::frame::{Decoder, Encoder, FrameHeader, MAX_RAW_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(mut dec) = Decoder::new() else { return };
    if let Ok(h) = FrameHeader::parse(data) {
        assert!(h.raw_len <= MAX_RAW_LEN);
    }
    if let Ok(frame) = dec.decode(data) {
        // Whatever decodes must round-trip through the encoder.
        let Ok(mut enc) = Encoder::new(1) else { return };
        let again = enc.encode(frame.header.meta, &frame.changes).expect("re-encode");
        let back = dec.decode(&again).expect("decode re-encoded");
        assert_eq!(back.changes, frame.changes);
    }
});
