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
//! Crash safety: records are written with `write(2)` before the `pwrite` they undo, so a
//! killed process leaves both in the page cache in that order; the segment is fdatasync'd
//! before the watermark covering it is persisted ([`History::sync`]). The last record of each
//! seq carries [`FLAG_LAST`]; after a restart, seqs up to the last complete one are not
//! recorded again (their recorded old bytes are the right ones), later seqs are recorded again
//! (a partial earlier attempt holds the same old bytes: replaying both is harmless).
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
//! | 5 | 1 | flags (bit 0: last record of its seq; bit 1: data zstd-compressed) |
//! | 6 | 2 | name length (resource for undo and barrier, tag for checkpoints) |
//! | 8 | 8 | seq |
//! | 16 | 8 | capture time, unix ms |
//! | 24 | 8 | byte offset of the old bytes in the resource |
//! | 32 | 8 | resource length before the change |
//! | 40 | 4 | raw data length |
//! | 44 | 4 | stored data length |
//! | 48 | 32 | blake3 of name ‖ stored data (checked before decompressing) |
//! | 80 | 8 | header check: first 8 bytes of blake3 of bytes 0..80 |

use crate::error::{ReplicatorError, Result};
use crate::meta::sync_dir;
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
    /// The old bytes (undo); empty for points.
    pub data: Vec<u8>,
}

/// A recovery point: the state of the whole group after the change at `seq` was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The seq the state is at.
    pub seq: Seq,
    /// Capture time of that change on the primary, unix ms.
    pub captured_ms: i64,
    /// Barrier, periodic checkpoint or tagged checkpoint.
    pub kind: RecordKind,
    /// The tag (tagged checkpoints), the resource (barriers), or empty.
    pub tag: String,
}

/// The parsed, checked header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// What it is.
    pub kind: RecordKind,
    /// Flag bits ([`FLAG_LAST`], [`FLAG_ZSTD`]).
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

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

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

/// [`encode_record`] with the caller's compressor (a reused zstd context).
fn encode_with(r: &Record, compress: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>) -> Result<Vec<u8>> {
    let bad = |reason: String| ReplicatorError::CorruptHistory {
        path: PathBuf::from("<encode>"),
        offset: 0,
        reason,
    };
    if r.name.len() > MAX_NAME_LEN {
        return Err(bad(format!("name of {} bytes", r.name.len())));
    }
    if r.data.len() > MAX_RECORD_DATA {
        return Err(bad(format!("data of {} bytes", r.data.len())));
    }
    let mut flags = if r.last { FLAG_LAST } else { 0 };
    let compressed = if r.data.len() >= MIN_COMPRESS_LEN {
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
    out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
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
    if flags & !(FLAG_LAST | FLAG_ZSTD) != 0 {
        return Err(format!("unknown flags {flags:#04x} at byte 5"));
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
    } else {
        raw_len
    };
    if stored_len > max_stored || (flags & FLAG_ZSTD == 0 && stored_len != raw_len) {
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
    Ok(Record {
        kind: h.kind,
        last: h.flags & FLAG_LAST != 0,
        seq: h.seq,
        captured_ms: h.captured_ms,
        name,
        offset: h.offset,
        old_len: h.old_len,
        data,
    })
}

/// How a recovery point is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The latest point captured at or before this time (unix ms).
    At(i64),
    /// The latest checkpoint with this tag.
    Tag(String),
    /// Exactly this seq, if it is a point.
    Seq(Seq),
}

/// Picks the recovery point for `sel` among `points` (in seq order), given the oldest seq the
/// history can still rewind to and the watermark of the live copy (pure).
///
/// # Errors
/// A reason naming what was asked and what the history holds.
pub fn select_point(
    points: &[Point],
    sel: &Selector,
    oldest: Seq,
    watermark: Seq,
) -> std::result::Result<Point, String> {
    let usable = |p: &&Point| p.seq >= oldest && p.seq <= watermark;
    let found = match sel {
        Selector::At(ms) => points
            .iter()
            .filter(usable)
            .filter(|p| p.captured_ms <= *ms)
            .max_by_key(|p| (p.seq, p.kind == RecordKind::Tagged)),
        Selector::Tag(tag) => points
            .iter()
            .filter(|p| p.kind == RecordKind::Tagged && p.tag == *tag)
            .filter(usable)
            .max_by_key(|p| p.seq),
        Selector::Seq(s) => points.iter().filter(usable).find(|p| p.seq == *s),
    };
    if let Some(p) = found {
        return Ok(p.clone());
    }
    let range = match (
        points.iter().find(|p| p.seq >= oldest),
        points.iter().rev().find(|p| p.seq <= watermark),
    ) {
        (Some(a), Some(b)) => format!(
            "the history holds points from seq {} ({} ms) to seq {} ({} ms)",
            a.seq, a.captured_ms, b.seq, b.captured_ms
        ),
        _ => "the history holds no recovery point".to_string(),
    };
    Err(match sel {
        Selector::At(ms) => format!("no recovery point at or before {ms} ms: {range}"),
        Selector::Tag(t) => {
            if points
                .iter()
                .any(|p| p.kind == RecordKind::Tagged && p.tag == *t)
            {
                format!("checkpoint {t:?} is older than the history retains: {range}")
            } else {
                format!("no checkpoint tagged {t:?}: {range}")
            }
        }
        Selector::Seq(s) => format!("seq {s} is not a recovery point: {range}"),
    })
}

/// Retention and layout of one group's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Keep segments whose newest record is younger than this (ms).
    pub retention_ms: i64,
    /// Most bytes kept (whole oldest segments go first); no cap when `None`.
    pub max_bytes: Option<u64>,
    /// Size at which the active segment is closed.
    pub segment_bytes: u64,
    /// Periodic checkpoint interval (ms of capture time).
    pub checkpoint_interval_ms: i64,
    /// zstd level of undo data.
    pub level: i32,
}

impl HistoryConfig {
    /// A config with `retention_ms`, no size cap, default segments and a 5 s checkpoint.
    pub fn new(retention_ms: i64) -> HistoryConfig {
        HistoryConfig {
            retention_ms,
            max_bytes: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            checkpoint_interval_ms: 5000,
            level: 1,
        }
    }
}

#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    base: Seq,
    bytes: u64,
    /// Capture time of the newest record (0 when none).
    last_ms: i64,
    /// Point records in it (the in-memory points are in segment order).
    points: usize,
}

/// A segment as seen at one moment, kept open so trimming cannot take it from a reader.
#[derive(Debug)]
pub struct SegmentSnap {
    /// The segment file.
    pub path: PathBuf,
    /// An open handle (an unlinked file stays readable through it).
    pub file: File,
    /// Bytes of whole records at that moment.
    pub len: u64,
}

/// One group's history at the replica: the active segment, the closed ones, the points.
#[derive(Debug)]
pub struct History {
    dir: PathBuf,
    group: GroupId,
    cfg: HistoryConfig,
    segments: VecDeque<Segment>,
    active: Option<File>,
    points: VecDeque<Point>,
    last_complete: Seq,
    /// Highest seq recorded (or the watermark the history started at): the base of the next
    /// segment, since every record of a seq at or below it is in an older segment.
    max_seq: Seq,
    last_checkpoint_ms: i64,
    dirty: bool,
    total: u64,
    zstd: Zstd,
}

/// One zstd context reused for every record (creating one per record costs more than
/// compressing a 4 KiB block).
struct Zstd(zstd::bulk::Compressor<'static>);

impl std::fmt::Debug for Zstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Zstd")
    }
}

fn segment_name(base: Seq) -> String {
    format!("{:020}.hist", base.0)
}

impl History {
    /// Opens (or creates) the history in `dir` for a replica at `watermark`: scans every
    /// segment, cuts a torn tail off the newest one, and drops a corrupt segment together with
    /// everything older (history is lost, never wrong). History that runs past the watermark
    /// (the files went back, a resync) is discarded.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] naming the file.
    pub fn open(dir: &Path, group: GroupId, watermark: Seq, cfg: HistoryConfig) -> Result<History> {
        std::fs::create_dir_all(dir).map_err(|e| ReplicatorError::io("create dir", dir, e))?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| ReplicatorError::io("read dir", dir, e))? {
            let e = e.map_err(|e| ReplicatorError::io("read dir", dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name
                .strip_suffix(".hist")
                .and_then(|n| n.parse::<u64>().ok())
            {
                names.push((n, e.path()));
            }
        }
        names.sort();
        let zstd = zstd::bulk::Compressor::new(cfg.level)
            .map_err(|e| ReplicatorError::io("zstd context", dir, e))?;
        let mut h = History {
            zstd: Zstd(zstd),
            dir: dir.to_owned(),
            group,
            cfg,
            segments: VecDeque::new(),
            active: None,
            points: VecDeque::new(),
            last_complete: watermark,
            max_seq: watermark,
            last_checkpoint_ms: 0,
            dirty: false,
            total: 0,
        };
        let count = names.len();
        let mut max_seq = Seq(0);
        for (i, (_, path)) in names.into_iter().enumerate() {
            let newest = i + 1 == count;
            let len = std::fs::metadata(&path)
                .map_err(|e| ReplicatorError::io("stat", &path, e))?
                .len();
            if newest && len < SEGMENT_HEADER_LEN as u64 {
                // Created, header not yet durable when the process stopped.
                remove(&path)?;
                continue;
            }
            match scan_segment(&path, group, newest) {
                Ok(s) => {
                    h.total += s.seg.bytes;
                    max_seq = max_seq.max(s.max_seq);
                    h.points.extend(s.points);
                    if s.last_complete > Seq(0) {
                        h.last_complete = s.last_complete;
                    }
                    h.segments.push_back(s.seg);
                }
                Err(e) => {
                    tracing::error!(error = %e, "history segment unusable: dropping it and every older one");
                    for s in h.segments.drain(..) {
                        remove(&s.path)?;
                    }
                    h.points.clear();
                    h.total = 0;
                    remove(&path)?;
                }
            }
        }
        if max_seq > watermark {
            tracing::warn!(dir = %dir.display(), %watermark, history = %max_seq, "history runs past the watermark: discarded");
            h.reset(watermark)?;
        }
        h.last_checkpoint_ms = h
            .points
            .iter()
            .rev()
            .find(|p| p.kind != RecordKind::Barrier)
            .map(|p| p.captured_ms)
            .unwrap_or(0);
        if let Some(last) = h.segments.back() {
            let f = OpenOptions::new()
                .append(true)
                .open(&last.path)
                .map_err(|e| ReplicatorError::io("open", &last.path, e))?;
            h.active = Some(f);
        }
        Ok(h)
    }

    /// Forgets all history: the replica files no longer follow the recorded stream (a resync,
    /// a reset watermark). The next records start a segment after `watermark`.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] removing a segment.
    pub fn reset(&mut self, watermark: Seq) -> Result<()> {
        self.active = None;
        for s in self.segments.drain(..) {
            remove(&s.path)?;
        }
        self.points.clear();
        self.total = 0;
        self.last_complete = watermark;
        self.max_seq = watermark;
        self.dirty = false;
        sync_dir(&self.dir)
    }

    /// Whether the change at `seq` must be recorded (it was not completely before a restart).
    pub fn wants(&self, seq: Seq) -> bool {
        seq > self.last_complete
    }

    fn append(&mut self, r: &Record) -> Result<()> {
        let zc = &mut self.zstd.0;
        let bytes = encode_with(r, &mut |d| zc.compress(d).ok())?;
        let rotate = self
            .segments
            .back()
            .is_none_or(|s| s.bytes >= self.cfg.segment_bytes && self.max_seq > s.base);
        if self.active.is_none() || rotate {
            self.start_segment(self.max_seq, r.captured_ms)?;
        }
        let (Some(f), Some(seg)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Err(ReplicatorError::Task(
                "history has no active segment".into(),
            ));
        };
        f.write_all(&bytes)
            .map_err(|e| ReplicatorError::io("append", &seg.path, e))?;
        seg.bytes += bytes.len() as u64;
        seg.last_ms = seg.last_ms.max(r.captured_ms);
        self.total += bytes.len() as u64;
        self.dirty = true;
        if r.last {
            self.last_complete = self.last_complete.max(r.seq);
        }
        self.max_seq = self.max_seq.max(r.seq);
        if r.kind != RecordKind::Undo {
            seg.points += 1;
            self.points.push_back(Point {
                seq: r.seq,
                captured_ms: r.captured_ms,
                kind: r.kind,
                tag: r.name.clone(),
            });
        }
        Ok(())
    }

    fn start_segment(&mut self, base: Seq, now_ms: i64) -> Result<()> {
        if let (Some(f), Some(s)) = (self.active.as_ref(), self.segments.back()) {
            f.sync_data()
                .map_err(|e| ReplicatorError::io("fdatasync", &s.path, e))?;
        }
        let path = self.dir.join(segment_name(base));
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| ReplicatorError::io("create", &path, e))?;
        let len = f
            .metadata()
            .map_err(|e| ReplicatorError::io("stat", &path, e))?
            .len();
        if len == 0 {
            f.write_all(&encode_segment_header(self.group, base, now_ms))
                .map_err(|e| ReplicatorError::io("write", &path, e))?;
        }
        f.sync_data()
            .map_err(|e| ReplicatorError::io("fdatasync", &path, e))?;
        sync_dir(&self.dir)?;
        let bytes = len.max(SEGMENT_HEADER_LEN as u64);
        if self.segments.back().is_none_or(|s| s.path != path) {
            self.total += bytes;
            self.segments.push_back(Segment {
                path,
                base,
                bytes,
                last_ms: now_ms,
                points: 0,
            });
        }
        self.active = Some(f);
        Ok(())
    }

    /// Records the old bytes of `[offset, offset + len)` of `file` (length before the change:
    /// its current length) for the change at `seq`, in records of at most
    /// [`MAX_RECORD_DATA`]; `last` marks the final record of the seq. Call it BEFORE writing.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] reading the resource or appending.
    #[allow(clippy::too_many_arguments)]
    pub fn record_undo(
        &mut self,
        seq: Seq,
        captured_ms: i64,
        resource: &str,
        file: &File,
        path: &Path,
        offset: u64,
        len: u64,
        last: bool,
    ) -> Result<()> {
        let old_len = file
            .metadata()
            .map_err(|e| ReplicatorError::io("stat", path, e))?
            .len();
        let end = offset.saturating_add(len).min(old_len);
        let mut at = offset;
        loop {
            let n = end.saturating_sub(at).min(MAX_RECORD_DATA as u64) as usize;
            let mut data = vec![0u8; n];
            file.read_exact_at(&mut data, at)
                .map_err(|e| ReplicatorError::io("read old bytes", path, e))?;
            let done = at + n as u64 >= end;
            self.append(&Record {
                kind: RecordKind::Undo,
                last: last && done,
                seq,
                captured_ms,
                name: resource.to_owned(),
                offset: at,
                old_len,
                data,
            })?;
            at += n as u64;
            if done {
                return Ok(());
            }
        }
    }

    /// Records a recovery point at `seq` (a barrier names its resource, a tagged checkpoint
    /// its tag); `last` marks the final record of the seq.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] appending.
    pub fn record_point(
        &mut self,
        seq: Seq,
        captured_ms: i64,
        kind: RecordKind,
        name: &str,
        last: bool,
    ) -> Result<()> {
        if kind != RecordKind::Barrier {
            self.last_checkpoint_ms = captured_ms;
        }
        self.append(&Record {
            kind,
            last,
            seq,
            captured_ms,
            name: name.to_owned(),
            offset: 0,
            old_len: 0,
            data: Vec::new(),
        })
    }

    /// After a batch applied through `seq` (captured at `captured_ms`): marks a periodic
    /// checkpoint when `checkpoint_interval` of capture time has passed since the last one.
    /// The applied prefix of the group's one ordered stream is a consistent cut of all its
    /// resources.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] appending.
    pub fn maybe_checkpoint(&mut self, seq: Seq, captured_ms: i64) -> Result<()> {
        let newer = self.points.back().is_none_or(|p| p.seq < seq);
        if newer && captured_ms - self.last_checkpoint_ms >= self.cfg.checkpoint_interval_ms {
            self.record_point(seq, captured_ms, RecordKind::Checkpoint, "", false)?;
        }
        Ok(())
    }

    /// Makes every appended record durable (before the watermark covering them is persisted).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`].
    pub fn sync(&mut self) -> Result<()> {
        if self.dirty {
            if let (Some(f), Some(s)) = (self.active.as_ref(), self.segments.back()) {
                f.sync_data()
                    .map_err(|e| ReplicatorError::io("fdatasync", &s.path, e))?;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// Removes whole segments, oldest first, while the oldest is entirely older than the
    /// retention window or the history is over its size cap. The active segment stays.
    /// Returns the number of segments removed.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] removing a file.
    pub fn trim(&mut self, now_ms: i64) -> Result<usize> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let s = &self.segments[0];
            let old = s.last_ms < now_ms - self.cfg.retention_ms;
            let big = self.cfg.max_bytes.is_some_and(|m| self.total > m);
            if !(old || big) {
                break;
            }
            let Some(s) = self.segments.pop_front() else {
                break;
            };
            remove(&s.path)?;
            self.total -= s.bytes;
            for _ in 0..s.points {
                self.points.pop_front();
            }
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// The oldest seq the history can rewind a copy to (the base of the oldest segment).
    pub fn oldest_seq(&self) -> Seq {
        self.segments
            .front()
            .map(|s| s.base)
            .unwrap_or(self.max_seq)
    }

    /// The oldest recovery point still reachable.
    pub fn oldest_point(&self) -> Option<&Point> {
        let base = self.oldest_seq();
        self.points.iter().find(|p| p.seq >= base)
    }

    /// Every recovery point, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.points.iter().cloned().collect()
    }

    /// Bytes of history on disk.
    pub fn bytes(&self) -> u64 {
        self.total
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Open handles on every segment with its current length (call it under the apply lock
    /// together with the copy of the live files).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] opening a segment.
    pub fn snapshot(&self) -> Result<Vec<SegmentSnap>> {
        self.segments
            .iter()
            .map(|s| {
                let file =
                    File::open(&s.path).map_err(|e| ReplicatorError::io("open", &s.path, e))?;
                Ok(SegmentSnap {
                    path: s.path.clone(),
                    file,
                    len: s.bytes,
                })
            })
            .collect()
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ReplicatorError::io("remove", path, e)),
    }
}

struct Scanned {
    seg: Segment,
    points: Vec<Point>,
    last_complete: Seq,
    max_seq: Seq,
}

/// Reads a segment, checking every record; the newest segment's torn tail is cut off.
fn scan_segment(path: &Path, group: GroupId, newest: bool) -> Result<Scanned> {
    let corrupt = |offset: u64, reason: String| ReplicatorError::CorruptHistory {
        path: path.to_owned(),
        offset,
        reason,
    };
    let mut f = File::open(path).map_err(|e| ReplicatorError::io("open", path, e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| ReplicatorError::io("read", path, e))?;
    let (g, base, created) = decode_segment_header(&bytes).map_err(|r| corrupt(0, r))?;
    if g != group {
        return Err(corrupt(
            8,
            format!("segment of group {g}, expected {group}"),
        ));
    }
    let mut out = Scanned {
        seg: Segment {
            path: path.to_owned(),
            base,
            bytes: SEGMENT_HEADER_LEN as u64,
            last_ms: created,
            points: 0,
        },
        points: Vec::new(),
        last_complete: Seq(0),
        max_seq: base,
    };
    let mut at = SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        let step = parse_record_header(&bytes[at..]).and_then(|h| {
            let end = at as u64 + h.record_len();
            if end > bytes.len() as u64 {
                return Err(format!(
                    "record runs to byte {end}, the file has {}",
                    bytes.len()
                ));
            }
            decode_record_body(&h, &bytes[at + RECORD_HEADER_LEN..end as usize]).map(|r| (h, r))
        });
        match step {
            Ok((h, r)) => {
                if r.last {
                    out.last_complete = out.last_complete.max(r.seq);
                }
                out.max_seq = out.max_seq.max(r.seq);
                out.seg.last_ms = out.seg.last_ms.max(r.captured_ms);
                if r.kind != RecordKind::Undo {
                    out.seg.points += 1;
                    out.points.push(Point {
                        seq: r.seq,
                        captured_ms: r.captured_ms,
                        kind: r.kind,
                        tag: r.name,
                    });
                }
                at += h.record_len() as usize;
            }
            Err(reason) if newest => {
                tracing::warn!(path = %path.display(), offset = at, %reason, "cutting the torn tail of the history");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| ReplicatorError::io("open", path, e))?;
                f.set_len(at as u64)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| ReplicatorError::io("truncate", path, e))?;
                break;
            }
            Err(reason) => return Err(corrupt(at as u64, reason)),
        }
    }
    out.seg.bytes = at as u64;
    Ok(out)
}

/// Rewinds copies of a group's resources from `upto` (the watermark they were copied at) back
/// to `target`, applying every undo record of seqs `target+1 ..= upto` newest first; `files`
/// maps resource names to the copies. Returns the number of records applied.
///
/// # Errors
/// [`ReplicatorError::CorruptHistory`] naming segment and offset (the copy is then not a
/// recovery and must be discarded), [`ReplicatorError::NoRecoveryPoint`] when the segments do
/// not reach back to `target`, or [`ReplicatorError::Io`].
pub fn rewind(
    segments: &[SegmentSnap],
    target: Seq,
    upto: Seq,
    files: &HashMap<String, (File, PathBuf)>,
) -> Result<u64> {
    let mut applied = 0u64;
    let mut reached = target >= upto;
    if let Some(first) = segments.first() {
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        first
            .file
            .read_exact_at(&mut head, 0)
            .map_err(|e| ReplicatorError::io("read", &first.path, e))?;
        let (_, base, _) =
            decode_segment_header(&head).map_err(|reason| ReplicatorError::CorruptHistory {
                path: first.path.clone(),
                offset: 0,
                reason,
            })?;
        if base > target && target < upto {
            return Err(ReplicatorError::NoRecoveryPoint(format!(
                "the history reaches back to seq {base}, not to seq {target}"
            )));
        }
    }
    for seg in segments.iter().rev() {
        if reached {
            break;
        }
        let corrupt = |offset: u64, reason: String| ReplicatorError::CorruptHistory {
            path: seg.path.clone(),
            offset,
            reason,
        };
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        seg.file
            .read_exact_at(&mut head, 0)
            .map_err(|e| ReplicatorError::io("read", &seg.path, e))?;
        let (_, base, _) = decode_segment_header(&head).map_err(|r| corrupt(0, r))?;
        // Records of seq `base` itself may sit here (a change split over two segments).
        if base > upto {
            continue;
        }
        // Index the undo records of the wanted seqs, then apply them newest first.
        let mut index = Vec::new();
        let mut at = SEGMENT_HEADER_LEN as u64;
        let mut rh = [0u8; RECORD_HEADER_LEN];
        while at < seg.len {
            seg.file
                .read_exact_at(&mut rh, at)
                .map_err(|e| ReplicatorError::io("read", &seg.path, e))?;
            let h = parse_record_header(&rh).map_err(|r| corrupt(at, r))?;
            if h.kind == RecordKind::Undo && h.seq > target && h.seq <= upto {
                index.push((at, h));
            }
            at += h.record_len();
        }
        for (at, h) in index.into_iter().rev() {
            let mut body = vec![0u8; (h.record_len() - RECORD_HEADER_LEN as u64) as usize];
            seg.file
                .read_exact_at(&mut body, at + RECORD_HEADER_LEN as u64)
                .map_err(|e| ReplicatorError::io("read", &seg.path, e))?;
            let r = decode_record_body(&h, &body).map_err(|reason| corrupt(at, reason))?;
            let Some((f, path)) = files.get(&r.name) else {
                return Err(corrupt(
                    at,
                    format!("undo record for unknown resource {:?}", r.name),
                ));
            };
            f.write_all_at(&r.data, r.offset)
                .map_err(|e| ReplicatorError::io("pwrite undo", path, e))?;
            let len = f
                .metadata()
                .map_err(|e| ReplicatorError::io("stat", path, e))?
                .len();
            if len > r.old_len {
                f.set_len(r.old_len)
                    .map_err(|e| ReplicatorError::io("truncate", path, e))?;
            }
            applied += 1;
        }
        if base <= target {
            reached = true;
            break;
        }
    }
    if !reached {
        return Err(ReplicatorError::NoRecoveryPoint(format!(
            "the history does not reach back to seq {target}"
        )));
    }
    for (f, path) in files.values() {
        f.sync_data()
            .map_err(|e| ReplicatorError::io("fdatasync", path, e))?;
    }
    Ok(applied)
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
        }
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

    proptest! {
        #[test]
        fn records_round_trip(seq in 0u64..u64::MAX, ms in i64::MIN..i64::MAX,
                              data in proptest::collection::vec(any::<u8>(), 0..600),
                              name in "[a-z0-9]{0,20}", last in any::<bool>()) {
            let r = Record { kind: RecordKind::Undo, last, seq: Seq(seq), captured_ms: ms,
                             name, offset: seq / 3, old_len: seq / 2, data };
            let b = encode_record(&r, 1).unwrap();
            let h = parse_record_header(&b).unwrap();
            prop_assert_eq!(h.record_len() as usize, b.len());
            prop_assert_eq!(decode_record_body(&h, &b[RECORD_HEADER_LEN..]).unwrap(), r);
        }
    }

    fn pt(seq: u64, ms: i64, kind: RecordKind, tag: &str) -> Point {
        Point {
            seq: Seq(seq),
            captured_ms: ms,
            kind,
            tag: tag.into(),
        }
    }

    #[test]
    fn point_selection_table() {
        use RecordKind::*;
        let points = vec![
            pt(3, 100, Barrier, "v"),
            pt(5, 200, Checkpoint, ""),
            pt(8, 300, Tagged, "before"),
            pt(9, 300, Barrier, "v"),
            pt(12, 400, Tagged, "before"),
            pt(15, 500, Checkpoint, ""),
        ];
        let cases: Vec<(Selector, u64, u64, Option<u64>)> = vec![
            (Selector::At(250), 0, 20, Some(5)),
            (Selector::At(300), 0, 20, Some(9)),
            (Selector::At(99), 0, 20, None),
            (Selector::At(1000), 0, 20, Some(15)),
            (Selector::At(1000), 0, 13, Some(12)),
            (Selector::At(150), 4, 20, None),
            (Selector::Tag("before".into()), 0, 20, Some(12)),
            (Selector::Tag("before".into()), 0, 11, Some(8)),
            (Selector::Tag("before".into()), 13, 20, None),
            (Selector::Tag("nope".into()), 0, 20, None),
            (Selector::Seq(Seq(9)), 0, 20, Some(9)),
            (Selector::Seq(Seq(10)), 0, 20, None),
        ];
        for (i, (sel, oldest, wm, want)) in cases.into_iter().enumerate() {
            let got = select_point(&points, &sel, Seq(oldest), Seq(wm))
                .ok()
                .map(|p| p.seq.0);
            assert_eq!(got, want, "#{i}: {sel:?} expect {want:?} got {got:?}");
        }
        let e =
            select_point(&points, &Selector::Tag("before".into()), Seq(13), Seq(20)).unwrap_err();
        assert!(e.contains("older than the history retains"), "{e}");
    }

    fn open_file(p: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap()
    }

    /// Applies writes to a file through the history as the applier does.
    fn write(h: &mut History, f: &File, p: &Path, seq: u64, ms: i64, off: u64, data: &[u8]) {
        h.record_undo(Seq(seq), ms, "v", f, p, off, data.len() as u64, true)
            .unwrap();
        f.write_all_at(data, off).unwrap();
    }

    #[test]
    fn rewind_restores_each_point_and_the_length() {
        let d = tempfile::tempdir().unwrap();
        let vp = d.path().join("v.img");
        let f = open_file(&vp);
        let mut cfg = HistoryConfig::new(3_600_000);
        cfg.segment_bytes = 200; // several segments
        let mut h = History::open(&d.path().join("h"), GroupId(1), Seq(0), cfg).unwrap();
        let mut states = vec![(0u64, Vec::new())];
        let mut seq = 0;
        for i in 0..6u8 {
            seq += 1;
            write(
                &mut h,
                &f,
                &vp,
                seq,
                i as i64,
                u64::from(i) * 3,
                &[i + 1; 10],
            );
            seq += 1;
            h.record_point(Seq(seq), i as i64, RecordKind::Barrier, "v", true)
                .unwrap();
            states.push((seq, std::fs::read(&vp).unwrap()));
        }
        h.sync().unwrap();
        assert!(h.segment_count() > 2);
        for (target, want) in &states {
            let c = d.path().join("copy.img");
            std::fs::copy(&vp, &c).unwrap();
            let files = HashMap::from([("v".to_string(), (open_file(&c), c.clone()))]);
            rewind(&h.snapshot().unwrap(), Seq(*target), Seq(seq), &files).unwrap();
            assert_eq!(&std::fs::read(&c).unwrap(), want, "target {target}");
        }
        // Reopened, the history holds the same points and does not re-record old seqs.
        let pts = h.points();
        drop(h);
        let h = History::open(
            &d.path().join("h"),
            GroupId(1),
            Seq(seq),
            HistoryConfig::new(3_600_000),
        )
        .unwrap();
        assert_eq!(h.points(), pts);
        assert!(!h.wants(Seq(seq)) && h.wants(Seq(seq + 1)));
    }

    #[test]
    fn one_change_larger_than_a_segment_is_split_into_records_and_rewound() {
        let d = tempfile::tempdir().unwrap();
        let vp = d.path().join("v.img");
        let f = open_file(&vp);
        // Incompressible, so the records really are about 1 MiB each.
        let mut x = 0x9e3779b97f4a7c15u64;
        let old: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        f.write_all_at(&old, 0).unwrap();
        let mut cfg = HistoryConfig::new(3_600_000);
        cfg.segment_bytes = 1 << 20;
        let mut h = History::open(&d.path().join("h"), GroupId(1), Seq(0), cfg).unwrap();
        h.record_point(Seq(1), 0, RecordKind::Barrier, "v", true)
            .unwrap();
        // A 3 MiB trim: three records of one seq.
        h.record_undo(Seq(2), 1, "v", &f, &vp, 0, 3 << 20, true)
            .unwrap();
        f.write_all_at(&vec![0u8; 3 << 20], 0).unwrap();
        h.sync().unwrap();
        // Split once after its first record (base 2 holds the rest of seq 2), and not again:
        // a segment never rotates into another with the same base.
        assert_eq!(h.segment_count(), 2);
        assert!(h.bytes() > 3 << 20);
        let files = HashMap::from([("v".to_string(), (open_file(&vp), vp.clone()))]);
        let snap = h.snapshot().unwrap();
        assert_eq!(rewind(&snap, Seq(2), Seq(2), &files).unwrap(), 0);
        assert_eq!(rewind(&snap, Seq(1), Seq(2), &files).unwrap(), 3);
        assert!(std::fs::read(&vp).unwrap() == old);
    }

    #[test]
    fn torn_tail_is_cut_and_corrupt_old_segment_drops_older_history() {
        let d = tempfile::tempdir().unwrap();
        let vp = d.path().join("v.img");
        let f = open_file(&vp);
        let mut cfg = HistoryConfig::new(3_600_000);
        cfg.segment_bytes = 150;
        let hd = d.path().join("h");
        let mut h = History::open(&hd, GroupId(1), Seq(0), cfg.clone()).unwrap();
        for s in 1..=6 {
            write(&mut h, &f, &vp, s, s as i64, 0, &[s as u8; 20]);
        }
        h.sync().unwrap();
        let segs: Vec<PathBuf> = h.snapshot().unwrap().into_iter().map(|s| s.path).collect();
        drop(h);
        // A torn tail on the newest segment: cut, earlier records kept.
        let newest = segs.last().unwrap();
        let len = std::fs::metadata(newest).unwrap().len();
        let fh = OpenOptions::new().write(true).open(newest).unwrap();
        fh.set_len(len - 3).unwrap();
        let h = History::open(&hd, GroupId(1), Seq(6), cfg.clone()).unwrap();
        assert!(h.wants(Seq(6)), "the torn seq is recorded again");
        assert!(!h.wants(Seq(5)));
        drop(h);
        // A flipped byte in the second segment: it and the first are dropped.
        let mut b = std::fs::read(&segs[1]).unwrap();
        b[SEGMENT_HEADER_LEN + 10] ^= 1;
        std::fs::write(&segs[1], b).unwrap();
        let h = History::open(&hd, GroupId(1), Seq(6), cfg).unwrap();
        assert_eq!(h.segment_count(), segs.len() - 2);
        assert!(h.oldest_seq() >= Seq(2));
    }

    #[test]
    fn trimming_moves_the_oldest_point_forward_and_keeps_newer_ones() {
        let d = tempfile::tempdir().unwrap();
        let vp = d.path().join("v.img");
        let f = open_file(&vp);
        let mut cfg = HistoryConfig::new(1000);
        cfg.segment_bytes = 100;
        let mut h = History::open(&d.path().join("h"), GroupId(1), Seq(0), cfg).unwrap();
        for s in 1..=10u64 {
            write(
                &mut h,
                &f,
                &vp,
                2 * s - 1,
                s as i64 * 100,
                0,
                &[s as u8; 16],
            );
            h.record_point(Seq(2 * s), s as i64 * 100, RecordKind::Barrier, "v", true)
                .unwrap();
        }
        h.sync().unwrap();
        let before = h.oldest_point().unwrap().clone();
        let all = h.points();
        assert_eq!(h.trim(1000).unwrap(), 0, "nothing older than the window");
        let n = h.trim(1650).unwrap();
        assert!(n > 0);
        let after = h.oldest_point().unwrap().clone();
        assert!(after.seq > before.seq, "{before:?} -> {after:?}");
        assert!(after.captured_ms >= 650 - 100);
        // Nothing newer than the oldest point is lost, and rewinding to it works.
        let kept: Vec<_> = all.iter().filter(|p| p.seq >= after.seq).cloned().collect();
        assert_eq!(h.points(), kept);
        let c = d.path().join("copy.img");
        std::fs::copy(&vp, &c).unwrap();
        let files = HashMap::from([("v".to_string(), (open_file(&c), c.clone()))]);
        rewind(&h.snapshot().unwrap(), after.seq, Seq(20), &files).unwrap();
        let s = after.seq.0 / 2;
        assert_eq!(std::fs::read(&c).unwrap(), vec![s as u8; 16]);
        // Too far back: refused, not silently wrong.
        assert!(matches!(
            rewind(&h.snapshot().unwrap(), Seq(1), Seq(20), &files),
            Err(ReplicatorError::NoRecoveryPoint(_))
        ));
        // The size cap removes the oldest segments too.
        let mut h2cfg = HistoryConfig::new(i64::MAX / 4);
        h2cfg.max_bytes = Some(300);
        h2cfg.segment_bytes = 100;
        let mut h2 = History::open(&d.path().join("h2"), GroupId(1), Seq(0), h2cfg).unwrap();
        for s in 1..=10u64 {
            write(&mut h2, &f, &vp, s, 0, 0, &[1; 16]);
        }
        h2.trim(0).unwrap();
        assert!(h2.bytes() <= 300 + 200, "{}", h2.bytes());
    }
}
