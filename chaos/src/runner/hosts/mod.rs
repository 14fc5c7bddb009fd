//! The hosts workload (`hosts_per_site` in the scenario): several replicator hosts per data
//! site and volume groups pinned over them, each group under its own writer, while `kill`
//! faults take single hosts away. One run as numbered steps ([`run_hosts_scenario`]); it
//! shares the cluster's bring-up ([`crate::runner::setup`]), the writer, the verify and the
//! pure checkers with the one-group runs.
//!
//! Rooms:
//! - [`topology`]: the hosts, the groups and their pins.
//! - [`load`]: one writer and one history per group, following its primary host.
//! - [`observe`]: every group's role and state in every status sample; the kills and
//!   restarts.
//! - [`judge`]: the checks, group by group: the groups the killed hosts served must fail
//!   over, lose nothing acknowledged and write again within their RTO target; the others
//!   must never change role and never stop writing; those whose replica host was killed
//!   must be degraded while it is down and protected again after it returns.

pub mod judge;
pub mod load;
pub mod observe;
pub mod topology;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};
use tandem_coordinator::status::ClusterStatus;

use self::judge::{judge_hosts, HostsFindings, HostsJudge};
use self::load::{group_in, HostsLoad};
use self::observe::{kill, restart, HostsObserved};
use self::topology::group_name;
use super::cluster::Ctx;
use super::host::Host;
use super::recovery::protected;
use super::setup::start_cluster;
use crate::history::History;
use crate::scenario::{FaultAction, Scenario};

pub use self::topology::VOLUME_MIB;
/// How often the runner samples the status and looks for due faults.
const TICK: Duration = Duration::from_millis(150);
/// How long the groups have to be protected, at the start and after the recovery.
const PROTECTED_WAIT_S: u64 = 90;

/// True when every group of `names` is protected with an active lease.
fn all_protected(st: &ClusterStatus, names: &[String]) -> bool {
    names.iter().all(|n| protected(group_in(st, n)))
}

/// True when every group of `names` is protected and its replica holds all it captured.
fn all_caught_up(st: &ClusterStatus, names: &[String]) -> bool {
    all_protected(st, names)
        && names.iter().all(|n| {
            group_in(st, n).is_some_and(|g| g.rpo_ms == 0 && g.durable_seq >= g.last_captured_seq)
        })
}

/// Runs hosts scenario `s` in `dir` with workload seed `seed` (and `duration` seconds instead
/// of the scenario's, when given); returns its row of the report, as
/// [`super::run_scenario`] does, with `groups`: per group its first primary host, whether a
/// killed host served it, its RTO and its longest write gaps.
///
/// # Errors
/// The cluster could not be brought up, or a fault could not be applied.
pub fn run_hosts_scenario(
    s: &Scenario,
    dir: &Path,
    seed: u64,
    duration: Option<u64>,
    host: &Host<'_>,
) -> Result<Value> {
    // 1. Bring the cluster up: 3 coordinators, `hosts_per_site` replicators per data site.
    let ctx = start_cluster(s, dir, host)?;
    let names: Vec<String> = (0..s.group_count()).map(group_name).collect();
    // 2. Wait until every group is protected, each primary host with its lease.
    let st0 = ctx
        .wait(
            "every group protected with a lease",
            PROTECTED_WAIT_S,
            &|st| all_protected(st, &names),
        )
        .map_err(|e| e.context(groups_seen(ctx.status().as_ref(), &names)))?;
    // 3. Start a writer on every group at its primary host.
    let volume_bytes = VOLUME_MIB << 20;
    let load = HostsLoad::start(&ctx, s, &st0, &names, seed, volume_bytes)?;
    let mut obs = HostsObserved::new(&st0, &names);
    // 4. Run the fault timeline while sampling the status and following the primaries.
    let total = Duration::from_millis(duration.map(|d| d * 1000).unwrap_or(s.duration.as_millis()));
    run_timeline(&ctx, s, total, &mut obs, &load)?;
    // 5. Stop the writers (the end of the judged window), start the killed hosts not
    //    restarted yet and wait until every group is protected and caught up.
    let end_ms = load.stop(&ctx);
    let mut out = HostsFindings {
        notes: std::mem::take(&mut obs.notes),
        ..HostsFindings::default()
    };
    let end = recover(&ctx, &obs, &names);
    if let Err(e) = &end {
        out.failures.push(format!("no recovery: {e:#}"));
    }
    let histories: BTreeMap<String, History> = load
        .groups
        .iter()
        .map(|l| (l.group.clone(), l.rec.snapshot()))
        .collect();
    for (g, h) in &histories {
        let _ = h.save(&dir.join(format!("history.{g}.jsonl")));
    }
    // 6. Judge every check, group by group.
    let j = HostsJudge {
        ctx: &ctx,
        host,
        s,
        load: &load,
        obs: &obs,
        histories: &histories,
        end: end.as_ref().ok(),
        end_ms,
    };
    if let Some(f) = j.pointless() {
        out.failures.push(f);
    }
    for c in &s.checks {
        judge_hosts(&j, *c, &mut out)?;
    }
    // 7. Report.
    Ok(report(s, &obs, &load, out))
}

/// Step 4: until `total` has passed, every tick: sample the status (the writers follow it),
/// kill or restart the hosts that are due.
fn run_timeline(
    ctx: &Ctx,
    s: &Scenario,
    total: Duration,
    obs: &mut HostsObserved,
    load: &HostsLoad,
) -> Result<()> {
    let start = Instant::now();
    let timeline = s.timeline();
    let mut faults = timeline.iter().peekable();
    while start.elapsed() < total {
        if let Some(st) = ctx.status() {
            load.follow(ctx, &st);
            obs.sample(st, load.now_ms());
        }
        while let Some(f) = faults.next_if(|f| start.elapsed() >= f.at.as_duration()) {
            if f.action == FaultAction::Restart {
                restart(ctx, f, obs, load.now_ms())?;
            } else {
                kill(ctx, f, obs, load.now_ms())?;
            }
        }
        std::thread::sleep(TICK);
    }
    Ok(())
}

/// Step 5: starts the killed hosts still down again and waits until every group is protected and
/// caught up; returns that status.
fn recover(ctx: &Ctx, obs: &HostsObserved, names: &[String]) -> Result<ClusterStatus> {
    for n in &obs.down() {
        ctx.start(n)?;
    }
    ctx.wait(
        "recovery: every group protected and caught up",
        PROTECTED_WAIT_S,
        &|st| all_caught_up(st, names),
    )
    .map_err(|e| e.context(groups_seen(ctx.status().as_ref(), names)))
}

/// What a status shows of each group of `names`, for a wait that timed out.
fn groups_seen(st: Option<&ClusterStatus>, names: &[String]) -> String {
    let Some(st) = st else {
        return "no status".to_owned();
    };
    names
        .iter()
        .map(|n| match group_in(st, n) {
            Some(g) => format!(
                "{n}: {} ({}) primary {} on {} epoch {} rpo {} ms",
                g.state, g.reason, g.primary, g.primary_host, g.epoch, g.rpo_ms
            ),
            None => format!("{n}: missing"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Step 7: the scenario's row of the report; `rto_ms` is the longest of the lost groups.
fn report(s: &Scenario, obs: &HostsObserved, load: &HostsLoad, out: HostsFindings) -> Value {
    let groups: serde_json::Map<String, Value> = obs
        .first
        .iter()
        .map(|(g, first)| {
            let lost = obs.lost_groups.contains(g);
            let resync = out.resync.get(g);
            let acked = load
                .groups
                .iter()
                .find(|l| &l.group == g)
                .map_or(0, |l| l.writer.ok.load(std::sync::atomic::Ordering::SeqCst));
            let v = json!({
                "primary_host": first.primary_host,
                "lost": lost,
                "acked": acked,
                "rto_ms": out.rto_ms.get(g).copied().flatten(),
                "audited_rto_ms": out.audited_rto_ms.get(g).copied().flatten(),
                "max_gap_before_kill_ms": out.gaps_ms.get(g).map(|x| x.0),
                "max_gap_after_kill_ms": out.gaps_ms.get(g).map(|x| x.1),
                "replica_host_lost": obs.replica_lost.get(g),
                "degraded_after_kill_ms": resync.and_then(|t| t.degraded_after_ms),
                "protected_after_restart_ms": resync.and_then(|t| t.protected_after_ms),
            });
            (g.clone(), v)
        })
        .collect();
    json!({
        "scenario": s.name,
        "faults": obs.fault_names.join(" "),
        "acked": load.acked(),
        "lost": out.lost,
        "db_committed": Value::Null,
        "db_lost": Value::Null,
        "max_rpo_ms": obs.max_rpo,
        "rto_ms": out.rto_ms.values().copied().flatten().max(),
        "verdict": if out.failures.is_empty() { "PASS" } else { "FAIL" },
        "failures": out.failures,
        "notes": out.notes,
        "groups": groups,
    })
}
