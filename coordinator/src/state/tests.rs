use super::machine::to_json;
use super::*;
use crate::audit::verify_chain;
use crate::audit::{AuditChain, AuditKind};
use crate::error::Error;
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_runbooks::run::{self as rb, RunEvent, RunStatus};
use tandem_runbooks::{Action, Plan, ResolvedSite, RunbookKind};

const TTL: i64 = 1_000;
const DRIFT: i64 = 200;

fn settings() -> ClusterSettings {
    ClusterSettings {
        lease_ttl_ms: TTL as u64,
        drift_margin_ms: DRIFT as u64,
        detect_after_ms: 3_000,
    }
}

fn site(name: &str, witness: bool) -> SiteSpec {
    SiteSpec {
        name: name.into(),
        witness,
        jurisdiction: None,
    }
}

fn gspec(name: &str, primary: &str, replica: &str) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        primary: primary.into(),
        replica: replica.into(),
        mode: Mode::Async,
        rpo_target_ms: 5_000,
        allowed_jurisdictions: Vec::new(),
    }
}

fn bootstrap_cmd(at_ms: i64) -> Command {
    Command::Bootstrap {
        at_ms,
        actor: "ops".into(),
        settings: settings(),
        sites: vec![site("hanoi", false), site("hcm", false), site("w", true)],
        groups: vec![gspec("vol", "hanoi", "hcm"), gspec("db", "hcm", "hanoi")],
    }
}

fn booted() -> State {
    let mut s = State::new();
    apply(&mut s, &bootstrap_cmd(0)).unwrap();
    s
}

fn acquire(at_ms: i64, group: &str, node: &str, site: &str, epoch: u64) -> Command {
    Command::AcquireLease {
        at_ms,
        group: group.into(),
        node: node.into(),
        site: site.into(),
        epoch: Epoch(epoch),
    }
}

fn renew(at_ms: i64, group: &str, node: &str, site: &str, epoch: u64) -> Command {
    Command::RenewLease {
        at_ms,
        group: group.into(),
        node: node.into(),
        site: site.into(),
        epoch: Epoch(epoch),
    }
}

fn release(at_ms: i64, group: &str, node: &str, epoch: u64) -> Command {
    Command::ReleaseLease {
        at_ms,
        group: group.into(),
        node: node.into(),
        epoch: Epoch(epoch),
    }
}

fn fence(at_ms: i64, group: &str) -> Command {
    Command::Fence {
        at_ms,
        group: group.into(),
        actor: "alice".into(),
        reason: "site lost".into(),
    }
}

fn promote(at_ms: i64, group: &str, to: &str, planned: bool) -> Command {
    Command::Promote {
        at_ms,
        group: group.into(),
        to_site: to.into(),
        actor: "alice".into(),
        reason: "drill".into(),
        planned,
    }
}

fn heartbeat(at_ms: i64, node: &str, site: &str, progress: Vec<GroupProgress>) -> Command {
    Command::Heartbeat {
        at_ms,
        node: node.into(),
        site: site.into(),
        progress,
    }
}

fn progress(group: &str, role: Role, epoch: u64, captured: u64, durable: u64) -> GroupProgress {
    GroupProgress {
        group: group.into(),
        role,
        epoch: Epoch(epoch),
        last_captured_seq: Seq(captured),
        durable_seq: Seq(durable),
        rpo_ms: 1_500,
        bytes_pending: 4_096,
    }
}

fn kinds(s: &State) -> Vec<AuditKind> {
    s.audit().records().iter().map(|r| r.kind).collect()
}

/// Everything but the audit chain, to show a refusal changed nothing else.
fn without_audit(s: &State) -> State {
    let mut c = s.clone();
    c.audit = AuditChain::default();
    c
}

#[test]
fn bootstrap_sets_topology_and_audits_once() {
    let s = booted();
    assert_eq!(s.settings(), Some(&settings()));
    let vol = s.group("vol").unwrap();
    assert_eq!(vol.primary_site, "hanoi");
    assert_eq!(vol.replica_site, "hcm");
    assert_eq!(vol.epoch, FIRST_EPOCH);
    assert_eq!(vol.state, GroupState::Resyncing);
    assert_eq!(vol.id, GroupId::from_name("vol"));
    assert_eq!(s.primary_of("db"), Some("hcm"));
    assert!(s.site("w").unwrap().witness);
    assert_eq!(s.site("hcm").unwrap().status, SiteStatus::Unknown);
    assert_eq!(kinds(&s), vec![AuditKind::Bootstrap]);
    assert_eq!(s.audit().records()[0].actor, "ops");
}

#[test]
fn identical_bootstrap_is_a_noop_without_audit() {
    let mut s = booted();
    let before = s.clone();
    assert_eq!(apply(&mut s, &bootstrap_cmd(50)), Ok(vec![]));
    assert_eq!(s, before.clone().with_clock(50));
}

impl State {
    fn with_clock(mut self, at: i64) -> State {
        self.clock_ms = at;
        self
    }
}

#[test]
fn identical_bootstrap_after_promotion_is_still_a_noop() {
    let mut s = booted();
    apply(&mut s, &promote(10, "vol", "hcm", false)).unwrap();
    assert_eq!(apply(&mut s, &bootstrap_cmd(20)), Ok(vec![]));
    assert_eq!(s.primary_of("vol"), Some("hcm"));
}

#[test]
fn later_bootstrap_adds_new_groups_and_sites() {
    let mut s = booted();
    let cmd = Command::Bootstrap {
        at_ms: 10,
        actor: "ops".into(),
        settings: settings(),
        sites: vec![site("hanoi", false), site("danang", false)],
        groups: vec![gspec("vol", "hanoi", "hcm"), gspec("pg", "hanoi", "danang")],
    };
    let ev = apply(&mut s, &cmd).unwrap();
    assert!(ev.contains(&Event::Bootstrapped {
        sites_added: vec!["danang".into()],
        groups_added: vec!["pg".into()],
    }));
    assert_eq!(s.primary_of("pg"), Some("hanoi"));
    assert_eq!(kinds(&s), vec![AuditKind::Bootstrap, AuditKind::Bootstrap]);
}

#[test]
fn conflicting_bootstrap_is_refused_and_audited() {
    let mut s = booted();
    let mut other = settings();
    other.lease_ttl_ms = 5_000;
    let cmd = Command::Bootstrap {
        at_ms: 10,
        actor: "ops".into(),
        settings: other,
        sites: vec![],
        groups: vec![],
    };
    let before = without_audit(&s);
    assert_eq!(
        apply(&mut s, &cmd),
        Err(Rejection::BootstrapConflict {
            field: "settings".into()
        })
    );
    assert_eq!(without_audit(&s), before);
    assert_eq!(kinds(&s), vec![AuditKind::Bootstrap, AuditKind::Refused]);

    let moved = Command::Bootstrap {
        at_ms: 10,
        actor: "ops".into(),
        settings: settings(),
        sites: vec![],
        groups: vec![gspec("vol", "hanoi", "w")],
    };
    assert!(matches!(
        apply(&mut s, &moved),
        Err(Rejection::InvalidBootstrap { .. })
    ));
}

#[test]
fn bootstrap_refuses_groups_on_witness_unknown_or_same_sites() {
    for (p, r) in [("hanoi", "w"), ("hanoi", "mars"), ("hanoi", "hanoi")] {
        let mut s = State::new();
        let cmd = Command::Bootstrap {
            at_ms: 0,
            actor: "ops".into(),
            settings: settings(),
            sites: vec![site("hanoi", false), site("w", true)],
            groups: vec![gspec("vol", p, r)],
        };
        assert!(
            matches!(apply(&mut s, &cmd), Err(Rejection::InvalidBootstrap { .. })),
            "{p}->{r} accepted"
        );
        assert!(s.settings().is_none());
        assert!(s.groups().is_empty());
    }
}

#[test]
fn commands_before_bootstrap_are_refused() {
    let mut s = State::new();
    assert_eq!(
        apply(&mut s, &acquire(1, "vol", "n1", "hanoi", 1)),
        Err(Rejection::NotBootstrapped)
    );
    assert_eq!(
        apply(&mut s, &fence(1, "vol")),
        Err(Rejection::NotBootstrapped)
    );
    // The fence refusal is evidence; the lease refusal is not.
    assert_eq!(kinds(&s), vec![AuditKind::Refused]);
}

#[test]
fn lease_granted_only_at_primary_site_in_current_epoch() {
    let mut s = booted();
    assert!(matches!(
        apply(&mut s, &acquire(1, "vol", "r1", "hcm", 1)),
        Err(Rejection::NotPrimarySite { .. })
    ));
    assert!(matches!(
        apply(&mut s, &acquire(1, "vol", "x", "w", 1)),
        Err(Rejection::WitnessSite { .. })
    ));
    assert!(matches!(
        apply(&mut s, &acquire(1, "vol", "n1", "hanoi", 0)),
        Err(Rejection::WrongEpoch { .. })
    ));
    assert!(matches!(
        apply(&mut s, &acquire(1, "nope", "n1", "hanoi", 1)),
        Err(Rejection::UnknownGroup { .. })
    ));
    let ev = apply(&mut s, &acquire(100, "vol", "n1", "hanoi", 1)).unwrap();
    assert_eq!(
        ev[0],
        Event::LeaseGranted {
            group: "vol".into(),
            node: "n1".into(),
            site: "hanoi".into(),
            epoch: Epoch(1),
            expires_ms: 100 + TTL,
        }
    );
    assert!(s.lease_live("vol", 100 + TTL - 1));
    assert!(!s.lease_live("vol", 100 + TTL));
    assert!(s.lease_may_be_live("vol", 100 + TTL + DRIFT - 1));
    assert!(!s.lease_may_be_live("vol", 100 + TTL + DRIFT));
    assert_eq!(
        kinds(&s),
        vec![AuditKind::Bootstrap, AuditKind::LeaseGranted]
    );
}

#[test]
fn second_holder_waits_for_expiry_plus_drift() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    assert_eq!(
        apply(&mut s, &acquire(TTL + DRIFT - 1, "vol", "n2", "hanoi", 1)),
        Err(Rejection::LeaseHeld {
            group: "vol".into(),
            holder: "n1".into(),
            until_ms: TTL + DRIFT,
        })
    );
    let ev = apply(&mut s, &acquire(TTL + DRIFT, "vol", "n2", "hanoi", 1)).unwrap();
    assert!(matches!(&ev[0], Event::LeaseGranted { node, .. } if node == "n2"));
}

#[test]
fn renew_extends_a_live_lease_and_refuses_an_expired_one() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    let ev = apply(&mut s, &renew(600, "vol", "n1", "hanoi", 1)).unwrap();
    assert_eq!(
        ev,
        vec![Event::LeaseRenewed {
            group: "vol".into(),
            node: "n1".into(),
            epoch: Epoch(1),
            expires_ms: 600 + TTL,
        }]
    );
    assert!(matches!(
        apply(&mut s, &renew(700, "vol", "n2", "hanoi", 1)),
        Err(Rejection::NoLease { .. })
    ));
    assert_eq!(
        apply(&mut s, &renew(600 + TTL, "vol", "n1", "hanoi", 1)),
        Err(Rejection::LeaseExpired {
            group: "vol".into(),
            node: "n1".into(),
            expired_ms: 600 + TTL,
        })
    );
    // Renewals are not audited; the grant is.
    assert_eq!(
        kinds(&s),
        vec![AuditKind::Bootstrap, AuditKind::LeaseGranted]
    );
    // Acquiring again after expiry is a fresh, audited grant.
    apply(&mut s, &acquire(600 + TTL, "vol", "n1", "hanoi", 1)).unwrap();
    assert_eq!(kinds(&s).last(), Some(&AuditKind::LeaseGranted));
}

#[test]
fn heartbeats_never_extend_a_lease() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    for t in (100..3_000).step_by(100) {
        apply(
            &mut s,
            &heartbeat(
                t,
                "n1",
                "hanoi",
                vec![progress("vol", Role::Primary, 1, 5, 5)],
            ),
        )
        .unwrap();
    }
    assert!(!s.lease_live("vol", 2_900));
    assert_eq!(s.promotion_allowed_at("vol"), Some(TTL + DRIFT));
}

#[test]
fn promotion_refused_until_lease_expiry_plus_drift() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    apply(&mut s, &renew(500, "vol", "n1", "hanoi", 1)).unwrap();
    let until = 500 + TTL + DRIFT;
    assert_eq!(s.promotion_allowed_at("vol"), Some(until));
    assert_eq!(
        apply(&mut s, &promote(until - 1, "vol", "hcm", false)),
        Err(Rejection::LeaseStillLive {
            group: "vol".into(),
            holder: "n1".into(),
            until_ms: until,
        })
    );
    assert_eq!(s.primary_of("vol"), Some("hanoi"));
    apply(&mut s, &promote(until, "vol", "hcm", false)).unwrap();
    assert_eq!(s.primary_of("vol"), Some("hcm"));
}

#[test]
fn released_lease_allows_immediate_promotion() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    assert!(matches!(
        apply(&mut s, &release(10, "vol", "n2", 1)),
        Err(Rejection::NoLease { .. })
    ));
    let ev = apply(&mut s, &release(10, "vol", "n1", 1)).unwrap();
    assert_eq!(
        ev[0],
        Event::LeaseReleased {
            group: "vol".into(),
            node: "n1".into(),
            epoch: Epoch(1)
        }
    );
    assert!(!s.lease_live("vol", 11));
    assert_eq!(s.promotion_allowed_at("vol"), None);
    apply(&mut s, &promote(11, "vol", "hcm", true)).unwrap();
    let g = s.group("vol").unwrap();
    assert_eq!(g.state, GroupState::Protected);
    assert_eq!(g.epoch, Epoch(2));
}

#[test]
fn fenced_lease_still_blocks_promotion_until_expiry_plus_drift() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    let ev = apply(&mut s, &fence(100, "vol")).unwrap();
    assert!(ev.contains(&Event::EpochRaised {
        group: "vol".into(),
        from: Epoch(1),
        to: Epoch(2)
    }));
    assert!(ev.contains(&Event::LeaseRevoked {
        group: "vol".into(),
        node: "n1".into(),
        epoch: Epoch(1),
        expires_ms: TTL,
        blocks_until_ms: TTL + DRIFT,
    }));
    assert!(!s.lease_live("vol", 100));
    assert!(s.lease_may_be_live("vol", 100));
    // The old holder cannot renew; nobody else can take the lease yet.
    assert!(matches!(
        apply(&mut s, &renew(150, "vol", "n1", "hanoi", 1)),
        Err(Rejection::WrongEpoch { .. })
    ));
    assert!(matches!(
        apply(&mut s, &acquire(150, "vol", "n2", "hanoi", 2)),
        Err(Rejection::LeaseHeld { .. })
    ));
    assert!(matches!(
        apply(&mut s, &promote(TTL + DRIFT - 1, "vol", "hcm", false)),
        Err(Rejection::LeaseStillLive { .. })
    ));
    let ev = apply(&mut s, &promote(TTL + DRIFT, "vol", "hcm", false)).unwrap();
    // Promote raises the epoch again, even after the fence.
    assert!(ev.contains(&Event::EpochRaised {
        group: "vol".into(),
        from: Epoch(2),
        to: Epoch(3)
    }));
}

#[test]
fn fenced_holder_releasing_unblocks_promotion() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    apply(&mut s, &fence(100, "vol")).unwrap();
    apply(&mut s, &release(200, "vol", "n1", 1)).unwrap();
    apply(&mut s, &promote(201, "vol", "hcm", false)).unwrap();
}

#[test]
fn promote_swaps_roles_raises_epoch_and_records_loss_window() {
    let mut s = booted();
    apply(
        &mut s,
        &heartbeat(
            5,
            "n1",
            "hanoi",
            vec![progress("vol", Role::Primary, 1, 120, 100)],
        ),
    )
    .unwrap();
    apply(
        &mut s,
        &heartbeat(
            6,
            "r1",
            "hcm",
            vec![progress("vol", Role::Replica, 1, 0, 110)],
        ),
    )
    .unwrap();
    let ev = apply(&mut s, &promote(50, "vol", "hcm", false)).unwrap();
    let g = s.group("vol").unwrap();
    assert_eq!(g.primary_site, "hcm");
    assert_eq!(g.replica_site, "hanoi");
    assert_eq!(g.epoch, Epoch(2));
    assert_eq!(g.state, GroupState::FailedOver);
    assert_eq!(g.reason, "drill");
    assert!(g.lease.is_none());
    let loss = g.last_failover.clone().unwrap();
    assert_eq!(loss.durable_seq, Seq(110));
    assert_eq!(loss.last_captured_seq, Seq(120));
    assert_eq!(loss.lost_changes, 10);
    assert_eq!(loss.rpo_ms, 1_500);
    assert_eq!(loss.progress_at_ms, Some(5));
    assert_eq!(loss.from_site, "hanoi");
    assert!(!loss.planned);
    assert_eq!(g.progress.last_captured_seq, Seq(110));
    assert_eq!(g.progress.epoch, Epoch(2));
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Promoted { loss: l, .. } if *l == loss)));
    let rec = s.audit().records().last().unwrap();
    assert_eq!(rec.kind, AuditKind::Promote);
    assert_eq!(rec.actor, "alice");
    assert_eq!(rec.group.as_deref(), Some("vol"));
    assert_eq!(rec.detail["to_epoch"], json!(2));
    // The new primary can now take the lease in the new epoch; the old site cannot.
    assert!(matches!(
        apply(&mut s, &acquire(60, "vol", "n1", "hanoi", 2)),
        Err(Rejection::NotPrimarySite { .. })
    ));
    apply(&mut s, &acquire(60, "vol", "r1", "hcm", 2)).unwrap();
}

#[test]
fn promote_refused_to_non_replica_witness_or_down_site() {
    let mut s = booted();
    assert!(matches!(
        apply(&mut s, &promote(1, "vol", "hanoi", false)),
        Err(Rejection::NotReplicaSite { .. })
    ));
    assert!(matches!(
        apply(&mut s, &promote(1, "vol", "w", false)),
        Err(Rejection::WitnessSite { .. })
    ));
    apply(
        &mut s,
        &Command::SiteDown {
            at_ms: 2,
            site: "hcm".into(),
        },
    )
    .unwrap();
    assert_eq!(
        apply(&mut s, &promote(3, "vol", "hcm", false)),
        Err(Rejection::SiteIsDown { site: "hcm".into() })
    );
    assert_eq!(s.group("vol").unwrap().epoch, Epoch(1));
}

#[test]
fn planned_promotion_refused_until_caught_up() {
    let mut s = booted();
    apply(
        &mut s,
        &heartbeat(
            5,
            "n1",
            "hanoi",
            vec![progress("vol", Role::Primary, 1, 120, 100)],
        ),
    )
    .unwrap();
    assert!(matches!(
        apply(&mut s, &promote(10, "vol", "hcm", true)),
        Err(Rejection::NotCaughtUp { .. })
    ));
    apply(
        &mut s,
        &heartbeat(
            20,
            "r1",
            "hcm",
            vec![progress("vol", Role::Replica, 1, 0, 120)],
        ),
    )
    .unwrap();
    apply(&mut s, &promote(30, "vol", "hcm", true)).unwrap();
    assert_eq!(
        s.group("vol")
            .unwrap()
            .last_failover
            .as_ref()
            .unwrap()
            .lost_changes,
        0
    );
}

#[test]
fn refused_promotion_is_audited_and_changes_nothing_else() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    let before = without_audit(&s);
    let len = s.audit().len();
    assert!(apply(&mut s, &promote(10, "vol", "hcm", false)).is_err());
    assert_eq!(without_audit(&s), before);
    assert_eq!(s.audit().len(), len + 1);
    let rec = s.audit().records().last().unwrap();
    assert_eq!(rec.kind, AuditKind::Refused);
    assert_eq!(rec.actor, "alice");
    assert_eq!(rec.detail["op"], json!("promote"));
    assert_eq!(rec.detail["rejection"]["code"], json!("lease_still_live"));
    assert_eq!(verify_chain(s.audit().records()), Ok(()));
}

#[test]
fn lease_refusals_are_not_audited() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    let before = s.clone();
    for t in 1..50 {
        assert!(apply(&mut s, &acquire(t, "vol", "n2", "hanoi", 1)).is_err());
    }
    assert_eq!(s, before);
}

#[test]
fn heartbeat_marks_site_up_and_updates_progress_of_current_epoch_only() {
    let mut s = booted();
    let ev = apply(
        &mut s,
        &heartbeat(
            10,
            "n1",
            "hanoi",
            vec![
                progress("vol", Role::Primary, 1, 50, 40),
                progress("vol", Role::Primary, 7, 99, 99),
                progress("db", Role::Primary, 1, 9, 9),
                progress("ghost", Role::Primary, 1, 9, 9),
            ],
        ),
    )
    .unwrap();
    let site = s.site("hanoi").unwrap();
    assert_eq!(site.status, SiteStatus::Up);
    assert_eq!(site.nodes.get("n1"), Some(&10));
    let p = &s.group("vol").unwrap().progress;
    assert_eq!(p.last_captured_seq, Seq(50));
    assert_eq!(p.durable_seq, Seq(40));
    assert_eq!(p.primary_report_ms, Some(10));
    // db's primary is hcm: a primary report from hanoi is ignored.
    assert_eq!(s.group("db").unwrap().progress.last_captured_seq, Seq(0));
    let ignored = ev
        .iter()
        .filter(|e| matches!(e, Event::ProgressIgnored { .. }))
        .count();
    assert_eq!(ignored, 3);
    assert_eq!(kinds(&s), vec![AuditKind::Bootstrap, AuditKind::SiteUp]);
    // A second heartbeat does not audit again.
    apply(&mut s, &heartbeat(20, "n1", "hanoi", vec![])).unwrap();
    assert_eq!(s.audit().len(), 2);
    assert!(matches!(
        apply(&mut s, &heartbeat(20, "n1", "mars", vec![])),
        Err(Rejection::UnknownSite { .. })
    ));
}

#[test]
fn site_down_degrades_protected_groups_and_site_up_restores_them() {
    let mut s = booted();
    for g in ["vol", "db"] {
        apply(
            &mut s,
            &Command::SetGroupState {
                at_ms: 1,
                group: g.into(),
                state: GroupState::Protected,
                reason: "initial sync done".into(),
                actor: "replicator".into(),
            },
        )
        .unwrap();
    }
    apply(
        &mut s,
        &Command::SetGroupState {
            at_ms: 2,
            group: "db".into(),
            state: GroupState::Drilling,
            reason: "quarterly drill".into(),
            actor: "alice".into(),
        },
    )
    .unwrap();
    let down = Command::SiteDown {
        at_ms: 10,
        site: "hcm".into(),
    };
    let ev = apply(&mut s, &down).unwrap();
    assert!(ev.contains(&Event::SiteDown { site: "hcm".into() }));
    assert_eq!(s.group("vol").unwrap().state, GroupState::Degraded);
    assert_eq!(s.group("vol").unwrap().reason, "site hcm down");
    assert_eq!(s.group("db").unwrap().state, GroupState::Drilling);
    // Repeated detection is a no-op.
    let len = s.audit().len();
    assert_eq!(apply(&mut s, &down), Ok(vec![]));
    assert_eq!(s.audit().len(), len);
    // A heartbeat from the site brings it and the group back.
    apply(&mut s, &heartbeat(20, "r1", "hcm", vec![])).unwrap();
    assert_eq!(s.site("hcm").unwrap().status, SiteStatus::Up);
    assert_eq!(s.group("vol").unwrap().state, GroupState::Protected);
    assert_eq!(s.group("db").unwrap().state, GroupState::Drilling);
    let tail: Vec<_> = kinds(&s).into_iter().skip(len).collect();
    assert_eq!(tail, vec![AuditKind::SiteUp, AuditKind::GroupState]);
}

#[test]
fn rpo_ring_is_bounded_and_samples_are_audited() {
    let mut s = booted();
    for i in 0..(RPO_RING_CAPACITY as i64 + 10) {
        let ev = apply(
            &mut s,
            &Command::RpoSample {
                at_ms: i,
                group: "vol".into(),
                rpo_ms: if i == 0 { 9_000 } else { 100 },
            },
        )
        .unwrap();
        assert_eq!(
            ev[0],
            Event::RpoSampled {
                group: "vol".into(),
                rpo_ms: if i == 0 { 9_000 } else { 100 },
                over_target: i == 0,
            }
        );
    }
    let ring = &s.group("vol").unwrap().rpo_samples;
    assert_eq!(ring.len(), RPO_RING_CAPACITY);
    assert_eq!(ring.front().unwrap().at_ms, 10);
    assert_eq!(s.audit().len(), 1 + RPO_RING_CAPACITY + 10);
}

#[test]
fn record_refuses_internal_kinds_floats_and_unknown_groups() {
    let mut s = booted();
    let rec = |kind, group: Option<&str>, detail| Command::Record {
        at_ms: 5,
        actor: "runbook".into(),
        kind,
        group: group.map(str::to_string),
        detail,
    };
    assert_eq!(
        apply(&mut s, &rec(AuditKind::Promote, None, json!({}))),
        Err(Rejection::KindNotRecordable {
            kind: AuditKind::Promote
        })
    );
    assert_eq!(
        apply(&mut s, &rec(AuditKind::Verify, None, json!({"ratio": 0.5}))),
        Err(Rejection::DetailHasFloat)
    );
    assert!(matches!(
        apply(&mut s, &rec(AuditKind::Verify, Some("ghost"), json!({}))),
        Err(Rejection::UnknownGroup { .. })
    ));
    assert_eq!(s.audit().len(), 1);
    let ev = apply(
        &mut s,
        &rec(AuditKind::Verify, Some("vol"), json!({"root_match": true})),
    )
    .unwrap();
    assert_eq!(
        ev,
        vec![Event::Audited {
            index: 1,
            kind: AuditKind::Verify
        }]
    );
    assert_eq!(s.audit_range(1, 10)[0].detail["root_match"], json!(true));
}

#[test]
fn pause_and_resume_are_audited_and_refuse_repeats() {
    let mut s = booted();
    let pause = Command::PauseReplication {
        at_ms: 1,
        group: "vol".into(),
        actor: "bob".into(),
        reason: "maintenance".into(),
    };
    let resume = Command::ResumeReplication {
        at_ms: 2,
        group: "vol".into(),
        actor: "bob".into(),
        reason: "done".into(),
    };
    assert!(matches!(
        apply(&mut s, &resume),
        Err(Rejection::NotPaused { .. })
    ));
    apply(&mut s, &pause).unwrap();
    assert!(s.group("vol").unwrap().paused);
    assert!(matches!(
        apply(&mut s, &pause),
        Err(Rejection::AlreadyPaused { .. })
    ));
    apply(&mut s, &resume).unwrap();
    assert!(!s.group("vol").unwrap().paused);
    assert_eq!(
        kinds(&s),
        vec![
            AuditKind::Bootstrap,
            AuditKind::Refused,
            AuditKind::ReplicationPaused,
            AuditKind::Refused,
            AuditKind::ReplicationResumed
        ]
    );
}

#[test]
fn leader_clock_behind_cannot_reopen_a_lease_window() {
    let mut s = booted();
    apply(&mut s, &acquire(10_000, "vol", "n1", "hanoi", 1)).unwrap();
    // A new leader stamps times far in the past: they are evaluated at the state's clock.
    assert!(matches!(
        apply(&mut s, &promote(0, "vol", "hcm", false)),
        Err(Rejection::LeaseStillLive { .. })
    ));
    let ev = apply(&mut s, &renew(5, "vol", "n1", "hanoi", 1)).unwrap();
    assert!(matches!(ev[0], Event::LeaseRenewed { expires_ms, .. } if expires_ms == 10_000 + TTL));
    assert_eq!(s.clock_ms(), 10_000);
}

#[test]
fn new_leases_refused_while_failing_over_or_switching_over() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    for (st, renew_ok) in [
        (GroupState::SwitchingOver, true),
        (GroupState::FailingOver, false),
    ] {
        apply(
            &mut s,
            &Command::SetGroupState {
                at_ms: 10,
                group: "vol".into(),
                state: st,
                reason: "runbook".into(),
                actor: "runbook".into(),
            },
        )
        .unwrap();
        assert!(matches!(
            apply(&mut s, &acquire(10, "vol", "n9", "hanoi", 1)),
            Err(Rejection::StateForbids { .. })
        ));
        assert_eq!(
            apply(&mut s, &renew(10, "vol", "n1", "hanoi", 1)).is_ok(),
            renew_ok,
            "{st:?}"
        );
    }
}

#[test]
fn oversized_fields_are_refused_without_audit() {
    let mut s = booted();
    let cmd = Command::Fence {
        at_ms: 1,
        group: "vol".into(),
        actor: "a".repeat(MAX_NAME_LEN + 1),
        reason: String::new(),
    };
    assert!(matches!(
        apply(&mut s, &cmd),
        Err(Rejection::FieldLength { ref field, .. }) if field == "actor"
    ));
    let cmd = Command::Record {
        at_ms: 1,
        actor: "a".into(),
        kind: AuditKind::Note,
        group: None,
        detail: json!("x".repeat(MAX_DETAIL_BYTES)),
    };
    assert!(matches!(
        apply(&mut s, &cmd),
        Err(Rejection::FieldLength { ref field, .. }) if field == "detail"
    ));
    assert_eq!(s.audit().len(), 1);
}

#[test]
fn snapshot_round_trips_byte_identical() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    apply(
        &mut s,
        &heartbeat(
            5,
            "n1",
            "hanoi",
            vec![progress("vol", Role::Primary, 1, 3, 2)],
        ),
    )
    .unwrap();
    apply(&mut s, &fence(10, "vol")).unwrap();
    let snap = s.snapshot();
    let back = State::restore(&snap).unwrap();
    assert_eq!(back, s);
    assert_eq!(back.snapshot(), snap);
}

#[test]
fn snapshot_format_is_golden() {
    let snap = State::new().snapshot();
    assert_eq!(
        String::from_utf8(snap).unwrap(),
        format!(
            "{{\"magic\":\"tandem-coordinator-state\",\"version\":1,\"checksum\":\"{}\",\"state\":{}}}",
            blake3::hash(EMPTY_STATE.as_bytes()).to_hex(),
            EMPTY_STATE
        )
    );
}

const EMPTY_STATE: &str = r#"{"settings":null,"clock_ms":0,"sites":{},"groups":{},"audit":[]}"#;

#[test]
fn corrupted_snapshot_is_refused() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    let snap = s.snapshot();
    let text = String::from_utf8(snap.clone()).unwrap();

    // One changed byte in the state body: checksum mismatch.
    let bad = text.replacen("\"hanoi\"", "\"hanoj\"", 1);
    assert!(matches!(
        State::restore(bad.as_bytes()),
        Err(Error::SnapshotChecksum { .. })
    ));
    // A rewritten audit record with a recomputed checksum: the chain names the record.
    let mut forged = s.clone();
    forged.audit = {
        let mut recs = s.audit().records().to_vec();
        recs[1].actor = "mallory".into();
        serde_json::from_value(to_json(&recs)).unwrap()
    };
    assert!(matches!(
        State::restore(&forged.snapshot()),
        Err(Error::Chain(crate::audit::ChainError::HashMismatch {
            index: 1
        }))
    ));
    // Truncated: not JSON.
    assert!(matches!(
        State::restore(&snap[..snap.len() / 2]),
        Err(Error::SnapshotDecode { .. })
    ));
    let v2 = text.replacen("\"version\":1", "\"version\":2", 1);
    assert!(matches!(
        State::restore(v2.as_bytes()),
        Err(Error::SnapshotVersion {
            found: 2,
            supported: 1
        })
    ));
    let other = text.replacen("tandem-coordinator-state", "something-else", 1);
    assert!(matches!(
        State::restore(other.as_bytes()),
        Err(Error::SnapshotMagic { .. })
    ));
}

#[test]
fn command_json_names_are_stable() {
    let cmd = promote(7, "vol", "hcm", true);
    assert_eq!(
        serde_json::to_string(&cmd).unwrap(),
        r#"{"op":"promote","at_ms":7,"group":"vol","to_site":"hcm","actor":"alice","reason":"drill","planned":true}"#
    );
    let back: Command = serde_json::from_str(
        r#"{"op":"set_group_state","at_ms":1,"group":"vol","state":"failing-over","reason":"r","actor":"a"}"#,
    )
    .unwrap();
    assert!(matches!(
        back,
        Command::SetGroupState {
            state: GroupState::FailingOver,
            ..
        }
    ));
    let hb = heartbeat(
        1,
        "n1",
        "hanoi",
        vec![progress("vol", Role::Replica, 2, 3, 4)],
    );
    let text = serde_json::to_string(&hb).unwrap();
    assert!(text.starts_with(r#"{"op":"heartbeat","#), "{text}");
    assert!(text.contains(r#""role":"replica","epoch":2"#), "{text}");
    assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), hb);
    let r = Rejection::WrongEpoch {
        group: "vol".into(),
        given: Epoch(1),
        current: Epoch(2),
    };
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"code":"wrong_epoch","group":"vol","given":1,"current":2}"#
    );
}

#[test]
fn audit_range_pages_the_chain() {
    let mut s = booted();
    for i in 0..5 {
        apply(
            &mut s,
            &Command::Record {
                at_ms: i,
                actor: "a".into(),
                kind: AuditKind::Note,
                group: None,
                detail: json!(i),
            },
        )
        .unwrap();
    }
    let page = s.audit_range(2, 2);
    assert_eq!(page.iter().map(|r| r.index).collect::<Vec<_>>(), vec![2, 3]);
    assert!(s.audit_range(6, 2).is_empty());
}

// ---- property tests over random command sequences ----

const SITES: [&str; 4] = ["hanoi", "hcm", "w", "mars"];
const GROUPS: [&str; 3] = ["vol", "db", "ghost"];
const NODES: [&str; 4] = ["n1", "n2", "r1", "r2"];
const STATES: [GroupState; 7] = [
    GroupState::Protected,
    GroupState::Degraded,
    GroupState::FailingOver,
    GroupState::FailedOver,
    GroupState::Drilling,
    GroupState::Resyncing,
    GroupState::SwitchingOver,
];

#[derive(Debug, Clone)]
enum SitePick {
    Primary,
    Replica,
    Fixed(usize),
}

#[derive(Debug, Clone)]
enum EpochPick {
    Current,
    Lease,
    Fixed(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Heartbeat(usize, SitePick, usize, bool, EpochPick, u64, u64),
    Acquire(usize, usize, SitePick, EpochPick),
    Renew(usize, usize, SitePick, EpochPick),
    Release(usize, usize, EpochPick),
    Fence(usize),
    Promote(usize, SitePick, bool),
    SetState(usize, usize),
    Pause(usize),
    Resume(usize),
    SiteDown(usize),
    SiteUp(usize),
    Rpo(usize, u64),
    Record(Option<usize>, u64),
    Rebootstrap(bool),
    Run(usize, bool),
}

fn site_pick() -> impl Strategy<Value = SitePick> {
    prop_oneof![
        4 => Just(SitePick::Primary),
        2 => Just(SitePick::Replica),
        1 => (0..SITES.len()).prop_map(SitePick::Fixed),
    ]
}

fn epoch_pick() -> impl Strategy<Value = EpochPick> {
    prop_oneof![
        5 => Just(EpochPick::Current),
        2 => Just(EpochPick::Lease),
        1 => (0u64..6).prop_map(EpochPick::Fixed),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let g = 0..GROUPS.len();
    let n = 0..NODES.len();
    prop_oneof![
        3 => (n.clone(), site_pick(), g.clone(), any::<bool>(), epoch_pick(), 0u64..50, 0u64..50)
            .prop_map(|(a, b, c, d, e, f, h)| Op::Heartbeat(a, b, c, d, e, f, h)),
        6 => (g.clone(), n.clone(), site_pick(), epoch_pick())
            .prop_map(|(a, b, c, d)| Op::Acquire(a, b, c, d)),
        5 => (g.clone(), n.clone(), site_pick(), epoch_pick())
            .prop_map(|(a, b, c, d)| Op::Renew(a, b, c, d)),
        2 => (g.clone(), n.clone(), epoch_pick()).prop_map(|(a, b, c)| Op::Release(a, b, c)),
        2 => g.clone().prop_map(Op::Fence),
        4 => (g.clone(), site_pick(), any::<bool>()).prop_map(|(a, b, c)| Op::Promote(a, b, c)),
        2 => (g.clone(), 0..STATES.len()).prop_map(|(a, b)| Op::SetState(a, b)),
        1 => g.clone().prop_map(Op::Pause),
        1 => g.clone().prop_map(Op::Resume),
        1 => (0..SITES.len()).prop_map(Op::SiteDown),
        1 => (0..SITES.len()).prop_map(Op::SiteUp),
        1 => (g.clone(), 0u64..10_000).prop_map(|(a, b)| Op::Rpo(a, b)),
        1 => (proptest::option::of(g.clone()), 0u64..100).prop_map(|(a, b)| Op::Record(a, b)),
        1 => any::<bool>().prop_map(Op::Rebootstrap),
        3 => (g, any::<bool>()).prop_map(|(a, b)| Op::Run(a, b)),
    ]
}

fn resolve_site(s: &State, group: &str, pick: &SitePick) -> String {
    let g = s.group(group);
    match pick {
        SitePick::Primary => g.map_or("hanoi", |g| g.primary_site.as_str()).to_string(),
        SitePick::Replica => g.map_or("hcm", |g| g.replica_site.as_str()).to_string(),
        SitePick::Fixed(i) => SITES[*i].to_string(),
    }
}

fn resolve_epoch(s: &State, group: &str, pick: &EpochPick) -> Epoch {
    let g = s.group(group);
    match pick {
        EpochPick::Current => g.map_or(Epoch(1), |g| g.epoch),
        EpochPick::Lease => g
            .and_then(|g| g.lease.as_ref())
            .map_or(Epoch(0), |l| l.epoch),
        EpochPick::Fixed(e) => Epoch(*e),
    }
}

fn resolve(s: &State, at_ms: i64, op: &Op) -> Command {
    let actor = "op".to_string();
    match op {
        Op::Heartbeat(n, site, g, primary, e, c, d) => {
            let group = GROUPS[*g];
            Command::Heartbeat {
                at_ms,
                node: NODES[*n].into(),
                site: resolve_site(s, group, site),
                progress: vec![GroupProgress {
                    group: group.into(),
                    role: if *primary {
                        Role::Primary
                    } else {
                        Role::Replica
                    },
                    epoch: resolve_epoch(s, group, e),
                    last_captured_seq: Seq(*c),
                    durable_seq: Seq(*d),
                    rpo_ms: *c,
                    bytes_pending: *d,
                }],
            }
        }
        Op::Acquire(g, n, site, e) | Op::Renew(g, n, site, e) => {
            let group = GROUPS[*g];
            let (site, epoch) = (resolve_site(s, group, site), resolve_epoch(s, group, e));
            if matches!(op, Op::Acquire(..)) {
                Command::AcquireLease {
                    at_ms,
                    group: group.into(),
                    node: NODES[*n].into(),
                    site,
                    epoch,
                }
            } else {
                Command::RenewLease {
                    at_ms,
                    group: group.into(),
                    node: NODES[*n].into(),
                    site,
                    epoch,
                }
            }
        }
        Op::Release(g, n, e) => Command::ReleaseLease {
            at_ms,
            group: GROUPS[*g].into(),
            node: NODES[*n].into(),
            epoch: resolve_epoch(s, GROUPS[*g], e),
        },
        Op::Fence(g) => Command::Fence {
            at_ms,
            group: GROUPS[*g].into(),
            actor,
            reason: "test".into(),
        },
        Op::Promote(g, site, planned) => Command::Promote {
            at_ms,
            group: GROUPS[*g].into(),
            to_site: resolve_site(s, GROUPS[*g], site),
            actor,
            reason: "test".into(),
            planned: *planned,
        },
        Op::SetState(g, st) => Command::SetGroupState {
            at_ms,
            group: GROUPS[*g].into(),
            state: STATES[*st],
            reason: "test".into(),
            actor,
        },
        Op::Pause(g) => Command::PauseReplication {
            at_ms,
            group: GROUPS[*g].into(),
            actor,
            reason: "test".into(),
        },
        Op::Resume(g) => Command::ResumeReplication {
            at_ms,
            group: GROUPS[*g].into(),
            actor,
            reason: "test".into(),
        },
        Op::SiteDown(i) => Command::SiteDown {
            at_ms,
            site: SITES[*i].into(),
        },
        Op::SiteUp(i) => Command::SiteUp {
            at_ms,
            site: SITES[*i].into(),
        },
        Op::Rpo(g, rpo) => Command::RpoSample {
            at_ms,
            group: GROUPS[*g].into(),
            rpo_ms: *rpo,
        },
        Op::Run(g, ok) => run_op(s, at_ms, GROUPS[*g], *ok),
        Op::Record(g, n) => Command::Record {
            at_ms,
            actor,
            kind: AuditKind::RunbookStep,
            group: g.map(|g| GROUPS[g].to_string()),
            detail: json!({"step": n, "text": "ok"}),
        },
        Op::Rebootstrap(extra) => {
            let Command::Bootstrap {
                actor,
                settings,
                sites,
                mut groups,
                ..
            } = bootstrap_cmd(at_ms)
            else {
                unreachable!()
            };
            if *extra {
                groups.push(gspec("pg", "hcm", "hanoi"));
            }
            Command::Bootstrap {
                at_ms,
                actor,
                settings,
                sites,
                groups,
            }
        }
    }
}

/// A lease as the test sees it from events alone (independent of the state's lease field).
#[derive(Debug)]
struct SeenLease {
    holder: String,
    epoch: Epoch,
    expires: i64,
    released_at: Option<i64>,
}

impl SeenLease {
    /// Whether its holder may still believe in it at `t` (drift margin included).
    fn may_be_live(&self, t: i64) -> bool {
        match self.released_at {
            Some(r) => t < r,
            None => t < self.expires + DRIFT,
        }
    }

    fn live(&self, t: i64) -> bool {
        self.released_at.is_none_or(|r| t < r) && t < self.expires
    }
}

fn check_step(
    seen: &mut BTreeMap<String, Vec<SeenLease>>,
    before: &State,
    after: &State,
    now: i64,
    result: &Result<Vec<Event>, Rejection>,
) -> Result<(), TestCaseError> {
    // Epochs only grow; groups are never removed.
    for (name, g) in before.groups() {
        let a = after.group(name);
        prop_assert!(a.is_some(), "group {name} vanished");
        prop_assert!(a.unwrap().epoch >= g.epoch, "epoch of {name} went down");
    }
    prop_assert_eq!(verify_chain(after.audit().records()), Ok(()));
    let events = match result {
        Err(_) => {
            // A refusal changes nothing but may append one refused record.
            prop_assert_eq!(without_audit(after), without_audit(before));
            let (b, a) = (before.audit().len(), after.audit().len());
            prop_assert!(a == b || a == b + 1);
            prop_assert_eq!(&after.audit().records()[..b], before.audit().records());
            return Ok(());
        }
        Ok(ev) => ev,
    };
    for e in events {
        match e {
            Event::LeaseGranted {
                group,
                node,
                epoch,
                expires_ms,
                ..
            } => {
                let list = seen.entry(group.clone()).or_default();
                for l in list.iter().filter(|l| &l.holder != node) {
                    prop_assert!(
                        !l.may_be_live(now),
                        "lease to {node} at {now} while {l:?} may be live"
                    );
                }
                prop_assert_eq!(*epoch, after.group(group).unwrap().epoch);
                list.push(SeenLease {
                    holder: node.clone(),
                    epoch: *epoch,
                    expires: *expires_ms,
                    released_at: None,
                });
            }
            Event::LeaseRenewed {
                group,
                node,
                expires_ms,
                ..
            } => {
                let l = seen
                    .get_mut(group)
                    .and_then(|v| v.iter_mut().rev().find(|l| &l.holder == node));
                prop_assert!(l.is_some(), "renewal of a lease never granted");
                let l = l.unwrap();
                prop_assert!(l.released_at.is_none(), "renewal of a released lease");
                prop_assert!(now < l.expires, "renewal after expiry");
                l.expires = l.expires.max(*expires_ms);
            }
            Event::LeaseReleased { group, node, .. } => {
                for l in seen.entry(group.clone()).or_default() {
                    if &l.holder == node && l.released_at.is_none() {
                        l.released_at = Some(now);
                    }
                }
            }
            Event::Promoted { group, epoch, .. } => {
                for l in seen.get(group).into_iter().flatten() {
                    prop_assert!(
                        !l.may_be_live(now),
                        "promotion at {now} while {l:?} may be live"
                    );
                    prop_assert!(*epoch > l.epoch, "promotion epoch not above {l:?}");
                }
            }
            _ => {}
        }
    }
    for (group, list) in seen.iter() {
        let holders: BTreeSet<&str> = list
            .iter()
            .filter(|l| l.live(now))
            .map(|l| l.holder.as_str())
            .collect();
        prop_assert!(
            holders.len() <= 1,
            "{group}: live holders {holders:?} at {now}"
        );
    }
    Ok(())
}

// ---- runbook runs ----

fn drill_plan(s: &State, group: &str) -> Plan {
    let (primary, replica, epoch) = s
        .group(group)
        .map_or(("hanoi".to_string(), "hcm".to_string(), Epoch(1)), |g| {
            (g.primary_site.clone(), g.replica_site.clone(), g.epoch)
        });
    let rb = tandem_runbooks::library::stock(RunbookKind::Drill)
        .unwrap()
        .unwrap();
    tandem_runbooks::plan(
        &rb,
        &tandem_runbooks::PlanContext {
            group: group.into(),
            primary_site: primary,
            replica_site: replica,
            mode: tandem_core::config::Mode::Async,
            epoch,
            params: BTreeMap::new(),
        },
    )
    .unwrap()
}

fn failover_run_cmd(s: &State, at_ms: i64, run_id: &str, by: &str) -> Command {
    let g = s.group("vol").unwrap();
    let rb = tandem_runbooks::library::stock(RunbookKind::Failover)
        .unwrap()
        .unwrap();
    let plan = tandem_runbooks::plan(
        &rb,
        &tandem_runbooks::PlanContext {
            group: "vol".into(),
            primary_site: g.primary_site.clone(),
            replica_site: g.replica_site.clone(),
            mode: tandem_core::config::Mode::Sync,
            epoch: g.epoch,
            params: BTreeMap::new(),
        },
    )
    .unwrap();
    Command::StartRun {
        at_ms,
        run_id: run_id.into(),
        group: "vol".into(),
        kind: RunbookKind::Failover,
        runbook_hash: "h".into(),
        plan,
        started_by: by.into(),
        rto_from_ms: None,
    }
}

fn degrade(at_ms: i64, node: &str, site: &str, epoch: u64, on: bool) -> Command {
    Command::SyncDegraded {
        at_ms,
        group: "vol".into(),
        node: node.into(),
        site: site.into(),
        epoch: Epoch(epoch),
        on,
    }
}

/// `vol` in sync mode, its lease held by `hanoi-rep` from t=10.
fn sync_booted() -> State {
    let mut s = State::new();
    let mut vol = gspec("vol", "hanoi", "hcm");
    vol.mode = Mode::Sync;
    apply(
        &mut s,
        &Command::Bootstrap {
            at_ms: 0,
            actor: "ops".into(),
            settings: settings(),
            sites: vec![site("hanoi", false), site("hcm", false), site("w", true)],
            groups: vec![vol, gspec("db", "hcm", "hanoi")],
        },
    )
    .unwrap();
    apply(&mut s, &acquire(10, "vol", "hanoi-rep", "hanoi", 1)).unwrap();
    s
}

#[test]
fn sync_degradation_needs_the_live_lease_and_blocks_automatic_failover_only() {
    let mut s = sync_booted();
    // Only the lease holder, at the primary site, in the current epoch, of a sync group.
    let before = without_audit(&s);
    for bad in [
        degrade(20, "other-rep", "hanoi", 1, true),
        degrade(20, "hcm-rep", "hcm", 1, true),
        degrade(20, "hanoi-rep", "hanoi", 2, true),
    ] {
        assert!(apply(&mut s, &bad).is_err(), "{bad:?}");
    }
    let async_group = Command::SyncDegraded {
        at_ms: 20,
        group: "db".into(),
        node: "hcm-rep".into(),
        site: "hcm".into(),
        epoch: Epoch(1),
        on: true,
    };
    assert!(apply(&mut s, &async_group).is_err());
    assert_eq!(without_audit(&s), before, "refusals change nothing");
    assert_eq!(s.group("vol").unwrap().sync_degraded_since, None);

    apply(&mut s, &degrade(30, "hanoi-rep", "hanoi", 1, true)).unwrap();
    assert_eq!(s.group("vol").unwrap().sync_degraded_since, Some(30));
    let n = s.audit().records().len();
    apply(&mut s, &degrade(40, "hanoi-rep", "hanoi", 1, true)).unwrap();
    assert_eq!(s.group("vol").unwrap().sync_degraded_since, Some(30));
    assert_eq!(s.audit().records().len(), n, "a repeat is not audited");
    assert_eq!(kinds(&s).last(), Some(&AuditKind::SyncDegraded));

    // The coordinators may not fail over on their own now; an operator may.
    let err = {
        let c = failover_run_cmd(&s, 50, "auto-1", COORDINATOR_ACTOR);
        apply(&mut s, &c)
    };
    assert!(
        matches!(err, Err(Rejection::SyncDegraded { since_ms: 30, .. })),
        "{err:?}"
    );
    assert!(!s.runs().contains_key("auto-1"));
    {
        let c = failover_run_cmd(&s, 60, "op-1", "alice");
        apply(&mut s, &c)
    }
    .unwrap();
    // While a failover runs, the primary may not start acknowledging alone.
    let mut t = s.clone();
    apply(&mut t, &degrade(70, "hanoi-rep", "hanoi", 1, false)).unwrap();
    let refused = apply(&mut t, &degrade(80, "hanoi-rep", "hanoi", 1, true));
    assert!(
        matches!(refused, Err(Rejection::RunUnderWay { .. })),
        "{refused:?}"
    );
}

#[test]
fn a_failover_that_ends_without_promoting_leaves_the_group_degraded_not_failing_over() {
    for fail in [true, false] {
        let mut s = sync_booted();
        let c = failover_run_cmd(&s, 20, "f-1", COORDINATOR_ACTOR);
        apply(&mut s, &c).unwrap();
        let failing = Command::SetGroupState {
            at_ms: 30,
            group: "vol".into(),
            state: GroupState::FailingOver,
            reason: "run f-1: fencing".into(),
            actor: COORDINATOR_ACTOR.into(),
        };
        apply(&mut s, &failing).unwrap();
        apply(&mut s, &fence(40, "vol")).unwrap();
        let mut t = 50;
        while s.run("f-1").is_some_and(|r| r.is_running()) {
            let c = if fail {
                run_op(&s, t, "vol", false)
            } else {
                Command::RunEvent {
                    at_ms: t,
                    run_id: "f-1".into(),
                    event: RunEvent::Cancelled {
                        by: "alice".into(),
                        at_ms: 0,
                    },
                }
            };
            let _ = apply(&mut s, &c);
            t += 60_000;
            assert!(t < 60_000_000, "the run never ended");
        }
        let g = s.group("vol").unwrap();
        assert_eq!(g.state, GroupState::Degraded, "{}", g.reason);
        assert!(g.reason.contains("before a promotion"), "{}", g.reason);
        assert_eq!((g.primary_site.as_str(), g.epoch), ("hanoi", Epoch(2)));
        // The primary may take a lease in the new epoch again.
        let now = t + 10_000;
        apply(&mut s, &acquire(now, "vol", "hanoi-rep", "hanoi", 2)).unwrap();
    }
}

#[test]
fn sync_degradation_clears_on_catch_up_and_on_promotion_and_dies_with_the_lease() {
    let mut s = sync_booted();
    apply(&mut s, &degrade(30, "hanoi-rep", "hanoi", 1, true)).unwrap();
    apply(&mut s, &degrade(40, "hanoi-rep", "hanoi", 1, false)).unwrap();
    assert_eq!(s.group("vol").unwrap().sync_degraded_since, None);
    {
        let c = failover_run_cmd(&s, 50, "auto-1", COORDINATOR_ACTOR);
        apply(&mut s, &c)
    }
    .unwrap();

    let mut s = sync_booted();
    // After the lease expired nobody can start acknowledging alone; clearing still works.
    let late = apply(&mut s, &degrade(10 + TTL, "hanoi-rep", "hanoi", 1, true));
    assert!(
        matches!(late, Err(Rejection::LeaseExpired { .. })),
        "{late:?}"
    );
    apply(&mut s, &degrade(20, "hanoi-rep", "hanoi", 1, true)).unwrap();
    apply(&mut s, &degrade(10 + TTL, "hanoi-rep", "hanoi", 1, false)).unwrap();
    apply(&mut s, &degrade(20 + TTL, "hanoi-rep", "hanoi", 1, false)).unwrap();

    // A promotion (the operator accepted the loss) starts the new epoch undegraded.
    let mut s = sync_booted();
    apply(&mut s, &degrade(20, "hanoi-rep", "hanoi", 1, true)).unwrap();
    apply(&mut s, &promote(10 + TTL + DRIFT, "vol", "hcm", false)).unwrap();
    assert_eq!(s.group("vol").unwrap().sync_degraded_since, None);
    let stale = apply(&mut s, &degrade(2_000, "hanoi-rep", "hanoi", 1, false));
    assert!(stale.is_err(), "the old primary's epoch is over: {stale:?}");
}

fn start_run_cmd(s: &State, at_ms: i64, run_id: &str, group: &str) -> Command {
    Command::StartRun {
        at_ms,
        run_id: run_id.into(),
        group: group.into(),
        kind: RunbookKind::Drill,
        runbook_hash: "h".into(),
        plan: drill_plan(s, group),
        started_by: "alice".into(),
        rto_from_ms: None,
    }
}

/// The command that moves the group's unfinished run one event on (or starts one).
fn run_op(s: &State, at_ms: i64, group: &str, ok: bool) -> Command {
    let running = s
        .runs()
        .iter()
        .find(|(_, r)| r.group == group && r.is_running());
    let Some((id, run)) = running else {
        return start_run_cmd(s, at_ms, &format!("{group}-{at_ms}"), group);
    };
    let event = match rb::next_action(&run.state) {
        rb::NextAction::Start { step, .. } | rb::NextAction::RetryAt { step, .. } => {
            RunEvent::StepStarted { step, at_ms: 0 }
        }
        rb::NextAction::InFlight { step } if ok => RunEvent::StepSucceeded {
            step,
            at_ms: 0,
            output: "out".into(),
        },
        rb::NextAction::InFlight { step } => RunEvent::StepFailed {
            step,
            at_ms: 0,
            error: "boom".into(),
            output: String::new(),
        },
        rb::NextAction::AwaitApproval { step, .. } => RunEvent::Approved {
            step,
            by: "bob".into(),
            at_ms: 0,
        },
        rb::NextAction::Done(_) => RunEvent::LeaderChanged { at_ms: 0 },
    };
    Command::RunEvent {
        at_ms,
        run_id: id.clone(),
        event,
    }
}

fn kinds_since(s: &State, from: usize) -> Vec<AuditKind> {
    s.audit_range(from as u64, 10_000)
        .iter()
        .map(|r| r.kind)
        .collect()
}

/// Bootstrap with sites hanoi and hcm in VN, sg in SG; group `vol` may live only in VN.
fn residency_bootstrap(at_ms: i64, jurisdictions: [&str; 3]) -> Command {
    let mut sites = vec![site("hanoi", false), site("hcm", false), site("sg", false)];
    for (spec, j) in sites.iter_mut().zip(jurisdictions) {
        spec.jurisdiction = Some(j.into());
    }
    let mut vol = gspec("vol", "hanoi", "hcm");
    vol.allowed_jurisdictions = vec!["VN".into()];
    Command::Bootstrap {
        at_ms,
        actor: "ops".into(),
        settings: settings(),
        sites,
        groups: vec![vol],
    }
}

fn booted_with_residency() -> State {
    let mut s = State::new();
    apply(&mut s, &residency_bootstrap(0, ["VN", "VN", "SG"])).unwrap();
    s
}

#[test]
fn bootstrap_refuses_a_group_placed_outside_its_jurisdictions() {
    for (replica_j, ok) in [(Some("SG"), false), (None, false), (Some("VN"), true)] {
        let mut s = State::new();
        let mut sites = vec![site("hanoi", false), site("sg", false)];
        sites[0].jurisdiction = Some("VN".into());
        sites[1].jurisdiction = replica_j.map(String::from);
        let mut g = gspec("vol", "hanoi", "sg");
        g.allowed_jurisdictions = vec!["VN".into()];
        let cmd = Command::Bootstrap {
            at_ms: 0,
            actor: "ops".into(),
            settings: settings(),
            sites,
            groups: vec![g],
        };
        let r = apply(&mut s, &cmd);
        assert_eq!(r.is_ok(), ok, "{replica_j:?}: {r:?}");
        if !ok {
            assert!(
                matches!(&r, Err(Rejection::Residency { message, .. }) if message.starts_with("replica site \"sg\"")),
                "{replica_j:?}: {r:?}"
            );
            assert!(s.group("vol").is_none(), "a refused bootstrap adds nothing");
        }
    }
}

#[test]
fn a_rebootstrap_may_not_change_jurisdictions() {
    let mut s = booted_with_residency();
    assert_eq!(
        apply(&mut s, &residency_bootstrap(1, ["VN", "VN", "SG"])),
        Ok(vec![]),
        "the same topology again is a no-op"
    );
    let r = apply(&mut s, &residency_bootstrap(2, ["VN", "SG", "SG"]));
    assert!(
        matches!(&r, Err(Rejection::BootstrapConflict { field }) if field == "site hcm jurisdiction"),
        "{r:?}"
    );
    assert_eq!(
        s.site("hcm").and_then(|x| x.jurisdiction.as_deref()),
        Some("VN")
    );
}

#[test]
fn a_drill_copy_outside_the_jurisdictions_is_refused_and_audited() {
    let mut s = booted_with_residency();
    let mut cmd = start_run_cmd(&s, 1_000, "r1", "vol");
    if let Command::StartRun { plan, .. } = &mut cmd {
        let step = plan
            .steps
            .iter_mut()
            .find(|p| matches!(p.action, Action::Snapshot { .. }))
            .unwrap();
        step.site = ResolvedSite::Site("sg".into());
    }
    let before = s.audit().len();
    let r = apply(&mut s, &cmd);
    assert!(
        matches!(&r, Err(Rejection::Residency { group, message })
            if group == "vol" && message == "step snapshot (drill copy) site \"sg\" is in SG, allowed: VN"),
        "{r:?}"
    );
    assert!(s.run("r1").is_none(), "nothing runs");
    assert_eq!(kinds_since(&s, before), vec![AuditKind::Refused]);
    let rec = s.audit().records().last().unwrap();
    assert_eq!(rec.actor, "alice");
    assert_eq!(rec.detail["rejection"]["code"], "residency");
    // The same drill at the replica site (VN) runs.
    let ok = start_run_cmd(&s, 2_000, "r2", "vol");
    apply(&mut s, &ok).unwrap();
    assert!(s.run("r2").is_some());
}

#[test]
fn refusals_of_runs_for_other_reasons_stay_unaudited() {
    let mut s = booted_with_residency();
    let mut cmd = start_run_cmd(&s, 1_000, "r1", "vol");
    if let Command::StartRun { plan, .. } = &mut cmd {
        plan.steps.clear();
    }
    let before = s.audit().len();
    assert!(apply(&mut s, &cmd).is_err());
    assert_eq!(s.audit().len(), before);
}

#[test]
fn a_run_goes_to_its_end_and_records_rto_at_the_check_step() {
    let mut s = booted();
    {
        let c = start_run_cmd(&s, 1_000, "r1", "vol");
        apply(&mut s, &c)
    }
    .unwrap();
    assert_eq!(kinds_since(&s, 1), vec![AuditKind::Drill]);
    let mut at = 1_000;
    while s.run("r1").unwrap().is_running() {
        at += 100;
        {
            let c = run_op(&s, at, "vol", true);
            apply(&mut s, &c)
        }
        .unwrap();
    }
    let run = s.run("r1").unwrap();
    assert_eq!(run.state.status, RunStatus::Succeeded);
    let check = run
        .state
        .plan
        .steps
        .iter()
        .position(|p| p.id == "ready")
        .unwrap();
    let check_end = run.state.steps[check].ended_ms.unwrap() as i64;
    assert_eq!(run.rto_ms, Some(check_end - 1_000));
    let last = s.audit().range(0, 10_000).last().unwrap().clone();
    assert_eq!(last.kind, AuditKind::Drill);
    assert_eq!(last.detail["phase"], "end");
    assert_eq!(last.detail["rto_ms"], json!(check_end - 1_000));
    let steps = s
        .audit()
        .range(0, 10_000)
        .iter()
        .filter(|r| r.kind == AuditKind::RunbookStep)
        .inspect(|r| assert_eq!(r.detail["run_id"], "r1"))
        .count();
    assert!(steps >= 2, "{steps} step records");
}

#[test]
fn a_second_run_of_a_group_is_refused_while_one_is_under_way() {
    let mut s = booted();
    {
        let c = start_run_cmd(&s, 1_000, "r1", "vol");
        apply(&mut s, &c)
    }
    .unwrap();
    let err = {
        let c = start_run_cmd(&s, 1_100, "r2", "vol");
        apply(&mut s, &c)
    }
    .unwrap_err();
    assert!(matches!(err, Rejection::RunUnderWay { ref run_id, .. } if run_id == "r1"));
    let err = {
        let c = start_run_cmd(&s, 1_100, "r1", "db");
        apply(&mut s, &c)
    }
    .unwrap_err();
    assert!(matches!(err, Rejection::RunExists { .. }));
    {
        let c = start_run_cmd(&s, 1_100, "r3", "db");
        apply(&mut s, &c)
    }
    .unwrap();
}

#[test]
fn an_event_that_does_not_fit_the_run_is_refused_and_changes_nothing() {
    let mut s = booted();
    {
        let c = start_run_cmd(&s, 1_000, "r1", "vol");
        apply(&mut s, &c)
    }
    .unwrap();
    let before = s.clone();
    let cmd = Command::RunEvent {
        at_ms: 2_000,
        run_id: "r1".into(),
        event: RunEvent::StepSucceeded {
            step: 0,
            at_ms: 0,
            output: String::new(),
        },
    };
    let err = apply(&mut s, &cmd).unwrap_err();
    assert!(matches!(err, Rejection::RunEventRefused { .. }), "{err:?}");
    assert_eq!(s, before);
    let unknown = Command::RunEvent {
        at_ms: 2_000,
        run_id: "nope".into(),
        event: RunEvent::LeaderChanged { at_ms: 0 },
    };
    assert!(matches!(
        apply(&mut s, &unknown),
        Err(Rejection::UnknownRun { .. })
    ));
}

#[test]
fn approvals_are_audited_with_the_approver() {
    let mut s = booted();
    // A plan whose first step is an approve gate.
    let mut plan = drill_plan(&s, "vol");
    plan.steps[0].action = Action::Approve {
        prompt: "go?".into(),
    };
    let cmd = Command::StartRun {
        at_ms: 1_000,
        run_id: "r1".into(),
        group: "vol".into(),
        kind: RunbookKind::Custom,
        runbook_hash: "h".into(),
        plan,
        started_by: "alice".into(),
        rto_from_ms: Some(500),
    };
    apply(&mut s, &cmd).unwrap();
    assert_eq!(s.run("r1").unwrap().rto_from_ms, 500);
    {
        let c = run_op(&s, 1_100, "vol", true);
        apply(&mut s, &c)
    }
    .unwrap();
    let from = s.audit().len();
    {
        let c = run_op(&s, 1_200, "vol", true);
        apply(&mut s, &c)
    }
    .unwrap();
    let recs = s.audit_range(from as u64, 100);
    assert_eq!(recs[0].kind, AuditKind::Approval);
    assert_eq!(recs[0].actor, "bob");
    assert_eq!(recs[0].detail["approver"], "bob");
    assert_eq!(recs[0].detail["run_id"], "r1");
    assert_eq!(recs[1].kind, AuditKind::RunbookStep);
    assert_eq!(recs[1].detail["status"], "ok");
}

#[test]
fn evidence_shows_a_drill_run_with_its_steps_approval_and_rto() {
    let mut s = booted();
    let mut plan = drill_plan(&s, "vol");
    plan.steps[0].action = Action::Approve {
        prompt: "go?".into(),
    };
    let cmd = Command::StartRun {
        at_ms: 1_000,
        run_id: "r1".into(),
        group: "vol".into(),
        kind: RunbookKind::Drill,
        runbook_hash: "h".into(),
        plan,
        started_by: "alice".into(),
        rto_from_ms: None,
    };
    apply(&mut s, &cmd).unwrap();
    let mut at = 1_000;
    while s.run("r1").unwrap().is_running() {
        at += 100;
        let c = run_op(&s, at, "vol", true);
        apply(&mut s, &c).unwrap();
    }
    let rto = s.run("r1").unwrap().rto_ms.unwrap();
    let records = s.audit().range(0, 10_000).to_vec();
    let doc = crate::evidence::derive::assemble(&records, &BTreeMap::new());
    let run = doc
        .runs
        .iter()
        .find(|r| r.id == "r1")
        .expect("run r1 in evidence");
    assert_eq!(run.kind, crate::evidence::derive::RunKind::Drill);
    assert_eq!(run.rto_ms, Some(rto));
    assert_eq!(run.outcome.as_deref(), Some("ok"));
    assert!(
        run.steps.iter().any(|st| st.name == "snapshot"),
        "{:?}",
        run.steps
    );
    assert!(doc
        .approvals
        .iter()
        .any(|a| a.run_id.as_deref() == Some("r1")));
}

#[test]
fn runs_survive_snapshot_and_restore() {
    let mut s = booted();
    {
        let c = start_run_cmd(&s, 1_000, "r1", "vol");
        apply(&mut s, &c)
    }
    .unwrap();
    {
        let c = run_op(&s, 1_100, "vol", true);
        apply(&mut s, &c)
    }
    .unwrap();
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.run("r1").unwrap().state.steps[0].attempts, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_sequences_keep_lease_epoch_and_chain_invariants(
        steps in proptest::collection::vec((0i64..700, op()), 1..120)
    ) {
        let mut s = State::new();
        let mut cmds = vec![bootstrap_cmd(0)];
        apply(&mut s, &cmds[0]).unwrap();
        let mut results = Vec::new();
        let mut seen: BTreeMap<String, Vec<SeenLease>> = BTreeMap::new();
        let mut at = 0i64;
        for (dt, op) in &steps {
            at += dt;
            let cmd = resolve(&s, at, op);
            let before = s.clone();
            let r = apply(&mut s, &cmd);
            check_step(&mut seen, &before, &s, at, &r)?;
            results.push(r);
            cmds.push(cmd);
        }
        // Determinism: replaying the log on a fresh state gives the same outcomes and
        // byte-identical snapshots; a snapshot restores to the same state.
        let mut replay = State::new();
        let replayed: Vec<_> = cmds.iter().map(|c| apply(&mut replay, c)).collect();
        prop_assert_eq!(&replayed[1..], &results[..]);
        let snap = s.snapshot();
        prop_assert_eq!(replay.snapshot(), snap.clone());
        let restored = State::restore(&snap).unwrap();
        prop_assert_eq!(&restored, &s);
    }

    #[test]
    fn commands_survive_a_json_round_trip(steps in proptest::collection::vec((0i64..700, op()), 1..30)) {
        let s = booted();
        for (at, op) in &steps {
            let cmd = resolve(&s, *at, op);
            let text = serde_json::to_vec(&cmd).unwrap();
            prop_assert_eq!(serde_json::from_slice::<Command>(&text).unwrap(), cmd);
        }
    }
}
