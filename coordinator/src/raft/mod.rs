//! The coordinators' raft group: raft-rs driven over sled storage and a tonic peer transport.
//!
//! - [`storage`]: [`SledStorage`], raft-rs's `Storage` trait over sled.
//! - [`node`]: the task that owns the `RawNode` and the [`RaftHandle`] callers use.
//! - [`transport`]: the `RaftPeer` gRPC service and one bounded sender per peer.
//! - [`cmd`]: the commands the raft thread takes and what it answers.
//! - [`log`]: a slog drain that forwards raft-rs's logs to `tracing`.
//! - [`snapshot_policy`]: when a snapshot is taken and the log compacted (pure).
//!
//! Start a node with [`start`], add [`peer_service`] to the node's tonic server, and propose
//! commands with [`RaftHandle::propose`]. The replicated state machine is any
//! [`StateMachine`]. Durability: the raft log and hard state are fsynced before the messages
//! that depend on them are sent; the state machine itself is not persisted, it is rebuilt on
//! restart from the last stored snapshot plus the committed log after it.

// As raft-rs itself does: protobuf-2 messages are built field by field.
#![allow(clippy::field_reassign_with_default)]

pub mod cmd;
pub mod log;
pub mod node;
pub mod snapshot_policy;
pub mod storage;
pub mod transport;
mod trim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use node::peer_service;
pub use node::{start, Committed, MembershipChange, RaftHandle, RaftRole, RaftStatus};
pub use storage::sled_store::SledStorage;
pub use transport::PeerService;

/// A deterministic replicated state machine driven by the raft log.
pub trait StateMachine: Send + 'static {
    /// Applies one committed command; must be deterministic. Returns the reply bytes for the proposer.
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8>;
    /// Serialises the whole state (taken at the last applied index).
    fn snapshot(&self) -> Vec<u8>;
    /// Called once, when the node has opened its store and before any restore or apply: a
    /// state machine that keeps data of its own beside the raft log (the coordinator's audit
    /// records) opens it in the same sled database, so one flush makes both durable. Default:
    /// nothing.
    ///
    /// # Errors
    /// The data cannot be opened; the node then stops.
    fn attach(&mut self, _db: &sled::Db) -> Result<(), String> {
        Ok(())
    }
    /// Replaces the whole state with a snapshot produced by [`StateMachine::snapshot`].
    ///
    /// # Errors
    /// The bytes are not a valid snapshot; the node then stops (it cannot continue safely).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}

/// Errors of the raft node and its handle.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// This node is not the leader; `leader` is the known leader to forward to, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<u64>,
    },
    /// The proposal was not applied within the time limit (its outcome is unknown).
    #[error("proposal not applied within {after:?}")]
    Timeout {
        /// The time limit.
        after: Duration,
    },
    /// The proposal's log slot was taken by another entry (leader change): it will never apply.
    #[error("proposal at index {index} was dropped (leader changed)")]
    ProposalDropped {
        /// The index the proposal had been given.
        index: u64,
    },
    /// The proposal's index was overtaken by a snapshot from the leader: it may or may not
    /// have been applied (make commands idempotent, or check the state, before retrying).
    #[error("proposal at index {index} overtaken by a snapshot; outcome unknown")]
    OutcomeUnknown {
        /// The index the proposal had been given.
        index: u64,
    },
    /// A committed conf change was rejected by raft-rs.
    #[error("membership change at index {index} rejected: {reason}")]
    ConfChangeRejected {
        /// Index of the conf change entry.
        index: u64,
        /// raft-rs's reason.
        reason: String,
    },
    /// The node's command queue is full.
    #[error("raft node is overloaded (command queue full)")]
    Busy,
    /// The node is shut down (or stopped after a fatal error).
    #[error("raft node is shut down")]
    ShuttingDown,
    /// The configuration is invalid.
    #[error("invalid raft config: {0}")]
    Config(String),
    /// Storage failed.
    #[error("raft storage: {0}")]
    Storage(#[from] storage::error::StorageError),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The state machine refused a snapshot.
    #[error("state machine restore failed: {0}")]
    Restore(String),
}

impl RaftError {
    /// Whether the same call may succeed later (possibly on another node for `NotLeader`).
    pub fn is_retryable(&self) -> bool {
        match self {
            RaftError::NotLeader { .. }
            | RaftError::Timeout { .. }
            | RaftError::ProposalDropped { .. }
            | RaftError::Busy => true,
            RaftError::Storage(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Configuration of one raft node.
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    /// This node's raft id (non-zero, a key of `peers` unless `join`).
    pub id: u64,
    /// Initial voters and their peer transport addresses (`"http://127.0.0.1:7101"`).
    pub peers: BTreeMap<u64, String>,
    /// Directory of the sled database.
    pub data_dir: PathBuf,
    /// Length of one raft tick.
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_tick: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_tick: usize,
    /// Take a state machine snapshot and compact the log every this many applied entries
    /// (no sooner than `snapshot_min_interval`; see [`snapshot_policy`]).
    pub snapshot_every: u64,
    /// Least time between two snapshots taken to compact the log: a snapshot is the whole
    /// state machine, so with many groups it must not follow the commit rate.
    pub snapshot_min_interval: Duration,
    /// How long [`RaftHandle::propose`] waits for the entry to apply locally.
    pub propose_timeout: Duration,
    /// Start with no configuration and wait to be added by [`RaftHandle::change_membership`]
    /// on the leader (the node then catches up by snapshot). Ignored on restart.
    pub join: bool,
    /// How peers are dialled and served: plaintext or mutual TLS (default plaintext).
    pub net: tandem_core::net::Net,
    /// raft id -> node id, to check that a peer's certificate names the node its envelopes
    /// claim to come from (TLS only).
    pub peer_names: BTreeMap<u64, String>,
}

impl RaftNodeConfig {
    /// A config with defaults: 100 ms tick, election 10 ticks, heartbeat 3 ticks, snapshot
    /// every 1000 entries with no least interval, 5 s proposal timeout.
    pub fn new(id: u64, peers: BTreeMap<u64, String>, data_dir: PathBuf) -> Self {
        RaftNodeConfig {
            id,
            peers,
            data_dir,
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 3,
            snapshot_every: 1000,
            snapshot_min_interval: Duration::ZERO,
            propose_timeout: Duration::from_secs(5),
            join: false,
            net: tandem_core::net::Net::plaintext(),
            peer_names: BTreeMap::new(),
        }
    }

    /// Checks the fields that raft-rs does not check itself.
    ///
    /// # Errors
    /// [`RaftError::Config`] naming the field.
    pub fn validate(&self) -> Result<(), RaftError> {
        if self.id == 0 {
            return Err(RaftError::Config("id must not be 0".into()));
        }
        if !self.join && !self.peers.contains_key(&self.id) {
            return Err(RaftError::Config(format!(
                "peers does not contain this node's id {}",
                self.id
            )));
        }
        if self.peers.contains_key(&0) {
            return Err(RaftError::Config("peers contains id 0".into()));
        }
        if self.tick.is_zero() {
            return Err(RaftError::Config("tick must be > 0".into()));
        }
        if self.snapshot_every == 0 {
            return Err(RaftError::Config("snapshot_every must be > 0".into()));
        }
        if self.propose_timeout.is_zero() {
            return Err(RaftError::Config("propose_timeout must be > 0".into()));
        }
        Ok(())
    }

    /// The raft-rs config for this node, validated; `applied` is the index the state machine
    /// already reflects (the restored snapshot's).
    ///
    /// # Errors
    /// [`RaftError::Raft`] from `Config::validate`.
    pub fn raft_config(&self, applied: u64) -> Result<raft::Config, RaftError> {
        let c = raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RaftNodeConfig {
        let mut peers = BTreeMap::new();
        peers.insert(1, "http://127.0.0.1:1".to_string());
        RaftNodeConfig::new(1, peers, PathBuf::from("/nonexistent"))
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.id = 2;
        assert!(c.validate().unwrap_err().to_string().contains("peers"));
        c.join = true;
        assert!(c.validate().is_ok());
        let mut c = cfg();
        c.snapshot_every = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("snapshot_every"));
        let mut c = cfg();
        c.heartbeat_tick = 20;
        assert!(c.raft_config(0).is_err(), "heartbeat >= election accepted");
        let rc = cfg().raft_config(7).unwrap();
        assert!(rc.pre_vote && rc.check_quorum);
        assert_eq!(rc.applied, 7);
    }
}
