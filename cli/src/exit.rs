//! Exit codes: 0 ok, 1 failed operation, 2 bad usage or bad input.

use std::fmt;

/// Marks an error as the user's input being wrong (exit code 2), as opposed to an operation
/// that failed (exit code 1).
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// Wraps a message as a bad-input error.
pub fn bad_input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(BadInput(msg.into()))
}

/// The exit code for an error: 2 if any cause in its chain is bad input, else 1.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.downcast_ref::<BadInput>().is_some()) {
        2
    } else {
        1
    }
}
