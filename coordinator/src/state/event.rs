//! What applying a command did (its JSON wire format, `{"event": ...}`), for the raft layer to
//! answer the proposer and for metrics. Pure data.

use super::model::{DataLossWindow, GroupState, Role};
use crate::audit::AuditKind;
use serde::{Deserialize, Serialize};
use tandem_core::ids::Epoch;
use tandem_runbooks::run::RunStatus;

/// What applying a command did, for the raft layer to answer the proposer and for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A bootstrap added these sites and groups.
    Bootstrapped {
        /// Sites added.
        sites_added: Vec<String>,
        /// Groups added.
        groups_added: Vec<String>,
    },
    /// A site is now up.
    SiteUp {
        /// Site.
        site: String,
    },
    /// A site is now down.
    SiteDown {
        /// Site.
        site: String,
    },
    /// A heartbeat updated a group's progress.
    ProgressUpdated {
        /// Group.
        group: String,
        /// Reporter's role.
        role: Role,
    },
    /// A heartbeat's progress entry was ignored.
    ProgressIgnored {
        /// Group as given.
        group: String,
        /// Why (unknown group, stale epoch, wrong site for the role).
        reason: String,
    },
    /// A lease was granted.
    LeaseGranted {
        /// Group.
        group: String,
        /// Holder.
        node: String,
        /// Holder's site.
        site: String,
        /// Lease epoch.
        epoch: Epoch,
        /// Expiry.
        expires_ms: i64,
    },
    /// A live lease was extended.
    LeaseRenewed {
        /// Group.
        group: String,
        /// Holder.
        node: String,
        /// Lease epoch.
        epoch: Epoch,
        /// New expiry.
        expires_ms: i64,
    },
    /// The primary of a sync group acknowledges writes alone (`on`) or synchronously again.
    SyncDegraded {
        /// Group.
        group: String,
        /// Primary replicator.
        node: String,
        /// Epoch.
        epoch: Epoch,
        /// Degraded or not.
        on: bool,
    },
    /// A lease was released by its holder.
    LeaseReleased {
        /// Group.
        group: String,
        /// Holder.
        node: String,
        /// Lease epoch.
        epoch: Epoch,
    },
    /// A lease was revoked by a fence; it may be live until `blocks_until_ms`.
    LeaseRevoked {
        /// Group.
        group: String,
        /// Holder.
        node: String,
        /// Lease epoch.
        epoch: Epoch,
        /// Its expiry.
        expires_ms: i64,
        /// Expiry plus drift margin.
        blocks_until_ms: i64,
    },
    /// A group's epoch was raised.
    EpochRaised {
        /// Group.
        group: String,
        /// Old epoch.
        from: Epoch,
        /// New epoch.
        to: Epoch,
    },
    /// The replica site was promoted.
    Promoted {
        /// Group.
        group: String,
        /// New primary site.
        primary: String,
        /// New replica site.
        replica: String,
        /// New epoch.
        epoch: Epoch,
        /// What may have been lost.
        loss: DataLossWindow,
    },
    /// A group's state changed.
    GroupStateChanged {
        /// Group.
        group: String,
        /// Old state.
        from: GroupState,
        /// New state.
        to: GroupState,
        /// Why.
        reason: String,
    },
    /// Replication was paused.
    ReplicationPaused {
        /// Group.
        group: String,
    },
    /// Replication was resumed.
    ReplicationResumed {
        /// Group.
        group: String,
    },
    /// An RPO sample was committed.
    RpoSampled {
        /// Group.
        group: String,
        /// RPO.
        rpo_ms: u64,
        /// Whether it exceeds the group's target.
        over_target: bool,
    },
    /// A runbook run was started.
    RunStarted {
        /// The run.
        run_id: String,
        /// Its group.
        group: String,
    },
    /// An event was applied to a run.
    RunRecorded {
        /// The run.
        run_id: String,
        /// The run's status after it.
        status: RunStatus,
    },
    /// A corrective action was added, assigned or closed.
    ActionChanged {
        /// The action.
        id: String,
    },
    /// An audit record was appended.
    Audited {
        /// Its index.
        index: u64,
        /// Its kind.
        kind: AuditKind,
    },
}
