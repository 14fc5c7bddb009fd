//! Chaos scenarios as TOML: a timeline of faults over a workload, and the checks to apply.
//!
//! ```toml
//! name = "primary-site-loss-sync"
//! description = "kill -9 every process of the primary site under sync writes"
//! mode = "sync"
//! duration = "8s"
//! auto_failover = true
//! checks = ["no_lost_acknowledged_writes", "identical_after_recovery", "rto_within_target"]
//!
//! [[faults]]
//! at = "3s"
//! action = "kill"
//! target = "site:primary"
//! ```

use serde::Deserialize;
use tandem_core::config::HumanDuration;

/// A fault action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAction {
    /// kill -9.
    Kill,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
    /// Start again every node this scenario killed (of the target).
    Restart,
}

/// One fault on the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When, from the start of the workload.
    pub at: HumanDuration,
    /// What.
    pub action: FaultAction,
    /// Whom: `site:primary`, `site:replica`, `site:NAME`, `node:NAME`, `leader`,
    /// `primary-replicator`, `replica-replicator` — resolved at the moment the fault fires.
    pub target: String,
}

/// A check a scenario asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Sync: no acknowledged write lost; async: losses only inside the reported RPO window.
    NoLostAcknowledgedWrites,
    /// After recovery, primary and replica are byte-identical (merkle roots at a barrier).
    IdenticalAfterRecovery,
    /// The automatic failover's RTO is within the group's target.
    RtoWithinTarget,
    /// A failover happened (the primary site changed).
    FailedOver,
    /// No failover happened (the primary site did not change).
    NoFailover,
    /// Epochs observed by the client never went backwards.
    EpochsMonotonic,
    /// The audit chain verifies.
    AuditChainValid,
    /// The old primary, resumed after a pause, refuses writes (it lost its lease).
    OldPrimaryFenced,
}

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// `sync` or `async`.
    pub mode: String,
    /// Length of the workload (faults must fall inside it).
    pub duration: HumanDuration,
    /// Automatic failover on.
    #[serde(default)]
    pub auto_failover: bool,
    /// The timeline.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Checks to apply at the end.
    pub checks: Vec<Check>,
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML for the schema.
    #[error("{file}: {message}")]
    Parse {
        /// File name.
        file: String,
        /// toml's message (with line and column).
        message: String,
    },
    /// Valid TOML, wrong content.
    #[error("{file}: {field}: {message}")]
    Invalid {
        /// File name.
        file: String,
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ScenarioError {
    /// Scenario errors are never retryable: the file must change.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl Scenario {
    /// Parses and validates a scenario.
    ///
    /// # Errors
    /// [`ScenarioError`] naming the file and field.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let bad = |field: String, message: String| ScenarioError::Invalid {
            file: file.to_owned(),
            field,
            message,
        };
        if s.mode != "sync" && s.mode != "async" {
            return Err(bad(
                "mode".into(),
                format!("{:?}: expected sync or async", s.mode),
            ));
        }
        if s.duration.as_millis() == 0 || s.duration.as_millis() > 120_000 {
            return Err(bad(
                "duration".into(),
                "must be between 1ms and 120s".into(),
            ));
        }
        if s.checks.is_empty() {
            return Err(bad(
                "checks".into(),
                "a scenario needs at least one check".into(),
            ));
        }
        for (i, f) in s.faults.iter().enumerate() {
            if f.at.as_millis() >= s.duration.as_millis() {
                return Err(bad(
                    format!("faults[{i}].at"),
                    "falls after the end of the workload".into(),
                ));
            }
            let ok = matches!(
                f.target.as_str(),
                "site:primary"
                    | "site:replica"
                    | "leader"
                    | "primary-replicator"
                    | "replica-replicator"
            ) || f
                .target
                .strip_prefix("site:")
                .is_some_and(|n| !n.is_empty())
                || f.target
                    .strip_prefix("node:")
                    .is_some_and(|n| !n.is_empty());
            if !ok {
                return Err(bad(
                    format!("faults[{i}].target"),
                    format!("unknown target {:?}", f.target),
                ));
            }
        }
        if s.faults.windows(2).any(|w| w[1].at < w[0].at) {
            return Err(bad("faults".into(), "faults must be in time order".into()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "x"
mode = "sync"
duration = "8s"
checks = ["no_lost_acknowledged_writes"]
[[faults]]
at = "3s"
action = "kill"
target = "site:primary"
"#;

    #[test]
    fn valid_scenario_parses() {
        let s = Scenario::parse(OK, "x.toml").unwrap();
        assert_eq!(s.faults[0].action, FaultAction::Kill);
        assert_eq!(s.checks, vec![Check::NoLostAcknowledgedWrites]);
    }

    #[test]
    fn fault_after_the_end_is_refused_naming_the_field() {
        let t = OK.replace("at = \"3s\"", "at = \"9s\"");
        let e = Scenario::parse(&t, "x.toml").unwrap_err().to_string();
        assert!(e.contains("faults[0].at"), "{e}");
    }

    #[test]
    fn unknown_target_and_check_are_refused() {
        let t = OK.replace("site:primary", "moon");
        assert!(Scenario::parse(&t, "x.toml")
            .unwrap_err()
            .to_string()
            .contains("faults[0].target"));
        let t = OK.replace("no_lost_acknowledged_writes", "vibes");
        assert!(Scenario::parse(&t, "x.toml")
            .unwrap_err()
            .to_string()
            .contains("x.toml"));
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            Scenario::parse(&text, &p.display().to_string()).unwrap();
            n += 1;
        }
        assert!(n >= 5);
    }
}
