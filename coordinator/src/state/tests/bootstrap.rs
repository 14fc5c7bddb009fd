//! Bootstrap: topology, idempotence, conflicts, refusals before bootstrap.

use super::*;

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
