//! Point-in-time history at the replica: undo records of every byte range a replicated change
//! overwrites, and the recovery points (barriers, checkpoints), in append-only segment files.
//!
//! Before the applier overwrites bytes of a resource it appends an undo record holding the
//! old bytes (and the file's length before the change) with the change's seq and capture
//! time; barriers, database commits and checkpoints append point records. Recovering to a
//! point P copies the live replica at watermark W (under the apply lock, so it is a cut of the
//! stream) and applies the undo records of seqs `P+1 ..= W` to the copy, newest first
//! ([`rewind`]).
//!
//! Crash safety (power loss included): the records of a batch are appended and the segment
//! is fdatasync'd ([`History::sync`]) BEFORE any of the data they undo is written (the
//! applier holds those writes back until then), and the watermark is persisted after both.
//! The old bytes are read on the apply thread when the change is applied (before any held
//! write); their compression runs on encoder threads meanwhile, and the records are appended
//! in seq order by the next sync (or point record), which waits for them: appending and
//! syncing stay one ordered step before the data write, as they were when the apply thread
//! compressed each record itself. So
//! whatever new bytes reached a file, the record of the old ones is durable. The last record
//! of each seq carries [`FLAG_LAST`]; after a restart, seqs up to the last complete one are not
//! recorded again (their recorded old bytes are the right ones; records past the watermark
//! are kept for that reason), later seqs are recorded again (their data was never written: a
//! partial earlier attempt holds the same old bytes, replaying both is harmless).
//!
//! Segment file `SSSSSSSSSSSSSSSSSSSS.hist` (base seq, 20 digits): a header, then records.
//!
//! Segment header, [`SEGMENT_HEADER_LEN`] bytes, little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TNDH` |
//! | 4 | 2 | version (1) |
//! | 6 | 2 | reserved (0) |
//! | 8 | 8 | group id |
//! | 16 | 8 | base seq: every record of a later seq is in this segment or a newer one |
//! | 24 | 8 | created, unix ms |
//! | 32 | 8 | check: first 8 bytes of blake3 of bytes 0..32 |
//!
//! Record, [`RECORD_HEADER_LEN`] bytes of header, then the name, then the stored data:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `TNDU` |
//! | 4 | 1 | kind (1 undo, 2 barrier, 3 checkpoint, 4 tagged checkpoint) |
//! | 5 | 1 | flags (bit 0: last record of its seq; bit 1: data zstd-compressed; bit 2: the old bytes are `raw length` zero bytes, none stored: the range was a hole, which is not read) |
//! | 6 | 2 | name length (resource for undo and barrier, tag for checkpoints) |
//! | 8 | 8 | seq |
//! | 16 | 8 | capture time, unix ms |
//! | 24 | 8 | byte offset of the old bytes in the resource |
//! | 32 | 8 | resource length before the change |
//! | 40 | 4 | raw data length |
//! | 44 | 4 | stored data length |
//! | 48 | 32 | blake3 of name ‖ stored data (checked before decompressing) |
//! | 80 | 8 | header check: first 8 bytes of blake3 of bytes 0..80 |
//!
//! Rooms: `codec` (segment header and record formats: encode, parse, check; pure), `select`
//! (recovery points and [`select_point`]; pure), `store` ([`History`]: segment files, append,
//! sync, retention, reopen after a crash), `workers` (the undo encoder threads), `rewind`
//! (undo records applied to a copy, newest first).

mod codec;
mod rewind;
mod select;
mod store;
#[cfg(test)]
mod tests;
mod workers;

pub use self::codec::{
    decode_record_body, decode_segment_header, encode_record, encode_segment_header,
    parse_record_header, Record, RecordHeader, RecordKind, DEFAULT_SEGMENT_BYTES, FLAG_LAST,
    FLAG_ZERO, FLAG_ZSTD, HISTORY_VERSION, MAX_NAME_LEN, MAX_RECORD_DATA, RECORD_HEADER_LEN,
    RECORD_MAGIC, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};
pub use self::rewind::rewind;
pub use self::select::{select_point, Point, Selector};
pub use self::store::{History, HistoryConfig, SegmentSnap};
