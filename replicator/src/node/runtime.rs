//! The node's runtime state: the per-group role ([`RoleState`], [`GroupRt`]), the node ([`NodeRt`]),
//! the parts the gRPC block source shares ([`NodeRtShared`]) and the residency check of the
//! copies this node writes. Types only (and the pure residency check); no I/O.

use super::decide::Held;
use super::lease::RoleCell;
use crate::apply::ReplicaGroup;
use crate::pipeline::GroupPipeline;
use crate::receive::ReplicationService;
use crate::ship::ShipperHandle;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tandem_core::config::{Group, Node, Topology};
use tandem_core::ids::{Epoch, Seq};
use tandem_core::net::Net;
use tandem_core::proto::ResyncProgress;
use tokio::sync::watch;
use tonic::Status;
use tracing::warn;

/// A group's role on this replicator.
pub(super) enum RoleState {
    /// Not yet told by the coordinators.
    Unknown,
    /// Capturing and shipping in `epoch`.
    Primary {
        epoch: Epoch,
        pipeline: Arc<GroupPipeline>,
        shipper: Option<ShipperHandle>,
        /// Set once intake stopped and the replica has everything (switchover): the seq the
        /// replica is known to hold.
        drained: Option<Seq>,
        draining: bool,
    },
    /// Receiving in `epoch`; `rg` is None while a resync runs.
    Replica {
        epoch: Epoch,
        rg: Option<Arc<ReplicaGroup>>,
        resyncing: bool,
    },
}

impl RoleState {
    /// What [`super::decide::transition`] needs to know of this role.
    pub(super) fn held(&self) -> Held {
        match self {
            RoleState::Unknown => Held::Unknown,
            RoleState::Primary { epoch, .. } => Held::Primary { epoch: *epoch },
            RoleState::Replica {
                epoch,
                rg,
                resyncing,
            } => Held::Replica {
                epoch: *epoch,
                open: rg.is_some() && !*resyncing,
            },
        }
    }
}

/// One group on this node: its config, role, lease gate and what it reports.
pub(super) struct GroupRt {
    pub(super) cfg: Group,
    pub(super) role: RoleState,
    /// Stops the SQLite and scan capture sources of this group (primary only).
    pub(super) sources_stop: Option<watch::Sender<bool>>,
    /// The scan capture sources of this group (primary only), for the drain's last pass.
    pub(super) scans: Vec<crate::scan_capture::ScanSource>,
    pub(super) cell: Arc<RoleCell>,
    pub(super) last_shipped: u64,
    pub(super) last_tick: Instant,
    pub(super) throughput: f64,
    pub(super) last_error: String,
    /// What the last failback resync kept in quarantine (reported in heartbeats, so status
    /// shows it), empty when nothing was kept.
    pub(super) quarantined: String,
    /// Progress of the current (or last) resync of this replica.
    pub(super) resync: watch::Sender<ResyncProgress>,
    /// Each postgres resource's WAL feed as the primary's polls saw it (RPO and health).
    pub(super) pg_feeds: BTreeMap<String, crate::pg_feed::Tracker>,
    /// Each streaming postgres resource's stream (primary only; replaced at each promotion).
    pub(super) pg_streams: BTreeMap<String, crate::pg_stream::SharedStatus>,
    /// Each streamed postgres resource's standby as last probed (replica only).
    pub(super) pg_standbys: BTreeMap<String, tandem_core::proto::ResourceHealth>,
}

/// The running node: its config, data folder, Replication service, groups and coordinators.
pub(super) struct NodeRt {
    pub(super) topo: Topology,
    pub(super) node: Node,
    pub(super) data_dir: PathBuf,
    pub(super) service: ReplicationService,
    /// Each group's sites and epoch as the coordinators last answered (the service reads it).
    pub(super) views: crate::receive::Views,
    pub(super) groups: tokio::sync::Mutex<BTreeMap<String, GroupRt>>,
    pub(super) coordinators: Vec<String>,
    pub(super) me: Arc<NodeRtShared>,
}

/// One archive push at a time for a postgres resource.
pub(super) type WalPushGate = Arc<tokio::sync::Mutex<()>>;

/// Parts of the node the gRPC block source needs.
#[derive(Default)]
pub(super) struct NodeRtShared {
    /// group -> role cell (primary groups answer with their journal seq)
    pub(super) cells: Mutex<HashMap<String, Arc<RoleCell>>>,
    /// group -> replica group (replica groups answer with their watermark)
    pub(super) replicas: Mutex<HashMap<String, Arc<ReplicaGroup>>>,
    /// (group, resource) -> local path, for the groups this node hosts
    pub(super) paths: Mutex<HashMap<(String, String), PathBuf>>,
    /// The NBD exports of the groups this node hosts (changed when a group moves here or away).
    pub(super) exports: Arc<crate::nbd::ExportMap>,
    /// group -> the replica replicator's URL, while this node is the group's primary
    pub(super) peers: Mutex<HashMap<String, String>>,
    /// The node itself, once running (the Resync RPC changes its groups' roles).
    pub(super) node: std::sync::OnceLock<std::sync::Weak<NodeRt>>,
    /// (group, resource) of every postgres resource -> its archive pushes, one at a time (the
    /// replica rebuilds one file at a time per resource).
    pub(super) wal_pushes: Mutex<HashMap<(String, String), WalPushGate>>,
    /// This node's site and its jurisdiction, and each group's allowed jurisdictions: a copy
    /// this node writes (drill snapshot, recovered copy) lands at this site.
    pub(super) residency: Residency,
    /// How this node dials and serves (plaintext or mTLS).
    pub(super) net: Net,
}

/// Where this node is, for the residency check of the copies it writes.
#[derive(Default)]
pub(super) struct Residency {
    pub(super) site: String,
    pub(super) jurisdiction: Option<String>,
    pub(super) allowed: HashMap<String, Vec<String>>,
}

impl Residency {
    /// This node's site, its jurisdiction and every group's allowed jurisdictions.
    pub(super) fn of(topo: &Topology, node: &Node) -> Residency {
        Residency {
            site: node.site.clone(),
            jurisdiction: topo.site(&node.site).and_then(|s| s.jurisdiction.clone()),
            allowed: topo
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.allowed_jurisdictions.clone()))
                .collect(),
        }
    }

    /// Refuses writing a `what` copy of `group` here when this site is outside the group's
    /// allowed jurisdictions (before anything is written).
    pub(super) fn check(&self, group: &str, what: &str) -> std::result::Result<(), Status> {
        let allowed = self.allowed.get(group).map_or(&[][..], |v| v.as_slice());
        match tandem_core::residency::placement_refusal(
            what,
            allowed,
            &self.site,
            self.jurisdiction.as_deref(),
        ) {
            Some(m) => {
                warn!(%group, "refused: {m}");
                Err(Status::permission_denied(format!("group {group}: {m}")))
            }
            None => Ok(()),
        }
    }
}

/// Maps (group, resource) to the local file.
pub(super) type Resolver = Box<dyn Fn(&str, &str) -> Option<PathBuf> + Send + Sync>;
