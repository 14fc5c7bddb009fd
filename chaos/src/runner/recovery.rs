//! Recovery after the timeline: heal every link, set every clock right, turn failpoints off,
//! resume and restart everything, probe the woken old primary, then wait until the groups are
//! protected and caught up and stop the writers. I/O: processes, files, status, NBD.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use tandem_coordinator::status::ClusterStatus;

use super::cluster::Ctx;
use super::load::Load;
use super::nodefiles::{set_clock, set_failpoints};
use super::observe::Observed;
use super::processes as proc;
use super::topology::{db_group, group};
use crate::nbd_client::NbdClient;
use crate::scenario::{Check, Scenario};

/// How long the woken old primary has to answer the write it must refuse.
const OLD_PRIMARY_ANSWER: Duration = Duration::from_secs(10);

pub use super::topology::protected;

/// Heals, resets and wakes everything; restarts what was killed. Returns whether the woken
/// old primary refused a write (when the scenario checks it).
///
/// # Errors
/// A clock or failpoint file, a signal or a restart failed.
pub fn wake_all(ctx: &Ctx, s: &Scenario, obs: &mut Observed) -> Result<Option<bool>> {
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
        for n in ctx.crashed(&obs.killed) {
            obs.notes
                .push(format!("{n} crashed (failpoint), found at the end"));
            obs.killed.push(n);
        }
    }
    let mut old_primary_refused = None;
    for n in obs.paused.clone() {
        if let Ok(pid) = proc::read_pid(&ctx.run_dir, &n) {
            proc::signal(pid, libc::SIGCONT)?;
        }
    }
    if s.checks.contains(&Check::OldPrimaryFenced) {
        // Right after it wakes, the old primary must refuse a write, promptly: a write left
        // unanswered (a primary that ignores its fence waits for a replica that no longer
        // takes its frames) is not a refusal.
        let addr = ctx.nbd_of_site(obs.primary0());
        let r = ctx.rt.block_on(async {
            tokio::time::timeout(OLD_PRIMARY_ANSWER, async {
                let mut c = NbdClient::connect(addr, "disk0").await?;
                c.write(0, &[0x5a; 4096], false).await
            })
            .await
        });
        old_primary_refused = Some(matches!(r, Ok(Err(_))));
        if r.is_err() {
            obs.notes.push(format!(
                "the woken old primary did not answer a write within {OLD_PRIMARY_ANSWER:?}"
            ));
        }
    }
    for n in obs.killed.clone() {
        ctx.start(&n)?;
    }
    Ok(old_primary_refused)
}

/// The scenario judges the final replica of its database group (a failback).
pub fn db_failback(s: &Scenario) -> bool {
    s.database
        && (s.checks.contains(&Check::DbIdenticalAfterRecovery)
            || s.checks.contains(&Check::DbTailQuarantined))
}

/// Waits until the groups are protected again, stops the writers and waits until the
/// replicas caught up; returns the final status.
///
/// # Errors
/// A wait timed out or the database writer failed to stop.
pub fn recover(ctx: &Ctx, s: &Scenario, load: &mut Load) -> Result<ClusterStatus> {
    let st_end = ctx.wait("recovery: group protected", 90, &|st| protected(group(st)))?;
    let end_primary = group(&st_end)
        .map(|g| g.primary.clone())
        .unwrap_or_default();
    let db_failback = db_failback(s);
    if let Some(d) = load.db.as_mut() {
        // A returning old primary of a database group is not resynced (only volumes are, by
        // merkle diff): the db group is waited for until protected only when the scenario
        // judges the final replica.
        let st_db = if db_failback {
            ctx.wait("recovery: db protected", 90, &|st| protected(db_group(st)))?
        } else {
            ctx.wait("recovery: db primary holds its lease", 30, &|st| {
                db_group(st).is_some_and(|g| {
                    g.lease.as_ref().is_some_and(|l| {
                        l.status == "active" && l.holder == format!("{}-rep", g.primary)
                    })
                })
            })?
        };
        d.observe(&st_db, &load.rec, true, &[]);
    }
    if let Some(p) = load.pg.as_mut() {
        p.recover(ctx, s.checks.contains(&Check::PgRejoined));
    }
    for (_, w) in &load.pinned {
        w.stop(&ctx.rt);
    }
    load.writer.retarget(ctx.nbd_of_site(&end_primary));
    std::thread::sleep(Duration::from_millis(500));
    load.writer.stop(&ctx.rt);
    if let Some(d) = load.db.as_mut() {
        d.writer.stop()?;
    }
    let st = ctx.wait("replica caught up", 60, &|st| {
        group(st).is_some_and(|g| g.rpo_ms == 0 && g.durable_seq >= g.last_captured_seq)
    })?;
    if db_failback {
        // The source reads the WAL every 100 ms: let it capture the last commits first.
        std::thread::sleep(Duration::from_millis(300));
        ctx.wait("db replica caught up", 60, &|st| {
            db_group(st).is_some_and(|g| {
                g.rpo_ms == 0 && g.durable_seq >= g.last_captured_seq && g.durable_seq > 0
            })
        })?;
    }
    Ok(st)
}
