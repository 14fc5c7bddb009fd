//! Durable raft log storage: raft-rs's `Storage` trait over one sled tree.
//!
//! Layout: the log and the metadata in sled's default tree (so every multi-key change of
//! them is one atomic `sled::Batch`), the snapshot bytes in the tree `snapshots`:
//!
//! | key | value |
//! | --- | --- |
//! | `e` + big-endian u64 index | `eraftpb::Entry` |
//! | `m:hard_state` | `eraftpb::HardState` |
//! | `m:conf_state` | u64 BE index of the entry that produced it + `eraftpb::ConfState` |
//! | `m:truncated` | u64 BE index + u64 BE term of the last discarded entry |
//! | `m:snap_meta` | `eraftpb::SnapshotMetadata` |
//! | `snapshots` tree: `s` + big-endian u64 index | the bytes of the snapshot at that index |
//! | `m:peers` | the peer address map (see [`encode_peers`]) |
//!
//! The snapshot bytes are written under their index before the metadata that names them, and
//! older ones are removed after, so the metadata never names bytes that are not there. They
//! live apart because sled rewrites a whole node when it consolidates the deltas of any key in
//! it: beside the hard state (written at every commit) a 1.8 MB snapshot was rewritten tens of
//! times a second (issue 20). A store of the older layout (`m:snap_data`) is moved on open.
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
