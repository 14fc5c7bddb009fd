//! The coordinator crate's error type.

use crate::audit::ChainError;
use crate::state::rejection::Rejection;

/// Everything that can go wrong in the coordinator crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state machine refused a command (a deterministic outcome, the same on every node).
    #[error("command refused: {0}")]
    Rejected(#[from] Rejection),
    /// An audit chain failed verification.
    #[error("audit chain: {0}")]
    Chain(#[from] ChainError),
    /// A state snapshot could not be parsed as JSON (`detail` from serde_json, with line/column).
    #[error("state snapshot: not valid JSON: {detail}")]
    SnapshotDecode {
        /// The parser's message.
        detail: String,
    },
    /// A state snapshot does not start with the expected magic.
    #[error("state snapshot: magic is {found:?}, expected {expected:?}")]
    SnapshotMagic {
        /// The magic found.
        found: String,
        /// The magic expected.
        expected: &'static str,
    },
    /// A state snapshot has a version this build cannot read.
    #[error("state snapshot: version {found} is not supported (this build reads {supported})")]
    SnapshotVersion {
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A state snapshot's checksum does not match its `state` field.
    #[error("state snapshot: checksum mismatch (stored {stored}, computed {computed})")]
    SnapshotChecksum {
        /// The checksum in the file.
        stored: String,
        /// The checksum of the state as parsed.
        computed: String,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Rejected(r) => r.is_retryable(),
            Error::Chain(_)
            | Error::SnapshotDecode { .. }
            | Error::SnapshotMagic { .. }
            | Error::SnapshotVersion { .. }
            | Error::SnapshotChecksum { .. } => false,
        }
    }
}
