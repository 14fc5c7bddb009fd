//! [`ReplicaGroup`]: opening a group's replica files, the epoch fence and Hello, copies and
//! point-in-time recovery, and reads. Blocking file I/O.

use super::sqlite::lock_connection;
use super::state::{
    sqlite_from_file, Inner, Resource, REPLICA_META_FILE, REPLICA_META_MAGIC, REPLICA_META_VALUES,
    SQLITE_FROM_MAGIC,
};
use crate::error::{ReplicatorError, Result};
use crate::history::{History, HistoryConfig, Point, Selector};
use crate::meta::SlotFile;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tandem_core::fault;
use tandem_core::frame::Decoder;
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_core::proto::Refusal;

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
    pub(super) name: String,
    pub(super) group_id: GroupId,
    inner: Mutex<Inner>,
    pub(super) applied_frames: AtomicU64,
    pub(super) applied_changes: AtomicU64,
    /// The highest seq a primary announced durable in its journal (0: none); persisted with
    /// the watermark (see [`crate::lineage::judge_tail`]).
    primary_durable: Arc<AtomicU64>,
}

/// Per-stream receive state kept between batches (one per Ship stream).
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    /// The (after, first) seq jumps the stream's `Hello` announced (journal generation
    /// starts): the only gaps its frames may cross ([`crate::lineage::jumps`]).
    pub jumps: Vec<(Seq, Seq)>,
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
    /// Each volume's size is its file's length now: the node creates every image at its
    /// configured size before it opens the group, and a write or trim reaching past that size
    /// is refused as a fatal frame error (a file created here is empty: every change to it is
    /// refused).
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
        crate::durable_dir::create_dir_durable(dir)?;
        let meta_path = dir.join(REPLICA_META_FILE);
        let (meta, v) = SlotFile::open(
            &meta_path,
            REPLICA_META_MAGIC,
            REPLICA_META_VALUES,
            &[0; REPLICA_META_VALUES],
        )?;
        let (watermark, fence) = (Seq(v[0]), Epoch(v[1]));
        let primary_durable = Arc::new(AtomicU64::new(v.get(2).copied().unwrap_or(0)));
        let mut res = HashMap::new();
        for (rname, path) in resources {
            let existed = path.exists();
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| ReplicatorError::io("open", &path, e))?;
            if !existed {
                // A new copy's name must survive a power loss too.
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    crate::meta::sync_dir(parent)?;
                }
            }
            let sqlite = sqlite.contains(&rname);
            let size = if sqlite {
                None
            } else {
                let meta = file
                    .metadata()
                    .map_err(|e| ReplicatorError::io("stat", &path, e))?;
                Some(meta.len())
            };
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
                    size,
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
                primary_durable: Arc::clone(&primary_durable),
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
            primary_durable,
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

    pub(super) fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The group name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A primary announced its journal durable through `seq`: kept in memory at once and
    /// persisted with the next watermark (no fdatasync of its own), so a restarted replica
    /// knows it up to the last batch it made durable.
    pub fn note_primary_durable(&self, seq: Seq) {
        self.primary_durable
            .fetch_max(seq.0, std::sync::atomic::Ordering::SeqCst);
    }

    /// The highest seq a primary announced durable (as far as persisted, after a restart),
    /// if any.
    pub fn primary_durable(&self) -> Option<Seq> {
        match self
            .primary_durable
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            0 => None,
            s => Some(Seq(s)),
        }
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
        crate::durable_dir::create_dir_durable(dir)?;
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
            crate::durable_dir::create_dir_durable(out)?;
            let mut names: Vec<&String> = inner.resources.keys().collect();
            names.sort();
            let mut copies = Vec::new();
            for name in names {
                let dst = out.join(format!("{name}.img"));
                std::fs::copy(&inner.resources[name].path, &dst)
                    .map_err(|e| ReplicatorError::io("copy", &dst, e))?;
                copies.push((name.clone(), dst));
            }
            // After a stop between the history sync and the watermark, the files may hold
            // changes past the watermark: their undo records are durable, so rewind from
            // there.
            (point, inner.watermark.max(h.max_seq()), segments, copies)
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
            inner.persist_meta(wm, epoch)?;
            inner.fence = epoch;
        }
        Ok(())
    }

    /// Makes each named SQLite resource skip its changes below the given seq, durably (see
    /// `Resource::from`); called by a resync before [`Self::reset_watermark`].
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
        inner.persist_meta(seq, fence)?;
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

    /// Handles a Hello at `epoch`: refuses an older epoch than the fence (fatal), refuses a
    /// newer one than `max_epoch` (the epoch the coordinators gave this replicator for the
    /// group; not fatal: the sender retries once this replicator has heard it), raises the
    /// fence to `epoch` otherwise, and returns (watermark, fence) for the Welcome. The fence
    /// is never raised above `max_epoch`.
    ///
    /// # Errors
    /// `Ok(Err(refusal))` for an old or too new epoch; [`ReplicatorError::Io`] raising the
    /// fence.
    pub fn hello(
        &self,
        epoch: Epoch,
        max_epoch: Epoch,
    ) -> Result<std::result::Result<(Seq, Epoch), Refusal>> {
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
        if epoch > max_epoch {
            return Ok(Err(Refusal {
                seq: wm.0 + 1,
                reason: format!(
                    "epoch {epoch} is newer than the epoch {max_epoch} the coordinators gave \
                     this replica for group {}: not fenced, refused",
                    self.name
                ),
                resume_from: wm.0 + 1,
                fatal: false,
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
