//! The state the pipeline, its tasks and its shipper share: submissions and the waiters of
//! group commit, the epoch and the fence, durable marks, journal-full and overflow marks, the
//! sync degradation flags. No I/O of its own.

use crate::error::{ReplicatorError, Result};
use crate::journal::{Journal, NewFrame};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::frame::Change;
use tandem_core::ids::{Epoch, GroupId, Seq};
use tokio::sync::{oneshot, watch};

use super::config::Mode;
use super::durability::{Durability, ImageHold};

/// What a submitter hears once its changes are durable: the seq of its last change, its
/// changes back when it asked for them ([`GroupPipeline::journal_and_return`]), and the hold
/// on their frame when it writes an image next ([`GroupPipeline::journal_for_image`]).
pub(super) type Done = oneshot::Sender<Result<(Seq, Vec<Change>, Option<ImageHold>)>>;

pub(super) struct Submission {
    pub(super) changes: Vec<Change>,
    pub(super) raw_bytes: u64,
    /// Hand the changes back once durable (the caller still needs their data) instead of
    /// dropping them once encoded.
    pub(super) give_back: bool,
    /// The submitter writes an image after the journal: its frame is not released (covered
    /// by the image sync before a trim) until it says the image write is done
    /// ([`ImageHold`]).
    pub(super) hold: bool,
    pub(super) done: Done,
}

/// A submitter waiting for the journal: its channel, the seq of its last change, the
/// changes it gets back (empty unless it asked for them), and whether it holds its frame.
pub(super) type Waiter = (Done, Seq, Vec<Change>, bool);

/// An encoded frame on its way to the journal writer, in seq order.
pub(super) struct WriteJob {
    pub(super) frame: NewFrame,
    /// Why the encoder failed (then `frame.bytes` is empty): the group is fenced.
    pub(super) failed: Option<tandem_core::frame::FrameError>,
    pub(super) raw_bytes: u64,
    pub(super) waiters: Vec<Waiter>,
}

/// A submission the pipeline did not journal (see [`GroupPipeline::journal_and_return`]).
#[derive(Debug)]
pub struct NotJournaled {
    /// Why.
    pub error: ReplicatorError,
    /// The changes, handed back when they were refused at intake (invalid, fenced, journal
    /// full: the caller may retry with them); empty when the pipeline had already taken them
    /// (closed, encode or journal failure: not retried).
    pub changes: Vec<Change>,
}

/// State shared by the pipeline, its tasks and its shipper.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) group: String,
    pub(crate) group_id: GroupId,
    pub(crate) journal: Arc<Journal>,
    pub(super) journal_max: u64,
    pub(super) mode: Mode,
    pub(super) epoch: AtomicU64,
    pub(crate) fenced: watch::Sender<Option<String>>,
    /// Journaled (durable locally) and every image write of it done: what the image sync
    /// before a trim covers (see `durability`).
    pub(crate) durable_local: watch::Sender<Seq>,
    /// Written to the journal (maybe not yet durable): what the shipper may send. Ahead of
    /// `journal_synced` while a group commit's fdatasync runs.
    pub(crate) shippable: watch::Sender<Seq>,
    /// Durable in the journal: what the shipper announces to the replica (`Durable`).
    pub(crate) journal_synced: watch::Sender<Seq>,
    pub(crate) durable_replica: watch::Sender<Seq>,
    pub(super) queued_bytes: AtomicU64,
    pub(super) inflight_frames: AtomicUsize,
    pub(super) bytes_raw_total: AtomicU64,
    pub(crate) bytes_shipped_total: AtomicU64,
    pub(crate) frames_shipped: AtomicU64,
    /// The level the next frames are encoded at (0: raw); fixed by the setting, or moved by
    /// the `auto` loop ([`super::adapt`]).
    pub(super) zstd_level: std::sync::atomic::AtomicI32,
    /// The first seq the shipper has not sent yet (0 before a shipper ran): frames from there
    /// on are the backlog the link leaves.
    pub(crate) ship_next: AtomicU64,
    pub(super) journal_full: Mutex<bool>,
    pub(super) sync_timeout: Option<Duration>,
    pub(super) sync_degraded: std::sync::atomic::AtomicBool,
    /// Whether the pipeline wants the coordinators to hold it degraded (`true`) or not.
    pub(super) degrade_wanted: watch::Sender<bool>,
    /// What the coordinators last committed (`true`: degraded, consent given).
    pub(super) degrade_granted: watch::Sender<bool>,
    pub(super) has_consent: bool,
    pub(crate) ship_problem: Mutex<Option<String>>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set by [`GroupPipeline::drop_unacked`] until the replica is past `through`.
    pub(super) overflow: Mutex<Option<Overflow>>,
    /// What must hold before a change is let go: image writes before shipping, images
    /// durable before a trim, the lease before an acknowledgement.
    pub(super) durability: Durability,
    /// Buffers of frames already journaled, for the encoders to write the next frames into
    /// (at most [`SPARE_FRAMES`]): no allocation per frame.
    pub(super) spare_frames: Mutex<Vec<Vec<u8>>>,
}

/// Most frame buffers kept for reuse (the encoders, plus the frames on their way to the
/// journal).
pub(super) const SPARE_FRAMES: usize = 8;

/// Largest frame buffer kept for reuse: a rare huge frame's buffer is freed, not kept.
const SPARE_FRAME_MAX: usize = 8 << 20;

/// Frames dropped from a full journal: the replica must be resynced past `through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Overflow {
    /// Highest dropped seq.
    pub(super) through: Seq,
    /// Capture time of the oldest change dropped (keeps RPO honest while it is missing).
    pub(super) oldest_ms: Option<i64>,
    /// Encoded bytes dropped, over every overflow since the replica was last in step.
    pub(super) dropped_bytes: u64,
}

impl Shared {
    /// A journaled frame's buffer to encode the next frame into (empty when none is kept).
    pub(super) fn take_spare_frame(&self) -> Vec<u8> {
        self.spare_frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// Keeps the buffer of a frame the journal has written, for a later frame (dropped when
    /// enough are kept, or when it is very large).
    pub(super) fn give_spare_frame(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > SPARE_FRAME_MAX {
            return;
        }
        let mut spare = self.spare_frames.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < SPARE_FRAMES {
            spare.push(buf);
        }
    }

    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::SeqCst))
    }

    pub(crate) fn fence(&self, reason: String) {
        tracing::warn!(group = %self.group, %reason, "pipeline fenced");
        self.fenced.send_replace(Some(reason));
    }

    pub(crate) fn set_ship_problem(&self, problem: Option<String>) {
        *self.ship_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Clears the overflow mark once the replica acknowledged everything that was dropped.
    pub(crate) fn note_acked(&self, seq: Seq) {
        // Every write acknowledged alone is on the replica now: synchronous again, even if no
        // write comes to notice it. (A submit that saw the flag set has a seq ≤ durable_local
        // here, so ≤ `seq`.)
        if seq >= *self.durable_local.borrow() && self.sync_degraded.swap(false, Ordering::SeqCst) {
            self.degrade_wanted.send_replace(false);
            tracing::info!(group = %self.group, %seq, "replica caught up: sync acknowledgements resume");
        }
        let mut o = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        if o.is_some_and(|o| seq >= o.through) {
            tracing::info!(group = %self.group, %seq, "replica is past the dropped frames: journal overflow over");
            *o = None;
        }
    }

    /// Clears the journal-full mark once the replica has drained the journal below the limit.
    pub(crate) fn note_trimmed(&self) {
        let pending = self.journal.pending_bytes() + self.queued_bytes.load(Ordering::SeqCst);
        if pending < self.journal_max {
            *self.journal_full.lock().unwrap_or_else(|p| p.into_inner()) = false;
        }
    }

    pub(crate) fn fenced_error(&self) -> Option<ReplicatorError> {
        self.fenced
            .borrow()
            .as_ref()
            .map(|reason| ReplicatorError::Fenced {
                epoch: self.epoch(),
                reason: reason.clone(),
            })
    }
}
