//! One step of a runbook: where and when it runs, its timeout, its retry policy and what
//! happens when it fails for good, with the limits a step may declare.
//!
//! Pure types.

use serde::{Deserialize, Serialize};
use std::fmt;
use tandem_core::config::HumanDuration;

use super::action::{Action, SiteRef};
use crate::condition::Condition;

/// The most retries a step may declare: more would hide a broken step behind a long wait.
pub const MAX_RETRIES: u32 = 10;
/// The longest backoff (initial or maximum) a step may declare.
pub const MAX_BACKOFF: HumanDuration = HumanDuration::from_secs(3600);
/// Default step timeout when a step declares none.
pub const DEFAULT_TIMEOUT: HumanDuration = HumanDuration::from_secs(300);

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Unique id within the runbook (`fence-old-primary`).
    pub id: String,
    /// What to do, with the action's arguments.
    pub action: Action,
    /// Where it runs.
    pub site: SiteRef,
    /// What the step is for, shown in plans.
    pub description: Option<String>,
    /// How long one attempt may take before it counts as failed.
    pub timeout: HumanDuration,
    /// How often a failed attempt is tried again, and how long to wait between attempts.
    pub retries: Retries,
    /// Run the step only when this holds (evaluated when the plan is made).
    pub when: Option<Condition>,
    /// What happens when the step has failed and has no retries left.
    pub on_failure: OnFailure,
    /// True when running the step twice is harmless; a new coordinator leader repeats a
    /// repeatable step that may have been under way, and asks for approval otherwise.
    pub repeatable: bool,
    /// A handler runs only when another step's `on_failure` names it, never in sequence.
    pub handler: bool,
}

/// Retry policy of a step: `count` more attempts after the first, waiting `backoff`, doubled
/// after each failure, capped at `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retries {
    /// Attempts after the first (0 = no retry); at most [`MAX_RETRIES`].
    pub count: u32,
    /// Wait before the first retry.
    pub backoff: HumanDuration,
    /// Upper bound of the doubling wait.
    pub max_backoff: HumanDuration,
}

impl Retries {
    /// No retries.
    pub const NONE: Retries = Retries {
        count: 0,
        backoff: HumanDuration::from_secs(1),
        max_backoff: HumanDuration::from_secs(60),
    };

    /// Wait before the attempt that follows failure number `failures` (1-based):
    /// `backoff * 2^(failures-1)`, capped at `max_backoff`.
    pub fn delay_after(&self, failures: u32) -> HumanDuration {
        let base = self.backoff.as_millis();
        let shift = failures.saturating_sub(1).min(32);
        let ms = base.saturating_mul(1u64 << shift);
        HumanDuration::from_millis(ms.min(self.max_backoff.as_millis().max(base)))
    }
}

impl Default for Retries {
    fn default() -> Retries {
        Retries::NONE
    }
}

/// What happens when a step has failed and has no retries left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop the run; it ends failed.
    Abort,
    /// Mark the step failed and go on with the next step.
    Continue,
    /// Run the listed steps that have not run yet (cleanup, rollback), then end the run failed.
    Steps(Vec<String>),
}

impl fmt::Display for OnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnFailure::Abort => f.write_str("abort"),
            OnFailure::Continue => f.write_str("continue"),
            OnFailure::Steps(ids) => write!(f, "run {}", ids.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let r = Retries {
            count: 5,
            backoff: HumanDuration::from_secs(2),
            max_backoff: HumanDuration::from_secs(10),
        };
        let got: Vec<u64> = (1..=5).map(|n| r.delay_after(n).as_millis()).collect();
        assert_eq!(got, vec![2000, 4000, 8000, 10_000, 10_000]);
    }
}
