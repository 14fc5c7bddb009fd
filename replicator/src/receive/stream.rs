//! One Ship stream on the replica: a reader task takes the frames off the stream, decoders
//! decompress and verify them in parallel ahead of the apply (bounded, order kept), and the
//! apply loop batches the frames decoded so far, applies each batch in seq order on the
//! blocking pool ([`ReplicaGroup::receive_received`]) and sends its acknowledgements.

use super::peers::Views;
use crate::apply::{Received, ReplicaGroup, StreamState};
use crate::pipeline::ordered;
use std::sync::Arc;
use tandem_core::frame::{Decoder, FrameHeader};
use tandem_core::ids::Seq;
use tandem_core::proto::{ship_request, ship_response, ShipRequest, ShipResponse};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

/// Most frames the receiver applies under one fdatasync + watermark write.
const BATCH_FRAMES: usize = 64;
/// Most bytes the receiver applies under one fdatasync + watermark write.
const BATCH_BYTES: usize = 16 << 20;

/// The `tandem_apply_latency_seconds` series of `group`: from receiving a batch of frames to
/// handing its acknowledgements to the stream (applied, fdatasync'd, watermark written).
pub(super) fn apply_latency(group: &str) -> tandem_core::metrics::Histogram {
    tandem_core::metrics::global().histogram(
        "tandem_apply_latency_seconds",
        "Time from receiving a batch of frames on the replica to its acknowledgement.",
        tandem_core::metrics::LATENCY_BUCKETS,
        &[("group", group)],
    )
}

pub(super) fn response(msg: ship_response::Msg) -> Result<ShipResponse, Status> {
    Ok(ShipResponse { msg: Some(msg) })
}

/// The first frame of `frames` whose epoch is newer than the epoch the coordinators gave this
/// replicator for `group` (a frame must never raise the fence above it), as a refusal. A frame
/// whose header does not parse is left to the apply, which refuses it.
fn frame_above_bound(views: &Views, group: &str, frames: &[Received]) -> Option<Status> {
    let bound = views.get(group).map(|v| v.epoch);
    frames.iter().find_map(|f| {
        let e = FrameHeader::parse(f.bytes()).ok()?.meta.epoch;
        match bound {
            Some(b) if e <= b => None,
            _ => {
                let b = bound.map_or("none".to_owned(), |b| b.to_string());
                tracing::warn!(%group, epoch = %e, bound = %b, "refusing a frame above the coordinators' epoch; ending the stream");
                Some(Status::unavailable(format!(
                    "frame epoch {e} of group {group} is newer than the epoch {b} the coordinators gave this replica: not applied"
                )))
            }
        }
    })
}

/// What the reader hands the decoders: a frame, or a message that has no place in the
/// stream (the stream is refused once the frames before it are through).
enum Inbound {
    Frame(Vec<u8>),
    NotAFrame,
}

/// A decoder's output: the frame decoded ahead of the apply, or the refusal in its place.
enum Decoded {
    Frame(Received),
    NotAFrame,
}

/// Frames decoded ahead of the apply, besides those in the decoders: the decoded payloads
/// wait here while a batch is applied (bounded: at most this many frames).
const DECODED_AHEAD: usize = 8;

/// Reads the stream's messages into `jobs` until it ends, fails or is refused; notes the
/// primary's durability announcements on `group` as they come.
async fn read_inbound(
    group: Arc<ReplicaGroup>,
    mut inbound: Streaming<ShipRequest>,
    jobs: mpsc::Sender<Inbound>,
) {
    loop {
        let item = match inbound.message().await {
            Ok(Some(ShipRequest {
                msg: Some(ship_request::Msg::Frame(f)),
            })) => Inbound::Frame(f),
            Ok(Some(ShipRequest {
                msg: Some(ship_request::Msg::Durable(d)),
            })) => {
                // Not part of the frame order: noted at once (see `lineage::judge_tail`).
                group.note_primary_durable(Seq(d));
                continue;
            }
            Ok(Some(_)) => Inbound::NotAFrame,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "ship stream ended");
                return;
            }
        };
        let last = matches!(item, Inbound::NotAFrame);
        if jobs.send(item).await.is_err() || last {
            return;
        }
    }
}

fn decode(decoder: &mut Decoder, item: Inbound) -> Decoded {
    match item {
        Inbound::Frame(bytes) => Decoded::Frame(Received::decode(decoder, bytes)),
        Inbound::NotAFrame => Decoded::NotAFrame,
    }
}

/// Below this many encoded bytes a frame is decoded on the stage's own task when nothing else
/// is being decoded: a lone small frame (a sync 4 KiB write) skips the hop to the blocking pool.
const SMALL_FRAME_BYTES: usize = 32 << 10;

fn small(item: &Inbound) -> bool {
    match item {
        Inbound::Frame(bytes) => bytes.len() < SMALL_FRAME_BYTES,
        Inbound::NotAFrame => true,
    }
}

/// Ends the reader when the stream ends (which drops the inbound half of the call).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs one Ship stream after its Welcome from `state` (the seq jumps its `Hello` announced);
/// with `views`, every frame's epoch is bounded by the group's current view (see
/// [`frame_above_bound`]).
///
/// Frames are read by their own task and decompressed and verified in parallel (up to one per
/// core, [`crate::pipeline::ordered`]) ahead of the apply, which takes them in the order they
/// came: the apply (seq order, under the group's lock) only checks, writes and syncs.
pub(super) async fn run_stream(
    group: Arc<ReplicaGroup>,
    inbound: Streaming<ShipRequest>,
    tx: mpsc::Sender<Result<ShipResponse, Status>>,
    mut closed: watch::Receiver<bool>,
    views: Option<Views>,
    mut state: StreamState,
) {
    let decoders: Vec<Decoder> = match (0..ordered::parallelism())
        .map(|_| Decoder::new())
        .collect()
    {
        Ok(d) => d,
        Err(e) => {
            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
            return;
        }
    };
    let (jtx, jrx) = mpsc::channel(1);
    let (dtx, mut decoded) = mpsc::channel(DECODED_AHEAD);
    let _reader = AbortOnDrop(tokio::spawn(read_inbound(Arc::clone(&group), inbound, jtx)));
    ordered::spawn_ordered(decoders, decode, small, jrx, dtx);
    loop {
        let first = tokio::select! {
            m = decoded.recv() => m,
            _ = async { let _ = closed.wait_for(|c| *c).await; } => {
                let _ = tx.send(Err(Status::unavailable("replica service closed"))).await;
                return;
            }
        };
        let Some(first) = first else { break };
        let received = std::time::Instant::now();
        let mut frames = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(d) = next.take() {
            match d {
                Decoded::Frame(f) => {
                    bytes += f.bytes().len();
                    frames.push(f);
                }
                Decoded::NotAFrame => {
                    let _ = tx
                        .send(Err(Status::invalid_argument("only frames after Hello")))
                        .await;
                    return;
                }
            }
            if frames.len() >= BATCH_FRAMES || bytes >= BATCH_BYTES {
                break;
            }
            next = decoded.try_recv().ok();
        }
        if let Some(refused) = views
            .as_ref()
            .and_then(|v| frame_above_bound(v, group.name(), &frames))
        {
            let _ = tx.send(Err(refused)).await;
            return;
        }
        let g = Arc::clone(&group);
        let joined =
            tokio::task::spawn_blocking(move || (g.receive_received(frames, &mut state), state))
                .await;
        let (result, st) = match joined {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                return;
            }
        };
        state = st;
        match result {
            Ok(responses) => {
                for r in responses {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                apply_latency(group.name()).observe_duration(received.elapsed());
            }
            Err(crate::error::ReplicatorError::Closed(g)) => {
                tracing::info!(group = %g, "replica retired (resync or promotion): ending the stream");
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "group {g} is no longer applied here (the replica is resyncing or was promoted)"
                    ))))
                    .await;
                return;
            }
            Err(e) => {
                tracing::error!(group = group.name(), error = %e, "apply failed");
                let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                return;
            }
        }
        if state.finished {
            return;
        }
    }
}
