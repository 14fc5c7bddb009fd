//! [`SledStorage`]: raft-rs's `Storage` trait over one sled tree, with an in-memory mirror of
//! the small metadata. Acts: sled reads, atomic batches and flushes (the raft task is the
//! single writer and flusher).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message as PbMessage;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};

use super::error::StorageError;
use super::format::{
    corrupt, decode_pb, decode_peers, encode_pb, encode_peers, entry_key, open_sealed, seal,
    seal_u64_pair, snap_key, u64_pair, K_CONF_STATE, K_HARD_STATE, K_PEERS, K_SNAP_DATA,
    K_SNAP_META, K_TRUNCATED, SNAP_TREE,
};

/// sled's page cache for the raft database (log, snapshot, audit tree). Its default, 1 GiB,
/// lets a coordinator's memory grow with everything it writes, the audit chain included
/// (issue 20); the hot set is the log's tail and the hard state, far below this.
const SLED_CACHE_BYTES: u64 = 32 << 20;

/// The in-memory mirror of the small metadata, so `Storage` reads do not touch sled.
#[derive(Debug, Default, Clone)]
struct Meta {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index of the entry whose application produced `conf_state` (0 = bootstrap / snapshot).
    conf_index: u64,
    /// (index, term) of the last discarded entry; `first_index = truncated.0 + 1`.
    truncated: (u64, u64),
    /// Last index held (equals `truncated.0` when the log is empty).
    last_index: u64,
    snap_meta: SnapshotMetadata,
}

/// Raft log, hard state, conf state and the latest snapshot, kept in sled.
///
/// Cloning is cheap and shares the same database; only the raft task writes.
#[derive(Clone)]
pub struct SledStorage {
    db: sled::Db,
    /// The snapshot bytes, by index (only the one the metadata names is kept), in a tree of
    /// their own so writes to the log and the hard state never rewrite them.
    snaps: sled::Tree,
    /// The folder sled keeps its files in (`None` for a temporary database): fsynced with
    /// every flush, so files sled created or renamed (its log, snapshots, blobs) keep their
    /// names through a power loss (sled syncs the files, not the folders).
    dir: Option<std::path::PathBuf>,
    /// Blob files already fsynced (sled writes each blob once, under a new name, and never
    /// syncs it).
    synced_blobs: Arc<std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>>,
    /// sled's log file `db`, opened once to fdatasync it.
    log_file: Option<Arc<std::fs::File>>,
    meta: Arc<RwLock<Meta>>,
    /// Set when raft asked for a snapshot the stored one cannot serve (too old, or taken
    /// before the recipient joined); the node then takes a fresh one.
    snapshot_wanted: Arc<AtomicBool>,
}

/// fsyncs folder `path` so the entries in it are durable.
fn sync_dir(path: &Path) -> Result<(), StorageError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| StorageError::SyncDir {
            path: path.to_path_buf(),
            source,
        })
}

/// fdatasyncs file `path` (any descriptor of a file syncs its data).
fn sync_file(path: &Path) -> Result<(), StorageError> {
    match std::fs::File::open(path).and_then(|f| f.sync_data()) {
        Ok(()) => Ok(()),
        // A blob sled removed between the listing and the sync has nothing left to keep.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::SyncDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Removes every snapshot in `snaps` but the one at `keep` (older ones, or one written by a
/// run that stopped before its metadata).
fn prune_snapshots(snaps: &sled::Tree, keep: u64) -> Result<(), StorageError> {
    let keep = snap_key(keep);
    for k in snaps.iter().keys() {
        let k = k?;
        if k[..] != keep[..] {
            snaps.remove(k)?;
        }
    }
    Ok(())
}

/// True for sled's "could not acquire lock" error (EWOULDBLOCK on the folder's lock file).
fn is_lock_busy(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.raw_os_error() == Some(11)
        || e.to_string().contains("could not acquire lock")
}

impl SledStorage {
    /// Opens (or creates) the storage in `dir`, reading the state back from disk.
    ///
    /// # Errors
    /// sled errors (including the directory being locked by another open instance) and
    /// corrupt values.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        // sled's flusher thread of a just-closed instance (a restart in the same process, or
        // a previous process still exiting) can hold the folder's lock a moment longer: wait
        // for it, bounded, then report the lock.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new()
                .path(dir)
                .cache_capacity(SLED_CACHE_BYTES)
                .open()
            {
                Err(sled::Error::Io(e)) if tries < 30 && is_lock_busy(&e) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => break r?,
            }
        };
        let mut s = Self::from_db(db)?;
        // The folder itself and the folders above it (created by `create_dir_all` on the
        // first start) must hold their entries too: up to the filesystem root, a few fsyncs
        // once per open.
        let mut up = dir.parent();
        while let Some(p) = up.filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(p)?;
            up = p.parent();
        }
        s.dir = Some(dir.to_path_buf());
        let log = dir.join("db");
        s.log_file =
            Some(Arc::new(std::fs::File::open(&log).map_err(|source| {
                StorageError::SyncDir { path: log, source }
            })?));
        s.sync_dirs()?;
        Ok(s)
    }

    /// Makes what sled flushed durable, which sled 0.34 alone does not on Linux: its log
    /// writes end in `sync_file_range` (no device cache flush, no metadata; not durability),
    /// and its blob files are never synced. So: fdatasync of the log file `db`, fsync of
    /// every blob file not synced yet, then of the `blobs` folder and sled's folder (new
    /// and renamed files keep their names). Found on the power-loss file system: a
    /// coordinator came back with raft entries it had acknowledged missing, and raft-rs
    /// panicked (`to_commit 52 is out of range [last_index 45]`).
    fn sync_dirs(&self) -> Result<(), StorageError> {
        let Some(d) = &self.dir else {
            return Ok(());
        };
        if let Some(f) = &self.log_file {
            f.sync_data().map_err(|source| StorageError::SyncDir {
                path: d.join("db"),
                source,
            })?;
        }
        let blobs = d.join("blobs");
        if blobs.is_dir() {
            let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
            let mut present = std::collections::HashSet::new();
            let entries = std::fs::read_dir(&blobs).map_err(|source| StorageError::SyncDir {
                path: blobs.clone(),
                source,
            })?;
            for e in entries.flatten() {
                let name = e.file_name();
                if !synced.contains(&name) {
                    sync_file(&e.path())?;
                }
                present.insert(name);
            }
            *synced = present;
            sync_dir(&blobs)?;
        }
        sync_dir(d)
    }

    /// Opens a storage over an existing sled database (used by tests with temporary dbs).
    ///
    /// # Errors
    /// Corrupt values.
    pub fn from_db(db: sled::Db) -> Result<Self, StorageError> {
        let mut meta = Meta::default();
        if let Some(v) = db.get(K_HARD_STATE)? {
            meta.hard_state = decode_pb(K_HARD_STATE, &v)?;
        }
        if let Some(v) = db.get(K_CONF_STATE)? {
            let p = open_sealed(&v).map_err(|r| corrupt(K_CONF_STATE, r))?;
            if p.len() < 8 {
                return Err(corrupt(K_CONF_STATE, "shorter than its index"));
            }
            let mut ix = [0u8; 8];
            ix.copy_from_slice(&p[..8]);
            meta.conf_index = u64::from_be_bytes(ix);
            let mut cs = ConfState::default();
            cs.merge_from_bytes(&p[8..])
                .map_err(|e| corrupt(K_CONF_STATE, e.to_string()))?;
            meta.conf_state = cs;
        }
        if let Some(v) = db.get(K_TRUNCATED)? {
            meta.truncated = u64_pair(K_TRUNCATED, &v)?;
        }
        if let Some(v) = db.get(K_SNAP_META)? {
            meta.snap_meta = decode_pb(K_SNAP_META, &v)?;
        }
        let snaps = db.open_tree(SNAP_TREE)?;
        if let Some(v) = db.get(K_SNAP_DATA)? {
            // The older layout: move the bytes to their tree, then forget the old key.
            snaps.insert(snap_key(meta.snap_meta.index), v)?;
            db.remove(K_SNAP_DATA)?;
        }
        prune_snapshots(&snaps, meta.snap_meta.index)?;
        meta.last_index = meta.truncated.0;
        if let Some((k, v)) = db.scan_prefix(b"e").next_back().transpose()? {
            let e: Entry = decode_pb(&k, &v)?;
            meta.last_index = meta.last_index.max(e.index);
        }
        Ok(SledStorage {
            db,
            snaps,
            dir: None,
            synced_blobs: Arc::default(),
            log_file: None,
            meta: Arc::new(RwLock::new(meta)),
            snapshot_wanted: Arc::default(),
        })
    }

    fn rl(&self) -> RwLockReadGuard<'_, Meta> {
        self.meta.read().unwrap_or_else(|e| e.into_inner())
    }

    fn wl(&self) -> RwLockWriteGuard<'_, Meta> {
        self.meta.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The sled database, for a state machine that keeps its own tree in it (flushed with the
    /// log by [`SledStorage::flush`]).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Whether nothing was ever stored (a fresh data directory).
    pub fn is_fresh(&self) -> bool {
        let m = self.rl();
        m.conf_state == ConfState::default()
            && m.last_index == 0
            && m.hard_state == HardState::default()
    }

    /// Appends entries, first removing any stored entries from `ents[0].index` on (a
    /// conflicting suffix).
    ///
    /// # Errors
    /// The batch starts below the first kept index or after a gap, is not consecutive, or
    /// sled fails.
    pub fn append(&self, ents: &[Entry]) -> Result<(), StorageError> {
        let Some(first_new) = ents.first() else {
            return Ok(());
        };
        let mut m = self.wl();
        let first = m.truncated.0 + 1;
        if first_new.index < first {
            return Err(StorageError::AppendCompacted {
                index: first_new.index,
                first,
            });
        }
        if first_new.index > m.last_index + 1 {
            return Err(StorageError::AppendGap {
                index: first_new.index,
                last: m.last_index,
            });
        }
        let mut batch = sled::Batch::default();
        for i in first_new.index..=m.last_index {
            batch.remove(&entry_key(i));
        }
        let mut expect = first_new.index;
        for e in ents {
            if e.index != expect {
                return Err(StorageError::AppendNotConsecutive { index: e.index });
            }
            expect += 1;
            batch.insert(&entry_key(e.index), encode_pb("entry", e)?);
        }
        self.db.apply_batch(batch)?;
        m.last_index = expect - 1;
        Ok(())
    }

    /// Saves the hard state (term, vote, commit).
    ///
    /// # Errors
    /// sled fails.
    pub fn set_hardstate(&self, hs: &HardState) -> Result<(), StorageError> {
        let v = encode_pb("hard state", hs)?;
        let mut m = self.wl();
        self.db.insert(K_HARD_STATE, v)?;
        m.hard_state = hs.clone();
        Ok(())
    }

    /// Saves only the commit index of the hard state (from a `LightReady`).
    ///
    /// # Errors
    /// sled fails.
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.hard_state();
        hs.commit = commit;
        self.set_hardstate(&hs)
    }

    /// Saves the conf state produced by applying the entry at `index` (0 for bootstrap).
    ///
    /// # Errors
    /// sled fails.
    pub fn set_conf_state(&self, cs: &ConfState, index: u64) -> Result<(), StorageError> {
        let body = cs.write_to_bytes().map_err(|source| StorageError::Encode {
            what: "conf state",
            source,
        })?;
        let mut p = index.to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        let mut m = self.wl();
        self.db.insert(K_CONF_STATE, seal(&p))?;
        m.conf_state = cs.clone();
        m.conf_index = index;
        Ok(())
    }

    /// Replaces the whole log with a snapshot received from the leader: stores its metadata
    /// and data, drops every entry, and takes its conf state.
    ///
    /// # Errors
    /// The snapshot is older than the log's first index, or sled fails.
    pub fn apply_snapshot(&self, mut snap: Snapshot) -> Result<(), StorageError> {
        let meta = snap.take_metadata();
        let mut m = self.wl();
        let first = m.truncated.0 + 1;
        if meta.index < first {
            return Err(StorageError::SnapshotOutOfDate {
                index: meta.index,
                first,
            });
        }
        let mut hs = m.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        let cs = meta.get_conf_state().clone();
        let mut cs_p = meta.index.to_be_bytes().to_vec();
        cs_p.extend_from_slice(&cs.write_to_bytes().map_err(|source| StorageError::Encode {
            what: "conf state",
            source,
        })?);
        // The bytes first, under their own index: the metadata below never names bytes that
        // are not stored.
        self.snaps.insert(snap_key(meta.index), seal(&snap.data))?;
        let mut batch = sled::Batch::default();
        for i in first..=m.last_index {
            batch.remove(&entry_key(i));
        }
        batch.insert(K_SNAP_META, encode_pb("snapshot metadata", &meta)?);
        batch.insert(K_TRUNCATED, seal_u64_pair(meta.index, meta.term));
        batch.insert(K_HARD_STATE, encode_pb("hard state", &hs)?);
        batch.insert(K_CONF_STATE, seal(&cs_p));
        self.db.apply_batch(batch)?;
        prune_snapshots(&self.snaps, meta.index)?;
        m.hard_state = hs;
        m.conf_state = cs;
        m.conf_index = meta.index;
        m.truncated = (meta.index, meta.term);
        m.last_index = meta.index;
        m.snap_meta = meta;
        Ok(())
    }

    /// Stores a snapshot of the state machine taken at `index` (which must be applied).
    ///
    /// # Errors
    /// `index` is not in the log (or older than the stored snapshot), or sled fails.
    pub fn create_snapshot(
        &self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let (first, last, snap_index) = {
            let m = self.rl();
            (m.truncated.0 + 1, m.last_index, m.snap_meta.index)
        };
        if index + 1 < first || index > last || index < snap_index {
            return Err(StorageError::SnapshotIndexOutOfRange { index, first, last });
        }
        let term = self
            .term(index)
            .map_err(|e| corrupt(&entry_key(index), e.to_string()))?;
        let mut meta = SnapshotMetadata::default();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        // The bytes first, then the metadata that names them, then the older bytes go.
        self.snaps.insert(snap_key(index), seal(&data))?;
        self.db
            .insert(K_SNAP_META, encode_pb("snapshot metadata", &meta)?)?;
        prune_snapshots(&self.snaps, index)?;
        self.wl().snap_meta = meta;
        Ok(())
    }

    /// Discards every entry below `compact_index`, keeping the term of `compact_index - 1`.
    ///
    /// Only entries covered by the stored snapshot can be discarded, so a follower that
    /// needs them can always be sent that snapshot instead.
    ///
    /// # Errors
    /// `compact_index - 1` is past the stored snapshot or the last index, or sled fails.
    pub fn compact(&self, compact_index: u64) -> Result<(), StorageError> {
        let (first, last, snap_index) = {
            let m = self.rl();
            (m.truncated.0 + 1, m.last_index, m.snap_meta.index)
        };
        if compact_index <= first {
            return Ok(());
        }
        if compact_index > last + 1 || compact_index - 1 > snap_index {
            return Err(StorageError::CompactOutOfRange {
                index: compact_index,
                snapshot: snap_index,
                last,
            });
        }
        let term = self
            .term(compact_index - 1)
            .map_err(|e| corrupt(&entry_key(compact_index - 1), e.to_string()))?;
        let mut batch = sled::Batch::default();
        for i in first..compact_index {
            batch.remove(&entry_key(i));
        }
        batch.insert(K_TRUNCATED, seal_u64_pair(compact_index - 1, term));
        let mut m = self.wl();
        self.db.apply_batch(batch)?;
        m.truncated = (compact_index - 1, term);
        Ok(())
    }

    /// Stores the peer address map (initial peers plus those added by conf changes).
    ///
    /// # Errors
    /// sled fails.
    pub fn set_peers(&self, peers: &BTreeMap<u64, String>) -> Result<(), StorageError> {
        self.db.insert(K_PEERS, seal(&encode_peers(peers)))?;
        Ok(())
    }

    /// Reads the stored peer address map (empty if none).
    ///
    /// # Errors
    /// Corrupt value or sled fails.
    pub fn peers(&self) -> Result<BTreeMap<u64, String>, StorageError> {
        match self.db.get(K_PEERS)? {
            None => Ok(BTreeMap::new()),
            Some(v) => {
                let p = open_sealed(&v).map_err(|r| corrupt(K_PEERS, r))?;
                decode_peers(p)
                    .map(|(m, _)| m)
                    .map_err(|r| corrupt(K_PEERS, r))
            }
        }
    }

    /// Makes every write so far durable (fsync). Only one thread may call it (STACK-NOTES 6).
    ///
    /// # Errors
    /// sled fails.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.sync_dirs()
    }

    /// The stored hard state.
    pub fn hard_state(&self) -> HardState {
        self.rl().hard_state.clone()
    }

    /// The stored conf state and the index of the entry that produced it.
    pub fn conf_state(&self) -> (ConfState, u64) {
        let m = self.rl();
        (m.conf_state.clone(), m.conf_index)
    }

    /// Metadata of the stored snapshot (index 0 when none).
    pub fn snapshot_metadata(&self) -> SnapshotMetadata {
        self.rl().snap_meta.clone()
    }

    /// The stored snapshot's data (empty when none).
    ///
    /// # Errors
    /// Corrupt value or sled fails.
    pub fn snapshot_data(&self) -> Result<Vec<u8>, StorageError> {
        let index = self.rl().snap_meta.index;
        let key = snap_key(index);
        match self.snaps.get(key)? {
            None if index == 0 => Ok(Vec::new()),
            None => Err(corrupt(&key, "the snapshot the metadata names is missing")),
            Some(v) => Ok(open_sealed(&v).map_err(|r| corrupt(&key, r))?.to_vec()),
        }
    }

    /// How many snapshots the store holds and their total size in bytes (one once a
    /// snapshot is complete; two only between writing a new one and removing the old).
    ///
    /// # Errors
    /// sled fails.
    pub fn snapshot_footprint(&self) -> Result<(usize, u64), StorageError> {
        let mut n = 0;
        let mut bytes = 0;
        for kv in self.snaps.iter() {
            let (_, v) = kv?;
            n += 1;
            bytes += v.len() as u64;
        }
        Ok((n, bytes))
    }

    /// Whether raft asked for a newer snapshot than the stored one (the flag stays set).
    pub fn snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.load(Ordering::Acquire)
    }

    /// Whether raft asked for a newer snapshot than the stored one; clears the flag.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::AcqRel)
    }

    fn read_entry(&self, index: u64) -> Result<Entry, StorageError> {
        let key = entry_key(index);
        match self.db.get(key)? {
            Some(v) => decode_pb(&key, &v),
            None => Err(corrupt(&key, "missing entry inside the log range")),
        }
    }
}

impl Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let m = self.rl();
        Ok(RaftState::new(m.hard_state.clone(), m.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into();
        let (first, last) = {
            let m = self.rl();
            (m.truncated.0 + 1, m.last_index)
        };
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > last + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for (expect, kv) in (low..).zip(self.db.range(entry_key(low)..entry_key(high))) {
            let (k, v) = kv.map_err(StorageError::from)?;
            let e: Entry = decode_pb(&k, &v)?;
            if e.index != expect {
                return Err(corrupt(&entry_key(expect), "missing inside the log range").into());
            }
            size += u64::from(e.compute_size());
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            out.push(e);
        }
        if out.is_empty() && high > low {
            return Err(corrupt(&entry_key(low), "missing inside the log range").into());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let (truncated, last) = {
            let m = self.rl();
            (m.truncated, m.last_index)
        };
        if idx == truncated.0 {
            return Ok(truncated.1);
        }
        if idx < truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > last {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.read_entry(idx)?.term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot_metadata();
        let cs = meta.get_conf_state();
        let knows_to = cs.voters.contains(&to) || cs.learners.contains(&to);
        if meta.index < request_index || meta.index == 0 || !knows_to {
            self.snapshot_wanted.store(true, Ordering::Release);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.data = self.snapshot_data()?.into();
        snap.set_metadata(meta);
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.term = term;
        e.index = index;
        e
    }

    fn temp_db() -> sled::Db {
        sled::Config::new().temporary(true).open().unwrap()
    }

    /// A storage holding entries 3..=5 (terms 3..=5) after a snapshot at (2, 2).
    fn storage_3_to_5() -> SledStorage {
        let s = SledStorage::from_db(temp_db()).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 2;
        snap.mut_metadata().term = 2;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.apply_snapshot(snap).unwrap();
        s.append(&[new_entry(3, 3), new_entry(4, 4), new_entry(5, 5)])
            .unwrap();
        s
    }

    fn all_entries(s: &SledStorage) -> Vec<Entry> {
        let first = s.first_index().unwrap();
        let last = s.last_index().unwrap();
        s.entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    #[test]
    fn corrupt_entry_on_disk_is_reported_not_returned() {
        let db = temp_db();
        let s = SledStorage::from_db(db.clone()).unwrap();
        s.append(&[new_entry(1, 1), new_entry(2, 1)]).unwrap();
        let key = entry_key(2);
        let mut v = db.get(key).unwrap().unwrap().to_vec();
        let n = v.len();
        v[n - 1] ^= 0xff;
        db.insert(key, v).unwrap();
        let err = s
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .unwrap_err();
        assert!(err.to_string().contains("entry 2"), "got {err}");
    }

    #[test]
    fn restart_keeps_log_hardstate_confstate_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open(dir.path()).unwrap();
            assert!(s.is_fresh());
            let mut cs = ConfState::default();
            cs.voters = vec![1, 2, 3];
            s.set_conf_state(&cs, 0).unwrap();
            s.append(&[new_entry(1, 1), new_entry(2, 1), new_entry(3, 2)])
                .unwrap();
            let mut hs = HardState::default();
            hs.term = 2;
            hs.vote = 3;
            hs.commit = 2;
            s.set_hardstate(&hs).unwrap();
            s.create_snapshot(2, cs, b"state@2".to_vec()).unwrap();
            s.compact(2).unwrap();
            let mut peers = BTreeMap::new();
            peers.insert(1, "http://a".to_string());
            s.set_peers(&peers).unwrap();
            s.flush().unwrap();
        }
        let s = SledStorage::open(dir.path()).unwrap();
        assert!(!s.is_fresh());
        let rs = s.initial_state().unwrap();
        assert_eq!(rs.hard_state.term, 2);
        assert_eq!(rs.hard_state.vote, 3);
        assert_eq!(rs.hard_state.commit, 2);
        assert_eq!(rs.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(s.first_index().unwrap(), 2);
        assert_eq!(s.last_index().unwrap(), 3);
        assert_eq!(s.term(1).unwrap(), 1);
        assert_eq!(
            all_entries(&s),
            vec![new_entry(2, 1), new_entry(3, 2)],
            "log after restart"
        );
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata().index, 2);
        assert_eq!(snap.get_metadata().term, 1);
        assert_eq!(&snap.data[..], b"state@2");
        assert_eq!(
            s.peers().unwrap().get(&1).map(String::as_str),
            Some("http://a")
        );
    }

    #[test]
    fn snapshot_bytes_live_apart_and_only_the_latest_is_kept() {
        let s = storage_3_to_5();
        let cs = s.conf_state().0;
        s.create_snapshot(4, cs.clone(), b"state@4".to_vec())
            .unwrap();
        s.create_snapshot(5, cs, b"state@5".to_vec()).unwrap();
        assert_eq!(s.snapshot_data().unwrap(), b"state@5");
        let (n, bytes) = s.snapshot_footprint().unwrap();
        assert_eq!(n, 1, "older snapshots are removed");
        assert!(bytes >= 7);
        assert_eq!(s.db.get(K_SNAP_DATA).unwrap(), None, "not beside the log");
        // The same on a received snapshot.
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 9;
        snap.data = b"leader@9".to_vec().into();
        s.apply_snapshot(snap).unwrap();
        assert_eq!(s.snapshot_data().unwrap(), b"leader@9");
        assert_eq!(s.snapshot_footprint().unwrap().0, 1);
    }

    #[test]
    fn store_of_the_older_layout_moves_its_snapshot_on_open() {
        let db = temp_db();
        let mut meta = SnapshotMetadata::default();
        meta.index = 2;
        meta.term = 1;
        db.insert(K_SNAP_META, encode_pb("snapshot metadata", &meta).unwrap())
            .unwrap();
        db.insert(K_SNAP_DATA, seal(b"old layout")).unwrap();
        // A snapshot written by a run that stopped before its metadata: dropped.
        db.open_tree(SNAP_TREE)
            .unwrap()
            .insert(snap_key(7), seal(b"orphan"))
            .unwrap();
        let s = SledStorage::from_db(db.clone()).unwrap();
        assert_eq!(s.snapshot_data().unwrap(), b"old layout");
        assert_eq!(db.get(K_SNAP_DATA).unwrap(), None);
        assert_eq!(s.snapshot_footprint().unwrap().0, 1);
    }

    #[test]
    fn snapshot_named_but_missing_is_reported() {
        let s = storage_3_to_5();
        s.snaps.remove(snap_key(2)).unwrap();
        let err = s.snapshot_data().unwrap_err();
        assert!(err.to_string().contains("snapshot 2"), "got {err}");
    }

    #[test]
    fn term_reports_compacted_and_unavailable() {
        let s = storage_3_to_5();
        let tests = [
            (1, Err(raft::Error::Store(raft::StorageError::Compacted))),
            (2, Ok(2)),
            (3, Ok(3)),
            (4, Ok(4)),
            (5, Ok(5)),
            (6, Err(raft::Error::Store(raft::StorageError::Unavailable))),
        ];
        for (i, (idx, want)) in tests.into_iter().enumerate() {
            let got = s.term(idx);
            assert_eq!(got, want, "#{i}: term({idx}): expect {want:?}, got {got:?}");
        }
    }

    #[test]
    fn entries_respects_range_and_max_size() {
        let s = storage_3_to_5();
        s.append(&[new_entry(6, 6)]).unwrap();
        let sz = |i: u64| u64::from(new_entry(i, i).compute_size());
        type Case = (u64, u64, Option<u64>, raft::Result<Vec<Entry>>);
        let tests: Vec<Case> = vec![
            (
                2,
                6,
                None,
                Err(raft::Error::Store(raft::StorageError::Compacted)),
            ),
            (3, 4, None, Ok(vec![new_entry(3, 3)])),
            (4, 6, None, Ok(vec![new_entry(4, 4), new_entry(5, 5)])),
            (
                4,
                7,
                None,
                Ok(vec![new_entry(4, 4), new_entry(5, 5), new_entry(6, 6)]),
            ),
            (4, 7, Some(0), Ok(vec![new_entry(4, 4)])),
            (
                4,
                7,
                Some(sz(4) + sz(5)),
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                Some(sz(4) + sz(5) + sz(6) - 1),
                Ok(vec![new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                4,
                7,
                Some(sz(4) + sz(5) + sz(6)),
                Ok(vec![new_entry(4, 4), new_entry(5, 5), new_entry(6, 6)]),
            ),
            (
                4,
                8,
                None,
                Err(raft::Error::Store(raft::StorageError::Unavailable)),
            ),
        ];
        for (i, (lo, hi, max, want)) in tests.into_iter().enumerate() {
            let got = s.entries(lo, hi, max, GetEntriesContext::empty(false));
            assert_eq!(got, want, "#{i}: entries({lo}, {hi}, {max:?})");
        }
    }

    #[test]
    fn append_truncates_conflicting_suffix_and_refuses_gaps() {
        let tests: Vec<(Vec<Entry>, Option<Vec<Entry>>)> = vec![
            (
                vec![new_entry(3, 3), new_entry(4, 4), new_entry(5, 5)],
                Some(vec![new_entry(3, 3), new_entry(4, 4), new_entry(5, 5)]),
            ),
            (
                vec![new_entry(3, 3), new_entry(4, 6), new_entry(5, 6)],
                Some(vec![new_entry(3, 3), new_entry(4, 6), new_entry(5, 6)]),
            ),
            (
                vec![new_entry(6, 5)],
                Some(vec![
                    new_entry(3, 3),
                    new_entry(4, 4),
                    new_entry(5, 5),
                    new_entry(6, 5),
                ]),
            ),
            (
                vec![new_entry(4, 5)],
                Some(vec![new_entry(3, 3), new_entry(4, 5)]),
            ),
            // overwriting compacted entries is refused
            (vec![new_entry(2, 3), new_entry(3, 3)], None),
            // a gap is refused
            (vec![new_entry(7, 6)], None),
            // non-consecutive batch is refused
            (vec![new_entry(5, 6), new_entry(7, 6)], None),
        ];
        for (i, (ents, want)) in tests.into_iter().enumerate() {
            let s = storage_3_to_5();
            let res = s.append(&ents);
            match want {
                Some(want) => {
                    assert!(res.is_ok(), "#{i}: append failed: {res:?}");
                    assert_eq!(all_entries(&s), want, "#{i}");
                    assert_eq!(s.last_index().unwrap(), want.last().unwrap().index);
                }
                None => {
                    assert!(res.is_err(), "#{i}: append accepted");
                    assert_eq!(all_entries(&s).len(), 3, "#{i}: log changed");
                }
            }
        }
    }

    #[test]
    fn compaction_discards_only_snapshotted_prefix() {
        // (compact index, expected first index, expected remaining entries)
        let tests = [(2, 3, 3), (3, 3, 3), (4, 4, 2), (5, 5, 1), (6, 6, 0)];
        for (i, (idx, wfirst, wlen)) in tests.into_iter().enumerate() {
            let s = storage_3_to_5();
            let cs = s.conf_state().0;
            s.create_snapshot(5, cs, b"x".to_vec()).unwrap();
            s.compact(idx).unwrap();
            assert_eq!(s.first_index().unwrap(), wfirst, "#{i}: first index");
            assert_eq!(all_entries(&s).len(), wlen, "#{i}: remaining");
            assert_eq!(s.term(wfirst - 1).unwrap(), wfirst - 1, "#{i}: kept term");
            assert_eq!(s.last_index().unwrap(), 5, "#{i}: last index");
        }
    }

    #[test]
    fn compaction_past_the_snapshot_is_refused() {
        let s = storage_3_to_5();
        assert!(matches!(
            s.compact(4),
            Err(StorageError::CompactOutOfRange { snapshot: 2, .. })
        ));
        let cs = s.conf_state().0;
        s.create_snapshot(4, cs, Vec::new()).unwrap();
        s.compact(5).unwrap();
        assert!(s.compact(7).is_err(), "compacting past the last index");
        assert_eq!(
            s.entries(3, 6, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        );
    }

    #[test]
    fn apply_snapshot_replaces_log_and_refuses_stale() {
        let s = storage_3_to_5();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 7;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        snap.data = b"leader state".to_vec().into();
        s.apply_snapshot(snap).unwrap();
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index().unwrap(), 10);
        assert_eq!(s.term(10).unwrap(), 7);
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(
            s.conf_state(),
            (s.snapshot_metadata().take_conf_state(), 10)
        );
        assert_eq!(s.snapshot_data().unwrap(), b"leader state");
        let mut stale = Snapshot::default();
        stale.mut_metadata().index = 4;
        stale.mut_metadata().term = 4;
        assert!(matches!(
            s.apply_snapshot(stale),
            Err(StorageError::SnapshotOutOfDate {
                index: 4,
                first: 11
            })
        ));
    }

    #[test]
    fn snapshot_older_than_request_is_temporarily_unavailable() {
        let s = storage_3_to_5();
        assert_eq!(
            s.snapshot(3, 1),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        assert!(s.take_snapshot_wanted());
        assert_eq!(s.snapshot(2, 1).unwrap().get_metadata().index, 2);
        assert!(!s.take_snapshot_wanted());
    }

    #[test]
    fn snapshot_taken_before_recipient_joined_is_not_served() {
        let s = storage_3_to_5();
        assert!(
            s.snapshot(0, 4).is_err(),
            "node 4 is not in the snapshot's conf state"
        );
        assert!(s.take_snapshot_wanted());
    }
}
