//! The commands the state machine accepts (its JSON wire format, `{"op": ...}`), with what
//! [`apply`](super::apply) needs to know about each: its time, its name and whether its
//! refusals are audited. Pure data.

use super::model::{
    ClusterSettings, GroupProgress, GroupSpec, GroupState, ScheduledDrill, SiteSpec,
};
use crate::audit::AuditKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_core::ids::Epoch;
use tandem_runbooks::run::RunEvent;
use tandem_runbooks::{Plan, RunbookKind};

/// A command to the state machine. JSON: `{"op": "<snake_case name>", ...fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Sets the topology. The first sets the settings; later ones must agree with what exists
    /// (settings, site witness flags, each group's site pair, mode and RPO target — roles may
    /// have swapped since) and add new sites and groups. Identical ones are no-ops (no audit).
    /// New groups start at epoch 1 in `resyncing` ("initial sync") with no lease.
    Bootstrap {
        /// Leader-stamped time.
        at_ms: i64,
        /// Who bootstraps.
        actor: String,
        /// Cluster settings.
        settings: ClusterSettings,
        /// Sites.
        sites: Vec<SiteSpec>,
        /// Groups.
        groups: Vec<GroupSpec>,
    },
    /// A batch of heartbeats from `node` at `site`: marks the site up, records the node's time
    /// and the progress reports of the group's current epoch. Never touches leases.
    Heartbeat {
        /// Leader-stamped time.
        at_ms: i64,
        /// Reporting node.
        node: String,
        /// Its site.
        site: String,
        /// Per-group progress.
        progress: Vec<GroupProgress>,
        /// The leases this node holds that the leader renews with this heartbeat, each as
        /// [`Command::RenewLease`] would (one commit per heartbeat, not one per group); a
        /// renewal the state refuses leaves that lease as it was and the others renewed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        renew: Vec<LeaseRenewal>,
    },
    /// Asks for the group's lease: granted to a node at the primary site, in the current epoch,
    /// when no other holder's lease may be live; expiry = now + lease_ttl_ms. Refused while the
    /// group is failing over or switching over. The current holder acquiring again extends it.
    AcquireLease {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Asking node.
        node: String,
        /// Its site.
        site: String,
        /// Its epoch.
        epoch: Epoch,
    },
    /// Extends the holder's active, unexpired lease in the current epoch to now + lease_ttl_ms.
    /// Refused while failing over.
    RenewLease {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Holder.
        node: String,
        /// Its site.
        site: String,
        /// Its epoch.
        epoch: Epoch,
    },
    /// The holder gives its (active or revoked) lease up: it ends now, and a promotion no
    /// longer waits for it. `epoch` is the lease's epoch.
    ReleaseLease {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Holder.
        node: String,
        /// The lease's epoch.
        epoch: Epoch,
    },
    /// Raises the epoch and revokes the active lease (which still blocks until it expires plus
    /// the drift margin, because its holder may not know).
    Fence {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Who fences.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Promotes the replica site: roles swap, the epoch is raised (always, even after a fence),
    /// the lease is cleared, the state becomes `protected` (planned) or `failed-over`, and the
    /// data-loss window is recorded. Refused while the last lease may be live (not released and
    /// `now < expires_ms + drift_margin_ms`), if `to_site` is not the replica site, is a witness
    /// or is down, and, when planned, if the last progress shows unreplicated changes.
    Promote {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Site to promote (must be the replica site).
        to_site: String,
        /// Who promotes.
        actor: String,
        /// Why.
        reason: String,
        /// Planned switchover (zero loss required) or unplanned failover.
        planned: bool,
    },
    /// The primary of a sync group asks to acknowledge writes without the replica (`on`),
    /// because the replica stopped acknowledging within `sync_timeout`, or says the replica
    /// has caught up (`!on`). Accepted only from the holder of the active, unexpired lease in
    /// the current epoch for `on` (and only while no failover or switchover runs), from a node
    /// at the primary site in the current epoch for `!on`. While the group is marked, the
    /// replica may lack acknowledged writes: automatic failovers are refused. A promotion
    /// clears it.
    SyncDegraded {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Asking node (the primary replicator).
        node: String,
        /// Its site.
        site: String,
        /// Its epoch.
        epoch: Epoch,
        /// Degrade (`true`) or back to synchronous acknowledgements (`false`).
        on: bool,
    },
    /// Sets a group's state and reason (runbooks, policy).
    SetGroupState {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// New state.
        state: GroupState,
        /// Why.
        reason: String,
        /// Who.
        actor: String,
        /// With `protected`: the replicator host whose in-sync report protects the group; it
        /// is recorded as the host holding the group's data at the replica site (so a
        /// failover may promote it there).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    /// Starts a planned move of a group's replica side to another replicator host at that
    /// site (`tandem move`): the group is degraded while it resyncs on `to`, and the in-sync
    /// report of `to` records it there ([`Command::SetGroupState`] with `host`). Refused
    /// during a failover,
    /// switchover or another move, for the primary side, and when `to` already holds it.
    MoveGroup {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// The site whose host changes (must be the group's replica site).
        site: String,
        /// The replicator at `site` that takes the group's data there (checked against the
        /// topology by the leader before it proposes).
        to: String,
        /// Who (the certificate's identity).
        actor: String,
        /// Why.
        reason: String,
    },
    /// Pauses replication of a group (refused if already paused).
    PauseReplication {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Resumes replication of a group (refused if not paused).
    ResumeReplication {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// The failure detector declares a site down; protected groups using it become degraded.
    /// A no-op if already down.
    SiteDown {
        /// Leader-stamped time.
        at_ms: i64,
        /// Site.
        site: String,
    },
    /// The failure detector declares a site up; groups it degraded become protected again.
    /// A no-op if already up.
    SiteUp {
        /// Leader-stamped time.
        at_ms: i64,
        /// Site.
        site: String,
    },
    /// Commits an RPO sample into the group's ring, and audits it.
    RpoSample {
        /// Leader-stamped time.
        at_ms: i64,
        /// Group.
        group: String,
        /// RPO now.
        rpo_ms: u64,
    },
    /// The RPO samples of many groups in one commit (the leader's sampler sends one per
    /// interval, whatever the number of groups): each as [`Command::RpoSample`] would; a
    /// group the state does not know is skipped, the others are sampled.
    RpoSamples {
        /// Leader-stamped time.
        at_ms: i64,
        /// One sample per group.
        samples: Vec<GroupRpo>,
    },
    /// A generic audit record (operator commands, runbook steps, verify results). Only
    /// [`AuditKind::is_recordable`] kinds; `detail` may not contain floating-point numbers.
    Record {
        /// Leader-stamped time.
        at_ms: i64,
        /// Who.
        actor: String,
        /// Kind.
        kind: AuditKind,
        /// Group, which must exist when given.
        group: Option<String>,
        /// Detail.
        detail: Value,
    },
    /// Starts a runbook run of `group`: the run object is created from `plan` (made by the
    /// leader with [`tandem_runbooks::plan()`]) and audited. Refused while another run of the
    /// group is unfinished, or if the id is taken. A drill started on the group's schedule
    /// (`schedule`) is also refused unless it is a drill started by the coordinators, the
    /// group is protected and not paused, its last drill is still the one the scheduler saw
    /// and the next one is due ([`crate::cadence::next_due_ms`]).
    StartRun {
        /// Leader-stamped time.
        at_ms: i64,
        /// The new run's id (unique).
        run_id: String,
        /// Group (must match `plan.group`).
        group: String,
        /// What the run does.
        kind: RunbookKind,
        /// blake3 (hex) of the runbook file's bytes.
        runbook_hash: String,
        /// The resolved plan.
        plan: Plan,
        /// Who started it.
        started_by: String,
        /// Start of the RTO clock when earlier than `at_ms` (outage detection of an automatic
        /// failover); `None`: the run's start.
        rto_from_ms: Option<i64>,
        /// Set when the coordinators start a drill on the group's `drill_every` schedule.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        schedule: Option<Box<ScheduledDrill>>,
    },
    /// Applies one event to a run with [`tandem_runbooks::run::record`]; the event's own time
    /// is replaced by the command's. Refused (unchanged) when the event does not fit the run.
    RunEvent {
        /// Leader-stamped time.
        at_ms: i64,
        /// The run.
        run_id: String,
        /// What happened.
        event: RunEvent,
    },
    /// Adds a corrective action (`A-<n>`) against a run of `group`, owned by `owner`, due on
    /// `due` (`YYYY-MM-DD`). Refused for an unknown group or run, a run of another group or a
    /// malformed date.
    AddAction {
        /// Leader-stamped time.
        at_ms: i64,
        /// Who adds it (the certificate's identity).
        actor: String,
        /// Group.
        group: String,
        /// The run it follows from.
        run_id: String,
        /// What is to be done.
        title: String,
        /// Who is to do it.
        owner: String,
        /// Due date, `YYYY-MM-DD`.
        due: String,
    },
    /// Gives an open action to a new owner.
    AssignAction {
        /// Leader-stamped time.
        at_ms: i64,
        /// Who assigns.
        actor: String,
        /// The action.
        id: String,
        /// Its new owner.
        owner: String,
    },
    /// Closes an open action.
    CloseAction {
        /// Leader-stamped time.
        at_ms: i64,
        /// Who closes it.
        actor: String,
        /// The action.
        id: String,
        /// What was done.
        note: String,
    },
    /// The reviewer signs the after-action review of a finished run (a `review` record).
    SignReview {
        /// Leader-stamped time.
        at_ms: i64,
        /// The reviewer (an auditor's certificate identity).
        actor: String,
        /// The run.
        run_id: String,
        /// The reviewer's note (may be empty).
        note: String,
    },
}

/// One group's RPO in [`Command::RpoSamples`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRpo {
    /// Group.
    pub group: String,
    /// RPO now.
    pub rpo_ms: u64,
}

/// One lease renewed with a heartbeat ([`Command::Heartbeat`]'s `renew`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewal {
    /// Group.
    pub group: String,
    /// The holder's epoch.
    pub epoch: Epoch,
}

impl Command {
    /// `pause_replication` (`pause`) or `resume_replication` of `group`, to be stamped.
    pub fn pause_or_resume(pause: bool, group: String, actor: String, reason: String) -> Command {
        if pause {
            Command::PauseReplication {
                at_ms: 0,
                group,
                actor,
                reason,
            }
        } else {
            Command::ResumeReplication {
                at_ms: 0,
                group,
                actor,
                reason,
            }
        }
    }

    /// Sets the leader-stamped time of the command.
    pub fn stamp(&mut self, now_ms: i64) {
        match self {
            Command::Bootstrap { at_ms, .. }
            | Command::Heartbeat { at_ms, .. }
            | Command::AcquireLease { at_ms, .. }
            | Command::RenewLease { at_ms, .. }
            | Command::ReleaseLease { at_ms, .. }
            | Command::Fence { at_ms, .. }
            | Command::Promote { at_ms, .. }
            | Command::SyncDegraded { at_ms, .. }
            | Command::SetGroupState { at_ms, .. }
            | Command::MoveGroup { at_ms, .. }
            | Command::PauseReplication { at_ms, .. }
            | Command::ResumeReplication { at_ms, .. }
            | Command::SiteDown { at_ms, .. }
            | Command::SiteUp { at_ms, .. }
            | Command::RpoSample { at_ms, .. }
            | Command::RpoSamples { at_ms, .. }
            | Command::Record { at_ms, .. }
            | Command::StartRun { at_ms, .. }
            | Command::RunEvent { at_ms, .. }
            | Command::AddAction { at_ms, .. }
            | Command::AssignAction { at_ms, .. }
            | Command::CloseAction { at_ms, .. }
            | Command::SignReview { at_ms, .. } => *at_ms = now_ms,
        }
    }

    /// The leader-stamped time of the command.
    pub fn at_ms(&self) -> i64 {
        match self {
            Command::Bootstrap { at_ms, .. }
            | Command::Heartbeat { at_ms, .. }
            | Command::AcquireLease { at_ms, .. }
            | Command::RenewLease { at_ms, .. }
            | Command::ReleaseLease { at_ms, .. }
            | Command::Fence { at_ms, .. }
            | Command::Promote { at_ms, .. }
            | Command::SyncDegraded { at_ms, .. }
            | Command::SetGroupState { at_ms, .. }
            | Command::MoveGroup { at_ms, .. }
            | Command::PauseReplication { at_ms, .. }
            | Command::ResumeReplication { at_ms, .. }
            | Command::SiteDown { at_ms, .. }
            | Command::SiteUp { at_ms, .. }
            | Command::RpoSample { at_ms, .. }
            | Command::RpoSamples { at_ms, .. }
            | Command::Record { at_ms, .. }
            | Command::StartRun { at_ms, .. }
            | Command::RunEvent { at_ms, .. }
            | Command::AddAction { at_ms, .. }
            | Command::AssignAction { at_ms, .. }
            | Command::CloseAction { at_ms, .. }
            | Command::SignReview { at_ms, .. } => *at_ms,
        }
    }

    /// The stable JSON name of the command (`promote`).
    pub fn op_name(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "bootstrap",
            Command::Heartbeat { .. } => "heartbeat",
            Command::AcquireLease { .. } => "acquire_lease",
            Command::RenewLease { .. } => "renew_lease",
            Command::ReleaseLease { .. } => "release_lease",
            Command::Fence { .. } => "fence",
            Command::Promote { .. } => "promote",
            Command::SyncDegraded { .. } => "sync_degraded",
            Command::SetGroupState { .. } => "set_group_state",
            Command::MoveGroup { .. } => "move_group",
            Command::PauseReplication { .. } => "pause_replication",
            Command::ResumeReplication { .. } => "resume_replication",
            Command::SiteDown { .. } => "site_down",
            Command::SiteUp { .. } => "site_up",
            Command::RpoSample { .. } => "rpo_sample",
            Command::RpoSamples { .. } => "rpo_samples",
            Command::Record { .. } => "record",
            Command::StartRun { .. } => "start_run",
            Command::RunEvent { .. } => "run_event",
            Command::AddAction { .. } => "add_action",
            Command::AssignAction { .. } => "assign_action",
            Command::CloseAction { .. } => "close_action",
            Command::SignReview { .. } => "sign_review",
        }
    }

    /// Actor and group to audit a refusal of this command under, or `None` if refusals of this
    /// command are not audited.
    pub(super) fn refusal_audit(&self) -> Option<(&str, Option<&str>)> {
        match self {
            Command::Bootstrap { actor, .. } => Some((actor, None)),
            Command::ReleaseLease { node, group, .. } => Some((node, Some(group))),
            Command::Fence { actor, group, .. }
            | Command::Promote { actor, group, .. }
            | Command::SetGroupState { actor, group, .. }
            | Command::MoveGroup { actor, group, .. }
            | Command::PauseReplication { actor, group, .. }
            | Command::ResumeReplication { actor, group, .. } => Some((actor, Some(group))),
            Command::Heartbeat { .. }
            | Command::AcquireLease { .. }
            | Command::RenewLease { .. }
            | Command::SyncDegraded { .. }
            | Command::SiteDown { .. }
            | Command::SiteUp { .. }
            | Command::RpoSample { .. }
            | Command::RpoSamples { .. }
            | Command::Record { .. }
            | Command::StartRun { .. }
            | Command::RunEvent { .. }
            | Command::AddAction { .. }
            | Command::AssignAction { .. }
            | Command::CloseAction { .. }
            | Command::SignReview { .. } => None,
        }
    }
}
