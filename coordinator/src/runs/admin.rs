//! Starting runs and the admin API's run calls: load and validate the group's runbook, plan
//! it, commit `start_run`; list and show runs (credentials redacted); commit operators'
//! approvals, confirmations, rejections and cancellations. Acts through raft proposals only.

use super::driver::drive_all;
use super::redact::redact_secrets;
use crate::handle::coordinator::Coordinator;
use crate::state::Run;
use crate::state::{Command, ScheduledDrill, COORDINATOR_ACTOR};
use serde_json::Value;
use std::collections::BTreeMap;
use tandem_core::proto::{RunAction, RunActionRequest, RunKind, RunSummary};
use tandem_runbooks::run::{self as rb, RunEvent};
use tandem_runbooks::{plan, validate_against, PlanContext, Runbook, RunbookKind};
use tonic::Status;
use tracing::info;

/// The runbook of `kind` for `group`: the group's own file (`runbooks.*` in the topology) or
/// the stock one. Returns the runbook and the blake3 hash of its bytes.
fn load_runbook(
    c: &Coordinator,
    group: &str,
    kind: RunbookKind,
) -> Result<(Runbook, String), Status> {
    let g = c
        .topo()
        .group(group)
        .ok_or_else(|| Status::not_found(format!("no group {group:?} in the topology")))?;
    let own = match kind {
        RunbookKind::Drill => g.runbooks.drill.clone(),
        RunbookKind::Failover => g.runbooks.failover.clone(),
        RunbookKind::Switchover => g.runbooks.switchover.clone(),
        RunbookKind::Failback => g.runbooks.failback.clone(),
        RunbookKind::Custom => None,
    };
    let (rb, hash) = match own {
        Some(path) => {
            Runbook::load_hashed(&path).map_err(|e| Status::invalid_argument(e.to_string()))?
        }
        None => {
            let (file, text) = tandem_runbooks::library::stock_text(kind)
                .ok_or_else(|| Status::invalid_argument(format!("no stock runbook for {kind}")))?;
            let rb = Runbook::parse(text, file).map_err(|e| Status::internal(e.to_string()))?;
            (rb, rb::runbook_hash(text.as_bytes()))
        }
    };
    if rb.kind != kind {
        return Err(Status::invalid_argument(format!(
            "runbook {:?} is a {} runbook, not {kind}",
            rb.name, rb.kind
        )));
    }
    let sites: Vec<String> = c.topo().sites.iter().map(|s| s.name.clone()).collect();
    validate_against(&rb, &sites).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((rb, hash))
}

/// Starts a run of the group's `kind` runbook with `params`, on the leader; returns its id.
/// `rto_from_ms` starts the RTO clock earlier than now (outage detection).
///
/// # Errors
/// Unknown group, a runbook that does not load, validate or plan, another run of the group
/// under way, or no quorum.
pub(crate) async fn start(
    c: &Coordinator,
    kind: RunbookKind,
    group: &str,
    actor: &str,
    params: &BTreeMap<String, String>,
    rto_from_ms: Option<i64>,
) -> Result<String, Status> {
    start_run(c, kind, group, actor, params, rto_from_ms, None).await
}

/// Starts the group's drill on its `drill_every` schedule, as the coordinators
/// ([`COORDINATOR_ACTOR`]), with the stock or the group's drill runbook and its default
/// parameters: the same loading, planning and state gates as [`start`], and the state's
/// schedule gates ([`Command::StartRun`]'s `schedule`). Returns the run id.
///
/// # Errors
/// As [`start`], and `FailedPrecondition` when the state refuses the scheduled start.
pub(crate) async fn start_scheduled_drill(
    c: &Coordinator,
    group: &str,
    schedule: ScheduledDrill,
) -> Result<String, Status> {
    let params = BTreeMap::new();
    let actor = COORDINATOR_ACTOR;
    start_run(
        c,
        RunbookKind::Drill,
        group,
        actor,
        &params,
        None,
        Some(Box::new(schedule)),
    )
    .await
}

/// [`start`], with the schedule of a scheduled drill.
async fn start_run(
    c: &Coordinator,
    kind: RunbookKind,
    group: &str,
    actor: &str,
    params: &BTreeMap<String, String>,
    rto_from_ms: Option<i64>,
    schedule: Option<Box<ScheduledDrill>>,
) -> Result<String, Status> {
    let (rb, hash) = load_runbook(c, group, kind)?;
    let (primary, replica, epoch) = c
        .read(|s| {
            s.group(group)
                .map(|g| (g.primary_site.clone(), g.replica_site.clone(), g.epoch))
        })
        .ok_or_else(|| Status::not_found(format!("no group {group:?}")))?;
    let mode = c
        .topo()
        .group(group)
        .map(|g| g.mode)
        .ok_or_else(|| Status::not_found(format!("no group {group:?}")))?;
    let cx = PlanContext {
        group: group.to_string(),
        primary_site: primary,
        replica_site: replica,
        mode,
        epoch,
        params: params.clone(),
    };
    let plan = plan(&rb, &cx).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let now = c.now_ms();
    let run_id = format!("{}-{group}-{now}", kind.as_str());
    c.propose_cmd(Command::StartRun {
        at_ms: 0,
        run_id: run_id.clone(),
        group: group.to_string(),
        kind,
        runbook_hash: hash,
        plan,
        started_by: actor.to_string(),
        rto_from_ms,
        schedule,
    })
    .await?;
    info!(run = %run_id, %group, %kind, "run started");
    drive_all(c);
    Ok(run_id)
}

/// The runbook kind a StartRun asks for.
///
/// # Errors
/// `InvalidArgument` for an unspecified kind.
pub(crate) fn run_kind(kind: RunKind) -> Result<RunbookKind, Status> {
    match kind {
        RunKind::Failover => Ok(RunbookKind::Failover),
        RunKind::Switchover => Ok(RunbookKind::Switchover),
        RunKind::Drill => Ok(RunbookKind::Drill),
        RunKind::Failback => Ok(RunbookKind::Failback),
        RunKind::Unspecified => Err(Status::invalid_argument(
            "StartRun: kind must be failover, switchover, drill or failback",
        )),
    }
}

/// The runs (of `group`, or all when empty), as `tandem runs` lists them.
pub(crate) fn runs(c: &Coordinator, group: &str) -> Vec<RunSummary> {
    c.read(|s| {
        s.runs()
            .iter()
            .filter(|(_, run)| group.is_empty() || run.group == group)
            .map(|(id, run)| summary(id, run))
            .collect()
    })
}

/// One run, whole, with credentials redacted.
///
/// # Errors
/// `NotFound` for an unknown run.
pub(crate) fn get_run(c: &Coordinator, run_id: &str) -> Result<Value, Status> {
    c.read(|s| {
        s.run(run_id).map(|run| {
            let mut v = serde_json::to_value(run).unwrap_or(Value::Null);
            redact_secrets(&mut v);
            v
        })
    })
    .ok_or_else(|| Status::not_found(format!("no run {run_id:?}")))
}

/// An operator's approval, confirmation or rejection of a step, or cancellation of a run,
/// committed as `actor`; returns the events.
///
/// # Errors
/// An unknown run or step, an unspecified action, or whatever committing refused.
pub(crate) async fn run_action(
    c: &Coordinator,
    r: &RunActionRequest,
    actor: &str,
) -> Result<Value, Status> {
    let action = r.action();
    if action == RunAction::Unspecified {
        return Err(Status::invalid_argument(
            "RunAction: action must be approve, confirm, reject or cancel",
        ));
    }
    let step = if action == RunAction::Cancel {
        0
    } else {
        c.read(|s| {
            s.run(&r.run_id).map(|run| {
                run.state
                    .plan
                    .steps
                    .iter()
                    .position(|p| p.id == r.step || (p.index + 1).to_string() == r.step)
            })
        })
        .ok_or_else(|| Status::not_found(format!("no run {:?}", r.run_id)))?
        .ok_or_else(|| Status::not_found(format!("run {} has no step {:?}", r.run_id, r.step)))?
    };
    let at_ms = 0;
    let by = actor.to_string();
    let event = match action {
        RunAction::Approve => RunEvent::Approved { step, by, at_ms },
        RunAction::Confirm => RunEvent::ConfirmedDone { step, by, at_ms },
        RunAction::Reject => RunEvent::Rejected { step, by, at_ms },
        RunAction::Cancel | RunAction::Unspecified => RunEvent::Cancelled { by, at_ms },
    };
    let events = c
        .propose_cmd(Command::RunEvent {
            at_ms: 0,
            run_id: r.run_id.clone(),
            event,
        })
        .await?;
    drive_all(c);
    Ok(events)
}

/// One line of `tandem runs`.
fn summary(id: &str, run: &Run) -> RunSummary {
    let current = run
        .state
        .current()
        .and_then(|i| run.state.plan.steps.get(i))
        .map(|p| p.id.clone());
    RunSummary {
        run_id: id.to_owned(),
        group: run.group.clone(),
        kind: run.kind.as_str().to_owned(),
        runbook: run.state.plan.runbook.clone(),
        status: status_name(&run.state.status),
        started_ms: run.state.started_ms,
        ended_ms: run.state.ended_ms.unwrap_or(0),
        rto_ms: run.rto_ms.unwrap_or(0),
        current_step: current.unwrap_or_default(),
        started_by: run.state.started_by.clone(),
    }
}

/// The name of a run's status (`running`, `succeeded`, ...), as its JSON form tags it.
pub(crate) fn status_name(status: &tandem_runbooks::run::RunStatus) -> String {
    let v = serde_json::to_value(status).unwrap_or(Value::Null);
    v.as_str()
        .or_else(|| v["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}
