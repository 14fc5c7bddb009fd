//! The `scan` capture source: hash a file into a merkle tree and ship the blocks that changed.
//!
//! For volumes written by others (no write path through Tandem), the scanner keeps the tree of
//! what it last shipped, re-hashes the file every interval, diffs, reads the differing blocks
//! and hands them on as `Change::write` values. Starting from [`MerkleTree::empty`] ships every
//! block (initial sync); starting from [`MerkleTree::zeros`] ships only non-zero blocks (initial
//! sync to a fresh sparse replica).
//!
//! All functions here block on file I/O and hashing: call them from `spawn_blocking` or a
//! dedicated thread ([`Scanner::run`] does that itself).

use crate::merkle::{self, Hash, MerkleError, MerkleTree};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;
use tandem_core::clock::Clock;
use tandem_core::frame::Change;
use tokio::sync::watch;

/// Size of one read when reading a file in bulk: 4 MiB (rounded down to whole blocks).
pub const READ_CHUNK: usize = 4 << 20;

/// Largest `Change::write` the scanner makes: 1 MiB (or one block when blocks are larger), and
/// never more than the batch size.
pub const MAX_CHANGE_BYTES: usize = 1 << 20;

/// Default bytes of changes handed to the callback at once: 16 MiB (bounded memory).
pub const DEFAULT_BATCH_BYTES: usize = 16 << 20;

/// Errors from hashing or scanning a file.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `read`, `stat`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Building or diffing the tree failed (bad block size, mismatched trees).
    #[error("merkle: {0}")]
    Merkle(#[from] MerkleError),
    /// The blocking task doing the scan panicked or was cancelled.
    #[error("scan task failed: {0}")]
    Task(String),
}

impl ScanError {
    /// Whether trying again later could succeed (I/O errors may be transient).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ScanError::Io { .. })
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ScanError + 'a {
    move |source| ScanError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Hashes a file into a merkle tree of `block_size` blocks.
///
/// Blocking. See [`hash_file_with_progress`].
///
/// # Errors
/// [`ScanError::Io`] when the file cannot be opened or read, [`ScanError::Merkle`] for a block
/// size out of range.
pub fn hash_file(path: &Path, block_size: u32) -> Result<MerkleTree, ScanError> {
    hash_file_with_progress(path, block_size, &mut |_, _| {})
}

/// Hashes a file into a merkle tree, reporting `(blocks_hashed, blocks_total)` as it goes.
///
/// Every core works ([`hash_threads`]): each worker takes the next 1 MiB chunk, reads it with
/// `pread` and hashes it block by block while it is still in the cache, and the caller's thread
/// places the leaves and reports. The length is taken when the file is opened; if the file
/// shrinks meanwhile the tree describes the bytes read up to the first short read.
///
/// # Errors
/// [`ScanError::Io`] when the file cannot be opened or read, [`ScanError::Merkle`] for a block
/// size out of range.
pub fn hash_file_with_progress(
    path: &Path,
    block_size: u32,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<MerkleTree, ScanError> {
    merkle::check_block_size(block_size)?;
    let file = File::open(path).map_err(io_err("open", path))?;
    let length = file.metadata().map_err(io_err("stat", path))?.len();
    let total = merkle::block_count(length, block_size);
    let (leaves, read) = hash_range(&file, path, block_size, 0..total, length, progress)?;
    Ok(MerkleTree::from_leaves(block_size, read, leaves)?)
}

/// Size of one worker's read when hashing in parallel: 1 MiB (rounded down to whole blocks),
/// small enough to be hashed while it is still in the core's cache.
pub const HASH_CHUNK: usize = 1 << 20;

/// Threads that hash a file: one per core, at most 8.
pub fn hash_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Leaves of blocks `blocks` (within `length`) of `file`, hashed on every core; returns them
/// and the bytes they cover, which stop at the first short read (the file shrank). Reports
/// `(blocks hashed, blocks asked)` after each chunk.
fn hash_range(
    file: &File,
    path: &Path,
    block_size: u32,
    blocks: std::ops::Range<u64>,
    length: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Vec<Hash>, u64), ScanError> {
    let bs = u64::from(block_size);
    let per_chunk = (HASH_CHUNK as u64 / bs).max(1);
    let count = blocks.end.saturating_sub(blocks.start);
    let chunks = count.div_ceil(per_chunk);
    let next = std::sync::atomic::AtomicU64::new(0);
    let workers = (hash_threads() as u64).min(chunks).max(1) as usize;
    // (chunk, leaves, bytes wanted, bytes read) from the workers, or a read error.
    type Done = std::io::Result<(u64, Vec<Hash>, u64, u64)>;
    let (tx, rx) = mpsc::sync_channel::<Done>(workers * 2);
    let mut slots: Vec<Option<(Vec<Hash>, u64, u64)>> = (0..chunks).map(|_| None).collect();
    let mut hashed = 0u64;
    let mut failed: Option<std::io::Error> = None;
    std::thread::scope(|s| {
        for _ in 0..workers {
            let (tx, next) = (tx.clone(), &next);
            s.spawn(move || {
                let mut buf = vec![0u8; (per_chunk * bs) as usize];
                loop {
                    let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if c >= chunks {
                        return;
                    }
                    let first = blocks.start + c * per_chunk;
                    let n_blocks = per_chunk.min(blocks.end - first);
                    let offset = first * bs;
                    let want = (n_blocks * bs).min(length.saturating_sub(offset));
                    let r = read_full_at(file, &mut buf[..want as usize], offset).map(|n| {
                        let leaves = buf[..n].chunks(bs as usize).map(merkle::leaf_hash);
                        (c, leaves.collect(), want, n as u64)
                    });
                    let stop = r.is_err();
                    if tx.send(r).is_err() || stop {
                        // The caller stopped listening (an error), or this read failed.
                        next.store(chunks, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
        drop(tx);
        while let Ok(done) = rx.recv() {
            match done {
                Ok((c, leaves, want, n)) => {
                    hashed += leaves.len() as u64;
                    slots[c as usize] = Some((leaves, want, n));
                    progress(hashed, count);
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    next.store(chunks, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    if let Some(e) = failed {
        return Err(io_err("read", path)(e));
    }
    let mut leaves = Vec::with_capacity(count as usize);
    let mut read = 0u64;
    for slot in slots {
        let Some((l, want, n)) = slot else { break };
        leaves.extend(l);
        read += n;
        if n < want {
            break; // the file shrank meanwhile
        }
    }
    Ok((leaves, read))
}

/// Hashes blocks `[first, first + count)` of a file (clipped to its length) and returns their
/// leaves and the file's length. Hashes on every core, as [`hash_file_with_progress`].
///
/// # Errors
/// [`ScanError::Io`] when the file cannot be opened or read, [`ScanError::Merkle`] for a block
/// size out of range.
pub fn hash_blocks(
    path: &Path,
    block_size: u32,
    first: u64,
    count: u64,
) -> Result<(Vec<Hash>, u64), ScanError> {
    merkle::check_block_size(block_size)?;
    let file = File::open(path).map_err(io_err("open", path))?;
    let length = file.metadata().map_err(io_err("stat", path))?.len();
    let end = first
        .saturating_add(count)
        .min(merkle::block_count(length, block_size));
    let (leaves, _) = hash_range(
        &file,
        path,
        block_size,
        first.min(end)..end,
        length,
        &mut |_, _| {},
    )?;
    Ok((leaves, length))
}

/// Progress of the current scan pass, for progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanProgress {
    /// Pass number (1 for the first pass).
    pub pass: u64,
    /// Blocks hashed so far in this pass.
    pub blocks_hashed: u64,
    /// Blocks in the file when the pass started.
    pub blocks_total: u64,
    /// True once the pass has hashed, diffed and handed on every change.
    pub done: bool,
}

/// What one scan pass found and shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPass {
    /// Pass number (1 for the first pass).
    pub pass: u64,
    /// Blocks in the file.
    pub blocks_total: u64,
    /// Blocks that differed from the previous tree and were handed on.
    pub blocks_changed: u64,
    /// Bytes handed on as `Change::write` data.
    pub bytes_changed: u64,
    /// File length seen by this pass.
    pub length: u64,
    /// Set when the file is shorter than at the previous pass: the tail beyond `length` is not
    /// expressible as a write and is not shipped (see the scanner doc).
    pub shrunk_from: Option<u64>,
    /// Root of the tree of what has now been shipped.
    pub root: Hash,
}

/// Scans one file into `Change::write` values for one resource.
///
/// Keeps the tree of what it has shipped. After reading a changed block it records the hash of
/// the bytes it actually read, not of the bytes it hashed a moment before, so a block written
/// again between the two is shipped again by the next pass: passes converge on the file.
/// A file that shrinks is reported in [`ScanPass::shrunk_from`]; truncation is not shipped.
#[derive(Debug)]
pub struct Scanner {
    resource: String,
    path: PathBuf,
    last: MerkleTree,
    pass: u64,
    batch_bytes: usize,
    clock: Arc<dyn Clock>,
    progress: watch::Sender<ScanProgress>,
}

impl Scanner {
    /// A scanner of `path` for `resource`, starting from `previous` (what the replica is known
    /// to hold: [`MerkleTree::empty`] to ship everything, [`MerkleTree::zeros`] to ship only
    /// non-zero blocks, or the tree of an earlier scan). The block size is `previous`'s.
    pub fn new(
        resource: &str,
        path: &Path,
        previous: MerkleTree,
        clock: Arc<dyn Clock>,
    ) -> Scanner {
        let (progress, _) = watch::channel(ScanProgress::default());
        Scanner {
            resource: resource.to_string(),
            path: path.to_path_buf(),
            last: previous,
            pass: 0,
            batch_bytes: DEFAULT_BATCH_BYTES,
            clock,
            progress,
        }
    }

    /// Sets how many bytes of changes are handed to the callback at once (at least one change).
    pub fn with_batch_bytes(mut self, batch_bytes: usize) -> Scanner {
        self.batch_bytes = batch_bytes.max(1);
        self
    }

    /// A receiver of the progress of the current pass.
    pub fn progress(&self) -> watch::Receiver<ScanProgress> {
        self.progress.subscribe()
    }

    /// The tree of what has been shipped so far.
    pub fn last_tree(&self) -> &MerkleTree {
        &self.last
    }

    /// Runs one pass: hash, diff against the last tree, read the changed blocks and hand them to
    /// `emit` in batches of about `batch_bytes`, in ascending offset order. Blocking.
    ///
    /// # Errors
    /// [`ScanError::Io`] when the file cannot be read; the last tree is then left unchanged, so
    /// the next pass ships the same changes again.
    pub fn scan_once(&mut self, emit: &mut dyn FnMut(Vec<Change>)) -> Result<ScanPass, ScanError> {
        self.pass += 1;
        let pass = self.pass;
        let block_size = self.last.block_size();
        let progress = &self.progress;
        progress.send_replace(ScanProgress {
            pass,
            ..ScanProgress::default()
        });
        let mut tree = hash_file_with_progress(&self.path, block_size, &mut |hashed, total| {
            progress.send_replace(ScanProgress {
                pass,
                blocks_hashed: hashed,
                blocks_total: total,
                done: false,
            });
        })?;
        let ranges = merkle::diff(&self.last, &tree)?;
        let length = tree.length();
        let blocks_total = tree.block_count();
        let shrunk_from = (length < self.last.length()).then_some(self.last.length());

        let file = File::open(&self.path).map_err(io_err("open", &self.path))?;
        let bs = u64::from(block_size);
        let piece_blocks = (MAX_CHANGE_BYTES.min(self.batch_bytes) as u64 / bs).max(1);
        let mut batch: Vec<Change> = Vec::new();
        let mut batch_len = 0usize;
        let mut blocks_changed = 0u64;
        let mut bytes_changed = 0u64;
        for range in ranges {
            // Blocks only the previous tree had are gone from the file: nothing to read.
            let end = range.end.min(blocks_total);
            let mut start = range.start;
            while start < end {
                let stop = (start + piece_blocks).min(end);
                let bytes = merkle::block_range_to_bytes(&(start..stop), block_size, length);
                let mut data = vec![0u8; (bytes.end - bytes.start) as usize];
                let n = read_full_at(&file, &mut data, bytes.start)
                    .map_err(io_err("read", &self.path))?;
                data.truncate(n);
                for (k, block) in data.chunks(bs as usize).enumerate() {
                    tree.set_leaf(start + k as u64, merkle::leaf_hash(block));
                }
                blocks_changed += stop - start;
                bytes_changed += data.len() as u64;
                batch_len += data.len();
                if !data.is_empty() {
                    batch.push(Change::write(
                        &self.resource,
                        bytes.start,
                        data,
                        self.clock.now_ms(),
                    ));
                }
                if batch_len >= self.batch_bytes {
                    emit(std::mem::take(&mut batch));
                    batch_len = 0;
                }
                start = stop;
            }
        }
        if !batch.is_empty() {
            emit(batch);
        }
        let root = tree.root();
        self.last = tree;
        progress.send_replace(ScanProgress {
            pass,
            blocks_hashed: blocks_total,
            blocks_total,
            done: true,
        });
        Ok(ScanPass {
            pass,
            blocks_total,
            blocks_changed,
            bytes_changed,
            length,
            shrunk_from,
            root,
        })
    }

    /// Runs a pass every `interval` on the blocking pool until `shutdown` turns true (or its
    /// sender is dropped); `emit` receives the changes, `on_pass` each pass's summary. Returns
    /// the scanner so its tree can be kept.
    ///
    /// # Errors
    /// The first [`ScanError`] of a pass; the scanner is lost with it and must be rebuilt from
    /// a known tree.
    pub async fn run<E, P>(
        mut self,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
        mut emit: E,
        mut on_pass: P,
    ) -> Result<Scanner, ScanError>
    where
        E: FnMut(Vec<Change>) + Send + 'static,
        P: FnMut(&ScanPass) + Send,
    {
        loop {
            if *shutdown.borrow() {
                return Ok(self);
            }
            let (scanner, e, result) = tokio::task::spawn_blocking(move || {
                let r = self.scan_once(&mut emit);
                (self, emit, r)
            })
            .await
            .map_err(|e| ScanError::Task(e.to_string()))?;
            self = scanner;
            emit = e;
            on_pass(&result?);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return Ok(self);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;
    use tandem_core::clock::ManualClock;

    fn write_file(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(data).unwrap();
        p
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        tandem_core::mixed::mixed(seed, len)
    }

    fn apply(target: &mut Vec<u8>, changes: &[Change]) {
        for c in changes {
            let end = c.offset as usize + c.data.len();
            if target.len() < end {
                target.resize(end, 0);
            }
            target[c.offset as usize..end].copy_from_slice(&c.data);
        }
    }

    #[test]
    fn hash_file_equals_hashing_the_bytes_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        // Several read chunks plus a partial last block.
        let data = pattern(3 * READ_CHUNK + 70_000, 1);
        let p = write_file(&dir, "f", &data);
        let mut last = (0, 0);
        let t = hash_file_with_progress(&p, 64 << 10, &mut |h, n| last = (h, n)).unwrap();
        assert_eq!(t, MerkleTree::from_bytes(64 << 10, &data).unwrap());
        assert_eq!(last, (t.block_count(), t.block_count()));
    }

    #[test]
    fn hash_file_of_an_empty_file_is_the_empty_tree() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_file(&dir, "e", &[]);
        assert_eq!(
            hash_file(&p, 4096).unwrap(),
            MerkleTree::empty(4096).unwrap()
        );
    }

    #[test]
    fn hash_file_names_the_missing_file() {
        let err = hash_file(Path::new("/nonexistent/tandem-x"), 4096).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tandem-x"), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn first_pass_from_empty_ships_everything_then_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let bs = 4096u32;
        let mut data = pattern(40 * 4096 + 100, 2);
        let p = write_file(&dir, "v", &data);
        let clock = Arc::new(ManualClock::new(1_000));
        let mut s = Scanner::new("vol", &p, MerkleTree::empty(bs).unwrap(), clock)
            .with_batch_bytes(8 * 4096);
        let progress = s.progress();
        let mut replica = Vec::new();
        let mut batches = 0;
        let pass = s
            .scan_once(&mut |c| {
                batches += 1;
                apply(&mut replica, &c);
            })
            .unwrap();
        assert_eq!(replica, data);
        assert_eq!(pass.blocks_changed, 41);
        assert_eq!(pass.bytes_changed, data.len() as u64);
        assert!(
            batches >= 5,
            "batches bounded by batch_bytes, got {batches}"
        );
        assert_eq!(
            *progress.borrow(),
            ScanProgress {
                pass: 1,
                blocks_hashed: 41,
                blocks_total: 41,
                done: true
            }
        );

        // Change blocks 3, 4 and 40 (the partial tail).
        data[3 * 4096] ^= 1;
        data[4 * 4096 + 7] ^= 1;
        data[40 * 4096 + 50] ^= 1;
        std::fs::write(&p, &data).unwrap();
        let mut changes = Vec::new();
        let pass = s.scan_once(&mut |c| changes.extend(c)).unwrap();
        assert_eq!(pass.blocks_changed, 3);
        let offsets: Vec<(u64, usize)> = changes.iter().map(|c| (c.offset, c.data.len())).collect();
        assert_eq!(offsets, vec![(3 * 4096, 2 * 4096), (40 * 4096, 100)]);
        assert!(changes
            .iter()
            .all(|c| c.resource == "vol" && c.captured_ms == 1_000));
        apply(&mut replica, &changes);
        assert_eq!(replica, data);
        assert_eq!(pass.root, MerkleTree::from_bytes(bs, &data).unwrap().root());

        // Nothing changed: nothing ships.
        let mut n = 0;
        let pass = s.scan_once(&mut |c| n += c.len()).unwrap();
        assert_eq!((n, pass.blocks_changed), (0, 0));
    }

    #[test]
    fn initial_sync_from_zeros_ships_only_non_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let bs = 4096u32;
        let mut data = vec![0u8; 16 * 4096];
        data[5 * 4096..6 * 4096].copy_from_slice(&pattern(4096, 3));
        data[9 * 4096 + 1] = 7;
        let p = write_file(&dir, "z", &data);
        let zeros = MerkleTree::zeros(bs, data.len() as u64).unwrap();
        let mut s = Scanner::new("z", &p, zeros, Arc::new(ManualClock::new(0)));
        let mut replica = vec![0u8; data.len()];
        let pass = s.scan_once(&mut |c| apply(&mut replica, &c)).unwrap();
        assert_eq!(pass.blocks_changed, 2);
        assert_eq!(replica, data);
    }

    #[test]
    fn growth_ships_new_blocks_and_shrink_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(8 * 4096, 4);
        let p = write_file(&dir, "g", &data[..4 * 4096]);
        let mut s = Scanner::new(
            "g",
            &p,
            MerkleTree::empty(4096).unwrap(),
            Arc::new(ManualClock::new(0)),
        );
        s.scan_once(&mut |_| {}).unwrap();
        std::fs::write(&p, &data).unwrap();
        let mut changes = Vec::new();
        let pass = s.scan_once(&mut |c| changes.extend(c)).unwrap();
        assert_eq!(pass.blocks_changed, 4);
        assert_eq!(changes[0].offset, 4 * 4096);
        std::fs::write(&p, &data[..2 * 4096]).unwrap();
        let pass = s.scan_once(&mut |_| {}).unwrap();
        assert_eq!(pass.shrunk_from, Some(8 * 4096));
        assert_eq!(pass.blocks_changed, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn replica_fed_by_scan_passes_equals_the_file_after_each_pass(
            initial in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            edits in proptest::collection::vec((0usize..3500, proptest::prelude::any::<u8>(), 0usize..300), 1..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = write_file(&dir, "p", &initial);
            let mut data = initial.clone();
            let mut s = Scanner::new("p", &p, MerkleTree::empty(256).unwrap(), Arc::new(ManualClock::new(0)))
                .with_batch_bytes(512);
            let mut replica = Vec::new();
            s.scan_once(&mut |c| apply(&mut replica, &c)).unwrap();
            proptest::prop_assert_eq!(&replica, &data);
            for (at, byte, len) in edits {
                // Overwrite (and maybe extend) `len` bytes at `at`; never shrink.
                let end = at + len;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[at..end].fill(byte);
                std::fs::write(&p, &data).unwrap();
                let pass = s.scan_once(&mut |c| apply(&mut replica, &c)).unwrap();
                proptest::prop_assert_eq!(&replica, &data);
                proptest::prop_assert_eq!(pass.root, MerkleTree::from_bytes(256, &data).unwrap().root());
            }
        }
    }

    #[tokio::test]
    async fn run_scans_until_shutdown_and_returns_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(10 * 4096, 5);
        let p = write_file(&dir, "r", &data);
        let s = Scanner::new(
            "r",
            &p,
            MerkleTree::empty(4096).unwrap(),
            Arc::new(ManualClock::new(0)),
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let passes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = passes.clone();
        let handle = tokio::spawn(async move {
            s.run(
                Duration::from_millis(10),
                stop_rx,
                move |c| {
                    let _ = tx.send(c);
                },
                move |_p| {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                },
            )
            .await
        });
        let mut rx = rx;
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first.iter().map(|c| c.data.len()).sum::<usize>(),
            data.len()
        );
        stop_tx.send(true).unwrap();
        let s = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(passes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert_eq!(
            s.last_tree().root(),
            MerkleTree::from_bytes(4096, &data).unwrap().root()
        );
    }
}
