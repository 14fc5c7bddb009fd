//! Pure NBD wire format: constants, parsers that never panic and return `Incomplete` when they
//! need more bytes, request validation, and reply encoders. No I/O lives here.
//!
//! Reference: the NBD protocol spec (NetworkBlockDevice/nbd `doc/proto.md`), fixed newstyle
//! negotiation with simple replies only (no structured replies, no TLS, no extended headers).

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
/// Option `NBD_OPT_STARTTLS` (unsupported here).
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

fn need(buf: &[u8], len: usize) -> Result<(), ProtoError> {
    if buf.len() < len {
        Err(ProtoError::Incomplete {
            needed: len - buf.len(),
        })
    } else {
        Ok(())
    }
}

fn be_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_be_bytes(b)
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// Appends the server greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES.
pub fn encode_greeting(out: &mut Vec<u8>) {
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
}

/// Parses the server greeting (client side); returns the handshake flags.
///
/// # Errors
/// `Incomplete` or `BadMagic`.
pub fn parse_greeting(buf: &[u8]) -> Result<u16, ProtoError> {
    need(buf, GREETING_LEN)?;
    check_magic64("greeting", NBDMAGIC, be_u64(buf, 0))?;
    check_magic64("greeting", IHAVEOPT, be_u64(buf, 8))?;
    Ok(be_u16(buf, 16))
}

fn check_magic64(what: &'static str, expected: u64, found: u64) -> Result<(), ProtoError> {
    if found == expected {
        Ok(())
    } else {
        Err(ProtoError::BadMagic {
            what,
            expected,
            found,
        })
    }
}

/// The client's answer to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    /// The client set `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub fixed_newstyle: bool,
    /// The client set `NBD_FLAG_C_NO_ZEROES`: omit the 124 zero bytes after EXPORT_NAME.
    pub no_zeroes: bool,
}

/// Parses the 32-bit client flags.
///
/// # Errors
/// `Incomplete`, or `UnknownClientFlags` when any bit other than the two known is set.
pub fn parse_client_flags(buf: &[u8]) -> Result<ClientFlags, ProtoError> {
    need(buf, 4)?;
    let flags = be_u32(buf, 0);
    if flags & !(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES) != 0 {
        return Err(ProtoError::UnknownClientFlags { flags });
    }
    Ok(ClientFlags {
        fixed_newstyle: flags & CLIENT_FLAG_FIXED_NEWSTYLE != 0,
        no_zeroes: flags & CLIENT_FLAG_NO_ZEROES != 0,
    })
}

/// Header of a client option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// The option code (`NBD_OPT_*`).
    pub option: u32,
    /// Payload length that follows, at most [`MAX_OPTION_LEN`].
    pub length: u32,
}

/// Parses a 16-byte option header.
///
/// # Errors
/// `Incomplete`, `BadMagic`, or `OptionTooLong` (checked before anything is allocated).
pub fn parse_option_header(buf: &[u8]) -> Result<OptionHeader, ProtoError> {
    need(buf, OPTION_HEADER_LEN)?;
    check_magic64("option header", IHAVEOPT, be_u64(buf, 0))?;
    let option = be_u32(buf, 8);
    let length = be_u32(buf, 12);
    if length > MAX_OPTION_LEN {
        return Err(ProtoError::OptionTooLong {
            option,
            length,
            limit: MAX_OPTION_LEN,
        });
    }
    Ok(OptionHeader { option, length })
}

/// Payload of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (may be empty: the default export).
    pub name: String,
    /// Info types the client asked for (`NBD_INFO_*`).
    pub requests: Vec<u16>,
}

/// A parsed client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`: enter transmission on this export; cannot be answered with an error.
    ExportName(String),
    /// `NBD_OPT_ABORT`: the client ends the session.
    Abort,
    /// `NBD_OPT_LIST`: list exports.
    List,
    /// `NBD_OPT_INFO`: describe an export, stay in negotiation.
    Info(InfoRequest),
    /// `NBD_OPT_GO`: describe an export and enter transmission.
    Go(InfoRequest),
    /// Any option this server does not implement (answer `NBD_REP_ERR_UNSUP`).
    Unsupported(u32),
}

fn parse_name(option: u32, bytes: &[u8]) -> Result<String, ProtoError> {
    if bytes.len() > MAX_NAME_LEN {
        return Err(ProtoError::InvalidOption {
            option,
            reason: "export name longer than 4096 bytes",
        });
    }
    if bytes.contains(&0) {
        return Err(ProtoError::InvalidOption {
            option,
            reason: "export name contains NUL",
        });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::InvalidOption {
        option,
        reason: "export name is not UTF-8",
    })
}

/// Parses the payload of an option whose header was already parsed.
///
/// # Errors
/// `InvalidOption` when a known option's payload is malformed (answer `NBD_REP_ERR_INVALID`,
/// except for `NBD_OPT_EXPORT_NAME`, which can only be answered by closing).
pub fn parse_option(option: u32, payload: &[u8]) -> Result<ClientOption, ProtoError> {
    match option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(parse_name(option, payload)?)),
        OPT_ABORT | OPT_LIST => {
            if !payload.is_empty() {
                return Err(ProtoError::InvalidOption {
                    option,
                    reason: "payload must be empty",
                });
            }
            Ok(if option == OPT_ABORT {
                ClientOption::Abort
            } else {
                ClientOption::List
            })
        }
        OPT_INFO | OPT_GO => {
            let invalid = |reason| ProtoError::InvalidOption { option, reason };
            if payload.len() < 4 {
                return Err(invalid("shorter than the name length field"));
            }
            let name_len = be_u32(payload, 0) as usize;
            let rest = &payload[4..];
            if name_len > rest.len() {
                return Err(invalid("name length runs past the payload"));
            }
            let name = parse_name(option, &rest[..name_len])?;
            let rest = &rest[name_len..];
            if rest.len() < 2 {
                return Err(invalid("missing the info request count"));
            }
            let count = be_u16(rest, 0) as usize;
            let rest = &rest[2..];
            if rest.len() != count * 2 {
                return Err(invalid("info request count does not match the payload"));
            }
            let requests = rest
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            let info = InfoRequest { name, requests };
            Ok(if option == OPT_GO {
                ClientOption::Go(info)
            } else {
                ClientOption::Info(info)
            })
        }
        other => Ok(ClientOption::Unsupported(other)),
    }
}

/// Parses a whole option (header and payload) from the front of `buf`; returns it and the
/// number of bytes it used.
///
/// # Errors
/// As [`parse_option_header`] and [`parse_option`].
pub fn parse_option_request(buf: &[u8]) -> Result<(ClientOption, usize), ProtoError> {
    let header = parse_option_header(buf)?;
    let total = OPTION_HEADER_LEN + header.length as usize;
    need(buf, total)?;
    let option = parse_option(header.option, &buf[OPTION_HEADER_LEN..total])?;
    Ok((option, total))
}

/// Appends a client option (client side; used by tests and tools).
pub fn encode_option(option: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Builds the payload of `NBD_OPT_INFO` / `NBD_OPT_GO` (client side).
pub fn encode_info_request(request: &InfoRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(6 + request.name.len() + 2 * request.requests.len());
    out.extend_from_slice(&(request.name.len() as u32).to_be_bytes());
    out.extend_from_slice(request.name.as_bytes());
    out.extend_from_slice(&(request.requests.len() as u16).to_be_bytes());
    for r in &request.requests {
        out.extend_from_slice(&r.to_be_bytes());
    }
    out
}

/// Appends an option reply: magic, option, reply type, length, payload.
pub fn encode_option_reply(option: u32, reply_type: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends an `NBD_REP_SERVER` reply naming one export (answer to `NBD_OPT_LIST`).
pub fn encode_rep_server(name: &str, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(4 + name.len());
    payload.extend_from_slice(&(name.len() as u32).to_be_bytes());
    payload.extend_from_slice(name.as_bytes());
    encode_option_reply(OPT_LIST, REP_SERVER, &payload, out);
}

/// Appends an `NBD_REP_INFO` / `NBD_INFO_EXPORT` reply: export size and transmission flags.
pub fn encode_info_export(option: u32, size: u64, flags: u16, out: &mut Vec<u8>) {
    let mut payload = [0u8; 12];
    payload[0..2].copy_from_slice(&INFO_EXPORT.to_be_bytes());
    payload[2..10].copy_from_slice(&size.to_be_bytes());
    payload[10..12].copy_from_slice(&flags.to_be_bytes());
    encode_option_reply(option, REP_INFO, &payload, out);
}

/// Appends an `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE` reply.
pub fn encode_info_block_size(option: u32, sizes: BlockSize, out: &mut Vec<u8>) {
    let mut payload = [0u8; 14];
    payload[0..2].copy_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    payload[2..6].copy_from_slice(&sizes.minimum.to_be_bytes());
    payload[6..10].copy_from_slice(&sizes.preferred.to_be_bytes());
    payload[10..14].copy_from_slice(&sizes.maximum.to_be_bytes());
    encode_option_reply(option, REP_INFO, &payload, out);
}

/// Appends the answer to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes
/// unless the client negotiated `NO_ZEROES`.
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
}

/// A parsed option reply header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReply {
    /// The option this answers.
    pub option: u32,
    /// `NBD_REP_*`.
    pub reply_type: u32,
    /// Payload length that follows.
    pub length: u32,
}

/// Parses an option reply header (client side).
///
/// # Errors
/// `Incomplete` or `BadMagic`.
pub fn parse_option_reply(buf: &[u8]) -> Result<OptionReply, ProtoError> {
    need(buf, OPTION_REPLY_HEADER_LEN)?;
    check_magic64("option reply", OPTION_REPLY_MAGIC, be_u64(buf, 0))?;
    Ok(OptionReply {
        option: be_u32(buf, 8),
        reply_type: be_u32(buf, 12),
        length: be_u32(buf, 16),
    })
}

// ---------------------------------------------------------------------------------------------
// Transmission
// ---------------------------------------------------------------------------------------------

/// A transmission request header as it arrived (not yet validated against an export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Command type (`NBD_CMD_*`), possibly unknown.
    pub kind: u16,
    /// Opaque handle echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

impl RequestHeader {
    /// Number of payload bytes that follow this header on the wire (only WRITE carries data).
    pub fn payload_len(&self) -> usize {
        if self.kind == CMD_WRITE {
            self.length as usize
        } else {
            0
        }
    }
}

/// A whole request: header plus the write payload (empty for other commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The header.
    pub header: RequestHeader,
    /// Write payload; empty unless `header.kind == CMD_WRITE`.
    pub data: Vec<u8>,
}

/// Parses a 28-byte request header.
///
/// # Errors
/// `Incomplete`, `BadMagic`, or `PayloadTooLarge` for a WRITE over [`MAX_PAYLOAD`] (checked
/// before any allocation; the connection cannot continue because the payload is not read).
pub fn parse_request_header(buf: &[u8]) -> Result<RequestHeader, ProtoError> {
    need(buf, REQUEST_HEADER_LEN)?;
    let magic = be_u32(buf, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "request",
            expected: u64::from(REQUEST_MAGIC),
            found: u64::from(magic),
        });
    }
    let header = RequestHeader {
        flags: be_u16(buf, 4),
        kind: be_u16(buf, 6),
        handle: be_u64(buf, 8),
        offset: be_u64(buf, 16),
        length: be_u32(buf, 24),
    };
    if header.kind == CMD_WRITE && header.length > MAX_PAYLOAD {
        return Err(ProtoError::PayloadTooLarge {
            offset: header.offset,
            length: header.length,
            limit: MAX_PAYLOAD,
        });
    }
    Ok(header)
}

/// Parses a whole request from the front of `buf`; returns it and the bytes it used.
///
/// # Errors
/// As [`parse_request_header`]; `Incomplete` until the whole write payload is present.
pub fn parse_request(buf: &[u8]) -> Result<(Request, usize), ProtoError> {
    let header = parse_request_header(buf)?;
    let total = REQUEST_HEADER_LEN + header.payload_len();
    need(buf, total)?;
    let data = buf[REQUEST_HEADER_LEN..total].to_vec();
    Ok((Request { header, data }, total))
}

/// Appends a request (client side; used by tests and tools). `data` is sent only for WRITE.
pub fn encode_request(header: &RequestHeader, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    out.extend_from_slice(&header.flags.to_be_bytes());
    out.extend_from_slice(&header.kind.to_be_bytes());
    out.extend_from_slice(&header.handle.to_be_bytes());
    out.extend_from_slice(&header.offset.to_be_bytes());
    out.extend_from_slice(&header.length.to_be_bytes());
    if header.kind == CMD_WRITE {
        out.extend_from_slice(data);
    }
}

/// A validated command, ready for the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `len` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte length (at most [`MAX_PAYLOAD`]).
        len: u32,
    },
    /// Write the request payload at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Discard a range (contents afterwards unspecified; Tandem zeroes it).
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Write zeroes over a range.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u32,
        /// Durable before the reply.
        fua: bool,
    },
    /// Soft disconnect: no reply, close.
    Disconnect,
}

/// Validates a request header against an export of `size` bytes that is `writable` now.
///
/// Errors follow the spec: unknown command or flag → EINVAL; write, trim or write-zeroes on a
/// read-only or fenced export → EPERM; write or write-zeroes beyond the end → ENOSPC; read or
/// trim beyond the end, or a read over [`MAX_PAYLOAD`] → EINVAL.
///
/// # Errors
/// The NBD error value to send back in the simple reply.
pub fn check_request(header: &RequestHeader, size: u64, writable: bool) -> Result<Command, Errno> {
    let fua = header.flags & CMD_FLAG_FUA != 0;
    let allowed = match header.kind {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        _ => CMD_FLAG_FUA,
    };
    if header.flags & !allowed != 0 {
        return Err(Errno::EINVAL);
    }
    let offset = header.offset;
    let len = header.length;
    let in_range = offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= size);
    match header.kind {
        CMD_READ => {
            if len > MAX_PAYLOAD || !in_range {
                return Err(Errno::EINVAL);
            }
            Ok(Command::Read { offset, len })
        }
        CMD_WRITE | CMD_WRITE_ZEROES => {
            if !writable {
                return Err(Errno::EPERM);
            }
            if !in_range {
                return Err(Errno::ENOSPC);
            }
            if header.kind == CMD_WRITE {
                Ok(Command::Write { offset, len, fua })
            } else {
                Ok(Command::WriteZeroes { offset, len, fua })
            }
        }
        CMD_TRIM => {
            if !writable {
                return Err(Errno::EPERM);
            }
            if !in_range {
                return Err(Errno::EINVAL);
            }
            Ok(Command::Trim { offset, len, fua })
        }
        CMD_FLUSH => Ok(Command::Flush),
        CMD_DISC => Ok(Command::Disconnect),
        _ => Err(Errno::EINVAL),
    }
}

/// Transmission flags for an export.
pub fn transmission_flags(writable: bool, can_multi_conn: bool) -> u16 {
    let mut flags = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES;
    if !writable {
        flags |= TFLAG_READ_ONLY;
    }
    if can_multi_conn {
        flags |= TFLAG_CAN_MULTI_CONN;
    }
    flags
}

/// Appends a simple reply header (the read data, if any, follows it on the wire).
pub fn encode_simple_reply(error: Errno, handle: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.0.to_be_bytes());
    out.extend_from_slice(&handle.to_be_bytes());
}

/// A parsed simple reply header (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// The error value (0 = success).
    pub error: Errno,
    /// The request's handle.
    pub handle: u64,
}

/// Parses a simple reply header (client side).
///
/// # Errors
/// `Incomplete` or `BadMagic`.
pub fn parse_simple_reply(buf: &[u8]) -> Result<SimpleReply, ProtoError> {
    need(buf, SIMPLE_REPLY_HEADER_LEN)?;
    let magic = be_u32(buf, 0);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(ProtoError::BadMagic {
            what: "simple reply",
            expected: u64::from(SIMPLE_REPLY_MAGIC),
            found: u64::from(magic),
        });
    }
    Ok(SimpleReply {
        error: Errno(be_u32(buf, 4)),
        handle: be_u64(buf, 8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            kind,
            handle: 0x1122_3344_5566_7788,
            offset,
            length,
        }
    }

    #[test]
    fn greeting_has_both_magics_and_fixed_newstyle_no_zeroes() {
        let mut out = Vec::new();
        encode_greeting(&mut out);
        assert_eq!(
            out,
            [
                b'N', b'B', b'D', b'M', b'A', b'G', b'I', b'C', b'I', b'H', b'A', b'V', b'E', b'O',
                b'P', b'T', 0, 3
            ]
        );
        assert_eq!(parse_greeting(&out), Ok(3));
    }

    #[test]
    fn client_flags_with_unknown_bits_are_refused() {
        assert_eq!(
            parse_client_flags(&[0, 0, 0, 3]),
            Ok(ClientFlags {
                fixed_newstyle: true,
                no_zeroes: true
            })
        );
        assert_eq!(
            parse_client_flags(&[0, 0, 0, 4]),
            Err(ProtoError::UnknownClientFlags { flags: 4 })
        );
        assert_eq!(
            parse_client_flags(&[0, 0]),
            Err(ProtoError::Incomplete { needed: 2 })
        );
    }

    #[test]
    fn request_header_golden_bytes_parse() {
        let bytes = [
            0x25, 0x60, 0x95, 0x13, // magic
            0x00, 0x01, // flags: FUA
            0x00, 0x01, // type: WRITE
            1, 2, 3, 4, 5, 6, 7, 8, // handle
            0, 0, 0, 0, 0, 0, 0x10, 0x00, // offset 4096
            0, 0, 0, 4, // length 4
            0xde, 0xad, 0xbe, 0xef, // payload
        ];
        let (req, used) = parse_request(&bytes).unwrap();
        assert_eq!(used, 32);
        assert_eq!(req.header, {
            let mut h = header(CMD_WRITE, CMD_FLAG_FUA, 4096, 4);
            h.handle = 0x0102_0304_0506_0708;
            h
        });
        assert_eq!(req.data, vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(
            parse_request(&bytes[..30]),
            Err(ProtoError::Incomplete { needed: 2 })
        );
    }

    #[test]
    fn request_with_bad_magic_is_refused() {
        let mut bytes = vec![0u8; 28];
        bytes[0] = 0x67;
        assert!(matches!(
            parse_request_header(&bytes),
            Err(ProtoError::BadMagic {
                what: "request",
                ..
            })
        ));
    }

    #[test]
    fn oversized_write_is_refused_before_its_payload_arrives() {
        let mut out = Vec::new();
        encode_request(&header(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1), &[], &mut out);
        assert_eq!(
            parse_request(&out),
            Err(ProtoError::PayloadTooLarge {
                offset: 0,
                length: MAX_PAYLOAD + 1,
                limit: MAX_PAYLOAD
            })
        );
        // A read of the same length has no payload: it parses, and check_request refuses it.
        let mut out = Vec::new();
        encode_request(&header(CMD_READ, 0, 0, MAX_PAYLOAD + 1), &[], &mut out);
        let (req, _) = parse_request(&out).unwrap();
        assert_eq!(
            check_request(&req.header, u64::MAX, true),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn check_request_table() {
        let size = 1 << 20;
        let cases: Vec<(RequestHeader, bool, Result<Command, Errno>)> = vec![
            (
                header(CMD_READ, 0, 0, 4096),
                false,
                Ok(Command::Read {
                    offset: 0,
                    len: 4096,
                }),
            ),
            (header(CMD_READ, 0, size - 1, 2), true, Err(Errno::EINVAL)),
            (header(CMD_READ, 0, u64::MAX, 1), true, Err(Errno::EINVAL)),
            (header(CMD_WRITE, 0, size, 1), true, Err(Errno::ENOSPC)),
            (header(CMD_WRITE, 0, 0, 1), false, Err(Errno::EPERM)),
            (
                header(CMD_WRITE, CMD_FLAG_FUA, size - 1, 1),
                true,
                Ok(Command::Write {
                    offset: size - 1,
                    len: 1,
                    fua: true,
                }),
            ),
            (
                header(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 1),
                true,
                Err(Errno::EINVAL),
            ),
            (
                header(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 512),
                true,
                Ok(Command::WriteZeroes {
                    offset: 0,
                    len: 512,
                    fua: false,
                }),
            ),
            (
                header(CMD_WRITE_ZEROES, 0, size, 512),
                true,
                Err(Errno::ENOSPC),
            ),
            (
                header(CMD_WRITE_ZEROES, 0, 0, 512),
                false,
                Err(Errno::EPERM),
            ),
            (header(CMD_TRIM, 0, 0, 512), false, Err(Errno::EPERM)),
            (header(CMD_TRIM, 0, size, 512), true, Err(Errno::EINVAL)),
            (
                header(CMD_TRIM, CMD_FLAG_FUA, 0, 512),
                true,
                Ok(Command::Trim {
                    offset: 0,
                    len: 512,
                    fua: true,
                }),
            ),
            (header(CMD_FLUSH, 0, 0, 0), false, Ok(Command::Flush)),
            (
                header(CMD_FLUSH, CMD_FLAG_FUA, 0, 0),
                true,
                Ok(Command::Flush),
            ),
            (header(CMD_DISC, 0, 0, 0), true, Ok(Command::Disconnect)),
            (header(5, 0, 0, 0), true, Err(Errno::EINVAL)),
            (header(99, 0, 0, 0), true, Err(Errno::EINVAL)),
            (header(CMD_READ, 1 << 4, 0, 1), true, Err(Errno::EINVAL)),
        ];
        for (i, (h, writable, want)) in cases.iter().enumerate() {
            let got = check_request(h, size, *writable);
            assert_eq!(
                got, *want,
                "#{i}: {h:?} writable={writable}: expect {want:?} got {got:?}"
            );
        }
    }

    #[test]
    fn go_option_golden_bytes_parse() {
        let mut payload = vec![0, 0, 0, 5];
        payload.extend_from_slice(b"disk0");
        payload.extend_from_slice(&[0, 2, 0, 3, 0, 0]);
        let mut out = Vec::new();
        encode_option(OPT_GO, &payload, &mut out);
        let (opt, used) = parse_option_request(&out).unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            opt,
            ClientOption::Go(InfoRequest {
                name: "disk0".into(),
                requests: vec![INFO_BLOCK_SIZE, INFO_EXPORT]
            })
        );
    }

    #[test]
    fn malformed_info_payloads_are_invalid_not_panics() {
        let cases: [&[u8]; 5] = [
            &[0, 0],
            &[0, 0, 0, 9, b'a'],
            &[0, 0, 0, 1, b'a'],
            &[0, 0, 0, 1, b'a', 0, 2, 0, 3],
            &[0, 0, 0, 1, 0, 0, 0],
        ];
        for (i, c) in cases.iter().enumerate() {
            let got = parse_option(OPT_INFO, c);
            assert!(
                matches!(
                    got,
                    Err(ProtoError::InvalidOption {
                        option: OPT_INFO,
                        ..
                    })
                ),
                "#{i}: expect InvalidOption got {got:?}"
            );
        }
    }

    #[test]
    fn list_and_abort_with_payload_are_invalid() {
        assert!(parse_option(OPT_LIST, b"x").is_err());
        assert!(parse_option(OPT_ABORT, b"x").is_err());
        assert_eq!(parse_option(OPT_LIST, b""), Ok(ClientOption::List));
        assert_eq!(parse_option(OPT_ABORT, b""), Ok(ClientOption::Abort));
    }

    #[test]
    fn unsupported_options_are_recognised_as_unsupported() {
        for opt in [
            OPT_STARTTLS,
            OPT_STRUCTURED_REPLY,
            OPT_LIST_META_CONTEXT,
            OPT_SET_META_CONTEXT,
            OPT_EXTENDED_HEADERS,
            4,
            0xdead,
        ] {
            assert_eq!(
                parse_option(opt, b"whatever"),
                Ok(ClientOption::Unsupported(opt))
            );
        }
    }

    #[test]
    fn overlong_option_is_refused_from_its_header() {
        let mut out = Vec::new();
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&OPT_GO.to_be_bytes());
        out.extend_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert_eq!(
            parse_option_request(&out),
            Err(ProtoError::OptionTooLong {
                option: OPT_GO,
                length: MAX_OPTION_LEN + 1,
                limit: MAX_OPTION_LEN
            })
        );
    }

    #[test]
    fn export_name_over_4096_bytes_is_invalid() {
        let name = vec![b'a'; MAX_NAME_LEN + 1];
        assert!(matches!(
            parse_option(OPT_EXPORT_NAME, &name),
            Err(ProtoError::InvalidOption { .. })
        ));
        assert_eq!(
            parse_option(OPT_EXPORT_NAME, &name[..MAX_NAME_LEN]),
            Ok(ClientOption::ExportName("a".repeat(MAX_NAME_LEN)))
        );
    }

    #[test]
    fn info_export_reply_golden_bytes() {
        let mut out = Vec::new();
        encode_info_export(OPT_GO, 64 << 20, transmission_flags(false, false), &mut out);
        let mut want = Vec::new();
        want.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, 12, 0, 0]);
        want.extend_from_slice(&(64u64 << 20).to_be_bytes());
        want.extend_from_slice(&[0, 0b0110_1111]);
        assert_eq!(out, want);
        let reply = parse_option_reply(&out).unwrap();
        assert_eq!(
            reply,
            OptionReply {
                option: OPT_GO,
                reply_type: REP_INFO,
                length: 12
            }
        );
    }

    #[test]
    fn export_name_reply_omits_zeroes_only_when_negotiated() {
        let mut a = Vec::new();
        encode_export_name_reply(1, 1, true, &mut a);
        assert_eq!(a.len(), 10);
        let mut b = Vec::new();
        encode_export_name_reply(1, 1, false, &mut b);
        assert_eq!(b.len(), 134);
    }

    #[test]
    fn simple_reply_round_trips() {
        let mut out = Vec::new();
        encode_simple_reply(Errno::ENOSPC, 42, &mut out);
        assert_eq!(
            parse_simple_reply(&out),
            Ok(SimpleReply {
                error: Errno::ENOSPC,
                handle: 42
            })
        );
    }

    fn arb_header() -> impl Strategy<Value = RequestHeader> {
        (
            any::<u16>(),
            prop_oneof![
                Just(CMD_READ),
                Just(CMD_WRITE),
                Just(CMD_FLUSH),
                any::<u16>()
            ],
            any::<u64>(),
            any::<u64>(),
            0u32..=4096,
        )
            .prop_map(|(flags, kind, handle, offset, length)| RequestHeader {
                flags,
                kind,
                handle,
                offset,
                length,
            })
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&bytes);
            let _ = parse_option_request(&bytes);
            let _ = parse_client_flags(&bytes);
            let _ = parse_greeting(&bytes);
            let _ = parse_option_reply(&bytes);
            let _ = parse_simple_reply(&bytes);
            if bytes.len() >= 4 {
                let option = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) % 16;
                let _ = parse_option(option, &bytes[4..]);
            }
            if let Ok(h) = parse_request_header(&bytes) {
                let _ = check_request(&h, u64::from(bytes.len() as u32) << 20, bytes.len() % 2 == 0);
            }
        }

        #[test]
        fn requests_round_trip(h in arb_header(), fill in any::<u8>(), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
            let data = vec![fill; h.payload_len()];
            let mut out = Vec::new();
            encode_request(&h, &data, &mut out);
            let used_want = out.len();
            out.extend_from_slice(&extra);
            let (req, used) = parse_request(&out).unwrap();
            prop_assert_eq!(used, used_want);
            prop_assert_eq!(req.header, h);
            prop_assert_eq!(req.data, data);
            // Every strict prefix is Incomplete, never a wrong parse.
            for cut in [0, 1, REQUEST_HEADER_LEN - 1, used_want.saturating_sub(1)] {
                if cut < used_want {
                    let incomplete = matches!(parse_request(&out[..cut]), Err(ProtoError::Incomplete { .. }));
                    prop_assert!(incomplete);
                }
            }
        }

        #[test]
        fn info_requests_round_trip(name in "[a-z0-9/_-]{0,64}", requests in proptest::collection::vec(any::<u16>(), 0..16), go in any::<bool>()) {
            let req = InfoRequest { name, requests };
            let option = if go { OPT_GO } else { OPT_INFO };
            let mut out = Vec::new();
            encode_option(option, &encode_info_request(&req), &mut out);
            let (parsed, used) = parse_option_request(&out).unwrap();
            prop_assert_eq!(used, out.len());
            let want = if go { ClientOption::Go(req) } else { ClientOption::Info(req) };
            prop_assert_eq!(parsed, want);
        }

        #[test]
        fn check_request_accepts_exactly_the_in_range_reads(offset in 0u64..(1 << 21), len in 0u32..(1 << 21)) {
            let size = 1u64 << 20;
            let h = header(CMD_READ, 0, offset, len);
            let fits = offset + u64::from(len) <= size;
            prop_assert_eq!(check_request(&h, size, true).is_ok(), fits);
        }
    }
}
