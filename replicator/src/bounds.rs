//! The bound on every change laid onto a resource file: its byte range must end within the
//! resource's size, computed without overflow. Pure: the appliers (live apply, journal
//! replay, resync, `quarantine extract`) ask it before they touch a file.
//!
//! A change comes from the wire (a frame, a `ReadBlocks` reply) or from a file (the journal, a
//! quarantine file), never from this process's own arithmetic: without the bound a write past
//! the end grows an image (the replicator then refuses to start on it) and a trim of 2^63
//! bytes fills the disk.

use tandem_core::frame::{Change, ChangeKind};

/// Why a change's byte range was refused against its resource's size. Every variant's
/// message starts with "out of bounds", the reason a refusal names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    /// `offset + length` does not fit in a `u64`.
    #[error("out of bounds: offset {offset} + length {len} overflows (size {size})")]
    Overflow {
        /// Byte offset of the change.
        offset: u64,
        /// Byte length of the change.
        len: u64,
        /// The resource's size.
        size: u64,
    },
    /// The range ends past the resource's size.
    #[error("out of bounds: offset {offset} + length {len} ends at {end}, past the size {size}")]
    PastEnd {
        /// Byte offset of the change.
        offset: u64,
        /// Byte length of the change.
        len: u64,
        /// `offset + len`.
        end: u64,
        /// The resource's size.
        size: u64,
    },
    /// A block index whose byte offset (`index * block_size`) does not fit in a `u64`.
    #[error("out of bounds: block {index} of {block_size} bytes lies beyond any offset")]
    BlockOverflow {
        /// The block index.
        index: u64,
        /// The block size.
        block_size: u64,
    },
}

/// Checks that `len` bytes at `offset` lie within a resource of `size` bytes: the end,
/// computed with `checked_add`, must be at most `size`. An empty range is in bounds at any
/// offset up to `size`.
///
/// # Errors
/// [`BoundsError::Overflow`] when `offset + len` overflows, [`BoundsError::PastEnd`] when it
/// ends past `size`.
pub fn change_bounds(offset: u64, len: u64, size: u64) -> Result<(), BoundsError> {
    match offset.checked_add(len) {
        None => Err(BoundsError::Overflow { offset, len, size }),
        Some(end) if end > size => Err(BoundsError::PastEnd {
            offset,
            len,
            end,
            size,
        }),
        Some(_) => Ok(()),
    }
}

/// The byte offset of block `index` of `block_size` bytes, after checking that `len` bytes
/// there lie within a resource of `size` bytes (see [`change_bounds`]).
///
/// # Errors
/// [`BoundsError::BlockOverflow`] when `index * block_size` overflows, else as
/// [`change_bounds`].
pub fn block_bounds(index: u64, block_size: u64, len: u64, size: u64) -> Result<u64, BoundsError> {
    let offset = index
        .checked_mul(block_size)
        .ok_or(BoundsError::BlockOverflow { index, block_size })?;
    change_bounds(offset, len, size)?;
    Ok(offset)
}

/// The byte range a volume change lays onto its file: `(kind, offset, length)` for a write
/// (its data's length) or a trim (its declared length); `None` for every other kind.
pub fn volume_range(c: &Change) -> Option<(&'static str, u64, u64)> {
    match c.kind {
        ChangeKind::Write => Some(("write", c.offset, c.data.len() as u64)),
        ChangeKind::Trim => Some(("trim", c.offset, c.length)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn change_bounds_table() {
        let max = u64::MAX;
        let cases: [(u64, u64, u64, bool); 10] = [
            (0, 0, 0, true),
            (0, 4096, 4096, true),
            (4096, 0, 4096, true),
            (4095, 1, 4096, true),
            (4096, 1, 4096, false),
            (4097, 0, 4096, false),
            (0, 4097, 4096, false),
            (0, 1 << 63, 16 << 20, false),
            (max, 1, max, false),
            (max, 0, max, true),
        ];
        for (i, (offset, len, size, ok)) in cases.into_iter().enumerate() {
            let got = change_bounds(offset, len, size);
            assert_eq!(got.is_ok(), ok, "#{i}: expect ok={ok} got {got:?}");
        }
    }

    #[test]
    fn bounds_errors_name_offset_length_end_and_size() {
        let e = change_bounds(16 << 20, 4096, 16 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out of bounds: offset 16777216 + length 4096 ends at 16781312, past the size 16777216"
        );
        let e = change_bounds(u64::MAX, 2, 10).unwrap_err();
        assert_eq!(
            e,
            BoundsError::Overflow {
                offset: u64::MAX,
                len: 2,
                size: 10
            }
        );
        assert!(e
            .to_string()
            .starts_with("out of bounds: offset 18446744073709551615"));
    }

    #[test]
    fn block_bounds_refuses_an_index_whose_offset_overflows() {
        assert_eq!(block_bounds(3, 4096, 4096, 4 * 4096), Ok(3 * 4096));
        assert_eq!(block_bounds(3, 4096, 10, 3 * 4096 + 10), Ok(3 * 4096));
        assert!(matches!(
            block_bounds(4, 4096, 1, 4 * 4096),
            Err(BoundsError::PastEnd { .. })
        ));
        assert_eq!(
            block_bounds(u64::MAX / 2, 4096, 1, u64::MAX),
            Err(BoundsError::BlockOverflow {
                index: u64::MAX / 2,
                block_size: 4096
            })
        );
    }

    #[test]
    fn volume_range_is_the_bytes_a_write_or_trim_touches() {
        let w = Change::write("v", 10, vec![1; 7], 0);
        assert_eq!(volume_range(&w), Some(("write", 10, 7)));
        let t = Change::trim("v", 4096, 1 << 63, 0);
        assert_eq!(volume_range(&t), Some(("trim", 4096, 1 << 63)));
        assert_eq!(volume_range(&Change::barrier("v", 0)), None);
    }

    proptest! {
        #[test]
        fn change_bounds_accepts_exactly_the_ranges_inside(
            offset in prop_oneof![0u64..1 << 20, any::<u64>()],
            len in prop_oneof![0u64..1 << 20, any::<u64>()],
            size in prop_oneof![0u64..1 << 21, any::<u64>()],
        ) {
            let inside = u128::from(offset) + u128::from(len) <= u128::from(size);
            let got = change_bounds(offset, len, size);
            prop_assert_eq!(got.is_ok(), inside, "{:?}", got);
            match got {
                Err(BoundsError::PastEnd { end, .. }) => {
                    prop_assert_eq!(u128::from(end), u128::from(offset) + u128::from(len));
                }
                Err(BoundsError::Overflow { .. }) => {
                    prop_assert!(u128::from(offset) + u128::from(len) > u128::from(u64::MAX));
                }
                _ => {}
            }
        }

        #[test]
        fn block_bounds_accepts_exactly_the_blocks_inside(
            index in prop_oneof![0u64..1 << 10, any::<u64>()],
            block_size in 1u64..1 << 22,
            len in 0u64..1 << 22,
            size in prop_oneof![0u64..1 << 32, any::<u64>()],
        ) {
            let end = u128::from(index) * u128::from(block_size) + u128::from(len);
            let got = block_bounds(index, block_size, len, size);
            prop_assert_eq!(got.is_ok(), end <= u128::from(size), "{:?}", got);
            if let Ok(at) = got {
                prop_assert_eq!(u128::from(at), u128::from(index) * u128::from(block_size));
            }
        }
    }
}
