//! The replicator's error type: one enum for the journal, pipeline, shipper and replica.

use std::path::PathBuf;
use tandem_core::frame::FrameError;
use tandem_core::ids::{Epoch, Seq};
use thiserror::Error;

/// Everything that can go wrong on the replication data path.
#[derive(Debug, Error)]
pub enum ReplicatorError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`open`, `write`, `fdatasync`, ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A stored frame failed its checks somewhere other than a torn tail.
    #[error("corrupt journal segment {path} at byte {offset}: {reason}")]
    CorruptJournal {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad frame in the segment.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A history segment or undo record failed its checks.
    #[error("corrupt history segment {path} at byte {offset}: {reason}")]
    CorruptHistory {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad header or record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// No recovery point matches what was asked (or the history no longer reaches it).
    #[error("no recovery point: {0}")]
    NoRecoveryPoint(String),
    /// A metadata file has a bad magic, version, length or checksum.
    #[error("bad metadata file {path}: {reason}")]
    BadMetadata {
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The journal holds `journal_max` bytes not yet acknowledged by the replica: intake is
    /// refused until the replica catches up (retryable).
    #[error("journal full: {pending} bytes pending, limit {max}")]
    JournalFull {
        /// Bytes not yet acknowledged.
        pending: u64,
        /// The configured limit.
        max: u64,
    },
    /// The pipeline is fenced (lease lost, or the replica refused our epoch): no intake.
    #[error("group fenced at epoch {epoch}: {reason}")]
    Fenced {
        /// The epoch the pipeline was at.
        epoch: Epoch,
        /// Why it was fenced.
        reason: String,
    },
    /// A frame could not be encoded or decoded.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// A submission is not acceptable as given.
    #[error("invalid submission: {0}")]
    InvalidSubmission(String),
    /// A change names a resource the replica group does not have.
    #[error("unknown resource {resource:?} in group {group}")]
    UnknownResource {
        /// The group.
        group: String,
        /// The resource name in the change.
        resource: String,
    },
    /// A change of a kind this applier cannot apply to a volume.
    #[error("change seq {seq}: kind {kind} cannot be applied to volume resource {resource:?}")]
    UnsupportedChange {
        /// Seq of the change.
        seq: Seq,
        /// Its kind.
        kind: String,
        /// Its resource.
        resource: String,
    },
    /// A database change (page or commit) that cannot be applied as a whole transaction.
    #[error("change seq {seq} for sqlite resource {resource:?}: {reason}")]
    BadDbChange {
        /// Seq of the change.
        seq: Seq,
        /// Its resource.
        resource: String,
        /// What is wrong (page size, order, transaction too large).
        reason: String,
    },
    /// A PostgreSQL archive change (WAL chunk or end) that cannot be applied.
    #[error("change seq {seq} for postgres resource {resource:?}: {reason}")]
    BadWalChange {
        /// Seq of the change.
        seq: Seq,
        /// Its resource.
        resource: String,
        /// What is wrong (order, size, checksum of the reassembled file).
        reason: String,
    },
    /// A volume write or trim reaching past its resource's size (or overflowing): refused
    /// before anything of its frame touches a file (live apply), or before the journal replay
    /// writes it.
    #[error("{kind} seq {seq} on {resource:?} ({}) refused: {source}", .path.display())]
    OutOfBounds {
        /// Seq of the change.
        seq: Seq,
        /// `write` or `trim`.
        kind: &'static str,
        /// Its resource.
        resource: String,
        /// The resource's file.
        path: PathBuf,
        /// Its range against the resource's size.
        #[source]
        source: Box<crate::bounds::BoundsError>,
    },
    /// A SQLite call on a captured database failed.
    #[error("sqlite {path}: {op}: {reason}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The SQLite error.
        reason: String,
    },
    /// A WAL or database header of a captured database is malformed.
    #[error("{path}: {source}")]
    Wal {
        /// The WAL or database file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: crate::sqlite_wal::WalError,
    },
    /// The pipeline or one of its tasks has stopped.
    #[error("pipeline for group {0} is closed")]
    Closed(String),
    /// Could not reach the replica, or the stream broke (retryable).
    #[error("transport to {addr}: {reason}")]
    Transport {
        /// The replica address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A blocking task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl ReplicatorError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplicatorError::JournalFull { .. } | ReplicatorError::Transport { .. }
        ) || matches!(self, ReplicatorError::Frame(e) if e.is_retryable())
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReplicatorError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for results on the data path.
pub type Result<T, E = ReplicatorError> = std::result::Result<T, E>;
