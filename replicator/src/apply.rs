//! The replica side of one group: checks incoming frames in the DESIGN order, applies them to
//! the resource files in seq order, makes them durable, then moves the watermark.
//!
//! Order per batch of frames: check each frame ([`crate::receive::classify`], then decode:
//! decompressed length and blake3), `pwrite` its changes, fdatasync every touched file, THEN
//! persist the watermark (`replica.slots`: watermark and epoch fence, one fdatasync), THEN
//! acknowledge.
//! All methods do blocking I/O: call them from `spawn_blocking`.
//!
//! SQLite resources receive `DbPage`/`DbCommit` changes and are applied one WHOLE transaction
//! at a time: pages are buffered in memory until their commit (at most
//! [`MAX_DB_TXN_BYTES`]), then written at `(page - 1) * page_size`, the file is cut to the
//! committed size and its header rewritten for a rollback-journal reader (bytes 18/19 = 1), so
//! the file is a consistent database at every batch boundary; each commit is written under
//! SQLite's own EXCLUSIVE lock (a connection that only locks), so SQLite readers of the live
//! replica wait for it instead of seeing half a transaction. While a transaction is
//! buffered, the persisted and acknowledged watermark stays just before its first page, so a
//! restart resends the whole transaction.

use crate::error::{ReplicatorError, Result};
use crate::history::{History, HistoryConfig, Point, RecordKind, Selector};
use crate::meta::SlotFile;
use crate::receive::{classify, Verdict};
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use tandem_core::fault;
use tandem_core::frame::{Change, ChangeKind, Decoder, FrameHeader};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_core::proto::{ship_response, Ack, Refusal, ShipResponse};

/// Magic of the replica metadata file.
pub const REPLICA_META_MAGIC: [u8; 4] = *b"TNDW";
/// Name of the replica metadata file (a [`SlotFile`] of watermark and fence) in the group
/// directory.
pub const REPLICA_META_FILE: &str = "replica.slots";
const ZERO_CHUNK: usize = 1 << 20;
/// Largest transaction (sum of buffered page bytes) a SQLite resource accepts; a larger one is
/// refused fatally.
pub const MAX_DB_TXN_BYTES: u64 = 256 << 20;

/// Pages of a SQLite transaction received but not yet committed.
#[derive(Debug)]
struct PendingTxn {
    first_seq: Seq,
    page_size: u32,
    bytes: u64,
    pages: std::collections::BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug)]
struct Resource {
    path: PathBuf,
    file: File,
    sqlite: bool,
    /// For a SQLite resource: a connection used only to take SQLite's EXCLUSIVE lock while a
    /// transaction is written, so readers of the replica never see half of one.
    lock: Option<rusqlite::Connection>,
    /// For a SQLite resource: its changes below this seq are skipped. Set by a resync, which
    /// rebuilds the database from a full snapshot of the primary's starting at this seq, so
    /// the older transactions still in the stream (increments over a state this copy does not
    /// hold) are never laid over it.
    from: Seq,
}

/// File (in the group's replica folder) keeping [`Resource::from`] of a SQLite resource.
fn sqlite_from_file(dir: &Path, resource: &str) -> PathBuf {
    dir.join(format!("sqlite-from-{resource}"))
}

const SQLITE_FROM_MAGIC: [u8; 4] = *b"SQFR";

#[derive(Debug)]
struct Inner {
    /// The group's replica folder (metadata files).
    dir: PathBuf,
    meta: SlotFile,
    watermark: Seq,
    /// The watermark as persisted and acknowledged (lower than `watermark` while a SQLite
    /// transaction is buffered).
    persisted: Seq,
    fence: Epoch,
    pending: HashMap<String, PendingTxn>,
    resources: HashMap<String, Resource>,
    /// PostgreSQL resources: their archive folders.
    archives: HashMap<String, crate::pg_archive::WalArchive>,
    decoder: Decoder,
    /// Set by [`ReplicaGroup::retire`]: no further batch is applied.
    retired: bool,
    /// Point-in-time history (undo records and recovery points), when the group keeps one.
    history: Option<History>,
    /// Capture time of the last applied change.
    last_ms: i64,
    /// Volume ranges written since the last fdatasync (resource, offset, length): what a
    /// power loss at the `replica-before-fsync` failpoint garbles. Kept only in a build with
    /// failpoints.
    unsynced: Vec<(String, u64, u64)>,
}

/// What [`ReplicaGroup::recover`] built.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The recovery point the copy is at.
    pub point: Point,
    /// The live watermark the copy was taken at before rewinding.
    pub copied_at: Seq,
    /// Undo records applied.
    pub undone: u64,
    /// (resource, file in the output folder, length, merkle root), by resource name.
    pub resources: Vec<(String, PathBuf, u64, [u8; 32])>,
}

/// What the history of a replica group holds (for listings and status).
#[derive(Debug, Clone, Default)]
pub struct HistoryView {
    /// Every recovery point, oldest first.
    pub points: Vec<Point>,
    /// The oldest point still recoverable.
    pub oldest: Option<Point>,
    /// Bytes on disk.
    pub bytes: u64,
    /// The replica watermark.
    pub watermark: Seq,
}

/// One group on the replica: its resource files, watermark and epoch fence.
#[derive(Debug)]
pub struct ReplicaGroup {
    name: String,
    group_id: GroupId,
    inner: Mutex<Inner>,
    applied_frames: AtomicU64,
    applied_changes: AtomicU64,
}

/// Per-stream receive state kept between batches (one per Ship stream).
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamState {
    /// A refusal was sent and the sender has not resent from the watermark yet: later gap
    /// frames (already in flight) are dropped quietly instead of refused again.
    pub awaiting_resend: bool,
    /// A fatal refusal was sent: the stream must end.
    pub finished: bool,
}

impl ReplicaGroup {
    /// Opens the group `name` with its metadata in `dir` and its volume resources at the given
    /// paths (created when missing).
    ///
    /// # Errors
    /// [`ReplicatorError::BadMetadata`] or [`ReplicatorError::Io`].
    pub fn open(
        name: &str,
        dir: &Path,
        resources: HashMap<String, PathBuf>,
    ) -> Result<ReplicaGroup> {
        ReplicaGroup::open_with_sqlite(name, dir, resources, &Default::default())
    }

    /// Like [`ReplicaGroup::open`], with the resources named in `sqlite` being SQLite
    /// databases: they take `DbPage`/`DbCommit` changes (whole transactions) instead of
    /// writes and trims.
    ///
    /// # Errors
    /// [`ReplicatorError::BadMetadata`] or [`ReplicatorError::Io`].
    pub fn open_with_sqlite(
        name: &str,
        dir: &Path,
        resources: HashMap<String, PathBuf>,
        sqlite: &std::collections::HashSet<String>,
    ) -> Result<ReplicaGroup> {
        std::fs::create_dir_all(dir).map_err(|e| ReplicatorError::io("create dir", dir, e))?;
        let meta_path = dir.join(REPLICA_META_FILE);
        let (meta, v) = SlotFile::open(&meta_path, REPLICA_META_MAGIC, 2, &[0, 0])?;
        let (watermark, fence) = (Seq(v[0]), Epoch(v[1]));
        let mut res = HashMap::new();
        for (rname, path) in resources {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| ReplicatorError::io("open", &path, e))?;
            let sqlite = sqlite.contains(&rname);
            let (lock, from) = if sqlite {
                let from =
                    crate::meta::read_meta(&sqlite_from_file(dir, &rname), SQLITE_FROM_MAGIC, 1)?
                        .map_or(Seq(0), |v| Seq(v[0]));
                (Some(lock_connection(&path)?), from)
            } else {
                (None, Seq(0))
            };
            res.insert(
                rname,
                Resource {
                    path,
                    file,
                    sqlite,
                    lock,
                    from,
                },
            );
        }
        Ok(ReplicaGroup {
            name: name.to_owned(),
            group_id: GroupId::from_name(name),
            inner: Mutex::new(Inner {
                dir: dir.to_owned(),
                meta,
                watermark,
                persisted: watermark,
                fence,
                pending: HashMap::new(),
                resources: res,
                archives: HashMap::new(),
                decoder: Decoder::new()?,
                history: None,
                last_ms: 0,
                unsynced: Vec::new(),
                retired: false,
            }),
            applied_frames: AtomicU64::new(0),
            applied_changes: AtomicU64::new(0),
        })
    }

    /// Adds PostgreSQL resources: each takes `WalChunk`/`WalEnd` changes into its archive
    /// folder (resource name -> folder, created when missing).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] creating a folder.
    pub fn with_archives(self, archives: HashMap<String, PathBuf>) -> Result<ReplicaGroup> {
        {
            let mut inner = self.inner();
            for (name, dir) in archives {
                let a = crate::pg_archive::WalArchive::open(&name, &dir)?;
                inner.archives.insert(name, a);
            }
        }
        Ok(self)
    }

    /// The archive folder of a PostgreSQL resource of this group.
    pub fn archive_dir(&self, resource: &str) -> Option<PathBuf> {
        self.inner()
            .archives
            .get(resource)
            .map(|a| a.dir().to_owned())
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Highest seq applied and durable here.
    pub fn watermark(&self) -> Seq {
        self.inner().watermark
    }

    /// Copies every resource file into `dir` (created) while no frame is being applied, so the
    /// copies reflect exactly the returned watermark; each copy is fdatasync'ed. Blocking: call
    /// it off the reactor. Used for drill snapshots.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] naming the file.
    pub fn copy_to(&self, dir: &Path) -> Result<(Seq, Vec<PathBuf>)> {
        std::fs::create_dir_all(dir).map_err(|e| ReplicatorError::io("create dir", dir, e))?;
        let inner = self.inner();
        let mut names: Vec<&String> = inner.resources.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let src = &inner.resources[name].path;
            let dst = dir.join(format!("{name}.img"));
            std::fs::copy(src, &dst).map_err(|e| ReplicatorError::io("copy", &dst, e))?;
            File::open(&dst)
                .and_then(|f| f.sync_data())
                .map_err(|e| ReplicatorError::io("fdatasync", &dst, e))?;
            out.push(dst);
        }
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| ReplicatorError::io("fsync dir", dir, e))?;
        Ok((inner.watermark, out))
    }

    /// Starts keeping point-in-time history in `dir` (segments of undo records and recovery
    /// points) from the current watermark on; see [`crate::history`].
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] opening or scanning the segments.
    pub fn enable_history(&self, dir: &Path, cfg: HistoryConfig) -> Result<()> {
        let mut inner = self.inner();
        let h = History::open(dir, self.group_id, inner.watermark, cfg)?;
        inner.history = Some(h);
        Ok(())
    }

    /// The oldest recoverable point of the history (cheap: for heartbeats).
    pub fn history_oldest(&self) -> Option<Point> {
        self.inner().history.as_ref()?.oldest_point().cloned()
    }

    /// The history's points, oldest recoverable point and size; `None` without history.
    pub fn history_view(&self) -> Option<HistoryView> {
        let inner = self.inner();
        let h = inner.history.as_ref()?;
        Some(HistoryView {
            points: h.points(),
            oldest: h.oldest_point().cloned(),
            bytes: h.bytes(),
            watermark: inner.watermark,
        })
    }

    /// Builds the group's resources as they were at the recovery point `sel` into `out`
    /// (created; must be empty): copies the live files under the apply lock (a cut of the
    /// stream at the watermark), then, with replication running again, applies the undo
    /// records back to the point, newest first, and hashes each copy into a merkle tree of
    /// `block_size` blocks. Files are named `RESOURCE.img`. Blocking: call it off the reactor.
    ///
    /// # Errors
    /// [`ReplicatorError::NoRecoveryPoint`] (no history, no such point, or older than the
    /// history retains), [`ReplicatorError::CorruptHistory`], [`ReplicatorError::Io`].
    pub fn recover(&self, sel: &Selector, out: &Path, block_size: u32) -> Result<Recovered> {
        if out.exists()
            && std::fs::read_dir(out)
                .map_err(|e| ReplicatorError::io("read dir", out, e))?
                .next()
                .is_some()
        {
            return Err(ReplicatorError::NoRecoveryPoint(format!(
                "output folder {} is not empty",
                out.display()
            )));
        }
        let (point, upto, segments, copies) = {
            let inner = self.inner();
            let h = inner.history.as_ref().ok_or_else(|| {
                ReplicatorError::NoRecoveryPoint(format!(
                    "group {} keeps no history (set `history` in its config)",
                    self.name
                ))
            })?;
            let point =
                crate::history::select_point(&h.points(), sel, h.oldest_seq(), inner.watermark)
                    .map_err(ReplicatorError::NoRecoveryPoint)?;
            let segments = h.snapshot()?;
            std::fs::create_dir_all(out).map_err(|e| ReplicatorError::io("create dir", out, e))?;
            let mut names: Vec<&String> = inner.resources.keys().collect();
            names.sort();
            let mut copies = Vec::new();
            for name in names {
                let dst = out.join(format!("{name}.img"));
                std::fs::copy(&inner.resources[name].path, &dst)
                    .map_err(|e| ReplicatorError::io("copy", &dst, e))?;
                copies.push((name.clone(), dst));
            }
            (point, inner.watermark, segments, copies)
        };
        let mut files = HashMap::new();
        for (name, path) in &copies {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| ReplicatorError::io("open", path, e))?;
            files.insert(name.clone(), (f, path.clone()));
        }
        let undone = crate::history::rewind(&segments, point.seq, upto, &files)?;
        drop(files);
        crate::meta::sync_dir(out)?;
        let mut resources = Vec::new();
        for (name, path) in copies {
            let tree = crate::scan::hash_file(&path, block_size)
                .map_err(|e| ReplicatorError::Task(format!("hashing {}: {e}", path.display())))?;
            resources.push((name, path, tree.length(), tree.root()));
        }
        Ok(Recovered {
            point,
            copied_at: upto,
            undone,
            resources,
        })
    }

    /// The epoch fence: frames from older epochs are refused.
    pub fn epoch(&self) -> Epoch {
        self.inner().fence
    }

    /// Frames (or frame tails) applied by this instance since open.
    pub fn applied_frames(&self) -> u64 {
        self.applied_frames.load(Ordering::SeqCst)
    }

    /// Changes applied by this instance since open (a duplicate is never counted).
    pub fn applied_changes(&self) -> u64 {
        self.applied_changes.load(Ordering::SeqCst)
    }

    /// Raises the epoch fence durably (a fence never goes down; a lower value is ignored).
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] writing the metadata.
    pub fn set_fence(&self, epoch: Epoch) -> Result<()> {
        let mut inner = self.inner();
        if epoch > inner.fence {
            fault::check("replica-before-fence")
                .map_err(|e| ReplicatorError::io("persist fence", inner.meta.path(), e))?;
            let wm = inner.persisted;
            inner.meta.write(&[wm.0, epoch.0])?;
            inner.fence = epoch;
        }
        Ok(())
    }

    /// Makes each named SQLite resource skip its changes below the given seq, durably (see
    /// [`Resource::from`]); called by a resync before [`Self::reset_watermark`].
    ///
    /// # Errors
    /// [`ReplicatorError::UnknownResource`] for a name that is not a SQLite resource of the
    /// group, [`ReplicatorError::Io`] writing the metadata.
    pub fn set_sqlite_from(&self, from: &HashMap<String, Seq>) -> Result<()> {
        let mut inner = self.inner();
        let dir = inner.dir.clone();
        for (name, seq) in from {
            let r = inner
                .resources
                .get_mut(name)
                .filter(|r| r.sqlite)
                .ok_or_else(|| ReplicatorError::UnknownResource {
                    group: self.name.clone(),
                    resource: name.clone(),
                })?;
            crate::meta::write_meta(&sqlite_from_file(&dir, name), SQLITE_FROM_MAGIC, &[seq.0])?;
            r.from = *seq;
        }
        Ok(())
    }

    /// Sets the watermark after a resync made the resource files equal to the primary's copy
    /// as of `seq` (the files must already be durable). Frames after `seq` apply next.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] writing the metadata.
    pub fn reset_watermark(&self, seq: Seq) -> Result<()> {
        let mut inner = self.inner();
        let fence = inner.fence;
        inner.meta.write(&[seq.0, fence.0])?;
        inner.watermark = seq;
        inner.persisted = seq;
        inner.pending.clear();
        if let Some(h) = inner.history.as_mut() {
            h.reset(seq)?;
        }
        for a in inner.archives.values_mut() {
            a.abandon();
        }
        Ok(())
    }

    /// Handles a Hello at `epoch`: refuses an older epoch (fatal), raises the fence to a newer
    /// one, and returns (watermark, fence) for the Welcome.
    ///
    /// # Errors
    /// `Ok(Err(refusal))` for an old epoch; [`ReplicatorError::Io`] raising the fence.
    pub fn hello(&self, epoch: Epoch) -> Result<std::result::Result<(Seq, Epoch), Refusal>> {
        let (wm, fence) = {
            let i = self.inner();
            (i.watermark, i.fence)
        };
        if epoch < fence {
            return Ok(Err(Refusal {
                seq: wm.0 + 1,
                reason: format!("epoch {epoch} is older than the fence {fence}"),
                resume_from: wm.0 + 1,
                fatal: true,
            }));
        }
        self.set_fence(epoch)?;
        Ok(Ok((wm, epoch)))
    }

    /// Stops applying: waits for the batch being applied (if any) to finish, after which every
    /// later [`ReplicaGroup::receive_batch`] fails with [`ReplicatorError::Closed`]. A resync
    /// retires the group before it writes the files, so no older frame lands on a block it
    /// already brought up to date.
    pub fn retire(&self) {
        self.inner().retired = true;
    }

    /// Checks and applies a batch of frames received in order on one stream, and returns the
    /// responses to send: a cumulative Ack (after files and watermark are durable) and at most
    /// one Refusal.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] when writing or syncing fails: nothing is acknowledged, and the
    /// in-memory watermark goes back to the durable one.
    pub fn receive_batch(
        &self,
        frames: Vec<Vec<u8>>,
        stream: &mut StreamState,
    ) -> Result<Vec<ShipResponse>> {
        let mut guard = self.inner();
        let inner: &mut Inner = &mut guard;
        if inner.retired {
            return Err(ReplicatorError::Closed(self.name.clone()));
        }
        let durable = inner.persisted;
        let mut touched = BTreeSet::new();
        let mut refusal = None;
        let mut ack = false;
        let mut frames_applied = 0u64;
        let mut changes_applied = 0u64;
        for bytes in frames {
            let wm = inner.watermark;
            let refuse = |reason: String, fatal: bool| Refusal {
                seq: wm.0 + 1,
                reason,
                resume_from: wm.0 + 1,
                fatal,
            };
            let header = match FrameHeader::parse(&bytes) {
                Ok(h) => h,
                Err(e) => {
                    refusal = Some(refuse(format!("bad frame header: {e}"), false));
                    break;
                }
            };
            let skip = match classify(&header, self.group_id, wm, inner.fence) {
                Verdict::WrongGroup => {
                    refusal = Some(refuse(
                        format!("frame of group {} sent to {}", header.meta.group, self.name),
                        true,
                    ));
                    break;
                }
                Verdict::OldEpoch => {
                    refusal = Some(refuse(
                        format!(
                            "frame epoch {} is older than the fence {}",
                            header.meta.epoch, inner.fence
                        ),
                        true,
                    ));
                    break;
                }
                Verdict::Duplicate => {
                    ack = true;
                    continue;
                }
                Verdict::Gap => {
                    if !stream.awaiting_resend {
                        stream.awaiting_resend = true;
                        refusal = Some(Refusal {
                            seq: header.meta.first_seq.0,
                            reason: format!(
                                "gap: frame starts at {}, watermark is {wm}",
                                header.meta.first_seq
                            ),
                            resume_from: wm.0 + 1,
                            fatal: false,
                        });
                    }
                    continue;
                }
                Verdict::Apply { skip } => skip,
            };
            let frame = match inner.decoder.decode_payload(header, &bytes) {
                Ok(f) => f,
                Err(e) => {
                    stream.awaiting_resend = true;
                    refusal = Some(refuse(
                        format!("frame {}: {e}", header.meta.first_seq),
                        false,
                    ));
                    break;
                }
            };
            stream.awaiting_resend = false;
            if header.meta.epoch > inner.fence {
                if let Err(e) = inner.meta.write(&[durable.0, header.meta.epoch.0]) {
                    rollback(inner);
                    return Err(e);
                }
                inner.fence = header.meta.epoch;
            }
            let mut failed = None;
            for (i, c) in frame.changes.iter().enumerate().skip(skip as usize) {
                let seq = Seq(header.meta.first_seq.0 + i as u64);
                let history = inner.history.as_mut();
                let applied = match inner.archives.get_mut(&c.resource) {
                    Some(a) => a.apply(c, seq).map(|()| None),
                    None => apply_change(
                        &self.name,
                        &inner.resources,
                        &mut inner.pending,
                        history,
                        c,
                        seq,
                    ),
                };
                match applied {
                    Ok(Some(r)) => {
                        if fault::ENABLED {
                            let len = match c.kind {
                                ChangeKind::Write => c.data.len() as u64,
                                ChangeKind::Trim => c.length,
                                _ => 0,
                            };
                            if len > 0 {
                                inner.unsynced.push((r.clone(), c.offset, len));
                            }
                        }
                        touched.insert(r);
                    }
                    Ok(None) => {}
                    Err(
                        e @ (ReplicatorError::UnknownResource { .. }
                        | ReplicatorError::UnsupportedChange { .. }
                        | ReplicatorError::BadDbChange { .. }
                        | ReplicatorError::BadWalChange { .. }),
                    ) => {
                        failed = Some(e);
                        break;
                    }
                    Err(e) => {
                        rollback(inner);
                        return Err(e);
                    }
                }
                inner.watermark = seq;
                inner.last_ms = c.captured_ms;
                changes_applied += 1;
            }
            if let Some(e) = failed {
                refusal = Some(Refusal {
                    seq: inner.watermark.0 + 1,
                    reason: e.to_string(),
                    resume_from: resume_mark(inner).0 + 1,
                    fatal: true,
                });
                break;
            }
            frames_applied += 1;
        }
        if inner.watermark > durable {
            let (wm, ms) = (inner.watermark, inner.last_ms);
            if let Some(h) = inner.history.as_mut() {
                if let Err(e) = h.maybe_checkpoint(wm, ms) {
                    rollback(inner);
                    return Err(e);
                }
            }
        }
        if resume_mark(inner) > durable {
            if let Err(e) = sync_and_persist(inner, &touched) {
                rollback(inner);
                return Err(e);
            }
            ack = true;
        } else if !touched.is_empty() {
            // Files written while the mark is held back by another resource's buffered
            // transaction: still durable before anything is acknowledged.
            if let Err(e) = sync_and_persist(inner, &touched) {
                rollback(inner);
                return Err(e);
            }
        }
        self.applied_frames
            .fetch_add(frames_applied, Ordering::SeqCst);
        self.applied_changes
            .fetch_add(changes_applied, Ordering::SeqCst);
        let mut out = Vec::new();
        if ack {
            if let Err(e) = fault::check("replica-before-ack") {
                return Err(ReplicatorError::io("ack", inner.meta.path(), e));
            }
            out.push(ShipResponse {
                msg: Some(ship_response::Msg::Ack(Ack {
                    durable_seq: inner.persisted.0,
                })),
            });
        }
        if let Some(r) = refusal {
            stream.finished |= r.fatal;
            out.push(ShipResponse {
                msg: Some(ship_response::Msg::Refusal(r)),
            });
        }
        Ok(out)
    }

    /// Reads `len` bytes at `offset` of a resource (verification and tests).
    ///
    /// # Errors
    /// [`ReplicatorError::UnknownResource`] or [`ReplicatorError::Io`].
    pub fn read_resource(&self, resource: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let inner = self.inner();
        let r = inner
            .resources
            .get(resource)
            .ok_or_else(|| ReplicatorError::UnknownResource {
                group: self.name.clone(),
                resource: resource.to_owned(),
            })?;
        let mut buf = vec![0u8; len];
        let n = r
            .file
            .read_at(&mut buf, offset)
            .map_err(|e| ReplicatorError::io("read", &r.path, e))?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// The highest seq that can be persisted: the watermark, or just before the first page of the
/// oldest buffered SQLite transaction.
fn resume_mark(inner: &Inner) -> Seq {
    inner
        .pending
        .values()
        .map(|p| p.first_seq)
        .chain(inner.archives.values().filter_map(|a| a.pending_since()))
        .map(|s| Seq(s.0 - 1))
        .fold(inner.watermark, Seq::min)
}

/// After a failed batch: back to the persisted watermark, buffered transactions dropped (they
/// are resent from there).
fn rollback(inner: &mut Inner) {
    inner.watermark = inner.persisted;
    inner.pending.clear();
    for a in inner.archives.values_mut() {
        a.abandon();
    }
}

fn sync_and_persist(inner: &mut Inner, touched: &BTreeSet<String>) -> Result<()> {
    match fault::hit("replica-before-fsync") {
        None => {}
        Some(fault::Injected::LoseUnsynced) => lose_unsynced(inner),
        Some(fault::Injected::Crash) => fault::crash("replica-before-fsync"),
        Some(inj) => {
            return Err(ReplicatorError::io(
                "fdatasync",
                inner.meta.path(),
                inj.io_error("replica-before-fsync"),
            ))
        }
    }
    for name in touched {
        if let Some(r) = inner.resources.get(name) {
            r.file
                .sync_data()
                .map_err(|e| ReplicatorError::io("fdatasync", &r.path, e))?;
        }
    }
    if let Some(h) = inner.history.as_mut() {
        // Undo records before the watermark that covers them.
        h.sync()?;
    }
    fault::check("replica-before-watermark")
        .map_err(|e| ReplicatorError::io("write watermark", inner.meta.path(), e))?;
    let (wm, fence) = (resume_mark(inner), inner.fence);
    inner.meta.write(&[wm.0, fence.0])?;
    inner.persisted = wm;
    inner.unsynced.clear();
    if let Some(h) = inner.history.as_mut() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        h.trim(now)?;
    }
    Ok(())
}

/// A power loss at the `replica-before-fsync` failpoint: every volume range written since
/// the last fdatasync reads back as garbage (0xEE; a disk may keep old, new or torn sectors),
/// made durable, then the process aborts. The watermark still stands before those writes, so
/// the primary must send them again.
fn lose_unsynced(inner: &Inner) -> ! {
    let fill = vec![0xEEu8; 64 << 10];
    let mut lost = 0u64;
    for (name, offset, len) in &inner.unsynced {
        let Some(r) = inner.resources.get(name) else {
            continue;
        };
        let mut done = 0u64;
        while done < *len {
            let n = (*len - done).min(fill.len() as u64) as usize;
            let _ = r.file.write_all_at(&fill[..n], offset + done);
            done += n as u64;
        }
        let _ = r.file.sync_data();
        lost += len;
    }
    eprintln!(
        "failpoint replica-before-fsync: garbled {lost} unsynced bytes in {} ranges",
        inner.unsynced.len()
    );
    fault::crash("replica-before-fsync")
}

/// Keeps what `c` is about to overwrite (`len` bytes at its offset) in the point-in-time
/// history, when the group keeps one.
fn keep_undo(
    history: Option<&mut History>,
    r: &Resource,
    c: &Change,
    seq: Seq,
    len: u64,
) -> Result<()> {
    if let Some(h) = history {
        h.record_undo(
            seq,
            c.captured_ms,
            &c.resource,
            &r.file,
            &r.path,
            c.offset,
            len,
            true,
        )?;
    }
    Ok(())
}

/// Applies one change; returns the resource name when a file was written.
fn apply_change(
    group: &str,
    resources: &HashMap<String, Resource>,
    pending: &mut HashMap<String, PendingTxn>,
    mut history: Option<&mut History>,
    c: &Change,
    seq: Seq,
) -> Result<Option<String>> {
    // Record only what was not completely recorded before a restart.
    if history.as_ref().is_some_and(|h| !h.wants(seq)) {
        history = None;
    }
    if c.kind == ChangeKind::Barrier {
        // Everything before it is made durable before the batch is acknowledged.
        if let Some(h) = history {
            h.record_point(seq, c.captured_ms, RecordKind::Barrier, &c.resource, true)?;
        }
        return Ok(None);
    }
    if c.kind == ChangeKind::Checkpoint {
        let tag = std::str::from_utf8(&c.data)
            .ok()
            .filter(|t| t.len() <= tandem_core::frame::MAX_TAG_LEN && c.resource.is_empty());
        let Some(tag) = tag else {
            return Err(ReplicatorError::UnsupportedChange {
                seq,
                kind: "Checkpoint with a bad tag or a resource".into(),
                resource: c.resource.clone(),
            });
        };
        if let Some(h) = history {
            h.record_point(seq, c.captured_ms, RecordKind::Tagged, tag, true)?;
        }
        return Ok(None);
    }
    let r = resources
        .get(&c.resource)
        .ok_or_else(|| ReplicatorError::UnknownResource {
            group: group.to_owned(),
            resource: c.resource.clone(),
        })?;
    let unsupported = || ReplicatorError::UnsupportedChange {
        seq,
        kind: format!("{:?}", c.kind),
        resource: c.resource.clone(),
    };
    if r.sqlite != matches!(c.kind, ChangeKind::DbPage | ChangeKind::DbCommit) {
        return Err(unsupported());
    }
    if seq < r.from {
        return Ok(None);
    }
    match c.kind {
        ChangeKind::DbPage => {
            buffer_page(pending, c, seq)?;
            return Ok(None);
        }
        ChangeKind::DbCommit => {
            let txn = pending.remove(&c.resource);
            // Readers (SQLite, rollback mode) wait while the transaction is written. Only
            // over a consistent materialised file: SQLite then has nothing to write itself
            // (on an empty or inconsistent file BEGIN EXCLUSIVE would dirty page 1 and COMMIT
            // would write it over ours); no reader can read such a file anyway.
            let mut lock = r.lock.as_ref().filter(|_| materialised(&r.file));
            if let Some(l) = lock {
                match l.execute_batch("BEGIN EXCLUSIVE") {
                    Ok(()) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code != rusqlite::ErrorCode::DatabaseBusy =>
                    {
                        // SQLite cannot read the header (not a reader's problem either).
                        tracing::warn!(resource = %c.resource, error = %e, "replica commit without the SQLite lock");
                        lock = None;
                    }
                    Err(e) => return Err(sqlite_lock_err(&r.path, "begin exclusive", e)),
                }
            }
            let applied = apply_db_commit(r, &c.resource, txn, c, seq, history);
            if let Some(lock) = lock {
                lock.execute_batch("COMMIT")
                    .map_err(|e| sqlite_lock_err(&r.path, "release exclusive", e))?;
            }
            applied?;
        }
        ChangeKind::Write => {
            keep_undo(history, r, c, seq, c.data.len() as u64)?;
            r.file
                .write_all_at(&c.data, c.offset)
                .map_err(|e| ReplicatorError::io("pwrite", &r.path, e))?
        }
        ChangeKind::Trim => {
            keep_undo(history, r, c, seq, c.length)?;
            let zeroes = vec![0u8; (c.length as usize).min(ZERO_CHUNK)];
            let mut done = 0u64;
            while done < c.length {
                let n = (c.length - done).min(zeroes.len() as u64) as usize;
                r.file
                    .write_all_at(&zeroes[..n], c.offset + done)
                    .map_err(|e| ReplicatorError::io("pwrite zeroes", &r.path, e))?;
                done += n as u64;
            }
        }
        ChangeKind::Barrier
        | ChangeKind::Checkpoint
        | ChangeKind::WalChunk
        | ChangeKind::WalEnd => return Err(unsupported()),
    }
    Ok(Some(c.resource.clone()))
}

/// How long a commit waits for readers of the replica database to release their locks.
const DB_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn lock_connection(path: &Path) -> Result<rusqlite::Connection> {
    let err = |op| {
        move |e: rusqlite::Error| ReplicatorError::Sqlite {
            path: path.to_owned(),
            op,
            reason: e.to_string(),
        }
    };
    let c = rusqlite::Connection::open(path).map_err(err("open lock connection"))?;
    c.busy_timeout(DB_LOCK_TIMEOUT)
        .map_err(err("busy_timeout"))?;
    Ok(c)
}

/// Whether the file is a database this applier materialised: rollback-mode header (18/19 =
/// 1), valid in-header size, and a length of exactly that many pages.
fn materialised(file: &File) -> bool {
    let mut head = [0u8; crate::sqlite_wal::DB_HEADER_LEN];
    if file.read_exact_at(&mut head, 0).is_err() {
        return false;
    }
    let Ok(h) = crate::sqlite_wal::DbHeader::parse(&head) else {
        return false;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    head[18] == 1
        && head[19] == 1
        && h.db_size
            .is_some_and(|n| u64::from(n) * u64::from(h.page_size) == len)
}

fn sqlite_lock_err(path: &Path, op: &'static str, e: rusqlite::Error) -> ReplicatorError {
    ReplicatorError::Sqlite {
        path: path.to_owned(),
        op,
        reason: e.to_string(),
    }
}

fn bad_db(seq: Seq, resource: &str, reason: String) -> ReplicatorError {
    ReplicatorError::BadDbChange {
        seq,
        resource: resource.to_owned(),
        reason,
    }
}

/// Buffers one page of a SQLite transaction (page number in `offset`).
fn buffer_page(pending: &mut HashMap<String, PendingTxn>, c: &Change, seq: Seq) -> Result<()> {
    let size = c.data.len() as u32;
    if !(512..=65536).contains(&size) || !size.is_power_of_two() || c.offset == 0 {
        return Err(bad_db(
            seq,
            &c.resource,
            format!("page {} of {} bytes", c.offset, c.data.len()),
        ));
    }
    let txn = pending
        .entry(c.resource.clone())
        .or_insert_with(|| PendingTxn {
            first_seq: seq,
            page_size: size,
            bytes: 0,
            pages: Default::default(),
        });
    if txn.page_size != size {
        return Err(bad_db(
            seq,
            &c.resource,
            format!(
                "page {} has {size} bytes, the transaction's pages have {}",
                c.offset, txn.page_size
            ),
        ));
    }
    if txn.bytes + u64::from(size) > MAX_DB_TXN_BYTES {
        return Err(bad_db(
            seq,
            &c.resource,
            format!("transaction over the {MAX_DB_TXN_BYTES}-byte limit"),
        ));
    }
    if txn.pages.insert(c.offset, c.data.clone()).is_none() {
        txn.bytes += u64::from(size);
    }
    Ok(())
}

/// Writes a whole committed transaction into the database file, cuts the file to `db_size`
/// pages and rewrites the header for a rollback-journal reader.
fn apply_db_commit(
    r: &Resource,
    resource: &str,
    txn: Option<PendingTxn>,
    commit: &Change,
    seq: Seq,
    history: Option<&mut History>,
) -> Result<()> {
    let db_size = commit.offset;
    use crate::sqlite_wal::{materialise_header, DbHeader, DB_HEADER_LEN};
    let mut head = [0u8; DB_HEADER_LEN];
    let page_size = match &txn {
        Some(t) => u64::from(t.page_size),
        None => {
            // A commit without pages: keep the file's page size.
            r.file
                .read_exact_at(&mut head, 0)
                .map_err(|e| ReplicatorError::io("read header", &r.path, e))?;
            let h = DbHeader::parse(&head).map_err(|e| bad_db(seq, resource, e.to_string()))?;
            u64::from(h.page_size)
        }
    };
    if db_size == 0 || db_size > u64::from(u32::MAX) {
        return Err(bad_db(
            seq,
            resource,
            format!("commit size {db_size} pages"),
        ));
    }
    if let Some(h) = history {
        // Undo: the old bytes of every page written, of the header, and of any tail the
        // commit cuts off; then the commit itself as a recovery point.
        let ms = commit.captured_ms;
        let (file, path) = (&r.file, r.path.as_path());
        if let Some(t) = &txn {
            for pgno in t.pages.range(..=db_size).map(|(p, _)| *p) {
                h.record_undo(
                    seq,
                    ms,
                    resource,
                    file,
                    path,
                    (pgno - 1) * page_size,
                    page_size,
                    false,
                )?;
            }
        }
        h.record_undo(
            seq,
            ms,
            resource,
            file,
            path,
            0,
            DB_HEADER_LEN as u64,
            false,
        )?;
        let len = file
            .metadata()
            .map_err(|e| ReplicatorError::io("stat", path, e))?
            .len();
        let new_len = db_size * page_size;
        if len > new_len {
            h.record_undo(seq, ms, resource, file, path, new_len, len - new_len, false)?;
        }
        h.record_point(seq, ms, RecordKind::Barrier, resource, true)?;
    }
    if let Some(t) = &txn {
        for (pgno, data) in t.pages.range(..=db_size) {
            r.file
                .write_all_at(data, (pgno - 1) * page_size)
                .map_err(|e| ReplicatorError::io("pwrite page", &r.path, e))?;
        }
    }
    r.file
        .set_len(db_size * page_size)
        .map_err(|e| ReplicatorError::io("truncate", &r.path, e))?;
    r.file
        .read_exact_at(&mut head, 0)
        .map_err(|e| ReplicatorError::io("read header", &r.path, e))?;
    DbHeader::parse(&head).map_err(|e| bad_db(seq, resource, format!("after commit: {e}")))?;
    materialise_header(&mut head, db_size as u32);
    r.file
        .write_all_at(&head, 0)
        .map_err(|e| ReplicatorError::io("pwrite header", &r.path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::frame::{Encoder, FrameMeta};

    fn enc(group: &str, epoch: u64, first: u64, changes: &[Change]) -> Vec<u8> {
        Encoder::new(1)
            .unwrap()
            .encode(
                FrameMeta {
                    group: GroupId::from_name(group),
                    epoch: Epoch(epoch),
                    first_seq: Seq(first),
                },
                changes,
            )
            .unwrap()
    }

    fn setup() -> (tempfile::TempDir, ReplicaGroup) {
        let dir = tempfile::tempdir().unwrap();
        let mut res = HashMap::new();
        res.insert("vol".to_owned(), dir.path().join("vol.img"));
        let g = ReplicaGroup::open("g", &dir.path().join("meta"), res).unwrap();
        (dir, g)
    }

    fn refusal(out: &[ShipResponse]) -> Option<Refusal> {
        out.iter().find_map(|r| match &r.msg {
            Some(ship_response::Msg::Refusal(r)) => Some(r.clone()),
            _ => None,
        })
    }

    fn acked(out: &[ShipResponse]) -> Option<u64> {
        out.iter().find_map(|r| match &r.msg {
            Some(ship_response::Msg::Ack(a)) => Some(a.durable_seq),
            _ => None,
        })
    }

    #[test]
    fn an_archive_file_is_acknowledged_only_once_whole_and_a_restart_resends_it() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        let open = || {
            let mut arch = HashMap::new();
            arch.insert("db".to_owned(), archive.clone());
            ReplicaGroup::open("g", &dir.path().join("meta"), HashMap::new())
                .unwrap()
                .with_archives(arch)
                .unwrap()
        };
        let g = open();
        let data: Vec<u8> = (0..tandem_core::walfile::CHUNK_LEN + 3)
            .map(|i| i as u8)
            .collect();
        let cs = tandem_core::walfile::changes("db", "000000010000000000000001", &data, 0).unwrap();
        assert_eq!(cs.len(), 3);
        let mut st = StreamState::default();
        // The first chunk alone: applied, but nothing acknowledged yet.
        let out = g
            .receive_batch(vec![enc("g", 1, 1, &cs[..1])], &mut st)
            .unwrap();
        assert_eq!(acked(&out), None);
        assert_eq!(g.watermark(), Seq(1));
        // A restart: the watermark is back before the file, which is resent whole.
        drop(g);
        let g = open();
        assert_eq!(g.watermark(), Seq(0));
        assert!(!archive.join("000000010000000000000001").exists());
        let out = g.receive_batch(vec![enc("g", 1, 1, &cs)], &mut st).unwrap();
        assert_eq!(acked(&out), Some(3));
        assert_eq!(g.archive_dir("db"), Some(archive.clone()));
        assert_eq!(
            std::fs::read(archive.join("000000010000000000000001")).unwrap(),
            data
        );
        // A volume change for the postgres resource is refused for good.
        let out = g
            .receive_batch(
                vec![enc("g", 1, 4, &[Change::write("db", 0, vec![1], 0)])],
                &mut st,
            )
            .unwrap();
        let r = refusal(&out).unwrap();
        assert!(r.fatal && r.reason.contains("postgres"), "{r:?}");
    }

    #[test]
    fn snapshot_copy_holds_what_was_applied_and_does_not_follow_later_frames() {
        let (dir, g) = setup();
        let mut st = StreamState::default();
        let f1 = enc("g", 1, 1, &[Change::write("vol", 0, vec![7; 8], 0)]);
        g.receive_batch(vec![f1], &mut st).unwrap();
        let snap = dir.path().join("snapshots/g/drill");
        let (wm, paths) = g.copy_to(&snap).unwrap();
        assert_eq!(wm, Seq(1));
        assert_eq!(paths, vec![snap.join("vol.img")]);
        let f2 = enc("g", 1, 2, &[Change::write("vol", 0, vec![9; 8], 0)]);
        g.receive_batch(vec![f2], &mut st).unwrap();
        assert_eq!(std::fs::read(&paths[0]).unwrap(), vec![7; 8]);
        assert_eq!(g.read_resource("vol", 0, 8).unwrap(), vec![9; 8]);
    }

    #[test]
    fn replica_applies_in_order_and_persists_watermark() {
        let (dir, g) = setup();
        let mut st = StreamState::default();
        let f1 = enc("g", 1, 1, &[Change::write("vol", 0, vec![1; 10], 0)]);
        let f2 = enc(
            "g",
            1,
            2,
            &[
                Change::write("vol", 5, vec![2; 10], 0),
                Change::trim("vol", 0, 3, 0),
                Change::barrier("vol", 0),
            ],
        );
        let out = g.receive_batch(vec![f1.clone(), f2], &mut st).unwrap();
        assert_eq!(acked(&out), Some(4));
        assert_eq!(
            g.read_resource("vol", 0, 15).unwrap(),
            [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
        );
        // A duplicate is acknowledged and not applied again.
        let out = g.receive_batch(vec![f1], &mut st).unwrap();
        assert_eq!(acked(&out), Some(4));
        assert_eq!(g.applied_changes(), 4);
        drop(g);
        let mut res = HashMap::new();
        res.insert("vol".to_owned(), dir.path().join("vol.img"));
        let g = ReplicaGroup::open("g", &dir.path().join("meta"), res).unwrap();
        assert_eq!(g.watermark(), Seq(4));
        assert_eq!(g.epoch(), Epoch(1));
    }

    #[test]
    fn replica_refuses_gap_once_and_resumes_from_watermark() {
        let (_d, g) = setup();
        let mut st = StreamState::default();
        let f3 = enc("g", 1, 3, &[Change::write("vol", 0, vec![1; 4], 0)]);
        let f4 = enc("g", 1, 4, &[Change::write("vol", 0, vec![1; 4], 0)]);
        let out = g.receive_batch(vec![f3, f4], &mut st).unwrap();
        let r = refusal(&out).unwrap();
        assert_eq!((r.resume_from, r.fatal), (1, false));
        assert_eq!(out.len(), 1, "one refusal for the two gap frames");
        assert_eq!(g.watermark(), Seq(0));
    }

    #[test]
    fn replica_refuses_corrupt_frame_and_accepts_the_resend() {
        let (_d, g) = setup();
        let mut st = StreamState::default();
        let good = enc("g", 1, 1, &[Change::write("vol", 0, vec![7; 4096], 0)]);
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let out = g.receive_batch(vec![bad], &mut st).unwrap();
        let r = refusal(&out).unwrap();
        assert!(!r.fatal && r.resume_from == 1, "{r:?}");
        assert_eq!(g.watermark(), Seq(0));
        let out = g.receive_batch(vec![good], &mut st).unwrap();
        assert_eq!(acked(&out), Some(1));
    }

    #[test]
    fn replica_refuses_frame_from_old_epoch() {
        let (_d, g) = setup();
        g.set_fence(Epoch(3)).unwrap();
        let mut st = StreamState::default();
        let f = enc("g", 2, 1, &[Change::write("vol", 0, vec![1; 4], 0)]);
        let out = g.receive_batch(vec![f], &mut st).unwrap();
        assert!(refusal(&out).unwrap().fatal);
        assert!(st.finished);
        assert_eq!(g.watermark(), Seq(0));
        assert!(g.hello(Epoch(2)).unwrap().is_err());
        assert_eq!(g.hello(Epoch(4)).unwrap().unwrap(), (Seq(0), Epoch(4)));
        assert_eq!(g.epoch(), Epoch(4));
    }

    #[test]
    fn replica_applies_only_the_new_tail_of_an_overlapping_frame() {
        let (_d, g) = setup();
        let mut st = StreamState::default();
        let a = enc("g", 1, 1, &[Change::write("vol", 0, vec![1; 4], 0)]);
        g.receive_batch(vec![a], &mut st).unwrap();
        let b = enc(
            "g",
            1,
            1,
            &[
                Change::write("vol", 0, vec![9; 4], 0),
                Change::write("vol", 4, vec![2; 4], 0),
            ],
        );
        let out = g.receive_batch(vec![b], &mut st).unwrap();
        assert_eq!(acked(&out), Some(2));
        assert_eq!(
            g.read_resource("vol", 0, 8).unwrap(),
            [1, 1, 1, 1, 2, 2, 2, 2]
        );
    }

    fn db_setup() -> (tempfile::TempDir, ReplicaGroup) {
        let dir = tempfile::tempdir().unwrap();
        let mut res = HashMap::new();
        res.insert("db".to_owned(), dir.path().join("r.db"));
        let sq = ["db".to_owned()].into_iter().collect();
        let g = ReplicaGroup::open_with_sqlite("g", &dir.path().join("meta"), res, &sq).unwrap();
        (dir, g)
    }

    fn page(pgno: u64, fill: u8) -> Change {
        let mut data = vec![fill; 512];
        if pgno == 1 {
            data[..16].copy_from_slice(crate::sqlite_wal::DB_MAGIC);
            data[16..18].copy_from_slice(&512u16.to_be_bytes());
            data[18] = 2;
            data[19] = 2;
            data[21..24].copy_from_slice(&[64, 32, 32]);
        }
        Change {
            resource: "db".into(),
            kind: ChangeKind::DbPage,
            offset: pgno,
            length: 512,
            captured_ms: 0,
            data,
        }
    }

    fn commit(pages: u64) -> Change {
        Change {
            resource: "db".into(),
            kind: ChangeKind::DbCommit,
            offset: pages,
            length: 0,
            captured_ms: 0,
            data: vec![],
        }
    }

    #[test]
    fn sqlite_resource_skips_changes_below_its_snapshot_seq_across_a_reopen() {
        let (dir, g) = db_setup();
        let mut st = StreamState::default();
        let f1 = enc("g", 1, 1, &[page(1, 0), page(2, 7), commit(2)]);
        g.receive_batch(vec![f1], &mut st).unwrap();
        // A resync: the primary's snapshot starts at seq 13; the stream resumes at 10, with an
        // increment (seqs 10-11) over a state this copy never had, then the snapshot.
        let from: HashMap<String, Seq> = [("db".to_owned(), Seq(13))].into_iter().collect();
        g.set_sqlite_from(&from).unwrap();
        g.reset_watermark(Seq(9)).unwrap();
        drop(g);
        let mut res = HashMap::new();
        res.insert("db".to_owned(), dir.path().join("r.db"));
        let sq = ["db".to_owned()].into_iter().collect();
        let g = ReplicaGroup::open_with_sqlite("g", &dir.path().join("meta"), res, &sq).unwrap();
        assert_eq!(g.watermark(), Seq(9));
        let mut st = StreamState::default();
        let inc = enc("g", 1, 10, &[page(2, 0xee), commit(2), page(3, 1)]);
        let out = g.receive_batch(vec![inc], &mut st).unwrap();
        assert_eq!(acked(&out), Some(12));
        // The copy keeps its own consistent state until the snapshot: no mix of the two.
        assert_eq!(g.read_resource("db", 512, 1).unwrap(), [7]);
        let snap = enc("g", 1, 13, &[page(1, 0), page(2, 5), page(3, 6), commit(3)]);
        let out = g.receive_batch(vec![snap], &mut st).unwrap();
        assert_eq!(acked(&out), Some(16));
        assert_eq!(
            g.read_resource("db", 512, 1).unwrap(),
            [5],
            "the snapshot's page 2"
        );
        assert_eq!(g.read_resource("db", 1024, 1).unwrap(), [6]);
        // Later changes apply on top.
        let next = enc("g", 1, 17, &[page(2, 9), commit(3)]);
        g.receive_batch(vec![next], &mut st).unwrap();
        assert_eq!(g.read_resource("db", 512, 1).unwrap(), [9]);
    }

    #[test]
    fn sqlite_from_names_only_sqlite_resources() {
        let (_dir, g) = db_setup();
        let from: HashMap<String, Seq> = [("nope".to_owned(), Seq(3))].into_iter().collect();
        assert!(matches!(
            g.set_sqlite_from(&from),
            Err(ReplicatorError::UnknownResource { .. })
        ));
    }

    #[test]
    fn sqlite_transaction_split_over_batches_applies_only_at_commit() {
        let (dir, g) = db_setup();
        let mut st = StreamState::default();
        let f1 = enc("g", 1, 1, &[page(1, 0), page(2, 7), commit(2)]);
        let out = g.receive_batch(vec![f1], &mut st).unwrap();
        assert_eq!(acked(&out), Some(3));
        let file = dir.path().join("r.db");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024);
        let head = g.read_resource("db", 0, 100).unwrap();
        assert_eq!(
            (head[18], head[19]),
            (1, 1),
            "materialised for rollback readers"
        );
        // The next transaction's pages arrive in one batch, its commit in the next.
        let f2 = enc("g", 1, 4, &[page(2, 8), page(3, 9)]);
        let out = g.receive_batch(vec![f2], &mut st).unwrap();
        assert_eq!(acked(&out), None, "nothing new is durable: no ack");
        assert_eq!(g.watermark(), Seq(5));
        assert_eq!(g.read_resource("db", 512, 1).unwrap(), [7]);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024);
        let f3 = enc("g", 1, 6, &[commit(3)]);
        let out = g.receive_batch(vec![f3], &mut st).unwrap();
        assert_eq!(acked(&out), Some(6));
        assert_eq!(g.read_resource("db", 512, 1).unwrap(), [8]);
        assert_eq!(g.read_resource("db", 1024, 1).unwrap(), [9]);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1536);
    }

    #[test]
    fn sqlite_replica_restarted_mid_transaction_resumes_before_its_first_page() {
        let (dir, g) = db_setup();
        let mut st = StreamState::default();
        let f1 = enc("g", 1, 1, &[page(1, 0), commit(1), page(1, 0)]);
        g.receive_batch(vec![f1], &mut st).unwrap();
        drop(g);
        let mut res = HashMap::new();
        res.insert("db".to_owned(), dir.path().join("r.db"));
        let sq = ["db".to_owned()].into_iter().collect();
        let g = ReplicaGroup::open_with_sqlite("g", &dir.path().join("meta"), res, &sq).unwrap();
        assert_eq!(g.watermark(), Seq(2));
    }

    #[test]
    fn sqlite_resource_refuses_volume_writes_and_volume_refuses_pages() {
        let (_d, g) = db_setup();
        let mut st = StreamState::default();
        let f = enc("g", 1, 1, &[Change::write("db", 0, vec![1; 4], 0)]);
        assert!(
            refusal(&g.receive_batch(vec![f], &mut st).unwrap())
                .unwrap()
                .fatal
        );
        let (_d, g) = setup();
        let mut p = page(1, 0);
        p.resource = "vol".into();
        let f = enc("g", 1, 1, &[p]);
        let mut st = StreamState::default();
        assert!(
            refusal(&g.receive_batch(vec![f], &mut st).unwrap())
                .unwrap()
                .fatal
        );
    }

    #[test]
    fn sqlite_page_of_bad_size_is_refused() {
        let (_d, g) = db_setup();
        let mut st = StreamState::default();
        let mut p = page(2, 0);
        p.data.truncate(500);
        p.length = 500;
        let f = enc("g", 1, 1, &[p]);
        let r = refusal(&g.receive_batch(vec![f], &mut st).unwrap()).unwrap();
        assert!(r.fatal && r.reason.contains("500 bytes"), "{r:?}");
    }

    #[test]
    fn replica_refuses_unknown_resource_fatally() {
        let (_d, g) = setup();
        let mut st = StreamState::default();
        let f = enc("g", 1, 1, &[Change::write("nope", 0, vec![1; 4], 0)]);
        let out = g.receive_batch(vec![f], &mut st).unwrap();
        assert!(refusal(&out).unwrap().fatal);
        assert_eq!(g.watermark(), Seq(0));
    }
}
