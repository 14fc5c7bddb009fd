//! Fuzzes the NBD request and option parsers: arbitrary bytes must never panic, every parse
//! must account for the bytes it used, and a parsed request must re-encode to the same bytes.
//! The option stream also runs through a TLS-only server's negotiation (`NBD_OPT_STARTTLS`):
//! before the upgrade only STARTTLS and ABORT are ever parsed, EXPORT_NAME ends the session,
//! and every other option is refused from its code alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_replicator::nbd::proto;

fuzz_target!(|data: &[u8]| {
    // The bytes as a stream of transmission requests.
    let mut rest = data;
    while let Ok((request, used)) = proto::parse_request(rest) {
        assert!(used >= proto::REQUEST_HEADER_LEN && used <= rest.len());
        assert_eq!(request.data.len(), request.header.payload_len());
        assert!(request.data.len() <= proto::MAX_PAYLOAD as usize);
        let mut encoded = Vec::with_capacity(used);
        proto::encode_request(&request.header, &request.data, &mut encoded);
        assert_eq!(
            &encoded[..],
            &rest[..used],
            "request does not re-encode to its bytes"
        );
        for writable in [false, true] {
            if let Ok(proto::Command::Read { len, .. }) =
                proto::check_request(&request.header, 64 << 20, writable)
            {
                assert!(len <= proto::MAX_PAYLOAD);
            }
        }
        rest = &rest[used..];
    }

    // The bytes as a stream of negotiation options.
    let mut rest = data;
    while let Ok((option, used)) = proto::parse_option_request(rest) {
        assert!(used >= proto::OPTION_HEADER_LEN && used <= rest.len());
        assert!(used - proto::OPTION_HEADER_LEN <= proto::MAX_OPTION_LEN as usize);
        if let proto::ClientOption::ExportName(name)
        | proto::ClientOption::Info(proto::InfoRequest { name, .. })
        | proto::ClientOption::Go(proto::InfoRequest { name, .. }) = &option
        {
            assert!(name.len() <= proto::MAX_NAME_LEN);
        }
        rest = &rest[used..];
    }

    // The bytes as the option stream of a TLS-only server, before and after the upgrade.
    let mut rest = data;
    let mut upgraded = false;
    while let Ok(header) = proto::parse_option_header(rest) {
        let total = proto::OPTION_HEADER_LEN + header.length as usize;
        let Some(payload) = rest.get(proto::OPTION_HEADER_LEN..total) else {
            break;
        };
        let parsed = proto::parse_option(header.option, payload);
        if header.option == proto::OPT_STARTTLS {
            assert_eq!(
                matches!(parsed, Ok(proto::ClientOption::StartTls)),
                payload.is_empty(),
                "STARTTLS parses exactly when its payload is empty"
            );
        }
        if !upgraded {
            match proto::before_tls(header.option) {
                proto::BeforeTls::Close => {
                    assert_eq!(header.option, proto::OPT_EXPORT_NAME);
                    break;
                }
                proto::BeforeTls::Abort => {
                    assert_eq!(header.option, proto::OPT_ABORT);
                    break;
                }
                proto::BeforeTls::TlsRequired => assert!(![
                    proto::OPT_STARTTLS,
                    proto::OPT_ABORT,
                    proto::OPT_EXPORT_NAME
                ]
                .contains(&header.option)),
                proto::BeforeTls::StartTls => {
                    assert_eq!(header.option, proto::OPT_STARTTLS);
                    upgraded = parsed.is_ok();
                }
            }
        }
        rest = &rest[total..];
    }

    // Every option code against the raw bytes as a payload, and the small fixed messages.
    if let Some((&code, payload)) = data.split_first() {
        let _ = proto::parse_option(u32::from(code % 16), payload);
    }
    let _ = proto::parse_client_flags(data);
    let _ = proto::parse_greeting(data);
    let _ = proto::parse_option_reply(data);
    let _ = proto::parse_simple_reply(data);
});
