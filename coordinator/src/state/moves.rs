//! Planned moves of a group's replica side to another replicator host at the same site
//! (`tandem move`): started by an operator, completed by the new host's in-sync report,
//! cancelled by a promotion. Pure.
//!
//! While a move runs, [`Group::host_at`](super::model::Group::host_at) names the new host:
//! the primary ships to it, it resyncs (merkle diff against the primary), and the trust
//! boundary counts only it as the group's replica replicator there. The group is `degraded`
//! meanwhile (the replica site's copy is not current until the new host reports itself in
//! sync, which records it as where the data lives and ends the move), so a loss of the
//! primary during the move is handled as for any degraded group: an automatic failover by the
//! group's own policy (never when a sync primary acknowledged writes without the replica),
//! which promotes the old host.

use super::event::Event;
use super::machine::{get_group, group_mut, State};
use super::model::{GroupMove, GroupState};
use super::rejection::Rejection;
use super::role::change_group_state;
use crate::audit::AuditKind;
use serde_json::json;

/// What an operator asked to move.
pub(super) struct MoveStart<'a> {
    pub(super) group: &'a str,
    pub(super) site: &'a str,
    pub(super) to: &'a str,
    pub(super) actor: &'a str,
    pub(super) reason: &'a str,
}

/// Starts a planned move (see the module docs). Refused for the primary side, during a
/// failover, switchover, drill or another move, and when `to` already holds the data.
pub(super) fn start_move(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    m: &MoveStart<'_>,
) -> Result<(), Rejection> {
    let g = get_group(state, m.group)?;
    let refuse = |reason: String| Rejection::MoveRefused {
        group: m.group.to_string(),
        site: m.site.to_string(),
        to: m.to.to_string(),
        reason,
    };
    if m.site == g.primary_site {
        return Err(refuse(format!(
            "{} is the group's primary site; only the replica side ({}) moves: switch over \
             first, move, and switch back",
            m.site, g.replica_site
        )));
    }
    if m.site != g.replica_site {
        return Err(refuse(format!(
            "the group has no side at {} (primary {}, replica {})",
            m.site, g.primary_site, g.replica_site
        )));
    }
    if let Some(cur) = &g.moving {
        return Err(refuse(format!(
            "a move of its replica side to {} at {} is under way since {} ms",
            cur.to, cur.site, cur.since_ms
        )));
    }
    if matches!(
        g.state,
        GroupState::FailingOver | GroupState::SwitchingOver | GroupState::Drilling
    ) {
        return Err(Rejection::StateForbids {
            group: m.group.to_string(),
            state: g.state,
            action: "move".into(),
        });
    }
    let from = g.hosts.get(m.site).cloned();
    if from.as_deref() == Some(m.to) {
        return Err(refuse(format!("{} already holds its data there", m.to)));
    }
    let reason = format!(
        "moving the replica at {} from {} to {}: {}",
        m.site,
        from.as_deref().unwrap_or("(no host recorded)"),
        m.to,
        m.reason
    );
    change_group_state(
        state,
        ev,
        now,
        m.group,
        GroupState::Degraded,
        &reason,
        m.actor,
        None,
    )?;
    group_mut(state, m.group)?.moving = Some(GroupMove {
        site: m.site.to_string(),
        from: from.clone(),
        to: m.to.to_string(),
        since_ms: now,
        actor: m.actor.to_string(),
    });
    let detail = json!({
        "phase": "started",
        "site": m.site,
        "from": from,
        "to": m.to,
        "reason": m.reason,
    });
    state.record_audit(ev, now, m.actor, AuditKind::Move, Some(m.group), detail);
    Ok(())
}

/// Ends the group's move when `host`, whose in-sync report protects the group, is its
/// target: audits the completion (how long it took). Called after the host was recorded.
pub(super) fn complete_move(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    host: &str,
    actor: &str,
) -> Result<(), Rejection> {
    let g = group_mut(state, group)?;
    let Some(m) = g.moving.take_if(|m| m.to == host) else {
        return Ok(());
    };
    let detail = json!({
        "phase": "completed",
        "site": m.site,
        "from": m.from,
        "to": m.to,
        "started_by": m.actor,
        "took_ms": now.saturating_sub(m.since_ms),
    });
    state.record_audit(ev, now, actor, AuditKind::Move, Some(group), detail);
    Ok(())
}

/// Cancels the group's move once it was promoted to `site` (a failover during the move):
/// only the move's old host holds a consistent copy there (the new one may be half
/// resynced), so the old host is the one that serves the promoted side. Audited (phase
/// `cancelled`) when there was a move.
pub(super) fn cancel_move(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    actor: &str,
    site: &str,
) -> Result<(), Rejection> {
    let Some(m) = group_mut(state, group)?.moving.take() else {
        return Ok(());
    };
    let detail = json!({
        "phase": "cancelled",
        "site": m.site,
        "from": m.from,
        "to": m.to,
        "started_by": m.actor,
        "why": format!("the group was promoted to {site}: its data there is on the old host"),
    });
    state.record_audit(ev, now, actor, AuditKind::Move, Some(group), detail);
    Ok(())
}
