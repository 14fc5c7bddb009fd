//! The copies the node makes and the marks it keeps, for the Replication service: drill
//! snapshots (taken, deleted), checkpoints (marked at the primary, listed at the replica) and
//! point-in-time recovered copies. Checks names and residency before anything is written;
//! touches the snapshot and recovery folders and the group pipelines.

use super::blocks::NodeBlocks;
use super::lock::lock;
use crate::apply::ReplicaGroup;
use crate::error::ReplicatorError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::frame::Change;
use tandem_core::proto::{
    CheckpointReply, CheckpointRequest, CheckpointsReply, CheckpointsRequest, RecoverReply,
    RecoverRequest, RecoveredResource, RecoveryPoint, SnapshotReply, SnapshotRequest,
};
use tonic::Status;
use tracing::info;

impl NodeBlocks {
    /// `Snapshot`: copies the replica's files (at one watermark) to `DATA_DIR/snapshots/GROUP/NAME`.
    pub(super) async fn take_snapshot(
        &self,
        req: SnapshotRequest,
    ) -> std::result::Result<SnapshotReply, Status> {
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

    /// `Checkpoints`: the recovery points the replica's history holds.
    pub(super) async fn list_checkpoints(
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

    /// `Recover`: writes a copy of the replica rewound to a recovery point.
    pub(super) async fn recover_copy(
        &self,
        req: RecoverRequest,
    ) -> std::result::Result<RecoverReply, Status> {
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
            let out = self.recovered.join(&req.group).join(&req.name);
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

    /// `DeleteSnapshot`: removes a drill copy (gone already is fine).
    pub(super) async fn remove_snapshot(
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

/// A recovery point as the Replication service sends it.
pub(super) fn wire_point(p: &crate::history::Point) -> RecoveryPoint {
    RecoveryPoint {
        seq: p.seq.0,
        captured_ms: p.captured_ms,
        kind: p.kind.as_str().into(),
        tag: p.tag.clone(),
    }
}

impl NodeBlocks {
    /// The open replica group of `group`; refused when this node is not its replica.
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
