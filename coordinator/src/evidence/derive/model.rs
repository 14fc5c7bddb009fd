//! The evidence views as `runs.json` and `rpo.csv` carry them: runs with their steps and
//! approvals, verify results, refusals and RPO samples. Types only (serde), no logic.

use super::residency::GroupResidency;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Format name of `runs.json`.
pub const RUNS_FORMAT: &str = "tandem-evidence-runs";

/// Version of `runs.json` this build writes.
pub const RUNS_VERSION: u32 = 1;

/// What kind of operation a [`Run`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// An unplanned failover (operator report with `op: failover`, or a promotion with
    /// `planned: false` that has no report).
    Failover,
    /// A planned switchover (operator report with `op: switchover`, or a planned promotion
    /// without a report).
    Switchover,
    /// A DR drill: `drill` records (and the runbook steps and approvals of the same run).
    Drill,
    /// A runbook run: `runbook_step` records sharing a run id.
    Runbook,
    /// Any other operator command recorded in the chain.
    Operator,
}

impl RunKind {
    /// The stable name (`failover`), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Failover => "failover",
            RunKind::Switchover => "switchover",
            RunKind::Drill => "drill",
            RunKind::Runbook => "runbook",
            RunKind::Operator => "operator",
        }
    }
}

/// One step of a run, placed on the run's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Step name.
    pub name: String,
    /// Start, in ms after the run's start (clamped at 0).
    pub offset_ms: i64,
    /// Duration, when known.
    pub ms: Option<i64>,
    /// Status as recorded (`ok`, `failed`, `started`, ...), when recorded.
    pub status: Option<String>,
    /// Whether the step succeeded, when recorded (`ok` field or a status of ok/failed).
    pub ok: Option<bool>,
    /// The audit record that reported the step (its last record for runbook steps).
    pub record_index: u64,
}

/// An approval given to a run or a runbook step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Audit record index.
    pub index: u64,
    /// When it was committed (unix ms).
    pub at_ms: i64,
    /// When, as RFC 3339 UTC.
    pub at: String,
    /// Who gave it: `detail.approver` if present, else the record's actor.
    pub approver: String,
    /// The record's actor (who submitted it).
    pub actor: String,
    /// Group, if any.
    pub group: Option<String>,
    /// `detail.run_id`, if any.
    pub run_id: Option<String>,
    /// `detail.runbook`, if any.
    pub runbook: Option<String>,
    /// `detail.step`, if any.
    pub step: Option<String>,
    /// `detail.decision`, `approved` when absent.
    pub decision: String,
    /// `detail.comment` or `detail.reason`, if any.
    pub comment: Option<String>,
    /// Id of the run it was attached to (by run id, or by group and time).
    pub attached_to: Option<String>,
}

/// One operation assembled from the chain: a failover, switchover, drill, runbook run or other
/// operator command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Stable id: the run id given by the runbook, else `<kind>-<first record index>`.
    pub id: String,
    /// What kind of operation.
    pub kind: RunKind,
    /// Operation name (`failover`, the runbook name, the operator command).
    pub op: String,
    /// Group, if any.
    pub group: Option<String>,
    /// Who ran it (actor of its first record).
    pub actor: String,
    /// Start (unix ms): detection time or `end - rto_ms` for reports, first record otherwise.
    pub start_ms: i64,
    /// Start as RFC 3339 UTC.
    pub start: String,
    /// End (unix ms): the report or last record.
    pub end_ms: i64,
    /// End as RFC 3339 UTC.
    pub end: String,
    /// RTO achieved, when known.
    pub rto_ms: Option<i64>,
    /// The group's RTO target, when one was given.
    pub rto_target_ms: Option<i64>,
    /// `rto_ms <= rto_target_ms`, when both are known.
    pub rto_met: Option<bool>,
    /// Outcome: `ready`, `not ready`, `ok`, `failed`, `no report`, ... when known.
    pub outcome: Option<String>,
    /// Steps on the run's timeline.
    pub steps: Vec<Step>,
    /// The data-loss window of a promotion, as recorded.
    pub data_loss_window: Option<Value>,
    /// RPO at the moment of loss (failover reports).
    pub rpo_at_loss_ms: Option<i64>,
    /// Approvals attached to this run.
    pub approvals: Vec<Approval>,
    /// Every audit record that makes up this run (report, fence, promote, state changes, steps).
    pub record_indexes: Vec<u64>,
}

/// The result of a `verify` (merkle comparison) recorded in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyResult {
    /// Audit record index.
    pub index: u64,
    /// When (unix ms).
    pub at_ms: i64,
    /// When, as RFC 3339 UTC.
    pub at: String,
    /// Who ran it.
    pub actor: String,
    /// Group, if any.
    pub group: Option<String>,
    /// Whether source and replica matched (`root_match`, `ok`, `match` or `matched`).
    pub ok: Option<bool>,
    /// `detail.run_id`, if any.
    pub run_id: Option<String>,
    /// The record's detail.
    pub detail: Value,
}

/// A refused command recorded in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Audit record index.
    pub index: u64,
    /// When (unix ms).
    pub at_ms: i64,
    /// When, as RFC 3339 UTC.
    pub at: String,
    /// Who asked.
    pub actor: String,
    /// Group, if any.
    pub group: Option<String>,
    /// The refused command (`promote`).
    pub op: String,
    /// Why it was refused.
    pub message: String,
}

/// Content of `runs.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsDoc {
    /// Always [`RUNS_FORMAT`].
    pub format: String,
    /// Always [`RUNS_VERSION`].
    pub version: u32,
    /// Every run, ordered by first record index.
    pub runs: Vec<Run>,
    /// Every approval, in chain order (also attached to their runs).
    pub approvals: Vec<Approval>,
    /// Every verify result, in chain order.
    pub verify_results: Vec<VerifyResult>,
    /// Every refused command, in chain order.
    pub refused: Vec<Refusal>,
    /// Per group, every site (and jurisdiction) that held its data during the window.
    #[serde(default)]
    pub residency: Vec<GroupResidency>,
    /// Per group with a `drill_every`: the drills of the window and whether the cadence held
    /// (absent when the export was given no schedule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drill_cadence: Vec<GroupCadence>,
    /// Records in the window whose actor is `unauthenticated`: made while the cluster ran
    /// without TLS (`[tls] insecure = true`), so nobody vouches for who acted.
    #[serde(default, skip_serializing_if = "Unauthenticated::is_none")]
    pub unauthenticated: Unauthenticated,
}

/// The records of a window made without TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unauthenticated {
    /// How many.
    pub records: u64,
    /// The first one's index.
    pub first_index: u64,
    /// The last one's index.
    pub last_index: u64,
}

impl Unauthenticated {
    /// True when there are none.
    pub fn is_none(&self) -> bool {
        self.records == 0
    }

    /// Counts the records of `records` whose actor is `unauthenticated`.
    pub fn of(records: &[crate::audit::AuditRecord]) -> Unauthenticated {
        let mut u = Unauthenticated::default();
        for r in records
            .iter()
            .filter(|r| r.actor == tandem_core::authz::UNAUTHENTICATED)
        {
            if u.records == 0 {
                u.first_index = r.index;
            }
            u.records += 1;
            u.last_index = r.index;
        }
        u
    }
}

/// One RPO record, a row of `rpo.csv`: a single sample (`rpo_sample` records, chains from before
/// the audit interval) or a summary of the samples since the group's previous RPO record
/// (`rpo_summary` records). A single sample reads as a summary of one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpoRow {
    /// Group.
    pub group: String,
    /// Audit record index.
    pub index: u64,
    /// When (unix ms): the time of the row's last sample.
    pub at_ms: i64,
    /// RPO of the last sample, at `at_ms`.
    pub rpo_ms: u64,
    /// Target: the record's `target_ms`, else the export's target for the group.
    pub target_ms: Option<u64>,
    /// Samples the row stands for (1 for an `rpo_sample` record).
    pub samples: u64,
    /// Of those, how many were over the target.
    pub over_samples: u64,
    /// Smallest RPO among them.
    pub min_ms: u64,
    /// Largest RPO among them: the worst of the interval.
    pub max_ms: u64,
    /// Time over target the row covers; `None` for a single sample (not measured then).
    pub over_target_ms: Option<u64>,
    /// When the row's first sample was taken (`at_ms` for a single sample).
    pub since_ms: i64,
}

impl RpoRow {
    /// The row of a single sample: a summary of one, over target when `rpo_ms > target_ms`, no
    /// time over target.
    pub fn single(
        group: String,
        index: u64,
        at_ms: i64,
        rpo_ms: u64,
        target_ms: Option<u64>,
    ) -> RpoRow {
        RpoRow {
            group,
            index,
            at_ms,
            rpo_ms,
            target_ms,
            samples: 1,
            over_samples: u64::from(target_ms.is_some_and(|t| rpo_ms > t)),
            min_ms: rpo_ms,
            max_ms: rpo_ms,
            over_target_ms: None,
            since_ms: at_ms,
        }
    }

    /// Whether any sample of the row exceeds its target.
    pub fn over_target(&self) -> bool {
        self.over_samples > 0
    }
}

/// One drill of a group in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CadenceDrill {
    /// The run id (or the evidence's id of the run).
    pub run_id: String,
    /// Its start record.
    pub record_index: u64,
    /// Its start (unix ms).
    pub start_ms: i64,
    /// Its start, RFC 3339 UTC.
    pub start: String,
    /// Who started it (`coordinator` for a scheduled drill).
    pub actor: String,
    /// Started by the coordinators on the group's schedule: actor `coordinator` and a `reason`
    /// that begins `scheduled:` (anyone else's record saying so is not believed).
    pub scheduled: bool,
    /// How it ended, when the window holds its end (`ok`, `failed`, ...).
    pub outcome: Option<String>,
}

/// Whether a group's drills held its schedule over the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCadence {
    /// Group.
    pub group: String,
    /// `drill_every`, ms.
    pub every_ms: u64,
    /// Grace, ms: a gap held when it is at most `every_ms + grace_ms`.
    pub grace_ms: i64,
    /// Start of the stretch checked (unix ms): the window's start, or the group's creation
    /// when the window holds it.
    pub from_ms: i64,
    /// End of the stretch checked (unix ms): the window's end, at most the export's time.
    pub to_ms: i64,
    /// The drills, in time order.
    pub drills: Vec<CadenceDrill>,
    /// Every gap checked (a stretch from the start to the first drill is listed only when it
    /// is a miss).
    pub gaps: Vec<crate::cadence::Gap>,
    /// True when every gap held.
    pub held: bool,
}
