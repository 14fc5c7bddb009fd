//! Tests of the derivations: runs, approvals and RPO rows from small chains.

use super::model::*;
use super::rpo::*;
use super::runs::*;
use crate::audit::AuditChain;
use crate::audit::{AuditKind, AuditRecord};
use proptest::prelude::*;
use serde_json::json;
use serde_json::Value;
use std::collections::BTreeMap;

fn chain(entries: &[(i64, &str, AuditKind, Option<&str>, Value)]) -> Vec<AuditRecord> {
    let mut c = AuditChain::default();
    for (at, actor, kind, group, detail) in entries {
        c.append(*at, actor, *kind, *group, detail.clone());
    }
    c.records().to_vec()
}

fn targets(g: &str, t: i64) -> BTreeMap<String, i64> {
    BTreeMap::from([(g.to_string(), t)])
}

#[test]
fn failover_report_becomes_a_run_with_rto_against_target() {
    let recs = chain(&[
        (
            1_000,
            "alice",
            AuditKind::GroupState,
            Some("vol"),
            json!({"from": "protected", "to": "failing-over", "reason": "x"}),
        ),
        (1_010, "alice", AuditKind::Fence, Some("vol"), json!({})),
        (
            1_400,
            "alice",
            AuditKind::Promote,
            Some("vol"),
            json!({"planned": false}),
        ),
        (
            1_900,
            "alice",
            AuditKind::Operator,
            Some("vol"),
            json!({"op": "failover", "rto_ms": 900, "ready": true, "rpo_at_loss_ms": 120,
                   "data_loss_window": {"rpo_ms": 120},
                   "steps": [{"step": "fence", "at_ms": 1_010, "ms": 5},
                             {"step": "promote", "at_ms": 1_400, "ms": 30}]}),
        ),
    ]);
    let doc = assemble(&recs, &targets("vol", 800));
    assert_eq!(doc.runs.len(), 1, "{:?}", doc.runs);
    let run = &doc.runs[0];
    assert_eq!(run.kind, RunKind::Failover);
    assert_eq!((run.start_ms, run.end_ms), (1_000, 1_900));
    assert_eq!(run.rto_ms, Some(900));
    assert_eq!(run.rto_met, Some(false));
    assert_eq!(run.record_indexes, vec![0, 1, 2, 3]);
    assert_eq!(run.steps[1].offset_ms, 400);
    assert_eq!(run.rpo_at_loss_ms, Some(120));
    assert_eq!(run.outcome.as_deref(), Some("ready"));
}

#[test]
fn promotion_without_report_is_still_a_run() {
    let recs = chain(&[
        (
            1_000,
            "bob",
            AuditKind::GroupState,
            Some("vol"),
            json!({"to": "switching-over"}),
        ),
        (
            1_300,
            "bob",
            AuditKind::Promote,
            Some("vol"),
            json!({"planned": true, "loss": {"rpo_ms": 0}}),
        ),
    ]);
    let doc = assemble(&recs, &BTreeMap::new());
    assert_eq!(doc.runs.len(), 1);
    assert_eq!(doc.runs[0].kind, RunKind::Switchover);
    assert_eq!(doc.runs[0].start_ms, 1_000);
    assert_eq!(doc.runs[0].outcome.as_deref(), Some("no report"));
    assert_eq!(doc.runs[0].rto_met, None);
}

#[test]
fn drill_steps_and_approval_share_a_run_id() {
    let recs = chain(&[
        (
            0,
            "carol",
            AuditKind::Drill,
            Some("db"),
            json!({"run_id": "d1", "runbook": "drill-db", "phase": "start"}),
        ),
        (
            100,
            "carol",
            AuditKind::RunbookStep,
            Some("db"),
            json!({"run_id": "d1", "step": "snapshot", "status": "started"}),
        ),
        (
            250,
            "carol",
            AuditKind::RunbookStep,
            Some("db"),
            json!({"run_id": "d1", "step": "snapshot", "status": "ok"}),
        ),
        (
            300,
            "dave",
            AuditKind::Approval,
            Some("db"),
            json!({"run_id": "d1", "step": "promote-copy", "approver": "dave@bank"}),
        ),
        (
            1_000,
            "carol",
            AuditKind::Drill,
            Some("db"),
            json!({"run_id": "d1", "phase": "end", "ok": true}),
        ),
    ]);
    let doc = assemble(&recs, &targets("db", 2_000));
    assert_eq!(doc.runs.len(), 1, "{:?}", doc.runs);
    let run = &doc.runs[0];
    assert_eq!(run.id, "d1");
    assert_eq!(run.kind, RunKind::Drill);
    assert_eq!(run.op, "drill-db");
    assert_eq!(run.rto_ms, Some(1_000));
    assert_eq!(run.rto_met, Some(true));
    assert_eq!(run.steps.len(), 1);
    assert_eq!(run.steps[0].offset_ms, 100);
    assert_eq!(run.steps[0].ms, Some(150));
    assert_eq!(run.steps[0].ok, Some(true));
    assert_eq!(run.approvals.len(), 1);
    assert_eq!(run.approvals[0].approver, "dave@bank");
    assert_eq!(doc.approvals[0].attached_to.as_deref(), Some("d1"));
}

#[test]
fn rpo_target_comes_from_record_then_from_options() {
    let recs = chain(&[
        (
            5,
            "coordinator",
            AuditKind::RpoSample,
            Some("a"),
            json!({"rpo_ms": 70, "target_ms": 50, "over_target": true}),
        ),
        (
            6,
            "coordinator",
            AuditKind::RpoSample,
            Some("b"),
            json!({"rpo_ms": 10}),
        ),
    ]);
    let rows = rpo_rows(&recs, &targets("b", 20));
    assert_eq!(rows[0].target_ms, Some(50));
    assert!(rows[0].over_target());
    assert_eq!(rows[1].target_ms, Some(20));
    assert!(!rows[1].over_target());
    assert_eq!(
        rpo_csv(&rows),
        "group,at_ms,iso_time,rpo_ms,rpo_target_ms,samples,over_samples,min_ms,max_ms,over_target_ms,since_ms\n\
         a,5,1970-01-01T00:00:00.005Z,70,50,1,1,70,70,,5\n\
         b,6,1970-01-01T00:00:00.006Z,10,20,1,0,10,10,,6\n"
    );
}

#[test]
fn old_samples_and_new_summaries_derive_side_by_side() {
    // A chain from before the audit interval (per-sample records) continued by summaries.
    let recs = chain(&[
        (
            1_000,
            "coordinator",
            AuditKind::RpoSample,
            Some("a"),
            json!({"rpo_ms": 70, "target_ms": 50, "over_target": true}),
        ),
        (
            61_000,
            "coordinator",
            AuditKind::RpoSummary,
            Some("a"),
            json!({"reason": "within", "samples": 12, "over_samples": 3, "since_ms": 6_000,
                   "min_ms": 5, "max_ms": 900, "last_ms": 20, "target_ms": 50,
                   "over_target_ms": 15_000, "over_target": false}),
        ),
        (
            62_000,
            "alice",
            AuditKind::Note,
            Some("a"),
            json!({"text": "x"}),
        ),
    ]);
    let rows = rpo_rows(&recs, &BTreeMap::new());
    assert_eq!(rows.len(), 2);
    let s = &rows[1];
    assert_eq!(
        (s.samples, s.over_samples, s.max_ms, s.rpo_ms),
        (12, 3, 900, 20)
    );
    assert!(
        s.over_target(),
        "its last sample is within, but 3 were over"
    );
    assert_eq!(rpo_totals(&rows), Some((13, 4, 900)));
    assert_eq!(
        rpo_csv(&rows).lines().nth(2),
        Some("a,61000,1970-01-01T00:01:01.000Z,20,50,12,3,5,900,15000,6000")
    );
}

#[test]
fn csv_quotes_fields_with_commas_and_quotes() {
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("plain"), "plain");
}

proptest! {
    #[test]
    fn every_rpo_sample_becomes_one_csv_line(samples in proptest::collection::vec((0u64..1_000_000, 0u64..10_000), 0..50)) {
        let entries: Vec<_> = samples
            .iter()
            .enumerate()
            .map(|(n, (rpo, target))| {
                (n as i64 * 1000, "coordinator", AuditKind::RpoSample, Some("g"),
                 json!({"rpo_ms": rpo, "target_ms": target}))
            })
            .collect();
        let recs = chain(&entries);
        let rows = rpo_rows(&recs, &BTreeMap::new());
        prop_assert_eq!(rows.len(), samples.len());
        let csv = rpo_csv(&rows);
        prop_assert_eq!(csv.lines().count(), samples.len() + 1);
        for (line, (rpo, target)) in csv.lines().skip(1).zip(&samples) {
            let f: Vec<&str> = line.split(',').collect();
            prop_assert_eq!(f[3].parse::<u64>().ok(), Some(*rpo));
            prop_assert_eq!(f[4].parse::<u64>().ok(), Some(*target));
        }
    }
}
