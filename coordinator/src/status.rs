//! The cluster status document: what `tandem status --json` prints and the admin API returns.
//!
//! Field names are a stable interface (documented in README.md, "Status JSON"); add fields,
//! never rename them.

use serde::{Deserialize, Serialize};

/// The whole cluster as one coordinator sees it (the leader's view when one is reachable).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Cluster name from the topology.
    pub cluster: String,
    /// The coordinator that produced this document.
    pub answered_by: String,
    /// Name of the current raft leader, if known.
    pub leader: Option<String>,
    /// Current raft term.
    pub term: u64,
    /// Raft commit index on the answering node.
    pub commit_index: u64,
    /// Raft applied index on the answering node.
    pub applied_index: u64,
    /// True when the answer comes from a follower that could not reach the leader: RPO and
    /// liveness may be stale.
    pub stale: bool,
    /// The coordinators.
    pub members: Vec<MemberStatus>,
    /// The sites and their liveness.
    pub sites: Vec<SiteStatus>,
    /// The protection groups.
    pub groups: Vec<GroupStatus>,
    /// Number of records in the audit chain.
    pub audit_len: u64,
    /// blake3 hash (hex) of the last audit record.
    pub audit_head: String,
    /// Transport security: mTLS or plaintext, and certificate expiry per node.
    #[serde(default)]
    pub tls: TlsStatus,
}

/// Transport security as the answering coordinator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    /// True when every link uses mutual TLS; false means `[tls] insecure = true` (plaintext,
    /// unauthenticated: a warning).
    pub enabled: bool,
    /// Certificate not-after per node, as far as known (own certificate, heartbeats, files).
    pub certs: Vec<CertStatus>,
}

/// One node's certificate expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// Node id.
    pub node: String,
    /// Not valid after, unix seconds.
    pub not_after: i64,
    /// Seconds left until then (negative when expired).
    pub expires_in_s: i64,
}

/// One coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Node name.
    pub name: String,
    /// Raft id.
    pub id: u64,
    /// Site it runs at.
    pub site: String,
    /// gRPC address.
    pub address: String,
    /// `leader`, `follower`, or `unknown`.
    pub role: String,
    /// How long ago the answering coordinator last received a raft message from it (ms);
    /// absent for the answering coordinator itself and for one it never heard. A leader
    /// hears every live follower at each raft heartbeat, a follower only the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heard_ago_ms: Option<u64>,
}

/// One site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStatus {
    /// Site name.
    pub name: String,
    /// Witness sites hold no data.
    pub witness: bool,
    /// `up`, `down` or `unknown`.
    pub status: String,
    /// Milliseconds since the leader last heard from a replicator at this site, if ever.
    pub last_heartbeat_ago_ms: Option<i64>,
}

/// One protection group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// Site that is primary now.
    pub primary: String,
    /// Site that holds the replica now.
    pub replica: String,
    /// Current epoch (fencing token).
    pub epoch: u64,
    /// `sync` or `async`.
    pub mode: String,
    /// `protected`, `degraded`, `failing-over`, `failed-over`, `drilling`, `resyncing`, ...
    pub state: String,
    /// The replicator host that serves the group at its primary site (its placement: the
    /// topology's `hosts` pin, else the placement function); empty when none does.
    #[serde(default)]
    pub primary_host: String,
    /// The replicator host that serves it at its replica site.
    #[serde(default)]
    pub replica_host: String,
    /// Why the group is in its state, when not protected.
    pub reason: String,
    /// RPO now in milliseconds: how much data would be lost if the primary died now.
    pub rpo_ms: i64,
    /// RPO target in milliseconds.
    pub rpo_target_ms: i64,
    /// RTO target in milliseconds.
    pub rto_target_ms: i64,
    /// Replication is paused by an operator or a runbook.
    pub paused: bool,
    /// Last seq captured at the primary.
    pub last_captured_seq: u64,
    /// Last seq durable on the replica.
    pub durable_seq: u64,
    /// Bytes captured but not yet durable on the replica.
    pub bytes_pending: u64,
    /// Shipping throughput, bytes per second (compressed, on the wire).
    pub throughput_bps: f64,
    /// Raw bytes captured since the primary replicator started.
    pub bytes_raw: u64,
    /// Bytes shipped on the wire since the primary replicator started.
    pub bytes_shipped: u64,
    /// Bandwidth limit of the replication stream (bytes per second), if configured.
    pub max_bandwidth_bps: Option<u64>,
    /// The primary's lease.
    pub lease: Option<LeaseStatus>,
    /// The data-loss window (RPO at the moment of loss) of the last unplanned failover, ms.
    pub last_failover_loss_ms: Option<i64>,
    /// Point-in-time recovery: capture time (unix ms) of the oldest point the replica's
    /// history can still recover; absent when the group keeps no history.
    #[serde(default)]
    pub history_oldest_ms: Option<i64>,
    /// Seq of that oldest recoverable point.
    #[serde(default)]
    pub history_oldest_seq: Option<u64>,
    /// Sync groups: since when (unix ms) the primary acknowledges writes without the replica,
    /// with the coordinators' consent; automatic failover is suspended meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_degraded_since_ms: Option<i64>,
    /// Drills on a schedule (`drill_every`); absent when the group has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillStatus>,
    /// The resources of the group.
    pub resources: Vec<ResourceStatus>,
}

/// A group's drill schedule (`drill_every`), as the leader sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillStatus {
    /// `drill_every`, ms.
    pub every_ms: u64,
    /// Start (unix ms) of the group's last drill, whoever started it; absent if it never
    /// drilled.
    pub last_drill_ms: Option<i64>,
    /// That drill's run id.
    pub last_run_id: Option<String>,
    /// That drill's status (`running`, `succeeded`, `failed`, `cancelled`).
    pub last_status: Option<String>,
    /// When the next drill is due (unix ms): the last drill's start, else the group's
    /// creation, plus `drill_every`.
    pub next_due_ms: i64,
    /// Past due by more than the grace (10% of `drill_every`, at least 1 s).
    pub overdue: bool,
    /// The grace, ms.
    pub grace_ms: i64,
    /// Why the due drill could not start (the leader's last try), while it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Since when (unix ms) its starts have been refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_since_ms: Option<i64>,
    /// When the leader tries again (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<i64>,
}

/// A primary lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The replicator holding it.
    pub holder: String,
    /// Epoch it was granted in.
    pub epoch: u64,
    /// Expiry, unix ms.
    pub expires_ms: i64,
    /// Milliseconds left (negative when expired).
    pub remaining_ms: i64,
    /// `active`, `revoked` or `released`.
    pub status: String,
}

/// One resource of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Resource name.
    pub name: String,
    /// `volume`, `sqlite` or `postgres`.
    pub kind: String,
    /// Path at the current primary site.
    pub primary_path: String,
    /// Path at the current replica site.
    pub replica_path: String,
    /// For volumes: the NBD URL clients write to (at the current primary).
    pub nbd_url: Option<String>,
    /// For postgres: the server port at the current primary site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// For postgres: the folder of its binaries (`pg_ctl`, `psql`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<String>,
    /// For postgres: its WAL feed at the primary as the primary's replicator last reported it
    /// (absent while the primary does not report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<FeedHealth>,
    /// For postgres with `stream = true`: the standby at the replica site as that site's
    /// replicator last probed it (absent while it does not report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<StandbyStatus>,
}

/// The standby server of a streamed PostgreSQL resource at the replica site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyStatus {
    /// The replica site.
    pub site: String,
    /// `replaying`, `not in recovery` (the server there is not a standby) or `unreachable`.
    pub state: String,
    /// The last replayed WAL position (`X/Y`), while replaying.
    pub replay_lsn: Option<String>,
    /// Its timeline.
    pub replay_timeline: Option<u32>,
    /// Bytes of WAL durable at the replica site (as the primary's stream last reported it)
    /// not replayed yet; absent when either position is unknown or they are on different
    /// timelines.
    pub replay_lag_bytes: Option<u64>,
    /// How long ago the probe ran (ms).
    pub probed_ago_ms: i64,
    /// One line: what the probe found.
    pub detail: String,
}

/// The feed of a database resource at the primary (PostgreSQL: WAL archiving).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedHealth {
    /// `archiving`, `stalled` (archive_command failing), `stopped` (no server running),
    /// `absent` (no cluster at the data directory) or `unreadable` (pg_wal cannot be read).
    pub state: String,
    /// Only a healthy feed protects the resource: the group is shown `degraded` otherwise.
    pub healthy: bool,
    /// The newest WAL segment durable at the replica, if any was seen.
    pub last_archived: Option<String>,
    /// When it was archived, unix ms.
    pub last_archived_ms: Option<i64>,
    /// Completed WAL segments waiting for archive_command.
    pub unarchived_segments: u32,
    /// Age (ms, bounded from above by one poll) of the oldest WAL not durable at the replica;
    /// counted in the group's `rpo_ms`.
    pub unarchived_age_ms: Option<i64>,
    /// One line: what the feed is doing.
    pub detail: String,
}
