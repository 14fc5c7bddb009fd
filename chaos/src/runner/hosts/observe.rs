//! What the runner saw of the hosts workload while its faults ran ([`HostsObserved`]): every
//! group's role and state at the start and in every status sample, the hosts killed and
//! restarted and when, which groups they served as primary or as replica, the highest RPO.
//! Pure bookkeeping but for [`kill`] (the signal) and [`restart`] (the start).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use tandem_coordinator::status::{ClusterStatus, GroupStatus};
use tandem_core::config::NodeRole;

use super::load::group_in;
use crate::checker::{RoleSample, StateSample};
use crate::runner::cluster::Ctx;
use crate::runner::processes as proc;
use crate::scenario::Fault;

/// The state of a hosts run between its steps.
#[derive(Default)]
pub struct HostsObserved {
    /// Every group as the first status showed it.
    pub first: BTreeMap<String, GroupStatus>,
    /// Every group's role in every status sample.
    pub samples: BTreeMap<String, Vec<RoleSample>>,
    /// Every group's state in every status sample.
    pub states: BTreeMap<String, Vec<StateSample>>,
    /// Hosts killed.
    pub killed: Vec<String>,
    /// When each killed host was killed (ms on the histories' clock).
    pub killed_at: BTreeMap<String, u64>,
    /// When each host killed was started again in the run (ms on the histories' clock).
    pub restarted_at: BTreeMap<String, u64>,
    /// When the first host was killed (ms on the histories' clock).
    pub kill_ms: Option<u64>,
    /// The groups whose primary a killed host served when it was killed.
    pub lost_groups: Vec<String>,
    /// The groups whose replica a killed host served when it was killed, with that host.
    pub replica_lost: BTreeMap<String, String>,
    /// The highest RPO seen, any group.
    pub max_rpo: i64,
    /// The last status seen.
    pub last_st: Option<ClusterStatus>,
    /// The faults applied, for the report.
    pub fault_names: Vec<String>,
    /// Notes for the report.
    pub notes: Vec<String>,
}

/// A group's role in a status.
pub fn role_of(g: &GroupStatus, time_ms: u64) -> RoleSample {
    RoleSample {
        time_ms,
        primary: g.primary.clone(),
        host: g.primary_host.clone(),
        epoch: g.epoch,
    }
}

impl HostsObserved {
    /// The state at the start: the groups `names` of the first status.
    pub fn new(st0: &ClusterStatus, names: &[String]) -> HostsObserved {
        HostsObserved {
            first: names
                .iter()
                .filter_map(|n| group_in(st0, n).map(|g| (n.clone(), g.clone())))
                .collect(),
            last_st: Some(st0.clone()),
            ..HostsObserved::default()
        }
    }

    /// Records the roles and RPOs of status `st` taken at `now_ms`.
    pub fn sample(&mut self, st: ClusterStatus, now_ms: u64) {
        for name in self.first.keys() {
            if let Some(g) = group_in(&st, name) {
                self.max_rpo = self.max_rpo.max(g.rpo_ms);
                self.samples
                    .entry(name.clone())
                    .or_default()
                    .push(role_of(g, now_ms));
                self.states
                    .entry(name.clone())
                    .or_default()
                    .push(StateSample {
                        time_ms: now_ms,
                        state: g.state.clone(),
                        reason: g.reason.clone(),
                    });
            }
        }
        self.last_st = Some(st);
    }

    /// The groups whose primary is served by one of `hosts`, by the last status (the
    /// placement the coordinators act on).
    pub fn groups_served_by(&self, hosts: &[String]) -> Vec<String> {
        let Some(st) = &self.last_st else {
            return Vec::new();
        };
        self.first
            .keys()
            .filter(|n| group_in(st, n).is_some_and(|g| hosts.contains(&g.primary_host)))
            .cloned()
            .collect()
    }

    /// The groups whose replica is served by `host`, by the last status.
    pub fn groups_replicated_by(&self, host: &str) -> Vec<String> {
        let Some(st) = &self.last_st else {
            return Vec::new();
        };
        self.first
            .keys()
            .filter(|n| group_in(st, n).is_some_and(|g| g.replica_host == host))
            .cloned()
            .collect()
    }

    /// The hosts killed and not started again in the run.
    pub fn down(&self) -> Vec<String> {
        self.killed
            .iter()
            .filter(|h| !self.restarted_at.contains_key(*h))
            .cloned()
            .collect()
    }
}

/// The node a `node:NAME` fault names.
fn node_of(f: &Fault) -> &str {
    f.target.strip_prefix("node:").unwrap_or(&f.target)
}

/// Fault `f` (a `kill` of `node:NAME`, a replicator): kill -9 at `now_ms`, noting which
/// groups the host served as primary.
///
/// # Errors
/// The target is not a replicator of the topology, or it could not be signalled.
pub fn kill(ctx: &Ctx, f: &Fault, obs: &mut HostsObserved, now_ms: u64) -> Result<()> {
    let name = node_of(f);
    if !ctx
        .topo
        .node(name)
        .is_some_and(|n| n.role == NodeRole::Replicator)
    {
        bail!("{}: no replicator {name:?} in the topology", f.target);
    }
    let pid = proc::read_pid(&ctx.run_dir, name)?;
    let served = obs.groups_served_by(&[name.to_owned()]);
    let replicas = obs.groups_replicated_by(name);
    proc::signal(pid, libc::SIGKILL)?;
    obs.fault_names
        .push(format!("kill@{}s:{}", f.at.as_millis() / 1000, f.target));
    let list = |v: &[String]| {
        if v.is_empty() {
            "no group".to_owned()
        } else {
            v.join(", ")
        }
    };
    obs.notes.push(format!(
        "{name} killed at {now_ms} ms; it served the primary of {}, the replica of {}",
        list(&served),
        list(&replicas)
    ));
    obs.killed.push(name.to_owned());
    obs.killed_at.insert(name.to_owned(), now_ms);
    obs.kill_ms.get_or_insert(now_ms);
    for g in replicas {
        obs.replica_lost.entry(g).or_insert_with(|| name.to_owned());
    }
    for g in served {
        if !obs.lost_groups.contains(&g) {
            obs.lost_groups.push(g);
        }
    }
    Ok(())
}

/// Fault `f` (a `restart` of `node:NAME`, killed before): starts it again at `now_ms`.
///
/// # Errors
/// The node could not be started.
pub fn restart(ctx: &Ctx, f: &Fault, obs: &mut HostsObserved, now_ms: u64) -> Result<()> {
    let name = node_of(f);
    ctx.start(name)?;
    obs.fault_names
        .push(format!("restart@{}s:{}", f.at.as_millis() / 1000, f.target));
    obs.notes
        .push(format!("{name} started again at {now_ms} ms"));
    obs.restarted_at.insert(name.to_owned(), now_ms);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(groups: &[(&str, &str, &str, u64, i64)]) -> ClusterStatus {
        ClusterStatus {
            groups: groups
                .iter()
                .map(|&(name, primary, host, epoch, rpo_ms)| GroupStatus {
                    name: name.into(),
                    primary: primary.into(),
                    primary_host: host.into(),
                    replica_host: host.replace('h', "c"),
                    state: "protected".into(),
                    epoch,
                    rpo_ms,
                    ..GroupStatus::default()
                })
                .collect(),
            ..ClusterStatus::default()
        }
    }

    #[test]
    fn samples_follow_each_group_and_name_the_groups_of_a_host() {
        let names = vec!["g1".to_owned(), "g2".to_owned()];
        let mut o = HostsObserved::new(
            &st(&[("g1", "hanoi", "h-1", 2, 0), ("g2", "hanoi", "h-2", 2, 0)]),
            &names,
        );
        assert_eq!(o.groups_served_by(&["h-2".into()]), vec!["g2"]);
        assert_eq!(o.groups_replicated_by("c-2"), vec!["g2"]);
        assert!(o.groups_replicated_by("h-2").is_empty());
        o.sample(
            st(&[("g1", "hanoi", "h-1", 2, 40), ("g9", "x", "h-1", 1, 900)]),
            100,
        );
        o.sample(
            st(&[("g1", "hcm", "c-1", 3, 0), ("g2", "hanoi", "h-2", 2, 7)]),
            250,
        );
        assert_eq!(o.max_rpo, 40);
        assert_eq!(o.samples["g1"].len(), 2);
        assert_eq!(o.samples["g1"][1].host, "c-1");
        assert_eq!(o.samples["g2"].len(), 1);
        assert_eq!(o.states["g1"][1].time_ms, 250);
        assert_eq!(o.states["g1"][1].state, "protected");
        o.killed = vec!["c-1".into(), "c-2".into()];
        o.restarted_at.insert("c-1".into(), 300);
        assert_eq!(o.down(), vec!["c-2"]);
        assert!(o.groups_served_by(&["h-1".into()]).is_empty());
    }
}
