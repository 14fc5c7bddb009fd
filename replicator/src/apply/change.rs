//! One change applied to a resource file: a volume write or trim (its old bytes kept in the
//! history first), a barrier or checkpoint (a recovery point), or a SQLite page or commit
//! (handed to [`super::sqlite`]). Blocking file I/O, after the bound of [`check_bounds`].

use super::deferred::{Deferred, Op};
use super::sqlite::{apply_db_commit, buffer_page, materialised, sqlite_lock_err};
use super::state::{PendingTxn, Resource};
use crate::bounds::{change_bounds, volume_range};
use crate::error::{ReplicatorError, Result};
use crate::history::{History, RecordKind};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use tandem_core::frame::{Change, ChangeKind};
use tandem_core::ids::Seq;

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

/// Checks a volume write or trim against its resource's size ([`crate::bounds`]); every
/// other change (SQLite pages, which a commit may grow, archive chunks, barriers, and changes
/// the applier refuses for another reason) passes here. No I/O.
///
/// # Errors
/// [`ReplicatorError::OutOfBounds`] naming the seq, resource, file, offset, length, end and
/// size.
pub(super) fn check_bounds(
    resources: &HashMap<String, Resource>,
    c: &Change,
    seq: Seq,
) -> Result<()> {
    let Some((kind, offset, len)) = volume_range(c) else {
        return Ok(());
    };
    let Some((r, size)) = resources.get(&c.resource).and_then(|r| Some((r, r.size?))) else {
        return Ok(());
    };
    change_bounds(offset, len, size).map_err(|source| ReplicatorError::OutOfBounds {
        seq,
        kind,
        resource: c.resource.clone(),
        path: r.path.clone(),
        source: Box::new(source),
    })
}

/// Applies one change; returns the resource name when a file was written. A volume write or
/// trim is checked against the volume's size before anything (its undo record included) is
/// written.
///
/// With a history (`deferred` is then where volume writes wait), a volume write's or trim's
/// old bytes are recorded and its new bytes HELD, not written: [`Deferred::flush`] syncs the
/// history first (see [`super::deferred`]). A change whose old bytes a held write would
/// change flushes what is held before its undo record is taken. The data of a held write is
/// moved out of `c`.
pub(super) fn apply_change(
    group: &str,
    resources: &HashMap<String, Resource>,
    pending: &mut HashMap<String, PendingTxn>,
    kept: Option<&mut History>,
    deferred: &mut Deferred,
    c: &mut Change,
    seq: Seq,
) -> Result<Option<String>> {
    let keeps_history = kept.is_some();
    // Record only what was not completely recorded before a restart.
    let mut history = kept.filter(|h| h.wants(seq));
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
        ChangeKind::Write | ChangeKind::Trim => {
            check_bounds(resources, c, seq)?;
            let len = if c.kind == ChangeKind::Write {
                c.data.len() as u64
            } else {
                c.length
            };
            if !keeps_history {
                write_now(r, c, len)?;
                // Written: the buffer serves a later frame's data.
                tandem_core::buffers::give(std::mem::take(&mut c.data));
                return Ok(Some(c.resource.clone()));
            }
            if history.is_some() && deferred.conflicts(&c.resource, c.offset, len) {
                // Its old bytes are what a held write is about to write: write those first.
                deferred.flush(history.as_deref_mut(), resources)?;
            }
            keep_undo(history, r, c, seq, len)?;
            let op = if c.kind == ChangeKind::Write {
                Op::Write(std::mem::take(&mut c.data))
            } else {
                Op::Zero(len)
            };
            deferred.hold(&c.resource, c.offset, op);
        }
        ChangeKind::Barrier
        | ChangeKind::Checkpoint
        | ChangeKind::WalChunk
        | ChangeKind::WalEnd
        | ChangeKind::WalStream
        | ChangeKind::WalStreamEnd => return Err(unsupported()),
    }
    Ok(Some(c.resource.clone()))
}

/// Writes a volume change at once (a group without history: no undo record to wait for).
fn write_now(r: &Resource, c: &Change, len: u64) -> Result<()> {
    if c.kind == ChangeKind::Write {
        r.file
            .write_all_at(&c.data, c.offset)
            .map_err(|e| ReplicatorError::io("pwrite", &r.path, e))
    } else {
        crate::volume::zero_fill(&r.file, c.offset, len, |_, e| {
            ReplicatorError::io("pwrite zeroes", &r.path, e)
        })
    }
}
