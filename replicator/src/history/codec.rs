//! The history's on-disk formats (see the folder's header): the segment header and the undo
//! and point records, encoded, parsed and checked (magic, version, blake3). Pure.

use crate::error::{ReplicatorError, Result};
use std::path::PathBuf;
use tandem_core::ids::{GroupId, Seq};

/// Magic of a history segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"TNDH";
/// Magic of an undo or point record.
pub const RECORD_MAGIC: [u8; 4] = *b"TNDU";
/// History format version this build writes and reads.
pub const HISTORY_VERSION: u16 = 1;
/// Size of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 40;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 88;
/// Most old bytes one undo record holds; larger ranges are split into several records.
pub const MAX_RECORD_DATA: usize = 1 << 20;
/// Longest name (resource or tag) in a record.
pub const MAX_NAME_LEN: usize = 255;
/// Record flag: the last record of its seq.
pub const FLAG_LAST: u8 = 1;
/// Record flag: the data is zstd-compressed.
pub const FLAG_ZSTD: u8 = 2;
/// Record flag: the old bytes are `raw_len` zero bytes and none are stored (the range was a
/// hole of the resource: nothing was read, compressed or written for it).
pub const FLAG_ZERO: u8 = 4;
/// Default size at which the active segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Data shorter than this is stored raw.
const MIN_COMPRESS_LEN: usize = 128;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// Old bytes of a resource range.
    Undo = 1,
    /// A barrier (flush or database commit): a candidate recovery point.
    Barrier = 2,
    /// A periodic group-wide checkpoint marked by the replica.
    Checkpoint = 3,
    /// A checkpoint an operator asked for, with a tag, put into the stream by the primary.
    Tagged = 4,
}

impl RecordKind {
    fn from_u8(b: u8) -> Option<RecordKind> {
        Some(match b {
            1 => RecordKind::Undo,
            2 => RecordKind::Barrier,
            3 => RecordKind::Checkpoint,
            4 => RecordKind::Tagged,
            _ => return None,
        })
    }

    /// The name used in listings and on the wire (`barrier`, `checkpoint`, `tagged`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Undo => "undo",
            RecordKind::Barrier => "barrier",
            RecordKind::Checkpoint => "checkpoint",
            RecordKind::Tagged => "tagged",
        }
    }
}

/// One record of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What it is.
    pub kind: RecordKind,
    /// Last record of its seq.
    pub last: bool,
    /// Seq of the change it belongs to.
    pub seq: Seq,
    /// Capture time of that change on the primary, unix ms.
    pub captured_ms: i64,
    /// Resource (undo, barrier) or tag (checkpoints).
    pub name: String,
    /// Byte offset of `data` in the resource (undo).
    pub offset: u64,
    /// Length of the resource before the change (undo).
    pub old_len: u64,
    /// The old bytes (undo); empty for points and for a hole.
    pub data: Vec<u8>,
    /// With no `data`: the old bytes were this many zero bytes, a hole of the resource
    /// ([`FLAG_ZERO`]); 0 otherwise.
    pub zeros: u32,
}

/// The parsed, checked header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// What it is.
    pub kind: RecordKind,
    /// Flag bits ([`FLAG_LAST`], [`FLAG_ZSTD`], [`FLAG_ZERO`]).
    pub flags: u8,
    /// Name length.
    pub name_len: u16,
    /// Seq.
    pub seq: Seq,
    /// Capture time, unix ms.
    pub captured_ms: i64,
    /// Byte offset in the resource.
    pub offset: u64,
    /// Resource length before the change.
    pub old_len: u64,
    /// Raw data length.
    pub raw_len: u32,
    /// Stored data length.
    pub stored_len: u32,
    /// blake3 of name ‖ stored data.
    pub hash: [u8; 32],
}

impl RecordHeader {
    /// Bytes of the whole record, header included.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.name_len) + u64::from(self.stored_len)
    }
}

fn check8(bytes: &[u8]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c.copy_from_slice(&blake3::hash(bytes).as_bytes()[..8]);
    c
}

use tandem_core::bytes::le_u64;

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Encodes a segment header (pure).
pub fn encode_segment_header(
    group: GroupId,
    base: Seq,
    created_ms: i64,
) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC);
    h[4..6].copy_from_slice(&HISTORY_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&group.0.to_le_bytes());
    h[16..24].copy_from_slice(&base.0.to_le_bytes());
    h[24..32].copy_from_slice(&created_ms.to_le_bytes());
    let c = check8(&h[..32]);
    h[32..40].copy_from_slice(&c);
    h
}

/// Decodes a segment header into (group, base seq, created ms) (pure).
///
/// # Errors
/// A reason naming the failed check and its byte.
pub fn decode_segment_header(b: &[u8]) -> std::result::Result<(GroupId, Seq, i64), String> {
    if b.len() < SEGMENT_HEADER_LEN {
        return Err(format!(
            "{} bytes, a segment header needs {SEGMENT_HEADER_LEN}",
            b.len()
        ));
    }
    if b[0..4] != SEGMENT_MAGIC {
        return Err(format!(
            "magic {:02x?} at byte 0 (expected \"TNDH\")",
            &b[0..4]
        ));
    }
    let v = u16::from_le_bytes([b[4], b[5]]);
    if v != HISTORY_VERSION {
        return Err(format!(
            "version {v} at byte 4 (this build reads {HISTORY_VERSION})"
        ));
    }
    if b[32..40] != check8(&b[..32]) {
        return Err("header check mismatch at byte 32".into());
    }
    Ok((
        GroupId(le_u64(b, 8)),
        Seq(le_u64(b, 16)),
        le_u64(b, 24) as i64,
    ))
}

/// Encodes a record; data of at least 128 bytes is zstd-compressed at `level` when that saves
/// at least 1/32 of it (pure).
///
/// # Errors
/// [`ReplicatorError::CorruptHistory`] (offset 0) when the name or data is over its limit.
pub fn encode_record(r: &Record, level: i32) -> Result<Vec<u8>> {
    encode_with(r, &mut |d| zstd::bulk::compress(d, level).ok())
}

/// Data at least this long is probed before it is compressed whole ([`worth_compressing`]).
pub const PROBE_MIN_LEN: usize = 32 << 10;
/// Bytes of each of the probe's samples.
const PROBE_SAMPLE: usize = 4 << 10;

/// Whether `data` is worth compressing whole: short data always is; longer data when three
/// samples of 4 KiB (start, middle, end) compress by at least 1/16 with `compress`. Costs
/// about 1/20 of compressing 256 KiB, and spares compressing incompressible undo data (noise,
/// data compressed already) only to store it raw.
pub fn worth_compressing(data: &[u8], compress: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> bool {
    if data.len() < PROBE_MIN_LEN {
        return true;
    }
    let mid = (data.len() - PROBE_SAMPLE) / 2;
    let mut sample = Vec::with_capacity(3 * PROBE_SAMPLE);
    for at in [0, mid, data.len() - PROBE_SAMPLE] {
        sample.extend_from_slice(&data[at..at + PROBE_SAMPLE]);
    }
    compress(&sample).is_some_and(|c| c.len() + sample.len() / 16 <= sample.len())
}

/// [`encode_record`] with the caller's compressor (a reused zstd context).
pub(super) fn encode_with(
    r: &Record,
    compress: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
) -> Result<Vec<u8>> {
    let bad = |reason: String| ReplicatorError::CorruptHistory {
        path: PathBuf::from("<encode>"),
        offset: 0,
        reason,
    };
    if r.name.len() > MAX_NAME_LEN {
        return Err(bad(format!("name of {} bytes", r.name.len())));
    }
    if r.data.len() > MAX_RECORD_DATA || r.zeros as usize > MAX_RECORD_DATA {
        return Err(bad(format!(
            "data of {} bytes, {} zero bytes",
            r.data.len(),
            r.zeros
        )));
    }
    if r.zeros > 0 && !r.data.is_empty() {
        return Err(bad("a record of zero bytes with data".into()));
    }
    let mut flags = if r.last { FLAG_LAST } else { 0 };
    if r.zeros > 0 {
        flags |= FLAG_ZERO;
    }
    let compressed = if r.data.len() >= MIN_COMPRESS_LEN && worth_compressing(&r.data, compress) {
        compress(&r.data).filter(|c| c.len() + r.data.len() / 32 <= r.data.len())
    } else {
        None
    };
    if compressed.is_some() {
        flags |= FLAG_ZSTD;
    }
    let stored: &[u8] = compressed.as_deref().unwrap_or(&r.data);
    let mut hasher = blake3::Hasher::new();
    hasher.update(r.name.as_bytes());
    hasher.update(stored);
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + r.name.len() + stored.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.push(r.kind as u8);
    out.push(flags);
    out.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
    out.extend_from_slice(&r.seq.0.to_le_bytes());
    out.extend_from_slice(&r.captured_ms.to_le_bytes());
    out.extend_from_slice(&r.offset.to_le_bytes());
    out.extend_from_slice(&r.old_len.to_le_bytes());
    let raw_len = if r.zeros > 0 {
        r.zeros
    } else {
        r.data.len() as u32
    };
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
    out.extend_from_slice(hasher.finalize().as_bytes());
    let c = check8(&out[..80]);
    out.extend_from_slice(&c);
    out.extend_from_slice(r.name.as_bytes());
    out.extend_from_slice(stored);
    Ok(out)
}

/// Parses and checks a record header: magic, header check, kind, flags, limits (pure).
///
/// # Errors
/// A reason naming the failed check and its byte within the record.
pub fn parse_record_header(b: &[u8]) -> std::result::Result<RecordHeader, String> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "{} bytes, a record header needs {RECORD_HEADER_LEN}",
            b.len()
        ));
    }
    if b[0..4] != RECORD_MAGIC {
        return Err(format!(
            "magic {:02x?} at byte 0 (expected \"TNDU\")",
            &b[0..4]
        ));
    }
    if b[80..88] != check8(&b[..80]) {
        return Err("record header check mismatch at byte 80".into());
    }
    let kind =
        RecordKind::from_u8(b[4]).ok_or_else(|| format!("unknown kind {} at byte 4", b[4]))?;
    let flags = b[5];
    if flags & !(FLAG_LAST | FLAG_ZSTD | FLAG_ZERO) != 0 {
        return Err(format!("unknown flags {flags:#04x} at byte 5"));
    }
    if flags & FLAG_ZERO != 0 && (flags & FLAG_ZSTD != 0 || kind != RecordKind::Undo) {
        return Err(format!(
            "flags {flags:#04x} at byte 5: zero bytes only in an uncompressed undo record"
        ));
    }
    let name_len = u16::from_le_bytes([b[6], b[7]]);
    if usize::from(name_len) > MAX_NAME_LEN {
        return Err(format!(
            "name length {name_len} at byte 6 over {MAX_NAME_LEN}"
        ));
    }
    let raw_len = le_u32(b, 40);
    let stored_len = le_u32(b, 44);
    if raw_len as usize > MAX_RECORD_DATA {
        return Err(format!(
            "raw length {raw_len} at byte 40 over {MAX_RECORD_DATA}"
        ));
    }
    let max_stored = if flags & FLAG_ZSTD != 0 {
        zstd::zstd_safe::compress_bound(raw_len as usize) as u32
    } else if flags & FLAG_ZERO != 0 {
        0
    } else {
        raw_len
    };
    if stored_len > max_stored || (flags & FLAG_ZSTD == 0 && stored_len != max_stored) {
        return Err(format!(
            "stored length {stored_len} at byte 44 (raw {raw_len})"
        ));
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[48..80]);
    Ok(RecordHeader {
        kind,
        flags,
        name_len,
        seq: Seq(le_u64(b, 8)),
        captured_ms: le_u64(b, 16) as i64,
        offset: le_u64(b, 24),
        old_len: le_u64(b, 32),
        raw_len,
        stored_len,
        hash,
    })
}

/// Decodes the body (name ‖ stored data) of a record whose header parsed, checking
/// decompressed length and blake3 (pure).
///
/// # Errors
/// A reason naming the failed check.
pub fn decode_record_body(h: &RecordHeader, body: &[u8]) -> std::result::Result<Record, String> {
    let name_len = usize::from(h.name_len);
    if body.len() as u64 != u64::from(h.name_len) + u64::from(h.stored_len) {
        return Err(format!(
            "body of {} bytes, header says {}",
            body.len(),
            name_len + h.stored_len as usize
        ));
    }
    let name = std::str::from_utf8(&body[..name_len])
        .map_err(|_| "name is not UTF-8".to_string())?
        .to_owned();
    let stored = &body[name_len..];
    let mut hasher = blake3::Hasher::new();
    hasher.update(name.as_bytes());
    hasher.update(stored);
    if *hasher.finalize().as_bytes() != h.hash {
        return Err("blake3 of name and stored data mismatch".into());
    }
    let data = if h.flags & FLAG_ZSTD != 0 {
        let d = zstd::bulk::decompress(stored, h.raw_len as usize)
            .map_err(|e| format!("data does not decompress: {e}"))?;
        if d.len() != h.raw_len as usize {
            return Err(format!(
                "data decompressed to {} bytes, header says {}",
                d.len(),
                h.raw_len
            ));
        }
        d
    } else {
        stored.to_vec()
    };
    let zeros = if h.flags & FLAG_ZERO != 0 {
        h.raw_len
    } else {
        0
    };
    Ok(Record {
        kind: h.kind,
        last: h.flags & FLAG_LAST != 0,
        seq: h.seq,
        captured_ms: h.captured_ms,
        name,
        offset: h.offset,
        old_len: h.old_len,
        data,
        zeros,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    fn undo(seq: u64, data: Vec<u8>) -> Record {
        Record {
            kind: RecordKind::Undo,
            last: true,
            seq: Seq(seq),
            captured_ms: 1_700_000_000_000,
            name: "disk0".into(),
            offset: 4096,
            old_len: 1 << 20,
            data,
            zeros: 0,
        }
    }

    #[test]
    fn a_hole_is_a_record_of_zero_bytes_with_nothing_stored() {
        let mut r = undo(7, Vec::new());
        r.zeros = 1 << 20;
        let mut compressed = 0;
        let b = encode_with(&r, &mut |d| {
            compressed += 1;
            zstd::bulk::compress(d, 1).ok()
        })
        .unwrap();
        assert_eq!(compressed, 0, "nothing to compress");
        assert_eq!(b.len(), RECORD_HEADER_LEN + "disk0".len());
        let h = parse_record_header(&b).unwrap();
        assert_eq!(
            (h.flags & FLAG_ZERO, h.raw_len, h.stored_len),
            (FLAG_ZERO, 1 << 20, 0)
        );
        assert_eq!(decode_record_body(&h, &b[RECORD_HEADER_LEN..]).unwrap(), r);
        // Zero bytes and data at once, or more zero bytes than a record holds: refused.
        let mut both = undo(7, vec![1]);
        both.zeros = 4;
        assert!(encode_record(&both, 1).is_err());
        r.zeros = MAX_RECORD_DATA as u32 + 1;
        assert!(encode_record(&r, 1).is_err());
    }

    #[test]
    fn a_zero_record_header_that_stores_bytes_or_compresses_is_refused() {
        let mut r = undo(7, Vec::new());
        r.zeros = 4096;
        let good = encode_record(&r, 1).unwrap();
        let reseal = |mut b: Vec<u8>| {
            let c = check8(&b[..80]);
            b[80..88].copy_from_slice(&c);
            b
        };
        // A stored length for a hole.
        let mut b = good.clone();
        b[44..48].copy_from_slice(&16u32.to_le_bytes());
        let e = parse_record_header(&reseal(b)).unwrap_err();
        assert!(e.contains("stored length 16 at byte 44"), "{e}");
        // Zero bytes said to be compressed.
        let mut b = good.clone();
        b[5] |= FLAG_ZSTD;
        let e = parse_record_header(&reseal(b)).unwrap_err();
        assert!(e.contains("at byte 5: zero bytes only"), "{e}");
        // A point record marked as zero bytes.
        let mut b = good;
        b[4] = RecordKind::Checkpoint as u8;
        let e = parse_record_header(&reseal(b)).unwrap_err();
        assert!(e.contains("at byte 5: zero bytes only"), "{e}");
    }

    #[test]
    fn record_golden_bytes() {
        let b = encode_record(&undo(7, vec![0xab; 4]), 1).unwrap();
        assert_eq!(&b[0..8], b"TNDU\x01\x01\x05\x00");
        assert_eq!(&b[8..16], &7u64.to_le_bytes());
        assert_eq!(&b[16..24], &1_700_000_000_000i64.to_le_bytes());
        assert_eq!(&b[24..32], &4096u64.to_le_bytes());
        assert_eq!(&b[32..40], &(1u64 << 20).to_le_bytes());
        assert_eq!(&b[40..48], b"\x04\x00\x00\x00\x04\x00\x00\x00");
        let mut h = blake3::Hasher::new();
        h.update(b"disk0");
        h.update(&[0xab; 4]);
        assert_eq!(&b[48..80], h.finalize().as_bytes());
        assert_eq!(&b[80..88], &blake3::hash(&b[..80]).as_bytes()[..8]);
        assert_eq!(&b[88..], b"disk0\xab\xab\xab\xab");
        let hd = parse_record_header(&b).unwrap();
        assert_eq!(
            decode_record_body(&hd, &b[88..]).unwrap(),
            undo(7, vec![0xab; 4])
        );
    }

    #[test]
    fn record_header_claiming_4_gib_is_refused_before_allocating() {
        let mut b = encode_record(&undo(7, vec![0xab; 4]), 1).unwrap();
        b[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        b[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
        let check = check8(&b[..80]);
        b[80..88].copy_from_slice(&check);
        let e = parse_record_header(&b[..RECORD_HEADER_LEN]).unwrap_err();
        assert!(e.contains("raw length 4294967295 at byte 40"), "{e}");
    }

    #[test]
    fn segment_header_golden_bytes() {
        let h = encode_segment_header(GroupId(0x0102), Seq(9), 5);
        assert_eq!(&h[0..8], b"TNDH\x01\x00\x00\x00");
        assert_eq!(&h[8..16], &0x0102u64.to_le_bytes());
        assert_eq!(&h[16..24], &9u64.to_le_bytes());
        assert_eq!(&h[24..32], &5i64.to_le_bytes());
        assert_eq!(decode_segment_header(&h), Ok((GroupId(0x0102), Seq(9), 5)));
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_segment_header(&bad).unwrap_err().contains("check"));
    }

    #[test]
    fn every_flipped_byte_of_a_record_is_detected() {
        for data in [vec![3u8; 8], vec![0u8; 4096]] {
            let b = encode_record(&undo(3, data), 1).unwrap();
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x10;
                let r = parse_record_header(&c).and_then(|h| {
                    let end = h.record_len() as usize;
                    if end != c.len() {
                        return Err("length".into());
                    }
                    decode_record_body(&h, &c[RECORD_HEADER_LEN..end])
                });
                assert!(r.is_err(), "#{i}: flipped byte accepted");
            }
        }
    }

    #[test]
    fn compressible_undo_data_is_stored_compressed() {
        let b = encode_record(&undo(1, vec![0u8; 65536]), 1).unwrap();
        assert!(b.len() < 2000, "{} bytes", b.len());
        assert_eq!(b[5] & FLAG_ZSTD, FLAG_ZSTD);
    }

    #[test]
    fn incompressible_undo_data_is_stored_raw_after_a_probe_only() {
        let noise = crate::testdata::noise(256 << 10);
        let mut sizes = Vec::new();
        let mut spy = |d: &[u8]| {
            sizes.push(d.len());
            zstd::bulk::compress(d, 1).ok()
        };
        let b = encode_with(&undo(1, noise.clone()), &mut spy).unwrap();
        assert_eq!(b[5] & FLAG_ZSTD, 0);
        assert_eq!(
            sizes,
            vec![3 * PROBE_SAMPLE],
            "only the probe was compressed"
        );
        let h = parse_record_header(&b).unwrap();
        assert_eq!(
            decode_record_body(&h, &b[RECORD_HEADER_LEN..])
                .unwrap()
                .data,
            noise
        );
        // Compressible data passes the probe and is compressed whole.
        let text = b"old bytes of a volume ".repeat(12_000);
        assert!(worth_compressing(&text, &mut |d| zstd::bulk::compress(
            d, 1
        )
        .ok()));
        assert!(
            worth_compressing(&noise[..1000], &mut |_| None),
            "short data is not probed"
        );
    }

    proptest! {
        #[test]
        fn records_round_trip(seq in 0u64..u64::MAX, ms in i64::MIN..i64::MAX,
                              data in proptest::collection::vec(any::<u8>(), 0..600),
                              name in "[a-z0-9]{0,20}", last in any::<bool>()) {
            let r = Record { kind: RecordKind::Undo, last, seq: Seq(seq), captured_ms: ms,
                             name, offset: seq / 3, old_len: seq / 2, data, zeros: 0 };
            let b = encode_record(&r, 1).unwrap();
            let h = parse_record_header(&b).unwrap();
            prop_assert_eq!(h.record_len() as usize, b.len());
            prop_assert_eq!(decode_record_body(&h, &b[RECORD_HEADER_LEN..]).unwrap(), r);
        }
    }
}
