//! The `sqlite` capture source: follows a live SQLite database in WAL mode the way Litestream
//! does and submits every committed transaction to the group pipeline as `DbPage` changes
//! (one per page, page number in `offset`) followed by one `DbCommit` (database size in pages).
//!
//! How it stays correct while the application writes:
//! - It holds a read transaction on the database at all times (one connection). While it is
//!   held SQLite cannot restart the WAL: frames are only appended, so frames not yet read are
//!   never overwritten, whatever checkpoints other connections run (a PASSIVE or automatic
//!   checkpoint can only copy frames into the database file; RESTART/TRUNCATE wait on us).
//! - It parses the WAL file itself ([`crate::sqlite_wal`]): salts and cumulative checksums
//!   verified as SQLite does; only frames up to a commit frame are taken.
//! - It checkpoints itself when the WAL passes [`SqliteOptions::checkpoint_bytes`]: it takes
//!   the write lock (`BEGIN IMMEDIATE` on a second connection, tried for at most
//!   [`SqliteOptions::checkpoint_wait`], else left to the next poll: the capture never waits
//!   long on a busy writer; application writers wait on their busy timeout while it is held),
//!   reads the rest of the WAL, ends its read transaction, runs a PASSIVE
//!   checkpoint, starts a new read transaction, then releases the write lock. The next
//!   application write restarts the WAL (new salts): the source sees the new generation and
//!   reads it from its first frame.
//! - Safety net: a new WAL generation whose salt-1 is not exactly one more than the last one
//!   seen (SQLite raises salt-1 by one at every restart; the header's checkpoint seq is kept
//!   per connection and is no use across processes), or a WAL shorter than the read position, means frames may have been
//!   missed: the source ships a full snapshot again.
//! - Capture time: a transaction carries the start of the previous WAL read (which did not
//!   see it), a lower bound of the moment the application was told "committed", so the RPO
//!   counted from it includes the poll interval ([`SqliteOptions::poll_interval`], 10 ms).
//! - Start: always a full snapshot (database file pages with the committed WAL pages laid
//!   over them), so a restarted source never depends on state it did not keep.
//!
//! Requirement on the application: none for correctness; `PRAGMA wal_autocheckpoint=0` is
//! recommended (as Litestream does) so that checkpoints happen only here, and a busy timeout
//! (`PRAGMA busy_timeout`) of a few seconds so writers wait out the short write lock taken at
//! each checkpoint. The WAL file keeps its largest size (it is reused, not truncated) unless
//! the application sets `journal_size_limit`.

use crate::error::{ReplicatorError, Result};
use crate::pipeline::GroupPipeline;
use crate::sqlite_wal::{
    next_step, scan_frames, valid_frames, DbHeader, WalCursor, WalHeader, WalStep, WalTxn,
    DB_HEADER_LEN, WAL_HEADER_LEN,
};
use rusqlite::Connection;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::frame::{Change, ChangeKind};
use tandem_core::ids::Seq;
use tokio::sync::watch;

/// Settings of one SQLite source.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How often the WAL is read (default 10 ms). A read that finds nothing new costs an
    /// open, a stat and a 32-byte read. The interval is part of the reported RPO (see
    /// [`SqliteSource::poll`]).
    pub poll_interval: Duration,
    /// WAL size in bytes past which the source checkpoints (default 4 MiB; 0 never).
    pub checkpoint_bytes: u64,
    /// Busy timeout of the source's connections (default 5 s), except for the write lock a
    /// checkpoint takes (see `checkpoint_wait`).
    pub busy_timeout: Duration,
    /// How long a checkpoint tries to take the application's write lock before it leaves the
    /// checkpoint to the next poll (default 20 ms). A writer that commits back to back holds
    /// that lock almost all the time: waiting the full busy timeout for it held the capture
    /// (and so the replica) seconds behind.
    pub checkpoint_wait: Duration,
    /// Largest submission to the pipeline in page bytes (default 16 MiB); a larger
    /// transaction is split, the replica buffers it until its commit.
    pub max_submit_bytes: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            poll_interval: Duration::from_millis(10),
            checkpoint_bytes: 4 << 20,
            busy_timeout: Duration::from_secs(5),
            checkpoint_wait: Duration::from_millis(20),
            max_submit_bytes: 16 << 20,
        }
    }
}

/// Counters of a source (shared: readable while [`SqliteSource::run`] owns the source).
#[derive(Debug, Default)]
pub struct SqliteStats {
    /// Transactions captured from the WAL.
    pub transactions: AtomicU64,
    /// Pages captured (WAL and snapshots).
    pub pages: AtomicU64,
    /// Full snapshots shipped (one at start, more only after a detected discontinuity).
    pub snapshots: AtomicU64,
    /// Checkpoints this source ran.
    pub checkpoints: AtomicU64,
    /// Checkpoints skipped because the write lock stayed busy.
    pub checkpoints_busy: AtomicU64,
    /// WAL restarts (new generations) seen.
    pub wal_restarts: AtomicU64,
    /// Seq of the last change submitted (0: none yet).
    pub last_seq: AtomicU64,
}

/// Frames read from the WAL file at a time (a piece of [`SqliteSource`]'s read).
const READ_CHUNK_FRAMES: u64 = 256;

/// Pause between two tries of the write lock a checkpoint takes.
const LOCK_RETRY: Duration = Duration::from_micros(200);

/// One submission: changes that go to the pipeline in one `submit`, in order.
pub type Batch = Vec<Change>;

/// Asks a running [`SqliteSource`] for a fresh full snapshot of its database, journaled in
/// the group's stream like any transaction: how a returning replica whose position the
/// journal no longer holds is brought back (its resync; see [`SnapshotAsk::snapshot`]).
#[derive(Debug)]
pub struct SnapshotAsk {
    asked: AtomicU64,
    /// (last ask served, seq of the first change of the snapshot taken for it).
    served: watch::Sender<(u64, Option<Seq>)>,
}

impl Default for SnapshotAsk {
    fn default() -> Self {
        SnapshotAsk {
            asked: AtomicU64::new(0),
            served: watch::channel((0, None)).0,
        }
    }
}

impl SnapshotAsk {
    /// Asks for a snapshot and waits up to `within` until the source has journaled all of it;
    /// returns the seq of its first change. Every later change of the resource applies on
    /// top of it, so a replica that applies the resource's changes only from that seq on holds
    /// exactly the primary's database after each of its commits.
    ///
    /// # Errors
    /// [`ReplicatorError::Task`] when the source does not answer in time (not running, or
    /// blocked on a full journal), or when the database holds no page yet.
    pub async fn snapshot(&self, within: Duration) -> Result<Seq> {
        let mut rx = self.served.subscribe();
        let ask = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let wait = async {
            loop {
                let (served, first) = *rx.borrow_and_update();
                if served >= ask {
                    return first.ok_or_else(|| {
                        ReplicatorError::Task("the database holds no page yet".into())
                    });
                }
                if rx.changed().await.is_err() {
                    return Err(ReplicatorError::Task("the SQLite source stopped".into()));
                }
            }
        };
        tokio::time::timeout(within, wait).await.map_err(|_| {
            ReplicatorError::Task(format!(
                "the SQLite source took no snapshot within {within:?}"
            ))
        })?
    }
}

/// A live SQLite database followed through its WAL.
pub struct SqliteSource {
    resource: String,
    db_path: PathBuf,
    wal_path: PathBuf,
    opts: SqliteOptions,
    reader: Connection,
    writer: Connection,
    page_size: u32,
    cursor: Option<WalCursor>,
    stats: Arc<SqliteStats>,
    /// The database file, opened once after SQLite created it and closed after the
    /// connections: closing any descriptor of a file drops every POSIX lock this process
    /// holds on it, SQLite's included, so it is never opened and closed while they live.
    db_file: File,
    /// Where a resync asks for a fresh snapshot.
    ask: Arc<SnapshotAsk>,
    /// When the last read of the WAL started (ms since the epoch; `None` before the first).
    /// A transaction the next read finds was not in the WAL when this one looked, so the
    /// application was told "committed" after it: it is the capture time the changes carry,
    /// and the group's RPO counts from it (the poll interval is included, never hidden).
    last_read_ms: Option<i64>,
}

impl std::fmt::Debug for SqliteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSource")
            .field("resource", &self.resource)
            .field("db_path", &self.db_path)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

fn sql_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl Fn(rusqlite::Error) -> ReplicatorError + 'a {
    move |e| ReplicatorError::Sqlite {
        path: path.to_owned(),
        op,
        reason: e.to_string(),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SqliteSource {
    /// Opens the database at `db_path` (switching it to WAL mode if needed) for the resource
    /// `resource` and starts holding a read transaction. Nothing is read yet: call
    /// [`SqliteSource::snapshot`] (or [`SqliteSource::run`], which does).
    ///
    /// # Errors
    /// [`ReplicatorError::Sqlite`] when the database cannot be opened or put in WAL mode.
    pub fn open(resource: &str, db_path: &Path, opts: SqliteOptions) -> Result<SqliteSource> {
        let open = |op| -> Result<Connection> {
            let c = Connection::open(db_path).map_err(sql_err(db_path, op))?;
            c.busy_timeout(opts.busy_timeout)
                .map_err(sql_err(db_path, "busy_timeout"))?;
            Ok(c)
        };
        let reader = open("open reader")?;
        let db_file = File::open(db_path).map_err(|e| ReplicatorError::io("open", db_path, e))?;
        let writer = open("open writer")?;
        // The write lock is tried without SQLite's busy handler (see `take_write_lock`).
        writer
            .busy_timeout(Duration::ZERO)
            .map_err(sql_err(db_path, "busy_timeout"))?;
        let mode: String = reader
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(sql_err(db_path, "journal_mode=WAL"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(ReplicatorError::Sqlite {
                path: db_path.to_owned(),
                op: "journal_mode=WAL",
                reason: format!("journal mode stays {mode}"),
            });
        }
        for c in [&reader, &writer] {
            c.execute_batch("PRAGMA wal_autocheckpoint=0")
                .map_err(sql_err(db_path, "wal_autocheckpoint"))?;
        }
        let page_size: u32 = reader
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(sql_err(db_path, "page_size"))?;
        let mut wal_path = db_path.as_os_str().to_owned();
        wal_path.push("-wal");
        let src = SqliteSource {
            resource: resource.to_owned(),
            db_path: db_path.to_owned(),
            wal_path: PathBuf::from(wal_path),
            opts,
            reader,
            writer,
            page_size,
            cursor: None,
            stats: Arc::default(),
            db_file,
            ask: Arc::default(),
            last_read_ms: None,
        };
        src.pin()?;
        Ok(src)
    }

    /// Serves snapshot asks made through `ask` (the node keeps it where a resync finds it).
    pub fn with_ask(mut self, ask: Arc<SnapshotAsk>) -> SqliteSource {
        self.ask = ask;
        self
    }

    /// The counters of this source.
    pub fn stats(&self) -> Arc<SqliteStats> {
        Arc::clone(&self.stats)
    }

    /// Starts the long read transaction that keeps the WAL from restarting under us.
    fn pin(&self) -> Result<()> {
        self.reader
            .execute_batch("BEGIN")
            .map_err(sql_err(&self.db_path, "begin read"))?;
        self.reader
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql_err(&self.db_path, "read sqlite_master"))?;
        Ok(())
    }

    fn unpin(&self) -> Result<()> {
        self.reader
            .execute_batch("COMMIT")
            .map_err(sql_err(&self.db_path, "end read"))
    }

    fn wal_err(&self, path: &Path) -> impl Fn(crate::sqlite_wal::WalError) -> ReplicatorError {
        let path = path.to_owned();
        move |source| ReplicatorError::Wal {
            path: path.clone(),
            source,
        }
    }

    /// Reads the WAL header and the frames of its generation from `from` (or from the first
    /// frame when `from` is of another generation or past the end), in pieces of
    /// [`READ_CHUNK_FRAMES`] frames, up to the first frame that is not part of the generation:
    /// the file is reused after a restart and keeps its largest size, so its tail is old
    /// frames that must not be read at every poll. `None` when the WAL is missing or its
    /// header is not (yet) valid.
    fn read_wal(&self, from: Option<&WalCursor>) -> Result<Option<WalTail>> {
        let rd = |e| ReplicatorError::io("read", &self.wal_path, e);
        let file = match File::open(&self.wal_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(rd(e)),
        };
        let len = file.metadata().map_err(rd)?.len();
        let mut head = [0u8; WAL_HEADER_LEN];
        if len < WAL_HEADER_LEN as u64 {
            return Ok(None);
        }
        file.read_exact_at(&mut head, 0).map_err(rd)?;
        let header = match WalHeader::parse(&head) {
            Ok(h) if h.page_size == self.page_size => h,
            Ok(h) => {
                return Err(ReplicatorError::Wal {
                    path: self.wal_path.clone(),
                    source: crate::sqlite_wal::WalError::BadPageSize(h.page_size),
                })
            }
            // A header being rewritten at a restart: nothing to read yet.
            Err(_) => return Ok(None),
        };
        let start = match from {
            Some(c) if c.same_generation(&header) && c.offset <= len => *c,
            _ => WalCursor::start(&header),
        };
        let base = start.offset;
        let flen = header.frame_len() as u64;
        let mut bytes = Vec::new();
        let mut at = start;
        loop {
            let n = (len - at.offset).min(flen * READ_CHUNK_FRAMES);
            let n = n - n % flen;
            if n == 0 {
                break;
            }
            let old = bytes.len();
            bytes.resize(old + n as usize, 0);
            file.read_exact_at(&mut bytes[old..], at.offset)
                .map_err(|e| ReplicatorError::io("read frames", &self.wal_path, e))?;
            let (valid, checksum) = valid_frames(&header, &at, &bytes[old..]);
            at = WalCursor {
                offset: at.offset + valid as u64,
                checksum,
                ..at
            };
            if (valid as u64) < n {
                bytes.truncate(old + valid);
                break;
            }
        }
        Ok(Some(WalTail {
            header,
            len,
            base,
            bytes,
        }))
    }

    /// Builds the full-database transaction: every page of the database file with the
    /// committed WAL pages laid over it, then the commit. Sets the read position after the
    /// last committed WAL frame.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] or [`ReplicatorError::Wal`] reading the files.
    pub fn snapshot(&mut self) -> Result<Vec<Batch>> {
        let started = now_ms();
        // A first snapshot holds commits of unknown age: they count from now. A later one
        // (a resync, a discontinuity) counts from the last read, like any transaction.
        let ms = self.last_read_ms.unwrap_or(started);
        self.last_read_ms = Some(started);
        let wal = self.read_wal(None)?;
        let mut overlay: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut wal_size = None;
        self.cursor = None;
        if let Some(w) = &wal {
            let start = WalCursor::start(&w.header);
            let txns = scan_frames(&w.header, &start, &w.bytes);
            let mut end = start;
            for t in &txns {
                for &(p, at) in &t.pages {
                    overlay.insert(p, w.page(at, self.page_size).to_vec());
                }
                wal_size = Some(t.db_size);
                end = t.end;
            }
            self.cursor = Some(end);
        }
        let file = &self.db_file;
        let file_len = file
            .metadata()
            .map_err(|e| ReplicatorError::io("stat", &self.db_path, e))?
            .len();
        let db_size = match wal_size {
            Some(n) => n,
            None if file_len >= DB_HEADER_LEN as u64 => {
                let mut head = [0u8; DB_HEADER_LEN];
                file.read_exact_at(&mut head, 0)
                    .map_err(|e| ReplicatorError::io("read header", &self.db_path, e))?;
                let h = DbHeader::parse(&head).map_err(self.wal_err(&self.db_path))?;
                h.db_size
                    .unwrap_or((file_len / u64::from(self.page_size)) as u32)
            }
            None => 0,
        };
        if db_size == 0 {
            return Ok(Vec::new());
        }
        let ps = self.page_size as usize;
        let mut out = Vec::new();
        let mut batch = Vec::new();
        for p in 1..=db_size {
            let data = match overlay.remove(&p) {
                Some(d) => d,
                None => {
                    let mut d = vec![0u8; ps];
                    let off = u64::from(p - 1) * ps as u64;
                    if off < file_len {
                        file.read_exact_at(&mut d, off)
                            .map_err(|e| ReplicatorError::io("read page", &self.db_path, e))?;
                    }
                    d
                }
            };
            batch.push(db_page(&self.resource, p, data, ms));
            if batch.len() * ps >= self.opts.max_submit_bytes {
                out.push(std::mem::take(&mut batch));
            }
        }
        batch.push(db_commit(&self.resource, db_size, ms));
        out.push(batch);
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        self.stats
            .pages
            .fetch_add(u64::from(db_size), Ordering::Relaxed);
        Ok(out)
    }

    /// Reads the transactions committed to the WAL since the last call, and checkpoints when
    /// the WAL has grown past the threshold. Returns the submissions in order. Their changes
    /// carry as capture time the start of the previous read (which did not see them), a
    /// lower bound of their commit time: the RPO counted from it includes the poll interval.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`], [`ReplicatorError::Wal`] or [`ReplicatorError::Sqlite`].
    pub fn poll(&mut self) -> Result<Vec<Batch>> {
        let (mut out, used) = self.read_new()?;
        if self.opts.checkpoint_bytes > 0 && used > self.opts.checkpoint_bytes {
            out.extend(self.checkpoint()?);
        }
        Ok(out)
    }

    /// Checkpoints now (see the module doc); returns the transactions read under the write
    /// lock just before it. `Ok(vec![])` without checkpointing when the write lock is busy.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`], [`ReplicatorError::Wal`] or [`ReplicatorError::Sqlite`].
    pub fn checkpoint(&mut self) -> Result<Vec<Batch>> {
        let locked = self.take_write_lock();
        match locked {
            Ok(()) => {}
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                self.stats.checkpoints_busy.fetch_add(1, Ordering::Relaxed);
                return Ok(Vec::new());
            }
            Err(e) => return Err(sql_err(&self.db_path, "begin immediate")(e)),
        }
        let res = self.checkpoint_locked();
        let rolled = self
            .writer
            .execute_batch("ROLLBACK")
            .map_err(sql_err(&self.db_path, "release write lock"));
        let out = res?;
        rolled?;
        Ok(out)
    }

    /// `BEGIN IMMEDIATE` on the writer connection, tried every [`LOCK_RETRY`] for at most
    /// `checkpoint_wait`: short, frequent tries catch the moment between two of a busy
    /// writer's transactions, where SQLite's own busy handler sleeps ever longer and loses
    /// the race to a writer that commits back to back.
    fn take_write_lock(&self) -> rusqlite::Result<()> {
        let until = std::time::Instant::now() + self.opts.checkpoint_wait;
        loop {
            match self.writer.execute_batch("BEGIN IMMEDIATE") {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < until =>
                {
                    std::thread::sleep(LOCK_RETRY);
                }
                r => return r,
            }
        }
    }

    fn checkpoint_locked(&mut self) -> Result<Vec<Batch>> {
        let (out, _) = self.read_new()?;
        self.unpin()?;
        let ckpt = self
            .reader
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(sql_err(&self.db_path, "wal_checkpoint(PASSIVE)"));
        let pinned = self.pin();
        let (busy, log, done) = ckpt?;
        pinned?;
        tracing::debug!(resource = %self.resource, busy, log, done, "sqlite checkpoint");
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Reads new committed transactions; returns them and the WAL bytes in use.
    fn read_new(&mut self) -> Result<(Vec<Batch>, u64)> {
        let started = now_ms();
        let Some(w) = self.read_wal(self.cursor.as_ref())? else {
            self.last_read_ms = Some(started);
            return Ok((Vec::new(), 0));
        };
        let (h, wal_len) = (w.header, w.len);
        let cursor = match next_step(self.cursor.as_ref(), &h, wal_len) {
            WalStep::Continue(c) => c,
            WalStep::Restarted(c) => {
                self.stats.wal_restarts.fetch_add(1, Ordering::Relaxed);
                c
            }
            WalStep::Resnapshot => {
                tracing::warn!(resource = %self.resource, salt1 = h.salt1,
                    "WAL frames may have been missed (restarted more than once, or shorter than the read position): full snapshot");
                return Ok((self.snapshot()?, wal_len));
            }
        };
        // `read_wal` started the tail at the cursor, or at the first frame of a new generation.
        let skip = (cursor.offset.saturating_sub(w.base) as usize).min(w.bytes.len());
        let txns = scan_frames(&h, &cursor, &w.bytes[skip..]);
        let ms = self.last_read_ms.unwrap_or(started);
        self.last_read_ms = Some(started);
        let mut out = Vec::new();
        for t in &txns {
            self.txn_batches(t, &w, ms, &mut out);
            self.cursor = Some(t.end);
        }
        if txns.is_empty() {
            self.cursor = Some(cursor);
        }
        // The part of the WAL in use by this generation (the file itself is reused after a
        // restart and keeps its largest size).
        let used = self.cursor.map_or(wal_len, |c| c.offset);
        Ok((out, used))
    }

    fn txn_batches(&self, t: &WalTxn, wal: &WalTail, ms: i64, out: &mut Vec<Batch>) {
        let ps = self.page_size as usize;
        // Small transactions of one poll share a submission (one journal write for many).
        let fits = out
            .last()
            .is_some_and(|b| (b.len() + t.pages.len()) * ps <= self.opts.max_submit_bytes);
        let mut batch = if fits {
            out.pop().unwrap_or_default()
        } else {
            Vec::with_capacity(t.pages.len() + 1)
        };
        for &(p, at) in &t.pages {
            batch.push(db_page(
                &self.resource,
                p,
                wal.page(at, self.page_size).to_vec(),
                ms,
            ));
            if batch.len() * ps >= self.opts.max_submit_bytes {
                out.push(std::mem::take(&mut batch));
            }
        }
        batch.push(db_commit(&self.resource, t.db_size, ms));
        out.push(batch);
        self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        self.stats
            .pages
            .fetch_add(t.pages.len() as u64, Ordering::Relaxed);
    }

    /// Runs the source: a full snapshot, then every `poll_interval` the new transactions,
    /// submitted in order to `pipeline`, until `shutdown` turns true. A journal-full refusal
    /// is retried; any other error ends the run.
    ///
    /// # Errors
    /// The first error reading the database or submitting to the pipeline.
    pub async fn run(
        self,
        pipeline: Arc<GroupPipeline>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let interval = self.opts.poll_interval;
        let stats = self.stats();
        let ask = Arc::clone(&self.ask);
        let mut served = ask.served.borrow().0;
        let mut src = Some(self);
        let mut first = true;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let Some(mut s) = src.take() else {
                return Ok(());
            };
            let wanted = ask.asked.load(Ordering::SeqCst);
            let resnapshot = wanted > served;
            let (s, batches) = tokio::task::spawn_blocking(move || {
                let r = if first || resnapshot {
                    s.snapshot()
                } else {
                    s.poll()
                };
                (s, r)
            })
            .await
            .map_err(|e| ReplicatorError::Task(e.to_string()))?;
            src = Some(s);
            first = false;
            let mut first_seq = None;
            for b in batches? {
                let n = b.len() as u64;
                // A snapshot asked for a resync is only journaled here: in sync mode waiting
                // for the replica would wait on the very replica that waits for it.
                let seq = submit_retrying(&pipeline, b, &mut shutdown, !resnapshot).await?;
                first_seq.get_or_insert(Seq(seq.0 + 1 - n));
                stats.last_seq.store(seq.0, Ordering::Relaxed);
            }
            if resnapshot {
                served = wanted;
                ask.served.send_replace((wanted, first_seq));
            }
            if ask.asked.load(Ordering::SeqCst) > served {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

async fn submit_retrying(
    pipeline: &GroupPipeline,
    batch: Batch,
    shutdown: &mut watch::Receiver<bool>,
    wait_sync: bool,
) -> Result<Seq> {
    loop {
        let r = if wait_sync {
            pipeline.submit(batch.clone()).await
        } else {
            pipeline.submit_journaled(batch.clone()).await
        };
        match r {
            Err(e) if e.is_retryable() && !*shutdown.borrow() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// The WAL header and the bytes of the WAL file from `base` to its end (`len`).
struct WalTail {
    header: WalHeader,
    len: u64,
    base: u64,
    bytes: Vec<u8>,
}

impl WalTail {
    /// The page image at WAL byte `at` (an offset `scan_frames` returned for these bytes).
    fn page(&self, at: u64, page_size: u32) -> &[u8] {
        let i = (at - self.base) as usize;
        &self.bytes[i..i + page_size as usize]
    }
}

fn db_page(resource: &str, pgno: u32, data: Vec<u8>, captured_ms: i64) -> Change {
    Change {
        resource: resource.to_owned(),
        kind: ChangeKind::DbPage,
        offset: u64::from(pgno),
        length: data.len() as u64,
        captured_ms,
        data,
    }
}

fn db_commit(resource: &str, db_size: u32, captured_ms: i64) -> Change {
    Change {
        resource: resource.to_owned(),
        kind: ChangeKind::DbCommit,
        offset: u64::from(db_size),
        length: 0,
        captured_ms,
        data: Vec::new(),
    }
}

/// A logical image of a SQLite database for `tandem verify`: its size in pages and the blake3
/// over its pages in order, with the page-1 header fields that replication legitimately
/// changes zeroed (bytes 18-19 WAL/rollback format, 24-31 change counter and in-header size,
/// 92-95 version-valid-for), so a WAL-mode primary and its rollback-mode replica at the same
/// commit hash alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagesDigest {
    /// Database size in pages.
    pub pages: u32,
    /// blake3 over the pages.
    pub hash: blake3::Hash,
}

fn digest<'a>(pages: impl Iterator<Item = &'a [u8]>) -> PagesDigest {
    let mut h = blake3::Hasher::new();
    let mut n = 0u32;
    for (i, p) in pages.enumerate() {
        if i == 0 && p.len() >= DB_HEADER_LEN {
            let mut first = p.to_vec();
            for b in [18usize, 19].into_iter().chain(24..32).chain(92..96) {
                first[b] = 0;
            }
            h.update(&first);
        } else {
            h.update(p);
        }
        n += 1;
    }
    PagesDigest {
        pages: n,
        hash: h.finalize(),
    }
}

/// The digest of the live (WAL-mode) database at `path` as of its last commit in the WAL: the
/// database file with the committed WAL pages laid over it, read under a read transaction
/// (the same image a new capture source starts from). Blocking.
///
/// # Errors
/// [`ReplicatorError::Sqlite`], [`ReplicatorError::Io`] or [`ReplicatorError::Wal`].
pub fn primary_digest(path: &Path) -> Result<PagesDigest> {
    let mut src = SqliteSource::open("verify", path, SqliteOptions::default())?;
    let batches = src.snapshot()?;
    let d = digest(
        batches
            .iter()
            .flatten()
            .filter(|c| c.kind == ChangeKind::DbPage)
            .map(|c| c.data.as_slice()),
    );
    src.unpin()?;
    Ok(d)
}

/// The digest of a replica database file (rollback mode, written by the applier), read under
/// SQLite's shared lock so no half-applied transaction is seen. Blocking.
///
/// # Errors
/// [`ReplicatorError::Sqlite`] or [`ReplicatorError::Io`].
pub fn replica_digest(path: &Path) -> Result<PagesDigest> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(sql_err(path, "open read-only"))?;
    c.busy_timeout(Duration::from_secs(10))
        .map_err(sql_err(path, "busy_timeout"))?;
    c.execute_batch("BEGIN")
        .map_err(sql_err(path, "begin read"))?;
    let page_size: u32 = c
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(sql_err(path, "page_size"))?;
    let count: u32 = c
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(sql_err(path, "page_count"))?;
    let bytes = std::fs::read(path).map_err(|e| ReplicatorError::io("read", path, e))?;
    c.execute_batch("COMMIT")
        .map_err(sql_err(path, "end read"))?;
    let ps = page_size.max(512) as usize;
    let used = (count as usize * ps).min(bytes.len());
    Ok(digest(bytes[..used].chunks(ps)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The application's connection, as Tandem recommends it (no automatic checkpoints).
    fn app(path: &Path) -> Connection {
        let c = Connection::open(path).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE IF NOT EXISTS t(x INTEGER, pad TEXT);
             INSERT INTO t VALUES (0, 'first');",
        )
        .unwrap();
        c
    }

    #[test]
    fn a_transaction_counts_from_the_read_that_did_not_see_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let app = app(&db);
        let mut src = SqliteSource::open("db", &db, SqliteOptions::default()).unwrap();
        assert!(!src.snapshot().unwrap().is_empty());
        let missed_at = now_ms();
        assert!(src.poll().unwrap().is_empty(), "nothing committed yet");
        std::thread::sleep(Duration::from_millis(30));
        app.execute("INSERT INTO t VALUES (1, 'second')", [])
            .unwrap();
        let committed_at = now_ms();
        std::thread::sleep(Duration::from_millis(30));
        let batches = src.poll().unwrap();
        let changes: Vec<&Change> = batches.iter().flatten().collect();
        assert!(!changes.is_empty(), "the commit was not captured");
        for c in changes {
            // Counted from no later than the commit (so the RPO includes the wait in the
            // WAL), and no earlier than the read that missed it.
            assert!(
                c.captured_ms <= committed_at,
                "{:?} captured at {} ms, after its commit at {committed_at} ms",
                c.kind,
                c.captured_ms
            );
            assert!(
                c.captured_ms >= missed_at,
                "{:?} captured at {} ms, before the read that missed it at {missed_at} ms",
                c.kind,
                c.captured_ms
            );
        }
    }

    #[test]
    fn a_due_checkpoint_does_not_wait_out_a_writer_holding_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let app = app(&db);
        let opts = SqliteOptions {
            checkpoint_bytes: 1,
            // The old source waited this long for the write lock, holding every capture.
            busy_timeout: Duration::from_secs(60),
            ..SqliteOptions::default()
        };
        let mut src = SqliteSource::open("db", &db, opts).unwrap();
        src.snapshot().unwrap();
        app.execute("INSERT INTO t VALUES (1, 'second')", [])
            .unwrap();
        // Another writer holds the write lock while a checkpoint is due.
        let other = Connection::open(&db).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let t = Instant::now();
        let batches = src.poll().unwrap();
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the poll waited {took:?} for the write lock"
        );
        assert!(
            batches
                .iter()
                .flatten()
                .any(|c| c.kind == ChangeKind::DbCommit),
            "the transaction read before the checkpoint was not returned"
        );
        assert_eq!(src.stats.checkpoints_busy.load(Ordering::Relaxed), 1);
        assert_eq!(src.stats.checkpoints.load(Ordering::Relaxed), 0);
        // Once the lock is free the next poll checkpoints.
        other.execute_batch("ROLLBACK").unwrap();
        src.poll().unwrap();
        assert_eq!(src.stats.checkpoints.load(Ordering::Relaxed), 1);
    }
}
