//! A runbook run as a pure state machine: the replicated run object, what to do next, and how
//! each committed event (step started, succeeded, failed, approved, leader changed) changes it.
//!
//! The coordinator commits every event through Raft *before* acting on it (a `StepStarted`
//! before the step runs, its result after), and applies it with [`record`] on every node.
//! A new leader calls [`record`] with [`RunEvent::LeaderChanged`] and then follows
//! [`next_action`]: a step found running is repeated if it is repeatable, and waits for an
//! operator otherwise (it may have run).
//!
//! | room | responsible for |
//! | --- | --- |
//! | `state` | [`RunState`] and [`StepState`]: the replicated object, its phase and the transitions events share |
//! | `next` | [`next_action`]: what the executor does next |
//! | `record` | [`RunEvent`] and [`record`]: admitting an event and applying it, one handler per kind |
//! | `output` | [`excerpt`]: what a run keeps of a step's output |

mod next;
mod output;
mod record;
mod state;

pub use self::next::{next_action, NextAction};
pub use self::output::{excerpt, failure_summary, FAILURE_TAIL_LINES, OUTPUT_EXCERPT_MAX};
pub use self::record::{record, RunEvent};
pub use self::state::{
    ApprovalReason, Phase, RunOutcome, RunState, RunStatus, StepState, StepStatus,
};
pub use crate::parse::runbook_hash;

#[cfg(test)]
mod tests;
