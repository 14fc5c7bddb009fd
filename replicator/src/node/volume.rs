//! The NBD backend of a protected volume: [`GroupVolume`] journals every change (through the
//! lease gate) before it writes the local image, and acknowledges it as the group's mode
//! promises. Touches the image file and the group's pipeline; decides nothing about roles.

use super::lease::RoleCell;
use super::lock::RangeGuard;
use crate::error::ReplicatorError;
use crate::pipeline::{GroupPipeline, ImageHold, NotJournaled};
use crate::volume::{FileVolume, VolumeBackend, VolumeError};
use std::sync::Arc;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::frame::Change;
use tandem_core::ids::Seq;

/// The write path of one protected volume: the change is journaled (its frame shipped to the
/// replica while the journal's fdatasync runs), written to the local image once durable in
/// the journal, and acknowledged once the mode's promise holds (sync: the replica has it
/// durable too); writable only while this site is primary and holds a live lease.
pub struct GroupVolume {
    pub(super) resource: String,
    pub(super) file: FileVolume,
    pub(super) role: Arc<RoleCell>,
    pub(super) clock: SystemClock,
}

/// A write refused here (EPERM, retryable: the role may change).
pub(super) fn refused(resource: &str, why: &str) -> VolumeError {
    VolumeError::Backend {
        what: format!("{resource}: {why}"),
        retryable: true,
        errno: crate::nbd::proto::Errno::EPERM,
    }
}

/// An error after a change was journaled (and written to the image) as an NBD error: always
/// EIO, since the write may still land (pure).
pub(super) fn after_journal_err(resource: &str, e: ReplicatorError) -> VolumeError {
    VolumeError::Backend {
        what: format!(
            "{resource}: not acknowledged after it was journaled (it may still land): {e}"
        ),
        retryable: false,
        errno: crate::nbd::proto::Errno::EIO,
    }
}

/// A failed image write of a journaled change as an NBD error: EIO, whatever the file said
/// (pure).
pub(super) fn image_write_err(resource: &str, e: VolumeError) -> VolumeError {
    VolumeError::Backend {
        what: format!(
            "{resource}: the image write failed after the change was journaled (it may still \
             land when the journal is replayed): {e}"
        ),
        retryable: false,
        errno: crate::nbd::proto::Errno::EIO,
    }
}

/// A journal error as an NBD error (ENOSPC for a full journal, EPERM when fenced).
pub(super) fn backend_err(resource: &str, e: ReplicatorError) -> VolumeError {
    let errno = match e {
        ReplicatorError::JournalFull { .. } => crate::nbd::proto::Errno::ENOSPC,
        ReplicatorError::Fenced { .. } => crate::nbd::proto::Errno::EPERM,
        _ => crate::nbd::proto::Errno::EIO,
    };
    VolumeError::Backend {
        what: format!("{resource}: {e}"),
        retryable: e.is_retryable(),
        errno,
    }
}

/// A write admitted to the journal: the image write happens under the guards, and then (with
/// the guards dropped) [`Journaled::acknowledge`] waits for what the mode promises.
pub(super) struct Admitted<'a> {
    pub(super) guards: (tokio::sync::RwLockReadGuard<'a, ()>, RangeGuard<'a>),
    pub(super) journaled: Journaled,
    /// The journaled change, handed back by the pipeline: its data is what the image gets.
    pub(super) change: Change,
}

/// A change durable in the local journal, not yet acknowledged to the client.
pub(super) struct Journaled {
    pub(super) pipeline: Arc<GroupPipeline>,
    pub(super) seq: Seq,
    pub(super) resource: String,
    /// Its frame is not released (covered by the image sync before a trim) until the image
    /// write is done; a failure fences the group.
    pub(super) hold: Option<ImageHold>,
}

impl Journaled {
    /// The image write of the change ended with `r`: releases its frame (the image sync
    /// before a trim covers it), or fences the group (nothing more is acknowledged; the
    /// journal keeps the write for a replay, so the copies converge).
    /// A failed image write answers EIO whatever the file said (ENOSPC, EPERM...): the change
    /// is journaled, and a restart's replay writes it, so it may still land.
    pub(super) fn imaged<T>(&mut self, r: Result<T, VolumeError>) -> Result<T, VolumeError> {
        if let Some(hold) = self.hold.take() {
            match &r {
                Ok(_) => hold.written(),
                Err(e) => hold.failed(&e.to_string()),
            }
        }
        r.map_err(|e| image_write_err(&self.resource, e))
    }

    /// In sync mode, waits for the replica's durable acknowledgement (or the coordinators'
    /// consent to degrade). Called without holding the write guards: a merkle snapshot for
    /// the replica's own resync needs them, and strict sync would otherwise wait forever.
    ///
    /// A refusal here comes after the change was journaled and written to the image: it may
    /// still reach both copies, so the client hears EIO (outcome unknown), never EPERM, which
    /// promises the write was not applied.
    pub(super) async fn acknowledge(self) -> std::result::Result<(), VolumeError> {
        self.pipeline
            .await_sync(self.seq)
            .await
            .map_err(|e| after_journal_err(&self.resource, e))
    }
}

impl GroupVolume {
    /// Journals `change` (of bytes `[start, end)`) and returns the guards under which the
    /// caller writes the image, with the change handed back (its buffer moved through the
    /// pipeline, not copied). A full journal overflows (see [`RoleCell::overflow`]) and the
    /// same change, re-stamped, is journaled again.
    pub(super) async fn admit(
        &self,
        start: u64,
        end: u64,
        mut change: Change,
    ) -> std::result::Result<Admitted<'_>, VolumeError> {
        let mut tries = 0;
        loop {
            let g = self.role.inflight.read().await;
            let r = self.role.ranges.lock(&self.resource, start, end).await;
            match self.capture(change).await {
                Ok((journaled, change)) => {
                    return Ok(Admitted {
                        guards: (g, r),
                        journaled,
                        change,
                    })
                }
                Err(CaptureError::JournalFull(e, back)) if tries < 3 => {
                    drop((r, g));
                    tries += 1;
                    if !self.role.overflow().await? {
                        return Err(e);
                    }
                    change = *back;
                    change.captured_ms = self.clock.now_ms();
                }
                Err(CaptureError::JournalFull(e, _) | CaptureError::Other(e)) => return Err(e),
            }
        }
    }

    /// Journals one change through the lease gate; returns it back once durable.
    pub(super) async fn capture(
        &self,
        change: Change,
    ) -> std::result::Result<(Journaled, Change), CaptureError> {
        if !self.role.writable() {
            return Err(refused(
                &self.resource,
                "not writable here (not primary, or the lease is not held)",
            )
            .into());
        }
        let p = self
            .role
            .pipeline()
            .ok_or_else(|| refused(&self.resource, "no pipeline"))?;
        match p.journal_for_image(vec![change]).await {
            Ok((seq, mut back, hold)) => {
                let change = back.pop().ok_or_else(|| VolumeError::Backend {
                    what: format!(
                        "{}: the journal did not hand the change back",
                        self.resource
                    ),
                    retryable: false,
                    errno: crate::nbd::proto::Errno::EIO,
                })?;
                let journaled = Journaled {
                    pipeline: p,
                    seq,
                    resource: self.resource.clone(),
                    hold: Some(hold),
                };
                Ok((journaled, change))
            }
            Err(NotJournaled { error, mut changes }) => {
                let full = matches!(error, ReplicatorError::JournalFull { .. });
                let e = backend_err(&self.resource, error);
                match changes.pop() {
                    Some(change) if full => Err(CaptureError::JournalFull(e, Box::new(change))),
                    _ => Err(CaptureError::Other(e)),
                }
            }
        }
    }
}

/// Why a change was not journaled.
pub(super) enum CaptureError {
    /// The journal is at its limit (the group may overflow and retry with the change, which
    /// comes back here).
    JournalFull(VolumeError, Box<Change>),
    /// Anything else.
    Other(VolumeError),
}

impl From<VolumeError> for CaptureError {
    fn from(e: VolumeError) -> Self {
        CaptureError::Other(e)
    }
}

impl From<CaptureError> for VolumeError {
    fn from(e: CaptureError) -> Self {
        match e {
            CaptureError::JournalFull(e, _) | CaptureError::Other(e) => e,
        }
    }
}

#[tonic::async_trait]
impl VolumeBackend for GroupVolume {
    fn size(&self) -> u64 {
        self.file.size()
    }

    async fn read(&self, offset: u64, len: u32) -> std::result::Result<Vec<u8>, VolumeError> {
        self.file.read(offset, len).await
    }

    async fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        _fua: bool,
    ) -> std::result::Result<(), VolumeError> {
        let end = offset.saturating_add(data.len() as u64);
        // The buffer moves into the change, through the journal, and back for the image
        // write: one copy of the payload in memory, never two (the journal is durable first).
        let change = Change::write(&self.resource, offset, data, self.clock.now_ms());
        let mut admitted = self.admit(offset, end, change).await?;
        let data = std::mem::take(&mut admitted.change.data);
        // FUA asks for what the journal already gave: no fdatasync of the image (see flush).
        let r = self.file.write(offset, data, false).await;
        admitted.journaled.imaged(r)?;
        drop(admitted.guards);
        admitted.journaled.acknowledge().await
    }

    async fn trim(&self, offset: u64, len: u32) -> std::result::Result<(), VolumeError> {
        let end = offset.saturating_add(u64::from(len));
        let change = Change::trim(&self.resource, offset, u64::from(len), self.clock.now_ms());
        let mut admitted = self.admit(offset, end, change).await?;
        let r = self.file.trim(offset, len).await;
        admitted.journaled.imaged(r)?;
        drop(admitted.guards);
        admitted.journaled.acknowledge().await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _fua: bool,
    ) -> std::result::Result<(), VolumeError> {
        let end = offset.saturating_add(u64::from(len));
        let change = Change::trim(&self.resource, offset, u64::from(len), self.clock.now_ms());
        let mut admitted = self.admit(offset, end, change).await?;
        let r = self.file.write_zeroes(offset, len, false).await;
        admitted.journaled.imaged(r)?;
        drop(admitted.guards);
        admitted.journaled.acknowledge().await
    }

    /// Nothing is left to make durable: every write this export acknowledged is already
    /// durable in the group's journal (and, in sync mode, at the replica); after a crash the
    /// journal is replayed onto the image, and the image is fdatasync'd before the journal
    /// trims frames that hold its writes. So a flush costs no fdatasync, no barrier frame and
    /// no round trip to the replica. A copy that is not primary here took no write through
    /// this export: its flush syncs the image file, as a plain file's would.
    async fn flush(&self) -> std::result::Result<(), VolumeError> {
        if self.role.pipeline().is_some() {
            return Ok(());
        }
        self.file.flush().await
    }

    /// Advertised to NBD clients at connect time: writable while this site is the primary
    /// (the lease is checked on every write, which fails with EPERM without it).
    fn writable(&self) -> bool {
        !self.role.fenced.load(std::sync::atomic::Ordering::SeqCst)
            && self.role.pipeline().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::ids::Epoch;

    #[test]
    fn a_refusal_after_journaling_is_eio_never_eperm() {
        let fenced = || ReplicatorError::Fenced {
            epoch: Epoch(1),
            reason: "the lease ended".into(),
        };
        let VolumeError::Backend { errno, .. } = after_journal_err("disk0", fenced()) else {
            panic!("a backend error");
        };
        assert_eq!(errno, crate::nbd::proto::Errno::EIO, "it may still land");
        let denied = VolumeError::Fenced {
            path: "disk0.img".into(),
        };
        assert_eq!(denied.nbd_errno(), crate::nbd::proto::Errno::EPERM);
        let VolumeError::Backend { errno, .. } = image_write_err("disk0", denied) else {
            panic!("a backend error");
        };
        assert_eq!(
            errno,
            crate::nbd::proto::Errno::EIO,
            "journaled: replay writes it"
        );
        let VolumeError::Backend { errno, .. } = backend_err("disk0", fenced()) else {
            panic!("a backend error");
        };
        assert_eq!(
            errno,
            crate::nbd::proto::Errno::EPERM,
            "refused before journaling: not applied"
        );
    }
}
