//! The topology model: the sites, nodes, groups and resources a config file names, with the
//! lookups every crate uses (site, node, group, coordinators with their Raft ids, replicators,
//! resource paths). Plain data and pure queries; no I/O.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::units::{Bandwidth, BandwidthWindow, ByteSize, HumanDuration, TimeOfDay};
use crate::ids::GroupId;

/// The whole topology: cluster timings, sites, nodes and protection groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Cluster-wide name and timings (`[cluster]`).
    pub cluster: Cluster,
    /// The sites (`[[sites]]`), in file order.
    #[serde(default)]
    pub sites: Vec<Site>,
    /// The processes (`[[nodes]]`), in file order; coordinator raft ids follow this order.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The protection groups (`[[groups]]`), in file order.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Transport security of every link (`[tls]`); TLS with client certificates unless
    /// `insecure = true`.
    #[serde(default)]
    pub tls: Tls,
    /// The folder relative paths were resolved against: the config file's folder.
    ///
    /// Not part of the file; set by [`Topology::load`] / [`Topology::parse`].
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Transport security (`[tls]`): mutual TLS on every link, or plaintext behind an explicit
/// `insecure = true`.
///
/// Every node reads `DIR/NODE.pem` and `DIR/NODE.key` (made by `tandem certs init`); peers are
/// verified against `peer_ca`, people and tools (the CLI) against `client_ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Plaintext gRPC on every link. Shown in status and warned about at startup.
    #[serde(default)]
    pub insecure: bool,
    /// The certificate folder (`tandem certs init --out DIR`).
    #[serde(default = "defaults::tls_dir")]
    pub dir: PathBuf,
    /// Roots that node certificates must chain to (default `DIR/roots.pem`); may hold several
    /// CA certificates (old and new during a CA rotation).
    #[serde(default)]
    pub peer_ca: Option<PathBuf>,
    /// Roots that client (CLI, operator) certificates must chain to (default: `peer_ca`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often nodes look for changed certificate files (they also reload on SIGHUP).
    #[serde(default = "defaults::tls_reload_interval")]
    pub reload_interval: HumanDuration,
}

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            insecure: false,
            dir: defaults::tls_dir(),
            peer_ca: None,
            client_ca: None,
            reload_interval: defaults::tls_reload_interval(),
        }
    }
}

impl Tls {
    /// The roots file for node certificates.
    pub fn peer_ca_path(&self) -> PathBuf {
        self.peer_ca
            .clone()
            .unwrap_or_else(|| self.dir.join("roots.pem"))
    }

    /// The roots file for client certificates.
    pub fn client_ca_path(&self) -> PathBuf {
        self.client_ca
            .clone()
            .unwrap_or_else(|| self.peer_ca_path())
    }
}

/// Cluster-wide name and timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Name of the cluster, shown in status, metrics and evidence.
    pub name: String,
    /// How long a primary replicator's lease lasts; it self-fences before this runs out.
    #[serde(default = "defaults::lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// Clock drift allowance added to the lease before an unplanned failover may promote.
    #[serde(default = "defaults::drift_margin")]
    pub drift_margin: HumanDuration,
    /// How often replicators send heartbeats and progress to the coordinators.
    #[serde(default = "defaults::heartbeat_interval")]
    pub heartbeat_interval: HumanDuration,
    /// A site is declared down after this long without a heartbeat from it.
    #[serde(default = "defaults::detect_after")]
    pub detect_after: HumanDuration,
    /// How often the leader commits an RPO sample to the replicated log.
    #[serde(default = "defaults::rpo_sample_interval")]
    pub rpo_sample_interval: HumanDuration,
    /// At most how often a group's RPO samples are summarized into the audit chain when the RPO
    /// does not cross the group's target (crossings are audited at once).
    #[serde(default = "defaults::rpo_audit_interval")]
    pub rpo_audit_interval: HumanDuration,
    /// Each coordinator takes a snapshot of its state and compacts its raft log once this many
    /// entries were applied since the last one (and no sooner than `snapshot_min_interval`).
    #[serde(default = "defaults::snapshot_entries")]
    pub snapshot_entries: u64,
    /// Least time between two snapshots a coordinator takes to compact its log.
    #[serde(default = "defaults::snapshot_min_interval")]
    pub snapshot_min_interval: HumanDuration,
    /// How many of the newest audit records a coordinator keeps in memory (and in every raft
    /// snapshot); older ones are read from its disk.
    #[serde(default = "defaults::audit_memory_records")]
    pub audit_memory_records: u64,
}

/// One data centre, or a witness site that hosts only a coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Name of the site (`hanoi`).
    pub name: String,
    /// A witness site breaks ties: it hosts a coordinator and never holds data.
    #[serde(default)]
    pub witness: bool,
    /// Legal jurisdiction of the site (e.g. `VN`), matched against a group's
    /// `allowed_jurisdictions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
}

/// What a node (process) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// A member of the Raft cluster that decides roles, epochs and leases.
    Coordinator,
    /// Captures, ships, receives and applies the data of the groups at its site.
    Replicator,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Coordinator => "coordinator",
            NodeRole::Replicator => "replicator",
        })
    }
}

/// One Tandem process at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Name of the node (`hanoi-coord`); a certificate names its node.
    pub name: String,
    /// The site the node runs at.
    pub site: String,
    /// Coordinator or replicator.
    pub role: NodeRole,
    /// gRPC `host:port` the node listens on and peers dial.
    pub listen: String,
    /// Folder for the node's durable state (sled, journal); absolute after load.
    pub data_dir: PathBuf,
    /// Replicators only: `host:port` serving NBD exports of the volumes this node is primary for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_listen: Option<String>,
    /// Replicators with `nbd_listen`: whether NBD clients must upgrade to TLS
    /// (`NBD_OPT_STARTTLS`) and present a certificate from the cluster's CA. Unset: on when
    /// `[tls]` is on and `nbd_listen` is not a loopback address ([`Topology::nbd_uses_tls`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_tls: Option<bool>,
    /// Allows plaintext NBD on an address that is not loopback (then a loud warning at startup
    /// instead of a config error): anyone who reaches the port can read and write the volumes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nbd_plaintext_ok: bool,
    /// `host:port` serving Prometheus metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Replicators only: the folder point-in-time copies (`Replication.Recover`) are written
    /// under; an `out_dir` outside it is refused. Absolute after load; `None` means
    /// `DATA_DIR/recovered`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_root: Option<PathBuf>,
    /// Replicators only: the volume bytes this host offers to the groups placed on it
    /// (`"2TiB"`). Weighs the placement of unpinned groups ([`Topology::host_for`]) and is
    /// checked against the volumes placed here. Unset: weight of 1 GiB, no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ByteSize>,
}

pub use crate::group::Mode;

/// The runbooks a group uses; `None` means the stock runbook of that name
/// (`runbooks/library/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbooks {
    /// DR drill runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<PathBuf>,
    /// Unplanned failover runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<PathBuf>,
    /// Planned, zero-loss switchover runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<PathBuf>,
    /// Failback (resync the old primary, then switch back) runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<PathBuf>,
}

impl Runbooks {
    fn is_default(&self) -> bool {
        *self == Runbooks::default()
    }
}

/// A protection group: resources that replicate in one ordered stream and fail over together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Name of the group (`vol`); its wire id is [`Group::id`].
    pub name: String,
    /// The site that is primary when the cluster is first formed.
    pub primary: String,
    /// The paired site that holds the replica.
    pub replica: String,
    /// Sync or async replication.
    pub mode: Mode,
    /// Recovery point objective: alert when the live RPO exceeds it. Default 0s (sync only).
    #[serde(default)]
    pub rpo_target: HumanDuration,
    /// Recovery time objective: the runbook must have the service ready within it.
    pub rto_target: HumanDuration,
    /// An automatic failover that would lose more than this waits for human approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_loss: Option<HumanDuration>,
    /// Sync groups: how long a write waits for the replica before the group degrades to
    /// acknowledging on the primary's journal alone (status shows it), once the coordinators
    /// have committed that (no automatic failover while it lasts). Default 5s; `0s` blocks
    /// writes until the replica answers (DRBD's `fencing resource-and-stonith` behaviour).
    #[serde(default = "defaults::sync_timeout")]
    pub sync_timeout: HumanDuration,
    /// Fail over automatically when the primary site is declared down. Default false.
    #[serde(default)]
    pub auto_failover: bool,
    /// Cap on replication traffic; no cap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<Bandwidth>,
    /// Daily windows with their own cap (`[[groups.bandwidth_schedule]]`); the first window
    /// that holds the time of day wins, `max_bandwidth` applies outside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bandwidth_schedule: Vec<BandwidthWindow>,
    /// How the primary compresses the group's frames (journal and wire): `zstd-1` (the
    /// default), `zstd-N`, `off`, or `auto` (the level follows the replication backlog: raw
    /// while the link keeps up, more compression while frames wait for it).
    #[serde(default = "defaults::compression")]
    pub compression: crate::compression::Compression,
    /// Most journal the primary keeps for frames not yet acknowledged. Default 1GiB.
    #[serde(default = "defaults::journal_max")]
    pub journal_max: ByteSize,
    /// Most encoded frame bytes the primary has sent to the replica and not yet seen
    /// acknowledged (the shipping window). Default 32MiB; from 1MiB to 1GiB.
    #[serde(default = "defaults::ship_window")]
    pub ship_window: ByteSize,
    /// Point-in-time recovery: how far back the replica keeps undo history (`"24h"`); no
    /// history is kept when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HumanDuration>,
    /// Most bytes of undo history the replica keeps; the oldest whole segments go first when
    /// it is exceeded. No size cap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max: Option<ByteSize>,
    /// With `history`: compress the undo data (zstd, a fast level). Default true; false
    /// stores it raw: less CPU at the replica per byte applied, more bytes of history.
    #[serde(default = "defaults::yes")]
    pub history_compress: bool,
    /// With `history`: how often the replica marks a group-wide checkpoint (a consistent cut of
    /// the group's stream). Default 5s.
    #[serde(default = "defaults::checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
    /// When not empty, the only jurisdictions where this group's data may live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_jurisdictions: Vec<String>,
    /// Drills on a schedule: the coordinator leader starts the group's drill runbook when the
    /// last drill (any, by its start) is this old, or this long after the group was created
    /// when it never drilled (`"30d"`; at least 1s, see docs/config.md). No schedule when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_every: Option<HumanDuration>,
    /// Runbooks for this group; stock runbooks where not given.
    #[serde(default, skip_serializing_if = "Runbooks::is_default")]
    pub runbooks: Runbooks,
    /// The replicator host that serves the group at a site, per site
    /// (`hosts = { hanoi = "hanoi-rep-2" }`); sites not named here are placed by
    /// [`Topology::host_for`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, String>,
    /// The protected resources (`[[groups.resources]]`), in file order.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

impl Group {
    /// The group's numeric wire id (derived from its name).
    pub fn id(&self) -> GroupId {
        GroupId::from_name(&self.name)
    }

    /// The replication cap at time of day `t`, bytes per second (None: no cap).
    pub fn bandwidth_at(&self, t: TimeOfDay) -> Option<u64> {
        self.bandwidth_schedule
            .iter()
            .find(|w| w.contains(t))
            .map(|w| w.max_bandwidth)
            .or(self.max_bandwidth)
            .map(|b| b.bytes_per_sec)
    }

    /// The resource of this group with that name.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The other site of the pair, when `site` is this group's primary or replica.
    pub fn peer_of(&self, site: &str) -> Option<&str> {
        if site == self.primary {
            Some(&self.replica)
        } else if site == self.replica {
            Some(&self.primary)
        } else {
            None
        }
    }
}

/// Default PostgreSQL server binaries folder.
pub const DEFAULT_POSTGRES_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// One protected thing in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Name of the resource, unique within its group (`disk0`); also its NBD export name.
    pub name: String,
    /// The kind and its settings.
    pub kind: ResourceKind,
}

/// The kind of a resource, with the settings of that kind. Paths are absolute after load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// A raw image file or block device.
    Volume {
        /// Size of the image.
        size: ByteSize,
        /// Path on the group's primary site.
        path: PathBuf,
        /// Path on the group's replica site (defaults to `path`).
        replica_path: PathBuf,
        /// Merkle block size for verify and resync. Default 64KiB.
        block_size: ByteSize,
        /// How changes are captured on the primary: through Tandem's NBD export (every write)
        /// or by a merkle scan of a volume written by others.
        capture: Capture,
        /// `scan` capture: how often the volume is re-hashed. Default 5s.
        scan_interval: HumanDuration,
    },
    /// A SQLite database file (WAL mode), followed like Litestream does.
    Sqlite {
        /// The database file on the primary site.
        path: PathBuf,
        /// The database file on the replica site (defaults to `path`).
        replica_path: PathBuf,
    },
    /// A PostgreSQL cluster, replicated by WAL archiving.
    Postgres {
        /// The cluster's data directory on the primary site.
        data_dir: PathBuf,
        /// The data directory on the replica site (defaults to `data_dir`).
        replica_data_dir: PathBuf,
        /// Port of the server on the primary site.
        port: u16,
        /// Port of the server on the replica site (defaults to `port`).
        replica_port: u16,
        /// Folder of `pg_ctl`, `initdb` and friends.
        bin_dir: PathBuf,
        /// Stream WAL as PostgreSQL writes it (a physical replication connection from the
        /// primary site's replicator), not only archived segments. `None`: archiving only.
        stream: Option<PgStream>,
    },
}

/// How a primary site's replicator connects to its PostgreSQL server as a physical
/// replication client (`stream = true`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PgStream {
    /// The role it connects as (needs the REPLICATION attribute). Default `postgres`.
    pub user: String,
    /// An absolute path: the folder of the server's unix socket; otherwise a TCP host.
    /// Default `127.0.0.1`.
    pub host: String,
    /// A file holding the role's password (SCRAM-SHA-256 or cleartext), read at each
    /// connection; none for `trust` or `peer`.
    pub password_file: Option<PathBuf>,
}

impl PgStream {
    /// The replication slot and `application_name` of `group`'s resource `resource`:
    /// `tandem_GROUP_RESOURCE`, lower case, characters other than letters, digits and `_`
    /// as `_`, at most 63 bytes (PostgreSQL's limit). Name it in
    /// `synchronous_standby_names` for COMMITs that wait for the other site.
    pub fn slot_name(group: &str, resource: &str) -> String {
        let mut s: String = format!("tandem_{group}_{resource}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        s.truncate(63);
        s
    }
}

/// How a volume's changes are captured on its primary site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// Tandem serves the volume over NBD; every write goes through the journal (RPO of a
    /// write, sync mode possible).
    #[default]
    Nbd,
    /// Others write the volume (a VM, a database, a file system); a blake3 merkle scan every
    /// `scan_interval` turns changed blocks into changes (RPO about one interval; the data
    /// of one pass is crash-consistent only per block).
    Scan,
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capture::Nbd => "nbd",
            Capture::Scan => "scan",
        })
    }
}

impl ResourceKind {
    /// The kind's name as written in the file: `volume`, `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            ResourceKind::Volume { .. } => "volume",
            ResourceKind::Sqlite { .. } => "sqlite",
            ResourceKind::Postgres { .. } => "postgres",
        }
    }
}

impl Resource {
    /// The resource's main path (image, database file or data directory) on the configured
    /// primary site (`primary = true`) or replica site.
    pub fn path_on(&self, primary: bool) -> &Path {
        match (&self.kind, primary) {
            (ResourceKind::Volume { path, .. }, true)
            | (ResourceKind::Sqlite { path, .. }, true) => path,
            (ResourceKind::Volume { replica_path, .. }, false)
            | (ResourceKind::Sqlite { replica_path, .. }, false) => replica_path,
            (ResourceKind::Postgres { data_dir, .. }, true) => data_dir,
            (
                ResourceKind::Postgres {
                    replica_data_dir, ..
                },
                false,
            ) => replica_data_dir,
        }
    }
}

/// Defaults of optional fields.
pub(super) mod defaults {
    use super::super::units::{ByteSize, HumanDuration};

    pub(in crate::config) fn lease_ttl() -> HumanDuration {
        HumanDuration::from_secs(4)
    }
    pub(in crate::config) fn drift_margin() -> HumanDuration {
        HumanDuration::from_millis(500)
    }
    pub(in crate::config) fn heartbeat_interval() -> HumanDuration {
        HumanDuration::from_millis(500)
    }
    pub(in crate::config) fn detect_after() -> HumanDuration {
        HumanDuration::from_secs(3)
    }
    pub(in crate::config) fn rpo_sample_interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(in crate::config) fn rpo_audit_interval() -> HumanDuration {
        HumanDuration::from_secs(60)
    }
    pub(in crate::config) fn snapshot_entries() -> u64 {
        2_000
    }
    pub(in crate::config) fn snapshot_min_interval() -> HumanDuration {
        HumanDuration::from_secs(30)
    }
    pub(in crate::config) fn audit_memory_records() -> u64 {
        4_096
    }
    pub(in crate::config) fn compression() -> crate::compression::Compression {
        crate::compression::Compression::Zstd(1)
    }
    pub(in crate::config) fn sync_timeout() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(in crate::config) fn scan_interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(in crate::config) fn journal_max() -> ByteSize {
        ByteSize::gib(1)
    }
    pub(in crate::config) fn yes() -> bool {
        true
    }
    pub(in crate::config) fn ship_window() -> ByteSize {
        ByteSize::mib(32)
    }
    pub(in crate::config) fn checkpoint_interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(in crate::config) fn tls_dir() -> std::path::PathBuf {
        std::path::PathBuf::from("certs")
    }
    pub(in crate::config) fn tls_reload_interval() -> HumanDuration {
        HumanDuration::from_secs(2)
    }
    pub(in crate::config) const BLOCK_SIZE: ByteSize = ByteSize::kib(64);
}

/// A coordinator with its Raft id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coordinator<'a> {
    /// Raft id: 1-based position among the coordinators in file order. Append new
    /// coordinators at the end of the file so existing ids do not move.
    pub raft_id: u64,
    /// The node.
    pub node: &'a Node,
}

/// True when `addr` (`host:port`) listens on loopback only: an IPv4 address in 127.0.0.0/8,
/// `[::1]`, or `localhost`. Anything else (`0.0.0.0`, a hostname, an interface address) may be
/// reachable from the network.
pub fn is_loopback_address(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host,
        None => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Topology {
    /// The site with that name.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The node with that name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The group with that name.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The coordinators in file order, with raft ids 1, 2, 3, …
    pub fn coordinators(&self) -> Vec<Coordinator<'_>> {
        self.nodes
            .iter()
            .filter(|n| n.role == NodeRole::Coordinator)
            .zip(1u64..)
            .map(|(node, raft_id)| Coordinator { raft_id, node })
            .collect()
    }

    /// The raft id of the coordinator with that node name.
    pub fn raft_id(&self, node: &str) -> Option<u64> {
        self.coordinators()
            .into_iter()
            .find(|c| c.node.name == node)
            .map(|c| c.raft_id)
    }

    /// The replicator nodes at `site`, in file order.
    pub fn replicators_at(&self, site: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.site == site && n.role == NodeRole::Replicator)
            .collect()
    }

    /// Whether `node`'s NBD listener requires TLS: its `nbd_tls` when set, else on when the
    /// cluster's `[tls]` is on and `nbd_listen` is not a loopback address.
    pub fn nbd_uses_tls(&self, node: &Node) -> bool {
        node.nbd_tls.unwrap_or_else(|| {
            !self.tls.insecure
                && node
                    .nbd_listen
                    .as_deref()
                    .is_some_and(|a| !is_loopback_address(a))
        })
    }

    /// One line per NBD listener that is plaintext on an address that is not loopback
    /// (allowed only by `nbd_plaintext_ok = true`): `tandem config check` and the replicator
    /// print them loudly.
    pub fn nbd_warnings(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let addr = n.nbd_listen.as_deref()?;
                (!self.nbd_uses_tls(n) && !is_loopback_address(addr)).then(|| {
                    format!(
                        "node {}: NBD on {addr} is PLAINTEXT and unauthenticated \
                         (nbd_plaintext_ok = true): anyone who reaches the port can read and \
                         write the volumes",
                        n.name
                    )
                })
            })
            .collect()
    }

    /// The node's data folder, absolute.
    pub fn node_data_dir(&self, node: &Node) -> PathBuf {
        self.base_dir.join(&node.data_dir)
    }

    /// The folder a replicator writes point-in-time copies under: its `recover_root`, or
    /// `DATA_DIR/recovered`; absolute.
    pub fn node_recover_root(&self, node: &Node) -> PathBuf {
        match &node.recover_root {
            Some(r) => self.base_dir.join(r),
            None => self.node_data_dir(node).join("recovered"),
        }
    }

    /// Absolute path of `resource` (image, database file or postgres data dir) of `group` at
    /// `site`; `None` when `site` is neither the group's primary nor its replica.
    pub fn resource_path(&self, group: &Group, resource: &Resource, site: &str) -> Option<PathBuf> {
        let primary = if site == group.primary {
            true
        } else if site == group.replica {
            false
        } else {
            return None;
        };
        Some(self.base_dir.join(resource.path_on(primary)))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;
    use crate::config::*;

    #[test]
    fn bandwidth_schedule_windows_override_max_bandwidth_by_time_of_day() {
        let mut text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nmax_bandwidth = \"100MB/s\"",
        );
        text.push_str(
            "\n[[groups.bandwidth_schedule]]\nfrom = \"08:00\"\nto = \"18:00\"\nmax_bandwidth = \"10MB/s\"\n\n[[groups.bandwidth_schedule]]\nfrom = \"22:00\"\nto = \"02:00\"\nmax_bandwidth = \"1GB/s\"\n",
        );
        let t = parse(&text).unwrap();
        let g = &t.groups[0];
        let at = |s: &str| g.bandwidth_at(s.parse().unwrap());
        assert_eq!(at("07:59"), Some(100_000_000));
        assert_eq!(at("08:00"), Some(10_000_000));
        assert_eq!(at("17:59"), Some(10_000_000));
        assert_eq!(at("18:00"), Some(100_000_000));
        assert_eq!(at("23:30"), Some(1_000_000_000), "window across midnight");
        assert_eq!(at("01:59"), Some(1_000_000_000));
        assert_eq!(at("02:00"), Some(100_000_000));
        let bad = text.replace("\"22:00\"", "\"25:00\"");
        let all = display_lines(&diagnostics(&bad));
        assert!(
            all.contains("bandwidth_schedule") && all.contains("25:00"),
            "{all}"
        );
    }
}
