//! The database workload of a scenario (`database = true`): the SQLite writer, what the runner
//! saw of the `db` group while faults ran (RPO, what the replica confirmed, the promoted copy
//! at a failover), and the final databases read after recovery. I/O: SQLite files, status.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use tandem_coordinator::status::ClusterStatus;

use super::cluster::Ctx;
use super::dbwriter::{max_txn, read_db, DbSnapshot, DbWriter};
use super::topology::db_group;
use crate::history::{History, Recorder};

/// The database workload of a scenario: the writer, and what the runner saw of the `db` group
/// while faults ran.
pub struct DbRun {
    /// The writer.
    pub writer: DbWriter,
    /// The scenario's folder.
    pub dir: PathBuf,
    /// The site whose copy the writer commits to (the last primary it was pointed at).
    pub primary: String,
    /// The group's RPO at the last sample before the failure.
    pub rpo_before_failure: i64,
    /// The highest RPO seen.
    pub max_rpo: i64,
    /// Highest transaction id read from the replica's copy before the failure.
    pub confirmed: u64,
    /// At a failover: the new primary, the history then and its copy before any new write.
    pub promoted: Option<(String, History, Result<DbSnapshot>)>,
}

impl DbRun {
    /// Starts the writer at the group's primary in `st0`.
    pub fn start(st0: &ClusterStatus, dir: PathBuf, rec: &std::sync::Arc<Recorder>) -> DbRun {
        let g = db_group(st0).cloned().unwrap_or_default();
        let path = dir.join(format!("databases/{}/app.db", g.primary));
        DbRun {
            writer: DbWriter::start(
                path,
                &g.primary,
                g.epoch,
                Duration::from_millis(5),
                Some(rec.clone()),
            ),
            dir,
            primary: g.primary.clone(),
            rpo_before_failure: 0,
            max_rpo: 0,
            confirmed: 0,
            promoted: None,
        }
    }

    /// The database file of `site`.
    pub fn path(&self, site: &str) -> PathBuf {
        self.dir.join(format!("databases/{site}/app.db"))
    }

    /// Follows the `db` group: RPO, what the replica confirmed, and the primary: once a new
    /// primary holds its lease, its copy is read (the promoted replica, before anything new is
    /// written) and the writer moves to it.
    pub fn observe(&mut self, st: &ClusterStatus, rec: &Recorder, failed: bool, killed: &[String]) {
        let Some(g) = db_group(st) else {
            return;
        };
        self.max_rpo = self.max_rpo.max(g.rpo_ms);
        if !failed {
            self.rpo_before_failure = g.rpo_ms;
            if let Ok(n) = max_txn(&self.path(&g.replica), Duration::from_millis(100)) {
                self.confirmed = self.confirmed.max(n);
            }
        }
        let holder = format!("{}-rep", g.primary);
        let leased = g
            .lease
            .as_ref()
            .is_some_and(|l| l.status == "active" && l.holder == holder && l.epoch == g.epoch);
        if !leased || killed.contains(&holder) || self.writer.site().as_deref() == Some(&g.primary)
        {
            return;
        }
        if g.primary != self.primary {
            let snap = read_db(&self.path(&g.primary), Duration::from_secs(5));
            self.promoted = Some((g.primary.clone(), rec.snapshot(), snap));
            self.primary = g.primary.clone();
        }
        self.writer
            .retarget(Some((self.path(&g.primary), &g.primary, g.epoch)));
    }

    /// The application runs at its site: it stops writing when that site's replicator is
    /// about to be killed (as it would die with the site).
    pub fn before_kill(&self, nodes: &[String]) {
        if let Some(site) = self.writer.site() {
            if nodes.contains(&format!("{site}-rep")) {
                self.writer.retarget(None);
            }
        }
    }

    /// The notes of the database workload in the report.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = vec![format!(
            "db: {} transactions committed, {} failed or unknown; max RPO {} ms (before the failure {} ms); the replica was seen holding txn {} before the failure",
            self.writer.committed(),
            self.writer.failed(),
            self.max_rpo,
            self.rpo_before_failure,
            self.confirmed
        )];
        if let Some(e) = self.writer.last_error() {
            notes.push(format!("db writer: last error: {e}"));
        }
        if let Some((site, _, snap)) = &self.promoted {
            notes.push(match snap {
                Ok(sn) => format!(
                    "db: promoted copy at {site}: {} transactions (last txn {}), integrity_check {}",
                    sn.state.len(),
                    sn.max_txn(),
                    sn.integrity
                ),
                Err(e) => format!("db: promoted copy at {site} unreadable: {e:#}"),
            });
        }
        notes
    }
}

/// The final databases of the `db` group.
pub struct FinalDbs {
    /// The final primary site.
    pub primary: String,
    /// Its copy.
    pub primary_db: Result<DbSnapshot>,
    /// The final replica site.
    pub replica: String,
    /// The replica's copy (judged only when the group is protected again).
    pub replica_db: Result<DbSnapshot>,
    /// The group is protected again.
    pub protected: bool,
}

/// Reads the final primary's database and the replica's, once the replica holds the
/// primary's last transaction (bounded wait).
pub fn final_databases(ctx: &Ctx, d: &DbRun) -> FinalDbs {
    let g = ctx
        .status()
        .as_ref()
        .and_then(db_group)
        .cloned()
        .unwrap_or_default();
    let busy = Duration::from_secs(5);
    let protected = g.state == "protected";
    let primary_db = read_db(&d.path(&g.primary), busy);
    let want = primary_db.as_ref().map(DbSnapshot::max_txn).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let replica_db = loop {
        let r = read_db(&d.path(&g.replica), busy);
        let done = !protected || r.as_ref().is_ok_and(|r| r.max_txn() >= want);
        if done || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    FinalDbs {
        primary: g.primary,
        primary_db,
        replica: g.replica,
        replica_db,
        protected,
    }
}
