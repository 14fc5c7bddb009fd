//! The replicator process: serves the Replication service (as replica) and the NBD exports (as
//! primary), sends heartbeats and progress to the coordinators, holds the primary lease and
//! fences itself when it cannot renew it, and changes roles when the coordinators promote or
//! demote its site.
//!
//! Roles come only from the coordinators' answers: a replicator that cannot reach a quorum
//! keeps no write lease, so it stops accepting writes before the coordinators may promote the
//! other site.

use crate::apply::ReplicaGroup;
use crate::error::{ReplicatorError, Result};
use crate::journal::Journal;
use crate::nbd::{self, ExportMap};
use crate::pipeline::{GroupPipeline, Mode, PipelineConfig};
use crate::receive::{BlockSource, ReplicationService};
use crate::resync::{self, BlockServer, ResyncOptions};
use crate::ship::{ShipConfig, ShipperHandle};
use crate::volume::{FileVolume, VolumeBackend, VolumeError};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::config::{Capture, Group, Node, NodeRole, ResourceKind, Topology};
use tandem_core::frame::{Change, Decoder};
use tandem_core::ids::{Epoch, Seq};
use tandem_core::net::Net;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{ArchiveWalReply, ArchiveWalRequest};
use tandem_core::proto::{
    CheckpointReply, CheckpointRequest, CheckpointsReply, CheckpointsRequest, GroupLease,
    GroupProgress, HeartbeatRequest, MerkleReply, MerkleRequest, ProposeRequest, ReadBlocksReply,
    ReadBlocksRequest, RecoverReply, RecoverRequest, RecoveredResource, RecoveryPoint,
    ResyncProgress, ResyncRequest, SnapshotReply, SnapshotRequest,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Status;
use tracing::{info, warn};

/// Keep this much of the lease unused: stop writes before the coordinators' expiry.
const LEASE_SAFETY: Duration = Duration::from_millis(200);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The write path of one protected volume: journal (and replica, in sync mode) first, then the
/// local image; writable only while this site is primary and holds a live lease.
pub struct GroupVolume {
    resource: String,
    file: FileVolume,
    role: Arc<RoleCell>,
    clock: SystemClock,
}

/// What the volumes of a group need to know about the group's current role.
#[derive(Default)]
pub struct RoleCell {
    pipeline: RwLock<Option<Arc<GroupPipeline>>>,
    lease_deadline: Mutex<Option<Instant>>,
    fenced: std::sync::atomic::AtomicBool,
    /// Writers hold it shared from journal to local write; a merkle snapshot holds it
    /// exclusively to read a seq that every local image already reflects.
    inflight: tokio::sync::RwLock<()>,
    /// Byte ranges being written: overlapping writes go journal-then-image one after the
    /// other, so the image sees them in journal (seq) order, as the replica does.
    ranges: RangeLock,
    /// The group's volume images at this site (fdatasync'd before a journal overflow).
    images: Mutex<Vec<PathBuf>>,
    /// Every resource of the group is a volume, so a full journal may be dropped and the
    /// replica resynced by merkle diff (a database's pages cannot be recovered that way).
    may_overflow: std::sync::atomic::AtomicBool,
    /// The running SQLite sources of the group (primary), by resource: where a returning
    /// replica's resync asks for fresh snapshots.
    sqlite_asks: Mutex<HashMap<String, Arc<crate::sqlite::SnapshotAsk>>>,
}

/// A lock on byte ranges of one resource namespace: overlapping holders exclude each other,
/// disjoint ones run concurrently.
#[derive(Default)]
pub struct RangeLock {
    held: Mutex<Vec<(String, u64, u64)>>,
    freed: tokio::sync::Notify,
}

/// A held range; released on drop.
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    key: (String, u64, u64),
}

impl RangeLock {
    /// Waits until no holder overlaps `[start, end)` of `resource`, then holds it.
    pub async fn lock(&self, resource: &str, start: u64, end: u64) -> RangeGuard<'_> {
        loop {
            let notified = self.freed.notified();
            {
                let mut held = lock(&self.held);
                let busy = held
                    .iter()
                    .any(|(r, s, e)| r == resource && *s < end && start < *e);
                if !busy {
                    let key = (resource.to_owned(), start, end);
                    held.push(key.clone());
                    return RangeGuard { lock: self, key };
                }
            }
            notified.await;
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = lock(&self.lock.held);
        if let Some(i) = held.iter().position(|k| *k == self.key) {
            held.swap_remove(i);
        }
        drop(held);
        self.lock.freed.notify_waiters();
    }
}

impl RoleCell {
    fn pipeline(&self) -> Option<Arc<GroupPipeline>> {
        self.pipeline
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_pipeline(&self, p: Option<Arc<GroupPipeline>>) {
        *self.pipeline.write().unwrap_or_else(|p| p.into_inner()) = p;
    }

    fn lease_valid(&self) -> bool {
        if unsafe_skip_lease_check() {
            return true;
        }
        lock(&self.lease_deadline).is_some_and(|d| Instant::now() < d)
    }

    pub(crate) fn writable(&self) -> bool {
        !self.fenced.load(std::sync::atomic::Ordering::SeqCst)
            && self.lease_valid()
            && self.pipeline().is_some()
    }

    /// The journal is full: with no write between journal and image, make the images durable
    /// and drop the unacknowledged frames, so intake goes on; the replica is resynced by merkle
    /// diff (the shipper asks it). Returns false when the group may not overflow (it holds a
    /// database), and intake stays refused.
    pub(crate) async fn overflow(&self) -> std::result::Result<bool, VolumeError> {
        if !self.may_overflow.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let _all = self.inflight.write().await;
        let Some(p) = self.pipeline() else {
            return Ok(false);
        };
        if !p.journal_full() {
            return Ok(true); // another writer overflowed it meanwhile
        }
        let images = lock(&self.images).clone();
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for path in &images {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)?
                    .sync_data()?;
            }
            Ok(())
        })
        .await;
        let fail = |what: String| VolumeError::Backend {
            what,
            retryable: true,
            errno: crate::nbd::proto::Errno::EIO,
        };
        match synced {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(format!("fdatasync before journal overflow: {e}"))),
            Err(e) => return Err(fail(format!("fdatasync task: {e}"))),
        }
        p.drop_unacked()
            .await
            .map_err(|e| fail(format!("dropping the journal: {e}")))?;
        Ok(true)
    }
}

/// A deliberately broken build for the chaos harness's own test: with
/// `TANDEM_UNSAFE_SKIP_LEASE_CHECK=1` a debug build accepts writes without a live lease and
/// ignores its demotion (it disobeys fencing), which the `primary-paused` scenario must catch.
/// Release builds ignore the variable.
fn unsafe_skip_lease_check() -> bool {
    cfg!(debug_assertions)
        && std::env::var("TANDEM_UNSAFE_SKIP_LEASE_CHECK").is_ok_and(|v| v == "1")
}

fn refused(resource: &str, why: &str) -> VolumeError {
    VolumeError::Backend {
        what: format!("{resource}: {why}"),
        retryable: true,
        errno: crate::nbd::proto::Errno::EPERM,
    }
}

fn backend_err(resource: &str, e: ReplicatorError) -> VolumeError {
    let errno = match e {
        ReplicatorError::JournalFull { .. } => crate::nbd::proto::Errno::ENOSPC,
        ReplicatorError::Fenced { .. } => crate::nbd::proto::Errno::EPERM,
        _ => crate::nbd::proto::Errno::EIO,
    };
    VolumeError::Backend {
        what: format!("{resource}: {e}"),
        retryable: e.is_retryable(),
        errno,
    }
}

/// A write admitted to the journal: the image write happens under the guards, and then (with
/// the guards dropped) [`Journaled::acknowledge`] waits for what the mode promises.
struct Admitted<'a> {
    guards: (tokio::sync::RwLockReadGuard<'a, ()>, RangeGuard<'a>),
    journaled: Journaled,
}

/// A change durable in the local journal, not yet acknowledged to the client.
struct Journaled {
    pipeline: Arc<GroupPipeline>,
    seq: Seq,
    resource: String,
}

impl Journaled {
    /// In sync mode, waits for the replica's durable acknowledgement (or the coordinators'
    /// consent to degrade). Called without holding the write guards: a merkle snapshot for
    /// the replica's own resync needs them, and strict sync would otherwise wait forever.
    async fn acknowledge(self) -> std::result::Result<(), VolumeError> {
        self.pipeline
            .await_sync(self.seq)
            .await
            .map_err(|e| backend_err(&self.resource, e))
    }
}

impl GroupVolume {
    /// Journals the change of bytes `[start, end)` (made by `make`) and returns the guards
    /// under which the caller writes the image. A full journal overflows (see
    /// [`RoleCell::overflow`]) and the change is journaled again.
    async fn admit(
        &self,
        start: u64,
        end: u64,
        make: &(dyn Fn() -> Change + Send + Sync),
    ) -> std::result::Result<Admitted<'_>, VolumeError> {
        let mut tries = 0;
        loop {
            let g = self.role.inflight.read().await;
            let r = self.role.ranges.lock(&self.resource, start, end).await;
            match self.capture(make()).await {
                Ok(journaled) => {
                    return Ok(Admitted {
                        guards: (g, r),
                        journaled,
                    })
                }
                Err(CaptureError::JournalFull(e)) if tries < 3 => {
                    drop((r, g));
                    tries += 1;
                    if !self.role.overflow().await? {
                        return Err(e);
                    }
                }
                Err(CaptureError::JournalFull(e) | CaptureError::Other(e)) => return Err(e),
            }
        }
    }

    async fn capture(&self, change: Change) -> std::result::Result<Journaled, CaptureError> {
        if !self.role.writable() {
            return Err(refused(
                &self.resource,
                "not writable here (not primary, or the lease is not held)",
            )
            .into());
        }
        let p = self
            .role
            .pipeline()
            .ok_or_else(|| refused(&self.resource, "no pipeline"))?;
        match p.submit_journaled(vec![change]).await {
            Ok(seq) => Ok(Journaled {
                pipeline: p,
                seq,
                resource: self.resource.clone(),
            }),
            Err(e) => {
                let full = matches!(e, ReplicatorError::JournalFull { .. });
                let e = backend_err(&self.resource, e);
                Err(if full {
                    CaptureError::JournalFull(e)
                } else {
                    CaptureError::Other(e)
                })
            }
        }
    }
}

/// Why a change was not journaled.
enum CaptureError {
    /// The journal is at its limit (the group may overflow and retry).
    JournalFull(VolumeError),
    /// Anything else.
    Other(VolumeError),
}

impl From<VolumeError> for CaptureError {
    fn from(e: VolumeError) -> Self {
        CaptureError::Other(e)
    }
}

impl From<CaptureError> for VolumeError {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::JournalFull(e) | CaptureError::Other(e) => e,
        }
    }
}

#[tonic::async_trait]
impl VolumeBackend for GroupVolume {
    fn size(&self) -> u64 {
        self.file.size()
    }

    async fn read(&self, offset: u64, len: u32) -> std::result::Result<Vec<u8>, VolumeError> {
        self.file.read(offset, len).await
    }

    async fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> std::result::Result<(), VolumeError> {
        let end = offset.saturating_add(data.len() as u64);
        let make = || Change::write(&self.resource, offset, data.clone(), self.clock.now_ms());
        let admitted = self.admit(offset, end, &make).await?;
        self.file.write(offset, data, fua).await?;
        drop(admitted.guards);
        admitted.journaled.acknowledge().await
    }

    async fn trim(&self, offset: u64, len: u32) -> std::result::Result<(), VolumeError> {
        let end = offset.saturating_add(u64::from(len));
        let make = || Change::trim(&self.resource, offset, u64::from(len), self.clock.now_ms());
        let admitted = self.admit(offset, end, &make).await?;
        self.file.trim(offset, len).await?;
        drop(admitted.guards);
        admitted.journaled.acknowledge().await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> std::result::Result<(), VolumeError> {
        let end = offset.saturating_add(u64::from(len));
        let make = || Change::trim(&self.resource, offset, u64::from(len), self.clock.now_ms());
        let admitted = self.admit(offset, end, &make).await?;
        self.file.write_zeroes(offset, len, fua).await?;
        drop(admitted.guards);
        admitted.journaled.acknowledge().await
    }

    async fn flush(&self) -> std::result::Result<(), VolumeError> {
        if self.role.writable() {
            let mut tries = 0;
            let journaled = loop {
                let g = self.role.inflight.read().await;
                match self
                    .capture(Change::barrier(&self.resource, self.clock.now_ms()))
                    .await
                {
                    Ok(j) => break j,
                    Err(CaptureError::JournalFull(e)) if tries < 3 => {
                        drop(g);
                        tries += 1;
                        if !self.role.overflow().await? {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            self.file.flush().await?;
            return journaled.acknowledge().await;
        }
        self.file.flush().await
    }

    /// Advertised to NBD clients at connect time: writable while this site is the primary
    /// (the lease is checked on every write, which fails with EPERM without it).
    fn writable(&self) -> bool {
        !self.role.fenced.load(std::sync::atomic::Ordering::SeqCst)
            && self.role.pipeline().is_some()
    }
}

/// A group's role on this replicator.
enum Role {
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

struct GroupRt {
    cfg: Group,
    role: Role,
    /// Stops the SQLite and scan capture sources of this group (primary only).
    sources_stop: Option<watch::Sender<bool>>,
    /// The scan capture sources of this group (primary only), for the drain's last pass.
    scans: Vec<crate::scan_capture::ScanSource>,
    cell: Arc<RoleCell>,
    last_shipped: u64,
    last_tick: Instant,
    throughput: f64,
    last_error: String,
    /// What the last failback resync kept in quarantine (reported in heartbeats, so status
    /// shows it), empty when nothing was kept.
    quarantined: String,
    /// Progress of the current (or last) resync of this replica.
    resync: watch::Sender<ResyncProgress>,
}

struct NodeRt {
    topo: Topology,
    node: Node,
    data_dir: PathBuf,
    service: ReplicationService,
    groups: tokio::sync::Mutex<BTreeMap<String, GroupRt>>,
    coordinators: Vec<String>,
    me: Arc<NodeRtShared>,
}

/// Parts of the node the gRPC block source needs.
#[derive(Default)]
struct NodeRtShared {
    /// group -> role cell (primary groups answer with their journal seq)
    cells: Mutex<HashMap<String, Arc<RoleCell>>>,
    /// group -> replica group (replica groups answer with their watermark)
    replicas: Mutex<HashMap<String, Arc<ReplicaGroup>>>,
    /// (group, resource) -> local path
    paths: HashMap<(String, String), PathBuf>,
    /// group -> the replica replicator's URL, while this node is the group's primary
    peers: Mutex<HashMap<String, String>>,
    /// The node itself, once running (the Resync RPC changes its groups' roles).
    node: std::sync::OnceLock<std::sync::Weak<NodeRt>>,
    /// (group, resource) of every postgres resource -> its archive pushes, one at a time (the
    /// replica rebuilds one file at a time per resource).
    wal_pushes: HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// This node's site and its jurisdiction, and each group's allowed jurisdictions: a copy
    /// this node writes (drill snapshot, recovered copy) lands at this site.
    residency: Residency,
    /// How this node dials and serves (plaintext or mTLS).
    net: Net,
}

/// Where this node is, for the residency check of the copies it writes.
#[derive(Default)]
struct Residency {
    site: String,
    jurisdiction: Option<String>,
    allowed: HashMap<String, Vec<String>>,
}

impl Residency {
    fn of(topo: &Topology, node: &Node) -> Residency {
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
    fn check(&self, group: &str, what: &str) -> std::result::Result<(), Status> {
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
type Resolver = Box<dyn Fn(&str, &str) -> Option<PathBuf> + Send + Sync>;

/// Serves Merkle and ReadBlocks from this node's local copies, filling in the watermark.
struct NodeBlocks {
    shared: Arc<NodeRtShared>,
    /// `DATA_DIR/snapshots`: drill copies live in `GROUP/NAME/` below it.
    snapshots: PathBuf,
    server: BlockServer<Resolver>,
}

impl NodeBlocks {
    /// Both copies hashed at one seq: intake is held (writes wait) while the replica catches up
    /// and both sides hash.
    async fn merkle_barrier(
        &self,
        req: MerkleRequest,
        cell: Option<Arc<RoleCell>>,
    ) -> std::result::Result<MerkleReply, Status> {
        let not_primary =
            || Status::failed_precondition("a barrier merkle must be asked of the primary");
        let cell = cell.ok_or_else(not_primary)?;
        let p = cell.pipeline().ok_or_else(not_primary)?;
        let peer = lock(&self.shared.peers)
            .get(&req.group)
            .cloned()
            .ok_or_else(|| Status::failed_precondition("no replica known for the group"))?;
        let _hold = cell.inflight.write().await;
        let seq = p.progress().last_captured_seq;
        tokio::time::timeout(Duration::from_secs(10), p.wait_replica_durable(seq))
            .await
            .map_err(|_| {
                Status::unavailable(format!("the replica did not reach seq {seq} within 10s"))
            })?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let plain = MerkleRequest {
            barrier: false,
            ..req
        };
        let mut own = self.server.merkle(plain.clone()).await?;
        own.watermark = seq.0;
        let net = &self.shared.net;
        let ep = net
            .endpoint(&peer)
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(1));
        let ch = net
            .connect(ep)
            .await
            .map_err(|e| Status::unavailable(format!("replica {peer}: {e}")))?;
        let mut client = tandem_core::grpc_limits!(ReplicationClient::new(ch));
        let r = client.merkle(plain).await?.into_inner();
        own.peer_root = r.root;
        own.peer_leaves = r.leaves;
        own.peer_watermark = r.watermark;
        own.peer_length = r.length;
        Ok(own)
    }
}

#[tonic::async_trait]
impl BlockSource for NodeBlocks {
    async fn merkle(&self, req: MerkleRequest) -> std::result::Result<MerkleReply, Status> {
        let group = req.group.clone();
        let cell = lock(&self.shared.cells).get(&group).cloned();
        let replica = lock(&self.shared.replicas).get(&group).cloned();
        if req.barrier {
            return self.merkle_barrier(req, cell).await;
        }
        if req.resource.is_empty() {
            // Only where a returning replica of a group without volumes continues: the first
            // seq the primary's journal still holds, minus one.
            let not_primary =
                || Status::failed_precondition(format!("group {group:?} is not primary here"));
            let cell = cell.ok_or_else(not_primary)?;
            let p = cell.pipeline().ok_or_else(not_primary)?;
            let mut snapshot_from = HashMap::new();
            if req.sqlite_snapshots {
                let asks: Vec<_> = lock(&cell.sqlite_asks)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for (name, ask) in asks {
                    let seq = ask
                        .snapshot(Duration::from_secs(30))
                        .await
                        .map_err(|e| Status::unavailable(format!("snapshot of {name:?}: {e}")))?;
                    info!(%group, resource = %name, from = seq.0, "full snapshot journaled for a resyncing replica");
                    snapshot_from.insert(name, seq.0);
                }
            }
            return Ok(MerkleReply {
                watermark: p.journal().trimmed_through().0,
                snapshot_from,
                ..MerkleReply::default()
            });
        }
        // The watermark must be a seq the image already reflects: take it with no write
        // between journal and image, before hashing starts.
        let watermark = match (&cell, &replica) {
            (Some(cell), _) if cell.pipeline().is_some() => {
                let _g = cell.inflight.write().await;
                cell.pipeline()
                    .map(|p| p.progress().last_captured_seq.0)
                    .unwrap_or(0)
            }
            (_, Some(rg)) => rg.watermark().0,
            _ => 0,
        };
        let mut reply = self.server.merkle(req).await?;
        reply.watermark = watermark;
        Ok(reply)
    }

    async fn read_blocks(
        &self,
        req: ReadBlocksRequest,
    ) -> std::result::Result<ReadBlocksReply, Status> {
        self.server.read_blocks(req).await
    }

    async fn resync(
        &self,
        req: ResyncRequest,
    ) -> std::result::Result<watch::Receiver<ResyncProgress>, Status> {
        let rt = self
            .shared
            .node
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| Status::unavailable("the replicator is starting"))?;
        let mut groups = rt.groups.lock().await;
        let g = groups
            .get_mut(&req.group)
            .ok_or_else(|| Status::not_found(format!("no group {:?} here", req.group)))?;
        if let Some(r) = g
            .cfg
            .resources
            .iter()
            .find(|r| matches!(r.kind, ResourceKind::Postgres { .. }))
        {
            return Err(Status::failed_precondition(format!(
                "group {:?} holds the {} resource {:?}: only volumes (by merkle diff) and SQLite databases (from a full snapshot) are resynced",
                req.group,
                r.kind.name(),
                r.name
            )));
        }
        match &g.role {
            Role::Replica {
                resyncing: true, ..
            } => Ok(g.resync.subscribe()),
            Role::Replica {
                epoch,
                rg: Some(rg),
                ..
            } => {
                let (epoch, rg) = (*epoch, rg.clone());
                let primary = g
                    .cfg
                    .peer_of(&rt.node.site)
                    .map(str::to_owned)
                    .ok_or_else(|| Status::internal("the group has no peer site"))?;
                info!(group = %req.group, reason = %req.reason, "resync asked");
                rt.service.remove_group(&req.group);
                lock(&rt.me.replicas).remove(&req.group);
                // Wait out the batch being applied; no later frame is applied to these files.
                tokio::task::spawn_blocking(move || rg.retire())
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                start_resync(&rt, g, epoch, &primary, &req.reason)
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                Ok(g.resync.subscribe())
            }
            _ => Err(Status::failed_precondition(format!(
                "this replicator is not the replica of {:?}: a resync is asked of the replica",
                req.group
            ))),
        }
    }

    async fn snapshot(&self, req: SnapshotRequest) -> std::result::Result<SnapshotReply, Status> {
        let dir = self.snapshot_dir(&req)?;
        self.shared.residency.check(&req.group, "drill copy")?;
        let rg = lock(&self.shared.replicas)
            .get(&req.group)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "group {:?} is not a replica here: snapshots are taken at the replica",
                    req.group
                ))
            })?;
        if dir.exists() {
            return Err(Status::already_exists(format!(
                "snapshot {} exists",
                dir.display()
            )));
        }
        let d = dir.clone();
        let (watermark, paths) = tokio::task::spawn_blocking(move || rg.copy_to(&d))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        info!(group = %req.group, dir = %dir.display(), watermark = watermark.0, "snapshot taken");
        Ok(SnapshotReply {
            dir: dir.display().to_string(),
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
            watermark: watermark.0,
        })
    }

    async fn checkpoint(
        &self,
        req: CheckpointRequest,
    ) -> std::result::Result<CheckpointReply, Status> {
        self.mark_checkpoint(req).await
    }

    async fn checkpoints(
        &self,
        req: CheckpointsRequest,
    ) -> std::result::Result<CheckpointsReply, Status> {
        let rg = self.replica(&req.group)?;
        let v = rg.history_view().ok_or_else(|| {
            Status::failed_precondition(format!(
                "group {:?} keeps no history (set `history` in its config)",
                req.group
            ))
        })?;
        Ok(CheckpointsReply {
            points: v
                .points
                .iter()
                .filter(|p| req.barriers || p.kind != crate::history::RecordKind::Barrier)
                .map(wire_point)
                .collect(),
            oldest: v.oldest.as_ref().map(wire_point),
            history_bytes: v.bytes,
            watermark: v.watermark.0,
        })
    }

    async fn recover(&self, req: RecoverRequest) -> std::result::Result<RecoverReply, Status> {
        let rg = self.replica(&req.group)?;
        self.shared
            .residency
            .check(&req.group, "point-in-time copy")?;
        let sel = crate::validate::recover_selector(&req).map_err(Status::invalid_argument)?;
        let out = if req.out_dir.is_empty() {
            // The same name rules as snapshots.
            self.snapshot_dir(&SnapshotRequest {
                group: req.group.clone(),
                name: req.name.clone(),
            })?;
            let out = self
                .snapshots
                .parent()
                .unwrap_or(Path::new("."))
                .join("recovered")
                .join(&req.group)
                .join(&req.name);
            let out = std::path::absolute(&out)
                .map_err(|e| Status::internal(format!("{}: {e}", out.display())))?;
            // A named copy is replaced (a retried runbook step).
            if out.exists() {
                std::fs::remove_dir_all(&out)
                    .map_err(|e| Status::unavailable(format!("remove {}: {e}", out.display())))?;
            }
            out
        } else {
            PathBuf::from(&req.out_dir)
        };
        if !out.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "out_dir {:?} must be an absolute path",
                req.out_dir
            )));
        }
        let bs = if req.block_size == 0 {
            64 << 10
        } else {
            req.block_size
        };
        crate::merkle::check_block_size(bs).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let o = out.clone();
        let r = tokio::task::spawn_blocking(move || rg.recover(&sel, &o, bs))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                ReplicatorError::NoRecoveryPoint(m) => Status::failed_precondition(m),
                e => Status::internal(e.to_string()),
            })?;
        info!(group = %req.group, seq = r.point.seq.0, dir = %out.display(), undone = r.undone, "recovered to a point in time");
        Ok(RecoverReply {
            point: Some(wire_point(&r.point)),
            copied_at: r.copied_at.0,
            undone: r.undone,
            resources: r
                .resources
                .into_iter()
                .map(|(name, path, length, root)| RecoveredResource {
                    name,
                    path: path.display().to_string(),
                    length,
                    root: root.to_vec(),
                })
                .collect(),
            block_size: bs,
        })
    }

    async fn delete_snapshot(
        &self,
        req: SnapshotRequest,
    ) -> std::result::Result<SnapshotReply, Status> {
        let dir = self.snapshot_dir(&req)?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "remove {}: {e}",
                    dir.display()
                )))
            }
        }
        Ok(SnapshotReply {
            dir: dir.display().to_string(),
            paths: Vec::new(),
            watermark: 0,
        })
    }

    async fn archive_wal(
        &self,
        req: ArchiveWalRequest,
    ) -> std::result::Result<ArchiveWalReply, Status> {
        let key = (req.group.clone(), req.resource.clone());
        let one = self.shared.wal_pushes.get(&key).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "group {:?} has no postgres resource {:?} on this replicator",
                req.group, req.resource
            ))
        })?;
        let now = SystemClock::new().now_ms();
        let changes = tandem_core::walfile::changes(&req.resource, &req.name, &req.data, now)
            .map_err(|r| Status::invalid_argument(format!("archive file {:?}: {r}", req.name)))?;
        let hash = blake3::hash(&req.data).to_hex().to_string();
        let cell = lock(&self.shared.cells).get(&req.group).cloned();
        let _one = one.lock().await;
        let retry = || {
            Status::failed_precondition(format!(
                "group {:?} is not writable here (not the primary, no live lease, or intake stopped for a switchover); PostgreSQL will retry",
                req.group
            ))
        };
        let cell = cell.filter(|c| c.writable()).ok_or_else(retry)?;
        let p = cell.pipeline().ok_or_else(retry)?;
        let mut last = Seq(0);
        {
            let _g = cell.inflight.read().await;
            // At most 32 MiB of file per submission: well inside the 64 MiB frame limit.
            let mut rest = changes.into_iter();
            loop {
                let batch: Vec<Change> = rest.by_ref().take(32).collect();
                if batch.is_empty() {
                    break;
                }
                last = p
                    .submit(batch)
                    .await
                    .map_err(|e| Status::unavailable(format!("{}: {e}", req.name)))?;
            }
        }
        let wait = match req.timeout_ms {
            0 => Duration::from_secs(60),
            ms => Duration::from_millis(ms),
        };
        tokio::time::timeout(wait, p.wait_replica_durable(last))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "{} journaled at seq {last} but the replica did not acknowledge it durable within {} ms",
                    req.name,
                    wait.as_millis()
                ))
            })?
            .map_err(|e| Status::unavailable(format!("{}: {e}", req.name)))?;
        info!(group = %req.group, resource = %req.resource, file = %req.name, bytes = req.data.len(), seq = last.0, "archive file durable at the replica");
        Ok(ArchiveWalReply {
            seq: last.0,
            blake3: hash,
        })
    }
}

/// The folder where the replica replicator with data folder `node_data_dir` keeps the
/// PostgreSQL archive files of `resource` of `group` (what `tandem wal fetch` reads).
pub fn archive_dir(node_data_dir: &Path, group: &str, resource: &str) -> PathBuf {
    node_data_dir.join("archive").join(group).join(resource)
}

fn wire_point(p: &crate::history::Point) -> RecoveryPoint {
    RecoveryPoint {
        seq: p.seq.0,
        captured_ms: p.captured_ms,
        kind: p.kind.as_str().into(),
        tag: p.tag.clone(),
    }
}

impl NodeBlocks {
    fn replica(&self, group: &str) -> std::result::Result<Arc<ReplicaGroup>, Status> {
        lock(&self.shared.replicas)
            .get(group)
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "group {group:?} is not a replica here: its history is kept at the replica"
                ))
            })
    }

    /// Puts a tagged checkpoint marker into the stream of a primary group and waits (10 s at
    /// most) until the replica has it durable.
    async fn mark_checkpoint(
        &self,
        req: CheckpointRequest,
    ) -> std::result::Result<CheckpointReply, Status> {
        if req.tag.is_empty()
            || req.tag.len() > tandem_core::frame::MAX_TAG_LEN
            || req.tag.chars().any(|c| c.is_control())
        {
            return Err(Status::invalid_argument(format!(
                "bad checkpoint tag {:?}: 1 to {} bytes, no control characters",
                req.tag,
                tandem_core::frame::MAX_TAG_LEN
            )));
        }
        let not_primary = || {
            Status::failed_precondition(format!(
                "group {:?} is not primary here: a checkpoint is marked by the primary",
                req.group
            ))
        };
        let cell = lock(&self.shared.cells)
            .get(&req.group)
            .cloned()
            .ok_or_else(not_primary)?;
        if !cell.writable() {
            return Err(not_primary());
        }
        let p = cell.pipeline().ok_or_else(not_primary)?;
        let now = SystemClock::new().now_ms();
        let seq = p
            .submit(vec![Change::checkpoint(&req.tag, now)])
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(10), p.wait_replica_durable(seq))
            .await
            .map_err(|_| {
                Status::unavailable(format!(
                    "checkpoint {:?} is at seq {seq} but the replica did not have it within 10s",
                    req.tag
                ))
            })?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        info!(group = %req.group, tag = %req.tag, seq = seq.0, "checkpoint marked");
        Ok(CheckpointReply {
            seq: seq.0,
            captured_ms: now,
        })
    }

    /// `DATA_DIR/snapshots/GROUP/NAME`, refusing names that could leave that folder.
    fn snapshot_dir(&self, req: &SnapshotRequest) -> std::result::Result<PathBuf, Status> {
        crate::validate::check_copy_name(&req.group, &req.name)
            .map_err(Status::invalid_argument)?;
        Ok(self.snapshots.join(&req.group).join(&req.name))
    }
}

/// Runs the replicator node `name` of `topo` until `shutdown` resolves.
///
/// # Errors
/// The node is not a replicator of the topology, its files cannot be opened, or its listen
/// addresses cannot be bound.
pub async fn run(
    topo: Topology,
    name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let node = topo
        .node(&name)
        .filter(|n| n.role == NodeRole::Replicator)
        .cloned()
        .ok_or_else(|| {
            ReplicatorError::Task(format!("{name} is not a replicator of the topology"))
        })?;
    let data_dir = topo.node_data_dir(&node);
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| ReplicatorError::io("create dir", &data_dir, e))?;
    let site = node.site.clone();
    let net = Net::for_node(&topo, &name).map_err(|e| ReplicatorError::Task(e.to_string()))?;
    net.spawn_reloader();

    // Every volume of every group this site takes part in is exported over NBD; an export is
    // writable only while this site is primary with a live lease.
    let mut exports = ExportMap::new();
    let mut groups = BTreeMap::new();
    let mut paths = HashMap::new();
    let mut cells = HashMap::new();
    let mut wal_pushes = HashMap::new();
    for g in topo
        .groups
        .iter()
        .filter(|g| g.primary == site || g.replica == site)
    {
        let cell = Arc::new(RoleCell::default());
        cell.may_overflow.store(
            g.resources
                .iter()
                .all(|r| matches!(r.kind, ResourceKind::Volume { .. })),
            std::sync::atomic::Ordering::SeqCst,
        );
        for r in &g.resources {
            if matches!(r.kind, ResourceKind::Postgres { .. }) {
                wal_pushes.insert((g.name.clone(), r.name.clone()), Default::default());
            }
            if let ResourceKind::Volume { size, capture, .. } = &r.kind {
                let path = topo.resource_path(g, r, &site).ok_or_else(|| {
                    ReplicatorError::Task(format!("no path for {}/{}", g.name, r.name))
                })?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| ReplicatorError::io("create dir", dir, e))?;
                }
                let file = FileVolume::create(&path, size.bytes()).map_err(|e| {
                    ReplicatorError::Task(format!("opening volume {}: {e}", path.display()))
                })?;
                let vol = GroupVolume {
                    resource: r.name.clone(),
                    file,
                    role: cell.clone(),
                    clock: SystemClock::new(),
                };
                // A scanned volume is written by others, not through an NBD export.
                if *capture == Capture::Nbd {
                    exports
                        .insert(&r.name, Arc::new(vol))
                        .map_err(|e| ReplicatorError::Task(format!("export {}: {e}", r.name)))?;
                }
                lock(&cell.images).push(path.clone());
                paths.insert((g.name.clone(), r.name.clone()), path);
            }
        }
        cells.insert(g.name.clone(), cell.clone());
        groups.insert(
            g.name.clone(),
            GroupRt {
                cfg: g.clone(),
                role: Role::Unknown,
                sources_stop: None,
                scans: Vec::new(),
                cell,
                last_shipped: 0,
                last_tick: Instant::now(),
                throughput: 0.0,
                last_error: String::new(),
                quarantined: String::new(),
                resync: watch::channel(ResyncProgress {
                    group: g.name.clone(),
                    ..ResyncProgress::default()
                })
                .0,
            },
        );
    }
    let shared = Arc::new(NodeRtShared {
        cells: Mutex::new(cells),
        replicas: Mutex::new(HashMap::new()),
        paths,
        peers: Mutex::new(HashMap::new()),
        node: std::sync::OnceLock::new(),
        wal_pushes,
        residency: Residency::of(&topo, &node),
        net: net.clone(),
    });
    let resolver_shared = shared.clone();
    let resolver: Resolver = Box::new(move |g: &str, r: &str| {
        resolver_shared
            .paths
            .get(&(g.to_owned(), r.to_owned()))
            .cloned()
    });
    let blocks = NodeBlocks {
        shared: shared.clone(),
        snapshots: data_dir.join("snapshots"),
        server: BlockServer::new(resolver),
    };
    let service = ReplicationService::new()
        .with_block_source(Arc::new(blocks))
        .with_net(net.clone());
    let coordinators = topo
        .coordinators()
        .iter()
        .map(|c| format!("http://{}", c.node.listen))
        .collect();
    let rt = Arc::new(NodeRt {
        topo: topo.clone(),
        node: node.clone(),
        data_dir,
        service: service.clone(),
        groups: tokio::sync::Mutex::new(groups),
        coordinators,
        me: shared,
    });
    let _ = rt.me.node.set(Arc::downgrade(&rt));

    let (stop_tx, stop_rx) = watch::channel(false);
    serve_metrics(&rt, stop_rx.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&node.listen)
        .await
        .map_err(|e| ReplicatorError::io("bind", Path::new(&node.listen), e))?;
    let mut stop_grpc = stop_rx.clone();
    let grpc = tokio::spawn(crate::receive::serve(
        service.clone(),
        listener,
        async move {
            let _ = stop_grpc.changed().await;
        },
    ));
    let nbd_task = match &node.nbd_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ReplicatorError::io("bind", Path::new(addr), e))?;
            info!(%addr, exports = exports.len(), "NBD exports listening");
            Some(tokio::spawn(nbd::serve(
                l,
                Arc::new(exports),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    info!(node = %name, listen = %node.listen, "replicator running");
    let hb = tokio::spawn(heartbeat_loop(rt.clone(), stop_rx.clone()));
    shutdown.await;
    info!("replicator shutting down");
    let _ = stop_tx.send(true);
    service.close();
    let _ = hb.await;
    let _ = grpc.await;
    if let Some(t) = nbd_task {
        let _ = t.await;
    }
    let mut groups = rt.groups.lock().await;
    for g in groups.values_mut() {
        stop_role(g).await;
    }
    Ok(())
}

async fn stop_role(g: &mut GroupRt) {
    g.scans.clear();
    if let Some(stop) = g.sources_stop.take() {
        let _ = stop.send(true);
    }
    let role = std::mem::replace(&mut g.role, Role::Unknown);
    if let Role::Primary { shipper, .. } = role {
        g.cell.set_pipeline(None);
        if let Some(s) = shipper {
            let _ = s.stop().await;
        }
    }
}

async fn heartbeat_loop(rt: Arc<NodeRt>, mut stop: watch::Receiver<bool>) {
    let every: Duration = rt.topo.cluster.heartbeat_interval.into();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A coordinator behind a cut link must not eat the whole detection window: the failure
    // detector declares this site down after `detect_after` without a heartbeat, so each try
    // gets a third of it (the next coordinator is tried right after).
    let detect: Duration = rt.topo.cluster.detect_after.into();
    let per_try = (detect / 3).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let mut client: Option<CoordinatorClient<Channel>> = None;
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let req = progress_report(&rt).await;
        let sent = Instant::now();
        let mut reply = None;
        for _ in 0..rt.coordinators.len().max(1) {
            if client.is_none() {
                let addr = &rt.coordinators[next % rt.coordinators.len().max(1)];
                next += 1;
                client = connect_within(&rt.me.net, addr, per_try).await;
            }
            if let Some(c) = client.as_mut() {
                match c.heartbeat(req.clone()).await {
                    Ok(r) => {
                        reply = Some(r.into_inner());
                        break;
                    }
                    Err(e) => {
                        tracing::debug!("heartbeat failed: {}", e.message());
                        client = None;
                    }
                }
            }
        }
        let Some(reply) = reply else {
            warn!("no coordinator answered the heartbeat; the lease will run out");
            continue;
        };
        for lease in reply.leases {
            if let Err(e) = reconcile(&rt, &lease, sent).await {
                warn!(group = %lease.group, "role change failed: {e}");
                if let Some(g) = rt.groups.lock().await.get_mut(&lease.group) {
                    g.last_error = e.to_string();
                }
            }
        }
    }
}

/// Asks the coordinators (`sync_degraded` command) before a sync group of this node
/// acknowledges writes without its replica.
#[derive(Debug)]
struct CoordinatorConsent {
    group: String,
    node: String,
    site: String,
    coordinators: Vec<String>,
    net: Net,
}

impl crate::pipeline::SyncConsent for CoordinatorConsent {
    fn ask(&self, epoch: Epoch, degraded: bool) -> crate::pipeline::ConsentFuture {
        let cmd = serde_json::json!({
            "op": "sync_degraded", "at_ms": 0, "group": self.group, "node": self.node,
            "site": self.site, "epoch": epoch.0, "on": degraded,
        })
        .to_string();
        let (node, coordinators, net) = (
            self.node.clone(),
            self.coordinators.clone(),
            self.net.clone(),
        );
        Box::pin(async move {
            let mut why = Vec::new();
            for addr in &coordinators {
                let Some(mut c) = connect(&net, addr).await else {
                    why.push(format!("{addr}: unreachable"));
                    continue;
                };
                let req = ProposeRequest {
                    command: cmd.clone(),
                    actor: node.clone(),
                };
                match c.propose(req).await {
                    Ok(_) => return Ok(()),
                    // The leader refused it: asking another coordinator reaches the same one.
                    Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                        return Err(format!("refused: {}", e.message()))
                    }
                    Err(e) => why.push(format!("{addr}: {}", e.message())),
                }
            }
            Err(why.join("; "))
        })
    }
}

async fn connect(net: &Net, addr: &str) -> Option<CoordinatorClient<Channel>> {
    connect_within(net, addr, Duration::from_secs(2)).await
}

/// A coordinator client whose calls time out after `timeout` (connecting: at most 300 ms).
async fn connect_within(
    net: &Net,
    addr: &str,
    timeout: Duration,
) -> Option<CoordinatorClient<Channel>> {
    let ep = net
        .endpoint(addr)
        .ok()?
        .connect_timeout(timeout.min(Duration::from_millis(300)))
        .timeout(timeout);
    match net.connect(ep).await {
        Ok(ch) => Some(tandem_core::grpc_limits!(CoordinatorClient::new(ch))),
        Err(e) => {
            tracing::debug!("coordinator {addr}: {e}");
            None
        }
    }
}

async fn progress_report(rt: &NodeRt) -> HeartbeatRequest {
    let mut groups = rt.groups.lock().await;
    let mut out = Vec::new();
    for (name, g) in groups.iter_mut() {
        let p = match &g.role {
            Role::Unknown => None,
            Role::Primary {
                epoch,
                pipeline,
                draining,
                ..
            } => {
                let pr = pipeline.progress();
                let dt = g.last_tick.elapsed().as_secs_f64().max(1e-3);
                g.throughput = (pr.bytes_shipped_total.saturating_sub(g.last_shipped)) as f64 / dt;
                g.last_shipped = pr.bytes_shipped_total;
                g.last_tick = Instant::now();
                let ready = g.cell.writable() || *draining;
                Some(GroupProgress {
                    group: name.clone(),
                    role: "primary".into(),
                    epoch: epoch.0,
                    last_captured_seq: pr.last_captured_seq.0,
                    oldest_unacked_ms: pr.oldest_unacked_capture_ms.unwrap_or(0),
                    durable_seq: pr.durable_on_replica_seq.0,
                    bytes_pending: pr.bytes_pending,
                    bytes_shipped: pr.bytes_shipped_total,
                    bytes_raw: pr.bytes_raw_total,
                    throughput_bps: g.throughput,
                    state: if *draining {
                        "draining".into()
                    } else if ready {
                        "ready".into()
                    } else {
                        "starting".into()
                    },
                    reason: if pr.reason.is_empty() {
                        g.last_error.clone()
                    } else {
                        pr.reason.clone()
                    },
                    ..Default::default()
                })
            }
            Role::Replica {
                epoch,
                rg,
                resyncing,
            } => Some(GroupProgress {
                history_oldest_ms: rg
                    .as_ref()
                    .and_then(|r| r.history_oldest())
                    .map(|p| p.captured_ms)
                    .unwrap_or(0),
                history_oldest_seq: rg
                    .as_ref()
                    .and_then(|r| r.history_oldest())
                    .map(|p| p.seq.0)
                    .unwrap_or(0),
                group: name.clone(),
                role: "replica".into(),
                epoch: epoch.0,
                durable_seq: rg.as_ref().map(|r| r.watermark().0).unwrap_or(0),
                state: if *resyncing {
                    "resyncing".into()
                } else {
                    "in-sync".into()
                },
                reason: if *resyncing {
                    describe_resync(&g.resync.borrow())
                } else {
                    [g.last_error.as_str(), g.quarantined.as_str()]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("; ")
                },
                ..Default::default()
            }),
        };
        out.extend(p);
    }
    HeartbeatRequest {
        node: rt.node.name.clone(),
        site: rt.node.site.clone(),
        groups: out,
        cert_not_after: rt.me.net.cert_not_after().unwrap_or(0),
    }
}

/// One line of resync progress for status: `resync: copying disk0 40% (12/30 blocks)`.
pub fn describe_resync(p: &ResyncProgress) -> String {
    let pct = |d: u64, t: u64| (d * 100).checked_div(t).unwrap_or(100);
    let mut out = match p.phase.as_str() {
        "hashing" => format!(
            "resync: hashing {} {}%",
            p.resource,
            pct(p.bytes_done, p.bytes_total)
        ),
        "copying" => format!(
            "resync: copying {} {}% ({}/{} blocks)",
            p.resource,
            pct(p.bytes_done, p.bytes_total),
            p.blocks_copied,
            p.blocks_differing
        ),
        other => format!("resync: {other}"),
    };
    if !p.error.is_empty() {
        out.push_str(&format!("; last attempt failed: {}", p.error));
    }
    out
}

fn journal_dir(rt: &NodeRt, group: &str, epoch: Epoch) -> PathBuf {
    rt.data_dir
        .join("journal")
        .join(group)
        .join(format!("e{}", epoch.0))
}

fn replica_dir(rt: &NodeRt, group: &str) -> PathBuf {
    rt.data_dir.join("replica").join(group)
}

/// `DATA_DIR/history/GROUP`: the point-in-time history of a replica group.
fn history_dir(rt: &NodeRt, group: &str) -> PathBuf {
    rt.data_dir.join("history").join(group)
}

/// Epochs of the journals this node kept for `group` (it was primary in those epochs).
fn journal_epochs(rt: &NodeRt, group: &str) -> Vec<u64> {
    let dir = rt.data_dir.join("journal").join(group);
    let mut out: Vec<u64> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix('e'))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The replica watermark stored in `dir`, if this node ever was a replica of the group.
fn stored_watermark(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(crate::apply::REPLICA_META_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let (_, v) = crate::meta::SlotFile::open(&path, crate::apply::REPLICA_META_MAGIC, 2, &[0, 0])?;
    Ok(v.first().copied())
}

fn resource_paths(rt: &NodeRt, g: &Group) -> HashMap<String, PathBuf> {
    g.resources
        .iter()
        .filter(|r| matches!(r.kind, ResourceKind::Volume { .. }))
        .filter_map(|r| {
            rt.topo
                .resource_path(g, r, &rt.node.site)
                .map(|p| (r.name.clone(), p))
        })
        .collect()
}

/// Names of the group's SQLite resources.
fn sqlite_names(g: &Group) -> std::collections::HashSet<String> {
    g.resources
        .iter()
        .filter(|r| matches!(r.kind, ResourceKind::Sqlite { .. }))
        .map(|r| r.name.clone())
        .collect()
}

/// Local paths of every volume and SQLite resource of the group at this site.
fn replica_paths(rt: &NodeRt, g: &Group) -> HashMap<String, PathBuf> {
    g.resources
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                ResourceKind::Volume { .. } | ResourceKind::Sqlite { .. }
            )
        })
        .filter_map(|r| {
            rt.topo
                .resource_path(g, r, &rt.node.site)
                .map(|p| (r.name.clone(), p))
        })
        .collect()
}

/// Opens the replica side of a group (volumes and SQLite databases).
fn open_replica(rt: &NodeRt, g: &Group) -> Result<ReplicaGroup> {
    let paths = replica_paths(rt, g);
    for p in paths.values() {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ReplicatorError::io("create dir", dir, e))?;
        }
    }
    let archives = g
        .resources
        .iter()
        .filter(|r| matches!(r.kind, ResourceKind::Postgres { .. }))
        .map(|r| (r.name.clone(), archive_dir(&rt.data_dir, &g.name, &r.name)))
        .collect();
    let rg = ReplicaGroup::open_with_sqlite(
        &g.name,
        &replica_dir(rt, &g.name),
        paths,
        &sqlite_names(g),
    )?
    .with_archives(archives)?;
    let hdir = history_dir(rt, &g.name);
    match g.history {
        Some(keep) => {
            let mut cfg =
                crate::history::HistoryConfig::new(Duration::from(keep).as_millis() as i64);
            cfg.max_bytes = g.history_max.map(|m| m.bytes());
            cfg.checkpoint_interval_ms = Duration::from(g.checkpoint_interval).as_millis() as i64;
            // Segments of about 1/16 of the size cap, so trimming is fine-grained.
            if let Some(m) = cfg.max_bytes {
                cfg.segment_bytes = (m / 16).clamp(1 << 20, crate::history::DEFAULT_SEGMENT_BYTES);
            }
            rg.enable_history(&hdir, cfg)?;
        }
        None => {
            // History switched off: what is left no longer follows the stream.
            if hdir.exists() {
                std::fs::remove_dir_all(&hdir)
                    .map_err(|e| ReplicatorError::io("remove", &hdir, e))?;
            }
        }
    }
    Ok(rg)
}

fn peer_replicator(rt: &NodeRt, site: &str) -> Option<String> {
    rt.topo
        .replicators_at(site)
        .first()
        .map(|n| format!("http://{}", n.listen))
}

async fn reconcile(rt: &Arc<NodeRt>, lease: &GroupLease, sent: Instant) -> Result<()> {
    let site = rt.node.site.clone();
    let epoch = Epoch(lease.epoch);
    let mut groups = rt.groups.lock().await;
    let Some(g) = groups.get_mut(&lease.group) else {
        return Ok(());
    };
    if lease.primary == site {
        let same = matches!(&g.role, Role::Primary { epoch: e, .. } if *e == epoch);
        if !same {
            become_primary(rt, g, epoch, &lease.replica).await?;
        }
        // The lease: counted from when the heartbeat was sent, minus a safety margin.
        let deadline = (lease.lease_remaining_ms > 0).then(|| {
            sent + Duration::from_millis(lease.lease_remaining_ms as u64)
                .saturating_sub(LEASE_SAFETY)
        });
        *lock(&g.cell.lease_deadline) = deadline;
        if lease.state == "switching-over" {
            start_drain(rt, g).await;
        }
    } else if lease.replica == site {
        if unsafe_skip_lease_check() && matches!(g.role, Role::Primary { .. }) {
            // The deliberately broken build keeps acting as primary after a demotion.
            return Ok(());
        }
        match &g.role {
            Role::Replica { epoch: e, rg, .. } if *e >= epoch => {
                let _ = rg;
            }
            Role::Replica {
                rg: Some(rg),
                resyncing: false,
                ..
            } => {
                rg.set_fence(epoch)?;
                g.role = Role::Replica {
                    epoch,
                    rg: Some(rg.clone()),
                    resyncing: false,
                };
            }
            Role::Replica { .. } => {}
            _ => become_replica(rt, g, epoch, &lease.primary).await?,
        }
    }
    Ok(())
}

async fn become_primary(
    rt: &Arc<NodeRt>,
    g: &mut GroupRt,
    epoch: Epoch,
    replica_site: &str,
) -> Result<()> {
    let name = g.cfg.name.clone();
    info!(group = %name, %epoch, "becoming primary");
    // Where the group's seq numbering continues from.
    let mut start = match &g.role {
        Role::Replica { rg: Some(rg), .. } => rg.watermark(),
        Role::Primary { pipeline, .. } => pipeline.progress().last_captured_seq,
        _ => Seq(stored_watermark(&replica_dir(rt, &name))?.unwrap_or(0)),
    };
    // Journals of older epochs are this node's own writes as primary (a replica's are removed
    // once it is resynced), unless it was a replica since or its copy is half-resynced.
    let own_old_journals = !matches!(g.role, Role::Replica { .. })
        && !replica_dir(rt, &name).join(RESYNC_MARKER).exists();
    stop_role(g).await;
    rt.service.remove_group(&name);
    lock(&rt.me.replicas).remove(&name);
    // The local files now take the primary's writes, with no undo: the replica history of
    // this site ends here.
    let hdir = history_dir(rt, &name);
    if hdir.exists() {
        std::fs::remove_dir_all(&hdir).map_err(|e| ReplicatorError::io("remove", &hdir, e))?;
    }
    let dir = journal_dir(rt, &name, epoch);
    let fresh = !dir.exists();
    if fresh && own_old_journals {
        // Staying primary into a new epoch (or restarting into one): continue the numbering
        // after the frames already journaled, so no seq is used twice, and make sure they are
        // all on the images (a crash may have come between journal and image). A replica that
        // lacks some of them is behind the new journal's start and is resynced by merkle diff.
        for e in journal_epochs(rt, &name)
            .into_iter()
            .filter(|e| *e < epoch.0)
        {
            let old = journal_dir(rt, &name, Epoch(e));
            let gid = tandem_core::ids::GroupId::from_name(&name);
            let j = tokio::task::spawn_blocking(move || {
                Journal::open(&old, gid, Epoch(e), crate::journal::DEFAULT_SEGMENT_BYTES)
            })
            .await
            .map_err(|e| ReplicatorError::Task(e.to_string()))??;
            let last = Seq(j.next_seq().0.saturating_sub(1));
            replay_frames(Arc::new(j), &resource_paths(rt, &g.cfg)).await?;
            if last > start {
                info!(group = %name, old_epoch = e, %last, was = %start, "numbering continues after the older epoch's journal");
                start = last;
            }
        }
    }
    Journal::init(&dir, epoch, start.next())?;
    let mut cfg = PipelineConfig::new(&name, &dir);
    cfg.epoch = epoch;
    cfg.journal_max = g.cfg.journal_max.bytes();
    cfg.sync_timeout = (!g.cfg.sync_timeout.is_zero()).then(|| g.cfg.sync_timeout.into());
    if !rt.coordinators.is_empty() {
        cfg.sync_consent = Some(Arc::new(CoordinatorConsent {
            group: name.clone(),
            node: rt.node.name.clone(),
            site: rt.node.site.clone(),
            coordinators: rt.coordinators.clone(),
            net: rt.me.net.clone(),
        }));
    }
    cfg.mode = match g.cfg.mode {
        tandem_core::config::Mode::Sync => Mode::Sync,
        tandem_core::config::Mode::Async => Mode::Async,
    };
    let pipeline = Arc::new(GroupPipeline::open(cfg).await?);
    if !fresh {
        // A restart: frames journaled before the crash may not have reached the image.
        replay_journal(&pipeline, &resource_paths(rt, &g.cfg)).await?;
    }
    // Journals of older epochs are history now.
    for e in journal_epochs(rt, &name) {
        if e < epoch.0 {
            let old = journal_dir(rt, &name, Epoch(e));
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    if let Some(addr) = peer_replicator(rt, replica_site) {
        lock(&rt.me.peers).insert(name.clone(), addr);
    }
    let shipper = peer_replicator(rt, replica_site).map(|addr| {
        let mut cfg = ShipConfig::new(&addr, &rt.node.name);
        cfg.net = rt.me.net.clone();
        cfg.max_bytes_per_sec = g.cfg.max_bandwidth.map(|b| b.bytes_per_sec);
        if !g.cfg.bandwidth_schedule.is_empty() {
            let group = g.cfg.clone();
            cfg.rate_now = Some(Arc::new(move || {
                group.bandwidth_at(tandem_core::config::TimeOfDay::of(chrono::Utc::now()))
            }));
        }
        pipeline.start_shipper(cfg)
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Scanned volumes: re-hash every interval, journal the changed blocks.
    for r in &g.cfg.resources {
        let ResourceKind::Volume {
            capture: Capture::Scan,
            scan_interval,
            block_size,
            ..
        } = &r.kind
        else {
            continue;
        };
        let Some(path) = rt.topo.resource_path(&g.cfg, r, &rt.node.site) else {
            continue;
        };
        let tree_file = crate::scan_capture::tree_path(&rt.data_dir, &name, &r.name);
        let src = crate::scan_capture::ScanSource::open(
            &r.name,
            &path,
            &tree_file,
            epoch,
            block_size.bytes() as u32,
            pipeline.clone(),
        )
        .await?;
        info!(resource = %r.name, path = %path.display(), interval = %scan_interval, "scanning the volume for changes");
        g.scans.push(src.clone());
        tokio::spawn(src.run((*scan_interval).into(), g.cell.clone(), stop_rx.clone()));
    }
    // SQLite resources: follow each database's WAL into the same pipeline.
    let names = sqlite_names(&g.cfg);
    if !names.is_empty() {
        lock(&g.cell.sqlite_asks).clear();
        for r in g.cfg.resources.iter().filter(|r| names.contains(&r.name)) {
            let Some(path) = rt.topo.resource_path(&g.cfg, r, &rt.node.site) else {
                continue;
            };
            let ask = Arc::new(crate::sqlite::SnapshotAsk::default());
            lock(&g.cell.sqlite_asks).insert(r.name.clone(), ask.clone());
            let (pipeline, stop, res) = (pipeline.clone(), stop_rx.clone(), r.name.clone());
            tokio::spawn(async move {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let (res2, path2) = (res.clone(), path.clone());
                let opened = tokio::task::spawn_blocking(move || {
                    crate::sqlite::SqliteSource::open(
                        &res2,
                        &path2,
                        crate::sqlite::SqliteOptions::default(),
                    )
                })
                .await;
                match opened {
                    Ok(Ok(src)) => {
                        info!(resource = %res, path = %path.display(), "following the SQLite WAL");
                        if let Err(e) = src.with_ask(ask).run(pipeline, stop).await {
                            warn!(resource = %res, "SQLite capture stopped: {e}");
                        }
                    }
                    Ok(Err(e)) => warn!(resource = %res, "cannot open SQLite database: {e}"),
                    Err(e) => warn!(resource = %res, "SQLite open task failed: {e}"),
                }
            });
        }
    }
    g.sources_stop = Some(stop_tx);
    g.cell
        .fenced
        .store(false, std::sync::atomic::Ordering::SeqCst);
    g.cell.set_pipeline(Some(pipeline.clone()));
    g.role = Role::Primary {
        epoch,
        pipeline,
        shipper,
        drained: None,
        draining: false,
    };
    Ok(())
}

/// Re-applies the journal's unacknowledged frames to the local images, in order (idempotent).
async fn replay_journal(p: &GroupPipeline, paths: &HashMap<String, PathBuf>) -> Result<()> {
    replay_frames(p.journal().clone(), paths).await
}

/// Writes every untrimmed frame of `journal` onto the local images, in order, and fdatasyncs
/// them. Idempotent: replaying a suffix of the write history onto an image that already
/// holds it changes nothing.
async fn replay_frames(journal: Arc<Journal>, paths: &HashMap<String, PathBuf>) -> Result<()> {
    let paths = paths.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::os::unix::fs::FileExt;
        let mut dec = Decoder::new()?;
        let mut files = HashMap::new();
        for (name, path) in &paths {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| ReplicatorError::io("open", path, e))?;
            files.insert(name.clone(), (f, path.clone()));
        }
        let mut from = journal.trimmed_through().next();
        let mut n = 0u64;
        loop {
            let batch = journal.frames_from(from, 8 << 20)?;
            if batch.is_empty() {
                break;
            }
            for (entry, bytes) in batch {
                let frame = dec.decode(&bytes)?;
                for c in &frame.changes {
                    if let Some((f, path)) = files.get(&c.resource) {
                        match c.kind {
                            tandem_core::frame::ChangeKind::Write => f
                                .write_all_at(&c.data, c.offset)
                                .map_err(|e| ReplicatorError::io("replay write", path, e))?,
                            tandem_core::frame::ChangeKind::Trim => {
                                let zero = vec![0u8; c.length.min(1 << 20) as usize];
                                let mut off = c.offset;
                                let end = c.offset + c.length;
                                while off < end {
                                    let len = (end - off).min(zero.len() as u64) as usize;
                                    f.write_all_at(&zero[..len], off)
                                        .map_err(|e| ReplicatorError::io("replay trim", path, e))?;
                                    off += len as u64;
                                }
                            }
                            _ => {}
                        }
                        n += 1;
                    }
                }
                from = entry.last_seq.next();
            }
        }
        for (f, path) in files.values() {
            f.sync_data()
                .map_err(|e| ReplicatorError::io("fdatasync", path, e))?;
        }
        if n > 0 {
            info!(changes = n, "replayed journal onto the local images");
        }
        Ok(())
    })
    .await
    .map_err(|e| ReplicatorError::Task(e.to_string()))?
}

async fn start_drain(rt: &Arc<NodeRt>, g: &mut GroupRt) {
    let Role::Primary {
        epoch,
        pipeline,
        drained,
        draining,
        ..
    } = &mut g.role
    else {
        return;
    };
    if *draining {
        return;
    }
    *draining = true;
    let _ = drained;
    info!(group = %g.cfg.name, "switchover: stopping intake and draining to the replica");
    // Stop intake: no new write is accepted, in-flight ones finish.
    g.cell
        .fenced
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (pipeline, epoch, group) = (pipeline.clone(), *epoch, g.cfg.name.clone());
    let rt2 = rt.clone();
    tokio::spawn(async move {
        let cell = {
            let groups = rt2.groups.lock().await;
            groups.get(&group).map(|g| g.cell.clone())
        };
        if let Some(cell) = &cell {
            // Wait out writes between journal and image.
            let _g = cell.inflight.write().await;
        }
        // Scanned volumes: one last pass, so what their writers wrote before the switchover
        // is on the replica too.
        let scans = {
            let groups = rt2.groups.lock().await;
            groups
                .get(&group)
                .map(|g| g.scans.clone())
                .unwrap_or_default()
        };
        for s in scans {
            if let Err(e) = s.pass().await {
                warn!(%group, "drain: last scan pass failed: {e}");
                return;
            }
        }
        let last = pipeline.progress().last_captured_seq;
        if let Err(e) = pipeline.wait_replica_durable(last).await {
            warn!(%group, "drain failed: {e}");
            return;
        }
        pipeline.fence("switchover: intake stopped, drained");
        {
            let mut groups = rt2.groups.lock().await;
            if let Some(g) = groups.get_mut(&group) {
                if let Role::Primary { drained, .. } = &mut g.role {
                    *drained = Some(last);
                }
            }
        }
        let cmd = serde_json::json!({
            "op": "release_lease", "at_ms": 0, "group": group, "node": rt2.node.name, "epoch": epoch.0,
        });
        for addr in &rt2.coordinators {
            if let Some(mut c) = connect(&rt2.me.net, addr).await {
                let r = c
                    .propose(ProposeRequest {
                        command: cmd.to_string(),
                        actor: rt2.node.name.clone(),
                    })
                    .await;
                match r {
                    Ok(_) => {
                        info!(%group, seq = last.0, "drained; lease released");
                        return;
                    }
                    Err(e) => warn!(%group, "release_lease via {addr}: {}", e.message()),
                }
            }
        }
    });
}

async fn become_replica(
    rt: &Arc<NodeRt>,
    g: &mut GroupRt,
    epoch: Epoch,
    primary_site: &str,
) -> Result<()> {
    let name = g.cfg.name.clone();
    info!(group = %name, %epoch, "becoming replica");
    // A clean hand-off (drained switchover) leaves this copy equal to the new primary's start.
    let clean = match &g.role {
        Role::Primary {
            drained: Some(seq), ..
        } => Some(*seq),
        _ => None,
    };
    let was_primary =
        matches!(g.role, Role::Primary { .. }) || !journal_epochs(rt, &name).is_empty();
    stop_role(g).await;
    g.cell
        .fenced
        .store(true, std::sync::atomic::Ordering::SeqCst);
    *lock(&g.cell.lease_deadline) = None;
    let rdir = replica_dir(rt, &name);
    if let Some(seq) = clean {
        let rg = Arc::new(open_replica(rt, &g.cfg)?);
        rg.set_fence(epoch)?;
        rg.reset_watermark(seq)?;
        register_replica(rt, g, epoch, rg);
        let _ = std::fs::remove_dir_all(rt.data_dir.join("journal").join(&name));
        return Ok(());
    }
    let existing = stored_watermark(&rdir)?;
    let why = if was_primary {
        "the old primary returns as replica"
    } else if rdir.join(RESYNC_MARKER).exists() {
        "a resync was interrupted"
    } else if existing.is_none_or(|w| w == 0) {
        "initial sync"
    } else {
        let rg = Arc::new(open_replica(rt, &g.cfg)?);
        rg.set_fence(epoch)?;
        register_replica(rt, g, epoch, rg);
        return Ok(());
    };
    start_resync(rt, g, epoch, primary_site, why)
}

/// Name of the marker file in the replica folder while a resync rewrites the files: a copy
/// left half-resynced by a crash is resynced again, never trusted.
const RESYNC_MARKER: &str = "RESYNCING";

/// Brings this copy of `g` to the primary's by merkle diff while the primary keeps writing,
/// then registers the replica to continue from the primary's seq at hashing time. Retries
/// until it succeeds or the role changes; progress goes to `g.resync`.
fn start_resync(
    rt: &Arc<NodeRt>,
    g: &mut GroupRt,
    epoch: Epoch,
    primary_site: &str,
    why: &str,
) -> Result<()> {
    let Some(addr) = peer_replicator(rt, primary_site) else {
        return Err(ReplicatorError::Task(format!(
            "no replicator at {primary_site}"
        )));
    };
    let rdir = replica_dir(rt, &g.cfg.name);
    std::fs::create_dir_all(&rdir).map_err(|e| ReplicatorError::io("create dir", &rdir, e))?;
    let now_ms = SystemClock::new().now_ms().max(0) as u64;
    crate::meta::write_meta(&rdir.join(RESYNC_MARKER), *b"RSYN", &[now_ms])?;
    info!(group = %g.cfg.name, %why, "resync starting");
    g.role = Role::Replica {
        epoch,
        rg: None,
        resyncing: true,
    };
    let started = Instant::now();
    let progress = g.resync.clone();
    progress.send_replace(ResyncProgress {
        group: g.cfg.name.clone(),
        phase: "hashing".into(),
        ..ResyncProgress::default()
    });
    let rt2 = rt.clone();
    let cfg = g.cfg.clone();
    // A copy with a journal was a primary: what its volumes hold that the new primary does
    // not (the unreplicated tail) is kept in quarantine before the resync overwrites it.
    let keep_tail = (!journal_epochs(rt, &cfg.name).is_empty()).then_some(epoch);
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        let mut quarantined = sqlite_names(&cfg).is_empty();
        let mut kept: Vec<String> = Vec::new();
        loop {
            if !quarantined {
                let (rt3, cfg3) = (rt2.clone(), cfg.clone());
                let q = tokio::task::spawn_blocking(move || quarantine_sqlite(&rt3, &cfg3, epoch))
                    .await
                    .map_err(|e| ReplicatorError::Task(e.to_string()))
                    .and_then(|r| r);
                match q {
                    Ok(paths) => {
                        quarantined = true;
                        kept.extend(
                            paths
                                .iter()
                                .map(|p| format!("database copy {}", p.display())),
                        );
                    }
                    Err(e) => {
                        // Nothing is overwritten before its copy is kept.
                        warn!(group = %cfg.name, "quarantining the SQLite databases before the resync (will retry): {e}");
                        progress.send_modify(|p| p.error = format!("quarantine: {e}"));
                        if let Some(g) = rt2.groups.lock().await.get_mut(&cfg.name) {
                            g.last_error = format!("resync: quarantine: {e}");
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(3));
                        continue;
                    }
                }
            }
            match resync_from(&rt2, &cfg, &addr, &progress, started, keep_tail).await {
                Ok((seq, from, blocks)) => {
                    kept.extend(blocks);
                    let opened = open_replica(&rt2, &cfg).and_then(|rg| {
                        rg.set_fence(epoch)?;
                        rg.set_sqlite_from(&from)?;
                        rg.reset_watermark(seq)?;
                        Ok(rg)
                    });
                    match opened {
                        Ok(rg) => {
                            let mut groups = rt2.groups.lock().await;
                            if let Some(g) = groups.get_mut(&cfg.name) {
                                if matches!(
                                    g.role,
                                    Role::Replica {
                                        resyncing: true,
                                        ..
                                    }
                                ) {
                                    let _ = std::fs::remove_dir_all(
                                        rt2.data_dir.join("journal").join(&cfg.name),
                                    );
                                    let marker = replica_dir(&rt2, &cfg.name).join(RESYNC_MARKER);
                                    let removed = std::fs::remove_file(&marker)
                                        .map_err(|e| ReplicatorError::io("remove", &marker, e))
                                        .and_then(|()| {
                                            crate::meta::sync_dir(&replica_dir(&rt2, &cfg.name))
                                        });
                                    if let Err(e) = removed {
                                        warn!(group = %cfg.name, "removing {}: {e}", marker.display());
                                    }
                                    register_replica(&rt2, g, epoch, Arc::new(rg));
                                    g.last_error.clear();
                                    g.quarantined = if kept.is_empty() {
                                        String::new()
                                    } else {
                                        format!(
                                            "quarantined the old copy's overwritten data: {}",
                                            kept.join("; ")
                                        )
                                    };
                                    progress.send_modify(|p| {
                                        p.phase = "done".into();
                                        p.seq = seq.0;
                                        p.error.clear();
                                        p.elapsed_ms = started.elapsed().as_millis() as u64;
                                    });
                                }
                            }
                            return;
                        }
                        Err(e) => warn!(group = %cfg.name, "opening replica after resync: {e}"),
                    }
                }
                Err(e) => {
                    warn!(group = %cfg.name, "resync from {addr} failed (will retry): {e}");
                    progress.send_modify(|p| p.error = e.to_string());
                    if let Some(g) = rt2.groups.lock().await.get_mut(&cfg.name) {
                        if !matches!(
                            g.role,
                            Role::Replica {
                                resyncing: true,
                                ..
                            }
                        ) {
                            progress.send_modify(|p| p.phase = "failed".into());
                            return;
                        }
                        g.last_error = format!("resync: {e}");
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    });
    Ok(())
}

fn register_replica(rt: &NodeRt, g: &mut GroupRt, epoch: Epoch, rg: Arc<ReplicaGroup>) {
    rt.service.add_group(rg.clone());
    lock(&rt.me.replicas).insert(g.cfg.name.clone(), rg.clone());
    g.role = Role::Replica {
        epoch,
        rg: Some(rg),
        resyncing: false,
    };
}

/// Resyncs every volume of `g` from the primary replicator at `addr` and has the primary
/// journal a fresh snapshot of every SQLite database; returns the seq the copy continues from
/// (the smallest of the primary's watermarks taken before each hash, and of the seqs just
/// before each snapshot) and, per database, the seq its snapshot starts at.
async fn resync_from(
    rt: &NodeRt,
    g: &Group,
    addr: &str,
    progress: &watch::Sender<ResyncProgress>,
    started: Instant,
    keep_tail: Option<Epoch>,
) -> Result<(Seq, HashMap<String, Seq>, Vec<String>)> {
    let mut kept = Vec::new();
    let net = &rt.me.net;
    let ep = net
        .endpoint(addr)
        .map_err(|e| ReplicatorError::Task(e.to_string()))?
        .connect_timeout(Duration::from_secs(1));
    let ch = net
        .connect(ep)
        .await
        .map_err(|e| ReplicatorError::Transport {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    // Blocks and leaves cross the WAN zstd-compressed (the server compresses when asked).
    let mut client = tandem_core::grpc_limits!(ReplicationClient::new(ch))
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd);
    let mut seq: Option<u64> = None;
    for r in &g.resources {
        let ResourceKind::Volume { block_size, .. } = &r.kind else {
            continue;
        };
        let Some(path) = rt.topo.resource_path(g, r, &rt.node.site) else {
            continue;
        };
        let (tx, name) = (progress.clone(), r.name.clone());
        let opts = ResyncOptions {
            live_source: true,
            // A live source's roots may differ at the end anyway (the journal replay after
            // the resync brings the copy up to date), so read back only the written blocks.
            full_rehash: false,
            progress: Some(Arc::new(move |t: resync::ResyncTick| {
                tx.send_modify(|p| {
                    p.phase = t.phase.into();
                    p.resource = name.clone();
                    p.bytes_done = t.bytes_done;
                    p.bytes_total = t.bytes_total;
                    p.blocks_differing = t.blocks_differing;
                    p.blocks_copied = t.blocks_copied;
                    p.wire_bytes = t.wire_bytes;
                    p.elapsed_ms = started.elapsed().as_millis() as u64;
                })
            })),
            quarantine: keep_tail.map(|e| {
                let ms = SystemClock::new().now_ms().max(0);
                rt.data_dir
                    .join("quarantine")
                    .join(&g.name)
                    .join(format!("{}-epoch{}-{ms}.blocks", r.name, e.0))
            }),
            ..ResyncOptions::default()
        };
        let report = resync::resync(
            &mut client,
            &g.name,
            &r.name,
            &path,
            block_size.bytes() as u32,
            opts,
        )
        .await
        .map_err(|e| ReplicatorError::Transport {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        info!(
            group = %g.name, resource = %r.name,
            differing_blocks = report.blocks_differing, total_blocks = report.blocks_total,
            wire_bytes = report.bytes_sent_over_wire, ms = report.duration.as_millis() as u64,
            from_seq = report.source_watermark, "resynced from the primary"
        );
        if let Some(q) = &report.quarantine {
            kept.push(format!(
                "{} blocks of {} in {}",
                report.quarantined_blocks,
                r.name,
                q.display()
            ));
            warn!(group = %g.name, resource = %r.name, blocks = report.quarantined_blocks, copy = %q.display(),
                "quarantined the old content of the blocks this resync overwrote: what this copy held that the primary does not is kept there, not merged");
        }
        seq = Some(seq.map_or(report.source_watermark, |s| s.min(report.source_watermark)));
    }
    let only_postgres = g
        .resources
        .iter()
        .all(|r| matches!(r.kind, ResourceKind::Postgres { .. }));
    if seq.is_none() && only_postgres {
        // Nothing to diff: an archive folder needs no resync (a standby is rebuilt from a base
        // backup). Continue from what the primary's journal still holds, so a returning old
        // primary does not ask for frames the journal has trimmed.
        let r = client
            .merkle(MerkleRequest {
                group: g.name.clone(),
                resource: String::new(),
                block_size: 0,
                barrier: false,
                ..Default::default()
            })
            .await
            .map_err(|s| ReplicatorError::Transport {
                addr: addr.to_owned(),
                reason: s.message().to_owned(),
            })?;
        seq = Some(r.into_inner().watermark);
    }
    // SQLite databases: the primary journals a fresh full snapshot of each; the copy applies
    // each database's changes only from its snapshot on (`ReplicaGroup::set_sqlite_from`).
    let names = sqlite_names(g);
    let mut from = HashMap::new();
    if !names.is_empty() {
        progress.send_modify(|p| {
            p.phase = "snapshot".into();
            p.elapsed_ms = started.elapsed().as_millis() as u64;
        });
        let r = client
            .merkle(MerkleRequest {
                group: g.name.clone(),
                resource: String::new(),
                sqlite_snapshots: true,
                ..Default::default()
            })
            .await
            .map_err(|s| ReplicatorError::Transport {
                addr: addr.to_owned(),
                reason: s.message().to_owned(),
            })?
            .into_inner();
        for name in &names {
            let first =
                r.snapshot_from
                    .get(name)
                    .copied()
                    .ok_or_else(|| ReplicatorError::Transport {
                        addr: addr.to_owned(),
                        reason: format!(
                            "the primary took no snapshot of the SQLite resource {name:?}"
                        ),
                    })?;
            let before = first.saturating_sub(1);
            seq = Some(seq.map_or(before, |s| s.min(before)));
            from.insert(name.clone(), Seq(first));
        }
        info!(group = %g.name, ?from, "SQLite databases follow the primary's fresh snapshots");
    }
    Ok((Seq(seq.unwrap_or(0)), from, kept))
}

/// Before a resync overwrites them: copies each SQLite database of the group at this site
/// (its committed WAL included) into `quarantine/GROUP/` under the data folder, once per
/// epoch, then removes its `-wal` and `-shm` files. The copy keeps what a returning old
/// primary committed that never reached the replica, for an operator to inspect or merge;
/// the stale WAL must go, or SQLite would lay its frames over the resynced pages.
fn quarantine_sqlite(rt: &NodeRt, g: &Group, epoch: Epoch) -> Result<Vec<PathBuf>> {
    let names = sqlite_names(g);
    let qdir = rt.data_dir.join("quarantine").join(&g.name);
    let mut kept = Vec::new();
    for (name, path) in replica_paths(rt, g) {
        if !names.contains(&name) {
            continue;
        }
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        let shm = PathBuf::from(shm);
        let prefix = format!("{name}-epoch{}-", epoch.0);
        let done = std::fs::read_dir(&qdir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        });
        if len > 0 && !done {
            std::fs::create_dir_all(&qdir)
                .map_err(|e| ReplicatorError::io("create dir", &qdir, e))?;
            let now_ms = SystemClock::new().now_ms().max(0);
            let out = qdir.join(format!("{prefix}{now_ms}.db"));
            // A consistent copy through SQLite (WAL content included); a raw copy of the
            // files when SQLite cannot read it.
            let vacuumed = rusqlite::Connection::open(&path).and_then(|c| {
                c.execute("VACUUM INTO ?1", [out.display().to_string()])
                    .map(|_| ())
            });
            if let Err(e) = vacuumed {
                warn!(group = %g.name, resource = %name, "VACUUM INTO failed ({e}): copying the files as they are");
                let _ = std::fs::remove_file(&out);
                std::fs::copy(&path, &out).map_err(|e| ReplicatorError::io("copy", &path, e))?;
                if wal.exists() {
                    let mut w = out.as_os_str().to_owned();
                    w.push("-wal");
                    std::fs::copy(&wal, PathBuf::from(w))
                        .map_err(|e| ReplicatorError::io("copy", &wal, e))?;
                }
            }
            crate::meta::sync_dir(&qdir)?;
            warn!(group = %g.name, resource = %name, copy = %out.display(),
                "quarantined this site's copy of the database before resyncing it: what it holds that the primary does not is kept there, not merged");
            kept.push(out);
        }
        for f in [&wal, &shm] {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ReplicatorError::io("remove", f, e)),
            }
        }
    }
    Ok(kept)
}

/// Serves `GET /metrics` on the node's `metrics_listen` address (if set) until `stop`. Gauges
/// and the pipeline's running totals are read from the role cells and replica groups at every
/// scrape; NBD writes and apply latency are counted where they happen (nbd, receive).
async fn serve_metrics(rt: &Arc<NodeRt>, stop: watch::Receiver<bool>) -> Result<()> {
    use tandem_core::metrics::{Family, Kind};
    let Some(addr) = rt.node.metrics_listen.clone() else {
        return Ok(());
    };
    let shared = rt.me.clone();
    let journal_max: HashMap<String, u64> = rt
        .topo
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.journal_max.bytes()))
        .collect();
    let clock = SystemClock::new();
    let registry = tandem_core::metrics::global().clone();
    registry.register_collector(move || {
        let fam = |n: &str, h: &str, k: Kind| Family::new(n, h, k);
        let mut bytes = fam(
            "tandem_replication_bytes_total",
            "Bytes captured (kind=raw) and shipped on the wire (kind=wire, resends included) by this primary since it took the role.",
            Kind::Counter,
        );
        let mut frames = fam(
            "tandem_replication_frames_total",
            "Frames shipped to the replica by this primary since it took the role (resends included).",
            Kind::Counter,
        );
        let mut ratio = fam(
            "tandem_compression_ratio",
            "Raw bytes captured over bytes shipped on the wire.",
            Kind::Gauge,
        );
        let mut journal = fam(
            "tandem_journal_bytes",
            "Encoded bytes in the journal not yet acknowledged by the replica.",
            Kind::Gauge,
        );
        let mut jmax = fam(
            "tandem_journal_max_bytes",
            "Journal size limit (journal_max); writes fail with ENOSPC beyond it.",
            Kind::Gauge,
        );
        let mut rpo = fam(
            "tandem_replication_rpo_seconds",
            "RPO as this primary sees it: age of the oldest change the replica has not made durable.",
            Kind::Gauge,
        );
        let mut lease = fam(
            "tandem_lease_remaining_seconds",
            "Seconds of write lease left on this replicator (0: not primary or lease lost).",
            Kind::Gauge,
        );
        let mut writable = fam(
            "tandem_replicator_writable",
            "1 when this replicator accepts writes for the group (primary, lease held, not fenced).",
            Kind::Gauge,
        );
        let mut watermark = fam(
            "tandem_replica_watermark",
            "Highest seq durable and applied on this replica.",
            Kind::Gauge,
        );
        let now = Instant::now();
        let cells: Vec<(String, Arc<RoleCell>)> = lock(&shared.cells)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (group, cell) in cells {
            let l = [("group", group.as_str())];
            let left = lock(&cell.lease_deadline)
                .map(|d| d.saturating_duration_since(now).as_secs_f64())
                .unwrap_or(0.0);
            lease.push(&l, left);
            writable.push(&l, if cell.writable() { 1.0 } else { 0.0 });
            if let Some(max) = journal_max.get(&group) {
                jmax.push(&l, *max as f64);
            }
            if let Some(p) = cell.pipeline() {
                let pr = p.progress();
                bytes.push(&[("group", &group), ("kind", "raw")], pr.bytes_raw_total as f64);
                bytes.push(
                    &[("group", &group), ("kind", "wire")],
                    pr.bytes_shipped_total as f64,
                );
                frames.push(&l, pr.frames_shipped as f64);
                if pr.bytes_shipped_total > 0 {
                    ratio.push(&l, pr.bytes_raw_total as f64 / pr.bytes_shipped_total as f64);
                }
                journal.push(&l, p.journal().pending_bytes() as f64);
                rpo.push(&l, pr.rpo_ms(clock.now_ms()) as f64 / 1000.0);
            }
        }
        for (group, rg) in lock(&shared.replicas).iter() {
            watermark.push(&[("group", group)], rg.watermark().0 as f64);
        }
        vec![
            bytes, frames, ratio, journal, jmax, rpo, lease, writable, watermark,
        ]
    });
    let (bound, _task) = tandem_core::metrics::start(&addr, registry, stop)
        .await
        .map_err(|e| ReplicatorError::Task(e.to_string()))?;
    info!(%bound, "metrics listening");
    Ok(())
}
