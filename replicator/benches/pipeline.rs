//! Data-path benchmark (not a timed test): sustained async throughput of 64 KiB mixed writes
//! through submit → journal → ship → apply over loopback with RPO sampled during the run, and
//! sync-mode submit latency of 4 KiB writes. Run with `cargo bench -p tandem-replicator
//! --bench pipeline`; `BENCH_SECS` sets the async run length (default 10).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::frame::Change;
use tandem_core::mixed::{mixed, XorShift};
use tandem_replicator::apply::ReplicaGroup;
use tandem_replicator::pipeline::{GroupPipeline, Mode, PipelineConfig};
use tandem_replicator::receive::{serve, ReplicationService};
use tandem_replicator::ship::ShipConfig;

const VOL: u64 = 1 << 30;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn setup(
    mode: Mode,
) -> (
    tempfile::TempDir,
    Arc<GroupPipeline>,
    Arc<ReplicaGroup>,
    tandem_replicator::ship::ShipperHandle,
) {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("replica-vol.img");
    std::fs::File::create(&vol).unwrap().set_len(VOL).unwrap();
    let mut res = HashMap::new();
    res.insert("vol".to_owned(), vol);
    let group = Arc::new(ReplicaGroup::open("bench", &dir.path().join("replica"), res).unwrap());
    let svc = ReplicationService::new();
    svc.add_group(Arc::clone(&group));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(svc, listener, std::future::pending()));
    let mut cfg = PipelineConfig::new("bench", dir.path().join("journal"));
    cfg.mode = mode;
    let p = Arc::new(GroupPipeline::open(cfg).await.unwrap());
    let mut sc = ShipConfig::new(&format!("http://{addr}"), "bench");
    if let Some(mb) = std::env::var("BENCH_WINDOW_MB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        sc.window_bytes = mb << 20;
    }
    let shipper = p.start_shipper(sc);
    (dir, p, group, shipper)
}

async fn async_throughput(secs: u64, submitters: u64) {
    let (_dir, p, group, shipper) = setup(Mode::Async).await;
    let pool: Arc<Vec<Vec<u8>>> = Arc::new((0..1024).map(|i| mixed(i, 64 << 10)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..submitters {
        let (p, pool, stop) = (Arc::clone(&p), Arc::clone(&pool), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(t + 1);
            while !stop.load(Ordering::Relaxed) {
                let data = pool[rng.below(pool.len() as u64) as usize].clone();
                let off = rng.below(VOL / (64 << 10)) * (64 << 10);
                match p
                    .submit(vec![Change::write("vol", off, data, now_ms())])
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    let mut rpo = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        rpo.push(p.progress().rpo_ms(now_ms()) as f64);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let submitted_at = start.elapsed();
    loop {
        let pr = p.progress();
        if pr.durable_on_replica_seq >= pr.last_captured_seq {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let caught_up = start.elapsed();
    let pr = p.progress();
    rpo.sort_by(|a, b| a.total_cmp(b));
    let mb = pr.bytes_raw_total as f64 / 1e6;
    println!(
        "async 64 KiB mixed writes, {submitters} submitters: {:.0} MB raw in {:.2} s (all submitted at {:.2} s) \
         = {:.0} MB/s end to end; shipped {:.0} MB in {} frames (ratio {:.2}); replica applied {} changes",
        mb,
        caught_up.as_secs_f64(),
        submitted_at.as_secs_f64(),
        mb / caught_up.as_secs_f64(),
        pr.bytes_shipped_total as f64 / 1e6,
        pr.frames_shipped,
        pr.bytes_raw_total as f64 / pr.bytes_shipped_total.max(1) as f64,
        group.applied_changes(),
    );
    println!(
        "async RPO during the run ({} samples every 10 ms): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        rpo.len(),
        pct(&rpo, 0.5),
        pct(&rpo, 0.99),
        rpo.last().copied().unwrap_or(0.0)
    );
    shipper.stop().await;
}

async fn sync_latency(n: usize, concurrency: usize) {
    let (_dir, p, group, shipper) = setup(Mode::Sync).await;
    let mut tasks = Vec::new();
    let start = Instant::now();
    for t in 0..concurrency {
        let p = Arc::clone(&p);
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(100 + t as u64);
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let data = mixed((t * n + i) as u64, 4096);
                let off = rng.below(VOL / 4096) * 4096;
                let t0 = Instant::now();
                p.submit(vec![Change::write("vol", off, data, now_ms())])
                    .await
                    .unwrap();
                lat.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let el = start.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "sync 4 KiB writes, {concurrency} submitter(s), {} writes: p50 {:.0} us, p99 {:.0} us, {:.0} writes/s; replica watermark {}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.len() as f64 / el,
        group.watermark()
    );
    shipper.stop().await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs a short smoke version.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let secs = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if smoke { 1 } else { 10 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        async_throughput(secs, 16).await;
        async_throughput(secs, 64).await;
        sync_latency(if smoke { 50 } else { 2000 }, 1).await;
        sync_latency(if smoke { 20 } else { 500 }, 8).await;
    });
}
