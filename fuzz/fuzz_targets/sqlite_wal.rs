//! Fuzzes the SQLite WAL and database-header parsers: arbitrary bytes must never panic, and a
//! parsed WAL header re-encodes to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_replicator::sqlite_wal::{parse_wal, DbHeader, WalHeader, WAL_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = WalHeader::parse(data) {
        assert_eq!(&h.encode()[..], &data[..WAL_HEADER_LEN]);
    }
    let _ = parse_wal(data);
    let _ = DbHeader::parse(data);
});
