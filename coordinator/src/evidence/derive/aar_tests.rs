//! The after-action derivation, on a chain with a drill and a failover.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::audit::AuditChain;
use serde_json::json;

const C: &str = "coordinator";

fn step(c: &mut AuditChain, at: i64, run: &str, step: &str, action: &str, status: &str) {
    let mut d =
        json!({"run_id": run, "runbook": "rb", "step": step, "action": action, "status": status});
    match status {
        "started" => d["site"] = json!("hcm"),
        "ok" => {
            d["ok"] = json!(true);
            d["ms"] = json!(100);
            d["output"] = json!("rows 42 equal\nsecond line");
        }
        "failed" => {
            d["ok"] = json!(false);
            d["ms"] = json!(100);
            d["error"] = json!("exit 1");
        }
        _ => {}
    }
    c.append(at, C, AuditKind::RunbookStep, Some("vol"), d);
}

/// Bootstrap; drill `d1` (alice) with an approval by bob, a check and a verify; failover `f1`
/// (carol) whose verify step failed, with a refusal in between; then actions and a review.
fn chain() -> Vec<AuditRecord> {
    let mut c = AuditChain::default();
    c.append(
        0,
        "ops",
        AuditKind::Bootstrap,
        None,
        json!({"groups_added": [{"name": "vol", "primary": "hanoi", "replica": "hcm"}]}),
    );
    c.append(1_000, "alice", AuditKind::Drill, Some("vol"), json!({"run_id": "d1", "runbook": "drill", "kind": "drill", "phase": "start", "started_by": "alice", "primary": "hanoi", "replica": "hcm"}));
    step(&mut c, 1_100, "d1", "gate", "approve", "started");
    c.append(1_200, "bob", AuditKind::Approval, Some("vol"), json!({"run_id": "d1", "runbook": "drill", "step": "gate", "action": "approve", "approver": "bob", "decision": "approved"}));
    step(&mut c, 1_300, "d1", "ready", "check", "started");
    step(&mut c, 1_400, "d1", "ready", "check", "ok");
    c.append(1_500, "alice", AuditKind::Verify, Some("vol"), json!({"equal": true, "resources": [{"resource": "disk0", "equal": true, "primary_root": "abcdef0123456789abcdef", "replica_root": "abcdef0123456789abcdef"}]}));
    c.append(1_600, C, AuditKind::Drill, Some("vol"), json!({"run_id": "d1", "runbook": "drill", "phase": "end", "status": "ok", "ok": true, "rto_ms": 400, "ms": 600}));
    c.append(5_000, "carol", AuditKind::RunbookStep, Some("vol"), json!({"run_id": "f1", "runbook": "failover", "step": "run", "status": "started", "started_by": "carol", "primary": "hanoi", "replica": "hcm"}));
    step(&mut c, 5_100, "f1", "promote", "promote", "started");
    step(&mut c, 5_200, "f1", "promote", "promote", "ok");
    c.append(
        5_250,
        "mallory",
        AuditKind::Refused,
        Some("vol"),
        json!({"call": "Pause", "reason": "mallory (viewer) may not call Pause"}),
    );
    step(&mut c, 5_300, "f1", "verify", "verify", "started");
    step(&mut c, 5_400, "f1", "verify", "verify", "failed");
    c.append(5_500, C, AuditKind::RunbookStep, Some("vol"), json!({"run_id": "f1", "runbook": "failover", "step": "run", "status": "failed", "ok": false, "rto_ms": 9_000, "ms": 500}));
    c.append(
        5_500,
        C,
        AuditKind::Operator,
        Some("vol"),
        json!({
            "op": "failover", "run_id": "f1", "runbook": "failover", "from": "hanoi", "to": "hcm",
            "detected_ms": 4_000, "rto_ms": 1_500, "ready": false, "status": "failed",
            "data_loss_window": {"rpo_ms": 2_500, "lost_changes": 3, "planned": false},
            "steps": [{"step": "promote", "at_ms": 5_100, "ms": 100, "status": "succeeded"}],
        }),
    );
    c.append(6_000, "alice", AuditKind::Action, Some("vol"), json!({"op": "add", "id": "A-1", "run_id": "f1", "title": "fix verify", "owner": "bob", "due": "1969-12-31"}));
    c.append(
        6_100,
        "alice",
        AuditKind::Action,
        Some("vol"),
        json!({"op": "assign", "id": "A-1", "owner": "dave", "previous_owner": "bob"}),
    );
    c.append(6_200, "alice", AuditKind::Action, Some("vol"), json!({"op": "add", "id": "A-2", "run_id": "d1", "title": "faster check", "owner": "erin", "due": "2999-12-31"}));
    c.append(
        6_300,
        "erin",
        AuditKind::Action,
        Some("vol"),
        json!({"op": "close", "id": "A-2", "note": "check now 2 s"}),
    );
    c.append(
        7_000,
        "auditor",
        AuditKind::Review,
        Some("vol"),
        json!({"run_id": "d1", "run_kind": "drill", "run_status": "ok", "note": "fine"}),
    );
    c.records().to_vec()
}

/// What a participant did, as `act about` words.
fn acts(did: &[Act]) -> String {
    did.iter()
        .map(|a| match &a.about {
            Some(x) => format!("{} {x}", a.act),
            None => a.act.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn doc(now_ms: i64) -> AfterActionDoc {
    let recs = chain();
    let rto = BTreeMap::from([("vol".to_string(), 1_000i64)]);
    let rpo = BTreeMap::from([("vol".to_string(), 2_000i64)]);
    let mut runs = super::super::assemble(&recs, &rto);
    runs.drill_cadence = super::super::drill_cadence(
        &recs,
        &runs.runs,
        &BTreeMap::from([("vol".to_string(), 10_000u64)]),
        0,
        now_ms,
    );
    after_action(
        &recs,
        &runs,
        AarInputs {
            rpo_targets_ms: &rpo,
            generated_at_ms: now_ms,
        },
    )
}

#[test]
fn a_drill_report_has_scope_targets_people_timeline_checks_actions_and_sign_off() {
    let d = doc(8_000);
    assert_eq!(d.exercises.len(), 2, "{:#?}", d.exercises);
    let e = &d.exercises[0];
    assert_eq!((e.id.as_str(), e.kind), ("d1", RunKind::Drill));
    assert_eq!(e.scope.groups, vec!["vol"]);
    assert_eq!(e.scope.resources, vec!["disk0"]);
    let sites: Vec<_> = e
        .scope
        .sites
        .iter()
        .map(|s| (s.site.as_str(), s.role.as_str()))
        .collect();
    assert_eq!(
        sites,
        vec![("hanoi", "primary"), ("hcm", "replica"), ("hcm", "step")]
    );
    assert_eq!(
        e.objectives,
        Objectives {
            rto_target_ms: Some(1_000),
            rpo_target_ms: Some(2_000)
        }
    );
    assert_eq!(
        (e.measured.rto_ms, e.measured.rto_met),
        (Some(400), Some(true))
    );
    assert_eq!(e.measured.data_loss_ms, None, "a drill promotes nothing");
    let people: Vec<_> = e
        .participants
        .iter()
        .map(|p| (p.identity.as_str(), acts(&p.did)))
        .collect();
    assert_eq!(
        people,
        vec![
            ("alice", "started, verified, added-action A-2".to_string()),
            ("auditor", "signed-review".to_string()),
            ("bob", "approved gate".to_string()),
            ("erin", "closed-action A-2".to_string()),
        ]
    );
    assert_eq!(
        e.timeline
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["gate", "ready"]
    );
    assert_eq!(e.integrity.len(), 2, "{:#?}", e.integrity);
    assert_eq!(e.integrity[0].what, "check");
    assert_eq!(e.integrity[0].detail, "rows 42 equal");
    assert_eq!(e.integrity[1].ok, Some(true));
    assert!(
        e.integrity[1]
            .detail
            .starts_with("disk0: equal, primary_root abcdef0123456789"),
        "{}",
        e.integrity[1].detail
    );
    assert!(e.deviations.is_empty(), "{:#?}", e.deviations);
    assert_eq!(e.corrective_actions.len(), 1);
    assert_eq!(e.corrective_actions[0].state, "closed");
    assert_eq!(
        e.corrective_actions[0].close_note.as_deref(),
        Some("check now 2 s")
    );
    assert_eq!(e.sign_off.len(), 1);
    assert_eq!(
        (e.sign_off[0].by.as_str(), e.sign_off[0].at_ms),
        ("auditor", 7_000)
    );
    let due = e.next_due.as_ref().unwrap();
    assert_eq!((due.due_ms, due.overdue), (11_000, false));
}

#[test]
fn a_failover_report_merges_its_run_and_lists_every_deviation() {
    let d = doc(8_000);
    let e = &d.exercises[1];
    assert_eq!((e.id.as_str(), e.kind), ("f1", RunKind::Failover));
    assert_eq!(e.start_ms, 4_000, "the RTO clock starts at detection");
    assert_eq!(e.evidence_runs.len(), 2, "{:?}", e.evidence_runs);
    assert_eq!(
        (e.measured.rto_ms, e.measured.rto_met),
        (Some(1_500), Some(false))
    );
    assert_eq!(
        (e.measured.data_loss_ms, e.measured.lost_changes),
        (Some(2_500), Some(3))
    );
    assert_eq!(e.measured.data_loss_met, Some(false));
    let kinds: Vec<_> = e.deviations.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "rto-missed",
            "data-loss-over-target",
            "step-failed",
            "refused",
            "outcome",
            "action-overdue"
        ]
    );
    assert!(
        e.deviations[3].what.contains("mallory"),
        "{:?}",
        e.deviations[3]
    );
    assert_eq!(e.deviations[3].actor.as_deref(), Some("mallory"));
    assert_eq!(
        (e.deviations[0].measured_ms, e.deviations[0].target_ms),
        (Some(1_500), Some(1_000))
    );
    assert_eq!(e.deviations[2].step.as_deref(), Some("verify"));
    assert_eq!(e.deviations[5].detail.as_deref(), Some("A-1"));
    let a = &e.corrective_actions[0];
    assert_eq!(
        (a.id.as_str(), a.owner.as_deref(), a.state.as_str()),
        ("A-1", Some("dave"), "overdue")
    );
    assert!(e.sign_off.is_empty());
    assert!(e
        .participants
        .iter()
        .any(|p| p.identity == "carol" && acts(&p.did) == "started"));
    assert_eq!((e.started_by.as_str(), e.scheduled), ("carol", false));
    assert!(e
        .participants
        .iter()
        .any(|p| p.identity == "mallory" && acts(&p.did) == "refused"));
    assert!(e
        .integrity
        .iter()
        .any(|c| c.what == "verify" && c.ok == Some(false)));
}

#[test]
fn a_drill_past_its_schedule_shows_the_next_due_as_overdue() {
    let d = doc(30_000);
    let due = d.exercises[0].next_due.as_ref().unwrap();
    assert_eq!(due.due_ms, 11_000);
    assert!(due.overdue);
}

#[test]
fn the_derivation_is_a_function_of_its_inputs() {
    assert_eq!(doc(8_000), doc(8_000));
    assert_eq!(doc(8_000).as_of, "1970-01-01");
    assert_eq!(doc(8_000).actions.len(), 2);
}

#[test]
fn scope_names_sites_not_states_and_a_verify_without_resources_says_so() {
    let mut c = AuditChain::default();
    c.append(1_000, "ops", AuditKind::Drill, Some("db"), json!({"run_id": "d", "runbook": "drill", "phase": "start", "primary": "hanoi", "replica": "hcm"}));
    c.append(
        1_050,
        C,
        AuditKind::GroupState,
        Some("db"),
        json!({"from": "protected", "to": "drilling"}),
    );
    c.append(1_100, C, AuditKind::RunbookStep, Some("db"), json!({"run_id": "d", "runbook": "drill", "step": "announce", "action": "notify", "status": "started", "site": "coordinator"}));
    c.append(1_200, C, AuditKind::Verify, Some("db"), json!({"run_id": "d", "ok": true, "root_match": true, "resources": [], "primary": "hanoi", "replica": "hcm"}));
    c.append(1_300, C, AuditKind::Verify, Some("db"), json!({"run_id": "d", "root_match": true, "resources": [{"resource": "disk0", "root_match": true, "primary_root": "ab", "length": 4096}]}));
    c.append(1_400, C, AuditKind::Drill, Some("db"), json!({"run_id": "d", "runbook": "drill", "phase": "end", "status": "ok", "ok": true, "rto_ms": 100}));
    let recs = c.records().to_vec();
    let runs = super::super::assemble(&recs, &BTreeMap::new());
    let rpo = BTreeMap::new();
    let d = after_action(
        &recs,
        &runs,
        AarInputs {
            rpo_targets_ms: &rpo,
            generated_at_ms: 2_000,
        },
    );
    let e = &d.exercises[0];
    let sites: Vec<_> = e.scope.sites.iter().map(|s| s.site.as_str()).collect();
    assert_eq!(sites, ["hanoi", "hcm"], "{:?}", e.scope.sites);
    assert_eq!(e.integrity[0].detail, "no resource compared");
    assert_eq!(
        e.integrity[1].detail,
        "disk0: equal, primary_root ab, length 4096"
    );
    assert_eq!(e.measured.data_loss_met, None, "no target, no judgement");
    assert!(
        e.deviations.is_empty(),
        "no RTO target is not a deviation: {:?}",
        e.deviations
    );
}

#[test]
fn a_drill_the_coordinators_started_on_the_schedule_says_so_and_a_claim_does_not() {
    let mut c = AuditChain::default();
    for (k, (actor, at)) in [(C, 1_000), ("alice", 5_000)].into_iter().enumerate() {
        let id = format!("d{k}");
        c.append(at, actor, AuditKind::Drill, Some("vol"), json!({"run_id": id, "runbook": "drill", "phase": "start", "reason": "scheduled: drill_every 10s, ..."}));
        c.append(at + 100, C, AuditKind::Drill, Some("vol"), json!({"run_id": id, "runbook": "drill", "phase": "end", "status": "ok", "ok": true, "rto_ms": 50}));
    }
    let recs = c.records().to_vec();
    let runs = super::super::assemble(&recs, &BTreeMap::new());
    let rpo = BTreeMap::new();
    let d = after_action(
        &recs,
        &runs,
        AarInputs {
            rpo_targets_ms: &rpo,
            generated_at_ms: 9_000,
        },
    );
    let got: Vec<_> = d
        .exercises
        .iter()
        .map(|e| (e.started_by.as_str(), e.scheduled))
        .collect();
    assert_eq!(got, [(C, true), ("alice", false)]);
    assert_eq!(
        acts(&d.exercises[0].participants[0].did),
        "started-on-schedule"
    );
}
