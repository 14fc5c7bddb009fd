//! Heartbeats and site up/down, with the group moves they cause.

use super::*;

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
                host: None,
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
            host: None,
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
