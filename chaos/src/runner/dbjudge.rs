//! Judging the database workload: committed transactions not lost, every copy a commit prefix
//! with integrity ok, the replica identical after recovery, and a failed primary's tail kept
//! in quarantine. The judging is the pure checkers of [`crate::dbcheck`]; this room picks the
//! copies to judge. I/O: SQLite files.

use std::time::Duration;

use anyhow::Result;

use super::dbrun::DbRun;
use super::dbwriter::{read_db, DbSnapshot};
use super::judge::{first3, mode_of, Findings, Judge};
use super::topology::DB_GROUP;
use super::verify::verify_group;
use crate::checker::ReplicationMode;
use crate::dbcheck::{db_commit_prefix, db_identical, db_lost_commits, db_tail_quarantined};
use crate::history::History;
use crate::scenario::Check;

/// How long after its commit a SQLite transaction may still be missing at the replica in sync
/// mode: the source reads the WAL every 100 ms and ships one batch at a time; the rest is slack
/// for a loaded 2-core machine.
const DB_CAPTURE_WINDOW_MS: u64 = 1000;

/// `db_tail_quarantined`: what the failed primary committed past the replica is kept in its
/// newest quarantine copy.
pub fn tail_quarantined(j: &Judge<'_>, c: &Check, out: &mut Findings) {
    let Some(d) = &j.load.db else {
        out.failures.push(format!("{c:?} needs `database = true`"));
        return;
    };
    let Some(f) = j.db_final else {
        out.failures
            .push(format!("{c:?}: no recovery, nothing to judge"));
        return;
    };
    let old = j.obs.g0.primary.clone();
    let qdir = d.dir.join(format!("data/{old}-rep/quarantine/{DB_GROUP}"));
    let newest = std::fs::read_dir(&qdir).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "db"))
            .max()
    });
    let quarantine = match newest.map(|p| read_db(&p, Duration::from_secs(5))) {
        Some(Ok(q)) => Some(q.state),
        Some(Err(e)) => {
            out.failures
                .push(format!("db: quarantine copy unreadable: {e:#}"));
            return;
        }
        None => None,
    };
    match &f.primary_db {
        Ok(p) => {
            let v = db_tail_quarantined(j.history, &p.state, quarantine.as_ref(), &old);
            out.notes.extend(v.notes.iter().map(|n| format!("db: {n}")));
            if !v.ok {
                out.failures
                    .push(format!("db: {}", v.violations.join("; ")));
            }
        }
        Err(e) => out
            .failures
            .push(format!("db: final primary unreadable: {e:#}")),
    }
}

/// The copies a database check judges: (what, history, copy): the promoted copy at the
/// failover, then the final primary (and, for `db_consistent` once protected, the replica).
fn copies_to_judge<'a>(
    j: &Judge<'a>,
    d: &'a DbRun,
    c: &Check,
    out: &mut Findings,
) -> Vec<(String, &'a History, Result<&'a DbSnapshot, String>)> {
    let mut copies = Vec::new();
    if let Some((site, h, snap)) = &d.promoted {
        copies.push((
            format!("promoted copy at {site}"),
            h,
            snap.as_ref().map_err(|e| format!("{e:#}")),
        ));
    }
    match j.db_final {
        Some(f) => {
            copies.push((
                format!("final primary at {}", f.primary),
                j.history,
                f.primary_db.as_ref().map_err(|e| format!("{e:#}")),
            ));
            if *c == Check::DbConsistent && f.protected {
                copies.push((
                    format!("final replica at {}", f.replica),
                    j.history,
                    f.replica_db.as_ref().map_err(|e| format!("{e:#}")),
                ));
            }
        }
        None => out.failures.push(format!(
            "{c:?}: no recovery, the final databases were not judged"
        )),
    }
    copies
}

/// `db_no_lost_commits`, `db_consistent` and `db_identical_after_recovery`.
pub fn copies(j: &Judge<'_>, c: &Check, out: &mut Findings) {
    let Some(d) = &j.load.db else {
        out.failures.push(format!("{c:?} needs `database = true`"));
        return;
    };
    let mode = mode_of(j.s);
    let window = match mode {
        ReplicationMode::Sync => DB_CAPTURE_WINDOW_MS,
        ReplicationMode::Async => d.rpo_before_failure.max(0) as u64 + DB_CAPTURE_WINDOW_MS,
    };
    let fail_at = j.obs.failure_ms.unwrap_or(u64::MAX);
    let copies = copies_to_judge(j, d, c, out);
    if *c == Check::DbIdenticalAfterRecovery {
        identical(j, out);
        return;
    }
    for (what, h, snap) in &copies {
        let sn = match snap {
            Ok(sn) => sn,
            Err(e) => {
                out.failures.push(format!("db: {what} unreadable: {e}"));
                continue;
            }
        };
        let v = if *c == Check::DbNoLostCommits {
            db_lost_commits(h, &sn.state, mode, window, fail_at, d.confirmed)
        } else {
            db_commit_prefix(h, &sn.state, &sn.integrity)
        };
        out.notes
            .extend(v.notes.iter().map(|n| format!("db {what}: {n}")));
        if *c == Check::DbNoLostCommits {
            out.db_lost = out.db_lost.max(v.violations.len());
        }
        if !v.ok {
            out.failures
                .push(format!("db {what}: {}", first3(&v.violations)));
        }
    }
}

/// `db_identical_after_recovery`: the final copies hold the same rows, and verify agrees.
fn identical(j: &Judge<'_>, out: &mut Findings) {
    let Some(f) = j.db_final else {
        return;
    };
    if let (Ok(p), Ok(r)) = (&f.primary_db, &f.replica_db) {
        let v = db_identical(&p.state, &r.state);
        out.notes.extend(v.notes.iter().map(|n| format!("db: {n}")));
        if !v.ok {
            out.failures
                .push(format!("db: {}", v.violations.join("; ")));
        }
    }
    if let Err(e) = verify_group(j.ctx, j.host, DB_GROUP, &mut out.notes) {
        out.failures
            .push(format!("db not identical after recovery: {e:#}"));
    }
}
