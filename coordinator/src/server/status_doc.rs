//! The status document the admin API returns and the metrics are mapped from: members, sites,
//! groups (RPO now, reason, lease, resources) and TLS certificates, assembled from the
//! topology, the replicated state and the leader's live figures.

use crate::handle::coordinator::{lock, Coordinator};
use crate::handle::live::{Live, LiveGroup};
use crate::state::GroupState;
use crate::state::{self, LeaseStatus as StLease, SiteStatus, State};
use crate::status::{
    CertStatus, ClusterStatus, DrillStatus, FeedHealth, GroupStatus, LeaseStatus, MemberStatus,
    ResourceStatus, SiteStatus as StSite, StandbyStatus, TlsStatus,
};
use tandem_core::config::{self, NodeRole, ResourceKind, Site, Topology};

impl Coordinator {
    /// The TLS certificates of the nodes: as heard in heartbeats, this node's own, and the
    /// files of nodes not heard from.
    fn tls_status(&self, now_ms: i64) -> TlsStatus {
        let net = &self.inner.net;
        let mut seen = lock(&self.inner.cert_seen).clone();
        if let Some(at) = net.cert_not_after() {
            seen.insert(self.inner.name.clone(), at);
        }
        if net.is_tls() {
            // Nodes not heard from: their certificate file, when this machine has it.
            for n in &self.inner.topo.nodes {
                if !seen.contains_key(&n.name) {
                    let p = tandem_core::certs::cert_path(&self.inner.topo.tls.dir, &n.name);
                    if let Ok(at) = tandem_core::certs::cert_file_not_after(&p) {
                        seen.insert(n.name.clone(), at);
                    }
                }
            }
        }
        TlsStatus {
            enabled: net.is_tls(),
            certs: seen
                .into_iter()
                .map(|(node, not_after)| CertStatus {
                    node,
                    not_after,
                    expires_in_s: not_after - now_ms / 1000,
                })
                .collect(),
        }
    }

    /// The status document as this node sees it (`stale`: a follower that could not reach
    /// the leader answers from its own copy of the state), with only the groups named in
    /// `only` when it names any.
    pub(crate) fn status_doc(&self, stale: bool, only: &[String]) -> ClusterStatus {
        let rs = self.inner.raft.status();
        let now = self.now_ms();
        let live = lock(&self.inner.live);
        let t = &self.inner.topo;
        let members = members(t, &rs);
        let i_lead = rs.leader_id == Some(rs.id);
        self.read(|s| {
            let sites = t
                .sites
                .iter()
                .map(|site| {
                    let mut st = site_status(t, s, &live, site, now);
                    if site.witness {
                        st.status = witness_status(&site.name, &members, i_lead).into();
                    }
                    st
                })
                .collect();
            let groups = t
                .groups
                .iter()
                .filter(|cg| only.is_empty() || only.contains(&cg.name))
                .filter_map(|cg| group_status(t, s, &live, cg, now))
                .collect();
            ClusterStatus {
                cluster: t.cluster.name.clone(),
                answered_by: self.inner.name.clone(),
                leader: rs.leader_id.and_then(|l| self.inner.names.get(&l).cloned()),
                term: rs.term,
                commit_index: rs.commit,
                applied_index: rs.applied,
                stale,
                members,
                sites,
                groups,
                audit_len: s.audit().len() as u64,
                audit_head: s.audit().head_hash().to_owned(),
                tls: self.tls_status(now),
            }
        })
    }
}

/// The coordinators and their raft role as this node knows the leader.
fn members(t: &Topology, rs: &crate::raft::RaftStatus) -> Vec<MemberStatus> {
    let leader_id = rs.leader_id;
    t.coordinators()
        .iter()
        .map(|c| MemberStatus {
            heard_ago_ms: rs.heard_ms_ago.get(&c.raft_id).copied(),
            name: c.node.name.clone(),
            id: c.raft_id,
            site: c.node.site.clone(),
            address: c.node.listen.clone(),
            role: if leader_id == Some(c.raft_id) {
                "leader".into()
            } else if leader_id.is_some() {
                "follower".into()
            } else {
                "unknown".into()
            },
        })
        .collect()
}

/// How recently a leader must have heard a coordinator for its site to count as up: a few raft
/// heartbeats.
pub(crate) const COORDINATOR_HEARD_WITHIN_MS: u64 = 3_000;

/// A witness site's status: it holds no replicator, so it is judged by its coordinators. The
/// leader hears every live coordinator at each raft heartbeat: `up` when one at the site is
/// the answering leader or was heard within [`COORDINATOR_HEARD_WITHIN_MS`], `down` when the
/// leader heard none of them within it; a follower cannot tell (`unknown`). Pure.
pub(crate) fn witness_status(site: &str, members: &[MemberStatus], i_lead: bool) -> &'static str {
    let at_site: Vec<&MemberStatus> = members.iter().filter(|m| m.site == site).collect();
    if !i_lead || at_site.is_empty() {
        return "unknown";
    }
    let up = at_site.iter().any(|m| {
        m.role == "leader"
            || m.heard_ago_ms
                .is_some_and(|a| a <= COORDINATOR_HEARD_WITHIN_MS)
    });
    if up {
        "up"
    } else {
        "down"
    }
}

/// A site: its status in the state and when a replicator there was last heard.
fn site_status(t: &Topology, s: &State, live: &Live, site: &Site, now: i64) -> StSite {
    let st = s.site(&site.name);
    let last = t
        .nodes
        .iter()
        .filter(|n| n.site == site.name && n.role == NodeRole::Replicator)
        .filter_map(|n| live.node_seen.get(&n.name).copied())
        .max();
    StSite {
        name: site.name.clone(),
        witness: site.witness,
        status: match st.map(|x| x.status) {
            Some(SiteStatus::Up) => "up".into(),
            Some(SiteStatus::Down) => "down".into(),
            _ => "unknown".into(),
        },
        last_heartbeat_ago_ms: last.map(|l| now - l),
    }
}

/// A group of the topology as the state and the primary's live report show it (`None` when
/// the state does not know it yet).
fn group_status(
    t: &Topology,
    s: &State,
    live: &Live,
    cg: &config::Group,
    now: i64,
) -> Option<GroupStatus> {
    let g = s.group(&cg.name)?;
    let lg = live.groups.get(&cg.name).cloned().unwrap_or_default();
    let fresh = now - lg.reported_ms < 3 * t.cluster.heartbeat_interval.as_millis() as i64 + 1000;
    // RPO now: the primary's live figure while it reports; once it is silent
    // the data at risk keeps growing with the silence.
    let rpo_ms = if lg.reported_ms == 0 {
        g.progress.rpo_ms as i64
    } else if fresh || lg.rpo_ms == 0 {
        lg.rpo_ms
    } else {
        lg.rpo_ms + (now - lg.reported_ms)
    };
    let feeds: &[tandem_core::proto::ResourceHealth] = if fresh { &lg.feeds } else { &[] };
    let resources = cg
        .resources
        .iter()
        .map(|r| {
            let mut st = resource_status(t, cg, g, r);
            st.health = feeds
                .iter()
                .find(|f| f.resource == r.name)
                .map(|f| feed_health(f, now));
            st.standby = lg
                .replica
                .as_ref()
                .filter(|rep| rep.epoch == g.epoch.0)
                .and_then(|rep| {
                    let probe = rep.standbys.iter().find(|f| f.resource == r.name)?;
                    let durable = feeds.iter().find(|f| f.resource == r.name);
                    Some(standby_status(&rep.site, probe, durable, now))
                });
            st
        })
        .collect();
    let (state, feed_reason) = shown_state(g.state, feeds);
    let mut reason = group_reason(g, &lg, fresh);
    // Where the data lives (the coordinators' record, a planned move's target), else the
    // topology's placement; a "placement changed" reason when the topology now says
    // otherwise than the record.
    let host = |site: &str| {
        t.placed_host(&g.name, site, g.host_at(site))
            .map(|n| n.name.clone())
    };
    let (primary_host, replica_host) = (host(&g.primary_site), host(&g.replica_site));
    let configured = |site: &str| t.host_for(cg, site).map(|n| n.name.clone());
    let moved = [&g.primary_site, &g.replica_site]
        .into_iter()
        .filter_map(|site| placement_changed(g, site, configured(site).as_deref()));
    for why in feed_reason.into_iter().chain(moved) {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&why);
    }
    Some(GroupStatus {
        name: g.name.clone(),
        primary: g.primary_site.clone(),
        replica: g.replica_site.clone(),
        epoch: g.epoch.0,
        mode: g.mode.to_string(),
        state: state.into(),
        primary_host: primary_host.unwrap_or_default(),
        replica_host: replica_host.unwrap_or_default(),
        reason,
        rpo_ms,
        rpo_target_ms: g.rpo_target_ms as i64,
        rto_target_ms: cg.rto_target.as_millis() as i64,
        paused: g.paused,
        last_captured_seq: lg.last_captured_seq.max(g.progress.last_captured_seq.0),
        durable_seq: lg.durable_seq.max(g.progress.durable_seq.0),
        bytes_pending: lg.bytes_pending,
        throughput_bps: if fresh { lg.throughput_bps } else { 0.0 },
        bytes_raw: lg.bytes_raw,
        bytes_shipped: lg.bytes_shipped,
        max_bandwidth_bps: cg.bandwidth_at(tandem_core::config::TimeOfDay::of(chrono::Utc::now())),
        lease: g.lease.as_ref().map(|l| lease_status(l, now)),
        last_failover_loss_ms: g.last_failover.as_ref().map(|w| w.rpo_ms as i64),
        history_oldest_ms: lg.history_oldest.map(|h| h.0),
        history_oldest_seq: lg.history_oldest.map(|h| h.1),
        sync_degraded_since_ms: g.sync_degraded_since,
        drill: drill_status(s, live, cg, g, now),
        resources,
    })
}

/// When the topology now places the group at `site` on another host than the one that held
/// its lease there (where its data lives): the words for the reason. The lease stays refused
/// to the new host.
fn placement_changed(g: &state::Group, site: &str, placed: Option<&str>) -> Option<String> {
    if g.moving.as_ref().is_some_and(|m| m.site == site) {
        // The state's reason already says where it moves.
        return None;
    }
    let recorded = g.hosts.get(site)?;
    (placed != Some(recorded.as_str())).then(|| {
        let placed = placed.unwrap_or("no replicator");
        let name = &g.name;
        let how = if *site == g.replica_site && placed != "no replicator" {
            format!("move it with `tandem move {name} --site {site} --to {placed}`, or ")
        } else {
            String::new()
        };
        format!(
            "placement changed at {site}: the topology places the group on {placed}, its data \
             lives on {recorded}, which keeps serving it ({how}restore the topology with hosts \
             = {{ {site} = \"{recorded}\" }})"
        )
    })
}

/// A group's drill schedule: due and overdue from the replicated runs ([`crate::cadence`]),
/// and the leader's last refusal, if its due drill could not start.
fn drill_status(
    s: &State,
    live: &Live,
    cg: &config::Group,
    g: &state::Group,
    now: i64,
) -> Option<DrillStatus> {
    let every_ms = cg.drill_every?.as_millis();
    let last = s
        .runs()
        .iter()
        .filter(|(_, r)| r.group == g.name && r.kind == tandem_runbooks::RunbookKind::Drill)
        .max_by_key(|(id, r)| (r.started_ms(), id.as_str()));
    let sched = crate::cadence::schedule(
        every_ms,
        last.map(|(_, r)| r.started_ms()),
        g.created_ms,
        now,
    );
    let refusal = live.drill_refusals.get(&g.name);
    Some(DrillStatus {
        every_ms,
        last_drill_ms: sched.last_drill_ms,
        last_run_id: last.map(|(id, _)| id.clone()),
        last_status: last.map(|(_, r)| crate::runs::admin::status_name(&r.state.status)),
        next_due_ms: sched.next_due_ms,
        overdue: sched.overdue,
        grace_ms: crate::cadence::grace_ms(every_ms),
        refused: refusal.map(|r| r.reason.clone()),
        refused_since_ms: refusal.map(|r| r.since_ms),
        retry_at_ms: refusal.map(|r| r.retry_at_ms),
    })
}

/// Why a group is in its state: the coordinators' reason (site down, failing over), then what
/// the primary says of its replication (journal, replica), then what the replica says.
fn group_reason(g: &state::Group, lg: &LiveGroup, fresh: bool) -> String {
    let mut reason = g.reason.clone();
    if let Some(since) = g.sync_degraded_since {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&format!(
            "sync degraded since {}: writes acknowledged at {} only; no automatic failover",
            crate::evidence::derive::iso_ms(since),
            g.primary_site
        ));
    }
    if !lg.reason.is_empty() && fresh {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&lg.reason);
    }
    // A replica says how far its resync is, its last error, and what
    // its failback resync kept in quarantine.
    if let Some(r) = lg
        .replica
        .as_ref()
        .filter(|r| r.epoch == g.epoch.0 && !r.reason.is_empty())
    {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&format!("replica {}: {}", r.site, r.reason));
    }
    reason
}

/// The state status shows for a group in `state`: a `protected` group whose primary reports
/// a database feed that is not healthy (PostgreSQL not archiving, absent, stopped) is shown
/// `degraded`, with why. Pure.
fn shown_state(
    state: GroupState,
    feeds: &[tandem_core::proto::ResourceHealth],
) -> (&'static str, Option<String>) {
    let bad: Vec<String> = feeds
        .iter()
        .filter(|f| !f.healthy)
        .map(|f| format!("database {} {}: {}", f.resource, f.state, f.detail))
        .collect();
    if bad.is_empty() {
        return (state.as_str(), None);
    }
    let shown = if state == GroupState::Protected {
        GroupState::Degraded
    } else {
        state
    };
    (shown.as_str(), Some(bad.join("; ")))
}

/// A resource feed as the status shows it.
fn feed_health(f: &tandem_core::proto::ResourceHealth, now: i64) -> FeedHealth {
    FeedHealth {
        state: f.state.clone(),
        healthy: f.healthy,
        last_archived: (!f.last_archived.is_empty()).then(|| f.last_archived.clone()),
        last_archived_ms: (f.last_archived_ms > 0).then_some(f.last_archived_ms),
        unarchived_segments: f.unarchived_segments,
        unarchived_age_ms: (f.oldest_unarchived_ms > 0)
            .then(|| (now - f.oldest_unarchived_ms).max(0)),
        detail: f.detail.clone(),
    }
}

/// The standby of a streamed postgres resource: the replica's `probe`, its replay lag against
/// the WAL the primary's stream reported durable at the replica site (`durable`), when both are
/// known and on the same timeline. Pure.
pub(crate) fn standby_status(
    site: &str,
    probe: &tandem_core::proto::ResourceHealth,
    durable: Option<&tandem_core::proto::ResourceHealth>,
    now: i64,
) -> StandbyStatus {
    let replaying = probe.standby == "replaying" && probe.replay_lsn > 0;
    let lag = durable
        .filter(|d| replaying && d.durable_lsn > 0 && d.durable_timeline == probe.replay_timeline)
        .map(|d| d.durable_lsn.saturating_sub(probe.replay_lsn));
    StandbyStatus {
        site: site.to_owned(),
        state: probe.standby.clone(),
        replay_lsn: replaying.then(|| {
            format!(
                "{:X}/{:X}",
                probe.replay_lsn >> 32,
                probe.replay_lsn & 0xffff_ffff
            )
        }),
        replay_timeline: replaying.then_some(probe.replay_timeline),
        replay_lag_bytes: lag,
        probed_ago_ms: (now - probe.probed_ms).max(0),
        detail: probe.detail.clone(),
    }
}

/// A lease as the status shows it.
fn lease_status(l: &state::Lease, now: i64) -> LeaseStatus {
    LeaseStatus {
        holder: l.holder.clone(),
        epoch: l.epoch.0,
        expires_ms: l.expires_ms,
        remaining_ms: l.expires_ms - now,
        status: match l.status {
            StLease::Active => "active".into(),
            StLease::Revoked { .. } => "revoked".into(),
            StLease::Released { .. } => "released".into(),
        },
    }
}

/// A resource of a group: its paths at both sites, its NBD export (volumes, at the primary)
/// and its port and binaries (postgres).
fn resource_status(
    t: &Topology,
    cg: &config::Group,
    g: &state::Group,
    r: &config::Resource,
) -> ResourceStatus {
    let primary_path = t
        .resource_path(cg, r, &g.primary_site)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let replica_path = t
        .resource_path(cg, r, &g.replica_site)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let nbd_url = match r.kind {
        ResourceKind::Volume { .. } => t
            .placed_host(&g.name, &g.primary_site, g.host_at(&g.primary_site))
            .and_then(|n| n.nbd_listen.clone())
            .map(|a| format!("nbd://{a}/{}", r.name)),
        _ => None,
    };
    let (port, bin_dir) = match &r.kind {
        ResourceKind::Postgres {
            port,
            replica_port,
            bin_dir,
            ..
        } => (
            Some(if g.primary_site == cg.primary {
                *port
            } else {
                *replica_port
            }),
            Some(bin_dir.display().to_string()),
        ),
        _ => (None, None),
    };
    ResourceStatus {
        name: r.name.clone(),
        kind: r.kind.name().into(),
        primary_path,
        replica_path,
        nbd_url,
        port,
        bin_dir,
        health: None,
        standby: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::proto::ResourceHealth;

    #[test]
    fn a_witness_site_is_judged_by_its_coordinators_as_the_leader_hears_them() {
        let m = |name: &str, site: &str, role: &str, heard: Option<u64>| MemberStatus {
            name: name.into(),
            site: site.into(),
            role: role.into(),
            heard_ago_ms: heard,
            ..Default::default()
        };
        let heard = |a| {
            vec![
                m("hanoi-coord", "hanoi", "leader", None),
                m("danang-coord", "danang", "follower", a),
            ]
        };
        assert_eq!(witness_status("danang", &heard(Some(120)), true), "up");
        assert_eq!(witness_status("danang", &heard(Some(9_000)), true), "down");
        assert_eq!(witness_status("danang", &heard(None), true), "down");
        // A follower hears only the leader: it cannot tell.
        assert_eq!(
            witness_status("danang", &heard(Some(120)), false),
            "unknown"
        );
        // The witness's coordinator is the leader answering.
        let lead = vec![m("danang-coord", "danang", "leader", None)];
        assert_eq!(witness_status("danang", &lead, true), "up");
        assert_eq!(witness_status("nowhere", &lead, true), "unknown");
    }

    #[test]
    fn the_standby_lag_is_what_is_durable_at_the_replica_and_not_replayed() {
        let probe = ResourceHealth {
            resource: "db".into(),
            standby: "replaying".into(),
            replay_lsn: 0x300_0000,
            replay_timeline: 1,
            probed_ms: 900,
            ..Default::default()
        };
        let durable = |lsn, tli| ResourceHealth {
            resource: "db".into(),
            durable_lsn: lsn,
            durable_timeline: tli,
            ..Default::default()
        };
        let s = standby_status("hcm", &probe, Some(&durable(0x300_2000, 1)), 1000);
        assert_eq!(s.replay_lag_bytes, Some(0x2000));
        assert_eq!(s.replay_lsn.as_deref(), Some("0/3000000"));
        assert_eq!((s.probed_ago_ms, s.site.as_str()), (100, "hcm"));
        // An older primary report than the probe: no negative lag.
        let s = standby_status("hcm", &probe, Some(&durable(0x200_0000, 1)), 1000);
        assert_eq!(s.replay_lag_bytes, Some(0));
        // Another timeline, no stream report, or no replay: no figure.
        assert_eq!(
            standby_status("hcm", &probe, Some(&durable(0x400_0000, 2)), 1000).replay_lag_bytes,
            None
        );
        assert_eq!(
            standby_status("hcm", &probe, None, 1000).replay_lag_bytes,
            None
        );
        let down = ResourceHealth {
            standby: "unreachable".into(),
            ..probe.clone()
        };
        let s = standby_status("hcm", &down, Some(&durable(0x300_2000, 1)), 1000);
        assert_eq!((s.replay_lag_bytes, s.replay_lsn), (None, None));
    }

    fn feed(healthy: bool) -> ResourceHealth {
        ResourceHealth {
            resource: "db".into(),
            state: if healthy { "archiving" } else { "stalled" }.into(),
            healthy,
            detail: "archive_command failing".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_protected_group_whose_database_feed_is_unhealthy_is_shown_degraded() {
        let cases = [
            (GroupState::Protected, vec![], "protected", false),
            (GroupState::Protected, vec![feed(true)], "protected", false),
            (
                GroupState::Protected,
                vec![feed(true), feed(false)],
                "degraded",
                true,
            ),
            (
                GroupState::SwitchingOver,
                vec![feed(false)],
                "switching-over",
                true,
            ),
            (
                GroupState::FailedOver,
                vec![feed(false)],
                "failed-over",
                true,
            ),
        ];
        for (i, (state, feeds, want, why)) in cases.into_iter().enumerate() {
            let (got, reason) = shown_state(state, &feeds);
            assert_eq!(got, want, "#{i}: expect {want} got {got}");
            assert_eq!(reason.is_some(), why, "#{i}: reason {reason:?}");
            if let Some(r) = reason {
                assert!(
                    r.contains("database db stalled: archive_command failing"),
                    "#{i}: {r}"
                );
            }
        }
    }
}
