//! The replica side of one group: checks incoming frames in the DESIGN order, applies them to
//! the resource files in seq order, makes them durable, then moves the watermark.
//!
//! Order per batch of frames: check each frame ([`classify::classify`], then decode:
//! decompressed length and blake3, then every volume write and trim within the volume's size,
//! [`crate::bounds`]: an out-of-bounds change refuses its whole frame, fatally, before any of
//! it is written), with a point-in-time history append the undo records of its changes and
//! fdatasync the history BEFORE their data is written (`deferred`: unsynced data may reach the
//! disk at any moment, and must never get there before the record of what it overwrote),
//! `pwrite` its changes, fdatasync every touched file, THEN
//! persist the watermark (`replica.slots`: watermark, epoch fence and the highest seq the primary
//! announced durable, one fdatasync), THEN
//! acknowledge.
//! All methods do blocking I/O: call them from `spawn_blocking`.
//!
//! SQLite resources receive `DbPage`/`DbCommit` changes and are applied one WHOLE transaction
//! at a time: pages are buffered in memory until their commit (at most
//! [`MAX_DB_TXN_BYTES`]), then written at `(page - 1) * page_size`, the file is cut to the
//! committed size and its header rewritten for a rollback-journal reader (bytes 18/19 = 1), so
//! the file is a consistent database at every batch boundary; each commit is written under
//! SQLite's own EXCLUSIVE lock (a connection that only locks), so SQLite readers of the live
//! replica wait for it instead of seeing half a transaction. While a transaction is
//! buffered, the persisted and acknowledged watermark stays just before its first page, so a
//! restart resends the whole transaction.
//!
//! Rooms: [`classify`] (the pure per-frame verdict), `state` (the group's in-memory state and
//! its file names), `group` ([`ReplicaGroup`]: open, fence, copies, history, PITR), `batch`
//! (one batch of frames in the order above: check, apply, sync, persist, acknowledge),
//! `change` (one change on a volume: write, trim, barrier, checkpoint), `sqlite` (buffered
//! SQLite transactions applied whole under the database's lock), `lineage` (the copy's
//! binding to a primary's journal generation, judged at each `Hello`).

mod batch;
mod change;
pub mod classify;
mod deferred;
mod group;
mod lineage;
mod sqlite;
mod state;
#[cfg(test)]
mod tests;

pub use self::batch::Received;
pub use self::group::{HistoryView, Recovered, ReplicaGroup, StreamState};
pub use self::lineage::{LINEAGE_META_FILE, LINEAGE_META_MAGIC};
pub use self::sqlite::MAX_DB_TXN_BYTES;
pub use self::state::{REPLICA_META_FILE, REPLICA_META_MAGIC};
