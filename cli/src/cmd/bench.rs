//! `tandem bench coordinator|replication`: measurements against real local processes (the
//! figures in docs/BENCHMARKS.md come from here and from the criterion benches).

use crate::cmd::status::{fetch, runtime};
use crate::local as proc;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_chaos::nbd_client::NbdPool;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::ProposeRequest;

/// `tandem bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Commit latency and proposals per second of 3 local coordinators (fsync on).
    Coordinator(CoordArgs),
    /// Sustained replication throughput through NBD into an async group, with RPO during the
    /// run, against raw zstd level 1 on the same data.
    Replication(ReplArgs),
}

/// Arguments of `tandem bench coordinator`.
#[derive(Debug, ClapArgs)]
pub struct CoordArgs {
    /// Sequential proposals for the latency figures.
    #[arg(long, default_value = "500")]
    pub proposals: usize,
    /// Concurrent proposers for the throughput figure.
    #[arg(long, default_value = "16")]
    pub concurrency: usize,
    /// Folder for the cluster (default: a temp folder, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Arguments of `tandem bench replication`.
#[derive(Debug, ClapArgs)]
pub struct ReplArgs {
    /// Seconds of writes.
    #[arg(long, default_value = "10")]
    pub secs: u64,
    /// Size of each write in KiB.
    #[arg(long, default_value = "1024")]
    pub write_kib: u64,
    /// Writes in flight (NBD connections).
    #[arg(long, default_value = "8")]
    pub concurrency: usize,
    /// Volume size in MiB.
    #[arg(long, default_value = "1024")]
    pub volume_mib: u64,
    /// `async` or `sync`.
    #[arg(long, default_value = "async")]
    pub mode: String,
    /// Folder for the cluster (default: a temp folder, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs a `tandem bench` subcommand.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Coordinator(a) => coordinator(a),
        BenchCmd::Replication(a) => replication(a),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Cluster {
    dir: PathBuf,
    temp: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = proc::stop_all(&self.dir.join("run"));
        if self.temp {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn cluster(dir: Option<&Path>, mode: &str, volume_mib: u64) -> Result<(Cluster, Vec<String>, u16)> {
    let (dir, temp) = match dir {
        Some(d) => (d.to_path_buf(), false),
        None => (
            std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let p: Vec<u16> = (0..7).map(|_| free_port()).collect::<Result<_>>()?;
    let rpo = if mode == "sync" { "0s" } else { "5s" };
    let text = format!(
        r#"[cluster]
name = "bench"
[[sites]]
name = "hanoi"
[[sites]]
name = "hcm"
[[sites]]
name = "danang"
witness = true
[[nodes]]
name = "c1"
site = "hanoi"
role = "coordinator"
listen = "127.0.0.1:{}"
data_dir = "data/c1"
[[nodes]]
name = "c2"
site = "hcm"
role = "coordinator"
listen = "127.0.0.1:{}"
data_dir = "data/c2"
[[nodes]]
name = "c3"
site = "danang"
role = "coordinator"
listen = "127.0.0.1:{}"
data_dir = "data/c3"
[[nodes]]
name = "hanoi-rep"
site = "hanoi"
role = "replicator"
listen = "127.0.0.1:{}"
data_dir = "data/hanoi-rep"
nbd_listen = "127.0.0.1:{}"
[[nodes]]
name = "hcm-rep"
site = "hcm"
role = "replicator"
listen = "127.0.0.1:{}"
data_dir = "data/hcm-rep"
[[groups]]
name = "vol"
primary = "hanoi"
replica = "hcm"
mode = "{mode}"
rpo_target = "{rpo}"
rto_target = "30s"
journal_max = "4GiB"
[[groups.resources]]
name = "disk0"
kind = "volume"
size = "{volume_mib}MiB"
path = "volumes/hanoi/disk0.img"
replica_path = "volumes/hcm/disk0.img"
"#,
        p[0], p[1], p[2], p[3], p[4], p[5]
    );
    let config = dir.join("topology.toml");
    std::fs::write(&config, text)?;
    let c = Cluster {
        dir: dir.clone(),
        temp,
    };
    crate::cmd::local::up(&config, &dir.join("run"), Duration::from_secs(60))?;
    let addrs = vec![
        format!("127.0.0.1:{}", p[0]),
        format!("127.0.0.1:{}", p[1]),
        format!("127.0.0.1:{}", p[2]),
    ];
    // Wait for the leader to bootstrap the topology.
    let rt = runtime()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt
        .block_on(fetch(&addrs))
        .is_ok_and(|st| !st.groups.is_empty())
    {
        if Instant::now() > deadline {
            bail!("the cluster did not bootstrap within 30s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((c, addrs, p[4]))
}

async fn leader_client(addrs: &[String]) -> Result<CoordinatorClient<tonic::transport::Channel>> {
    let st = fetch(addrs).await?;
    let leader = st.leader.context("no leader")?;
    let addr = st
        .members
        .iter()
        .find(|m| m.name == leader)
        .map(|m| m.address.clone())
        .context("leader address")?;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(CoordinatorClient::new(ch))
}

fn coordinator(a: CoordArgs) -> Result<()> {
    let (c, addrs, _) = cluster(a.dir.as_deref(), "async", 16)?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let client = leader_client(&addrs).await?;
        let cmd = |i: usize| {
            json!({"op": "record", "at_ms": 0, "actor": "bench", "kind": "note", "group": null,
                   "detail": {"bench": i}})
            .to_string()
        };
        // Latency: one proposal at a time, each committed by a quorum with fsync and applied.
        let mut lat = Vec::with_capacity(a.proposals);
        for i in 0..a.proposals {
            let mut cl = client.clone();
            let t = Instant::now();
            cl.propose(ProposeRequest { command: cmd(i), actor: "bench".into() })
                .await
                .map_err(|s| anyhow::anyhow!("propose: {}", s.message()))?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        lat.sort_by(|x, y| x.total_cmp(y));
        // Throughput: `concurrency` proposers for the same number of proposals.
        let done = Arc::new(AtomicU64::new(0));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..a.concurrency {
            let (mut cl, done, n) = (client.clone(), done.clone(), a.proposals);
            tasks.push(tokio::spawn(async move {
                while done.fetch_add(1, Ordering::SeqCst) < n as u64 {
                    let c = json!({"op": "record", "at_ms": 0, "actor": "bench", "kind": "note",
                        "group": null, "detail": {"worker": w}})
                    .to_string();
                    if cl.propose(ProposeRequest { command: c, actor: "bench".into() }).await.is_err() {
                        break;
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = t.elapsed().as_secs_f64();
        anyhow::Ok(json!({
            "proposals": a.proposals,
            "latency_ms": {"p50": pct(&lat, 0.5), "p90": pct(&lat, 0.9), "p99": pct(&lat, 0.99), "max": pct(&lat, 1.0)},
            "concurrency": a.concurrency,
            "proposals_per_sec": a.proposals as f64 / secs,
        }))
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(c);
    Ok(())
}

fn replication(a: ReplArgs) -> Result<()> {
    if a.mode != "async" && a.mode != "sync" {
        return Err(crate::exit::bad_input("--mode must be async or sync"));
    }
    let write_len = (a.write_kib << 10) as usize;
    // Raw single-core zstd level 1 + blake3 on the same kind of data, in the same run.
    let sample = tandem_core::mixed::mixed(7, 64 << 20);
    let t = Instant::now();
    let mut z = zstd_compressor()?;
    let mut compressed = 0usize;
    for chunk in sample.chunks(1 << 20) {
        compressed += z(chunk)?;
    }
    let zstd_mbps = sample.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
    let ratio = sample.len() as f64 / compressed as f64;

    let (c, addrs, nbd_port) = cluster(a.dir.as_deref(), &a.mode, a.volume_mib)?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = fetch(&addrs).await?;
            if st.groups.first().is_some_and(|g| g.state == "protected" && g.lease.is_some()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("group not protected after 120s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let pool = Arc::new(NbdPool::new(SocketAddr::from(([127, 0, 0, 1], nbd_port)), "disk0", a.concurrency));
        // Pre-generate data so the writer is not the bottleneck.
        let blocks: Arc<Vec<Vec<u8>>> = Arc::new((0..64).map(|i| tandem_core::mixed::mixed(100 + i, write_len)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let lat = Arc::new(Mutex::new(Vec::new()));
        let slots = (a.volume_mib << 20) / write_len as u64;
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..a.concurrency as u64 {
            let (pool, blocks, stop, bytes, lat) = (pool.clone(), blocks.clone(), stop.clone(), bytes.clone(), lat.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    let off = ((i * 7919) % slots.max(1)) * write_len as u64;
                    let data = &blocks[(i % 64) as usize];
                    let t = Instant::now();
                    if pool.write(off, data, false).await.is_err() {
                        break;
                    }
                    lat.lock().unwrap_or_else(|p| p.into_inner()).push(t.elapsed().as_secs_f64() * 1e3);
                    bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                    i += a.concurrency as u64;
                }
            }));
        }
        let mut rpo = Vec::new();
        while t0.elapsed() < Duration::from_secs(a.secs) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(st) = fetch(&addrs).await {
                if let Some(g) = st.groups.first() {
                    rpo.push(g.rpo_ms as f64);
                }
            }
        }
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        let write_secs = t0.elapsed().as_secs_f64();
        let written = bytes.load(Ordering::SeqCst);
        // Until the replica holds everything.
        loop {
            let st = fetch(&addrs).await?;
            if let Some(g) = st.groups.first() {
                if g.rpo_ms == 0 && g.durable_seq >= g.last_captured_seq {
                    break;
                }
            }
            if t0.elapsed() > Duration::from_secs(a.secs + 120) {
                bail!("replica did not catch up");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let end_to_end_secs = t0.elapsed().as_secs_f64();
        let st = fetch(&addrs).await?;
        let g = st.groups.first().cloned().unwrap_or_default();
        rpo.sort_by(|x, y| x.total_cmp(y));
        let mut l = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        l.sort_by(|x, y| x.total_cmp(y));
        let e2e = written as f64 / end_to_end_secs / 1e6;
        anyhow::Ok(json!({
            "mode": a.mode, "write_kib": a.write_kib, "concurrency": a.concurrency,
            "written_mb": written as f64 / 1e6,
            "intake_mb_per_s": written as f64 / write_secs / 1e6,
            "replicated_mb_per_s_end_to_end": e2e,
            "raw_zstd1_mb_per_s_one_core": zstd_mbps,
            "ratio_to_raw_zstd1": e2e / zstd_mbps,
            "data_compression_ratio_zstd1": ratio,
            "wire_compression_ratio": if g.bytes_shipped > 0 { g.bytes_raw as f64 / g.bytes_shipped as f64 } else { 0.0 },
            "rpo_ms": {"p50": pct(&rpo, 0.5), "p99": pct(&rpo, 0.99), "max": pct(&rpo, 1.0)},
            "write_latency_ms": {"p50": pct(&l, 0.5), "p99": pct(&l, 0.99)},
        }))
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(c);
    Ok(())
}

/// A reusable raw zstd level-1 compressor (one context, one core) returning the compressed size.
fn zstd_compressor() -> Result<impl FnMut(&[u8]) -> Result<usize>> {
    let mut z = zstd::bulk::Compressor::new(1).context("zstd context")?;
    Ok(move |chunk: &[u8]| -> Result<usize> { Ok(z.compress(chunk).context("zstd")?.len()) })
}
