//! The resync client: fetches the source's tree, hashes the local target, pulls only the
//! differing blocks with `ReadBlocks` (keeping what a failback overwrites), writes, syncs and
//! re-hashes. Network and file I/O.

use super::compare::{hex, verify, VerifyReport};
use super::copy::{
    copy_blocks, keep_old, tree_from_sent_leaves, Copy, Expect, Keeper, Target, Tick,
};
use super::error::{blocking, io, rpc_err, ResyncError};
use super::limits::MAX_MESSAGE_BYTES;
use super::options::{ResyncOptions, ResyncReport, ResyncTick};
use crate::bounds::change_bounds;
use crate::merkle::{self, Hash, MerkleTree};
use crate::quarantine::QuarantineWriter;
use crate::scan;
use prost::Message as _;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::MerkleRequest;
use tonic::transport::Channel;

/// Fetches the source's tree with the `Merkle` RPC and checks its root against its leaves.
///
/// Returns the tree and the protobuf bytes exchanged.
///
/// # Errors
/// [`ResyncError::Rpc`] when the call fails, [`ResyncError::BadReply`] when the reply's block
/// size or root does not match its leaves, [`ResyncError::Merkle`] for malformed leaves.
pub async fn fetch_tree(
    client: &mut ReplicationClient<Channel>,
    group: &str,
    resource: &str,
    block_size: u32,
) -> Result<(MerkleTree, u64), ResyncError> {
    fetch_tree_at(client, group, resource, block_size)
        .await
        .map(|(t, b, _)| (t, b))
}

/// Compares the source's tree with the target's after the copy: a difference is an error
/// naming the ranges, unless the source is live (it changed under the copy).
fn roots_agree(
    source: &MerkleTree,
    after: &MerkleTree,
    live_source: bool,
) -> Result<VerifyReport, ResyncError> {
    let check = verify(source, after)?;
    if !check.equal && !live_source {
        return Err(ResyncError::RootMismatch {
            source_root: hex(&check.root_a),
            target_root: hex(&check.root_b),
            ranges: merkle::describe_byte_ranges(&check.differing_bytes),
        });
    }
    Ok(check)
}

/// One `Merkle` call: the reply, whose block size must be the one asked, and the bytes both
/// ways on the wire.
async fn merkle_call(
    client: &mut ReplicationClient<Channel>,
    req: MerkleRequest,
    group: &str,
    resource: &str,
) -> Result<(tandem_core::proto::MerkleReply, u64), ResyncError> {
    let block_size = req.block_size;
    let req_len = req.encoded_len() as u64;
    let reply = client
        .merkle(req)
        .await
        .map_err(|s| rpc_err("Merkle", group, resource, s))?
        .into_inner();
    let bytes = req_len + reply.encoded_len() as u64;
    if reply.block_size != block_size {
        return Err(ResyncError::BadReply {
            rpc: "Merkle",
            reason: format!(
                "block_size {} but {} was asked",
                reply.block_size, block_size
            ),
        });
    }
    Ok((reply, bytes))
}

/// [`fetch_tree`], also returning the source's watermark at the time it hashed.
///
/// # Errors
/// As [`fetch_tree`].
pub async fn fetch_tree_at(
    client: &mut ReplicationClient<Channel>,
    group: &str,
    resource: &str,
    block_size: u32,
) -> Result<(MerkleTree, u64, u64), ResyncError> {
    merkle::check_block_size(block_size)?;
    let req = MerkleRequest {
        group: group.to_string(),
        resource: resource.to_string(),
        block_size,
        barrier: false,
        ..Default::default()
    };
    let (reply, bytes) = merkle_call(client, req, group, resource).await?;
    let tree = MerkleTree::from_leaves_bytes(reply.block_size, reply.length, &reply.leaves)?;
    if reply.root.as_slice() != tree.root().as_slice() {
        return Err(ResyncError::BadReply {
            rpc: "Merkle",
            reason: "root does not match the leaves".to_string(),
        });
    }
    Ok((tree, bytes, reply.watermark))
}

/// Resyncs the local file `target` to the source's copy of `group`/`resource`.
///
/// Only differing blocks move: the source's leaves come with `Merkle`, the target is hashed
/// locally (off the reactor), and the differing blocks are pulled with `ReadBlocks` in batches
/// of [`ResyncOptions::batch_blocks`] (memory bounded by a few batches in flight). Each pulled
/// block is checked against the source's leaf before it is written. The target is created if
/// missing and set to the source's length; it is synced (`fdatasync`) and re-hashed (see
/// [`ResyncOptions::full_rehash`]) and its root must equal the source's. The source must not
/// change during the resync (take it at a barrier).
///
/// An initial sync (the target missing, empty or not allocated at all) does not wait for the
/// source to hash its whole file: the source hashes each block as it reads it for `ReadBlocks` and sends the leaf with
/// it (see [`initial_sync`]); a source that predates that gets the path above.
///
/// # Errors
/// [`ResyncError::Rpc`] when a call fails, [`ResyncError::BadReply`] for a block that does not
/// match the source's leaf, [`ResyncError::Io`] for local file errors,
/// [`ResyncError::RootMismatch`] when the roots still differ at the end (the source changed).
pub async fn resync(
    client: &mut ReplicationClient<Channel>,
    group: &str,
    resource: &str,
    target: &Path,
    block_size: u32,
    options: ResyncOptions,
) -> Result<ResyncReport, ResyncError> {
    let started = Instant::now();
    let mut client = client
        .clone()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let progress = options.progress.clone();
    let tick: Tick = Arc::new(move |t: ResyncTick| {
        if let Some(p) = &progress {
            p(t);
        }
    });
    if target_is_blank(target).await {
        match initial_sync(
            &mut client,
            (group, resource),
            target,
            block_size,
            &options,
            (&tick, started),
        )
        .await
        {
            // An older source: hash both sides first, as below (what was written is kept and
            // found equal).
            Err(ResyncError::NoLeaf { .. }) => {}
            done => return done,
        }
    }
    // Hash the local target while the source hashes its copy.
    let local_task = hash_target(target.to_path_buf(), block_size, tick.clone());
    let (source, wire, source_watermark) =
        fetch_tree_at(&mut client, group, resource, block_size).await?;
    let local = local_task
        .await
        .map_err(|e| ResyncError::Task(e.to_string()))??;
    if let Some(max) = options.max_length {
        change_bounds(0, source.length(), max).map_err(|e| ResyncError::OutOfBounds {
            path: target.to_path_buf(),
            what: "source length".into(),
            source: e,
        })?;
    }
    let file = Arc::new(open_target(target).await?);

    let report = verify(&source, &local)?;
    let length = source.length();
    let total = source.block_count();
    let wanted: Vec<u64> = report
        .differing_blocks
        .iter()
        .flat_map(|r| r.start..r.end.min(total))
        .collect();
    let target_file = Target {
        path: target.to_path_buf(),
        file: file.clone(),
        block_size,
        old_len: local.length(),
        holes: false,
        verify_writes: false,
    };
    let keeper = quarantine_old(&options, &target_file, &wanted, length).await?;
    if local.length() != length {
        let (f, path) = (file.clone(), target.to_path_buf());
        blocking(move || f.set_len(length).map_err(io("truncate", &path))).await??;
    }
    let source = Arc::new(source);
    let copy = Copy {
        group,
        resource,
        expect: Expect::Tree(source.clone()),
        live_source: options.live_source,
        batch_blocks: options.batch_blocks,
        keeper: keeper.clone(),
        compression: options.compression,
        link_cap: options.link_bytes_per_sec,
    };
    let copied = copy_blocks(&mut client, &copy, &target_file, &wanted, wire, &tick).await?;

    let path = target.to_path_buf();
    let full_rehash = options.full_rehash;
    let written = wanted.clone();
    let after = blocking(move || -> Result<MerkleTree, ResyncError> {
        // Reading back more than half the blocks costs a whole re-hash, which runs on all
        // cores: take it.
        if full_rehash || written.len() as u64 * 2 > merkle::block_count(length, block_size) {
            return sync_and_rehash(&file, &path, block_size);
        }
        file.sync_data().map_err(io("fdatasync", &path))?;
        read_back_tree(&file, &path, &local, &written, block_size, length)
    })
    .await??;
    let check = roots_agree(&source, &after, options.live_source)?;
    Ok(ResyncReport {
        blocks_total: total,
        blocks_differing: wanted.len() as u64,
        differing_bytes: report.differing_bytes,
        bytes_sent_over_wire: copied.wire,
        zstd_level: copied.level,
        length,
        root: check.root_b,
        duration: started.elapsed(),
        source_watermark,
        quarantined_blocks: keeper.as_ref().map_or(0, |k| {
            k.lock().unwrap_or_else(|p| p.into_inner()).kept_blocks()
        }),
        quarantine: keeper.as_ref().map(|k| {
            k.lock()
                .unwrap_or_else(|p| p.into_inner())
                .path()
                .to_path_buf()
        }),
    })
}

/// An initial sync of `target` (missing, empty or unallocated: it reads as zeros): every block
/// moves, so the source's tree is not fetched first; blocks of zeros are checked but not
/// written (they stay holes). A one-block ranged `Merkle` answers the source's length and
/// watermark (taken before it reads, as for the whole tree); the blocks are pulled with their
/// leaves
/// (`ReadBlocksRequest::leaves`: the source hashes each block from the read it compresses, on
/// all its cores), each checked against its leaf before it is written (a live source's too);
/// the source's tree is built from those leaves. With [`ResyncOptions::full_rehash`] its root
/// must equal the target's re-hash after the `fdatasync`; without, every block was read back
/// from its place as it was written and equalled the checked bytes, so after the `fdatasync`
/// the target's tree is that tree (unless its length changed: then it is re-hashed).
///
/// # Errors
/// As [`resync`]; [`ResyncError::NoLeaf`] when the source predates leaves in `ReadBlocks`
/// (the caller falls back to hashing both sides first).
async fn initial_sync(
    client: &mut ReplicationClient<Channel>,
    (group, resource): (&str, &str),
    target: &Path,
    block_size: u32,
    options: &ResyncOptions,
    (tick, started): (&Tick, Instant),
) -> Result<ResyncReport, ResyncError> {
    merkle::check_block_size(block_size)?;
    let req = MerkleRequest {
        group: group.to_string(),
        resource: resource.to_string(),
        block_size,
        first_block: 0,
        block_count: 1,
        ..Default::default()
    };
    let (reply, wire) = merkle_call(client, req, group, resource).await?;
    let length = reply.length;
    if let Some(max) = options.max_length {
        change_bounds(0, length, max).map_err(|e| ResyncError::OutOfBounds {
            path: target.to_path_buf(),
            what: "source length".into(),
            source: e,
        })?;
    }
    let file = Arc::new(open_target(target).await?);
    let (f, path) = (file.clone(), target.to_path_buf());
    blocking(move || f.set_len(length).map_err(io("truncate", &path))).await??;
    let total = merkle::block_count(length, block_size);
    let wanted: Vec<u64> = (0..total).collect();
    let target_file = Target {
        path: target.to_path_buf(),
        file: file.clone(),
        block_size,
        old_len: 0,
        holes: true,
        verify_writes: !options.full_rehash,
    };
    let copy = Copy {
        group,
        resource,
        expect: Expect::Leaves { length },
        live_source: options.live_source,
        batch_blocks: options.batch_blocks,
        keeper: None,
        compression: options.compression,
        link_cap: options.link_bytes_per_sec,
    };
    let copied = copy_blocks(client, &copy, &target_file, &wanted, wire, tick).await?;
    let source = tree_from_sent_leaves(block_size, length, copied.leaves)?;
    let path = target.to_path_buf();
    let full_rehash = options.full_rehash;
    let verified = source.clone();
    let after = blocking(move || {
        if full_rehash {
            return sync_and_rehash(&file, &path, block_size);
        }
        file.sync_data().map_err(io("fdatasync", &path))?;
        verified_tree(&file, &path, verified)
    })
    .await??;
    let check = roots_agree(&source, &after, options.live_source)?;
    let before = verify(&source, &MerkleTree::empty(block_size)?)?;
    Ok(ResyncReport {
        blocks_total: total,
        blocks_differing: total,
        differing_bytes: before.differing_bytes,
        bytes_sent_over_wire: copied.wire,
        zstd_level: copied.level,
        length,
        root: check.root_b,
        duration: started.elapsed(),
        source_watermark: reply.watermark,
        quarantined_blocks: 0,
        quarantine: None,
    })
}

/// Whether the target holds nothing (an initial sync): missing, empty, or with no block
/// allocated (a sparse image made for a new copy reads as zeros). An error reading its
/// metadata is left to the full path to report.
async fn target_is_blank(target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match tokio::fs::metadata(target).await {
        Ok(meta) => meta.len() == 0 || meta.blocks() == 0,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The target's tree after an initial sync that read every block back as it wrote it
/// ([`Target::verify_writes`](super::copy::Target)): each block read back from its place equal
/// to the bytes that matched its leaf, so its leaves are the source's, `verified`. A target
/// whose length is not the source's any more (another writer) is re-hashed instead, and the
/// root check names what differs. Blocking.
fn verified_tree(
    file: &File,
    path: &Path,
    verified: MerkleTree,
) -> Result<MerkleTree, ResyncError> {
    let now = file.metadata().map_err(io("stat", path))?.len();
    if now == verified.length() {
        Ok(verified)
    } else {
        Ok(scan::hash_file(path, verified.block_size())?)
    }
}

/// `fdatasync` of the target and its re-hash at the same time (the sync writes out the pages
/// the hash reads); both must succeed. Blocking.
fn sync_and_rehash(file: &File, path: &Path, block_size: u32) -> Result<MerkleTree, ResyncError> {
    std::thread::scope(|s| {
        let sync = s.spawn(|| file.sync_data().map_err(io("fdatasync", path)));
        let tree = scan::hash_file(path, block_size).map_err(ResyncError::from);
        sync.join()
            .unwrap_or_else(|_| Err(ResyncError::Task("the fdatasync thread panicked".into())))?;
        tree
    })
}

/// Hashes the local target on the blocking pool (an empty tree when it does not exist yet),
/// reporting `hashing` ticks.
fn hash_target(
    path: PathBuf,
    block_size: u32,
    tick: Tick,
) -> tokio::task::JoinHandle<Result<MerkleTree, ResyncError>> {
    let bs64 = u64::from(block_size);
    tokio::task::spawn_blocking(move || -> Result<MerkleTree, ResyncError> {
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(MerkleTree::empty(block_size)?)
            }
            Ok(meta) => {
                let len = meta.len();
                Ok(scan::hash_file_with_progress(
                    &path,
                    block_size,
                    &mut |done, _| {
                        tick(ResyncTick {
                            phase: "hashing",
                            bytes_done: (done * bs64).min(len),
                            bytes_total: len,
                            ..ResyncTick::default()
                        })
                    },
                )?)
            }
            Err(_) => Ok(scan::hash_file(&path, block_size)?),
        }
    })
}

/// Opens (creates when missing) the target for reading and writing.
async fn open_target(target: &Path) -> Result<File, ResyncError> {
    let path = target.to_path_buf();
    blocking(move || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))
    })
    .await?
}

/// A failback keeps what it overwrites: opens the quarantine file when a differing block lies
/// inside the target's old length or the target is longer than the source (`length`), and
/// keeps that tail at once (it is cut next).
async fn quarantine_old(
    options: &ResyncOptions,
    target: &Target,
    wanted: &[u64],
    length: u64,
) -> Result<Option<Keeper>, ResyncError> {
    let (bs, block_size, local_len) = (
        u64::from(target.block_size),
        target.block_size,
        target.old_len,
    );
    let keeper = match &options.quarantine {
        Some(q) if wanted.iter().any(|i| i * bs < local_len) || local_len > length => {
            let q = q.clone();
            let w = blocking(move || QuarantineWriter::create(&q, block_size, local_len))
                .await?
                .map_err(ResyncError::Quarantine)?;
            Some(Arc::new(std::sync::Mutex::new(w)))
        }
        _ => None,
    };
    if let (Some(k), true) = (&keeper, local_len > length) {
        let (f, path, k) = (target.file.clone(), target.path.clone(), k.clone());
        blocking(move || {
            let first = length.div_ceil(bs);
            let last = local_len.div_ceil(bs);
            for i in first..last {
                keep_old(&k, &f, &path, &[i], bs, local_len)?;
            }
            Ok::<(), ResyncError>(())
        })
        .await??;
    }
    Ok(keeper)
}

/// The target's tree after a resync without re-reading it all: the leaves hashed before for the
/// blocks left alone, and the hashes of the written blocks read back from the file.
fn read_back_tree(
    file: &File,
    path: &Path,
    before: &MerkleTree,
    written: &[u64],
    block_size: u32,
    length: u64,
) -> Result<MerkleTree, ResyncError> {
    let total = merkle::block_count(length, block_size);
    let zero = [0u8; merkle::HASH_LEN];
    let mut leaves: Vec<Hash> = (0..total)
        .map(|i| before.leaves().get(i as usize).copied().unwrap_or(zero))
        .collect();
    let mut buf = vec![0u8; block_size as usize];
    for &i in written {
        let range = merkle::block_range_to_bytes(&(i..i + 1), block_size, length);
        let data = &mut buf[..(range.end - range.start) as usize];
        file.read_exact_at(data, range.start)
            .map_err(io("read back", path))?;
        if let Some(leaf) = leaves.get_mut(i as usize) {
            *leaf = merkle::leaf_hash(data);
        }
    }
    Ok(MerkleTree::from_leaves(block_size, length, leaves)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_verified_tree_stands_only_while_the_target_keeps_the_source_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let data = vec![3u8; 2 * 4096 + 9];
        std::fs::write(&p, &data).unwrap();
        let source = MerkleTree::from_bytes(4096, &data).unwrap();
        let file = File::open(&p).unwrap();
        assert_eq!(verified_tree(&file, &p, source.clone()).unwrap(), source);
        // Grown by another writer: re-hashed, and the root check then sees it.
        let mut longer = data.clone();
        longer.extend([7u8; 100]);
        std::fs::write(&p, &longer).unwrap();
        let after = verified_tree(&file, &p, source.clone()).unwrap();
        assert_eq!(after, MerkleTree::from_bytes(4096, &longer).unwrap());
        assert!(roots_agree(&source, &after, false).is_err());
    }

    #[test]
    fn read_back_tree_equals_a_full_rehash_and_sees_a_bad_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let old = vec![1u8; 10 * 4096 + 10];
        std::fs::write(&p, &old).unwrap();
        let before = MerkleTree::from_bytes(4096, &old).unwrap();
        // Grow to 12 blocks + 7 bytes and rewrite blocks 2, 10, 11, 12.
        let mut new = old.clone();
        new.resize(12 * 4096 + 7, 0);
        for i in [2usize, 10, 11, 12] {
            let end = ((i + 1) * 4096).min(new.len());
            new[i * 4096..end].fill(i as u8 + 50);
        }
        std::fs::write(&p, &new).unwrap();
        let file = File::open(&p).unwrap();
        let len = new.len() as u64;
        let tree = read_back_tree(&file, &p, &before, &[2, 10, 11, 12], 4096, len).unwrap();
        assert_eq!(tree, scan::hash_file(&p, 4096).unwrap());
        // A block that did not land as written shows up in the root.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[9], 2 * 4096).unwrap();
        let bad = read_back_tree(&file, &p, &before, &[2, 10, 11, 12], 4096, len).unwrap();
        assert_ne!(
            bad.root(),
            MerkleTree::from_bytes(4096, &new).unwrap().root()
        );
    }
}
