//! A runbook run as a pure state machine: the replicated run object, what to do next, and how
//! each committed event (step started, succeeded, failed, approved, leader changed) changes it.
//!
//! The coordinator commits every event through Raft *before* acting on it (a `StepStarted`
//! before the step runs, its result after), and applies it with [`record`] on every node.
//! A new leader calls [`record`] with [`RunEvent::LeaderChanged`] and then follows
//! [`next_action`]: a step found running is repeated if it is repeatable, and waits for an
//! operator otherwise (it may have run already).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::error::RunbookError;
use crate::model::{Action, ParamValue};
use crate::plan::{Plan, PlannedFailure};

/// Most bytes of a step's output kept in the run (it is replicated through Raft).
pub const OUTPUT_EXCERPT_MAX: usize = 4096;

pub use crate::parse::runbook_hash;

/// Bounds `output` to [`OUTPUT_EXCERPT_MAX`] bytes, keeping its head and (mostly) its tail,
/// where errors usually are.
pub fn excerpt(output: &str) -> String {
    if output.len() <= OUTPUT_EXCERPT_MAX {
        return output.to_string();
    }
    let cut = output.len();
    let marker_room = 64;
    let head_len = floor_boundary(output, 1024);
    let tail_want = OUTPUT_EXCERPT_MAX - head_len - marker_room;
    let tail_start = ceil_boundary(output, cut - tail_want);
    let omitted = tail_start - head_len;
    format!(
        "{}\n[... {omitted} bytes omitted ...]\n{}",
        &output[..head_len],
        &output[tail_start..]
    )
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

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
    /// The last attempt's output, bounded to [`OUTPUT_EXCERPT_MAX`] bytes.
    pub output_excerpt: String,
    /// The last error.
    pub error: Option<String>,
    /// Why the step waits, when [`StepStatus::AwaitingApproval`].
    pub awaiting: Option<ApprovalReason>,
    /// Who approved, confirmed or rejected it, in order.
    pub decided_by: Vec<String>,
}

impl StepState {
    fn new(id: &str, skipped: bool) -> StepState {
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
    /// blake3 (hex) of the runbook file's bytes ([`runbook_hash`]).
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

/// What the executor should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NextAction {
    /// Commit [`RunEvent::StepStarted`] for this step, then run it.
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
    fn settle(&mut self, at_ms: u64) {
        if self.status != RunStatus::Running || self.current().is_some() {
            return;
        }
        let status = match &self.phase {
            Phase::Main => RunStatus::Succeeded,
            Phase::Recovery { failed, .. } => RunStatus::Failed { step: *failed },
        };
        self.finish(status, at_ms);
    }

    fn finish(&mut self, status: RunStatus, at_ms: u64) {
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
    fn failed_for_good(&mut self, step: usize, at_ms: u64) {
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

/// Applies a committed event to `run`.
///
/// # Errors
/// [`RunbookError::UnexpectedEvent`] when the event does not fit the state (a step that is not
/// the current one, a result for a step not running, an approval nobody asked for, anything
/// after the run ended); `run` is then unchanged.
pub fn record(run: &mut RunState, event: RunEvent) -> Result<(), RunbookError> {
    let described = event.describe();
    let reject = |run: &RunState, reason: &str| RunbookError::UnexpectedEvent {
        run_id: run.run_id.clone(),
        event: described.clone(),
        reason: reason.to_string(),
    };
    if run.steps.len() != run.plan.steps.len() {
        return Err(reject(run, "the run state does not match its plan"));
    }
    if run.status != RunStatus::Running {
        if matches!(event, RunEvent::LeaderChanged { .. }) {
            return Ok(());
        }
        return Err(reject(run, "the run has ended"));
    }
    let current = run.current();
    let step_of = |e: &RunEvent| match e {
        RunEvent::StepStarted { step, .. }
        | RunEvent::StepSucceeded { step, .. }
        | RunEvent::StepFailed { step, .. }
        | RunEvent::Approved { step, .. }
        | RunEvent::ConfirmedDone { step, .. }
        | RunEvent::Rejected { step, .. } => Some(*step),
        RunEvent::LeaderChanged { .. } | RunEvent::Cancelled { .. } => None,
    };
    let status = match step_of(&event) {
        Some(step) if Some(step) != current => {
            return Err(reject(
                run,
                &format!("the current step is {current:?}, not {step}"),
            ))
        }
        Some(step) => Some(run.steps[step].status),
        None => None,
    };
    let awaiting = current.and_then(|i| run.steps[i].awaiting.clone());

    match event {
        RunEvent::StepStarted { step, at_ms } => {
            if status != Some(StepStatus::Pending) {
                return Err(reject(run, "the step is not pending"));
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
        }
        RunEvent::StepSucceeded {
            step,
            at_ms,
            output,
        } => {
            if status != Some(StepStatus::Running) {
                return Err(reject(run, "the step is not running"));
            }
            let s = &mut run.steps[step];
            s.status = StepStatus::Succeeded;
            s.ended_ms = Some(at_ms);
            s.output_excerpt = excerpt(&output);
            s.error = None;
            run.settle(at_ms);
        }
        RunEvent::StepFailed {
            step,
            at_ms,
            error,
            output,
        } => {
            if status != Some(StepStatus::Running) {
                return Err(reject(run, "the step is not running"));
            }
            let retries = run.plan.steps[step].retries;
            let s = &mut run.steps[step];
            s.failures += 1;
            s.output_excerpt = excerpt(&output);
            s.error = Some(error);
            if s.failures <= retries.count {
                s.status = StepStatus::Pending;
                s.retry_at_ms =
                    Some(at_ms.saturating_add(retries.delay_after(s.failures).as_millis()));
            } else {
                run.failed_for_good(step, at_ms);
            }
        }
        RunEvent::Approved { step, by, at_ms } => {
            if status != Some(StepStatus::AwaitingApproval) {
                return Err(reject(run, "the step does not wait for approval"));
            }
            let s = &mut run.steps[step];
            s.decided_by.push(by.clone());
            s.awaiting = None;
            match awaiting {
                Some(ApprovalReason::Gate { .. }) => {
                    s.status = StepStatus::Succeeded;
                    s.ended_ms = Some(at_ms);
                    s.output_excerpt = excerpt(&format!("approved by {by}"));
                    run.settle(at_ms);
                }
                // Run it again.
                _ => s.status = StepStatus::Pending,
            }
        }
        RunEvent::ConfirmedDone { step, by, at_ms } => {
            if status != Some(StepStatus::AwaitingApproval)
                || awaiting != Some(ApprovalReason::MayHaveRun)
            {
                return Err(reject(
                    run,
                    "only a step that may have run can be confirmed done",
                ));
            }
            let s = &mut run.steps[step];
            s.decided_by.push(by.clone());
            s.awaiting = None;
            s.status = StepStatus::Succeeded;
            s.ended_ms = Some(at_ms);
            s.error = None;
            s.output_excerpt = excerpt(&format!("confirmed done by {by}"));
            run.settle(at_ms);
        }
        RunEvent::Rejected { step, by, at_ms } => {
            if status != Some(StepStatus::AwaitingApproval) {
                return Err(reject(run, "the step does not wait for approval"));
            }
            let s = &mut run.steps[step];
            s.decided_by.push(by.clone());
            s.error = Some(format!("rejected by {by}"));
            run.failed_for_good(step, at_ms);
        }
        RunEvent::LeaderChanged { .. } => {
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
        RunEvent::Cancelled { by, at_ms } => {
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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Command, Retries, SiteRef};
    use crate::plan::{PlannedStep, ResolvedSite};
    use proptest::prelude::*;
    use tandem_core::config::{HumanDuration, Mode};
    use tandem_core::ids::{Epoch, GroupId};

    #[derive(Clone, Debug)]
    struct Spec {
        approve: bool,
        repeatable: bool,
        retries: u32,
        on_failure: PlannedFailure,
        handler: bool,
        skipped: bool,
    }

    fn spec(repeatable: bool) -> Spec {
        Spec {
            approve: false,
            repeatable,
            retries: 0,
            on_failure: PlannedFailure::Abort,
            handler: false,
            skipped: false,
        }
    }

    fn plan_of(specs: &[Spec]) -> Plan {
        let steps = specs
            .iter()
            .enumerate()
            .map(|(i, s)| PlannedStep {
                index: i,
                id: format!("s{i}"),
                action: if s.approve {
                    Action::Approve {
                        prompt: "go?".into(),
                    }
                } else {
                    Action::Exec {
                        command: Command::Shell("true".into()),
                        env: BTreeMap::new(),
                    }
                },
                site: ResolvedSite::Site("hcm".into()),
                site_ref: SiteRef::Replica,
                description: None,
                timeout: HumanDuration::from_secs(10),
                retries: Retries {
                    count: s.retries,
                    backoff: HumanDuration::from_secs(1),
                    max_backoff: HumanDuration::from_secs(4),
                },
                repeatable: s.repeatable,
                handler: s.handler,
                on_failure: s.on_failure.clone(),
                skipped: s.skipped.then(|| "when false".to_string()),
            })
            .collect();
        Plan {
            runbook: "t".into(),
            kind: crate::model::RunbookKind::Custom,
            group: "vol".into(),
            group_id: GroupId::from_name("vol"),
            epoch: Epoch(3),
            mode: Mode::Sync,
            primary: "hanoi".into(),
            replica: "hcm".into(),
            params: BTreeMap::new(),
            steps,
        }
    }

    fn new_run(specs: &[Spec]) -> RunState {
        RunState::new("r1", plan_of(specs), &runbook_hash(b"x"), "alice", 1000)
    }

    fn ok(step: usize, at_ms: u64) -> RunEvent {
        RunEvent::StepSucceeded {
            step,
            at_ms,
            output: format!("ok {step}"),
        }
    }

    fn fail(step: usize, at_ms: u64) -> RunEvent {
        RunEvent::StepFailed {
            step,
            at_ms,
            error: "boom".into(),
            output: String::new(),
        }
    }

    fn start(step: usize, at_ms: u64) -> RunEvent {
        RunEvent::StepStarted { step, at_ms }
    }

    #[test]
    fn steps_run_in_order_and_the_run_succeeds() {
        let mut r = new_run(&[spec(true), spec(false)]);
        assert_eq!(
            next_action(&r),
            NextAction::Start {
                step: 0,
                attempt: 1
            }
        );
        record(&mut r, start(0, 1001)).unwrap();
        assert_eq!(next_action(&r), NextAction::InFlight { step: 0 });
        record(&mut r, ok(0, 1002)).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::Start {
                step: 1,
                attempt: 1
            }
        );
        record(&mut r, start(1, 1003)).unwrap();
        record(&mut r, ok(1, 1004)).unwrap();
        assert_eq!(next_action(&r), NextAction::Done(RunStatus::Succeeded));
        assert_eq!(r.ended_ms, Some(1004));
        assert_eq!(r.steps[0].started_ms, Some(1001));
        assert_eq!(r.steps[1].output_excerpt, "ok 1");
    }

    #[test]
    fn failed_step_is_retried_after_doubling_backoff_then_aborts() {
        let mut s = spec(true);
        s.retries = 2;
        let mut r = new_run(&[s, spec(true)]);
        record(&mut r, start(0, 0)).unwrap();
        record(&mut r, fail(0, 100)).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::RetryAt {
                step: 0,
                attempt: 2,
                not_before_ms: 1100
            }
        );
        record(&mut r, start(0, 1100)).unwrap();
        record(&mut r, fail(0, 1200)).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::RetryAt {
                step: 0,
                attempt: 3,
                not_before_ms: 3200
            }
        );
        record(&mut r, start(0, 3200)).unwrap();
        record(&mut r, fail(0, 3300)).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::Done(RunStatus::Failed { step: 0 })
        );
        assert_eq!(r.steps[0].failures, 3);
        assert_eq!(r.steps[1].status, StepStatus::Skipped);
    }

    #[test]
    fn continue_goes_on_after_a_failed_step() {
        let mut s = spec(true);
        s.on_failure = PlannedFailure::Continue;
        let mut r = new_run(&[s, spec(true)]);
        record(&mut r, start(0, 0)).unwrap();
        record(&mut r, fail(0, 1)).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::Start {
                step: 1,
                attempt: 1
            }
        );
        record(&mut r, start(1, 2)).unwrap();
        record(&mut r, ok(1, 3)).unwrap();
        assert_eq!(r.status, RunStatus::Succeeded);
        assert_eq!(r.steps[0].status, StepStatus::Failed);
    }

    #[test]
    fn on_failure_runs_listed_steps_not_yet_run_then_fails() {
        // s0 ok, s1 fails -> run [s0 (already ran: not again), s3 (handler)], s2 never runs.
        let mut s1 = spec(true);
        s1.on_failure = PlannedFailure::Run(vec![0, 3]);
        let mut h = spec(false);
        h.handler = true;
        let mut r = new_run(&[spec(true), s1, spec(true), h]);
        record(&mut r, start(0, 0)).unwrap();
        record(&mut r, ok(0, 1)).unwrap();
        record(&mut r, start(1, 2)).unwrap();
        record(&mut r, fail(1, 3)).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::Start {
                step: 3,
                attempt: 1
            }
        );
        record(&mut r, start(3, 4)).unwrap();
        record(&mut r, ok(3, 5)).unwrap();
        assert_eq!(r.status, RunStatus::Failed { step: 1 });
        assert_eq!(r.steps[2].status, StepStatus::Skipped);
        assert_eq!(r.steps[0].attempts, 1);
    }

    #[test]
    fn handler_is_skipped_when_nothing_fails() {
        let mut h = spec(false);
        h.handler = true;
        let mut r = new_run(&[spec(true), h]);
        record(&mut r, start(0, 0)).unwrap();
        record(&mut r, ok(0, 1)).unwrap();
        assert_eq!(r.status, RunStatus::Succeeded);
        assert_eq!(r.steps[1].status, StepStatus::Skipped);
    }

    #[test]
    fn approve_gate_waits_for_an_operator() {
        let mut g = spec(true);
        g.approve = true;
        let mut r = new_run(&[g.clone(), g]);
        record(&mut r, start(0, 0)).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::AwaitApproval {
                step: 0,
                reason: ApprovalReason::Gate {
                    prompt: "go?".into()
                }
            }
        );
        record(
            &mut r,
            RunEvent::Approved {
                step: 0,
                by: "bob".into(),
                at_ms: 5,
            },
        )
        .unwrap();
        assert_eq!(r.steps[0].status, StepStatus::Succeeded);
        record(&mut r, start(1, 6)).unwrap();
        record(
            &mut r,
            RunEvent::Rejected {
                step: 1,
                by: "carol".into(),
                at_ms: 7,
            },
        )
        .unwrap();
        assert_eq!(r.status, RunStatus::Failed { step: 1 });
        assert_eq!(r.steps[1].error.as_deref(), Some("rejected by carol"));
    }

    #[test]
    fn resume_repeats_a_repeatable_running_step() {
        let mut r = new_run(&[spec(true)]);
        record(&mut r, start(0, 0)).unwrap();
        record(&mut r, RunEvent::LeaderChanged { at_ms: 10 }).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::Start {
                step: 0,
                attempt: 2
            }
        );
        assert_eq!(r.steps[0].interruptions, 1);
        assert_eq!(r.steps[0].failures, 0);
    }

    #[test]
    fn resume_asks_approval_for_a_non_repeatable_step_that_may_have_run() {
        let mut r = new_run(&[spec(false), spec(false)]);
        record(&mut r, start(0, 0)).unwrap();
        record(&mut r, RunEvent::LeaderChanged { at_ms: 10 }).unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::AwaitApproval {
                step: 0,
                reason: ApprovalReason::MayHaveRun
            }
        );
        // Starting it without approval is refused.
        assert!(record(&mut r, start(0, 11)).is_err());
        record(
            &mut r,
            RunEvent::ConfirmedDone {
                step: 0,
                by: "bob".into(),
                at_ms: 12,
            },
        )
        .unwrap();
        assert_eq!(r.steps[0].status, StepStatus::Succeeded);
        record(&mut r, start(1, 13)).unwrap();
        record(&mut r, RunEvent::LeaderChanged { at_ms: 14 }).unwrap();
        record(
            &mut r,
            RunEvent::Approved {
                step: 1,
                by: "bob".into(),
                at_ms: 15,
            },
        )
        .unwrap();
        assert_eq!(
            next_action(&r),
            NextAction::Start {
                step: 1,
                attempt: 2
            }
        );
    }

    #[test]
    fn unexpected_events_are_refused_and_change_nothing() {
        let mut r = new_run(&[spec(true), spec(true)]);
        let before = r.clone();
        let cases = [
            start(1, 0),
            ok(0, 0),
            fail(0, 0),
            RunEvent::Approved {
                step: 0,
                by: "x".into(),
                at_ms: 0,
            },
            RunEvent::ConfirmedDone {
                step: 0,
                by: "x".into(),
                at_ms: 0,
            },
            ok(7, 0),
        ];
        for (i, e) in cases.into_iter().enumerate() {
            assert!(record(&mut r, e.clone()).is_err(), "#{i}: {e:?} accepted");
            assert_eq!(r, before, "#{i}: {e:?} changed the run");
        }
        record(
            &mut r,
            RunEvent::Cancelled {
                by: "x".into(),
                at_ms: 1,
            },
        )
        .unwrap();
        assert!(record(&mut r, start(0, 2)).is_err());
        assert_eq!(
            next_action(&r),
            NextAction::Done(RunStatus::Cancelled { by: "x".into() })
        );
    }

    #[test]
    fn all_steps_skipped_is_an_immediate_success() {
        let mut s = spec(true);
        s.skipped = true;
        let r = new_run(&[s]);
        assert_eq!(next_action(&r), NextAction::Done(RunStatus::Succeeded));
    }

    #[test]
    fn output_excerpt_is_bounded_and_keeps_head_and_tail() {
        let long = format!("HEAD{}TAIL", "é".repeat(10_000));
        let e = excerpt(&long);
        assert!(e.len() <= OUTPUT_EXCERPT_MAX, "{}", e.len());
        assert!(e.starts_with("HEAD") && e.ends_with("TAIL"));
        assert!(e.contains("bytes omitted"));
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn runbook_hash_is_blake3_hex() {
        assert_eq!(
            runbook_hash(b"abc"),
            blake3::hash(b"abc").to_hex().to_string()
        );
        assert_eq!(runbook_hash(b"abc").len(), 64);
    }

    // ------------------------------------------------------------------------------------
    // Property: interrupting and resuming reaches the same end state.
    // ------------------------------------------------------------------------------------

    /// The outcome-relevant part of a run (not times, attempt counts or who approved).
    type StepEnd = (StepStatus, u32, String, Option<String>);

    fn end_state(r: &RunState) -> (RunStatus, Vec<StepEnd>) {
        (
            r.status.clone(),
            r.steps
                .iter()
                .map(|s| {
                    (
                        s.status,
                        s.failures,
                        s.output_excerpt.clone(),
                        s.error.clone(),
                    )
                })
                .collect(),
        )
    }

    #[derive(Clone, Debug)]
    struct World {
        /// outcome[step][failures so far]: does this logical attempt succeed?
        outcome: Vec<Vec<bool>>,
        /// For approve gates: approve (true) or reject.
        gate: Vec<bool>,
    }

    struct Tally {
        executions: Vec<u32>,
        resume_approvals: Vec<u32>,
    }

    /// Drives `run` to its end; `interrupt_at` lists event counts after which the leader
    /// changes (the state goes through JSON, any running step's result is lost).
    fn drive(mut run: RunState, w: &World, interrupt_at: &[usize]) -> (RunState, Tally) {
        let n = run.steps.len();
        let mut t = Tally {
            executions: vec![0; n],
            resume_approvals: vec![0; n],
        };
        let mut events = 0usize;
        let mut clock = 1000u64;
        for _ in 0..10_000 {
            if interrupt_at.contains(&events) {
                let json = serde_json::to_string(&run).unwrap();
                run = serde_json::from_str(&json).unwrap();
                if let Some(i) = run.current() {
                    if run.steps[i].status == StepStatus::Running {
                        // The old leader ran it; the result never got committed.
                        t.executions[i] += 1;
                    }
                }
                record(&mut run, RunEvent::LeaderChanged { at_ms: clock }).unwrap();
                events += 1;
                continue;
            }
            clock += 10;
            let event = match next_action(&run) {
                NextAction::Done(_) => return (run, t),
                NextAction::Start { step, .. } => start(step, clock),
                NextAction::RetryAt {
                    step,
                    not_before_ms,
                    ..
                } => {
                    clock = clock.max(not_before_ms);
                    start(step, clock)
                }
                NextAction::InFlight { step } => {
                    t.executions[step] += 1;
                    let failures = run.steps[step].failures as usize;
                    if w.outcome[step][failures] {
                        ok(step, clock)
                    } else {
                        fail(step, clock)
                    }
                }
                NextAction::AwaitApproval {
                    step,
                    reason: ApprovalReason::Gate { .. },
                } => {
                    if w.gate[step] {
                        RunEvent::Approved {
                            step,
                            by: "op".into(),
                            at_ms: clock,
                        }
                    } else {
                        RunEvent::Rejected {
                            step,
                            by: "op".into(),
                            at_ms: clock,
                        }
                    }
                }
                NextAction::AwaitApproval { step, .. } => {
                    t.resume_approvals[step] += 1;
                    RunEvent::Approved {
                        step,
                        by: "op".into(),
                        at_ms: clock,
                    }
                }
            };
            record(&mut run, event).unwrap();
            events += 1;
        }
        panic!("run did not end within 10000 events");
    }

    fn arb_case() -> impl Strategy<Value = (Vec<Spec>, World, Vec<usize>)> {
        (1usize..8)
            .prop_flat_map(|n| {
                let spec = (
                    any::<bool>(),
                    any::<bool>(),
                    0u32..3,
                    0u8..3,
                    proptest::collection::vec(0..n, 0..3),
                    0u8..10,
                    0u8..10,
                );
                (
                    proptest::collection::vec(spec, n),
                    proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), n),
                    proptest::collection::vec(any::<bool>(), n),
                    proptest::collection::vec(0usize..40, 1..4),
                )
            })
            .prop_map(|(raw, outcome, gate, interrupts)| {
                let specs = raw
                    .into_iter()
                    .enumerate()
                    .map(
                        |(i, (approve, repeatable, retries, of, list, h, sk))| Spec {
                            approve: approve && i % 3 == 0,
                            repeatable,
                            retries,
                            on_failure: match of {
                                0 => PlannedFailure::Abort,
                                1 => PlannedFailure::Continue,
                                _ => PlannedFailure::Run(
                                    list.into_iter().filter(|&j| j != i).collect(),
                                ),
                            },
                            handler: h == 0,
                            skipped: sk == 0,
                        },
                    )
                    .collect();
                (specs, World { outcome, gate }, interrupts)
            })
    }

    #[test]
    fn interrupting_at_every_event_of_a_fixed_run_reaches_the_same_end() {
        // s0 gate (approved), s1 non-repeatable with a retry (fails once), s2 repeatable fails
        // for good and runs handler s3 (non-repeatable).
        let mut gate = spec(true);
        gate.approve = true;
        let mut s1 = spec(false);
        s1.retries = 1;
        let mut s2 = spec(true);
        s2.on_failure = PlannedFailure::Run(vec![3]);
        let mut h = spec(false);
        h.handler = true;
        let specs = [gate, s1, s2, h];
        let w = World {
            outcome: vec![
                vec![true; 4],
                vec![false, true, true, true],
                vec![false; 4],
                vec![true; 4],
            ],
            gate: vec![true; 4],
        };
        let (plain, plain_tally) = drive(new_run(&specs), &w, &[]);
        assert_eq!(plain.status, RunStatus::Failed { step: 2 });
        assert_eq!(plain_tally.executions, [0, 2, 1, 1]);
        let mut mid_step = 0;
        for k in 0..30 {
            let (resumed, tally) = drive(new_run(&specs), &w, &[k]);
            assert_eq!(
                end_state(&resumed),
                end_state(&plain),
                "interrupt after event {k}"
            );
            for i in [1, 3] {
                assert!(
                    tally.executions[i] <= plain_tally.executions[i] + tally.resume_approvals[i],
                    "interrupt after event {k}: step {i}"
                );
            }
            if tally.executions != plain_tally.executions {
                mid_step += 1;
            }
        }
        // Some interruption points fell while a step was running.
        assert!(mid_step >= 3, "{mid_step}");
    }

    proptest! {
        #[test]
        fn interrupted_run_resumes_to_the_same_end_state((specs, world, interrupts) in arb_case()) {
            let (plain, plain_tally) = drive(new_run(&specs), &world, &[]);
            prop_assert!(plain.status != RunStatus::Running);
            prop_assert!(plain_tally.executions.iter().all(|&e| e <= 4));
            let (resumed, tally) = drive(new_run(&specs), &world, &interrupts);
            prop_assert_eq!(end_state(&resumed), end_state(&plain));
            for (i, s) in specs.iter().enumerate() {
                if !s.repeatable && !s.approve {
                    // Every execution of a non-repeatable step beyond its logical attempts
                    // was approved by an operator.
                    let logical = plain_tally.executions[i];
                    prop_assert!(
                        tally.executions[i] <= logical + tally.resume_approvals[i],
                        "step {} ran {} times, {} logical, {} approvals",
                        i, tally.executions[i], logical, tally.resume_approvals[i]
                    );
                }
            }
        }
    }
}
