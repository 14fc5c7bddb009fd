//! Why a command was refused (its JSON wire format, `{"code": ...}`), and whether retrying may
//! help. Pure data; the crate's `Error::Rejected` wraps it.

use super::model::GroupState;
use crate::audit::AuditKind;
use serde::{Deserialize, Serialize};
use tandem_core::ids::{Epoch, Seq};

/// Why a command was refused. Deterministic: every node refuses the same command the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Rejection {
    /// No bootstrap has been applied yet.
    #[error("the cluster is not bootstrapped")]
    NotBootstrapped,
    /// A bootstrap is malformed.
    #[error("invalid bootstrap: {reason}")]
    InvalidBootstrap {
        /// What is wrong.
        reason: String,
    },
    /// The command would place a group's data at a site outside its allowed jurisdictions.
    #[error("group {group}: {message}")]
    Residency {
        /// Group.
        group: String,
        /// What would be placed where (`drill copy site "sg" is in SG, allowed: VN`).
        message: String,
    },
    /// A bootstrap disagrees with the existing topology.
    #[error("bootstrap conflicts with the existing topology at {field}")]
    BootstrapConflict {
        /// The disagreeing field (`settings`, `site hcm witness`, `group vol sites`).
        field: String,
    },
    /// A field is empty or too long.
    #[error("field {field}: length {len} outside 1..={max}")]
    FieldLength {
        /// Field name.
        field: String,
        /// Its length in bytes (or entries).
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// A `record` detail contains a floating-point number (it would not hash stably).
    #[error("record detail contains a floating-point number")]
    DetailHasFloat,
    /// The kind may not be written by a `record` command.
    #[error("audit kind {kind:?} cannot be recorded by a record command")]
    KindNotRecordable {
        /// The kind.
        kind: AuditKind,
    },
    /// No such group.
    #[error("unknown group {group}")]
    UnknownGroup {
        /// Group.
        group: String,
    },
    /// No such site.
    #[error("unknown site {site}")]
    UnknownSite {
        /// Site.
        site: String,
    },
    /// The site is a witness and cannot hold data roles.
    #[error("site {site} is a witness")]
    WitnessSite {
        /// Site.
        site: String,
    },
    /// The lease was asked for from a site that is not the group's primary site.
    #[error("group {group}: site {site} is not the primary site ({primary})")]
    NotPrimarySite {
        /// Group.
        group: String,
        /// Site given.
        site: String,
        /// Current primary site.
        primary: String,
    },
    /// The promotion target is not the group's replica site.
    #[error("group {group}: site {site} is not the replica site ({replica})")]
    NotReplicaSite {
        /// Group.
        group: String,
        /// Site given.
        site: String,
        /// Current replica site.
        replica: String,
    },
    /// The promotion target is down.
    #[error("site {site} is down")]
    SiteIsDown {
        /// Site.
        site: String,
    },
    /// The epoch given is not the one required.
    #[error("group {group}: epoch {given} is stale or unknown (current {current})")]
    WrongEpoch {
        /// Group.
        group: String,
        /// Epoch given.
        given: Epoch,
        /// Epoch required.
        current: Epoch,
    },
    /// Another holder's lease may still be live.
    #[error("group {group}: lease held by {holder} may be live until {until_ms}")]
    LeaseHeld {
        /// Group.
        group: String,
        /// Holder.
        holder: String,
        /// Expiry plus drift margin.
        until_ms: i64,
    },
    /// The group's data at that site lives on another replicator host (recorded at its
    /// first lease there): a placement change never moves a group by itself.
    #[error(
        "group {group}: its data at site {site} lives on {recorded}, not {node} (the host \
         that first held its lease there); a group moves to another host only by a planned \
         move (`tandem move`, replica side): restore the placement with hosts = {{ {site} = \
         \"{recorded}\" }} in the topology"
    )]
    PlacedElsewhere {
        /// Group.
        group: String,
        /// Site.
        site: String,
        /// The host asking.
        node: String,
        /// The host recorded.
        recorded: String,
    },
    /// The node holds no active lease to renew or release.
    #[error("group {group}: {node} holds no lease to {action}")]
    NoLease {
        /// Group.
        group: String,
        /// Node.
        node: String,
        /// `renew` or `release`.
        action: String,
    },
    /// The lease to renew was revoked by a fence.
    #[error("group {group}: the lease of {node} was revoked")]
    LeaseRevoked {
        /// Group.
        group: String,
        /// Node.
        node: String,
    },
    /// The lease to renew has expired: the holder must acquire again.
    #[error("group {group}: the lease of {node} expired at {expired_ms}")]
    LeaseExpired {
        /// Group.
        group: String,
        /// Node.
        node: String,
        /// Expiry.
        expired_ms: i64,
    },
    /// A promotion was asked while the last lease may be live.
    #[error("group {group}: lease of {holder} may be live until {until_ms}; promotion refused")]
    LeaseStillLive {
        /// Group.
        group: String,
        /// Holder.
        holder: String,
        /// Earliest time a promotion is allowed.
        until_ms: i64,
    },
    /// A planned promotion with changes known captured and not yet durable on the replica.
    #[error(
        "group {group}: replica durable at {durable_seq}, primary captured {last_captured_seq}"
    )]
    NotCaughtUp {
        /// Group.
        group: String,
        /// Durable on the replica.
        durable_seq: Seq,
        /// Captured at the primary.
        last_captured_seq: Seq,
    },
    /// The group's state forbids the action.
    #[error("group {group} is {state:?}: {action} refused")]
    StateForbids {
        /// Group.
        group: String,
        /// Its state.
        state: GroupState,
        /// The refused action.
        action: String,
    },
    /// Replication is already paused.
    #[error("group {group}: replication already paused")]
    AlreadyPaused {
        /// Group.
        group: String,
    },
    /// Replication is not paused.
    #[error("group {group}: replication is not paused")]
    NotPaused {
        /// Group.
        group: String,
    },
    /// No run has this id.
    #[error("no run {run_id:?}")]
    UnknownRun {
        /// The id given.
        run_id: String,
    },
    /// A run with this id exists already.
    #[error("run {run_id:?} exists already")]
    RunExists {
        /// The id given.
        run_id: String,
    },
    /// An automatic failover of a sync group whose primary acknowledges writes alone.
    #[error("group {group}: the primary has acknowledged writes without the replica since {since_ms}; automatic failover would lose them (an operator may fail over)")]
    SyncDegraded {
        /// Group.
        group: String,
        /// Since when.
        since_ms: i64,
    },
    /// Another run of the group has not finished.
    #[error("group {group}: run {run_id} is still under way")]
    RunUnderWay {
        /// Group.
        group: String,
        /// The unfinished run.
        run_id: String,
    },
    /// A plan that does not fit the command (another group, no steps).
    #[error("bad plan: {reason}")]
    BadPlan {
        /// What is wrong.
        reason: String,
    },
    /// A scheduled drill that may not start: not a drill started by the coordinators, the
    /// group not in a state to drill, or no longer due (another drill started since the
    /// scheduler looked).
    #[error("group {group}: scheduled drill not started: {reason}")]
    ScheduledDrillRefused {
        /// Group.
        group: String,
        /// Why.
        reason: String,
    },
    /// A corrective action may not be added, assigned or closed.
    #[error("action {id}: {reason}")]
    ActionRefused {
        /// The action (empty when adding).
        id: String,
        /// Why.
        reason: String,
    },
    /// A planned move may not start.
    #[error("group {group}: no move to {to} at {site}: {reason}")]
    MoveRefused {
        /// Group.
        group: String,
        /// Site.
        site: String,
        /// The target host.
        to: String,
        /// Why.
        reason: String,
    },
    /// The event does not fit the run's state; the run is unchanged.
    #[error("{message}")]
    RunEventRefused {
        /// The run.
        run_id: String,
        /// Why, from the run state machine.
        message: String,
    },
}

impl Rejection {
    /// Whether the same command may succeed later without anyone else acting
    /// (a lease expiring, progress arriving).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Rejection::LeaseHeld { .. }
                | Rejection::LeaseStillLive { .. }
                | Rejection::NotCaughtUp { .. }
                | Rejection::StateForbids { .. }
                | Rejection::SiteIsDown { .. }
                | Rejection::ScheduledDrillRefused { .. }
        )
    }
}
