//! SQLite resources on the replica: pages buffered per transaction (at most
//! [`MAX_DB_TXN_BYTES`]) and written whole at their commit, the file cut to the committed size
//! and its header made a rollback-journal database's, under SQLite's EXCLUSIVE lock. Blocking
//! file I/O.

use super::state::{PendingTxn, Resource};
use crate::error::{ReplicatorError, Result};
use crate::history::{History, RecordKind};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use tandem_core::frame::Change;
use tandem_core::ids::Seq;

/// Largest transaction (sum of buffered page bytes) a SQLite resource accepts; a larger one is
/// refused fatally.
pub const MAX_DB_TXN_BYTES: u64 = 256 << 20;

/// How long a commit waits for readers of the replica database to release their locks.
const DB_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) fn lock_connection(path: &Path) -> Result<rusqlite::Connection> {
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
pub(super) fn materialised(file: &File) -> bool {
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

pub(super) fn sqlite_lock_err(
    path: &Path,
    op: &'static str,
    e: rusqlite::Error,
) -> ReplicatorError {
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
pub(super) fn buffer_page(
    pending: &mut HashMap<String, PendingTxn>,
    c: &Change,
    seq: Seq,
) -> Result<()> {
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
pub(super) fn apply_db_commit(
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
        // The undo records durable before any page they undo is written.
        h.sync()?;
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
