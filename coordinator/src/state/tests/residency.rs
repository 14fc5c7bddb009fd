//! Residency: bootstraps and runs that would place data outside the allowed jurisdictions.

use super::*;

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
