//! Resync benchmark: 1 GiB mixed file, 1% of 64 KiB blocks changed, over loopback gRPC.
//!
//! Measures (criterion, small samples): `hash_file` speed on 1 GiB, resync time with the blocks
//! raw, per-block zstd at levels 1 and 3, chosen per link (`auto`: off on loopback), and the
//! old gRPC stream zstd, and prints the bytes that crossed the TCP connection (counted by a
//! proxy) next to `rsync --inplace --no-whole-file --stats` on the same files when rsync is
//! installed. Initial sync (`initial_sync_1gib`): the same resync into a missing target, raw,
//! per-block zstd-1 and gRPC zstd, next to the raw speed of reading + zstd-1 + blake3 of the
//! source on one core. `bench/resync-vs-rsync.sh` runs it with the load average.
//! Files go to `TANDEM_BENCH_DIR` (default: the system temp dir); size with
//! `TANDEM_BENCH_MIB` (default 1024).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::mixed::{mixed, XorShift};
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::replication_server::{Replication, ReplicationServer};
use tandem_core::proto::{
    MerkleReply, MerkleRequest, ReadBlocksReply, ReadBlocksRequest, ShipRequest, ShipResponse,
    SnapshotReply, SnapshotRequest,
};
use tandem_replicator::resync::{self, BlockServer, Compression, ResyncOptions};
use tandem_replicator::scan;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

const BS: u32 = 64 << 10;

type Resolver = Box<dyn Fn(&str, &str) -> Option<PathBuf> + Send + Sync>;

struct BenchReplication {
    blocks: BlockServer<Resolver>,
}

#[tonic::async_trait]
impl Replication for BenchReplication {
    type ShipStream = futures::stream::Empty<Result<ShipResponse, Status>>;
    type ResyncStream = futures::stream::Empty<Result<tandem_core::proto::ResyncProgress, Status>>;
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
        Err(Status::unimplemented("verify is not served by this bench"))
    }

    async fn resync(
        &self,
        _request: Request<tandem_core::proto::ResyncRequest>,
    ) -> Result<Response<Self::ResyncStream>, Status> {
        Err(Status::unimplemented("resync is not served by this bench"))
    }

    async fn ship(
        &self,
        _request: Request<Streaming<ShipRequest>>,
    ) -> Result<Response<Self::ShipStream>, Status> {
        Err(Status::unimplemented("ship is not served by this bench"))
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
        self.blocks
            .read_blocks(request.into_inner())
            .await
            .map(Response::new)
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
        Err(Status::unimplemented("not served by this bench"))
    }

    async fn checkpoints(
        &self,
        _request: Request<tandem_core::proto::CheckpointsRequest>,
    ) -> Result<Response<tandem_core::proto::CheckpointsReply>, Status> {
        Err(Status::unimplemented("not served by this bench"))
    }

    async fn recover(
        &self,
        _request: Request<tandem_core::proto::RecoverRequest>,
    ) -> Result<Response<tandem_core::proto::RecoverReply>, Status> {
        Err(Status::unimplemented("not served by this bench"))
    }

    async fn archive_wal(
        &self,
        _request: Request<tandem_core::proto::ArchiveWalRequest>,
    ) -> Result<Response<tandem_core::proto::ArchiveWalReply>, Status> {
        Err(Status::unimplemented(
            "archive_wal is not served by this bench",
        ))
    }
}

/// Bytes that crossed the proxy, both directions.
#[derive(Default)]
struct Counter(AtomicU64);

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counter: Arc<Counter>,
) {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                counter.0.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A counting TCP proxy in front of `target`; returns its address.
async fn proxy(target: SocketAddr, counter: Arc<Counter>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            client.set_nodelay(true).unwrap();
            server.set_nodelay(true).unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, counter.clone()));
            tokio::spawn(pump(sr, cw, counter.clone()));
        }
    });
    addr
}

async fn serve(
    path: &Path,
    zstd: bool,
    counter: Arc<Counter>,
) -> ReplicationClient<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let resolver: Resolver =
        Box::new(move |g: &str, r: &str| (g == "g" && r == "vol").then(|| path.clone()));
    let mut svc = ReplicationServer::new(BenchReplication {
        blocks: BlockServer::new(resolver),
    })
    .max_encoding_message_size(resync::MAX_MESSAGE_BYTES);
    if zstd {
        svc = svc.send_compressed(CompressionEncoding::Zstd);
    }
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap()
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .initial_stream_window_size(16 << 20)
            .initial_connection_window_size(32 << 20)
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    let via = proxy(addr, counter).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{via}"))
        .unwrap()
        .tcp_nodelay(true)
        .initial_stream_window_size(16 << 20)
        .initial_connection_window_size(32 << 20)
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

struct Files {
    _dir: tempfile::TempDir,
    source: PathBuf,
    target: PathBuf,
    len: u64,
    /// Changed blocks and their target contents, to reset the target before each run.
    changed: Vec<(u64, Vec<u8>)>,
}

impl Files {
    fn make() -> Files {
        let mib: u64 = std::env::var("TANDEM_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        let dir = match std::env::var("TANDEM_BENCH_DIR") {
            Ok(d) => tempfile::tempdir_in(d).unwrap(),
            Err(_) => tempfile::tempdir().unwrap(),
        };
        let len = mib << 20;
        let source = dir.path().join("source.img");
        let target = dir.path().join("target.img");
        let f = std::fs::File::create(&source).unwrap();
        let chunk = 64u64 << 20;
        let mut off = 0;
        while off < len {
            let n = chunk.min(len - off);
            f.write_all_at(&mixed(off, n as usize), off).unwrap();
            off += n;
        }
        f.sync_all().unwrap();
        std::fs::copy(&source, &target).unwrap();
        let blocks = len / u64::from(BS);
        let mut rng = XorShift::new(42);
        let mut set = BTreeSet::new();
        while (set.len() as u64) < blocks / 100 {
            set.insert(rng.below(blocks));
        }
        let changed = set
            .into_iter()
            .map(|i| (i, mixed(1_000_000 + i, BS as usize)))
            .collect();
        let files = Files {
            _dir: dir,
            source,
            target,
            len,
            changed,
        };
        files.reset_target();
        files
    }

    fn reset_target(&self) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.target)
            .unwrap();
        for (i, data) in &self.changed {
            f.write_all_at(data, i * u64::from(BS)).unwrap();
        }
        f.sync_data().unwrap();
    }
}

fn rsync_run(files: &Files) -> Option<(Duration, u64)> {
    files.reset_target();
    let started = Instant::now();
    let out = Command::new("rsync")
        .args(["--inplace", "--no-whole-file", "--stats"])
        .arg(&files.source)
        .arg(&files.target)
        .output()
        .ok()?;
    let took = started.elapsed();
    if !out.status.success() {
        return None;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|v| v.replace(',', ""))
        .and_then(|v| v.trim().parse().ok())?;
    Some((took, sent))
}

fn bench(c: &mut Criterion) {
    let files = Files::make();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // 1. Resync of a 1 % difference, beside hashing from disk and from memory.
    resync_one_percent(c, &files, &rt);
    // 2. rsync on the same files, as the peer, right after.
    rsync_comparison(&files);
    // 3. Initial sync (every block moves), beside raw read + zstd-1 + blake3 on one core.
    initial_sync(c, &files, &rt);
}

fn resync_one_percent(c: &mut Criterion, files: &Files, rt: &tokio::runtime::Runtime) {
    let mut g = c.benchmark_group("resync_1pct");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Bytes(files.len));
    g.bench_function("hash_file", |b| {
        b.iter(|| scan::hash_file(&files.source, BS).unwrap())
    });
    // Baseline: the same leaves from memory (64 MiB buffer hashed 16 times), no reads.
    let buf = mixed(7, 64 << 20);
    g.bench_function("hash_memory_baseline", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for _ in 0..files.len / (64 << 20) {
                for block in buf.chunks(BS as usize) {
                    n ^= u64::from(tandem_replicator::merkle::leaf_hash(block)[0]);
                }
            }
            n
        })
    });

    // (name, gRPC zstd on the stream, full re-hash, per-block compression)
    for (name, zstd, full_rehash, compression) in [
        ("resync_grpc_zstd_readback", true, false, Compression::Off),
        ("resync_off_readback", false, false, Compression::Off),
        ("resync_auto_readback", false, false, Compression::Auto),
        ("resync_zstd1_readback", false, false, Compression::Zstd(1)),
        ("resync_zstd3_readback", false, false, Compression::Zstd(3)),
        ("resync_zstd3", false, true, Compression::Zstd(3)),
    ] {
        let counter = Arc::new(Counter::default());
        let mut client = rt.block_on(serve(&files.source, zstd, counter.clone()));
        let options = ResyncOptions {
            full_rehash,
            compression,
            ..ResyncOptions::default()
        };
        let mut last = None;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    files.reset_target();
                    let before = counter.0.load(Ordering::Relaxed);
                    let started = Instant::now();
                    let report = rt
                        .block_on(resync::resync(
                            &mut client,
                            "g",
                            "vol",
                            &files.target,
                            BS,
                            options.clone(),
                        ))
                        .unwrap();
                    total += started.elapsed();
                    let tcp = counter.0.load(Ordering::Relaxed) - before;
                    last = Some((report, tcp));
                }
                total
            })
        });
        if let Some((report, tcp)) = last {
            println!(
                "{name}: {} of {} blocks differ; zstd level {}; protobuf bytes {} ; TCP bytes both ways {} ; last run {:?}",
                report.blocks_differing,
                report.blocks_total,
                report.zstd_level,
                report.bytes_sent_over_wire,
                tcp,
                report.duration
            );
        }
    }
    g.finish();
}

fn initial_sync(c: &mut Criterion, files: &Files, rt: &tokio::runtime::Runtime) {
    // Initial sync: nothing at the target yet; every block moves.
    let mut g = c.benchmark_group("initial_sync_1gib");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Bytes(files.len));
    g.bench_function("raw_read_zstd1_blake3_one_core", |b| {
        b.iter(|| {
            let f = std::fs::File::open(&files.source).unwrap();
            let mut enc = zstd::bulk::Compressor::new(1).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let (mut off, mut out) = (0u64, 0usize);
            while off < files.len {
                let n = f.read_at(&mut buf, off).unwrap();
                if n == 0 {
                    break;
                }
                out += enc.compress(&buf[..n]).unwrap().len();
                out ^= blake3::hash(&buf[..n]).as_bytes()[0] as usize;
                off += n as u64;
            }
            out
        })
    });
    let fresh = files.target.with_extension("fresh");
    // As the node runs it (`full_rehash: false`: every block read back as it is written), and
    // once with the whole target re-hashed after the copy instead.
    for (name, zstd, compression, full_rehash) in [
        ("initial_sync_off", false, Compression::Off, false),
        ("initial_sync_zstd1", false, Compression::Zstd(1), false),
        (
            "initial_sync_zstd1_rehash",
            false,
            Compression::Zstd(1),
            true,
        ),
        ("initial_sync_grpc_zstd", true, Compression::Off, false),
    ] {
        let counter = Arc::new(Counter::default());
        let mut client = rt.block_on(serve(&files.source, zstd, counter.clone()));
        let mut last = None;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let _ = std::fs::remove_file(&fresh);
                    let before = counter.0.load(Ordering::Relaxed);
                    let started = Instant::now();
                    let report = rt
                        .block_on(resync::resync(
                            &mut client,
                            "g",
                            "vol",
                            &fresh,
                            BS,
                            ResyncOptions {
                                compression,
                                full_rehash,
                                ..ResyncOptions::default()
                            },
                        ))
                        .unwrap();
                    total += started.elapsed();
                    last = Some((report, counter.0.load(Ordering::Relaxed) - before));
                }
                total
            })
        });
        if let Some((report, tcp)) = last {
            println!(
                "{name}: {} blocks pulled; zstd level {}; TCP bytes both ways {tcp} ; last run {:?}",
                report.blocks_differing, report.zstd_level, report.duration
            );
        }
    }
    let _ = std::fs::remove_file(&fresh);
    g.finish();
}

fn rsync_comparison(files: &Files) {
    let mut runs: Vec<(Duration, u64)> = (0..5).filter_map(|_| rsync_run(files)).collect();
    if runs.is_empty() {
        println!("rsync: not installed or failed; no comparison");
    } else {
        runs.sort();
        let (median, sent) = runs[runs.len() / 2];
        println!(
            "rsync --inplace --no-whole-file: median {median:?} of {} runs (min {:?}, max {:?}); Total bytes sent {sent}",
            runs.len(),
            runs[0].0,
            runs[runs.len() - 1].0
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
