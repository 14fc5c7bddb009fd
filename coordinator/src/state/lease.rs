//! Leases: grant, renewal and release of the lease a primary replicator needs to accept
//! writes, and a sync group's degradation (which only the live lease's holder may ask for).
//! Decides who may hold a lease when, from the state and the leader-stamped time. Pure.

use super::event::Event;
use super::machine::{get_group, group_mut, to_json, State};
use super::model::{GroupState, Lease, LeaseStatus, Mode};
use super::rejection::Rejection;
use crate::audit::AuditKind;
use serde_json::json;
use tandem_core::ids::Epoch;
use tandem_runbooks::RunbookKind;

/// Checks shared by acquire and renew: the site is the group's primary (not a witness) and the
/// epoch is current.
fn check_lease_request(
    state: &State,
    group: &str,
    site: &str,
    epoch: Epoch,
) -> Result<(), Rejection> {
    let g = get_group(state, group)?;
    let s = state
        .sites
        .get(site)
        .ok_or_else(|| Rejection::UnknownSite {
            site: site.to_string(),
        })?;
    if s.witness {
        return Err(Rejection::WitnessSite {
            site: site.to_string(),
        });
    }
    if g.primary_site != site {
        return Err(Rejection::NotPrimarySite {
            group: group.to_string(),
            site: site.to_string(),
            primary: g.primary_site.clone(),
        });
    }
    if epoch != g.epoch {
        return Err(Rejection::WrongEpoch {
            group: group.to_string(),
            given: epoch,
            current: g.epoch,
        });
    }
    Ok(())
}

pub(super) fn acquire_lease(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    node: &str,
    site: &str,
    epoch: Epoch,
) -> Result<(), Rejection> {
    check_lease_request(state, group, site, epoch)?;
    let drift = state.drift_ms();
    let ttl = state.ttl_ms();
    let g = get_group(state, group)?;
    if matches!(g.state, GroupState::FailingOver | GroupState::SwitchingOver) {
        return Err(Rejection::StateForbids {
            group: group.to_string(),
            state: g.state,
            action: "acquire_lease".into(),
        });
    }
    if let Some(recorded) = g.hosts.get(site).filter(|r| r.as_str() != node) {
        return Err(Rejection::PlacedElsewhere {
            group: group.to_string(),
            site: site.to_string(),
            node: node.to_string(),
            recorded: recorded.clone(),
        });
    }
    let mut expires_ms = now.saturating_add(ttl);
    let mut renewal = false;
    if let Some(l) = &g.lease {
        let released = matches!(l.status, LeaseStatus::Released { .. });
        if l.holder == node {
            if !released {
                // The same holder: never shorten what it may already believe.
                expires_ms = expires_ms.max(l.expires_ms);
                renewal = l.status == LeaseStatus::Active && l.epoch == epoch && now < l.expires_ms;
            }
        } else if !released {
            let until_ms = l.expires_ms.saturating_add(drift);
            if now < until_ms {
                return Err(Rejection::LeaseHeld {
                    group: group.to_string(),
                    holder: l.holder.clone(),
                    until_ms,
                });
            }
        }
    }
    let g = group_mut(state, group)?;
    if renewal {
        if let Some(l) = g.lease.as_mut() {
            l.expires_ms = expires_ms;
        }
        ev.push(Event::LeaseRenewed {
            group: group.to_string(),
            node: node.to_string(),
            epoch,
            expires_ms,
        });
        return Ok(());
    }
    g.hosts.insert(site.to_string(), node.to_string());
    let previous = g.lease.replace(Lease {
        holder: node.to_string(),
        site: site.to_string(),
        epoch,
        granted_ms: now,
        expires_ms,
        status: LeaseStatus::Active,
    });
    ev.push(Event::LeaseGranted {
        group: group.to_string(),
        node: node.to_string(),
        site: site.to_string(),
        epoch,
        expires_ms,
    });
    let detail = json!({
        "node": node,
        "site": site,
        "epoch": epoch,
        "expires_ms": expires_ms,
        "previous": to_json(&previous),
    });
    state.record_audit(ev, now, node, AuditKind::LeaseGranted, Some(group), detail);
    Ok(())
}

pub(super) fn renew_lease(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    node: &str,
    site: &str,
    epoch: Epoch,
) -> Result<(), Rejection> {
    check_lease_request(state, group, site, epoch)?;
    let ttl = state.ttl_ms();
    let g = get_group(state, group)?;
    if g.state == GroupState::FailingOver {
        return Err(Rejection::StateForbids {
            group: group.to_string(),
            state: g.state,
            action: "renew_lease".into(),
        });
    }
    let no_lease = || Rejection::NoLease {
        group: group.to_string(),
        node: node.to_string(),
        action: "renew".into(),
    };
    let l = g.lease.as_ref().ok_or_else(no_lease)?;
    if l.holder != node || l.site != site {
        return Err(no_lease());
    }
    match l.status {
        LeaseStatus::Active => {}
        LeaseStatus::Revoked { .. } => {
            return Err(Rejection::LeaseRevoked {
                group: group.to_string(),
                node: node.to_string(),
            })
        }
        LeaseStatus::Released { .. } => return Err(no_lease()),
    }
    if l.epoch != epoch {
        return Err(Rejection::WrongEpoch {
            group: group.to_string(),
            given: epoch,
            current: l.epoch,
        });
    }
    if now >= l.expires_ms {
        return Err(Rejection::LeaseExpired {
            group: group.to_string(),
            node: node.to_string(),
            expired_ms: l.expires_ms,
        });
    }
    let expires_ms = now.saturating_add(ttl).max(l.expires_ms);
    let g = group_mut(state, group)?;
    if let Some(l) = g.lease.as_mut() {
        l.expires_ms = expires_ms;
    }
    ev.push(Event::LeaseRenewed {
        group: group.to_string(),
        node: node.to_string(),
        epoch,
        expires_ms,
    });
    Ok(())
}

pub(super) fn release_lease(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    node: &str,
    epoch: Epoch,
) -> Result<(), Rejection> {
    let g = get_group(state, group)?;
    let no_lease = || Rejection::NoLease {
        group: group.to_string(),
        node: node.to_string(),
        action: "release".into(),
    };
    let l = g.lease.as_ref().ok_or_else(no_lease)?;
    if l.holder != node || matches!(l.status, LeaseStatus::Released { .. }) {
        return Err(no_lease());
    }
    if l.epoch != epoch {
        return Err(Rejection::WrongEpoch {
            group: group.to_string(),
            given: epoch,
            current: l.epoch,
        });
    }
    let g = group_mut(state, group)?;
    let mut previous = None;
    if let Some(l) = g.lease.as_mut() {
        previous = Some(l.clone());
        l.status = LeaseStatus::Released { at_ms: now };
    }
    ev.push(Event::LeaseReleased {
        group: group.to_string(),
        node: node.to_string(),
        epoch,
    });
    let detail = json!({"epoch": epoch, "lease": to_json(&previous)});
    state.record_audit(ev, now, node, AuditKind::LeaseReleased, Some(group), detail);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn sync_degraded(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    node: &str,
    site: &str,
    epoch: Epoch,
    on: bool,
) -> Result<(), Rejection> {
    check_lease_request(state, group, site, epoch)?;
    let g = get_group(state, group)?;
    if g.mode != Mode::Sync {
        return Err(Rejection::StateForbids {
            group: group.to_string(),
            state: g.state,
            action: "sync_degraded (an async group)".into(),
        });
    }
    if on {
        if matches!(g.state, GroupState::FailingOver | GroupState::SwitchingOver) {
            return Err(Rejection::StateForbids {
                group: group.to_string(),
                state: g.state,
                action: "sync_degraded".into(),
            });
        }
        if let Some((id, _)) = state.runs.iter().find(|(_, r)| {
            r.group == group
                && r.is_running()
                && matches!(r.kind, RunbookKind::Failover | RunbookKind::Switchover)
        }) {
            return Err(Rejection::RunUnderWay {
                group: group.to_string(),
                run_id: id.clone(),
            });
        }
        let no_lease = || Rejection::NoLease {
            group: group.to_string(),
            node: node.to_string(),
            action: "degrade".into(),
        };
        let l = g.lease.as_ref().ok_or_else(no_lease)?;
        if l.holder != node || l.epoch != epoch || l.status != LeaseStatus::Active {
            return Err(no_lease());
        }
        if now >= l.expires_ms {
            return Err(Rejection::LeaseExpired {
                group: group.to_string(),
                node: node.to_string(),
                expired_ms: l.expires_ms,
            });
        }
    }
    if g.sync_degraded_since.is_some() == on {
        return Ok(());
    }
    let since = g.sync_degraded_since;
    let g = group_mut(state, group)?;
    g.sync_degraded_since = on.then_some(now);
    ev.push(Event::SyncDegraded {
        group: group.to_string(),
        node: node.to_string(),
        epoch,
        on,
    });
    let detail = json!({"on": on, "epoch": epoch, "since_ms": since});
    state.record_audit(ev, now, node, AuditKind::SyncDegraded, Some(group), detail);
    Ok(())
}
