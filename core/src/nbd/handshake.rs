//! NBD handshake (fixed newstyle negotiation): the server greeting, client flags, option
//! requests (`EXPORT_NAME`, `LIST`, `INFO`/`GO`, ...) and option replies, parsed and encoded.
//! Decides which options are well-formed; pure, no I/O.

use super::wire::*;

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
    /// `NBD_OPT_STARTTLS`: upgrade to TLS (answered `NBD_REP_ACK` by a server with TLS, before
    /// the TLS handshake on the same socket).
    StartTls,
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
        OPT_ABORT | OPT_LIST | OPT_STARTTLS => {
            if !payload.is_empty() {
                return Err(ProtoError::InvalidOption {
                    option,
                    reason: "payload must be empty",
                });
            }
            Ok(match option {
                OPT_ABORT => ClientOption::Abort,
                OPT_LIST => ClientOption::List,
                _ => ClientOption::StartTls,
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

/// What a server that requires TLS does with an option that arrives before the client has
/// upgraded (NBD spec, "TLS support", and what qemu-nbd and nbdkit do): decided from the option
/// code alone, before its payload is parsed, so nothing but these four paths is reachable in
/// plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeTls {
    /// `NBD_OPT_STARTTLS`: parse it (its payload must be empty), answer `NBD_REP_ACK`, then the
    /// TLS handshake.
    StartTls,
    /// `NBD_OPT_ABORT`: answered as without TLS (the client ends the session).
    Abort,
    /// `NBD_OPT_EXPORT_NAME`: it cannot be answered with an error, so the server closes.
    Close,
    /// Any other option, known or not: its payload is skipped and it is answered
    /// `NBD_REP_ERR_TLS_REQD`; the client may go on (and send `NBD_OPT_STARTTLS`).
    TlsRequired,
}

/// The gate of a TLS-requiring server before the upgrade; see [`BeforeTls`].
pub fn before_tls(option: u32) -> BeforeTls {
    match option {
        OPT_STARTTLS => BeforeTls::StartTls,
        OPT_ABORT => BeforeTls::Abort,
        OPT_EXPORT_NAME => BeforeTls::Close,
        _ => BeforeTls::TlsRequired,
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

#[cfg(test)]
mod tests {
    use super::super::transmission::transmission_flags;
    use super::super::wire::*;
    use super::*;
    use proptest::prelude::*;

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
    fn list_abort_and_starttls_with_payload_are_invalid() {
        assert!(parse_option(OPT_LIST, b"x").is_err());
        assert!(parse_option(OPT_ABORT, b"x").is_err());
        assert!(parse_option(OPT_STARTTLS, b"x").is_err());
        assert_eq!(parse_option(OPT_STARTTLS, b""), Ok(ClientOption::StartTls));
        assert_eq!(parse_option(OPT_LIST, b""), Ok(ClientOption::List));
        assert_eq!(parse_option(OPT_ABORT, b""), Ok(ClientOption::Abort));
    }

    #[test]
    fn unsupported_options_are_recognised_as_unsupported() {
        for opt in [
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
    fn before_tls_only_starttls_and_abort_pass_and_export_name_closes() {
        assert_eq!(before_tls(OPT_STARTTLS), BeforeTls::StartTls);
        assert_eq!(before_tls(OPT_ABORT), BeforeTls::Abort);
        assert_eq!(before_tls(OPT_EXPORT_NAME), BeforeTls::Close);
        for opt in [
            OPT_LIST,
            OPT_INFO,
            OPT_GO,
            OPT_STRUCTURED_REPLY,
            0,
            4,
            u32::MAX,
        ] {
            assert_eq!(before_tls(opt), BeforeTls::TlsRequired, "option {opt}");
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

    proptest! {
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

    }
}
