//! Corrective actions (add, assign, close) and the reviewer's sign-off of a run.

use super::*;

/// A booted state with a finished drill `r1` of `vol`.
fn with_finished_drill() -> State {
    let mut s = booted();
    let c = start_run_cmd(&s, 1_000, "r1", "vol");
    apply(&mut s, &c).unwrap();
    let mut at = 1_000;
    while s.run("r1").unwrap().is_running() {
        at += 100;
        let c = run_op(&s, at, "vol", true);
        apply(&mut s, &c).unwrap();
    }
    s
}

fn add(at_ms: i64, group: &str, run_id: &str, due: &str) -> Command {
    Command::AddAction {
        at_ms,
        actor: "alice".into(),
        group: group.into(),
        run_id: run_id.into(),
        title: "shorten the promote step".into(),
        owner: "bob".into(),
        due: due.into(),
    }
}

#[test]
fn an_action_is_added_assigned_and_closed_with_one_record_each() {
    let mut s = with_finished_drill();
    let from = s.audit().len();
    apply(&mut s, &add(10_000, "vol", "r1", "2027-01-31")).unwrap();
    apply(
        &mut s,
        &Command::AssignAction {
            at_ms: 10_100,
            actor: "alice".into(),
            id: "A-1".into(),
            owner: "carol".into(),
        },
    )
    .unwrap();
    apply(
        &mut s,
        &Command::CloseAction {
            at_ms: 10_200,
            actor: "carol".into(),
            id: "A-1".into(),
            note: "done in runbook v2".into(),
        },
    )
    .unwrap();
    let recs = s.audit_range(from as u64, 100);
    let ops: Vec<_> = recs
        .iter()
        .map(|r| (r.kind, r.actor.as_str(), r.detail["op"].as_str().unwrap()))
        .collect();
    assert_eq!(
        ops,
        vec![
            (AuditKind::Action, "alice", "add"),
            (AuditKind::Action, "alice", "assign"),
            (AuditKind::Action, "carol", "close"),
        ]
    );
    assert_eq!(recs[1].detail["previous_owner"], "bob");
    let a = &s.actions()["A-1"];
    assert_eq!(a.owner, "carol");
    assert_eq!(a.closed.as_ref().unwrap().at_ms, 10_200);
    assert_eq!(a.due, "2027-01-31");
}

#[test]
fn actions_are_refused_for_bad_dates_other_groups_unknown_runs_and_once_closed() {
    let mut s = with_finished_drill();
    for (i, (cmd, want)) in [
        (add(10_000, "vol", "r1", "2027-02-30"), "not a date"),
        (add(10_000, "vol", "r1", "27-01-31"), "not a date"),
        (add(10_000, "db", "r1", "2027-01-31"), "of group vol"),
        (add(10_000, "vol", "nope", "2027-01-31"), "no run"),
    ]
    .into_iter()
    .enumerate()
    {
        let before = s.clone();
        let err = apply(&mut s, &cmd).unwrap_err();
        assert!(
            err.to_string().contains(want),
            "#{i}: expect {want}, got {err}"
        );
        assert_eq!(s, before, "#{i}: a refusal changes nothing");
    }
    apply(&mut s, &add(10_000, "vol", "r1", "2027-01-31")).unwrap();
    let close = |at_ms| Command::CloseAction {
        at_ms,
        actor: "carol".into(),
        id: "A-1".into(),
        note: "n".into(),
    };
    apply(&mut s, &close(10_100)).unwrap();
    let err = apply(&mut s, &close(10_200)).unwrap_err();
    assert!(err.to_string().contains("closed by carol already"), "{err}");
    let err = apply(
        &mut s,
        &Command::AssignAction {
            at_ms: 10_300,
            actor: "alice".into(),
            id: "A-9".into(),
            owner: "x".into(),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("no such action"), "{err}");
}

#[test]
fn a_review_is_signed_only_for_a_finished_run() {
    let mut s = booted();
    let c = start_run_cmd(&s, 1_000, "r1", "vol");
    apply(&mut s, &c).unwrap();
    let sign = |at_ms| Command::SignReview {
        at_ms,
        actor: "auditor-1".into(),
        run_id: "r1".into(),
        note: "reviewed".into(),
    };
    let err = apply(&mut s, &sign(1_050)).unwrap_err();
    assert!(matches!(err, Rejection::RunUnderWay { .. }), "{err}");
    let mut at = 1_000;
    while s.run("r1").unwrap().is_running() {
        at += 100;
        let c = run_op(&s, at, "vol", true);
        apply(&mut s, &c).unwrap();
    }
    apply(&mut s, &sign(at + 100)).unwrap();
    let last = s.audit().range(0, 10_000).last().unwrap().clone();
    assert_eq!(last.kind, AuditKind::Review);
    assert_eq!(last.actor, "auditor-1");
    assert_eq!(last.detail["run_id"], "r1");
    assert_eq!(last.detail["run_status"], "ok");
    assert_eq!(last.detail["run_kind"], "drill");
}

#[test]
fn action_and_review_records_cannot_be_forged_by_a_record_command() {
    let mut s = booted();
    for kind in [AuditKind::Action, AuditKind::Review] {
        let err = apply(
            &mut s,
            &Command::Record {
                at_ms: 5,
                actor: "mallory".into(),
                kind,
                group: Some("vol".into()),
                detail: json!({"run_id": "r1"}),
            },
        )
        .unwrap_err();
        assert!(matches!(err, Rejection::KindNotRecordable { .. }), "{err}");
    }
}
