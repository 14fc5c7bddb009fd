//! Tandem runbooks: the runbook language (TOML), its parser and validator, the planner and the
//! run state machine. Everything here is pure: the only I/O is [`Runbook::load`] reading a
//! file; the coordinator executes runs by feeding [`run::RunEvent`]s to [`run::RunState`].
//!
//! | module | responsible for |
//! | --- | --- |
//! | [`model`] | the typed runbook: [`Runbook`], [`Step`], [`Action`], [`SiteRef`], [`Retries`], [`OnFailure`] |
//! | [`condition`] | the `when` language: parse, type-check against parameters, evaluate (total) |
//! | [`parse`] | TOML text to [`Runbook`], every problem as a `file:line:column: path: message` [`Diagnostic`] |
//! | [`validate`] | whole-runbook rules (ids, references, fence before promote, a `check` step) and [`validate_against`] a topology's sites |
//! | [`mod@plan`] | [`plan()`]: resolve sites and parameters, evaluate `when`, number the steps; a [`Plan`] prints as a table and serializes to JSON |
//! | [`run`] | [`RunState`]: the replicated run object; [`run::next_action`] says what to do, [`run::record`] applies what happened, including leader-change resume rules |
//! | [`library`] | the stock runbooks of `runbooks/library/`, compiled in |
//!
//! The language reference is `docs/runbooks.md`.

pub mod condition;
pub mod library;
pub mod model;
pub mod parse;
pub mod plan;
pub mod run;
pub mod validate;

use std::path::PathBuf;
use tandem_core::config::display_lines;

pub use condition::{Condition, ConditionEnv, ConditionError};
pub use model::{
    Action, ActionKind, Command, OnFailure, ParamType, ParamValue, Parameter, Probe, RecoverPoint,
    Retries, Runbook, RunbookKind, SiteRef, Step,
};
pub use plan::{plan, Plan, PlanContext, PlannedStep, ResolvedSite};
pub use run::{NextAction, RunEvent, RunOutcome, RunState, RunStatus, StepState, StepStatus};
pub use tandem_core::config::Diagnostic;
pub use validate::validate_against;

/// Everything that can go wrong loading, validating, planning or running a runbook.
#[derive(Debug, thiserror::Error)]
pub enum RunbookError {
    /// The file could not be read.
    #[error("{}: cannot read runbook: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{file}:{line}:{column}: TOML syntax error: {message}")]
    Syntax {
        /// The file as named to the parser.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// The runbook is well-formed TOML but not a valid runbook: every problem, in file order.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Diagnostic>),
    /// A parameter the runbook requires (no default) was not given.
    #[error(
        "parameter \"{name}\" is required (it has no default): pass it with --param {name}=VALUE"
    )]
    MissingParameter {
        /// The parameter.
        name: String,
    },
    /// A parameter was given that the runbook does not declare.
    #[error("runbook \"{runbook}\" has no parameter \"{name}\"")]
    UnknownParameter {
        /// The runbook.
        runbook: String,
        /// The parameter given.
        name: String,
    },
    /// A parameter value does not fit the parameter's type.
    #[error("parameter \"{name}\" ({ty}): {message}")]
    BadParameter {
        /// The parameter.
        name: String,
        /// Its declared type.
        ty: ParamType,
        /// What is wrong with the value.
        message: String,
    },
    /// The plan context cannot be used (e.g. primary and replica are the same site).
    #[error("cannot plan for group \"{group}\": {message}")]
    BadContext {
        /// The group.
        group: String,
        /// What is wrong.
        message: String,
    },
    /// An event does not fit the run's state (a replayed or misrouted event); the state is
    /// unchanged.
    #[error("run {run_id}: {event} does not apply: {reason}")]
    UnexpectedEvent {
        /// The run.
        run_id: String,
        /// The event, briefly.
        event: String,
        /// Why it does not apply.
        reason: String,
    },
}

impl RunbookError {
    /// True when trying again might succeed (only an interrupted read).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RunbookError::Read { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock))
    }

    /// The diagnostics of an [`RunbookError::Invalid`] error (empty for other variants).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            RunbookError::Invalid(d) => d,
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interrupted_reads_are_retryable() {
        let e = RunbookError::Read {
            path: PathBuf::from("x.toml"),
            source: std::io::Error::from(std::io::ErrorKind::Interrupted),
        };
        assert!(e.is_retryable());
        let e = RunbookError::Read {
            path: PathBuf::from("x.toml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(!e.is_retryable());
        assert!(!RunbookError::MissingParameter { name: "x".into() }.is_retryable());
    }
}
