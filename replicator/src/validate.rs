//! Pure validation of replication requests, done before a handler touches a file, a lock or a
//! socket; the `replication_request` fuzz target drives it with arbitrary decoded messages.

use crate::history::Selector;
use crate::resync::limits::MAX_REPLY_BYTES;
use tandem_core::proto::{ReadBlocksRequest, RecoverRequest};

/// Longest group or copy name accepted in a snapshot or recover request, in bytes.
pub const MAX_COPY_NAME_LEN: usize = 128;

/// Checks the group and copy name of a snapshot (or named recover) request: 1 to
/// [`MAX_COPY_NAME_LEN`] letters, digits, `-`, `_`, `.`, not starting with `.`, so that
/// `snapshots/GROUP/NAME` can never leave the node's data folder.
///
/// # Errors
/// A message naming both values.
pub fn check_copy_name(group: &str, name: &str) -> Result<(), String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= MAX_COPY_NAME_LEN
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if ok(group) && ok(name) {
        Ok(())
    } else {
        Err(format!(
            "bad snapshot group {group:?} or name {name:?}: letters, digits, '-', '_', '.'"
        ))
    }
}

/// Checks a `ReadBlocks` request against the per-request limits: at most `max_blocks` blocks
/// and [`MAX_REPLY_BYTES`] bytes (the block size itself is checked with the resource).
///
/// # Errors
/// A message naming the count, block size and limits.
pub fn check_read_blocks(req: &ReadBlocksRequest, max_blocks: usize) -> Result<(), String> {
    let count = req.blocks.len();
    let bs = u64::from(req.block_size);
    if count > max_blocks || (count as u64).saturating_mul(bs) > MAX_REPLY_BYTES {
        return Err(format!(
            "{count} blocks of {bs} bytes exceed the limit of {max_blocks} blocks and {MAX_REPLY_BYTES} bytes per request"
        ));
    }
    Ok(())
}

/// The recovery point a `Recover` request selects: exactly one of a time (`at_ms`) or a
/// checkpoint tag.
///
/// # Errors
/// A message when both or neither are given.
pub fn recover_selector(req: &RecoverRequest) -> Result<Selector, String> {
    match (req.at_ms, req.tag.is_empty()) {
        (0, false) => Ok(Selector::Tag(req.tag.clone())),
        (ms, true) if ms != 0 => Ok(Selector::At(ms)),
        _ => Err("give exactly one of a time (at_ms) or a checkpoint tag".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_cannot_leave_the_snapshot_folder() {
        assert!(check_copy_name("vol", "drill-1.a_b").is_ok());
        for (g, n) in [
            ("vol", ""),
            ("vol", ".."),
            ("vol", "../etc"),
            ("vol", "a/b"),
            ("", "x"),
            ("vol", ".hidden"),
            ("vol", "é"),
        ] {
            assert!(check_copy_name(g, n).is_err(), "{g:?} {n:?}");
        }
        assert!(check_copy_name("vol", &"a".repeat(MAX_COPY_NAME_LEN)).is_ok());
        assert!(check_copy_name("vol", &"a".repeat(MAX_COPY_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn read_blocks_over_the_count_or_byte_limit_is_refused() {
        let req = |n: usize, bs: u32| ReadBlocksRequest {
            group: "g".into(),
            resource: "r".into(),
            block_size: bs,
            blocks: vec![0; n],
            ..Default::default()
        };
        assert!(check_read_blocks(&req(64, 64 << 10), 1024).is_ok());
        assert!(check_read_blocks(&req(1025, 4096), 1024).is_err());
        assert!(check_read_blocks(&req(257, 64 << 10), 1024).is_err());
        assert!(check_read_blocks(&req(1, u32::MAX), 1024).is_err());
    }

    #[test]
    fn recover_needs_exactly_one_selector() {
        let req = |at_ms: i64, tag: &str| RecoverRequest {
            group: "g".into(),
            at_ms,
            tag: tag.into(),
            ..RecoverRequest::default()
        };
        assert!(matches!(recover_selector(&req(5, "")), Ok(Selector::At(5))));
        assert!(matches!(
            recover_selector(&req(0, "t")),
            Ok(Selector::Tag(_))
        ));
        assert!(recover_selector(&req(0, "")).is_err());
        assert!(recover_selector(&req(5, "t")).is_err());
    }
}
