//! The pipeline's tasks: the batcher (assigns seqs, batches, encodes off the reactor), the one
//! journal writer thread (one write, released to the shipper, then one fdatasync, then every
//! waiter), and the loop that brings the coordinators' view of a sync degradation in line with
//! the pipeline's.

use crate::error::ReplicatorError;
use crate::journal::NewFrame;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tandem_core::frame::{check_batch, Change, Encoder, FrameMeta, MAX_CHANGES, MAX_RAW_LEN};
use tandem_core::ids::Seq;
use tokio::sync::mpsc;

use super::adapt;
use super::config::SyncConsent;
use super::durability::ImageHold;
use super::shared::{Done, Shared, Submission, Waiter, WriteJob};

/// Brings the coordinators' view of the degradation in line with what the pipeline wants,
/// one question at a time, retrying refusals and unreachable coordinators, until shutdown.
pub(super) async fn consent_loop(sh: Arc<Shared>, consent: Arc<dyn SyncConsent>) {
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

/// Under `compression = "auto"`: every [`adapt::TICK`] looks at the backlog the link leaves
/// (encoded bytes of the journaled frames the shipper has not sent) and sets the level the next
/// frames are sealed with, until shutdown.
pub(super) async fn adapt_loop(sh: Arc<Shared>) {
    let mut shutdown = sh.shutdown.subscribe();
    let mut adapt = adapt::Adapt::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(adapt::TICK) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let from = Seq(sh
            .ship_next
            .load(Ordering::Relaxed)
            .max(sh.journal.trimmed_through().0 + 1));
        let backlog = sh.journal.bytes_from(from, adapt::BACKLOG_CAP);
        let before = sh.zstd_level.load(Ordering::Relaxed);
        let level = adapt.observe(backlog);
        if level != before {
            tracing::info!(group = %sh.group, level, backlog, "compression: level changed (auto)");
            sh.zstd_level.store(level, Ordering::Relaxed);
        }
    }
}

/// Collects submissions into batches and gives each its seqs, lingering up to `max_delay`
/// for more only while earlier frames are still on their way to the journal; sends each batch
/// to the encoders ([`encode_job`], run in parallel by [`super::ordered`], which keeps their
/// order). A submission the codec would refuse is refused alone, before it takes a seq: seqs
/// once given cannot be taken back from the frames encoded after it.
pub(super) async fn batcher_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Submission>,
    etx: mpsc::Sender<EncodeJob>,
    mut next_seq: Seq,
    max_bytes: usize,
    max_delay: Duration,
) {
    let mut carry: Option<Submission> = None;
    loop {
        let first = match carry.take() {
            Some(s) => s,
            None => match rx.recv().await {
                Some(s) => s,
                None => break,
            },
        };
        let Some(first) = admit(&shared, first) else {
            continue;
        };
        let mut bytes = first.raw_bytes as usize;
        let mut count = first.changes.len();
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
            let Some(s) = admit(&shared, s) else {
                continue;
            };
            if bytes + s.raw_bytes as usize > MAX_RAW_LEN as usize
                || count + s.changes.len() > MAX_CHANGES as usize
            {
                carry = Some(s);
                break;
            }
            bytes += s.raw_bytes as usize;
            count += s.changes.len();
            batch.push(s);
        }
        let job = seal(&shared, batch, &mut next_seq);
        shared.inflight_frames.fetch_add(1, Ordering::SeqCst);
        if let Err(mpsc::error::SendError(job)) = etx.send(job).await {
            let e = ReplicatorError::Closed(shared.group.clone());
            fail_waiters(give_back(job.owners, Vec::new()), &e);
            break;
        }
    }
}

/// Checks a submission as the codec will (see [`check_batch`]): refused alone, with its
/// queued bytes released, when the codec would refuse it.
fn admit(shared: &Shared, s: Submission) -> Option<Submission> {
    match check_batch(&s.changes) {
        Ok(_) => Some(s),
        Err(e) => {
            shared.queued_bytes.fetch_sub(s.raw_bytes, Ordering::SeqCst);
            let _ = s.done.send(Err(ReplicatorError::Frame(e)));
            None
        }
    }
}

/// Gives a batch its seqs from `next_seq` on (advancing it) and makes it an encode job.
fn seal(shared: &Shared, batch: Vec<Submission>, next_seq: &mut Seq) -> EncodeJob {
    let first_seq = *next_seq;
    let mut changes = Vec::with_capacity(batch.iter().map(|s| s.changes.len()).sum());
    let mut owners = Vec::with_capacity(batch.len());
    let mut raw_bytes = 0;
    for s in batch {
        let n = s.changes.len();
        *next_seq = Seq(next_seq.0 + n as u64);
        owners.push((s.done, Seq(next_seq.0 - 1), n, s.give_back, s.hold));
        raw_bytes += s.raw_bytes;
        changes.extend(s.changes);
    }
    EncodeJob {
        out: shared.take_spare_frame(),
        meta: FrameMeta {
            group: shared.group_id,
            epoch: shared.epoch(),
            first_seq,
        },
        last_seq: Seq(next_seq.0 - 1),
        oldest_capture_ms: changes.iter().map(|c| c.captured_ms).min().unwrap_or(0),
        changes,
        owners,
        raw_bytes,
        level: shared.zstd_level.load(Ordering::Relaxed),
    }
}

/// A batch with its seqs, on its way to an encoder.
pub(super) struct EncodeJob {
    /// The buffer to encode into (a journaled frame's, reused).
    out: Vec<u8>,
    meta: FrameMeta,
    last_seq: Seq,
    oldest_capture_ms: i64,
    changes: Vec<Change>,
    owners: Vec<Owner>,
    raw_bytes: u64,
    /// The level to encode at (0: raw), as the group's setting or `auto` had it at seal time.
    level: i32,
}

/// Encodes one batch (on the blocking pool, with one of the stage's encoders) and moves (never
/// copies) each change back to the submitter that wants it; the others are dropped here, once
/// encoded.
pub(super) fn encode_job(enc: &mut Encoder, job: EncodeJob) -> WriteJob {
    if let Err(e) = enc.set_level(job.level) {
        // The encoder keeps its level: the frame is still encoded, and decodes the same.
        tracing::warn!(level = job.level, error = %e, "zstd refused a level");
    }
    let encoded = enc.encode_into(job.meta, &job.changes, job.out);
    let waiters = give_back(job.owners, job.changes);
    let (bytes, failed) = match encoded {
        Ok(b) => (b, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    WriteJob {
        frame: NewFrame {
            bytes,
            first_seq: job.meta.first_seq,
            last_seq: job.last_seq,
            oldest_capture_ms: job.oldest_capture_ms,
        },
        failed,
        raw_bytes: job.raw_bytes,
        waiters,
    }
}

/// Below this many raw bytes a batch is encoded on the stage's own task when nothing else is
/// being encoded (see [`super::ordered::spawn_ordered`]): a lone small write skips the hop to
/// the blocking pool.
const SMALL_JOB_BYTES: u64 = 64 << 10;

/// Whether `job` is small enough to encode inline.
pub(super) fn small_job(job: &EncodeJob) -> bool {
    job.raw_bytes < SMALL_JOB_BYTES
}

/// A submission as the batcher tracks it: (channel, last seq, number of changes, give back?,
/// hold?).
type Owner = (Done, Seq, usize, bool, bool);

/// Splits a batch's changes back among its submitters, in batch order: a submitter that asked
/// for its changes gets them (moved), the others get an empty list.
fn give_back(owners: Vec<Owner>, changes: Vec<Change>) -> Vec<Waiter> {
    let mut rest = changes.into_iter();
    owners
        .into_iter()
        .map(|(done, seq, n, wants, hold)| {
            let mine: Vec<Change> = rest.by_ref().take(n).collect();
            (done, seq, if wants { mine } else { Vec::new() }, hold)
        })
        .collect()
}

fn fail_waiters(waiters: Vec<Waiter>, e: &ReplicatorError) {
    for (w, _, _, _) in waiters {
        let _ = w.send(Err(ReplicatorError::Task(e.to_string())));
    }
}

pub(super) fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<WriteJob>) {
    while let Some(job) = rx.blocking_recv() {
        let mut jobs = vec![job];
        while let Ok(j) = rx.try_recv() {
            jobs.push(j);
        }
        // A frame the encoder failed (zstd itself: the batcher refused what the codec checks)
        // leaves a hole in the seqs of the frames after it: journal those before it, then
        // fence and stop.
        let failed = jobs
            .iter()
            .position(|j| j.failed.is_some())
            .map(|i| jobs.split_off(i));
        if !jobs.is_empty() && !append_and_complete(&shared, jobs) {
            break;
        }
        if let Some(rest) = failed {
            let reason = rest
                .first()
                .and_then(|j| j.failed.as_ref())
                .map_or_else(String::new, ToString::to_string);
            shared.fence(format!("encoding a frame failed: {reason}"));
            let e = ReplicatorError::Task(format!("encoding a frame failed: {reason}"));
            for j in rest {
                shared.queued_bytes.fetch_sub(j.raw_bytes, Ordering::SeqCst);
                shared.inflight_frames.fetch_sub(1, Ordering::SeqCst);
                fail_waiters(j.waiters, &e);
            }
            break;
        }
    }
}

/// Failpoint `journal-before-fsync-shipped`: frames through `last` are written and released
/// to the shipper, their fdatasync not yet run. `lose` waits (up to 5 s) for the replica to
/// acknowledge them durable, then drops the journal's unsynced tail and aborts: a power loss
/// that leaves the replica holding seqs this primary lost (never acknowledged). `crash`
/// aborts at once; `eio` / `enospc` fail the sync.
fn shipped_before_sync(shared: &Shared, last: Seq) -> crate::error::Result<()> {
    use tandem_core::fault::{self, Injected};
    const NAME: &str = "journal-before-fsync-shipped";
    match fault::hit(NAME) {
        None => Ok(()),
        Some(Injected::Crash) => fault::crash(NAME),
        Some(Injected::LoseUnsynced) => {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while *shared.durable_replica.borrow() < last && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            eprintln!(
                "failpoint {NAME}: replica durable through {}, journal synced through {}",
                *shared.durable_replica.borrow(),
                *shared.journal_synced.borrow()
            );
            shared.journal.lose_unsynced();
            fault::crash(NAME)
        }
        Some(inj @ (Injected::Eio | Injected::Enospc)) => Err(ReplicatorError::io(
            "fdatasync",
            std::path::PathBuf::from("journal"),
            inj.io_error(NAME),
        )),
    }
}

/// Appends `jobs` to the journal and answers their waiters: writes the frames, lets the
/// shipper send them (`shippable`), then one fdatasync; the waiters hear only after it, so no
/// write is acknowledged before it is durable here (and, in sync mode, the acknowledgement
/// also waits for the replica). Returns false if the append failed (the group is fenced and
/// the waiters failed; frames already shipped were never acknowledged, see
/// [`crate::lineage::judge_tail`]).
fn append_and_complete(shared: &Arc<Shared>, mut jobs: Vec<WriteJob>) -> bool {
    let frames: Vec<NewFrame> = jobs
        .iter_mut()
        .map(|j| NewFrame {
            bytes: std::mem::take(&mut j.frame.bytes),
            first_seq: j.frame.first_seq,
            last_seq: j.frame.last_seq,
            oldest_capture_ms: j.frame.oldest_capture_ms,
        })
        .collect();
    let last = jobs.last().map(|j| j.frame.last_seq);
    let result = shared.journal.write(&frames).and_then(|()| {
        if let Some(last) = last {
            shared.shippable.send_replace(last);
            shipped_before_sync(shared, last)?;
        }
        shared.journal.sync()
    });
    if let (Ok(()), Some(last)) = (&result, last) {
        shared.journal_synced.send_replace(last);
    }
    for f in frames {
        shared.give_spare_frame(f.bytes);
    }
    let raw: u64 = jobs.iter().map(|j| j.raw_bytes).sum();
    shared.queued_bytes.fetch_sub(raw, Ordering::SeqCst);
    shared
        .inflight_frames
        .fetch_sub(jobs.len(), Ordering::SeqCst);
    match result {
        Ok(()) => {
            // Released to the shipper at once, or once the image writes of its holders
            // are done (`durability`).
            let gated: Vec<(Seq, usize)> = jobs
                .iter()
                .map(|j| {
                    let holds = j.waiters.iter().filter(|w| w.3).count();
                    (j.frame.last_seq, holds)
                })
                .collect();
            shared.journaled(&gated);
            for j in jobs {
                let frame = j.frame.last_seq;
                for (w, seq, changes, hold) in j.waiters {
                    let hold = hold.then(|| {
                        let gate: Arc<dyn super::durability::ImageGate> = shared.clone();
                        ImageHold::new(gate, frame, seq)
                    });
                    let _ = w.send(Ok((seq, changes, hold)));
                }
            }
            true
        }
        Err(e) => {
            tracing::error!(group = %shared.group, error = %e, "journal append failed");
            shared.fence(format!("journal append failed: {e}"));
            for j in jobs {
                fail_waiters(j.waiters, &e);
            }
            // Seqs are now out of step with the journal: stop taking work.
            false
        }
    }
}
