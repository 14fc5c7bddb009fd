//! Runbook runs: start (one unfinished run per group, plan placements within the group's
//! jurisdictions), events applied with the run state machine and audited step by step, the RTO
//! at the first passing check, and the closing records of a run that ended. Pure.

use super::event::Event;
use super::machine::{get_group, to_json, State};
use super::model::{GroupState, Run, ScheduledDrill, SiteStatus, COORDINATOR_ACTOR};
use super::rejection::Rejection;
use super::residency::{check_residency, plan_placements};
use super::role::change_group_state;
use crate::audit::AuditKind;
use serde_json::{json, Value};
use tandem_runbooks::run::{self as rb, RunEvent, RunState, RunStatus};
use tandem_runbooks::{Action, Plan, RunbookKind};

/// The fields of a [`Command::StartRun`](super::command::Command::StartRun).
pub(super) struct RunStart<'a> {
    pub(super) run_id: &'a str,
    pub(super) group: &'a str,
    pub(super) kind: RunbookKind,
    pub(super) runbook_hash: &'a str,
    pub(super) plan: &'a Plan,
    pub(super) started_by: &'a str,
    pub(super) rto_from_ms: Option<i64>,
    pub(super) schedule: Option<&'a ScheduledDrill>,
}

/// A drill on the group's schedule starts only if it is a drill the coordinators start, the
/// group may drill ([`super::model::Group::scheduled_drill_allowed`]), the last drill is the
/// one the scheduler saw, and the next one is due at `now`.
fn check_scheduled(
    state: &State,
    now: i64,
    start: &RunStart<'_>,
    sched: &ScheduledDrill,
) -> Result<(), Rejection> {
    let refuse = |reason: String| Rejection::ScheduledDrillRefused {
        group: start.group.to_string(),
        reason,
    };
    if start.kind != RunbookKind::Drill || start.started_by != COORDINATOR_ACTOR {
        return Err(refuse(format!(
            "only a drill started by {COORDINATOR_ACTOR} runs on the schedule, not a {} started by {}",
            start.kind, start.started_by
        )));
    }
    let g = get_group(state, start.group)?;
    g.scheduled_drill_allowed().map_err(refuse)?;
    let last = state.last_drill_ms(start.group);
    if last != sched.last_drill_ms {
        return Err(refuse(format!(
            "the last drill started at {:?} ms, not at {:?} as scheduled",
            last, sched.last_drill_ms
        )));
    }
    let due = crate::cadence::next_due_ms(last, g.created_ms, sched.every_ms);
    if now < due {
        return Err(refuse(format!("not due before {due} ms (now {now} ms)")));
    }
    Ok(())
}

pub(super) fn start_run(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    start: RunStart<'_>,
) -> Result<(), Rejection> {
    get_group(state, start.group)?;
    if state.runs.contains_key(start.run_id) {
        return Err(Rejection::RunExists {
            run_id: start.run_id.to_string(),
        });
    }
    if let Some((id, _)) = state
        .runs
        .iter()
        .find(|(_, r)| r.group == start.group && r.is_running())
    {
        return Err(Rejection::RunUnderWay {
            group: start.group.to_string(),
            run_id: id.clone(),
        });
    }
    if start.kind == RunbookKind::Failover && start.started_by == COORDINATOR_ACTOR {
        if let Some(since_ms) = get_group(state, start.group)?.sync_degraded_since {
            return Err(Rejection::SyncDegraded {
                group: start.group.to_string(),
                since_ms,
            });
        }
    }
    if let Some(sched) = start.schedule {
        check_scheduled(state, now, &start, sched)?;
    }
    if start.plan.group != start.group {
        return Err(Rejection::BadPlan {
            reason: format!(
                "the plan is for group {}, not {}",
                start.plan.group, start.group
            ),
        });
    }
    if start.plan.steps.is_empty() {
        return Err(Rejection::BadPlan {
            reason: "the plan has no steps".into(),
        });
    }
    for (what, site) in plan_placements(start.plan) {
        check_residency(state, start.group, &what, &site)?;
    }
    let at = u64::try_from(now).unwrap_or(0);
    let run_state = RunState::new(
        start.run_id,
        start.plan.clone(),
        start.runbook_hash,
        start.started_by,
        at,
    );
    let run = Run {
        group: start.group.to_string(),
        kind: start.kind,
        rto_from_ms: start.rto_from_ms.map_or(now, |t| t.min(now)),
        rto_ms: None,
        state: run_state,
    };
    let mut detail = json!({
        "run_id": start.run_id,
        "runbook": start.plan.runbook,
        "kind": start.kind.as_str(),
        "started_by": start.started_by,
        "runbook_hash": start.runbook_hash,
        "params": to_json(&start.plan.params),
        "epoch": start.plan.epoch.0,
        "primary": start.plan.primary,
        "replica": start.plan.replica,
        "rto_from_ms": run.rto_from_ms,
    });
    if let Some(sched) = start.schedule {
        detail["reason"] = json!(sched.reason);
        detail["scheduled"] = json!({
            "drill_every_ms": sched.every_ms,
            "last_drill_ms": sched.last_drill_ms,
        });
    }
    let kind = if start.kind == RunbookKind::Drill {
        detail["phase"] = json!("start");
        AuditKind::Drill
    } else {
        detail["step"] = json!("run");
        detail["status"] = json!("started");
        AuditKind::RunbookStep
    };
    state.record_audit(ev, now, start.started_by, kind, Some(start.group), detail);
    ev.push(Event::RunStarted {
        run_id: start.run_id.to_string(),
        group: start.group.to_string(),
    });
    let finished = !run.is_running();
    state.runs.insert(start.run_id.to_string(), run);
    if finished {
        audit_run_end(state, ev, now, start.run_id);
    }
    Ok(())
}

/// The event with its time replaced by `now` (the leader-stamped, monotonic time).
fn stamped(event: &RunEvent, now: i64) -> RunEvent {
    let t = u64::try_from(now).unwrap_or(0);
    let mut e = event.clone();
    match &mut e {
        RunEvent::StepStarted { at_ms, .. }
        | RunEvent::StepSucceeded { at_ms, .. }
        | RunEvent::StepFailed { at_ms, .. }
        | RunEvent::Approved { at_ms, .. }
        | RunEvent::ConfirmedDone { at_ms, .. }
        | RunEvent::Rejected { at_ms, .. }
        | RunEvent::LeaderChanged { at_ms }
        | RunEvent::Cancelled { at_ms, .. } => *at_ms = t,
    }
    e
}

pub(super) fn run_event(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    run_id: &str,
    event: &RunEvent,
) -> Result<(), Rejection> {
    let run = state
        .runs
        .get(run_id)
        .ok_or_else(|| Rejection::UnknownRun {
            run_id: run_id.to_string(),
        })?;
    let event = stamped(event, now);
    let mut next = run.state.clone();
    let before_current = next.current();
    rb::record(&mut next, event.clone()).map_err(|e| Rejection::RunEventRefused {
        run_id: run_id.to_string(),
        message: e.to_string(),
    })?;
    let group = run.group.clone();
    let was_running = run.is_running();
    let mut rto_ms = run.rto_ms;
    if let RunEvent::StepSucceeded { step, .. } = &event {
        if is_check(&next, *step) && rto_ms.is_none() {
            rto_ms = Some(now.saturating_sub(run.rto_from_ms));
        }
    }
    let records = event_records(run_id, &next, before_current, &event, now, rto_ms);
    let status = next.status.clone();
    if let Some(r) = state.runs.get_mut(run_id) {
        r.state = next;
        r.rto_ms = rto_ms;
    }
    for (actor, kind, detail) in records {
        state.record_audit(ev, now, &actor, kind, Some(&group), detail);
    }
    ev.push(Event::RunRecorded {
        run_id: run_id.to_string(),
        status: status.clone(),
    });
    if was_running && status != RunStatus::Running {
        audit_run_end(state, ev, now, run_id);
        settle_failover_without_promotion(state, ev, now, run_id, &group, &status)?;
    }
    Ok(())
}

/// Whether step `step` of the run is a `check` (its first pass stops the RTO clock).
fn is_check(run: &RunState, step: usize) -> bool {
    matches!(
        run.plan.steps.get(step).map(|p| &p.action),
        Some(Action::Check { .. })
    )
}

/// The audit records (actor, kind, detail) of one event applied to a run, from the run as it
/// is after the event (`next`); `before_current` is the step that was current before it.
fn event_records(
    run_id: &str,
    next: &RunState,
    before_current: Option<usize>,
    event: &RunEvent,
    now: i64,
    rto_ms: Option<i64>,
) -> Vec<(String, AuditKind, Value)> {
    let runbook = &next.plan.runbook;
    let step_info = |i: usize| {
        let p = next.plan.steps.get(i);
        let s = next.steps.get(i);
        (
            p.map(|p| p.id.clone()).unwrap_or_default(),
            p.map(|p| p.action.name()).unwrap_or(""),
            p.map(|p| p.site.to_string()).unwrap_or_default(),
            s.cloned(),
        )
    };
    let base = |step: &str, action: &str| json!({"run_id": run_id, "runbook": runbook, "step": step, "action": action});
    let mut records: Vec<(String, AuditKind, Value)> = Vec::new();
    match event {
        RunEvent::StepStarted { step, .. } => {
            let (id, action, site, s) = step_info(*step);
            let mut d = base(&id, action);
            d["status"] = json!("started");
            d["site"] = json!(site);
            d["attempt"] = json!(s.map_or(0, |s| s.attempts));
            records.push((COORDINATOR_ACTOR.into(), AuditKind::RunbookStep, d));
        }
        RunEvent::StepSucceeded { step, output, .. } => {
            let (id, action, _, s) = step_info(*step);
            let mut d = base(&id, action);
            d["status"] = json!("ok");
            d["ok"] = json!(true);
            d["ms"] = json!(step_ms(s.as_ref(), now));
            d["output"] = json!(rb::excerpt(output));
            if is_check(next, *step) {
                d["rto_ms"] = json!(rto_ms);
            }
            records.push((COORDINATOR_ACTOR.into(), AuditKind::RunbookStep, d));
        }
        RunEvent::StepFailed {
            step,
            error,
            output,
            ..
        } => {
            let (id, action, _, s) = step_info(*step);
            let mut d = base(&id, action);
            let final_failure = s.as_ref().is_some_and(|s| s.status.is_terminal());
            d["status"] = json!(if final_failure { "failed" } else { "retry" });
            if final_failure {
                d["ok"] = json!(false);
            } else {
                d["retry_at_ms"] = json!(s.as_ref().and_then(|s| s.retry_at_ms));
            }
            d["ms"] = json!(step_ms(s.as_ref(), now));
            d["error"] = json!(error);
            d["output"] = json!(rb::excerpt(output));
            records.push((COORDINATOR_ACTOR.into(), AuditKind::RunbookStep, d));
        }
        RunEvent::Approved { step, by, .. }
        | RunEvent::ConfirmedDone { step, by, .. }
        | RunEvent::Rejected { step, by, .. } => {
            let decision = match event {
                RunEvent::Approved { .. } => "approved",
                RunEvent::ConfirmedDone { .. } => "confirmed-done",
                _ => "rejected",
            };
            let (id, action, _, s) = step_info(*step);
            let mut d = base(&id, action);
            d["approver"] = json!(by);
            d["decision"] = json!(decision);
            records.push((by.clone(), AuditKind::Approval, d));
            if let Some(s) = s.as_ref().filter(|s| s.status.is_terminal()) {
                let ok = s.status == rb::StepStatus::Succeeded;
                let mut d = base(&id, action);
                d["status"] = json!(if ok { "ok" } else { "failed" });
                d["ok"] = json!(ok);
                d["ms"] = json!(step_ms(Some(s), now));
                d["decided_by"] = json!(by);
                records.push((by.clone(), AuditKind::RunbookStep, d));
            }
        }
        RunEvent::LeaderChanged { .. } => {
            let (id, action, _, s) = before_current.map(step_info).unwrap_or_default();
            let mut d = base(&id, action);
            d["event"] = json!("leader_changed");
            d["step_status"] = json!(s.map(|s| s.status));
            records.push((COORDINATOR_ACTOR.into(), AuditKind::Note, d));
        }
        RunEvent::Cancelled { by, .. } => {
            let mut d = base("run", "");
            d["event"] = json!("cancelled");
            d["by"] = json!(by);
            records.push((by.clone(), AuditKind::Note, d));
        }
    }
    records
}

/// An unplanned failover that ended without promoting (the replica site down too, say) must
/// not leave the group `failing-over` for good: no lease would ever be granted again. The
/// fence stands (the epoch was raised); the primary site keeps its role and its replicator may
/// take a lease in the new epoch. The group is `degraded` by the site that is down, if any
/// (its return protects it again), else until the replica reports itself in sync.
fn settle_failover_without_promotion(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    run_id: &str,
    group: &str,
    status: &RunStatus,
) -> Result<(), Rejection> {
    let kind = state.runs.get(run_id).map(|r| r.kind);
    let still_failing_over =
        get_group(state, group).is_ok_and(|g| g.state == GroupState::FailingOver);
    if kind == Some(RunbookKind::Failover) && still_failing_over {
        let how = match status {
            RunStatus::Cancelled { by } => format!("cancelled by {by}"),
            _ => "failed".to_string(),
        };
        let reason = format!(
            "failover run {run_id} {how} before a promotion; the primary site keeps its role"
        );
        // Degraded by whichever of its sites is down, so that its return ends it as any
        // site's loss; with both up, the replica's next in-sync report does.
        let down = get_group(state, group).ok().and_then(|g| {
            [&g.primary_site, &g.replica_site]
                .into_iter()
                .find(|site| {
                    state
                        .sites
                        .get(site.as_str())
                        .is_some_and(|x| x.status == SiteStatus::Down)
                })
                .cloned()
        });
        change_group_state(
            state,
            ev,
            now,
            group,
            GroupState::Degraded,
            &reason,
            COORDINATOR_ACTOR,
            down,
        )?;
    }
    Ok(())
}

/// Milliseconds since the step's first start.
fn step_ms(s: Option<&rb::StepState>, now: i64) -> i64 {
    s.and_then(|s| s.started_ms)
        .map_or(0, |t| now.saturating_sub(i64::try_from(t).unwrap_or(now)))
}

/// The closing audit records of a run that just ended: the run's end (a `drill` end record for
/// drills, a `runbook_step` "run" record otherwise) and, for failovers, switchovers and
/// failbacks, an `operator` report with the RTO and the step timeline.
fn audit_run_end(state: &mut State, ev: &mut Vec<Event>, now: i64, run_id: &str) {
    let Some(run) = state.runs.get(run_id) else {
        return;
    };
    let ok = run.state.status == RunStatus::Succeeded;
    let status = match &run.state.status {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "ok",
        RunStatus::Failed { .. } => "failed",
        RunStatus::Cancelled { .. } => "cancelled",
    };
    let group = run.group.clone();
    let kind = run.kind;
    let runbook = run.state.plan.runbook.clone();
    let ms = now.saturating_sub(i64::try_from(run.state.started_ms).unwrap_or(now));
    let steps: Vec<Value> = run
        .state
        .steps
        .iter()
        .zip(&run.state.plan.steps)
        .filter_map(|(s, p)| {
            let start = i64::try_from(s.started_ms?).ok()?;
            let end = s
                .ended_ms
                .and_then(|e| i64::try_from(e).ok())
                .unwrap_or(now);
            Some(json!({
                "step": p.id, "action": p.action.name(), "at_ms": start,
                "ms": end.saturating_sub(start), "status": s.status,
            }))
        })
        .collect();
    let mut records = Vec::new();
    if kind == RunbookKind::Drill {
        records.push((
            AuditKind::Drill,
            json!({"run_id": run_id, "runbook": runbook, "phase": "end", "status": status,
                   "ok": ok, "rto_ms": run.rto_ms, "ms": ms}),
        ));
    } else {
        records.push((
            AuditKind::RunbookStep,
            json!({"run_id": run_id, "runbook": runbook, "step": "run", "status": status,
                   "ok": ok, "rto_ms": run.rto_ms, "ms": ms}),
        ));
    }
    if matches!(
        kind,
        RunbookKind::Failover | RunbookKind::Switchover | RunbookKind::Failback
    ) {
        let g = state.groups.get(&group);
        let loss = (kind == RunbookKind::Failover)
            .then(|| g.and_then(|g| g.last_failover.as_ref()).map(to_json))
            .flatten();
        records.push((
            AuditKind::Operator,
            json!({
                "op": kind.as_str(), "run_id": run_id, "runbook": runbook, "group": group,
                "from": run.state.plan.primary, "to": run.state.plan.replica,
                "epoch": g.map(|g| g.epoch.0), "detected_ms": run.rto_from_ms,
                "rto_ms": run.rto_ms.unwrap_or(ms), "ready": ok && run.rto_ms.is_some(),
                "status": status, "data_loss_window": loss, "steps": steps,
            }),
        ));
    }
    for (k, d) in records {
        state.record_audit(ev, now, COORDINATOR_ACTOR, k, Some(&group), d);
    }
}
