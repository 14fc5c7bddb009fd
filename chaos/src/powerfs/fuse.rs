//! The FUSE adapter of the power-loss file system: kernel requests in, model calls, replies out.
//!
//! Every file is opened with `FOPEN_DIRECT_IO` and every entry and attribute has a TTL of zero,
//! so the kernel caches nothing and a power cut is seen by the next request. No request panics:
//! a failure of the model becomes an errno.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::model::{Attr, FsError, Ino, Kind, Model, ROOT};
use super::store::DirStore;

/// Entries and attributes are never cached by the kernel.
const TTL: Duration = Duration::ZERO;

/// The model a mount serves, shared with [`super::PowerFs`].
pub type SharedModel = Arc<Mutex<Model<DirStore>>>;

/// One folder listing as `readdir` hands it out: `.`, `..`, then the entries by name.
type Listing = Vec<(INodeNo, FileType, OsString)>;

/// The `fuser::Filesystem` over a [`SharedModel`].
#[derive(Debug)]
pub struct PowerFsFuse {
    model: SharedModel,
    /// Listings taken at `opendir`, so `readdir` offsets stay stable while the folder changes.
    listings: Mutex<HashMap<u64, Listing>>,
    next_dir_fh: Mutex<u64>,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(match e {
        FsError::NotFound(_) => libc::ENOENT,
        FsError::Exists(_) => libc::EEXIST,
        FsError::NotDir(_) => libc::ENOTDIR,
        FsError::IsDir(_) => libc::EISDIR,
        FsError::NotEmpty(_) => libc::ENOTEMPTY,
        FsError::Invalid(_) => libc::EINVAL,
        FsError::BadHandle(_) => libc::EBADF,
        FsError::Io(_) => libc::EIO,
    })
}

/// Replies `reply.error(errno)` and returns from the request handler on a model error.
macro_rules! try_reply {
    ($reply:expr, $res:expr) => {
        match $res {
            Ok(v) => v,
            Err(e) => {
                if matches!(e, FsError::Io(_)) {
                    tracing::warn!(error = %e, "powerfs: backing store failed");
                }
                $reply.error(errno(&e));
                return;
            }
        }
    };
}

fn is_sync(flags: i32) -> bool {
    // O_SYNC includes the O_DSYNC bit on Linux.
    flags & libc::O_DSYNC != 0
}

impl PowerFsFuse {
    /// An adapter over `model`; files show as owned by `uid`/`gid`.
    pub fn new(model: SharedModel, uid: u32, gid: u32) -> Self {
        PowerFsFuse {
            model,
            listings: Mutex::new(HashMap::new()),
            next_dir_fh: Mutex::new(1),
            uid,
            gid,
            mounted_at: SystemTime::now(),
        }
    }

    fn model(&self) -> MutexGuard<'_, Model<DirStore>> {
        // A panic while holding the lock cannot leave the model half-changed in a way a
        // poisoned flag would tell us more about; keep serving.
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file_attr(&self, a: &Attr) -> FileAttr {
        let (kind, nlink) = match a.kind {
            Kind::File => (FileType::RegularFile, 1),
            Kind::Dir => (FileType::Directory, 2),
        };
        FileAttr {
            ino: INodeNo(a.ino.0),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm: a.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

fn kind_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
    }
}

impl Filesystem for PowerFsFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let a = try_reply!(reply, self.model().lookup(ino(parent), name));
        reply.entry(&TTL, &self.file_attr(&a), Generation(0));
    }

    fn getattr(&self, _req: &Request, i: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let a = try_reply!(reply, self.model().attr(ino(i)));
        reply.attr(&TTL, &self.file_attr(&a));
    }

    fn setattr(
        &self,
        _req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut model = self.model();
        if let Some(size) = size {
            try_reply!(reply, model.truncate(ino(i), size));
        }
        if let Some(mode) = mode {
            try_reply!(reply, model.set_perm(ino(i), (mode & 0o7777) as u16));
        }
        let a = try_reply!(reply, model.attr(ino(i)));
        reply.attr(&TTL, &self.file_attr(&a));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::from_i32(libc::EOPNOTSUPP));
            return;
        }
        let perm = (mode & !umask & 0o7777) as u16;
        let a = try_reply!(reply, self.model().create(ino(parent), name, perm));
        reply.entry(&TTL, &self.file_attr(&a), Generation(0));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let a = try_reply!(reply, self.model().mkdir(ino(parent), name, perm));
        reply.entry(&TTL, &self.file_attr(&a), Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        try_reply!(reply, self.model().unlink(ino(parent), name));
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        try_reply!(reply, self.model().rmdir(ino(parent), name));
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            // RENAME_NOREPLACE, RENAME_EXCHANGE and RENAME_WHITEOUT are not modelled.
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let res = self
            .model()
            .rename(ino(parent), name, ino(newparent), newname);
        try_reply!(reply, res);
        reply.ok();
    }

    fn open(&self, _req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fh = try_reply!(reply, self.model().open(ino(i), is_sync(flags.0)));
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            reply.error(Errno::from_i32(libc::EOPNOTSUPP));
            return;
        }
        let perm = (mode & !umask & 0o7777) as u16;
        let mut model = self.model();
        let a = try_reply!(reply, model.create(ino(parent), name, perm));
        let fh = try_reply!(reply, model.open(a.ino, is_sync(flags)));
        reply.created(
            &TTL,
            &self.file_attr(&a),
            Generation(0),
            FileHandle(fh),
            FopenFlags::FOPEN_DIRECT_IO,
        );
    }

    fn read(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = try_reply!(reply, self.model().read(ino(i), offset, u64::from(size)));
        reply.data(&data);
    }

    fn write(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut model = self.model();
        let sync = try_reply!(reply, model.handle_sync(fh.0)) || is_sync(flags.0);
        try_reply!(reply, model.write(ino(i), offset, data, sync));
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not durability.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        try_reply!(reply, self.model().release(fh.0));
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // No metadata is modelled, so fsync and fdatasync do the same.
        try_reply!(reply, self.model().fsync(ino(i)));
        reply.ok();
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let entries = try_reply!(reply, self.model().readdir(ino(i)));
        let mut listing = vec![
            (i, FileType::Directory, OsString::from(".")),
            (INodeNo(ROOT.0), FileType::Directory, OsString::from("..")),
        ];
        listing.extend(
            entries
                .into_iter()
                .map(|(name, child, kind)| (INodeNo(child.0), kind_type(kind), name)),
        );
        let fh = {
            let mut next = self.next_dir_fh.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, listing);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listings = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        let Some(listing) = listings.get(&fh.0) else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (child, kind, name)) in listing.iter().enumerate().skip(skip) {
            if reply.add(*child, index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        try_reply!(reply, self.model().fsyncdir(ino(i)));
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Capacity is not modelled: report 1 TiB free in 4 KiB blocks.
        reply.statfs(1 << 28, 1 << 28, 1 << 28, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, i: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        try_reply!(reply, self.model().attr(ino(i)));
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut model = self.model();
        match mode {
            0 => {
                let Some(end) = offset.checked_add(length) else {
                    reply.error(Errno::from_i32(libc::EFBIG));
                    return;
                };
                let size = try_reply!(reply, model.attr(ino(i))).size;
                if end > size {
                    try_reply!(reply, model.truncate(ino(i), end));
                }
                reply.ok();
            }
            // Reserving space without changing the size changes no content.
            libc::FALLOC_FL_KEEP_SIZE => {
                try_reply!(reply, model.attr(ino(i)));
                reply.ok();
            }
            _ => reply.error(Errno::from_i32(libc::EOPNOTSUPP)),
        }
    }
}
