//! What a group's pipeline is opened with: its settings, its mode (core's [`Mode`]: when
//! `submit` returns, DRBD protocol A or C) and the coordinators' consent it asks before a sync
//! group acknowledges writes alone. Types only.

use crate::journal::DEFAULT_SEGMENT_BYTES;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
pub use tandem_core::compression::Compression;
use tandem_core::frame::DEFAULT_LEVEL;
use tandem_core::ids::Epoch;

pub use tandem_core::group::Mode;

/// The future a [`SyncConsent`] answers with.
pub type ConsentFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<(), String>> + Send + 'static>,
>;

/// Asks the coordinators to agree before a sync group acknowledges writes without its
/// replica, and tells them when it is synchronous again.
///
/// Why: a primary that degrades on its own, cut off from the coordinators, acknowledges
/// writes the replica never gets, and the majority then promotes that replica: acknowledged
/// writes are lost. With consent committed first, the coordinators know not to fail over
/// automatically; without it, writes keep waiting (until the replica answers or the lease
/// ends and fences the pipeline).
pub trait SyncConsent: Send + Sync + std::fmt::Debug {
    /// Commits "acknowledging alone" (`degraded`) or "synchronous again" (`!degraded`) for
    /// `epoch`; `Err` with the reason when refused or unreachable (it is asked again).
    fn ask(&self, epoch: Epoch, degraded: bool) -> ConsentFuture;
}

/// Settings of one group's pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The group name (its [`GroupId`] is derived from it).
    pub group: String,
    /// The epoch to write frames in (an existing journal keeps a newer stored epoch).
    pub epoch: Epoch,
    /// Directory of the journal.
    pub dir: PathBuf,
    /// Most bytes the journal may hold unacknowledged before intake is refused.
    pub journal_max: u64,
    /// A frame is closed once its raw changes reach this many bytes.
    pub batch_max_bytes: usize,
    /// Longest a batch lingers for more submissions while the writer is busy.
    pub batch_max_delay: Duration,
    /// Async or sync acknowledgement.
    pub mode: Mode,
    /// How frames are compressed: a fixed zstd level, raw, or `Auto` (the level follows the
    /// backlog the link leaves, [`super::adapt`]).
    pub compression: Compression,
    /// Submissions that may wait in the intake queue (backpressure beyond that).
    pub queue_depth: usize,
    /// Size at which journal segments rotate.
    pub segment_bytes: u64,
    /// Sync mode: how long a write waits for the replica's acknowledgement before the group
    /// degrades to acknowledging on the local journal alone (the replica is unreachable).
    /// `None` blocks writes until the replica answers. Sync resumes once the replica has
    /// caught up.
    pub sync_timeout: Option<Duration>,
    /// Sync mode: who must agree before the group degrades after `sync_timeout`. `None`
    /// degrades without asking (a pipeline with no coordinators: tests, benches).
    pub sync_consent: Option<Arc<dyn SyncConsent>>,
}

impl PipelineConfig {
    /// Defaults: 1 GiB journal, 1 MiB batches, 2 ms linger, async, zstd level 1.
    pub fn new(group: &str, dir: impl Into<PathBuf>) -> PipelineConfig {
        PipelineConfig {
            group: group.to_owned(),
            epoch: Epoch(1),
            dir: dir.into(),
            journal_max: 1 << 30,
            batch_max_bytes: 1 << 20,
            batch_max_delay: Duration::from_millis(2),
            mode: Mode::Async,
            compression: Compression::Zstd(DEFAULT_LEVEL),
            queue_depth: 256,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync_timeout: None,
            sync_consent: None,
        }
    }
}
