//! The lease gate of a group: [`RoleCell`] holds the group's pipeline, lease deadline and fence
//! flag, and decides (through [`super::decide`]) whether a write may be journaled; it gives
//! the group's pipeline the lease (re-checked before each acknowledgement) and the fdatasync
//! of its images (before a journal trim); it also overflows a full journal of an all-volume
//! group. Touches the images only to fdatasync them.

use super::decide::{lease_live, write_allowed};
use super::lock::{lock, RangeLock};
use crate::pipeline::GroupPipeline;
use crate::volume::VolumeError;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// What the volumes of a group need to know about the group's current role.
#[derive(Default)]
pub struct RoleCell {
    pub(super) pipeline: RwLock<Option<Arc<GroupPipeline>>>,
    /// Shared with the pipeline, which re-checks it before each acknowledgement.
    pub(super) lease_deadline: Arc<Mutex<Option<Instant>>>,
    pub(super) fenced: std::sync::atomic::AtomicBool,
    /// Writers hold it shared from journal to local write; a merkle snapshot holds it
    /// exclusively to read a seq that every local image already reflects.
    pub(super) inflight: tokio::sync::RwLock<()>,
    /// Byte ranges being written: overlapping writes go journal-then-image one after the
    /// other, so the image sees them in journal (seq) order, as the replica does.
    pub(super) ranges: RangeLock,
    /// The group's volume images at this site (fdatasync'd before a journal overflow).
    pub(super) images: Mutex<Vec<PathBuf>>,
    /// Every resource of the group is a volume, so a full journal may be dropped and the
    /// replica resynced by merkle diff (a database's pages cannot be recovered that way).
    pub(super) may_overflow: std::sync::atomic::AtomicBool,
    /// The running SQLite sources of the group (primary), by resource: where a returning
    /// replica's resync asks for fresh snapshots.
    pub(super) sqlite_asks: Mutex<HashMap<String, Arc<crate::sqlite::SnapshotAsk>>>,
}

impl RoleCell {
    /// The group's pipeline while this site is its primary.
    pub(super) fn pipeline(&self) -> Option<Arc<GroupPipeline>> {
        self.pipeline
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets (primary) or clears the group's pipeline. A new pipeline is given the group's
    /// images to fdatasync before a journal trim, and the lease to re-check before each
    /// acknowledgement (the deliberately broken chaos build ignores it, as it does here).
    pub(super) fn set_pipeline(&self, p: Option<Arc<GroupPipeline>>) {
        if let Some(p) = &p {
            let images = lock(&self.images).clone();
            if !images.is_empty() {
                p.set_image_sync(Some(Arc::new(move || sync_images(&images))));
            }
            let deadline = Arc::clone(&self.lease_deadline);
            p.set_lease(Some(Arc::new(move || {
                if unsafe_skip_lease_check() {
                    return Some(Instant::now() + std::time::Duration::from_secs(3600));
                }
                *lock(&deadline)
            })));
        }
        *self.pipeline.write().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// The lease is live now (always, in the deliberately broken chaos build).
    pub(super) fn lease_valid(&self) -> bool {
        if unsafe_skip_lease_check() {
            return true;
        }
        lease_live(*lock(&self.lease_deadline), Instant::now())
    }

    pub(crate) fn writable(&self) -> bool {
        write_allowed(
            self.fenced.load(std::sync::atomic::Ordering::SeqCst),
            self.lease_valid(),
            self.pipeline().is_some(),
        )
    }

    /// The journal is full: with no write between journal and image, make the images durable
    /// and drop the unacknowledged frames, so intake goes on; the replica is resynced by merkle
    /// diff (the shipper asks it). Returns false when the group may not overflow (it holds a
    /// database), and intake stays refused.
    pub(crate) async fn overflow(&self) -> std::result::Result<bool, VolumeError> {
        if !self.may_overflow.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        let _all = self.inflight.write().await;
        let Some(p) = self.pipeline() else {
            return Ok(false);
        };
        if !p.journal_full() {
            return Ok(true); // another writer overflowed it meanwhile
        }
        let images = lock(&self.images).clone();
        let synced = tokio::task::spawn_blocking(move || sync_images(&images)).await;
        let fail = |what: String| VolumeError::Backend {
            what,
            retryable: true,
            errno: crate::nbd::proto::Errno::EIO,
        };
        match synced {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(format!("fdatasync before journal overflow: {e}"))),
            Err(e) => return Err(fail(format!("fdatasync task: {e}"))),
        }
        p.drop_unacked()
            .await
            .map_err(|e| fail(format!("dropping the journal: {e}")))?;
        Ok(true)
    }
}

/// Makes the group's volume images durable (fdatasync each); blocking.
fn sync_images(images: &[PathBuf]) -> std::io::Result<()> {
    for path in images {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.sync_data())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// A deliberately broken build for the chaos harness's own test: with
/// `TANDEM_UNSAFE_SKIP_LEASE_CHECK=1` a debug build accepts writes without a live lease and
/// ignores its demotion (it disobeys fencing), which the `primary-paused` scenario must catch.
/// Release builds ignore the variable.
pub(super) fn unsafe_skip_lease_check() -> bool {
    cfg!(debug_assertions)
        && std::env::var("TANDEM_UNSAFE_SKIP_LEASE_CHECK").is_ok_and(|v| v == "1")
}
