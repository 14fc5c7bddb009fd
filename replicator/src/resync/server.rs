//! [`BlockServer`]: answers `Merkle` (whole or ranged) and `ReadBlocks` for resources a
//! resolver maps to local files. File I/O on the blocking pool.

use super::compression::{encode_block, worker_count, MAX_LEVEL};
use super::limits::MAX_BLOCKS_PER_REQUEST;
use crate::merkle::{self, MerkleTree, MAX_BLOCK_SIZE, MAX_WIRE_LEAVES};
use crate::scan;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use tandem_core::proto::{Block, MerkleReply, MerkleRequest, ReadBlocksReply, ReadBlocksRequest};
use tonic::Status;

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

    /// Answers `ReadBlocks`: the asked blocks in the asked order (the last may be partial),
    /// each zstd-compressed at the asked level when that makes it smaller, and with
    /// `leaves` each block's merkle leaf, hashed from the same read while the block is in the
    /// core's cache. Reading, hashing and compressing are spread over the cores
    /// ([`worker_count`]), each worker taking a contiguous part, the order kept.
    ///
    /// # Errors
    /// `invalid_argument` for a bad block size or too many blocks or bytes in one request,
    /// `not_found` for an unknown resource, `out_of_range` for a block past the end of the file,
    /// `unavailable` when the file cannot be read, `internal` when compression fails.
    pub async fn read_blocks(&self, req: ReadBlocksRequest) -> Result<ReadBlocksReply, Status> {
        let path = self.resolve(&req.group, &req.resource, req.block_size)?;
        crate::validate::check_read_blocks(&req, self.max_blocks_per_request)
            .map_err(Status::invalid_argument)?;
        let bs = u64::from(req.block_size);
        let level = req.zstd_level.clamp(0, MAX_LEVEL);
        let (blocks, leaves) = (req.blocks, req.leaves);
        tokio::task::spawn_blocking(move || -> Result<ReadBlocksReply, Status> {
            let unavailable = |op: &str, e: std::io::Error| {
                Status::unavailable(format!("{op} {}: {e}", path.display()))
            };
            let file = File::open(&path).map_err(|e| unavailable("open", e))?;
            let length = file.metadata().map_err(|e| unavailable("stat", e))?.len();
            if let Some(&index) = blocks.iter().find(|&&i| i.saturating_mul(bs) >= length) {
                return Err(Status::out_of_range(format!(
                    "block {index} starts at byte {}, past the end {length} of {}",
                    index.saturating_mul(bs),
                    path.display()
                )));
            }
            let workers = if level > 0 || leaves {
                worker_count()
            } else {
                1
            };
            let per = blocks.len().div_ceil(workers).max(1);
            let parts: Vec<Result<Vec<Block>, Status>> = std::thread::scope(|s| {
                let handles: Vec<_> = blocks
                    .chunks(per)
                    .map(|part| {
                        let file = &file;
                        s.spawn(move || read_part(file, part, (bs, length), level, leaves))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(Status::internal("a read worker panicked")))
                    })
                    .collect()
            });
            let mut out = Vec::with_capacity(blocks.len());
            for part in parts {
                out.extend(part.map_err(|s| {
                    Status::new(s.code(), format!("{}: {}", path.display(), s.message()))
                })?);
            }
            Ok(ReadBlocksReply { blocks: out })
        })
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))?
    }
}

/// Reads blocks `part` (each starting before `length`) of `file`, hashes each into its leaf
/// when `leaves` asks, and compresses each at `level` (0: raw). Blocking.
fn read_part(
    file: &File,
    part: &[u64],
    (bs, length): (u64, u64),
    level: i32,
    leaves: bool,
) -> Result<Vec<Block>, Status> {
    let mut enc = match level {
        0 => None,
        l => Some(
            zstd::bulk::Compressor::new(l)
                .map_err(|e| Status::internal(format!("zstd level {l}: {e}")))?,
        ),
    };
    let mut out = Vec::with_capacity(part.len());
    for &index in part {
        let start = index.saturating_mul(bs);
        let len = bs.min(length.saturating_sub(start)) as usize;
        let mut data = vec![0u8; len];
        file.read_exact_at(&mut data, start)
            .map_err(|e| Status::unavailable(format!("read block {index}: {e}")))?;
        let leaf = if leaves {
            merkle::leaf_hash(&data).to_vec()
        } else {
            Vec::new()
        };
        let (data, raw_length) = match enc.as_mut() {
            None => (data, 0),
            Some(enc) => encode_block(enc, data)
                .map_err(|e| Status::internal(format!("zstd block {index}: {e}")))?,
        };
        out.push(Block {
            index,
            data,
            raw_length,
            leaf,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::resync::compression::decode_block;

    #[tokio::test]
    async fn read_blocks_compresses_each_block_only_when_it_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        // Blocks 0..8 compress (text), 8..16 do not (noise); a partial tail block.
        let mut data = b"replica journal epoch ".repeat(8 * 4096 / 22 + 1);
        data.truncate(8 * 4096);
        data.extend(crate::testdata::noise(8 * 4096 + 100));
        std::fs::write(&p, &data).unwrap();
        let path = p.clone();
        let server = BlockServer::new(move |_: &str, _: &str| Some(path.clone()));
        let asked: Vec<u64> = (0..17).rev().collect();
        for (level, leaves) in [(0, false), (1, false), (3, false), (0, true), (1, true)] {
            let reply = server
                .read_blocks(ReadBlocksRequest {
                    group: "g".into(),
                    resource: "r".into(),
                    block_size: 4096,
                    blocks: asked.clone(),
                    zstd_level: level,
                    leaves,
                })
                .await
                .unwrap();
            let order: Vec<u64> = reply.blocks.iter().map(|b| b.index).collect();
            assert_eq!(order, asked, "level {level}: order kept");
            for b in reply.blocks {
                let at = b.index as usize * 4096;
                let want = &data[at..(at + 4096).min(data.len())];
                let framed = b.raw_length != 0;
                assert_eq!(
                    framed,
                    level > 0 && b.index < 8,
                    "level {level} block {}",
                    b.index
                );
                let leaf = if leaves {
                    merkle::leaf_hash(want).to_vec()
                } else {
                    Vec::new()
                };
                assert_eq!(b.leaf, leaf, "level {level} block {}: its leaf", b.index);
                assert_eq!(decode_block(b.data, b.raw_length, 4096).unwrap(), want);
            }
        }
    }

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
            ..Default::default()
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
