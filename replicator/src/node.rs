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
use tandem_core::config::{Group, Node, NodeRole, ResourceKind, Topology};
use tandem_core::frame::{Change, Decoder};
use tandem_core::ids::{Epoch, Seq};
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{
    GroupLease, GroupProgress, HeartbeatRequest, MerkleReply, MerkleRequest, ProposeRequest,
    ReadBlocksReply, ReadBlocksRequest, SnapshotReply, SnapshotRequest,
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

    fn writable(&self) -> bool {
        !self.fenced.load(std::sync::atomic::Ordering::SeqCst)
            && self.lease_valid()
            && self.pipeline().is_some()
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

impl GroupVolume {
    async fn capture(&self, change: Change) -> std::result::Result<(), VolumeError> {
        if !self.role.writable() {
            return Err(refused(
                &self.resource,
                "not writable here (not primary, or the lease is not held)",
            ));
        }
        let p = self
            .role
            .pipeline()
            .ok_or_else(|| refused(&self.resource, "no pipeline"))?;
        p.submit(vec![change])
            .await
            .map(|_| ())
            .map_err(|e| backend_err(&self.resource, e))
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
        let _g = self.role.inflight.read().await;
        let end = offset.saturating_add(data.len() as u64);
        let _r = self.role.ranges.lock(&self.resource, offset, end).await;
        let change = Change::write(&self.resource, offset, data.clone(), self.clock.now_ms());
        self.capture(change).await?;
        self.file.write(offset, data, fua).await
    }

    async fn trim(&self, offset: u64, len: u32) -> std::result::Result<(), VolumeError> {
        let _g = self.role.inflight.read().await;
        let _r = self
            .role
            .ranges
            .lock(
                &self.resource,
                offset,
                offset.saturating_add(u64::from(len)),
            )
            .await;
        let change = Change::trim(&self.resource, offset, u64::from(len), self.clock.now_ms());
        self.capture(change).await?;
        self.file.trim(offset, len).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> std::result::Result<(), VolumeError> {
        let _g = self.role.inflight.read().await;
        let _r = self
            .role
            .ranges
            .lock(
                &self.resource,
                offset,
                offset.saturating_add(u64::from(len)),
            )
            .await;
        let change = Change::trim(&self.resource, offset, u64::from(len), self.clock.now_ms());
        self.capture(change).await?;
        self.file.write_zeroes(offset, len, fua).await
    }

    async fn flush(&self) -> std::result::Result<(), VolumeError> {
        if self.role.writable() {
            let _g = self.role.inflight.read().await;
            self.capture(Change::barrier(&self.resource, self.clock.now_ms()))
                .await?;
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
    /// Stops the SQLite capture sources of this group (primary only).
    sqlite_stop: Option<watch::Sender<bool>>,
    cell: Arc<RoleCell>,
    last_shipped: u64,
    last_tick: Instant,
    throughput: f64,
    last_error: String,
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
        let ch = tonic::transport::Endpoint::from_shared(peer.clone())
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("replica {peer}: {e}")))?;
        let mut client = ReplicationClient::new(ch)
            .max_decoding_message_size(crate::resync::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::resync::MAX_MESSAGE_BYTES);
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

    async fn snapshot(&self, req: SnapshotRequest) -> std::result::Result<SnapshotReply, Status> {
        let dir = self.snapshot_dir(&req)?;
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
}

impl NodeBlocks {
    /// `DATA_DIR/snapshots/GROUP/NAME`, refusing names that could leave that folder.
    fn snapshot_dir(&self, req: &SnapshotRequest) -> std::result::Result<PathBuf, Status> {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok(&req.group) || !ok(&req.name) {
            return Err(Status::invalid_argument(format!(
                "bad snapshot group {:?} or name {:?}: letters, digits, '-', '_', '.'",
                req.group, req.name
            )));
        }
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

    // Every volume of every group this site takes part in is exported over NBD; an export is
    // writable only while this site is primary with a live lease.
    let mut exports = ExportMap::new();
    let mut groups = BTreeMap::new();
    let mut paths = HashMap::new();
    let mut cells = HashMap::new();
    for g in topo
        .groups
        .iter()
        .filter(|g| g.primary == site || g.replica == site)
    {
        let cell = Arc::new(RoleCell::default());
        for r in &g.resources {
            if let ResourceKind::Volume { size, .. } = &r.kind {
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
                exports
                    .insert(&r.name, Arc::new(vol))
                    .map_err(|e| ReplicatorError::Task(format!("export {}: {e}", r.name)))?;
                paths.insert((g.name.clone(), r.name.clone()), path);
            }
        }
        cells.insert(g.name.clone(), cell.clone());
        groups.insert(
            g.name.clone(),
            GroupRt {
                cfg: g.clone(),
                role: Role::Unknown,
                sqlite_stop: None,
                cell,
                last_shipped: 0,
                last_tick: Instant::now(),
                throughput: 0.0,
                last_error: String::new(),
            },
        );
    }
    let shared = Arc::new(NodeRtShared {
        cells: Mutex::new(cells),
        replicas: Mutex::new(HashMap::new()),
        paths,
        peers: Mutex::new(HashMap::new()),
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
    let service = ReplicationService::new().with_block_source(Arc::new(blocks));
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
    if let Some(stop) = g.sqlite_stop.take() {
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
                client = connect(addr).await;
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

async fn connect(addr: &str) -> Option<CoordinatorClient<Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2));
    ep.connect().await.ok().map(CoordinatorClient::new)
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
                })
            }
            Role::Replica {
                epoch,
                rg,
                resyncing,
            } => Some(GroupProgress {
                group: name.clone(),
                role: "replica".into(),
                epoch: epoch.0,
                durable_seq: rg.as_ref().map(|r| r.watermark().0).unwrap_or(0),
                state: if *resyncing {
                    "resyncing".into()
                } else {
                    "in-sync".into()
                },
                reason: g.last_error.clone(),
                ..Default::default()
            }),
        };
        out.extend(p);
    }
    HeartbeatRequest {
        node: rt.node.name.clone(),
        site: rt.node.site.clone(),
        groups: out,
    }
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
    ReplicaGroup::open_with_sqlite(&g.name, &replica_dir(rt, &g.name), paths, &sqlite_names(g))
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
    let start = match &g.role {
        Role::Replica { rg: Some(rg), .. } => rg.watermark(),
        _ => Seq(stored_watermark(&replica_dir(rt, &name))?.unwrap_or(0)),
    };
    stop_role(g).await;
    rt.service.remove_group(&name);
    lock(&rt.me.replicas).remove(&name);
    let dir = journal_dir(rt, &name, epoch);
    let fresh = !dir.exists();
    Journal::init(&dir, epoch, start.next())?;
    let mut cfg = PipelineConfig::new(&name, &dir);
    cfg.epoch = epoch;
    cfg.journal_max = g.cfg.journal_max.bytes();
    cfg.sync_timeout = (!g.cfg.sync_timeout.is_zero()).then(|| g.cfg.sync_timeout.into());
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
        cfg.max_bytes_per_sec = g.cfg.max_bandwidth.map(|b| b.bytes_per_sec);
        pipeline.start_shipper(cfg)
    });
    // SQLite resources: follow each database's WAL into the same pipeline.
    let names = sqlite_names(&g.cfg);
    if !names.is_empty() {
        let (stop_tx, stop_rx) = watch::channel(false);
        for r in g.cfg.resources.iter().filter(|r| names.contains(&r.name)) {
            let Some(path) = rt.topo.resource_path(&g.cfg, r, &rt.node.site) else {
                continue;
            };
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
                        if let Err(e) = src.run(pipeline, stop).await {
                            warn!(resource = %res, "SQLite capture stopped: {e}");
                        }
                    }
                    Ok(Err(e)) => warn!(resource = %res, "cannot open SQLite database: {e}"),
                    Err(e) => warn!(resource = %res, "SQLite open task failed: {e}"),
                }
            });
        }
        g.sqlite_stop = Some(stop_tx);
    }
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
    let journal = p.journal().clone();
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
            if let Some(mut c) = connect(addr).await {
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
    let needs_resync = was_primary || existing.is_none_or(|w| w == 0);
    if !needs_resync {
        let rg = Arc::new(open_replica(rt, &g.cfg)?);
        rg.set_fence(epoch)?;
        register_replica(rt, g, epoch, rg);
        return Ok(());
    }
    // Bring this copy to the primary's by merkle diff while the primary keeps writing, then
    // continue from the primary's seq at the time it hashed.
    g.role = Role::Replica {
        epoch,
        rg: None,
        resyncing: true,
    };
    let Some(addr) = peer_replicator(rt, primary_site) else {
        return Err(ReplicatorError::Task(format!(
            "no replicator at {primary_site}"
        )));
    };
    let rt2 = rt.clone();
    let cfg = g.cfg.clone();
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(200);
        loop {
            match resync_from(&rt2, &cfg, &addr).await {
                Ok(seq) => {
                    let opened = open_replica(&rt2, &cfg).and_then(|rg| {
                        rg.set_fence(epoch)?;
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
                                    register_replica(&rt2, g, epoch, Arc::new(rg));
                                    g.last_error.clear();
                                }
                            }
                            return;
                        }
                        Err(e) => warn!(group = %cfg.name, "opening replica after resync: {e}"),
                    }
                }
                Err(e) => {
                    warn!(group = %cfg.name, "resync from {addr} failed (will retry): {e}");
                    if let Some(g) = rt2.groups.lock().await.get_mut(&cfg.name) {
                        if !matches!(
                            g.role,
                            Role::Replica {
                                resyncing: true,
                                ..
                            }
                        ) {
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

/// Resyncs every volume of `g` from the primary replicator at `addr`; returns the seq the copy
/// now reflects (the smallest of the primary's watermarks, taken before each hash).
async fn resync_from(rt: &NodeRt, g: &Group, addr: &str) -> Result<Seq> {
    let ep = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .map_err(|e| ReplicatorError::Task(e.to_string()))?
        .connect_timeout(Duration::from_secs(1));
    let ch = ep.connect().await.map_err(|e| ReplicatorError::Transport {
        addr: addr.to_owned(),
        reason: e.to_string(),
    })?;
    let mut client = ReplicationClient::new(ch);
    let mut seq: Option<u64> = None;
    for r in &g.resources {
        let ResourceKind::Volume { block_size, .. } = &r.kind else {
            continue;
        };
        let Some(path) = rt.topo.resource_path(g, r, &rt.node.site) else {
            continue;
        };
        let opts = ResyncOptions {
            live_source: true,
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
        seq = Some(seq.map_or(report.source_watermark, |s| s.min(report.source_watermark)));
    }
    Ok(Seq(seq.unwrap_or(0)))
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
