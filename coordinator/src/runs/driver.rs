//! The executor loop of one run on the leader: asks the pure run state machine what is next,
//! commits `StepStarted` before a step runs and its result after (retried while this node
//! leads), bounds each attempt by the step's timeout and dispatches it to the room of its
//! action. Acts: raft proposals, timers, fault points.

use super::failover::{demote, fence, pause, promote, reverse, wait_replicated};
use super::failure::{bound, Failure, StepResult};
use super::host::{check, expect_text, http, run_command, status_ok};
use super::replica::{recover, snapshot, verify};
use crate::audit::AuditKind;
use crate::handle::coordinator::Coordinator;
use crate::state::Command;
use crate::state::Run;
use serde_json::json;
use std::time::Duration;
use tandem_runbooks::run::{self as rb, ApprovalReason, NextAction, RunEvent};
use tandem_runbooks::{Action, PlannedStep};
use tonic::Status;
use tracing::{info, warn};

/// Spawns a driver for every unfinished run that has none (called on the leader every tick).
pub(crate) fn drive_all(c: &Coordinator) {
    let unfinished: Vec<String> = c.read(|s| {
        s.runs()
            .iter()
            .filter(|(_, r)| r.is_running())
            .map(|(id, _)| id.clone())
            .collect()
    });
    let mut tasks = c.drivers().lock();
    tasks.retain(|_, t| !t.is_finished());
    for id in unfinished {
        if !tasks.contains_key(&id) {
            let c2 = c.clone();
            let id2 = id.clone();
            tasks.insert(id, tokio::spawn(async move { drive(c2, id2).await }));
        }
    }
}

/// Proposes a run event; `Ok(false)` when the state refused it.
async fn commit(c: &Coordinator, run_id: &str, event: &RunEvent) -> Result<bool, Status> {
    let cmd = Command::RunEvent {
        at_ms: 0,
        run_id: run_id.to_string(),
        event: event.clone(),
    };
    match c.propose_cmd(cmd).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == tonic::Code::FailedPrecondition => {
            warn!(run = %run_id, "event refused: {}", e.message());
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Drives one run while this node leads: the executor loop.
async fn drive(c: Coordinator, run_id: String) {
    loop {
        if !c.is_leader() {
            return;
        }
        let Some(run) = c.read(|s| s.run(&run_id).cloned()) else {
            return;
        };
        let now = c.now_ms();
        match rb::next_action(&run.state) {
            NextAction::Done(status) => {
                info!(run = %run_id, ?status, rto_ms = ?run.rto_ms, "run finished");
                return;
            }
            // Nobody on this node started it: a previous leader did. Apply the resume rules.
            NextAction::InFlight { step } => {
                info!(run = %run_id, step, "resuming a run whose step was under way on a previous leader");
                if commit(&c, &run_id, &RunEvent::LeaderChanged { at_ms: 0 })
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            NextAction::AwaitApproval { step, reason } => {
                let timed_out = matches!(reason, ApprovalReason::Gate { .. })
                    && run
                        .state
                        .steps
                        .get(step)
                        .and_then(|s| s.started_ms)
                        .is_some_and(|t| {
                            let timeout = run.state.plan.steps[step].timeout.as_millis();
                            now as u64 > t.saturating_add(timeout)
                        });
                if timed_out {
                    let ev = RunEvent::Rejected {
                        step,
                        by: "coordinator (approval timed out)".into(),
                        at_ms: 0,
                    };
                    let _ = commit(&c, &run_id, &ev).await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            NextAction::RetryAt { not_before_ms, .. } if (now as u64) < not_before_ms => {
                let wait = (not_before_ms - now as u64).min(500);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            NextAction::Start { step, attempt } | NextAction::RetryAt { step, attempt, .. } => {
                match commit(&c, &run_id, &RunEvent::StepStarted { step, at_ms: 0 }).await {
                    Ok(true) => {}
                    _ => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
                let planned = run.state.plan.steps[step].clone();
                if matches!(planned.action, Action::Approve { .. }) {
                    info!(run = %run_id, step = %planned.id, "waiting for approval: tandem approve {run_id} {}", planned.id);
                    continue;
                }
                let event = run_attempt(&c, &run, &run_id, step, &planned, attempt).await;
                // The result must land: retry while this node leads.
                for _ in 0..50 {
                    if !c.is_leader() {
                        return;
                    }
                    match commit(&c, &run_id, &event).await {
                        Ok(_) => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        }
    }
}

/// One attempt of step `step` (the `attempt`th), bounded by its timeout and the fault points
/// around it; returns the event that records its result.
async fn run_attempt(
    c: &Coordinator,
    run: &Run,
    run_id: &str,
    step: usize,
    planned: &PlannedStep,
    attempt: u32,
) -> RunEvent {
    info!(run = %run_id, step = %planned.id, action = planned.action.name(), attempt, "step started");
    let t0 = c.now_ms();
    let timeout = Duration::from_millis(planned.timeout.as_millis());
    let point = format!("runbook-before-step:{}", planned.action.name());
    let result = match tandem_core::fault::check(&point) {
        Err(e) => Err(Failure::new(e.to_string())),
        Ok(()) => match tokio::time::timeout(timeout, execute(c, run, planned)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::new(format!("timed out after {}", planned.timeout))),
        },
    };
    let point = format!("runbook-after-step:{}", planned.action.name());
    let result = match (result, tandem_core::fault::check(&point)) {
        (Ok(_), Err(e)) => Err(Failure::new(e.to_string())),
        (r, _) => r,
    };
    let ms = c.now_ms() - t0;
    match result {
        Ok(output) => {
            info!(run = %run_id, step = %planned.id, ms, "step succeeded");
            RunEvent::StepSucceeded {
                step,
                at_ms: 0,
                output: bound(&output, 16_000),
            }
        }
        Err(f) => {
            warn!(run = %run_id, step = %planned.id, ms, "step failed: {}", f.error);
            RunEvent::StepFailed {
                step,
                at_ms: 0,
                error: bound(&f.error, 4000),
                output: bound(&f.output, 16_000),
            }
        }
    }
}

/// Runs one attempt of a step; the caller bounds it by the step's timeout.
pub(super) async fn execute(c: &Coordinator, run: &Run, step: &PlannedStep) -> StepResult {
    let group = run.group.as_str();
    match &step.action {
        Action::Fence => fence(c, run).await,
        Action::Promote => promote(c, run, step).await,
        Action::Demote => demote(c, run).await,
        Action::Reverse => reverse(c, group).await,
        Action::WaitReplicated { max_lag } => wait_replicated(c, group, *max_lag).await,
        Action::PauseReplication => pause(c, run, true).await,
        Action::ResumeReplication => pause(c, run, false).await,
        Action::Verify => verify(c, run).await,
        Action::Snapshot { name } => snapshot(c, run, step, name).await,
        Action::Recover { name, point } => recover(c, run, step, name, point).await,
        Action::Exec { command, env } => {
            let out = run_command(c, run, step, command, env).await?;
            if out.0 {
                Ok(out.1)
            } else {
                Err(Failure {
                    error: tandem_runbooks::run::failure_summary(&out.1),
                    output: out.1,
                })
            }
        }
        Action::Check { probe, interval } => check(c, run, step, probe, interval.as_millis()).await,
        Action::Http {
            url,
            method,
            body,
            headers,
            expect_status,
        } => {
            let (status, text) = http(url, method, body.as_deref(), headers)
                .await
                .map_err(Failure::new)?;
            if status_ok(status, *expect_status) {
                Ok(format!("HTTP {status}\n{text}"))
            } else {
                Err(Failure {
                    error: format!("HTTP {status} (expected {})", expect_text(*expect_status)),
                    output: text,
                })
            }
        }
        Action::Sleep { duration } => {
            tokio::time::sleep(Duration::from_millis(duration.as_millis())).await;
            Ok(format!("slept {duration}"))
        }
        Action::Notify { message, channel } => {
            let channel = channel.clone().unwrap_or_else(|| "default".into());
            info!(run = %run.state.run_id, group, %channel, "NOTIFY: {message}");
            c.propose_cmd(Command::Record {
                at_ms: 0,
                actor: crate::state::COORDINATOR_ACTOR.into(),
                kind: AuditKind::Note,
                group: Some(group.to_string()),
                detail: json!({"run_id": run.state.run_id, "step": step.id, "notify": message, "channel": channel}),
            })
            .await?;
            Ok(format!("[{channel}] {message}"))
        }
        // Never executed: committing its start makes it wait for an operator.
        Action::Approve { .. } => Err(Failure::new("an approve step is not executed")),
    }
}
