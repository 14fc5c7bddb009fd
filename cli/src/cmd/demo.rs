//! `tandem demo`: the whole product on this machine: three coordinators (hanoi, hcm and the
//! danang witness) and two replicators on loopback, a live NBD writer and a SQLite transaction
//! writer (checked on the replica: every commit, integrity ok), a verify at a barrier,
//! the loss of the primary site with automatic failover, failback with a merkle resync and a
//! zero-loss switchover, a drill the coordinators start on the database group's schedule
//! (`drill_every`, short here), a checker over every acknowledged write, and an evidence folder
//! whose report shows the scheduled drill and an after-action report of each exercise.
//! Exit 0 only if every promise held.

use crate::cmd::status::{fetch, render};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_chaos::checker::{lost_acknowledged_writes, ReplicationMode};
use tandem_chaos::history::Recorder;
use tandem_chaos::runner::dbwriter::{read_db, DbSnapshot, DbWriter, ROWS_PER_TXN};
use tandem_chaos::runner::processes as proc;
use tandem_chaos::runner::topology::{db_group_text, group, topology_text, DB_GROUP, VOLUME_GROUP};
use tandem_chaos::runner::writer::Writer;
use tandem_chaos::workload::WorkloadConfig;
use tandem_coordinator::status::{ClusterStatus, GroupStatus};

/// Arguments of `tandem demo`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Folder for the demo's topology, data, logs and evidence (default: a new folder under
    /// the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the processes running at the end (stop them with `tandem local down --dir DIR/run`).
    #[arg(long)]
    pub keep: bool,
    /// Volume size in MiB.
    #[arg(long, default_value = "256")]
    pub volume_mib: u64,
    /// Seconds of writes before the primary site is lost.
    #[arg(long, default_value = "8")]
    pub write_secs: u64,
}

/// `drill_every` of the database group in the demo's topology: short, so that the coordinators
/// start a drill on the schedule within the demo. The demo's own drill, failover and
/// switchover are of the volume group (one run per group), so the two never refuse each other;
/// the demo still waits for a scheduled drill to end before it kills site hanoi and before it
/// exports the evidence, so every run it shows is whole.
pub const DB_DRILL_EVERY: &str = "12s";

fn say(msg: &str) {
    println!("\n\x1b[1m== {msg}\x1b[0m");
}

/// Runs the demo.
pub fn run(a: Args) -> Result<()> {
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "tandem-demo-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let run_dir = dir.join("run");
    let result = demo(&a, &dir, &run_dir);
    if !a.keep {
        let _ = proc::stop_all(&run_dir);
    } else {
        println!(
            "processes left running: stop them with `tandem local down --dir {}`",
            run_dir.display()
        );
    }
    result
}

/// The demo's running cluster and its block writer, shared by its steps.
struct Demo {
    started: Instant,
    dir: PathBuf,
    run_dir: PathBuf,
    config: PathBuf,
    topo: tandem_core::config::Topology,
    addrs: Vec<String>,
    ports: Vec<(String, u16)>,
    rt: tokio::runtime::Runtime,
    rec: Arc<Recorder>,
    writer: Option<Arc<Writer>>,
}

/// What the workload step saw of the groups.
#[derive(Default)]
struct Seen {
    max_rpo: i64,
    db_max_rpo: i64,
    bytes_raw: u64,
    bytes_shipped: u64,
}

/// The SQLite step: what was committed at hanoi and what the replica at hcm holds.
struct DbOutcome {
    committed: Result<(u64, u64)>,
    check: Result<DbSnapshot>,
    ok: bool,
}

/// The final checks: lost writes and the RTOs the coordinators measured.
struct Finals {
    verify2: Result<()>,
    violations: Vec<String>,
    no_loss: bool,
    failover_rto: Option<i64>,
    switchover_rto: Option<i64>,
}

impl Demo {
    fn nbd(&self, n: &str) -> SocketAddr {
        let port = self
            .ports
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, p)| *p)
            .unwrap_or(0);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn writer(&self) -> Result<&Arc<Writer>> {
        self.writer.as_ref().context("the writer has not started")
    }

    fn status(&self) -> Result<ClusterStatus> {
        self.rt.block_on(fetch(&self.addrs))
    }

    fn wait(
        &self,
        what: &str,
        secs: u64,
        f: &dyn Fn(&GroupStatus) -> bool,
    ) -> Result<ClusterStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(st) = self.status() {
                if group(&st).is_some_and(f) {
                    return Ok(st);
                }
            }
            if Instant::now() > deadline {
                bail!("timed out after {secs}s waiting for: {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `tandem verify vol` as the demo.
    fn verify(&self) -> Result<()> {
        crate::cmd::verify::run(crate::cmd::verify::Args {
            group: VOLUME_GROUP.into(),
            config: self.config.clone(),
            timeout_secs: 30,
            chunk_mib: 64,
            query: None,
        })
    }

    /// Runs `tandem KIND vol` as a child and prints its output.
    fn order(&self, kind: &str) -> Result<std::process::Output> {
        let out = Command::new(std::env::current_exe()?)
            .args([kind, VOLUME_GROUP, "--config"])
            .arg(&self.config)
            .output()?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        Ok(out)
    }
}

/// The group text with `drill_every = DB_DRILL_EVERY` after its `rto_target` line.
fn with_drill_every(group_text: &str) -> Result<String> {
    let anchor = "rto_target = \"15s\"\n";
    if !group_text.contains(anchor) {
        bail!(
            "the demo's database group has no `{}` line to put drill_every after",
            anchor.trim()
        );
    }
    Ok(group_text.replacen(
        anchor,
        &format!("{anchor}drill_every = \"{DB_DRILL_EVERY}\"\n"),
        1,
    ))
}

/// The database group's drill schedule in a status document.
fn db_drill(st: &ClusterStatus) -> Option<&tandem_coordinator::status::DrillStatus> {
    st.groups
        .iter()
        .find(|g| g.name == DB_GROUP)?
        .drill
        .as_ref()
}

/// The first drill the coordinators started on the database group's schedule, once it ended.
struct ScheduledDrill {
    run_id: String,
    status: String,
    waited: Duration,
}

/// Step 5: waits (at most 60 s) until a drill started on the schedule of group db has ended.
fn scheduled_drill(d: &Demo) -> Result<ScheduledDrill> {
    say(&format!(
        "5. Drill on a schedule: group {DB_GROUP} has drill_every = \"{DB_DRILL_EVERY}\"; the coordinators start its drill runbook when due"
    ));
    let began = Instant::now();
    let deadline = began + Duration::from_secs(60);
    loop {
        let st = d.status()?;
        if let Some(dr) = db_drill(&st) {
            if let (Some(id), Some(status)) = (&dr.last_run_id, &dr.last_status) {
                if status != "running" {
                    let at = dr
                        .last_drill_ms
                        .map(tandem_coordinator::evidence::derive::iso_ms);
                    println!(
                        "scheduled drill {id} started at {} by the coordinators: {status}; next due {}",
                        at.unwrap_or_default(),
                        tandem_coordinator::evidence::derive::iso_ms(dr.next_due_ms)
                    );
                    return Ok(ScheduledDrill {
                        run_id: id.clone(),
                        status: status.clone(),
                        waited: began.elapsed(),
                    });
                }
            }
        }
        if Instant::now() > deadline {
            bail!("timed out after 60s waiting for a scheduled drill of {DB_GROUP} to end");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (at most 60 s) until no scheduled drill of group db runs and none falls due within
/// `secs`: a drill under way when site hanoi is killed would fail with it, and the evidence
/// should hold whole runs.
fn quiet_schedule(d: &Demo, secs: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut said = false;
    loop {
        let st = d.status()?;
        let Some(dr) = db_drill(&st) else {
            return Ok(());
        };
        let now = chrono::Utc::now().timestamp_millis();
        let running = dr.last_status.as_deref() == Some("running");
        let due_soon = dr.next_due_ms <= now + secs * 1000 && dr.refused.is_none();
        if !running && !due_soon {
            return Ok(());
        }
        if !said {
            println!("   (waiting for the scheduled drill of {DB_GROUP} to end first)");
            said = true;
        }
        if Instant::now() > deadline {
            bail!("timed out after 60s waiting for the scheduled drill of {DB_GROUP}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Step 1: writes the topology and starts every node; waits for the initial sync.
fn start(a: &Args, dir: &Path, run_dir: &Path) -> Result<Demo> {
    let started = Instant::now();
    let (mut text, ports) = topology_text(a.volume_mib, "sync", true)?;
    text.push_str(&with_drill_every(&db_group_text("async", false))?);
    let config = dir.join("topology.toml");
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let topo = crate::cmd::load_topology(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::cmd::certs::ensure(&topo)?;
    let addrs = crate::cmd::status::addrs_of(&topo);
    let rt = crate::cmd::status::runtime()?;
    // Ctrl-C stops every process we started.
    {
        let run_dir = run_dir.to_path_buf();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping the demo's processes");
                let _ = proc::stop_all(&run_dir);
                std::process::exit(130);
            }
        });
    }
    say(&format!(
        "1. Starting 3 coordinators and 2 replicators on loopback (folder {})",
        dir.display()
    ));
    crate::cmd::local::up(&config, run_dir, Duration::from_secs(60))?;
    let d = Demo {
        started,
        dir: dir.to_path_buf(),
        run_dir: run_dir.to_path_buf(),
        config,
        topo,
        addrs,
        ports,
        rt,
        rec: Arc::new(Recorder::new(Instant::now())),
        writer: None,
    };
    let st = d.wait("initial sync and the primary lease", 120, &|g| {
        g.state == "protected" && g.lease.as_ref().is_some_and(|l| l.status == "active")
    })?;
    println!(
        "initial sync done in {:.1}s; leader {}",
        started.elapsed().as_secs_f64(),
        st.leader.as_deref().unwrap_or("?")
    );
    Ok(d)
}

/// Step 2: the block writer and the SQLite writer for `write_secs`, showing the groups.
fn workload(d: &mut Demo, a: &Args) -> Result<(DbWriter, Seen)> {
    say("2. A live workload: 64 KiB writes of mixed data through the primary's NBD export (sync mode)");
    let cfg = WorkloadConfig {
        blocks_per_write: 16,
        op_timeout: Duration::from_secs(3),
        ..WorkloadConfig::new(42, a.volume_mib << 20)
    };
    d.rec = Arc::new(Recorder::new(Instant::now()));
    let writer = Writer::new(d.nbd("hanoi-nbd"), "disk0", cfg, d.rec.clone());
    writer.start(&d.rt, 4);
    d.writer = Some(writer.clone());
    println!("   and SQLite transactions into databases/hanoi/app.db (group {DB_GROUP}, async, followed through its WAL)");
    let db_writer = DbWriter::start(
        d.dir.join("databases/hanoi/app.db"),
        "hanoi",
        0,
        Duration::from_millis(10),
        None,
    );
    let mut seen = Seen::default();
    for _ in 0..a.write_secs {
        std::thread::sleep(Duration::from_secs(1));
        if let Ok(st) = d.status() {
            if let Some(g) = group(&st) {
                seen.max_rpo = seen.max_rpo.max(g.rpo_ms);
                seen.bytes_raw = g.bytes_raw;
                seen.bytes_shipped = g.bytes_shipped;
            }
            if let Some(g) = st.groups.iter().find(|g| g.name == DB_GROUP) {
                seen.db_max_rpo = seen.db_max_rpo.max(g.rpo_ms);
            }
            print!(
                "\x1b[2m{}\x1b[0m",
                render(&st, false)
                    .lines()
                    .filter(|l| l.starts_with(VOLUME_GROUP) || l.starts_with(DB_GROUP))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            println!(
                "   writes ok {}, transactions {}  ",
                writer.ok.load(Ordering::SeqCst),
                db_writer.committed()
            );
        }
    }
    Ok((db_writer, seen))
}

/// Step 6: stops the SQLite writer and reads the replica's copy once it holds the last commit.
fn check_sqlite(d: &Demo, mut db_writer: DbWriter) -> DbOutcome {
    say("6. The SQLite replica at hcm: every committed transaction, integrity_check ok, read while replication runs");
    let committed = db_writer.stop().and_then(|c| {
        if c == 0 {
            bail!(
                "the SQLite writer committed nothing: {}",
                db_writer.last_error().unwrap_or_default()
            )
        }
        Ok((c, db_writer.last_committed()))
    });
    let db_replica = d.dir.join("databases/hcm/app.db");
    let check = match &committed {
        Ok((_, last)) => {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let seen = read_db(&db_replica, Duration::from_secs(5));
                let done = matches!(&seen, Ok(s) if s.integrity == "ok" && s.max_txn() == *last);
                if done || Instant::now() > deadline {
                    break seen;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Err(e) => Err(anyhow::anyhow!("the SQLite writer failed: {e:#}")),
    };
    match (&committed, &check) {
        (Ok((n, _)), Ok(s)) => println!(
            "committed {n} transactions at hanoi; the replica at hcm holds {} ({} rows), integrity_check {}",
            s.state.len(),
            s.rows(),
            s.integrity
        ),
        (_, Err(e)) => println!("replica check failed: {e:#}"),
        (Err(_), _) => {}
    }
    let ok = match (&committed, &check) {
        (Ok((n, last)), Ok(s)) => {
            s.integrity == "ok"
                && s.max_txn() == *last
                && s.state.len() as u64 == *n
                && s.rows() == n * ROWS_PER_TXN
        }
        _ => false,
    };
    DbOutcome {
        committed,
        check,
        ok,
    }
}

/// Step 7: kill -9 of site hanoi and the automatic failover; returns (failure ms, RPO then).
fn disaster(d: &Demo, seen: &mut Seen) -> Result<(u64, i64)> {
    say(
        "7. Disaster: kill -9 every process of site hanoi (primary replicator and its coordinator)",
    );
    let failure_ms = d.rec.now_ms();
    let rpo_before = d
        .status()
        .ok()
        .and_then(|st| group(&st).map(|g| g.rpo_ms))
        .unwrap_or(0);
    if let Ok(st) = d.status() {
        if let Some(g) = group(&st) {
            seen.bytes_raw = g.bytes_raw;
            seen.bytes_shipped = g.bytes_shipped;
        }
    }
    for n in ["hanoi-rep", "hanoi-coord"] {
        let pid = proc::read_pid(&d.run_dir, n)?;
        proc::signal(pid, libc::SIGKILL)?;
    }
    let killed = Instant::now();
    let st = d.wait("automatic failover to hcm", 60, &|g| {
        g.primary == "hcm"
            && g.lease
                .as_ref()
                .is_some_and(|l| l.status == "active" && l.holder == "hcm-rep")
    })?;
    println!(
        "failover done {:.1}s after the kill; epoch {}",
        killed.elapsed().as_secs_f64(),
        group(&st).map(|g| g.epoch).unwrap_or(0)
    );
    d.writer()?.retarget(d.nbd("hcm-nbd"));
    std::thread::sleep(Duration::from_secs(3));
    Ok((failure_ms, rpo_before))
}

/// Step 8: hanoi returns as replica and resyncs; a planned switchover back.
fn failback(d: &Demo) -> Result<()> {
    say("8. Failback: hanoi returns as replica, resyncs by merkle diff, then a planned switchover");
    for n in ["hanoi-coord", "hanoi-rep"] {
        proc::start_node(&std::fs::canonicalize(&d.config)?, n, &d.run_dir)?;
    }
    d.wait("hanoi resynced and in sync", 120, &|g| {
        g.state == "protected" && g.primary == "hcm"
    })?;
    println!("hanoi is an in-sync replica again");
    let switch = d.order("switchover")?;
    if !switch.status.success() {
        bail!(
            "switchover back failed: {}",
            String::from_utf8_lossy(&switch.stderr)
        );
    }
    let writer = d.writer()?;
    writer.retarget(d.nbd("hanoi-nbd"));
    std::thread::sleep(Duration::from_secs(3));
    writer.stop(&d.rt);
    Ok(())
}

/// Step 9: verify again, every acknowledged write against the final image, the RTOs.
fn final_checks(d: &Demo, failure_ms: u64) -> Result<Finals> {
    say("9. Checks: verify again, and every acknowledged write against the final image");
    let verify2 = d.verify();
    let image =
        std::fs::read(d.dir.join("volumes/hanoi/disk0.img")).context("reading the final image")?;
    let history = d.rec.snapshot();
    let final_blocks = |off: u64, len: u64| -> blake3::Hash {
        let (s, e) = (off as usize, (off + len) as usize);
        blake3::hash(image.get(s..e).unwrap_or(&[]))
    };
    let verdict = lost_acknowledged_writes(
        &history,
        &final_blocks,
        ReplicationMode::Sync,
        0,
        failure_ms,
    );
    let _ = history.save(&d.dir.join("history.jsonl"));
    // RTOs from the audit chain (the coordinators' own measurements).
    let records = d.rt.block_on(crate::cmd::evidence::fetch_audit(&d.addrs))?;
    let ops: Vec<&Value> = records
        .iter()
        .filter(|r| r.group.as_deref() == Some(VOLUME_GROUP))
        .map(|r| &r.detail)
        .filter(|d| d.get("rto_ms").is_some())
        .collect();
    let rto_of = |op: &str| {
        ops.iter()
            .find(|d| d["op"] == op)
            .and_then(|d| d["rto_ms"].as_i64())
    };
    Ok(Finals {
        verify2,
        no_loss: verdict.ok,
        violations: verdict.violations,
        failover_rto: rto_of("failover"),
        switchover_rto: rto_of("switchover"),
    })
}

/// Step 10: the evidence folder; returns it and whether it verifies.
fn evidence(d: &Demo) -> Result<(PathBuf, bool)> {
    say("10. Evidence for auditors");
    let ev_dir = d.dir.join("evidence");
    crate::cmd::evidence::run(crate::cmd::evidence::EvidenceCmd::Export(
        crate::cmd::evidence::ExportArgs {
            config: d.config.clone(),
            out: ev_dir.clone(),
            from: None,
            to: None,
            lang: Default::default(),
        },
    ))?;
    let ok = tandem_coordinator::evidence::verify(&ev_dir).is_ok();
    Ok((ev_dir, ok))
}

/// Everything the summary reports.
struct Outcome {
    verify1: Result<()>,
    drill_ok: bool,
    scheduled: Result<ScheduledDrill>,
    seen: Seen,
    rpo_before: i64,
    db: DbOutcome,
    finals: Finals,
    ev_dir: PathBuf,
    ev_ok: bool,
}

fn demo(a: &Args, dir: &Path, run_dir: &Path) -> Result<()> {
    let mut d = start(a, dir, run_dir)?;
    let (db_writer, mut seen) = workload(&mut d, a)?;

    say("3. Verify: merkle roots of primary and replica at a barrier");
    d.writer()?.stop(&d.rt);
    let verify1 = d.verify();
    d.writer()?.start(&d.rt, 4);

    say("4. DR drill: the drill runbook copies the replica at hcm and checks the copy while replication continues");
    let drill = d.order("drill")?;
    if !drill.status.success() {
        println!("drill failed: {}", String::from_utf8_lossy(&drill.stderr));
    }
    std::thread::sleep(Duration::from_secs(1));

    let scheduled = scheduled_drill(&d);
    if let Err(e) = &scheduled {
        println!("{e:#}");
    }
    let db = check_sqlite(&d, db_writer);
    quiet_schedule(&d, 5)?;
    let (failure_ms, rpo_before) = disaster(&d, &mut seen)?;
    failback(&d)?;
    let finals = final_checks(&d, failure_ms)?;
    quiet_schedule(&d, 0)?;
    let (ev_dir, ev_ok) = evidence(&d)?;
    summary(
        &d,
        a,
        Outcome {
            verify1,
            drill_ok: drill.status.success(),
            scheduled,
            seen,
            rpo_before,
            db,
            finals,
            ev_dir,
            ev_ok,
        },
    )
}

/// The summary: every promise with PASS or FAIL; fails unless all held.
fn summary(d: &Demo, a: &Args, o: Outcome) -> Result<()> {
    let writer = d.writer()?;
    let f = &o.finals;
    let rto_target = d
        .topo
        .group(VOLUME_GROUP)
        .map(|g| g.rto_target.as_millis() as i64)
        .unwrap_or(0);
    let (bytes_raw, bytes_shipped) = (o.seen.bytes_raw, o.seen.bytes_shipped);
    let ratio = if bytes_shipped > 0 {
        bytes_raw as f64 / bytes_shipped as f64
    } else {
        0.0
    };
    let ok_writes = writer.ok.load(Ordering::SeqCst);
    let lost = f.violations.len();
    let checks = [
        ("verify before the failure", o.verify1.is_ok()),
        ("drill succeeded", o.drill_ok),
        (
            "drill on the schedule started by the coordinators and succeeded",
            o.scheduled.as_ref().is_ok_and(|s| s.status == "succeeded"),
        ),
        ("verify after failback", f.verify2.is_ok()),
        ("no acknowledged write lost (sync)", f.no_loss),
        (
            "failover RTO within target",
            f.failover_rto.is_some_and(|r| r <= rto_target),
        ),
        ("switchover back succeeded", f.switchover_rto.is_some()),
        (
            "SQLite replica holds every committed transaction, integrity ok",
            o.db.ok,
        ),
        ("evidence verifies", o.ev_ok),
    ];
    say("Summary");
    println!("group {VOLUME_GROUP} (sync, {} MiB volume)", a.volume_mib);
    println!("  RPO target 0 ms          max RPO seen before the failure {} ms (at the moment of loss {} ms)", o.seen.max_rpo, o.rpo_before);
    println!(
        "  RTO target {:>5} ms     automatic failover {} ms, switchover back {} ms",
        rto_target,
        f.failover_rto.map(|v| v.to_string()).unwrap_or("-".into()),
        f.switchover_rto
            .map(|v| v.to_string())
            .unwrap_or("-".into())
    );
    println!(
        "  writes acknowledged {ok_writes} ({:.1} MB), failed or unknown during the outages {}",
        writer.bytes.load(Ordering::SeqCst) as f64 / 1e6,
        writer.failed.load(Ordering::SeqCst)
    );
    println!("  bytes replicated before the failure {:.1} MB raw, {:.1} MB on the wire (compression {ratio:.2}x)", bytes_raw as f64 / 1e6, bytes_shipped as f64 / 1e6);
    println!("  data lost: {lost} acknowledged writes");
    println!(
        "group {DB_GROUP} (async, SQLite): RPO target 2000 ms, max RPO seen {} ms; {} transactions committed, {} on the replica",
        o.seen.db_max_rpo,
        o.db.committed.as_ref().map(|(n, _)| n.to_string()).unwrap_or("-".into()),
        o.db.check.as_ref().map(|s| s.state.len().to_string()).unwrap_or("-".into())
    );
    match &o.scheduled {
        Ok(s) => println!(
            "group {DB_GROUP}: drill_every {DB_DRILL_EVERY}, scheduled drill {} {} (waited {:.1}s for it); the report's drill cadence and after-action sections show it",
            s.run_id,
            s.status,
            s.waited.as_secs_f64()
        ),
        Err(e) => println!("group {DB_GROUP}: no scheduled drill: {e:#}"),
    }
    for (name, ok) in checks {
        println!("  [{}] {name}", if ok { "PASS" } else { "FAIL" });
    }
    if let Err(e) = &o.verify1 {
        println!("    verify before: {e:#}");
    }
    if let Err(e) = &f.verify2 {
        println!("    verify after: {e:#}");
    }
    for v in f.violations.iter().take(5) {
        println!("    {v}");
    }
    println!(
        "  evidence folder: {}  (open report.html)",
        o.ev_dir.display()
    );
    println!(
        "  history of every write: {}",
        d.dir.join("history.jsonl").display()
    );
    println!("  demo took {:.1}s", d.started.elapsed().as_secs_f64());
    if checks.iter().all(|(_, ok)| *ok) {
        Ok(())
    } else {
        bail!("some promises did not hold (see FAIL above)")
    }
}

use std::process::Command;
