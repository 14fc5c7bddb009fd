//! Verify at barriers, chunk by chunk: barrier `Merkle` calls through a [`MerkleSource`] (the
//! primary over gRPC, or the primary's own backend), retried while the replica catches up,
//! put together into both whole trees and compared. Network I/O only through the source.

use super::compare::{verify, VerifyReport};
use super::error::{rpc_err, ResyncError};
use crate::merkle::{self, Hash, MerkleTree, MAX_WIRE_LEAVES};
use std::time::{Duration, Instant};
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{MerkleReply, MerkleRequest};
use tonic::transport::Channel;
use tonic::Status;

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
