//! What must hold before the primary lets go of a change, and when:
//!
//! - **Shipping waits for the image write.** A change journaled for a volume is written to the
//!   image after the journal. Its frame is released to the shipper (`durable_local` moves
//!   past it) only once every such write of the frame said it is done ([`ImageHold`]); frames
//!   are released in seq order. An image write that fails fences the group for good: the frame
//!   and every later one stay unshipped, so the replica never holds a write the primary lacks,
//!   and nothing more is acknowledged.
//! - **Images durable before a trim.** The journal is the only durable copy of a write until
//!   the image holding it is fdatasync'ed. Before a trim removes frames the images are synced
//!   once (one sync per trim round, covering every released frame), and the journal is never
//!   trimmed past what the last sync covered.
//! - **The lease before each acknowledgement.** A write is acknowledged only while the lease
//!   (its local deadline already shortened by the safety margin) is live; a write still
//!   waiting at the deadline is answered with an error then.
//!
//! The state here is shared by the pipeline's tasks and the write path; the image sync and
//! the lease are given by the node (`RoleCell::set_pipeline`).

use super::shared::Shared;
use crate::error::{ReplicatorError, Result};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tandem_core::ids::Seq;

/// Makes every volume image of the group durable (fdatasync); blocking.
pub type ImageSync = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The local deadline of the lease that lets this site acknowledge writes (safety margin
/// already taken off); `None` when no lease is held.
pub type LeaseDeadline = Arc<dyn Fn() -> Option<Instant> + Send + Sync>;

/// The durability state of a pipeline (see the module docs).
#[derive(Default)]
pub(crate) struct Durability {
    /// Journaled frames not yet released to the shipper: (last seq, image writes
    /// outstanding), in seq order.
    gate: Mutex<VecDeque<(Seq, usize)>>,
    /// Why the group is fenced for good (an image write failed).
    failure: Mutex<Option<String>>,
    image_sync: Mutex<Option<ImageSync>>,
    /// Highest seq every image write of which is fdatasync'ed.
    images_durable: AtomicU64,
    /// Image syncs done before trims.
    image_syncs: AtomicU64,
    lease: Mutex<Option<LeaseDeadline>>,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("images_durable", &self.images_durable)
            .field("image_syncs", &self.image_syncs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The frames at the front of `gate` whose image writes are all done are released: returns
/// the last seq of the last one released, if any (pure).
fn release_front(gate: &mut VecDeque<(Seq, usize)>) -> Option<Seq> {
    let mut released = None;
    while gate.front().is_some_and(|(_, n)| *n == 0) {
        released = gate.pop_front().map(|(last, _)| last);
    }
    released
}

/// Whether a write may be acknowledged now: the lease (when the pipeline has one) is live at
/// `now` (pure).
pub(super) fn lease_live(deadline: Option<Option<Instant>>, now: Instant) -> bool {
    match deadline {
        None => true,
        Some(d) => d.is_some_and(|d| now < d),
    }
}

/// A journaled change whose image write is pending: its frame is not shipped until
/// [`ImageHold::written`]. [`ImageHold::failed`], or dropping it unfinished, fences the group.
#[derive(Debug)]
pub struct ImageHold {
    shared: Arc<Shared>,
    frame: Seq,
    seq: Seq,
    done: bool,
}

impl ImageHold {
    pub(super) fn new(shared: Arc<Shared>, frame: Seq, seq: Seq) -> ImageHold {
        ImageHold {
            shared,
            frame,
            seq,
            done: false,
        }
    }

    /// The seq of the held change.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The image write is done: the frame may be shipped once its other writes are too.
    pub fn written(mut self) {
        self.done = true;
        self.shared.release(self.frame);
    }

    /// The image write failed with `error`: the group is fenced, this frame and every later
    /// one stay unshipped, nothing more is acknowledged.
    pub fn failed(mut self, error: &str) {
        self.done = true;
        self.shared.image_failed(self.seq, error);
    }
}

impl Drop for ImageHold {
    fn drop(&mut self) {
        if !self.done {
            self.shared.image_failed(
                self.seq,
                "the image write did not complete (the request was abandoned)",
            );
        }
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
    fn release(&self, frame: Seq) {
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

/// The result of waiting for a write to be safe, checked against the lease once more.
pub(super) fn checked(r: Result<()>, refusal: Option<ReplicatorError>) -> Result<()> {
    r?;
    match refusal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn frames_are_released_in_order_once_their_image_writes_are_done() {
        let mut g: VecDeque<(Seq, usize)> = [(Seq(3), 0), (Seq(5), 1), (Seq(9), 0)].into();
        assert_eq!(release_front(&mut g), Some(Seq(3)));
        assert_eq!(release_front(&mut g), None, "seq 5's frame holds back 9");
        g[0].1 = 0;
        assert_eq!(release_front(&mut g), Some(Seq(9)));
        assert!(g.is_empty());
    }

    #[test]
    fn the_lease_is_live_only_before_its_deadline() {
        let now = Instant::now();
        let cases = [
            (None, true),
            (Some(None), false),
            (Some(Some(now + Duration::from_millis(1))), true),
            (Some(Some(now)), false),
        ];
        for (i, (d, want)) in cases.into_iter().enumerate() {
            assert_eq!(lease_live(d, now), want, "#{i}: expect {want}");
        }
    }
}
