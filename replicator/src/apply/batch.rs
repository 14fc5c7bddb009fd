//! One batch of frames on the replica, in the durability order of the folder's header: check
//! each frame ([`classify`], then decode, then every change within its volume's size), record
//! the undo of its changes (with a history), fdatasync the history, THEN write the changes
//! ([`super::deferred`]), fdatasync every touched file, THEN persist the watermark, THEN
//! acknowledge.
//! Blocking file I/O under the group's lock.

use super::change::{apply_change, check_bounds};
use super::classify::{classify, Verdict};
use super::deferred::Deferred;
use super::group::{ReplicaGroup, StreamState};
use super::state::Inner;
use crate::error::{ReplicatorError, Result};
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use tandem_core::fault;
use tandem_core::frame::{Change, ChangeKind, Decoder, Frame, FrameError, FrameHeader};
use tandem_core::ids::Seq;
use tandem_core::proto::{ship_response, Ack, Refusal, ShipResponse};

impl ReplicaGroup {
    /// Checks and applies a batch of frames received in order on one stream, and returns the
    /// responses to send: a cumulative Ack (after files and watermark are durable) and at most
    /// one Refusal.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] when writing or syncing fails: nothing is acknowledged, and the
    /// in-memory watermark goes back to the durable one.
    pub fn receive_batch(
        &self,
        frames: Vec<Vec<u8>>,
        stream: &mut StreamState,
    ) -> Result<Vec<ShipResponse>> {
        let frames = frames.into_iter().map(Received::new).collect();
        self.receive_received(frames, stream)
    }

    /// As [`Self::receive_batch`], for frames whose payloads may have been decoded ahead
    /// ([`Received::decode`], off this group's lock and in parallel): a decoded payload is
    /// used where the frame would be decoded, so every check comes in the same order.
    ///
    /// # Errors
    /// As [`Self::receive_batch`].
    pub fn receive_received(
        &self,
        frames: Vec<Received>,
        stream: &mut StreamState,
    ) -> Result<Vec<ShipResponse>> {
        let mut guard = self.inner();
        let inner: &mut Inner = &mut guard;
        if inner.retired {
            return Err(ReplicatorError::Closed(self.name.clone()));
        }
        let durable = inner.persisted;
        let mut batch = Batch::default();
        for frame in frames {
            match self.receive_frame(inner, frame, durable, stream, &mut batch) {
                Ok(Flow::Next) => {}
                Ok(Flow::Stop) => break,
                Err(e) => {
                    rollback(inner);
                    return Err(e);
                }
            }
        }
        if let Err(e) = make_durable(inner, durable, &mut batch) {
            rollback(inner);
            return Err(e);
        }
        self.applied_frames
            .fetch_add(batch.frames_applied, Ordering::SeqCst);
        self.applied_changes
            .fetch_add(batch.changes_applied, Ordering::SeqCst);
        responses(inner, stream, batch)
    }

    /// Checks one frame and applies its new changes. An `Err` is an I/O failure: the caller
    /// rolls back to the durable watermark.
    fn receive_frame(
        &self,
        inner: &mut Inner,
        received: Received,
        durable: Seq,
        stream: &mut StreamState,
        batch: &mut Batch,
    ) -> Result<Flow> {
        let bytes = &received.bytes[..];
        let wm = inner.watermark;
        let refuse = |reason: String, fatal: bool| Refusal {
            seq: wm.0 + 1,
            reason,
            resume_from: wm.0 + 1,
            fatal,
        };
        let header = match FrameHeader::parse(bytes) {
            Ok(h) => h,
            Err(e) => {
                batch.refusal = Some(refuse(format!("bad frame header: {e}"), false));
                return Ok(Flow::Stop);
            }
        };
        let skip = match classify(&header, self.group_id, wm, inner.fence, &stream.jumps) {
            Verdict::WrongGroup => {
                batch.refusal = Some(refuse(
                    format!("frame of group {} sent to {}", header.meta.group, self.name),
                    true,
                ));
                return Ok(Flow::Stop);
            }
            Verdict::OldEpoch => {
                batch.refusal = Some(refuse(
                    format!(
                        "frame epoch {} is older than the fence {}",
                        header.meta.epoch, inner.fence
                    ),
                    true,
                ));
                return Ok(Flow::Stop);
            }
            Verdict::Duplicate => {
                batch.ack = true;
                return Ok(Flow::Next);
            }
            Verdict::Gap => {
                if !stream.awaiting_resend {
                    stream.awaiting_resend = true;
                    batch.refusal = Some(Refusal {
                        seq: header.meta.first_seq.0,
                        reason: format!(
                            "gap: frame starts at {}, watermark is {wm}",
                            header.meta.first_seq
                        ),
                        resume_from: wm.0 + 1,
                        fatal: false,
                    });
                }
                return Ok(Flow::Next);
            }
            Verdict::Apply { skip } => skip,
        };
        let decoded = match received.decoded {
            Some(d) => d,
            None => inner.decoder.decode_payload(header, bytes),
        };
        let mut frame = match decoded {
            Ok(f) => f,
            Err(e) => {
                stream.awaiting_resend = true;
                batch.refusal = Some(refuse(
                    format!("frame {}: {e}", header.meta.first_seq),
                    false,
                ));
                return Ok(Flow::Stop);
            }
        };
        stream.awaiting_resend = false;
        // Every change of the frame within its resource's size before any of it (the fence
        // included) touches a file.
        if let Err(e) = check_frame_bounds(inner, &header, &frame.changes, skip) {
            batch.refusal = Some(Refusal {
                seq: wm.0 + 1,
                reason: e.to_string(),
                resume_from: resume_mark(inner).0 + 1,
                fatal: true,
            });
            return Ok(Flow::Stop);
        }
        if header.meta.epoch > inner.fence {
            inner.persist_meta(durable, header.meta.epoch)?;
            inner.fence = header.meta.epoch;
        }
        if let Some(e) = self.apply_changes(inner, &header, &mut frame.changes, skip, batch)? {
            batch.refusal = Some(Refusal {
                seq: inner.watermark.0 + 1,
                reason: e.to_string(),
                resume_from: resume_mark(inner).0 + 1,
                fatal: true,
            });
            return Ok(Flow::Stop);
        }
        batch.frames_applied += 1;
        Ok(Flow::Next)
    }

    /// Applies a frame's changes from `skip` on, moving the in-memory watermark change by
    /// change. A change the replica refuses (unknown resource, unsupported or bad change) ends
    /// the frame and is returned as `Ok(Some(refused))`; `Err` is an I/O failure.
    fn apply_changes(
        &self,
        inner: &mut Inner,
        header: &FrameHeader,
        changes: &mut [Change],
        skip: u64,
        batch: &mut Batch,
    ) -> Result<Option<ReplicatorError>> {
        for (i, c) in changes.iter_mut().enumerate().skip(skip as usize) {
            let seq = Seq(header.meta.first_seq.0 + i as u64);
            let history = inner.history.as_mut();
            // Before a held write takes the data out of the change.
            let len = match c.kind {
                ChangeKind::Write => c.data.len() as u64,
                ChangeKind::Trim => c.length,
                _ => 0,
            };
            let applied = match inner.archives.get_mut(&c.resource) {
                Some(a) => a.apply(c, seq).map(|()| None),
                None => apply_change(
                    &self.name,
                    &inner.resources,
                    &mut inner.pending,
                    history,
                    &mut batch.deferred,
                    c,
                    seq,
                ),
            };
            match applied {
                Ok(Some(r)) => {
                    if fault::ENABLED && len > 0 {
                        inner.unsynced.push((r.clone(), c.offset, len));
                    }
                    batch.touched.insert(r);
                }
                Ok(None) => {}
                Err(
                    e @ (ReplicatorError::UnknownResource { .. }
                    | ReplicatorError::UnsupportedChange { .. }
                    | ReplicatorError::BadDbChange { .. }
                    | ReplicatorError::BadWalChange { .. }
                    | ReplicatorError::OutOfBounds { .. }),
                ) => return Ok(Some(e)),
                Err(e) => return Err(e),
            }
            inner.watermark = seq;
            inner.last_ms = c.captured_ms;
            batch.changes_applied += 1;
        }
        Ok(None)
    }
}

/// Checks the changes of a frame to be applied (from `skip` on) against their volumes' sizes:
/// an out-of-bounds change refuses the whole frame before anything of it is written. No I/O.
fn check_frame_bounds(
    inner: &Inner,
    header: &FrameHeader,
    changes: &[Change],
    skip: u64,
) -> Result<()> {
    for (i, c) in changes.iter().enumerate().skip(skip as usize) {
        let seq = Seq(header.meta.first_seq.0 + i as u64);
        if !inner.archives.contains_key(&c.resource) {
            check_bounds(&inner.resources, c, seq)?;
        }
    }
    Ok(())
}

/// A frame as it arrived on a Ship stream, with its payload decoded ahead of the apply when
/// it was ([`Received::decode`]).
#[derive(Debug)]
pub struct Received {
    bytes: Vec<u8>,
    /// The decoded payload (decompressed, blake3 checked, changes parsed), or why it is
    /// refused; `None` when not decoded yet (or the header does not parse: the apply refuses
    /// it).
    decoded: Option<std::result::Result<Frame, FrameError>>,
}

impl Received {
    /// A frame not decoded yet: the apply decodes it under the group's lock.
    pub fn new(bytes: Vec<u8>) -> Received {
        Received {
            bytes,
            decoded: None,
        }
    }

    /// Decodes the frame's payload now with `decoder` (decompress, check blake3, parse the
    /// changes), so that the apply, which must go in seq order under the group's lock, only
    /// checks and writes. Pure CPU work: run it on the blocking pool, several frames at once.
    pub fn decode(decoder: &mut Decoder, bytes: Vec<u8>) -> Received {
        let decoded = FrameHeader::parse(&bytes)
            .ok()
            .map(|h| decoder.decode_payload(h, &bytes));
        Received { bytes, decoded }
    }

    /// The frame's encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What a batch has done so far: the files it wrote, the writes it holds until their undo
/// records are durable, the refusal to send, whether to acknowledge, and its counts.
#[derive(Debug, Default)]
struct Batch {
    touched: BTreeSet<String>,
    deferred: Deferred,
    refusal: Option<Refusal>,
    ack: bool,
    frames_applied: u64,
    changes_applied: u64,
}

/// After a frame: go on with the next one, or stop the batch (a refusal was decided).
enum Flow {
    Next,
    Stop,
}

/// Makes what the batch applied durable: a history checkpoint when the watermark moved, the
/// history synced and THEN the held writes written ([`Deferred::flush`]), then every touched
/// file synced and the watermark persisted (which allows the Ack). An `Err` leaves the caller
/// to roll back.
fn make_durable(inner: &mut Inner, durable: Seq, batch: &mut Batch) -> Result<()> {
    if inner.watermark > durable {
        let (wm, ms) = (inner.watermark, inner.last_ms);
        if let Some(h) = inner.history.as_mut() {
            h.maybe_checkpoint(wm, ms)?;
        }
    }
    batch
        .deferred
        .flush(inner.history.as_mut(), &inner.resources)?;
    if resume_mark(inner) > durable {
        sync_and_persist(inner, &batch.touched)?;
        batch.ack = true;
    } else if !batch.touched.is_empty() {
        // Files written while the mark is held back by another resource's buffered
        // transaction: still durable before anything is acknowledged.
        sync_and_persist(inner, &batch.touched)?;
    }
    Ok(())
}

/// The responses of a batch: the cumulative Ack (of the persisted watermark), then the
/// refusal; a fatal refusal finishes the stream.
fn responses(inner: &Inner, stream: &mut StreamState, batch: Batch) -> Result<Vec<ShipResponse>> {
    let mut out = Vec::new();
    if batch.ack {
        if let Err(e) = fault::check("replica-before-ack") {
            return Err(ReplicatorError::io("ack", inner.meta.path(), e));
        }
        out.push(ShipResponse {
            msg: Some(ship_response::Msg::Ack(Ack {
                durable_seq: inner.persisted.0,
            })),
        });
    }
    if let Some(r) = batch.refusal {
        stream.finished |= r.fatal;
        out.push(ShipResponse {
            msg: Some(ship_response::Msg::Refusal(r)),
        });
    }
    Ok(out)
}

/// The highest seq that can be persisted: the watermark, or just before the first page of the
/// oldest buffered SQLite transaction.
fn resume_mark(inner: &Inner) -> Seq {
    inner
        .pending
        .values()
        .map(|p| p.first_seq)
        .chain(inner.archives.values().filter_map(|a| a.pending_since()))
        .map(|s| Seq(s.0 - 1))
        .fold(inner.watermark, Seq::min)
}

/// After a failed batch: back to the persisted watermark, buffered transactions dropped (they
/// are resent from there).
fn rollback(inner: &mut Inner) {
    inner.watermark = inner.persisted;
    inner.pending.clear();
    for a in inner.archives.values_mut() {
        a.abandon();
    }
}

fn sync_and_persist(inner: &mut Inner, touched: &BTreeSet<String>) -> Result<()> {
    match fault::hit("replica-before-fsync") {
        None => {}
        Some(fault::Injected::LoseUnsynced) => lose_unsynced(inner),
        Some(fault::Injected::Crash) => fault::crash("replica-before-fsync"),
        Some(inj) => {
            return Err(ReplicatorError::io(
                "fdatasync",
                inner.meta.path(),
                inj.io_error("replica-before-fsync"),
            ))
        }
    }
    for name in touched {
        if let Some(r) = inner.resources.get(name) {
            r.file
                .sync_data()
                .map_err(|e| ReplicatorError::io("fdatasync", &r.path, e))?;
        }
    }
    // Streamed WAL written into `.partial` files.
    for a in inner.archives.values_mut() {
        a.sync()?;
    }
    if let Some(h) = inner.history.as_mut() {
        // Points recorded since the last flush (the undo records were synced before the data
        // they undo was written, by `Deferred::flush`), before the watermark covering them.
        h.sync()?;
    }
    fault::check("replica-before-watermark")
        .map_err(|e| ReplicatorError::io("write watermark", inner.meta.path(), e))?;
    let (wm, fence) = (resume_mark(inner), inner.fence);
    inner.persist_meta(wm, fence)?;
    inner.persisted = wm;
    inner.unsynced.clear();
    if let Some(h) = inner.history.as_mut() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        h.trim(now)?;
    }
    Ok(())
}

/// A power loss at the `replica-before-fsync` failpoint: every volume range written since
/// the last fdatasync reads back as garbage (0xEE; a disk may keep old, new or torn sectors),
/// made durable, then the process aborts. The watermark still stands before those writes, so
/// the primary must send them again.
fn lose_unsynced(inner: &Inner) -> ! {
    let fill = vec![0xEEu8; 64 << 10];
    let mut lost = 0u64;
    for (name, offset, len) in &inner.unsynced {
        let Some(r) = inner.resources.get(name) else {
            continue;
        };
        let mut done = 0u64;
        while done < *len {
            let n = (*len - done).min(fill.len() as u64) as usize;
            let _ = r.file.write_all_at(&fill[..n], offset + done);
            done += n as u64;
        }
        let _ = r.file.sync_data();
        lost += len;
    }
    eprintln!(
        "failpoint replica-before-fsync: garbled {lost} unsynced bytes in {} ranges",
        inner.unsynced.len()
    );
    fault::crash("replica-before-fsync")
}
