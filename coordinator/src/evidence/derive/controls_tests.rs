//! Tests of the controls mapping, table-driven over small hand-built views.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::evidence::derive::model::{Approval, GroupCadence, Step, VerifyResult};
use crate::evidence::derive::residency::HeldSite;
use serde_json::json;

fn run(kind: RunKind, id: &str, group: &str, rto: Option<(i64, i64)>, outcome: &str) -> Run {
    Run {
        id: id.into(),
        kind,
        op: kind.as_str().into(),
        group: Some(group.into()),
        actor: "alice".into(),
        start_ms: 1_000,
        start: String::new(),
        end_ms: 2_000,
        end: String::new(),
        rto_ms: rto.map(|r| r.0),
        rto_target_ms: rto.map(|r| r.1),
        rto_met: rto.map(|(ms, t)| ms <= t),
        outcome: Some(outcome.into()),
        steps: Vec::new(),
        data_loss_window: None,
        rpo_at_loss_ms: None,
        approvals: Vec::new(),
        record_indexes: vec![1],
    }
}

fn site(name: &str, j: Option<&str>, held_as: &[&str]) -> HeldSite {
    HeldSite {
        site: name.into(),
        jurisdiction: j.map(String::from),
        held_as: held_as.iter().map(|s| s.to_string()).collect(),
        first_index: None,
        allowed: true,
    }
}

fn doc(runs: Vec<Run>) -> RunsDoc {
    RunsDoc {
        format: String::new(),
        version: 1,
        runs,
        approvals: Vec::new(),
        verify_results: Vec::new(),
        refused: Vec::new(),
        residency: vec![GroupResidency {
            group: "vol".into(),
            allowed_jurisdictions: vec!["VN".into()],
            sites: vec![
                site("hanoi", Some("VN"), &["primary"]),
                site("hcm", Some("VN"), &["replica"]),
            ],
        }],
        drill_cadence: Vec::new(),
        unauthenticated: Default::default(),
    }
}

fn sample(rpo_ms: u64, target: u64) -> RpoRow {
    RpoRow::single("vol".into(), 1, 1, rpo_ms, Some(target))
}

struct Fixture {
    groups: BTreeSet<String>,
    runs: RunsDoc,
    rpo: Vec<RpoRow>,
    rto: BTreeMap<String, i64>,
    rpo_t: BTreeMap<String, i64>,
    every: BTreeMap<String, u64>,
    aar: Option<AfterActionFacts>,
}

impl Fixture {
    fn new(runs: Vec<Run>) -> Fixture {
        Fixture {
            groups: BTreeSet::from(["vol".to_string()]),
            runs: doc(runs),
            rpo: vec![sample(10, 5_000), sample(20, 5_000)],
            rto: BTreeMap::from([("vol".to_string(), 60_000)]),
            rpo_t: BTreeMap::new(),
            every: BTreeMap::new(),
            aar: None,
        }
    }

    fn rows(&self) -> Vec<ControlRow> {
        controls(&ControlsInput {
            groups: &self.groups,
            runs: &self.runs,
            rpo: &self.rpo,
            rto_targets_ms: &self.rto,
            rpo_targets_ms: &self.rpo_t,
            drill_every_ms: &self.every,
            after_action: self.aar.as_ref(),
        })
    }

    fn row(&self, c: Control) -> ControlRow {
        self.rows().into_iter().find(|r| r.control == c).unwrap()
    }
}

#[test]
fn every_control_has_a_row_in_order() {
    let f = Fixture::new(Vec::new());
    let rows = f.rows();
    assert_eq!(
        rows.iter().map(|r| r.control).collect::<Vec<_>>(),
        Control::ALL
    );
}

#[test]
fn a_window_without_drills_says_so_under_iso_22301() {
    let f = Fixture::new(Vec::new());
    let row = f.row(Control::Iso22301Exercises);
    assert_eq!(row.status(), Status::NoEvidence);
    for m in [
        Missing::NoDrill("vol".into()),
        Missing::NoSchedule("vol".into()),
        Missing::NoAfterAction,
        Missing::NoActions,
    ] {
        assert!(row.missing.contains(&m), "{m:?} in {row:?}");
    }
    // SOC 2 and NIST: no recovery test at all.
    assert!(f
        .row(Control::Soc2RecoveryTesting)
        .missing
        .contains(&Missing::NoRecoveryTest));
    assert!(f
        .row(Control::NistTestAndAfterAction)
        .missing
        .contains(&Missing::NoSignedReview));
}

#[test]
fn drills_and_a_held_cadence_are_the_evidence_and_a_missed_one_a_finding() {
    let mut f = Fixture::new(vec![run(
        RunKind::Drill,
        "drill-7",
        "vol",
        Some((1_500, 60_000)),
        "ok",
    )]);
    f.every.insert("vol".into(), 10_000);
    f.runs.drill_cadence = vec![GroupCadence {
        group: "vol".into(),
        every_ms: 10_000,
        grace_ms: 1_000,
        from_ms: 0,
        to_ms: 5_000,
        drills: Vec::new(),
        gaps: Vec::new(),
        held: true,
    }];
    let row = f.row(Control::Iso22301Exercises);
    assert!(matches!(&row.evidence[0], Evidence::Drill { run, .. } if run == "drill-7"));
    assert!(row.evidence.iter().any(|e| matches!(
        e,
        Evidence::CadenceHeld {
            every_ms: 10_000,
            ..
        }
    )));
    assert!(!row.missing.contains(&Missing::NoSchedule("vol".into())));
    assert_eq!(
        row.status(),
        Status::Gaps,
        "the after-action part is missing"
    );
    assert_eq!(
        row.evidence[0].anchor().unwrap().fragment(),
        "run-drill-7",
        "links to the run's row"
    );

    f.runs.drill_cadence[0].held = false;
    let row = f.row(Control::Iso22301Exercises);
    assert!(matches!(row.findings[0], Finding::CadenceMissed { .. }));
    assert_eq!(row.status(), Status::Findings);
}

#[test]
fn after_action_facts_fill_what_was_missing() {
    let mut f = Fixture::new(vec![run(RunKind::Drill, "d", "vol", Some((1, 10)), "ok")]);
    f.runs.runs[0].approvals.push(Approval {
        index: 2,
        at_ms: 0,
        at: String::new(),
        approver: "dave".into(),
        actor: "dave".into(),
        group: Some("vol".into()),
        run_id: Some("d".into()),
        runbook: None,
        step: None,
        decision: "approved".into(),
        comment: None,
        attached_to: Some("d".into()),
    });
    f.runs.runs[0].steps.push(Step {
        name: "snapshot".into(),
        offset_ms: 0,
        ms: Some(5),
        status: Some("ok".into()),
        ok: Some(true),
        record_index: 3,
    });
    let row = f.row(Control::NistTestAndAfterAction);
    assert_eq!(
        row.missing,
        vec![
            Missing::NoAfterAction,
            Missing::NoActions,
            Missing::NoSignedReview
        ]
    );
    f.aar = Some(AfterActionFacts {
        reports: 1,
        actions_open: 1,
        actions_closed: 2,
        actions_overdue: 0,
        signed_reviews: 1,
    });
    let row = f.row(Control::NistTestAndAfterAction);
    assert!(row.missing.is_empty(), "{row:?}");
    assert_eq!(row.status(), Status::Covered);
    assert!(row
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::Approval { approver, .. } if approver == "dave")));
    f.aar.as_mut().unwrap().actions_overdue = 1;
    assert_eq!(
        f.row(Control::NistTestAndAfterAction).status(),
        Status::Findings
    );
}

#[test]
fn rto_missed_and_rpo_over_target_are_findings_of_a_5_30() {
    let mut f = Fixture::new(vec![
        run(
            RunKind::Failover,
            "fo",
            "vol",
            Some((4_000, 5_000)),
            "ready",
        ),
        run(
            RunKind::Switchover,
            "so",
            "vol",
            Some((2_500, 2_000)),
            "ready",
        ),
    ]);
    let row = f.row(Control::Iso27001IctReadiness);
    assert!(row
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::RtoTarget { ms: 60_000, .. })));
    assert!(row
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::RtoMeasured { run, .. } if run == "fo")));
    assert!(row.findings.iter().any(
        |x| matches!(x, Finding::RtoMissed { run, ms: 2_500, target_ms: 2_000, .. } if run == "so")
    ));
    assert!(row.missing.is_empty(), "{row:?}");
    f.rpo.push(sample(9_000, 5_000));
    let row = f.row(Control::Iso27001IctReadiness);
    assert!(row.findings.contains(&Finding::RpoOver {
        group: "vol".into(),
        over: 1,
        n: 3,
        max_ms: 9_000
    }));
    // No target and no measured recovery: both named as missing.
    let mut f = Fixture::new(Vec::new());
    f.rto.clear();
    f.rpo.clear();
    let row = f.row(Control::Iso27001IctReadiness);
    for m in [
        "NoRtoTarget",
        "NoRpoTarget",
        "NoRtoMeasured",
        "NoRpoSamples",
    ] {
        assert!(
            row.missing.iter().any(|x| format!("{x:?}").starts_with(m)),
            "{m} in {row:?}"
        );
    }
    // The manifest's RPO target stands in when the samples carry none.
    f.rpo_t.insert("vol".into(), 700);
    let row = f.row(Control::Iso27001IctReadiness);
    assert!(row
        .evidence
        .iter()
        .any(|e| matches!(e, Evidence::RpoTarget { ms: 700, .. })));
}

#[test]
fn redundancy_needs_a_second_site_and_a_verify() {
    let mut f = Fixture::new(Vec::new());
    let row = f.row(Control::Iso27001Redundancy);
    assert!(matches!(&row.evidence[0], Evidence::SecondSite { sites, .. } if sites.len() == 2));
    assert_eq!(row.missing, vec![Missing::NoVerify("vol".into())]);
    let verify = |ok| VerifyResult {
        index: 9,
        at_ms: 0,
        at: String::new(),
        actor: "a".into(),
        group: Some("vol".into()),
        ok: Some(ok),
        run_id: None,
        detail: json!({}),
    };
    f.runs.verify_results = vec![verify(true), verify(false)];
    let row = f.row(Control::Iso27001Redundancy);
    assert!(row.missing.is_empty());
    assert_eq!(
        row.findings,
        vec![Finding::VerifyFailed {
            group: "vol".into(),
            n: 1
        }]
    );
    f.runs.residency[0].sites.truncate(1);
    let row = f.row(Control::Iso27001Redundancy);
    assert!(row.missing.contains(&Missing::NoSecondSite("vol".into())));
}

#[test]
fn soc2_records_recovery_time_and_data_loss_and_failed_runs() {
    let mut fo = run(
        RunKind::Failover,
        "fo",
        "vol",
        Some((4_000, 5_000)),
        "ready",
    );
    fo.rpo_at_loss_ms = Some(2_345);
    fo.data_loss_window = Some(json!({"lost_changes": 3}));
    let bad = run(RunKind::Drill, "d", "vol", None, "failed");
    let f = Fixture::new(vec![fo, bad]);
    let row = f.row(Control::Soc2RecoveryTesting);
    assert!(row.evidence.contains(&Evidence::DataLoss {
        kind: RunKind::Failover,
        run: "fo".into(),
        group: "vol".into(),
        rpo_at_loss_ms: Some(2_345),
        lost_changes: Some(3),
    }));
    assert!(row
        .findings
        .iter()
        .any(|x| matches!(x, Finding::RunFailed { run, outcome, .. } if run == "d" && outcome == "failed")));
}

#[test]
fn data_location_is_held_violated_or_not_declared() {
    let table: [(&[&str], Option<&str>, Location); 5] = [
        (&["VN"], Some("VN"), Location::Held),
        (&["VN", "SG"], Some("SG"), Location::Held),
        (&["VN"], Some("US"), Location::Violated),
        (&[], Some("US"), Location::NotDeclared),
        (&["VN"], None, Location::NotDeclared),
    ];
    for (i, (allowed, j, want)) in table.iter().enumerate() {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        assert_eq!(location(&allowed, *j), *want, "#{i}: {allowed:?} {j:?}");
    }
    let mut f = Fixture::new(Vec::new());
    let row = f.row(Control::Decree53DataLocation);
    assert_eq!(row.status(), Status::Covered);
    assert_eq!(row.evidence.len(), 2);
    f.runs.residency[0]
        .sites
        .push(site("singapore", Some("SG"), &["drill copy"]));
    f.runs.residency[0]
        .sites
        .push(site("nowhere", None, &["replica"]));
    let row = f.row(Control::Decree53DataLocation);
    assert_eq!(row.status(), Status::Findings);
    assert!(
        matches!(&row.findings[..], [Finding::LocationViolated { site, .. }] if site == "singapore")
    );
    assert_eq!(
        row.missing,
        vec![Missing::SiteJurisdiction("nowhere".into())]
    );
    f.runs.residency[0].allowed_jurisdictions.clear();
    let row = f.row(Control::Decree53DataLocation);
    assert!(row.findings.is_empty());
    assert_eq!(row.missing, vec![Missing::NoRule("vol".into())]);
    f.runs.residency.clear();
    assert_eq!(
        f.row(Control::Decree53DataLocation).missing,
        vec![Missing::NoResidency]
    );
}
