//! `Replication.Verify` over real gRPC on loopback: a primary `GroupPipeline` shipping to a
//! replica `ReplicationService`, and the primary's service answering Verify through a barrier
//! merkle backend that holds the pipeline's seq and asks the replica for its leaves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::frame::Change;
use tandem_core::mixed::mixed;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{
    MerkleReply, MerkleRequest, ReadBlocksReply, ReadBlocksRequest, VerifyProgress, VerifyRequest,
};
use tandem_replicator::apply::ReplicaGroup;
use tandem_replicator::pipeline::{GroupPipeline, Mode, PipelineConfig};
use tandem_replicator::receive::{serve, BlockSource, ReplicationService};
use tandem_replicator::resync::BlockServer;
use tandem_replicator::ship::ShipConfig;
use tandem_replicator::verify::Catalog;
use tonic::Status;

const VOL: u64 = 4 << 20;
const BS: u32 = 4096;
const GROUP: &str = "g";

type Resolver = Box<dyn Fn(&str, &str) -> Option<PathBuf> + Send + Sync>;

fn file_server(path: &Path) -> BlockServer<Resolver> {
    let path = path.to_path_buf();
    BlockServer::new(Box::new(move |g: &str, r: &str| {
        (g == GROUP && r == "vol").then(|| path.clone())
    }) as Resolver)
}

/// The replica's backend: its copy, hashed as it is.
struct ReplicaBlocks(BlockServer<Resolver>);

#[tonic::async_trait]
impl BlockSource for ReplicaBlocks {
    async fn merkle(&self, req: MerkleRequest) -> Result<MerkleReply, Status> {
        self.0.merkle(req).await
    }
    async fn read_blocks(&self, req: ReadBlocksRequest) -> Result<ReadBlocksReply, Status> {
        self.0.read_blocks(req).await
    }
}

/// The primary's backend: a barrier waits (up to 200 ms, else `unavailable`) for the replica
/// to hold the pipeline's last seq, then hashes both copies, as the node's backend does.
struct PrimaryBlocks {
    own: BlockServer<Resolver>,
    /// `None`: this replicator is not the group's primary.
    pipeline: Option<Arc<GroupPipeline>>,
    replica: String,
}

#[tonic::async_trait]
impl BlockSource for PrimaryBlocks {
    async fn merkle(&self, req: MerkleRequest) -> Result<MerkleReply, Status> {
        if !req.barrier {
            return self.own.merkle(req).await;
        }
        let p = self
            .pipeline
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("not the primary of the group"))?;
        let seq = p.progress().last_captured_seq;
        tokio::time::timeout(Duration::from_millis(200), p.wait_replica_durable(seq))
            .await
            .map_err(|_| Status::unavailable(format!("the replica did not reach seq {seq}")))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let plain = MerkleRequest {
            barrier: false,
            ..req
        };
        let mut own = self.own.merkle(plain.clone()).await?;
        own.watermark = seq.0;
        let mut c = ReplicationClient::connect(self.replica.clone())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let r = c.merkle(plain).await?.into_inner();
        own.peer_root = r.root;
        own.peer_leaves = r.leaves;
        own.peer_watermark = r.watermark;
        own.peer_length = r.length;
        Ok(own)
    }
    async fn read_blocks(&self, req: ReadBlocksRequest) -> Result<ReadBlocksReply, Status> {
        self.own.read_blocks(req).await
    }
}

async fn start(svc: ReplicationService) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        serve(svc, listener, std::future::pending()).await.unwrap();
    });
    addr
}

fn zeroed(path: &Path) {
    std::fs::File::create(path).unwrap().set_len(VOL).unwrap();
}

/// A replica serving `dir/vol.img`; returns its url.
async fn start_replica(dir: &Path) -> String {
    let vol = dir.join("vol.img");
    zeroed(&vol);
    let group = ReplicaGroup::open(
        GROUP,
        &dir.join("meta"),
        HashMap::from([("vol".to_owned(), vol.clone())]),
    )
    .unwrap();
    let svc =
        ReplicationService::new().with_block_source(Arc::new(ReplicaBlocks(file_server(&vol))));
    svc.add_group(Arc::new(group));
    format!("http://{}", start(svc).await)
}

/// The primary's service answering Verify; returns a client of it.
async fn start_primary(
    vol: &Path,
    pipeline: Option<Arc<GroupPipeline>>,
    replica: &str,
) -> ReplicationClient<tonic::transport::Channel> {
    let blocks = PrimaryBlocks {
        own: file_server(vol),
        pipeline,
        replica: replica.to_owned(),
    };
    let svc = ReplicationService::new()
        .with_block_source(Arc::new(blocks))
        .with_catalog(Catalog::default().with_volume(GROUP, "vol", BS));
    ReplicationClient::connect(format!("http://{}", start(svc).await))
        .await
        .unwrap()
}

/// Asks Verify and collects every message, or the status that ended the stream.
async fn verify(
    client: &mut ReplicationClient<tonic::transport::Channel>,
    req: VerifyRequest,
) -> Result<Vec<VerifyProgress>, Status> {
    let mut stream = client.verify(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

fn ask(chunk_bytes: u64, timeout_ms: u64) -> VerifyRequest {
    VerifyRequest {
        group: GROUP.into(),
        resource: String::new(),
        block_size: 0,
        chunk_bytes,
        timeout_ms,
    }
}

/// Writes to the primary's copy and submits the same writes to its pipeline.
async fn write(p: &GroupPipeline, vol: &Path, writes: &[(u64, usize, u64)]) {
    let f = std::fs::OpenOptions::new().write(true).open(vol).unwrap();
    for &(off, len, seed) in writes {
        let data = mixed(seed, len);
        f.write_all_at(&data, off).unwrap();
        p.submit(vec![Change::write("vol", off, data, 1)])
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_equal_copies_equal_and_names_the_range_damaged_on_the_replica() {
    // 1. A primary pipeline shipping to a replica; its service answers Verify.
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replica = start_replica(rdir.path()).await;
    let vol = pdir.path().join("vol.img");
    zeroed(&vol);
    let mut cfg = PipelineConfig::new(GROUP, pdir.path().join("journal"));
    cfg.mode = Mode::Async;
    let p = Arc::new(GroupPipeline::open(cfg).await.unwrap());
    let mut ship = ShipConfig::new(&replica, "hanoi-1");
    ship.backoff_min = Duration::from_millis(20);
    let shipper = p.start_shipper(ship);
    let mut client = start_primary(&vol, Some(p.clone()), &replica).await;

    // 2. Writes land on both copies; Verify in 1 MiB chunks finds them equal.
    write(
        &p,
        &vol,
        &[(0, 10_000, 1), (3 << 20, 65_536, 2), (1_000_000, 512, 3)],
    )
    .await;
    let msgs = verify(&mut client, ask(1 << 20, 0)).await.unwrap();
    assert_eq!(
        msgs.len(),
        4,
        "three chunk reports and the verdict: {msgs:?}"
    );
    assert!(msgs[..3]
        .iter()
        .all(|m| m.verdict.is_none() && m.bytes_total == VOL));
    assert_eq!(msgs[0].bytes_done, 1 << 20);
    let v = msgs[3].verdict.clone().unwrap();
    assert!(v.equal, "{v:?}");
    assert_eq!(
        (v.resource.as_str(), v.block_size, v.chunks),
        ("vol", BS, 4)
    );
    assert_eq!((v.primary_length, v.replica_length), (VOL, VOL));
    assert_eq!((v.first_seq, v.last_seq), (3, 3));
    assert!(v.differing.is_empty() && v.primary_root == v.replica_root);

    // 3. A byte of the replica's copy damaged at rest: Verify names its block.
    let damaged = (2 << 20) + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(rdir.path().join("vol.img"))
        .unwrap()
        .write_all_at(&[0xff], damaged)
        .unwrap();
    let msgs = verify(&mut client, ask(0, 0)).await.unwrap();
    assert_eq!(msgs.len(), 1, "one 64 MiB chunk covers the volume");
    let v = msgs[0].verdict.clone().unwrap();
    assert!(!v.equal);
    assert_eq!(v.chunks, 1);
    let start = damaged / u64::from(BS) * u64::from(BS);
    assert_eq!(
        tandem_core::ranges::from_wire(&v.differing),
        vec![start..start + u64::from(BS)]
    );

    // 4. With the shipper stopped, a new write never reaches the replica: the barrier never
    //    comes and the verify ends with DeadlineExceeded after the asked timeout.
    shipper.stop().await;
    write(&p, &vol, &[(0, 512, 4)]).await;
    let err = verify(&mut client, ask(0, 500)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_refuses_unknown_names_and_a_replicator_that_is_not_primary() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    zeroed(&vol);
    let mut client = start_primary(&vol, None, "http://127.0.0.1:1").await;
    let cases = [
        ("other", "", tonic::Code::NotFound),
        (GROUP, "disk9", tonic::Code::InvalidArgument),
        (GROUP, "vol", tonic::Code::FailedPrecondition),
    ];
    for (i, (group, resource, code)) in cases.into_iter().enumerate() {
        let req = VerifyRequest {
            group: group.into(),
            resource: resource.into(),
            ..ask(0, 0)
        };
        let err = verify(&mut client, req).await.unwrap_err();
        assert_eq!(err.code(), code, "#{i}: expect {code:?} got {err:?}");
        let named = if resource.is_empty() { group } else { resource };
        assert!(err.message().contains(named), "#{i}: {}", err.message());
    }
}
