//! Roles and group state: fence (raise the epoch, revoke the lease), promotion of the replica
//! site (swap roles, record the data-loss window), operator state changes and pause/resume.
//! Decides whether a promotion is safe (lease window, sites, catch-up, residency). Pure.

use super::event::Event;
use super::machine::{get_group, group_mut, to_json, State};
use super::model::{DataLossWindow, GroupState, LeaseStatus, Progress, SiteStatus};
use super::rejection::Rejection;
use super::residency::check_residency;
use crate::audit::AuditKind;
use serde_json::json;

pub(super) fn fence(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    actor: &str,
    reason: &str,
) -> Result<(), Rejection> {
    get_group(state, group)?;
    let drift = state.drift_ms();
    let g = group_mut(state, group)?;
    let from = g.epoch;
    let to = from.next();
    g.epoch = to;
    let mut revoked = None;
    if let Some(l) = g.lease.as_mut() {
        if l.status == LeaseStatus::Active {
            l.status = LeaseStatus::Revoked { at_ms: now };
            revoked = Some(l.clone());
        }
    }
    ev.push(Event::EpochRaised {
        group: group.to_string(),
        from,
        to,
    });
    if let Some(l) = &revoked {
        ev.push(Event::LeaseRevoked {
            group: group.to_string(),
            node: l.holder.clone(),
            epoch: l.epoch,
            expires_ms: l.expires_ms,
            blocks_until_ms: l.expires_ms.saturating_add(drift),
        });
    }
    let detail = json!({
        "from_epoch": from,
        "to_epoch": to,
        "reason": reason,
        "revoked_lease": to_json(&revoked),
    });
    state.record_audit(ev, now, actor, AuditKind::Fence, Some(group), detail);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn promote(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    to_site: &str,
    actor: &str,
    reason: &str,
    planned: bool,
) -> Result<(), Rejection> {
    let g = get_group(state, group)?;
    let s = state
        .sites
        .get(to_site)
        .ok_or_else(|| Rejection::UnknownSite {
            site: to_site.to_string(),
        })?;
    if s.witness {
        return Err(Rejection::WitnessSite {
            site: to_site.to_string(),
        });
    }
    check_residency(state, group, "promoted", to_site)?;
    if g.replica_site != to_site {
        return Err(Rejection::NotReplicaSite {
            group: group.to_string(),
            site: to_site.to_string(),
            replica: g.replica_site.clone(),
        });
    }
    if s.status == SiteStatus::Down {
        return Err(Rejection::SiteIsDown {
            site: to_site.to_string(),
        });
    }
    if let Some(until_ms) = state.promotion_allowed_at(group) {
        if now < until_ms {
            return Err(Rejection::LeaseStillLive {
                group: group.to_string(),
                holder: g.lease.as_ref().map_or(String::new(), |l| l.holder.clone()),
                until_ms,
            });
        }
    }
    let pr = &g.progress;
    if planned && pr.durable_seq < pr.last_captured_seq {
        return Err(Rejection::NotCaughtUp {
            group: group.to_string(),
            durable_seq: pr.durable_seq,
            last_captured_seq: pr.last_captured_seq,
        });
    }
    let g = group_mut(state, group)?;
    let from_epoch = g.epoch;
    let epoch = from_epoch.next();
    let from_site = std::mem::replace(&mut g.primary_site, to_site.to_string());
    g.replica_site.clone_from(&from_site);
    g.epoch = epoch;
    let previous_lease = g.lease.take();
    let old_state = g.state;
    g.state = if planned {
        GroupState::Protected
    } else {
        GroupState::FailedOver
    };
    g.reason = reason.to_string();
    g.degraded_by_site = None;
    g.sync_degraded_since = None;
    let pr = &mut g.progress;
    let loss = DataLossWindow {
        at_ms: now,
        planned,
        from_site: from_site.clone(),
        to_site: to_site.to_string(),
        epoch,
        durable_seq: pr.durable_seq,
        last_captured_seq: pr.last_captured_seq,
        lost_changes: pr.last_captured_seq.0.saturating_sub(pr.durable_seq.0),
        rpo_ms: pr.rpo_ms,
        bytes_pending: pr.bytes_pending,
        progress_at_ms: pr.primary_report_ms,
    };
    *pr = Progress {
        epoch,
        last_captured_seq: pr.durable_seq,
        durable_seq: pr.durable_seq,
        rpo_ms: 0,
        bytes_pending: 0,
        primary_report_ms: None,
        replica_report_ms: None,
    };
    g.last_failover = Some(loss.clone());
    let new_state = g.state;
    ev.push(Event::EpochRaised {
        group: group.to_string(),
        from: from_epoch,
        to: epoch,
    });
    ev.push(Event::Promoted {
        group: group.to_string(),
        primary: to_site.to_string(),
        replica: from_site.clone(),
        epoch,
        loss: loss.clone(),
    });
    if old_state != new_state {
        ev.push(Event::GroupStateChanged {
            group: group.to_string(),
            from: old_state,
            to: new_state,
            reason: reason.to_string(),
        });
    }
    let detail = json!({
        "planned": planned,
        "reason": reason,
        "from_site": from_site,
        "to_site": to_site,
        "from_epoch": from_epoch,
        "to_epoch": epoch,
        "previous_lease": to_json(&previous_lease),
        "state": new_state,
        "loss": to_json(&loss),
    });

    state.record_audit(ev, now, actor, AuditKind::Promote, Some(group), detail);
    Ok(())
}

/// Changes a group's state and audits it (shared by commands and automatic transitions).
#[allow(clippy::too_many_arguments)]
pub(super) fn change_group_state(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    to: GroupState,
    reason: &str,
    actor: &str,
    degraded_by_site: Option<String>,
) -> Result<(), Rejection> {
    let g = group_mut(state, group)?;
    let from = g.state;
    g.state = to;
    g.reason = reason.to_string();
    g.degraded_by_site = degraded_by_site;
    ev.push(Event::GroupStateChanged {
        group: group.to_string(),
        from,
        to,
        reason: reason.to_string(),
    });
    let detail = json!({"from": from, "to": to, "reason": reason});
    state.record_audit(ev, now, actor, AuditKind::GroupState, Some(group), detail);
    Ok(())
}

/// A `set_group_state` command's change: the new state, why, who, and (with `protected`) the
/// replica host whose in-sync report protects the group.
pub(super) struct StateChange<'a> {
    pub(super) to: GroupState,
    pub(super) reason: &'a str,
    pub(super) actor: &'a str,
    pub(super) host: Option<&'a str>,
}

pub(super) fn set_group_state(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    change: StateChange<'_>,
) -> Result<(), Rejection> {
    let StateChange {
        to,
        reason,
        actor,
        host,
    } = change;
    let g = get_group(state, group)?;
    let replica_site = g.replica_site.clone();
    change_group_state(state, ev, now, group, to, reason, actor, None)?;
    // The replica host that proved itself in sync now holds the group's data at its site.
    if let (GroupState::Protected, Some(host)) = (to, host) {
        group_mut(state, group)?
            .hosts
            .insert(replica_site, host.to_string());
    }
    Ok(())
}

pub(super) fn set_paused(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    actor: &str,
    reason: &str,
    pause: bool,
) -> Result<(), Rejection> {
    let g = get_group(state, group)?;
    if pause && g.paused {
        return Err(Rejection::AlreadyPaused {
            group: group.to_string(),
        });
    }
    if !pause && !g.paused {
        return Err(Rejection::NotPaused {
            group: group.to_string(),
        });
    }
    group_mut(state, group)?.paused = pause;
    let (event, kind) = if pause {
        (
            Event::ReplicationPaused {
                group: group.to_string(),
            },
            AuditKind::ReplicationPaused,
        )
    } else {
        (
            Event::ReplicationResumed {
                group: group.to_string(),
            },
            AuditKind::ReplicationResumed,
        )
    };
    ev.push(event);
    state.record_audit(ev, now, actor, kind, Some(group), json!({"reason": reason}));
    Ok(())
}
