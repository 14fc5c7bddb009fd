//! Events, and how each committed event changes a run: [`record`] admits the event (it must
//! be about the current step, in a state that expects it), then one handler per event kind
//! applies it, including the leader-change resume rule (repeat a repeatable step, ask an
//! operator about one that may have run) and the retry policy (back off, or fail for good).
//!
//! Pure: a run and an event in, the changed run (or a refusal, the run unchanged) out.

use serde::{Deserialize, Serialize};

use super::output::excerpt;
use super::state::{ApprovalReason, RunState, RunStatus, StepStatus};
use crate::error::RunbookError;
use crate::model::Action;

/// Something that happened to a run, committed through Raft and then applied with [`record`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum RunEvent {
    /// The step is about to run (committed before it runs).
    StepStarted {
        /// Plan index.
        step: usize,
        /// Time.
        at_ms: u64,
    },
    /// The step finished well.
    StepSucceeded {
        /// Plan index.
        step: usize,
        /// Time.
        at_ms: u64,
        /// Its output (bounded when stored).
        output: String,
    },
    /// The step's attempt failed (timeout included).
    StepFailed {
        /// Plan index.
        step: usize,
        /// Time.
        at_ms: u64,
        /// Why.
        error: String,
        /// Its output (bounded when stored).
        output: String,
    },
    /// An operator approved the step: a gate passes; a step that may have run runs again.
    Approved {
        /// Plan index.
        step: usize,
        /// Who.
        by: String,
        /// Time.
        at_ms: u64,
    },
    /// An operator says a step that may have run did run, and well: it counts as succeeded.
    ConfirmedDone {
        /// Plan index.
        step: usize,
        /// Who.
        by: String,
        /// Time.
        at_ms: u64,
    },
    /// An operator rejected the step: it fails (its `on_failure` applies).
    Rejected {
        /// Plan index.
        step: usize,
        /// Who.
        by: String,
        /// Time.
        at_ms: u64,
    },
    /// A new coordinator leader takes over the run: apply the resume rules.
    LeaderChanged {
        /// Time.
        at_ms: u64,
    },
    /// An operator stops the run.
    Cancelled {
        /// Who.
        by: String,
        /// Time.
        at_ms: u64,
    },
}

impl RunEvent {
    /// The event, briefly, for an [`RunbookError::UnexpectedEvent`].
    fn describe(&self) -> String {
        match self {
            RunEvent::StepStarted { step, .. } => format!("start of step {step}"),
            RunEvent::StepSucceeded { step, .. } => format!("success of step {step}"),
            RunEvent::StepFailed { step, .. } => format!("failure of step {step}"),
            RunEvent::Approved { step, .. } => format!("approval of step {step}"),
            RunEvent::ConfirmedDone { step, .. } => format!("confirmation of step {step}"),
            RunEvent::Rejected { step, .. } => format!("rejection of step {step}"),
            RunEvent::LeaderChanged { .. } => "leader change".to_string(),
            RunEvent::Cancelled { .. } => "cancellation".to_string(),
        }
    }

    /// The step the event is about (plan index); `None` for run-wide events.
    fn step(&self) -> Option<usize> {
        match self {
            RunEvent::StepStarted { step, .. }
            | RunEvent::StepSucceeded { step, .. }
            | RunEvent::StepFailed { step, .. }
            | RunEvent::Approved { step, .. }
            | RunEvent::ConfirmedDone { step, .. }
            | RunEvent::Rejected { step, .. } => Some(*step),
            RunEvent::LeaderChanged { .. } | RunEvent::Cancelled { .. } => None,
        }
    }
}

/// Applies a committed event to `run`.
///
/// # Errors
/// [`RunbookError::UnexpectedEvent`] when the event does not fit the state (a step that is not
/// the current one, a result for a step not running, an approval nobody asked for, anything
/// after the run ended); `run` is then unchanged.
pub fn record(run: &mut RunState, event: RunEvent) -> Result<(), RunbookError> {
    let Some(a) = admit(run, &event)? else {
        return Ok(());
    };
    match event {
        RunEvent::StepStarted { step, at_ms } => started(run, &a, step, at_ms),
        RunEvent::StepSucceeded {
            step,
            at_ms,
            output,
        } => succeeded(run, &a, step, at_ms, &output),
        RunEvent::StepFailed {
            step,
            at_ms,
            error,
            output,
        } => failed(run, &a, step, at_ms, error, &output),
        RunEvent::Approved { step, by, at_ms } => approved(run, &a, step, by, at_ms),
        RunEvent::ConfirmedDone { step, by, at_ms } => confirmed_done(run, &a, step, by, at_ms),
        RunEvent::Rejected { step, by, at_ms } => rejected(run, &a, step, by, at_ms),
        RunEvent::LeaderChanged { .. } => {
            leader_changed(run, a.current);
            Ok(())
        }
        RunEvent::Cancelled { by, at_ms } => {
            cancelled(run, a.current, by, at_ms);
            Ok(())
        }
    }
}

/// What [`admit`] found out about an event that fits the run.
struct Admitted {
    /// The event, briefly.
    described: String,
    /// The run's current step.
    current: Option<usize>,
    /// The status of the event's step (`None` for run-wide events).
    status: Option<StepStatus>,
    /// Why the current step waits, if it does.
    awaiting: Option<ApprovalReason>,
}

impl Admitted {
    /// The refusal of this event, for `reason`.
    fn reject(&self, run: &RunState, reason: &str) -> RunbookError {
        RunbookError::UnexpectedEvent {
            run_id: run.run_id.clone(),
            event: self.described.clone(),
            reason: reason.to_string(),
        }
    }
}

/// The checks every event passes before it applies: the state matches its plan, the run has
/// not ended and a step event is about the current step. `Ok(None)` for a leader change on an
/// ended run (nothing to do).
fn admit(run: &RunState, event: &RunEvent) -> Result<Option<Admitted>, RunbookError> {
    let mut a = Admitted {
        described: event.describe(),
        current: None,
        status: None,
        awaiting: None,
    };
    if run.steps.len() != run.plan.steps.len() {
        return Err(a.reject(run, "the run state does not match its plan"));
    }
    if run.status != RunStatus::Running {
        if matches!(event, RunEvent::LeaderChanged { .. }) {
            return Ok(None);
        }
        return Err(a.reject(run, "the run has ended"));
    }
    let current = run.current();
    a.status = match event.step() {
        Some(step) if Some(step) != current => {
            return Err(a.reject(run, &format!("the current step is {current:?}, not {step}")))
        }
        Some(step) => Some(run.steps[step].status),
        None => None,
    };
    a.current = current;
    a.awaiting = current.and_then(|i| run.steps[i].awaiting.clone());
    Ok(Some(a))
}

/// A pending step starts: an `approve` gate starts waiting for an operator.
fn started(run: &mut RunState, a: &Admitted, step: usize, at_ms: u64) -> Result<(), RunbookError> {
    if a.status != Some(StepStatus::Pending) {
        return Err(a.reject(run, "the step is not pending"));
    }
    let gate = match &run.plan.steps[step].action {
        Action::Approve { prompt } => Some(prompt.clone()),
        _ => None,
    };
    let s = &mut run.steps[step];
    s.attempts += 1;
    s.started_ms.get_or_insert(at_ms);
    s.retry_at_ms = None;
    match gate {
        Some(prompt) => {
            s.status = StepStatus::AwaitingApproval;
            s.awaiting = Some(ApprovalReason::Gate { prompt });
        }
        None => s.status = StepStatus::Running,
    }
    Ok(())
}

/// A running step succeeded.
fn succeeded(
    run: &mut RunState,
    a: &Admitted,
    step: usize,
    at_ms: u64,
    output: &str,
) -> Result<(), RunbookError> {
    if a.status != Some(StepStatus::Running) {
        return Err(a.reject(run, "the step is not running"));
    }
    let s = &mut run.steps[step];
    s.status = StepStatus::Succeeded;
    s.ended_ms = Some(at_ms);
    s.output_excerpt = excerpt(output);
    s.error = None;
    run.settle(at_ms);
    Ok(())
}

/// A running step's attempt failed: the retry policy waits `delay_after(failures)` while
/// retries remain, and the step fails for good after that.
fn failed(
    run: &mut RunState,
    a: &Admitted,
    step: usize,
    at_ms: u64,
    error: String,
    output: &str,
) -> Result<(), RunbookError> {
    if a.status != Some(StepStatus::Running) {
        return Err(a.reject(run, "the step is not running"));
    }
    let retries = run.plan.steps[step].retries;
    let s = &mut run.steps[step];
    s.failures += 1;
    s.output_excerpt = excerpt(output);
    s.error = Some(error);
    if s.failures <= retries.count {
        s.status = StepStatus::Pending;
        s.retry_at_ms = Some(at_ms.saturating_add(retries.delay_after(s.failures).as_millis()));
    } else {
        run.failed_for_good(step, at_ms);
    }
    Ok(())
}

/// An operator approved a waiting step: a gate passes; a step that may have run runs again.
fn approved(
    run: &mut RunState,
    a: &Admitted,
    step: usize,
    by: String,
    at_ms: u64,
) -> Result<(), RunbookError> {
    if a.status != Some(StepStatus::AwaitingApproval) {
        return Err(a.reject(run, "the step does not wait for approval"));
    }
    let s = &mut run.steps[step];
    s.decided_by.push(by.clone());
    s.awaiting = None;
    match a.awaiting {
        Some(ApprovalReason::Gate { .. }) => {
            s.status = StepStatus::Succeeded;
            s.ended_ms = Some(at_ms);
            s.output_excerpt = excerpt(&format!("approved by {by}"));
            run.settle(at_ms);
        }
        // Run it again.
        _ => s.status = StepStatus::Pending,
    }
    Ok(())
}

/// An operator says a step that may have run did run, and well.
fn confirmed_done(
    run: &mut RunState,
    a: &Admitted,
    step: usize,
    by: String,
    at_ms: u64,
) -> Result<(), RunbookError> {
    if a.status != Some(StepStatus::AwaitingApproval)
        || a.awaiting != Some(ApprovalReason::MayHaveRun)
    {
        return Err(a.reject(run, "only a step that may have run can be confirmed done"));
    }
    let s = &mut run.steps[step];
    s.decided_by.push(by.clone());
    s.awaiting = None;
    s.status = StepStatus::Succeeded;
    s.ended_ms = Some(at_ms);
    s.error = None;
    s.output_excerpt = excerpt(&format!("confirmed done by {by}"));
    run.settle(at_ms);
    Ok(())
}

/// An operator rejected a waiting step: it fails for good.
fn rejected(
    run: &mut RunState,
    a: &Admitted,
    step: usize,
    by: String,
    at_ms: u64,
) -> Result<(), RunbookError> {
    if a.status != Some(StepStatus::AwaitingApproval) {
        return Err(a.reject(run, "the step does not wait for approval"));
    }
    let s = &mut run.steps[step];
    s.decided_by.push(by.clone());
    s.error = Some(format!("rejected by {by}"));
    run.failed_for_good(step, at_ms);
    Ok(())
}

/// The resume rule: a step found running is repeated if repeatable, and otherwise waits for
/// an operator (it may have run).
fn leader_changed(run: &mut RunState, current: Option<usize>) {
    if let Some(i) = current {
        let repeatable = run.plan.steps[i].repeatable;
        let s = &mut run.steps[i];
        if s.status == StepStatus::Running {
            s.interruptions += 1;
            if repeatable {
                s.status = StepStatus::Pending;
            } else {
                s.status = StepStatus::AwaitingApproval;
                s.awaiting = Some(ApprovalReason::MayHaveRun);
            }
        }
    }
}

/// An operator stops the run: a step under way fails, the rest are skipped.
fn cancelled(run: &mut RunState, current: Option<usize>, by: String, at_ms: u64) {
    if let Some(i) = current {
        let s = &mut run.steps[i];
        if matches!(s.status, StepStatus::Running | StepStatus::AwaitingApproval) {
            s.status = StepStatus::Failed;
            s.ended_ms = Some(at_ms);
            s.awaiting = None;
            s.error = Some(format!("cancelled by {by}"));
        }
    }
    run.finish(RunStatus::Cancelled { by }, at_ms);
}
