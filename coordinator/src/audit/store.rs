//! The audit chain on disk: the tree `audit` of the coordinator's raft sled database, one key
//! per record, written as records are applied (every node writes the same records) and read by
//! `AuditRange` for records the state no longer holds in its tail. Thin I/O: what to keep and
//! what is missing are decided in [`crate::audit::backfill`].
//!
//! | key | value |
//! | --- | --- |
//! | `r` + big-endian u64 index | the record, compact JSON, in the storage envelope |
//! | `m:end` | big-endian u64: one past the highest index written |
//! | `m:gap` | two big-endian u64 `lo, hi`: records the node lacks (absent when none) |
//!
//! Durability: the tree is flushed with the raft store (one sled database, one flusher), and sled
//! recovers a prefix of its writes, so a record written before a snapshot is on disk whenever
//! that snapshot is.

use crate::audit::backfill::Gap;
use crate::audit::AuditRecord;
use crate::raft::storage::{open_sealed, seal, StorageError};

/// Name of the sled tree.
pub const AUDIT_TREE: &str = "audit";
const K_END: &[u8] = b"m:end";
const K_GAP: &[u8] = b"m:gap";

fn key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'r';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.into(),
    }
}

fn u64_at(key: &[u8], v: &[u8], at: usize) -> Result<u64, StorageError> {
    let b = v
        .get(at..at + 8)
        .ok_or_else(|| corrupt(key, "shorter than its numbers"))?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(u64::from_be_bytes(a))
}

/// The audit records of one coordinator, on disk.
#[derive(Clone)]
pub struct AuditStore {
    tree: sled::Tree,
}

impl std::fmt::Debug for AuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStore").finish_non_exhaustive()
    }
}

impl AuditStore {
    /// Opens (or creates) the tree in `db`.
    ///
    /// # Errors
    /// sled errors.
    pub fn open(db: &sled::Db) -> Result<AuditStore, StorageError> {
        Ok(AuditStore {
            tree: db.open_tree(AUDIT_TREE)?,
        })
    }

    /// Writes records (buffered; durable at the raft store's next flush) and moves `end` past
    /// the highest of them.
    ///
    /// # Errors
    /// sled errors.
    pub fn put(&self, records: &[AuditRecord]) -> Result<(), StorageError> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for r in records {
            let json = serde_json::to_vec(r).map_err(|e| corrupt(&key(r.index), e.to_string()))?;
            batch.insert(&key(r.index), seal(&json));
        }
        let end = self.end()?.max(last.index.saturating_add(1));
        batch.insert(K_END, seal(&end.to_be_bytes()));
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// One past the highest index written (0 when none).
    ///
    /// # Errors
    /// sled errors, a corrupt value.
    pub fn end(&self) -> Result<u64, StorageError> {
        match self.tree.get(K_END)? {
            None => Ok(0),
            Some(v) => {
                let p = open_sealed(&v).map_err(|r| corrupt(K_END, r))?;
                u64_at(K_END, p, 0)
            }
        }
    }

    /// The records this node lacks, if any.
    ///
    /// # Errors
    /// sled errors, a corrupt value.
    pub fn gap(&self) -> Result<Option<Gap>, StorageError> {
        match self.tree.get(K_GAP)? {
            None => Ok(None),
            Some(v) => {
                let p = open_sealed(&v).map_err(|r| corrupt(K_GAP, r))?;
                Ok(Some(Gap {
                    lo: u64_at(K_GAP, p, 0)?,
                    hi: u64_at(K_GAP, p, 8)?,
                }))
            }
        }
    }

    /// Records (or clears) the gap.
    ///
    /// # Errors
    /// sled errors.
    pub fn set_gap(&self, gap: Option<Gap>) -> Result<(), StorageError> {
        match gap {
            None => {
                self.tree.remove(K_GAP)?;
            }
            Some(g) => {
                let mut v = g.lo.to_be_bytes().to_vec();
                v.extend_from_slice(&g.hi.to_be_bytes());
                self.tree.insert(K_GAP, seal(&v))?;
            }
        }
        Ok(())
    }

    /// Record `index`, if held.
    ///
    /// # Errors
    /// sled errors, a corrupt record (envelope, JSON, or a record stored under another index).
    pub fn get(&self, index: u64) -> Result<Option<AuditRecord>, StorageError> {
        let k = key(index);
        let Some(v) = self.tree.get(k)? else {
            return Ok(None);
        };
        let p = open_sealed(&v).map_err(|r| corrupt(&k, r))?;
        let rec: AuditRecord = serde_json::from_slice(p).map_err(|e| corrupt(&k, e.to_string()))?;
        if rec.index != index {
            return Err(corrupt(&k, format!("holds record {}", rec.index)));
        }
        Ok(Some(rec))
    }

    /// Up to `limit` consecutive records from `from`, stopping before the first one not held.
    ///
    /// # Errors
    /// As [`AuditStore::get`].
    pub fn range(&self, from: u64, limit: usize) -> Result<Vec<AuditRecord>, StorageError> {
        let mut out = Vec::new();
        let mut i = from;
        while out.len() < limit {
            match self.get(i)? {
                Some(r) => out.push(r),
                None => break,
            }
            i = i.saturating_add(1);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{verify_chain, AuditChain, AuditKind};
    use serde_json::json;

    fn db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut c = AuditChain::default();
        for i in 0..n {
            c.append(i as i64, "alice", AuditKind::Note, None, json!({ "n": i }));
        }
        c.records().to_vec()
    }

    #[test]
    fn records_round_trip_and_a_range_stops_at_the_first_missing() {
        let s = AuditStore::open(&db()).unwrap();
        assert_eq!(s.end().unwrap(), 0);
        let recs = chain(10);
        s.put(&recs[..4]).unwrap();
        s.put(&recs[6..]).unwrap();
        assert_eq!(s.end().unwrap(), 10);
        assert_eq!(s.get(2).unwrap().as_ref(), Some(&recs[2]));
        assert_eq!(s.get(5).unwrap(), None);
        assert_eq!(s.range(1, 100).unwrap(), recs[1..4].to_vec());
        assert_eq!(s.range(6, 2).unwrap(), recs[6..8].to_vec());
        s.put(&recs[4..6]).unwrap();
        let all = s.range(0, 100).unwrap();
        assert_eq!(verify_chain(&all), Ok(()));
        assert_eq!(s.end().unwrap(), 10, "end never moves back");
    }

    #[test]
    fn the_gap_is_kept_and_cleared() {
        let s = AuditStore::open(&db()).unwrap();
        assert_eq!(s.gap().unwrap(), None);
        s.set_gap(Some(Gap { lo: 3, hi: 90 })).unwrap();
        assert_eq!(s.gap().unwrap(), Some(Gap { lo: 3, hi: 90 }));
        s.set_gap(None).unwrap();
        assert_eq!(s.gap().unwrap(), None);
    }

    #[test]
    fn a_corrupt_or_misplaced_record_is_named_not_served() {
        let d = db();
        let s = AuditStore::open(&d).unwrap();
        let recs = chain(3);
        s.put(&recs).unwrap();
        let tree = d.open_tree(AUDIT_TREE).unwrap();
        // One flipped byte in record 1's stored value: the envelope's checksum catches it.
        let mut v = tree.get(key(1)).unwrap().unwrap().to_vec();
        let last = v.len() - 3;
        v[last] ^= 1;
        tree.insert(key(1), v).unwrap();
        assert!(matches!(s.get(1), Err(StorageError::Corrupt { .. })));
        // Record 2's bytes stored under index 0.
        tree.insert(key(0), tree.get(key(2)).unwrap().unwrap())
            .unwrap();
        assert!(matches!(s.get(0), Err(StorageError::Corrupt { .. })));
    }
}
