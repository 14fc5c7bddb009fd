//! What the raft thread is told and what it answers: commands (inbound messages, proposals,
//! membership changes, peer reports), the applied-proposal reply, the blocked-peer set, and
//! what the peer transport needs from a running node. Types only: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, RwLock};

use raft::prelude::Message;
use raft::SnapshotStatus;
use tandem_core::net::Net;
use tokio::sync::oneshot;

use super::RaftError;

/// A proposal that was applied on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Log index of the entry.
    pub index: u64,
    /// What [`super::StateMachine::apply`] returned for it (empty for membership changes).
    pub reply: Vec<u8>,
}

/// A single-step membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a voter reachable at `addr` (`"http://host:port"` of its peer service).
    AddVoter {
        /// Raft id of the new node.
        id: u64,
        /// Its peer transport address.
        addr: String,
    },
    /// Remove a voter.
    RemoveVoter {
        /// Raft id of the node to remove.
        id: u64,
    },
}

/// Where the raft thread answers a proposal or membership change.
pub(crate) type Reply = oneshot::Sender<Result<Committed, RaftError>>;

/// Commands to the raft thread.
pub(crate) enum Cmd {
    Step(Box<Message>),
    Propose {
        data: Vec<u8>,
        reply: Reply,
    },
    ChangeMembership {
        change: MembershipChange,
        reply: Reply,
    },
    Unreachable(u64),
    Snapshot(u64, SnapshotStatus),
    Shutdown,
}

/// Peers whose traffic is dropped in both directions (fault injection for tests and chaos).
pub(crate) type Blocked = Arc<RwLock<BTreeSet<u64>>>;

pub(crate) fn is_blocked(blocked: &Blocked, id: u64) -> bool {
    blocked.read().map(|b| b.contains(&id)).unwrap_or(false)
}

/// What the transport needs from a running node.
pub(crate) struct Parts {
    pub(crate) id: u64,
    pub(crate) inbound: SyncSender<Cmd>,
    pub(crate) blocked: Blocked,
    pub(crate) net: Net,
    pub(crate) peer_names: BTreeMap<u64, String>,
}
