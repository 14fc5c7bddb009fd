//! Runs from the records: operator reports, runbook steps and drills grouped into runs,
//! promotions without a report, RTO judged against targets, approvals attached, verify results
//! and refusals listed (the rules are in `docs/evidence.md`). Pure.

use super::fields::{b, i, iso_ms, ok_of_status, s};
use super::model::{
    Approval, Refusal, Run, RunKind, RunsDoc, Step, VerifyResult, RUNS_FORMAT, RUNS_VERSION,
};
use crate::audit::{AuditKind, AuditRecord};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// An approval without a run id is attached to a run of its group that starts at most this long
/// after it (one hour): approvals are given just before the operation they allow.
pub const APPROVAL_LEAD_MS: i64 = 3_600_000;

fn approval_of(r: &AuditRecord) -> Approval {
    let d = &r.detail;
    Approval {
        index: r.index,
        at_ms: r.at_ms,
        at: iso_ms(r.at_ms),
        approver: s(d, "approver").unwrap_or_else(|| r.actor.clone()),
        actor: r.actor.clone(),
        group: r.group.clone(),
        run_id: s(d, "run_id"),
        runbook: s(d, "runbook"),
        step: s(d, "step"),
        decision: s(d, "decision").unwrap_or_else(|| "approved".into()),
        comment: s(d, "comment").or_else(|| s(d, "reason")),
        attached_to: None,
    }
}

fn new_run(
    id: String,
    kind: RunKind,
    op: String,
    r: &AuditRecord,
    start_ms: i64,
    end_ms: i64,
) -> Run {
    Run {
        id,
        kind,
        op,
        group: r.group.clone(),
        actor: r.actor.clone(),
        start_ms,
        start: iso_ms(start_ms),
        end_ms,
        end: iso_ms(end_ms),
        rto_ms: None,
        rto_target_ms: None,
        rto_met: None,
        outcome: None,
        steps: Vec::new(),
        data_loss_window: None,
        rpo_at_loss_ms: None,
        approvals: Vec::new(),
        record_indexes: Vec::new(),
    }
}

/// A failover/switchover operator report (`detail.op` and `detail.rto_ms`).
fn report_run(r: &AuditRecord, kind: RunKind) -> Run {
    let d = &r.detail;
    let rto = i(d, "rto_ms");
    let start = i(d, "detected_ms")
        .or_else(|| rto.map(|x| r.at_ms.saturating_sub(x)))
        .unwrap_or(r.at_ms)
        .min(r.at_ms);
    let mut run = new_run(
        format!("{}-{}", kind.as_str(), r.index),
        kind,
        kind.as_str().to_string(),
        r,
        start,
        r.at_ms,
    );
    run.rto_ms = rto;
    run.outcome = b(d, "ready").map(|ok| if ok { "ready" } else { "not ready" }.to_string());
    run.data_loss_window = d.get("data_loss_window").filter(|v| !v.is_null()).cloned();
    run.rpo_at_loss_ms = i(d, "rpo_at_loss_ms");
    let mut cursor = 0i64;
    for st in d
        .get("steps")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let ms = i(st, "ms");
        let offset = match i(st, "at_ms") {
            Some(at) => at.saturating_sub(start).max(0),
            None => cursor,
        };
        cursor = offset.saturating_add(ms.unwrap_or(0));
        let status = s(st, "status");
        run.steps.push(Step {
            name: s(st, "step").unwrap_or_else(|| "step".into()),
            offset_ms: offset,
            ms,
            ok: b(st, "ok").or_else(|| status.as_deref().and_then(ok_of_status)),
            status,
            record_index: r.index,
        });
    }
    run
}

/// Adds a runbook step or drill record to a run keyed by run id.
fn add_to_runbook_run(run: &mut Run, r: &AuditRecord, open_steps: &mut BTreeMap<String, usize>) {
    let d = &r.detail;
    run.record_indexes.push(r.index);
    run.end_ms = run.end_ms.max(r.at_ms);
    run.end = iso_ms(run.end_ms);
    if r.kind == AuditKind::Drill {
        run.kind = RunKind::Drill;
        if let Some(x) = i(d, "rto_ms") {
            run.rto_ms = Some(x);
        }
        let phase = s(d, "phase").or_else(|| s(d, "status"));
        if let Some(p) = phase.as_deref() {
            if let Some(ok) = b(d, "ok").or_else(|| ok_of_status(p)) {
                run.outcome = Some(if ok { "ok" } else { "failed" }.into());
            }
            if matches!(p, "end" | "finished" | "completed" | "failed" | "aborted")
                && run.rto_ms.is_none()
            {
                run.rto_ms = Some(r.at_ms.saturating_sub(run.start_ms));
            }
        } else if let Some(ok) = b(d, "ok") {
            run.outcome = Some(if ok { "ok" } else { "failed" }.into());
        }
        return;
    }
    // runbook_step
    if let Some(x) = i(d, "rto_ms") {
        run.rto_ms = Some(x);
    }
    let name = s(d, "step").unwrap_or_else(|| "step".into());
    let status = s(d, "status");
    let ms = i(d, "ms");
    let ok = b(d, "ok").or_else(|| status.as_deref().and_then(ok_of_status));
    if ok == Some(false) {
        run.outcome = Some("failed".into());
    } else if ok == Some(true) && run.outcome.is_none() {
        run.outcome = Some("ok".into());
    }
    let started = matches!(status.as_deref(), Some("started" | "start" | "running"));
    if let Some(&pos) = open_steps.get(&name) {
        if !started {
            // The finish of a step that was started earlier.
            open_steps.remove(&name);
            if let Some(step) = run.steps.get_mut(pos) {
                let began = run.start_ms.saturating_add(step.offset_ms);
                step.ms = ms.or(Some(r.at_ms.saturating_sub(began)));
                step.status = status;
                step.ok = ok;
                step.record_index = r.index;
            }
            return;
        }
    }
    let offset = if started {
        r.at_ms
    } else {
        r.at_ms.saturating_sub(ms.unwrap_or(0))
    }
    .saturating_sub(run.start_ms)
    .max(0);
    if started {
        open_steps.insert(name.clone(), run.steps.len());
    }
    run.steps.push(Step {
        name,
        offset_ms: offset,
        ms: if started { None } else { ms },
        status,
        ok,
        record_index: r.index,
    });
}

/// The records of `group` between `from` and `to` (inclusive) with one of `kinds`, before
/// `before_index`. Committed `at_ms` never decreases along a chain, so the time range is found by
/// binary search.
fn related(
    records: &[AuditRecord],
    group: Option<&str>,
    from: i64,
    to: i64,
    before_index: u64,
    kinds: &[AuditKind],
) -> Vec<(u64, AuditKind)> {
    let lo = records.partition_point(|x| x.at_ms < from);
    let hi = records.partition_point(|x| x.at_ms <= to).max(lo);
    records[lo..hi]
        .iter()
        .filter(|x| {
            x.index < before_index && x.group.as_deref() == group && kinds.contains(&x.kind)
        })
        .map(|x| (x.index, x.kind))
        .collect()
}

const FAILOVER_KINDS: &[AuditKind] = &[
    AuditKind::GroupState,
    AuditKind::Fence,
    AuditKind::Promote,
    AuditKind::LeaseReleased,
    AuditKind::Refused,
];

/// Runbook and drill runs still open, by key: the run's position and the positions of its
/// started-but-unfinished steps.
type OpenRuns = BTreeMap<String, (usize, BTreeMap<String, usize>)>;

/// Assembles every run, approval, verify result and refusal of `records` (see `docs/evidence.md`
/// for the rules).
pub fn assemble(records: &[AuditRecord], rto_targets_ms: &BTreeMap<String, i64>) -> RunsDoc {
    let mut runs: Vec<Run> = Vec::new();
    let mut approvals = Vec::new();
    let mut verify_results = Vec::new();
    let mut refused = Vec::new();
    let mut open: OpenRuns = BTreeMap::new();
    let mut covered_promotes: BTreeSet<u64> = BTreeSet::new();

    for r in records {
        match r.kind {
            AuditKind::Operator => runs.push(operator_run(records, r, &mut covered_promotes)),
            AuditKind::RunbookStep | AuditKind::Drill => add_step_record(&mut runs, &mut open, r),
            AuditKind::Approval => approvals.push(approval_of(r)),
            AuditKind::Verify => verify_results.push(verify_result_of(r)),
            AuditKind::Refused => refused.push(refusal_of(r)),
            _ => {}
        }
    }

    runs.extend(unreported_promotions(records, &covered_promotes));
    runs.sort_by_key(|r| r.record_indexes.first().copied().unwrap_or(u64::MAX));
    judge_rto(&mut runs, rto_targets_ms);
    attach_approvals(&mut approvals, &mut runs);

    RunsDoc {
        format: RUNS_FORMAT.into(),
        version: RUNS_VERSION,
        runs,
        approvals,
        verify_results,
        refused,
        residency: Vec::new(),
        drill_cadence: Vec::new(),
        unauthenticated: super::model::Unauthenticated::of(records),
    }
}

/// An operator record: a failover or switchover report (with `rto_ms`) becomes a run with the
/// records around it (its promotions are then covered); any other operation a run of its own.
fn operator_run(
    records: &[AuditRecord],
    r: &AuditRecord,
    covered_promotes: &mut BTreeSet<u64>,
) -> Run {
    let d = &r.detail;
    let op = s(d, "op").unwrap_or_else(|| "operator".into());
    let kind = match op.as_str() {
        "failover" if d.get("rto_ms").is_some() => Some(RunKind::Failover),
        "switchover" if d.get("rto_ms").is_some() => Some(RunKind::Switchover),
        _ => None,
    };
    match kind {
        Some(kind) => {
            let mut run = report_run(r, kind);
            let idx = related(
                records,
                r.group.as_deref(),
                run.start_ms,
                run.end_ms,
                r.index,
                FAILOVER_KINDS,
            );
            covered_promotes.extend(
                idx.iter()
                    .filter(|(_, k)| *k == AuditKind::Promote)
                    .map(|(x, _)| *x),
            );
            run.record_indexes = idx.iter().map(|(x, _)| *x).collect();
            run.record_indexes.push(r.index);
            run
        }
        None => {
            let mut run = new_run(
                format!("operator-{}", r.index),
                RunKind::Operator,
                op,
                r,
                r.at_ms,
                r.at_ms,
            );
            run.rto_ms = i(d, "rto_ms");
            run.record_indexes.push(r.index);
            run
        }
    }
}

/// A runbook step or drill record: added to its open run (by run id, else group and name),
/// which it starts when there is none (or when a drill starts again); a drill's end without a
/// run id closes its run.
fn add_step_record(runs: &mut Vec<Run>, open: &mut OpenRuns, r: &AuditRecord) {
    let d = &r.detail;
    let name = s(d, "runbook").or_else(|| s(d, "name"));
    let key = match s(d, "run_id") {
        Some(id) => id,
        None => format!(
            "{}/{}",
            r.group.as_deref().unwrap_or("-"),
            name.as_deref().unwrap_or(if r.kind == AuditKind::Drill {
                "drill"
            } else {
                "runbook"
            })
        ),
    };
    let starts_new =
        r.kind == AuditKind::Drill && matches!(s(d, "phase").as_deref(), Some("start" | "started"));
    let pos = match open.get(&key) {
        Some((pos, _)) if !starts_new => *pos,
        _ => {
            let kind = if r.kind == AuditKind::Drill {
                RunKind::Drill
            } else {
                RunKind::Runbook
            };
            let id = if s(d, "run_id").is_some() && !open.contains_key(&key) {
                key.clone()
            } else {
                format!("{}-{}", kind.as_str(), r.index)
            };
            let op = name.unwrap_or_else(|| kind.as_str().into());
            runs.push(new_run(id, kind, op, r, r.at_ms, r.at_ms));
            open.insert(key.clone(), (runs.len() - 1, BTreeMap::new()));
            runs.len() - 1
        }
    };
    if let (Some(run), Some((_, steps))) = (runs.get_mut(pos), open.get_mut(&key)) {
        add_to_runbook_run(run, r, steps);
    }
    // Without a run id, a drill's end closes its run.
    if r.kind == AuditKind::Drill
        && s(d, "run_id").is_none()
        && matches!(
            s(d, "phase").as_deref(),
            Some("end" | "finished" | "completed" | "failed" | "aborted")
        )
    {
        open.remove(&key);
    }
}

/// A verify record as a verify result: its outcome is the first of `root_match`, `ok`,
/// `match`, `matched` it carries.
fn verify_result_of(r: &AuditRecord) -> VerifyResult {
    let d = &r.detail;
    VerifyResult {
        index: r.index,
        at_ms: r.at_ms,
        at: iso_ms(r.at_ms),
        actor: r.actor.clone(),
        group: r.group.clone(),
        ok: ["root_match", "ok", "match", "matched"]
            .iter()
            .find_map(|k| b(d, k)),
        run_id: s(d, "run_id"),
        detail: d.clone(),
    }
}

/// A refused call or command.
fn refusal_of(r: &AuditRecord) -> Refusal {
    let d = &r.detail;
    Refusal {
        index: r.index,
        at_ms: r.at_ms,
        at: iso_ms(r.at_ms),
        actor: r.actor.clone(),
        group: r.group.clone(),
        // State-machine refusals name the command and its message; refused calls (aggregated
        // per actor and call) the call, the reason and how many they stand for.
        op: s(d, "op").or_else(|| s(d, "call")).unwrap_or_default(),
        message: match (
            s(d, "message"),
            s(d, "reason"),
            d.get("count").and_then(Value::as_u64),
        ) {
            (Some(m), _, _) => m,
            (None, Some(why), Some(n)) if n > 1 => format!("{why} ({n} refusals in one window)"),
            (None, why, _) => why.unwrap_or_default(),
        },
    }
}

/// Promotions without an operator report (the orchestration failed before reporting, or the
/// promote was proposed directly): a run each, starting at the state change that began it.
fn unreported_promotions(records: &[AuditRecord], covered_promotes: &BTreeSet<u64>) -> Vec<Run> {
    let mut runs = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.kind == AuditKind::Promote && !covered_promotes.contains(&r.index))
    {
        let planned = b(&r.detail, "planned").unwrap_or(false);
        let (kind, begin_state) = if planned {
            (RunKind::Switchover, "switching-over")
        } else {
            (RunKind::Failover, "failing-over")
        };
        let began = records
            .iter()
            .rev()
            .filter(|x| x.index < r.index && x.group == r.group)
            .take_while(|x| x.kind != AuditKind::Promote)
            .find(|x| {
                x.kind == AuditKind::GroupState
                    && x.detail.get("to").and_then(Value::as_str) == Some(begin_state)
            })
            .map_or(r.at_ms, |x| x.at_ms);
        let mut run = new_run(
            format!("{}-{}", kind.as_str(), r.index),
            kind,
            kind.as_str().into(),
            r,
            began,
            r.at_ms,
        );
        run.outcome = Some("no report".into());
        run.data_loss_window = r.detail.get("loss").filter(|v| !v.is_null()).cloned();
        run.rpo_at_loss_ms = run.data_loss_window.as_ref().and_then(|l| i(l, "rpo_ms"));
        let mut idx: Vec<u64> = related(
            records,
            r.group.as_deref(),
            began,
            r.at_ms,
            r.index,
            FAILOVER_KINDS,
        )
        .into_iter()
        .map(|(x, _)| x)
        .collect();
        idx.push(r.index);
        run.record_indexes = idx;
        runs.push(run);
    }
    runs
}

/// Failovers, switchovers, drills and runbook runs are judged against their group's RTO
/// target.
fn judge_rto(runs: &mut [Run], rto_targets_ms: &BTreeMap<String, i64>) {
    for run in runs.iter_mut() {
        if matches!(
            run.kind,
            RunKind::Failover | RunKind::Switchover | RunKind::Drill | RunKind::Runbook
        ) {
            run.rto_target_ms = run
                .group
                .as_ref()
                .and_then(|g| rto_targets_ms.get(g))
                .copied();
        }
        run.rto_met = match (run.rto_ms, run.rto_target_ms) {
            (Some(a), Some(t)) => Some(a <= t),
            _ => None,
        };
    }
}

/// Approvals: by run id, else to the first run of the same group that is under way at the
/// approval or starts at most APPROVAL_LEAD_MS after it.
fn attach_approvals(approvals: &mut [Approval], runs: &mut [Run]) {
    for a in approvals.iter_mut() {
        let target = a
            .run_id
            .as_ref()
            .and_then(|id| runs.iter().position(|r| &r.id == id))
            .or_else(|| {
                runs.iter().position(|r| {
                    r.kind != RunKind::Operator
                        && r.group.is_some()
                        && r.group == a.group
                        && r.start_ms.saturating_sub(APPROVAL_LEAD_MS) <= a.at_ms
                        && a.at_ms <= r.end_ms
                })
            });
        if let Some(run) = target.and_then(|p| runs.get_mut(p)) {
            a.attached_to = Some(run.id.clone());
            run.approvals.push(a.clone());
        }
    }
}
