//! Byte ranges in reports: the one formatter of differing ranges (verify, resync, quarantine)
//! and the conversions between `Range<u64>` and the wire's `ByteRange`. Pure.

use crate::proto::ByteRange;
use std::fmt::Write as _;
use std::ops::Range;

/// Formats byte ranges for a report: `"0x10000..0x30000, 0x50000..0x60000"` (`"none"` when empty).
pub fn describe_byte_ranges(ranges: &[Range<u64>]) -> String {
    if ranges.is_empty() {
        return "none".to_string();
    }
    let mut out = String::new();
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{:#x}..{:#x}", r.start, r.end);
    }
    out
}

/// The wire form of byte ranges.
pub fn to_wire(ranges: &[Range<u64>]) -> Vec<ByteRange> {
    ranges
        .iter()
        .map(|r| ByteRange {
            start: r.start,
            end: r.end,
        })
        .collect()
}

/// Byte ranges from the wire.
pub fn from_wire(ranges: &[ByteRange]) -> Vec<Range<u64>> {
    ranges.iter().map(|r| r.start..r.end).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_format_in_hex_and_survive_the_wire() {
        let r = vec![0x10000..0x30000, 0x50000..0x60000];
        assert_eq!(
            describe_byte_ranges(&r),
            "0x10000..0x30000, 0x50000..0x60000"
        );
        assert_eq!(describe_byte_ranges(&[]), "none");
        assert_eq!(from_wire(&to_wire(&r)), r);
    }
}
