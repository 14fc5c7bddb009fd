//! PostgreSQL archive files (WAL segments, timeline history files, backup labels) as changes
//! of the group stream: a file becomes [`ChangeKind::WalChunk`] pieces and one
//! [`ChangeKind::WalEnd`], and the replica rebuilds it from them.
//!
//! The `data` of both kinds starts with the file name: `name_len u8, name`. A chunk then holds
//! the bytes at `offset` of the file; the end holds the blake3 (32 bytes) of the whole file and
//! has the file size in `offset`. Every change still travels inside a blake3-checked frame; the
//! whole-file hash additionally proves that the replica reassembled exactly the file that was
//! pushed.

use crate::frame::{Change, ChangeKind};

/// Longest archive file name accepted (PostgreSQL's are at most 40 characters or so).
pub const MAX_NAME_LEN: usize = 64;
/// Bytes of file content per chunk change.
pub const CHUNK_LEN: usize = 1 << 20;
/// Largest archive file accepted: PostgreSQL's largest WAL segment size (1 GiB).
pub const MAX_FILE_LEN: u64 = 1 << 30;
/// Length of the whole-file hash in a [`ChangeKind::WalEnd`].
pub const HASH_LEN: usize = 32;

/// The parsed `data` of a WAL chunk or end change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPiece<'a> {
    /// The archive file name (`000000010000000000000003`, `00000002.history`, …).
    pub name: &'a str,
    /// Chunk: the file bytes at the change's offset. End: the blake3 of the whole file.
    pub bytes: &'a [u8],
}

/// Checks an archive file name: 1 to [`MAX_NAME_LEN`] letters, digits, `.`, `_` or `-`, not
/// starting with `.` — so it can never name a path outside the archive folder.
///
/// # Errors
/// What is wrong with the name.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty archive file name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("archive file name longer than 64 bytes");
    }
    if name.starts_with('.') {
        return Err("archive file name starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("archive file name has characters other than letters, digits, '.', '_', '-'");
    }
    Ok(())
}

fn with_name(name: &str, rest: &[u8]) -> Vec<u8> {
    let mut d = Vec::with_capacity(1 + name.len() + rest.len());
    d.push(name.len() as u8);
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(rest);
    d
}

/// The changes that carry the archive file `name` with content `bytes` of `resource`: one
/// [`ChangeKind::WalChunk`] per [`CHUNK_LEN`] bytes (none for an empty file), then the
/// [`ChangeKind::WalEnd`].
///
/// # Errors
/// A bad name ([`check_name`]) or a file over [`MAX_FILE_LEN`].
pub fn changes(
    resource: &str,
    name: &str,
    bytes: &[u8],
    captured_ms: i64,
) -> Result<Vec<Change>, &'static str> {
    check_name(name)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err("archive file larger than 1 GiB");
    }
    let mut out = Vec::with_capacity(bytes.len() / CHUNK_LEN + 2);
    for (i, chunk) in bytes.chunks(CHUNK_LEN).enumerate() {
        let data = with_name(name, chunk);
        out.push(Change {
            resource: resource.to_owned(),
            kind: ChangeKind::WalChunk,
            offset: (i * CHUNK_LEN) as u64,
            length: data.len() as u64,
            captured_ms,
            data,
        });
    }
    let data = with_name(name, blake3::hash(bytes).as_bytes());
    out.push(Change {
        resource: resource.to_owned(),
        kind: ChangeKind::WalEnd,
        offset: bytes.len() as u64,
        length: data.len() as u64,
        captured_ms,
        data,
    });
    Ok(out)
}

/// Smallest WAL segment size PostgreSQL allows (`initdb --wal-segsize 1`); the largest is
/// [`MAX_FILE_LEN`].
pub const MIN_SEGMENT_LEN: u64 = 1 << 20;

/// The parsed `data` of a [`ChangeKind::WalStream`] change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPiece<'a> {
    /// The WAL segment's file name (`000000010000000000000003`).
    pub name: &'a str,
    /// The segment size in bytes (a power of two from 1 MiB to 1 GiB).
    pub segment_len: u64,
    /// The WAL bytes at the change's offset in the segment.
    pub bytes: &'a [u8],
}

/// A [`ChangeKind::WalStream`] change: `bytes` at `offset` of WAL segment `name` (of
/// `segment_len` bytes) of `resource`. `data` is `name_len u8, name, segment_len u64 BE,
/// bytes`.
///
/// # Errors
/// A bad name ([`check_name`]), a segment size that is not a power of two from 1 MiB to 1 GiB,
/// or a piece that runs past the end of the segment.
pub fn stream_piece(
    resource: &str,
    name: &str,
    segment_len: u64,
    offset: u64,
    bytes: &[u8],
    captured_ms: i64,
) -> Result<Change, &'static str> {
    check_name(name)?;
    check_segment(segment_len, offset, bytes.len())?;
    let mut rest = Vec::with_capacity(8 + bytes.len());
    rest.extend_from_slice(&segment_len.to_be_bytes());
    rest.extend_from_slice(bytes);
    let data = with_name(name, &rest);
    Ok(Change {
        resource: resource.to_owned(),
        kind: ChangeKind::WalStream,
        offset,
        length: data.len() as u64,
        captured_ms,
        data,
    })
}

fn check_segment(segment_len: u64, offset: u64, len: usize) -> Result<(), &'static str> {
    if !segment_len.is_power_of_two() || !(MIN_SEGMENT_LEN..=MAX_FILE_LEN).contains(&segment_len) {
        return Err("WAL segment size is not a power of two from 1 MiB to 1 GiB");
    }
    if offset
        .checked_add(len as u64)
        .is_none_or(|end| end > segment_len)
    {
        return Err("streamed WAL runs past the end of its segment");
    }
    Ok(())
}

/// Parses the `data` of a [`ChangeKind::WalStream`] change at `offset`.
///
/// # Errors
/// What is malformed: the name, a missing or bad segment size, or bytes past the segment end.
pub fn parse_stream(data: &[u8], offset: u64) -> Result<StreamPiece<'_>, &'static str> {
    let piece = parse(data, false)?;
    let (len, bytes) = piece
        .bytes
        .split_first_chunk::<8>()
        .ok_or("streamed WAL piece without its segment size")?;
    let segment_len = u64::from_be_bytes(*len);
    check_segment(segment_len, offset, bytes.len())?;
    Ok(StreamPiece {
        name: piece.name,
        segment_len,
        bytes,
    })
}

/// The [`ChangeKind::WalStreamEnd`] that publishes streamed segment `name` of `segment_len`
/// bytes whose whole content hashes to `hash`.
///
/// # Errors
/// A bad name ([`check_name`]).
pub fn stream_end(
    resource: &str,
    name: &str,
    segment_len: u64,
    hash: &blake3::Hash,
    captured_ms: i64,
) -> Result<Change, &'static str> {
    check_name(name)?;
    let data = with_name(name, hash.as_bytes());
    Ok(Change {
        resource: resource.to_owned(),
        kind: ChangeKind::WalStreamEnd,
        offset: segment_len,
        length: data.len() as u64,
        captured_ms,
        data,
    })
}

/// Parses the `data` of a WAL chunk or end change.
///
/// # Errors
/// What is malformed: a truncated or invalid name, or (`end = true`) a hash that is not
/// [`HASH_LEN`] bytes.
pub fn parse(data: &[u8], end: bool) -> Result<WalPiece<'_>, &'static str> {
    let (&len, rest) = data.split_first().ok_or("no archive file name")?;
    let len = len as usize;
    let name = rest
        .get(..len)
        .ok_or("archive file name runs past the data")?;
    let name = std::str::from_utf8(name).map_err(|_| "archive file name is not UTF-8")?;
    check_name(name)?;
    let bytes = &rest[len..];
    if end && bytes.len() != HASH_LEN {
        return Err("archive file end does not carry a 32-byte blake3");
    }
    Ok(WalPiece { name, bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_stream_piece_round_trips_and_bad_ones_are_refused() {
        let c = stream_piece("db", "000000010000000000000003", 16 << 20, 8192, b"wal", 7).unwrap();
        assert_eq!(c.kind, ChangeKind::WalStream);
        assert_eq!(c.length, c.data.len() as u64);
        let p = parse_stream(&c.data, c.offset).unwrap();
        assert_eq!(
            (p.name, p.segment_len, p.bytes),
            ("000000010000000000000003", 16 << 20, &b"wal"[..])
        );
        assert!(stream_piece("db", "s", 16 << 20, (16 << 20) - 2, b"wal", 0).is_err());
        assert!(stream_piece("db", "s", 3 << 20, 0, b"wal", 0).is_err());
        assert!(stream_piece("db", "s", 1 << 19, 0, b"wal", 0).is_err());
        assert!(stream_piece("db", "../s", 16 << 20, 0, b"wal", 0).is_err());
        // The same data read at an offset that puts it past the segment end.
        assert!(parse_stream(&c.data, (16 << 20) - 1).is_err());
        assert!(parse_stream(&c.data[..c.data.len() - 10], 0).is_err());
    }

    proptest! {
        #[test]
        fn parse_stream_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64), off in any::<u64>()) {
            let _ = parse_stream(&data, off);
        }
    }

    #[test]
    fn names_that_could_leave_the_archive_folder_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "accepted {bad:?}");
        }
        for good in [
            "000000010000000000000003",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003.partial",
        ] {
            assert_eq!(check_name(good), Ok(()), "refused {good:?}");
        }
    }

    #[test]
    fn a_segment_becomes_chunks_then_an_end_with_its_hash() {
        let file: Vec<u8> = (0..(CHUNK_LEN * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let cs = changes("pg", "000000010000000000000001", &file, 5).unwrap();
        assert_eq!(cs.len(), 4);
        let mut rebuilt = Vec::new();
        for c in &cs[..3] {
            assert_eq!(c.kind, ChangeKind::WalChunk);
            assert_eq!(c.offset, rebuilt.len() as u64);
            assert_eq!(c.length, c.data.len() as u64);
            let p = parse(&c.data, false).unwrap();
            assert_eq!(p.name, "000000010000000000000001");
            rebuilt.extend_from_slice(p.bytes);
        }
        assert_eq!(rebuilt, file);
        let end = &cs[3];
        assert_eq!(end.kind, ChangeKind::WalEnd);
        assert_eq!(end.offset, file.len() as u64);
        let p = parse(&end.data, true).unwrap();
        assert_eq!(p.bytes, blake3::hash(&file).as_bytes());
    }

    #[test]
    fn golden_bytes_of_a_tiny_file() {
        let cs = changes("pg", "ab", b"xyz", 9).unwrap();
        assert_eq!(cs[0].kind as u8, 6);
        assert_eq!(cs[0].data, b"\x02abxyz");
        assert_eq!((cs[0].offset, cs[0].length, cs[0].captured_ms), (0, 6, 9));
        assert_eq!(cs[1].kind as u8, 7);
        let mut end = b"\x02ab".to_vec();
        end.extend_from_slice(blake3::hash(b"xyz").as_bytes());
        assert_eq!(cs[1].data, end);
        assert_eq!((cs[1].offset, cs[1].length), (3, 35));
        // Through the frame codec and back, kinds and bytes intact.
        let meta = crate::frame::FrameMeta {
            group: crate::ids::GroupId::from_name("pg"),
            epoch: crate::ids::Epoch(1),
            first_seq: crate::ids::Seq(1),
        };
        let bytes = crate::frame::Encoder::new(1)
            .unwrap()
            .encode(meta, &cs)
            .unwrap();
        let f = crate::frame::Decoder::new()
            .unwrap()
            .decode(&bytes)
            .unwrap();
        assert_eq!(f.changes, cs);
        assert!(ChangeKind::WalEnd.is_barrier() && !ChangeKind::WalChunk.is_barrier());
    }

    #[test]
    fn an_empty_file_is_only_an_end() {
        let cs = changes("pg", "00000002.history", &[], 1).unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].kind, ChangeKind::WalEnd);
        assert_eq!(cs[0].offset, 0);
    }

    #[test]
    fn malformed_data_is_refused_with_a_reason() {
        assert_eq!(parse(&[], false), Err("no archive file name"));
        assert_eq!(
            parse(&[9, b'a'], false),
            Err("archive file name runs past the data")
        );
        assert!(parse(&[2, b'.', b'.'], false).is_err());
        assert_eq!(
            parse(&[1, b'a', 1, 2, 3], true),
            Err("archive file end does not carry a 32-byte blake3")
        );
        assert!(changes("pg", "a/b", b"x", 0).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), end: bool) {
            let _ = parse(&data, end);
        }
    }
}
