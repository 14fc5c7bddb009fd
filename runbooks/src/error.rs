//! The crate's one error: everything that can go wrong loading, validating, planning or
//! running a runbook, with the retryable case marked.

use std::path::PathBuf;
use tandem_core::config::{display_lines, Diagnostic};

use crate::model::param::ParamType;

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
