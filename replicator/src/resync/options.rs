//! What a caller tunes in a resync ([`ResyncOptions`]) and what it hears back: progress
//! ([`ResyncTick`]) and the [`ResyncReport`]. Data only.

use super::compression::Compression;
use super::limits::DEFAULT_BATCH_BLOCKS;
use crate::merkle::Hash;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What a resync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncReport {
    /// Blocks in the source.
    pub blocks_total: u64,
    /// Blocks that differed and were pulled.
    pub blocks_differing: u64,
    /// Byte ranges that differed before the resync (clipped to the longer length).
    pub differing_bytes: Vec<Range<u64>>,
    /// Protobuf bytes of every request sent and reply received (leaves included), before gRPC
    /// compression and without HTTP/2 framing.
    pub bytes_sent_over_wire: u64,
    /// Source length; the target now has this length.
    pub length: u64,
    /// The common root after the resync.
    pub root: Hash,
    /// Wall-clock time of the whole resync, the final re-hash included.
    pub duration: Duration,
    /// The source's watermark when it computed its leaves (`MerkleReply::watermark`): every
    /// change up to it is in the resynced copy.
    pub source_watermark: u64,
    /// The zstd level the blocks crossed at (0: raw), as set or chosen for the link.
    pub zstd_level: i32,
    /// Blocks whose old content was kept in the quarantine file before they were overwritten.
    pub quarantined_blocks: u64,
    /// The quarantine file, when one was written.
    pub quarantine: Option<PathBuf>,
}

/// Where a resync is, reported to [`ResyncOptions::progress`] as it goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResyncTick {
    /// `hashing` (the local target) or `copying` (pulling differing blocks).
    pub phase: &'static str,
    /// Bytes of the target hashed (hashing) or of the differing blocks pulled (copying).
    pub bytes_done: u64,
    /// Bytes to hash (hashing) or of differing blocks to pull (copying).
    pub bytes_total: u64,
    /// Blocks found different (known once hashing is done).
    pub blocks_differing: u64,
    /// Differing blocks pulled and written so far.
    pub blocks_copied: u64,
    /// Protobuf bytes sent and received so far.
    pub wire_bytes: u64,
}

/// A callback that receives [`ResyncTick`]s (a progress bar, status, a watch channel).
pub type ProgressFn = Arc<dyn Fn(ResyncTick) + Send + Sync>;

/// Tuning for [`super::resync`].
#[derive(Clone)]
pub struct ResyncOptions {
    /// Blocks per `ReadBlocks` request; lowered so a reply stays under
    /// [`MAX_REPLY_BYTES`](super::limits::MAX_REPLY_BYTES).
    pub batch_blocks: usize,
    /// The source keeps taking writes during the resync (a live primary): blocks may change
    /// between its `Merkle` and `ReadBlocks` answers, so pulled blocks are not checked against
    /// the leaves and the final roots may differ. The caller must then replay the source's
    /// journal from [`ResyncReport::source_watermark`] + 1, which brings every changed block up
    /// to date (writes are idempotent and replayed in order).
    pub live_source: bool,
    /// After writing, re-hash the whole target (true, the default: also catches a concurrent
    /// writer on the target) or only read back the written blocks (false: one full read less).
    /// A resync by merkle diff then combines their hashes with the leaves hashed before; an
    /// initial sync reads each block back as it writes it and compares the bytes with those
    /// that matched the source's leaf, and hashes nothing twice.
    pub full_rehash: bool,
    /// Called as hashing and copying advance (about every 4 MiB hashed, every batch pulled).
    pub progress: Option<ProgressFn>,
    /// Keep the old content of every block before it is overwritten in this file (see
    /// [`crate::quarantine`]): a failback, where the target is the old primary's copy.
    pub quarantine: Option<PathBuf>,
    /// The largest length the target may have (a volume's configured size): a source whose
    /// copy is longer is refused before anything is written. `None`: any length.
    pub max_length: Option<u64>,
    /// How the pulled blocks are compressed on the wire (default: chosen per link).
    pub compression: Compression,
    /// A known cap on the link, bytes per second (a group's `max_bandwidth`): an automatic
    /// choice takes the link as no faster. `None`: measured only.
    pub link_bytes_per_sec: Option<u64>,
}

impl std::fmt::Debug for ResyncOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResyncOptions")
            .field("batch_blocks", &self.batch_blocks)
            .field("live_source", &self.live_source)
            .field("full_rehash", &self.full_rehash)
            .field("progress", &self.progress.is_some())
            .field("quarantine", &self.quarantine)
            .field("max_length", &self.max_length)
            .field("compression", &self.compression)
            .field("link_bytes_per_sec", &self.link_bytes_per_sec)
            .finish()
    }
}

impl Default for ResyncOptions {
    fn default() -> Self {
        ResyncOptions {
            batch_blocks: DEFAULT_BATCH_BLOCKS,
            live_source: false,
            full_rehash: true,
            progress: None,
            quarantine: None,
            max_length: None,
            compression: Compression::Auto,
            link_bytes_per_sec: None,
        }
    }
}
