//! The node's block source for the Replication service: merkle (plain and barrier), block
//! reads, the Resync RPC, drill snapshots, checkpoints, point-in-time recovery and PostgreSQL
//! archive pushes, answered from this node's local copies. Touches files and the group
//! pipelines; the Resync RPC changes a replica group's role.

use super::lease::RoleCell;
use super::lock::lock;
use super::resync::start_resync;
use super::runtime::{NodeRtShared, Resolver, Role};
use crate::apply::ReplicaGroup;
use crate::error::ReplicatorError;
use crate::receive::BlockSource;
use crate::resync::BlockServer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::config::ResourceKind;
use tandem_core::frame::Change;
use tandem_core::ids::Seq;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{ArchiveWalReply, ArchiveWalRequest};
use tandem_core::proto::{
    CheckpointReply, CheckpointRequest, CheckpointsReply, CheckpointsRequest, MerkleReply,
    MerkleRequest, ReadBlocksReply, ReadBlocksRequest, RecoverReply, RecoverRequest,
    RecoveredResource, RecoveryPoint, ResyncProgress, ResyncRequest, SnapshotReply,
    SnapshotRequest,
};
use tokio::sync::watch;
use tonic::Status;
use tracing::info;

/// Serves Merkle and ReadBlocks from this node's local copies, filling in the watermark.
pub(super) struct NodeBlocks {
    pub(super) shared: Arc<NodeRtShared>,
    /// `DATA_DIR/snapshots`: drill copies live in `GROUP/NAME/` below it.
    pub(super) snapshots: PathBuf,
    pub(super) server: BlockServer<Resolver>,
}

impl NodeBlocks {
    /// Both copies hashed at one seq: intake is held (writes wait) while the replica catches up
    /// and both sides hash.
    pub(super) async fn merkle_barrier(
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

pub(super) fn wire_point(p: &crate::history::Point) -> RecoveryPoint {
    RecoveryPoint {
        seq: p.seq.0,
        captured_ms: p.captured_ms,
        kind: p.kind.as_str().into(),
        tag: p.tag.clone(),
    }
}

impl NodeBlocks {
    pub(super) fn replica(&self, group: &str) -> std::result::Result<Arc<ReplicaGroup>, Status> {
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
    pub(super) async fn mark_checkpoint(
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
    pub(super) fn snapshot_dir(
        &self,
        req: &SnapshotRequest,
    ) -> std::result::Result<PathBuf, Status> {
        crate::validate::check_copy_name(&req.group, &req.name)
            .map_err(Status::invalid_argument)?;
        Ok(self.snapshots.join(&req.group).join(&req.name))
    }
}
