//! What must hold before the primary lets go of a change, and when:
//!
//! - **The image write waits for the journal; shipping does not wait for either.** A frame is
//!   shipped as soon as the journal writer wrote it (`shippable`), while the journal's
//!   fdatasync runs; a change journaled for a volume is written to the image once the journal
//!   holds it durably. The frame is *released* (`durable_local` moves past it: what the image
//!   sync before a trim covers) only once every such write of the frame said it is done
//!   ([`ImageHold`]); frames are released in seq order. An image write that fails fences the
//!   group for good: nothing more is acknowledged or trimmed. The replica may already hold
//!   that write: the primary's journal holds it durably and a restart replays it onto the
//!   image, so the copies converge; and a replica holding seqs the primary lost before its
//!   fdatasync (a crash in between) is rolled back by a resync ([`crate::lineage::judge_tail`]).
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

use crate::error::{ReplicatorError, Result};
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
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
    pub(super) gate: Mutex<VecDeque<(Seq, usize)>>,
    /// Why the group is fenced for good (an image write failed).
    pub(super) failure: Mutex<Option<String>>,
    pub(super) image_sync: Mutex<Option<ImageSync>>,
    /// Highest seq every image write of which is fdatasync'ed.
    pub(super) images_durable: AtomicU64,
    /// Image syncs done before trims.
    pub(super) image_syncs: AtomicU64,
    pub(super) lease: Mutex<Option<LeaseDeadline>>,
    /// A lease was seen live at least once (a write before the first one waits for it).
    pub(super) leased: std::sync::atomic::AtomicBool,
}

/// How long a write made before this pipeline's first lease waits for one (a new primary's
/// first heartbeat answer normally brings it within one heartbeat interval); then it is
/// refused as any write without a lease.
pub(super) const FIRST_LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What a write does about the lease before it waits to be made safe (pure): `deadline` is
/// what the pipeline holds (`None`: no lease tracking; `Some(None)`: no lease now),
/// `leased` whether one was ever live, `waited` how long it has waited for the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstLease {
    /// Go on (a lease is live, was held before, there is no tracking, or the wait is over).
    Go,
    /// No lease was ever held: wait for the first one.
    Wait,
}

/// See [`FirstLease`] (pure).
pub(super) fn first_lease(
    deadline: Option<Option<Instant>>,
    leased: bool,
    waited: std::time::Duration,
) -> FirstLease {
    match deadline {
        Some(None) if !leased && waited < FIRST_LEASE_WAIT => FirstLease::Wait,
        _ => FirstLease::Go,
    }
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("images_durable", &self.images_durable)
            .field("image_syncs", &self.image_syncs)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The frames at the front of `gate` whose image writes are all done are released: returns
/// the last seq of the last one released, if any (pure).
pub(super) fn release_front(gate: &mut VecDeque<(Seq, usize)>) -> Option<Seq> {
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

/// Where an [`ImageHold`] reports (the pipeline's shared state).
pub(super) trait ImageGate: Send + Sync + std::fmt::Debug {
    /// One image write of `frame` is done.
    fn release(&self, frame: Seq);
    /// The image write of `seq` failed: fences the group for good.
    fn image_failed(&self, seq: Seq, error: &str);
}

/// A journaled change whose image write is pending: its frame is not released (the image sync
/// before a trim does not cover it) until [`ImageHold::written`]. [`ImageHold::failed`], or
/// dropping it unfinished, fences the group.
#[derive(Debug)]
pub struct ImageHold {
    shared: Arc<dyn ImageGate>,
    frame: Seq,
    seq: Seq,
    done: bool,
}

impl ImageHold {
    pub(super) fn new(shared: Arc<dyn ImageGate>, frame: Seq, seq: Seq) -> ImageHold {
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

    /// The image write is done: the frame is released once its other writes are too.
    pub fn written(mut self) {
        self.done = true;
        self.shared.release(self.frame);
    }

    /// The image write failed with `error`: the group is fenced, nothing more is acknowledged
    /// or trimmed (the journal keeps the write for a replay).
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
    fn a_write_before_the_first_lease_waits_for_it_bounded_but_not_after_a_lease_ended() {
        let now = Instant::now();
        let short = Duration::from_millis(5);
        assert_eq!(first_lease(Some(None), false, short), FirstLease::Wait);
        assert_eq!(
            first_lease(Some(None), false, FIRST_LEASE_WAIT),
            FirstLease::Go,
            "bounded"
        );
        assert_eq!(
            first_lease(Some(None), true, short),
            FirstLease::Go,
            "a lease that ended is refused at once, not waited for"
        );
        assert_eq!(first_lease(Some(Some(now)), false, short), FirstLease::Go);
        assert_eq!(first_lease(None, false, short), FirstLease::Go);
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
