//! The `bootstrap` command: sets the topology the first time and, later, adds new sites and
//! groups to it, refusing anything that disagrees with what exists. Decides in steps (settings,
//! sites, groups, residency of the new groups) before changing anything. Pure.

use super::event::Event;
use super::machine::{to_json, State};
use super::model::{
    ClusterSettings, Group, GroupSpec, GroupState, Progress, Site, SiteSpec, SiteStatus,
    FIRST_EPOCH,
};
use super::rejection::Rejection;
use crate::audit::AuditKind;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tandem_core::ids::GroupId;
use tandem_core::residency;

pub(super) fn bootstrap(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    actor: &str,
    settings: &ClusterSettings,
    sites: &[SiteSpec],
    groups: &[GroupSpec],
) -> Result<(), Rejection> {
    check_settings(state, settings)?;
    let new_sites = new_sites(state, sites)?;
    let new_groups = new_groups(state, &new_sites, groups)?;
    check_residency(state, &new_sites, &new_groups)?;
    let first = state.settings.is_none();
    let same_settings = state.settings.as_ref() == Some(settings);
    if !first && same_settings && new_sites.is_empty() && new_groups.is_empty() {
        return Ok(());
    }
    state.settings = Some(*settings);
    for s in &new_sites {
        insert_site(state, s);
    }
    for g in &new_groups {
        insert_group(state, g, now);
    }
    let sites_added: Vec<String> = new_sites.iter().map(|s| s.name.clone()).collect();
    let groups_added: Vec<String> = new_groups.iter().map(|g| g.name.clone()).collect();
    let detail = json!({
        "settings": to_json(settings),
        "sites_added": to_json(&new_sites),
        "groups_added": to_json(&new_groups),
    });
    ev.push(Event::Bootstrapped {
        sites_added,
        groups_added,
    });
    state.record_audit(ev, now, actor, AuditKind::Bootstrap, None, detail);
    Ok(())
}

fn invalid(reason: String) -> Rejection {
    Rejection::InvalidBootstrap { reason }
}

/// The settings must be positive and, after the first bootstrap, unchanged, except the RPO audit
/// interval (an evidence cadence, not a safety timing), which a later bootstrap may set or change.
fn check_settings(state: &State, settings: &ClusterSettings) -> Result<(), Rejection> {
    if settings.rpo_audit_every_ms == Some(0) {
        return Err(invalid("rpo_audit_every_ms must be positive".into()));
    }
    if settings.lease_ttl_ms == 0 || settings.detect_after_ms == 0 {
        return Err(invalid(
            "lease_ttl_ms and detect_after_ms must be positive".into(),
        ));
    }
    if let Some(existing) = &state.settings {
        let fixed = |s: &ClusterSettings| ClusterSettings {
            rpo_audit_every_ms: None,
            ..*s
        };
        if fixed(existing) != fixed(settings) {
            return Err(Rejection::BootstrapConflict {
                field: "settings".into(),
            });
        }
    }
    Ok(())
}

/// The sites not known yet. Refuses a site listed twice and a known site whose witness flag or
/// jurisdiction differs.
fn new_sites<'a>(state: &State, sites: &'a [SiteSpec]) -> Result<Vec<&'a SiteSpec>, Rejection> {
    let mut seen = BTreeSet::new();
    let mut new_sites = Vec::new();
    for s in sites {
        if !seen.insert(s.name.as_str()) {
            return Err(invalid(format!("site {} listed twice", s.name)));
        }
        match state.sites.get(&s.name) {
            Some(existing) if existing.witness != s.witness => {
                return Err(Rejection::BootstrapConflict {
                    field: format!("site {} witness", s.name),
                })
            }
            Some(existing) if existing.jurisdiction != s.jurisdiction => {
                return Err(Rejection::BootstrapConflict {
                    field: format!("site {} jurisdiction", s.name),
                })
            }
            Some(_) => {}
            None => new_sites.push(s),
        }
    }
    Ok(new_sites)
}

/// The groups not known yet. Refuses a group listed twice, with the same site as primary and
/// replica, on an unknown or witness site (known or new), and a known group that changed.
fn new_groups<'s, 'a>(
    state: &'s State,
    new_sites: &[&'s SiteSpec],
    groups: &'a [GroupSpec],
) -> Result<Vec<&'a GroupSpec>, Rejection> {
    let witness_of: BTreeMap<&str, bool> = state
        .sites
        .iter()
        .map(|(k, s)| (k.as_str(), s.witness))
        .chain(new_sites.iter().map(|s| (s.name.as_str(), s.witness)))
        .collect();
    let mut seen = BTreeSet::new();
    let mut new_groups = Vec::new();
    for g in groups {
        if !seen.insert(g.name.as_str()) {
            return Err(invalid(format!("group {} listed twice", g.name)));
        }
        if g.primary == g.replica {
            return Err(invalid(format!(
                "group {}: primary and replica are both {}",
                g.name, g.primary
            )));
        }
        for site in [&g.primary, &g.replica] {
            match witness_of.get(site.as_str()) {
                None => return Err(invalid(format!("group {}: unknown site {}", g.name, site))),
                Some(true) => {
                    return Err(invalid(format!(
                        "group {}: site {} is a witness",
                        g.name, site
                    )))
                }
                Some(false) => {}
            }
        }
        match state.groups.get(&g.name) {
            Some(existing) => check_unchanged(existing, g)?,
            None => new_groups.push(g),
        }
    }
    Ok(new_groups)
}

/// A known group declared again must keep its site pair (roles may have swapped since), mode,
/// RPO target and allowed jurisdictions.
fn check_unchanged(existing: &Group, g: &GroupSpec) -> Result<(), Rejection> {
    let same_pair = (existing.primary_site == g.primary && existing.replica_site == g.replica)
        || (existing.primary_site == g.replica && existing.replica_site == g.primary);
    let conflict = |what: &str| {
        Err(Rejection::BootstrapConflict {
            field: format!("group {} {what}", g.name),
        })
    };
    if !same_pair {
        return conflict("sites");
    }
    if existing.mode != g.mode {
        return conflict("mode");
    }
    if existing.rpo_target_ms != g.rpo_target_ms {
        return conflict("rpo_target_ms");
    }
    if existing.allowed_jurisdictions != g.allowed_jurisdictions {
        return conflict("allowed_jurisdictions");
    }
    Ok(())
}

/// Residency of the new groups, against the sites as they will be after this bootstrap.
fn check_residency(
    state: &State,
    new_sites: &[&SiteSpec],
    new_groups: &[&GroupSpec],
) -> Result<(), Rejection> {
    let jurisdiction_of: BTreeMap<&str, Option<&str>> = state
        .sites
        .iter()
        .map(|(k, s)| (k.as_str(), s.jurisdiction.as_deref()))
        .chain(
            new_sites
                .iter()
                .map(|s| (s.name.as_str(), s.jurisdiction.as_deref())),
        )
        .collect();
    for g in new_groups {
        for (what, site) in [("primary", &g.primary), ("replica", &g.replica)] {
            let j = jurisdiction_of.get(site.as_str()).copied().flatten();
            if let Some(message) =
                residency::placement_refusal(what, &g.allowed_jurisdictions, site, j)
            {
                return Err(Rejection::Residency {
                    group: g.name.clone(),
                    message,
                });
            }
        }
    }
    Ok(())
}

/// A new site: status unknown until heard from.
fn insert_site(state: &mut State, s: &SiteSpec) {
    state.sites.insert(
        s.name.clone(),
        Site {
            name: s.name.clone(),
            witness: s.witness,
            status: SiteStatus::Unknown,
            since_ms: None,
            nodes: BTreeMap::new(),
            jurisdiction: s.jurisdiction.clone(),
        },
    );
}

/// A new group: epoch 1, `resyncing` ("initial sync"), no lease.
fn insert_group(state: &mut State, g: &GroupSpec, now: i64) {
    state.groups.insert(
        g.name.clone(),
        Group {
            name: g.name.clone(),
            id: GroupId::from_name(&g.name),
            primary_site: g.primary.clone(),
            replica_site: g.replica.clone(),
            epoch: FIRST_EPOCH,
            mode: g.mode,
            state: GroupState::Resyncing,
            reason: "initial sync".into(),
            lease: None,
            paused: false,
            rpo_target_ms: g.rpo_target_ms,
            progress: Progress {
                epoch: FIRST_EPOCH,
                ..Progress::default()
            },
            rpo_samples: VecDeque::new(),
            rpo_window: None,
            last_failover: None,
            degraded_by_site: None,
            sync_degraded_since: None,
            hosts: Default::default(),
            moving: None,
            allowed_jurisdictions: g.allowed_jurisdictions.clone(),
            created_ms: Some(now),
        },
    );
}
