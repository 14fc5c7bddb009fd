//! Judging a hosts run: each check of the scenario evaluated group by group, with the groups
//! the killed hosts served (the *lost* groups: they must fail over, lose nothing
//! acknowledged, and write again within their RTO target) apart from the others (they must
//! not notice, but for the groups whose replica host was killed: they are degraded while it
//! is down, protected again once it returns, and sync ones may wait `sync_timeout` for the
//! coordinators' consent to write without their replica). The judging is the pure checkers of [`crate::checker`]; this room gathers
//! their inputs. I/O: volume images, the audit chain, verify calls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use tandem_coordinator::audit::{AuditKind, AuditRecord};
use tandem_coordinator::status::ClusterStatus;
use tandem_core::ids::Epoch;

use super::load::{group_in, HostsLoad};
use super::observe::HostsObserved;
use crate::checker::{
    ack_gaps, degraded_then_protected, epochs_monotonic, lost_acknowledged_writes,
    no_double_promotion, role_never_changed, rto_to_first_write, writes_never_stopped,
    EpochObservation, Promotion, ReplicationMode, ResyncBounds, ResyncTimes,
};
use crate::history::History;
use crate::runner::cluster::Ctx;
use crate::runner::host::Host;
use crate::runner::judge::{first3, mode_of};
use crate::runner::verify::verify_group;
use crate::scenario::{Check, Scenario};

/// How long the audited RTO of every lost group's failover is waited for: it is recorded when
/// the failover run ends, which may come a little after the group writes again.
const AUDIT_WAIT: Duration = Duration::from_secs(20);
/// How long after `detect_after` a group whose replica host was killed may be seen
/// degraded: the host's last heartbeat may come up to one interval (250 ms) before the kill
/// rather than at it, but the leader looks every 200 ms, commits the state change through
/// Raft, and the runner samples the status every 150 ms; 1 s leaves room on a loaded machine.
const DEGRADE_SLACK_MS: u64 = 1000;
/// How long after its replica host is restarted a group must be seen protected again: the
/// replicator starts (a debug build on a loaded machine), the primary ships what the replica
/// missed, the replica reports itself in sync and the coordinators commit the change.
const PROTECT_WITHIN_MS: u64 = 15_000;

/// Everything a check of a hosts run may look at.
pub struct HostsJudge<'a> {
    /// The running cluster.
    pub ctx: &'a Ctx,
    /// The caller's side.
    pub host: &'a Host<'a>,
    /// The scenario.
    pub s: &'a Scenario,
    /// The writers.
    pub load: &'a HostsLoad,
    /// What the runner saw.
    pub obs: &'a HostsObserved,
    /// Every group's history.
    pub histories: &'a BTreeMap<String, History>,
    /// The status once recovered (protected and caught up); `None` without recovery.
    pub end: Option<&'a ClusterStatus>,
    /// When the writers were told to stop (ms on the histories' clock).
    pub end_ms: u64,
}

/// What the checks of a hosts run found.
#[derive(Default)]
pub struct HostsFindings {
    /// Why the scenario fails (empty: it passes).
    pub failures: Vec<String>,
    /// Notes for the report.
    pub notes: Vec<String>,
    /// Acknowledged writes lost, all groups.
    pub lost: usize,
    /// Per lost group: kill -9 to the first write acknowledged at its new primary.
    pub rto_ms: BTreeMap<String, Option<u64>>,
    /// Per lost group: the RTO its failover run recorded in the audit chain.
    pub audited_rto_ms: BTreeMap<String, Option<i64>>,
    /// Per other group: the longest gap between acknowledged writes, before and after the kill.
    pub gaps_ms: BTreeMap<String, (u64, u64)>,
    /// Per group whose replica host was killed: when it was seen degraded and protected again.
    pub resync: BTreeMap<String, ResyncTimes>,
}

impl HostsJudge<'_> {
    /// Why the run shows nothing about the loss of one host, if it does not: the killed hosts
    /// served no group (as primary or replica), or every group.
    pub fn pointless(&self) -> Option<String> {
        let touched =
            |g: &String| self.obs.lost_groups.contains(g) || self.obs.replica_lost.contains_key(g);
        let hit = self.obs.first.keys().filter(|g| touched(g)).count();
        (hit == 0 || hit == self.obs.first.len()).then(|| {
            format!(
                "the killed hosts {:?} served the primary of {} and the replica of {} of the {} \
                 groups: a host loss shows something only when some groups are hit and some \
                 are not",
                self.obs.killed,
                self.obs.lost_groups.len(),
                self.obs.replica_lost.len(),
                self.obs.first.len()
            )
        })
    }

    /// The groups of the hosts that were not killed.
    fn other_groups(&self) -> Vec<&String> {
        self.obs
            .first
            .keys()
            .filter(|g| !self.obs.lost_groups.contains(g))
            .collect()
    }

    fn history(&self, g: &str) -> History {
        self.histories.get(g).cloned().unwrap_or_default()
    }

    fn audit(&self) -> Result<Vec<AuditRecord>> {
        Ok(self
            .ctx
            .rt
            .block_on(self.ctx.client.audit::<AuditRecord>())?)
    }

    /// The promotions of group `g` the audit chain records.
    fn promotions(&self, records: &[AuditRecord], g: &str) -> Vec<Promotion> {
        records
            .iter()
            .filter(|r| r.kind == AuditKind::Promote && r.group.as_deref() == Some(g))
            .map(|r| Promotion {
                site: r.detail["to_site"].as_str().unwrap_or("?").to_owned(),
                epoch: Epoch(r.detail["to_epoch"].as_u64().unwrap_or(0)),
                time_ms: u64::try_from(r.at_ms).unwrap_or(0),
            })
            .collect()
    }
}

/// Evaluates check `c`; checks of the final state are skipped without a recovery (the
/// failure to recover is reported already).
///
/// # Errors
/// The audit chain could not be read.
pub fn judge_hosts(j: &HostsJudge<'_>, c: Check, out: &mut HostsFindings) -> Result<()> {
    match c {
        Check::NoLostAcknowledgedWrites => lost_writes(j, out),
        Check::IdenticalAfterRecovery => {
            if j.end.is_some() {
                for g in j.obs.first.keys() {
                    if let Err(e) = verify_group(j.ctx, j.host, g, &mut out.notes) {
                        out.failures
                            .push(format!("{g}: not identical after recovery: {e:#}"));
                    }
                }
            }
        }
        Check::FailedOver => failed_over(j, out),
        Check::RtoWithinTarget => rto(j, out)?,
        Check::EpochsMonotonic => {
            for (g, samples) in &j.obs.samples {
                let seen: Vec<EpochObservation> = samples
                    .iter()
                    .map(|s| EpochObservation {
                        observer: "client".into(),
                        epoch: Epoch(s.epoch),
                        time_ms: s.time_ms,
                    })
                    .collect();
                let v = epochs_monotonic(&seen);
                if !v.ok {
                    out.failures
                        .push(format!("{g}: epochs went backwards: {:?}", v.violations));
                }
            }
        }
        Check::AuditChainValid => {
            if let Err(e) = tandem_coordinator::audit::verify_chain(&j.audit()?) {
                out.failures.push(format!("audit chain: {e}"));
            }
        }
        Check::NoDoublePromotion => {
            let records = j.audit()?;
            for g in j.obs.first.keys() {
                let v = no_double_promotion(&j.promotions(&records, g));
                if !v.ok {
                    out.failures.push(format!(
                        "{g}: double promotion: {}",
                        v.violations.join("; ")
                    ));
                }
            }
        }
        Check::OtherGroupsUndisturbed => undisturbed(j, out)?,
        Check::ReplicaGroupsResync => resync(j, out),
        other => out
            .failures
            .push(format!("{other:?} does not judge the hosts workload")),
    }
    Ok(())
}

/// Every group: every write acknowledged is in its final primary's image.
fn lost_writes(j: &HostsJudge<'_>, out: &mut HostsFindings) {
    let Some(end) = j.end else {
        return;
    };
    let mode = mode_of(j.s);
    // Async only: an acknowledgement in flight at the kill reaches the history a little later.
    // A group that did not fail over may lose nothing, in either mode.
    let kill_at = j.obs.kill_ms.map_or(u64::MAX, |k| k + 500);
    let window = j.obs.max_rpo.max(0) as u64 + 1500;
    for g in j.obs.first.keys() {
        let failure_at = if j.obs.lost_groups.contains(g) {
            kill_at
        } else {
            u64::MAX
        };
        let Some(site) = group_in(end, g).map(|x| x.primary.clone()) else {
            out.failures.push(format!("{g}: not in the final status"));
            continue;
        };
        let path = j.ctx.dir.join(format!("volumes/{site}/{g}.img"));
        let img = match std::fs::read(&path) {
            Ok(img) => img,
            Err(e) => {
                out.failures.push(format!("{g}: {}: {e}", path.display()));
                continue;
            }
        };
        let hash = move |off: u64, len: u64| {
            blake3::hash(img.get(off as usize..(off + len) as usize).unwrap_or(&[]))
        };
        let v = lost_acknowledged_writes(&j.history(g), &hash, mode, window, failure_at);
        out.lost += v.violations.len();
        out.notes.extend(
            v.notes
                .iter()
                .map(|n| format!("{g} (final primary {site}): {n}")),
        );
        if !v.ok {
            out.failures.push(format!(
                "{g}: lost acknowledged writes: {}",
                first3(&v.violations)
            ));
        }
    }
}

/// Every lost group: its primary moved to its replica site in a higher epoch.
fn failed_over(j: &HostsJudge<'_>, out: &mut HostsFindings) {
    let last = j.end.or(j.obs.last_st.as_ref());
    for g in &j.obs.lost_groups {
        let (Some(first), Some(now)) = (j.obs.first.get(g), last.and_then(|s| group_in(s, g)))
        else {
            out.failures.push(format!("{g}: not in the status"));
            continue;
        };
        if now.primary != first.replica || now.epoch <= first.epoch {
            out.failures.push(format!(
                "{g}: did not fail over: primary {} on {:?} epoch {} (was {} epoch {})",
                now.primary, now.primary_host, now.epoch, first.primary, first.epoch
            ));
        }
    }
}

/// Every lost group: the first write acknowledged at its new primary came within its RTO
/// target of the kill (the RTO its application saw); the RTO its failover run audited is
/// noted beside it.
fn rto(j: &HostsJudge<'_>, out: &mut HostsFindings) -> Result<()> {
    let Some(kill) = j.obs.kill_ms else {
        out.failures
            .push("rto_within_target: no host was killed".into());
        return Ok(());
    };
    for g in &j.obs.lost_groups {
        let Some(first) = j.obs.first.get(g) else {
            continue;
        };
        let target = u64::try_from(first.rto_target_ms).unwrap_or(0);
        let (v, rto) = rto_to_first_write(&j.history(g), kill, &first.replica, target);
        out.rto_ms.insert(g.clone(), rto);
        out.failures
            .extend(v.violations.iter().map(|x| format!("{g}: {x}")));
    }
    let deadline = Instant::now() + AUDIT_WAIT;
    let audited = loop {
        let records = j.audit()?;
        let audited: BTreeMap<String, Option<i64>> = j
            .obs
            .lost_groups
            .iter()
            .map(|g| {
                let r = records
                    .iter()
                    .filter(|r| r.group.as_deref() == Some(g) && r.detail["op"] == "failover")
                    .filter_map(|r| r.detail.get("rto_ms").and_then(Value::as_i64))
                    .next_back();
                (g.clone(), r)
            })
            .collect();
        if audited.values().all(Option::is_some) || Instant::now() > deadline {
            break audited;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for (g, r) in &audited {
        out.notes.push(format!(
            "{g}: RTO kill -9 to the first write at the new primary {} ms; audited by its failover run {} ms",
            out.rto_ms.get(g).copied().flatten().map_or("-".into(), |x| x.to_string()),
            r.map_or("-".into(), |x| x.to_string())
        ));
    }
    out.audited_rto_ms = audited;
    Ok(())
}

/// The longest write gap `other_groups_undisturbed` allows group `g`: `max_gap_ms`, plus its
/// `sync_timeout` when it is a sync group whose replica host was killed (its primary waits
/// that long for the replica, then acknowledges on its journal with the coordinators'
/// consent).
fn gap_bound(j: &HostsJudge<'_>, g: &str, max_gap_ms: u64) -> u64 {
    let waits = mode_of(j.s) == ReplicationMode::Sync && j.obs.replica_lost.contains_key(g);
    let sync_timeout = j
        .ctx
        .topo
        .group(g)
        .map_or(0, |x| x.sync_timeout.as_millis());
    max_gap_ms + if waits { sync_timeout } else { 0 }
}

/// Every other group: role and epoch never changed, no promotion audited, writes never
/// stopped (no write failed, no gap over `max_write_gap`, [`gap_bound`]).
fn undisturbed(j: &HostsJudge<'_>, out: &mut HostsFindings) -> Result<()> {
    let records = j.audit()?;
    let max_gap = j.s.max_write_gap.map_or_else(
        || j.ctx.topo.cluster.detect_after.as_millis(),
        |d| d.as_millis(),
    );
    let (from, until) = (j.load.started_ms, j.end_ms);
    let kill = j.obs.kill_ms.unwrap_or(until).clamp(from, until);
    for g in j.other_groups() {
        let Some(first) = j.obs.first.get(g) else {
            continue;
        };
        let first = super::observe::role_of(first, 0);
        let samples = j.obs.samples.get(g).map(Vec::as_slice).unwrap_or(&[]);
        let promotions = j
            .promotions(&records, g)
            .iter()
            .filter(|p| p.epoch.0 > first.epoch)
            .count();
        let h = j.history(g);
        for v in [
            role_never_changed(&first, samples, promotions),
            writes_never_stopped(&h, from, until, gap_bound(j, g, max_gap)),
        ] {
            out.failures
                .extend(v.violations.iter().map(|x| format!("{g}: {x}")));
            out.notes
                .extend(v.notes.iter().map(|x| format!("{g}: {x}")));
        }
        let gaps = (
            ack_gaps(&h, from, kill).max_gap_ms,
            ack_gaps(&h, kill, until).max_gap_ms,
        );
        out.gaps_ms.insert(g.clone(), gaps);
    }
    out.notes.push(format!(
        "other groups' longest write gap allowed: {max_gap} ms{} (before, after the kill: {})",
        if j.obs.replica_lost.is_empty() || mode_of(j.s) != ReplicationMode::Sync {
            String::new()
        } else {
            " + sync_timeout for the groups whose replica host was killed".to_owned()
        },
        out.gaps_ms
            .iter()
            .map(|(g, (b, a))| format!("{g} {b}/{a}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(())
}

/// Every group whose replica host was killed: degraded for its silence while it was down,
/// protected again after its restart ([`degraded_then_protected`]).
fn resync(j: &HostsJudge<'_>, out: &mut HostsFindings) {
    if j.obs.replica_lost.is_empty() {
        out.failures.push(format!(
            "replica_groups_resync: the killed hosts {:?} served no group's replica",
            j.obs.killed
        ));
        return;
    }
    let bounds = ResyncBounds {
        degrade_within_ms: j.ctx.topo.cluster.detect_after.as_millis() + DEGRADE_SLACK_MS,
        protect_within_ms: PROTECT_WITHIN_MS,
    };
    for (g, host) in &j.obs.replica_lost {
        let Some(&kill) = j.obs.killed_at.get(host) else {
            continue;
        };
        let samples = j.obs.states.get(g).map(Vec::as_slice).unwrap_or(&[]);
        let restart = j.obs.restarted_at.get(host).copied();
        let (v, times) = degraded_then_protected(samples, host, kill, restart, bounds);
        out.failures
            .extend(v.violations.iter().map(|x| format!("{g}: {x}")));
        out.notes
            .extend(v.notes.iter().map(|x| format!("{g}: {x}")));
        out.resync.insert(g.clone(), times);
    }
}
