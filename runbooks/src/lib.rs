//! Tandem runbooks: the runbook language (TOML), its parser and validator, the planner and the
//! run state machine. Everything here is pure: the only I/O is [`Runbook::load`] reading a
//! file; the coordinator executes runs by feeding [`run::RunEvent`]s to [`run::RunState`].
//!
//! The modules, bottom-up (each imports only from the rows above it):
//!
//! | module | responsible for |
//! | --- | --- |
//! | `source` | where a parsed runbook's fields sit in its file; diagnostics located by field path, "did you mean" hints |
//! | [`model`] | the typed runbook: [`Runbook`], [`Step`], [`Action`], [`SiteRef`], [`Retries`], [`OnFailure`]; its `param` room ([`Parameter`]) sits below [`condition`], the rest above |
//! | [`condition`] | the `when` language: parse, type-check against parameters, evaluate (total) |
//! | `error` | [`RunbookError`], the crate's one error |
//! | [`validate`] | whole-runbook rules (ids, references, fence before promote, a `check` step) and [`validate_against`] a topology's sites |
//! | [`parse`] | TOML text to [`Runbook`], every problem as a `file:line:column: path: message` [`Diagnostic`]; runs [`validate`]'s rules |
//! | [`library`] | the stock runbooks of `runbooks/library/`, compiled in |
//! | [`mod@plan`] | [`plan()`]: resolve sites and parameters, evaluate `when`, number the steps; a [`Plan`] prints as a table and serializes to JSON |
//! | [`run`] | [`RunState`]: the replicated run object; [`run::next_action`] says what to do, [`run::record`] applies what happened, including leader-change resume rules |
//!
//! The language reference is `docs/runbooks.md`.

pub mod condition;
mod error;
pub mod library;
pub mod model;
pub mod parse;
pub mod plan;
pub mod run;
mod source;
pub mod validate;

pub use condition::{Condition, ConditionEnv, ConditionError};
pub use error::RunbookError;
pub use model::{
    Action, ActionKind, Command, OnFailure, ParamType, ParamValue, Parameter, Probe, RecoverPoint,
    Retries, Runbook, RunbookKind, SiteRef, Step,
};
pub use plan::{plan, Plan, PlanContext, PlannedStep, ResolvedSite};
pub use run::{NextAction, RunEvent, RunOutcome, RunState, RunStatus, StepState, StepStatus};
pub use tandem_core::config::Diagnostic;
pub use validate::validate_against;
