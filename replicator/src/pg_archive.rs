//! The replica's PostgreSQL archive folder: rebuilds archive files (WAL segments, history
//! files) from `WalChunk`/`WalEnd` changes and publishes each one atomically.
//!
//! Chunks are written in order into `NAME.tmp`; at the end the file's size and blake3 are
//! checked, the tmp file is fsync'ed, renamed to `NAME` and the folder fsync'ed — so a file
//! under its final name is always complete and durable, which is what `tandem wal fetch`
//! (PostgreSQL's `restore_command`) relies on. While a file is incomplete the replica's
//! watermark stays just before its first chunk, so a restart resends the whole file.
//!
//! Streamed WAL (`WalStream` changes, sent as PostgreSQL writes it) goes into `NAME.streaming` (not `.streaming`, a name PostgreSQL itself archives at a promotion),
//! a file of the segment's full size (zeroes past the bytes received), written in place and
//! made durable with the batch, before its Ack ([`WalArchive::sync`]): an acknowledged piece
//! is on disk here. `tandem wal fetch` serves a segment's `.streaming` while the segment itself
//! is not here, so the standby replays streamed WAL up to the newest piece — also at
//! promotion. `WalStreamEnd` checks the complete segment's size and blake3 and publishes it
//! under its own name.
//! All methods do blocking I/O.

use crate::error::{ReplicatorError, Result};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tandem_core::frame::{Change, ChangeKind};
use tandem_core::ids::Seq;
use tandem_core::walfile;

/// Suffix of a file being received.
pub const TMP_SUFFIX: &str = ".tmp";
/// Suffix of a WAL segment being streamed.
pub const PARTIAL_SUFFIX: &str = ".streaming";

/// The segment being streamed into its `.streaming` file.
#[derive(Debug)]
struct Streaming {
    name: String,
    path: PathBuf,
    file: File,
    segment_len: u64,
    /// Written since the last [`WalArchive::sync`].
    dirty: bool,
    /// Created since the last sync: the folder must be synced too.
    created: bool,
}

#[derive(Debug)]
struct Incoming {
    name: String,
    first_seq: Seq,
    path: PathBuf,
    file: File,
    written: u64,
}

/// One postgres resource's archive folder on the replica.
#[derive(Debug)]
pub struct WalArchive {
    resource: String,
    dir: PathBuf,
    incoming: Option<Incoming>,
    streaming: Option<Streaming>,
}

impl WalArchive {
    /// Opens (creates) the archive folder `dir` of `resource`, removing `*.tmp` leftovers of
    /// files a crash left incomplete (they are resent whole).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] naming the folder.
    pub fn open(resource: &str, dir: &Path) -> Result<WalArchive> {
        crate::durable_dir::create_dir_durable(dir)?;
        let rd = std::fs::read_dir(dir).map_err(|e| ReplicatorError::io("read dir", dir, e))?;
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(WalArchive {
            resource: resource.to_owned(),
            dir: dir.to_owned(),
            incoming: None,
            streaming: None,
        })
    }

    /// The archive folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seq of the first chunk of the file being received, if one is incomplete.
    pub fn pending_since(&self) -> Option<Seq> {
        self.incoming.as_ref().map(|i| i.first_seq)
    }

    /// Forgets the incomplete file (after a failed batch: it is resent from its first chunk).
    pub fn abandon(&mut self) {
        if let Some(i) = self.incoming.take() {
            let _ = std::fs::remove_file(&i.path);
        }
    }

    /// Starts receiving `name` (dropping any incomplete file: a resend) into a fresh tmp file.
    fn start(&mut self, name: &str, seq: Seq) -> Result<()> {
        self.abandon();
        let path = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| ReplicatorError::io("create", &path, e))?;
        self.incoming = Some(Incoming {
            name: name.to_owned(),
            first_seq: seq,
            path,
            file,
            written: 0,
        });
        Ok(())
    }

    fn bad(&self, seq: Seq, reason: impl Into<String>) -> ReplicatorError {
        ReplicatorError::BadWalChange {
            seq,
            resource: self.resource.clone(),
            reason: reason.into(),
        }
    }

    /// Applies one `WalChunk` or `WalEnd` change with seq `seq`. A chunk at offset 0 starts a
    /// file (dropping any incomplete one: a resend); other chunks must continue the file being
    /// received. An end checks size and blake3 and publishes the file durably.
    ///
    /// # Errors
    /// [`ReplicatorError::BadWalChange`] for a malformed, out-of-order or mismatching change;
    /// [`ReplicatorError::Io`] when the folder cannot be written.
    pub fn apply(&mut self, c: &Change, seq: Seq) -> Result<()> {
        let end = match c.kind {
            ChangeKind::WalChunk => false,
            ChangeKind::WalEnd => true,
            ChangeKind::WalStream => return self.apply_stream(c, seq),
            ChangeKind::WalStreamEnd => return self.publish_stream(c, seq),
            other => {
                return Err(self.bad(seq, format!("a {other:?} change for a postgres archive")))
            }
        };
        let piece = walfile::parse(&c.data, end).map_err(|r| self.bad(seq, r))?;
        if !end {
            if c.offset == 0 {
                self.start(piece.name, seq)?;
            }
            let Some(inc) = self.incoming.as_mut() else {
                return Err(self.bad(
                    seq,
                    format!(
                        "chunk of {} at offset {} without its start",
                        piece.name, c.offset
                    ),
                ));
            };
            if inc.name != piece.name || inc.written != c.offset {
                let why = format!(
                    "chunk of {} at offset {} while receiving {} at offset {}",
                    piece.name, c.offset, inc.name, inc.written
                );
                return Err(self.bad(seq, why));
            }
            if inc.written + piece.bytes.len() as u64 > walfile::MAX_FILE_LEN {
                return Err(self.bad(seq, format!("{} grows past 1 GiB", piece.name)));
            }
            inc.file
                .write_all_at(piece.bytes, inc.written)
                .map_err(|e| ReplicatorError::io("pwrite", &inc.path, e))?;
            inc.written += piece.bytes.len() as u64;
            return Ok(());
        }
        // The end: an empty file has no chunks.
        if c.offset == 0 && self.incoming.as_ref().is_none_or(|i| i.name != piece.name) {
            self.start(piece.name, seq)?;
        }
        let Some(inc) = self.incoming.take() else {
            return Err(self.bad(seq, format!("end of {} without its chunks", piece.name)));
        };
        if inc.name != piece.name || inc.written != c.offset {
            let why = format!(
                "end of {} ({} bytes) while receiving {} ({} bytes so far)",
                piece.name, c.offset, inc.name, inc.written
            );
            let _ = std::fs::remove_file(&inc.path);
            return Err(self.bad(seq, why));
        }
        let got = hash_file(&inc.file, &inc.path)?;
        if got.as_bytes()[..] != piece.bytes[..] {
            let _ = std::fs::remove_file(&inc.path);
            return Err(self.bad(
                seq,
                format!(
                    "{}: reassembled file's blake3 {got} does not match",
                    inc.name
                ),
            ));
        }
        inc.file
            .sync_all()
            .map_err(|e| ReplicatorError::io("fsync", &inc.path, e))?;
        let dest = self.dir.join(&inc.name);
        std::fs::rename(&inc.path, &dest).map_err(|e| ReplicatorError::io("rename", &dest, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ReplicatorError::io("fsync dir", &self.dir, e))?;
        tracing::debug!(resource = %self.resource, file = %inc.name, bytes = inc.written, "archive file durable");
        Ok(())
    }
}

impl WalArchive {
    /// Writes a `WalStream` piece into its segment's `.streaming` file (created at the
    /// segment's full size when missing; kept when present, so a resent piece overwrites the
    /// same bytes and a restart continues the file).
    fn apply_stream(&mut self, c: &Change, seq: Seq) -> Result<()> {
        let piece = walfile::parse_stream(&c.data, c.offset).map_err(|r| self.bad(seq, r))?;
        let same = self
            .streaming
            .as_ref()
            .is_some_and(|s| s.name == piece.name && s.segment_len == piece.segment_len);
        if !same {
            self.sync()?;
            let path = self.dir.join(format!("{}{PARTIAL_SUFFIX}", piece.name));
            let created = !path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| ReplicatorError::io("open", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| ReplicatorError::io("stat", &path, e))?
                .len();
            if len != piece.segment_len {
                file.set_len(piece.segment_len)
                    .map_err(|e| ReplicatorError::io("set_len", &path, e))?;
            }
            self.streaming = Some(Streaming {
                name: piece.name.to_owned(),
                path,
                file,
                segment_len: piece.segment_len,
                dirty: true,
                created,
            });
        }
        if let Some(s) = self.streaming.as_mut() {
            s.file
                .write_all_at(piece.bytes, c.offset)
                .map_err(|e| ReplicatorError::io("pwrite", &s.path, e))?;
            s.dirty = true;
        }
        Ok(())
    }

    /// `WalStreamEnd`: the segment's `.streaming` file must have the announced size and
    /// blake3; it is synced and renamed to the segment's name (replacing a copy the archive
    /// path may have published: the same bytes), and the folder synced.
    fn publish_stream(&mut self, c: &Change, seq: Seq) -> Result<()> {
        let piece = walfile::parse(&c.data, true).map_err(|r| self.bad(seq, r))?;
        if self
            .streaming
            .as_ref()
            .is_some_and(|s| s.name == piece.name)
        {
            self.sync()?;
            self.streaming = None;
        }
        let path = self.dir.join(format!("{}{PARTIAL_SUFFIX}", piece.name));
        let dest = self.dir.join(piece.name);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Published already (a resent end after a restart).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dest.exists() => return Ok(()),
            Err(e) => return Err(ReplicatorError::io("open", &path, e)),
        };
        let len = file
            .metadata()
            .map_err(|e| ReplicatorError::io("stat", &path, e))?
            .len();
        if len != c.offset {
            let why = format!(
                "end of streamed segment {} ({} bytes) but its .streaming file has {len}",
                piece.name, c.offset
            );
            return Err(self.bad(seq, why));
        }
        let got = hash_file(&file, &path)?;
        if got.as_bytes()[..] != piece.bytes[..] {
            let why = format!(
                "streamed segment {}: blake3 {got} of the .streaming file does not match the primary's",
                piece.name
            );
            return Err(self.bad(seq, why));
        }
        file.sync_all()
            .map_err(|e| ReplicatorError::io("fsync", &path, e))?;
        std::fs::rename(&path, &dest).map_err(|e| ReplicatorError::io("rename", &dest, e))?;
        self.sync_dir()?;
        tracing::debug!(resource = %self.resource, file = %piece.name, "streamed segment durable");
        Ok(())
    }

    /// Makes the streamed bytes written since the last call durable (and the `.streaming`
    /// file's name, when it was created since). Called before the watermark covering them is
    /// persisted.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] naming the file or folder.
    pub fn sync(&mut self) -> Result<()> {
        let Some(s) = self.streaming.as_mut() else {
            return Ok(());
        };
        if s.dirty {
            s.file
                .sync_data()
                .map_err(|e| ReplicatorError::io("fdatasync", &s.path, e))?;
            s.dirty = false;
        }
        if s.created {
            s.created = false;
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ReplicatorError::io("fsync dir", &self.dir, e))
    }
}

fn hash_file(file: &File, path: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut f = file
        .try_clone()
        .map_err(|e| ReplicatorError::io("reopen", path, e))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))
        .map_err(|e| ReplicatorError::io("seek", path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ReplicatorError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(n: usize, salt: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    #[test]
    fn a_file_appears_only_when_complete_and_matches() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        let data = file(walfile::CHUNK_LEN * 2 + 5, 1);
        let cs = walfile::changes("pg", "000000010000000000000001", &data, 0).unwrap();
        let dest = dir.path().join("000000010000000000000001");
        for (i, c) in cs.iter().enumerate() {
            assert!(!dest.exists(), "published before its end");
            a.apply(c, Seq(10 + i as u64)).unwrap();
            if i + 1 < cs.len() {
                assert_eq!(a.pending_since(), Some(Seq(10)));
            }
        }
        assert_eq!(a.pending_since(), None);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!dir.path().join("000000010000000000000001.tmp").exists());
    }

    #[test]
    fn a_resent_file_restarts_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        let old = file(100, 2);
        for c in walfile::changes("pg", "f", &old, 0).unwrap() {
            a.apply(&c, Seq(1)).unwrap();
        }
        let new = file(walfile::CHUNK_LEN + 1, 3);
        let cs = walfile::changes("pg", "f", &new, 0).unwrap();
        a.apply(&cs[0], Seq(2)).unwrap();
        // A restart resends from the first chunk.
        a.apply(&cs[0], Seq(2)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), old);
        a.apply(&cs[1], Seq(3)).unwrap();
        a.apply(&cs[2], Seq(4)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), new);
    }

    #[test]
    fn out_of_order_or_corrupted_pieces_are_refused_and_nothing_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        let data = file(walfile::CHUNK_LEN * 2, 4);
        let cs = walfile::changes("pg", "seg", &data, 0).unwrap();
        let e = a.apply(&cs[1], Seq(1)).unwrap_err().to_string();
        assert!(e.contains("without its start"), "{e}");
        a.apply(&cs[0], Seq(1)).unwrap();
        let e = a.apply(&cs[2], Seq(2)).unwrap_err().to_string();
        assert!(e.contains("while receiving seg"), "{e}");
        // Same length, other bytes: the whole-file hash catches it.
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        let mut forged =
            walfile::changes("pg", "seg", &file(walfile::CHUNK_LEN * 2, 5), 0).unwrap();
        forged[2] = cs[2].clone();
        for c in &forged[..2] {
            a.apply(c, Seq(1)).unwrap();
        }
        let e = a.apply(&forged[2], Seq(3)).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        assert!(!dir.path().join("seg").exists());
        assert!(!dir.path().join("seg.tmp").exists());
    }

    #[test]
    fn an_empty_history_file_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        for c in walfile::changes("pg", "00000002.history", &[], 0).unwrap() {
            a.apply(&c, Seq(1)).unwrap();
        }
        assert_eq!(
            std::fs::read(dir.path().join("00000002.history")).unwrap(),
            b""
        );
    }

    const SEG: u64 = 1 << 20;

    fn piece(name: &str, off: u64, bytes: &[u8]) -> Change {
        walfile::stream_piece("pg", name, SEG, off, bytes, 0).unwrap()
    }

    #[test]
    fn streamed_wal_lands_in_a_full_size_partial_file_and_is_published_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        let name = "000000010000000000000003";
        let seg = file(SEG as usize, 6);
        let half = SEG as usize / 2;
        a.apply(&piece(name, 0, &seg[..100]), Seq(1)).unwrap();
        a.apply(&piece(name, 100, &seg[100..half]), Seq(2)).unwrap();
        a.sync().unwrap();
        let partial = dir.path().join(format!("{name}.streaming"));
        let on_disk = std::fs::read(&partial).unwrap();
        assert_eq!(
            on_disk.len() as u64,
            SEG,
            "a .streaming file has the segment's size"
        );
        assert_eq!(&on_disk[..half], &seg[..half]);
        assert!(
            on_disk[half..].iter().all(|b| *b == 0),
            "zeroes past the newest piece"
        );
        assert!(!dir.path().join(name).exists());
        // A restart: a new archive object continues the same file (a resent piece too).
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        a.apply(&piece(name, 100, &seg[100..half]), Seq(2)).unwrap();
        a.apply(&piece(name, half as u64, &seg[half..]), Seq(3))
            .unwrap();
        let end = walfile::stream_end("pg", name, SEG, &blake3::hash(&seg), 0).unwrap();
        a.apply(&end, Seq(4)).unwrap();
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), seg);
        assert!(!partial.exists());
        // A resent end after the publish is harmless.
        a.apply(&end, Seq(4)).unwrap();
    }

    #[test]
    fn a_streamed_segment_with_a_gap_or_other_bytes_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        let name = "000000010000000000000004";
        let seg = file(SEG as usize, 7);
        // The middle piece never arrived: zeroes there, so the hash differs.
        a.apply(&piece(name, 0, &seg[..10]), Seq(1)).unwrap();
        a.apply(&piece(name, 20, &seg[20..]), Seq(2)).unwrap();
        let end = walfile::stream_end("pg", name, SEG, &blake3::hash(&seg), 0).unwrap();
        let e = a.apply(&end, Seq(3)).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        assert!(!dir.path().join(name).exists());
        // An end that claims another size.
        let end = walfile::stream_end("pg", name, SEG * 2, &blake3::hash(&seg), 0).unwrap();
        let e = a.apply(&end, Seq(3)).unwrap_err().to_string();
        assert!(e.contains("its .streaming file has"), "{e}");
        // An end for a segment never streamed.
        let end = walfile::stream_end(
            "pg",
            "000000010000000000000009",
            SEG,
            &blake3::hash(&seg),
            0,
        )
        .unwrap();
        assert!(a.apply(&end, Seq(4)).is_err());
    }

    #[test]
    fn streamed_pieces_and_an_archive_push_of_the_same_segment_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = WalArchive::open("pg", dir.path()).unwrap();
        let name = "000000010000000000000005";
        let seg = file(SEG as usize, 8);
        let pushed = walfile::changes("pg", name, &seg, 0).unwrap();
        a.apply(&piece(name, 0, &seg[..4096]), Seq(1)).unwrap();
        a.apply(&pushed[0], Seq(2)).unwrap();
        a.apply(&piece(name, 4096, &seg[4096..]), Seq(3)).unwrap();
        a.apply(&pushed[1], Seq(4)).unwrap();
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), seg);
        let end = walfile::stream_end("pg", name, SEG, &blake3::hash(&seg), 0).unwrap();
        a.apply(&end, Seq(5)).unwrap();
        assert_eq!(std::fs::read(dir.path().join(name)).unwrap(), seg);
    }

    #[test]
    fn leftover_tmp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("x"), b"whole").unwrap();
        WalArchive::open("pg", dir.path()).unwrap();
        assert!(!dir.path().join("x.tmp").exists());
        assert!(dir.path().join("x").exists());
    }
}
