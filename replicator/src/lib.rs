//! Tandem replicator: capture sources, journal, shipper, receiver/applier, merkle verify and resync.
//!
//! The data path of one protection group:
//! - [`journal`]: the primary's durable log of frames not yet acknowledged by the replica.
//! - [`pipeline`]: [`pipeline::GroupPipeline`], where captured changes get seqs, are batched
//!   into frames, journaled with group commit, and (sync mode) wait for the replica.
//! - [`ship`]: the shipper task streaming journal frames to the replica replicator over gRPC.
//! - [`receive`]: the replica's gRPC service and the pure per-frame checks.
//! - [`apply`]: [`apply::ReplicaGroup`], applying frames to resource files with the watermark.
//! - [`meta`]: small durable metadata files (magic, version, checksum, atomic rename).
//! - [`error`]: the crate's error type.

pub mod apply;
pub mod error;
pub mod journal;
pub mod meta;
pub mod pipeline;
pub mod receive;
pub mod ship;
