//! Pure derivation of the evidence views (runs, approvals, verify results, refusals, RPO samples)
//! from audit records.
//!
//! Everything here is a function of the records and the targets only, so `verify` can derive the
//! same files again from `audit.jsonl` and compare them byte for byte.

use crate::audit::{AuditKind, AuditRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Format name of `runs.json`.
pub const RUNS_FORMAT: &str = "tandem-evidence-runs";
/// Version of `runs.json` this build writes.
pub const RUNS_VERSION: u32 = 1;
/// Header line of `rpo.csv`.
pub const RPO_CSV_HEADER: &str = "group,at_ms,iso_time,rpo_ms,rpo_target_ms";

/// An approval without a run id is attached to a run of its group that starts at most this long
/// after it (one hour): approvals are given just before the operation they allow.
pub const APPROVAL_LEAD_MS: i64 = 3_600_000;

/// What kind of operation a [`Run`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// An unplanned failover (operator report with `op: failover`, or a promotion with
    /// `planned: false` that has no report).
    Failover,
    /// A planned switchover (operator report with `op: switchover`, or a planned promotion
    /// without a report).
    Switchover,
    /// A DR drill: `drill` records (and the runbook steps and approvals of the same run).
    Drill,
    /// A runbook run: `runbook_step` records sharing a run id.
    Runbook,
    /// Any other operator command recorded in the chain.
    Operator,
}

impl RunKind {
    /// The stable name (`failover`), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Failover => "failover",
            RunKind::Switchover => "switchover",
            RunKind::Drill => "drill",
            RunKind::Runbook => "runbook",
            RunKind::Operator => "operator",
        }
    }
}

/// One step of a run, placed on the run's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Step name.
    pub name: String,
    /// Start, in ms after the run's start (clamped at 0).
    pub offset_ms: i64,
    /// Duration, when known.
    pub ms: Option<i64>,
    /// Status as recorded (`ok`, `failed`, `started`, ...), when recorded.
    pub status: Option<String>,
    /// Whether the step succeeded, when recorded (`ok` field or a status of ok/failed).
    pub ok: Option<bool>,
    /// The audit record that reported the step (its last record for runbook steps).
    pub record_index: u64,
}

/// An approval given to a run or a runbook step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Audit record index.
    pub index: u64,
    /// When it was committed (unix ms).
    pub at_ms: i64,
    /// When, as RFC 3339 UTC.
    pub at: String,
    /// Who gave it: `detail.approver` if present, else the record's actor.
    pub approver: String,
    /// The record's actor (who submitted it).
    pub actor: String,
    /// Group, if any.
    pub group: Option<String>,
    /// `detail.run_id`, if any.
    pub run_id: Option<String>,
    /// `detail.runbook`, if any.
    pub runbook: Option<String>,
    /// `detail.step`, if any.
    pub step: Option<String>,
    /// `detail.decision`, `approved` when absent.
    pub decision: String,
    /// `detail.comment` or `detail.reason`, if any.
    pub comment: Option<String>,
    /// Id of the run it was attached to (by run id, or by group and time).
    pub attached_to: Option<String>,
}

/// One operation assembled from the chain: a failover, switchover, drill, runbook run or other
/// operator command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Stable id: the run id given by the runbook, else `<kind>-<first record index>`.
    pub id: String,
    /// What kind of operation.
    pub kind: RunKind,
    /// Operation name (`failover`, the runbook name, the operator command).
    pub op: String,
    /// Group, if any.
    pub group: Option<String>,
    /// Who ran it (actor of its first record).
    pub actor: String,
    /// Start (unix ms): detection time or `end - rto_ms` for reports, first record otherwise.
    pub start_ms: i64,
    /// Start as RFC 3339 UTC.
    pub start: String,
    /// End (unix ms): the report or last record.
    pub end_ms: i64,
    /// End as RFC 3339 UTC.
    pub end: String,
    /// RTO achieved, when known.
    pub rto_ms: Option<i64>,
    /// The group's RTO target, when one was given.
    pub rto_target_ms: Option<i64>,
    /// `rto_ms <= rto_target_ms`, when both are known.
    pub rto_met: Option<bool>,
    /// Outcome: `ready`, `not ready`, `ok`, `failed`, `no report`, ... when known.
    pub outcome: Option<String>,
    /// Steps on the run's timeline.
    pub steps: Vec<Step>,
    /// The data-loss window of a promotion, as recorded.
    pub data_loss_window: Option<Value>,
    /// RPO at the moment of loss (failover reports).
    pub rpo_at_loss_ms: Option<i64>,
    /// Approvals attached to this run.
    pub approvals: Vec<Approval>,
    /// Every audit record that makes up this run (report, fence, promote, state changes, steps).
    pub record_indexes: Vec<u64>,
}

/// The result of a `verify` (merkle comparison) recorded in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Audit record index.
    pub index: u64,
    /// When (unix ms).
    pub at_ms: i64,
    /// When, as RFC 3339 UTC.
    pub at: String,
    /// Who ran it.
    pub actor: String,
    /// Group, if any.
    pub group: Option<String>,
    /// Whether source and replica matched (`root_match`, `ok`, `match` or `matched`).
    pub ok: Option<bool>,
    /// `detail.run_id`, if any.
    pub run_id: Option<String>,
    /// The record's detail.
    pub detail: Value,
}

/// A refused command recorded in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Audit record index.
    pub index: u64,
    /// When (unix ms).
    pub at_ms: i64,
    /// When, as RFC 3339 UTC.
    pub at: String,
    /// Who asked.
    pub actor: String,
    /// Group, if any.
    pub group: Option<String>,
    /// The refused command (`promote`).
    pub op: String,
    /// Why it was refused.
    pub message: String,
}

/// Content of `runs.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsDoc {
    /// Always [`RUNS_FORMAT`].
    pub format: String,
    /// Always [`RUNS_VERSION`].
    pub version: u32,
    /// Every run, ordered by first record index.
    pub runs: Vec<Run>,
    /// Every approval, in chain order (also attached to their runs).
    pub approvals: Vec<Approval>,
    /// Every verify result, in chain order.
    pub verify_results: Vec<VerifyResult>,
    /// Every refused command, in chain order.
    pub refused: Vec<Refusal>,
    /// Per group, every site (and jurisdiction) that held its data during the window.
    #[serde(default)]
    pub residency: Vec<GroupResidency>,
}

/// One committed RPO sample, a row of `rpo.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpoRow {
    /// Group.
    pub group: String,
    /// Audit record index.
    pub index: u64,
    /// When (unix ms).
    pub at_ms: i64,
    /// RPO at that time.
    pub rpo_ms: u64,
    /// Target: the record's `target_ms`, else the export's target for the group.
    pub target_ms: Option<u64>,
}

impl RpoRow {
    /// Whether the sample exceeds its target.
    pub fn over_target(&self) -> bool {
        self.target_ms.is_some_and(|t| self.rpo_ms > t)
    }
}

/// Unix ms as RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.000Z`); empty if out of range.
pub fn iso_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn s(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(x) => Some(x.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn i(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

fn b(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

fn ok_of_status(status: &str) -> Option<bool> {
    match status {
        "ok" | "done" | "succeeded" | "success" | "passed" | "completed" | "finished" => Some(true),
        "failed" | "error" | "aborted" | "rejected" | "timed_out" | "timeout" => Some(false),
        _ => None,
    }
}

/// The RPO samples of `records`, in chain order. The target is the record's `target_ms` (what the
/// coordinators enforced then), else `rpo_targets_ms[group]`.
pub fn rpo_rows(records: &[AuditRecord], rpo_targets_ms: &BTreeMap<String, i64>) -> Vec<RpoRow> {
    records
        .iter()
        .filter(|r| r.kind == AuditKind::RpoSample)
        .filter_map(|r| {
            let group = r.group.clone()?;
            let rpo_ms = r.detail.get("rpo_ms").and_then(Value::as_u64)?;
            let target_ms = r
                .detail
                .get("target_ms")
                .and_then(Value::as_u64)
                .or_else(|| {
                    rpo_targets_ms
                        .get(&group)
                        .and_then(|t| u64::try_from(*t).ok())
                });
            Some(RpoRow {
                group,
                index: r.index,
                at_ms: r.at_ms,
                rpo_ms,
                target_ms,
            })
        })
        .collect()
}

fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

/// `rpo.csv`: [`RPO_CSV_HEADER`], then one line per sample (RFC 4180 quoting, `\n` endings,
/// empty target when unknown).
pub fn rpo_csv(rows: &[RpoRow]) -> String {
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    out.push_str(RPO_CSV_HEADER);
    out.push('\n');
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            csv_field(&r.group),
            r.at_ms,
            iso_ms(r.at_ms),
            r.rpo_ms,
            r.target_ms.map(|t| t.to_string()).unwrap_or_default()
        ));
    }
    out
}

/// Every group named in the records (record groups and bootstrap `groups_added`) or the targets.
pub fn groups(records: &[AuditRecord], targets: &[&BTreeMap<String, i64>]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = records.iter().filter_map(|r| r.group.clone()).collect();
    for r in records.iter().filter(|r| r.kind == AuditKind::Bootstrap) {
        if let Some(added) = r.detail.get("groups_added").and_then(Value::as_array) {
            out.extend(added.iter().filter_map(|g| s(g, "name")));
        }
    }
    for t in targets {
        out.extend(t.keys().cloned());
    }
    out
}

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

/// Assembles every run, approval, verify result and refusal of `records` (see `docs/evidence.md`
/// for the rules).
pub fn assemble(records: &[AuditRecord], rto_targets_ms: &BTreeMap<String, i64>) -> RunsDoc {
    let mut runs: Vec<Run> = Vec::new();
    let mut approvals = Vec::new();
    let mut verify_results = Vec::new();
    let mut refused = Vec::new();
    // Runbook/drill runs by key, with the positions of their started-but-unfinished steps.
    let mut open: BTreeMap<String, (usize, BTreeMap<String, usize>)> = BTreeMap::new();
    let mut covered_promotes: BTreeSet<u64> = BTreeSet::new();

    for r in records {
        let d = &r.detail;
        match r.kind {
            AuditKind::Operator => {
                let op = s(d, "op").unwrap_or_else(|| "operator".into());
                let kind = match op.as_str() {
                    "failover" if d.get("rto_ms").is_some() => Some(RunKind::Failover),
                    "switchover" if d.get("rto_ms").is_some() => Some(RunKind::Switchover),
                    _ => None,
                };
                let run = match kind {
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
                };
                runs.push(run);
            }
            AuditKind::RunbookStep | AuditKind::Drill => {
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
                let starts_new = r.kind == AuditKind::Drill
                    && matches!(s(d, "phase").as_deref(), Some("start" | "started"));
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
            AuditKind::Approval => approvals.push(approval_of(r)),
            AuditKind::Verify => verify_results.push(VerifyResult {
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
            }),
            AuditKind::Refused => refused.push(Refusal {
                index: r.index,
                at_ms: r.at_ms,
                at: iso_ms(r.at_ms),
                actor: r.actor.clone(),
                group: r.group.clone(),
                op: s(d, "op").unwrap_or_default(),
                message: s(d, "message").unwrap_or_default(),
            }),
            _ => {}
        }
    }

    // Promotions without an operator report (the orchestration failed before reporting, or the
    // promote was proposed directly): a run each, starting at the state change that began it.
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
    runs.sort_by_key(|r| r.record_indexes.first().copied().unwrap_or(u64::MAX));

    for run in &mut runs {
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

    // Approvals: by run id, else to the first run of the same group that is under way at the
    // approval or starts at most APPROVAL_LEAD_MS after it.
    for a in &mut approvals {
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

    RunsDoc {
        format: RUNS_FORMAT.into(),
        version: RUNS_VERSION,
        runs,
        approvals,
        verify_results,
        refused,
        residency: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditChain;
    use proptest::prelude::*;
    use serde_json::json;

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
            "group,at_ms,iso_time,rpo_ms,rpo_target_ms\n\
             a,5,1970-01-01T00:00:00.005Z,70,50\n\
             b,6,1970-01-01T00:00:00.006Z,10,20\n"
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
}

/// A group's sites and residency rule when the export window starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlacement {
    /// Primary site at the window start.
    pub primary: String,
    /// Replica site at the window start.
    pub replica: String,
    /// The group's allowed jurisdictions (empty: anywhere).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_jurisdictions: Vec<String>,
}

/// Where data stood when the export window starts, derived from the records before it (the
/// bootstrap and every promotion) and written into the manifest, so that the residency table
/// of a window that does not contain the bootstrap can still name the sites.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidencyStart {
    /// Every bootstrapped site and its jurisdiction.
    pub sites: BTreeMap<String, Option<String>>,
    /// Every bootstrapped group and its sites.
    pub groups: BTreeMap<String, GroupPlacement>,
}

impl ResidencyStart {
    /// Nothing known (an export from the start of the chain).
    pub fn is_empty(&self) -> bool {
        self.sites.is_empty() && self.groups.is_empty()
    }

    /// Applies one record: a bootstrap adds sites and groups, a promotion swaps the pair.
    fn apply(&mut self, r: &AuditRecord) {
        let d = &r.detail;
        match r.kind {
            AuditKind::Bootstrap => {
                for site in d["sites_added"].as_array().into_iter().flatten() {
                    if let Some(name) = s(site, "name") {
                        self.sites.insert(name, s(site, "jurisdiction"));
                    }
                }
                for g in d["groups_added"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(primary), Some(replica)) =
                        (s(g, "name"), s(g, "primary"), s(g, "replica"))
                    {
                        let allowed_jurisdictions = g["allowed_jurisdictions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect();
                        self.groups.insert(
                            name,
                            GroupPlacement {
                                primary,
                                replica,
                                allowed_jurisdictions,
                            },
                        );
                    }
                }
            }
            AuditKind::Promote => {
                if let (Some(g), Some(from), Some(to)) = (
                    r.group.as_ref().and_then(|g| self.groups.get_mut(g)),
                    s(d, "from_site"),
                    s(d, "to_site"),
                ) {
                    g.primary = to;
                    g.replica = from;
                }
            }
            _ => {}
        }
    }
}

/// [`ResidencyStart`] after `records` (the records before an export window).
pub fn residency_start(records: &[AuditRecord]) -> ResidencyStart {
    let mut st = ResidencyStart::default();
    for r in records {
        st.apply(r);
    }
    st
}

/// One site that held a group's data during the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSite {
    /// Site name.
    pub site: String,
    /// Its jurisdiction (`null` when the topology gave none).
    pub jurisdiction: Option<String>,
    /// What it held: `primary`, `replica`, `drill copy`, `point-in-time copy`.
    pub held_as: Vec<String>,
    /// First record of the window that placed data there; `null` when it already held it at
    /// the window start.
    pub first_index: Option<u64>,
    /// Whether the site is inside the group's allowed jurisdictions (true when unrestricted).
    pub allowed: bool,
}

/// Every site that held a group's data during the window, for the residency table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResidency {
    /// Group.
    pub group: String,
    /// Its allowed jurisdictions (empty: anywhere).
    pub allowed_jurisdictions: Vec<String>,
    /// The sites, by name.
    pub sites: Vec<HeldSite>,
}

/// Per group, every site (with its jurisdiction) that held its data during the window `records`,
/// starting from `start`: the primary and replica of each epoch (bootstrap, promotions), every
/// site where a drill copy or a point-in-time copy was started.
pub fn residency(records: &[AuditRecord], start: &ResidencyStart) -> Vec<GroupResidency> {
    let mut st = start.clone();
    // group -> site -> (held as, first index)
    type Held = BTreeMap<String, BTreeMap<String, (BTreeSet<String>, Option<u64>)>>;
    let mut held: Held = BTreeMap::new();
    let mut hold = |group: &str, site: &str, what: &str, index: Option<u64>| {
        let e = held
            .entry(group.to_string())
            .or_default()
            .entry(site.to_string())
            .or_insert((BTreeSet::new(), index));
        e.0.insert(what.to_string());
    };
    for (name, g) in &start.groups {
        hold(name, &g.primary, "primary", None);
        hold(name, &g.replica, "replica", None);
    }
    for r in records {
        st.apply(r);
        let d = &r.detail;
        let Some(group) = r.group.as_deref() else {
            if r.kind == AuditKind::Bootstrap {
                for g in d["groups_added"].as_array().into_iter().flatten() {
                    if let (Some(name), Some(p), Some(rep)) =
                        (s(g, "name"), s(g, "primary"), s(g, "replica"))
                    {
                        hold(&name, &p, "primary", Some(r.index));
                        hold(&name, &rep, "replica", Some(r.index));
                    }
                }
            }
            continue;
        };
        match r.kind {
            AuditKind::Promote => {
                if let (Some(from), Some(to)) = (s(d, "from_site"), s(d, "to_site")) {
                    hold(group, &to, "primary", Some(r.index));
                    hold(group, &from, "replica", Some(r.index));
                }
            }
            AuditKind::RunbookStep | AuditKind::Drill
                if s(d, "status").as_deref() == Some("started") =>
            {
                let what = match s(d, "action").as_deref() {
                    Some("snapshot") => "drill copy",
                    Some("recover") => "point-in-time copy",
                    _ => continue,
                };
                if let Some(site) = s(d, "site").filter(|x| x != "coordinator") {
                    hold(group, &site, what, Some(r.index));
                }
            }
            AuditKind::Recover => {
                if let Some(site) = s(d, "site") {
                    hold(group, &site, "point-in-time copy", Some(r.index));
                }
            }
            _ => {}
        }
    }
    held.into_iter()
        .map(|(group, sites)| {
            let allowed_jurisdictions = st
                .groups
                .get(&group)
                .map(|g| g.allowed_jurisdictions.clone())
                .unwrap_or_default();
            let sites = sites
                .into_iter()
                .map(|(site, (what, first_index))| {
                    let jurisdiction = st.sites.get(&site).cloned().flatten();
                    let allowed = allowed_jurisdictions.is_empty()
                        || jurisdiction
                            .as_ref()
                            .is_some_and(|j| allowed_jurisdictions.contains(j));
                    HeldSite {
                        site,
                        jurisdiction,
                        held_as: what.into_iter().collect(),
                        first_index,
                        allowed,
                    }
                })
                .collect();
            GroupResidency {
                group,
                allowed_jurisdictions,
                sites,
            }
        })
        .collect()
}
