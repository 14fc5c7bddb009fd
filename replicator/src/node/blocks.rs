//! The node's block source for the Replication service: merkle (plain and barrier), block
//! reads and the Resync RPC, answered from this node's local copies; the copies it writes
//! (snapshots, recovery, checkpoints) are in `copies`, archive pushes in `archive`. Touches
//! the local files and the group pipelines; the Resync RPC changes a replica group's role.

use super::lease::RoleCell;
use super::lock::lock;
use super::resync::start_resync;
use super::runtime::{NodeRtShared, Resolver, RoleState};
use super::transitions::retire_replica;
use crate::receive::BlockSource;
use crate::resync::BlockServer;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tandem_core::config::ResourceKind;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{ArchiveWalReply, ArchiveWalRequest};
use tandem_core::proto::{
    CheckpointReply, CheckpointRequest, CheckpointsReply, CheckpointsRequest, MerkleReply,
    MerkleRequest, ReadBlocksReply, ReadBlocksRequest, RecoverReply, RecoverRequest,
    ResyncProgress, ResyncRequest, SnapshotReply, SnapshotRequest,
};
use tokio::sync::watch;
use tonic::Status;
use tracing::info;

/// Serves Merkle and ReadBlocks from this node's local copies, filling in the watermark.
pub(super) struct NodeBlocks {
    pub(super) shared: Arc<NodeRtShared>,
    /// `DATA_DIR/snapshots`: drill copies live in `GROUP/NAME/` below it.
    pub(super) snapshots: PathBuf,
    /// The node's recover root (`recover_root`, default `DATA_DIR/recovered`): named
    /// point-in-time copies live in `GROUP/NAME/` below it, and an explicit `out_dir` must
    /// lie inside it.
    pub(super) recovered: PathBuf,
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
            RoleState::Replica {
                resyncing: true, ..
            } => Ok(g.resync.subscribe()),
            RoleState::Replica {
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
                retire_replica(rg)
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
        self.take_snapshot(req).await
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
        self.list_checkpoints(req).await
    }

    async fn recover(&self, req: RecoverRequest) -> std::result::Result<RecoverReply, Status> {
        self.recover_copy(req).await
    }

    async fn delete_snapshot(
        &self,
        req: SnapshotRequest,
    ) -> std::result::Result<SnapshotReply, Status> {
        self.remove_snapshot(req).await
    }

    async fn archive_wal(
        &self,
        req: ArchiveWalRequest,
    ) -> std::result::Result<ArchiveWalReply, Status> {
        self.push_wal(req).await
    }
}
