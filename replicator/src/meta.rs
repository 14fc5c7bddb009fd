//! Small durable metadata files (journal state, replica watermark): written tmp → fsync →
//! rename → fsync dir, with magic, version and checksum, as neon's safekeeper control file.
//!
//! Layout (little-endian): magic (4) | version u16 | count u16 | count × u64 | check (8 bytes:
//! first 8 bytes of blake3 of everything before).

use crate::error::{ReplicatorError, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Metadata format version written and read by this build.
pub const META_VERSION: u16 = 1;

/// Encodes `values` under `magic` (pure).
pub fn encode_meta(magic: [u8; 4], values: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + values.len() * 8);
    out.extend_from_slice(&magic);
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&(values.len() as u16).to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let check = blake3::hash(&out);
    out.extend_from_slice(&check.as_bytes()[..8]);
    out
}

/// Decodes a metadata file's bytes, checking magic, version, length and checksum (pure).
///
/// # Errors
/// A reason string naming the failed check.
pub fn decode_meta(magic: [u8; 4], bytes: &[u8], count: usize) -> Result<Vec<u64>, String> {
    let want = 8 + count * 8 + 8;
    if bytes.len() != want {
        return Err(format!("length {} (expected {want})", bytes.len()));
    }
    if bytes[0..4] != magic {
        return Err(format!("magic {:02x?} at byte 0", &bytes[0..4]));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != META_VERSION {
        return Err(format!("version {version} at byte 4"));
    }
    let n = u16::from_le_bytes([bytes[6], bytes[7]]) as usize;
    if n != count {
        return Err(format!("count {n} at byte 6 (expected {count})"));
    }
    let body_end = 8 + count * 8;
    if blake3::hash(&bytes[..body_end]).as_bytes()[..8] != bytes[body_end..] {
        return Err(format!("checksum mismatch at byte {body_end}"));
    }
    Ok(bytes[8..body_end]
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_le_bytes(a)
        })
        .collect())
}

/// Writes a metadata file durably: tmp file, fsync, rename over `path`, fsync the directory.
///
/// # Errors
/// [`ReplicatorError::Io`] naming the file.
pub fn write_meta(path: &Path, magic: [u8; 4], values: &[u64]) -> Result<()> {
    let bytes = encode_meta(magic, values);
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| ReplicatorError::io("create", &tmp, e))?;
    f.write_all(&bytes)
        .map_err(|e| ReplicatorError::io("write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| ReplicatorError::io("fsync", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| ReplicatorError::io("rename", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads a metadata file; `Ok(None)` when it does not exist.
///
/// # Errors
/// [`ReplicatorError::BadMetadata`] on any failed check, [`ReplicatorError::Io`] on read errors.
pub fn read_meta(path: &Path, magic: [u8; 4], count: usize) -> Result<Option<Vec<u64>>> {
    match std::fs::read(path) {
        Ok(bytes) => decode_meta(magic, &bytes, count)
            .map(Some)
            .map_err(|reason| ReplicatorError::BadMetadata {
                path: path.to_owned(),
                reason,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReplicatorError::io("read", path, e)),
    }
}

/// fsyncs a directory so a rename or a new file in it is durable.
///
/// # Errors
/// [`ReplicatorError::Io`] naming the directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ReplicatorError::io("fsync dir", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_golden_bytes() {
        let b = encode_meta(*b"TNDW", &[3, 258]);
        assert_eq!(&b[..8], b"TNDW\x01\x00\x02\x00");
        assert_eq!(&b[8..16], &3u64.to_le_bytes());
        assert_eq!(&b[16..24], &258u64.to_le_bytes());
        assert_eq!(&b[24..], &blake3::hash(&b[..24]).as_bytes()[..8]);
        assert_eq!(decode_meta(*b"TNDW", &b, 2), Ok(vec![3, 258]));
    }

    #[test]
    fn meta_detects_every_flipped_byte() {
        let b = encode_meta(*b"TNDJ", &[1, 2, 3]);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(decode_meta(*b"TNDJ", &c, 3).is_err(), "#{i}: flip accepted");
        }
    }

    #[test]
    fn meta_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.meta");
        assert_eq!(read_meta(&p, *b"TNDJ", 2).unwrap(), None);
        write_meta(&p, *b"TNDJ", &[7, 9]).unwrap();
        assert_eq!(read_meta(&p, *b"TNDJ", 2).unwrap(), Some(vec![7, 9]));
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(
            read_meta(&p, *b"TNDJ", 2),
            Err(ReplicatorError::BadMetadata { .. })
        ));
    }
}
