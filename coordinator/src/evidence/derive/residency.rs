//! Data residency over the window: where each group's data stood at the window start (from
//! the records before it) and at which sites it was held during the window, judged against
//! the group's allowed jurisdictions. Pure.

use super::fields::s;
use crate::audit::{AuditKind, AuditRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A group's sites and residency rule when the export window starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlacement {
    /// Primary site at the window start.
    pub primary: String,
    /// Replica site at the window start.
    pub replica: String,
    /// The group's allowed jurisdictions (empty: anywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_jurisdictions: Vec<String>,
}

/// Where data stood when the export window starts, derived from the records before it (the
/// bootstrap and every promotion) and written into the manifest, so that the residency table
/// of a window that does not contain the bootstrap can still name the sites.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyStart {
    /// Every bootstrapped site and its jurisdiction.
    pub sites: BTreeMap<String, Option<String>>,
    /// Every bootstrapped group and its sites.
    pub groups: BTreeMap<String, GroupPlacement>,
}

impl ResidencyStart {
    /// Nothing known (an export from the start of the chain).
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty() && self.groups.is_empty()
    }

    /// Applies one record: a bootstrap adds sites and groups, a promotion swaps the pair.
    fn apply(&mut self, r: &AuditRecord) {
        let d = &r.detail;
        match r.kind {
            AuditKind::Bootstrap => {
                for site in d["sites_added"].as_array().into_iter().flatten() {
                    if let Some(name) = s(site, "name") {
                        self.sites.insert(name, s(site, "jurisdiction"));
                    }
                }
                for g in d["groups_added"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(primary), Some(replica)) =
                        (s(g, "name"), s(g, "primary"), s(g, "replica"))
                    {
                        let allowed_jurisdictions = g["allowed_jurisdictions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect();
                        self.groups.insert(
                            name,
                            GroupPlacement {
                                primary,
                                replica,
                                allowed_jurisdictions,
                            },
                        );
                    }
                }
            }
            AuditKind::Promote => {
                if let (Some(g), Some(from), Some(to)) = (
                    r.group.as_ref().and_then(|g| self.groups.get_mut(g)),
                    s(d, "from_site"),
                    s(d, "to_site"),
                ) {
                    g.primary = to;
                    g.replica = from;
                }
            }
            _ => {}
        }
    }
}

/// [`ResidencyStart`] after `records` (the records before an export window).
pub fn residency_start(records: &[AuditRecord]) -> ResidencyStart {
    let mut st = ResidencyStart::default();
    for r in records {
        st.apply(r);
    }
    st
}

/// One site that held a group's data during the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSite {
    /// Site name.
    pub site: String,
    /// Its jurisdiction (`null` when the topology gave none).
    pub jurisdiction: Option<String>,
    /// What it held: `primary`, `replica`, `drill copy`, `point-in-time copy`.
    pub held_as: Vec<String>,
    /// First record of the window that placed data there; `null` when it already held it at
    /// the window start.
    pub first_index: Option<u64>,
    /// Whether the site is inside the group's allowed jurisdictions (true when unrestricted).
    pub allowed: bool,
}

/// Every site that held a group's data during the window, for the residency table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResidency {
    /// Group.
    pub group: String,
    /// Its allowed jurisdictions (empty: anywhere).
    pub allowed_jurisdictions: Vec<String>,
    /// The sites, by name.
    pub sites: Vec<HeldSite>,
}

/// Per group, every site (with its jurisdiction) that held its data during the window `records`,
/// starting from `start`: the primary and replica of each epoch (bootstrap, promotions), every
/// site where a drill copy or a point-in-time copy was started.
pub fn residency(records: &[AuditRecord], start: &ResidencyStart) -> Vec<GroupResidency> {
    let mut st = start.clone();
    // group -> site -> (held as, first index)
    type Held = BTreeMap<String, BTreeMap<String, (BTreeSet<String>, Option<u64>)>>;
    let mut held: Held = BTreeMap::new();
    let mut hold = |group: &str, site: &str, what: &str, index: Option<u64>| {
        let e = held
            .entry(group.to_string())
            .or_default()
            .entry(site.to_string())
            .or_insert((BTreeSet::new(), index));
        e.0.insert(what.to_string());
    };
    for (name, g) in &start.groups {
        hold(name, &g.primary, "primary", None);
        hold(name, &g.replica, "replica", None);
    }
    for r in records {
        st.apply(r);
        let d = &r.detail;
        let Some(group) = r.group.as_deref() else {
            if r.kind == AuditKind::Bootstrap {
                for g in d["groups_added"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(p), Some(rep)) =
                        (s(g, "name"), s(g, "primary"), s(g, "replica"))
                    {
                        hold(&name, &p, "primary", Some(r.index));
                        hold(&name, &rep, "replica", Some(r.index));
                    }
                }
            }
            continue;
        };
        match r.kind {
            AuditKind::Promote => {
                if let (Some(from), Some(to)) = (s(d, "from_site"), s(d, "to_site")) {
                    hold(group, &to, "primary", Some(r.index));
                    hold(group, &from, "replica", Some(r.index));
                }
            }
            AuditKind::RunbookStep | AuditKind::Drill
                if s(d, "status").as_deref() == Some("started") =>
            {
                let what = match s(d, "action").as_deref() {
                    Some("snapshot") => "drill copy",
                    Some("recover") => "point-in-time copy",
                    _ => continue,
                };
                if let Some(site) = s(d, "site").filter(|x| x != "coordinator") {
                    hold(group, &site, what, Some(r.index));
                }
            }
            AuditKind::Recover => {
                if let Some(site) = s(d, "site") {
                    hold(group, &site, "point-in-time copy", Some(r.index));
                }
            }
            _ => {}
        }
    }
    held.into_iter()
        .map(|(group, sites)| {
            let allowed_jurisdictions = st
                .groups
                .get(&group)
                .map(|g| g.allowed_jurisdictions.clone())
                .unwrap_or_default();
            let sites = sites
                .into_iter()
                .map(|(site, (what, first_index))| {
                    let jurisdiction = st.sites.get(&site).cloned().flatten();
                    let allowed = allowed_jurisdictions.is_empty()
                        || jurisdiction
                            .as_ref()
                            .is_some_and(|j| allowed_jurisdictions.contains(j));
                    HeldSite {
                        site,
                        jurisdiction,
                        held_as: what.into_iter().collect(),
                        first_index,
                        allowed,
                    }
                })
                .collect();
            GroupResidency {
                group,
                allowed_jurisdictions,
                sites,
            }
        })
        .collect()
}
