//! [`BlockSource`]: what the service's non-stream RPCs (Merkle, ReadBlocks, snapshots, PITR,
//! resync, WAL archive) are served from; the node implements it over its local copies.

use tandem_core::proto::{
    ArchiveWalReply, ArchiveWalRequest, CheckpointReply, CheckpointRequest, CheckpointsReply,
    CheckpointsRequest, MerkleReply, MerkleRequest, ReadBlocksReply, ReadBlocksRequest,
    RecoverReply, RecoverRequest, ResyncProgress, ResyncRequest, SnapshotReply, SnapshotRequest,
};
use tokio::sync::watch;
use tonic::Status;

/// What the Merkle and ReadBlocks RPCs are served from (provided by the merkle/resync module).
#[tonic::async_trait]
pub trait BlockSource: Send + Sync + 'static {
    /// Answers a Merkle summary request.
    async fn merkle(&self, req: MerkleRequest) -> Result<MerkleReply, Status>;
    /// Answers a ReadBlocks request.
    async fn read_blocks(&self, req: ReadBlocksRequest) -> Result<ReadBlocksReply, Status>;
    /// Answers a Snapshot request (a point-in-time copy of a replica group's volumes).
    async fn snapshot(&self, _req: SnapshotRequest) -> Result<SnapshotReply, Status> {
        Err(Status::unimplemented("snapshot is not served here"))
    }
    /// Answers a DeleteSnapshot request.
    async fn delete_snapshot(&self, _req: SnapshotRequest) -> Result<SnapshotReply, Status> {
        Err(Status::unimplemented("delete_snapshot is not served here"))
    }
    /// Answers a Checkpoint request (the primary marks a tagged checkpoint in the stream).
    async fn checkpoint(&self, _req: CheckpointRequest) -> Result<CheckpointReply, Status> {
        Err(Status::unimplemented("checkpoint is not served here"))
    }
    /// Answers a Checkpoints request (the replica lists its recovery points).
    async fn checkpoints(&self, _req: CheckpointsRequest) -> Result<CheckpointsReply, Status> {
        Err(Status::unimplemented("checkpoints is not served here"))
    }
    /// Answers a Recover request (the replica builds a copy at a recovery point).
    async fn recover(&self, _req: RecoverRequest) -> Result<RecoverReply, Status> {
        Err(Status::unimplemented("recover is not served here"))
    }
    /// Starts (or joins) a resync of a replica group from its primary; the receiver sees its
    /// progress until the phase is `done` or `failed`.
    async fn resync(&self, _req: ResyncRequest) -> Result<watch::Receiver<ResyncProgress>, Status> {
        Err(Status::unimplemented("resync is not served here"))
    }
    /// Answers an ArchiveWal request (PostgreSQL `archive_command`, on the primary).
    async fn archive_wal(&self, _req: ArchiveWalRequest) -> Result<ArchiveWalReply, Status> {
        Err(Status::unimplemented("archive_wal is not served here"))
    }
}

/// Whether a resync progress report is the last one (`done` or `failed`).
pub fn resync_finished(p: &ResyncProgress) -> bool {
    p.phase == "done" || p.phase == "failed"
}
