//! Scenario and property tests of the run state machine: [`RunState::new`], [`next_action`]
//! and [`record`] together, including interrupting a run at every event and resuming it.

use super::*;
use crate::model::{Action, Command, Retries, SiteRef};
use crate::plan::{Plan, PlannedFailure, PlannedStep, ResolvedSite};
use proptest::prelude::*;
use std::collections::BTreeMap;
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
                            _ => {
                                PlannedFailure::Run(list.into_iter().filter(|&j| j != i).collect())
                            }
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
