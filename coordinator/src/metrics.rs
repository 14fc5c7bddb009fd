//! The coordinator's Prometheus figures: a pure mapping from the status document (the same one
//! `tandem status --json` prints) to metric families, computed at every scrape.

use crate::state::GroupState;
use crate::status::ClusterStatus;
use tandem_core::metrics::{Family, Kind};

/// Every group state, so that `tandem_group_state{state}` has one series per state (1 for the
/// current one, 0 for the others) and dashboards see a stable set of series.
pub const GROUP_STATES: [GroupState; 7] = [
    GroupState::Protected,
    GroupState::Degraded,
    GroupState::FailingOver,
    GroupState::FailedOver,
    GroupState::Drilling,
    GroupState::Resyncing,
    GroupState::SwitchingOver,
];

fn ms_to_s(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The coordinator's metric families from its status document; `is_leader` is this node's own
/// view (the document may come from a follower, whose RPO comes from the last committed sample).
pub fn families(doc: &ClusterStatus, is_leader: bool) -> Vec<Family> {
    let mut out = vec![
        Family::new("tandem_raft_term", "Current raft term.", Kind::Gauge)
            .with(&[], doc.term as f64),
        Family::new(
            "tandem_raft_commit_index",
            "Raft commit index on this coordinator.",
            Kind::Gauge,
        )
        .with(&[], doc.commit_index as f64),
        Family::new(
            "tandem_raft_applied_index",
            "Raft applied index on this coordinator.",
            Kind::Gauge,
        )
        .with(&[], doc.applied_index as f64),
        Family::new(
            "tandem_raft_is_leader",
            "1 when this coordinator is the raft leader.",
            Kind::Gauge,
        )
        .with(&[], flag(is_leader)),
        Family::new(
            "tandem_raft_has_leader",
            "1 when this coordinator knows a raft leader (a quorum is reachable).",
            Kind::Gauge,
        )
        .with(&[], flag(doc.leader.is_some())),
        Family::new(
            "tandem_audit_records",
            "Number of records in the audit chain.",
            Kind::Gauge,
        )
        .with(&[], doc.audit_len as f64),
    ];
    let mut site_up = Family::new(
        "tandem_site_up",
        "1 when the site is up, 0 when declared down or not yet seen.",
        Kind::Gauge,
    );
    let mut site_seen = Family::new(
        "tandem_site_last_heartbeat_age_seconds",
        "Seconds since the leader last heard from a replicator at the site.",
        Kind::Gauge,
    );
    for s in &doc.sites {
        if s.witness {
            continue;
        }
        site_up.push(&[("site", &s.name)], flag(s.status == "up"));
        if let Some(ago) = s.last_heartbeat_ago_ms {
            site_seen.push(&[("site", &s.name)], ms_to_s(ago));
        }
    }
    out.push(site_up);
    out.push(site_seen);

    let mut rpo = Family::new(
        "tandem_group_rpo_seconds",
        "RPO now: age of the oldest change not yet durable on the replica (0 when caught up).",
        Kind::Gauge,
    );
    let mut rpo_target = Family::new(
        "tandem_group_rpo_target_seconds",
        "RPO target of the group.",
        Kind::Gauge,
    );
    let mut rto_target = Family::new(
        "tandem_group_rto_target_seconds",
        "RTO target of the group.",
        Kind::Gauge,
    );
    let mut epoch = Family::new(
        "tandem_group_epoch",
        "Current epoch (fencing token) of the group.",
        Kind::Gauge,
    );
    let mut state = Family::new(
        "tandem_group_state",
        "1 for the group's current state, 0 for the others.",
        Kind::Gauge,
    );
    let mut lease = Family::new(
        "tandem_group_lease_remaining_seconds",
        "Seconds left on the primary's lease (negative: expired; 0: no active lease).",
        Kind::Gauge,
    );
    let mut lease_active = Family::new(
        "tandem_group_lease_active",
        "1 when the group's primary holds an active, unexpired lease.",
        Kind::Gauge,
    );
    let mut pending = Family::new(
        "tandem_group_bytes_pending",
        "Bytes captured at the primary and not yet durable on the replica.",
        Kind::Gauge,
    );
    let mut paused = Family::new(
        "tandem_group_paused",
        "1 when replication of the group is paused.",
        Kind::Gauge,
    );
    let mut drill_due = Family::new(
        "tandem_group_drill_next_due_timestamp_seconds",
        "When the group's next scheduled drill is due (unix seconds); groups with drill_every only.",
        Kind::Gauge,
    );
    let mut drill_overdue = Family::new(
        "tandem_group_drill_overdue",
        "1 when the group's scheduled drill is past due by more than the grace (10% of drill_every, at least 1 s); 0 otherwise and for groups without drill_every.",
        Kind::Gauge,
    );
    let mut drill_refused = Family::new(
        "tandem_group_drill_refused",
        "1 while the group's due drill could not start (the gates refused it; status says why).",
        Kind::Gauge,
    );
    for g in &doc.groups {
        let l = [("group", g.name.as_str())];
        drill_overdue.push(&l, flag(g.drill.as_ref().is_some_and(|d| d.overdue)));
        if let Some(d) = &g.drill {
            drill_due.push(&l, ms_to_s(d.next_due_ms));
            drill_refused.push(&l, flag(d.refused.is_some()));
        }
        rpo.push(&l, ms_to_s(g.rpo_ms.max(0)));
        rpo_target.push(&l, ms_to_s(g.rpo_target_ms));
        rto_target.push(&l, ms_to_s(g.rto_target_ms));
        epoch.push(&l, g.epoch as f64);
        for s in GROUP_STATES {
            state.push(
                &[("group", &g.name), ("state", s.as_str())],
                flag(g.state == s.as_str()),
            );
        }
        let active = g
            .lease
            .as_ref()
            .filter(|x| x.status == "active")
            .map(|x| x.remaining_ms);
        lease.push(&l, active.map(ms_to_s).unwrap_or(0.0));
        lease_active.push(&l, flag(active.is_some_and(|r| r > 0)));
        pending.push(&l, g.bytes_pending as f64);
        paused.push(&l, flag(g.paused));
    }
    out.extend([
        rpo,
        rpo_target,
        rto_target,
        epoch,
        state,
        lease,
        lease_active,
        pending,
        paused,
        drill_due,
        drill_overdue,
        drill_refused,
    ]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::status::{GroupStatus, LeaseStatus, SiteStatus};
    use tandem_core::metrics::{parse_text, render};

    /// Fails to compile when a state is added without listing it in [`GROUP_STATES`].
    fn position(s: GroupState) -> usize {
        match s {
            GroupState::Protected => 0,
            GroupState::Degraded => 1,
            GroupState::FailingOver => 2,
            GroupState::FailedOver => 3,
            GroupState::Drilling => 4,
            GroupState::Resyncing => 5,
            GroupState::SwitchingOver => 6,
        }
    }

    #[test]
    fn every_group_state_is_listed_once() {
        for (i, s) in GROUP_STATES.iter().enumerate() {
            assert_eq!(position(*s), i, "{s:?}");
        }
    }

    fn doc() -> ClusterStatus {
        ClusterStatus {
            term: 4,
            commit_index: 120,
            applied_index: 119,
            leader: Some("hanoi-coord1".into()),
            audit_len: 17,
            sites: vec![
                SiteStatus {
                    name: "hanoi".into(),
                    status: "up".into(),
                    last_heartbeat_ago_ms: Some(150),
                    ..Default::default()
                },
                SiteStatus {
                    name: "hcm".into(),
                    status: "down".into(),
                    ..Default::default()
                },
                SiteStatus {
                    name: "danang".into(),
                    witness: true,
                    status: "unknown".into(),
                    ..Default::default()
                },
            ],
            groups: vec![GroupStatus {
                name: "vol".into(),
                epoch: 3,
                state: "degraded".into(),
                rpo_ms: 2500,
                rpo_target_ms: 2000,
                lease: Some(LeaseStatus {
                    status: "active".into(),
                    remaining_ms: 1200,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn status_maps_to_the_documented_series() {
        let exp = parse_text(&render(&families(&doc(), true))).unwrap();
        let v = |n: &str, l: &[(&str, &str)]| exp.value(n, l);
        assert_eq!(v("tandem_raft_term", &[]), Some(4.0));
        assert_eq!(v("tandem_raft_commit_index", &[]), Some(120.0));
        assert_eq!(v("tandem_raft_is_leader", &[]), Some(1.0));
        assert_eq!(v("tandem_audit_records", &[]), Some(17.0));
        assert_eq!(v("tandem_site_up", &[("site", "hanoi")]), Some(1.0));
        assert_eq!(v("tandem_site_up", &[("site", "hcm")]), Some(0.0));
        assert_eq!(v("tandem_site_up", &[("site", "danang")]), None, "witness");
        assert_eq!(
            v("tandem_group_rpo_seconds", &[("group", "vol")]),
            Some(2.5)
        );
        assert_eq!(v("tandem_group_epoch", &[("group", "vol")]), Some(3.0));
        assert_eq!(
            v("tandem_group_lease_remaining_seconds", &[("group", "vol")]),
            Some(1.2)
        );
        let states: Vec<_> = exp
            .series("tandem_group_state")
            .map(|s| (s.label("state").unwrap().to_owned(), s.value))
            .collect();
        assert_eq!(states.len(), GROUP_STATES.len());
        assert_eq!(
            states.iter().filter(|(_, v)| *v == 1.0).collect::<Vec<_>>(),
            vec![&("degraded".to_owned(), 1.0)]
        );
    }

    #[test]
    fn drill_schedules_map_to_due_overdue_and_refused() {
        let mut d = doc();
        let mut other = d.groups[0].clone();
        other.name = "db".into();
        d.groups[0].drill = Some(crate::status::DrillStatus {
            every_ms: 3_000,
            next_due_ms: 1_700_000_000_500,
            overdue: true,
            refused: Some("the group is degraded".into()),
            ..Default::default()
        });
        d.groups.push(other);
        let exp = parse_text(&render(&families(&d, true))).unwrap();
        let v = |n: &str, g: &str| exp.value(n, &[("group", g)]);
        assert_eq!(
            v("tandem_group_drill_next_due_timestamp_seconds", "vol"),
            Some(1_700_000_000.5)
        );
        assert_eq!(v("tandem_group_drill_overdue", "vol"), Some(1.0));
        assert_eq!(v("tandem_group_drill_refused", "vol"), Some(1.0));
        // A group without drill_every: never overdue, no due time.
        assert_eq!(v("tandem_group_drill_overdue", "db"), Some(0.0));
        assert_eq!(
            v("tandem_group_drill_next_due_timestamp_seconds", "db"),
            None
        );
    }

    #[test]
    fn a_revoked_lease_reads_as_no_lease() {
        let mut d = doc();
        if let Some(l) = d.groups[0].lease.as_mut() {
            l.status = "revoked".into();
        }
        let exp = parse_text(&render(&families(&d, false))).unwrap();
        assert_eq!(
            exp.value("tandem_group_lease_active", &[("group", "vol")]),
            Some(0.0)
        );
        assert_eq!(
            exp.value("tandem_group_lease_remaining_seconds", &[("group", "vol")]),
            Some(0.0)
        );
        assert_eq!(exp.value("tandem_raft_is_leader", &[]), Some(0.0));
    }
}
