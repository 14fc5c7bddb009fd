//! The durability rules of [`super::durability`] as methods of the pipeline's shared state:
//! frames released to the shipper once their image writes are done, the fence when one
//! fails, images synced before a trim, the lease checked before an acknowledgement.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tandem_core::ids::Seq;

use super::durability::{
    first_lease, lease_live, lock, release_front, FirstLease, ImageGate, ImageSync, LeaseDeadline,
};
use super::shared::Shared;
use crate::error::ReplicatorError;

impl ImageGate for Shared {
    fn release(&self, frame: Seq) {
        self.release_frame(frame);
    }

    fn image_failed(&self, seq: Seq, error: &str) {
        Shared::image_failed(self, seq, error);
    }
}

impl Shared {
    /// After a journal append: registers the appended frames with the number of image
    /// writes each waits for, and releases what can be.
    pub(super) fn journaled(&self, frames: &[(Seq, usize)]) {
        let mut gate = lock(&self.durability.gate);
        gate.extend(frames.iter().copied());
        self.publish(&mut gate);
    }

    fn publish(&self, gate: &mut VecDeque<(Seq, usize)>) {
        if lock(&self.durability.failure).is_some() {
            return;
        }
        if let Some(last) = release_front(gate) {
            self.durable_local.send_replace(last);
        }
    }

    /// One image write of `frame` is done.
    fn release_frame(&self, frame: Seq) {
        let mut gate = lock(&self.durability.gate);
        if let Some(e) = gate.iter_mut().find(|(last, _)| *last == frame) {
            e.1 = e.1.saturating_sub(1);
        }
        self.publish(&mut gate);
    }

    /// The image write of `seq` failed: fences the group for good.
    pub(super) fn image_failed(&self, seq: Seq, error: &str) {
        let reason = format!(
            "image write of seq {seq} failed after it was journaled: {error}; the group is fenced \
             (nothing from seq {seq} on is shipped or acknowledged) until the journal is replayed \
             onto the image"
        );
        {
            let mut f = lock(&self.durability.failure);
            if f.is_some() {
                return;
            }
            *f = Some(reason.clone());
        }
        tracing::error!(group = %self.group, %seq, %error, "image write failed after journaling: group fenced");
        self.fence(reason);
    }

    /// Why the group is fenced for good, if it is.
    pub(super) fn image_failure(&self) -> Option<String> {
        lock(&self.durability.failure).clone()
    }

    pub(super) fn set_image_sync(&self, sync: Option<ImageSync>) {
        *lock(&self.durability.image_sync) = sync;
    }

    pub(super) fn set_lease(&self, lease: Option<LeaseDeadline>) {
        *lock(&self.durability.lease) = lease;
    }

    /// The lease deadline: `None` when the pipeline has no lease (no node: tests, tools),
    /// `Some(None)` when it holds none.
    pub(super) fn lease_deadline(&self) -> Option<Option<Instant>> {
        lock(&self.durability.lease).as_ref().map(|f| f())
    }

    /// Image syncs done before trims.
    pub(super) fn image_syncs(&self) -> u64 {
        self.durability.image_syncs.load(Ordering::SeqCst)
    }

    /// Every image write through `seq` is durable (the caller synced the images with no write
    /// between journal and image).
    pub(super) fn images_durable_through(&self, seq: Seq) {
        self.durability
            .images_durable
            .fetch_max(seq.0, Ordering::SeqCst);
    }

    /// Trims the journal through `seq`, acknowledged durable by the replica, once the images
    /// hold every write through it durably: syncs them first when the last sync does not
    /// cover `seq` (one sync covers every frame released by then). A failed sync fences the
    /// group and trims nothing more.
    pub(crate) async fn trim_acked(&self, seq: Seq) {
        let sync = lock(&self.durability.image_sync).clone();
        let mut through = seq;
        if let Some(sync) = sync {
            let durable = Seq(self.durability.images_durable.load(Ordering::SeqCst));
            if seq > durable && self.image_failure().is_none() {
                // Every image write of a released frame has returned: the sync covers them.
                let covered = *self.durable_local.borrow();
                match tokio::task::spawn_blocking(move || sync()).await {
                    Ok(Ok(())) => {
                        self.durability.image_syncs.fetch_add(1, Ordering::SeqCst);
                        self.images_durable_through(covered);
                    }
                    Ok(Err(e)) => {
                        self.image_failed(covered, &format!("fdatasync of the images: {e}"))
                    }
                    Err(e) => {
                        tracing::warn!(group = %self.group, error = %e, "image sync task failed; the journal is not trimmed")
                    }
                }
            }
            through = through.min(Seq(self.durability.images_durable.load(Ordering::SeqCst)));
        }
        if through <= self.journal.trimmed_through() {
            return;
        }
        let j = Arc::clone(&self.journal);
        match tokio::task::spawn_blocking(move || j.trim_through(through)).await {
            Ok(Ok(())) => self.note_trimmed(),
            Ok(Err(e)) => tracing::warn!(group = %self.group, error = %e, "journal trim failed"),
            Err(e) => tracing::warn!(group = %self.group, error = %e, "journal trim task failed"),
        }
    }

    /// The error to answer a write with instead of acknowledging it, if any: an image
    /// failure, the lease not live, or a fence (unless, in sync mode, the replica already has
    /// `seq` durable: it is safe wherever the group goes next).
    pub(super) fn ack_refusal(&self, seq: Seq, sync_mode: bool) -> Option<ReplicatorError> {
        let fenced = |reason: String| ReplicatorError::Fenced {
            epoch: self.epoch(),
            reason,
        };
        if let Some(f) = self.image_failure() {
            return Some(fenced(f));
        }
        if !lease_live(self.lease_deadline(), Instant::now()) {
            return Some(fenced(format!(
                "the lease ended before seq {seq} could be acknowledged"
            )));
        }
        let replicated = sync_mode && *self.durable_replica.borrow() >= seq;
        if replicated {
            None
        } else {
            self.fenced_error()
        }
    }

    /// Before a write waits to be made safe: when this pipeline never held a lease yet (a
    /// new primary's capture can start before its first heartbeat answer), waits for the
    /// first one, at most [`super::durability::FIRST_LEASE_WAIT`]; returns at once otherwise.
    pub(super) async fn first_lease(&self) {
        let start = Instant::now();
        loop {
            let deadline = self.lease_deadline();
            if matches!(deadline, Some(Some(d)) if Instant::now() < d) {
                self.durability.leased.store(true, Ordering::SeqCst);
            }
            let leased = self.durability.leased.load(Ordering::SeqCst);
            match first_lease(deadline, leased, start.elapsed()) {
                FirstLease::Go => return,
                FirstLease::Wait => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    }

    /// Resolves when the lease ends (never when the pipeline has none): the error a waiting
    /// write is answered with.
    pub(super) async fn lease_end(&self, seq: Seq) -> ReplicatorError {
        loop {
            match self.lease_deadline() {
                None => std::future::pending::<()>().await,
                Some(Some(d)) if Instant::now() < d => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
                }
                Some(_) => {
                    return ReplicatorError::Fenced {
                        epoch: self.epoch(),
                        reason: format!(
                            "the lease ended while seq {seq} waited to be made safe: not acknowledged"
                        ),
                    };
                }
            }
        }
    }
}
