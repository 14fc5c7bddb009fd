//! The bounds of one `ReadBlocks` exchange and of a resync message (constants, pure).

use crate::merkle::{self, MAX_WIRE_LEAVES};

/// Default blocks per `ReadBlocks` request: 64 (4 MiB at 64 KiB blocks).
pub const DEFAULT_BATCH_BLOCKS: usize = 64;

/// Most block bytes one `ReadBlocks` reply may carry: 16 MiB.
pub const MAX_REPLY_BYTES: u64 = 16 << 20;

/// Most blocks one `ReadBlocks` request may name (server limit).
pub const MAX_BLOCKS_PER_REQUEST: usize = 1024;

/// Largest message the resync client accepts: the one gRPC limit
/// ([`tandem_core::limits::MAX_GRPC_MESSAGE_BYTES`]), which holds the largest leaves field.
pub const MAX_MESSAGE_BYTES: usize = tandem_core::limits::MAX_GRPC_MESSAGE_BYTES;
const _: () = assert!(MAX_WIRE_LEAVES * merkle::HASH_LEN + (1 << 20) <= MAX_MESSAGE_BYTES);
