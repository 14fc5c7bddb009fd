//! The built-in actions: [`Action`] with its arguments, [`ActionKind`] without them (names,
//! accepted arguments, default site, whether repeating is harmless), and [`SiteRef`], where a
//! step runs.
//!
//! Pure types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tandem_core::config::HumanDuration;

/// Default pause between two probes of a `check` step.
pub const DEFAULT_CHECK_INTERVAL: HumanDuration = HumanDuration::from_secs(2);

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
    fn action_names_round_trip() {
        for k in ActionKind::ALL {
            assert_eq!(ActionKind::from_name(k.as_str()), Some(k));
        }
        assert_eq!(ActionKind::from_name("promte"), None);
    }
}
