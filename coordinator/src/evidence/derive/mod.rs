//! Pure derivation of the evidence views (runs, approvals, verify results, refusals, RPO samples)
//! from audit records.
//!
//! Everything here is a function of the records and the targets only, so `verify` can derive the
//! same files again from `audit.jsonl` and compare them byte for byte.
//!
//! - [`model`]: the views' types.
//! - [`runs`]: runs, approvals, verify results and refusals ([`assemble`]).
//! - [`rpo`]: RPO samples and `rpo.csv`.
//! - [`residency`]: where data stood and was held.
//! - [`cadence`]: scheduled drills, and whether their cadence held.
//! - [`aar`]: the after-action report of each exercise (`after-action.json`).
//! - [`controls`]: the audit controls each piece of evidence addresses, and what is missing.
//! - [`fields`]: reading record details.

pub mod aar;
pub mod cadence;
pub mod controls;
pub mod fields;
pub mod model;
pub mod residency;
pub mod rpo;
pub mod runs;
#[cfg(test)]
mod tests;

pub use self::aar::{after_action, AarInputs, AfterActionDoc, AAR_FORMAT, AAR_VERSION};
pub use self::cadence::drill_cadence;
pub use self::controls::{controls, AfterActionFacts, Control, ControlRow, ControlsInput};
pub use self::fields::{groups, iso_ms};
pub use self::model::{
    Approval, CadenceDrill, GroupCadence, Refusal, RpoRow, Run, RunKind, RunsDoc, Step,
    VerifyResult, RUNS_FORMAT, RUNS_VERSION,
};
pub use self::residency::{
    residency, residency_start, GroupPlacement, GroupResidency, HeldSite, ResidencyStart,
};
pub use self::rpo::{rpo_csv, rpo_rows, rpo_totals, RPO_CSV_HEADER};
pub use self::runs::{assemble, APPROVAL_LEAD_MS};
