//! What an attempt of a step returns: its output, or a [`Failure`] with the error and what it
//! printed; and the bound on the text a run event may carry. Pure.

use tandem_runbooks::run as rb;
use tonic::Status;

/// Cuts `s` to at most `max` bytes at a character boundary (the state refuses longer text).
pub(super) fn bound(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    rb::excerpt(s).chars().take(max).collect()
}

/// Why a step's attempt failed, with what it printed.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: String,
    pub(super) output: String,
}

impl Failure {
    pub(super) fn new(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            output: String::new(),
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        Failure::new(s.message().to_string())
    }
}

pub(super) type StepResult = Result<String, Failure>;
