//! What every crate means by a group's replication mode, a replicator's role in a group and a
//! group's state: defined once here, re-used by the config, the coordinators' state machine
//! and the replicators. Pure.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Replication mode of a group: when a write is acknowledged to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Writes are acknowledged once the replica has them durable (DRBD protocol C): RPO 0.
    Sync,
    /// Writes are acknowledged once journaled locally (DRBD protocol A): RPO is the lag.
    Async,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        })
    }
}

/// Role of a replicator in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Captures and ships.
    Primary,
    /// Receives and applies.
    Replica,
}

/// A group's state as operators see it (decided by the coordinators).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupState {
    /// Replicating within target.
    Protected,
    /// Replicating badly or not at all (a site is down, RPO over target).
    Degraded,
    /// An unplanned failover is in progress: no new leases.
    FailingOver,
    /// The replica site was promoted after an unplanned failover; not protected until failback.
    FailedOver,
    /// A DR drill runs on an isolated copy at the replica site.
    Drilling,
    /// The replica is being brought back in line (initial sync, merkle resync).
    Resyncing,
    /// A planned switchover is in progress: no new leases (the holder may renew until release).
    SwitchingOver,
}

impl GroupState {
    /// Every state, in declaration order.
    pub const ALL: [GroupState; 7] = [
        GroupState::Protected,
        GroupState::Degraded,
        GroupState::FailingOver,
        GroupState::FailedOver,
        GroupState::Drilling,
        GroupState::Resyncing,
        GroupState::SwitchingOver,
    ];

    /// The stable name (`failing-over`), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Protected => "protected",
            GroupState::Degraded => "degraded",
            GroupState::FailingOver => "failing-over",
            GroupState::FailedOver => "failed-over",
            GroupState::Drilling => "drilling",
            GroupState::Resyncing => "resyncing",
            GroupState::SwitchingOver => "switching-over",
        }
    }

    /// The state a stable name stands for (`None` for a name no state has).
    pub fn from_name(name: &str) -> Option<GroupState> {
        GroupState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn group_state_names_round_trip_and_match_json() {
        for s in GroupState::ALL {
            assert_eq!(GroupState::from_name(s.as_str()), Some(s), "{s:?}");
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(GroupState::from_name("switching_over"), None);
    }

    #[test]
    fn mode_and_role_keep_their_wire_names() {
        assert_eq!(serde_json::to_string(&Mode::Sync).unwrap(), "\"sync\"");
        assert_eq!(
            serde_json::to_string(&Role::Replica).unwrap(),
            "\"replica\""
        );
        assert_eq!(Mode::Async.to_string(), "async");
    }
}
