//! The loss of one replicator host, not of a site, decided. A site with several replicator
//! hosts is declared down only when none of them is heard from (the site failure detector);
//! this room decides what the silence of *one* host while others at its site still report
//! means for the groups placed on it:
//! - where the host serves the group's current primary: the group's automatic failover is
//!   due (each group by its own policy: `auto_failover`, `max_data_loss`, a sync degradation;
//!   the caller applies them as for a lost site);
//! - where it serves the group's current replica and the group is protected: the group is
//!   degraded (its replica copy is not being kept), so status never shows a group protected
//!   whose replica host is gone. The replica's next in-sync report after it returns protects
//!   it again, as after a site's return.
//!
//! The groups of the other hosts of that site are untouched. Pure: values in, values out.

use std::collections::HashMap;
use tandem_core::config::Topology;
use tandem_core::group::GroupState;

/// A group as the decision needs it: the sites that hold its roles now and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRoles {
    /// Group name.
    pub group: String,
    /// Current primary site.
    pub primary: String,
    /// Current replica site.
    pub replica: String,
    /// Current state.
    pub state: GroupState,
    /// Where its data lives, by site, as the coordinators record it (a planned move's
    /// target included); a site not named here is the topology's placement.
    pub hosts: std::collections::BTreeMap<String, String>,
}

/// A replicator host silent past the detection window while its site is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentHost {
    /// Its site.
    pub site: String,
    /// The host (node name).
    pub host: String,
    /// How long it has been silent, ms.
    pub silent_ms: i64,
}

/// What to do about one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// The group's primary host is lost: start its automatic failover (policy permitting).
    FailOver {
        /// Group.
        group: String,
        /// The lost host.
        host: String,
        /// Its site (the group's primary site).
        site: String,
    },
    /// The group's replica host is lost while the group is protected: degrade it.
    Degrade {
        /// Group.
        group: String,
        /// The lost host.
        host: String,
        /// The reason recorded with the state change.
        reason: String,
    },
}

/// The replicator hosts silent for more than `detect_ms` at sites where another replicator was
/// heard within it. `seen`: when each node was last heard (leader ms); a host never heard
/// counts from `leader_since` (a new leader gives every host a full window). Sites with a
/// single replicator never appear: their loss is a site's loss.
pub fn silent_hosts(
    topo: &Topology,
    seen: &HashMap<String, i64>,
    now: i64,
    leader_since: i64,
    detect_ms: i64,
) -> Vec<SilentHost> {
    let mut out = Vec::new();
    for site in topo.sites.iter().filter(|s| !s.witness) {
        let hosts = topo.replicators_at(&site.name);
        let silence: Vec<(&str, i64)> = hosts
            .iter()
            .map(|n| {
                let last = seen
                    .get(&n.name)
                    .copied()
                    .unwrap_or(leader_since)
                    .max(leader_since);
                (n.name.as_str(), now - last)
            })
            .collect();
        if !silence.iter().any(|(_, s)| *s <= detect_ms) {
            continue;
        }
        out.extend(
            silence
                .into_iter()
                .filter(|(_, s)| *s > detect_ms)
                .map(|(h, s)| SilentHost {
                    site: site.name.clone(),
                    host: h.to_owned(),
                    silent_ms: s,
                }),
        );
    }
    out
}

/// What the silence of `lost` means for `groups` (in their order): a failover for each group
/// whose current primary is served by a lost host, a degradation for each protected group
/// whose current replica is.
pub fn host_actions(
    topo: &Topology,
    lost: &[SilentHost],
    groups: &[GroupRoles],
) -> Vec<HostAction> {
    let served_by = |g: &GroupRoles, site: &str| -> Option<&SilentHost> {
        let host = topo.placed_host(&g.group, site, g.hosts.get(site).map(String::as_str))?;
        lost.iter().find(|l| l.site == site && l.host == host.name)
    };
    let mut out = Vec::new();
    for g in groups {
        if let Some(l) = served_by(g, &g.primary) {
            out.push(HostAction::FailOver {
                group: g.group.clone(),
                host: l.host.clone(),
                site: l.site.clone(),
            });
        } else if let Some(l) = served_by(g, &g.replica) {
            if g.state == GroupState::Protected {
                out.push(HostAction::Degrade {
                    group: g.group.clone(),
                    host: l.host.clone(),
                    reason: format!(
                        "replica host {} at {} silent for {} ms (the other replicators at {} report)",
                        l.host, l.site, l.silent_ms, l.site
                    ),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    /// Sites a (2 or 3 hosts) and b (1 or 2 hosts); groups g0..g5 a → b, g5 pinned to a-rep-2
    /// and b-rep-1.
    fn topo(hosts_a: usize, hosts_b: usize) -> Topology {
        let mut t = String::from("[cluster]\nname = \"t\"\n");
        for (s, w) in [("a", false), ("b", false), ("w", true)] {
            let _ = write!(t, "[[sites]]\nname = \"{s}\"\nwitness = {w}\n");
        }
        let mut port = 7000;
        let mut node = |t: &mut String, name: &str, site: &str, role: &str| {
            port += 1;
            let _ = write!(
                t,
                "[[nodes]]\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"{role}\"\n\
                 listen = \"127.0.0.1:{port}\"\ndata_dir = \"d/{name}\"\n"
            );
        };
        for s in ["a", "b", "w"] {
            node(&mut t, &format!("{s}-coord"), s, "coordinator");
        }
        for k in 1..=hosts_a {
            node(&mut t, &format!("a-rep-{k}"), "a", "replicator");
        }
        for k in 1..=hosts_b {
            node(&mut t, &format!("b-rep-{k}"), "b", "replicator");
        }
        for i in 0..6 {
            let pin = if i == 5 {
                "hosts = { a = \"a-rep-2\", b = \"b-rep-1\" }\n"
            } else {
                ""
            };
            let _ = write!(
                t,
                "[[groups]]\nname = \"g{i}\"\nprimary = \"a\"\nreplica = \"b\"\nmode = \"sync\"\n\
                 rto_target = \"30s\"\n{pin}[[groups.resources]]\nname = \"d\"\nkind = \"volume\"\n\
                 size = \"1MiB\"\npath = \"a/g{i}.img\"\nreplica_path = \"b/g{i}.img\"\n"
            );
        }
        Topology::parse(&t, "t.toml").expect("topology")
    }

    fn roles(t: &Topology, state: GroupState) -> Vec<GroupRoles> {
        t.groups
            .iter()
            .map(|g| GroupRoles {
                group: g.name.clone(),
                primary: "a".into(),
                replica: "b".into(),
                state,
                hosts: Default::default(),
            })
            .collect()
    }

    fn seen(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect()
    }

    #[test]
    fn one_silent_host_among_live_ones_is_lost_a_silent_site_is_not_a_host_loss() {
        let t = topo(3, 1);
        let s = seen(&[("a-rep-1", 9_500), ("a-rep-2", 7_000), ("a-rep-3", 9_900)]);
        let lost = silent_hosts(&t, &s, 10_000, 0, 1_500);
        assert_eq!(
            lost,
            vec![SilentHost {
                site: "a".into(),
                host: "a-rep-2".into(),
                silent_ms: 3_000
            }]
        );
        // b's only replicator never reported since the leader began: the whole site is
        // silent, which is the site detector's business.
        let all_silent = seen(&[("a-rep-1", 7_000), ("a-rep-2", 7_000), ("a-rep-3", 7_000)]);
        assert!(silent_hosts(&t, &all_silent, 10_000, 0, 1_500).is_empty());
        // A new leader gives every host a full window.
        assert!(silent_hosts(&t, &s, 10_000, 9_000, 1_500).is_empty());
    }

    #[test]
    fn only_the_lost_hosts_groups_fail_over_and_only_protected_replicas_degrade() {
        let t = topo(3, 2);
        let lost = vec![SilentHost {
            site: "a".into(),
            host: "a-rep-2".into(),
            silent_ms: 2_000,
        }];
        let acts = host_actions(&t, &lost, &roles(&t, GroupState::Protected));
        let on_host: Vec<String> = t
            .groups
            .iter()
            .filter(|g| t.host_for(g, "a").is_some_and(|h| h.name == "a-rep-2"))
            .map(|g| g.name.clone())
            .collect();
        assert!(on_host.contains(&"g5".to_string()));
        let failed: Vec<String> = acts
            .iter()
            .map(|a| match a {
                HostAction::FailOver { group, .. } => group.clone(),
                HostAction::Degrade { group, .. } => panic!("{group} degraded"),
            })
            .collect();
        assert_eq!(failed, on_host);

        // The same host as a replica host (roles swapped): its protected groups degrade.
        let swapped: Vec<GroupRoles> = roles(&t, GroupState::Protected)
            .into_iter()
            .map(|mut g| {
                std::mem::swap(&mut g.primary, &mut g.replica);
                g
            })
            .collect();
        let acts = host_actions(&t, &lost, &swapped);
        assert_eq!(acts.len(), on_host.len());
        assert!(acts.iter().all(|a| matches!(a,
            HostAction::Degrade { reason, .. } if reason.contains("replica host a-rep-2 at a silent for 2000 ms"))));
        // Already degraded (or failing over): nothing more to do.
        let mut degraded = swapped.clone();
        for g in &mut degraded {
            g.state = GroupState::Degraded;
        }
        assert!(host_actions(&t, &lost, &degraded).is_empty());
    }
}
