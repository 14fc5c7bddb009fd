//! The built-in SQLite transaction writer used by `tandem demo` and `tandem chaos run`: one
//! thread committing small transactions (rusqlite, WAL mode) into the database file it is
//! pointed at, re-pointable at the new primary's copy after a failover, recording every
//! transaction (invoke / ok / fail / info, with its id and values) for the checkers.

use crate::dbcheck::DbState;
use crate::history::{Op, OpKind, Recorder};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::ids::Epoch;

/// Rows each transaction inserts.
pub const ROWS_PER_TXN: u64 = 4;

/// The schema the writer creates (and the checkers read).
const SCHEMA: &str = "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
     CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, txn INTEGER, amount INTEGER, note TEXT);";

/// The values transaction `txn` writes, one per row.
pub fn txn_values(txn: u64) -> Vec<i64> {
    (0..ROWS_PER_TXN).map(|k| (txn * 10 + k) as i64).collect()
}

/// Where the writer commits now: the database file and the (site, epoch) label.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    path: PathBuf,
    site: String,
    epoch: u64,
}

struct Shared {
    target: Mutex<Option<Target>>,
    stop: AtomicBool,
    /// Transactions committed.
    ok: AtomicU64,
    /// Id of the last committed transaction (0: none).
    last_committed: AtomicU64,
    /// Transactions failed or of unknown outcome.
    failed: AtomicU64,
    rec: Option<Arc<Recorder>>,
    pause: Duration,
    /// The first error that stopped a transaction (for the report).
    last_error: Mutex<Option<String>>,
}

/// A running SQLite writer (one thread).
pub struct DbWriter {
    shared: Arc<Shared>,
    task: Option<std::thread::JoinHandle<()>>,
}

/// Process ids of the writer's history events start here (the block writers use small ones).
const PROCESS_BASE: u64 = 1 << 40;

impl DbWriter {
    /// Starts a writer committing into `path` (labelled `site`, `epoch`), pausing `pause`
    /// between transactions; records into `rec` when given.
    pub fn start(
        path: PathBuf,
        site: &str,
        epoch: u64,
        pause: Duration,
        rec: Option<Arc<Recorder>>,
    ) -> DbWriter {
        let shared = Arc::new(Shared {
            target: Mutex::new(Some(Target {
                path,
                site: site.to_owned(),
                epoch,
            })),
            stop: AtomicBool::new(false),
            ok: AtomicU64::new(0),
            last_committed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            rec,
            pause,
            last_error: Mutex::new(None),
        });
        let s = Arc::clone(&shared);
        let task = std::thread::spawn(move || write_loop(&s));
        DbWriter {
            shared,
            task: Some(task),
        }
    }

    /// Points the writer at another copy (the promoted replica), or at none (the
    /// application's site is down: it stops writing until pointed again).
    pub fn retarget(&self, to: Option<(PathBuf, &str, u64)>) {
        let t = to.map(|(path, site, epoch)| Target {
            path,
            site: site.to_owned(),
            epoch,
        });
        *self.shared.target.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// The site the writer commits at now (`None`: stopped by [`DbWriter::retarget`]).
    pub fn site(&self) -> Option<String> {
        self.shared
            .target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|t| t.site.clone())
    }

    /// Transactions committed so far.
    pub fn committed(&self) -> u64 {
        self.shared.ok.load(Ordering::SeqCst)
    }

    /// Id of the last committed transaction (0: none).
    pub fn last_committed(&self) -> u64 {
        self.shared.last_committed.load(Ordering::SeqCst)
    }

    /// Transactions that failed or whose outcome is unknown.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// The last error a transaction (or opening the database) met, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the writer and waits for its thread; returns the transactions committed.
    ///
    /// # Errors
    /// When the writer thread panicked.
    pub fn stop(&mut self) -> Result<u64> {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the SQLite writer panicked"))?;
        }
        Ok(self.committed())
    }
}

impl Drop for DbWriter {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn open(path: &Path) -> Result<rusqlite::Connection> {
    let db =
        rusqlite::Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.execute_batch(SCHEMA)
        .with_context(|| format!("preparing {}", path.display()))?;
    Ok(db)
}

/// One transaction; `Err((committing, e))`: `committing` when the error came from COMMIT
/// (outcome unknown), otherwise the transaction was rolled back.
fn one_txn(
    db: &mut rusqlite::Connection,
    txn: u64,
    site: &str,
) -> std::result::Result<(), (bool, rusqlite::Error)> {
    let tx = db.transaction().map_err(|e| (false, e))?;
    for (k, v) in txn_values(txn).iter().enumerate() {
        tx.execute(
            "INSERT INTO orders(txn, amount, note) VALUES (?1, ?2, ?3)",
            rusqlite::params![txn as i64, v, format!("order {txn}-{k} from {site}")],
        )
        .map_err(|e| (false, e))?;
    }
    tx.commit().map_err(|e| (true, e))
}

fn write_loop(s: &Shared) {
    let mut conn: Option<(Target, rusqlite::Connection)> = None;
    let mut process = PROCESS_BASE;
    let mut next = 0u64;
    let note_err = |e: String| {
        let mut l = s.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *l = Some(e);
    };
    while !s.stop.load(Ordering::SeqCst) {
        let want = s.target.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(want) = want else {
            conn = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if conn.as_ref().is_none_or(|(t, _)| t.path != want.path) {
            conn = None;
            match open(&want.path) {
                Ok(db) => conn = Some((want.clone(), db)),
                Err(e) => {
                    note_err(format!("{e:#}"));
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        let Some((_, db)) = conn.as_mut() else {
            continue;
        };
        next += 1;
        let values = txn_values(next);
        let label = |op: Op| {
            op.with_site(want.site.clone())
                .with_epoch(Epoch(want.epoch))
        };
        if let Some(r) = &s.rec {
            r.record(label(Op::txn(process, OpKind::Invoke, next, &values, 0)));
        }
        match one_txn(db, next, &want.site) {
            Ok(()) => {
                s.ok.fetch_add(1, Ordering::SeqCst);
                s.last_committed.store(next, Ordering::SeqCst);
                if let Some(r) = &s.rec {
                    r.record(label(Op::txn(process, OpKind::Ok, next, &values, 0)));
                }
            }
            Err((committing, e)) => {
                s.failed.fetch_add(1, Ordering::SeqCst);
                note_err(format!("txn {next} at {}: {e}", want.path.display()));
                let kind = if committing {
                    OpKind::Info
                } else {
                    OpKind::Fail
                };
                if let Some(r) = &s.rec {
                    r.record(label(
                        Op::txn(process, kind, next, &values, 0).with_note(e.to_string()),
                    ));
                }
                if committing {
                    // After an unknown outcome the workload goes on as a new process.
                    process += 1;
                }
                conn = None;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(s.pause);
    }
}

/// What a read-only look at a database file found.
#[derive(Debug, Clone)]
pub struct DbSnapshot {
    /// Output of `PRAGMA integrity_check` (`ok` when sound).
    pub integrity: String,
    /// The writer's rows: transaction id -> values in row order.
    pub state: DbState,
}

impl DbSnapshot {
    /// Rows in the database.
    pub fn rows(&self) -> u64 {
        self.state.values().map(|v| v.len() as u64).sum()
    }

    /// The highest transaction id present (0: none).
    pub fn max_txn(&self) -> u64 {
        self.state.keys().next_back().copied().unwrap_or(0)
    }
}

/// Opens `path` read-only (waiting up to `busy` for a writer's lock): `PRAGMA
/// integrity_check` and every row of the writer's table.
///
/// # Errors
/// When the file cannot be opened or read (a missing table counts as empty).
pub fn read_db(path: &Path, busy: Duration) -> Result<DbSnapshot> {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {} read-only", path.display()))?;
    db.busy_timeout(busy)?;
    let lines: Vec<String> = db
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()
        .with_context(|| format!("integrity_check of {}", path.display()))?;
    let integrity = lines.join("\n");
    let has_table: i64 = db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'orders'",
        [],
        |r| r.get(0),
    )?;
    let mut state = DbState::new();
    if has_table > 0 {
        let mut q = db.prepare("SELECT txn, amount FROM orders ORDER BY id")?;
        let rows = q.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (txn, amount) = row.with_context(|| format!("reading {}", path.display()))?;
            state
                .entry(u64::try_from(txn).unwrap_or(0))
                .or_default()
                .push(amount);
        }
    }
    Ok(DbSnapshot { integrity, state })
}

/// The highest transaction id in the writer's table of `path`, read-only (0 when the file or
/// the table does not exist yet).
///
/// # Errors
/// When the database cannot be read (busy longer than `busy`, or damaged).
pub fn max_txn(path: &Path, busy: Duration) -> Result<u64> {
    if !path.exists() {
        return Ok(0);
    }
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {} read-only", path.display()))?;
    db.busy_timeout(busy)?;
    let has_table: i64 = db.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'orders'",
        [],
        |r| r.get(0),
    )?;
    if has_table == 0 {
        return Ok(0);
    }
    let n: i64 = db.query_row("SELECT coalesce(max(txn), 0) FROM orders", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}
