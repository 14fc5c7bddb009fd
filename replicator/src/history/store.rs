//! [`History`]: one group's segment files: appending undo and point records, syncing before
//! the watermark, retention, and reopening after a crash (torn tails cut, corrupt segments
//! dropped). File I/O.

use super::codec::{
    decode_record_body, decode_segment_header, encode_segment_header, encode_with,
    parse_record_header, Record, RecordKind, DEFAULT_SEGMENT_BYTES, MAX_RECORD_DATA,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::select::Point;
use super::workers::{Encoders, Pending, Spare};
use crate::error::{ReplicatorError, Result};
use crate::meta::sync_dir;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tandem_core::ids::{GroupId, Seq};

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
    /// zstd level of undo data; `None` stores it raw (no compression: less CPU per byte
    /// applied, more bytes of history).
    pub level: Option<i32>,
}

impl HistoryConfig {
    /// A config with `retention_ms`, no size cap, default segments and a 5 s checkpoint.
    pub fn new(retention_ms: i64) -> HistoryConfig {
        HistoryConfig {
            retention_ms,
            max_bytes: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            checkpoint_interval_ms: 5000,
            level: Some(DEFAULT_UNDO_LEVEL),
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
    /// Bytes of the active segment as of its last fdatasync (every older segment is synced
    /// whole before the next one starts): what a power loss keeps.
    synced: u64,
    total: u64,
    /// The undo encoders (one zstd context per core, off the apply thread).
    encoders: Encoders,
    /// Undo records submitted to the encoders and not appended yet, in seq order: every one
    /// is appended (in this order) before the next point record and before any sync, so
    /// before the data it undoes can be written (see the module docs of `history`).
    pending: VecDeque<Pending>,
    /// Old-data buffers back from the encoders, for the next reads.
    spare: Spare,
}

/// zstd level of undo data: -1 (zstd's fastest strategy, no entropy coding of literals)
/// costs about a fifth less CPU than level 1 on mixed volume data for about 7 % more history
/// bytes (docs/BENCHMARKS.md, "Cost of keeping history").
pub const DEFAULT_UNDO_LEVEL: i32 = -1;

/// Undo data of one change at least this long is split over the cores.
pub const PARALLEL_MIN_LEN: u64 = 256 << 10;

/// Smallest record a split makes.
const MIN_PIECE: u64 = 64 << 10;

/// Bytes of old data per undo record when `total` bytes are kept for one change with
/// `contexts` compressors: one piece per compressor for large changes (at least 64 KiB,
/// at most [`MAX_RECORD_DATA`]), otherwise [`MAX_RECORD_DATA`]. Pure.
pub fn piece_len(total: u64, contexts: usize) -> u64 {
    if contexts <= 1 || total < PARALLEL_MIN_LEN {
        return MAX_RECORD_DATA as u64;
    }
    total
        .div_ceil(contexts as u64)
        .clamp(MIN_PIECE, MAX_RECORD_DATA as u64)
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
        crate::durable_dir::create_dir_durable(dir)?;
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
        let encoders = Encoders::start(crate::scan::hash_threads().min(4), cfg.level, dir)?;
        let mut h = History {
            encoders,
            pending: VecDeque::new(),
            spare: Spare::default(),
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
            synced: 0,
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
            // Undo records are durable before the data they undo is written, and the watermark
            // is persisted after both: a stop in between leaves records of seqs the files may
            // already hold. They are kept (dropping them would leave those files' new bytes
            // with no record of the old ones); the seqs are applied again without being
            // recorded again. (A resync, which makes the files no longer follow the stream,
            // resets the history itself.)
            tracing::info!(dir = %dir.display(), %watermark, history = %max_seq, "history runs past the watermark: kept; those seqs are applied again, not recorded again");
            h.max_seq = max_seq;
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
            h.synced = last.bytes;
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
        self.pending.clear();
        self.active = None;
        for s in self.segments.drain(..) {
            remove(&s.path)?;
        }
        self.points.clear();
        self.total = 0;
        self.last_complete = watermark;
        self.max_seq = watermark;
        self.dirty = false;
        self.synced = 0;
        sync_dir(&self.dir)
    }

    /// Whether the change at `seq` must be recorded (it was not completely before a restart).
    pub fn wants(&self, seq: Seq) -> bool {
        seq > self.last_complete
    }

    /// Appends a record that carries no data (a point), after every pending undo record.
    fn append(&mut self, r: &Record) -> Result<()> {
        self.drain()?;
        let bytes = encode_with(r, &mut |_| None)?;
        self.append_encoded(r, bytes)
    }

    /// Appends every undo record handed to the encoders, in the order they were handed over.
    /// On an error the rest are dropped (their writes are never made: the batch is rolled
    /// back and applied again, recording them again).
    fn drain(&mut self) -> Result<()> {
        while let Some(p) = self.pending.pop_front() {
            let appended = p.wait().and_then(|(mut r, bytes)| {
                self.spare.keep(std::mem::take(&mut r.data));
                self.append_encoded(&r, bytes?)
            });
            if let Err(e) = appended {
                self.pending.clear();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Appends record `r`, encoded as `bytes`.
    fn append_encoded(&mut self, r: &Record, bytes: Vec<u8>) -> Result<()> {
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
        self.synced = bytes;
        self.active = Some(f);
        Ok(())
    }

    /// Records the old bytes of `[offset, offset + len)` of `file` (length before the change:
    /// its current length) for the change at `seq`, in records of at most
    /// [`MAX_RECORD_DATA`]; `last` marks the final record of the seq. Call it BEFORE writing,
    /// and write only after [`History::sync`]: the old bytes are read now, compressed by the
    /// encoder threads meanwhile, and appended (in order) by the next sync or point record.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] reading the resource (an encoding or append error comes from
    /// the sync or point record that appends it).
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
        let piece = piece_len(end.saturating_sub(offset), self.encoders.len());
        let mut at = offset;
        loop {
            // Read here, in order (before any held write of the batch is made); compressed by
            // the encoders, one piece per core at once, while this thread goes on; appended
            // in this order by the next `drain`.
            let n = end.saturating_sub(at).min(piece) as usize;
            // A hole is recorded as zero bytes, not read: reading it would have the kernel
            // zero-fill page cache for it only to copy the zeros out and compress them.
            let zeros = if n > 0 && is_hole(file, at, n as u64) {
                n as u32
            } else {
                0
            };
            let mut data = Vec::new();
            if zeros == 0 {
                data = self.spare.take(n);
                file.read_exact_at(&mut data, at)
                    .map_err(|e| ReplicatorError::io("read old bytes", path, e))?;
            }
            let done = at + n as u64 >= end;
            self.pending.push_back(self.encoders.submit(Record {
                kind: RecordKind::Undo,
                last: last && done,
                seq,
                captured_ms,
                name: resource.to_owned(),
                offset: at,
                old_len,
                data,
                zeros,
            }));
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
            zeros: 0,
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

    /// Appends every pending undo record (in order) and makes every record durable: before
    /// any data they undo is written, and before the watermark covering them is persisted.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`].
    pub fn sync(&mut self) -> Result<()> {
        self.drain()?;
        if self.dirty {
            if let (Some(f), Some(s)) = (self.active.as_ref(), self.segments.back()) {
                f.sync_data()
                    .map_err(|e| ReplicatorError::io("fdatasync", &s.path, e))?;
                self.synced = s.bytes;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// The highest seq recorded (or the watermark the history was opened or reset at): the
    /// files may hold changes up to it, even past the watermark after a stop (see
    /// [`History::open`]).
    pub fn max_seq(&self) -> Seq {
        self.max_seq
    }

    /// The active segment and how many of its bytes were fdatasync'ed: a power loss now keeps
    /// those and may drop the rest (every older segment is durable whole). `None` before the
    /// first record.
    pub fn durable_tail(&self) -> Option<(PathBuf, u64)> {
        self.segments.back().map(|s| (s.path.clone(), self.synced))
    }

    /// Removes whole segments, oldest first, while the oldest is entirely older than the
    /// retention window or the history is over its size cap. The active segment stays.
    /// Returns the number of segments removed.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] removing a file.
    pub fn trim(&mut self, now_ms: i64) -> Result<usize> {
        self.drain()?;
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

/// Whether `[at, at + len)` of `file` holds no data: the file system's `SEEK_DATA` puts the
/// next data at or past its end, or finds none. Data written and not yet allocated (in the
/// page cache) is data to `SEEK_DATA` on ext4, XFS, btrfs and tmpfs. Any error, or a file
/// system that knows no holes (its `SEEK_DATA` answers `at`), answers false: the bytes are
/// read. `lseek` moves the descriptor's offset, which no reader or writer of a resource uses
/// (they read and write at positions).
pub(super) fn is_hole(file: &File, at: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(from) = libc::off_t::try_from(at) else {
        return false;
    };
    #[allow(unsafe_code)]
    // SAFETY: lseek takes the descriptor of a file `file` keeps open for the call, an offset
    // and a constant, and no pointers.
    let next = unsafe { libc::lseek(file.as_raw_fd(), from, libc::SEEK_DATA) };
    if next >= 0 {
        return next as u64 >= at.saturating_add(len);
    }
    // ENXIO: no data at or after `at` (a hole up to the end of the file).
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO)
}
