//! The primary side of one group: captured changes get seqs, are batched into frames, encoded
//! off the reactor, journaled with group commit, and acknowledged to the caller when durable
//! locally (async mode) or on the replica (sync mode).
//!
//! Tasks: `submit` → bounded queue → batcher task (assigns seqs, lingers up to
//! `batch_max_delay` only while the writer is busy, encodes in `spawn_blocking`) → bounded
//! queue → one writer thread (drains what is queued, one [`Journal::append`] = one fdatasync,
//! completes every waiter). The shipper (the `ship` room, which depends on this one) reads the journal from there.

use crate::error::{ReplicatorError, Result};
use crate::journal::{Journal, NewFrame, DEFAULT_SEGMENT_BYTES};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::frame::{Change, Encoder, FrameMeta, DEFAULT_LEVEL, MAX_RAW_LEN};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// When `submit` returns: DRBD protocol A (async) or C (sync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Return once the changes are durable in the local journal.
    Async,
    /// Return once the replica has acknowledged the changes durable.
    Sync,
}

/// The future a [`SyncConsent`] answers with.
pub type ConsentFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::result::Result<(), String>> + Send + 'static>,
>;

/// Asks the coordinators to agree before a sync group acknowledges writes without its
/// replica, and tells them when it is synchronous again.
///
/// Why: a primary that degrades on its own, cut off from the coordinators, acknowledges
/// writes the replica never gets, and the majority then promotes that replica: acknowledged
/// writes are lost. With consent committed first, the coordinators know not to fail over
/// automatically; without it, writes keep waiting (until the replica answers or the lease
/// ends and fences the pipeline).
pub trait SyncConsent: Send + Sync + std::fmt::Debug {
    /// Commits "acknowledging alone" (`degraded`) or "synchronous again" (`!degraded`) for
    /// `epoch`; `Err` with the reason when refused or unreachable (it is asked again).
    fn ask(&self, epoch: Epoch, degraded: bool) -> ConsentFuture;
}

/// Settings of one group's pipeline.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The group name (its [`GroupId`] is derived from it).
    pub group: String,
    /// The epoch to write frames in (an existing journal keeps a newer stored epoch).
    pub epoch: Epoch,
    /// Directory of the journal.
    pub dir: PathBuf,
    /// Most bytes the journal may hold unacknowledged before intake is refused.
    pub journal_max: u64,
    /// A frame is closed once its raw changes reach this many bytes.
    pub batch_max_bytes: usize,
    /// Longest a batch lingers for more submissions while the writer is busy.
    pub batch_max_delay: Duration,
    /// Async or sync acknowledgement.
    pub mode: Mode,
    /// zstd level for frames.
    pub zstd_level: i32,
    /// Submissions that may wait in the intake queue (backpressure beyond that).
    pub queue_depth: usize,
    /// Size at which journal segments rotate.
    pub segment_bytes: u64,
    /// Sync mode: how long a write waits for the replica's acknowledgement before the group
    /// degrades to acknowledging on the local journal alone (the replica is unreachable).
    /// `None` blocks writes until the replica answers. Sync resumes once the replica has
    /// caught up.
    pub sync_timeout: Option<Duration>,
    /// Sync mode: who must agree before the group degrades after `sync_timeout`. `None`
    /// degrades without asking (a pipeline with no coordinators: tests, benches).
    pub sync_consent: Option<Arc<dyn SyncConsent>>,
}

impl PipelineConfig {
    /// Defaults: 1 GiB journal, 1 MiB batches, 2 ms linger, async, zstd level 1.
    pub fn new(group: &str, dir: impl Into<PathBuf>) -> PipelineConfig {
        PipelineConfig {
            group: group.to_owned(),
            epoch: Epoch(1),
            dir: dir.into(),
            journal_max: 1 << 30,
            batch_max_bytes: 1 << 20,
            batch_max_delay: Duration::from_millis(2),
            mode: Mode::Async,
            zstd_level: DEFAULT_LEVEL,
            queue_depth: 256,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync_timeout: None,
            sync_consent: None,
        }
    }
}

/// Health of a group's replication as the primary sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// Shipping normally.
    Protected,
    /// Journal full, replica refusing, unreachable, or fenced: see `reason`.
    Degraded,
}

impl GroupState {
    /// The name used in heartbeats (`protected`, `degraded`).
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Protected => "protected",
            GroupState::Degraded => "degraded",
        }
    }
}

/// A snapshot of a group's replication progress (feeds heartbeats and RPO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Current epoch.
    pub epoch: Epoch,
    /// Highest seq durable in the local journal.
    pub last_captured_seq: Seq,
    /// Highest seq the replica acknowledged durable.
    pub durable_on_replica_seq: Seq,
    /// Capture time of the oldest change not yet durable on the replica (None: caught up).
    /// RPO now = now − this.
    pub oldest_unacked_capture_ms: Option<i64>,
    /// Encoded bytes journaled but not acknowledged.
    pub bytes_pending: u64,
    /// Raw change data bytes submitted since open.
    pub bytes_raw_total: u64,
    /// Encoded frame bytes sent to the replica since open (resends included).
    pub bytes_shipped_total: u64,
    /// Frames sent to the replica since open (resends included).
    pub frames_shipped: u64,
    /// Protected or degraded.
    pub state: GroupState,
    /// Why degraded (empty when protected).
    pub reason: String,
}

impl Progress {
    /// RPO at `now_ms`, in milliseconds (0 when caught up).
    pub fn rpo_ms(&self, now_ms: i64) -> i64 {
        self.oldest_unacked_capture_ms
            .map_or(0, |t| (now_ms - t).max(0))
    }
}

/// What a submitter hears once its changes are durable: the seq of its last change, and its
/// changes back when it asked for them ([`GroupPipeline::journal_and_return`]).
type Done = oneshot::Sender<Result<(Seq, Vec<Change>)>>;

struct Submission {
    changes: Vec<Change>,
    raw_bytes: u64,
    /// Hand the changes back once durable (the caller still needs their data) instead of
    /// dropping them once encoded.
    give_back: bool,
    done: Done,
}

/// A submitter waiting for the journal: its channel, the seq of its last change, and the
/// changes it gets back (empty unless it asked for them).
type Waiter = (Done, Seq, Vec<Change>);

struct WriteJob {
    frame: NewFrame,
    raw_bytes: u64,
    waiters: Vec<Waiter>,
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
    journal_max: u64,
    mode: Mode,
    epoch: AtomicU64,
    pub(crate) fenced: watch::Sender<Option<String>>,
    pub(crate) durable_local: watch::Sender<Seq>,
    pub(crate) durable_replica: watch::Sender<Seq>,
    queued_bytes: AtomicU64,
    inflight_frames: AtomicUsize,
    bytes_raw_total: AtomicU64,
    pub(crate) bytes_shipped_total: AtomicU64,
    pub(crate) frames_shipped: AtomicU64,
    journal_full: Mutex<bool>,
    sync_timeout: Option<Duration>,
    sync_degraded: std::sync::atomic::AtomicBool,
    /// Whether the pipeline wants the coordinators to hold it degraded (`true`) or not.
    degrade_wanted: watch::Sender<bool>,
    /// What the coordinators last committed (`true`: degraded, consent given).
    degrade_granted: watch::Sender<bool>,
    has_consent: bool,
    pub(crate) ship_problem: Mutex<Option<String>>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Set by [`GroupPipeline::drop_unacked`] until the replica is past `through`.
    overflow: Mutex<Option<Overflow>>,
}

/// Frames dropped from a full journal: the replica must be resynced past `through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overflow {
    /// Highest dropped seq.
    through: Seq,
    /// Capture time of the oldest change dropped (keeps RPO honest while it is missing).
    oldest_ms: Option<i64>,
    /// Encoded bytes dropped, over every overflow since the replica was last in step.
    dropped_bytes: u64,
}

impl Shared {
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

    fn fenced_error(&self) -> Option<ReplicatorError> {
        self.fenced
            .borrow()
            .as_ref()
            .map(|reason| ReplicatorError::Fenced {
                epoch: self.epoch(),
                reason: reason.clone(),
            })
    }
}

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
        let last = Seq(journal.next_seq().0 - 1);
        let trimmed = journal.trimmed_through();
        let shared = Arc::new(Shared {
            group: cfg.group.clone(),
            group_id,
            epoch: AtomicU64::new(journal.epoch().0),
            journal: Arc::clone(&journal),
            journal_max: cfg.journal_max,
            mode: cfg.mode,
            fenced: watch::channel(None).0,
            durable_local: watch::channel(last).0,
            durable_replica: watch::channel(trimmed).0,
            queued_bytes: AtomicU64::new(0),
            inflight_frames: AtomicUsize::new(0),
            bytes_raw_total: AtomicU64::new(0),
            bytes_shipped_total: AtomicU64::new(0),
            frames_shipped: AtomicU64::new(0),
            journal_full: Mutex::new(false),
            sync_timeout: cfg.sync_timeout,
            sync_degraded: std::sync::atomic::AtomicBool::new(false),
            degrade_wanted: watch::channel(false).0,
            degrade_granted: watch::channel(false).0,
            has_consent: cfg.sync_consent.is_some(),
            ship_problem: Mutex::new(None),
            shutdown: watch::channel(false).0,
            overflow: Mutex::new(None),
        });
        if let Some(consent) = cfg.sync_consent.clone() {
            tokio::spawn(consent_loop(Arc::clone(&shared), consent));
        }
        let encoder = Encoder::new(cfg.zstd_level)?;
        let (tx, rx) = mpsc::channel(cfg.queue_depth.max(1));
        let (wtx, wrx) = mpsc::channel(4);
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
            wtx,
            encoder,
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
        self.intake(changes, false)
            .await
            .map(|(seq, _)| seq)
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
        self.intake(changes, true).await
    }

    /// Checks a submission at intake (handing the changes back when refused), queues it for
    /// the batcher and waits until it is durable in the journal.
    async fn intake(
        &self,
        changes: Vec<Change>,
        give_back: bool,
    ) -> std::result::Result<(Seq, Vec<Change>), NotJournaled> {
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

    /// The second half of [`Self::submit`]: in sync mode waits until the replica has `seq`
    /// durable (or, after `sync_timeout`, until the coordinators agreed to degrade); returns at
    /// once in async mode.
    ///
    /// # Errors
    /// [`ReplicatorError::Fenced`] or [`ReplicatorError::Closed`] while waiting.
    pub async fn await_sync(&self, seq: Seq) -> Result<()> {
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
        self.shared.fenced.send_replace(None);
        Ok(())
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

/// Brings the coordinators' view of the degradation in line with what the pipeline wants,
/// one question at a time, retrying refusals and unreachable coordinators, until shutdown.
async fn consent_loop(sh: Arc<Shared>, consent: Arc<dyn SyncConsent>) {
    let mut wanted = sh.degrade_wanted.subscribe();
    let mut shutdown = sh.shutdown.subscribe();
    let mut failures = 0u32;
    loop {
        let want = *wanted.borrow_and_update();
        if want == *sh.degrade_granted.borrow() {
            tokio::select! {
                r = wanted.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            continue;
        }
        let asked = tokio::select! {
            r = consent.ask(sh.epoch(), want) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match asked {
            Ok(()) => {
                failures = 0;
                tracing::info!(group = %sh.group, degraded = want, "coordinators committed the sync degradation change");
                sh.degrade_granted.send_replace(want);
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(group = %sh.group, degraded = want, failures, "coordinators did not commit the sync degradation change: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

async fn batcher_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Submission>,
    wtx: mpsc::Sender<WriteJob>,
    encoder: Encoder,
    mut next_seq: Seq,
    max_bytes: usize,
    max_delay: Duration,
) {
    let mut encoder = Some(encoder);
    let mut carry: Option<Submission> = None;
    loop {
        let first = match carry.take() {
            Some(s) => s,
            None => match rx.recv().await {
                Some(s) => s,
                None => break,
            },
        };
        let mut bytes = first.raw_bytes as usize;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + max_delay;
        while bytes < max_bytes {
            let next = match rx.try_recv() {
                Ok(s) => Some(s),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if max_delay.is_zero() || shared.inflight_frames.load(Ordering::SeqCst) == 0 {
                        None
                    } else {
                        tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                }
            };
            let Some(s) = next else { break };
            if bytes + s.raw_bytes as usize > MAX_RAW_LEN as usize {
                carry = Some(s);
                break;
            }
            bytes += s.raw_bytes as usize;
            batch.push(s);
        }
        let first_seq = next_seq;
        let mut changes = Vec::new();
        // (channel, last seq, number of changes, give back?) per submission, in batch order.
        let mut owners = Vec::with_capacity(batch.len());
        let mut raw_bytes = 0;
        for s in batch {
            let n = s.changes.len();
            next_seq = Seq(next_seq.0 + n as u64);
            owners.push((s.done, Seq(next_seq.0 - 1), n, s.give_back));
            raw_bytes += s.raw_bytes;
            changes.extend(s.changes);
        }
        let meta = FrameMeta {
            group: shared.group_id,
            epoch: shared.epoch(),
            first_seq,
        };
        let Some(mut enc) = encoder.take() else { break };
        let oldest = changes.iter().map(|c| c.captured_ms).min().unwrap_or(0);
        let joined = tokio::task::spawn_blocking(move || {
            let r = enc.encode(meta, &changes);
            (enc, r, changes)
        })
        .await;
        let (enc, encoded, changes) = match joined {
            Ok(x) => x,
            Err(e) => {
                let waiters = give_back(owners, Vec::new());
                fail_waiters(waiters, &ReplicatorError::Task(e.to_string()));
                break;
            }
        };
        // Moves (never copies) each change back to the submitter that wants it; the others
        // are dropped here, once encoded, as before.
        let waiters = give_back(owners, changes);
        encoder = Some(enc);
        let bytes = match encoded {
            Ok(b) => b,
            Err(e) => {
                next_seq = first_seq;
                shared.queued_bytes.fetch_sub(raw_bytes, Ordering::SeqCst);
                fail_waiters(waiters, &ReplicatorError::Frame(e));
                continue;
            }
        };
        shared.inflight_frames.fetch_add(1, Ordering::SeqCst);
        let job = WriteJob {
            frame: NewFrame {
                bytes,
                first_seq,
                last_seq: Seq(next_seq.0 - 1),
                oldest_capture_ms: oldest,
            },
            raw_bytes,
            waiters,
        };
        if wtx.send(job).await.is_err() {
            break;
        }
    }
}

/// Splits a batch's changes back among its submitters, in batch order: a submitter that asked
/// for its changes gets them (moved), the others get an empty list.
fn give_back(owners: Vec<(Done, Seq, usize, bool)>, changes: Vec<Change>) -> Vec<Waiter> {
    let mut rest = changes.into_iter();
    owners
        .into_iter()
        .map(|(done, seq, n, wants)| {
            let mine: Vec<Change> = rest.by_ref().take(n).collect();
            (done, seq, if wants { mine } else { Vec::new() })
        })
        .collect()
}

fn fail_waiters(waiters: Vec<Waiter>, e: &ReplicatorError) {
    for (w, _, _) in waiters {
        let _ = w.send(Err(ReplicatorError::Task(e.to_string())));
    }
}

fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<WriteJob>) {
    while let Some(job) = rx.blocking_recv() {
        let mut jobs = vec![job];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        let frames: Vec<NewFrame> = jobs
            .iter_mut()
            .map(|j| NewFrame {
                bytes: std::mem::take(&mut j.frame.bytes),
                first_seq: j.frame.first_seq,
                last_seq: j.frame.last_seq,
                oldest_capture_ms: j.frame.oldest_capture_ms,
            })
            .collect();
        let result = shared.journal.append(&frames);
        let raw: u64 = jobs.iter().map(|j| j.raw_bytes).sum();
        shared.queued_bytes.fetch_sub(raw, Ordering::SeqCst);
        shared
            .inflight_frames
            .fetch_sub(jobs.len(), Ordering::SeqCst);
        match result {
            Ok(()) => {
                if let Some(f) = frames.last() {
                    shared.durable_local.send_replace(f.last_seq);
                }
                for j in jobs {
                    for (w, seq, changes) in j.waiters {
                        let _ = w.send(Ok((seq, changes)));
                    }
                }
            }
            Err(e) => {
                tracing::error!(group = %shared.group, error = %e, "journal append failed");
                shared.fence(format!("journal append failed: {e}"));
                for j in jobs {
                    fail_waiters(j.waiters, &e);
                }
                // Seqs are now out of step with the journal: stop taking work.
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(offset: u64, len: usize, byte: u8) -> Change {
        Change::write("disk0", offset, vec![byte; len], 0)
    }

    #[tokio::test]
    async fn journaled_changes_come_back_without_their_data_being_copied() {
        let dir = tempfile::tempdir().unwrap();
        let p = GroupPipeline::open(PipelineConfig::new("g", dir.path()))
            .await
            .unwrap();
        // 4 MiB: the buffer that comes back is the one that went in (same heap address).
        let change = write(0, 4 << 20, 0xab);
        let sent = change.data.as_ptr();
        let (seq, back) = p.journal_and_return(vec![change]).await.unwrap();
        assert_eq!(seq, Seq(1));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].data.as_ptr(), sent, "the payload was copied");
        assert!(back[0].data.iter().all(|&b| b == 0xab));
        // Durable before it came back.
        assert_eq!(*p.shared.durable_local.borrow(), Seq(1));
    }

    #[tokio::test]
    async fn batched_submitters_each_get_their_own_changes_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(
            GroupPipeline::open(PipelineConfig::new("g", dir.path()))
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for i in 0..16u8 {
            let p = Arc::clone(&p);
            let give = i % 2 == 0;
            tasks.push(tokio::spawn(async move {
                let changes = vec![write(u64::from(i) * 4096, 4096, i); 1 + usize::from(i % 3)];
                let n = changes.len();
                let (_, back) = if give {
                    p.journal_and_return(changes).await.unwrap()
                } else {
                    (p.submit_journaled(changes).await.unwrap(), Vec::new())
                };
                (i, give, n, back)
            }));
        }
        for t in tasks {
            let (i, give, n, back) = t.await.unwrap();
            let want = if give { n } else { 0 };
            assert_eq!(back.len(), want, "#{i}: expect {want} changes back");
            for c in back {
                assert_eq!(c.offset, u64::from(i) * 4096, "#{i}: someone else's change");
                assert!(c.data.iter().all(|&b| b == i), "#{i}: wrong data");
            }
        }
    }

    #[tokio::test]
    async fn a_change_refused_by_a_full_journal_comes_back_for_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = PipelineConfig::new("g", dir.path());
        cfg.journal_max = 64 << 10;
        let p = GroupPipeline::open(cfg).await.unwrap();
        // An empty journal takes one submission whatever its size; the next is refused.
        // Incompressible bytes, so the journal really holds more than its limit.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..128 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let first = Change::write("disk0", 0, noise, 0);
        p.journal_and_return(vec![first]).await.unwrap();
        let change = write(0, 4096, 2);
        let sent = change.data.as_ptr();
        let Err(refused) = p.journal_and_return(vec![change]).await else {
            panic!("a write past journal_max was journaled");
        };
        assert!(
            matches!(refused.error, ReplicatorError::JournalFull { .. }),
            "expect JournalFull got {:?}",
            refused.error
        );
        assert_eq!(refused.changes.len(), 1);
        assert_eq!(refused.changes[0].data.as_ptr(), sent);
    }
}
