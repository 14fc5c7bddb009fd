//! The primary side of one group: captured changes get seqs, are batched into frames, encoded
//! off the reactor, journaled with group commit, and acknowledged to the caller when durable
//! locally (async mode) or on the replica (sync mode).
//!
//! Tasks: `submit` → bounded queue → batcher task (assigns seqs, lingers up to
//! `batch_max_delay` only while earlier frames are on their way to the journal) → queue of one
//! → encoders (`ordered`: up to one frame per core compressed and hashed at once on the
//! blocking pool, released in seq order) → bounded queue → one writer thread (drains what is
//! queued, one [`Journal::write`], then one [`Journal::sync`] = one fdatasync, completes every
//! waiter). The shipper (the `ship` room, which depends on this one) reads the journal from
//! there as soon as the frames are written (`shippable`), so the replica makes a frame durable
//! while the primary's fdatasync runs; a write is acknowledged only once both are done.

//!
//! Rooms: [`config`] (settings, mode, consent), [`progress`] (what heartbeats report),
//! `shared` (the state the tasks share), `tasks` (batcher, encode job, writer, consent loop),
//! `ordered` (the bounded, order-keeping parallel stage),
//! `durability` (image writes before shipping, images durable before a trim, the lease
//! before an acknowledgement), and here the [`GroupPipeline`] handle.

pub mod adapt;
mod config;
mod durability;
pub(crate) mod ordered;
mod progress;
mod release;
mod shared;
mod tasks;
#[cfg(test)]
mod tests;

pub use self::config::{Compression, ConsentFuture, Mode, PipelineConfig, SyncConsent};
pub use self::durability::{ImageHold, ImageSync, LeaseDeadline};
pub use self::progress::{GroupState, Progress};
pub use self::shared::NotJournaled;
pub(crate) use self::shared::Shared;

use crate::error::{ReplicatorError, Result};
use crate::journal::Journal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::frame::{Change, Encoder, MAX_RAW_LEN};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::shared::{Overflow, Submission};
use self::tasks::{batcher_loop, consent_loop, writer_loop};

/// The primary-side data path of one protection group.
#[derive(Debug)]
pub struct GroupPipeline {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Submission>>,
    batcher: Option<JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl GroupPipeline {
    /// Opens the group's journal in `cfg.dir` (scanning it) and starts the batcher and the
    /// writer. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// Journal open errors ([`ReplicatorError::CorruptJournal`], I/O, metadata), or a zstd
    /// context failure.
    pub async fn open(cfg: PipelineConfig) -> Result<GroupPipeline> {
        let group_id = GroupId::from_name(&cfg.group);
        let (dir, epoch, seg) = (cfg.dir.clone(), cfg.epoch, cfg.segment_bytes);
        let journal =
            tokio::task::spawn_blocking(move || Journal::open(&dir, group_id, epoch, seg))
                .await
                .map_err(|e| ReplicatorError::Task(e.to_string()))??;
        let journal = Arc::new(journal);
        let last = journal.last_seq();
        let trimmed = journal.trimmed_through();
        let start_level = match cfg.compression {
            Compression::Off => 0,
            Compression::Zstd(l) => l,
            Compression::Auto => adapt::Adapt::default().level(),
        };
        let shared = Arc::new(Shared {
            group: cfg.group.clone(),
            group_id,
            epoch: AtomicU64::new(journal.epoch().0),
            journal: Arc::clone(&journal),
            journal_max: cfg.journal_max,
            mode: cfg.mode,
            fenced: watch::channel(None).0,
            durable_local: watch::channel(last).0,
            shippable: watch::channel(last).0,
            journal_synced: watch::channel(last).0,
            durable_replica: watch::channel(trimmed).0,
            queued_bytes: AtomicU64::new(0),
            inflight_frames: AtomicUsize::new(0),
            bytes_raw_total: AtomicU64::new(0),
            bytes_shipped_total: AtomicU64::new(0),
            frames_shipped: AtomicU64::new(0),
            zstd_level: std::sync::atomic::AtomicI32::new(start_level),
            ship_next: AtomicU64::new(0),
            journal_full: Mutex::new(false),
            sync_timeout: cfg.sync_timeout,
            sync_degraded: std::sync::atomic::AtomicBool::new(false),
            degrade_wanted: watch::channel(false).0,
            degrade_granted: watch::channel(false).0,
            has_consent: cfg.sync_consent.is_some(),
            ship_problem: Mutex::new(None),
            shutdown: watch::channel(false).0,
            overflow: Mutex::new(None),
            durability: Default::default(),
            spare_frames: Mutex::new(Vec::new()),
        });
        if let Some(consent) = cfg.sync_consent.clone() {
            tokio::spawn(consent_loop(Arc::clone(&shared), consent));
        }
        if cfg.compression == Compression::Auto {
            tokio::spawn(tasks::adapt_loop(Arc::clone(&shared)));
        }
        let encoders = (0..ordered::parallelism())
            .map(|_| Encoder::new(start_level))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
        let (etx, erx) = mpsc::channel(1);
        let (wtx, wrx) = mpsc::channel(4);
        ordered::spawn_ordered(encoders, tasks::encode_job, tasks::small_job, erx, wtx);
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("journal-{}", cfg.group))
                .spawn(move || writer_loop(shared, wrx))
                .map_err(|e| ReplicatorError::Task(format!("spawn journal writer: {e}")))?
        };
        let batcher = tokio::spawn(batcher_loop(
            Arc::clone(&shared),
            rx,
            etx,
            journal.next_seq(),
            cfg.batch_max_bytes.max(1),
            cfg.batch_max_delay,
        ));
        Ok(GroupPipeline {
            shared,
            tx: Some(tx),
            batcher: Some(batcher),
            writer: Some(writer),
        })
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The group name.
    pub fn group(&self) -> &str {
        &self.shared.group
    }

    /// The journal (read-only uses: inspection, tests, resync planning).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.shared.journal
    }

    /// Submits captured changes; they get consecutive seqs and are batched with concurrent
    /// submissions into one frame. Returns the seq of the last change once it is durable in
    /// the journal (async mode) or acknowledged durable by the replica (sync mode).
    ///
    /// # Errors
    /// [`ReplicatorError::JournalFull`] (retryable; the group is degraded),
    /// [`ReplicatorError::Fenced`], [`ReplicatorError::InvalidSubmission`] (empty or over the
    /// frame limit), [`ReplicatorError::Closed`], or the journal write error.
    pub async fn submit(&self, changes: Vec<Change>) -> Result<Seq> {
        let seq = self.submit_journaled(changes).await?;
        self.await_sync(seq).await?;
        Ok(seq)
    }

    /// The first half of [`Self::submit`]: returns once the changes are durable in the local
    /// journal, in either mode. A sync caller then answers its client only after
    /// [`Self::await_sync`]; in between it may finish local work (the image write) without
    /// holding anything the replica's recovery needs.
    ///
    /// # Errors
    /// As [`Self::submit`], except those of waiting for the replica.
    pub async fn submit_journaled(&self, changes: Vec<Change>) -> Result<Seq> {
        self.intake(changes, false, false)
            .await
            .map(|(seq, _, _)| seq)
            .map_err(|refused| refused.error)
    }

    /// As [`Self::submit_journaled`], and hands the changes back once they are durable in the
    /// local journal, so that a caller that still needs their data (the NBD write path, which
    /// writes the image after the journal) moves its buffer through the pipeline instead of
    /// copying it. The changes are held until the journal append instead of being dropped
    /// once encoded.
    ///
    /// # Errors
    /// As [`Self::submit_journaled`], in a [`NotJournaled`] that carries the changes back
    /// when they were refused at intake (so a [`ReplicatorError::JournalFull`] can be retried
    /// with the same buffers).
    pub async fn journal_and_return(
        &self,
        changes: Vec<Change>,
    ) -> std::result::Result<(Seq, Vec<Change>), NotJournaled> {
        self.intake(changes, true, false)
            .await
            .map(|(seq, changes, _)| (seq, changes))
    }

    /// As [`Self::journal_and_return`], for a caller that writes the changes to a local image
    /// next (the NBD write path): their frame is not released (covered by the image sync
    /// before a trim) until the returned [`ImageHold`] says the image write is done; a failed
    /// (or abandoned) image write fences the group (nothing more is acknowledged; the journal
    /// keeps the write, and a restart replays it onto the image).
    ///
    /// # Errors
    /// As [`Self::journal_and_return`].
    pub async fn journal_for_image(
        &self,
        changes: Vec<Change>,
    ) -> std::result::Result<(Seq, Vec<Change>, ImageHold), NotJournaled> {
        let (seq, changes, hold) = self.intake(changes, true, true).await?;
        match hold {
            Some(hold) => Ok((seq, changes, hold)),
            None => Err(NotJournaled {
                error: ReplicatorError::Task("the journal gave no image hold".into()),
                changes: Vec::new(),
            }),
        }
    }

    /// Checks a submission at intake (handing the changes back when refused), queues it for
    /// the batcher and waits until it is durable in the journal.
    async fn intake(
        &self,
        changes: Vec<Change>,
        give_back: bool,
        hold: bool,
    ) -> std::result::Result<(Seq, Vec<Change>, Option<ImageHold>), NotJournaled> {
        let refuse = |error, changes| Err(NotJournaled { error, changes });
        if changes.is_empty() {
            return refuse(
                ReplicatorError::InvalidSubmission("no changes".into()),
                changes,
            );
        }
        let raw: usize = changes.iter().map(Change::encoded_len).sum();
        if raw > MAX_RAW_LEN as usize {
            return refuse(
                ReplicatorError::InvalidSubmission(format!(
                    "{raw} raw bytes exceed the frame limit {MAX_RAW_LEN}"
                )),
                changes,
            );
        }
        if let Some(e) = self.shared.fenced_error() {
            return refuse(e, changes);
        }
        let sh = &self.shared;
        let pending = sh.journal.pending_bytes() + sh.queued_bytes.load(Ordering::SeqCst);
        {
            let mut full = sh.journal_full.lock().unwrap_or_else(|p| p.into_inner());
            // An empty journal always takes one submission (it is bounded by the frame
            // limit), so a write larger than the limit is not refused forever.
            if pending > 0 && pending + raw as u64 > sh.journal_max {
                if !*full {
                    tracing::warn!(group = %sh.group, pending, max = sh.journal_max, "journal full: refusing intake");
                }
                *full = true;
                let error = ReplicatorError::JournalFull {
                    pending,
                    max: sh.journal_max,
                };
                return refuse(error, changes);
            }
            *full = false;
        }
        let data: u64 = changes.iter().map(|c| c.data.len() as u64).sum();
        sh.queued_bytes.fetch_add(raw as u64, Ordering::SeqCst);
        let (done, wait) = oneshot::channel();
        let closed = || ReplicatorError::Closed(sh.group.clone());
        let Some(tx) = self.tx.as_ref() else {
            sh.queued_bytes.fetch_sub(raw as u64, Ordering::SeqCst);
            return refuse(closed(), changes);
        };
        let submission = Submission {
            changes,
            raw_bytes: raw as u64,
            give_back,
            hold,
            done,
        };
        if let Err(mpsc::error::SendError(back)) = tx.send(submission).await {
            sh.queued_bytes.fetch_sub(raw as u64, Ordering::SeqCst);
            return refuse(closed(), back.changes);
        }
        sh.bytes_raw_total.fetch_add(data, Ordering::Relaxed);
        let lost = |error| NotJournaled {
            error,
            changes: Vec::new(),
        };
        wait.await.map_err(|_| lost(closed()))?.map_err(lost)
    }

    /// The second half of [`Self::submit`], the last step before a write is acknowledged: in
    /// sync mode waits until the replica has `seq` durable (or, after `sync_timeout`, until
    /// the coordinators agreed to degrade); returns at once in async mode. Then checks, right
    /// before the acknowledgement, that the lease (when the pipeline has one, see
    /// [`Self::set_lease`]) is still live and the group not fenced. A write still waiting when
    /// the lease ends is answered with an error then (within `lease_ttl` of the coordinators
    /// going silent), never left waiting. A write before the pipeline's first lease waits for
    /// it (bounded) first.
    ///
    /// # Errors
    /// [`ReplicatorError::Fenced`] (fenced, an image write failed, or the lease ended) or
    /// [`ReplicatorError::Closed`].
    pub async fn await_sync(&self, seq: Seq) -> Result<()> {
        let sh = &self.shared;
        sh.first_lease().await;
        let waited = tokio::select! {
            biased;
            r = self.wait_safe(seq) => r,
            e = sh.lease_end(seq) => Err(e),
        };
        durability::checked(waited, sh.ack_refusal(seq, sh.mode == Mode::Sync))
    }

    /// Waits until `seq` is as safe as the mode promises (see [`Self::await_sync`]).
    async fn wait_safe(&self, seq: Seq) -> Result<()> {
        let sh = &self.shared;
        if sh.mode == Mode::Sync {
            if sh.sync_degraded.load(Ordering::SeqCst) {
                if *sh.durable_replica.borrow() >= Seq(seq.0.saturating_sub(1)) {
                    // The replica caught up: back to synchronous acknowledgements.
                    sh.sync_degraded.store(false, Ordering::SeqCst);
                    sh.degrade_wanted.send_replace(false);
                    tracing::info!(group = %sh.group, "replica caught up: sync acknowledgements resume");
                    self.wait_replica_durable(seq).await?;
                }
                return Ok(());
            }
            match sh.sync_timeout {
                None => self.wait_replica_durable(seq).await?,
                Some(t) => {
                    if tokio::time::timeout(t, self.wait_replica_durable(seq))
                        .await
                        .is_err()
                    {
                        self.degrade_after_timeout(seq, t).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The replica did not acknowledge `seq` within the sync timeout `t`: acknowledge on the
    /// local journal from now on, but only once the coordinators agreed (when there are any);
    /// until then keep waiting for the replica. Errors as [`Self::wait_replica_durable`].
    async fn degrade_after_timeout(&self, seq: Seq, t: Duration) -> Result<()> {
        let sh = &self.shared;
        if sh.has_consent && !sh.sync_degraded.load(Ordering::SeqCst) {
            sh.degrade_wanted.send_replace(true);
            let mut granted = sh.degrade_granted.subscribe();
            tokio::select! {
                r = self.wait_replica_durable(seq) => {
                    if !sh.sync_degraded.load(Ordering::SeqCst) {
                        sh.degrade_wanted.send_replace(false);
                    }
                    return r;
                }
                r = granted.wait_for(|g| *g) => {
                    if r.is_err() {
                        return Err(ReplicatorError::Closed(sh.group.clone()));
                    }
                }
            }
        }
        if !sh.sync_degraded.swap(true, Ordering::SeqCst) {
            tracing::warn!(group = %sh.group, timeout_ms = t.as_millis() as u64, consent = sh.has_consent,
                "replica did not acknowledge in time: sync group degraded, writes acknowledged on the local journal");
        }
        Ok(())
    }

    /// Waits until the replica has acknowledged `seq` durable.
    ///
    /// # Errors
    /// [`ReplicatorError::Fenced`] if the pipeline is fenced meanwhile,
    /// [`ReplicatorError::Closed`] if it shuts down.
    pub async fn wait_replica_durable(&self, seq: Seq) -> Result<()> {
        let sh = &self.shared;
        let mut acked = sh.durable_replica.subscribe();
        let mut fenced = sh.fenced.subscribe();
        let mut shutdown = sh.shutdown.subscribe();
        tokio::select! {
            r = acked.wait_for(|s| *s >= seq) => r.map(|_| ()).map_err(|_| ReplicatorError::Closed(sh.group.clone())),
            _ = fenced.wait_for(|f| f.is_some()) => Err(sh.fenced_error().unwrap_or_else(|| ReplicatorError::Closed(sh.group.clone()))),
            _ = shutdown.wait_for(|s| *s) => Err(ReplicatorError::Closed(sh.group.clone())),
        }
    }

    /// The highest seq the replica has acknowledged durable, as it changes.
    pub fn replica_durable(&self) -> tokio::sync::watch::Receiver<Seq> {
        self.shared.durable_replica.subscribe()
    }

    /// A snapshot of progress; RPO now = now − `oldest_unacked_capture_ms`.
    pub fn progress(&self) -> Progress {
        let sh = &self.shared;
        let last = *sh.durable_local.borrow();
        let acked = *sh.durable_replica.borrow();
        let overflow = *sh.overflow.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = if acked >= last {
            None
        } else {
            let journal = sh.journal.oldest_unacked_capture_ms();
            match overflow.and_then(|o| o.oldest_ms) {
                Some(o) => Some(journal.map_or(o, |j| j.min(o))),
                None => journal,
            }
        };
        let mut reasons = Vec::new();
        if let Some(o) = overflow {
            reasons.push(format!(
                "journal overflow: {} bytes of frames through seq {} dropped at the {} byte limit; the replica is resynced by merkle diff",
                o.dropped_bytes, o.through, sh.journal_max
            ));
        }
        if let Some(f) = sh.fenced.borrow().as_ref() {
            reasons.push(format!("fenced: {f}"));
        }
        if !durability::lease_live(sh.lease_deadline(), std::time::Instant::now()) {
            reasons.push("lease not live: writes are not acknowledged".to_owned());
        }
        if sh.sync_degraded.load(Ordering::SeqCst) {
            reasons.push(
                "sync degraded: the replica is not acknowledging; writes are acknowledged on the local journal only"
                    .to_owned(),
            );
        } else if *sh.degrade_wanted.borrow() {
            reasons.push(
                "sync: the replica is not acknowledging; writes wait until it does or the coordinators agree to degrade"
                    .to_owned(),
            );
        }
        if *sh.journal_full.lock().unwrap_or_else(|p| p.into_inner()) {
            reasons.push(format!("journal full (limit {} bytes)", sh.journal_max));
        }
        if let Some(p) = sh
            .ship_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            reasons.push(p.clone());
        }
        Progress {
            epoch: sh.epoch(),
            last_captured_seq: last,
            durable_on_replica_seq: acked,
            oldest_unacked_capture_ms: oldest,
            bytes_pending: sh.journal.pending_bytes(),
            bytes_raw_total: sh.bytes_raw_total.load(Ordering::Relaxed),
            bytes_shipped_total: sh.bytes_shipped_total.load(Ordering::Relaxed),
            zstd_level: sh.zstd_level.load(Ordering::Relaxed),
            frames_shipped: sh.frames_shipped.load(Ordering::Relaxed),
            state: if reasons.is_empty() {
                GroupState::Protected
            } else {
                GroupState::Degraded
            },
            reason: reasons.join("; "),
        }
    }

    /// Whether intake is being refused because the journal is at its size limit.
    pub fn journal_full(&self) -> bool {
        *self
            .shared
            .journal_full
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every journaled frame the replica has not acknowledged, so intake can go on when
    /// the journal is full: the group stays degraded until the replica, which can no longer
    /// be sent those frames, has been resynced by merkle diff past them (the shipper asks it
    /// to). Returns the highest dropped seq.
    ///
    /// The caller must guarantee that every dropped change is durable in the local images
    /// (no write between journal and image, images fdatasync'd): afterwards they exist nowhere
    /// else on this site.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] writing the journal metadata.
    pub async fn drop_unacked(&self) -> Result<Seq> {
        let sh = &self.shared;
        let last = *sh.durable_local.borrow();
        let oldest = sh.journal.oldest_unacked_capture_ms();
        let pending = sh.journal.pending_bytes();
        let j = Arc::clone(&sh.journal);
        tokio::task::spawn_blocking(move || j.trim_through(last))
            .await
            .map_err(|e| ReplicatorError::Task(e.to_string()))??;
        {
            let mut o = sh.overflow.lock().unwrap_or_else(|p| p.into_inner());
            let prev = o.take();
            *o = Some(Overflow {
                through: last,
                oldest_ms: match (prev.and_then(|p| p.oldest_ms), oldest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                dropped_bytes: prev.map_or(0, |p| p.dropped_bytes) + pending,
            });
        }
        sh.images_durable_through(last);
        sh.note_trimmed();
        tracing::warn!(group = %sh.group, through = last.0, bytes = pending, max = sh.journal_max,
            "journal full: dropped the unacknowledged frames (they are in the local images); the replica will be resynced by merkle diff");
        Ok(last)
    }

    /// Starts a new epoch (after a promotion): stored durably, stamped on every later frame,
    /// and lifts a fence.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] writing the journal metadata.
    pub async fn set_epoch(&self, epoch: Epoch) -> Result<()> {
        let j = Arc::clone(&self.shared.journal);
        tokio::task::spawn_blocking(move || j.set_epoch(epoch))
            .await
            .map_err(|e| ReplicatorError::Task(e.to_string()))??;
        self.shared.epoch.store(epoch.0, Ordering::SeqCst);
        // An image write failure is not lifted by a new epoch: the image lacks a journaled
        // write until the journal is replayed onto it.
        if self.shared.image_failure().is_none() {
            self.shared.fenced.send_replace(None);
        }
        Ok(())
    }

    /// Gives the pipeline the fdatasync of the group's volume images, run before a trim
    /// removes frames whose writes only the journal holds durably (see
    /// [`crate::pipeline`]'s `durability` room). Without one the journal is trimmed as soon
    /// as the replica acknowledges (a group with no local images to make durable).
    pub fn set_image_sync(&self, sync: Option<ImageSync>) {
        self.shared.set_image_sync(sync);
    }

    /// Gives the pipeline the lease it acknowledges writes under: no write is acknowledged
    /// after its deadline (see [`Self::await_sync`]). Without one (`None`, the default) writes
    /// are acknowledged with no lease (tests, tools without coordinators).
    pub fn set_lease(&self, lease: Option<LeaseDeadline>) {
        self.shared.set_lease(lease);
    }

    /// How many times the images were fdatasync'ed before a journal trim.
    pub fn image_syncs(&self) -> u64 {
        self.shared.image_syncs()
    }

    /// Trims the journal through `seq`, acknowledged durable by the replica, after making the
    /// images durable through it (see [`Self::set_image_sync`]). The shipper calls it on every
    /// acknowledgement.
    pub async fn trim_acked(&self, seq: Seq) {
        self.shared.trim_acked(seq).await;
    }

    /// Refuses every later submission (the lease was lost); sync-mode waiters fail.
    pub fn fence(&self, reason: &str) {
        self.shared.fence(reason.to_owned());
    }

    /// Stops intake, lets queued submissions finish, stops the shipper(s) and the writer.
    pub async fn close(mut self) {
        self.tx = None;
        if let Some(b) = self.batcher.take() {
            let _ = b.await;
        }
        if let Some(w) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
        self.shared.shutdown.send_replace(true);
    }
}

impl Drop for GroupPipeline {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}
