//! Tandem replicator: capture sources, journal, shipper, receiver/applier, merkle verify and
//! resync.
//!
//! The data path of one protection group:
//! - [`nbd`]: the NBD server that captures every write of a protected volume.
//! - [`node`]: the replicator process: roles, leases, heartbeats, NBD exports, resync.
//! - [`volume`]: the `VolumeBackend` trait the NBD server writes through, and `FileVolume`.
//! - [`journal`]: the primary's durable log of frames not yet acknowledged by the replica.
//! - [`lineage`]: journal generations and the pure check that a replica is a prefix of the
//!   primary's history (pure).
//! - [`pipeline`]: [`pipeline::GroupPipeline`], where captured changes get seqs, are batched
//!   into frames, journaled with group commit, and (sync mode) wait for the replica.
//! - [`ship`]: the shipper task streaming journal frames to the replica replicator over gRPC.
//! - [`receive`]: the replicator's gRPC service: Ship streams, Verify, and the block-source RPCs.
//! - [`apply`]: [`apply::ReplicaGroup`], applying frames to resource files with the watermark,
//!   after the pure per-frame checks of [`apply::classify`].
//! - [`bounds`]: the pure bound every applied change is checked against (its range within
//!   the resource's size).
//! - [`merkle`]: merkle trees of blake3 block hashes, their diff and wire form (pure).
//! - [`scan`]: hashing files into trees, and the `scan` capture source built on it.
//! - [`scan_capture`]: the `scan` source wired to a group's pipeline, with its durable tree.
//! - [`resync`]: resync and verify of a resource between two replicators over gRPC.
//! - [`sqlite`]: the `sqlite` capture source, following a live database's WAL (Litestream
//!   style) and shipping whole transactions as pages + commit.
//! - [`sqlite_wal`]: pure parsing of SQLite WAL files and database headers.
//! - [`history`]: the replica's point-in-time history: undo records and recovery points in
//!   segment files, retention, point selection, rewinding a copy (pure codec + file store).
//! - [`pg_archive`]: the replica's PostgreSQL archive folder, rebuilt from WAL changes.
//! - [`pg_feed`]: the primary's PostgreSQL WAL feed: WAL not archived yet (RPO) and health.
//! - [`pg_repl`]: a PostgreSQL physical replication client (IDENTIFY_SYSTEM, slots,
//!   START_REPLICATION, status updates), with its pure codec and SCRAM-SHA-256.
//! - [`durable_dir`]: folders created with their parents fsynced (they survive a power loss).
//! - [`meta`]: small durable metadata files (magic, version, checksum, atomic rename).
//! - [`validate`]: pure validation of replication requests before a handler acts.
//! - [`verify`]: the primary serving `Replication.Verify`: volumes compared chunk by chunk at
//!   barriers through its own merkle backend.
//! - [`error`]: the crate's error type.

pub mod apply;
pub mod bounds;
pub mod durable_dir;
pub mod error;
pub mod history;
pub mod journal;
pub mod lineage;
pub mod merkle;
pub mod meta;
pub mod nbd;
pub mod node;
pub mod pg_archive;
pub mod pg_feed;
pub mod pg_repl;
pub mod pg_stream;
pub mod pipeline;
pub mod quarantine;
pub mod receive;
pub mod resync;
pub mod scan;
pub mod scan_capture;
pub mod ship;
pub mod sqlite;
pub mod sqlite_wal;
#[cfg(test)]
mod testdata;
pub mod validate;
pub mod verify;
pub mod volume;
