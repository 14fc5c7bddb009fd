//! A snapshot of a group's replication progress as the primary sees it (feeds heartbeats and
//! the RPO), with its health as core's [`GroupState`] (`protected` or `degraded`). Pure.

use tandem_core::ids::{Epoch, Seq};

pub use tandem_core::group::GroupState;

/// A snapshot of a group's replication progress (feeds heartbeats and RPO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Current epoch.
    pub epoch: Epoch,
    /// Highest seq durable in the local journal.
    pub last_captured_seq: Seq,
    /// Highest seq the replica acknowledged durable.
    pub durable_on_replica_seq: Seq,
    /// Capture time of the oldest change not yet durable on the replica (None: caught up).
    /// RPO now = now − this.
    pub oldest_unacked_capture_ms: Option<i64>,
    /// Encoded bytes journaled but not acknowledged.
    pub bytes_pending: u64,
    /// Raw change data bytes submitted since open.
    pub bytes_raw_total: u64,
    /// Encoded frame bytes sent to the replica since open (resends included).
    pub bytes_shipped_total: u64,
    /// Frames sent to the replica since open (resends included).
    pub frames_shipped: u64,
    /// The zstd level frames are encoded at now (0: stored raw).
    pub zstd_level: i32,
    /// Protected or degraded.
    pub state: GroupState,
    /// Why degraded (empty when protected).
    pub reason: String,
}

impl Progress {
    /// RPO at `now_ms`, in milliseconds (0 when caught up).
    pub fn rpo_ms(&self, now_ms: i64) -> i64 {
        self.oldest_unacked_capture_ms
            .map_or(0, |t| (now_ms - t).max(0))
    }
}
