//! One Ship stream on the replica: batches the frames that arrived together, applies each batch
//! on the blocking pool ([`ReplicaGroup::receive_batch`]) and sends its acknowledgements.

use super::peers::Views;
use crate::apply::{ReplicaGroup, StreamState};
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use tandem_core::frame::FrameHeader;
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
fn frame_above_bound(views: &Views, group: &str, frames: &[Vec<u8>]) -> Option<Status> {
    let bound = views.get(group).map(|v| v.epoch);
    frames.iter().find_map(|f| {
        let e = FrameHeader::parse(f).ok()?.meta.epoch;
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

/// Runs one Ship stream after its Welcome from `state` (the seq jumps its `Hello` announced);
/// with `views`, every frame's epoch is bounded by the group's current view (see
/// [`frame_above_bound`]).
pub(super) async fn run_stream(
    group: Arc<ReplicaGroup>,
    mut inbound: Streaming<ShipRequest>,
    tx: mpsc::Sender<Result<ShipResponse, Status>>,
    mut closed: watch::Receiver<bool>,
    views: Option<Views>,
    mut state: StreamState,
) {
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = async { let _ = closed.wait_for(|c| *c).await; } => {
                let _ = tx.send(Err(Status::unavailable("replica service closed"))).await;
                return;
            }
        };
        let first = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(group = group.name(), error = %e, "ship stream ended");
                break;
            }
        };
        let received = std::time::Instant::now();
        let mut frames = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m.msg {
                Some(ship_request::Msg::Frame(f)) => {
                    bytes += f.len();
                    frames.push(f);
                }
                _ => {
                    let _ = tx
                        .send(Err(Status::invalid_argument("only frames after Hello")))
                        .await;
                    return;
                }
            }
            if frames.len() >= BATCH_FRAMES || bytes >= BATCH_BYTES {
                break;
            }
            next = match inbound.next().now_or_never() {
                Some(Some(Ok(m))) => Some(m),
                _ => None,
            };
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
            tokio::task::spawn_blocking(move || (g.receive_batch(frames, &mut state), state)).await;
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
