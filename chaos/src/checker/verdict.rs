//! The outcome every checker returns ([`Verdict`]), and the replication mode a run was
//! configured with, which some checkers judge by.
//!
//! Pure types.

use serde::Serialize;

/// The outcome of one checker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The checker's name.
    pub name: String,
    /// True when no violation was found.
    pub ok: bool,
    /// One line per violation, naming the operation, block, epoch or site involved.
    pub violations: Vec<String>,
    /// What the checker could not judge, or counted (not failures).
    pub notes: Vec<String>,
}

impl Verdict {
    pub(crate) fn new(name: &str, violations: Vec<String>, notes: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            ok: violations.is_empty(),
            violations,
            notes,
        }
    }
}

/// The replication mode the run was configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReplicationMode {
    /// Writes are acknowledged only once the replica has them: no acknowledged write may be lost.
    Sync,
    /// Writes are acknowledged before shipping: loss is allowed within the reported RPO.
    Async,
}
