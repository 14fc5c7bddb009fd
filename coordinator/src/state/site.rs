//! Sites: committed heartbeats (a node's time and its groups' progress in the current epoch)
//! and site up/down from the failure detector, with the group moves they cause (protected ↔
//! degraded). Heartbeats never touch leases. Pure.

use super::event::Event;
use super::machine::State;
use super::model::{GroupProgress, GroupState, Role, SiteStatus, COORDINATOR_ACTOR};
use super::rejection::Rejection;
use super::role::change_group_state;
use crate::audit::AuditKind;
use serde_json::{json, Value};

pub(super) fn heartbeat(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    node: &str,
    site: &str,
    progress: &[GroupProgress],
) -> Result<(), Rejection> {
    let Some(s) = state.sites.get_mut(site) else {
        return Err(Rejection::UnknownSite {
            site: site.to_string(),
        });
    };
    s.nodes.insert(node.to_string(), now);
    if s.status != SiteStatus::Up {
        site_status(
            state,
            ev,
            now,
            site,
            true,
            Some(json!({"via": "heartbeat", "node": node})),
        )?;
    }
    for p in progress {
        let Some(g) = state.groups.get_mut(&p.group) else {
            ev.push(Event::ProgressIgnored {
                group: p.group.clone(),
                reason: "unknown group".into(),
            });
            continue;
        };
        if p.epoch != g.epoch {
            ev.push(Event::ProgressIgnored {
                group: p.group.clone(),
                reason: format!("epoch {} is not the current epoch {}", p.epoch, g.epoch),
            });
            continue;
        }
        let role_site = match p.role {
            Role::Primary => &g.primary_site,
            Role::Replica => &g.replica_site,
        };
        if role_site != site {
            ev.push(Event::ProgressIgnored {
                group: p.group.clone(),
                reason: format!("site {site} does not hold the {:?} role", p.role),
            });
            continue;
        }
        let pr = &mut g.progress;
        pr.epoch = g.epoch;
        pr.durable_seq = pr.durable_seq.max(p.durable_seq);
        match p.role {
            Role::Primary => {
                pr.last_captured_seq = pr.last_captured_seq.max(p.last_captured_seq);
                pr.rpo_ms = p.rpo_ms;
                pr.bytes_pending = p.bytes_pending;
                pr.primary_report_ms = Some(now);
            }
            Role::Replica => pr.replica_report_ms = Some(now),
        }
        ev.push(Event::ProgressUpdated {
            group: p.group.clone(),
            role: p.role,
        });
    }
    Ok(())
}

/// Marks a site up or down (no-op if it already is), audits it and moves the groups it
/// degrades or restores. `via` is extra audit detail (a heartbeat) and makes the node the actor.
pub(super) fn site_status(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    site: &str,
    up: bool,
    via: Option<Value>,
) -> Result<(), Rejection> {
    let Some(s) = state.sites.get_mut(site) else {
        return Err(Rejection::UnknownSite {
            site: site.to_string(),
        });
    };
    let to = if up { SiteStatus::Up } else { SiteStatus::Down };
    if s.status == to {
        return Ok(());
    }
    let from = s.status;
    s.status = to;
    s.since_ms = Some(now);
    let actor = via
        .as_ref()
        .and_then(|v| v.get("node"))
        .and_then(Value::as_str)
        .unwrap_or(COORDINATOR_ACTOR)
        .to_string();
    let (event, kind) = if up {
        (
            Event::SiteUp {
                site: site.to_string(),
            },
            AuditKind::SiteUp,
        )
    } else {
        (
            Event::SiteDown {
                site: site.to_string(),
            },
            AuditKind::SiteDown,
        )
    };
    ev.push(event);
    let detail = json!({"site": site, "from": from, "via": via});
    state.record_audit(ev, now, &actor, kind, None, detail);
    let affected: Vec<String> = state
        .groups
        .values()
        .filter(|g| {
            if up {
                g.state == GroupState::Degraded && g.degraded_by_site.as_deref() == Some(site)
            } else {
                g.state == GroupState::Protected
                    && (g.primary_site == site || g.replica_site == site)
            }
        })
        .map(|g| g.name.clone())
        .collect();
    for name in affected {
        if up {
            let reason = format!("site {site} up");
            change_group_state(
                state,
                ev,
                now,
                &name,
                GroupState::Protected,
                &reason,
                COORDINATOR_ACTOR,
                None,
            )?;
        } else {
            let reason = format!("site {site} down");
            change_group_state(
                state,
                ev,
                now,
                &name,
                GroupState::Degraded,
                &reason,
                COORDINATOR_ACTOR,
                Some(site.to_string()),
            )?;
        }
    }
    Ok(())
}
