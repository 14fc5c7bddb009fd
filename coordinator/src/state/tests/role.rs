//! Fence, promotion (lease window, sites, catch-up, loss window) and pause/resume.

use super::*;

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
    // n2 is not where the group's data lives at hanoi (n1 first held it there).
    assert!(matches!(
        apply(&mut s, &acquire(150, "vol", "n2", "hanoi", 2)),
        Err(Rejection::PlacedElsewhere { .. })
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
