//! A sync group's degradation and how it gates automatic failovers.

use super::*;

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
        schedule: None,
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
            host: None,
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
fn a_failover_that_ends_without_promoting_while_the_primary_site_is_down_ends_when_it_returns() {
    let mut s = sync_booted();
    let protect = Command::SetGroupState {
        at_ms: 5,
        group: "vol".into(),
        state: GroupState::Protected,
        reason: "replica in sync".into(),
        actor: "hcm-rep".into(),
        host: None,
    };
    apply(&mut s, &protect).unwrap();
    // 1. The primary site goes down: degraded by it; the automatic failover starts.
    apply(
        &mut s,
        &Command::SiteDown {
            at_ms: 10,
            site: "hanoi".into(),
        },
    )
    .unwrap();
    assert_eq!(s.group("vol").unwrap().state, GroupState::Degraded);
    let c = failover_run_cmd(&s, 20, "f-1", COORDINATOR_ACTOR);
    apply(&mut s, &c).unwrap();
    let failing = Command::SetGroupState {
        at_ms: 30,
        group: "vol".into(),
        state: GroupState::FailingOver,
        reason: "run f-1: fencing".into(),
        actor: COORDINATOR_ACTOR.into(),
        host: None,
    };
    apply(&mut s, &failing).unwrap();
    apply(&mut s, &fence(40, "vol")).unwrap();
    // 2. The run fails before a promotion (the replica site went too, say).
    let mut t = 50;
    while s.run("f-1").is_some_and(|r| r.is_running()) {
        let c = run_op(&s, t, "vol", false);
        let _ = apply(&mut s, &c);
        t += 60_000;
        assert!(t < 60_000_000, "the run never ended");
    }
    let g = s.group("vol").unwrap();
    assert_eq!(g.state, GroupState::Degraded, "{}", g.reason);
    assert_eq!(g.degraded_by_site.as_deref(), Some("hanoi"), "{}", g.reason);
    // 3. The primary site comes back: the group is protected again, as after any site loss.
    apply(
        &mut s,
        &Command::SiteUp {
            at_ms: t,
            site: "hanoi".into(),
        },
    )
    .unwrap();
    assert_eq!(s.group("vol").unwrap().state, GroupState::Protected);
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
