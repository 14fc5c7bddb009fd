//! `tandem chaos run SCENARIO...`: runs fault scenarios against real local processes with the
//! built-in writer, then applies the checkers and prints a table (and writes JSON + Markdown).

use crate::cmd::demo::{group, topology_text, VOLUME_GROUP};
use crate::cmd::status::{fetch, runtime};
use crate::exit::bad_input;
use crate::local as proc;
use crate::writer::Writer;
use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_chaos::checker::{
    epochs_monotonic, lost_acknowledged_writes, EpochObservation, ReplicationMode,
};
use tandem_chaos::history::Recorder;
use tandem_chaos::nbd_client::NbdClient;
use tandem_chaos::scenario::{Check, FaultAction, Scenario};
use tandem_chaos::workload::WorkloadConfig;
use tandem_coordinator::status::ClusterStatus;

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
}

impl Ctx {
    fn status(&self) -> Option<ClusterStatus> {
        self.rt.block_on(fetch(&self.addrs)).ok()
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

    fn nodes_of(&self, target: &str, st: &ClusterStatus) -> Vec<String> {
        let g = group(st);
        let site_nodes = |site: &str| -> Vec<String> {
            self.topo
                .nodes
                .iter()
                .filter(|n| n.site == site)
                .map(|n| n.name.clone())
                .collect()
        };
        match target {
            "site:primary" => g.map(|g| site_nodes(&g.primary)).unwrap_or_default(),
            "site:replica" => g.map(|g| site_nodes(&g.replica)).unwrap_or_default(),
            "leader" => st.leader.clone().into_iter().collect(),
            "primary-replicator" => g
                .map(|g| format!("{}-rep", g.primary))
                .into_iter()
                .collect(),
            "replica-replicator" => g
                .map(|g| format!("{}-rep", g.replica))
                .into_iter()
                .collect(),
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
}

fn run_one(s: &Scenario, dir: &Path, seed: u64, duration: Option<u64>) -> Result<Value> {
    let (text, ports) = topology_text(32, &s.mode, s.auto_failover)?;
    let config = dir.join("topology.toml");
    std::fs::write(&config, text)?;
    let config = std::fs::canonicalize(&config)?;
    let topo = tandem_core::config::Topology::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let run_dir = dir.join("run");
    crate::cmd::local::up(&config, &run_dir, Duration::from_secs(60))?;
    let ctx = Ctx {
        rt: runtime()?,
        addrs: crate::cmd::status::addrs_of(&topo),
        config: config.clone(),
        run_dir: run_dir.clone(),
        nbd: ports,
        topo,
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
    let st0 = wait("group protected with a lease", 60, &|st| {
        group(st).is_some_and(|g| {
            g.state == "protected" && g.lease.as_ref().is_some_and(|l| l.status == "active")
        })
    })?;
    let primary0 = group(&st0).map(|g| g.primary.clone()).unwrap_or_default();
    let rto_target = group(&st0).map(|g| g.rto_target_ms).unwrap_or(0);

    let cfg = WorkloadConfig {
        blocks_per_write: 4,
        op_timeout: Duration::from_secs(3),
        ..WorkloadConfig::new(seed, 32 << 20)
    };
    let rec = Arc::new(Recorder::new(Instant::now()));
    let writer = Writer::new(ctx.nbd_of_site(&primary0), "disk0", cfg, rec.clone());
    writer.start(&ctx.rt, 4);
    let total = Duration::from_millis(duration.map(|d| d * 1000).unwrap_or(s.duration.as_millis()));
    let start = Instant::now();
    let mut faults = s.faults.iter().peekable();
    let mut killed: Vec<String> = Vec::new();
    let mut paused: Vec<String> = Vec::new();
    let mut epochs = Vec::new();
    let mut max_rpo = 0i64;
    let mut rpo_before_failure = 0i64;
    let mut failure_ms = None;
    let mut fault_names = Vec::new();
    while start.elapsed() < total {
        if let Some(st) = ctx.status() {
            if let Some(g) = group(&st) {
                epochs.push(EpochObservation {
                    observer: "client".into(),
                    epoch: tandem_core::ids::Epoch(g.epoch),
                    time_ms: rec.now_ms(),
                });
                max_rpo = max_rpo.max(g.rpo_ms);
                if failure_ms.is_none() {
                    rpo_before_failure = g.rpo_ms;
                }
                // The client follows the primary, as an application behind a DNS or VIP switch.
                writer.retarget(ctx.nbd_of_site(&g.primary));
            }
            while let Some(f) = faults.peek() {
                if start.elapsed() < Duration::from_millis(f.at.as_millis()) {
                    break;
                }
                let f = faults.next().context("fault")?;
                let nodes = ctx.nodes_of(&f.target, &st);
                fault_names.push(
                    format!("{:?}@{}s:{}", f.action, f.at.as_millis() / 1000, f.target)
                        .to_lowercase(),
                );
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
                        FaultAction::Restart => {}
                    }
                }
                if f.action == FaultAction::Restart {
                    // Restart what this scenario killed of the target (the target may have
                    // moved: restart every killed node of the named site or role).
                    let again: Vec<String> = killed
                        .iter()
                        .filter(|k| {
                            nodes.contains(k)
                                || f.target == "leader"
                                || f.target.starts_with("site:")
                        })
                        .cloned()
                        .collect();
                    for n in &again {
                        proc::start_node(&ctx.config, n, &ctx.run_dir)?;
                    }
                    killed.retain(|k| !again.contains(k));
                } else if failure_ms.is_none()
                    && matches!(f.action, FaultAction::Kill | FaultAction::Pause)
                {
                    failure_ms = Some(rec.now_ms());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    // Recovery: resume and restart everything, wait until protected and caught up.
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
        proc::start_node(&ctx.config, &n, &ctx.run_dir)?;
    }
    let st_end = wait("recovery: group protected and caught up", 90, &|st| {
        group(st).is_some_and(|g| {
            g.state == "protected" && g.lease.as_ref().is_some_and(|l| l.status == "active")
        })
    })?;
    writer.retarget(
        ctx.nbd_of_site(
            &group(&st_end)
                .map(|g| g.primary.clone())
                .unwrap_or_default(),
        ),
    );
    std::thread::sleep(Duration::from_millis(500));
    writer.stop(&ctx.rt);
    let st_end = wait("replica caught up", 60, &|st| {
        group(st).is_some_and(|g| g.rpo_ms == 0 && g.durable_seq >= g.last_captured_seq)
    })?;
    let g_end = group(&st_end).cloned().unwrap_or_default();

    let mut failures = Vec::new();
    let history = rec.snapshot();
    let _ = history.save(&dir.join("history.jsonl"));
    let mut lost = 0usize;
    let mut rto_ms = Value::Null;
    for c in &s.checks {
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
                let v = lost_acknowledged_writes(
                    &history,
                    &f,
                    mode,
                    rpo_before_failure.max(0) as u64 + 1000,
                    failure_ms.unwrap_or(u64::MAX),
                );
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
                let r = crate::cmd::verify::run(crate::cmd::verify::Args {
                    group: VOLUME_GROUP.into(),
                    config: ctx.config.clone(),
                    timeout_secs: 30,
                    actor: "chaos".into(),
                });
                if let Err(e) = r {
                    failures.push(format!("not identical after recovery: {e:#}"));
                }
            }
            Check::FailedOver => {
                if g_end.epoch < 3 {
                    failures.push(format!("no failover happened (epoch {})", g_end.epoch));
                }
            }
            Check::NoFailover => {
                if g_end.primary != primary0
                    || g_end.epoch != group(&st0).map(|g| g.epoch).unwrap_or(0)
                {
                    failures.push(format!(
                        "unexpected failover: primary {} epoch {}",
                        g_end.primary, g_end.epoch
                    ));
                }
            }
            Check::RtoWithinTarget => {
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
        }
    }
    Ok(json!({
        "scenario": s.name,
        "faults": fault_names.join(" "),
        "acked": writer.ok.load(Ordering::SeqCst),
        "lost": lost,
        "max_rpo_ms": max_rpo,
        "rto_ms": rto_ms,
        "verdict": if failures.is_empty() { "PASS" } else { "FAIL" },
        "failures": failures,
    }))
}
