//! `tandem bench coordinator|replication|recover|sqlite|scale`: measurements against real local processes (the
//! figures in docs/BENCHMARKS.md come from here and from the criterion benches).

use crate::cmd::bench_cluster::{cluster, pct};
use crate::cmd::status::{fetch, runtime};
use crate::cmd::ConnectNet;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tandem_chaos::nbd_client::NbdPool;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::{RecordKind, RecordRequest};
use tandem_replicator::sqlite::SqliteOptions;

/// `tandem bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Commit latency and proposals per second of 3 local coordinators (fsync on).
    Coordinator(CoordArgs),
    /// Sustained replication throughput through NBD into an async group, with RPO during the
    /// run, against raw zstd level 1 on the same data.
    Replication(ReplArgs),
    /// Point-in-time recovery: fill a volume, mark a checkpoint, write under load, then
    /// recover the volume to the checkpoint while the load goes on.
    Recover(RecoverArgs),
    /// SQLite transactions per second from one rusqlite connection (WAL mode): without
    /// replication, then in a replicated async group, with the replication lag of every
    /// transaction (commit to visible in the replica's file) beside the RPO `tandem status`
    /// reported meanwhile, and whether status told the truth.
    Sqlite(SqliteArgs),
    /// Many small async groups on 3 coordinators and 2 replicators: status latency, raft
    /// commits per second, coordinator CPU, memory, disk writes and raft store size.
    Scale(crate::cmd::bench_scale::ScaleArgs),
}

/// Arguments of `tandem bench sqlite`.
#[derive(Debug, ClapArgs)]
pub struct SqliteArgs {
    /// Seconds of transactions per run.
    #[arg(long, default_value = "10")]
    pub secs: u64,
    /// Rows inserted by each transaction (about 100 bytes each).
    #[arg(long, default_value = "4")]
    pub rows: u64,
    /// Runs, in order: `none` (no replication), `async` (a SQLite group cannot be sync: its
    /// COMMIT never waits for Tandem, so `config check` refuses it).
    #[arg(long, value_delimiter = ',', default_value = "none,async")]
    pub modes: Vec<String>,
    /// How often the replica's file is read to see which transactions it holds (ms); each
    /// read takes SQLite's shared lock, which the replica's applier waits for.
    #[arg(long, default_value = "20")]
    pub sample_ms: u64,
    /// Folder for the clusters (default: a temp folder, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Arguments of `tandem bench recover`.
#[derive(Debug, ClapArgs)]
pub struct RecoverArgs {
    /// Volume size in MiB (it is filled with mixed data first).
    #[arg(long, default_value = "1024")]
    pub volume_mib: u64,
    /// Seconds of load between the checkpoint and the recovery (the point is this far back).
    #[arg(long, default_value = "60")]
    pub load_secs: u64,
    /// Size of each load write in KiB.
    #[arg(long, default_value = "64")]
    pub write_kib: u64,
    /// Load writes in flight.
    #[arg(long, default_value = "4")]
    pub concurrency: usize,
    /// Most load throughput, MB/s (0 = as fast as it goes).
    #[arg(long, default_value = "20")]
    pub load_mb_per_s: u64,
    /// Folder for the cluster (default: a temp folder, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
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
    /// Keep point-in-time history at the replica (`history = "1h"`): the cost of the undo
    /// records.
    #[arg(long)]
    pub history: bool,
    /// With `--history`: the group's `history_compress` setting (`false` stores the undo
    /// data raw).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub history_compress: bool,
    /// Plaintext links (`[tls] insecure = true`) instead of mTLS: run both to see what TLS
    /// costs.
    #[arg(long)]
    pub insecure: bool,
    /// The group's `compression` setting: `zstd-1` (the default), `zstd-N`, `off` or `auto`
    /// (the level follows the backlog the link leaves).
    #[arg(long, default_value = "zstd-1")]
    pub compression: tandem_core::compression::Compression,
    /// The group's `ship_window` setting (`"32MiB"`, the default; see docs/config.md): most
    /// frame bytes sent and not yet acknowledged.
    #[arg(long)]
    pub ship_window: Option<tandem_core::config::ByteSize>,
    /// Folder for the cluster (default: a temp folder, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs a `tandem bench` subcommand.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Coordinator(a) => coordinator(a),
        BenchCmd::Replication(a) => replication(a),
        BenchCmd::Recover(a) => recover(a),
        BenchCmd::Sqlite(a) => sqlite(a),
        BenchCmd::Scale(a) => crate::cmd::bench_scale::run(a),
    }
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
    let ch = crate::cmd::endpoint(&addr)?
        .tcp_nodelay(true)
        .connect_net()
        .await?;
    Ok(tandem_core::grpc_limits!(CoordinatorClient::new(ch)))
}

fn coordinator(a: CoordArgs) -> Result<()> {
    let (c, addrs, _) = cluster(a.dir.as_deref(), "async", 16, "", "", false)?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        let client = leader_client(&addrs).await?;
        let note = |detail: Value| RecordRequest {
            kind: RecordKind::Note.into(),
            group: String::new(),
            detail_json: detail.to_string(),
        };
        // Latency: one proposal at a time, each committed by a quorum with fsync and applied.
        let mut lat = Vec::with_capacity(a.proposals);
        for i in 0..a.proposals {
            let mut cl = client.clone();
            let t = Instant::now();
            cl.record(note(json!({"bench": i})))
                .await
                .map_err(|s| anyhow::anyhow!("record: {}", s.message()))?;
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
                    if cl.record(note(json!({"worker": w}))).await.is_err() {
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

    let mut extra = format!("compression = \"{}\"", a.compression);
    if a.history {
        extra.push_str("\nhistory = \"1h\"");
        if !a.history_compress {
            extra.push_str("\nhistory_compress = false");
        }
    }
    if let Some(w) = a.ship_window {
        extra.push_str(&format!("\nship_window = \"{w}\""));
    }
    let (c, addrs, nbd_port) = cluster(
        a.dir.as_deref(),
        &a.mode,
        a.volume_mib,
        &extra,
        "",
        a.insecure,
    )?;
    let run_dir = c.dir.join("run");
    let replicators: Vec<i32> = ["hanoi-rep", "hcm-rep"]
        .iter()
        .map(|n| tandem_chaos::runner::processes::read_pid(&run_dir, n))
        .collect::<Result<_>>()?;
    let load_before = crate::cmd::bench_scale::loadavg();
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
        // The physical limit of the disk both sites share here, in the same run.
        let disk_mb_per_s = crate::cmd::bench_disk::durable_write_mb_per_s(&c.dir, 512)?;
        let disk_before = crate::cmd::bench_disk::written_bytes(&c.dir);
        let cpu_before = replicator_cpu(&replicators);
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
        let cpu = cpu_per_gb(&cpu_before, &replicator_cpu(&replicators), written);
        let disk = match (disk_before, crate::cmd::bench_disk::written_bytes(&c.dir)) {
            (Some((dev, a)), Some((_, b))) => json!({
                "device": dev,
                "written_mb": b.saturating_sub(a) as f64 / 1e6,
                "written_per_byte_replicated": b.saturating_sub(a) as f64 / written.max(1) as f64,
                "write_mb_per_s_during_run": b.saturating_sub(a) as f64 / end_to_end_secs / 1e6,
                "durable_write_mb_per_s_alone": disk_mb_per_s,
            }),
            _ => json!({ "durable_write_mb_per_s_alone": disk_mb_per_s }),
        };
        let st = fetch(&addrs).await?;
        let g = st.groups.first().cloned().unwrap_or_default();
        rpo.sort_by(|x, y| x.total_cmp(y));
        let mut l = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        l.sort_by(|x, y| x.total_cmp(y));
        let e2e = written as f64 / end_to_end_secs / 1e6;
        anyhow::Ok(json!({
            "mode": a.mode, "history": a.history, "history_compress": a.history && a.history_compress, "compression": a.compression.to_string(), "ship_window": a.ship_window.map(|w| w.to_string()), "auto_level_changes": auto_level_changes(&run_dir.join("hanoi-rep.log")), "tls": !a.insecure, "write_kib": a.write_kib, "concurrency": a.concurrency,
            "written_mb": written as f64 / 1e6,
            "intake_mb_per_s": written as f64 / write_secs / 1e6,
            "replicated_mb_per_s_end_to_end": e2e,
            "raw_zstd1_mb_per_s_one_core": zstd_mbps,
            "ratio_to_raw_zstd1": e2e / zstd_mbps,
            "data_compression_ratio_zstd1": ratio,
            "wire_compression_ratio": if g.bytes_shipped > 0 { g.bytes_raw as f64 / g.bytes_shipped as f64 } else { 0.0 },
            "rpo_ms": {"p50": pct(&rpo, 0.5), "p99": pct(&rpo, 0.99), "max": pct(&rpo, 1.0)},
            "write_latency_ms": {"p50": pct(&l, 0.5), "p99": pct(&l, 0.99)},
            "replicator_cpu_secs_per_gb": cpu,
            "disk": disk,
            "loadavg_before": load_before,
            "loadavg_after": crate::cmd::bench_scale::loadavg(),
        }))
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(c);
    Ok(())
}

/// The levels `compression = "auto"` moved to, in order, from the primary's log (each change
/// is logged once: `compression: level changed (auto)` with `level=N`).
fn auto_level_changes(log: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("compression: level changed"))
        .filter_map(|l| {
            let at = l.find("level=")? + "level=".len();
            let digits: String = l[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// (user, system) CPU seconds and minor page faults of each of `pids` so far (`None` for a
/// process that is gone).
fn replicator_cpu(pids: &[i32]) -> Vec<Option<(f64, f64, u64)>> {
    pids.iter()
        .map(|p| crate::cmd::bench_scale::cpu_secs(*p))
        .collect()
}

/// CPU seconds the replicator processes spent per GB (1e9 bytes) written between two samples
/// (primary first, then replica): user + system of both, and each split, with the minor
/// page faults per GB; a process missing from either sample counts zero (pure).
fn cpu_per_gb(
    before: &[Option<(f64, f64, u64)>],
    after: &[Option<(f64, f64, u64)>],
    written: u64,
) -> Value {
    let gb = (written as f64 / 1e9).max(1e-9);
    let per = |i: usize| match (
        before.get(i).copied().flatten(),
        after.get(i).copied().flatten(),
    ) {
        (Some(b), Some(a)) => (
            (a.0 - b.0) / gb,
            (a.1 - b.1) / gb,
            a.2.saturating_sub(b.2) as f64 / gb,
        ),
        _ => (0.0, 0.0, 0.0),
    };
    let (pu, ps, pf) = per(0);
    let (ru, rs, rf) = per(1);
    json!({
        "total": pu + ps + ru + rs,
        "primary": {"user": pu, "sys": ps, "minor_faults": pf},
        "replica": {"user": ru, "sys": rs, "minor_faults": rf},
    })
}

/// A reusable raw zstd level-1 compressor (one context, one core) returning the compressed size.
fn zstd_compressor() -> Result<impl FnMut(&[u8]) -> Result<usize>> {
    let mut z = zstd::bulk::Compressor::new(1).context("zstd context")?;
    Ok(move |chunk: &[u8]| -> Result<usize> { Ok(z.compress(chunk).context("zstd")?.len()) })
}

async fn wait_protected_and_caught_up(addrs: &[String], secs: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = fetch(addrs).await?;
        if let Some(g) = st.groups.first() {
            if g.state == "protected"
                && g.lease.is_some()
                && g.rpo_ms == 0
                && g.durable_seq >= g.last_captured_seq
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("group not protected and caught up after {secs}s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn replication_client(
    port: u16,
) -> Result<tandem_core::proto::replication_client::ReplicationClient<tonic::transport::Channel>> {
    let ch = crate::cmd::endpoint(&format!("127.0.0.1:{port}"))?
        .timeout(Duration::from_secs(600))
        .connect_net()
        .await?;
    Ok(tandem_core::grpc_limits!(
        tandem_core::proto::replication_client::ReplicationClient::new(ch)
    ))
}

/// The recover bench's load: `concurrency` tasks writing `write_kib` blocks at spread offsets
/// (paced to `load_mb_per_s` when set) until `stop`; returns (stop, bytes written, tasks).
#[allow(clippy::type_complexity)]
fn spawn_load(
    a: &RecoverArgs,
    pool: &Arc<NbdPool>,
) -> (
    Arc<AtomicBool>,
    Arc<AtomicU64>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let write_len = (a.write_kib << 10) as usize;
    let blocks: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..64)
            .map(|i| tandem_core::mixed::mixed(100 + i, write_len))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let slots = (a.volume_mib << 20) / write_len as u64;
    let per_task_bps = if a.load_mb_per_s == 0 {
        0.0
    } else {
        a.load_mb_per_s as f64 * 1e6 / a.concurrency.max(1) as f64
    };
    let mut tasks = Vec::new();
    for w in 0..a.concurrency.max(1) as u64 {
        let (pool, blocks, stop, bytes) =
            (pool.clone(), blocks.clone(), stop.clone(), bytes.clone());
        let n = a.concurrency.max(1) as u64;
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            let mut mine = 0u64;
            let start = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let off = ((i.wrapping_mul(2654435761)) % slots.max(1)) * write_len as u64;
                let data = &blocks[(i % 64) as usize];
                if pool.write(off, data, false).await.is_err() {
                    break;
                }
                mine += data.len() as u64;
                bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
                i += n;
                if per_task_bps > 0.0 {
                    let due = Duration::from_secs_f64(mine as f64 / per_task_bps);
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }));
    }
    (stop, bytes, tasks)
}

/// Samples the highest RPO of the first group every 200 ms while the flag is set; returns
/// (highest RPO, flag, task).
fn spawn_rpo_sampler(
    addrs: &[String],
) -> (Arc<AtomicU64>, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let rpo_max = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (addrs, rpo_max, sampling) = (addrs.to_vec(), rpo_max.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if let Ok(st) = fetch(&addrs).await {
                    if let Some(g) = st.groups.first() {
                        rpo_max.fetch_max(g.rpo_ms.max(0) as u64, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    (rpo_max, sampling, sampler)
}

fn recover(a: RecoverArgs) -> Result<()> {
    let extra = "history = \"1h\"\ncheckpoint_interval = \"1s\"";
    let (c, addrs, nbd_port) = cluster(a.dir.as_deref(), "async", a.volume_mib, extra, "", false)?;
    // The replicator gRPC ports follow the NBD one in `cluster`: hanoi-rep p[3], hcm-rep p[5].
    let text = std::fs::read_to_string(c.dir.join("topology.toml"))?;
    let topo = tandem_core::config::Topology::parse(&text, "topology.toml")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let port_of = |node: &str| -> Result<u16> {
        let n = topo
            .nodes
            .iter()
            .find(|n| n.name == node)
            .context("node in the bench topology")?;
        n.listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("listen port")
    };
    let (primary_port, replica_port) = (port_of("hanoi-rep")?, port_of("hcm-rep")?);
    // Inside hcm-rep's recover root (DATA_DIR/recovered): elsewhere is refused.
    let out_dir = std::path::absolute(c.dir.join("data/hcm-rep/recovered/bench"))?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        wait_protected_and_caught_up(&addrs, 120).await.ok();
        let pool = Arc::new(NbdPool::new(
            SocketAddr::from(([127, 0, 0, 1], nbd_port)),
            "disk0",
            a.concurrency.max(1),
        ));
        // 1. Fill the whole volume with mixed data (what is copied at recovery time).
        let fill_len = 1usize << 20;
        let t = Instant::now();
        for i in 0..a.volume_mib {
            let data = tandem_core::mixed::mixed(1000 + i, fill_len);
            pool.write(i << 20, &data, false)
                .await
                .map_err(|e| anyhow::anyhow!("fill: {e}"))?;
        }
        wait_protected_and_caught_up(&addrs, 300).await?;
        let fill_secs = t.elapsed().as_secs_f64();
        // 2. The point to go back to.
        let mut pc = replication_client(primary_port).await?;
        let cp = pc
            .checkpoint(tandem_core::proto::CheckpointRequest {
                group: "vol".into(),
                tag: "bench".into(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("checkpoint: {}", s.message()))?
            .into_inner();
        // 3. Load: random writes for load_secs, and on through the recovery.
        let t0 = Instant::now();
        let (stop, bytes, tasks) = spawn_load(&a, &pool);
        tokio::time::sleep(Duration::from_secs(a.load_secs)).await;
        let written_before = bytes.load(Ordering::SeqCst);
        // 4. Recover to the checkpoint while the load goes on; sample RPO meanwhile.
        let mut rc = replication_client(replica_port).await?;
        let (rpo_max, sampling, sampler) = spawn_rpo_sampler(&addrs);
        let before = rc
            .checkpoints(tandem_core::proto::CheckpointsRequest {
                group: "vol".into(),
                barriers: false,
            })
            .await
            .map_err(|s| anyhow::anyhow!("checkpoints: {}", s.message()))?
            .into_inner();
        let t = Instant::now();
        let r = rc
            .recover(tandem_core::proto::RecoverRequest {
                group: "vol".into(),
                tag: "bench".into(),
                out_dir: out_dir.display().to_string(),
                block_size: 64 << 10,
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("recover: {}", s.message()))?
            .into_inner();
        let recover_secs = t.elapsed().as_secs_f64();
        let during = bytes.load(Ordering::SeqCst) - written_before;
        sampling.store(false, Ordering::SeqCst);
        let _ = sampler.await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        let point = r.point.clone().unwrap_or_default();
        anyhow::Ok(json!({
            "volume_mib": a.volume_mib,
            "fill_secs": fill_secs,
            "point_seq": point.seq, "checkpoint_seq": cp.seq,
            "point_age_secs": t0.elapsed().as_secs_f64() - recover_secs,
            "load": {"write_kib": a.write_kib, "concurrency": a.concurrency,
                     "mb_per_s_before": written_before as f64 / a.load_secs as f64 / 1e6,
                     "mb_per_s_during_recover": during as f64 / recover_secs / 1e6},
            "history_mb": before.history_bytes as f64 / 1e6,
            "copied_at_seq": r.copied_at,
            "undo_records": r.undone,
            "recover_secs": recover_secs,
            "rpo_max_ms_during_recover": rpo_max.load(Ordering::SeqCst),
        }))
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(c);
    Ok(())
}

/// One SQLite load run: transactions of `rows` rows from one connection for `secs`, each
/// commit time pushed to `commits` (index = transaction id - 1). `replicated`: as Tandem
/// recommends, `wal_autocheckpoint=0` (the source checkpoints); otherwise SQLite's default
/// automatic checkpoints, as an application without Tandem runs.
fn sqlite_load(
    path: &Path,
    secs: u64,
    rows: u64,
    replicated: bool,
    commits: &Mutex<Vec<Instant>>,
) -> Result<Vec<f64>> {
    let mut db =
        rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, txn INTEGER, amount INTEGER, note TEXT);",
    )?;
    if replicated {
        db.execute_batch("PRAGMA wal_autocheckpoint=0")?;
    }
    let note = "x".repeat(80);
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut n = 0i64;
    while t0.elapsed() < Duration::from_secs(secs) {
        n += 1;
        let t = Instant::now();
        let tx = db.transaction()?;
        for k in 0..rows as i64 {
            tx.execute(
                "INSERT INTO orders(txn, amount, note) VALUES (?1, ?2, ?3)",
                rusqlite::params![n, n * 10 + k, note],
            )?;
        }
        tx.commit()?;
        commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Instant::now());
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(lat)
}

/// The id of the last transaction in the replica's file at `path` (0: none yet), read
/// read-only by rowid (one B-tree descent, so the measuring reader holds SQLite's shared lock,
/// which the replica's applier waits for, for microseconds, not for a scan of every row).
fn last_txn(path: &Path) -> Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    db.busy_timeout(Duration::from_secs(1))?;
    let n: Option<i64> =
        match db.query_row("SELECT txn FROM orders ORDER BY id DESC LIMIT 1", [], |r| {
            r.get(0)
        }) {
            Ok(n) => Some(n),
            Err(rusqlite::Error::QueryReturnedNoRows) => None,
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => None,
            Err(e) => return Err(e.into()),
        };
    Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
}

/// The SQLite group of `tandem bench sqlite` (async: the only mode a SQLite group takes).
fn sqlite_group() -> String {
    r#"
[[groups]]
name = "db"
primary = "hanoi"
replica = "hcm"
mode = "async"
rpo_target = "5s"
rto_target = "30s"
journal_max = "4GiB"

[[groups.resources]]
name = "bench"
kind = "sqlite"
path = "databases/hanoi/bench.db"
replica_path = "databases/hcm/bench.db"
"#
    .to_string()
}

fn sqlite(a: SqliteArgs) -> Result<()> {
    let mut reports = Vec::new();
    for mode in &a.modes {
        if mode == "sync" {
            return Err(crate::exit::bad_input(
                "--modes: sync: a SQLite group cannot be sync (the application's COMMIT never \
                 waits for Tandem, so `config check` refuses it); measure async"
                    .to_string(),
            ));
        }
        if !matches!(mode.as_str(), "none" | "async") {
            return Err(crate::exit::bad_input(format!(
                "--modes: {mode:?}: expected none or async"
            )));
        }
    }
    for mode in &a.modes {
        let commits = Mutex::new(Vec::new());
        let report = if mode == "none" {
            let dir = match &a.dir {
                Some(d) => d.join("none"),
                None => {
                    std::env::temp_dir().join(format!("tandem-bench-sqlite-{}", std::process::id()))
                }
            };
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let r = sqlite_load(&dir.join("bench.db"), a.secs, a.rows, false, &commits);
            let _ = std::fs::remove_dir_all(&dir);
            let mut lat = r?;
            lat.sort_by(|x, y| x.total_cmp(y));
            json!({
                "mode": "none (no replication)",
                "transactions": lat.len(),
                "transactions_per_sec": lat.len() as f64 / a.secs as f64,
                "commit_latency_ms": {"p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99)},
            })
        } else {
            let dir = a.dir.as_ref().map(|d| d.join(mode));
            let (c, addrs, _) = cluster(dir.as_deref(), mode, 16, "", &sqlite_group(), false)?;
            let rt = runtime()?;
            let db_of = |st: &tandem_coordinator::status::ClusterStatus| {
                st.groups.iter().find(|g| g.name == "db").cloned()
            };
            let primary = c.dir.join("databases/hanoi/bench.db");
            let replica = c.dir.join("databases/hcm/bench.db");
            // Create the database so the source can follow it, then wait for protection.
            std::fs::create_dir_all(c.dir.join("databases/hanoi"))?;
            sqlite_load(&primary, 0, a.rows, true, &Mutex::new(Vec::new()))?;
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let st = rt.block_on(fetch(&addrs))?;
                if db_of(&st).is_some_and(|g| g.state == "protected" && g.lease.is_some()) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("group db not protected after 120s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let stop = AtomicBool::new(false);
            let (lat, lags, rpo) = std::thread::scope(|sc| -> Result<_> {
                // Lag of each transaction: commit to first seen in the replica's file (read
                // every `sample_ms`, read-only, as an application at the replica site would).
                let sampler = sc.spawn(|| {
                    let mut lags = Vec::new();
                    let mut seen = 0u64;
                    let mut rpo = Vec::new();
                    let mut last_status = Instant::now();
                    let mut stopped_at: Option<Instant> = None;
                    loop {
                        let done = stop.load(Ordering::SeqCst);
                        if done
                            && stopped_at.get_or_insert_with(Instant::now).elapsed()
                                > Duration::from_secs(60)
                        {
                            // The replica did not catch up: the lags of what it never showed
                            // are missing from the figures (the report counts them).
                            break;
                        }
                        let n = last_txn(&replica).unwrap_or(seen);
                        let now = Instant::now();
                        let c = commits.lock().unwrap_or_else(|p| p.into_inner());
                        for t in seen..n.min(c.len() as u64) {
                            lags.push(now.duration_since(c[t as usize]).as_secs_f64() * 1e3);
                        }
                        let total = c.len() as u64;
                        drop(c);
                        seen = seen.max(n.min(total));
                        if !done && last_status.elapsed() > Duration::from_millis(200) {
                            last_status = Instant::now();
                            if let Some(g) =
                                rt.block_on(fetch(&addrs)).ok().as_ref().and_then(db_of)
                            {
                                rpo.push(g.rpo_ms as f64);
                            }
                        }
                        if done && seen >= total {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(a.sample_ms.max(1)));
                    }
                    (lags, rpo)
                });
                let r = sqlite_load(&primary, a.secs, a.rows, true, &commits);
                stop.store(true, Ordering::SeqCst);
                let (lags, rpo) = sampler
                    .join()
                    .map_err(|_| anyhow::anyhow!("lag sampler panicked"))?;
                Ok((r?, lags, rpo))
            })?;
            let (mut lat, mut lags, mut rpo) = (lat, lags, rpo);
            lat.sort_by(|x, y| x.total_cmp(y));
            lags.sort_by(|x, y| x.total_cmp(y));
            rpo.sort_by(|x, y| x.total_cmp(y));
            let st = rt.block_on(fetch(&addrs))?;
            let g = db_of(&st).unwrap_or_default();
            drop(c);
            let poll_ms = SqliteOptions::default().poll_interval.as_secs_f64() * 1e3;
            let verdict = rpo_verdict(&lags, &rpo, poll_ms);
            println!("{}", verdict.sentence());
            json!({
                "mode": mode,
                "sample_ms": a.sample_ms,
                "transactions": lat.len(),
                "transactions_per_sec": lat.len() as f64 / a.secs as f64,
                "commit_latency_ms": {"p50": pct(&lat, 0.5), "p99": pct(&lat, 0.99)},
                "replication_lag_ms": {"p50": pct(&lags, 0.5), "p99": pct(&lags, 0.99), "max": pct(&lags, 1.0), "transactions_seen_at_replica": lags.len()},
                "status_rpo_ms": {"p50": pct(&rpo, 0.5), "p99": pct(&rpo, 0.99), "samples": rpo.len()},
                "poll_interval_ms": poll_ms,
                "status_told_the_truth": verdict.truthful,
                "wire_compression_ratio": if g.bytes_shipped > 0 { g.bytes_raw as f64 / g.bytes_shipped as f64 } else { 0.0 },
            })
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        reports.push(report);
    }
    Ok(())
}

/// Whether `tandem status` told the truth about a SQLite run: the RPO it reported (p99 of the
/// samples) against the replication lag measured at the replica (p50), allowing one poll
/// interval (the most a commit can wait in the WAL before the source reads it: the RPO then
/// counts from the previous read, but the commit is not in the pipeline yet).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RpoVerdict {
    lag_p50_ms: f64,
    rpo_p99_ms: f64,
    poll_ms: f64,
    truthful: bool,
}

impl RpoVerdict {
    fn sentence(&self) -> String {
        let cmp = format!(
            "status RPO p99 {:.0} ms vs measured lag p50 {:.0} ms (poll interval {:.0} ms)",
            self.rpo_p99_ms, self.lag_p50_ms, self.poll_ms
        );
        if self.truthful {
            format!("status told the truth: {cmp}")
        } else {
            format!("status did NOT tell the truth: {cmp}: the replica trailed by more than status said")
        }
    }
}

/// Judges a run from its sorted lags and sorted status RPO samples (ms). No sample at all
/// cannot vouch for anything: not truthful.
fn rpo_verdict(lags: &[f64], rpo: &[f64], poll_ms: f64) -> RpoVerdict {
    let (lag_p50_ms, rpo_p99_ms) = (pct(lags, 0.5), pct(rpo, 0.99));
    RpoVerdict {
        lag_p50_ms,
        rpo_p99_ms,
        poll_ms,
        truthful: !lags.is_empty() && !rpo.is_empty() && rpo_p99_ms >= lag_p50_ms - poll_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpo_verdict_refuses_a_status_that_hides_the_lag() {
        // The issue's run: lag of seconds, status 0.
        let lags = [5_000.0, 6_000.0, 10_000.0];
        let v = rpo_verdict(&lags, &[0.0, 0.0, 0.0], 10.0);
        assert!(!v.truthful, "{v:?}");
        assert!(v.sentence().contains("did NOT tell the truth"));
        // Within one poll interval of the median lag: truthful.
        let v = rpo_verdict(&[40.0, 50.0, 60.0], &[0.0, 20.0, 45.0], 10.0);
        assert!(v.truthful, "{v:?}");
        assert!(v.sentence().starts_with("status told the truth"));
        // No sample cannot vouch.
        assert!(!rpo_verdict(&[50.0], &[], 10.0).truthful);
        assert!(!rpo_verdict(&[], &[50.0], 10.0).truthful);
    }

    #[test]
    fn auto_level_changes_are_read_from_a_plain_log() {
        let dir = std::env::temp_dir().join(format!("tandem-auto-level-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("hanoi-rep.log");
        std::fs::write(
            &log,
            "t INFO compression: level changed (auto) group=vol level=0 backlog=0\n\
             other line level=9\n\
             INFO compression: level changed (auto) group=vol level=3 backlog=99\n",
        )
        .unwrap();
        assert_eq!(auto_level_changes(&log), vec![0, 3]);
        assert!(auto_level_changes(&dir.join("missing.log")).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cpu_per_gb_divides_each_process_delta_by_the_gigabytes_written() {
        let before = [Some((1.0, 0.5, 10)), Some((2.0, 1.0, 0))];
        let after = [Some((4.0, 1.5, 60)), Some((4.0, 1.5, 0))];
        let v = cpu_per_gb(&before, &after, 500_000_000);
        // (3 + 1 + 2 + 0.5) s over 0.5 GB.
        assert_eq!(v["total"], 13.0);
        assert_eq!(v["primary"]["user"], 6.0);
        assert_eq!(v["replica"]["sys"], 1.0);
        assert_eq!(v["primary"]["minor_faults"], 100.0);
        // A process that vanished counts zero, not as a panic.
        let v = cpu_per_gb(&before, &[after[0], None], 1_000_000_000);
        assert_eq!(v["replica"]["user"], 0.0);
        assert_eq!(v["total"], 4.0);
    }
}
