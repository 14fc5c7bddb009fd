//! Leases: grants at the primary site, the drift window, renewals, refusals and the clock.

use super::*;

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
    // A state from before hosts were recorded: only the drift rule stands between n1 and n2.
    s.groups.get_mut("vol").unwrap().hosts.clear();
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
fn a_heartbeat_renews_the_leases_it_names_as_renew_lease_would() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    let with = |at: i64, renew: Vec<crate::state::LeaseRenewal>| Command::Heartbeat {
        at_ms: at,
        node: "n1".into(),
        site: "hanoi".into(),
        progress: vec![progress("vol", Role::Primary, 1, 5, 5)],
        renew,
    };
    let r = |g: &str, e: u64| crate::state::LeaseRenewal {
        group: g.into(),
        epoch: Epoch(e),
    };
    let ev = apply(&mut s, &with(600, vec![r("vol", 1)])).unwrap();
    assert!(ev.contains(&Event::LeaseRenewed {
        group: "vol".into(),
        node: "n1".into(),
        epoch: Epoch(1),
        expires_ms: 600 + TTL,
    }));
    assert!(s.lease_live("vol", 600 + TTL - 1));
    // A renewal the state refuses (another epoch, an unknown group) renews nothing and does
    // not refuse the heartbeat; the progress is still recorded.
    let before = s.group("vol").unwrap().lease.clone();
    let ev = apply(&mut s, &with(700, vec![r("vol", 2), r("nope", 1)])).unwrap();
    assert!(!ev.iter().any(|e| matches!(e, Event::LeaseRenewed { .. })));
    assert_eq!(s.group("vol").unwrap().lease, before);
    // An expired lease is not brought back by a heartbeat either.
    let ev = apply(&mut s, &with(600 + TTL, vec![r("vol", 1)])).unwrap();
    assert!(!ev.iter().any(|e| matches!(e, Event::LeaseRenewed { .. })));
    assert!(!s.lease_live("vol", 600 + TTL));
    // Renewals are not audited (the first heartbeat brings the site up, which is).
    assert_eq!(
        kinds(&s),
        vec![
            AuditKind::Bootstrap,
            AuditKind::LeaseGranted,
            AuditKind::SiteUp
        ]
    );
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
                host: None,
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
fn another_host_at_the_site_never_takes_a_group_whose_data_lives_elsewhere() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    assert_eq!(
        s.group("vol")
            .unwrap()
            .hosts
            .get("hanoi")
            .map(String::as_str),
        Some("n1")
    );
    // Not while n1's lease is live, nor ever after: n1 holds the data at hanoi.
    for at in [1, TTL + DRIFT, 10 * TTL] {
        assert_eq!(
            apply(&mut s, &acquire(at, "vol", "n2", "hanoi", 1)),
            Err(Rejection::PlacedElsewhere {
                group: "vol".into(),
                site: "hanoi".into(),
                node: "n2".into(),
                recorded: "n1".into(),
            })
        );
    }
    let msg = Rejection::PlacedElsewhere {
        group: "vol".into(),
        site: "hanoi".into(),
        node: "n2".into(),
        recorded: "n1".into(),
    }
    .to_string();
    assert!(msg.contains("hosts = { hanoi = \"n1\" }"), "{msg}");
    // The recorded host itself comes back after its lease ended.
    assert!(apply(&mut s, &acquire(10 * TTL, "vol", "n1", "hanoi", 1)).is_ok());
}

#[test]
fn a_replica_host_proven_in_sync_is_recorded_and_may_take_the_lease_after_a_failover() {
    let mut s = booted();
    apply(&mut s, &acquire(0, "vol", "n1", "hanoi", 1)).unwrap();
    // hcm's host was r1 (it held the lease there once) ...
    s.groups
        .get_mut("vol")
        .unwrap()
        .hosts
        .insert("hcm".into(), "r1".into());
    // ... then the group's replica moved to r2, which resynced and reported in sync.
    apply(
        &mut s,
        &Command::SetGroupState {
            at_ms: 10,
            group: "vol".into(),
            state: GroupState::Protected,
            reason: "replica in sync".into(),
            actor: "r2".into(),
            host: Some("r2".into()),
        },
    )
    .unwrap();
    let hosts = &s.group("vol").unwrap().hosts;
    assert_eq!(hosts.get("hcm").map(String::as_str), Some("r2"));
    assert_eq!(hosts.get("hanoi").map(String::as_str), Some("n1"));
    // A state change without a host records nothing.
    apply(
        &mut s,
        &Command::SetGroupState {
            at_ms: 20,
            group: "vol".into(),
            state: GroupState::Protected,
            reason: "operator".into(),
            actor: "ops".into(),
            host: None,
        },
    )
    .unwrap();
    assert_eq!(
        s.group("vol").unwrap().hosts.get("hcm").map(String::as_str),
        Some("r2")
    );
}
