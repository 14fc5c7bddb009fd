//! Quarantine of a returning old primary's volume blocks: what a failback resync overwrites is
//! kept first, never silently dropped.
//!
//! When the old primary of a group comes back as replica, its copy may hold writes it
//! acknowledged that never reached the new primary (the async tail). The merkle resync makes
//! the copy equal to the new primary's, so before it overwrites a block it appends the block's
//! old content to `DATA/quarantine/GROUP/RESOURCE-epochE-MS.blocks` and fdatasyncs that file,
//! then writes the new content. `tandem quarantine show|extract` reads it back.
//!
//! File layout (all integers little-endian):
//! - header, 24 bytes: magic `TQBK`, version `u32` = 1, block size `u32`, volume length `u64`
//!   (the old copy's), 4 zero bytes;
//! - records: block index `u64`, data length `u32`, blake3 of the data (32 bytes), the data.
//!
//! Blocks that read as all zeros are not kept (a never-written or trimmed block has nothing to
//! lose); a record's data is shorter than the block size only for the last block of the volume.

use crate::bounds::{block_bounds, BoundsError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Magic of a quarantine file.
pub const MAGIC: [u8; 4] = *b"TQBK";
/// Version of the layout.
pub const VERSION: u32 = 1;
/// Length of the header.
pub const HEADER_LEN: usize = 24;
/// Length of a record's fixed part (index, length, hash).
pub const RECORD_HEAD_LEN: usize = 8 + 4 + 32;
/// Largest block a record may hold (as [`crate::merkle::MAX_BLOCK_SIZE`]).
pub const MAX_RECORD_DATA: usize = crate::merkle::MAX_BLOCK_SIZE as usize;

/// Why a quarantine file was refused, with the byte offset where it went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("quarantine file: at byte {offset}: {reason}")]
pub struct QuarantineError {
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// A parsed quarantine file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// The resync's block size.
    pub block_size: u32,
    /// Length of the old copy when it was quarantined.
    pub length: u64,
    /// The kept blocks, in the order they were kept: (block index, old content).
    pub blocks: Vec<(u64, Vec<u8>)>,
}

impl Quarantine {
    /// The byte offset of kept block `index` holding `len` bytes, after checking they lie
    /// within the old copy's length ([`crate::bounds`]): what `quarantine extract` asks
    /// before it writes a block. Pure.
    ///
    /// # Errors
    /// [`BoundsError`] naming the offset, length, end and the old copy's length.
    pub fn block_offset(&self, index: u64, len: usize) -> Result<u64, BoundsError> {
        block_bounds(index, u64::from(self.block_size), len as u64, self.length)
    }

    /// The old content of `len` bytes at `offset`, if every block covering them was kept (the
    /// last record of a block wins). Pure.
    pub fn range(&self, offset: u64, len: u64) -> Option<Vec<u8>> {
        let bs = u64::from(self.block_size.max(1));
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        let end = offset.checked_add(len)?;
        while pos < end {
            let index = pos / bs;
            let data = self
                .blocks
                .iter()
                .rev()
                .find(|(i, _)| *i == index)?
                .1
                .as_slice();
            let from = (pos - index * bs) as usize;
            let to = ((end - index * bs).min(bs) as usize).min(data.len());
            if from >= to {
                return None;
            }
            out.extend_from_slice(&data[from..to]);
            pos = index * bs + to as u64;
        }
        Some(out)
    }
}

/// Encodes a header. Pure.
pub fn encode_header(block_size: u32, length: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&block_size.to_le_bytes());
    h[12..20].copy_from_slice(&length.to_le_bytes());
    h
}

/// Encodes one record. Pure.
pub fn encode_record(index: u64, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(RECORD_HEAD_LEN + data.len());
    r.extend_from_slice(&index.to_le_bytes());
    r.extend_from_slice(&(data.len() as u32).to_le_bytes());
    r.extend_from_slice(blake3::hash(data).as_bytes());
    r.extend_from_slice(data);
    r
}

/// Parses a whole quarantine file. Pure.
///
/// # Errors
/// [`QuarantineError`] with the byte offset: a bad header, a truncated record, a record
/// longer than the block size, or data whose blake3 does not match.
pub fn decode(bytes: &[u8]) -> Result<Quarantine, QuarantineError> {
    let err = |offset: usize, reason: String| QuarantineError {
        offset: offset as u64,
        reason,
    };
    if bytes.len() < HEADER_LEN {
        return Err(err(
            0,
            format!("{} bytes: shorter than the header", bytes.len()),
        ));
    }
    if bytes[0..4] != MAGIC {
        return Err(err(0, "not a quarantine file (magic is not TQBK)".into()));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let version = u32_at(4);
    if version != VERSION {
        return Err(err(
            4,
            format!("version {version}, this build reads {VERSION}"),
        ));
    }
    let block_size = u32_at(8);
    if block_size == 0 || block_size as usize > MAX_RECORD_DATA {
        return Err(err(8, format!("block size {block_size} out of range")));
    }
    let length = u64_at(12);
    let mut blocks = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        if bytes.len() - at < RECORD_HEAD_LEN {
            return Err(err(at, "truncated record header".into()));
        }
        let index = u64_at(at);
        let len = u32_at(at + 8) as usize;
        if len == 0 || len > block_size as usize {
            return Err(err(
                at + 8,
                format!("record of {len} bytes with {block_size}-byte blocks"),
            ));
        }
        let data_at = at + RECORD_HEAD_LEN;
        if bytes.len() - data_at < len {
            return Err(err(at, format!("record of block {index} truncated")));
        }
        let data = &bytes[data_at..data_at + len];
        if blake3::hash(data).as_bytes() != &bytes[at + 12..at + 44] {
            return Err(err(
                at + 12,
                format!("block {index}: blake3 does not match its data"),
            ));
        }
        blocks.push((index, data.to_vec()));
        at = data_at + len;
    }
    Ok(Quarantine {
        block_size,
        length,
        blocks,
    })
}

/// Reads and parses a quarantine file.
///
/// # Errors
/// The file cannot be read, or [`decode`] refuses it (the message names the file).
pub fn read(path: &Path) -> Result<Quarantine, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The quarantine files of `resource` in `dir` (`RESOURCE-epochE-MS.blocks`), oldest first.
pub fn files_of(dir: &Path, resource: &str) -> Vec<PathBuf> {
    let prefix = format!("{resource}-epoch");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "blocks")
                        && p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|p| {
        p.file_stem()
            .and_then(|s| s.to_string_lossy().rsplit('-').next().map(str::to_owned))
            .and_then(|ms| ms.parse::<u64>().ok())
            .unwrap_or(0)
    });
    v
}

/// Appends the old content of blocks to a quarantine file, durably, before they are
/// overwritten.
#[derive(Debug)]
pub struct QuarantineWriter {
    path: PathBuf,
    file: File,
    kept_blocks: u64,
    kept_bytes: u64,
}

impl QuarantineWriter {
    /// Creates the file (and its folder) with its header, fsynced.
    ///
    /// # Errors
    /// The I/O error, with the path.
    pub fn create(path: &Path, block_size: u32, length: u64) -> Result<Self, String> {
        let fail = |op: &str, e: std::io::Error| format!("{op} {}: {e}", path.display());
        let dir = path.parent().unwrap_or(Path::new("."));
        crate::durable_dir::create_dir_durable(dir)
            .map_err(|e| format!("create dir for {}: {e}", path.display()))?;
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(|e| fail("create", e))?;
        file.write_all(&encode_header(block_size, length))
            .and_then(|()| file.sync_all())
            .map_err(|e| fail("write", e))?;
        crate::meta::sync_dir(dir).map_err(|e| e.to_string())?;
        Ok(QuarantineWriter {
            path: path.to_path_buf(),
            file,
            kept_blocks: 0,
            kept_bytes: 0,
        })
    }

    /// Keeps the blocks (index, old content) that are not all zeros, then fdatasyncs: only
    /// after this returns may they be overwritten.
    ///
    /// # Errors
    /// The I/O error, with the path.
    pub fn keep(&mut self, blocks: &[(u64, Vec<u8>)]) -> Result<(), String> {
        let mut buf = Vec::new();
        for (index, data) in blocks {
            if data.is_empty() || data.iter().all(|b| *b == 0) {
                continue;
            }
            buf.extend_from_slice(&encode_record(*index, data));
            self.kept_blocks += 1;
            self.kept_bytes += data.len() as u64;
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| format!("write {}: {e}", self.path.display()))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks kept so far.
    pub fn kept_blocks(&self) -> u64 {
        self.kept_blocks
    }

    /// Bytes of old content kept so far.
    pub fn kept_bytes(&self) -> u64 {
        self.kept_bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn file(blocks: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut b = encode_header(8, 64).to_vec();
        for (i, d) in blocks {
            b.extend_from_slice(&encode_record(*i, d));
        }
        b
    }

    #[test]
    fn a_written_file_reads_back_and_ranges_span_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q/disk0-epoch3-17.blocks");
        crate::durable_dir::take_synced();
        let mut w = QuarantineWriter::create(&p, 8, 64).unwrap();
        assert_eq!(
            crate::durable_dir::take_synced(),
            vec![dir.path().to_owned()],
            "the new quarantine folder is fsynced in its parent"
        );
        w.keep(&[(1, vec![1; 8]), (2, vec![0; 8]), (3, vec![3; 8])])
            .unwrap();
        w.keep(&[(2, vec![2; 8])]).unwrap();
        assert_eq!((w.kept_blocks(), w.kept_bytes()), (3, 24));
        let q = read(&p).unwrap();
        assert_eq!(q.block_size, 8);
        assert_eq!(q.length, 64);
        assert_eq!(q.blocks.len(), 3, "the zero block is not kept");
        assert_eq!(
            q.range(12, 8).unwrap(),
            [vec![1u8; 4], vec![2u8; 4]].concat()
        );
        assert_eq!(q.range(8, 24).unwrap().len(), 24);
        assert!(q.range(0, 4).is_none(), "block 0 was not kept");
        assert_eq!(files_of(&dir.path().join("q"), "disk0"), vec![p]);
        assert!(files_of(&dir.path().join("q"), "disk1").is_empty());
    }

    #[test]
    fn damage_is_refused_with_its_byte_offset() {
        let good = file(&[(0, vec![7; 8]), (5, vec![9; 8])]);
        assert_eq!(decode(&good).unwrap().blocks.len(), 2);
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad).unwrap_err().offset, 0);
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = decode(&bad).unwrap_err();
        assert_eq!(
            e.offset,
            (HEADER_LEN + RECORD_HEAD_LEN + 8 + 12) as u64,
            "{e}"
        );
        let e = decode(&good[..good.len() - 3]).unwrap_err();
        assert!(e.reason.contains("truncated"), "{e}");
        let mut bad = good;
        bad[HEADER_LEN + 8] = 99;
        assert!(decode(&bad).unwrap_err().reason.contains("99 bytes"));
    }

    #[test]
    fn a_block_beyond_the_old_length_has_no_offset() {
        let q = decode(&file(&[(7, vec![7; 8]), (8, vec![8; 1])])).unwrap();
        assert_eq!(q.block_offset(7, 8), Ok(56));
        let e = q.block_offset(8, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "out of bounds: offset 64 + length 1 ends at 65, past the size 64"
        );
        assert!(q.block_offset(u64::MAX / 4, 8).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_are_refused_or_decode_to_valid_records(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(q) = decode(&data) {
                for (_, d) in &q.blocks {
                    prop_assert!(!d.is_empty() && d.len() <= q.block_size as usize);
                }
            }
        }

        #[test]
        fn encoded_records_round_trip(blocks in proptest::collection::vec((0u64..100, proptest::collection::vec(any::<u8>(), 1..=8)), 0..10)) {
            let q = decode(&file(&blocks)).unwrap();
            prop_assert_eq!(q.blocks, blocks);
        }
    }
}
