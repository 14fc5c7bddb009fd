//! The steps that move a group between sites: `fence`, `promote` (with `pg_ctl promote` of
//! postgres resources), `demote`, `reverse`, `wait_replicated` and pausing or resuming
//! replication. Each commits through raft and waits on the replicated state or the leader's
//! live figures; `pg_ctl` runs on this host.

use super::decide::{decide_fence, planned_kind, FenceAct};
use super::failure::{Failure, StepResult};
use crate::handle::coordinator::Coordinator;
use crate::state::Command;
use crate::state::{GroupState, LeaseStatus, Run};
use serde_json::Value;
use std::time::Duration;
use tandem_runbooks::{PlannedStep, ResolvedSite};
use tonic::Status;

/// How often waits poll the state and the live figures.
const POLL: Duration = Duration::from_millis(100);

async fn set_state(
    c: &Coordinator,
    run: &Run,
    state: GroupState,
    reason: &str,
) -> Result<(), Status> {
    c.propose_cmd(Command::SetGroupState {
        at_ms: 0,
        group: run.group.clone(),
        state,
        reason: format!("run {}: {reason}", run.state.run_id),
        actor: crate::state::COORDINATOR_ACTOR.into(),
        host: None,
    })
    .await
    .map(|_| ())
}

/// `fence`: carries out [`decide_fence`] — the group state first (`switching-over` for planned
/// runs, `failing-over` for unplanned ones), then, unplanned, the epoch raised and the lease
/// revoked unless this run already did.
pub(super) async fn fence(c: &Coordinator, run: &Run) -> StepResult {
    let (state, epoch, lease) = c
        .read(|s| {
            s.group(&run.group)
                .map(|g| (g.state, g.epoch, g.lease.clone()))
        })
        .ok_or_else(|| Failure::new(format!("no group {}", run.group)))?;
    let d = decide_fence(run.kind, state, epoch, lease.as_ref(), run.state.plan.epoch);
    if let Some(want) = d.set_state {
        let why = match d.act {
            FenceAct::StopIntake => "fence: stop intake at the primary",
            FenceAct::AlreadyFenced | FenceAct::RaiseEpoch => "fence",
        };
        set_state(c, run, want, why).await?;
    }
    match d.act {
        FenceAct::StopIntake => Ok(format!(
            "intake stopped at {} (group switching-over, epoch {epoch}); the primary drains and releases its lease; the epoch rises at promote",
            run.state.plan.primary
        )),
        FenceAct::AlreadyFenced => Ok(format!("already fenced: epoch {epoch}")),
        FenceAct::RaiseEpoch => {
            c.propose_cmd(Command::Fence {
                at_ms: 0,
                group: run.group.clone(),
                actor: crate::state::COORDINATOR_ACTOR.into(),
                reason: format!("run {}", run.state.run_id),
            })
            .await?;
            let after = c
                .read(|s| s.group(&run.group).map(|g| g.epoch.0))
                .unwrap_or(0);
            Ok(format!(
                "epoch {epoch} -> {after}; lease of {} revoked",
                lease.map_or("nobody".into(), |l| l.holder)
            ))
        }
    }
}

/// `promote`: waits out the old lease (`promotion_allowed_at`), then promotes the step's site
/// (planned for switchover and failback: zero loss required); then every `postgres` resource
/// of the group at that site leaves recovery (`pg_ctl promote`, waited for).
pub(super) async fn promote(c: &Coordinator, run: &Run, step: &PlannedStep) -> StepResult {
    let to_site = match &step.site {
        ResolvedSite::Site(s) => s.clone(),
        ResolvedSite::Coordinator => run.state.plan.replica.clone(),
    };
    let mut text = promote_group(c, run, &to_site).await?;
    for line in promote_postgres(c, &run.group, &to_site).await? {
        text.push('\n');
        text.push_str(&line);
    }
    Ok(text)
}

/// `pg_ctl promote` of every postgres resource of `group` at `site` (its data directory there),
/// on this host, as the data directory's owner.
async fn promote_postgres(
    c: &Coordinator,
    group: &str,
    site: &str,
) -> Result<Vec<String>, Failure> {
    let topo = c.topo();
    let Some(g) = topo.group(group) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for r in &g.resources {
        let tandem_core::config::ResourceKind::Postgres { bin_dir, .. } = &r.kind else {
            continue;
        };
        let Some(data_dir) = topo.resource_path(g, r, site) else {
            continue;
        };
        let bin = bin_dir.clone();
        let name = r.name.clone();
        let done = tokio::task::spawn_blocking(move || {
            tandem_core::pgctl::promote(&bin, &data_dir, Duration::from_secs(60))
        })
        .await
        .map_err(|e| Failure::new(format!("pg_ctl promote task: {e}")))?
        .map_err(|e| Failure::new(format!("postgres resource {name}: {e}")))?;
        out.push(format!("postgres {name}: {done}"));
    }
    Ok(out)
}

async fn promote_group(c: &Coordinator, run: &Run, to_site: &str) -> StepResult {
    let to_site = to_site.to_owned();
    let planned = planned_kind(run.kind);
    let t0 = c.now_ms();
    let mut lease_wait_ms = 0;
    loop {
        let (primary, epoch) = c
            .read(|s| {
                s.group(&run.group)
                    .map(|g| (g.primary_site.clone(), g.epoch.0))
            })
            .ok_or_else(|| Failure::new(format!("no group {}", run.group)))?;
        if primary == to_site && epoch > run.state.plan.epoch.0 {
            return Ok(format!(
                "{to_site} is primary (epoch {epoch}); lease_wait_ms={lease_wait_ms}"
            ));
        }
        let now = c.now_ms();
        if let Some(allowed) = c.read(|s| s.promotion_allowed_at(&run.group)) {
            if now < allowed {
                tokio::time::sleep(Duration::from_millis((allowed - now) as u64 + 20)).await;
                lease_wait_ms = c.now_ms() - t0;
                continue;
            }
        }
        let t_promote = c.now_ms();
        match c
            .propose_cmd(Command::Promote {
                at_ms: 0,
                group: run.group.clone(),
                to_site: to_site.to_string(),
                actor: crate::state::COORDINATOR_ACTOR.into(),
                reason: format!("run {}", run.state.run_id),
                planned,
            })
            .await
        {
            Ok(events) => {
                let loss = events
                    .as_array()
                    .and_then(|a| a.iter().find(|e| e["event"] == "promoted"))
                    .map(|e| e["loss"].clone())
                    .unwrap_or(Value::Null);
                let epoch = c
                    .read(|s| s.group(&run.group).map(|g| g.epoch.0))
                    .unwrap_or(0);
                return Ok(format!(
                    "{to_site} promoted (epoch {epoch}, planned {planned}); lease_wait_ms={lease_wait_ms} promote_ms={}; data-loss window {loss}",
                    c.now_ms() - t_promote
                ));
            }
            Err(e) if e.message().contains("live") || e.message().contains("durable at") => {
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `demote` (planned): the group is `switching-over` and the old primary's lease is released
/// (the replicator drains and releases by itself when it sees that state) or has run out.
pub(super) async fn demote(c: &Coordinator, run: &Run) -> StepResult {
    let state = c.read(|s| s.group(&run.group).map(|g| g.state));
    if state != Some(GroupState::SwitchingOver) && state != Some(GroupState::FailingOver) {
        set_state(
            c,
            run,
            GroupState::SwitchingOver,
            "demote: stop intake at the primary",
        )
        .await?;
    }
    let t0 = c.now_ms();
    loop {
        let now = c.now_ms();
        let (released, holder) = c.read(|s| {
            let g = s.group(&run.group);
            let lease = g.and_then(|g| g.lease.as_ref());
            let released = lease.is_none_or(|l| matches!(l.status, LeaseStatus::Released { .. }))
                || s.promotion_allowed_at(&run.group).is_none_or(|t| now >= t);
            (
                released,
                lease.map(|l| l.holder.clone()).unwrap_or_default(),
            )
        });
        if released {
            return Ok(format!(
                "{} read-only: lease of {holder} released after {} ms",
                run.state.plan.primary,
                now - t0
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `reverse`: replication runs from the current primary to the other site; waits until that
/// site's replicator reports `in-sync` in the current epoch with everything the primary has.
pub(super) async fn reverse(c: &Coordinator, group: &str) -> StepResult {
    let t0 = c.now_ms();
    loop {
        let (epoch, replica_site) = c
            .read(|s| s.group(group).map(|g| (g.epoch.0, g.replica_site.clone())))
            .ok_or_else(|| Failure::new(format!("no group {group}")))?;
        if let Some(live) = c.live_group(group) {
            if let Some(r) = &live.replica {
                let fresh = r.at_ms >= t0 || c.now_ms() - r.at_ms < 1500;
                if fresh
                    && r.epoch == epoch
                    && r.site == replica_site
                    && r.state == "in-sync"
                    && live.reporter_epoch() == epoch
                    && r.durable_seq >= live.last_captured_seq()
                {
                    return Ok(format!(
                        "replicating to {replica_site}: {} in-sync at seq {} (epoch {epoch}) after {} ms",
                        r.node,
                        r.durable_seq,
                        c.now_ms() - t0
                    ));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `wait_replicated`: the primary's live report (current epoch, heard during this step) shows
/// the replica within `max_lag` seqs (and RPO 0 when `max_lag` is 0).
pub(super) async fn wait_replicated(c: &Coordinator, group: &str, max_lag: u64) -> StepResult {
    let t0 = c.now_ms();
    loop {
        let epoch = c
            .read(|s| s.group(group).map(|g| g.epoch.0))
            .ok_or_else(|| Failure::new(format!("no group {group}")))?;
        if let Some(l) = c.live_group(group) {
            if l.reported_ms() >= t0
                && l.reporter_epoch() == epoch
                && l.durable_seq().saturating_add(max_lag) >= l.last_captured_seq()
                && (max_lag > 0 || l.rpo_ms() == 0)
            {
                return Ok(format!(
                    "replica durable at seq {} of {} (RPO {} ms) after {} ms",
                    l.durable_seq(),
                    l.last_captured_seq(),
                    l.rpo_ms(),
                    c.now_ms() - t0
                ));
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(super) async fn pause(c: &Coordinator, run: &Run, pause: bool) -> StepResult {
    let op = if pause {
        "pause_replication"
    } else {
        "resume_replication"
    };
    let (group, actor, reason) = (
        run.group.clone(),
        crate::state::COORDINATOR_ACTOR.to_string(),
        format!("run {}", run.state.run_id),
    );
    let cmd = Command::pause_or_resume(pause, group, actor, reason);
    match c.propose_cmd(cmd).await {
        Ok(_) => Ok(format!("{op}: done")),
        Err(e) if e.message().contains("already paused") || e.message().contains("not paused") => {
            Ok(format!("{op}: {}", e.message()))
        }
        Err(e) => Err(e.into()),
    }
}
