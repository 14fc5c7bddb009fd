//! The copy phase of a resync: pulls the differing blocks with `ReadBlocks`, several requests in
//! flight, decodes and checks each block against the source's leaf on all cores, keeps what a
//! failback overwrites, and writes. Network and file I/O; the checks are pure.

use super::compression::{
    choose_level, decode_block, worker_count, Compression, LinkEstimate, PROBE_BLOCKS,
};
use super::error::{blocking, io, rpc_err, ResyncError};
use super::limits::{MAX_BLOCKS_PER_REQUEST, MAX_REPLY_BYTES};
use super::options::ResyncTick;
use crate::bounds::block_bounds;
use crate::merkle::{self, MerkleTree};
use crate::quarantine::QuarantineWriter;
use futures::StreamExt as _;
use prost::Message as _;
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
}

/// What the copy of the differing blocks pulls from where, and how.
pub(super) struct Copy<'a> {
    pub(super) group: &'a str,
    pub(super) resource: &'a str,
    pub(super) source: Arc<MerkleTree>,
    pub(super) live_source: bool,
    pub(super) batch_blocks: usize,
    pub(super) keeper: Option<Keeper>,
    pub(super) compression: Compression,
    /// A configured cap on the link, bytes per second.
    pub(super) link_cap: Option<u64>,
}

/// What the copy did: protobuf bytes exchanged (with those before it), and the zstd level the
/// blocks crossed at (0: raw).
pub(super) struct Copied {
    pub(super) wire: u64,
    pub(super) level: i32,
}

/// Pulls the `wanted` blocks with `ReadBlocks` and writes them (old content kept first when
/// quarantining). Up to [`PIPELINE_DEPTH`] requests are in flight while one reply is decoded,
/// checked and written on the blocking pool, so memory is bounded by `PIPELINE_DEPTH + 1`
/// batches. With [`Compression::Auto`] a first probe batch crosses raw and the level for the
/// rest is chosen from it. `wire` is the protobuf bytes exchanged before.
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
        copied: 0,
        differing: wanted.len() as u64,
        writing: None,
        tick: tick.clone(),
        bs,
    };
    run.report();
    let fetcher = Fetcher {
        client: client.clone(),
        group: copy.group.to_string(),
        resource: copy.resource.to_string(),
        block_size: target.block_size,
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
    if let Some(last) = run.writing.take() {
        last.await.map_err(|e| ResyncError::Task(e.to_string()))??;
    }
    Ok(Copied {
        wire: run.wire,
        level,
    })
}

/// The state of one copy: bytes and blocks so far, and the write task in progress.
struct Run {
    wire: u64,
    copied: u64,
    differing: u64,
    writing: Option<JoinHandle<Result<(), ResyncError>>>,
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

    /// Checks the reply names `batch`, waits for the previous write, and hands this one to the
    /// blocking pool: decode and check every block (all cores), keep the old content when
    /// quarantining, write.
    async fn write(
        &mut self,
        copy: &Copy<'_>,
        target: &Target,
        batch: &[u64],
        reply: ReadBlocksReply,
    ) -> Result<(), ResyncError> {
        check_indexes(batch, &reply)?;
        if let Some(previous) = self.writing.take() {
            previous
                .await
                .map_err(|e| ResyncError::Task(e.to_string()))??;
        }
        let (f, path, k) = (
            target.file.clone(),
            target.path.clone(),
            copy.keeper.clone(),
        );
        let (local_len, bs, block_size) = (target.old_len, self.bs, target.block_size);
        let (source, live) = (copy.source.clone(), copy.live_source);
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let blocks = decode_all(reply, &source, live, block_size, &path)?;
            if let Some(k) = &k {
                let indexes: Vec<u64> = blocks.iter().map(|b| b.0).collect();
                keep_old(k, &f, &path, &indexes, bs, local_len)?;
            }
            for (index, data) in &blocks {
                f.write_all_at(data, index * bs)
                    .map_err(io("write", &path))?;
            }
            Ok(())
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

/// Blocks decoded and checked: `(index, bytes)`.
type Decoded = Vec<(u64, Vec<u8>)>;

/// Decodes every block of `reply` and checks it (length bounds, leaf), spread over the cores.
/// Blocking.
fn decode_all(
    reply: ReadBlocksReply,
    source: &MerkleTree,
    live: bool,
    block_size: u32,
    path: &Path,
) -> Result<Decoded, ResyncError> {
    let workers = worker_count();
    let mut blocks = reply.blocks;
    let per = blocks.len().div_ceil(workers).max(1);
    let mut parts: Vec<Vec<tandem_core::proto::Block>> = Vec::new();
    while blocks.len() > per {
        let tail = blocks.split_off(per);
        parts.push(std::mem::replace(&mut blocks, tail));
    }
    parts.push(blocks);
    let decoded: Vec<Result<Decoded, ResyncError>> = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                s.spawn(move || {
                    part.into_iter()
                        .map(|b| decode_checked(b, source, live, block_size, path))
                        .collect()
                })
            })
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
    for part in decoded {
        out.extend(part?);
    }
    Ok(out)
}

/// One pulled block, decoded, refused when it reaches past the source's length or (unless the
/// source is live) does not match the source's leaf. Pure but for the decompression.
fn decode_checked(
    block: tandem_core::proto::Block,
    source: &MerkleTree,
    live: bool,
    block_size: u32,
    path: &Path,
) -> Result<(u64, Vec<u8>), ResyncError> {
    let index = block.index;
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
        source.length(),
    )
    .map_err(|e| ResyncError::OutOfBounds {
        path: path.to_path_buf(),
        what: format!("block {index}"),
        source: e,
    })?;
    let leaf = source.leaves().get(index as usize);
    if !live && leaf != Some(&merkle::leaf_hash(&data)) {
        return Err(ResyncError::BadReply {
            rpc: "ReadBlocks",
            reason: format!(
                "block {index} ({} bytes) does not match the source's leaf",
                data.len()
            ),
        });
    }
    Ok((index, data))
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
        }
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
        let src = MerkleTree::from_bytes(4, b"aaaabbbbcc").unwrap();
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
        };
        assert_eq!(
            decode_checked(wire, &src, false, 4, p).unwrap(),
            (1, b"bbbb".to_vec())
        );
        let lying = Block {
            index: 1,
            data: frame,
            raw_length: 3,
        };
        assert!(decode_checked(lying, &src, true, 4, p).is_err());
    }

    #[test]
    fn a_pulled_block_past_the_source_length_is_refused_naming_the_file() {
        let src = MerkleTree::from_bytes(4, b"aaaabbbbcc").unwrap();
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
        let src = MerkleTree::from_bytes(4, &data).unwrap();
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
