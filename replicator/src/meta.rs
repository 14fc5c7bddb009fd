//! Small durable metadata records with magic, version and checksum.
//!
//! Record layout (little-endian): magic (4) | version u16 | count u16 | count × u64 | check
//! (8 bytes: first 8 bytes of blake3 of everything before).
//!
//! Two ways to store one: [`write_meta`] (tmp → fsync → rename → fsync dir, as neon's
//! safekeeper control file; for rare updates such as the journal state), and [`SlotFile`]
//! (two fixed slots overwritten in turn with one fdatasync; for the replica watermark, updated
//! after every applied batch, where three syncs per batch would cost latency).

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
    read_meta_counted(path, magic, Some(count))
}

/// Reads a metadata file whose number of values is not fixed (the count is read from its
/// header); `Ok(None)` when it does not exist.
///
/// # Errors
/// [`ReplicatorError::BadMetadata`] on any failed check, [`ReplicatorError::Io`] on read errors.
pub fn read_meta_any(path: &Path, magic: [u8; 4]) -> Result<Option<Vec<u64>>> {
    read_meta_counted(path, magic, None)
}

/// [`read_meta`] with `count` values, or as many as the header says (`None`).
fn read_meta_counted(
    path: &Path,
    magic: [u8; 4],
    count: Option<usize>,
) -> Result<Option<Vec<u64>>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let count = count.unwrap_or_else(|| match bytes.get(6..8) {
                Some(c) => u16::from_le_bytes([c[0], c[1]]) as usize,
                None => 0,
            });
            decode_meta(magic, &bytes, count)
                .map(Some)
                .map_err(|reason| ReplicatorError::BadMetadata {
                    path: path.to_owned(),
                    reason,
                })
        }
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

/// Decodes one slot of `count` values; a slot an older format wrote with fewer values (its
/// header says how many) is read with the missing ones as 0 (pure). So a slot file gains a
/// value without a migration; a binary that knows fewer values refuses the newer file.
fn decode_slot(magic: [u8; 4], bytes: &[u8], count: usize) -> Result<Vec<u64>, String> {
    let n = match bytes.get(6..8) {
        Some(c) => u16::from_le_bytes([c[0], c[1]]) as usize,
        None => count,
    };
    if n == 0 || n >= count {
        return decode_meta(magic, bytes, count);
    }
    let len = 8 + n * 8 + 8;
    let mut v = decode_meta(magic, bytes.get(..len).unwrap_or(bytes), n)?;
    v.resize(count, 0);
    Ok(v)
}

/// Bytes between the two slots of a [`SlotFile`] (each slot in its own 4 KiB block).
pub const SLOT_STRIDE: u64 = 4096;

/// A metadata record kept in two slots written alternately: each write carries a counter, a
/// torn write damages only the slot being written, and reading takes the valid slot with the
/// highest counter. One `pwrite` + one fdatasync per update.
#[derive(Debug)]
pub struct SlotFile {
    path: std::path::PathBuf,
    file: File,
    magic: [u8; 4],
    count: usize,
    counter: u64,
}

impl SlotFile {
    /// The file's path (for error messages).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Opens (or creates with `initial`) the slot file at `path` holding `count` values;
    /// returns it with the current values.
    ///
    /// # Errors
    /// [`ReplicatorError::BadMetadata`] when neither slot is valid, or [`ReplicatorError::Io`].
    pub fn open(
        path: &Path,
        magic: [u8; 4],
        count: usize,
        initial: &[u64],
    ) -> Result<(SlotFile, Vec<u64>)> {
        use std::os::unix::fs::FileExt;
        let exists = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| ReplicatorError::io("open", path, e))?;
        let mut slot = SlotFile {
            path: path.to_owned(),
            file,
            magic,
            count,
            counter: 0,
        };
        if !exists {
            slot.write(initial)?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            return Ok((slot, initial.to_vec()));
        }
        let rec = 8 + (count + 1) * 8 + 8;
        let mut best: Option<Vec<u64>> = None;
        let mut reasons = Vec::new();
        for i in 0..2u64 {
            let mut buf = vec![0u8; rec];
            let got = match slot.file.read_at(&mut buf, i * SLOT_STRIDE) {
                Ok(n) => n,
                Err(e) => return Err(ReplicatorError::io("read", path, e)),
            };
            buf.truncate(got);
            match decode_slot(magic, &buf, count + 1) {
                Ok(v) => {
                    if best.as_ref().is_none_or(|b| v[0] > b[0]) {
                        best = Some(v);
                    }
                }
                Err(r) => reasons.push(format!("slot {i}: {r}")),
            }
        }
        match best {
            Some(v) => {
                slot.counter = v[0];
                Ok((slot, v[1..].to_vec()))
            }
            None => Err(ReplicatorError::BadMetadata {
                path: path.to_owned(),
                reason: reasons.join("; "),
            }),
        }
    }

    /// Writes new values durably into the older slot.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`]; the previous values stay readable from the other slot.
    pub fn write(&mut self, values: &[u64]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        debug_assert_eq!(values.len(), self.count);
        let counter = self.counter + 1;
        let mut all = Vec::with_capacity(values.len() + 1);
        all.push(counter);
        all.extend_from_slice(values);
        let bytes = encode_meta(self.magic, &all);
        self.file
            .write_all_at(&bytes, (counter % 2) * SLOT_STRIDE)
            .map_err(|e| ReplicatorError::io("pwrite", &self.path, e))?;
        self.file
            .sync_data()
            .map_err(|e| ReplicatorError::io("fdatasync", &self.path, e))?;
        self.counter = counter;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_file_gains_a_value_read_as_zero_from_older_slots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.slots");
        let (mut f, _) = SlotFile::open(&p, *b"TNDW", 2, &[0, 1]).unwrap();
        f.write(&[7, 2]).unwrap();
        drop(f);
        let (mut f, v) = SlotFile::open(&p, *b"TNDW", 3, &[0, 0, 0]).unwrap();
        assert_eq!(v, vec![7, 2, 0], "the newer slot, the new value 0");
        f.write(&[8, 2, 5]).unwrap();
        drop(f);
        // One slot of each format: the newest counter wins.
        assert_eq!(
            SlotFile::open(&p, *b"TNDW", 3, &[0, 0, 0]).unwrap().1,
            vec![8, 2, 5]
        );
        // An older binary (2 values) refuses the newer slot but reads the older one.
        assert_eq!(
            SlotFile::open(&p, *b"TNDW", 2, &[0, 0]).unwrap().1,
            vec![7, 2]
        );
        // A damaged older slot is still refused.
        let mut bad = encode_meta(*b"TNDW", &[1, 7, 2]);
        bad[10] ^= 1;
        assert!(decode_slot(*b"TNDW", &bad, 4).is_err());
    }

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
    fn slot_file_survives_a_torn_latest_slot() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.slots");
        let (mut f, v) = SlotFile::open(&p, *b"TNDW", 2, &[0, 1]).unwrap();
        assert_eq!(v, vec![0, 1]);
        f.write(&[5, 1]).unwrap(); // counter 2 -> slot 0
        f.write(&[9, 2]).unwrap(); // counter 3 -> slot 1
        drop(f);
        assert_eq!(
            SlotFile::open(&p, *b"TNDW", 2, &[0, 0]).unwrap().1,
            vec![9, 2]
        );
        // Tear the latest slot (slot 1): the previous values come back.
        let mut b = std::fs::read(&p).unwrap();
        b[SLOT_STRIDE as usize + 12] ^= 0xff;
        std::fs::write(&p, &b).unwrap();
        let (mut f, v) = SlotFile::open(&p, *b"TNDW", 2, &[0, 0]).unwrap();
        assert_eq!(v, vec![5, 1]);
        f.write(&[11, 2]).unwrap();
        drop(f);
        assert_eq!(
            SlotFile::open(&p, *b"TNDW", 2, &[0, 0]).unwrap().1,
            vec![11, 2]
        );
        // Both slots bad: refused.
        std::fs::write(&p, vec![0u8; 2 * SLOT_STRIDE as usize]).unwrap();
        assert!(matches!(
            SlotFile::open(&p, *b"TNDW", 2, &[0, 0]),
            Err(ReplicatorError::BadMetadata { .. })
        ));
    }

    #[test]
    fn meta_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.meta");
        assert_eq!(read_meta(&p, *b"TNDJ", 2).unwrap(), None);
        write_meta(&p, *b"TNDJ", &[7, 9]).unwrap();
        assert_eq!(read_meta(&p, *b"TNDJ", 2).unwrap(), Some(vec![7, 9]));
        assert_eq!(read_meta_any(&p, *b"TNDJ").unwrap(), Some(vec![7, 9]));
        write_meta(&p, *b"TNDJ", &[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(
            read_meta_any(&p, *b"TNDJ").unwrap(),
            Some(vec![1, 2, 3, 4, 5])
        );
        std::fs::write(&p, b"garbage").unwrap();
        assert!(matches!(
            read_meta_any(&p, *b"TNDJ"),
            Err(ReplicatorError::BadMetadata { .. })
        ));
        assert!(matches!(
            read_meta(&p, *b"TNDJ", 2),
            Err(ReplicatorError::BadMetadata { .. })
        ));
    }
}
