//! The `scan` capture source wired to a group: a volume written by others is re-hashed every
//! interval and its changed blocks go through the group's pipeline; the tree of what has been
//! journaled is kept in a durable tree file so a restart does not ship the whole volume again.
//!
//! Where the tree starts: the tree file when it was written in the current epoch; otherwise
//! the hash of the volume as it is now. That is right because without a tree file of this
//! epoch the replica gets the volume some other way: a new group's replica is initially synced
//! by merkle resync from this live image, a promotion turns the old primary into a replica that
//! is resynced from it, and a drained switchover leaves both images equal.

use crate::error::{ReplicatorError, Result};
use crate::merkle::{MerkleTree, HASH_LEN};
use crate::node::lease::RoleCell;
use crate::pipeline::GroupPipeline;
use crate::scan::Scanner;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::clock::SystemClock;
use tandem_core::frame::Change;
use tandem_core::ids::Epoch;
use tokio::sync::watch;
use tracing::{info, warn};

/// Magic of a scan tree file.
pub const TREE_MAGIC: [u8; 4] = *b"TSCN";
/// Version of the scan tree file format.
pub const TREE_VERSION: u16 = 1;
/// Header: magic 4, version 2, reserved 2, epoch 8, block size 4, length 8, leaf count 8.
const HEADER_LEN: usize = 36;

/// Encodes the tree of what a scan source has journaled in `epoch`: header, leaves, blake3 of
/// everything before it.
pub fn encode_tree(epoch: Epoch, tree: &MerkleTree) -> Vec<u8> {
    let leaves = tree.leaves_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + leaves.len() + HASH_LEN);
    out.extend_from_slice(&TREE_MAGIC);
    out.extend_from_slice(&TREE_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&epoch.0.to_le_bytes());
    out.extend_from_slice(&tree.block_size().to_le_bytes());
    out.extend_from_slice(&tree.length().to_le_bytes());
    out.extend_from_slice(&tree.block_count().to_le_bytes());
    out.extend_from_slice(&leaves);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Decodes a tree file; the error names the first check that failed and its byte offset.
///
/// # Errors
/// A message for a short file, bad magic or version, a leaf count that does not match the
/// length, or a checksum mismatch.
pub fn decode_tree(bytes: &[u8]) -> std::result::Result<(Epoch, MerkleTree), String> {
    if bytes.len() < HEADER_LEN + HASH_LEN {
        return Err(format!(
            "{} bytes: shorter than the {} byte header and checksum",
            bytes.len(),
            HEADER_LEN + HASH_LEN
        ));
    }
    if bytes[..4] != TREE_MAGIC {
        return Err("offset 0: bad magic".into());
    }
    let u = |at: usize, n: usize| -> u64 {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&bytes[at..at + n]);
        u64::from_le_bytes(b)
    };
    let version = u(4, 2);
    if version != u64::from(TREE_VERSION) {
        return Err(format!(
            "offset 4: version {version}, expected {TREE_VERSION}"
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - HASH_LEN);
    if blake3::hash(body).as_bytes() != sum {
        return Err(format!(
            "offset {}: blake3 checksum does not match",
            body.len()
        ));
    }
    let epoch = Epoch(u(8, 8));
    let block_size = u(16, 4) as u32;
    let length = u(20, 8);
    let count = u(28, 8);
    let leaves = &body[HEADER_LEN..];
    if leaves.len() as u64 != count.saturating_mul(HASH_LEN as u64) {
        return Err(format!(
            "offset 28: {count} leaves declared, {} bytes of leaves present",
            leaves.len()
        ));
    }
    let tree = MerkleTree::from_leaves_bytes(block_size, length, leaves)
        .map_err(|e| format!("offset {HEADER_LEN}: {e}"))?;
    Ok((epoch, tree))
}

/// Where the tree file of `resource` of `group` lives under a replicator's data folder.
pub fn tree_path(data_dir: &Path, group: &str, resource: &str) -> PathBuf {
    data_dir
        .join("scan")
        .join(group)
        .join(format!("{resource}.tree"))
}

fn write_tree(path: &Path, epoch: Epoch, tree: &MerkleTree) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::durable_dir::create_dir_durable(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let bytes = encode_tree(epoch, tree);
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| ReplicatorError::io("create", &tmp, e))?;
        f.write_all(&bytes)
            .map_err(|e| ReplicatorError::io("write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| ReplicatorError::io("fsync", &tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| ReplicatorError::io("rename", path, e))?;
    crate::meta::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// The tree a scan source of `path` starts from in `epoch` (see the module doc).
fn starting_tree(
    tree_file: &Path,
    path: &Path,
    epoch: Epoch,
    block_size: u32,
) -> Result<MerkleTree> {
    match std::fs::read(tree_file) {
        Ok(bytes) => match decode_tree(&bytes) {
            Ok((e, tree)) if e == epoch && tree.block_size() == block_size => return Ok(tree),
            Ok((e, _)) => {
                info!(file = %tree_file.display(), tree_epoch = e.0, %epoch, "scan tree of another epoch or block size: re-hashing the volume");
            }
            Err(reason) => {
                warn!(file = %tree_file.display(), %reason, "scan tree file is damaged: re-hashing the volume");
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ReplicatorError::io("read", tree_file, e)),
    }
    let tree = crate::scan::hash_file(path, block_size)
        .map_err(|e| ReplicatorError::Task(format!("hashing {}: {e}", path.display())))?;
    write_tree(tree_file, epoch, &tree)?;
    Ok(tree)
}

/// A running scan source; a pass can also be asked for on demand (the drain of a switchover).
#[derive(Clone)]
pub struct ScanSource {
    inner: Arc<tokio::sync::Mutex<Inner>>,
}

struct Inner {
    scanner: Scanner,
    resource: String,
    path: PathBuf,
    tree_file: PathBuf,
    epoch: Epoch,
    pipeline: Arc<GroupPipeline>,
}

impl ScanSource {
    /// Opens the source of `resource` (image at `path`) for `pipeline` in `epoch`, starting
    /// from its tree (module doc). Blocking work runs off the reactor.
    ///
    /// # Errors
    /// Reading or hashing the volume, writing the tree file.
    pub async fn open(
        resource: &str,
        path: &Path,
        tree_file: &Path,
        epoch: Epoch,
        block_size: u32,
        pipeline: Arc<GroupPipeline>,
    ) -> Result<ScanSource> {
        let (tf, p) = (tree_file.to_path_buf(), path.to_path_buf());
        let tree = tokio::task::spawn_blocking(move || starting_tree(&tf, &p, epoch, block_size))
            .await
            .map_err(|e| ReplicatorError::Task(e.to_string()))??;
        let scanner = Scanner::new(resource, path, tree, Arc::new(SystemClock::new()));
        Ok(ScanSource {
            inner: Arc::new(tokio::sync::Mutex::new(Inner {
                scanner,
                resource: resource.to_owned(),
                path: path.to_path_buf(),
                tree_file: tree_file.to_path_buf(),
                epoch,
                pipeline,
            })),
        })
    }

    /// Runs one pass: hashes the volume, journals the changed blocks, and records the new tree
    /// once every change is journaled. Returns the bytes of changes journaled.
    ///
    /// # Errors
    /// Reading the volume, or a change the pipeline refused: the tree then stays where it was,
    /// so the next pass ships those blocks again.
    pub async fn pass(&self) -> Result<u64> {
        let mut inner = self.inner.lock().await;
        let before = inner.scanner.last_tree().clone();
        let pipeline = inner.pipeline.clone();
        let handle = tokio::runtime::Handle::current();
        let placeholder = Scanner::new(
            &inner.resource,
            &inner.path,
            before.clone(),
            Arc::new(SystemClock::new()),
        );
        let mut scanner = std::mem::replace(&mut inner.scanner, placeholder);
        let (scanner, result) = tokio::task::spawn_blocking(move || {
            let mut refused: Option<ReplicatorError> = None;
            let r = scanner.scan_once(&mut |changes: Vec<Change>| {
                if refused.is_none() {
                    if let Err(e) = handle.block_on(pipeline.submit(changes)) {
                        refused = Some(e);
                    }
                }
            });
            let out = match (r, refused) {
                (Ok(pass), None) => Ok(pass),
                (Ok(_), Some(e)) => Err(e),
                (Err(e), _) => Err(ReplicatorError::Task(format!("scan pass: {e}"))),
            };
            (scanner, out)
        })
        .await
        .map_err(|e| ReplicatorError::Task(e.to_string()))?;
        match result {
            Ok(pass) => {
                let (tf, epoch, tree) = (
                    inner.tree_file.clone(),
                    inner.epoch,
                    scanner.last_tree().clone(),
                );
                inner.scanner = scanner;
                if pass.blocks_changed > 0 {
                    tokio::task::spawn_blocking(move || write_tree(&tf, epoch, &tree))
                        .await
                        .map_err(|e| ReplicatorError::Task(e.to_string()))??;
                }
                if let Some(from) = pass.shrunk_from {
                    warn!(resource = %inner.resource, from, to = pass.length, "scanned volume shrank: truncation is not replicated");
                }
                Ok(pass.bytes_changed)
            }
            Err(e) => {
                // What this pass shipped is shipped again by the next one.
                inner.scanner = Scanner::new(
                    &inner.resource,
                    &inner.path,
                    before,
                    Arc::new(SystemClock::new()),
                );
                Err(e)
            }
        }
    }

    /// Runs a pass every `interval` while this site may write (`cell`), until `stop`. A full
    /// journal overflows the group (see [`RoleCell`]'s overflow) and the pass is retried.
    pub async fn run(
        self,
        interval: Duration,
        cell: Arc<RoleCell>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            if cell.writable() {
                match self.pass().await {
                    Ok(0) => {}
                    Ok(bytes) => tracing::debug!(bytes, "scan pass journaled changes"),
                    Err(ReplicatorError::JournalFull { .. }) => match cell.overflow().await {
                        Ok(true) => continue,
                        Ok(false) => {
                            warn!("scan pass: journal full and the group may not overflow")
                        }
                        Err(e) => warn!("scan pass: journal overflow failed: {e}"),
                    },
                    Err(e) => warn!("scan pass failed (the next pass retries): {e}"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                r = stop.changed() => if r.is_err() { return; },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn tree() -> MerkleTree {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        MerkleTree::from_bytes(4096, &data).unwrap()
    }

    #[test]
    fn tree_file_round_trips_with_its_epoch() {
        let t = tree();
        let (e, back) = decode_tree(&encode_tree(Epoch(7), &t)).unwrap();
        assert_eq!(e, Epoch(7));
        assert_eq!(back.root(), t.root());
        assert_eq!(back.length(), 20_000);
    }

    #[test]
    fn tree_file_golden_header() {
        let b = encode_tree(Epoch(3), &tree());
        assert_eq!(&b[..4], b"TSCN");
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[8..16], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &4096u32.to_le_bytes());
        assert_eq!(&b[20..28], &20_000u64.to_le_bytes());
        assert_eq!(&b[28..36], &5u64.to_le_bytes());
        assert_eq!(b.len(), 36 + 5 * 32 + 32);
    }

    #[test]
    fn tree_file_refuses_every_flipped_byte_and_truncation() {
        let b = encode_tree(Epoch(1), &tree());
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            assert!(decode_tree(&bad).is_err(), "flip at {i} accepted");
        }
        for n in 0..b.len() {
            assert!(decode_tree(&b[..n]).is_err(), "truncation to {n} accepted");
        }
        let e = decode_tree(b"TSCX").unwrap_err();
        assert!(e.contains("shorter"), "{e}");
    }

    #[test]
    fn starting_tree_is_the_file_of_this_epoch_else_the_volume_hashed_now() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("v.img");
        std::fs::write(&vol, vec![1u8; 3 * 4096]).unwrap();
        let tf = dir.path().join("t/v.tree");
        // No file: the volume is hashed and the file written.
        let t1 = starting_tree(&tf, &vol, Epoch(2), 4096).unwrap();
        assert_eq!(
            t1.root(),
            crate::scan::hash_file(&vol, 4096).unwrap().root()
        );
        // The file of this epoch wins over the volume's current content.
        std::fs::write(&vol, vec![2u8; 3 * 4096]).unwrap();
        assert_eq!(
            starting_tree(&tf, &vol, Epoch(2), 4096).unwrap().root(),
            t1.root()
        );
        // Another epoch: hashed again.
        let t3 = starting_tree(&tf, &vol, Epoch(3), 4096).unwrap();
        assert_ne!(t3.root(), t1.root());
        // A damaged file: hashed again, not trusted.
        let mut b = std::fs::read(&tf).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&tf, &b).unwrap();
        std::fs::write(&vol, vec![3u8; 3 * 4096]).unwrap();
        let t4 = starting_tree(&tf, &vol, Epoch(3), 4096).unwrap();
        assert_eq!(
            t4.root(),
            crate::scan::hash_file(&vol, 4096).unwrap().root()
        );
    }
}
