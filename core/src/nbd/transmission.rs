//! NBD transmission phase: request headers and requests (parsed and encoded), their
//! validation against an export (`check_request` decides the reply errno), the transmission
//! flags an export advertises, and simple replies. Pure, no I/O.

use super::wire::*;

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
pub(super) mod tests {
    use super::super::wire::*;
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
        fn check_request_accepts_exactly_the_in_range_reads(offset in 0u64..(1 << 21), len in 0u32..(1 << 21)) {
            let size = 1u64 << 20;
            let h = header(CMD_READ, 0, offset, len);
            let fits = offset + u64::from(len) <= size;
            prop_assert_eq!(check_request(&h, size, true).is_ok(), fits);
        }
    }
}
