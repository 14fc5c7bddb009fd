//! The power-loss file system's pure model: the live and the durable state of every file and
//! folder, and what a power cut leaves.
//!
//! Invariants (checked by the property test in `tests.rs`):
//! - A file's durable bytes live in a [`Store`] whose length for that inode always equals the
//!   file's durable size; its unsynced writes live in memory as non-overlapping extents (the
//!   overlay). The live view of a byte is: the overlay if it covers it, else the durable byte
//!   when it lies below `floor` (the smallest live size since the last sync, so a truncate
//!   followed by an extension reads zeros), else zero.
//! - `fsync`/`fdatasync` (and every write through an `O_SYNC`/`O_DSYNC` handle) make a file's
//!   data and size durable, never its directory entry. `fsyncdir` makes a folder's entries
//!   durable (creates, unlinks, renames, mkdirs and rmdirs in it).
//! - A power cut sets every folder's live entries to its durable ones and every file to its
//!   durable content and size; with `tear`, the last unsynced write first keeps a seeded prefix
//!   that ends at a 512-byte sector boundary. Then every inode that no folder reaches is gone,
//!   and every open handle is invalid.
//! - An inode lives while a live or durable entry reaches it or a handle holds it open, so an
//!   unlinked file that is still open keeps working until its last release.
//! - With a writeback cap, when the unsynced bytes pass it the file holding the oldest
//!   unsynced write is written back on its own (a kernel may flush dirty pages at any time).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};

use crate::rng::SplitMix64;

/// The root folder's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: Ino = Ino(1);
/// The unit a torn write is cut at.
pub const SECTOR: u64 = 512;

/// An inode number. Never reused within one model, so a stale number cannot name a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

/// What a request to the model can fail with; the FUSE layer maps each to an errno.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// No inode, or no entry of that name (`ENOENT`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The name is taken (`EEXIST`).
    #[error("already exists: {0}")]
    Exists(String),
    /// A folder was needed (`ENOTDIR`).
    #[error("inode {0} is not a folder")]
    NotDir(u64),
    /// A file was needed (`EISDIR`).
    #[error("inode {0} is a folder")]
    IsDir(u64),
    /// The folder still has entries (`ENOTEMPTY`).
    #[error("folder not empty: {0}")]
    NotEmpty(String),
    /// A request the model refuses (`EINVAL`).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A handle not open, or opened before the last power cut (`EBADF`).
    #[error("unknown or stale handle {0}")]
    BadHandle(u64),
    /// The backing store failed (`EIO`).
    #[error("backing store: {0}")]
    Io(String),
}

/// Where durable file bytes are kept. The length kept for an inode is its durable size.
pub trait Store {
    /// Fills `buf` with the durable bytes at `offset` (the caller stays below the durable size).
    ///
    /// # Errors
    /// [`FsError::Io`] naming the inode and offset.
    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<(), FsError>;
    /// Writes durable bytes at `offset`, extending the stored length (with zeros) if needed.
    ///
    /// # Errors
    /// [`FsError::Io`] naming the inode and offset.
    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<(), FsError>;
    /// Sets the stored length (zero-filled when extended).
    ///
    /// # Errors
    /// [`FsError::Io`] naming the inode.
    fn set_len(&mut self, ino: Ino, len: u64) -> Result<(), FsError>;
    /// Forgets an inode's bytes.
    ///
    /// # Errors
    /// [`FsError::Io`] naming the inode.
    fn remove(&mut self, ino: Ino) -> Result<(), FsError>;
}

/// File or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
}

/// What `stat` shows of an inode (live view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or folder.
    pub kind: Kind,
    /// Live size in bytes (0 for folders).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
}

/// What one power cut dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CutReport {
    /// Files whose live content or size differed from the durable one.
    pub files_reverted: u64,
    /// Unsynced bytes thrown away.
    pub bytes_dropped: u64,
    /// Folder entries (name → inode) whose live state differed from the durable one.
    pub dir_changes_dropped: u64,
    /// Unsynced writes of which a sector-aligned prefix was kept (0 or 1).
    pub torn_writes: u64,
}

/// Totals since the model was made.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Write requests with at least one byte.
    pub writes: u64,
    /// Bytes those requests wrote.
    pub bytes_written: u64,
    /// `fsync`/`fdatasync` of files.
    pub file_syncs: u64,
    /// `fsync` of folders.
    pub dir_syncs: u64,
    /// Writes through `O_SYNC`/`O_DSYNC` handles (each durable at once).
    pub sync_writes: u64,
    /// Files written back on their own because the unsynced bytes passed the cap.
    pub writebacks: u64,
    /// Bytes those writebacks made durable.
    pub bytes_written_back: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Writes torn by power cuts.
    pub torn_writes: u64,
    /// Unsynced bytes held right now.
    pub unsynced_bytes: u64,
}

#[derive(Debug, Clone)]
struct Extent {
    data: Vec<u8>,
    /// The write this piece came from: its number and its whole range.
    seq: u64,
    write_start: u64,
    write_end: u64,
}

impl Extent {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// The part of this extent (starting at `at`) that covers `[start, end)`.
    fn piece(&self, at: u64, start: u64, end: u64) -> Extent {
        let from = (start.max(at) - at) as usize;
        let to = (end.min(at + self.len()) - at) as usize;
        Extent {
            data: self.data[from..to].to_vec(),
            ..self.clone()
        }
    }
}

/// Unsynced writes of one file: non-overlapping extents by start offset.
#[derive(Debug, Default)]
struct Overlay {
    extents: BTreeMap<u64, Extent>,
    bytes: u64,
}

impl Overlay {
    /// Removes every byte in `[start, end)`, splitting extents that straddle the edges.
    fn punch(&mut self, start: u64, end: u64) {
        let hit: Vec<u64> = self
            .extents
            .range(..end)
            .rev()
            .take_while(|(at, e)| *at + e.len() > start)
            .map(|(at, _)| *at)
            .collect();
        for at in hit {
            let Some(e) = self.extents.remove(&at) else {
                continue;
            };
            self.bytes -= e.len();
            let e_end = at + e.len();
            if at < start {
                self.put(at, e.piece(at, at, start));
            }
            if e_end > end {
                self.put(end, e.piece(at, end, e_end));
            }
        }
    }

    fn put(&mut self, at: u64, e: Extent) {
        self.bytes += e.len();
        self.extents.insert(at, e);
    }

    fn insert(&mut self, at: u64, data: &[u8], seq: u64) {
        let end = at + data.len() as u64;
        self.punch(at, end);
        self.put(
            at,
            Extent {
                data: data.to_vec(),
                seq,
                write_start: at,
                write_end: end,
            },
        );
    }

    fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, &Extent)> {
        // Extents do not overlap, so only the last one starting before `start` can reach in.
        let first = self
            .extents
            .range(..=start)
            .next_back()
            .map(|(at, _)| *at)
            .unwrap_or(start);
        self.extents
            .range(first..end)
            .filter(move |(at, e)| *at + e.len() > start)
            .map(|(at, e)| (*at, e))
    }

    fn max_seq(&self) -> Option<u64> {
        self.extents.values().map(|e| e.seq).max()
    }

    fn min_seq(&self) -> Option<u64> {
        self.extents.values().map(|e| e.seq).min()
    }

    fn clear(&mut self) {
        self.extents.clear();
        self.bytes = 0;
    }
}

#[derive(Debug, Default)]
struct FileState {
    durable_size: u64,
    live_size: u64,
    /// Smallest live size since the last sync: durable bytes at or past it are not live.
    floor: u64,
    overlay: Overlay,
}

#[derive(Debug, Default)]
struct DirState {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
}

#[derive(Debug)]
enum Body {
    File(FileState),
    Dir(DirState),
}

#[derive(Debug)]
struct Node {
    perm: u16,
    body: Body,
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: Ino,
    sync: bool,
}

/// The model: inode table, open handles, counters.
#[derive(Debug)]
pub struct Model<S: Store> {
    store: S,
    nodes: HashMap<Ino, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    seq: u64,
    rng: SplitMix64,
    writeback_cap: Option<u64>,
    unsynced: u64,
    stats: Stats,
}

fn name_of(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

impl<S: Store> Model<S> {
    /// An empty file system (root folder only, durable) over `store`; `seed` drives tearing;
    /// `writeback_cap` bounds the unsynced bytes held (None: never write back on its own).
    pub fn new(store: S, seed: u64, writeback_cap: Option<u64>) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                perm: 0o755,
                body: Body::Dir(DirState::default()),
            },
        );
        Model {
            store,
            nodes,
            next_ino: ROOT.0 + 1,
            handles: HashMap::new(),
            next_fh: 1,
            seq: 0,
            rng: SplitMix64::new(seed),
            writeback_cap,
            unsynced: 0,
            stats: Stats::default(),
        }
    }

    /// The durable store (tests read it).
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Totals so far.
    pub fn stats(&self) -> Stats {
        Stats {
            unsynced_bytes: self.unsynced,
            ..self.stats.clone()
        }
    }

    /// Changes the writeback cap (None: never write back on its own).
    pub fn set_writeback_cap(&mut self, cap: Option<u64>) {
        self.writeback_cap = cap;
    }

    /// Inodes held (files and folders, root included).
    pub fn inode_count(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, ino: Ino) -> Result<&Node, FsError> {
        self.nodes
            .get(&ino)
            .ok_or_else(|| FsError::NotFound(format!("inode {}", ino.0)))
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node, FsError> {
        self.nodes
            .get_mut(&ino)
            .ok_or_else(|| FsError::NotFound(format!("inode {}", ino.0)))
    }

    fn dir(&self, ino: Ino) -> Result<&DirState, FsError> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir(ino.0)),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut DirState, FsError> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir(ino.0)),
        }
    }

    fn file(&self, ino: Ino) -> Result<&FileState, FsError> {
        match &self.node(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(FsError::IsDir(ino.0)),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileState, FsError> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(FsError::IsDir(ino.0)),
        }
    }

    /// The live attributes of `ino`.
    ///
    /// # Errors
    /// [`FsError::NotFound`] for an unknown inode.
    pub fn attr(&self, ino: Ino) -> Result<Attr, FsError> {
        let node = self.node(ino)?;
        let (kind, size) = match &node.body {
            Body::File(f) => (Kind::File, f.live_size),
            Body::Dir(_) => (Kind::Dir, 0),
        };
        Ok(Attr {
            ino,
            kind,
            size,
            perm: node.perm,
        })
    }

    /// The inode a live entry names.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`].
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr, FsError> {
        let ino = *self
            .dir(parent)?
            .live
            .get(name)
            .ok_or_else(|| FsError::NotFound(name_of(name)))?;
        self.attr(ino)
    }

    /// The live entries of a folder, by name.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`].
    pub fn readdir(&self, dir: Ino) -> Result<Vec<(OsString, Ino, Kind)>, FsError> {
        let d = self.dir(dir)?;
        let mut out = Vec::with_capacity(d.live.len());
        for (name, ino) in &d.live {
            out.push((name.clone(), *ino, self.attr(*ino)?.kind));
        }
        Ok(out)
    }

    fn add_node(
        &mut self,
        parent: Ino,
        name: &OsStr,
        perm: u16,
        body: Body,
    ) -> Result<Ino, FsError> {
        if name.is_empty() || name == "." || name == ".." {
            return Err(FsError::Invalid(format!("name {:?}", name_of(name))));
        }
        if self.dir(parent)?.live.contains_key(name) {
            return Err(FsError::Exists(name_of(name)));
        }
        let ino = Ino(self.next_ino);
        self.next_ino += 1;
        if matches!(body, Body::File(_)) {
            self.store.set_len(ino, 0)?;
        }
        self.nodes.insert(ino, Node { perm, body });
        self.dir_mut(parent)?.live.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Creates an empty file; its entry is durable only after the folder's next sync.
    ///
    /// # Errors
    /// [`FsError::Exists`], [`FsError::NotDir`], [`FsError::NotFound`], [`FsError::Invalid`].
    pub fn create(&mut self, parent: Ino, name: &OsStr, perm: u16) -> Result<Attr, FsError> {
        let ino = self.add_node(parent, name, perm, Body::File(FileState::default()))?;
        self.attr(ino)
    }

    /// Creates an empty folder; its entry is durable only after the parent's next sync.
    ///
    /// # Errors
    /// As [`Model::create`].
    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, perm: u16) -> Result<Attr, FsError> {
        let ino = self.add_node(parent, name, perm, Body::Dir(DirState::default()))?;
        self.attr(ino)
    }

    /// Removes a file's live entry.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::IsDir`].
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?.ino;
        self.file(ino)?;
        self.dir_mut(parent)?.live.remove(name);
        self.collect()
    }

    /// Removes an empty folder's live entry.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`], [`FsError::NotEmpty`].
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<(), FsError> {
        let ino = self.lookup(parent, name)?.ino;
        if !self.dir(ino)?.live.is_empty() {
            return Err(FsError::NotEmpty(name_of(name)));
        }
        self.dir_mut(parent)?.live.remove(name);
        self.collect()
    }

    /// Moves a live entry, replacing a target of the same kind (a folder only if empty).
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`], [`FsError::IsDir`], [`FsError::NotEmpty`],
    /// [`FsError::Invalid`].
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
    ) -> Result<(), FsError> {
        let src = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        if new_name.is_empty() || new_name == "." || new_name == ".." {
            return Err(FsError::Invalid(format!("name {:?}", name_of(new_name))));
        }
        if src.kind == Kind::Dir && (src.ino == new_parent || src.ino == ROOT) {
            return Err(FsError::Invalid(format!(
                "move {:?} into itself",
                name_of(name)
            )));
        }
        if let Some(&target) = self.dir(new_parent)?.live.get(new_name) {
            if target == src.ino {
                return Ok(());
            }
            match (src.kind, self.attr(target)?.kind) {
                (Kind::Dir, Kind::File) => return Err(FsError::NotDir(target.0)),
                (Kind::File, Kind::Dir) => return Err(FsError::IsDir(target.0)),
                (Kind::Dir, Kind::Dir) if !self.dir(target)?.live.is_empty() => {
                    return Err(FsError::NotEmpty(name_of(new_name)));
                }
                _ => {}
            }
        }
        self.dir_mut(parent)?.live.remove(name);
        self.dir_mut(new_parent)?
            .live
            .insert(new_name.to_owned(), src.ino);
        self.collect()
    }

    /// Sets the permission bits (not part of what a cut reverts).
    ///
    /// # Errors
    /// [`FsError::NotFound`].
    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> Result<(), FsError> {
        self.node_mut(ino)?.perm = perm;
        Ok(())
    }

    /// Opens a file; `sync` makes every write through the handle durable at once.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::IsDir`].
    pub fn open(&mut self, ino: Ino, sync: bool) -> Result<u64, FsError> {
        self.file(ino)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, sync });
        Ok(fh)
    }

    /// Whether writes through `fh` are synchronous.
    ///
    /// # Errors
    /// [`FsError::BadHandle`] for a handle not open (or opened before a cut).
    pub fn handle_sync(&self, fh: u64) -> Result<bool, FsError> {
        self.handles
            .get(&fh)
            .map(|h| h.sync)
            .ok_or(FsError::BadHandle(fh))
    }

    /// Closes a handle; an unlinked file goes with its last handle. Unknown handles (closed
    /// by a power cut) are ignored.
    ///
    /// # Errors
    /// [`FsError::Io`] if the store cannot forget a file.
    pub fn release(&mut self, fh: u64) -> Result<(), FsError> {
        if self.handles.remove(&fh).is_some() {
            self.collect()?;
        }
        Ok(())
    }

    /// Reads the live bytes of `[offset, offset + len)`, cut at the live size.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::IsDir`], [`FsError::Io`].
    pub fn read(&mut self, ino: Ino, offset: u64, len: u64) -> Result<Vec<u8>, FsError> {
        let f = match &self.nodes.get(&ino).map(|n| &n.body) {
            Some(Body::File(f)) => f,
            Some(Body::Dir(_)) => return Err(FsError::IsDir(ino.0)),
            None => return Err(FsError::NotFound(format!("inode {}", ino.0))),
        };
        let end = offset.saturating_add(len).min(f.live_size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let valid = f.floor.min(f.durable_size).min(end);
        if offset < valid {
            self.store
                .read(ino, offset, &mut buf[..(valid - offset) as usize])?;
        }
        for (at, e) in f.overlay.overlapping(offset, end) {
            let from = at.max(offset);
            let to = (at + e.len()).min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&e.data[(from - at) as usize..(to - at) as usize]);
        }
        Ok(buf)
    }

    /// Writes at `offset` (unsynced unless `sync`).
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::IsDir`], [`FsError::Invalid`] past 2^63, [`FsError::Io`].
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8], sync: bool) -> Result<(), FsError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= i64::MAX as u64)
            .ok_or_else(|| FsError::Invalid(format!("write at {offset} past the largest size")))?;
        self.file(ino)?;
        if data.is_empty() {
            return Ok(());
        }
        self.seq += 1;
        let seq = self.seq;
        let f = self.file_mut(ino)?;
        let before = f.overlay.bytes;
        f.overlay.insert(offset, data, seq);
        f.live_size = f.live_size.max(end);
        let after = f.overlay.bytes;
        self.unsynced = self.unsynced + after - before;
        self.stats.writes += 1;
        self.stats.bytes_written += data.len() as u64;
        if sync {
            self.stats.sync_writes += 1;
            self.sync_file(ino)?;
        } else {
            self.write_back_over_cap()?;
        }
        Ok(())
    }

    /// Sets the live size (unsynced until the next `fsync`).
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::IsDir`], [`FsError::Invalid`] past 2^63.
    pub fn truncate(&mut self, ino: Ino, size: u64) -> Result<(), FsError> {
        if size > i64::MAX as u64 {
            return Err(FsError::Invalid(format!("size {size}")));
        }
        let f = self.file_mut(ino)?;
        let before = f.overlay.bytes;
        f.overlay.punch(size, u64::MAX);
        f.live_size = size;
        f.floor = f.floor.min(size);
        let after = f.overlay.bytes;
        self.unsynced = self.unsynced + after - before;
        Ok(())
    }

    /// `fsync`/`fdatasync` of an inode: a file's data and size become durable; on a folder
    /// this is [`Model::fsyncdir`].
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::Io`].
    pub fn fsync(&mut self, ino: Ino) -> Result<(), FsError> {
        if self.attr(ino)?.kind == Kind::Dir {
            return self.fsyncdir(ino);
        }
        self.stats.file_syncs += 1;
        self.sync_file(ino)
    }

    /// `fsync` of a folder: its live entries become durable.
    ///
    /// # Errors
    /// [`FsError::NotFound`], [`FsError::NotDir`], [`FsError::Io`].
    pub fn fsyncdir(&mut self, ino: Ino) -> Result<(), FsError> {
        let d = self.dir_mut(ino)?;
        d.durable = d.live.clone();
        self.stats.dir_syncs += 1;
        self.collect()
    }

    /// Makes a file's live content and size its durable ones.
    fn sync_file(&mut self, ino: Ino) -> Result<(), FsError> {
        let Some(Node {
            body: Body::File(f),
            ..
        }) = self.nodes.get_mut(&ino)
        else {
            return Err(FsError::IsDir(ino.0));
        };
        let keep = f.floor.min(f.durable_size);
        if keep < f.durable_size {
            self.store.set_len(ino, keep)?;
        }
        if f.live_size != keep {
            self.store.set_len(ino, f.live_size)?;
        }
        for (at, e) in &f.overlay.extents {
            self.store.write(ino, *at, &e.data)?;
        }
        self.unsynced -= f.overlay.bytes;
        f.overlay.clear();
        f.durable_size = f.live_size;
        f.floor = f.live_size;
        Ok(())
    }

    /// Writes back the files with the oldest unsynced writes while over the cap.
    fn write_back_over_cap(&mut self) -> Result<(), FsError> {
        let Some(cap) = self.writeback_cap else {
            return Ok(());
        };
        while self.unsynced > cap {
            let oldest = self
                .nodes
                .iter()
                .filter_map(|(ino, n)| match &n.body {
                    Body::File(f) => f.overlay.min_seq().map(|s| (s, *ino, f.overlay.bytes)),
                    Body::Dir(_) => None,
                })
                .min();
            let Some((_, ino, bytes)) = oldest else {
                break;
            };
            self.sync_file(ino)?;
            self.stats.writebacks += 1;
            self.stats.bytes_written_back += bytes;
        }
        Ok(())
    }

    /// Drops inodes that no live or durable entry reaches and no handle holds.
    fn collect(&mut self) -> Result<(), FsError> {
        let mut seen: HashSet<Ino> = self.handles.values().map(|h| h.ino).collect();
        let mut stack = vec![ROOT];
        stack.extend(seen.iter().copied());
        seen.insert(ROOT);
        while let Some(ino) = stack.pop() {
            if let Some(Node {
                body: Body::Dir(d), ..
            }) = self.nodes.get(&ino)
            {
                for child in d.live.values().chain(d.durable.values()) {
                    if seen.insert(*child) {
                        stack.push(*child);
                    }
                }
            }
        }
        let gone: Vec<Ino> = self
            .nodes
            .keys()
            .filter(|ino| !seen.contains(ino))
            .copied()
            .collect();
        for ino in gone {
            if let Some(Node {
                body: Body::File(f),
                ..
            }) = self.nodes.remove(&ino)
            {
                self.unsynced -= f.overlay.bytes;
                self.store.remove(ino)?;
            }
        }
        Ok(())
    }

    /// Power cut: everything not durable is dropped (see the module header).
    ///
    /// # Errors
    /// [`FsError::Io`] if the store fails; the model is then part-way reverted.
    pub fn power_cut(&mut self, tear: bool) -> Result<CutReport, FsError> {
        let mut report = CutReport::default();
        self.handles.clear();
        if tear {
            report.torn_writes = self.tear_last_write()?;
        }
        for node in self.nodes.values_mut() {
            match &mut node.body {
                Body::File(f) => {
                    if f.overlay.bytes > 0
                        || f.live_size != f.durable_size
                        || f.floor < f.durable_size
                    {
                        report.files_reverted += 1;
                    }
                    report.bytes_dropped += f.overlay.bytes;
                    f.overlay.clear();
                    f.live_size = f.durable_size;
                    f.floor = f.durable_size;
                }
                Body::Dir(d) => {
                    let changed = d
                        .live
                        .keys()
                        .chain(d.durable.keys())
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .filter(|name| d.live.get(*name) != d.durable.get(*name))
                        .count();
                    report.dir_changes_dropped += changed as u64;
                    d.live = d.durable.clone();
                }
            }
        }
        self.unsynced = 0;
        self.collect()?;
        self.stats.cuts += 1;
        self.stats.torn_writes += report.torn_writes;
        Ok(report)
    }

    /// Makes a seeded sector-aligned prefix of the last unsynced write durable; returns 1 if
    /// a non-empty prefix was kept.
    fn tear_last_write(&mut self) -> Result<u64, FsError> {
        let last = self
            .nodes
            .iter()
            .filter_map(|(ino, n)| match &n.body {
                Body::File(f) => f.overlay.max_seq().map(|s| (s, *ino)),
                Body::Dir(_) => None,
            })
            .max();
        let Some((seq, ino)) = last else {
            return Ok(0);
        };
        let Some(Node {
            body: Body::File(f),
            ..
        }) = self.nodes.get_mut(&ino)
        else {
            return Ok(0);
        };
        let pieces: Vec<(u64, &Extent)> = f
            .overlay
            .extents
            .iter()
            .filter(|(_, e)| e.seq == seq)
            .map(|(at, e)| (*at, e))
            .collect();
        let Some((_, first)) = pieces.first() else {
            return Ok(0);
        };
        let Some(cut_at) = tear_point(first.write_start, first.write_end, &mut self.rng) else {
            return Ok(0);
        };
        let mut kept_end = None;
        for (at, e) in pieces {
            if at >= cut_at {
                continue;
            }
            let piece = e.piece(at, at, cut_at);
            self.store.write(ino, at, &piece.data)?;
            kept_end = Some(at + piece.len());
        }
        let Some(kept_end) = kept_end else {
            return Ok(0);
        };
        f.durable_size = f.durable_size.max(kept_end);
        Ok(1)
    }
}

/// Where a write of `[start, end)` is torn: a seeded sector boundary strictly inside it, or
/// None when it crosses no boundary (then nothing of it survives).
pub fn tear_point(start: u64, end: u64, rng: &mut SplitMix64) -> Option<u64> {
    let first = (start / SECTOR + 1) * SECTOR;
    if first >= end {
        return None;
    }
    let last = (end - 1) / SECTOR * SECTOR;
    let count = (last - first) / SECTOR + 1;
    Some(first + SECTOR * rng.below(count))
}
