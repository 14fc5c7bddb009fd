//! Fuzzes the PostgreSQL replication codec: arbitrary bytes read as a stream of backend
//! messages must never panic, every message decoded re-encodes to exactly the bytes it came
//! from, and so does every CopyData payload that decodes as XLogData or keepalive. The same
//! bytes as text go through the WAL position and size parsers and SCRAM's server-first parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_replicator::pg_repl::codec::{decode, parse_size, BackendMessage, ReplicationMessage};
use tandem_replicator::pg_repl::scram::ScramClient;
use tandem_replicator::pg_repl::Lsn;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = decode(rest) {
        assert!(used <= rest.len());
        assert_eq!(msg.encode(), &rest[..used]);
        if let BackendMessage::CopyData(payload) = &msg {
            if let Ok(r) = ReplicationMessage::decode(payload.clone()) {
                assert_eq!(&r.encode(), payload);
            }
        }
        rest = &rest[used..];
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(lsn) = text.parse::<Lsn>() {
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
        let _ = parse_size(text);
        // Iteration counts stay small here: a large one is legal and only slow (PBKDF2).
        let small = text
            .split(',')
            .filter_map(|a| a.strip_prefix("i="))
            .all(|i| i.len() <= 3);
        if small {
            let mut c = ScramClient::new("", "pencil", "fyko+d2lbbFgONRv9qkxdawL");
            if c.server_first(text).is_ok() {
                let _ = c.verify_server_final(text);
            }
        }
    }
});
