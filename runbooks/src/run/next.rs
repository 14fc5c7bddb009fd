//! The executor's question: given a run, what to do next (start a step, wait for a retry,
//! wait for a result or an operator, or nothing: the run is over).
//!
//! Pure.

use serde::{Deserialize, Serialize};

use super::state::{ApprovalReason, RunOutcome, RunState, StepStatus};

/// What the executor should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NextAction {
    /// Commit [`RunEvent::StepStarted`](super::record::RunEvent::StepStarted) for this step, then run it.
    Start {
        /// Plan index.
        step: usize,
        /// 1-based attempt number.
        attempt: u32,
    },
    /// As `Start`, but not before this time (backoff after a failure).
    RetryAt {
        /// Plan index.
        step: usize,
        /// 1-based attempt number.
        attempt: u32,
        /// Earliest start.
        not_before_ms: u64,
    },
    /// The step is running: wait for its result.
    InFlight {
        /// Plan index.
        step: usize,
    },
    /// Wait for an operator (`tandem approve RUN STEP`).
    AwaitApproval {
        /// Plan index.
        step: usize,
        /// Why.
        reason: ApprovalReason,
    },
    /// The run is over.
    Done(RunOutcome),
}

/// What to do next for `run`.
pub fn next_action(run: &RunState) -> NextAction {
    let Some(i) = run.current() else {
        return NextAction::Done(run.status.clone());
    };
    let s = &run.steps[i];
    match s.status {
        StepStatus::Running => NextAction::InFlight { step: i },
        StepStatus::AwaitingApproval => NextAction::AwaitApproval {
            step: i,
            reason: s.awaiting.clone().unwrap_or(ApprovalReason::MayHaveRun),
        },
        _ => match s.retry_at_ms {
            Some(t) => NextAction::RetryAt {
                step: i,
                attempt: s.attempts + 1,
                not_before_ms: t,
            },
            None => NextAction::Start {
                step: i,
                attempt: s.attempts + 1,
            },
        },
    }
}
