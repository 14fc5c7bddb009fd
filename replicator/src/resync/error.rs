//! [`ResyncError`], the errors of resync and verify, and whether each is worth retrying.

use crate::merkle::MerkleError;
use crate::scan::ScanError;
use std::path::{Path, PathBuf};
use tonic::Status;

/// Errors from resync and verify.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// An RPC failed (could not reach the source, or it said no).
    #[error("{rpc} for {group}/{resource}: {status}")]
    Rpc {
        /// `Merkle` or `ReadBlocks`.
        rpc: &'static str,
        /// The group.
        group: String,
        /// The resource.
        resource: String,
        /// The gRPC status.
        status: Status,
    },
    /// The source's reply broke the protocol (wrong block, bad hash, wrong size).
    #[error("bad {rpc} reply from source: {reason}")]
    BadReply {
        /// Which RPC.
        rpc: &'static str,
        /// What was wrong, with the block index where one applies.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Hashing the local file failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// The trees could not be built or compared.
    #[error("merkle: {0}")]
    Merkle(#[from] MerkleError),
    /// After writing every differing block, the target's root still differs from the source's.
    #[error("target root {target_root} differs from source root {source_root} after resync; differing bytes {ranges}")]
    RootMismatch {
        /// Source root, hex.
        source_root: String,
        /// Target root, hex.
        target_root: String,
        /// The byte ranges still differing.
        ranges: String,
    },
    /// The source's copy is longer than the target may be, or a pulled block reaches past the
    /// source's length: refused before it is written ([`crate::bounds`]).
    #[error("{}: {what}: {source}", .path.display())]
    OutOfBounds {
        /// The target file.
        path: PathBuf,
        /// `source length` or `block N`.
        what: String,
        /// The range against the size.
        #[source]
        source: crate::bounds::BoundsError,
    },
    /// A blocking task panicked or was cancelled.
    #[error("resync task failed: {0}")]
    Task(String),
    /// The old content of a block could not be kept before it was to be overwritten (nothing
    /// was overwritten).
    #[error("quarantine: {0}")]
    Quarantine(String),
    /// A block was asked with its leaf and came without one: the source predates leaves in
    /// `ReadBlocks` (an initial sync then hashes the whole source first, as before).
    #[error("the source sent block {block} without its leaf (it predates leaves in ReadBlocks)")]
    NoLeaf {
        /// The block.
        block: u64,
    },
    /// A block read back from the target right after it was written is not what was written
    /// there (a write that did not land, landed short or elsewhere, or another writer).
    #[error("{}: block {block} read back at byte {at} is not what was written there", .path.display())]
    NotLanded {
        /// The target file.
        path: PathBuf,
        /// The block.
        block: u64,
        /// Its first byte in the file.
        at: u64,
    },
}

impl ResyncError {
    /// Whether running the resync again could succeed (transport failures and local I/O).
    pub fn is_retryable(&self) -> bool {
        match self {
            ResyncError::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Unknown
            ),
            ResyncError::Io { .. }
            | ResyncError::RootMismatch { .. }
            | ResyncError::NotLanded { .. }
            | ResyncError::Quarantine(_) => true,
            ResyncError::Scan(e) => e.is_retryable(),
            ResyncError::BadReply { .. }
            | ResyncError::OutOfBounds { .. }
            | ResyncError::Merkle(_)
            | ResyncError::NoLeaf { .. }
            | ResyncError::Task(_) => false,
        }
    }
}

pub(super) fn rpc_err(
    rpc: &'static str,
    group: &str,
    resource: &str,
    status: Status,
) -> ResyncError {
    ResyncError::Rpc {
        rpc,
        group: group.to_string(),
        resource: resource.to_string(),
        status,
    }
}

/// Maps an OS error of `op` on `path` to [`ResyncError::Io`].
pub(super) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ResyncError + 'a {
    move |source| ResyncError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `f` on the blocking pool; a panicked or cancelled task is a [`ResyncError::Task`].
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ResyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ResyncError::Task(e.to_string()))
}
