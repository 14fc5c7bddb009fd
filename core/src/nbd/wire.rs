//! NBD wire vocabulary: the protocol's magic numbers, flags, option/command codes, message
//! lengths and limits, the `Errno` values of replies, the parse error type and the big-endian
//! readers the parsers share. Pure: no I/O.
//!
//! Reference: the NBD protocol spec (NetworkBlockDevice/nbd `doc/proto.md`).

use thiserror::Error;

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second server magic, and the magic that starts every client option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic that starts every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: starts every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC`: starts every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag `NBD_FLAG_FIXED_NEWSTYLE`.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag `NBD_FLAG_NO_ZEROES`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag `NBD_FLAG_C_FIXED_NEWSTYLE`.
pub const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag `NBD_FLAG_C_NO_ZEROES`.
pub const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

/// Transmission flag `NBD_FLAG_HAS_FLAGS` (always set).
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag `NBD_FLAG_READ_ONLY`.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// Transmission flag `NBD_FLAG_SEND_FLUSH`.
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag `NBD_FLAG_SEND_FUA`.
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag `NBD_FLAG_SEND_TRIM`.
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag `NBD_FLAG_SEND_WRITE_ZEROES`.
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Transmission flag `NBD_FLAG_CAN_MULTI_CONN`.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Option `NBD_OPT_EXPORT_NAME`.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Option `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// Option `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// Option `NBD_OPT_STARTTLS`: upgrade the socket to TLS, then negotiate again inside it.
pub const OPT_STARTTLS: u32 = 5;
/// Option `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// Option `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// Option `NBD_OPT_STRUCTURED_REPLY` (unsupported here).
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// Option `NBD_OPT_LIST_META_CONTEXT` (unsupported here).
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Option `NBD_OPT_SET_META_CONTEXT` (unsupported here).
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// Option `NBD_OPT_EXTENDED_HEADERS` (unsupported here).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

/// Option reply `NBD_REP_ACK`.
pub const REP_ACK: u32 = 1;
/// Option reply `NBD_REP_SERVER` (one per export in a LIST answer).
pub const REP_SERVER: u32 = 2;
/// Option reply `NBD_REP_INFO`.
pub const REP_INFO: u32 = 3;
/// Option reply `NBD_REP_ERR_UNSUP`.
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
/// Option reply `NBD_REP_ERR_POLICY`.
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
/// Option reply `NBD_REP_ERR_INVALID`.
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
/// Option reply `NBD_REP_ERR_TLS_REQD`: the server requires TLS before this option.
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
/// Option reply `NBD_REP_ERR_UNKNOWN` (no such export).
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
/// Option reply `NBD_REP_ERR_SHUTDOWN`.
pub const REP_ERR_SHUTDOWN: u32 = 0x8000_0007;

/// Info type `NBD_INFO_EXPORT`.
pub const INFO_EXPORT: u16 = 0;
/// Info type `NBD_INFO_NAME`.
pub const INFO_NAME: u16 = 1;
/// Info type `NBD_INFO_DESCRIPTION`.
pub const INFO_DESCRIPTION: u16 = 2;
/// Info type `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Command `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// Command `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// Command `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// Command `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// Command `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// Command `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Command flag `NBD_CMD_FLAG_FUA`.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag `NBD_CMD_FLAG_NO_HOLE` (valid on WRITE_ZEROES only).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Length of the server greeting (NBDMAGIC, IHAVEOPT, handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of a client option header (IHAVEOPT, option, length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a transmission request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;

/// Largest READ or WRITE payload accepted (the advertised maximum block size): 32 MiB.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Largest option payload accepted; bigger options end the session before anything is
/// allocated. Room for a maximal export name plus a generous list of info requests.
pub const MAX_OPTION_LEN: u32 = 16 * 1024;
/// Largest export name (the spec's string limit).
pub const MAX_NAME_LEN: usize = 4096;

/// Block size constraints advertised in `NBD_INFO_BLOCK_SIZE`.
pub const BLOCK_SIZE: BlockSize = BlockSize {
    minimum: 1,
    preferred: 4096,
    maximum: MAX_PAYLOAD,
};

/// An NBD error value sent in a simple reply (the spec's restricted errno set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub u32);

impl Errno {
    /// Success.
    pub const OK: Errno = Errno(0);
    /// Operation not permitted: writes on a read-only or fenced export.
    pub const EPERM: Errno = Errno(1);
    /// Input/output error.
    pub const EIO: Errno = Errno(5);
    /// Cannot allocate memory.
    pub const ENOMEM: Errno = Errno(12);
    /// Invalid argument: bad flags, unknown command, read beyond the end.
    pub const EINVAL: Errno = Errno(22);
    /// No space left: writes beyond the end, or the backing store is full.
    pub const ENOSPC: Errno = Errno(28);
    /// Value too large.
    pub const EOVERFLOW: Errno = Errno(75);
    /// Operation not supported.
    pub const ENOTSUP: Errno = Errno(95);
    /// Server is shutting down.
    pub const ESHUTDOWN: Errno = Errno(108);
}

/// Errors from the pure parsers. `Incomplete` is not a failure: read more bytes and retry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    /// The buffer ends before the message does.
    #[error("incomplete message: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes are needed at least.
        needed: usize,
    },
    /// A magic number did not match: the peer is not speaking NBD (or lost framing).
    #[error("bad magic in {what}: expected {expected:#x}, found {found:#x}")]
    BadMagic {
        /// Which message carried the magic.
        what: &'static str,
        /// The magic the protocol requires.
        expected: u64,
        /// The magic that arrived.
        found: u64,
    },
    /// The client set handshake flags this server does not know (the spec says: close).
    #[error("unknown client flags {flags:#x}")]
    UnknownClientFlags {
        /// The full client flags field.
        flags: u32,
    },
    /// An option's declared payload length is over [`MAX_OPTION_LEN`].
    #[error("option {option} declares {length} payload bytes, limit {limit}")]
    OptionTooLong {
        /// The option code.
        option: u32,
        /// The declared length.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// A known option carried a malformed payload (answer `NBD_REP_ERR_INVALID`).
    #[error("option {option} is malformed: {reason}")]
    InvalidOption {
        /// The option code.
        option: u32,
        /// What was wrong.
        reason: &'static str,
    },
    /// A write declared a payload over [`MAX_PAYLOAD`]; it cannot be buffered.
    #[error("write request at offset {offset} declares {length} payload bytes, limit {limit}")]
    PayloadTooLarge {
        /// The request offset.
        offset: u64,
        /// The declared length.
        length: u32,
        /// The limit.
        limit: u32,
    },
    /// A reply (parsed by a client) is malformed.
    #[error("malformed reply: {reason}")]
    InvalidReply {
        /// What was wrong.
        reason: &'static str,
    },
}

/// Block size constraints (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size.
    pub minimum: u32,
    /// Preferred block size.
    pub preferred: u32,
    /// Maximum payload size.
    pub maximum: u32,
}

pub(super) fn need(buf: &[u8], len: usize) -> Result<(), ProtoError> {
    if buf.len() < len {
        Err(ProtoError::Incomplete {
            needed: len - buf.len(),
        })
    } else {
        Ok(())
    }
}

pub(super) fn be_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

pub(super) fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

pub(super) fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}
