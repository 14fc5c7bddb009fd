//! The runbook model: what a parsed runbook file says, as typed values.
//!
//! Pure types; the model stands on `source` (where fields sit in the file) and, for
//! a step's `when`, on [`crate::condition`], which itself stands only on `param`.
//!
//! | room | holds |
//! | --- | --- |
//! | `param` | [`Parameter`], [`ParamType`], [`ParamValue`] |
//! | `step` | [`Step`], its [`Retries`] and [`OnFailure`] policies, and the step limits |
//! | `action` | [`Action`] with its arguments, [`ActionKind`], [`SiteRef`], [`Command`], [`Probe`], [`RecoverPoint`] |

mod action;
pub(crate) mod param;
mod step;

use serde::{Deserialize, Serialize};
use std::fmt;

pub use self::action::{
    Action, ActionKind, Command, Probe, RecoverPoint, SiteRef, DEFAULT_CHECK_INTERVAL,
};
pub use self::param::{ParamType, ParamValue, Parameter};
pub use self::step::{OnFailure, Retries, Step, DEFAULT_TIMEOUT, MAX_BACKOFF, MAX_RETRIES};

/// A runbook: a named, parameterised list of steps for one DR procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runbook {
    /// Short name (`switchover`).
    pub name: String,
    /// What the procedure is for, in a sentence or two.
    pub description: String,
    /// Which procedure this is; some checks depend on it.
    pub kind: RunbookKind,
    /// Declared parameters, in file order.
    pub parameters: Vec<Parameter>,
    /// The steps, in file order.
    pub steps: Vec<Step>,
    /// Where each field sits in the file, for diagnostics after parsing.
    #[serde(skip)]
    pub(crate) source: crate::source::SourceMap,
}

impl Runbook {
    /// The step with id `id`, if any.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The parameter named `name`, if declared.
    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }
}

/// Which DR procedure a runbook implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunbookKind {
    /// A test failover on an isolated copy at the replica site; replication continues.
    Drill,
    /// A planned role swap with zero data loss.
    Switchover,
    /// An unplanned role change after the primary is lost.
    Failover,
    /// Resync the old primary and switch back to it.
    Failback,
    /// Anything else; only the generic checks apply.
    Custom,
}

impl RunbookKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [RunbookKind; 5] = [
        RunbookKind::Drill,
        RunbookKind::Switchover,
        RunbookKind::Failover,
        RunbookKind::Failback,
        RunbookKind::Custom,
    ];

    /// The name written in a runbook file.
    pub fn as_str(self) -> &'static str {
        match self {
            RunbookKind::Drill => "drill",
            RunbookKind::Switchover => "switchover",
            RunbookKind::Failover => "failover",
            RunbookKind::Failback => "failback",
            RunbookKind::Custom => "custom",
        }
    }
}

impl fmt::Display for RunbookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
