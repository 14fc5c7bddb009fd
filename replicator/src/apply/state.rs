//! The in-memory state of a replica group behind its lock, and the files it keeps beside the
//! resources. Data only: the rooms beside it act on it.

use crate::history::History;
use crate::meta::SlotFile;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use tandem_core::frame::Decoder;
use tandem_core::ids::{Epoch, Seq};

/// Magic of the replica metadata file.
pub const REPLICA_META_MAGIC: [u8; 4] = *b"TNDW";
/// Name of the replica metadata file (a [`SlotFile`] of watermark, fence and the highest seq
/// a primary announced durable, see [`crate::lineage::judge_tail`]) in the group directory.
/// Files written before the third value read it as 0 (unknown).
pub const REPLICA_META_FILE: &str = "replica.slots";

/// Pages of a SQLite transaction received but not yet committed.
#[derive(Debug)]
pub(super) struct PendingTxn {
    pub(super) first_seq: Seq,
    pub(super) page_size: u32,
    pub(super) bytes: u64,
    pub(super) pages: std::collections::BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug)]
pub(super) struct Resource {
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) sqlite: bool,
    /// For a volume: its size, fixed when the group opens (the file's length then; the node
    /// creates every image at its configured size before). A write or trim reaching past it
    /// is refused ([`crate::bounds`]). `None` for a SQLite database, which a commit may
    /// legitimately grow (up to the page count its commit declares, at most 2^32 pages of
    /// 64 KiB).
    pub(super) size: Option<u64>,
    /// For a SQLite resource: a connection used only to take SQLite's EXCLUSIVE lock while a
    /// transaction is written, so readers of the replica never see half of one.
    pub(super) lock: Option<rusqlite::Connection>,
    /// For a SQLite resource: its changes below this seq are skipped. Set by a resync, which
    /// rebuilds the database from a full snapshot of the primary's starting at this seq, so
    /// the older transactions still in the stream (increments over a state this copy does not
    /// hold) are never laid over it.
    pub(super) from: Seq,
}

/// File (in the group's replica folder) keeping [`Resource::from`] of a SQLite resource.
pub(super) fn sqlite_from_file(dir: &Path, resource: &str) -> PathBuf {
    dir.join(format!("sqlite-from-{resource}"))
}

pub(super) const SQLITE_FROM_MAGIC: [u8; 4] = *b"SQFR";

#[derive(Debug)]
pub(super) struct Inner {
    /// The group's replica folder (metadata files).
    pub(super) dir: PathBuf,
    pub(super) meta: SlotFile,
    /// The highest seq a primary announced durable (0: none), shared with the stream reader
    /// that notes it; persisted with every metadata write.
    pub(super) primary_durable: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(super) watermark: Seq,
    /// The watermark as persisted and acknowledged (lower than `watermark` while a SQLite
    /// transaction is buffered).
    pub(super) persisted: Seq,
    pub(super) fence: Epoch,
    pub(super) pending: HashMap<String, PendingTxn>,
    pub(super) resources: HashMap<String, Resource>,
    /// PostgreSQL resources: their archive folders.
    pub(super) archives: HashMap<String, crate::pg_archive::WalArchive>,
    pub(super) decoder: Decoder,
    /// Set by [`ReplicaGroup::retire`]: no further batch is applied.
    pub(super) retired: bool,
    /// Point-in-time history (undo records and recovery points), when the group keeps one.
    pub(super) history: Option<History>,
    /// Capture time of the last applied change.
    pub(super) last_ms: i64,
    /// Volume ranges written since the last fdatasync (resource, offset, length): what a
    /// power loss at the `replica-before-fsync` failpoint garbles. Kept only in a build with
    /// failpoints.
    pub(super) unsynced: Vec<(String, u64, u64)>,
}

/// Values in [`REPLICA_META_FILE`].
pub(super) const REPLICA_META_VALUES: usize = 3;

impl Inner {
    /// Persists the watermark `wm` and fence `fence` (one fdatasync), with the highest seq a
    /// primary announced durable so far.
    pub(super) fn persist_meta(&mut self, wm: Seq, fence: Epoch) -> crate::error::Result<()> {
        let p = self
            .primary_durable
            .load(std::sync::atomic::Ordering::SeqCst);
        self.meta.write(&[wm.0, fence.0, p])
    }
}
