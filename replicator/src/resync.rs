//! Resync and verify of a resource between replicators: the `Merkle` / `ReadBlocks` client and server.
//!
//! Client: [`resync`] fetches the source's leaves, hashes the local target, diffs, pulls only
//! the differing blocks in bounded batches, writes them, syncs, and re-hashes to prove the roots
//! are equal. [`verify`] compares two trees and names the differing byte ranges.
//!
//! Server: [`BlockServer`] answers `Merkle` and `ReadBlocks` for resources a resolver maps to
//! files; the replication service delegates those two RPCs to it.
//!
//! Compression: the protocol carries raw block bytes. gRPC message compression (zstd) is a
//! transport choice: the server enables it with `ReplicationServer::send_compressed(Zstd)`,
//! the client with `ReplicationClient::accept_compressed(Zstd)`; this module works either way.

use crate::merkle::{self, Hash, MerkleError, MerkleTree, MAX_BLOCK_SIZE, MAX_WIRE_LEAVES};
use crate::quarantine::QuarantineWriter;
use crate::scan::{self, ScanError};
use prost::Message as _;
use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{Block, MerkleReply, MerkleRequest, ReadBlocksReply, ReadBlocksRequest};
use tonic::transport::Channel;
use tonic::Status;

/// Default blocks per `ReadBlocks` request: 64 (4 MiB at 64 KiB blocks).
pub const DEFAULT_BATCH_BLOCKS: usize = 64;

/// Most block bytes one `ReadBlocks` reply may carry: 16 MiB.
pub const MAX_REPLY_BYTES: u64 = 16 << 20;

/// Most blocks one `ReadBlocks` request may name (server limit).
pub const MAX_BLOCKS_PER_REQUEST: usize = 1024;

/// Largest message the resync client accepts: the one gRPC limit
/// ([`tandem_core::limits::MAX_GRPC_MESSAGE_BYTES`]), which holds the largest leaves field.
pub const MAX_MESSAGE_BYTES: usize = tandem_core::limits::MAX_GRPC_MESSAGE_BYTES;
const _: () = assert!(MAX_WIRE_LEAVES * merkle::HASH_LEN + (1 << 20) <= MAX_MESSAGE_BYTES);

/// Errors from resync and verify.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// An RPC failed (could not reach the source, or it said no).
    #[error("{rpc} for {group}/{resource}: {status}")]
    Rpc {
        /// `Merkle` or `ReadBlocks`.
        rpc: &'static str,
        /// The group.
        group: String,
        /// The resource.
        resource: String,
        /// The gRPC status.
        status: Status,
    },
    /// The source's reply broke the protocol (wrong block, bad hash, wrong size).
    #[error("bad {rpc} reply from source: {reason}")]
    BadReply {
        /// Which RPC.
        rpc: &'static str,
        /// What was wrong, with the block index where one applies.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Hashing the local file failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The trees could not be built or compared.
    #[error("merkle: {0}")]
    Merkle(#[from] MerkleError),
    /// After writing every differing block, the target's root still differs from the source's.
    #[error("target root {target_root} differs from source root {source_root} after resync; differing bytes {ranges}")]
    RootMismatch {
        /// Source root, hex.
        source_root: String,
        /// Target root, hex.
        target_root: String,
        /// The byte ranges still differing.
        ranges: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("resync task failed: {0}")]
    Task(String),
    /// The old content of a block could not be kept before it was to be overwritten (nothing
    /// was overwritten).
    #[error("quarantine: {0}")]
    Quarantine(String),
}

impl ResyncError {
    /// Whether running the resync again could succeed (transport failures and local I/O).
    pub fn is_retryable(&self) -> bool {
        match self {
            ResyncError::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Unknown
            ),
            ResyncError::Io { .. }
            | ResyncError::RootMismatch { .. }
            | ResyncError::Quarantine(_) => true,
            ResyncError::Scan(e) => e.is_retryable(),
            ResyncError::BadReply { .. } | ResyncError::Merkle(_) | ResyncError::Task(_) => false,
        }
    }
}

/// What a resync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncReport {
    /// Blocks in the source.
    pub blocks_total: u64,
    /// Blocks that differed and were pulled.
    pub blocks_differing: u64,
    /// Byte ranges that differed before the resync (clipped to the longer length).
    pub differing_bytes: Vec<Range<u64>>,
    /// Protobuf bytes of every request sent and reply received (leaves included), before gRPC
    /// compression and without HTTP/2 framing.
    pub bytes_sent_over_wire: u64,
    /// Source length; the target now has this length.
    pub length: u64,
    /// The common root after the resync.
    pub root: Hash,
    /// Wall-clock time of the whole resync, the final re-hash included.
    pub duration: Duration,
    /// The source's watermark when it computed its leaves (`MerkleReply::watermark`): every
    /// change up to it is in the resynced copy.
    pub source_watermark: u64,
    /// Blocks whose old content was kept in the quarantine file before they were overwritten.
    pub quarantined_blocks: u64,
    /// The quarantine file, when one was written.
    pub quarantine: Option<PathBuf>,
}

/// Where a resync is, reported to [`ResyncOptions::progress`] as it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResyncTick {
    /// `hashing` (the local target) or `copying` (pulling differing blocks).
    pub phase: &'static str,
    /// Bytes of the target hashed (hashing) or of the differing blocks pulled (copying).
    pub bytes_done: u64,
    /// Bytes to hash (hashing) or of differing blocks to pull (copying).
    pub bytes_total: u64,
    /// Blocks found different (known once hashing is done).
    pub blocks_differing: u64,
    /// Differing blocks pulled and written so far.
    pub blocks_copied: u64,
    /// Protobuf bytes sent and received so far.
    pub wire_bytes: u64,
}

/// A callback that receives [`ResyncTick`]s (a progress bar, status, a watch channel).
pub type ProgressFn = Arc<dyn Fn(ResyncTick) + Send + Sync>;

/// Tuning for [`resync`].
#[derive(Clone)]
pub struct ResyncOptions {
    /// Blocks per `ReadBlocks` request; lowered so a reply stays under [`MAX_REPLY_BYTES`].
    pub batch_blocks: usize,
    /// The source keeps taking writes during the resync (a live primary): blocks may change
    /// between its `Merkle` and `ReadBlocks` answers, so pulled blocks are not checked against
    /// the leaves and the final roots may differ. The caller must then replay the source's
    /// journal from [`ResyncReport::source_watermark`] + 1, which brings every changed block up
    /// to date (writes are idempotent and replayed in order).
    pub live_source: bool,
    /// After writing, re-hash the whole target (true, the default: also catches a concurrent
    /// writer on the target) or only read back the written blocks and combine their hashes with
    /// the leaves hashed before (false: one full read less).
    pub full_rehash: bool,
    /// Called as hashing and copying advance (about every 4 MiB hashed, every batch pulled).
    pub progress: Option<ProgressFn>,
    /// Keep the old content of every block before it is overwritten in this file (see
    /// [`crate::quarantine`]): a failback, where the target is the old primary's copy.
    pub quarantine: Option<PathBuf>,
}

impl std::fmt::Debug for ResyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResyncOptions")
            .field("batch_blocks", &self.batch_blocks)
            .field("live_source", &self.live_source)
            .field("full_rehash", &self.full_rehash)
            .field("progress", &self.progress.is_some())
            .field("quarantine", &self.quarantine)
            .finish()
    }
}

impl Default for ResyncOptions {
    fn default() -> Self {
        ResyncOptions {
            batch_blocks: DEFAULT_BATCH_BLOCKS,
            live_source: false,
            full_rehash: true,
            progress: None,
            quarantine: None,
        }
    }
}

/// Hex form of a hash, for reports and errors.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// The result of comparing two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// True when the roots are equal (same length, same blocks).
    pub equal: bool,
    /// Root of side a.
    pub root_a: Hash,
    /// Root of side b.
    pub root_b: Hash,
    /// Length of side a.
    pub length_a: u64,
    /// Length of side b.
    pub length_b: u64,
    /// Differing block indexes, coalesced.
    pub differing_blocks: Vec<Range<u64>>,
    /// Differing byte ranges, clipped to the longer length.
    pub differing_bytes: Vec<Range<u64>>,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.equal {
            write!(f, "equal: root {}", hex(&self.root_a))
        } else {
            write!(
                f,
                "differ: {} blocks, differing bytes {} (lengths {} / {})",
                merkle::count_blocks(&self.differing_blocks),
                merkle::describe_byte_ranges(&self.differing_bytes),
                self.length_a,
                self.length_b
            )
        }
    }
}

/// Compares two trees (from both sides of a group, taken at a barrier).
///
/// # Errors
/// [`MerkleError::BlockSizeMismatch`] when the trees use different block sizes.
pub fn verify(a: &MerkleTree, b: &MerkleTree) -> Result<VerifyReport, MerkleError> {
    let differing_blocks = merkle::diff(a, b)?;
    let longer = a.length().max(b.length());
    let differing_bytes = merkle::byte_ranges(&differing_blocks, a.block_size(), longer);
    let (root_a, root_b) = (a.root(), b.root());
    Ok(VerifyReport {
        equal: root_a == root_b,
        root_a,
        root_b,
        length_a: a.length(),
        length_b: b.length(),
        differing_blocks,
        differing_bytes,
    })
}

/// A ranged `Merkle` answer: the leaves of blocks `[first, first + count)` (clipped to the
/// file), the root over them, and the whole file's length.
async fn merkle_range(
    path: PathBuf,
    block_size: u32,
    first: u64,
    count: u64,
) -> Result<MerkleReply, Status> {
    if count > MAX_WIRE_LEAVES as u64 {
        return Err(Status::invalid_argument(format!(
            "{count} blocks exceed the {MAX_WIRE_LEAVES} leaves a reply may carry"
        )));
    }
    let (leaves, length) =
        tokio::task::spawn_blocking(move || scan::hash_blocks(&path, block_size, first, count))
            .await
            .map_err(|e| Status::internal(format!("hash task failed: {e}")))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
    let bs = u64::from(block_size);
    let start = (first * bs).min(length);
    let end = ((first + leaves.len() as u64) * bs).min(length);
    let mut bytes = Vec::with_capacity(leaves.len() * merkle::HASH_LEN);
    for l in &leaves {
        bytes.extend_from_slice(l);
    }
    let root = MerkleTree::from_leaves(block_size, end - start, leaves)
        .map_err(|e| Status::internal(e.to_string()))?
        .root();
    Ok(MerkleReply {
        root: root.to_vec(),
        length,
        block_size,
        leaves: bytes,
        first_block: first,
        ..Default::default()
    })
}

/// Progress of a chunked verify: blocks compared so far and in all.
pub type VerifyProgressFn<'a> = &'a mut (dyn FnMut(u64, u64) + Send);

/// Where a chunked verify is after one chunk, for [`verify_chunks`]'s progress callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkTick {
    /// Blocks compared so far.
    pub blocks_done: u64,
    /// Blocks of the longer copy.
    pub blocks_total: u64,
    /// Bytes of the longer copy.
    pub length: u64,
}

/// What a chunked verify found: the comparison of the whole trees, and the seqs of the first
/// and last chunk's barriers.
#[derive(Debug, Clone)]
pub struct ChunkedVerify {
    /// The comparison of the two whole trees.
    pub report: VerifyReport,
    /// Seq both sides stood at when the first chunk was hashed.
    pub first_seq: u64,
    /// Seq both sides stood at when the last chunk was hashed.
    pub last_seq: u64,
    /// Chunks (barriers) it took.
    pub chunks: u64,
}

/// Where a chunked verify gets its barrier `Merkle` answers: the primary over gRPC (the CLI,
/// the coordinator), or the primary's own merkle backend (the primary serving `Verify`).
///
/// The contract is the `Merkle` RPC's: a barrier request answers both leaf sets at one seq,
/// `unavailable` while the replica is not caught up yet (the caller retries).
#[tonic::async_trait]
pub trait MerkleSource: Send {
    /// Answers one `Merkle` request.
    async fn merkle(&mut self, req: MerkleRequest) -> Result<MerkleReply, Status>;
}

#[tonic::async_trait]
impl MerkleSource for ReplicationClient<Channel> {
    async fn merkle(&mut self, req: MerkleRequest) -> Result<MerkleReply, Status> {
        ReplicationClient::merkle(self, req)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// How long a chunked verify retries a barrier answered `unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Until this instant, for the whole verify.
    Until(Instant),
    /// This long for each barrier.
    PerBarrier(Duration),
}

impl Patience {
    /// The deadline of a barrier asked now.
    fn deadline(&self) -> Instant {
        match self {
            Patience::Until(d) => *d,
            Patience::PerBarrier(p) => Instant::now() + *p,
        }
    }
}

/// Verifies `group`/`resource` by barrier `Merkle` calls on the primary, one chunk of
/// `chunk_blocks` blocks at a time: for each chunk the primary holds intake only while the
/// replica catches up and both copies hash that chunk, so writes pause for one chunk, not for
/// the whole volume. Each chunk is compared at its own seq; the leaves are put together into
/// both whole trees. A barrier answered `unavailable` (the replica is not caught up yet) is
/// retried until `deadline`.
///
/// # Errors
/// [`ResyncError::Rpc`] when a call fails for good, [`ResyncError::BadReply`] for a reply
/// whose leaves do not fit.
pub async fn verify_chunked<M: MerkleSource + ?Sized>(
    client: &mut M,
    group: &str,
    resource: &str,
    block_size: u32,
    chunk_blocks: u64,
    deadline: Instant,
    progress: VerifyProgressFn<'_>,
) -> Result<ChunkedVerify, ResyncError> {
    let mut tick = |t: ChunkTick| progress(t.blocks_done, t.blocks_total);
    verify_chunks(
        client,
        group,
        resource,
        block_size,
        chunk_blocks,
        Patience::Until(deadline),
        &mut tick,
    )
    .await
}

/// [`verify_chunked`] with the retry [`Patience`] chosen by the caller and a progress
/// callback that also learns the longer copy's length.
///
/// # Errors
/// As [`verify_chunked`]; a barrier still `unavailable` at its deadline ends it with
/// [`ResyncError::Rpc`] carrying that `unavailable` status.
pub async fn verify_chunks<M: MerkleSource + ?Sized>(
    client: &mut M,
    group: &str,
    resource: &str,
    block_size: u32,
    chunk_blocks: u64,
    patience: Patience,
    progress: &mut (dyn FnMut(ChunkTick) + Send),
) -> Result<ChunkedVerify, ResyncError> {
    merkle::check_block_size(block_size)?;
    let chunk = chunk_blocks.clamp(1, MAX_WIRE_LEAVES as u64);
    let (mut own, mut peer) = (Vec::new(), Vec::new());
    let (mut own_len, mut peer_len, mut last_seq): (u64, u64, u64);
    let (mut first_seq, mut chunks) = (None, 0u64);
    let mut first = 0u64;
    loop {
        let req = MerkleRequest {
            group: group.to_string(),
            resource: resource.to_string(),
            block_size,
            barrier: true,
            first_block: first,
            block_count: chunk,
            sqlite_snapshots: false,
        };
        let rep = barrier_merkle(client, req, patience.deadline())
            .await
            .map_err(|s| rpc_err("Merkle", group, resource, s))?;
        let bad = |reason: String| ResyncError::BadReply {
            rpc: "Merkle",
            reason,
        };
        if rep.leaves.len() % merkle::HASH_LEN != 0 || rep.peer_leaves.len() % merkle::HASH_LEN != 0
        {
            return Err(bad("leaves are not whole hashes".into()));
        }
        take_leaves(&rep.leaves, &mut own);
        take_leaves(&rep.peer_leaves, &mut peer);
        (own_len, peer_len, last_seq) = (rep.length, rep.peer_length, rep.watermark);
        first_seq.get_or_insert(rep.watermark);
        chunks += 1;
        let length = own_len.max(peer_len);
        let total = merkle::block_count(length, block_size);
        first += chunk;
        progress(ChunkTick {
            blocks_done: first.min(total),
            blocks_total: total,
            length,
        });
        if first >= total {
            break;
        }
    }
    let tree = |leaves: Vec<Hash>, len: u64| {
        MerkleTree::from_leaves(block_size, len, leaves).map_err(|e| ResyncError::BadReply {
            rpc: "Merkle",
            reason: format!("leaves do not fit the length {len}: {e}"),
        })
    };
    let report = verify(&tree(own, own_len)?, &tree(peer, peer_len)?)?;
    Ok(ChunkedVerify {
        report,
        first_seq: first_seq.unwrap_or(0),
        last_seq,
        chunks,
    })
}

/// One barrier `Merkle` call, retried every 200 ms while it answers `unavailable` before
/// `deadline`.
async fn barrier_merkle<M: MerkleSource + ?Sized>(
    client: &mut M,
    req: MerkleRequest,
    deadline: Instant,
) -> Result<MerkleReply, Status> {
    loop {
        match client.merkle(req.clone()).await {
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r => return r,
        }
    }
}

/// Appends the hashes of a `leaves` field (whole hashes, checked by the caller) to `into`.
fn take_leaves(bytes: &[u8], into: &mut Vec<Hash>) {
    for c in bytes.chunks(merkle::HASH_LEN) {
        let mut h = [0u8; merkle::HASH_LEN];
        h.copy_from_slice(c);
        into.push(h);
    }
}

fn rpc_err(rpc: &'static str, group: &str, resource: &str, status: Status) -> ResyncError {
    ResyncError::Rpc {
        rpc,
        group: group.to_string(),
        resource: resource.to_string(),
        status,
    }
}

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
    let tree = MerkleTree::from_leaves_bytes(reply.block_size, reply.length, &reply.leaves)?;
    if reply.root.as_slice() != tree.root().as_slice() {
        return Err(ResyncError::BadReply {
            rpc: "Merkle",
            reason: "root does not match the leaves".to_string(),
        });
    }
    Ok((tree, bytes, reply.watermark))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ResyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ResyncError::Task(e.to_string()))
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ResyncError + 'a {
    move |source| ResyncError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Resyncs the local file `target` to the source's copy of `group`/`resource`.
///
/// Only differing blocks move: the source's leaves come with `Merkle`, the target is hashed
/// locally (off the reactor), and the differing blocks are pulled with `ReadBlocks` in batches
/// of [`ResyncOptions::batch_blocks`] (memory bounded by two batches). Each pulled block is
/// checked against the source's leaf before it is written. The target is created if missing and
/// set to the source's length; after `fdatasync` it is re-hashed (see
/// [`ResyncOptions::full_rehash`]) and its root must equal the source's. The source must not
/// change during the resync (take it at a barrier).
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
    // Hash the local target while the source hashes its copy.
    let path = target.to_path_buf();
    let progress = options.progress.clone();
    let tick = move |t: ResyncTick| {
        if let Some(p) = &progress {
            p(t);
        }
    };
    let hash_tick = tick.clone();
    let bs64 = u64::from(block_size);
    let local_task = tokio::task::spawn_blocking(move || -> Result<MerkleTree, ResyncError> {
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
                        hash_tick(ResyncTick {
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
    });
    let (source, mut wire, source_watermark) =
        fetch_tree_at(&mut client, group, resource, block_size).await?;
    let local = local_task
        .await
        .map_err(|e| ResyncError::Task(e.to_string()))??;

    let path = target.to_path_buf();
    let file = blocking(move || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))
    })
    .await??;
    let file = Arc::new(file);

    let report = verify(&source, &local)?;
    let length = source.length();
    let bs = u64::from(block_size);
    let total = source.block_count();
    let wanted: Vec<u64> = report
        .differing_blocks
        .iter()
        .flat_map(|r| r.start..r.end.min(total))
        .collect();
    // A failback keeps what it overwrites: the blocks that differ, and any tail the source
    // does not have.
    let local_len = local.length();
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
        let (f, path, k) = (file.clone(), target.to_path_buf(), k.clone());
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
    if local.length() != length {
        let (f, path) = (file.clone(), target.to_path_buf());
        blocking(move || f.set_len(length).map_err(io("truncate", &path))).await??;
    }

    let per_request = options
        .batch_blocks
        .clamp(1, MAX_BLOCKS_PER_REQUEST)
        .min((MAX_REPLY_BYTES / bs).max(1) as usize);
    // One batch is written on the blocking pool while the next is in flight: memory is bounded
    // by two batches.
    let mut writing: Option<tokio::task::JoinHandle<Result<(), ResyncError>>> = None;
    let differing = wanted.len() as u64;
    let mut copied = 0u64;
    let copy_tick = |copied: u64, wire: u64| {
        tick(ResyncTick {
            phase: "copying",
            bytes_done: copied * bs,
            bytes_total: differing * bs,
            blocks_differing: differing,
            blocks_copied: copied,
            wire_bytes: wire,
        })
    };
    copy_tick(0, wire);
    for batch in wanted.chunks(per_request) {
        let req = ReadBlocksRequest {
            group: group.to_string(),
            resource: resource.to_string(),
            block_size,
            blocks: batch.to_vec(),
        };
        wire += req.encoded_len() as u64;
        let reply = client
            .read_blocks(req)
            .await
            .map_err(|s| rpc_err("ReadBlocks", group, resource, s))?
            .into_inner();
        wire += reply.encoded_len() as u64;
        check_blocks(batch, &reply, &source, options.live_source)?;
        if let Some(previous) = writing.take() {
            previous
                .await
                .map_err(|e| ResyncError::Task(e.to_string()))??;
        }
        let (f, path, k) = (file.clone(), target.to_path_buf(), keeper.clone());
        writing = Some(tokio::task::spawn_blocking(move || {
            if let Some(k) = &k {
                let indexes: Vec<u64> = reply.blocks.iter().map(|b| b.index).collect();
                keep_old(k, &f, &path, &indexes, bs, local_len)?;
            }
            for b in &reply.blocks {
                f.write_all_at(&b.data, b.index * bs)
                    .map_err(io("write", &path))?;
            }
            Ok(())
        }));
        copied += batch.len() as u64;
        copy_tick(copied, wire);
    }
    if let Some(last) = writing {
        last.await.map_err(|e| ResyncError::Task(e.to_string()))??;
    }

    let path = target.to_path_buf();
    let full_rehash = options.full_rehash;
    let written = wanted.clone();
    let after = blocking(move || -> Result<MerkleTree, ResyncError> {
        file.sync_data().map_err(io("fdatasync", &path))?;
        if full_rehash {
            return Ok(scan::hash_file(&path, block_size)?);
        }
        read_back_tree(&file, &path, &local, &written, block_size, length)
    })
    .await??;
    let check = verify(&source, &after)?;
    if !check.equal && !options.live_source {
        return Err(ResyncError::RootMismatch {
            source_root: hex(&check.root_a),
            target_root: hex(&check.root_b),
            ranges: merkle::describe_byte_ranges(&check.differing_bytes),
        });
    }
    Ok(ResyncReport {
        blocks_total: total,
        blocks_differing: wanted.len() as u64,
        differing_bytes: report.differing_bytes,
        bytes_sent_over_wire: wire,
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

/// Reads the current content of blocks `indexes` of the target (those inside its old length
/// `local_len`) and keeps them durably in the quarantine file, before they are overwritten.
fn keep_old(
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

/// Checks a `ReadBlocks` reply holds exactly the asked blocks, each matching the source's leaf.
fn check_blocks(
    asked: &[u64],
    reply: &ReadBlocksReply,
    source: &MerkleTree,
    live_source: bool,
) -> Result<(), ResyncError> {
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
        let leaf = source.leaves().get(*want as usize);
        if !live_source && leaf != Some(&merkle::leaf_hash(&got.data)) {
            return Err(bad(format!(
                "block {} ({} bytes) does not match the source's leaf",
                got.index,
                got.data.len()
            )));
        }
    }
    Ok(())
}

/// Serves `Merkle` and `ReadBlocks` for resources a resolver maps to local files.
///
/// The replication service owns the watermark: `merkle` leaves `MerkleReply::watermark` at 0
/// for it to fill in. Hashing and reads run on the blocking pool.
pub struct BlockServer<R> {
    resolver: Arc<R>,
    max_blocks_per_request: usize,
}

impl<R> std::fmt::Debug for BlockServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockServer")
            .field("max_blocks_per_request", &self.max_blocks_per_request)
            .finish_non_exhaustive()
    }
}

impl<R> BlockServer<R>
where
    R: Fn(&str, &str) -> Option<PathBuf> + Send + Sync + 'static,
{
    /// A server resolving `(group, resource)` to a file with `resolver` (`None` = not served).
    pub fn new(resolver: R) -> BlockServer<R> {
        BlockServer {
            resolver: Arc::new(resolver),
            max_blocks_per_request: MAX_BLOCKS_PER_REQUEST,
        }
    }

    /// Lowers the most blocks one `ReadBlocks` may name (at most [`MAX_BLOCKS_PER_REQUEST`]).
    pub fn with_max_blocks_per_request(mut self, max: usize) -> BlockServer<R> {
        self.max_blocks_per_request = max.clamp(1, MAX_BLOCKS_PER_REQUEST);
        self
    }

    fn resolve(&self, group: &str, resource: &str, block_size: u32) -> Result<PathBuf, Status> {
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(Status::invalid_argument(format!(
                "block_size {block_size} is out of range 1..={MAX_BLOCK_SIZE}"
            )));
        }
        (self.resolver)(group, resource)
            .ok_or_else(|| Status::not_found(format!("no resource {group}/{resource} here")))
    }

    /// Answers `Merkle`: hashes the resource's file and returns its leaves and root.
    ///
    /// # Errors
    /// `invalid_argument` for a bad block size, `not_found` for an unknown resource,
    /// `resource_exhausted` when the tree has more leaves than the wire allows, `unavailable`
    /// when the file cannot be read.
    pub async fn merkle(&self, req: MerkleRequest) -> Result<MerkleReply, Status> {
        let path = self.resolve(&req.group, &req.resource, req.block_size)?;
        let block_size = req.block_size;
        if req.block_count > 0 {
            return merkle_range(path, block_size, req.first_block, req.block_count).await;
        }
        let too_many = |blocks: u64| {
            Status::resource_exhausted(format!(
                "{blocks} blocks exceed the {MAX_WIRE_LEAVES} leaves a reply may carry; use larger blocks"
            ))
        };
        // Refuse before hashing when the file is already too large for one reply.
        let length = tokio::fs::metadata(&path)
            .await
            .map_err(|e| Status::unavailable(format!("stat {}: {e}", path.display())))?
            .len();
        let blocks = merkle::block_count(length, block_size);
        if blocks > MAX_WIRE_LEAVES as u64 {
            return Err(too_many(blocks));
        }
        let tree = tokio::task::spawn_blocking(move || scan::hash_file(&path, block_size))
            .await
            .map_err(|e| Status::internal(format!("hash task failed: {e}")))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if tree.leaves().len() > MAX_WIRE_LEAVES {
            return Err(too_many(tree.block_count()));
        }
        Ok(MerkleReply {
            root: tree.root().to_vec(),
            length: tree.length(),
            block_size,
            leaves: tree.leaves_bytes(),
            watermark: 0,
            ..Default::default()
        })
    }

    /// Answers `ReadBlocks`: the asked blocks in the asked order (the last may be partial).
    ///
    /// # Errors
    /// `invalid_argument` for a bad block size or too many blocks or bytes in one request,
    /// `not_found` for an unknown resource, `out_of_range` for a block past the end of the file,
    /// `unavailable` when the file cannot be read.
    pub async fn read_blocks(&self, req: ReadBlocksRequest) -> Result<ReadBlocksReply, Status> {
        let path = self.resolve(&req.group, &req.resource, req.block_size)?;
        crate::validate::check_read_blocks(&req, self.max_blocks_per_request)
            .map_err(Status::invalid_argument)?;
        let bs = u64::from(req.block_size);
        let blocks = req.blocks;
        tokio::task::spawn_blocking(move || -> Result<ReadBlocksReply, Status> {
            let unavailable = |op: &str, e: std::io::Error| {
                Status::unavailable(format!("{op} {}: {e}", path.display()))
            };
            let file = File::open(&path).map_err(|e| unavailable("open", e))?;
            let length = file.metadata().map_err(|e| unavailable("stat", e))?.len();
            let mut out = Vec::with_capacity(blocks.len());
            for index in blocks {
                let start = index.saturating_mul(bs);
                if start >= length {
                    return Err(Status::out_of_range(format!(
                        "block {index} starts at byte {start}, past the end {length} of {}",
                        path.display()
                    )));
                }
                let len = bs.min(length - start) as usize;
                let mut data = vec![0u8; len];
                file.read_exact_at(&mut data, start)
                    .map_err(|e| unavailable("read", e))?;
                out.push(Block { index, data });
            }
            Ok(ReadBlocksReply { blocks: out })
        })
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn a_ranged_merkle_answers_the_leaves_of_one_chunk_clipped_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let data: Vec<u8> = (0..(10 * 4096 + 100) as u32)
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let whole = MerkleTree::from_bytes(4096, &data).unwrap();
        let p = path.clone();
        let server = BlockServer::new(move |_: &str, _: &str| Some(p.clone()));
        let ask = |first, count| MerkleRequest {
            group: "g".into(),
            resource: "v".into(),
            block_size: 4096,
            first_block: first,
            block_count: count,
            ..Default::default()
        };
        // Blocks 4..8: four leaves equal to the whole tree's.
        let r = server.merkle(ask(4, 4)).await.unwrap();
        assert_eq!((r.first_block, r.length), (4, data.len() as u64));
        let leaves: Vec<u8> = whole.leaves()[4..8].iter().flatten().copied().collect();
        assert_eq!(r.leaves, leaves);
        // The last chunk is clipped: blocks 8, 9 and the partial block 10.
        let r = server.merkle(ask(8, 100)).await.unwrap();
        assert_eq!(r.leaves.len(), 3 * 32);
        assert_eq!(&r.leaves[64..], &whole.leaves()[10]);
        // Past the end: no leaves.
        assert!(server.merkle(ask(50, 4)).await.unwrap().leaves.is_empty());
        // Chunks put together give the whole tree.
        let mut all = Vec::new();
        for first in (0..11).step_by(3) {
            all.extend(server.merkle(ask(first, 3)).await.unwrap().leaves);
        }
        let back = MerkleTree::from_leaves_bytes(4096, data.len() as u64, &all).unwrap();
        assert_eq!(back.root(), whole.root());
    }

    #[test]
    fn verify_names_the_differing_byte_ranges() {
        let a = vec![1u8; 5 * 16 + 3];
        let mut b = a.clone();
        b[16] = 9;
        b[2 * 16 + 1] = 9;
        b[5 * 16] = 9;
        let ta = MerkleTree::from_bytes(16, &a).unwrap();
        let tb = MerkleTree::from_bytes(16, &b).unwrap();
        let r = verify(&ta, &tb).unwrap();
        assert!(!r.equal);
        assert_eq!(r.differing_blocks, vec![1..3, 5..6]);
        assert_eq!(r.differing_bytes, vec![16..48, 80..83]);
        assert_eq!(
            r.to_string(),
            "differ: 3 blocks, differing bytes 0x10..0x30, 0x50..0x53 (lengths 83 / 83)"
        );
        let same = verify(&ta, &ta).unwrap();
        assert!(same.equal && same.differing_blocks.is_empty());
    }

    #[test]
    fn verify_of_different_lengths_covers_the_longer_tail() {
        let a = vec![1u8; 100];
        let ta = MerkleTree::from_bytes(16, &a).unwrap();
        let tb = MerkleTree::from_bytes(16, &a[..40]).unwrap();
        let r = verify(&ta, &tb).unwrap();
        assert_eq!(r.differing_bytes, vec![32..100]);
        assert!(!r.equal);
    }

    #[test]
    fn check_blocks_refuses_a_block_that_does_not_match_the_leaf() {
        let src = MerkleTree::from_bytes(4, b"aaaabbbbcc").unwrap();
        let good = ReadBlocksReply {
            blocks: vec![
                Block {
                    index: 1,
                    data: b"bbbb".to_vec(),
                },
                Block {
                    index: 2,
                    data: b"cc".to_vec(),
                },
            ],
        };
        assert!(check_blocks(&[1, 2], &good, &src, false).is_ok());
        let mut bad = good.clone();
        bad.blocks[1].data = b"cd".to_vec();
        let err = check_blocks(&[1, 2], &bad, &src, false).unwrap_err();
        assert!(err.to_string().contains("block 2"), "{err}");
        assert!(check_blocks(&[2, 1], &good, &src, false).is_err());
        assert!(check_blocks(&[1], &good, &src, false).is_err());
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

    #[tokio::test]
    async fn block_server_enforces_limits_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 10_000]).unwrap();
        let path = p.clone();
        let server =
            BlockServer::new(move |g: &str, r: &str| (g == "g" && r == "r").then(|| path.clone()))
                .with_max_blocks_per_request(4);
        let req = |blocks: Vec<u64>, block_size| ReadBlocksRequest {
            group: "g".into(),
            resource: "r".into(),
            block_size,
            blocks,
        };
        let reply = server.read_blocks(req(vec![2, 0], 4096)).await.unwrap();
        assert_eq!(reply.blocks[0].index, 2);
        assert_eq!(reply.blocks[0].data.len(), 10_000 - 8192);
        assert_eq!(reply.blocks[1].data.len(), 4096);
        let too_many = server.read_blocks(req(vec![0; 5], 4096)).await.unwrap_err();
        assert_eq!(too_many.code(), tonic::Code::InvalidArgument);
        let past = server.read_blocks(req(vec![3], 4096)).await.unwrap_err();
        assert_eq!(past.code(), tonic::Code::OutOfRange);
        let big = server
            .read_blocks(req(vec![0], MAX_BLOCK_SIZE + 1))
            .await
            .unwrap_err();
        assert_eq!(big.code(), tonic::Code::InvalidArgument);
        let missing = server
            .merkle(MerkleRequest {
                group: "g".into(),
                resource: "other".into(),
                block_size: 4096,
                barrier: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        let m = server
            .merkle(MerkleRequest {
                group: "g".into(),
                resource: "r".into(),
                block_size: 4096,
                barrier: false,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((m.length, m.leaves.len()), (10_000, 3 * 32));
        // A (sparse) file with more blocks than a reply may carry is refused before hashing.
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len((MAX_WIRE_LEAVES as u64 + 1) * 4096)
            .unwrap();
        let huge = server
            .merkle(MerkleRequest {
                group: "g".into(),
                resource: "r".into(),
                block_size: 4096,
                barrier: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(huge.code(), tonic::Code::ResourceExhausted);
        let tree = MerkleTree::from_leaves_bytes(4096, m.length, &m.leaves).unwrap();
        assert_eq!(m.root, tree.root().to_vec());
    }
}
