//! Starting runs and the admin API's `Operate`: load and validate the group's runbook, plan
//! it, commit `start_run`; list and show runs (credentials redacted); commit operators'
//! approvals, confirmations, rejections and cancellations. Acts through raft proposals only.

use super::driver::drive_all;
use super::redact::redact_secrets;
use crate::handle::coordinator::Coordinator;
use crate::state::Run;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tandem_core::proto::OperateRequest;
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
    c.propose(json!({
        "op": "start_run", "run_id": run_id, "group": group, "kind": kind,
        "runbook_hash": hash, "plan": plan, "started_by": actor, "rto_from_ms": rto_from_ms,
    }))
    .await?;
    info!(run = %run_id, %group, %kind, "run started");
    drive_all(c);
    Ok(run_id)
}

/// The admin API's `Operate`: start runs, list and show them, approve, confirm, reject and
/// cancel their steps.
///
/// # Errors
/// An unknown operation, run or step, or whatever starting or committing refused.
pub(crate) async fn operate(
    c: &Coordinator,
    r: &OperateRequest,
    actor: &str,
) -> Result<Value, Status> {
    let kind = match r.op.as_str() {
        "failover" => Some(RunbookKind::Failover),
        "switchover" => Some(RunbookKind::Switchover),
        "drill" => Some(RunbookKind::Drill),
        "failback" => Some(RunbookKind::Failback),
        _ => None,
    };
    if let Some(kind) = kind {
        let params: BTreeMap<String, String> = r.params.clone().into_iter().collect();
        let id = start(c, kind, &r.group, actor, &params, None).await?;
        return Ok(json!({ "run_id": id }));
    }
    match r.op.as_str() {
        "runs" => Ok(c.read(|s| {
            Value::Array(
                s.runs()
                    .iter()
                    .filter(|(_, run)| r.group.is_empty() || run.group == r.group)
                    .map(|(id, run)| summary(id, run))
                    .collect(),
            )
        })),
        "run" => c
            .read(|s| {
                s.run(&r.run_id).map(|run| {
                    let mut v = serde_json::to_value(run).unwrap_or(Value::Null);
                    redact_secrets(&mut v);
                    v
                })
            })
            .ok_or_else(|| Status::not_found(format!("no run {:?}", r.run_id))),
        "approve" | "confirm" | "reject" | "cancel" => {
            let step = if r.op == "cancel" {
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
            let event = match r.op.as_str() {
                "approve" => RunEvent::Approved { step, by, at_ms },
                "confirm" => RunEvent::ConfirmedDone { step, by, at_ms },
                "reject" => RunEvent::Rejected { step, by, at_ms },
                _ => RunEvent::Cancelled { by, at_ms },
            };
            c.propose(json!({"op": "run_event", "run_id": r.run_id, "event": event}))
                .await?;
            drive_all(c);
            Ok(json!({"run_id": r.run_id, "op": r.op, "step": r.step}))
        }
        other => Err(Status::invalid_argument(format!(
            "unknown operation {other:?} (failover | switchover | drill | failback | runs | run | approve | confirm | reject | cancel)"
        ))),
    }
}

/// One line of `tandem runs`.
fn summary(id: &str, run: &Run) -> Value {
    let current = run
        .state
        .current()
        .and_then(|i| run.state.plan.steps.get(i))
        .map(|p| p.id.clone());
    json!({
        "run_id": id, "group": run.group, "kind": run.kind, "runbook": run.state.plan.runbook,
        "status": run.state.status, "started_ms": run.state.started_ms,
        "ended_ms": run.state.ended_ms, "rto_ms": run.rto_ms, "current_step": current,
        "started_by": run.state.started_by,
    })
}
