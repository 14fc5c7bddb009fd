//! One scenario from start to verdict, as numbered steps: bring the cluster up, wait until it
//! is protected, start the writers, run the fault timeline, recover, judge, report. Each step
//! is a room of its own; this one only orders them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::checks::judge;
use super::cluster::Ctx;
use super::dbrun::final_databases;
use super::faults;
use super::host::Host;
use super::judge::{Findings, Judge};
use super::load::Load;
use super::observe::Observed;
use super::pgrun::PgRun;
use super::recovery::{protected, recover, wake_all};
use super::setup::start_cluster;
use super::topology::{db_group, group, pg_group};
use crate::scenario::Scenario;

/// How often the runner samples the status and looks for due faults.
const TICK: Duration = Duration::from_millis(150);

/// Runs scenario `s` in `dir` with workload seed `seed` (and `duration` seconds instead of the
/// scenario's, when given); returns its row of the report (`scenario`, `faults`, `acked`,
/// `lost`, `db_committed`, `db_lost`, `max_rpo_ms`, `rto_ms`, `verdict`, `failures`,
/// `notes`). Every process of the scenario ends when this returns, whatever the verdict or
/// error (the cluster's drop: [`super::processes::kill_started`]); its logs stay in `dir/run`.
///
/// # Errors
/// The cluster could not be brought up, or a fault could not be applied.
pub fn run_scenario(
    s: &Scenario,
    dir: &Path,
    seed: u64,
    duration: Option<u64>,
    host: &Host<'_>,
) -> Result<Value> {
    if s.has_hosts() {
        // Several hosts per site and a writer per group: steps of their own.
        return super::hosts::run_hosts_scenario(s, dir, seed, duration, host);
    }
    // 1. Bring the cluster up: topology, proxies, node files, every node, a leader.
    let ctx = start_cluster(s, dir, host)?;
    // 1b. PostgreSQL: the primary server streaming through Tandem, a standby at the replica.
    let pg = if s.postgres {
        Some(PgRun::prepare(&ctx, &s.mode)?)
    } else {
        None
    };
    // 2. Wait until the groups are protected, each primary with its lease.
    let st0 = ctx.wait("group protected with a lease", 60, &|st| {
        protected(group(st))
            && (!s.database || protected(db_group(st)))
            && (!s.postgres || protected(pg_group(st)))
    })?;
    // 3. Start the writers at the first primary.
    let mut obs = Observed::new(&st0);
    let mut load = Load::start(&ctx, s, &st0, &obs.g0, seed, dir, pg)?;
    // 4. Run the fault timeline while sampling the status.
    let total = Duration::from_millis(duration.map(|d| d * 1000).unwrap_or(s.duration.as_millis()));
    run_timeline(&ctx, s, seed, total, &mut obs, &mut load)?;
    // 5. Recover: heal, wake and restart everything, wait until protected and caught up.
    let old_primary_refused = wake_all(&ctx, s, &mut obs)?;
    let recovered = recover(&ctx, s, &mut load);
    // 6. Judge every check.
    let mut out = Findings {
        notes: std::mem::take(&mut obs.notes),
        ..Findings::default()
    };
    let (g_end, recovered) = match recovered {
        Ok(st) => (group(&st).cloned().unwrap_or_default(), true),
        Err(e) => {
            // Without recovery the final-state checks cannot be judged, but the history
            // checks can (and are what catches a primary that kept writing).
            load.abandon(&ctx);
            out.failures.push(format!("no recovery: {e:#}"));
            let last = ctx.status().or(obs.last_st.clone());
            (
                last.as_ref().and_then(group).cloned().unwrap_or_default(),
                false,
            )
        }
    };
    let history = load.rec.snapshot();
    let _ = history.save(&dir.join("history.jsonl"));
    // The final databases: the primary's copy and the replica's once it holds as much.
    let db_final = match (&load.db, recovered) {
        (Some(d), true) => Some(final_databases(&ctx, d)),
        _ => None,
    };
    if let Some(d) = &load.db {
        out.notes.extend(d.notes());
    }
    if let Some(p) = &load.pg {
        out.notes.extend(p.notes());
    }
    let j = Judge {
        ctx: &ctx,
        host,
        s,
        history: &history,
        obs: &obs,
        load: &load,
        g_end: &g_end,
        db_final: db_final.as_ref(),
        old_primary_refused,
        recovered,
    };
    for c in &s.checks {
        judge(&j, c, &mut out)?;
    }
    // 7. Report.
    Ok(report(s, &obs, &load, out))
}

/// Step 4: until `total` has passed, every tick: note failpoint crashes, sample the status,
/// apply the faults that are due.
fn run_timeline(
    ctx: &Ctx,
    s: &Scenario,
    seed: u64,
    total: Duration,
    obs: &mut Observed,
    load: &mut Load,
) -> Result<()> {
    let start = Instant::now();
    let timeline = s.timeline();
    let mut faults = timeline.iter().peekable();
    while start.elapsed() < total {
        if ctx.failpoint_files {
            obs.note_crashes(ctx, load.rec.now_ms());
        }
        obs.sample(ctx, load);
        while let Some(f) = faults.peek() {
            if start.elapsed() < Duration::from_millis(f.at.as_millis()) {
                break;
            }
            let f = faults.next().context("fault")?;
            faults::apply(ctx, f, seed, obs, load)?;
        }
        std::thread::sleep(TICK);
    }
    Ok(())
}

/// Step 7: the scenario's row of the report.
fn report(s: &Scenario, obs: &Observed, load: &Load, out: Findings) -> Value {
    json!({
        "scenario": s.name,
        "faults": obs.fault_names.join(" "),
        "acked": load.acked(),
        "lost": out.lost,
        "db_committed": load.db.as_ref().map(|d| d.writer.committed()),
        "db_lost": out.db_lost,
        "max_rpo_ms": obs.max_rpo,
        "rto_ms": out.rto_ms,
        "verdict": if out.failures.is_empty() { "PASS" } else { "FAIL" },
        "failures": out.failures,
        "notes": out.notes,
    })
}
