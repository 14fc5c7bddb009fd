//! A replicator's heartbeat on the leader: its figures recorded as live, its progress
//! committed, a caught-up replica's group made protected again, the primary's lease acquired
//! or renewed, and the leases it holds answered. Acts: raft proposals.

use super::authz::Who;
use crate::handle::coordinator::{lock, Coordinator};
use crate::handle::live::{in_sync_protects, replica_caught_up};
use crate::state::{
    Command, GroupProgress, GroupState, LeaseRenewal, LeaseStatus as StLease, Progress, Role,
    SiteStatus,
};
use tandem_core::ids::{Epoch, Seq};
use tandem_core::net::Caller;
use tandem_core::proto::{GroupLease, HeartbeatRequest};
use tonic::Status;
use tracing::warn;

impl Coordinator {
    /// A heartbeat on the leader: records the live figures, commits the progress (for
    /// data-loss windows and evidence), then group states and leases; answers the leases the
    /// node holds.
    pub(super) async fn on_heartbeat(&self, r: &HeartbeatRequest) -> Vec<GroupLease> {
        let now = self.now_ms();
        if r.cert_not_after > 0 {
            lock(&self.inner.cert_seen).insert(r.node.clone(), r.cert_not_after);
        }
        lock(&self.inner.live).record(r, now);
        // Commit the progress (for data-loss windows and evidence) with the renewal of every
        // lease the node holds: one commit per heartbeat, whatever the number of groups.
        let (renew, acquire) = self.renewals(r, now);
        let mut cmd = heartbeat_command(r, now);
        if let Command::Heartbeat {
            renew: rn,
            progress,
            ..
        } = &mut cmd
        {
            *rn = renew;
            // Only the figures that moved, and each group's at least every
            // PROGRESS_REFRESH_MS: an idle group costs no log bytes at every heartbeat.
            self.read(|s| {
                progress.retain(|p| {
                    progress_worth_committing(s.group(&p.group).map(|g| &g.progress), p, now)
                })
            });
        }
        let _ = self.propose_cmd(cmd).await;
        self.protect_caught_up(r, now).await;
        self.acquire_leases(r, &acquire).await;
        self.leases_of(&r.node)
    }

    /// The primary groups `r` reports, split: those whose active, unexpired lease the node
    /// holds (renewed with the heartbeat) and the others (asked for one by one).
    fn renewals(&self, r: &HeartbeatRequest, now: i64) -> (Vec<LeaseRenewal>, Vec<String>) {
        let mut renew = Vec::new();
        let mut acquire = Vec::new();
        self.read(|s| {
            for p in r.groups.iter().filter(|p| p.role == "primary") {
                let holds = s
                    .group(&p.group)
                    .and_then(|g| g.lease.as_ref())
                    .is_some_and(|l| {
                        l.holder == r.node
                            && matches!(l.status, StLease::Active)
                            && l.expires_ms > now
                    });
                if holds {
                    renew.push(LeaseRenewal {
                        group: p.group.clone(),
                        epoch: Epoch(p.epoch),
                    });
                } else {
                    acquire.push(p.group.clone());
                }
            }
        });
        (renew, acquire)
    }

    /// A replica that reports itself in sync with a caught-up primary ends an initial sync,
    /// a post-failover resync, or a degradation once both sites are up
    /// ([`in_sync_protects`]): the group is protected again. Caught up: the replica
    /// holds everything the primary has captured, or (under a steady stream of writes,
    /// where that instant may never come) everything the primary knows it acknowledged,
    /// with the primary's RPO under IN_SYNC_MAX_RPO_MS. Only the group's placed host at its
    /// site counts, and it is recorded as where the group's data lives there (also for a
    /// protected group whose recorded replica host differs: one commit, then they agree).
    async fn protect_caught_up(&self, r: &HeartbeatRequest, now: i64) {
        for p in r
            .groups
            .iter()
            .filter(|p| p.role == "replica" && p.state == "in-sync")
        {
            let state = self.read(|s| {
                s.group(&p.group).map(|g| {
                    let up = |site: &str| s.site(site).is_some_and(|x| x.status == SiteStatus::Up);
                    let sites_up = up(&g.primary_site) && up(&g.replica_site);
                    let recorded = g.hosts.get(&g.replica_site).cloned();
                    let placed = g.host_at(&g.replica_site).map(str::to_owned);
                    (g.state, g.epoch.0, sites_up, recorded, placed)
                })
            });
            let caught_up = {
                let live = lock(&self.inner.live);
                live.groups.get(&p.group).is_some_and(|l| {
                    l.reporter_epoch == p.epoch
                        && now - l.reported_ms < 5_000
                        && replica_caught_up(
                            l.last_captured_seq,
                            l.durable_seq,
                            l.rpo_ms,
                            p.durable_seq,
                        )
                })
            };
            if let Some((state, epoch, sites_up, recorded, placed)) = state {
                // A protected group whose replica now lives on another host (a changed
                // placement, resynced there) records that host.
                let new_host =
                    state == GroupState::Protected && recorded.as_deref() != Some(r.node.as_str());
                let protects = in_sync_protects(state, sites_up) || new_host;
                // The placement is checked last: it hashes over the site's hosts, and most
                // in-sync reports of a steady cluster protect nothing. A recorded host (or a
                // planned move's target) wins over the topology's placement.
                let placed_here = || {
                    self.topo()
                        .placed_host(&p.group, &r.site, placed.as_deref())
                        .is_some_and(|h| h.name == r.node)
                };
                if protects && caught_up && epoch == p.epoch && placed_here() {
                    let _ = self
                        .propose_cmd(Command::SetGroupState {
                            at_ms: 0,
                            group: p.group.clone(),
                            state: GroupState::Protected,
                            reason: format!("replica in sync on {}", r.node),
                            actor: r.node.clone(),
                            host: Some(r.node.clone()),
                        })
                        .await;
                }
            }
        }
    }

    /// Asks for the lease of each primary group in `groups` the node reported without
    /// holding its lease, when the topology places the group on that node at its site (the
    /// state then decides whether it may have it, and refuses a host other than the one that
    /// first held it there).
    async fn acquire_leases(&self, r: &HeartbeatRequest, groups: &[String]) {
        for p in r
            .groups
            .iter()
            .filter(|p| p.role == "primary" && groups.contains(&p.group))
        {
            let recorded = self.read(|s| {
                s.group(&p.group)
                    .and_then(|g| g.host_at(&r.site).map(str::to_owned))
            });
            let placed = self
                .topo()
                .placed_host(&p.group, &r.site, recorded.as_deref());
            if placed.is_none_or(|h| h.name != r.node) {
                warn!(
                    group = %p.group,
                    node = %r.node,
                    placed_on = placed.map_or("(no replicator)", |h| h.name.as_str()),
                    "lease refused: the topology places the group on another host at this site"
                );
                continue;
            }
            let cmd = Command::AcquireLease {
                at_ms: 0,
                group: p.group.clone(),
                node: r.node.clone(),
                site: r.site.clone(),
                epoch: Epoch(p.epoch),
            };
            if let Err(e) = self.propose_cmd(cmd).await {
                tracing::debug!(group = %p.group, node = %r.node, "lease acquire_lease refused: {}", e.message());
            }
        }
    }

    /// Every group as the heartbeat reply shows it, with the lease `node` holds (if any).
    fn leases_of(&self, node: &str) -> Vec<GroupLease> {
        let now = self.now_ms();
        self.read(|s| {
            s.groups()
                .values()
                .map(|g| {
                    let mine = g.lease.as_ref().filter(|l| {
                        l.holder == node
                            && matches!(l.status, StLease::Active)
                            && l.expires_ms > now
                    });
                    GroupLease {
                        group: g.name.clone(),
                        epoch: g.epoch.0,
                        primary: g.primary_site.clone(),
                        replica: g.replica_site.clone(),
                        lease_expires_ms: mine.map(|l| l.expires_ms).unwrap_or(0),
                        state: g.state.as_str().into(),
                        paused: g.paused,
                        lease_remaining_ms: mine.map(|l| l.expires_ms - now).unwrap_or(0),
                        hosts: g.placed_hosts().into_iter().collect(),
                    }
                })
                .collect()
        })
    }
}

/// How old a group's committed progress (for the reporting role) may grow while its figures
/// do not move before a heartbeat commits them again.
pub const PROGRESS_REFRESH_MS: i64 = 10_000;

/// Whether the progress `p` a heartbeat reports is worth a place in the committed heartbeat,
/// given the group's committed progress (`None`: an unknown group, left to the state to
/// ignore): when it moves a figure (epoch, durable seq; for a primary also captured seq, RPO
/// or bytes pending), or when the committed report of that role is older than
/// [`PROGRESS_REFRESH_MS`]. The committed progress feeds data-loss windows; with many idle
/// groups, committing every figure at every heartbeat made the raft log grow with the
/// groups (issue 20). Pure.
pub fn progress_worth_committing(
    committed: Option<&Progress>,
    p: &GroupProgress,
    now: i64,
) -> bool {
    let Some(c) = committed else {
        return true;
    };
    let reported = match p.role {
        Role::Primary => c.primary_report_ms,
        Role::Replica => c.replica_report_ms,
    };
    let stale = match reported {
        None => true,
        Some(at) => now.saturating_sub(at) >= PROGRESS_REFRESH_MS,
    };
    let moved = p.epoch != c.epoch
        || p.durable_seq > c.durable_seq
        || (p.role == Role::Primary
            && (p.last_captured_seq > c.last_captured_seq
                || p.rpo_ms != c.rpo_ms
                || p.bytes_pending != c.bytes_pending));
    stale || moved
}

/// The `heartbeat` state-machine command for a replicator's heartbeat request received at
/// `now`: the progress of its primary and replica groups, RPO computed from the oldest
/// unacknowledged capture time (reports of another role are dropped). Pure: the
/// `admin_request` fuzz target decodes arbitrary bytes as a `HeartbeatRequest` and applies the
/// result to a state machine.
pub fn heartbeat_command(r: &HeartbeatRequest, now: i64) -> Command {
    let progress: Vec<GroupProgress> = r
        .groups
        .iter()
        .filter_map(|p| {
            let role = match p.role.as_str() {
                "primary" => Role::Primary,
                "replica" => Role::Replica,
                _ => return None,
            };
            let rpo = if p.oldest_unacked_ms > 0 {
                now.saturating_sub(p.oldest_unacked_ms).max(0)
            } else {
                0
            };
            Some(GroupProgress {
                group: p.group.clone(),
                role,
                epoch: Epoch(p.epoch),
                last_captured_seq: Seq(p.last_captured_seq),
                durable_seq: Seq(p.durable_seq),
                rpo_ms: u64::try_from(rpo).unwrap_or(0),
                bytes_pending: p.bytes_pending,
            })
        })
        .collect();
    Command::Heartbeat {
        at_ms: now,
        node: r.node.clone(),
        site: r.site.clone(),
        progress,
        renew: Vec::new(),
    }
}

impl Coordinator {
    /// The node a replicator's call speaks for: the certificate's node; without TLS (nobody
    /// is authenticated) the node the request names, which must be in the topology. With TLS
    /// a request that names another node is refused.
    pub(super) fn node_of(&self, who: &Who, claimed: &str) -> Result<String, Status> {
        match &who.caller {
            Caller::Node(n) if claimed.is_empty() || claimed == n => Ok(n.clone()),
            Caller::Node(n) => Err(Status::permission_denied(format!(
                "certificate names node {n} but the request claims to be node {claimed}"
            ))),
            Caller::Anonymous if self.topo().node(claimed).is_some() => Ok(claimed.to_owned()),
            Caller::Anonymous => Err(Status::invalid_argument(format!(
                "no node {claimed:?} in the topology"
            ))),
            Caller::Client { name, role } => Err(Status::permission_denied(format!(
                "{name} ({role}) is not a node"
            ))),
        }
    }

    /// The topology's site of `node`.
    pub(super) fn site_of(&self, node: &str) -> Result<String, Status> {
        self.topo()
            .node(node)
            .map(|n| n.site.clone())
            .ok_or_else(|| Status::invalid_argument(format!("no node {node:?} in the topology")))
    }

    /// A heartbeat as the leader may trust it: the node is the certificate's, the site is the
    /// topology's (never the message's), and only the groups whose site pair holds that site
    /// are kept (the others are dropped and logged).
    pub(super) fn checked_heartbeat(
        &self,
        mut r: HeartbeatRequest,
        who: &Who,
    ) -> Result<HeartbeatRequest, Status> {
        r.node = self.node_of(who, &r.node)?;
        r.site = self.site_of(&r.node)?;
        let site = r.site.clone();
        let topo = self.topo();
        let before = r.groups.len();
        let mut dropped = Vec::new();
        r.groups.retain(|p| {
            let ok = topo
                .group(&p.group)
                .is_some_and(|g| g.primary == site || g.replica == site);
            if !ok {
                dropped.push(p.group.clone());
            }
            ok
        });
        if r.groups.len() != before {
            let shown: Vec<String> = dropped
                .iter()
                .take(8)
                .map(|g| g.chars().take(64).collect())
                .collect();
            warn!(node = %r.node, %site, dropped = ?shown, "heartbeat reports groups that are not this site's in the topology; ignored");
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed() -> Progress {
        Progress {
            epoch: Epoch(3),
            last_captured_seq: Seq(100),
            durable_seq: Seq(90),
            rpo_ms: 200,
            bytes_pending: 4096,
            primary_report_ms: Some(50_000),
            replica_report_ms: Some(52_000),
        }
    }

    fn report(role: Role) -> GroupProgress {
        GroupProgress {
            group: "vol".into(),
            role,
            epoch: Epoch(3),
            last_captured_seq: Seq(100),
            durable_seq: Seq(90),
            rpo_ms: 200,
            bytes_pending: 4096,
        }
    }

    #[test]
    fn idle_progress_is_committed_only_when_it_moves_or_grows_old() {
        let now = 55_000;
        let c = committed();
        let with = |role, f: fn(&mut GroupProgress)| {
            let mut p = report(role);
            f(&mut p);
            p
        };
        let tests: Vec<(GroupProgress, i64, bool)> = vec![
            (report(Role::Primary), now, false),
            (report(Role::Replica), now, false),
            (report(Role::Primary), 50_000 + PROGRESS_REFRESH_MS, true),
            (report(Role::Replica), 50_000 + PROGRESS_REFRESH_MS, false),
            (report(Role::Replica), 52_000 + PROGRESS_REFRESH_MS, true),
            (
                with(Role::Primary, |p| p.last_captured_seq = Seq(101)),
                now,
                true,
            ),
            (with(Role::Primary, |p| p.rpo_ms = 0), now, true),
            (with(Role::Primary, |p| p.bytes_pending = 0), now, true),
            (with(Role::Replica, |p| p.durable_seq = Seq(91)), now, true),
            (with(Role::Replica, |p| p.epoch = Epoch(4)), now, true),
            // A replica's view of the primary's figures is not its to move.
            (with(Role::Replica, |p| p.rpo_ms = 7), now, false),
            // Lower figures than committed move nothing (the state keeps the highest).
            (with(Role::Primary, |p| p.durable_seq = Seq(80)), now, false),
        ];
        for (i, (p, at, want)) in tests.into_iter().enumerate() {
            let got = progress_worth_committing(Some(&c), &p, at);
            assert_eq!(got, want, "#{i}: {p:?} at {at}: expect {want}, got {got}");
        }
        assert!(progress_worth_committing(None, &report(Role::Primary), now));
        let never = Progress {
            primary_report_ms: None,
            ..committed()
        };
        assert!(progress_worth_committing(
            Some(&never),
            &report(Role::Primary),
            now
        ));
    }
}
