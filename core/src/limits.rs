//! Hard size limits on what Tandem reads from the network, in one place.
//!
//! Every length read from a peer is checked against a limit *before* anything is allocated
//! for it: the frame header ([`crate::frame::MAX_RAW_LEN`], [`crate::frame::MAX_CHANGES`]), the
//! NBD request header (the replicator's `nbd::proto`), history records and archive pieces, and
//! every gRPC message. For gRPC the check is tonic's: it reads the 5-byte length prefix of a
//! message and refuses one over `max_decoding_message_size` with `OUT_OF_RANGE` before it
//! buffers the body. Tonic's default is 4 MiB for decoding and unlimited for encoding, so every
//! server and client in Tandem sets both explicitly from [`MAX_GRPC_MESSAGE_BYTES`] (use
//! [`grpc_limits!`](crate::grpc_limits)), never a number of its own.

/// Largest gRPC message any Tandem server or client sends or accepts: 80 MiB. It must hold the
/// largest legitimate message: a replication batch carrying a frame of
/// [`crate::frame::MAX_RAW_LEN`] (64 MiB) stored uncompressed plus its header and envelope, a
/// Merkle reply of the most leaves a request may ask for (2 Mi leaves × 32 bytes + 1 MiB), a
/// raft message or snapshot chunk (whose log entries are bounded by the state machine's field
/// limits), and an audit page (bounded by [`MAX_AUDIT_REPLY_BYTES`]).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 80 << 20;

/// Most bytes of audit records one `Audit` reply carries (at least one record is always sent);
/// callers page with `from_index`.
pub const MAX_AUDIT_REPLY_BYTES: usize = 16 << 20;

/// Sets `max_decoding_message_size` and `max_encoding_message_size` of a generated tonic
/// server or client to [`MAX_GRPC_MESSAGE_BYTES`]: `grpc_limits!(ReplicationClient::new(ch))`.
#[macro_export]
macro_rules! grpc_limits {
    ($svc:expr) => {
        $svc.max_decoding_message_size($crate::limits::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size($crate::limits::MAX_GRPC_MESSAGE_BYTES)
    };
}

// The largest frame must fit in a message, with room for the header and the gRPC envelope.
const _: () = assert!(
    crate::frame::MAX_RAW_LEN as usize + crate::frame::HEADER_LEN + (1 << 20)
        <= MAX_GRPC_MESSAGE_BYTES
);
