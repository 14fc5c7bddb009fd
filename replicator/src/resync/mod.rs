//! Resync and verify of a resource between replicators: the `Merkle` / `ReadBlocks` client and server.
//!
//! Client: [`resync`] fetches the source's leaves, hashes the local target, diffs, pulls only
//! the differing blocks in bounded batches, writes them, syncs, and re-hashes to prove the roots
//! are equal. [`verify`] compares two trees and names the differing byte ranges.
//!
//! Server: [`BlockServer`] answers `Merkle` and `ReadBlocks` for resources a resolver maps to
//! files; the replication service delegates those two RPCs to it.
//!
//! Compression: `ReadBlocks` asks for a zstd level and the server compresses each block on all
//! its cores, sending the frame only when it is smaller ([`Compression`]: off, a level, or
//! chosen per link by [`choose_level`] from a raw probe batch). gRPC message compression is
//! not needed (leaves are hashes and do not compress); the module works with it too.
//!
//! Rooms: `limits` (per-request bounds), `error` ([`ResyncError`]), `options` (tuning and
//! reports of a resync), `compression` (the level per link, pure, and the block codec),
//! `compare` (two trees compared, pure), `chunked` (verify at barriers chunk by chunk through
//! a [`MerkleSource`]), `client` ([`resync`] and [`fetch_tree`]), `copy` (the pipelined pull
//! of the differing blocks), `server` ([`BlockServer`]).

mod chunked;
mod client;
mod compare;
pub mod compression;
mod copy;
mod error;
pub mod limits;
mod options;
mod server;

pub use self::chunked::{
    verify_chunked, verify_chunks, ChunkTick, ChunkedVerify, MerkleSource, Patience,
    VerifyProgressFn,
};
pub use self::client::{fetch_tree, fetch_tree_at, resync};
pub use self::compare::{hex, verify, VerifyReport};
pub use self::compression::{choose_level, Compression, LinkEstimate};
pub use self::copy::{PIPELINE_DEPTH, WRITES_IN_FLIGHT};
pub use self::error::ResyncError;
pub use self::limits::{
    DEFAULT_BATCH_BLOCKS, MAX_BLOCKS_PER_REQUEST, MAX_MESSAGE_BYTES, MAX_REPLY_BYTES,
};
pub use self::options::{ProgressFn, ResyncOptions, ResyncReport, ResyncTick};
pub use self::server::BlockServer;
