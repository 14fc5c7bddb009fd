//! The replicated run object: each step's state, the run's phase (in order, or recovering
//! from a failed step) and status, and the transitions every event handler shares: which
//! step is current, a step failing for good (its `on_failure` policy), the run ending.
//!
//! Pure: values in, values out.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::model::ParamValue;
use crate::plan::{Plan, PlannedFailure};

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// Not started yet, or waiting for a retry.
    Pending,
    /// Started (committed) and not finished.
    Running,
    /// Finished well.
    Succeeded,
    /// Failed for good (no retries left, or rejected).
    Failed,
    /// Will not run: its `when` was false, or the run ended before it.
    Skipped,
    /// Waiting for an operator: an `approve` gate, or a non-repeatable step that may have run.
    AwaitingApproval,
}

impl StepStatus {
    /// True once the step will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped
        )
    }
}

/// Why a step waits for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reason")]
pub enum ApprovalReason {
    /// An `approve` step: approve to go on, reject to fail the step.
    Gate {
        /// The question asked.
        prompt: String,
    },
    /// A non-repeatable step was under way when the leader changed: it may have run.
    /// Approve to run it again, confirm it done, or reject to fail it.
    MayHaveRun,
}

/// The state of one step within a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// The step's id (index = position in [`RunState::steps`] = plan index).
    pub id: String,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts started (including ones cut short by a leader change).
    pub attempts: u32,
    /// Attempts that failed (what retries count).
    pub failures: u32,
    /// Attempts cut short by a leader change.
    pub interruptions: u32,
    /// When the first attempt started (ms since the epoch, coordinator clock).
    pub started_ms: Option<u64>,
    /// When the step ended.
    pub ended_ms: Option<u64>,
    /// Earliest time of the next attempt, after a failure.
    pub retry_at_ms: Option<u64>,
    /// The last attempt's output, bounded to [`OUTPUT_EXCERPT_MAX`](super::output::OUTPUT_EXCERPT_MAX) bytes.
    pub output_excerpt: String,
    /// The last error.
    pub error: Option<String>,
    /// Why the step waits, when [`StepStatus::AwaitingApproval`].
    pub awaiting: Option<ApprovalReason>,
    /// Who approved, confirmed or rejected it, in order.
    pub decided_by: Vec<String>,
}

impl StepState {
    pub(super) fn new(id: &str, skipped: bool) -> StepState {
        StepState {
            id: id.to_string(),
            status: if skipped {
                StepStatus::Skipped
            } else {
                StepStatus::Pending
            },
            attempts: 0,
            failures: 0,
            interruptions: 0,
            started_ms: None,
            ended_ms: None,
            retry_at_ms: None,
            output_excerpt: String::new(),
            error: None,
            awaiting: None,
            decided_by: Vec::new(),
        }
    }
}

/// Where the run as a whole is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum RunStatus {
    /// Steps remain.
    Running,
    /// Every step that ran succeeded, or failed with `on_failure = "continue"`.
    Succeeded,
    /// A step failed for good.
    Failed {
        /// The step that failed (plan index).
        step: usize,
    },
    /// An operator cancelled the run.
    Cancelled {
        /// Who.
        by: String,
    },
}

/// How a finished run ended.
pub type RunOutcome = RunStatus;

/// Which steps run now: the runbook in order, or the recovery steps of a failed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "phase")]
pub enum Phase {
    /// The steps in order.
    Main,
    /// Step `failed` failed; these steps (its `on_failure` list) run, then the run fails.
    Recovery {
        /// The failed step.
        failed: usize,
        /// Steps to run, in order.
        queue: Vec<usize>,
    },
}

/// A run: the replicated object the coordinators agree on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The run's id.
    pub run_id: String,
    /// blake3 (hex) of the runbook file's bytes ([`runbook_hash`](crate::parse::runbook_hash)).
    pub runbook_hash: String,
    /// Parameter values.
    pub params: BTreeMap<String, ParamValue>,
    /// Who started it.
    pub started_by: String,
    /// When it started.
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// What it runs.
    pub plan: Plan,
    /// One per plan step, same order.
    pub steps: Vec<StepState>,
    /// Normal order or recovery.
    pub phase: Phase,
    /// Where the run is.
    pub status: RunStatus,
}

impl RunState {
    /// A new run of `plan`, started by `started_by` at `at_ms`.
    pub fn new(
        run_id: &str,
        plan: Plan,
        runbook_hash: &str,
        started_by: &str,
        at_ms: u64,
    ) -> RunState {
        let steps = plan
            .steps
            .iter()
            .map(|s| StepState::new(&s.id, s.skipped.is_some()))
            .collect();
        let mut run = RunState {
            run_id: run_id.to_string(),
            runbook_hash: runbook_hash.to_string(),
            params: plan.params.clone(),
            started_by: started_by.to_string(),
            started_ms: at_ms,
            ended_ms: None,
            plan,
            steps,
            phase: Phase::Main,
            status: RunStatus::Running,
        };
        run.settle(at_ms);
        run
    }

    /// The step the run is at (plan index), if it is running.
    pub fn current(&self) -> Option<usize> {
        if self.status != RunStatus::Running {
            return None;
        }
        match &self.phase {
            Phase::Main => self
                .steps
                .iter()
                .zip(&self.plan.steps)
                .position(|(s, p)| !p.handler && !s.status.is_terminal()),
            Phase::Recovery { queue, .. } => queue
                .iter()
                .copied()
                .find(|&i| self.steps.get(i).is_some_and(|s| !s.status.is_terminal())),
        }
    }

    /// Ends the run if no step remains.
    pub(super) fn settle(&mut self, at_ms: u64) {
        if self.status != RunStatus::Running || self.current().is_some() {
            return;
        }
        let status = match &self.phase {
            Phase::Main => RunStatus::Succeeded,
            Phase::Recovery { failed, .. } => RunStatus::Failed { step: *failed },
        };
        self.finish(status, at_ms);
    }

    pub(super) fn finish(&mut self, status: RunStatus, at_ms: u64) {
        for s in &mut self.steps {
            if s.status == StepStatus::Pending {
                s.status = StepStatus::Skipped;
                s.retry_at_ms = None;
            }
        }
        self.status = status;
        self.ended_ms = Some(at_ms);
    }

    /// A step has failed for good: apply its `on_failure` (in the main phase; a failing
    /// recovery step lets the remaining recovery steps run).
    pub(super) fn failed_for_good(&mut self, step: usize, at_ms: u64) {
        if let Some(s) = self.steps.get_mut(step) {
            s.status = StepStatus::Failed;
            s.ended_ms = Some(at_ms);
            s.retry_at_ms = None;
            s.awaiting = None;
        }
        if self.phase == Phase::Main {
            match self.plan.steps.get(step).map(|p| p.on_failure.clone()) {
                Some(PlannedFailure::Continue) => {}
                Some(PlannedFailure::Run(list)) => {
                    let queue: Vec<usize> = list
                        .into_iter()
                        .filter(|&i| {
                            self.steps
                                .get(i)
                                .is_some_and(|s| s.status == StepStatus::Pending)
                        })
                        .collect();
                    self.phase = Phase::Recovery {
                        failed: step,
                        queue,
                    };
                }
                Some(PlannedFailure::Abort) | None => {
                    self.finish(RunStatus::Failed { step }, at_ms);
                    return;
                }
            }
        }
        self.settle(at_ms);
    }
}
