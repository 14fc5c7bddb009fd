//! The primary's journal: a durable log of encoded frames not yet acknowledged by the replica.
//!
//! Frame bodies live in append-only segment files named by the first seq they hold
//! (`00000000000000000001.seg`), each a plain concatenation of frames exactly as they go on
//! the wire (compress once). Frames are self-checking, so opening a journal scans every
//! segment: a torn tail of the last segment is truncated (and logged), anything else that
//! fails its checks is [`ReplicatorError::CorruptJournal`]. Small metadata lives in
//! `journal.meta` (see [`crate::meta`] and [`JournalMeta`]): epoch, trimmed-through seq, the
//! seqs reserved so far, the current generation and the generation starts of its history.
//!
//! Seqs are never handed out twice, even when the journal loses frames it had made durable:
//! appends past the reservation first persist a new one ([`RESERVE_SEQS`] more, one metadata
//! write per range), and an open continues after the reservation, not after the last frame it
//! found. Each open also starts a new generation (see [`crate::lineage`]), persisted before
//! the journal writes anything: the seqs between the last frame kept and the reservation's end
//! are a gap that the generation start announces. A gap between segments is accepted on
//! reopen only where a generation start (or the trim point) explains it.
//!
//! All methods do blocking I/O: call them from a dedicated thread or `spawn_blocking`.
//! [`Journal::append`] must be called by one writer only (the pipeline's group-commit thread);
//! reads and trims may come from any thread.

pub use self::meta::JournalMeta;
use self::meta::{new_generation_id, prune_starts};
use crate::error::{ReplicatorError, Result};
use crate::lineage::GenerationStart;
use crate::meta::{read_meta_any, sync_dir, write_meta};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tandem_core::fault::{self, Injected};
use tandem_core::frame::{Decoder, FrameHeader, HEADER_LEN};
use tandem_core::ids::{Epoch, GroupId, Seq};

/// Default size at which a segment is closed and a new one started: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Magic of the journal metadata file.
pub const JOURNAL_META_MAGIC: [u8; 4] = *b"TNDJ";
/// Name of the journal metadata file inside the journal directory.
pub const JOURNAL_META_FILE: &str = "journal.meta";
const SEGMENT_EXT: &str = "seg";

mod meta;
/// Seqs reserved by one metadata write: an append past the reservation persists this many more
/// before it writes.
pub const RESERVE_SEQS: u64 = 65536;
/// Most generation starts kept in the metadata (the oldest are dropped beyond it).
pub const MAX_GENERATION_STARTS: usize = 64;

/// Where one journaled frame is and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEntry {
    /// Seq of the frame's first change.
    pub first_seq: Seq,
    /// Seq of the frame's last change.
    pub last_seq: Seq,
    /// The segment holding it (named by the first seq of that segment).
    pub segment: u64,
    /// Byte offset of the frame in its segment.
    pub offset: u64,
    /// Encoded length of the frame.
    pub len: u32,
    /// Earliest capture time of the frame's changes, unix ms.
    pub oldest_capture_ms: i64,
}

/// A frame handed to [`Journal::append`]: its bytes and what it covers.
#[derive(Debug, Clone)]
pub struct NewFrame {
    /// The encoded frame.
    pub bytes: Vec<u8>,
    /// Seq of the first change.
    pub first_seq: Seq,
    /// Seq of the last change.
    pub last_seq: Seq,
    /// Earliest capture time of its changes, unix ms.
    pub oldest_capture_ms: i64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Arc<File>,
}

#[derive(Debug)]
struct State {
    index: VecDeque<FrameEntry>,
    segments: BTreeMap<u64, Segment>,
    next_seq: Seq,
    /// Highest seq durable in the journal (or trimmed): what an open found, then appends.
    last_seq: Seq,
    epoch: Epoch,
    trimmed_through: Seq,
    reserved_through: Seq,
    generation: u64,
    starts: Vec<GenerationStart>,
    pending_bytes: u64,
}

#[derive(Debug, Default)]
struct Writer {
    /// The segment being written: (key, file, length).
    current: Option<(u64, File, u64)>,
    /// Length of the current segment at its last fdatasync: what a power loss keeps.
    synced: u64,
}

/// The durable frame log of one group on the primary.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    group: GroupId,
    segment_bytes: u64,
    state: Mutex<State>,
    writer: Mutex<Writer>,
}

/// What a scan of one segment found.
#[derive(Debug)]
struct SegmentScan {
    frames: Vec<FrameEntry>,
    /// Byte length of the valid prefix.
    valid_len: u64,
    /// Set when bytes after `valid_len` failed their checks: (offset, reason, reaches_eof).
    bad: Option<(u64, String, bool)>,
}

fn segment_path(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("{key:020}.{SEGMENT_EXT}"))
}

/// Scans a segment's bytes frame by frame (pure). A failure is reported with whether the bad
/// frame reaches the end of the bytes (a torn tail) or is followed by more data.
fn scan_segment(
    bytes: &[u8],
    key: u64,
    group: GroupId,
    mut expect: Option<Seq>,
    decoder: &mut Decoder,
) -> SegmentScan {
    let mut frames = Vec::new();
    let mut at = 0usize;
    let total = bytes.len();
    let bad = loop {
        if at == total {
            break None;
        }
        let rest = &bytes[at..];
        let tail_is_zero = || rest.iter().all(|b| *b == 0);
        if rest.len() < HEADER_LEN {
            break Some((at as u64, "partial header".to_owned(), true));
        }
        let payload_len = u32::from_le_bytes([rest[40], rest[41], rest[42], rest[43]]) as usize;
        let frame_len = HEADER_LEN.saturating_add(payload_len);
        if frame_len > rest.len() {
            // The declared frame runs past the end: torn, unless the header itself is bad
            // and data follows (then it is corruption, reported below by parse).
            match FrameHeader::parse(&rest[..HEADER_LEN]) {
                Err(tandem_core::frame::FrameError::Truncated { .. }) => {
                    break Some((at as u64, "frame runs past end of segment".to_owned(), true))
                }
                Err(e) => break Some((at as u64, e.to_string(), tail_is_zero())),
                Ok(_) => break Some((at as u64, "frame runs past end".to_owned(), true)),
            }
        }
        let fb = &rest[..frame_len];
        let header = match FrameHeader::parse(fb) {
            Ok(h) => h,
            Err(e) => break Some((at as u64, e.to_string(), tail_is_zero())),
        };
        let reaches_eof = frame_len == rest.len();
        let frame = match decoder.decode_payload(header, fb) {
            Ok(f) => f,
            Err(e) => break Some((at as u64, e.to_string(), reaches_eof)),
        };
        if header.meta.group != group {
            break Some((
                at as u64,
                format!("frame of group {} in journal of {group}", header.meta.group),
                false,
            ));
        }
        if let Some(want) = expect {
            if header.meta.first_seq != want {
                break Some((
                    at as u64,
                    format!(
                        "frame first seq {} where {want} was expected",
                        header.meta.first_seq
                    ),
                    false,
                ));
            }
        }
        if header.change_count == 0 {
            break Some((at as u64, "empty frame".to_owned(), false));
        }
        expect = Some(header.last_seq().next());
        frames.push(FrameEntry {
            first_seq: header.meta.first_seq,
            last_seq: header.last_seq(),
            segment: key,
            offset: at as u64,
            len: frame_len as u32,
            oldest_capture_ms: frame
                .changes
                .iter()
                .map(|c| c.captured_ms)
                .min()
                .unwrap_or(0),
        });
        at += frame_len;
    };
    SegmentScan {
        frames,
        valid_len: at as u64,
        bad,
    }
}

impl Journal {
    /// Prepares a NEW journal in `dir` whose first frame will carry `first_seq` (a promoted
    /// replica continues the group's seq numbering from its watermark). Does nothing when
    /// `dir` already holds a journal.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`].
    pub fn init(dir: &Path, epoch: Epoch, first_seq: Seq) -> Result<()> {
        let start = Seq(first_seq.0.max(1) - 1);
        Journal::init_with(
            dir,
            &JournalMeta {
                epoch,
                trimmed_through: start,
                reserved_through: start,
                generation: 0,
                starts: Vec::new(),
            },
        )
    }

    /// Prepares a NEW journal in `dir` for `epoch` that continues the history of `older` (the
    /// same primary's journal of an older epoch, whose frames are on the images): it starts
    /// trimmed through the last seq `older` holds, after its reservation, with its lineage,
    /// so a replica at that seq continues without a resync and no seq is handed out twice.
    /// Does nothing when `dir` already holds a journal.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`].
    pub fn init_continuing(dir: &Path, epoch: Epoch, older: &Journal) -> Result<()> {
        let st = older.state();
        Journal::init_with(
            dir,
            &JournalMeta {
                epoch,
                trimmed_through: st.last_seq,
                reserved_through: st.reserved_through.max(st.last_seq),
                generation: st.generation,
                starts: st.starts.clone(),
            },
        )
    }

    fn init_with(dir: &Path, meta: &JournalMeta) -> Result<()> {
        crate::durable_dir::create_dir_durable(dir)?;
        let meta_path = dir.join(JOURNAL_META_FILE);
        if meta_path.exists() {
            return Ok(());
        }
        write_meta(&meta_path, JOURNAL_META_MAGIC, &meta.encode())
    }

    /// Opens (or creates) the journal of `group` in `dir`, scanning every segment, and starts
    /// a new generation: persisted before this returns (so before any write), its seqs
    /// starting after the stored reservation.
    ///
    /// `epoch` is used when the journal is new; an existing journal keeps its stored epoch
    /// unless `epoch` is newer. A torn tail of the last segment is truncated and logged.
    ///
    /// # Errors
    /// [`ReplicatorError::CorruptJournal`] for a bad frame that is not a torn tail,
    /// [`ReplicatorError::BadMetadata`], or [`ReplicatorError::Io`].
    pub fn open(dir: &Path, group: GroupId, epoch: Epoch, segment_bytes: u64) -> Result<Journal> {
        crate::durable_dir::create_dir_durable(dir)?;
        let meta_path = dir.join(JOURNAL_META_FILE);
        let mut meta = match read_meta_any(&meta_path, JOURNAL_META_MAGIC)? {
            Some(v) => JournalMeta::decode(&v).map_err(|reason| ReplicatorError::BadMetadata {
                path: meta_path.clone(),
                reason,
            })?,
            None => JournalMeta {
                epoch,
                trimmed_through: Seq(0),
                reserved_through: Seq(0),
                generation: 0,
                starts: Vec::new(),
            },
        };
        if epoch > meta.epoch {
            meta.epoch = epoch;
        }
        let trimmed = meta.trimmed_through;
        let mut keys = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(|e| ReplicatorError::io("read dir", dir, e))? {
            let ent = ent.map_err(|e| ReplicatorError::io("read dir", dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(&format!(".{SEGMENT_EXT}")) {
                if let Ok(k) = stem.parse::<u64>() {
                    keys.push(k);
                }
            }
        }
        keys.sort_unstable();
        let mut decoder = Decoder::new()?;
        let mut segments = BTreeMap::new();
        let mut index = VecDeque::new();
        let mut expect: Option<Seq> = None;
        let mut last_seq = Seq(0);
        for (i, key) in keys.iter().copied().enumerate() {
            let path = segment_path(dir, key);
            let bytes = std::fs::read(&path).map_err(|e| ReplicatorError::io("read", &path, e))?;
            // A segment may start past the seq after the previous one where a generation
            // start (or the trim point) explains the gap.
            if expect.is_some_and(|e| key > e.0)
                && (key <= trimmed.0 + 1 || meta.starts.iter().any(|s| s.first.0 == key))
            {
                expect = Some(Seq(key));
            }
            let scan = scan_segment(&bytes, key, group, expect, &mut decoder);
            let is_last = i + 1 == keys.len();
            if let Some((offset, reason, reaches_eof)) = scan.bad {
                if !(is_last && reaches_eof) {
                    return Err(ReplicatorError::CorruptJournal {
                        path,
                        offset,
                        reason,
                    });
                }
                tracing::warn!(
                    segment = %path.display(),
                    offset,
                    dropped = bytes.len() as u64 - scan.valid_len,
                    %reason,
                    "journal: truncating torn tail"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| ReplicatorError::io("open", &path, e))?;
                f.set_len(scan.valid_len)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| ReplicatorError::io("truncate", &path, e))?;
            }
            if scan.frames.is_empty() && is_last {
                std::fs::remove_file(&path).map_err(|e| ReplicatorError::io("remove", &path, e))?;
                sync_dir(dir)?;
                continue;
            }
            if let Some(l) = scan.frames.last() {
                expect = Some(l.last_seq.next());
                last_seq = l.last_seq;
            }
            for f in scan.frames {
                if f.last_seq > trimmed {
                    index.push_back(f);
                }
            }
            let file = File::open(&path).map_err(|e| ReplicatorError::io("open", &path, e))?;
            segments.insert(
                key,
                Segment {
                    path,
                    file: Arc::new(file),
                },
            );
        }
        let last_seq = last_seq.max(trimmed);
        let reserved = meta.reserved_through.max(last_seq);
        let generation = new_generation_id(dir, meta.generation);
        let mut starts = meta.starts;
        starts.push(GenerationStart {
            generation,
            first: reserved.next(),
            after: last_seq,
        });
        prune_starts(&mut starts, trimmed);
        if reserved.0 > last_seq.0 {
            tracing::info!(
                journal = %dir.display(),
                last = %last_seq,
                first = %reserved.next(),
                generation = format!("{generation:016x}"),
                "journal: new generation continues after the reservation; seqs {}..={reserved} are never handed out",
                last_seq.0 + 1
            );
        }
        let pending_bytes = index.iter().map(|e| u64::from(e.len)).sum();
        let journal = Journal {
            dir: dir.to_owned(),
            group,
            segment_bytes: segment_bytes.max(HEADER_LEN as u64),
            state: Mutex::new(State {
                index,
                segments,
                next_seq: reserved.next(),
                last_seq,
                epoch: meta.epoch,
                trimmed_through: trimmed,
                reserved_through: reserved,
                generation,
                starts,
                pending_bytes,
            }),
            writer: Mutex::new(Writer::default()),
        };
        // The generation is durable before anything is written under it.
        journal.persist_meta(&journal.state())?;
        Ok(journal)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group this journal belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The seq the next change will get (after an open: past the stored reservation, so
    /// possibly well after [`Self::last_seq`]).
    pub fn next_seq(&self) -> Seq {
        self.state().next_seq
    }

    /// The highest seq durable in the journal (or trimmed): the end of its history.
    pub fn last_seq(&self) -> Seq {
        self.state().last_seq
    }

    /// Highest seq reserved durably: no seq at or below it is handed out by a later open.
    pub fn reserved_through(&self) -> Seq {
        self.state().reserved_through
    }

    /// The generation of this open (persisted before anything was written under it).
    pub fn generation(&self) -> u64 {
        self.state().generation
    }

    /// The generation starts of the journal's history, oldest first; the last is
    /// [`Self::generation`]'s (sent in `Hello`, see [`crate::lineage`]).
    pub fn lineage(&self) -> Vec<GenerationStart> {
        self.state().starts.clone()
    }

    /// The epoch stored in the journal.
    pub fn epoch(&self) -> Epoch {
        self.state().epoch
    }

    /// The highest seq trimmed (acknowledged by the replica and dropped).
    pub fn trimmed_through(&self) -> Seq {
        self.state().trimmed_through
    }

    /// Encoded bytes of frames not yet trimmed (not acknowledged by the replica).
    pub fn pending_bytes(&self) -> u64 {
        self.state().pending_bytes
    }

    /// Encoded bytes of the untrimmed frames that end at or after `seq` (the backlog from a
    /// send position), counted up to `cap`: walks the index from the newest frame back and
    /// stops there, so a look at a long backlog of small frames holds the lock briefly.
    pub fn bytes_from(&self, seq: Seq, cap: u64) -> u64 {
        let mut sum = 0u64;
        for e in self.state().index.iter().rev() {
            if e.last_seq < seq || sum >= cap {
                break;
            }
            sum += u64::from(e.len);
        }
        sum.min(cap)
    }

    /// Earliest capture time of any change not yet trimmed, unix ms.
    pub fn oldest_unacked_capture_ms(&self) -> Option<i64> {
        self.state().index.front().map(|e| e.oldest_capture_ms)
    }

    /// The untrimmed frames' entries, oldest first.
    pub fn entries(&self) -> Vec<FrameEntry> {
        self.state().index.iter().copied().collect()
    }

    /// Records a new epoch durably (after a promotion).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] writing the metadata file.
    pub fn set_epoch(&self, epoch: Epoch) -> Result<()> {
        let mut st = self.state();
        st.epoch = epoch;
        self.persist_meta(&st)
    }

    fn persist_meta(&self, st: &State) -> Result<()> {
        let meta = JournalMeta {
            epoch: st.epoch,
            trimmed_through: st.trimmed_through,
            reserved_through: st.reserved_through,
            generation: st.generation,
            starts: st.starts.clone(),
        };
        write_meta(
            &self.dir.join(JOURNAL_META_FILE),
            JOURNAL_META_MAGIC,
            &meta.encode(),
        )
    }

    /// Makes sure seqs through `last` are reserved durably before a frame carrying them is
    /// written: past the reservation, persists [`RESERVE_SEQS`] more (one metadata write).
    fn reserve_through(&self, last: Seq) -> Result<()> {
        let mut st = self.state();
        if last <= st.reserved_through {
            return Ok(());
        }
        let before = st.reserved_through;
        st.reserved_through = Seq(last.0.saturating_add(RESERVE_SEQS));
        if let Err(e) = self.persist_meta(&st) {
            st.reserved_through = before;
            return Err(e);
        }
        Ok(())
    }

    /// Appends frames durably (group commit): [`Self::write`], then [`Self::sync`]. Only one
    /// thread may call this.
    ///
    /// # Errors
    /// As [`Self::write`] and [`Self::sync`].
    pub fn append(&self, frames: &[NewFrame]) -> Result<()> {
        self.write(frames)?;
        self.sync()
    }

    /// Writes frames (the first half of a group commit): reserves their seqs durably if they
    /// are past the reservation, writes them all to the current segment (not yet
    /// fdatasync'ed) and publishes them to readers ([`Self::frames_from`], [`Self::last_seq`]),
    /// so the shipper may send them while [`Self::sync`] makes them durable. Until that sync
    /// returns, a power loss may drop them: nothing may be acknowledged on them before it.
    /// Only one thread may call this.
    ///
    /// # Errors
    /// [`ReplicatorError::InvalidSubmission`] if the seqs do not continue the journal;
    /// [`ReplicatorError::Io`] on write failure (the frames are then not published).
    pub fn write(&self, frames: &[NewFrame]) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut expect = self.next_seq();
        for f in frames {
            if f.first_seq != expect || f.last_seq < f.first_seq {
                return Err(ReplicatorError::InvalidSubmission(format!(
                    "frame seqs {}..={} do not continue the journal at {expect}",
                    f.first_seq, f.last_seq
                )));
            }
            expect = f.last_seq.next();
        }
        self.reserve_through(Seq(expect.0 - 1))?;
        let mut entries = Vec::with_capacity(frames.len());
        for f in frames {
            let len = f.bytes.len() as u64;
            let rotate = match &w.current {
                Some((_, _, cur)) => *cur > 0 && cur + len > self.segment_bytes,
                None => true,
            };
            if rotate {
                if let Some((key, file, _)) = w.current.take() {
                    file.sync_data().map_err(|e| {
                        ReplicatorError::io("fdatasync", segment_path(&self.dir, key), e)
                    })?;
                }
                let key = f.first_seq.0;
                let path = segment_path(&self.dir, key);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| ReplicatorError::io("create", &path, e))?;
                let existing = file
                    .metadata()
                    .map_err(|e| ReplicatorError::io("stat", &path, e))?
                    .len();
                sync_dir(&self.dir)?;
                let reader =
                    File::open(&path).map_err(|e| ReplicatorError::io("open", &path, e))?;
                self.state().segments.insert(
                    key,
                    Segment {
                        path,
                        file: Arc::new(reader),
                    },
                );
                w.current = Some((key, file, existing));
                w.synced = existing;
            }
            let Some((key, file, cur)) = w.current.as_mut() else {
                return Err(ReplicatorError::Task(
                    "journal writer lost its segment".into(),
                ));
            };
            if let Some(inj) = fault::hit("journal-write") {
                let path = segment_path(&self.dir, *key);
                match inj {
                    Injected::Enospc => {
                        // A full disk takes part of a write: half the frame lands.
                        let _ = file.write_all(&f.bytes[..f.bytes.len() / 2]);
                        return Err(ReplicatorError::io(
                            "write",
                            path,
                            inj.io_error("journal-write"),
                        ));
                    }
                    Injected::Eio => {
                        return Err(ReplicatorError::io(
                            "write",
                            path,
                            inj.io_error("journal-write"),
                        ))
                    }
                    Injected::Crash | Injected::LoseUnsynced => fault::crash("journal-write"),
                }
            }
            file.write_all(&f.bytes)
                .map_err(|e| ReplicatorError::io("write", segment_path(&self.dir, *key), e))?;
            entries.push(FrameEntry {
                first_seq: f.first_seq,
                last_seq: f.last_seq,
                segment: *key,
                offset: *cur,
                len: f.bytes.len() as u32,
                oldest_capture_ms: f.oldest_capture_ms,
            });
            *cur += len;
        }
        drop(w);
        let mut st = self.state();
        for e in entries {
            st.pending_bytes += u64::from(e.len);
            st.index.push_back(e);
        }
        if !frames.is_empty() {
            st.next_seq = expect;
            st.last_seq = Seq(expect.0 - 1);
        }
        Ok(())
    }

    /// Makes every frame [`Self::write`] wrote durable: one fdatasync of the current segment
    /// (the second half of a group commit; segments closed by a rotation were synced then).
    /// Only the writer thread may call this.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] on sync failure: the frames written since the last sync may or
    /// may not be durable (readers may already have read them).
    pub fn sync(&self) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let synced = w.synced;
        let mut now_synced = None;
        if let Some((key, file, cur)) = &w.current {
            let path = segment_path(&self.dir, *key);
            match fault::hit("journal-before-fsync") {
                None => {}
                Some(Injected::Crash) => fault::crash("journal-before-fsync"),
                Some(Injected::LoseUnsynced) => {
                    // A power loss: the page cache never reached the disk. What was written
                    // since the last fdatasync is gone (cut here, as no write reached the
                    // platter), then the machine is down.
                    let _ = file.set_len(synced).and_then(|()| file.sync_all());
                    eprintln!(
                        "failpoint journal-before-fsync: dropped {} unsynced bytes of {}",
                        cur - synced,
                        path.display()
                    );
                    fault::crash("journal-before-fsync")
                }
                Some(inj @ (Injected::Eio | Injected::Enospc)) => {
                    return Err(ReplicatorError::io(
                        "fdatasync",
                        path,
                        inj.io_error("journal-before-fsync"),
                    ))
                }
            }
            file.sync_data()
                .map_err(|e| ReplicatorError::io("fdatasync", path, e))?;
            now_synced = Some(*cur);
            fault::check("journal-after-fsync")
                .map_err(|e| ReplicatorError::io("fdatasync", segment_path(&self.dir, *key), e))?;
        }
        if let Some(len) = now_synced {
            w.synced = len;
        }
        Ok(())
    }

    /// A power loss for the failpoints: cuts the current segment back to its length at the
    /// last fdatasync (what the page cache had not written is gone) and makes that durable.
    /// The caller then aborts the process.
    pub(crate) fn lose_unsynced(&self) {
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, file, cur)) = &w.current {
            let _ = file.set_len(w.synced).and_then(|()| file.sync_all());
            eprintln!(
                "power loss: dropped {} unsynced bytes of {}",
                cur - w.synced,
                segment_path(&self.dir, *key).display()
            );
        }
    }

    /// Reads whole frames covering seqs from `from` on, oldest first, up to about `max_bytes`
    /// (always at least one frame when there is one).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] reading a segment.
    pub fn frames_from(&self, from: Seq, max_bytes: usize) -> Result<Vec<(FrameEntry, Vec<u8>)>> {
        let picks: Vec<(FrameEntry, Arc<File>, PathBuf)> = {
            let st = self.state();
            let start = st.index.partition_point(|e| e.last_seq < from);
            let mut total = 0usize;
            let mut picks = Vec::new();
            for e in st.index.iter().skip(start) {
                if !picks.is_empty() && total + e.len as usize > max_bytes {
                    break;
                }
                let Some(seg) = st.segments.get(&e.segment) else {
                    break;
                };
                total += e.len as usize;
                picks.push((*e, Arc::clone(&seg.file), seg.path.clone()));
            }
            picks
        };
        let mut out = Vec::with_capacity(picks.len());
        for (e, file, path) in picks {
            let mut buf = vec![0u8; e.len as usize];
            file.read_exact_at(&mut buf, e.offset)
                .map_err(|err| ReplicatorError::io("read", &path, err))?;
            out.push((e, buf));
        }
        Ok(out)
    }

    /// Drops everything through `seq` (acknowledged durable by the replica): index entries
    /// at once, whole segment files once every frame in them is at or below `seq` (never the
    /// segment being written).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] writing metadata or removing a segment.
    pub fn trim_through(&self, seq: Seq) -> Result<()> {
        let mut st = self.state();
        if seq <= st.trimmed_through {
            return Ok(());
        }
        while st.index.front().is_some_and(|e| e.last_seq <= seq) {
            if let Some(e) = st.index.pop_front() {
                st.pending_bytes -= u64::from(e.len);
            }
        }
        st.trimmed_through = seq;
        prune_starts(&mut st.starts, seq);
        let keys: Vec<u64> = st.segments.keys().copied().collect();
        let doomed: Vec<u64> = keys
            .windows(2)
            .filter(|w| w[1] <= seq.0.saturating_add(1))
            .map(|w| w[0])
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        self.persist_meta(&st)?;
        for k in doomed {
            if let Some(seg) = st.segments.remove(&k) {
                std::fs::remove_file(&seg.path)
                    .map_err(|e| ReplicatorError::io("remove", &seg.path, e))?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Paths of the segment files currently held, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.state()
            .segments
            .values()
            .map(|s| s.path.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
