//! The value types of the replicated state: sites, groups, leases, progress, RPO samples,
//! data-loss windows and runs, with the enums `Mode`, `GroupState` and `Role`. Pure data: no
//! decisions, no I/O.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
pub use tandem_core::group::{GroupState, Mode, Role};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_runbooks::run::{RunState, RunStatus};
use tandem_runbooks::RunbookKind;

/// How many RPO samples a group keeps (720 = one hour at one sample per 5 s).
pub const RPO_RING_CAPACITY: usize = 720;
/// Actor name used for decisions the coordinators take themselves (failure detector).
pub const COORDINATOR_ACTOR: &str = "coordinator";
/// The epoch a group starts in.
pub const FIRST_EPOCH: Epoch = Epoch(1);

/// Cluster-wide timing settings, fixed at bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Lease length granted on every acquire/renew.
    pub lease_ttl_ms: u64,
    /// Clock-drift allowance: a lease not released may be live until expiry plus this margin.
    pub drift_margin_ms: u64,
    /// How long without heartbeats before the leader's failure detector proposes `site_down`.
    pub detect_after_ms: u64,
    /// At most how often a group's RPO is audited when it does not cross its target: one
    /// `rpo_summary` record per group per interval (crossings are recorded at once). `None` in
    /// states bootstrapped before it existed: every sample is then audited as an `rpo_sample`
    /// record, as before, so replaying an old log gives the same chain. A later bootstrap may
    /// change it (it is an evidence cadence, not a safety timing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_audit_every_ms: Option<u64>,
}

/// A site as declared at bootstrap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSpec {
    /// Site name (`hanoi`).
    pub name: String,
    /// A witness hosts only a coordinator: never a primary or replica.
    pub witness: bool,
    /// ISO 3166-1 alpha-2 jurisdiction of the site (`VN`), when the topology gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
}

/// A group as declared at bootstrap (its initial roles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// Group name.
    pub name: String,
    /// Initial primary site.
    pub primary: String,
    /// Initial replica site.
    pub replica: String,
    /// Replication mode.
    pub mode: Mode,
    /// RPO target; samples above it are flagged.
    pub rpo_target_ms: u64,
    /// When not empty, the only jurisdictions where the group's data may be placed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_jurisdictions: Vec<String>,
}

/// Liveness of a site as seen by the coordinators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteStatus {
    /// Not heard from since bootstrap.
    Unknown,
    /// Heard from (heartbeat or `site_up`).
    Up,
    /// Declared down by the failure detector.
    Down,
}

/// A site in the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// Site name.
    pub name: String,
    /// Whether it is a witness (coordinator only).
    pub witness: bool,
    /// Up, down or unknown.
    pub status: SiteStatus,
    /// When `status` last changed (`None` while unknown).
    pub since_ms: Option<i64>,
    /// Last committed heartbeat time of each node of the site.
    pub nodes: BTreeMap<String, i64>,
    /// ISO 3166-1 alpha-2 jurisdiction of the site, as bootstrapped.
    #[serde(default)]
    pub jurisdiction: Option<String>,
}

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStatus {
    /// Granted and not revoked or released (it may have expired: compare `expires_ms`).
    Active,
    /// Revoked by a fence at `at_ms`; its holder may not know, so it still blocks until expiry
    /// plus the drift margin.
    Revoked {
        /// When it was revoked.
        at_ms: i64,
    },
    /// Given up by its holder at `at_ms`: it ended then.
    Released {
        /// When it was released.
        at_ms: i64,
    },
}

/// The lease a primary replicator holds to accept writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Node name of the holder.
    pub holder: String,
    /// Site of the holder (the group's primary site when granted).
    pub site: String,
    /// Epoch the lease was granted in.
    pub epoch: Epoch,
    /// When it was (last) acquired.
    pub granted_ms: i64,
    /// When it ends unless renewed.
    pub expires_ms: i64,
    /// Active, revoked or released.
    pub status: LeaseStatus,
}

/// Last known replication progress of a group (from committed heartbeats).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Epoch the figures belong to.
    pub epoch: Epoch,
    /// Highest seq captured at the primary.
    pub last_captured_seq: Seq,
    /// Highest seq durable on the replica.
    pub durable_seq: Seq,
    /// RPO now, as reported by the primary.
    pub rpo_ms: u64,
    /// Bytes journaled and not yet acknowledged.
    pub bytes_pending: u64,
    /// When a report of the primary was last committed (heartbeats commit a group's figures
    /// when they move, and at least every 10 s while the primary reports).
    pub primary_report_ms: Option<i64>,
    /// When a report of the replica was last committed (as for the primary).
    pub replica_report_ms: Option<i64>,
}

/// One committed RPO sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpoSample {
    /// When it was taken.
    pub at_ms: i64,
    /// RPO at that time.
    pub rpo_ms: u64,
}

/// What a group's RPO samples were since its last RPO audit record: what the next
/// `rpo_summary` record will say. O(1) per group whatever the number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RpoWindow {
    /// When the group's last RPO record was written (leader ms).
    pub recorded_ms: i64,
    /// When the last sample was taken (recorded or not).
    pub last_at_ms: i64,
    /// Whether the last sample was over the target (the state the chain last showed, or the one
    /// it will show at the next crossing).
    pub last_over: bool,
    /// Samples since the last record (0 right after a record).
    pub samples: u64,
    /// Of those, how many were over the target.
    pub over_samples: u64,
    /// When the first of them was taken.
    pub since_ms: i64,
    /// Smallest RPO among them.
    pub min_ms: u64,
    /// Largest RPO among them: the worst RPO of the interval, which the record keeps.
    pub max_ms: u64,
    /// Time over target since the last record: each gap between two samples counts as over
    /// when the earlier sample was over.
    pub over_target_ms: u64,
}

/// What a promotion may have lost, from the last progress the coordinators knew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataLossWindow {
    /// When the promotion was committed.
    pub at_ms: i64,
    /// Planned switchover (expected loss 0) or unplanned failover.
    pub planned: bool,
    /// The old primary site.
    pub from_site: String,
    /// The new primary site.
    pub to_site: String,
    /// The epoch the promotion raised to.
    pub epoch: Epoch,
    /// Last seq known durable on the replica: the new primary continues from here.
    pub durable_seq: Seq,
    /// Last seq known captured at the old primary.
    pub last_captured_seq: Seq,
    /// `last_captured_seq - durable_seq`: changes known captured and not replicated.
    pub lost_changes: u64,
    /// Last reported RPO: changes younger than this at the old primary may be lost.
    pub rpo_ms: u64,
    /// Last reported bytes pending.
    pub bytes_pending: u64,
    /// When the old primary last reported (how stale the figures are).
    pub progress_at_ms: Option<i64>,
}

/// A protection group in the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Wire id (`GroupId::from_name`).
    pub id: GroupId,
    /// Current primary site.
    pub primary_site: String,
    /// Current replica site.
    pub replica_site: String,
    /// Current epoch (fencing token); only grows.
    pub epoch: Epoch,
    /// Replication mode.
    pub mode: Mode,
    /// Operator-visible state.
    pub state: GroupState,
    /// Why it is in that state.
    pub reason: String,
    /// The most recent lease, whatever its status.
    pub lease: Option<Lease>,
    /// Replication paused by an operator.
    pub paused: bool,
    /// RPO target.
    pub rpo_target_ms: u64,
    /// Last known progress.
    pub progress: Progress,
    /// Recent committed RPO samples, oldest first, at most [`RPO_RING_CAPACITY`].
    pub rpo_samples: VecDeque<RpoSample>,
    /// The RPO samples not yet summarized in the audit chain (`None` before the first one, and
    /// while every sample is audited on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_window: Option<RpoWindow>,
    /// Data-loss window of the last promotion.
    pub last_failover: Option<DataLossWindow>,
    /// Set when a `site_down` moved the group from protected to degraded; `site_up` of that
    /// site moves it back.
    pub degraded_by_site: Option<String>,
    /// Since when (leader ms) the primary of a sync group acknowledges writes on its own
    /// journal only, with the coordinators' consent (`sync_degraded`). While set, the replica
    /// may lack acknowledged writes, so no automatic failover starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_degraded_since: Option<i64>,
    /// When not empty, the only jurisdictions where the group's data may be placed (fixed at
    /// bootstrap); promotions and runs that would place data elsewhere are refused.
    #[serde(default)]
    pub allowed_jurisdictions: Vec<String>,
    /// When the bootstrap that added the group was applied (leader ms); `None` in states from
    /// before it was kept. A group that never drilled counts its drill schedule from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<i64>,
    /// The replicator host granted the group's lease at each site, by site: the host where
    /// its data lives there. The lease is refused to any other host at that site (a changed
    /// placement must never move a group silently). Filled at each site's first grant.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, String>,
    /// A planned move of the group's replica side to another host at that site (`tandem
    /// move`), from its start until the new host's in-sync report records it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<GroupMove>,
}

/// A planned move of a group's replica side to another replicator host at the same site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMove {
    /// The site whose host changes (the group's replica site when the move started).
    pub site: String,
    /// The host recorded there when the move started (`None`: none recorded yet).
    pub from: Option<String>,
    /// The host that will hold the group's data there.
    pub to: String,
    /// When the move started (leader ms).
    pub since_ms: i64,
    /// Who started it (the certificate's identity).
    pub actor: String,
}

impl Group {
    /// The host that holds (or, during a planned move, is taking over) the group's data at
    /// `site` as the coordinators record it: the move's target, else the recorded host.
    /// `None`: nothing recorded there yet (the topology's placement applies).
    pub fn host_at(&self, site: &str) -> Option<&str> {
        match &self.moving {
            Some(m) if m.site == site => Some(m.to.as_str()),
            _ => self.hosts.get(site).map(String::as_str),
        }
    }

    /// [`Group::host_at`] for every site the coordinators name a host at.
    pub fn placed_hosts(&self) -> BTreeMap<String, String> {
        let mut hosts = self.hosts.clone();
        if let Some(m) = &self.moving {
            hosts.insert(m.site.clone(), m.to.clone());
        }
        hosts
    }

    /// Whether the coordinators may start a scheduled drill of the group in this state: only
    /// a `protected` group whose replication is not paused (a drill of a degraded, failing
    /// over or resyncing group would test a replica that is not current, or race the run
    /// that moves it). `Err` says why not.
    ///
    /// # Errors
    /// The reason, for status and logs.
    pub fn scheduled_drill_allowed(&self) -> Result<(), String> {
        if self.state != GroupState::Protected {
            let why = if self.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.reason)
            };
            return Err(format!("the group is {}{why}", self.state.as_str()));
        }
        if self.paused {
            return Err("replication of the group is paused".into());
        }
        Ok(())
    }
}

/// A drill the coordinators start on the group's `drill_every` schedule: what the scheduler
/// saw, so that the state machine starts it only while it is still due (a second leader that
/// saw the same last drill is refused once the first one's drill is committed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledDrill {
    /// The group's `drill_every`, ms.
    pub every_ms: u64,
    /// Start of the group's last drill as the scheduler saw it (`None`: no drill on record).
    pub last_drill_ms: Option<i64>,
    /// Why, as the audit records it (`scheduled: drill_every 30d, last drill at ...`).
    pub reason: String,
}

/// Progress of one group reported in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupProgress {
    /// Group name.
    pub group: String,
    /// The reporter's role.
    pub role: Role,
    /// The reporter's epoch; reports from another epoch than the group's are ignored.
    pub epoch: Epoch,
    /// Highest seq captured (primary).
    pub last_captured_seq: Seq,
    /// Highest seq durable on the replica.
    pub durable_seq: Seq,
    /// RPO now (primary).
    pub rpo_ms: u64,
    /// Bytes pending (primary).
    pub bytes_pending: u64,
}

/// A runbook run in the replicated state: the run state machine plus what the coordinators add
/// (group, kind, RTO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The group it runs for.
    pub group: String,
    /// What it does.
    pub kind: RunbookKind,
    /// Start of the RTO clock (the run's start, or outage detection).
    pub rto_from_ms: i64,
    /// RTO: from `rto_from_ms` to the end of the first passing `check` step.
    pub rto_ms: Option<i64>,
    /// The run state machine.
    pub state: RunState,
}

impl Run {
    /// True while steps remain.
    pub fn is_running(&self) -> bool {
        self.state.status == RunStatus::Running
    }

    /// When the run started (leader ms).
    pub fn started_ms(&self) -> i64 {
        i64::try_from(self.state.started_ms).unwrap_or(i64::MAX)
    }
}

/// A corrective action as the state machine holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectiveAction {
    /// `A-<n>`.
    pub id: String,
    /// The group it is about.
    pub group: String,
    /// The run (exercise) it follows from.
    pub run_id: String,
    /// What is to be done.
    pub title: String,
    /// Who is to do it.
    pub owner: String,
    /// Due date, `YYYY-MM-DD`.
    pub due: String,
    /// Who added it (certificate identity).
    pub opened_by: String,
    /// When (leader ms).
    pub opened_ms: i64,
    /// Who closed it, when and why; `None` while open.
    pub closed: Option<ActionClosure>,
}

/// How an action was closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionClosure {
    /// Who closed it (certificate identity).
    pub by: String,
    /// When (leader ms).
    pub at_ms: i64,
    /// What was done.
    pub note: String,
}
