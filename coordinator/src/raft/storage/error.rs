//! The error of the sled raft storage, what of it is retryable, and its raft-rs form.

/// Errors of the sled raft storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled failed (I/O, corruption detected by sled, lock held by another process).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A file or folder of the store could not be fsynced (what sled wrote would not
    /// survive a power loss).
    #[error("fsync of {path}: {source}")]
    SyncDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored value failed its envelope check or could not be decoded.
    #[error("corrupt value at key {key}: {reason}")]
    Corrupt {
        /// The sled key, printed escaped.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A protobuf value could not be encoded.
    #[error("encoding {what}: {source}")]
    Encode {
        /// Which value.
        what: &'static str,
        /// The protobuf error.
        source: protobuf::ProtobufError,
    },
    /// Entries were appended below the first index still kept.
    #[error("append at index {index} overwrites compacted log (first kept index {first})")]
    AppendCompacted {
        /// First index of the appended batch.
        index: u64,
        /// First index still in the log.
        first: u64,
    },
    /// Entries were appended after a gap.
    #[error("append at index {index} leaves a gap after last index {last}")]
    AppendGap {
        /// First index of the appended batch.
        index: u64,
        /// Last index in the log.
        last: u64,
    },
    /// Appended entries were not consecutive.
    #[error("appended entries not consecutive at index {index}")]
    AppendNotConsecutive {
        /// The index where the batch broke.
        index: u64,
    },
    /// A snapshot older than the log's first index was applied.
    #[error("snapshot at index {index} is older than the log (first kept index {first})")]
    SnapshotOutOfDate {
        /// Snapshot index.
        index: u64,
        /// First index of the log.
        first: u64,
    },
    /// A snapshot was requested at an index the log does not hold.
    #[error("cannot snapshot at index {index}: log holds {first}..={last}")]
    SnapshotIndexOutOfRange {
        /// Requested index.
        index: u64,
        /// First index of the log (the entry before it has a known term).
        first: u64,
        /// Last index of the log.
        last: u64,
    },
    /// Compaction was asked to discard entries not covered by the stored snapshot or not written.
    #[error("cannot compact to {index}: snapshot covers up to {snapshot}, last index {last}")]
    CompactOutOfRange {
        /// Requested compact index (entries below it would be discarded).
        index: u64,
        /// Index of the stored snapshot.
        snapshot: u64,
        /// Last index of the log.
        last: u64,
    },
}

impl StorageError {
    /// Whether retrying the same call may succeed (only sled I/O errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Sled(sled::Error::Io(_)))
    }
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
