//! A power-loss file system for chaos runs (the LazyFS idea): a FUSE mount that keeps what was
//! not made durable apart, and drops it on [`PowerFs::power_cut`].
//!
//! - [`model`]: the pure model (live vs durable state of files and folders, cuts, tearing,
//!   writeback), property-tested against a plain reference in `tests.rs`.
//! - [`store`]: durable file bytes, one backing file per inode on the real disk.
//! - [`fuse`]: the `fuser::Filesystem` adapter (direct I/O, no kernel caching).
//!
//! What it models and what it does not is written in docs/chaos.md, "The power-loss file
//! system".

pub mod fuse;
pub mod model;
pub mod store;
#[cfg(test)]
mod tests;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub use model::{CutReport, Stats};

use fuse::{PowerFsFuse, SharedModel};
use model::Model;
use store::DirStore;

/// Unsynced bytes held in memory before the oldest file is written back on its own.
pub const DEFAULT_WRITEBACK_CAP: u64 = 256 << 20;

/// How long [`PowerFs::unmount`] waits for the FUSE thread to end after unmounting.
const UNMOUNT_WAIT: Duration = Duration::from_secs(1);

/// A mounted power-loss file system. The FUSE session runs on a background thread of this
/// process; dropping the value unmounts it.
#[derive(Debug)]
pub struct PowerFs {
    mountpoint: PathBuf,
    model: SharedModel,
    session: Mutex<Option<fuser::BackgroundSession>>,
}

fn fuse_config(auto_unmount: bool) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("tandem-powerfs".into()),
        fuser::MountOption::Subtype("powerfs".into()),
    ];
    if auto_unmount {
        // fusermount3 unmounts it if this process dies; it needs allow_root or allow_other.
        config.mount_options.push(fuser::MountOption::AutoUnmount);
        config.acl = fuser::SessionACL::RootAndOwner;
    }
    config
}

impl PowerFs {
    /// Mounts at `mountpoint` (an existing empty folder), durable state kept under `backing`
    /// (created if missing; backing files of an earlier mount there are removed); `seed`
    /// drives tearing.
    ///
    /// # Errors
    /// If the mount point is missing or not empty, the backing folder cannot be prepared, or
    /// FUSE cannot mount (no `/dev/fuse`, no `fusermount3`, not permitted).
    pub fn mount(mountpoint: &Path, backing: &Path, seed: u64) -> anyhow::Result<PowerFs> {
        let mut entries = std::fs::read_dir(mountpoint)
            .with_context(|| format!("power-loss fs: mount point {}", mountpoint.display()))?;
        if entries.next().is_some() {
            bail!(
                "power-loss fs: mount point {} is not empty",
                mountpoint.display()
            );
        }
        let store = DirStore::new(backing)
            .with_context(|| format!("power-loss fs: backing folder {}", backing.display()))?;
        let owner = std::fs::metadata(backing)
            .with_context(|| format!("power-loss fs: backing folder {}", backing.display()))?;
        let model: SharedModel = Arc::new(Mutex::new(Model::new(
            store,
            seed,
            Some(DEFAULT_WRITEBACK_CAP),
        )));
        let fs = || PowerFsFuse::new(model.clone(), owner.uid(), owner.gid());
        let session = fuser::spawn_mount(fs(), mountpoint, &fuse_config(true))
            .or_else(|auto_err| {
                tracing::debug!(error = %auto_err, "powerfs: mount with auto_unmount failed; plain mount");
                fuser::spawn_mount(fs(), mountpoint, &fuse_config(false))
            })
            .with_context(|| {
                format!(
                    "power-loss fs: mount at {} (needs /dev/fuse and fusermount3)",
                    mountpoint.display()
                )
            })?;
        Ok(PowerFs {
            mountpoint: mountpoint.to_path_buf(),
            model,
            session: Mutex::new(Some(session)),
        })
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model<DirStore>> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Power cut: drop everything not durable (tear = keep a sector-aligned prefix of the last
    /// unsynced write). Callers kill the processes using the mount first: handles open before
    /// the cut answer `EBADF` afterwards.
    ///
    /// # Errors
    /// If the backing store fails while reverting (the mount then serves a part-way state).
    pub fn power_cut(&self, tear: bool) -> anyhow::Result<CutReport> {
        self.model()
            .power_cut(tear)
            .with_context(|| format!("power cut of {}", self.mountpoint.display()))
    }

    /// Totals so far (writes, syncs, bytes written back on their own, cuts).
    pub fn stats(&self) -> Stats {
        self.model().stats()
    }

    /// Changes how many unsynced bytes are held before the oldest file is written back on
    /// its own (None: never; memory then grows with the unsynced data).
    pub fn set_writeback_cap(&self, cap: Option<u64>) {
        self.model().set_writeback_cap(cap);
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts (lazily if still busy); also done on Drop. When a process still holds a file
    /// open, the mount point is detached at once but the FUSE thread keeps serving that process
    /// until it closes its files.
    ///
    /// # Errors
    /// If the file system is still mounted afterwards.
    pub fn unmount(self) -> anyhow::Result<()> {
        self.unmount_inner()
    }

    fn unmount_inner(&self) -> anyhow::Result<()> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(session) = session else {
            return Ok(());
        };
        let lazy = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mountpoint)
            .output();
        let lazy_ok = lazy.as_ref().is_ok_and(|o| o.status.success());
        if !lazy_ok {
            // Not mounted any more, or no fusermount3: try a plain (then lazy) umount.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .output();
        }
        let deadline = Instant::now() + UNMOUNT_WAIT;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if session.guard.is_finished() {
            if let Err(e) = session.join() {
                tracing::debug!(error = %e, "powerfs: FUSE session ended with an error");
            }
        } else {
            // Still serving a process that holds a file: leave the thread to end with it.
            tracing::warn!(mountpoint = %self.mountpoint.display(), "powerfs: unmounted lazily, still in use");
            drop(session);
        }
        if is_mounted(&self.mountpoint) {
            bail!(
                "power-loss fs: {} is still mounted (fusermount3 -u -z: {:?})",
                self.mountpoint.display(),
                lazy.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            );
        }
        Ok(())
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            tracing::warn!(error = %e, "powerfs: unmount on drop failed");
        }
    }
}

/// Whether `path` is a mount point now, by /proc/self/mountinfo.
fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mnt| mnt == want)
}
