//! The after-action report of each exercise (drill, switchover, failover) in the window, as
//! `after-action.json` carries it: scope, objectives (the business-impact RTO/RPO targets),
//! participants and approvals, timeline, measured RTO and data loss against target, integrity
//! checks, deviations, corrective actions (`action` records), sign-off (`review` records) and
//! the next due exercise (the drill cadence). Pure: the records, the runs assembled from them
//! and the export's targets and time in, the document out; nothing is read from a clock.

use super::fields::{b, i, iso_ms, s};
use super::model::{Approval, GroupCadence, Run, RunKind, RunsDoc, Step};
use crate::audit::{AuditKind, AuditRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Format name of `after-action.json`.
pub const AAR_FORMAT: &str = "tandem-evidence-after-action";
/// Version of `after-action.json` this build writes.
pub const AAR_VERSION: u32 = 1;

/// Content of `after-action.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AfterActionDoc {
    /// Always [`AAR_FORMAT`].
    pub format: String,
    /// Always [`AAR_VERSION`].
    pub version: u32,
    /// The date (UTC, `YYYY-MM-DD`) open actions are judged overdue against: the export's.
    pub as_of: String,
    /// One report per exercise, in the order the exercises started.
    pub exercises: Vec<Exercise>,
    /// Every corrective action the window's records tell of, in the order they were added.
    pub actions: Vec<ActionView>,
}

/// The after-action report of one exercise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exercise {
    /// The run id (`tandem runs`; what `tandem action add --run` and `tandem review sign`
    /// name), or the evidence's id of a promotion without a run.
    pub id: String,
    /// `drill`, `switchover` or `failover`.
    pub kind: RunKind,
    /// The runbook (or operation) name.
    pub runbook: String,
    /// Start and end (unix ms and RFC 3339 UTC).
    pub start_ms: i64,
    /// Start, RFC 3339 UTC.
    pub start: String,
    /// End (unix ms).
    pub end_ms: i64,
    /// End, RFC 3339 UTC.
    pub end: String,
    /// How it ended (`ok`, `failed`, `ready`, `not ready`, `no report`), when recorded.
    pub outcome: Option<String>,
    /// Who started it: a certificate identity, or `coordinator` (an automatic failover, a
    /// drill on the schedule).
    pub started_by: String,
    /// A drill the coordinators started on the group's `drill_every` schedule (actor
    /// `coordinator` and a `scheduled:` reason, as the drill cadence counts it).
    pub scheduled: bool,
    /// What the exercise covered.
    pub scope: Scope,
    /// The business-impact targets it is judged against.
    pub objectives: Objectives,
    /// Who took part, from the certificate identities the records carry.
    pub participants: Vec<Participant>,
    /// Approvals given to its steps.
    pub approvals: Vec<Approval>,
    /// Its steps in time order.
    pub timeline: Vec<Step>,
    /// RTO and data loss as measured, against target.
    pub measured: Measured,
    /// Verify results, checks and probes of the exercise.
    pub integrity: Vec<IntegrityCheck>,
    /// What did not go to plan.
    pub deviations: Vec<Deviation>,
    /// Corrective actions added against this exercise.
    pub corrective_actions: Vec<ActionView>,
    /// Reviews signed for this exercise.
    pub sign_off: Vec<SignOff>,
    /// The group's next drill on its schedule, when it has one.
    pub next_due: Option<NextDue>,
    /// The `runs.json` runs this report is made of.
    pub evidence_runs: Vec<String>,
    /// Every audit record it rests on, in chain order.
    pub record_indexes: Vec<u64>,
}

/// Groups, resources and sites an exercise covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Protection groups.
    pub groups: Vec<String>,
    /// Resources named by its verify results (empty: none recorded).
    pub resources: Vec<String>,
    /// Sites its records name (plan, steps, promotion), with their role in it.
    pub sites: Vec<ScopeSite>,
}

/// A site in an exercise's scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScopeSite {
    /// Site.
    pub site: String,
    /// `primary`, `replica` (at the start) or `step` (a step ran there).
    pub role: String,
}

/// The business-impact targets of the exercise's group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Objectives {
    /// RTO target (ms): the longest outage the business accepts.
    pub rto_target_ms: Option<i64>,
    /// RPO target (ms): the most data, in time, the business accepts to lose.
    pub rpo_target_ms: Option<i64>,
}

/// One identity that took part, with what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The certificate identity (or `coordinator` for the cluster itself).
    pub identity: String,
    /// What it did, in the order first seen.
    pub did: Vec<Act>,
}

/// One thing a participant did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    /// `started`, `started-on-schedule`, `approved`, `rejected`, `confirmed-done` (a step),
    /// `verified`, `refused` (was refused), `added-action`, `closed-action`, `signed-review`.
    pub act: String,
    /// The step or action it was about, when it was about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
}

/// RTO and data loss, measured against target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// RTO achieved (ms), when measured.
    pub rto_ms: Option<i64>,
    /// `rto_ms <= rto_target_ms`, when both are known.
    pub rto_met: Option<bool>,
    /// Data-loss window (ms) as recorded: a failover's last reported RPO at the promotion
    /// (changes younger than this at the old primary may be lost); 0 for a switchover (its
    /// promotion is refused unless the replica has every change); `None` for a drill (it
    /// works on a copy; the live group is not promoted).
    pub data_loss_ms: Option<i64>,
    /// Changes known captured and not replicated at the promotion (failover).
    pub lost_changes: Option<i64>,
    /// How `data_loss_ms` was found: `drill` (not applicable: a drill works on a copy),
    /// `switchover` (0: a planned promotion is refused unless the replica has every change the
    /// primary reported), `failover` (the old primary's last reported RPO when the replica was
    /// promoted: acknowledged changes younger than this may be lost; with the changes known
    /// captured and not replicated), `not-recorded`.
    pub data_loss_basis: String,
    /// `data_loss_ms <= rpo_target_ms`, when both are known.
    pub data_loss_met: Option<bool>,
}

/// A verify result, check or probe of an exercise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityCheck {
    /// The record.
    pub record_index: u64,
    /// `verify` (a merkle/page comparison record) or the step's action (`check`, `verify`, ...).
    pub what: String,
    /// The step, for a step.
    pub step: Option<String>,
    /// Passed or not, when recorded.
    pub ok: Option<bool>,
    /// What it compared or printed: per resource `name: equal (root …)`, or the step's output.
    pub detail: String,
}

/// Something that did not go to plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deviation {
    /// `rto-missed`, `rto-not-measured`, `data-loss-over-target`, `step-failed`,
    /// `step-retried`, `step-skipped`, `approval-rejected`, `refused`, `outcome`.
    pub kind: String,
    /// What happened, in English (the report renders it in its language from the fields).
    pub what: String,
    /// The record that shows it, when one does.
    pub record_index: Option<u64>,
    /// The step, for step deviations and rejected approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Who, for refusals and rejected approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// What was measured (ms), for missed targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_ms: Option<i64>,
    /// The target (ms), for missed targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ms: Option<i64>,
    /// The refusal's message, the outcome, or the overdue action's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A corrective action as the window's records tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionView {
    /// `A-<n>`.
    pub id: String,
    /// Group.
    pub group: Option<String>,
    /// The run it follows from.
    pub run_id: Option<String>,
    /// What is to be done (`None` when added before the window).
    pub title: Option<String>,
    /// Its owner now.
    pub owner: Option<String>,
    /// Due date, `YYYY-MM-DD`.
    pub due: Option<String>,
    /// `open`, `overdue` (open, due before the export's date) or `closed`.
    pub state: String,
    /// Who added it and when.
    pub opened_by: Option<String>,
    /// When it was added, RFC 3339 UTC.
    pub opened_at: Option<String>,
    /// Who closed it.
    pub closed_by: Option<String>,
    /// When, RFC 3339 UTC.
    pub closed_at: Option<String>,
    /// What was done.
    pub close_note: Option<String>,
    /// Its records (add, assign, close), in chain order.
    pub record_indexes: Vec<u64>,
}

/// A signed review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignOff {
    /// The reviewer: an auditor's certificate identity.
    pub by: String,
    /// When (unix ms).
    pub at_ms: i64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The reviewer's note.
    pub note: String,
    /// The record.
    pub record_index: u64,
}

/// The next drill due on the group's schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextDue {
    /// `drill_every` (ms).
    pub every_ms: u64,
    /// Due at (unix ms): the last drill's start plus `drill_every` (the window's start when
    /// it holds no drill).
    pub due_ms: i64,
    /// Due, RFC 3339 UTC.
    pub due: String,
    /// Past due (beyond the grace) at the export's time.
    pub overdue: bool,
}

/// What the after-action derivation needs besides the records.
#[derive(Debug, Clone, Copy)]
pub struct AarInputs<'a> {
    /// RPO target per group (ms).
    pub rpo_targets_ms: &'a BTreeMap<String, i64>,
    /// The export's time (unix ms): "overdue" is judged at it.
    pub generated_at_ms: i64,
}

/// The after-action report of every exercise of `records`, from `runs` assembled from the
/// same records (with its drill cadence filled in).
pub fn after_action(records: &[AuditRecord], runs: &RunsDoc, inp: AarInputs<'_>) -> AfterActionDoc {
    let as_of = iso_ms(inp.generated_at_ms)
        .chars()
        .take(10)
        .collect::<String>();
    let actions = actions(records, &as_of);
    let reviews = reviews(records);
    let by_id: BTreeMap<&str, &Run> = runs.runs.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut exercises: Vec<Exercise> = Vec::new();
    for run in &runs.runs {
        let kind = run.kind;
        if !matches!(
            kind,
            RunKind::Drill | RunKind::Switchover | RunKind::Failover
        ) {
            continue;
        }
        // A failover or switchover report names the runbook run it closes: one exercise of both.
        let run_id = match kind {
            RunKind::Drill => Some(run.id.clone()),
            _ => run
                .record_indexes
                .last()
                .and_then(|x| record(records, *x))
                .and_then(|r| s(&r.detail, "run_id")),
        };
        let runbook_run = run_id
            .as_deref()
            .filter(|_| kind != RunKind::Drill)
            .and_then(|id| by_id.get(id).copied());
        let mut e = exercise(records, run, runbook_run, run_id, runs, inp);
        e.corrective_actions = actions
            .iter()
            .filter(|a| a.run_id.as_deref() == Some(e.id.as_str()))
            .cloned()
            .collect();
        e.sign_off = reviews
            .iter()
            .filter(|(id, _)| id == &e.id)
            .map(|(_, so)| so.clone())
            .collect();
        e.participants = participants(records, &e);
        e.deviations
            .extend(action_deviations(&e.corrective_actions));
        exercises.push(e);
    }
    exercises.sort_by_key(|e| (e.start_ms, e.record_indexes.first().copied()));
    AfterActionDoc {
        format: AAR_FORMAT.into(),
        version: AAR_VERSION,
        as_of,
        exercises,
        actions,
    }
}

/// The record with `index` (records are contiguous by index).
fn record(records: &[AuditRecord], index: u64) -> Option<&AuditRecord> {
    let first = records.first()?.index;
    records.get(usize::try_from(index.checked_sub(first)?).ok()?)
}

/// One exercise from its run (and, for a failover or switchover report, the runbook run it
/// closes).
fn exercise(
    records: &[AuditRecord],
    run: &Run,
    runbook_run: Option<&Run>,
    run_id: Option<String>,
    runs: &RunsDoc,
    inp: AarInputs<'_>,
) -> Exercise {
    let group = run.group.clone();
    let mut indexes: BTreeSet<u64> = run.record_indexes.iter().copied().collect();
    let mut evidence_runs = vec![run.id.clone()];
    let (mut timeline, mut approvals, runbook) =
        (run.steps.clone(), run.approvals.clone(), run.op.clone());
    let mut start_ms = run.start_ms;
    if let Some(rr) = runbook_run {
        indexes.extend(rr.record_indexes.iter().copied());
        evidence_runs.push(rr.id.clone());
        start_ms = start_ms.min(rr.start_ms);
        timeline = rr.steps.clone();
        approvals.extend(rr.approvals.iter().cloned());
        // Offsets count from the exercise's start.
        let shift = rr.start_ms.saturating_sub(start_ms);
        for st in &mut timeline {
            st.offset_ms = st.offset_ms.saturating_add(shift);
        }
    }
    let end_ms = run.end_ms.max(runbook_run.map_or(i64::MIN, |r| r.end_ms));
    timeline.retain(|st| st.name != "run");
    timeline.sort_by_key(|st| (st.offset_ms, st.record_index));
    approvals.sort_by_key(|a| a.index);
    approvals.dedup_by_key(|a| a.index);
    let id = run_id.unwrap_or_else(|| run.id.clone());
    let verify: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.kind == AuditKind::Verify && r.group == group)
        .filter(|r| {
            s(&r.detail, "run_id").map_or((start_ms..=end_ms).contains(&r.at_ms), |x| x == id)
        })
        .collect();
    indexes.extend(verify.iter().map(|r| r.index));
    let refusals: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.kind == AuditKind::Refused && r.group == group)
        .filter(|r| (start_ms..=end_ms).contains(&r.at_ms))
        .collect();
    indexes.extend(refusals.iter().map(|r| r.index));
    let objectives = Objectives {
        rto_target_ms: run.rto_target_ms,
        rpo_target_ms: group
            .as_ref()
            .and_then(|g| inp.rpo_targets_ms.get(g))
            .copied(),
    };
    let measured = measured(run, &objectives);
    let first = indexes.first().and_then(|x| record(records, *x));
    let started_by = first
        .map(|r| s(&r.detail, "started_by").unwrap_or_else(|| r.actor.clone()))
        .unwrap_or_else(|| run.actor.clone());
    let scheduled = first.is_some_and(|r| {
        r.kind == AuditKind::Drill
            && r.actor == crate::state::COORDINATOR_ACTOR
            && s(&r.detail, "reason").is_some_and(|x| x.starts_with("scheduled:"))
    });
    let mut e = Exercise {
        id,
        kind: run.kind,
        runbook,
        start_ms,
        start: iso_ms(start_ms),
        end_ms,
        end: iso_ms(end_ms),
        outcome: run.outcome.clone(),
        started_by,
        scheduled,
        scope: scope(records, &indexes, group.as_deref(), &verify),
        objectives,
        participants: Vec::new(),
        integrity: integrity(records, &timeline, &verify),
        deviations: Vec::new(),
        approvals,
        timeline,
        measured,
        corrective_actions: Vec::new(),
        sign_off: Vec::new(),
        next_due: group
            .as_deref()
            .and_then(|g| next_due(&runs.drill_cadence, g, inp.generated_at_ms)),
        evidence_runs,
        record_indexes: indexes.into_iter().collect(),
    };
    e.deviations = deviations(&e, &refusals);
    e
}

/// RTO and data loss against the objectives.
fn measured(run: &Run, o: &Objectives) -> Measured {
    let (data_loss_ms, lost_changes, basis) = match run.kind {
        RunKind::Drill => (None, None, "drill"),
        RunKind::Switchover => (Some(0), Some(0), "switchover"),
        _ => match &run.data_loss_window {
            Some(w) => (i(w, "rpo_ms"), i(w, "lost_changes"), "failover"),
            None => (None, None, "not-recorded"),
        },
    };
    Measured {
        rto_ms: run.rto_ms,
        rto_met: run.rto_met,
        data_loss_met: data_loss_ms.zip(o.rpo_target_ms).map(|(l, t)| l <= t),
        data_loss_ms,
        lost_changes,
        data_loss_basis: basis.into(),
    }
}

/// Groups, resources (from verify results) and sites (plan, steps, promotion) of an exercise.
fn scope(
    records: &[AuditRecord],
    indexes: &BTreeSet<u64>,
    group: Option<&str>,
    verify: &[&AuditRecord],
) -> Scope {
    let mut sites: BTreeSet<ScopeSite> = BTreeSet::new();
    let mut add = |site: Option<String>, role: &str| {
        if let Some(site) = site.filter(|x| !x.is_empty()) {
            sites.insert(ScopeSite {
                site,
                role: role.into(),
            });
        }
    };
    for r in indexes.iter().filter_map(|x| record(records, *x)) {
        let d = &r.detail;
        match r.kind {
            AuditKind::Drill | AuditKind::RunbookStep | AuditKind::Verify => {
                add(s(d, "primary"), "primary");
                add(s(d, "replica"), "replica");
                // Steps the coordinators run themselves (notify) are at no site.
                add(s(d, "site").filter(|x| x != "coordinator"), "step");
            }
            AuditKind::Operator => {
                add(s(d, "from"), "primary");
                add(s(d, "to"), "replica");
            }
            AuditKind::Promote => {
                add(s(d, "from_site"), "primary");
                add(s(d, "to_site"), "replica");
            }
            _ => {}
        }
    }
    let mut resources: BTreeSet<String> = BTreeSet::new();
    for r in verify {
        for x in r.detail["resources"].as_array().into_iter().flatten() {
            if let Some(name) = s(x, "resource").or_else(|| s(x, "name")) {
                resources.insert(name);
            }
        }
        if let Some(name) = s(&r.detail, "resource") {
            resources.insert(name);
        }
    }
    Scope {
        groups: group.map(str::to_owned).into_iter().collect(),
        resources: resources.into_iter().collect(),
        sites: sites.into_iter().collect(),
    }
}

/// Verify records, and the steps that check (`check`, `verify`, `probe`, `http`).
fn integrity(
    records: &[AuditRecord],
    timeline: &[Step],
    verify: &[&AuditRecord],
) -> Vec<IntegrityCheck> {
    let mut out: Vec<IntegrityCheck> = Vec::new();
    for st in timeline {
        let Some(r) = record(records, st.record_index) else {
            continue;
        };
        let action = s(&r.detail, "action").unwrap_or_default();
        if matches!(action.as_str(), "check" | "verify" | "probe" | "http") {
            out.push(IntegrityCheck {
                record_index: r.index,
                what: action,
                step: Some(st.name.clone()),
                ok: st.ok,
                detail: s(&r.detail, "output")
                    .or_else(|| s(&r.detail, "error"))
                    .map(|o| one_line(&o))
                    .unwrap_or_default(),
            });
        }
    }
    for r in verify {
        let d = &r.detail;
        let per: Vec<String> = d["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(resource_line)
            .collect();
        out.push(IntegrityCheck {
            record_index: r.index,
            what: "verify".into(),
            step: None,
            ok: ["equal", "root_match", "ok", "match", "matched"]
                .iter()
                .find_map(|k| b(d, k)),
            detail: if !per.is_empty() {
                per.join("; ")
            } else if d.get("resource").is_some() {
                resource_line(d)
            } else {
                "no resource compared".into()
            },
        });
    }
    out.sort_by_key(|c| c.record_index);
    out
}

/// `name: equal|DIFFERENT` with the roots, hashes or row/page counts a verify recorded.
fn resource_line(x: &Value) -> String {
    let name = s(x, "resource")
        .or_else(|| s(x, "name"))
        .unwrap_or_default();
    let verdict = match b(x, "equal").or_else(|| b(x, "root_match")) {
        Some(true) => "equal",
        Some(false) => "DIFFERENT",
        None => "no verdict",
    };
    let mut parts = vec![format!("{name}: {verdict}")];
    for key in [
        "primary_root",
        "replica_root",
        "primary_hash",
        "replica_hash",
        "primary_pages",
        "replica_pages",
        "primary_rows",
        "replica_rows",
        "rows",
        "primary_seq",
        "seq",
        "length",
    ] {
        match x.get(key) {
            Some(Value::String(v)) => {
                parts.push(format!("{key} {}", v.chars().take(16).collect::<String>()));
            }
            Some(Value::Number(n)) => parts.push(format!("{key} {n}")),
            _ => {}
        }
    }
    parts.join(", ")
}

/// The first line of `text`, at most 160 characters.
fn one_line(text: &str) -> String {
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.chars().take(160).collect()
}

/// Missed targets, failed, retried and skipped steps, rejected approvals, refusals and an
/// outcome other than success.
fn deviations(e: &Exercise, refusals: &[&AuditRecord]) -> Vec<Deviation> {
    let mut out = Vec::new();
    let m = &e.measured;
    match (m.rto_ms, e.objectives.rto_target_ms) {
        (Some(a), Some(t)) if a > t => out.push(Deviation {
            measured_ms: Some(a),
            target_ms: Some(t),
            ..dev(
                "rto-missed",
                format!("RTO {a} ms, over the target of {t} ms"),
            )
        }),
        (None, _) => out.push(dev("rto-not-measured", "no RTO was measured".into())),
        _ => {}
    }
    if let (Some(l), Some(t)) = (m.data_loss_ms, e.objectives.rpo_target_ms) {
        if l > t {
            out.push(Deviation {
                measured_ms: Some(l),
                target_ms: Some(t),
                ..dev(
                    "data-loss-over-target",
                    format!("data-loss window {l} ms, over the RPO target of {t} ms"),
                )
            });
        }
    }
    for st in &e.timeline {
        let status = st.status.as_deref().unwrap_or("");
        let kind = match status {
            "retry" => "step-retried",
            "skipped" => "step-skipped",
            _ if st.ok == Some(false) => "step-failed",
            _ => continue,
        };
        out.push(Deviation {
            record_index: Some(st.record_index),
            step: Some(st.name.clone()),
            ..dev(kind, format!("step {} ended {status}", st.name))
        });
    }
    for a in e.approvals.iter().filter(|a| a.decision == "rejected") {
        let step = a.step.clone().unwrap_or_else(|| "?".into());
        let what = format!("{} rejected step {step}", a.approver);
        out.push(Deviation {
            record_index: Some(a.index),
            actor: Some(a.approver.clone()),
            step: Some(step),
            ..dev("approval-rejected", what)
        });
    }
    for r in refusals {
        let why = s(&r.detail, "message")
            .or_else(|| s(&r.detail, "reason"))
            .unwrap_or_default();
        let op = s(&r.detail, "op")
            .or_else(|| s(&r.detail, "call"))
            .unwrap_or_default();
        let what = format!("{op} by {} refused: {why}", r.actor);
        out.push(Deviation {
            record_index: Some(r.index),
            actor: Some(r.actor.clone()),
            detail: Some(why),
            ..dev("refused", what)
        });
    }
    if let Some(o) = e
        .outcome
        .as_deref()
        .filter(|o| !matches!(*o, "ok" | "ready"))
    {
        out.push(Deviation {
            detail: Some(o.to_string()),
            ..dev("outcome", format!("the exercise ended {o}"))
        });
    }
    out
}

/// A deviation of `kind` with only its English sentence.
fn dev(kind: &str, what: String) -> Deviation {
    Deviation {
        kind: kind.into(),
        what,
        record_index: None,
        step: None,
        actor: None,
        measured_ms: None,
        target_ms: None,
        detail: None,
    }
}

/// Actions of an exercise past their due date and still open.
fn action_deviations(actions: &[ActionView]) -> Vec<Deviation> {
    actions
        .iter()
        .filter(|a| a.state == "overdue")
        .map(|a| {
            let due = a.due.as_deref().unwrap_or("?");
            Deviation {
                record_index: a.record_indexes.last().copied(),
                detail: Some(a.id.clone()),
                ..dev(
                    "action-overdue",
                    format!("action {} is open past its due date {due}", a.id),
                )
            }
        })
        .collect()
}

/// Everyone whose certificate acted in the exercise, with what they did.
fn participants(records: &[AuditRecord], e: &Exercise) -> Vec<Participant> {
    let mut did: BTreeMap<String, Vec<Act>> = BTreeMap::new();
    let mut add = |who: &str, act: &str, about: Option<&str>| {
        let v = did.entry(who.to_string()).or_default();
        let a = Act {
            act: act.into(),
            about: about.map(str::to_owned),
        };
        if !v.contains(&a) {
            v.push(a);
        }
    };
    let start = if e.scheduled {
        "started-on-schedule"
    } else {
        "started"
    };
    add(&e.started_by, start, None);
    for a in &e.approvals {
        let act = match a.decision.as_str() {
            "rejected" => "rejected",
            "confirmed-done" => "confirmed-done",
            _ => "approved",
        };
        add(&a.approver, act, a.step.as_deref());
    }
    for r in e.record_indexes.iter().filter_map(|x| record(records, *x)) {
        if r.kind == AuditKind::Refused {
            add(&r.actor, "refused", None);
        } else if r.kind == AuditKind::Verify {
            add(&r.actor, "verified", None);
        }
    }
    for a in &e.corrective_actions {
        if let Some(by) = &a.opened_by {
            add(by, "added-action", Some(&a.id));
        }
        if let Some(by) = &a.closed_by {
            add(by, "closed-action", Some(&a.id));
        }
    }
    for so in &e.sign_off {
        add(&so.by, "signed-review", None);
    }
    did.into_iter()
        .map(|(identity, did)| Participant { identity, did })
        .collect()
}

/// The corrective actions the window's `action` records tell of.
fn actions(records: &[AuditRecord], as_of: &str) -> Vec<ActionView> {
    let mut out: Vec<ActionView> = Vec::new();
    for r in records.iter().filter(|r| r.kind == AuditKind::Action) {
        let d = &r.detail;
        let Some(id) = s(d, "id") else { continue };
        let pos = match out.iter().position(|a| a.id == id) {
            Some(p) => p,
            None => {
                out.push(ActionView {
                    id: id.clone(),
                    group: r.group.clone(),
                    run_id: None,
                    title: None,
                    owner: None,
                    due: None,
                    state: "open".into(),
                    opened_by: None,
                    opened_at: None,
                    closed_by: None,
                    closed_at: None,
                    close_note: None,
                    record_indexes: Vec::new(),
                });
                out.len() - 1
            }
        };
        let a = &mut out[pos];
        a.record_indexes.push(r.index);
        match s(d, "op").as_deref() {
            Some("add") => {
                a.run_id = s(d, "run_id");
                a.title = s(d, "title");
                a.owner = s(d, "owner");
                a.due = s(d, "due");
                a.opened_by = Some(r.actor.clone());
                a.opened_at = Some(iso_ms(r.at_ms));
            }
            Some("assign") => a.owner = s(d, "owner"),
            Some("close") => {
                a.closed_by = Some(r.actor.clone());
                a.closed_at = Some(iso_ms(r.at_ms));
                a.close_note = s(d, "note");
            }
            _ => {}
        }
    }
    for a in &mut out {
        a.state = if a.closed_by.is_some() {
            "closed"
        } else if a.due.as_deref().is_some_and(|d| d < as_of) {
            "overdue"
        } else {
            "open"
        }
        .into();
    }
    out
}

/// Signed reviews by run id, in chain order.
fn reviews(records: &[AuditRecord]) -> Vec<(String, SignOff)> {
    records
        .iter()
        .filter(|r| r.kind == AuditKind::Review)
        .filter_map(|r| {
            Some((
                s(&r.detail, "run_id")?,
                SignOff {
                    by: r.actor.clone(),
                    at_ms: r.at_ms,
                    at: iso_ms(r.at_ms),
                    note: s(&r.detail, "note").unwrap_or_default(),
                    record_index: r.index,
                },
            ))
        })
        .collect()
}

/// The group's next drill: its last drill's start (or the checked stretch's start) plus
/// `drill_every`; overdue when the export's time is past it by more than the grace.
fn next_due(cadence: &[GroupCadence], group: &str, now_ms: i64) -> Option<NextDue> {
    let c = cadence.iter().find(|c| c.group == group)?;
    let last = c
        .drills
        .iter()
        .map(|d| d.start_ms)
        .max()
        .unwrap_or(c.from_ms);
    let every = i64::try_from(c.every_ms).unwrap_or(i64::MAX);
    let due_ms = last.saturating_add(every);
    Some(NextDue {
        every_ms: c.every_ms,
        due_ms,
        due: iso_ms(due_ms),
        overdue: now_ms > due_ms.saturating_add(c.grace_ms),
    })
}

#[cfg(test)]
#[path = "aar_tests.rs"]
mod tests;
