//! `tandem chaos run SCENARIO...`: runs fault scenarios against real local processes with the
//! built-in writer, then applies the checkers and prints a table (and writes JSON + Markdown).

use crate::cmd::demo::{db_group, db_group_text, group, topology_text, DB_GROUP, VOLUME_GROUP};
use crate::cmd::status::{fetch_one, runtime};
use crate::dbwriter::{max_txn, read_db, DbSnapshot, DbWriter};
use crate::exit::bad_input;
use crate::local as proc;
use crate::writer::Writer;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_chaos::checker::{
    corruption_caught, epochs_monotonic, lost_acknowledged_writes, no_ack_after_fence,
    no_double_promotion, rpo_recovers, split_brain, torn_tail_repaired, EpochObservation,
    Promotion, ReplicationMode, RpoSample,
};
use tandem_chaos::dbcheck::{db_commit_prefix, db_identical, db_lost_commits, db_tail_quarantined};
use tandem_chaos::history::{History, Recorder};
use tandem_chaos::mesh::Mesh;
use tandem_chaos::nbd_client::NbdClient;
use tandem_chaos::proxy::{Blackhole, Direction};
use tandem_chaos::scenario::{Check, ClockSkew, Fault, FaultAction, Scenario, Tear};
use tandem_chaos::workload::WorkloadConfig;
use tandem_coordinator::audit::AuditKind;
use tandem_coordinator::status::ClusterStatus;
use tandem_core::config::NodeRole;

/// `tandem chaos` subcommands.
#[derive(Debug, Subcommand)]
pub enum ChaosCmd {
    /// Run scenario files (chaos/scenarios/*.toml) and print a verdict table.
    Run(RunArgs),
}

/// Arguments of `tandem chaos run`.
#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// Scenario files.
    #[arg(required = true)]
    pub scenarios: Vec<PathBuf>,
    /// Seed of the workload (offsets and data); the fault timeline is fixed by the file.
    #[arg(long, default_value = "1")]
    pub seed: u64,
    /// Override every scenario's workload duration, in seconds (faults keep their times).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Folder for clusters and reports (default: a temp folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs a `tandem chaos` subcommand.
pub fn run(cmd: ChaosCmd) -> Result<()> {
    let ChaosCmd::Run(a) = cmd;
    let out = a.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "tandem-chaos-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        ))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut scenarios = Vec::new();
    for p in &a.scenarios {
        let text =
            std::fs::read_to_string(p).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
        scenarios.push(
            Scenario::parse(&text, &p.display().to_string())
                .map_err(|e| bad_input(e.to_string()))?,
        );
    }
    let mut rows = Vec::new();
    for s in &scenarios {
        let dir = out.join(&s.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        println!("== {}: {}", s.name, s.description);
        let row = match run_one(s, &dir, a.seed, a.duration) {
            Ok(r) => r,
            Err(e) => json!({"scenario": s.name, "verdict": "ERROR", "error": format!("{e:#}")}),
        };
        let _ = proc::stop_all(&dir.join("run"));
        println!("   {}", row["verdict"]);
        rows.push(row);
    }
    println!(
        "\n{:<30} {:<28} {:>7} {:>5} {:>8} {:>8}  verdict",
        "scenario", "faults", "acked", "lost", "max RPO", "RTO"
    );
    let mut md = String::from("| scenario | faults | writes acknowledged | lost | max RPO ms | RTO ms | verdict |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in &rows {
        let text = |k: &str| match &r[k] {
            Value::String(v) => v.clone(),
            v => v.to_string(),
        };
        let cells: Vec<String> = [
            "scenario",
            "faults",
            "acked",
            "lost",
            "max_rpo_ms",
            "rto_ms",
            "verdict",
        ]
        .iter()
        .map(|k| text(k))
        .collect();
        println!(
            "{:<30} {:<28} {:>7} {:>5} {:>8} {:>8}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        );
        md.push_str(&format!("| {} |\n", cells.join(" | ")));
        if let Some(f) = r["failures"].as_array() {
            for x in f {
                println!("    {}", x.as_str().unwrap_or(""));
            }
        }
        if let Some(e) = r["error"].as_str() {
            println!("    {e}");
        }
        if let Some(n) = r["notes"].as_array() {
            for x in n {
                println!("    note: {}", x.as_str().unwrap_or(""));
            }
        }
    }
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    std::fs::write(out.join("report.md"), md)?;
    println!(
        "reports: {} and report.md",
        out.join("report.json").display()
    );
    if rows.iter().all(|r| r["verdict"] == "PASS") {
        Ok(())
    } else {
        bail!("some scenarios failed")
    }
}

struct Ctx {
    rt: tokio::runtime::Runtime,
    addrs: Vec<String>,
    config: PathBuf,
    run_dir: PathBuf,
    nbd: Vec<(String, u16)>,
    topo: tandem_core::config::Topology,
    /// One fault proxy per ordered pair of nodes; every node dials its peers through them.
    mesh: Mesh,
    /// The topology file each node runs with (peer addresses are proxies).
    node_configs: BTreeMap<String, PathBuf>,
    /// Clock skews of the scenario.
    skews: Vec<ClockSkew>,
    /// Every node follows a clock program file (the scenario has clock faults).
    clock_files: bool,
    /// Every node follows a failpoint file (the scenario has failpoint faults).
    failpoint_files: bool,
}

/// The environment of node `n`: its clock skew, if the scenario gives it one, and the clock
/// program and failpoint files it follows (`dir`: the run folder; `failpoints`: the scenario
/// sets failpoints).
fn node_env(
    skews: &[ClockSkew],
    clock_dir: Option<&Path>,
    failpoint_dir: Option<&Path>,
    n: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = skews
        .iter()
        .filter(|c| c.node == n)
        .map(|c| {
            (
                tandem_core::clock::SKEW_ENV.to_owned(),
                c.skew_ms.to_string(),
            )
        })
        .collect();
    if let Some(dir) = clock_dir {
        env.push((
            tandem_core::clock::CLOCK_FILE_ENV.to_owned(),
            clock_file(dir, n).display().to_string(),
        ));
    }
    if let Some(dir) = failpoint_dir {
        env.push((
            tandem_core::fault::FAILPOINTS_FILE_ENV.to_owned(),
            failpoint_file(dir, n).display().to_string(),
        ));
    }
    env
}

/// The failpoint file of node `n` (see [`tandem_core::fault::FAILPOINTS_FILE_ENV`]).
fn failpoint_file(run_dir: &Path, n: &str) -> PathBuf {
    run_dir.join(format!("failpoints.{n}"))
}

/// Writes the failpoints of node `n` (`NAME=ACTIONS` lines; empty: none).
fn set_failpoints(run_dir: &Path, n: &str, points: &BTreeMap<String, String>) -> Result<()> {
    let p = failpoint_file(run_dir, n);
    let tmp = p.with_extension("tmp");
    let text: String = points.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &p))
        .with_context(|| format!("writing {}", p.display()))
}

/// True if the log of node `n` says failpoint `name` fired.
fn failpoint_fired(run_dir: &Path, n: &str, name: &str) -> bool {
    let needle = format!("failpoint {name} fired");
    std::fs::read_to_string(proc::log_file(run_dir, n)).is_ok_and(|t| t.contains(&needle))
}

/// The clock program file of node `n` (see [`tandem_core::clock::CLOCK_FILE_ENV`]).
fn clock_file(run_dir: &Path, n: &str) -> PathBuf {
    run_dir.join(format!("clock.{n}"))
}

/// Writes the clock program of node `n`: `skew_ms` off from now on, drifting `drift` ms/s.
fn set_clock(run_dir: &Path, n: &str, skew_ms: i64, drift: i64) -> Result<()> {
    let p = clock_file(run_dir, n);
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, format!("{skew_ms} {drift}\n"))
        .and_then(|()| std::fs::rename(&tmp, &p))
        .with_context(|| format!("writing {}", p.display()))
}

impl Ctx {
    /// The freshest status: every coordinator is asked at once (a partitioned one must not
    /// hold the runner up); stale answers are ignored; among the rest the highest epoch wins,
    /// then an answer from the leader itself.
    fn status(&self) -> Option<ClusterStatus> {
        let answers = self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for a in self.addrs.clone() {
                set.spawn(async move {
                    tokio::time::timeout(Duration::from_millis(700), fetch_one(&a))
                        .await
                        .ok()
                        .and_then(Result::ok)
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                if let Ok(Some(st)) = r {
                    out.push(st);
                }
            }
            out
        });
        let rank = |s: &ClusterStatus| {
            (
                group(s).map(|g| g.epoch).unwrap_or(0),
                s.leader.as_deref() == Some(s.answered_by.as_str()),
            )
        };
        answers
            .into_iter()
            .filter(|s| !s.stale && s.leader.is_some())
            .fold(None, |best: Option<ClusterStatus>, s| match best {
                Some(b) if rank(&b) >= rank(&s) => Some(b),
                _ => Some(s),
            })
    }

    fn nbd_of_site(&self, site: &str) -> SocketAddr {
        let port = self
            .nbd
            .iter()
            .find(|(n, _)| n == &format!("{site}-nbd"))
            .map(|(_, p)| *p)
            .unwrap_or(0);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Starts (again) node `n` with its own topology file (and clock skew); a restarted node
    /// has no failpoint set (the crash a failpoint caused does not come back by itself).
    fn start(&self, n: &str) -> Result<()> {
        let config = self.node_configs.get(n).unwrap_or(&self.config);
        let clocks = self.clock_files.then_some(self.run_dir.as_path());
        let failpoints = self.failpoint_files.then_some(self.run_dir.as_path());
        if self.failpoint_files {
            set_failpoints(&self.run_dir, n, &BTreeMap::new())?;
        }
        let env = node_env(&self.skews, clocks, failpoints, n);
        proc::start_node_env(config, n, &self.run_dir, &env)?;
        Ok(())
    }

    /// Nodes not in `killed` whose process is gone (a failpoint crashed them).
    fn crashed(&self, killed: &[String]) -> Vec<String> {
        self.all_nodes()
            .into_iter()
            .filter(|n| !killed.contains(n))
            .filter(|n| proc::read_pid(&self.run_dir, n).is_ok_and(|pid| !proc::alive(pid)))
            .collect()
    }

    fn all_nodes(&self) -> Vec<String> {
        self.topo.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The nodes a target names, resolved with the last status known (roles move).
    fn nodes_of(&self, target: &str, st: Option<&ClusterStatus>) -> Vec<String> {
        let g = st.and_then(group);
        let site_nodes = |site: &str| -> Vec<String> {
            self.topo
                .nodes
                .iter()
                .filter(|n| n.site == site)
                .map(|n| n.name.clone())
                .collect()
        };
        let role_nodes = |role: NodeRole| -> Vec<String> {
            self.topo
                .nodes
                .iter()
                .filter(|n| n.role == role)
                .map(|n| n.name.clone())
                .collect()
        };
        match target {
            "site:primary" => g.map(|g| site_nodes(&g.primary)).unwrap_or_default(),
            "site:replica" => g.map(|g| site_nodes(&g.replica)).unwrap_or_default(),
            "leader" => st.and_then(|s| s.leader.clone()).into_iter().collect(),
            "primary-replicator" => g
                .map(|g| format!("{}-rep", g.primary))
                .into_iter()
                .collect(),
            "replica-replicator" => g
                .map(|g| format!("{}-rep", g.replica))
                .into_iter()
                .collect(),
            "coordinators" => role_nodes(NodeRole::Coordinator),
            "replicators" => role_nodes(NodeRole::Replicator),
            "all" => self.all_nodes(),
            t => {
                if let Some(site) = t.strip_prefix("site:") {
                    site_nodes(site)
                } else {
                    t.strip_prefix("node:")
                        .map(str::to_owned)
                        .into_iter()
                        .collect()
                }
            }
        }
    }

    /// Applies a network fault to the links between `target` and `peer` (default: every
    /// other node); returns how many links changed.
    fn network_fault(&self, f: &Fault, st: Option<&ClusterStatus>, seed: u64) -> usize {
        let a = self.nodes_of(&f.target, st);
        let b: Vec<String> = match &f.peer {
            Some(p) => self.nodes_of(p, st),
            None => self
                .all_nodes()
                .into_iter()
                .filter(|n| !a.contains(n))
                .collect(),
        };
        match f.action {
            FaultAction::Partition | FaultAction::Flap => self.mesh.partition(&a, &b),
            FaultAction::Cut => self.mesh.update(&a, &b, &|x, dir, from_a| {
                if from_a {
                    x.link_mut(dir).blackhole = Some(Blackhole::Stall);
                }
            }),
            FaultAction::Heal if f.target == "all" && f.peer.is_none() => {
                self.mesh.heal_all();
                self.mesh.heal(&a, &a)
            }
            FaultAction::Heal => self.mesh.heal(&a, &b),
            FaultAction::Corrupt => {
                let every = f.every.unwrap_or(1 << 20);
                self.mesh.update(&a, &b, &|x, dir, from_a| {
                    x.seed = seed;
                    if from_a {
                        x.link_mut(dir).corrupt_every = Some(every);
                    }
                })
            }
            FaultAction::Bandwidth => {
                let rate = f.bytes_per_sec;
                self.mesh.update(&a, &b, &|x, dir, _| {
                    x.link_mut(dir).bandwidth = rate;
                })
            }
            FaultAction::Latency => {
                let delay = f.delay.map(|d| d.as_duration()).unwrap_or_default();
                self.mesh.update(&a, &b, &|x, dir, _| {
                    x.link_mut(dir).latency = delay;
                })
            }
            FaultAction::Kill
            | FaultAction::Pause
            | FaultAction::Resume
            | FaultAction::Restart
            | FaultAction::Order
            | FaultAction::Clock
            | FaultAction::Strobe
            | FaultAction::Failpoint
            | FaultAction::Bitrot
            | FaultAction::TornTail => 0,
        }
    }
}

/// The newest journal segment (`*.seg`, by modification time, then name) under `dir`.
fn newest_segment(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                if best.as_ref().is_none_or(|(bt, bp)| (t, &p) > (*bt, bp)) {
                    best = Some((t, p));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Tears the newest journal segment under `data_dir` over `bytes` bytes as `tear` says;
/// returns what was done.
fn tear_journal_tail(data_dir: &Path, bytes: u64, tear: Tear) -> Result<String> {
    use std::os::unix::fs::FileExt;
    let seg = newest_segment(data_dir)
        .with_context(|| format!("torn-tail: no journal segment under {}", data_dir.display()))?;
    let len = std::fs::metadata(&seg)
        .with_context(|| format!("torn-tail: {}", seg.display()))?
        .len();
    if len == 0 {
        bail!("torn-tail: {} is empty: nothing to tear", seg.display());
    }
    let n = bytes.min(len);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .with_context(|| format!("torn-tail: opening {}", seg.display()))?;
    let mut buf = vec![0u8; usize::try_from(n)?];
    let what = match tear {
        Tear::Cut => {
            f.set_len(len - n)?;
            "cut the last"
        }
        Tear::Garble => {
            f.read_exact_at(&mut buf, len - n)?;
            for b in &mut buf {
                *b ^= 0xA5;
            }
            f.write_all_at(&buf, len - n)?;
            "garbled the last"
        }
        Tear::PartialFrame => {
            f.read_exact_at(&mut buf, 0)?;
            f.write_all_at(&buf, len)?;
            "appended a partial frame of"
        }
    };
    f.sync_all()?;
    Ok(format!(
        "{what} {n} bytes of {} ({len} bytes)",
        seg.display()
    ))
}

/// How long after the runner notes a failure an acknowledgement the failed primary sent
/// before it may still be recorded by the client (async loss window).
const IN_FLIGHT_ACK_MS: u64 = 500;

/// Node `n` once its process is gone: faults on its files at rest (`torn-tail`, `bitrot`)
/// need it killed first.
fn stopped_node<'a>(
    ctx: &'a Ctx,
    killed: &[String],
    n: &str,
    what: &str,
) -> Result<&'a tandem_core::config::Node> {
    if !killed.iter().any(|k| k == n) {
        bail!("{what} of {n}: kill it first (it changes files at rest)");
    }
    wait_dead(&ctx.run_dir, n)?;
    ctx.topo
        .node(n)
        .with_context(|| format!("{what}: no node {n}"))
}

/// Flips `count` bytes of `img` at offsets drawn from `seed` (each byte XOR 0xFF, fsynced);
/// returns the offsets, sorted.
fn rot_volume(img: &Path, count: u64, seed: u64) -> Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .with_context(|| format!("bitrot: opening {}", img.display()))?;
    let len = f.metadata()?.len();
    if len == 0 {
        bail!("bitrot: {} is empty", img.display());
    }
    let mut rng = tandem_chaos::rng::SplitMix64::for_stream(seed, 0xB17_0707);
    let mut at: Vec<u64> = (0..count).map(|_| rng.below(len)).collect();
    at.sort_unstable();
    at.dedup();
    for &o in &at {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, o)?;
        b[0] ^= 0xFF;
        f.write_all_at(&b, o)?;
    }
    f.sync_all()?;
    Ok(at)
}

/// Waits (bounded) until the process of `node` is gone, so its files can be changed.
fn wait_dead(run_dir: &Path, node: &str) -> Result<()> {
    let Ok(pid) = proc::read_pid(run_dir, node) else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc::alive(pid) {
        if Instant::now() > deadline {
            bail!("{node} (pid {pid}) still runs: kill it before changing its files");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// How long after its commit a SQLite transaction may still be missing at the replica in sync
/// mode: the source reads the WAL every 100 ms and ships one batch at a time; the rest is slack
/// for a loaded 2-core machine.
const DB_CAPTURE_WINDOW_MS: u64 = 1000;

/// The database workload of a scenario (`database = true`): the writer, and what the runner
/// saw of the `db` group while faults ran.
struct DbRun {
    writer: DbWriter,
    dir: PathBuf,
    /// The site whose copy the writer commits to (the last primary it was pointed at).
    primary: String,
    rpo_before_failure: i64,
    max_rpo: i64,
    /// Highest transaction id read from the replica's copy before the failure.
    confirmed: u64,
    /// At a failover: the new primary, the history then and its copy before any new write.
    promoted: Option<(String, History, Result<DbSnapshot>)>,
}

impl DbRun {
    fn path(&self, site: &str) -> PathBuf {
        self.dir.join(format!("databases/{site}/app.db"))
    }

    /// Follows the `db` group: RPO, what the replica confirmed, and the primary: once a new
    /// primary holds its lease, its copy is read (the promoted replica, before anything new is
    /// written) and the writer moves to it.
    fn observe(&mut self, st: &ClusterStatus, rec: &Recorder, failed: bool, killed: &[String]) {
        let Some(g) = db_group(st) else {
            return;
        };
        self.max_rpo = self.max_rpo.max(g.rpo_ms);
        if !failed {
            self.rpo_before_failure = g.rpo_ms;
            if let Ok(n) = max_txn(&self.path(&g.replica), Duration::from_millis(100)) {
                self.confirmed = self.confirmed.max(n);
            }
        }
        let holder = format!("{}-rep", g.primary);
        let leased = g
            .lease
            .as_ref()
            .is_some_and(|l| l.status == "active" && l.holder == holder && l.epoch == g.epoch);
        if !leased || killed.contains(&holder) || self.writer.site().as_deref() == Some(&g.primary)
        {
            return;
        }
        if g.primary != self.primary {
            let snap = read_db(&self.path(&g.primary), Duration::from_secs(5));
            self.promoted = Some((g.primary.clone(), rec.snapshot(), snap));
            self.primary = g.primary.clone();
        }
        self.writer
            .retarget(Some((self.path(&g.primary), &g.primary, g.epoch)));
    }

    /// The application runs at its site: it stops writing when that site's replicator is
    /// about to be killed (as it would die with the site).
    fn before_kill(&self, nodes: &[String]) {
        if let Some(site) = self.writer.site() {
            if nodes.contains(&format!("{site}-rep")) {
                self.writer.retarget(None);
            }
        }
    }
}

fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The final databases of the `db` group.
struct FinalDbs {
    primary: String,
    primary_db: Result<DbSnapshot>,
    replica: String,
    /// The replica's copy (judged only when the group is protected again).
    replica_db: Result<DbSnapshot>,
    protected: bool,
}

/// Reads the final primary's database and the replica's, once the replica holds the
/// primary's last transaction (bounded wait).
fn final_databases(ctx: &Ctx, d: &DbRun) -> FinalDbs {
    let g = ctx
        .status()
        .as_ref()
        .and_then(db_group)
        .cloned()
        .unwrap_or_default();
    let busy = Duration::from_secs(5);
    let protected = g.state == "protected";
    let primary_db = read_db(&d.path(&g.primary), busy);
    let want = primary_db.as_ref().map(DbSnapshot::max_txn).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let replica_db = loop {
        let r = read_db(&d.path(&g.replica), busy);
        let done = !protected || r.as_ref().is_ok_and(|r| r.max_txn() >= want);
        if done || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    FinalDbs {
        primary: g.primary,
        primary_db,
        replica: g.replica,
        replica_db,
        protected,
    }
}

/// `tandem verify GROUP`; a verify that could not run (a coordinator still electing, roles
/// still settling) is tried again; a verdict "differs" is final.
fn verify_group(ctx: &Ctx, name: &str, notes: &mut Vec<String>) -> Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        let r = crate::cmd::verify::run(crate::cmd::verify::Args {
            group: name.into(),
            config: ctx.config.clone(),
            timeout_secs: 30,
            chunk_mib: 64,
            actor: "chaos".into(),
            query: None,
        });
        match r {
            Err(e) if tries < 8 && !format!("{e:#}").contains("differs") => {
                notes.push(format!("verify {name} try {tries} could not run: {e:#}"));
                std::thread::sleep(Duration::from_millis(2500));
            }
            r => return r,
        }
    }
}

fn run_one(s: &Scenario, dir: &Path, seed: u64, duration: Option<u64>) -> Result<Value> {
    let (mut text, ports) = topology_text(32, &s.mode, s.auto_failover)?;
    if s.database {
        text.push_str(&db_group_text(&s.mode, s.auto_failover));
    }
    if let Some(t) = s.sync_timeout {
        let line = "sync_timeout = \"1s\"";
        if !text.contains(line) {
            bail!("the embedded topology has no `{line}` to override");
        }
        text = text.replace(line, &format!("sync_timeout = \"{}ms\"", t.as_millis()));
    }
    let config = dir.join("topology.toml");
    std::fs::write(&config, &text)?;
    let config = std::fs::canonicalize(&config)?;
    let topo = crate::cmd::load_topology(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_dir = dir.join("run");
    let rt = runtime()?;
    // The proxies run in this process, on its runtime, before any node starts.
    let mut real = Vec::new();
    for n in &topo.nodes {
        real.push((n.name.clone(), proc::resolve(&n.listen)?));
    }
    let avoid: Vec<u16> = ports
        .iter()
        .map(|(_, p)| *p)
        .chain(real.iter().map(|(_, a)| a.port()))
        .collect();
    // Only scenarios with network faults pay for the proxies (all traffic then crosses this
    // process); the others run exactly as `tandem local up` does.
    let needs_mesh = s.faults.iter().any(|f| f.action.is_network());
    let linked: &[(String, SocketAddr)] = if needs_mesh { &real } else { &[] };
    let mesh = rt.block_on(Mesh::start(linked, &avoid))?;
    let mut node_configs = BTreeMap::new();
    for n in &topo.nodes {
        let p = dir.join(format!("topology.{}.toml", n.name));
        std::fs::write(&p, mesh.topology_for(&text, &n.name)?)
            .with_context(|| format!("writing {}", p.display()))?;
        node_configs.insert(n.name.clone(), std::fs::canonicalize(&p)?);
    }
    for c in &s.clock_skew {
        if topo.node(&c.node).is_none() {
            bail!("clock_skew: no node {:?} in the topology", c.node);
        }
    }
    let clock_files = s.has_clock_faults();
    if clock_files {
        std::fs::create_dir_all(&run_dir)?;
        for n in &topo.nodes {
            set_clock(&run_dir, &n.name, 0, 0)?;
        }
    }
    let clock_dir = clock_files.then_some(run_dir.as_path());
    let failpoint_files = s.has_failpoints();
    if failpoint_files {
        if !tandem_core::fault::ENABLED {
            bail!(
                "{} sets failpoints, but this tandem was built without them: build with \
                 `cargo build --workspace --bins` (the test build) or `--features tandem/failpoints`",
                s.name
            );
        }
        std::fs::create_dir_all(&run_dir)?;
        for n in &topo.nodes {
            set_failpoints(&run_dir, &n.name, &BTreeMap::new())?;
        }
    }
    let failpoint_dir = failpoint_files.then_some(run_dir.as_path());
    crate::cmd::local::up_with(
        &config,
        &run_dir,
        Duration::from_secs(60),
        &|n| {
            node_configs
                .get(n)
                .cloned()
                .unwrap_or_else(|| config.clone())
        },
        &|n| node_env(&s.clock_skew, clock_dir, failpoint_dir, n),
    )?;
    let ctx = Ctx {
        rt,
        addrs: crate::cmd::status::addrs_of(&topo),
        config: config.clone(),
        run_dir: run_dir.clone(),
        nbd: ports,
        topo,
        mesh,
        node_configs,
        skews: s.clock_skew.clone(),
        clock_files,
        failpoint_files,
    };
    let wait =
        |what: &str, secs: u64, f: &dyn Fn(&ClusterStatus) -> bool| -> Result<ClusterStatus> {
            let deadline = Instant::now() + Duration::from_secs(secs);
            loop {
                if let Some(st) = ctx.status() {
                    if f(&st) {
                        return Ok(st);
                    }
                }
                if Instant::now() > deadline {
                    bail!("timed out after {secs}s waiting for {what}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
    let protected = |g: Option<&tandem_coordinator::status::GroupStatus>| {
        g.is_some_and(|g| {
            g.state == "protected" && g.lease.as_ref().is_some_and(|l| l.status == "active")
        })
    };
    let st0 = wait("group protected with a lease", 60, &|st| {
        protected(group(st)) && (!s.database || protected(db_group(st)))
    })?;
    let g0 = group(&st0).cloned().unwrap_or_default();
    let primary0 = g0.primary.clone();
    let epoch0 = g0.epoch;
    let rto_target = g0.rto_target_ms;

    let cfg = WorkloadConfig {
        blocks_per_write: s.blocks_per_write.unwrap_or(4),
        op_timeout: Duration::from_secs(3),
        ..WorkloadConfig::new(seed, 32 << 20)
    };
    let rec = Arc::new(Recorder::new(Instant::now()));
    let writer = Writer::new(
        ctx.nbd_of_site(&primary0),
        "disk0",
        cfg.clone(),
        rec.clone(),
    );
    writer.retarget_labeled(ctx.nbd_of_site(&primary0), &primary0, epoch0);
    writer.set_incompressible(s.incompressible);
    writer.start(&ctx.rt, 4);
    // Clients pinned to each data site (they do not follow the primary): what each site
    // acknowledges, labelled with the newest epoch known, for the split-brain checkers.
    let mut pinned: Vec<(String, Arc<Writer>)> = Vec::new();
    if s.clients_at_every_site {
        for (k, site) in [g0.primary.clone(), g0.replica.clone()].iter().enumerate() {
            let k = k as u64 + 1;
            let c = WorkloadConfig {
                seed: seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ..cfg.clone()
            };
            let w = Writer::new(ctx.nbd_of_site(site), "disk0", c, rec.clone());
            w.retarget_labeled(ctx.nbd_of_site(site), site, epoch0);
            w.start_at(&ctx.rt, 1, 100_000 * (k + 1) * 10);
            pinned.push((site.clone(), w));
        }
    }
    let mut db = if s.database {
        let g = db_group(&st0).cloned().unwrap_or_default();
        let path = dir.join(format!("databases/{}/app.db", g.primary));
        Some(DbRun {
            writer: DbWriter::start(
                path,
                &g.primary,
                g.epoch,
                Duration::from_millis(5),
                Some(rec.clone()),
            ),
            dir: dir.to_path_buf(),
            primary: g.primary.clone(),
            rpo_before_failure: 0,
            max_rpo: 0,
            confirmed: 0,
            promoted: None,
        })
    } else {
        None
    };
    let total = Duration::from_millis(duration.map(|d| d * 1000).unwrap_or(s.duration.as_millis()));
    let start = Instant::now();
    let timeline = s.timeline();
    let mut faults = timeline.iter().peekable();
    let mut killed: Vec<String> = Vec::new();
    let mut paused: Vec<String> = Vec::new();
    let mut epochs = Vec::new();
    let mut rpo_samples = Vec::new();
    let mut max_rpo = 0i64;
    let mut rpo_before_failure = 0i64;
    let mut failure_ms = None;
    let mut primary_outlives_failure = false;
    let mut fault_names = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut last_st: Option<ClusterStatus> = Some(st0.clone());
    let mut fence_ms: Option<u64> = None;
    let mut net_from_ms: Option<u64> = None;
    let mut net_until_ms: Option<u64> = None;
    let mut newest_epoch = epoch0;
    let mut torn: Vec<String> = Vec::new();
    let mut orders_accepted = 0usize;
    // Failpoints set per node, and (node, failpoint) pairs armed with a `return` action.
    let mut failpoints: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut armed: Vec<(String, String)> = Vec::new();
    let mut rotted = 0usize;
    while start.elapsed() < total {
        if ctx.failpoint_files {
            // A node that a failpoint crashed counts as killed from the moment it is seen gone.
            for n in ctx.crashed(&killed) {
                notes.push(format!("{n} crashed at {} ms (failpoint)", rec.now_ms()));
                killed.push(n);
                failure_ms.get_or_insert(rec.now_ms());
            }
        }
        if let Some(st) = ctx.status() {
            if let Some(g) = group(&st) {
                let now = rec.now_ms();
                epochs.push(EpochObservation {
                    observer: "client".into(),
                    epoch: tandem_core::ids::Epoch(g.epoch),
                    time_ms: now,
                });
                rpo_samples.push(RpoSample {
                    time_ms: now,
                    rpo_ms: g.rpo_ms,
                });
                max_rpo = max_rpo.max(g.rpo_ms);
                if failure_ms.is_none() {
                    rpo_before_failure = g.rpo_ms;
                }
                if g.epoch == epoch0 {
                    if let Some(l) = g.lease.as_ref().filter(|l| l.epoch == epoch0) {
                        let end = now as i64 + (l.expires_ms - now_unix_ms());
                        fence_ms = Some(fence_ms.unwrap_or(0).max(end.max(0) as u64));
                    }
                }
                newest_epoch = newest_epoch.max(g.epoch);
                // The client follows the primary, as an application behind a DNS or VIP switch.
                writer.retarget_labeled(ctx.nbd_of_site(&g.primary), &g.primary, newest_epoch);
                for (site, w) in &pinned {
                    w.retarget_labeled(ctx.nbd_of_site(site), site, newest_epoch);
                }
            }
            if let Some(d) = db.as_mut() {
                d.observe(&st, &rec, failure_ms.is_some(), &killed);
            }
            last_st = Some(st);
        }
        while let Some(f) = faults.peek() {
            if start.elapsed() < Duration::from_millis(f.at.as_millis()) {
                break;
            }
            let f = faults.next().context("fault")?;
            let st = last_st.as_ref();
            fault_names.push(
                format!("{:?}@{}s:{}", f.action, f.at.as_millis() / 1000, f.target).to_lowercase(),
            );
            if f.action.is_network() {
                let n = ctx.network_fault(f, st, seed);
                if n == 0 && f.action != FaultAction::Heal {
                    bail!(
                        "{:?} at {} ms: no link between {} and {}",
                        f.action,
                        f.at.as_millis(),
                        f.target,
                        f.peer.as_deref().unwrap_or("the other nodes")
                    );
                }
                if f.action == FaultAction::Heal {
                    net_until_ms = Some(rec.now_ms());
                } else {
                    net_from_ms.get_or_insert(rec.now_ms());
                    if matches!(f.action, FaultAction::Partition | FaultAction::Cut)
                        && failure_ms.is_none()
                    {
                        failure_ms = Some(rec.now_ms());
                        primary_outlives_failure = true;
                    }
                }
                continue;
            }
            if f.action == FaultAction::Order {
                let kind = f.runbook.as_deref().unwrap_or("failover");
                let at = rec.now_ms();
                let r = ctx.rt.block_on(crate::cmd::runs::order(
                    &ctx.addrs,
                    kind,
                    VOLUME_GROUP,
                    "chaos",
                ));
                match r {
                    Ok(id) => {
                        orders_accepted += 1;
                        notes.push(format!("{kind} ordered at {at} ms: run {id}"));
                    }
                    Err(e) => notes.push(format!("{kind} ordered at {at} ms: refused: {e:#}")),
                }
                if failure_ms.is_none() {
                    failure_ms = Some(at);
                    primary_outlives_failure = true;
                }
                continue;
            }
            let nodes = ctx.nodes_of(&f.target, st);
            if let (Some(d), FaultAction::Kill) = (db.as_ref(), f.action) {
                d.before_kill(&nodes);
            }
            for n in &nodes {
                match f.action {
                    FaultAction::Kill => {
                        if let Ok(pid) = proc::read_pid(&ctx.run_dir, n) {
                            proc::signal(pid, libc::SIGKILL)?;
                            killed.push(n.clone());
                        }
                    }
                    FaultAction::Pause => {
                        if let Ok(pid) = proc::read_pid(&ctx.run_dir, n) {
                            proc::signal(pid, libc::SIGSTOP)?;
                            paused.push(n.clone());
                        }
                    }
                    FaultAction::Resume => {
                        if let Ok(pid) = proc::read_pid(&ctx.run_dir, n) {
                            proc::signal(pid, libc::SIGCONT)?;
                            paused.retain(|p| p != n);
                        }
                    }
                    FaultAction::Clock => {
                        let (skew, drift) = (f.skew_ms.unwrap_or(0), f.drift_ms_per_s.unwrap_or(0));
                        set_clock(&ctx.run_dir, n, skew, drift)?;
                    }
                    FaultAction::Bitrot => {
                        let site = stopped_node(&ctx, &killed, n, "bitrot")?.site.clone();
                        let img = dir.join(format!("volumes/{site}/disk0.img"));
                        let at = rot_volume(&img, f.bytes.unwrap_or(1), seed)?;
                        notes.push(format!(
                            "{n}: flipped {} bytes of {} (first at offset {})",
                            at.len(),
                            img.display(),
                            at.first().copied().unwrap_or(0)
                        ));
                        rotted += at.len();
                    }
                    FaultAction::Failpoint => {
                        let (Some(name), Some(actions)) = (&f.failpoint, &f.actions) else {
                            bail!("failpoint fault without failpoint and actions");
                        };
                        let set = failpoints.entry(n.clone()).or_default();
                        if actions.trim() == "off" {
                            set.remove(name);
                        } else {
                            set.insert(name.clone(), actions.clone());
                        }
                        set_failpoints(&ctx.run_dir, n, set)?;
                        if actions.contains("return") {
                            armed.push((n.clone(), name.clone()));
                        }
                        notes.push(format!(
                            "{n}: failpoint {name}={actions} at {} ms",
                            rec.now_ms()
                        ));
                    }
                    FaultAction::TornTail => {
                        let node = stopped_node(&ctx, &killed, n, "torn-tail")?;
                        let what = tear_journal_tail(
                            &ctx.topo.node_data_dir(node),
                            f.bytes.unwrap_or(1),
                            f.tear,
                        )?;
                        notes.push(format!("{n}: {what}"));
                        torn.push(n.clone());
                    }
                    _ => {}
                }
            }
            if f.action == FaultAction::Restart {
                // Restart what this scenario killed of the target (the target may have
                // moved: restart every killed node of the named site or role).
                let again: Vec<String> = killed
                    .iter()
                    .filter(|k| {
                        nodes.contains(k) || f.target == "leader" || f.target.starts_with("site:")
                    })
                    .cloned()
                    .collect();
                for n in &again {
                    // A restarted node starts with no failpoint set.
                    failpoints.remove(n);
                    ctx.start(n)?;
                }
                killed.retain(|k| !again.contains(k));
            } else if failure_ms.is_none()
                && matches!(f.action, FaultAction::Kill | FaultAction::Pause)
            {
                failure_ms = Some(rec.now_ms());
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    // Recovery: heal every link, set every clock right, resume and restart everything, wait
    // until protected and caught up.
    ctx.mesh.heal_all();
    if ctx.clock_files {
        for n in &ctx.topo.nodes {
            set_clock(&ctx.run_dir, &n.name, 0, 0)?;
        }
    }
    if ctx.failpoint_files {
        // Failpoints off everywhere, and whatever they crashed is started again below.
        for n in ctx.all_nodes() {
            set_failpoints(&ctx.run_dir, &n, &BTreeMap::new())?;
        }
        for n in ctx.crashed(&killed) {
            notes.push(format!("{n} crashed (failpoint), found at the end"));
            killed.push(n);
        }
    }
    let mut old_primary_refused = None;
    for n in paused.clone() {
        if let Ok(pid) = proc::read_pid(&ctx.run_dir, &n) {
            proc::signal(pid, libc::SIGCONT)?;
        }
    }
    if s.checks.contains(&Check::OldPrimaryFenced) {
        // Right after it wakes, the old primary must refuse a write.
        let addr = ctx.nbd_of_site(&primary0);
        let r = ctx.rt.block_on(async {
            let mut c = NbdClient::connect(addr, "disk0").await?;
            c.write(0, &[0x5a; 4096], false).await
        });
        old_primary_refused = Some(r.is_err());
    }
    for n in killed.clone() {
        ctx.start(&n)?;
    }
    let db_failback = s.database
        && (s.checks.contains(&Check::DbIdenticalAfterRecovery)
            || s.checks.contains(&Check::DbTailQuarantined));
    let recovered = (|| -> Result<ClusterStatus> {
        let st_end = wait("recovery: group protected", 90, &|st| {
            group(st).is_some_and(|g| {
                g.state == "protected" && g.lease.as_ref().is_some_and(|l| l.status == "active")
            })
        })?;
        let end_primary = group(&st_end)
            .map(|g| g.primary.clone())
            .unwrap_or_default();
        if let Some(d) = db.as_mut() {
            // A returning old primary of a database group is not resynced (only volumes are,
            // by merkle diff): the db group is waited for until protected only when the
            // scenario judges the final replica.
            let st_db = if db_failback {
                wait("recovery: db protected", 90, &|st| protected(db_group(st)))?
            } else {
                wait("recovery: db primary holds its lease", 30, &|st| {
                    db_group(st).is_some_and(|g| {
                        g.lease.as_ref().is_some_and(|l| {
                            l.status == "active" && l.holder == format!("{}-rep", g.primary)
                        })
                    })
                })?
            };
            d.observe(&st_db, &rec, true, &[]);
        }
        for (_, w) in &pinned {
            w.stop(&ctx.rt);
        }
        writer.retarget(ctx.nbd_of_site(&end_primary));
        std::thread::sleep(Duration::from_millis(500));
        writer.stop(&ctx.rt);
        if let Some(d) = db.as_mut() {
            d.writer.stop()?;
        }
        let st = wait("replica caught up", 60, &|st| {
            group(st).is_some_and(|g| g.rpo_ms == 0 && g.durable_seq >= g.last_captured_seq)
        })?;
        if db_failback {
            // The source reads the WAL every 100 ms: let it capture the last commits first.
            std::thread::sleep(Duration::from_millis(300));
            wait("db replica caught up", 60, &|st| {
                db_group(st).is_some_and(|g| {
                    g.rpo_ms == 0 && g.durable_seq >= g.last_captured_seq && g.durable_seq > 0
                })
            })?;
        }
        Ok(st)
    })();
    let mut failures = Vec::new();
    // Without recovery the final-state checks cannot be judged, but the history checks can
    // (and are what catches a primary that kept writing).
    let (g_end, recovered) = match recovered {
        Ok(st) => (group(&st).cloned().unwrap_or_default(), true),
        Err(e) => {
            for (_, w) in &pinned {
                w.stop(&ctx.rt);
            }
            writer.stop(&ctx.rt);
            if let Some(d) = db.as_mut() {
                let _ = d.writer.stop();
            }
            failures.push(format!("no recovery: {e:#}"));
            let last = ctx.status().or(last_st);
            (
                last.as_ref().and_then(group).cloned().unwrap_or_default(),
                false,
            )
        }
    };
    let history = rec.snapshot();
    let _ = history.save(&dir.join("history.jsonl"));
    let mut lost = 0usize;
    let mut db_lost = 0usize;
    // The final databases: the primary's copy and the replica's once it holds as much.
    let db_final = match (&db, recovered) {
        (Some(d), true) => Some(final_databases(&ctx, d)),
        _ => None,
    };
    if let Some(d) = &db {
        notes.push(format!(
            "db: {} transactions committed, {} failed or unknown; max RPO {} ms (before the failure {} ms); the replica was seen holding txn {} before the failure",
            d.writer.committed(),
            d.writer.failed(),
            d.max_rpo,
            d.rpo_before_failure,
            d.confirmed
        ));
        if let Some(e) = d.writer.last_error() {
            notes.push(format!("db writer: last error: {e}"));
        }
        if let Some((site, _, snap)) = &d.promoted {
            notes.push(match snap {
                Ok(sn) => format!(
                    "db: promoted copy at {site}: {} transactions (last txn {}), integrity_check {}",
                    sn.state.len(),
                    sn.max_txn(),
                    sn.integrity
                ),
                Err(e) => format!("db: promoted copy at {site} unreadable: {e:#}"),
            });
        }
    }
    let mut rto_ms = Value::Null;
    for c in &s.checks {
        let needs_final_state = matches!(
            c,
            Check::NoLostAcknowledgedWrites
                | Check::IdenticalAfterRecovery
                | Check::RtoWithinTarget
                | Check::AuditChainValid
                | Check::TailQuarantined
        );
        if needs_final_state && !recovered {
            continue;
        }
        match c {
            Check::NoLostAcknowledgedWrites => {
                let img = std::fs::read(dir.join(format!("volumes/{}/disk0.img", g_end.primary)))?;
                let f = |off: u64, len: u64| {
                    blake3::hash(img.get(off as usize..(off + len) as usize).unwrap_or(&[]))
                };
                let mode = if s.mode == "sync" {
                    ReplicationMode::Sync
                } else {
                    ReplicationMode::Async
                };
                // Acknowledgements sent before a kill reach the client (and its history) a
                // little after the runner noted the kill: they count as before the failure.
                let mut window = rpo_before_failure.max(0) as u64 + 1000 + IN_FLIGHT_ACK_MS;
                let mut failure_at = failure_ms.map_or(u64::MAX, |f| f + IN_FLIGHT_ACK_MS);
                if let (true, Some(fail), Some(fence)) = (
                    mode == ReplicationMode::Async
                        && primary_outlives_failure
                        && g_end.epoch > epoch0,
                    failure_ms,
                    fence_ms,
                ) {
                    // A partitioned (or failed-over while alive) async primary keeps
                    // acknowledging until its lease ends: what it acknowledged from
                    // (failure - RPO) to its fence may be lost.
                    failure_at = fence.max(fail);
                    window += failure_at - fail;
                    notes.push(format!(
                        "async loss window: {} ms before the old lease ended at {failure_at} ms",
                        window
                    ));
                }
                let v = lost_acknowledged_writes(&history, &f, mode, window, failure_at);
                lost = v.violations.len();
                if !v.ok {
                    failures.push(format!(
                        "lost acknowledged writes: {}",
                        v.violations
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
            Check::IdenticalAfterRecovery => {
                if let Err(e) = verify_group(&ctx, VOLUME_GROUP, &mut notes) {
                    failures.push(format!("not identical after recovery: {e:#}"));
                }
            }
            Check::FailedOver => {
                if g_end.epoch < 3 {
                    failures.push(format!("no failover happened (epoch {})", g_end.epoch));
                }
            }
            Check::NoDoublePromotion => {
                let records = ctx
                    .rt
                    .block_on(crate::cmd::evidence::fetch_audit(&ctx.addrs))?;
                let promos: Vec<Promotion> = records
                    .iter()
                    .filter(|r| {
                        r.kind == AuditKind::Promote && r.group.as_deref() == Some(VOLUME_GROUP)
                    })
                    .map(|r| Promotion {
                        site: r.detail["to_site"].as_str().unwrap_or("?").to_owned(),
                        epoch: tandem_core::ids::Epoch(r.detail["to_epoch"].as_u64().unwrap_or(0)),
                        time_ms: u64::try_from(r.at_ms).unwrap_or(0),
                    })
                    .collect();
                let v = no_double_promotion(&promos);
                notes.push(format!(
                    "{} promotions in the audit chain, {orders_accepted} orders accepted",
                    promos.len()
                ));
                if !v.ok {
                    failures.push(format!("double promotion: {}", v.violations.join("; ")));
                }
                let planned_orders = s
                    .faults
                    .iter()
                    .filter(|f| f.action == FaultAction::Order)
                    .count();
                if planned_orders > 0 && promos.len() > orders_accepted.max(1) {
                    failures.push(format!(
                        "{} promotions for {orders_accepted} accepted orders",
                        promos.len()
                    ));
                }
            }
            Check::TornTailRepaired => {
                let logs: Vec<(String, String)> = torn
                    .iter()
                    .map(|n| {
                        let log = std::fs::read_to_string(proc::log_file(&ctx.run_dir, n))
                            .unwrap_or_default();
                        (n.clone(), log)
                    })
                    .collect();
                let v = torn_tail_repaired(&logs);
                if !v.ok {
                    failures.push(format!("torn tail: {}", v.violations.join("; ")));
                }
            }
            Check::NoFailover => {
                if g_end.primary != primary0 || g_end.epoch != epoch0 {
                    failures.push(format!(
                        "unexpected failover: primary {} epoch {}",
                        g_end.primary, g_end.epoch
                    ));
                }
            }
            Check::RtoWithinTarget => {
                // The RTO is audited when the failover run ends, which may come a little
                // after the group is protected again.
                let deadline = Instant::now() + Duration::from_secs(20);
                let rto = loop {
                    let records = ctx
                        .rt
                        .block_on(crate::cmd::evidence::fetch_audit(&ctx.addrs))?;
                    let rto = records
                        .iter()
                        .filter_map(|r| {
                            r.detail
                                .get("rto_ms")
                                .and_then(Value::as_i64)
                                .filter(|_| r.detail["op"] == "failover")
                        })
                        .next_back();
                    if rto.is_some() || Instant::now() > deadline {
                        break rto;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                };
                rto_ms = rto.map(Value::from).unwrap_or(Value::Null);
                match rto {
                    Some(r) if r <= rto_target => {}
                    Some(r) => failures.push(format!("RTO {r} ms over target {rto_target} ms")),
                    None => failures.push("no failover RTO recorded".into()),
                }
            }
            Check::EpochsMonotonic => {
                let v = epochs_monotonic(&epochs);
                if !v.ok {
                    failures.push(format!("epochs went backwards: {:?}", v.violations));
                }
            }
            Check::AuditChainValid => {
                let records = ctx
                    .rt
                    .block_on(crate::cmd::evidence::fetch_audit(&ctx.addrs))?;
                if let Err(e) = tandem_coordinator::audit::verify_chain(&records) {
                    failures.push(format!("audit chain: {e}"));
                }
            }
            Check::OldPrimaryFenced => {
                if old_primary_refused != Some(true) {
                    failures.push("the resumed old primary accepted a write".into());
                }
            }
            Check::NoSplitBrain => {
                let v = split_brain(&history);
                notes.extend(v.notes.iter().cloned());
                if !v.ok {
                    failures.push(format!("split brain: {}", v.violations.join("; ")));
                }
                if pinned.is_empty() {
                    failures.push(
                        "no_split_brain needs clients_at_every_site = true (one history per site)"
                            .into(),
                    );
                }
            }
            Check::NoAckAfterFence => match fence_ms {
                Some(fence) if g_end.epoch > epoch0 => {
                    let v = no_ack_after_fence(&history, &primary0, fence);
                    notes.extend(v.notes.iter().cloned());
                    if !v.ok {
                        failures.push(format!(
                            "acknowledged after fencing: {}",
                            v.violations
                                .iter()
                                .take(3)
                                .cloned()
                                .collect::<Vec<_>>()
                                .join("; ")
                        ));
                    }
                }
                _ => failures.push(format!(
                    "no_ack_after_fence: no failover away from {primary0} to judge (epoch {})",
                    g_end.epoch
                )),
            },
            Check::RpoRecovers => match (net_from_ms, net_until_ms) {
                (Some(from), Some(until)) => {
                    let v = rpo_recovers(
                        &rpo_samples,
                        from,
                        until,
                        s.rpo_peak_min_ms.unwrap_or(1) as i64,
                        s.rpo_recovered_max_ms.unwrap_or(0) as i64,
                    );
                    notes.extend(v.notes.iter().cloned());
                    if !v.ok {
                        failures.push(format!("rpo: {}", v.violations.join("; ")));
                    }
                }
                _ => failures.push(
                    "rpo_recovers needs a network fault and a later heal in the timeline".into(),
                ),
            },
            Check::DbTailQuarantined => {
                let Some(d) = &db else {
                    failures.push(format!("{c:?} needs `database = true`"));
                    continue;
                };
                let Some(f) = &db_final else {
                    failures.push(format!("{c:?}: no recovery, nothing to judge"));
                    continue;
                };
                let old = g0.primary.clone();
                let qdir = d.dir.join(format!("data/{old}-rep/quarantine/{DB_GROUP}"));
                let newest = std::fs::read_dir(&qdir).ok().and_then(|rd| {
                    rd.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "db"))
                        .max()
                });
                let quarantine = match newest.map(|p| read_db(&p, Duration::from_secs(5))) {
                    Some(Ok(q)) => Some(q.state),
                    Some(Err(e)) => {
                        failures.push(format!("db: quarantine copy unreadable: {e:#}"));
                        continue;
                    }
                    None => None,
                };
                match &f.primary_db {
                    Ok(p) => {
                        let v = db_tail_quarantined(&history, &p.state, quarantine.as_ref(), &old);
                        notes.extend(v.notes.iter().map(|n| format!("db: {n}")));
                        if !v.ok {
                            failures.push(format!("db: {}", v.violations.join("; ")));
                        }
                    }
                    Err(e) => failures.push(format!("db: final primary unreadable: {e:#}")),
                }
            }
            Check::DbNoLostCommits | Check::DbConsistent | Check::DbIdenticalAfterRecovery => {
                let Some(d) = &db else {
                    failures.push(format!("{c:?} needs `database = true`"));
                    continue;
                };
                let mode = if s.mode == "sync" {
                    ReplicationMode::Sync
                } else {
                    ReplicationMode::Async
                };
                let window = match mode {
                    ReplicationMode::Sync => DB_CAPTURE_WINDOW_MS,
                    ReplicationMode::Async => {
                        d.rpo_before_failure.max(0) as u64 + DB_CAPTURE_WINDOW_MS
                    }
                };
                let fail_at = failure_ms.unwrap_or(u64::MAX);
                // (what, history, copy): the promoted copy at the failover, then the final ones.
                let mut copies: Vec<(String, &History, Result<&DbSnapshot, String>)> = Vec::new();
                if let Some((site, h, snap)) = &d.promoted {
                    copies.push((
                        format!("promoted copy at {site}"),
                        h,
                        snap.as_ref().map_err(|e| format!("{e:#}")),
                    ));
                }
                match &db_final {
                    Some(f) => {
                        copies.push((
                            format!("final primary at {}", f.primary),
                            &history,
                            f.primary_db.as_ref().map_err(|e| format!("{e:#}")),
                        ));
                        if *c == Check::DbConsistent && f.protected {
                            copies.push((
                                format!("final replica at {}", f.replica),
                                &history,
                                f.replica_db.as_ref().map_err(|e| format!("{e:#}")),
                            ));
                        }
                    }
                    None => failures.push(format!(
                        "{c:?}: no recovery, the final databases were not judged"
                    )),
                }
                match c {
                    Check::DbNoLostCommits | Check::DbConsistent => {
                        for (what, h, snap) in &copies {
                            let sn = match snap {
                                Ok(sn) => sn,
                                Err(e) => {
                                    failures.push(format!("db: {what} unreadable: {e}"));
                                    continue;
                                }
                            };
                            let v = if *c == Check::DbNoLostCommits {
                                db_lost_commits(h, &sn.state, mode, window, fail_at, d.confirmed)
                            } else {
                                db_commit_prefix(h, &sn.state, &sn.integrity)
                            };
                            notes.extend(v.notes.iter().map(|n| format!("db {what}: {n}")));
                            if *c == Check::DbNoLostCommits {
                                db_lost = db_lost.max(v.violations.len());
                            }
                            if !v.ok {
                                failures.push(format!(
                                    "db {what}: {}",
                                    v.violations
                                        .iter()
                                        .take(3)
                                        .cloned()
                                        .collect::<Vec<_>>()
                                        .join("; ")
                                ));
                            }
                        }
                    }
                    _ => {
                        if let Some(f) = &db_final {
                            if let (Ok(p), Ok(r)) = (&f.primary_db, &f.replica_db) {
                                let v = db_identical(&p.state, &r.state);
                                notes.extend(v.notes.iter().map(|n| format!("db: {n}")));
                                if !v.ok {
                                    failures.push(format!("db: {}", v.violations.join("; ")));
                                }
                            }
                            if let Err(e) = verify_group(&ctx, DB_GROUP, &mut notes) {
                                failures.push(format!("db not identical after recovery: {e:#}"));
                            }
                        }
                    }
                }
            }
            Check::TailQuarantined => {
                let img = std::fs::read(dir.join(format!("volumes/{}/disk0.img", g_end.primary)))?;
                let f = |off: u64, len: u64| {
                    blake3::hash(img.get(off as usize..(off + len) as usize).unwrap_or(&[]))
                };
                let node = format!("{primary0}-rep");
                let qdir = ctx
                    .topo
                    .node(&node)
                    .map(|n| {
                        ctx.topo
                            .node_data_dir(n)
                            .join("quarantine")
                            .join(VOLUME_GROUP)
                    })
                    .unwrap_or_default();
                let mut kept = Vec::new();
                for p in tandem_replicator::quarantine::files_of(&qdir, "disk0") {
                    match tandem_replicator::quarantine::read(&p) {
                        Ok(q) => {
                            notes.push(format!(
                                "quarantine {}: {} blocks",
                                p.display(),
                                q.blocks.len()
                            ));
                            kept.push(q);
                        }
                        Err(e) => failures.push(format!("quarantine unreadable: {e}")),
                    }
                }
                let q = |off: u64, len: u64| {
                    kept.iter()
                        .filter_map(|k| k.range(off, len))
                        .map(|b| blake3::hash(&b))
                        .collect()
                };
                // Status must say so too (the replica reports it in its heartbeats).
                let deadline = Instant::now() + Duration::from_secs(10);
                let shown = loop {
                    let reason = ctx
                        .status()
                        .as_ref()
                        .and_then(group)
                        .map(|g| g.reason.clone());
                    match reason {
                        Some(r) if r.contains("quarantined") => break Some(r),
                        _ if Instant::now() > deadline => break None,
                        _ => std::thread::sleep(Duration::from_millis(300)),
                    }
                };
                match shown {
                    Some(r) => notes.push(format!("status: {r}")),
                    None if !kept.is_empty() => {
                        failures.push("tandem status does not show the quarantine".into())
                    }
                    None => {}
                }
                let (v, tail) =
                    tandem_chaos::checker::tail_quarantined(&history, &primary0, &f, &q);
                notes.extend(v.notes.iter().cloned());
                if g_end.epoch == epoch0 {
                    failures.push("tail_quarantined: no failover, so no failback to judge".into());
                } else if tail == 0 {
                    failures.push(format!(
                        "tail_quarantined: {primary0} left no unreplicated tail: the run shows nothing about quarantine"
                    ));
                }
                if !v.ok {
                    failures.push(format!(
                        "tail not quarantined: {}",
                        v.violations
                            .iter()
                            .take(3)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
            }
            Check::BitrotFoundAndRepaired => {
                if rotted == 0 {
                    failures.push("bitrot_found_and_repaired: no byte was flipped".into());
                }
                match verify_group(&ctx, VOLUME_GROUP, &mut notes) {
                    Ok(()) => failures.push(format!(
                        "verify found the copies equal after {rotted} bytes of the replica were flipped"
                    )),
                    Err(e) => {
                        notes.push(format!("verify found the rot: {e:#}"));
                        let repaired = crate::cmd::resync::run(crate::cmd::resync::Args {
                            group: VOLUME_GROUP.into(),
                            config: ctx.config.clone(),
                            timeout_secs: 60,
                            actor: "chaos".into(),
                        })
                        .and_then(|()| verify_group(&ctx, VOLUME_GROUP, &mut notes));
                        match repaired {
                            Ok(()) => notes.push("resync repaired it: verify equal".into()),
                            Err(e) => failures.push(format!("not repaired by resync: {e:#}")),
                        }
                    }
                }
            }
            Check::FailpointsFired => {
                if armed.is_empty() {
                    failures.push("failpoints_fired: no failpoint was armed".into());
                }
                for (n, name) in &armed {
                    if failpoint_fired(&ctx.run_dir, n, name) {
                        notes.push(format!("{n}: failpoint {name} fired"));
                    } else {
                        failures.push(format!("failpoint {name} of {n} never fired"));
                    }
                }
            }
            Check::CorruptionCaught => {
                let (from, to) = (format!("{}-rep", g0.primary), format!("{}-rep", g0.replica));
                let stats = ctx.mesh.stats(&from, &to).unwrap_or_default();
                let log = std::fs::read_to_string(proc::log_file(&ctx.run_dir, &from))
                    .unwrap_or_default();
                let v = corruption_caught(
                    stats.corrupted(Direction::ToUpstream),
                    log.matches("replica refused a frame").count() as u64,
                    stats.connections_accepted.saturating_sub(1),
                );
                notes.extend(v.notes.iter().map(|n| format!("{from} -> {to}: {n}")));
                if !v.ok {
                    failures.push(format!("corruption: {}", v.violations.join("; ")));
                }
            }
        }
    }
    let acked = writer.ok.load(Ordering::SeqCst)
        + pinned
            .iter()
            .map(|(_, w)| w.ok.load(Ordering::SeqCst))
            .sum::<u64>();
    Ok(json!({
        "scenario": s.name,
        "faults": fault_names.join(" "),
        "acked": acked,
        "lost": lost,
        "db_committed": db.as_ref().map(|d| d.writer.committed()),
        "db_lost": db_lost,
        "max_rpo_ms": max_rpo,
        "rto_ms": rto_ms,
        "verdict": if failures.is_empty() { "PASS" } else { "FAIL" },
        "failures": failures,
        "notes": notes,
    }))
}
