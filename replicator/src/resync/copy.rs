//! The copy phase of a resync: pulls the differing blocks with `ReadBlocks`, several requests in
//! flight, decodes and checks each block against the source's leaf on all cores (a leaf of the
//! source's tree, or the one the source sends with the block, [`Expect`]), keeps what a
//! failback overwrites, and writes. Network and file I/O; the checks are pure.

use super::compression::{
    choose_level, decode_block, worker_count, Compression, LinkEstimate, PROBE_BLOCKS,
};
use super::error::{blocking, io, rpc_err, ResyncError};
use super::limits::{MAX_BLOCKS_PER_REQUEST, MAX_REPLY_BYTES};
use super::options::ResyncTick;
use crate::bounds::block_bounds;
use crate::merkle::{self, Hash, MerkleTree};
use crate::quarantine::QuarantineWriter;
use futures::StreamExt as _;
use prost::Message as _;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{ReadBlocksReply, ReadBlocksRequest};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// `ReadBlocks` requests in flight at once: one being read and compressed at the source, one
/// crossing the link, while the previous reply is decoded and written here.
pub const PIPELINE_DEPTH: usize = 3;

/// Replies decoded, checked and written at once (on the blocking pool): the next reply is
/// decoded while the one before is still being written. Blocks of different replies are
/// distinct, so their writes need no order.
pub const WRITES_IN_FLIGHT: usize = 2;

/// Reports a [`ResyncTick`] to the caller's progress callback, if any.
pub(super) type Tick = Arc<dyn Fn(ResyncTick) + Send + Sync>;

/// The quarantine file a failback keeps overwritten blocks in, shared with the write tasks.
pub(super) type Keeper = Arc<std::sync::Mutex<QuarantineWriter>>;

/// The local file being resynced.
pub(super) struct Target {
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    pub(super) block_size: u32,
    /// Its length before the resync.
    pub(super) old_len: u64,
    /// It reads as zeros wherever nothing is written (a new or unallocated file): blocks of
    /// zeros are checked but not written, so they stay holes.
    pub(super) holes: bool,
    /// Read every block back right after it is written (or left a hole) and compare it with
    /// what was checked ([`Dest::landed`]): what an initial sync verifies instead of re-hashing
    /// the whole target after the copy.
    pub(super) verify_writes: bool,
}

/// What each pulled block is checked against.
#[derive(Clone)]
pub(super) enum Expect {
    /// The source's tree, fetched before the copy (`Merkle`).
    Tree(Arc<MerkleTree>),
    /// The leaf the source sends with each block (`ReadBlocksRequest::leaves`), hashed from
    /// the bytes it read for that block; `length` is the source's length. Checked even when the
    /// source is live (the leaf and the block come from the same read).
    Leaves {
        /// The source's length, bytes.
        length: u64,
    },
}

impl Expect {
    /// The source's length.
    fn length(&self) -> u64 {
        match self {
            Expect::Tree(t) => t.length(),
            Expect::Leaves { length } => *length,
        }
    }
}

/// What the copy of the differing blocks pulls from where, and how.
pub(super) struct Copy<'a> {
    pub(super) group: &'a str,
    pub(super) resource: &'a str,
    pub(super) expect: Expect,
    pub(super) live_source: bool,
    pub(super) batch_blocks: usize,
    pub(super) keeper: Option<Keeper>,
    pub(super) compression: Compression,
    /// A configured cap on the link, bytes per second.
    pub(super) link_cap: Option<u64>,
}

/// What the copy did: protobuf bytes exchanged (with those before it), the zstd level the
/// blocks crossed at (0: raw), and with [`Expect::Leaves`] the checked leaf of every block
/// pulled (in the order written, not sorted).
pub(super) struct Copied {
    pub(super) wire: u64,
    pub(super) level: i32,
    pub(super) leaves: Vec<(u64, Hash)>,
}

/// Pulls the `wanted` blocks with `ReadBlocks` and writes them (old content kept first when
/// quarantining). Up to [`PIPELINE_DEPTH`] requests are in flight while up to
/// [`WRITES_IN_FLIGHT`] replies are decoded, checked and written on the blocking pool, so
/// memory is bounded by `PIPELINE_DEPTH + WRITES_IN_FLIGHT` batches. With
/// [`Compression::Auto`] a first probe batch crosses raw and the level for the rest is chosen
/// from it. `wire` is the protobuf bytes exchanged before.
pub(super) async fn copy_blocks(
    client: &mut ReplicationClient<Channel>,
    copy: &Copy<'_>,
    target: &Target,
    wanted: &[u64],
    wire: u64,
    tick: &Tick,
) -> Result<Copied, ResyncError> {
    let bs = u64::from(target.block_size);
    let per_request = copy
        .batch_blocks
        .clamp(1, MAX_BLOCKS_PER_REQUEST)
        .min((MAX_REPLY_BYTES / bs).max(1) as usize);
    let mut run = Run {
        wire,
        leaves: Vec::new(),
        copied: 0,
        differing: wanted.len() as u64,
        writing: VecDeque::new(),
        tick: tick.clone(),
        bs,
    };
    run.report();
    let fetcher = Fetcher {
        client: client.clone(),
        group: copy.group.to_string(),
        resource: copy.resource.to_string(),
        block_size: target.block_size,
        leaves: matches!(copy.expect, Expect::Leaves { .. }),
    };
    let mut rest = wanted;
    let level = match copy.compression {
        Compression::Auto if !wanted.is_empty() => {
            let (probe, after) = wanted.split_at(PROBE_BLOCKS.min(per_request).min(wanted.len()));
            rest = after;
            let started = Instant::now();
            let (_, reply) = fetcher.clone().fetch(probe.to_vec(), 0).await;
            let (reply, bytes) = reply?;
            let elapsed = started.elapsed();
            let sample: Vec<Vec<u8>> = reply.blocks.iter().map(|b| b.data.clone()).collect();
            let cap = copy.link_cap;
            let est = blocking(move || measure(&sample, elapsed, cap)).await?;
            run.wire += bytes;
            run.write(copy, target, probe, reply).await?;
            choose_level(Compression::Auto, &est)
        }
        setting => choose_level(
            setting,
            &LinkEstimate {
                link_bytes_per_sec: None,
                zstd1_bytes_per_sec: 0.0,
                zstd1_ratio: 0.0,
                cores: 1,
            },
        ),
    };
    let batches: Vec<Vec<u64>> = rest.chunks(per_request).map(<[u64]>::to_vec).collect();
    let mut replies = futures::stream::iter(batches)
        .map(move |batch| fetcher.clone().fetch(batch, level))
        .buffered(PIPELINE_DEPTH);
    while let Some((batch, reply)) = replies.next().await {
        let (reply, bytes) = reply?;
        run.wire += bytes;
        run.write(copy, target, &batch, reply).await?;
    }
    while !run.writing.is_empty() {
        run.finish_oldest().await?;
    }
    Ok(Copied {
        wire: run.wire,
        level,
        leaves: run.leaves,
    })
}

/// `(block, leaf)` of blocks pulled with [`Expect::Leaves`], in the order written.
type SentLeaves = Vec<(u64, Hash)>;

/// The state of one copy: bytes and blocks so far, the leaves sent with them, and the write
/// tasks in progress, oldest first, at most [`WRITES_IN_FLIGHT`] (each answers the leaves of
/// its blocks).
struct Run {
    wire: u64,
    leaves: Vec<(u64, Hash)>,
    copied: u64,
    differing: u64,
    writing: VecDeque<JoinHandle<Result<SentLeaves, ResyncError>>>,
    tick: Tick,
    bs: u64,
}

impl Run {
    fn report(&self) {
        (self.tick)(ResyncTick {
            phase: "copying",
            bytes_done: self.copied * self.bs,
            bytes_total: self.differing * self.bs,
            blocks_differing: self.differing,
            blocks_copied: self.copied,
            wire_bytes: self.wire,
        })
    }

    /// Waits for the oldest write task and keeps the leaves it answers.
    async fn finish_oldest(&mut self) -> Result<(), ResyncError> {
        if let Some(oldest) = self.writing.pop_front() {
            let leaves = oldest
                .await
                .map_err(|e| ResyncError::Task(e.to_string()))??;
            self.leaves.extend(leaves);
        }
        Ok(())
    }

    /// Checks the reply names `batch`, waits while [`WRITES_IN_FLIGHT`] writes are under way,
    /// and hands this one to the blocking pool: decode and check every block (all cores), keep
    /// the old content when quarantining, write.
    async fn write(
        &mut self,
        copy: &Copy<'_>,
        target: &Target,
        batch: &[u64],
        reply: ReadBlocksReply,
    ) -> Result<(), ResyncError> {
        check_indexes(batch, &reply)?;
        let batch_span = span(batch);
        while self.writing.len() >= WRITES_IN_FLIGHT {
            self.finish_oldest().await?;
        }
        let (f, path, k) = (
            target.file.clone(),
            target.path.clone(),
            copy.keeper.clone(),
        );
        let (local_len, bs, block_size) = (target.old_len, self.bs, target.block_size);
        let (expect, live) = (copy.expect.clone(), copy.live_source);
        let dest = Dest {
            file: f,
            path,
            block_size,
            length: expect.length(),
            holes: target.holes,
            verify: target.verify_writes,
        };
        self.writing.push_back(tokio::task::spawn_blocking(move || {
            let leaves: SentLeaves = match &k {
                // Nothing to keep: each worker writes a block as soon as it is checked, while
                // it is still in the core's cache.
                None => on_workers(reply.blocks, |b| {
                    let (index, data, leaf) =
                        decode_checked(b, &expect, live, block_size, &dest.path)?;
                    dest.place(index, &data)?;
                    Ok(leaf.map(|l| (index, l)))
                })?
                .into_iter()
                .flatten()
                .collect(),
                // A failback: every block of the reply checked, their old content kept, then
                // written.
                Some(k) => {
                    let blocks = decode_all(reply, &expect, live, block_size, &dest.path)?;
                    let indexes: Vec<u64> = blocks.iter().map(|b| b.0).collect();
                    keep_old(k, &dest.file, &dest.path, &indexes, bs, local_len)?;
                    let mut leaves = Vec::new();
                    for (index, data, leaf) in &blocks {
                        leaves.extend(leaf.map(|l| (*index, l)));
                        dest.place(*index, data)?;
                    }
                    leaves
                }
            };
            start_writeback(&dest.file, batch_span, bs);
            Ok(leaves)
        }));
        self.copied += batch.len() as u64;
        self.report();
        Ok(())
    }
}

/// What a `ReadBlocks` needs, owned, so requests can be in flight together.
#[derive(Clone)]
struct Fetcher {
    client: ReplicationClient<Channel>,
    group: String,
    resource: String,
    block_size: u32,
    /// Ask the source for each block's leaf ([`Expect::Leaves`]).
    leaves: bool,
}

impl Fetcher {
    /// One `ReadBlocks` of `blocks` at zstd `level`; returns the blocks asked, with the reply
    /// and the protobuf bytes exchanged.
    async fn fetch(
        mut self,
        blocks: Vec<u64>,
        level: i32,
    ) -> (Vec<u64>, Result<(ReadBlocksReply, u64), ResyncError>) {
        let req = ReadBlocksRequest {
            group: self.group.clone(),
            resource: self.resource.clone(),
            block_size: self.block_size,
            blocks: blocks.clone(),
            zstd_level: level,
            leaves: self.leaves,
        };
        let sent = req.encoded_len() as u64;
        let reply = match self.client.read_blocks(req).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let e = rpc_err("ReadBlocks", &self.group, &self.resource, s);
                return (blocks, Err(e));
            }
        };
        let bytes = sent + reply.encoded_len() as u64;
        (blocks, Ok((reply, bytes)))
    }
}

/// What the probe batch says of the link and of zstd level 1 on this data: the link from the
/// raw bytes over the round trip (capped by `cap`), the compressor from compressing the sample
/// on this core. Blocking (it compresses).
fn measure(sample: &[Vec<u8>], elapsed: Duration, cap: Option<u64>) -> LinkEstimate {
    let raw: usize = sample.iter().map(Vec::len).sum();
    let secs = elapsed.as_secs_f64().max(1e-6);
    let mut link = raw as f64 / secs;
    if let Some(cap) = cap {
        link = link.min(cap as f64);
    }
    let started = Instant::now();
    let mut packed = 0usize;
    let mut enc = zstd::bulk::Compressor::new(1).ok();
    for block in sample {
        packed += enc
            .as_mut()
            .and_then(|e| e.compress(block).ok())
            .map_or(block.len(), |f| f.len().min(block.len()));
    }
    let took = started.elapsed().as_secs_f64().max(1e-6);
    LinkEstimate {
        link_bytes_per_sec: (raw > 0).then_some(link),
        zstd1_bytes_per_sec: raw as f64 / took,
        zstd1_ratio: if packed == 0 {
            f64::NAN
        } else {
            raw as f64 / packed as f64
        },
        cores: worker_count() as u32,
    }
}

/// Blocks decoded and checked: `(index, bytes, the leaf the source sent with it)`.
type Decoded = Vec<(u64, Vec<u8>, Option<Hash>)>;

/// Decodes every block of `reply` and checks it (length bounds, leaf), spread over the cores.
/// Blocking.
fn decode_all(
    reply: ReadBlocksReply,
    expect: &Expect,
    live: bool,
    block_size: u32,
    path: &Path,
) -> Result<Decoded, ResyncError> {
    on_workers(reply.blocks, |b| {
        decode_checked(b, expect, live, block_size, path)
    })
}

/// Runs `work` on every block of `blocks`, spread over the cores ([`worker_count`]), each
/// worker taking a contiguous part; answers in the order of `blocks`, or the first error.
/// Blocking.
fn on_workers<T: Send>(
    mut blocks: Vec<tandem_core::proto::Block>,
    work: impl Fn(tandem_core::proto::Block) -> Result<T, ResyncError> + Sync,
) -> Result<Vec<T>, ResyncError> {
    let workers = worker_count();
    let per = blocks.len().div_ceil(workers).max(1);
    let mut parts: Vec<Vec<tandem_core::proto::Block>> = Vec::new();
    while blocks.len() > per {
        let tail = blocks.split_off(per);
        parts.push(std::mem::replace(&mut blocks, tail));
    }
    parts.push(blocks);
    let work = &work;
    let done: Vec<Result<Vec<T>, ResyncError>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(move || part.into_iter().map(work).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ResyncError::Task("a decode worker panicked".into())))
            })
            .collect()
    });
    let mut out = Vec::new();
    for part in done {
        out.extend(part?);
    }
    Ok(out)
}

/// Where checked blocks go: the target file and what placing a block there needs.
struct Dest {
    file: Arc<File>,
    path: PathBuf,
    block_size: u32,
    /// The source's length: where the tree puts each block.
    length: u64,
    /// See [`Target::holes`].
    holes: bool,
    /// See [`Target::verify_writes`].
    verify: bool,
}

impl Dest {
    /// Writes checked block `index` at its place, except a block of zeros into a sparse target
    /// (it stays a hole), and with `verify` reads it back and compares ([`Dest::landed`]).
    /// Blocking.
    fn place(&self, index: u64, data: &[u8]) -> Result<(), ResyncError> {
        if !(self.holes && all_zero(data)) {
            self.put(data, index * u64::from(self.block_size))?;
        }
        if self.verify {
            self.landed(index, data)?;
        }
        Ok(())
    }

    /// Writes `data` at byte `at`. Blocking.
    fn put(&self, data: &[u8], at: u64) -> Result<(), ResyncError> {
        self.file
            .write_all_at(data, at)
            .map_err(io("write", &self.path))
    }

    /// Checks block `index` reads back as `data` from where the merkle tree puts it
    /// ([`merkle::block_range_to_bytes`], computed apart from the write's offset) and is exactly
    /// as long: [`ResyncError::NotLanded`] for a write that did not land, landed elsewhere or
    /// short, or a hole left over data. Blocking (reads the block, from the page cache as a
    /// rule).
    fn landed(&self, index: u64, data: &[u8]) -> Result<(), ResyncError> {
        thread_local! {
            static BACK: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let range = merkle::block_range_to_bytes(&(index..index + 1), self.block_size, self.length);
        let not_landed = || ResyncError::NotLanded {
            path: self.path.clone(),
            block: index,
            at: range.start,
        };
        if range.end - range.start != data.len() as u64 {
            return Err(not_landed());
        }
        BACK.with(|cell| {
            let mut back = cell.borrow_mut();
            back.resize(data.len(), 0);
            self.file
                .read_exact_at(&mut back, range.start)
                .map_err(io("read back", &self.path))?;
            if back.as_slice() != data {
                return Err(not_landed());
            }
            Ok(())
        })
    }
}

/// The blocks `[first, last]` a batch spans (`None` when empty). Pure.
fn span(batch: &[u64]) -> Option<(u64, u64)> {
    Some((*batch.iter().min()?, *batch.iter().max()?))
}

/// Starts writing the blocks of `span` out to the disk without waiting for it (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the copy's writes reach the disk while the
/// next blocks move and the final `fdatasync` finds little left. A hint: its failure is
/// ignored, the final `fdatasync` makes every block durable all the same. Blocking (it may
/// wait for room in the disk's queue).
fn start_writeback(file: &File, span: Option<(u64, u64)>, bs: u64) {
    #[cfg(target_os = "linux")]
    if let Some((first, last)) = span {
        use std::os::fd::AsRawFd as _;
        let (Ok(at), Ok(len)) = (
            libc::off64_t::try_from(first.saturating_mul(bs)),
            libc::off64_t::try_from((last - first + 1).saturating_mul(bs)),
        ) else {
            return;
        };
        #[allow(unsafe_code)]
        // SAFETY: sync_file_range takes the descriptor of a file `file` keeps open for the
        // call, two integers and flags, and no pointers.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), at, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, span, bs);
}

/// One pulled block, decoded, refused when it reaches past the source's length or does not
/// match its leaf: the source tree's (unless the source is live) or the one sent with it
/// (always; a block without one is [`ResyncError::NoLeaf`]). Answers the sent leaf. Pure but
/// for the decompression.
fn decode_checked(
    block: tandem_core::proto::Block,
    expect: &Expect,
    live: bool,
    block_size: u32,
    path: &Path,
) -> Result<(u64, Vec<u8>, Option<Hash>), ResyncError> {
    let index = block.index;
    let sent: Option<Hash> = match expect {
        Expect::Tree(_) => None,
        Expect::Leaves { .. } => match Hash::try_from(block.leaf.as_slice()) {
            Ok(leaf) => Some(leaf),
            Err(_) if block.leaf.is_empty() => return Err(ResyncError::NoLeaf { block: index }),
            Err(_) => {
                return Err(ResyncError::BadReply {
                    rpc: "ReadBlocks",
                    reason: format!("block {index}: a leaf of {} bytes", block.leaf.len()),
                })
            }
        },
    };
    let data = decode_block(block.data, block.raw_length, block_size).map_err(|reason| {
        ResyncError::BadReply {
            rpc: "ReadBlocks",
            reason: format!("block {index}: {reason}"),
        }
    })?;
    block_bounds(
        index,
        u64::from(block_size),
        data.len() as u64,
        expect.length(),
    )
    .map_err(|e| ResyncError::OutOfBounds {
        path: path.to_path_buf(),
        what: format!("block {index}"),
        source: e,
    })?;
    // The leaf to match: none for a live source's tree (its blocks may have moved on).
    let want: Option<Option<&Hash>> = match expect {
        Expect::Tree(_) if live => None,
        Expect::Tree(t) => Some(t.leaves().get(index as usize)),
        Expect::Leaves { .. } => Some(sent.as_ref()),
    };
    if want.is_some_and(|w| w != Some(&merkle::leaf_hash(&data))) {
        return Err(ResyncError::BadReply {
            rpc: "ReadBlocks",
            reason: format!(
                "block {index} ({} bytes) does not match the source's leaf",
                data.len()
            ),
        });
    }
    Ok((index, data, sent))
}

/// Whether `data` is all zeros (4 KiB at a time, so a block of data stops early). Pure.
fn all_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Checks a `ReadBlocks` reply holds exactly the asked blocks, in the asked order. Pure.
fn check_indexes(asked: &[u64], reply: &ReadBlocksReply) -> Result<(), ResyncError> {
    let bad = |reason: String| ResyncError::BadReply {
        rpc: "ReadBlocks",
        reason,
    };
    if reply.blocks.len() != asked.len() {
        return Err(bad(format!(
            "{} blocks for {} asked",
            reply.blocks.len(),
            asked.len()
        )));
    }
    for (want, got) in asked.iter().zip(&reply.blocks) {
        if got.index != *want {
            return Err(bad(format!("block {} where {} was asked", got.index, want)));
        }
    }
    Ok(())
}

/// Reads the current content of blocks `indexes` of the target (those inside its old length
/// `local_len`) and keeps them durably in the quarantine file, before they are overwritten.
pub(super) fn keep_old(
    keeper: &std::sync::Mutex<QuarantineWriter>,
    file: &File,
    path: &Path,
    indexes: &[u64],
    bs: u64,
    local_len: u64,
) -> Result<(), ResyncError> {
    let mut old = Vec::new();
    for &i in indexes {
        let at = i * bs;
        if at >= local_len {
            continue;
        }
        let mut buf = vec![0u8; bs.min(local_len - at) as usize];
        file.read_exact_at(&mut buf, at).map_err(io("read", path))?;
        old.push((i, buf));
    }
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keep(&old)
        .map_err(ResyncError::Quarantine)
}

/// The source's tree from the leaves sent with every block of an initial sync, in any order:
/// each block of `length` exactly once. Pure.
///
/// # Errors
/// [`ResyncError::BadReply`] when a block is missing, repeated or past the end.
pub(super) fn tree_from_sent_leaves(
    block_size: u32,
    length: u64,
    mut leaves: Vec<(u64, Hash)>,
) -> Result<MerkleTree, ResyncError> {
    let total = merkle::block_count(length, block_size);
    leaves.sort_unstable_by_key(|l| l.0);
    let bad = |reason: String| ResyncError::BadReply {
        rpc: "ReadBlocks",
        reason,
    };
    if leaves.len() as u64 != total {
        return Err(bad(format!(
            "{} leaves for the {total} blocks of the source",
            leaves.len()
        )));
    }
    if let Some((at, (index, _))) = leaves
        .iter()
        .enumerate()
        .find(|(at, (index, _))| *index != *at as u64)
    {
        return Err(bad(format!(
            "leaf of block {index} where block {at} was due"
        )));
    }
    let leaves = leaves.into_iter().map(|(_, l)| l).collect();
    Ok(MerkleTree::from_leaves(block_size, length, leaves)?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tandem_core::proto::Block;

    fn block(index: u64, data: &[u8]) -> Block {
        Block {
            index,
            data: data.to_vec(),
            raw_length: 0,
            leaf: Vec::new(),
        }
    }

    fn tree(data: &[u8]) -> Expect {
        Expect::Tree(Arc::new(MerkleTree::from_bytes(4, data).unwrap()))
    }

    #[test]
    fn a_reply_must_name_exactly_the_asked_blocks_in_order() {
        let good = ReadBlocksReply {
            blocks: vec![block(1, b"bbbb"), block(2, b"cc")],
        };
        assert!(check_indexes(&[1, 2], &good).is_ok());
        assert!(check_indexes(&[2, 1], &good).is_err());
        assert!(check_indexes(&[1], &good).is_err());
    }

    #[test]
    fn a_block_that_does_not_match_the_leaf_is_refused_unless_the_source_is_live() {
        let src = tree(b"aaaabbbbcc");
        let p = Path::new("/data/vol.img");
        assert!(decode_checked(block(2, b"cc"), &src, false, 4, p).is_ok());
        let err = decode_checked(block(2, b"cd"), &src, false, 4, p).unwrap_err();
        assert!(err.to_string().contains("block 2"), "{err}");
        assert!(decode_checked(block(2, b"cd"), &src, true, 4, p).is_ok());
        // Compressed on the wire: checked after decoding.
        let mut enc = zstd::bulk::Compressor::new(1).unwrap();
        let frame = enc.compress(b"bbbb").unwrap();
        let wire = Block {
            index: 1,
            data: frame.clone(),
            raw_length: 4,
            leaf: Vec::new(),
        };
        assert_eq!(
            decode_checked(wire, &src, false, 4, p).unwrap(),
            (1, b"bbbb".to_vec(), None)
        );
        let lying = Block {
            index: 1,
            data: frame,
            raw_length: 3,
            leaf: Vec::new(),
        };
        assert!(decode_checked(lying, &src, true, 4, p).is_err());
    }

    #[test]
    fn a_pulled_block_past_the_source_length_is_refused_naming_the_file() {
        let src = tree(b"aaaabbbbcc");
        let p = Path::new("/data/vol.img");
        assert!(decode_checked(block(0, &[7; 4]), &src, true, 4, p).is_ok());
        assert!(decode_checked(block(2, &[7; 2]), &src, true, 4, p).is_ok());
        for (i, b) in [
            block(2, &[7; 4]),
            block(3, &[7]),
            block(u64::MAX / 2, &[7; 4]),
        ]
        .into_iter()
        .enumerate()
        {
            let err = decode_checked(b, &src, true, 4, p).unwrap_err().to_string();
            assert!(
                err.starts_with("/data/vol.img: block ") && err.contains("out of bounds"),
                "#{i}: expect a named out-of-bounds refusal got {err}"
            );
        }
    }

    #[test]
    fn decode_all_keeps_the_order_across_workers() {
        let data: Vec<u8> = (0..40u8).collect();
        let src = tree(&data);
        let reply = ReadBlocksReply {
            blocks: (0..10u64)
                .rev()
                .map(|i| block(i, &data[i as usize * 4..i as usize * 4 + 4]))
                .collect(),
        };
        let out = decode_all(reply, &src, false, 4, Path::new("/x")).unwrap();
        let order: Vec<u64> = out.iter().map(|b| b.0).collect();
        assert_eq!(order, (0..10).rev().collect::<Vec<_>>());
    }

    fn with_leaf(index: u64, data: &[u8], leaf: &[u8]) -> Block {
        Block {
            leaf: leaf.to_vec(),
            ..block(index, data)
        }
    }

    #[test]
    fn a_block_is_checked_against_the_leaf_sent_with_it_even_from_a_live_source() {
        let p = Path::new("/data/vol.img");
        let expect = Expect::Leaves { length: 10 };
        let leaf = merkle::leaf_hash(b"cc");
        for live in [false, true] {
            let (i, data, sent) =
                decode_checked(with_leaf(2, b"cc", &leaf), &expect, live, 4, p).unwrap();
            assert_eq!((i, data, sent), (2, b"cc".to_vec(), Some(leaf)));
            let err = decode_checked(with_leaf(2, b"cd", &leaf), &expect, live, 4, p).unwrap_err();
            assert!(err.to_string().contains("does not match"), "{err}");
        }
        // No leaf: a source that predates them; a leaf of the wrong size: a bad reply.
        let err = decode_checked(block(2, b"cc"), &expect, false, 4, p).unwrap_err();
        assert!(matches!(err, ResyncError::NoLeaf { block: 2 }), "{err:?}");
        let err = decode_checked(with_leaf(2, b"cc", &leaf[..31]), &expect, false, 4, p);
        assert!(matches!(err, Err(ResyncError::BadReply { .. })));
        // Bounds come from the length the source gave.
        let err = decode_checked(with_leaf(2, b"ccc", &leaf), &expect, false, 4, p).unwrap_err();
        assert!(err.to_string().contains("out of bounds"), "{err}");
    }

    #[test]
    fn sent_leaves_make_the_source_tree_only_when_every_block_came_once() {
        let data = b"aaaabbbbccccd";
        let whole = MerkleTree::from_bytes(4, data).unwrap();
        let sent: Vec<(u64, Hash)> = data
            .chunks(4)
            .enumerate()
            .map(|(i, b)| (i as u64, merkle::leaf_hash(b)))
            .collect();
        let mut shuffled = sent.clone();
        shuffled.reverse();
        shuffled.swap(0, 2);
        let t = tree_from_sent_leaves(4, 13, shuffled).unwrap();
        assert_eq!(t.root(), whole.root());
        let mut missing = sent.clone();
        missing.pop();
        assert!(tree_from_sent_leaves(4, 13, missing).is_err());
        let mut twice = sent.clone();
        twice[3] = twice[2];
        assert!(tree_from_sent_leaves(4, 13, twice).is_err());
        let mut past = sent.clone();
        past[3].0 = 9;
        assert!(tree_from_sent_leaves(4, 13, past).is_err());
        assert!(tree_from_sent_leaves(4, 0, Vec::new()).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn sent_leaves_in_any_order_give_the_same_root(
            len in 0usize..200, seed in proptest::prelude::any::<u64>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + seed) as u8).collect();
            let whole = MerkleTree::from_bytes(8, &data).unwrap();
            let mut sent: Vec<(u64, Hash)> = data
                .chunks(8)
                .enumerate()
                .map(|(i, b)| (i as u64, merkle::leaf_hash(b)))
                .collect();
            // A deterministic shuffle from the seed.
            let n = sent.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                sent.swap(i, j);
            }
            let t = tree_from_sent_leaves(8, len as u64, sent).unwrap();
            proptest::prop_assert_eq!(t.root(), whole.root());
        }
    }

    fn dest(path: &Path, length: u64, holes: bool, verify: bool) -> Dest {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        Dest {
            file: Arc::new(file),
            path: path.to_path_buf(),
            block_size: 4,
            length,
            holes,
            verify,
        }
    }

    #[test]
    fn a_verified_write_refuses_a_block_not_where_the_tree_puts_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, [0u8; 10]).unwrap();
        let d = dest(&p, 10, false, true);
        d.place(1, b"bbbb").unwrap();
        d.place(2, b"cc").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"\0\0\0\0bbbbcc");
        // Written one byte off, or not written at all: refused, naming the block and its place.
        d.put(b"aaaa", 1).unwrap();
        let err = d.landed(0, b"aaaa").unwrap_err();
        assert!(
            matches!(
                err,
                ResyncError::NotLanded {
                    block: 0,
                    at: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("block 0"), "{err}");
        let err = d.landed(2, b"dd").unwrap_err();
        assert!(
            matches!(
                err,
                ResyncError::NotLanded {
                    block: 2,
                    at: 8,
                    ..
                }
            ),
            "{err:?}"
        );
        // A block of another length than its place holds (short, or past the source's end).
        assert!(d.landed(1, b"bbb").is_err());
        assert!(d.landed(2, b"cccc").is_err());
    }

    #[test]
    fn a_block_of_zeros_left_a_hole_over_data_is_refused_only_when_writes_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        // Not blank after all: block 1 holds data where the copy expected a hole.
        std::fs::write(&p, b"\0\0\0\0xxxx").unwrap();
        let err = dest(&p, 8, true, true).place(1, &[0; 4]).unwrap_err();
        assert!(
            matches!(err, ResyncError::NotLanded { block: 1, .. }),
            "{err:?}"
        );
        dest(&p, 8, true, true).place(0, &[0; 4]).unwrap();
        // Unverified (a full re-hash follows), the hole is not looked at.
        dest(&p, 8, true, false).place(1, &[0; 4]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"\0\0\0\0xxxx");
        // Without holes the zeros are written.
        dest(&p, 8, false, true).place(1, &[0; 4]).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), [0; 8]);
    }

    #[test]
    fn a_batch_spans_its_lowest_to_its_highest_block() {
        assert_eq!(span(&[]), None);
        assert_eq!(span(&[7]), Some((7, 7)));
        assert_eq!(span(&[9, 3, 5]), Some((3, 9)));
        // Starting writeback is a hint that never fails the copy, even on a read-only file.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, [1u8; 16]).unwrap();
        start_writeback(&File::open(&p).unwrap(), Some((0, 3)), 4);
        start_writeback(&File::open(&p).unwrap(), Some((u64::MAX - 1, u64::MAX)), 4);
    }

    #[test]
    fn only_blocks_of_zeros_are_all_zero() {
        assert!(all_zero(&[]));
        assert!(all_zero(&[0; 65536]));
        for at in [0, 1, 4095, 4096, 65535] {
            let mut b = vec![0u8; 65536];
            b[at] = 1;
            assert!(!all_zero(&b), "a 1 at {at}");
        }
    }

    #[test]
    fn the_probe_measures_the_link_and_the_compressor() {
        let sample = vec![b"replica journal ".repeat(4096)];
        let e = measure(&sample, Duration::from_millis(10), None);
        assert!((e.link_bytes_per_sec.unwrap() - 6_553_600.0).abs() < 1.0);
        assert!(e.zstd1_ratio > 10.0 && e.zstd1_bytes_per_sec > 0.0);
        let capped = measure(&sample, Duration::from_millis(10), Some(1000));
        assert_eq!(capped.link_bytes_per_sec, Some(1000.0));
        assert!(measure(&[], Duration::ZERO, None).zstd1_ratio.is_nan());
    }
}
