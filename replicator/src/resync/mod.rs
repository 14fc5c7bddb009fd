//! Resync and verify of a resource between replicators: the `Merkle` / `ReadBlocks` client and server.
//!
//! Client: [`resync`] fetches the source's leaves, hashes the local target, diffs, pulls only
//! the differing blocks in bounded batches, writes them, syncs, and re-hashes to prove the roots
//! are equal. [`verify`] compares two trees and names the differing byte ranges.
//!
//! Server: [`BlockServer`] answers `Merkle` and `ReadBlocks` for resources a resolver maps to
//! files; the replication service delegates those two RPCs to it.
//!
//! Compression: the protocol carries raw block bytes. gRPC message compression (zstd) is a
//! transport choice: the server enables it with `ReplicationServer::send_compressed(Zstd)`,
//! the client with `ReplicationClient::accept_compressed(Zstd)`; this module works either way.
//!
//! Rooms: `limits` (per-request bounds), `error` ([`ResyncError`]), `options` (tuning and
//! reports of a resync), `compare` (two trees compared, pure), `chunked` (verify at barriers
//! chunk by chunk through a [`MerkleSource`]), `client` ([`resync`] and [`fetch_tree`]),
//! `server` ([`BlockServer`]).

mod chunked;
mod client;
mod compare;
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
pub use self::error::ResyncError;
pub use self::limits::{
    DEFAULT_BATCH_BLOCKS, MAX_BLOCKS_PER_REQUEST, MAX_MESSAGE_BYTES, MAX_REPLY_BYTES,
};
pub use self::options::{ProgressFn, ResyncOptions, ResyncReport, ResyncTick};
pub use self::server::BlockServer;
