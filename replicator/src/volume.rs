//! Block volume backends: the [`VolumeBackend`] trait the NBD server calls for every request,
//! and [`FileVolume`], a raw image file.
//!
//! The trait is the seam where the replicator puts its journal in the write path: a journaling
//! backend wraps another backend, records each write, and returns only once the write is as
//! durable as the group's mode promises.
//!
//! The trait uses `#[tonic::async_trait]` (boxed futures) rather than native `async fn` in
//! traits, because the server holds exports as `Arc<dyn VolumeBackend>` and native async trait
//! methods are not object safe. One allocation per request is negligible next to the I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thiserror::Error;

use crate::nbd::proto::Errno;

/// Zero buffer size of [`zero_fill`] (so of [`FileVolume::write_zeroes`] and [`FileVolume::trim`]).
const ZERO_CHUNK: usize = 1024 * 1024;

/// Errors from a volume backend.
#[derive(Debug, Error)]
pub enum VolumeError {
    /// The request reaches past the end of the volume.
    #[error("{op} at offset {offset} length {len} is beyond the volume size {size}")]
    OutOfRange {
        /// Operation name.
        op: &'static str,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Volume size.
        size: u64,
    },
    /// The volume is read-only.
    #[error("volume {path} is read-only")]
    ReadOnly {
        /// Backing path (or a name for non-file backends).
        path: String,
    },
    /// The volume is fenced: this node lost its lease and must not accept writes.
    #[error("volume {path} is fenced: writes refused")]
    Fenced {
        /// Backing path (or a name).
        path: String,
    },
    /// An I/O error from the backing file.
    #[error("{op} on {path} at offset {offset}: {source}")]
    Io {
        /// Operation name.
        op: &'static str,
        /// Backing path.
        path: String,
        /// Byte offset where the operation started.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Opening or sizing the backing file failed.
    #[error("cannot open {path}: {reason}")]
    Open {
        /// Backing path.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The blocking I/O task panicked or was cancelled.
    #[error("{op} task on {path} failed: {reason}")]
    Task {
        /// Operation name.
        op: &'static str,
        /// Backing path.
        path: String,
        /// The join error.
        reason: String,
    },
    /// An error from a wrapping backend (journal, replication); `retryable` says whether the
    /// same request may succeed later.
    #[error("{what}")]
    Backend {
        /// What failed, with context.
        what: String,
        /// Whether a retry may succeed.
        retryable: bool,
        /// The NBD error to report to the client.
        errno: Errno,
    },
}

impl VolumeError {
    /// Whether the same request may succeed if tried again (transient I/O, a wrapper's
    /// retryable error). Fencing, read-only, range and space errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            VolumeError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            VolumeError::Task { .. } => true,
            VolumeError::Backend { retryable, .. } => *retryable,
            VolumeError::OutOfRange { .. }
            | VolumeError::ReadOnly { .. }
            | VolumeError::Fenced { .. }
            | VolumeError::Open { .. } => false,
        }
    }

    /// The NBD error value for this failure. Out-of-space is always reported as ENOSPC (never
    /// swallowed); EDQUOT and EFBIG map to ENOSPC as the spec asks.
    pub fn nbd_errno(&self) -> Errno {
        match self {
            VolumeError::OutOfRange { op, .. } => {
                if *op == "write" || *op == "write_zeroes" {
                    Errno::ENOSPC
                } else {
                    Errno::EINVAL
                }
            }
            VolumeError::ReadOnly { .. } | VolumeError::Fenced { .. } => Errno::EPERM,
            VolumeError::Io { source, .. } => match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => Errno::ENOSPC,
                Some(libc::ENOMEM) => Errno::ENOMEM,
                Some(libc::EINVAL) => Errno::EINVAL,
                Some(libc::EPERM) | Some(libc::EROFS) | Some(libc::EACCES) => Errno::EPERM,
                _ => Errno::EIO,
            },
            VolumeError::Open { .. } | VolumeError::Task { .. } => Errno::EIO,
            VolumeError::Backend { errno, .. } => *errno,
        }
    }
}

/// A block volume as the NBD server sees it. Offsets and lengths given to the methods are
/// already checked against [`VolumeBackend::size`] by the server; implementations check again
/// and return [`VolumeError::OutOfRange`] rather than trusting it.
///
/// Durability contract: a write returns `Ok` only once it is at least as durable as the
/// export's mode promises; with `fua` it must be on stable storage. `flush` returns `Ok` only
/// once every write that returned `Ok` before it was called is on stable storage.
#[tonic::async_trait]
pub trait VolumeBackend: Send + Sync + 'static {
    /// Size in bytes; fixed for the life of the backend.
    fn size(&self) -> u64;

    /// Reads exactly `len` bytes at `offset`.
    ///
    /// # Errors
    /// Range or I/O errors.
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, VolumeError>;

    /// Writes `data` at `offset`. Must not return Ok until the write is as durable as the
    /// export's mode promises (`fua` => on stable storage).
    ///
    /// # Errors
    /// `ReadOnly`/`Fenced` when not writable, range or I/O errors (ENOSPC included).
    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), VolumeError>;

    /// Discards a range. Afterwards its contents are unspecified by NBD; backends that
    /// replicate should make them deterministic (FileVolume writes zeroes).
    ///
    /// # Errors
    /// As `write`.
    async fn trim(&self, offset: u64, len: u32) -> Result<(), VolumeError>;

    /// Writes `len` zero bytes at `offset` (durable before return when `fua`).
    ///
    /// # Errors
    /// As `write`.
    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), VolumeError>;

    /// Makes every write completed so far durable.
    ///
    /// # Errors
    /// I/O errors.
    async fn flush(&self) -> Result<(), VolumeError>;

    /// False when read-only or fenced (lease lost); the server then refuses writes with EPERM
    /// and advertises the export as read-only to new clients.
    fn writable(&self) -> bool;

    /// Whether a flush on one connection covers writes completed on every other connection
    /// (NBD `CAN_MULTI_CONN`). Defaults to false; only say true when it holds.
    fn can_multi_conn(&self) -> bool {
        false
    }
}

/// A raw image file served as a volume. Reads and writes are `pread`/`pwrite` run on the
/// blocking pool; flush is `fdatasync`; FUA is a `fdatasync` after the write; trim writes
/// zeroes (hole punching would need `unsafe` libc calls, which the workspace denies, and
/// zeroes keep the contents deterministic for replication).
#[derive(Debug)]
pub struct FileVolume {
    file: Arc<File>,
    path: Arc<str>,
    size: u64,
    read_only: bool,
    fenced: AtomicBool,
}

impl FileVolume {
    /// Opens an existing image; its size is the file's length. Blocking: call at startup or
    /// from the blocking pool.
    ///
    /// # Errors
    /// `Open` when the file cannot be opened or its metadata read.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, VolumeError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| open_error(path, format!("open: {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| open_error(path, format!("metadata: {e}")))?
            .len();
        Ok(Self::from_file(file, path, size, read_only))
    }

    /// Opens a writable image of exactly `size` bytes, creating it (sparse) or extending it if
    /// it is shorter. Never truncates: a longer existing file is an error. Blocking.
    ///
    /// # Errors
    /// `Open` when the file cannot be created, extended, or is longer than `size`.
    pub fn create(path: &Path, size: u64) -> Result<Self, VolumeError> {
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| open_error(path, format!("create: {e}")))?;
        let current = file
            .metadata()
            .map_err(|e| open_error(path, format!("metadata: {e}")))?
            .len();
        if current > size {
            return Err(open_error(
                path,
                format!("existing file is {current} bytes, longer than the requested {size}"),
            ));
        }
        if current < size {
            file.set_len(size)
                .map_err(|e| open_error(path, format!("extend to {size} bytes: {e}")))?;
            file.sync_all()
                .map_err(|e| open_error(path, format!("sync after extend: {e}")))?;
        }
        if !existed {
            // A new image's name must survive a power loss too.
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| open_error(path, format!("fsync of its folder: {e}")))?;
        }
        Ok(Self::from_file(file, path, size, false))
    }

    fn from_file(file: File, path: &Path, size: u64, read_only: bool) -> Self {
        Self {
            file: Arc::new(file),
            path: Arc::from(path.display().to_string()),
            size,
            read_only,
            fenced: AtomicBool::new(false),
        }
    }

    /// Fences (true) or unfences (false) the volume. While fenced every write, trim and
    /// write-zeroes fails with [`VolumeError::Fenced`]; reads still work.
    pub fn set_fenced(&self, fenced: bool) {
        self.fenced.store(fenced, Ordering::SeqCst);
    }

    /// The backing file's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<(), VolumeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                op,
                offset,
                len,
                size: self.size,
            }),
        }
    }

    fn check_writable(&self) -> Result<(), VolumeError> {
        if self.read_only {
            return Err(VolumeError::ReadOnly {
                path: self.path.to_string(),
            });
        }
        if self.fenced.load(Ordering::SeqCst) {
            return Err(VolumeError::Fenced {
                path: self.path.to_string(),
            });
        }
        Ok(())
    }

    /// Runs blocking file work on the blocking pool.
    async fn blocking<T, F>(&self, op: &'static str, f: F) -> Result<T, VolumeError>
    where
        T: Send + 'static,
        F: FnOnce(&File, &str) -> Result<T, VolumeError> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || f(&file, &path))
            .await
            .map_err(|e| VolumeError::Task {
                op,
                path: self.path.to_string(),
                reason: e.to_string(),
            })?
    }

    async fn zero_range(
        &self,
        op: &'static str,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range(op, offset, u64::from(len))?;
        self.blocking(op, move |file, path| {
            zero_fill(file, offset, u64::from(len), |at, e| {
                io_error(op, path, at, e)
            })?;
            if fua {
                file.sync_data()
                    .map_err(|e| io_error(op, path, offset, e))?;
            }
            Ok(())
        })
        .await
    }
}

/// Writes `len` zero bytes at `offset` of `file`, at most 1 MiB per `pwrite` (blocking: call
/// from the blocking pool). The crate's one zero-fill loop: a volume's trims and
/// write-zeroes, and their replay onto an image, go through it. `err` turns a failed write
/// (with the offset it started at) into the caller's error.
///
/// # Errors
/// The first failed write, as `err` makes it.
pub fn zero_fill<E>(
    file: &File,
    offset: u64,
    len: u64,
    err: impl Fn(u64, io::Error) -> E,
) -> Result<(), E> {
    let zeroes = vec![0u8; (ZERO_CHUNK as u64).min(len) as usize];
    let mut done: u64 = 0;
    while done < len {
        let n = (len - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..n], offset + done)
            .map_err(|e| err(offset + done, e))?;
        done += n as u64;
    }
    Ok(())
}

fn open_error(path: &Path, reason: String) -> VolumeError {
    VolumeError::Open {
        path: path.display().to_string(),
        reason,
    }
}

fn io_error(op: &'static str, path: &str, offset: u64, source: io::Error) -> VolumeError {
    VolumeError::Io {
        op,
        path: path.to_string(),
        offset,
        source,
    }
}

#[tonic::async_trait]
impl VolumeBackend for FileVolume {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, VolumeError> {
        self.check_range("read", offset, u64::from(len))?;
        self.blocking("read", move |file, path| {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset)
                .map_err(|e| io_error("read", path, offset, e))?;
            Ok(buf)
        })
        .await
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), VolumeError> {
        self.check_writable()?;
        self.check_range("write", offset, data.len() as u64)?;
        self.blocking("write", move |file, path| {
            tandem_core::fault::check("primary-image-write")
                .and_then(|()| file.write_all_at(&data, offset))
                .map_err(|e| io_error("write", path, offset, e))?;
            // The bytes are in the file: the buffer serves a later write.
            tandem_core::buffers::give(data);
            if fua {
                file.sync_data()
                    .map_err(|e| io_error("write", path, offset, e))?;
            }
            Ok(())
        })
        .await
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), VolumeError> {
        self.zero_range("trim", offset, len, false).await
    }

    async fn write_zeroes(&self, offset: u64, len: u32, fua: bool) -> Result<(), VolumeError> {
        self.zero_range("write_zeroes", offset, len, fua).await
    }

    async fn flush(&self) -> Result<(), VolumeError> {
        self.blocking("flush", |file, path| {
            file.sync_data().map_err(|e| io_error("flush", path, 0, e))
        })
        .await
    }

    fn writable(&self) -> bool {
        !self.read_only && !self.fenced.load(Ordering::SeqCst)
    }

    /// One file, one page cache: `fdatasync` from any connection covers every connection.
    fn can_multi_conn(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_volume_write_read_zero_and_trim_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        let vol = FileVolume::create(&path, 1 << 20).unwrap();
        assert_eq!(vol.size(), 1 << 20);
        vol.write(4096, vec![0xab; 8192], true).await.unwrap();
        assert_eq!(vol.read(4096, 8192).await.unwrap(), vec![0xab; 8192]);
        vol.write_zeroes(4096, 100, false).await.unwrap();
        vol.trim(8192, 4096).await.unwrap();
        vol.flush().await.unwrap();
        let got = vol.read(4096, 8192).await.unwrap();
        assert_eq!(&got[..100], &[0u8; 100][..]);
        assert_eq!(&got[100..4096], &[0xab; 3996][..]);
        assert_eq!(&got[4096..], &[0u8; 4096][..]);
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 1 << 20);
        assert_eq!(&on_disk[4096..8192], &got[..4096]);
    }

    #[tokio::test]
    async fn file_volume_refuses_out_of_range_with_nbd_errnos() {
        let dir = tempfile::tempdir().unwrap();
        let vol = FileVolume::create(&dir.path().join("v.img"), 4096).unwrap();
        let w = vol.write(4000, vec![1; 200], false).await.unwrap_err();
        assert_eq!(w.nbd_errno(), Errno::ENOSPC);
        let r = vol.read(u64::MAX, 2).await.unwrap_err();
        assert_eq!(r.nbd_errno(), Errno::EINVAL);
        assert!(!r.is_retryable());
    }

    #[tokio::test]
    async fn fenced_volume_refuses_writes_but_serves_reads() {
        let dir = tempfile::tempdir().unwrap();
        let vol = FileVolume::create(&dir.path().join("v.img"), 4096).unwrap();
        vol.write(0, vec![7; 16], false).await.unwrap();
        vol.set_fenced(true);
        assert!(!vol.writable());
        let err = vol.write(0, vec![1; 16], false).await.unwrap_err();
        assert!(matches!(err, VolumeError::Fenced { .. }));
        assert_eq!(err.nbd_errno(), Errno::EPERM);
        assert!(vol.write_zeroes(0, 16, false).await.is_err());
        assert!(vol.trim(0, 16).await.is_err());
        assert_eq!(vol.read(0, 16).await.unwrap(), vec![7; 16]);
        vol.set_fenced(false);
        assert!(vol.writable());
        vol.write(0, vec![1; 16], false).await.unwrap();
    }

    #[tokio::test]
    async fn read_only_volume_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        drop(FileVolume::create(&path, 4096).unwrap());
        let vol = FileVolume::open(&path, true).unwrap();
        assert!(!vol.writable());
        let err = vol.write(0, vec![1], false).await.unwrap_err();
        assert!(matches!(err, VolumeError::ReadOnly { .. }));
        assert_eq!(vol.read(0, 4096).await.unwrap(), vec![0; 4096]);
    }

    #[test]
    fn zero_fill_zeroes_exactly_the_range_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.img");
        let len = 3 * ZERO_CHUNK + 5;
        std::fs::write(&path, vec![0xffu8; len + 20]).unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let cases: [(u64, u64); 3] = [(10, 0), (10, 7), (10, len as u64)];
        for (i, (off, n)) in cases.iter().enumerate() {
            zero_fill(&f, *off, *n, |_, e| e).unwrap();
            let got = std::fs::read(&path).unwrap();
            let zeroed = got.iter().filter(|b| **b == 0).count() as u64;
            let want = if *n == 0 { 0 } else { *n.max(&7) };
            assert_eq!(zeroed, want, "#{i}: expect {want} zero bytes got {zeroed}");
            assert_eq!(got[9], 0xff, "#{i}: the byte before the range is untouched");
            assert_eq!(
                got[len + 19],
                0xff,
                "#{i}: the byte after the range is untouched"
            );
        }
        let ro = std::fs::File::open(&path).unwrap();
        let err = zero_fill(&ro, 0, 1, |at, e| (at, e.kind())).unwrap_err();
        assert_eq!(err.0, 0);
    }

    #[test]
    fn create_never_truncates_a_longer_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        std::fs::write(&path, vec![9u8; 8192]).unwrap();
        assert!(matches!(
            FileVolume::create(&path, 4096),
            Err(VolumeError::Open { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap().len(), 8192);
        let vol = FileVolume::create(&path, 16384).unwrap();
        assert_eq!(vol.size(), 16384);
    }

    #[test]
    fn io_errors_map_to_nbd_errnos_and_retryability() {
        let e = |code| VolumeError::Io {
            op: "write",
            path: "x".into(),
            offset: 0,
            source: io::Error::from_raw_os_error(code),
        };
        assert_eq!(e(libc::ENOSPC).nbd_errno(), Errno::ENOSPC);
        assert_eq!(e(libc::EDQUOT).nbd_errno(), Errno::ENOSPC);
        assert_eq!(e(libc::EFBIG).nbd_errno(), Errno::ENOSPC);
        assert_eq!(e(libc::EIO).nbd_errno(), Errno::EIO);
        assert_eq!(e(libc::EROFS).nbd_errno(), Errno::EPERM);
        assert!(e(libc::EINTR).is_retryable());
        assert!(!e(libc::ENOSPC).is_retryable());
    }
}
