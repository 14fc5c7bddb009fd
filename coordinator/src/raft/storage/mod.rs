//! Durable raft log storage: raft-rs's `Storage` trait over one sled tree.
//!
//! Layout (one tree, so every multi-key change is one atomic `sled::Batch`):
//!
//! | key | value |
//! | --- | --- |
//! | `e` + big-endian u64 index | `eraftpb::Entry` |
//! | `m:hard_state` | `eraftpb::HardState` |
//! | `m:conf_state` | u64 BE index of the entry that produced it + `eraftpb::ConfState` |
//! | `m:truncated` | u64 BE index + u64 BE term of the last discarded entry |
//! | `m:snap_meta` | `eraftpb::SnapshotMetadata` |
//! | `m:snap_data` | snapshot bytes |
//! | `m:peers` | the peer address map (see [`encode_peers`]) |
//!
//! Every value is wrapped in an envelope: magic `TR`, version byte, the first 8 bytes of the
//! blake3 hash of the payload, then the payload. Writes are buffered by sled; [`SledStorage::flush`]
//! makes them durable and must be called by a single flusher (the raft task), see STACK-NOTES 6.
//!
//! - [`format`]: the envelope, the keys and the value codecs (pure).
//! - [`sled_store`]: [`SledStorage`] itself.
//! - [`error`]: the storage error ([`StorageError`]).

pub mod error;
pub mod format;
pub mod sled_store;

pub use self::error::StorageError;
pub use self::format::{decode_peers, encode_peers, open_sealed, seal};
pub use self::sled_store::SledStorage;
