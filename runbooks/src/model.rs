//! The runbook model: what a parsed runbook file says, as typed values.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tandem_core::config::HumanDuration;

use crate::condition::Condition;

/// The most retries a step may declare: more would hide a broken step behind a long wait.
pub const MAX_RETRIES: u32 = 10;
/// The longest backoff (initial or maximum) a step may declare.
pub const MAX_BACKOFF: HumanDuration = HumanDuration::from_secs(3600);
/// Default step timeout when a step declares none.
pub const DEFAULT_TIMEOUT: HumanDuration = HumanDuration::from_secs(300);
/// Default pause between two probes of a `check` step.
pub const DEFAULT_CHECK_INTERVAL: HumanDuration = HumanDuration::from_secs(2);

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

/// A declared runbook parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    /// Name, referenced as `param.NAME` in `when` conditions; `exec` steps see it as
    /// the environment variable `TANDEM_PARAM_NAME` (upper case).
    pub name: String,
    /// Type of its values.
    pub ty: ParamType,
    /// Value when the caller gives none; `None` makes the parameter required.
    pub default: Option<ParamValue>,
    /// What it controls.
    pub description: String,
}

/// Type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Text.
    String,
    /// `true` or `false`.
    Bool,
    /// A signed 64-bit integer.
    Integer,
    /// A humane duration (`"30s"`).
    Duration,
}

impl ParamType {
    /// The name written in a runbook file.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Bool => "bool",
            ParamType::Integer => "integer",
            ParamType::Duration => "duration",
        }
    }

    /// Parses a value of this type from command-line text (`true`, `42`, `30s`, any text).
    ///
    /// # Errors
    /// A message naming the expected form when `text` is not a value of this type.
    pub fn parse_value(self, text: &str) -> Result<ParamValue, String> {
        match self {
            ParamType::String => Ok(ParamValue::String(text.to_string())),
            ParamType::Bool => match text {
                "true" => Ok(ParamValue::Bool(true)),
                "false" => Ok(ParamValue::Bool(false)),
                _ => Err(format!("expected true or false, got \"{text}\"")),
            },
            ParamType::Integer => text
                .parse::<i64>()
                .map(ParamValue::Integer)
                .map_err(|_| format!("expected an integer, got \"{text}\"")),
            ParamType::Duration => text
                .parse::<HumanDuration>()
                .map(ParamValue::Duration)
                .map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamValue {
    /// Text.
    String(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A duration.
    Duration(HumanDuration),
}

impl ParamValue {
    /// The type of this value.
    pub fn ty(&self) -> ParamType {
        match self {
            ParamValue::String(_) => ParamType::String,
            ParamValue::Bool(_) => ParamType::Bool,
            ParamValue::Integer(_) => ParamType::Integer,
            ParamValue::Duration(_) => ParamType::Duration,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::String(s) => f.write_str(s),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Integer(i) => write!(f, "{i}"),
            ParamValue::Duration(d) => write!(f, "{d}"),
        }
    }
}

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

/// Where a step runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteRef {
    /// On the coordinator leader (fence, approve, sleep, notify, http).
    Coordinator,
    /// The group's primary site when the plan was made.
    Primary,
    /// The group's replica site when the plan was made.
    Replica,
    /// A site named in the topology.
    Named(String),
}

impl SiteRef {
    /// Reads the text written in a runbook: `coordinator`, `primary`, `replica` or a site name.
    pub fn from_text(text: &str) -> SiteRef {
        match text {
            "coordinator" => SiteRef::Coordinator,
            "primary" => SiteRef::Primary,
            "replica" => SiteRef::Replica,
            other => SiteRef::Named(other.to_string()),
        }
    }
}

impl fmt::Display for SiteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SiteRef::Coordinator => f.write_str("coordinator"),
            SiteRef::Primary => f.write_str("primary"),
            SiteRef::Replica => f.write_str("replica"),
            SiteRef::Named(n) => f.write_str(n),
        }
    }
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

/// A command to run: a shell line or an argument vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Run with `sh -c`.
    Shell(String),
    /// Run directly: program and arguments.
    Argv(Vec<String>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Shell(s) => f.write_str(s),
            Command::Argv(v) => f.write_str(&v.join(" ")),
        }
    }
}

/// The probe of a `check` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// Ready when the command exits 0.
    Command {
        /// The command.
        command: Command,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
    },
    /// Ready when a GET of `url` answers `expect_status` (any 2xx when `None`).
    Http {
        /// The URL.
        url: String,
        /// The status that means ready.
        expect_status: Option<u16>,
    },
}

/// An action with its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Raise the group's epoch and revoke the old primary's lease.
    Fence,
    /// Wait until the replica's watermark is within `max_lag` seqs of the primary's last seq
    /// (the step's `timeout` bounds the wait).
    WaitReplicated {
        /// Seqs the replica may still be behind (0 = fully caught up).
        max_lag: u64,
    },
    /// Stop shipping frames (the primary keeps journaling).
    PauseReplication,
    /// Start shipping frames again.
    ResumeReplication,
    /// Make the site writable as the group's primary, in the new epoch.
    Promote,
    /// Make the site read-only (a replica).
    Demote,
    /// Replicate the other way: from the new primary to the old one.
    Reverse,
    /// Take a point-in-time copy of the replica volume, for a drill.
    Snapshot {
        /// Name of the copy.
        name: String,
    },
    /// Compare primary and replica by merkle tree.
    Verify,
    /// Build the group's resources as they were at a recovery point of the replica's
    /// point-in-time history into `DATA_DIR/recovered/GROUP/NAME-RUN` at the step's site (the
    /// replica by default); replication continues. The point and the merkle roots of the copy
    /// go into the audit chain.
    Recover {
        /// Name of the copy.
        name: String,
        /// Which point.
        point: RecoverPoint,
    },
    /// Run a command on the site's replicator; output is captured into the run.
    Exec {
        /// The command.
        command: Command,
        /// Extra environment variables (TANDEM_GROUP, TANDEM_EPOCH, ... are always set).
        env: BTreeMap<String, String>,
    },
    /// Call a webhook.
    Http {
        /// The URL.
        url: String,
        /// HTTP method (`POST` by default).
        method: String,
        /// Request body.
        body: Option<String>,
        /// Extra request headers.
        headers: BTreeMap<String, String>,
        /// Status that means success (any 2xx when `None`).
        expect_status: Option<u16>,
    },
    /// A manual gate: the run waits for `tandem approve RUN STEP`.
    Approve {
        /// What the approver is asked.
        prompt: String,
    },
    /// Wait.
    Sleep {
        /// How long.
        duration: HumanDuration,
    },
    /// Send a message to people.
    Notify {
        /// The message.
        message: String,
        /// Where to send it (a channel name the coordinator knows); the default channel when `None`.
        channel: Option<String>,
    },
    /// Probe until the service is ready; a passing check ends the RTO clock.
    Check {
        /// What to probe.
        probe: Probe,
        /// Pause between two probes.
        interval: HumanDuration,
    },
}

impl Action {
    /// The action's name as written in a runbook.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The action's kind (its name without arguments).
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Fence => ActionKind::Fence,
            Action::WaitReplicated { .. } => ActionKind::WaitReplicated,
            Action::PauseReplication => ActionKind::PauseReplication,
            Action::ResumeReplication => ActionKind::ResumeReplication,
            Action::Promote => ActionKind::Promote,
            Action::Demote => ActionKind::Demote,
            Action::Reverse => ActionKind::Reverse,
            Action::Snapshot { .. } => ActionKind::Snapshot,
            Action::Verify => ActionKind::Verify,
            Action::Recover { .. } => ActionKind::Recover,
            Action::Exec { .. } => ActionKind::Exec,
            Action::Http { .. } => ActionKind::Http,
            Action::Approve { .. } => ActionKind::Approve,
            Action::Sleep { .. } => ActionKind::Sleep,
            Action::Notify { .. } => ActionKind::Notify,
            Action::Check { .. } => ActionKind::Check,
        }
    }
}

/// Which recovery point a `recover` step rebuilds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoverPoint {
    /// The latest checkpoint with this tag (`tandem checkpoint GROUP --tag TAG`).
    Checkpoint(String),
    /// The latest point at or before this long before the step runs.
    Ago(HumanDuration),
}

/// The built-in actions, without arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// See [`Action::Fence`].
    Fence,
    /// See [`Action::WaitReplicated`].
    WaitReplicated,
    /// See [`Action::PauseReplication`].
    PauseReplication,
    /// See [`Action::ResumeReplication`].
    ResumeReplication,
    /// See [`Action::Promote`].
    Promote,
    /// See [`Action::Demote`].
    Demote,
    /// See [`Action::Reverse`].
    Reverse,
    /// See [`Action::Snapshot`].
    Snapshot,
    /// See [`Action::Verify`].
    Verify,
    /// See [`Action::Recover`].
    Recover,
    /// See [`Action::Exec`].
    Exec,
    /// See [`Action::Http`].
    Http,
    /// See [`Action::Approve`].
    Approve,
    /// See [`Action::Sleep`].
    Sleep,
    /// See [`Action::Notify`].
    Notify,
    /// See [`Action::Check`].
    Check,
}

impl ActionKind {
    /// Every action.
    pub const ALL: [ActionKind; 16] = [
        ActionKind::Fence,
        ActionKind::WaitReplicated,
        ActionKind::PauseReplication,
        ActionKind::ResumeReplication,
        ActionKind::Promote,
        ActionKind::Demote,
        ActionKind::Reverse,
        ActionKind::Snapshot,
        ActionKind::Verify,
        ActionKind::Recover,
        ActionKind::Exec,
        ActionKind::Http,
        ActionKind::Approve,
        ActionKind::Sleep,
        ActionKind::Notify,
        ActionKind::Check,
    ];

    /// The name written in a runbook.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Fence => "fence",
            ActionKind::WaitReplicated => "wait_replicated",
            ActionKind::PauseReplication => "pause_replication",
            ActionKind::ResumeReplication => "resume_replication",
            ActionKind::Promote => "promote",
            ActionKind::Demote => "demote",
            ActionKind::Reverse => "reverse",
            ActionKind::Snapshot => "snapshot",
            ActionKind::Verify => "verify",
            ActionKind::Recover => "recover",
            ActionKind::Exec => "exec",
            ActionKind::Http => "http",
            ActionKind::Approve => "approve",
            ActionKind::Sleep => "sleep",
            ActionKind::Notify => "notify",
            ActionKind::Check => "check",
        }
    }

    /// The action named `name`, if it is built in.
    pub fn from_name(name: &str) -> Option<ActionKind> {
        ActionKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The argument names the action accepts (beyond the common step fields).
    pub fn arguments(self) -> &'static [&'static str] {
        match self {
            ActionKind::WaitReplicated => &["max_lag"],
            ActionKind::Snapshot => &["name"],
            ActionKind::Recover => &["name", "checkpoint", "ago"],
            ActionKind::Exec => &["command", "env"],
            ActionKind::Http => &["url", "method", "body", "headers", "expect_status"],
            ActionKind::Approve => &["prompt"],
            ActionKind::Sleep => &["duration"],
            ActionKind::Notify => &["message", "channel"],
            ActionKind::Check => &["command", "env", "url", "expect_status", "interval"],
            ActionKind::Fence
            | ActionKind::PauseReplication
            | ActionKind::ResumeReplication
            | ActionKind::Promote
            | ActionKind::Demote
            | ActionKind::Reverse
            | ActionKind::Verify => &[],
        }
    }

    /// Whether running the action twice is harmless, unless the step says otherwise.
    ///
    /// Fencing raises the epoch to a target and is idempotent; promote first checks the
    /// replicated state (done if the site is already primary in a newer epoch) and skips a
    /// PostgreSQL server already in production; probes and waits only observe. Demote,
    /// reverse, snapshot and anything calling out (exec, http, notify) may not be safe to
    /// repeat.
    pub fn default_repeatable(self) -> bool {
        matches!(
            self,
            ActionKind::Fence
                | ActionKind::Promote
                | ActionKind::WaitReplicated
                | ActionKind::PauseReplication
                | ActionKind::ResumeReplication
                | ActionKind::Verify
                | ActionKind::Sleep
                | ActionKind::Check
                | ActionKind::Approve
        )
    }

    /// Where the action runs when the step names no site; `None` when the step must name one.
    pub fn default_site(self) -> Option<SiteRef> {
        match self {
            ActionKind::Fence
            | ActionKind::Http
            | ActionKind::Approve
            | ActionKind::Sleep
            | ActionKind::Notify => Some(SiteRef::Coordinator),
            ActionKind::Promote
            | ActionKind::Reverse
            | ActionKind::WaitReplicated
            | ActionKind::Snapshot
            | ActionKind::Recover
            | ActionKind::Verify => Some(SiteRef::Replica),
            ActionKind::Demote | ActionKind::PauseReplication | ActionKind::ResumeReplication => {
                Some(SiteRef::Primary)
            }
            ActionKind::Exec | ActionKind::Check => None,
        }
    }

    /// True for actions that only the coordinator can carry out (no site other than
    /// `coordinator` makes sense).
    pub fn coordinator_only(self) -> bool {
        matches!(
            self,
            ActionKind::Fence | ActionKind::Approve | ActionKind::Sleep | ActionKind::Notify
        )
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

    #[test]
    fn action_names_round_trip() {
        for k in ActionKind::ALL {
            assert_eq!(ActionKind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(ActionKind::from_name("promte"), None);
    }

    #[test]
    fn param_values_parse_by_type() {
        assert_eq!(
            ParamType::Bool.parse_value("true"),
            Ok(ParamValue::Bool(true))
        );
        assert!(ParamType::Bool.parse_value("yes").is_err());
        assert_eq!(
            ParamType::Integer.parse_value("-3"),
            Ok(ParamValue::Integer(-3))
        );
        assert_eq!(
            ParamType::Duration.parse_value("30s"),
            Ok(ParamValue::Duration(HumanDuration::from_secs(30)))
        );
        assert!(ParamType::Duration.parse_value("30").is_err());
    }
}
