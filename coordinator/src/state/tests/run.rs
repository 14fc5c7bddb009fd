//! Runbook runs: their end and RTO, one run per group, refused events, approvals, evidence.

use super::*;

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
        schedule: None,
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
        schedule: None,
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
