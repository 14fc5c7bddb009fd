//! Resync over real gRPC on loopback: a `BlockServer` behind a minimal `Replication` service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_core::mixed::XorShift;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::replication_server::{Replication, ReplicationServer};
use tandem_core::proto::{
    MerkleReply, MerkleRequest, ReadBlocksReply, ReadBlocksRequest, ResyncProgress, ResyncRequest,
    ShipRequest, ShipResponse, SnapshotReply, SnapshotRequest,
};
use tandem_replicator::merkle::{self, MerkleTree};
use tandem_replicator::resync::{self, BlockServer, ResyncError, ResyncOptions};
use tandem_replicator::scan;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

const BS: u32 = 64 << 10;
const MIB: usize = 1 << 20;

type Resolver = Box<dyn Fn(&str, &str) -> Option<PathBuf> + Send + Sync>;

/// Test-only service: `Merkle` and `ReadBlocks` go to the block server, `Ship` is not served.
struct TestReplication {
    blocks: BlockServer<Resolver>,
    tamper: Tamper,
}

/// What the test service does to `ReadBlocks` replies.
#[derive(Clone, Copy, Default)]
enum Tamper {
    #[default]
    Nothing,
    /// Answers no leaves, as a source that predates them.
    StripLeaves,
    /// Flips a bit of this block's leaf.
    BadLeaf(u64),
}

#[tonic::async_trait]
impl Replication for TestReplication {
    type ShipStream = futures::stream::Empty<Result<ShipResponse, Status>>;
    type ResyncStream = futures::stream::Empty<Result<ResyncProgress, Status>>;
    type VerifyStream = futures::stream::Empty<Result<tandem_core::proto::VerifyProgress, Status>>;

    async fn run_step(
        &self,
        _request: Request<tandem_core::proto::RunStepRequest>,
    ) -> Result<Response<tandem_core::proto::RunStepReply>, Status> {
        Err(Status::unimplemented("run_step is not served by this test"))
    }

    async fn verify(
        &self,
        _request: Request<tandem_core::proto::VerifyRequest>,
    ) -> Result<Response<Self::VerifyStream>, Status> {
        Err(Status::unimplemented("verify is not served by this test"))
    }

    async fn resync(
        &self,
        _request: Request<ResyncRequest>,
    ) -> Result<Response<Self::ResyncStream>, Status> {
        Err(Status::unimplemented("resync is not served by this test"))
    }

    async fn ship(
        &self,
        _request: Request<Streaming<ShipRequest>>,
    ) -> Result<Response<Self::ShipStream>, Status> {
        Err(Status::unimplemented("ship is not served by this test"))
    }

    async fn merkle(
        &self,
        request: Request<MerkleRequest>,
    ) -> Result<Response<MerkleReply>, Status> {
        self.blocks
            .merkle(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn read_blocks(
        &self,
        request: Request<ReadBlocksRequest>,
    ) -> Result<Response<ReadBlocksReply>, Status> {
        let mut reply = self.blocks.read_blocks(request.into_inner()).await?;
        for b in &mut reply.blocks {
            match self.tamper {
                Tamper::Nothing => {}
                Tamper::StripLeaves => b.leaf.clear(),
                Tamper::BadLeaf(i) if i == b.index && !b.leaf.is_empty() => b.leaf[0] ^= 1,
                Tamper::BadLeaf(_) => {}
            }
        }
        Ok(Response::new(reply))
    }

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        Err(Status::unimplemented("snapshot is not served by this test"))
    }

    async fn delete_snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        Err(Status::unimplemented(
            "delete_snapshot is not served by this test",
        ))
    }

    async fn checkpoint(
        &self,
        _request: Request<tandem_core::proto::CheckpointRequest>,
    ) -> Result<Response<tandem_core::proto::CheckpointReply>, Status> {
        Err(Status::unimplemented(
            "checkpoint is not served by this test",
        ))
    }

    async fn checkpoints(
        &self,
        _request: Request<tandem_core::proto::CheckpointsRequest>,
    ) -> Result<Response<tandem_core::proto::CheckpointsReply>, Status> {
        Err(Status::unimplemented(
            "checkpoints is not served by this test",
        ))
    }

    async fn recover(
        &self,
        _request: Request<tandem_core::proto::RecoverRequest>,
    ) -> Result<Response<tandem_core::proto::RecoverReply>, Status> {
        Err(Status::unimplemented("recover is not served by this test"))
    }
    async fn archive_wal(
        &self,
        _request: Request<tandem_core::proto::ArchiveWalRequest>,
    ) -> Result<Response<tandem_core::proto::ArchiveWalReply>, Status> {
        Err(Status::unimplemented(
            "archive_wal is not served by this test",
        ))
    }
}

/// Serves `path` as group "g", resource "vol" on 127.0.0.1:0; returns a connected client.
async fn serve(path: &Path, zstd: bool) -> ReplicationClient<tonic::transport::Channel> {
    serve_with(path, zstd, Tamper::Nothing).await
}

async fn serve_with(
    path: &Path,
    zstd: bool,
    tamper: Tamper,
) -> ReplicationClient<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let resolver: Resolver =
        Box::new(move |g: &str, r: &str| (g == "g" && r == "vol").then(|| path.clone()));
    let mut svc = ReplicationServer::new(TestReplication {
        blocks: BlockServer::new(resolver),
        tamper,
    })
    .max_encoding_message_size(resync::MAX_MESSAGE_BYTES);
    if zstd {
        svc = svc
            .send_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Zstd);
    }
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap()
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = ReplicationClient::new(channel);
    if zstd {
        client.accept_compressed(CompressionEncoding::Zstd)
    } else {
        client
    }
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new(seed);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Picks `n` distinct block indexes below `blocks`, sorted.
fn pick_blocks(seed: u64, blocks: u64, n: usize) -> Vec<u64> {
    let mut rng = XorShift::new(seed);
    let mut set = BTreeSet::new();
    while set.len() < n {
        set.insert(rng.below(blocks));
    }
    set.into_iter().collect()
}

/// Source and target contents: target = source with `changed` blocks overwritten, then cut or
/// extended to `target_len`.
fn make_pair(source_len: usize, target_len: usize, changed: &[u64]) -> (Vec<u8>, Vec<u8>) {
    let source = noise(1, source_len);
    let mut target = source.clone();
    target.resize(target_len, 0xee);
    for &i in changed {
        let start = i as usize * BS as usize;
        let end = (start + BS as usize).min(target.len());
        if start < end {
            target[start..end].copy_from_slice(&noise(100 + i, end - start));
        }
    }
    (source, target)
}

async fn local_tree(path: &Path) -> MerkleTree {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || scan::hash_file(&path, BS))
        .await
        .unwrap()
        .unwrap()
}

/// Writes both files, checks verify names `expected_bytes` before, resyncs, checks the result.
async fn resync_case(
    source: &[u8],
    target: &[u8],
    expected_bytes: Vec<std::ops::Range<u64>>,
    zstd: bool,
    options: ResyncOptions,
) -> resync::ResyncReport {
    let dir = tempfile::tempdir().unwrap();
    let (src_path, dst_path) = (dir.path().join("source"), dir.path().join("target"));
    std::fs::write(&src_path, source).unwrap();
    std::fs::write(&dst_path, target).unwrap();
    let client = serve(&src_path, zstd).await;
    let mut client = client
        .clone()
        .max_decoding_message_size(resync::MAX_MESSAGE_BYTES);

    // 1. Verify before: the exact differing byte ranges.
    let (remote, _) = resync::fetch_tree(&mut client, "g", "vol", BS)
        .await
        .unwrap();
    let before = resync::verify(&remote, &local_tree(&dst_path).await).unwrap();
    assert!(!before.equal);
    assert_eq!(before.differing_bytes, expected_bytes, "{before}");

    // 2. Resync.
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        resync::resync(&mut client, "g", "vol", &dst_path, BS, options),
    )
    .await
    .unwrap()
    .unwrap();

    // 3. Byte-identical, and verify says equal.
    assert!(
        std::fs::read(&dst_path).unwrap() == source,
        "target differs from source"
    );
    let after = resync::verify(&remote, &local_tree(&dst_path).await).unwrap();
    assert!(after.equal && after.differing_blocks.is_empty(), "{after}");
    assert_eq!(report.root, remote.root());
    assert_eq!(report.differing_bytes, expected_bytes);
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_moves_only_the_one_percent_of_blocks_that_differ() {
    let len = 64 * MIB;
    let blocks = (len / BS as usize) as u64;
    let changed = pick_blocks(7, blocks, (blocks / 100) as usize);
    let (source, target) = make_pair(len, len, &changed);
    let expected = merkle::byte_ranges(&merkle::coalesce(changed.clone()), BS, len as u64);
    let report = resync_case(&source, &target, expected, false, ResyncOptions::default()).await;
    assert_eq!(report.blocks_total, blocks);
    assert_eq!(report.blocks_differing, changed.len() as u64);
    let limit = len as u64 * 3 / 100;
    assert!(
        report.bytes_sent_over_wire < limit,
        "{} bytes over the wire, limit {limit}",
        report.bytes_sent_over_wire
    );
    // At least the differing blocks themselves moved.
    assert!(report.bytes_sent_over_wire >= changed.len() as u64 * u64::from(BS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_reports_hashing_then_copying_progress_up_to_the_whole() {
    let len = 16 * MIB;
    let blocks = (len / BS as usize) as u64;
    let changed = pick_blocks(3, blocks, 20);
    let (source, target) = make_pair(len, len, &changed);
    let expected = merkle::byte_ranges(&merkle::coalesce(changed.clone()), BS, len as u64);
    let ticks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = ticks.clone();
    let options = ResyncOptions {
        batch_blocks: 4,
        progress: Some(std::sync::Arc::new(move |t: resync::ResyncTick| {
            sink.lock().unwrap().push(t)
        })),
        ..ResyncOptions::default()
    };
    resync_case(&source, &target, expected, false, options).await;
    let ticks = ticks.lock().unwrap().clone();
    let hashing: Vec<_> = ticks.iter().filter(|t| t.phase == "hashing").collect();
    let copying: Vec<_> = ticks.iter().filter(|t| t.phase == "copying").collect();
    assert!(
        hashing.len() >= 2,
        "hashing reported as it goes: {hashing:?}"
    );
    assert_eq!(hashing.last().unwrap().bytes_done, len as u64);
    assert!(hashing
        .windows(2)
        .all(|w| w[0].bytes_done <= w[1].bytes_done));
    let first_copy = ticks.iter().position(|t| t.phase == "copying").unwrap();
    assert!(
        ticks[first_copy..].iter().all(|t| t.phase == "copying"),
        "copying comes after hashing"
    );
    // 20 blocks in batches of 4: a tick before the first batch and after each of the five.
    assert_eq!(copying.len(), 6, "{copying:?}");
    let last = copying.last().unwrap();
    assert_eq!((last.blocks_copied, last.blocks_differing), (20, 20));
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(copying
        .windows(2)
        .all(|w| w[0].wire_bytes < w[1].wire_bytes));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_extends_a_shorter_target_and_fixes_its_partial_tail() {
    // Source 64 MiB + 1000 bytes; target 64 MiB - 30000 bytes with two changed blocks.
    let src_len = 64 * MIB + 1000;
    let dst_len = 64 * MIB - 30_000;
    let changed = [3u64, 700];
    let (source, target) = make_pair(src_len, dst_len, &changed);
    let last_full = (dst_len / BS as usize) as u64; // the target's partial last block
    let mut expected_blocks: Vec<u64> = changed.to_vec();
    expected_blocks.extend(last_full..=(src_len / BS as usize) as u64);
    let expected = merkle::byte_ranges(
        &merkle::coalesce(expected_blocks.clone()),
        BS,
        src_len as u64,
    );
    assert_eq!(
        expected.last().unwrap(),
        &(last_full * u64::from(BS)..src_len as u64)
    );
    // Verified by reading back the written blocks only.
    let options = ResyncOptions {
        full_rehash: false,
        ..ResyncOptions::default()
    };
    let report = resync_case(&source, &target, expected, false, options).await;
    assert_eq!(report.blocks_differing, expected_blocks.len() as u64);
    assert_eq!(report.length, src_len as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_truncates_a_longer_target_over_zstd() {
    // Target is 200 KiB longer than the source and differs in block 10: compression on.
    let src_len = 8 * MIB + 123;
    let dst_len = src_len + 200 * 1024;
    let (source, target) = make_pair(src_len, dst_len, &[10]);
    let last = (src_len / BS as usize) as u64;
    let expected = merkle::byte_ranges(
        &merkle::coalesce(
            [10].into_iter()
                .chain(last..=(dst_len / BS as usize) as u64),
        ),
        BS,
        dst_len as u64,
    );
    let report = resync_case(&source, &target, expected, true, ResyncOptions::default()).await;
    // Only blocks 10 and the source's partial last block are pulled; the rest is cut off.
    assert_eq!(report.blocks_differing, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_creates_a_missing_target() {
    let dir = tempfile::tempdir().unwrap();
    let source = noise(9, 3 * MIB + 5);
    let src_path = dir.path().join("source");
    std::fs::write(&src_path, &source).unwrap();
    let mut client = serve(&src_path, false).await;
    let dst = dir.path().join("new-target");
    let report = resync::resync(&mut client, "g", "vol", &dst, BS, ResyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.blocks_differing, report.blocks_total);
    assert!(std::fs::read(&dst).unwrap() == source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_sync_checks_each_block_against_the_leaf_sent_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = tandem_core::mixed::mixed(5, 5 * MIB + 77);
    let src_path = dir.path().join("source");
    std::fs::write(&src_path, &source).unwrap();
    let want = MerkleTree::from_bytes(BS, &source).unwrap();
    // A missing target, an empty one and a sparse one (nothing allocated, as a new replica's
    // image): no hashing phase, every block checked and written; at the end the whole target
    // re-hashed, or (as the node runs it) each block read back as it was written.
    let mut client = serve(&src_path, false).await;
    let cases = [None, Some(0), Some(source.len() as u64)]
        .into_iter()
        .flat_map(|existing| [(existing, true), (existing, false)]);
    for (i, (existing, full_rehash)) in cases.enumerate() {
        let dst = dir.path().join(format!("fresh-{i}"));
        if let Some(len) = existing {
            std::fs::File::create(&dst).unwrap().set_len(len).unwrap();
        }
        let ticks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = ticks.clone();
        let options = ResyncOptions {
            batch_blocks: 8,
            full_rehash,
            compression: resync::Compression::Zstd(1),
            progress: Some(std::sync::Arc::new(move |t: resync::ResyncTick| {
                sink.lock().unwrap().push(t)
            })),
            ..ResyncOptions::default()
        };
        let report = resync::resync(&mut client, "g", "vol", &dst, BS, options)
            .await
            .unwrap();
        assert_eq!(report.blocks_differing, report.blocks_total, "#{i}");
        assert_eq!((report.root, report.zstd_level), (want.root(), 1), "#{i}");
        assert!(
            report.bytes_sent_over_wire < source.len() as u64 / 2,
            "#{i}"
        );
        assert!(std::fs::read(&dst).unwrap() == source, "#{i}");
        let ticks = ticks.lock().unwrap();
        assert!(
            ticks.iter().all(|t| t.phase == "copying"),
            "#{i}: {ticks:?}"
        );
        assert_eq!(ticks.last().unwrap().blocks_copied, report.blocks_total);
    }
    // A block that does not match the leaf sent with it is refused, from a live source too.
    let mut client = serve_with(&src_path, false, Tamper::BadLeaf(40)).await;
    for live_source in [false, true] {
        let dst = dir.path().join(format!("bad-{live_source}"));
        let options = ResyncOptions {
            live_source,
            ..ResyncOptions::default()
        };
        let err = resync::resync(&mut client, "g", "vol", &dst, BS, options)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ResyncError::BadReply { reason, .. } if reason.contains("block 40")),
            "live {live_source}: {err}"
        );
        assert!(!err.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_sync_leaves_the_zero_blocks_of_a_sparse_target_unwritten() {
    use std::os::unix::fs::MetadataExt as _;
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB of data, 8 MiB of zeros, 64 KiB of data.
    let mut source = noise(13, 4 * MIB);
    source.resize(12 * MIB, 0);
    source.extend(noise(14, 64 << 10));
    let src_path = dir.path().join("source");
    std::fs::write(&src_path, &source).unwrap();
    let dst = dir.path().join("sparse");
    std::fs::File::create(&dst)
        .unwrap()
        .set_len(source.len() as u64)
        .unwrap();
    if std::fs::metadata(&dst).unwrap().blocks() != 0 {
        eprintln!("this file system allocates a set_len file; nothing to show");
        return;
    }
    let mut client = serve(&src_path, false).await;
    // As the node runs it: each block (a hole too) read back as it is written.
    let options = ResyncOptions {
        full_rehash: false,
        ..ResyncOptions::default()
    };
    let report = resync::resync(&mut client, "g", "vol", &dst, BS, options)
        .await
        .unwrap();
    assert_eq!(report.blocks_differing, report.blocks_total);
    assert!(std::fs::read(&dst).unwrap() == source);
    let allocated = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(
        allocated < 6 * MIB as u64,
        "{allocated} bytes allocated for 4 MiB + 64 KiB of data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_sync_from_a_source_without_leaves_hashes_both_sides_first() {
    let dir = tempfile::tempdir().unwrap();
    let source = noise(12, 2 * MIB + 3);
    let src_path = dir.path().join("source");
    std::fs::write(&src_path, &source).unwrap();
    let mut client = serve_with(&src_path, false, Tamper::StripLeaves).await;
    let dst = dir.path().join("fresh");
    let report = resync::resync(&mut client, "g", "vol", &dst, BS, ResyncOptions::default())
        .await
        .unwrap();
    assert_eq!(report.blocks_differing, report.blocks_total);
    assert!(std::fs::read(&dst).unwrap() == source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_refuses_a_source_longer_than_the_target_may_be_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = noise(10, MIB + 1);
    let src_path = dir.path().join("source");
    std::fs::write(&src_path, &source).unwrap();
    let target = noise(11, MIB);
    let dst = dir.path().join("target");
    std::fs::write(&dst, &target).unwrap();
    let mut client = serve(&src_path, false).await;
    let options = ResyncOptions {
        max_length: Some(MIB as u64),
        ..ResyncOptions::default()
    };
    let err = resync::resync(&mut client, "g", "vol", &dst, BS, options)
        .await
        .unwrap_err();
    assert!(matches!(err, ResyncError::OutOfBounds { .. }), "{err:?}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("target: source length: out of bounds")
            && msg.contains("past the size 1048576"),
        "{msg}"
    );
    assert!(
        std::fs::read(&dst).unwrap() == target,
        "the target is untouched"
    );
    // At the bound exactly, the resync goes through.
    let options = ResyncOptions {
        max_length: Some(MIB as u64 + 1),
        ..ResyncOptions::default()
    };
    resync::resync(&mut client, "g", "vol", &dst, BS, options)
        .await
        .unwrap();
    assert!(std::fs::read(&dst).unwrap() == source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_of_an_unknown_resource_is_not_found_and_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("source");
    std::fs::write(&src_path, b"x").unwrap();
    let mut client = serve(&src_path, false).await;
    let err = resync::resync(
        &mut client,
        "g",
        "other",
        &dir.path().join("t"),
        BS,
        ResyncOptions::default(),
    )
    .await
    .unwrap_err();
    match &err {
        ResyncError::Rpc { rpc, status, .. } => {
            assert_eq!((*rpc, status.code()), ("Merkle", tonic::Code::NotFound));
        }
        other => panic!("expected an Rpc error, got {other}"),
    }
    assert!(!err.is_retryable());
    assert!(
        !dir.path().join("t").exists(),
        "target created for a refused resync"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_blocks_cross_at_the_set_or_chosen_level_and_land_identical() {
    // Mixed data (zstd ratio about 3): 4 of 257 blocks of 64 KiB differ, the partial tail too.
    let len = 16 * MIB + 1000;
    let source = tandem_core::mixed::mixed(3, len);
    let mut target = source.clone();
    let changed = [3u64, 40, 41, 256];
    for &i in &changed {
        let at = i as usize * BS as usize;
        let end = (at + BS as usize).min(len);
        target[at..end].copy_from_slice(&tandem_core::mixed::mixed(900 + i, end - at));
    }
    let expected = merkle::byte_ranges(&merkle::coalesce(changed), BS, len as u64);
    let raw = changed.len() as u64 * u64::from(BS);
    let cases = [
        // (setting, link cap, level expected: None = any level above 0)
        (resync::Compression::Off, None, Some(0)),
        (resync::Compression::Zstd(3), None, Some(3)),
        // A 1 MB/s link is far slower than zstd: auto compresses.
        (resync::Compression::Auto, Some(1_000_000), None),
    ];
    for (i, (compression, cap, level)) in cases.into_iter().enumerate() {
        let options = ResyncOptions {
            compression,
            link_bytes_per_sec: cap,
            ..ResyncOptions::default()
        };
        let r = resync_case(&source, &target, expected.clone(), false, options).await;
        assert_eq!(r.blocks_differing, changed.len() as u64, "#{i}");
        match level {
            Some(l) => assert_eq!(r.zstd_level, l, "#{i}: level"),
            None => assert!(r.zstd_level > 0, "#{i}: expect a level got 0"),
        }
        if r.zstd_level > 0 && compression != resync::Compression::Auto {
            assert!(
                r.bytes_sent_over_wire < raw / 2,
                "#{i}: {} bytes for {raw} raw",
                r.bytes_sent_over_wire
            );
        }
    }
}
