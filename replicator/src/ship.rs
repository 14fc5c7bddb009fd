//! The shipper: one task per group on the primary that streams journal frames to the replica
//! replicator (tonic, TCP_NODELAY, large fixed HTTP/2 windows), advances the replica-durable
//! seq on cumulative Acks, trims the journal, resends after Refusals and reconnects with
//! backoff. `Hello` carries the journal's lineage ([`crate::lineage`]). A fatal Refusal (old
//! epoch, a history the replica's copy is not a prefix of) fences the pipeline and stops the
//! shipper, as does a replica ahead of the journal (the primary lost frames it had made
//! durable): the reason is reported until an operator decides.

use crate::error::ReplicatorError;
use crate::journal::FrameEntry;
use crate::lineage::{judge_tail, Tail};
use crate::pipeline::{GroupPipeline, Shared};
use crate::receive::{CONNECTION_WINDOW, H2_FRAME_SIZE, STREAM_WINDOW};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tandem_core::ids::Seq;
use tandem_core::net::Net;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{
    ship_request, ship_response, GenerationStart, Hello, ResyncRequest, ShipRequest, ShipResponse,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

/// A hook that may alter a frame just before it is sent (fault injection: tests and chaos).
pub type FrameHook = Arc<dyn Fn(Seq, &mut Vec<u8>) + Send + Sync>;

/// Settings of a shipper.
#[derive(Clone)]
pub struct ShipConfig {
    /// The replica replicator's URL, `http://HOST:PORT`.
    pub addr: String,
    /// This node's name, sent in Hello.
    pub from_node: String,
    /// Most encoded bytes sent and not yet acknowledged.
    pub window_bytes: usize,
    /// Most frames sent and not yet acknowledged.
    pub window_frames: usize,
    /// Consecutive refusals (or failed connections) after which the group is degraded.
    pub max_refusals: u32,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Fault injection: called on every frame before it is sent.
    pub frame_hook: Option<FrameHook>,
    /// Bandwidth limit on the wire (bytes per second of encoded frames), `None` = unlimited.
    pub max_bytes_per_sec: Option<u64>,
    /// When set, asked before every read of the journal for the limit now (a time-of-day
    /// schedule); overrides `max_bytes_per_sec`.
    pub rate_now: Option<RateFn>,
    /// How the replica is dialled: plaintext or mTLS (default plaintext).
    pub net: Net,
}

/// The bandwidth limit in force now, bytes per second (`None` = unlimited).
pub type RateFn = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

impl ShipConfig {
    fn limit(&self) -> Option<u64> {
        match &self.rate_now {
            Some(f) => f(),
            None => self.max_bytes_per_sec,
        }
        .filter(|r| *r > 0)
    }
}

impl std::fmt::Debug for ShipConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipConfig")
            .field("addr", &self.addr)
            .field("from_node", &self.from_node)
            .field("window_bytes", &self.window_bytes)
            .field("window_frames", &self.window_frames)
            .field("max_refusals", &self.max_refusals)
            .field("frame_hook", &self.frame_hook.is_some())
            .finish()
    }
}

impl ShipConfig {
    /// Defaults: 32 MiB / 1024 frames window (the `ship_window` default), degraded after 5 refusals, backoff 50 ms..2 s.
    pub fn new(addr: &str, from_node: &str) -> ShipConfig {
        ShipConfig {
            addr: addr.to_owned(),
            from_node: from_node.to_owned(),
            window_bytes: 32 << 20,
            window_frames: 1024,
            max_refusals: 5,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            frame_hook: None,
            max_bytes_per_sec: None,
            rate_now: None,
            net: Net::plaintext(),
        }
    }
}

/// Why a shipper ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipExit {
    /// Asked to stop, or the pipeline closed.
    Stopped,
    /// The replica refused us fatally (old epoch, not a prefix), or holds frames the journal
    /// lost: the pipeline is fenced.
    Fenced(String),
}

/// A running shipper.
#[derive(Debug)]
pub struct ShipperHandle {
    task: JoinHandle<ShipExit>,
    stop: watch::Sender<bool>,
}

impl ShipperHandle {
    /// Stops the shipper and waits for it.
    pub async fn stop(self) -> ShipExit {
        self.stop.send_replace(true);
        self.join().await
    }

    /// Waits for the shipper to end on its own (dropping the handle instead stops it).
    pub async fn join(self) -> ShipExit {
        let ShipperHandle { task, stop } = self;
        let exit = task
            .await
            .unwrap_or_else(|e| ShipExit::Fenced(format!("shipper task failed: {e}")));
        drop(stop);
        exit
    }

    /// Whether the shipper has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl GroupPipeline {
    /// Starts the shipper task of this group towards the replica at `cfg.addr`.
    pub fn start_shipper(&self, cfg: ShipConfig) -> ShipperHandle {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(self.shared(), cfg, stop_rx));
        ShipperHandle { task, stop }
    }
}

enum SessionEnd {
    Stopped,
    Fatal(String),
    Broken { reason: String, progressed: bool },
}

async fn run(shared: Arc<Shared>, cfg: ShipConfig, mut stop: watch::Receiver<bool>) -> ShipExit {
    let _trimmer = AbortOnDrop(tokio::spawn(trim_loop(Arc::clone(&shared))));
    let mut backoff = cfg.backoff_min;
    let mut failures = 0u32;
    let mut refusals = 0u32;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        if *stop.borrow() || *shutdown.borrow() {
            return ShipExit::Stopped;
        }
        match session(&shared, &cfg, &mut refusals, &mut stop, &mut shutdown).await {
            SessionEnd::Stopped => return ShipExit::Stopped,
            SessionEnd::Fatal(reason) => {
                // The fence carries the reason (status shows `fenced: ...`): said once.
                shared.set_ship_problem(None);
                shared.fence(format!("replication stopped: {reason}"));
                return ShipExit::Fenced(reason);
            }
            SessionEnd::Broken { reason, progressed } => {
                if progressed {
                    failures = 0;
                    backoff = cfg.backoff_min;
                }
                failures += 1;
                tracing::info!(group = %shared.group, addr = %cfg.addr, %reason, failures, "ship stream broken; reconnecting");
                if failures >= cfg.max_refusals {
                    shared.set_ship_problem(Some(format!(
                        "replica {} unreachable ({failures} attempts): {reason}",
                        cfg.addr
                    )));
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = until_true(&mut stop) => return ShipExit::Stopped,
                    _ = until_true(&mut shutdown) => return ShipExit::Stopped,
                }
                backoff = (backoff * 2).min(cfg.backoff_max);
            }
        }
    }
}

/// Resolves once the flag is true or its sender is gone (dropping a [`ShipperHandle`] stops
/// its shipper).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Trims the journal behind the replica's acknowledgements, coalescing them (at most one
/// round per [`TRIM_EVERY`]): off the shipper's loop, so the image sync a trim may need never
/// delays the next frame (a sync write's frame leaves while the primary's journal sync runs).
async fn trim_loop(shared: Arc<Shared>) {
    let mut acked = shared.durable_replica.subscribe();
    loop {
        let seq = *acked.borrow_and_update();
        // The images are made durable through `seq` before the frames are trimmed.
        shared.trim_acked(seq).await;
        if acked.changed().await.is_err() {
            return;
        }
        // Acks that come meanwhile are trimmed together: one image sync per round, not one
        // per sync write.
        tokio::time::sleep(TRIM_EVERY).await;
    }
}

/// The shortest time between two trims (each may cost an image fdatasync).
const TRIM_EVERY: Duration = Duration::from_millis(20);

/// Ends a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn on_acked(shared: &Arc<Shared>, seq: Seq) {
    shared.note_acked(seq);
    shared.durable_replica.send_if_modified(|s| {
        if seq > *s {
            *s = seq;
            true
        } else {
            false
        }
    });
}

fn broken(reason: impl ToString, progressed: bool) -> SessionEnd {
    SessionEnd::Broken {
        reason: reason.to_string(),
        progressed,
    }
}

async fn session(
    shared: &Arc<Shared>,
    cfg: &ShipConfig,
    refusals: &mut u32,
    stop: &mut watch::Receiver<bool>,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let Opened {
        mut client,
        tx,
        inbound,
        watermark,
        primary_durable,
    } = match open_stream(shared, cfg).await {
        Ok(o) => o,
        Err(end) => return end,
    };
    match resync_reason(shared, watermark, primary_durable) {
        Some(JournalGap::Behind(why)) => {
            return ask_resync(&mut client, shared, watermark, why).await
        }
        Some(JournalGap::Ahead(reason)) => {
            tracing::error!(group = %shared.group, %watermark, "{reason}");
            return SessionEnd::Fatal(reason);
        }
        None => {}
    }
    on_acked(shared, watermark).await;
    stream_frames(
        shared, cfg, refusals, stop, shutdown, tx, inbound, watermark,
    )
    .await
}

/// A Ship stream the replica welcomed, at its watermark.
struct Opened {
    client: ReplicationClient<tonic::transport::Channel>,
    tx: mpsc::Sender<ShipRequest>,
    inbound: tonic::Streaming<ShipResponse>,
    watermark: Seq,
    /// The highest seq a primary announced durable to the replica (`None`: unknown).
    primary_durable: Option<Seq>,
}

/// Connects, sends Hello and waits for the replica's Welcome (its watermark and fence).
async fn open_stream(shared: &Arc<Shared>, cfg: &ShipConfig) -> Result<Opened, SessionEnd> {
    let endpoint = match cfg.net.endpoint(&cfg.addr) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(2))
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(H2_FRAME_SIZE),
        Err(e) => {
            return Err(SessionEnd::Fatal(format!(
                "bad replica address {}: {e}",
                cfg.addr
            )))
        }
    };
    let channel = match cfg.net.connect(endpoint).await {
        Ok(c) => c,
        Err(e) => return Err(broken(format!("connect: {e}"), false)),
    };
    let mut client = tandem_core::grpc_limits!(ReplicationClient::new(channel));
    let (tx, rx) = mpsc::channel::<ShipRequest>(16);
    let lineage = shared
        .journal
        .lineage()
        .iter()
        .map(|s| GenerationStart {
            generation: s.generation,
            first_seq: s.first.0,
            after_seq: s.after.0,
        })
        .collect();
    let hello = ShipRequest {
        msg: Some(ship_request::Msg::Hello(Hello {
            group: shared.group.clone(),
            epoch: shared.epoch().0,
            from_node: cfg.from_node.clone(),
            lineage,
        })),
    };
    if tx.send(hello).await.is_err() {
        return Err(broken("request stream closed", false));
    }
    let mut inbound = match client.ship(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            return Err(broken(
                format!("replica has no group: {}", s.message()),
                false,
            ))
        }
        Err(s) => return Err(broken(format!("ship: {s}"), false)),
    };
    let welcome = match inbound.message().await {
        Ok(Some(m)) => m,
        Ok(None) => return Err(broken("stream closed before Welcome", false)),
        Err(s) => return Err(broken(format!("awaiting Welcome: {s}"), false)),
    };
    let (watermark, primary_durable) = match welcome.msg {
        Some(ship_response::Msg::Welcome(w)) => {
            if w.epoch > shared.epoch().0 {
                return Err(SessionEnd::Fatal(format!(
                    "replica is fenced at epoch {}, we are at {}",
                    w.epoch,
                    shared.epoch()
                )));
            }
            (Seq(w.watermark), w.primary_durable.map(Seq))
        }
        Some(ship_response::Msg::Refusal(r)) if r.fatal => return Err(SessionEnd::Fatal(r.reason)),
        other => return Err(broken(format!("expected Welcome, got {other:?}"), false)),
    };
    Ok(Opened {
        client,
        tx,
        inbound,
        watermark,
        primary_durable,
    })
}

/// Why the journal cannot bring a replica at `watermark` up to date, if it cannot, with the
/// journal's bounds that showed it. `primary_durable` is what the replica's `Welcome` said
/// a primary had announced durable to it.
fn resync_reason(
    shared: &Shared,
    watermark: Seq,
    primary_durable: Option<Seq>,
) -> Option<JournalGap> {
    // The journal publishes a frame (to `frames_from`) a moment before `durable_local` moves.
    let last_local = (*shared.durable_local.borrow()).max(shared.journal.last_seq());
    let trimmed = shared.journal.trimmed_through();
    let gaps = crate::lineage::jumps(&shared.journal.lineage());
    journal_gap(watermark, last_local, trimmed, &gaps, primary_durable).map(|gap| match gap {
        Gap::Behind(reason) => JournalGap::Behind(ResyncWhy {
            reason,
            last_local,
            trimmed,
        }),
        Gap::Ahead(reason) => JournalGap::Ahead(format!("group {}: {reason}", shared.group)),
    })
}

/// What [`journal_gap`] found (pure).
#[derive(Debug, PartialEq, Eq)]
enum Gap {
    /// The journal no longer holds what the replica needs next: resync from this primary.
    Behind(String),
    /// The replica holds seqs this journal does not: stop until an operator decides.
    Ahead(String),
}

/// What the shipper does about a replica the journal cannot continue.
enum JournalGap {
    Behind(ResyncWhy),
    Ahead(String),
}

/// Whether a replica at `watermark` needs a resync rather than the journal, which holds
/// frames after `trimmed` up to `last_local`, with the seqs of each of `gaps` (after, first)
/// never handed out (pure).
///
/// - Behind: the frames it needs next are gone (dropped when the journal overflowed, or
///   journaled in an older epoch this primary continued from); a merkle resync from this
///   (live) primary mends it, resuming from our seq at hashing time.
/// - Past the journal: its watermark is past the journal's last frame, or inside a gap the
///   journal left after a reopen: it holds frames this primary lost. Frames are shipped
///   before the primary's own journal sync ends, so [`crate::lineage::judge_tail`] decides
///   with `primary_durable` (the highest seq a primary announced durable to the replica):
///   frames never announced durable were never acknowledged, and the replica is resynced
///   from here (Behind: the resync drops them, and the group is protected again only after
///   it); otherwise this primary lost frames it had made durable, which a sync group may
///   have acknowledged: replication stops with this reason until an operator decides (Ahead).
fn journal_gap(
    watermark: Seq,
    last_local: Seq,
    trimmed: Seq,
    gaps: &[(Seq, Seq)],
    primary_durable: Option<Seq>,
) -> Option<Gap> {
    let in_gap = gaps
        .iter()
        .find(|(after, first)| watermark > *after && watermark < *first);
    if watermark > last_local || in_gap.is_some() {
        let kept = in_gap.map_or(last_local, |(after, _)| *after);
        if judge_tail(watermark, kept, primary_durable) == Tail::RollBack {
            return Some(Gap::Behind(format!(
                "the replica holds seqs {}..={watermark}, which this primary lost before its \
                 journal sync ended (never acknowledged; it holds the history only through seq \
                 {kept}): they are rolled back by a resync from the primary",
                kept.0 + 1
            )));
        }
        Some(Gap::Ahead(format!(
            "lost durable tail: the replica holds seqs {}..={watermark}, which the primary's journal \
             lost after making them durable (it holds the history only through seq {kept}); \
             replication is stopped until an operator decides: fail over to the replica, which \
             holds them, or resync it from the primary, which discards them",
            kept.0 + 1
        )))
    } else if watermark < trimmed {
        Some(Gap::Behind(format!(
            "the primary's journal no longer holds frames {}..={trimmed}",
            watermark.0 + 1
        )))
    } else {
        None
    }
}

/// Why a replica must resync, and the journal's bounds that showed it.
struct ResyncWhy {
    reason: String,
    last_local: Seq,
    trimmed: Seq,
}

/// Asks the replica to resync (for `why`) and ends the session.
async fn ask_resync(
    client: &mut ReplicationClient<tonic::transport::Channel>,
    shared: &Shared,
    watermark: Seq,
    why: ResyncWhy,
) -> SessionEnd {
    let ResyncWhy {
        reason,
        last_local,
        trimmed,
    } = why;
    let req = ResyncRequest {
        group: shared.group.clone(),
        reason: reason.clone(),
    };
    match client.resync(req).await {
        Ok(mut s) => {
            let first = s.get_mut().message().await.ok().flatten();
            tracing::warn!(group = %shared.group, %watermark, %trimmed, %last_local,
                phase = first.as_ref().map_or("?", |p| p.phase.as_str()),
                "{reason}: asked the replica to resync");
            broken(format!("{reason}: resync asked"), false)
        }
        Err(s) => broken(format!("asking the replica to resync: {s}"), false),
    }
}

/// At most one `Durable` announcement per this interval (the latest value): not one more
/// message per sync write. A replica that hears it late only rolls back where it could have
/// stopped if the primary's disk also lost frames it had made durable (see
/// [`crate::lineage`]).
const TELL_EVERY: Duration = Duration::from_millis(10);

/// Frames sent and not yet acknowledged, and where the stream stands.
struct Flight {
    acked: Seq,
    next: Seq,
    progressed: bool,
    inflight: VecDeque<(Seq, usize)>,
    inflight_bytes: usize,
    /// Pacing for `max_bytes_per_sec`: the earliest time the next frame may leave.
    pace_at: tokio::time::Instant,
}

/// Streams journal frames from `watermark + 1` within the window, handling Acks and Refusals,
/// until the stream breaks or the shipper stops.
#[allow(clippy::too_many_arguments)]
async fn stream_frames(
    shared: &Arc<Shared>,
    cfg: &ShipConfig,
    refusals: &mut u32,
    stop: &mut watch::Receiver<bool>,
    shutdown: &mut watch::Receiver<bool>,
    tx: mpsc::Sender<ShipRequest>,
    mut inbound: tonic::Streaming<ShipResponse>,
    watermark: Seq,
) -> SessionEnd {
    let mut f = Flight {
        acked: watermark,
        next: watermark.next(),
        progressed: false,
        inflight: VecDeque::new(),
        inflight_bytes: 0,
        pace_at: tokio::time::Instant::now(),
    };
    shared.ship_next.store(f.next.0, Ordering::Relaxed);
    // Frames are sent once written to the journal, before (and while) the primary's own
    // fdatasync runs; the replica is told how far that sync got (`Durable`), which decides
    // what becomes of a tail it holds past a restarted primary's (`lineage::judge_tail`).
    let mut local = shared.shippable.subscribe();
    let mut synced = shared.journal_synced.subscribe();
    let mut told = Seq(0);
    let mut tell_at = tokio::time::Instant::now();
    loop {
        let durable = *synced.borrow_and_update();
        let now = tokio::time::Instant::now();
        if durable > told && now >= tell_at {
            let req = ShipRequest {
                msg: Some(ship_request::Msg::Durable(durable.0)),
            };
            if tx.send(req).await.is_err() {
                return broken("request stream closed", f.progressed);
            }
            told = durable;
            tell_at = now + TELL_EVERY;
        }
        let tell_due = durable > told;
        let have_new = *local.borrow_and_update() >= f.next;
        let can_send =
            have_new && f.inflight_bytes < cfg.window_bytes && f.inflight.len() < cfg.window_frames;
        let mut budget = cfg.window_bytes.saturating_sub(f.inflight_bytes).max(1);
        let limit = cfg.limit();
        if let Some(rate) = limit {
            // Read about a quarter second of frames at a time, so acks are handled between
            // paced sends.
            budget = budget.min((rate as usize / 4).max(64 << 10));
        }
        let journal = Arc::clone(&shared.journal);
        let from = f.next;
        tokio::select! {
            biased;
            _ = until_true(stop) => return SessionEnd::Stopped,
            _ = until_true(shutdown) => return SessionEnd::Stopped,
            msg = inbound.message() => match msg {
                Ok(Some(m)) => {
                    if let Some(end) = on_reply(shared, cfg, refusals, &mut f, m).await {
                        return end;
                    }
                }
                Ok(None) => return broken("replica closed the stream", f.progressed),
                Err(s) => return broken(format!("stream: {s}"), f.progressed),
            },
            _ = local.changed(), if !have_new => {}
            // Only while no read is due: a journal sync at every group commit (a flood of
            // writes while the replica catches up) must never starve the read below, which
            // a woken loop would drop and start again.
            _ = synced.changed(), if !can_send && !tell_due => {}
            _ = tokio::time::sleep_until(tell_at), if !can_send && tell_due => {}
            // Lazy: select! evaluates the expression of a disabled branch too, and
            // spawn_blocking starts at once, so an eager read ran (and was thrown away) on every
            // turn of the loop, window full or not.
            read = async move { tokio::task::spawn_blocking(move || journal.frames_from(from, budget)).await }, if can_send => {
                let frames = match read {
                    Ok(Ok(fr)) => fr,
                    Ok(Err(e)) => return broken(format!("journal read: {e}"), f.progressed),
                    Err(e) => return broken(ReplicatorError::Task(e.to_string()), f.progressed),
                };
                // Only frames the writer released (whole group commits).
                let mut frames = frames;
                frames.retain(|(e, _)| e.last_seq <= *shared.shippable.borrow());
                if frames.is_empty() {
                    // Nothing at or after `next` yet (the replica is ahead of the journal):
                    // poll again shortly rather than spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if let Some(end) = send_frames(shared, cfg, &tx, &mut f, frames, limit).await {
                    return end;
                }
            }
        }
    }
}

/// Handles one reply of the replica: an Ack moves the window and trims the journal; a
/// Refusal rewinds to where the replica resumes (or ends the session when fatal).
async fn on_reply(
    shared: &Arc<Shared>,
    cfg: &ShipConfig,
    refusals: &mut u32,
    f: &mut Flight,
    m: ShipResponse,
) -> Option<SessionEnd> {
    match m.msg {
        Some(ship_response::Msg::Ack(a)) => {
            let d = Seq(a.durable_seq);
            if d > f.acked {
                f.acked = d;
                f.progressed = true;
                *refusals = 0;
                shared.set_ship_problem(None);
                while f.inflight.front().is_some_and(|(last, _)| *last <= d) {
                    if let Some((_, len)) = f.inflight.pop_front() {
                        f.inflight_bytes -= len;
                    }
                }
                on_acked(shared, d).await;
            }
        }
        Some(ship_response::Msg::Refusal(r)) => {
            if r.fatal {
                return Some(SessionEnd::Fatal(r.reason));
            }
            *refusals += 1;
            tracing::warn!(group = %shared.group, seq = r.seq, resume_from = r.resume_from, reason = %r.reason, refusals = *refusals, "replica refused a frame; resending");
            if *refusals >= cfg.max_refusals {
                shared.set_ship_problem(Some(format!(
                    "replica refused {} times in a row: {}",
                    *refusals, r.reason
                )));
            }
            f.next = Seq(r.resume_from.max(1));
            f.inflight.clear();
            f.inflight_bytes = 0;
        }
        _ => {}
    }
    None
}

/// Sends frames read from the journal (through the frame hook, paced to `limit` bytes/s),
/// moving the window.
async fn send_frames(
    shared: &Shared,
    cfg: &ShipConfig,
    tx: &mpsc::Sender<ShipRequest>,
    f: &mut Flight,
    frames: Vec<(FrameEntry, Vec<u8>)>,
    limit: Option<u64>,
) -> Option<SessionEnd> {
    for (entry, mut bytes) in frames {
        if let Some(hook) = &cfg.frame_hook {
            hook(entry.first_seq, &mut bytes);
        }
        let len = bytes.len();
        if let Some(rate) = limit {
            let now = tokio::time::Instant::now();
            if f.pace_at > now {
                tokio::time::sleep_until(f.pace_at).await;
            }
            f.pace_at = f.pace_at.max(now) + Duration::from_secs_f64(len as f64 / rate as f64);
        }
        let req = ShipRequest {
            msg: Some(ship_request::Msg::Frame(bytes)),
        };
        if tx.send(req).await.is_err() {
            return Some(broken("request stream closed", f.progressed));
        }
        f.next = entry.last_seq.next();
        shared.ship_next.store(f.next.0, Ordering::Relaxed);
        f.inflight.push_back((entry.last_seq, len));
        f.inflight_bytes += len;
        shared.frames_shipped.fetch_add(1, Ordering::Relaxed);
        shared
            .bytes_shipped_total
            .fetch_add(len as u64, Ordering::Relaxed);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_past_the_journal_is_rolled_back_only_when_the_primary_never_announced_it_durable()
    {
        let gaps = [(Seq(20), Seq(65540))];
        // (watermark, last_local, primary_durable) -> resync (true) or stop (false)
        let cases = [
            (12, 10, Some(10), true),
            (12, 10, Some(7), true),
            (12, 10, Some(11), false),
            (12, 10, None, false),
            (25, 65545, Some(20), true),
            (25, 65545, Some(21), false),
            (25, 65545, None, false),
        ];
        for (i, (wm, local, p, resync)) in cases.into_iter().enumerate() {
            let got = journal_gap(Seq(wm), Seq(local), Seq(3), &gaps, p.map(Seq));
            match (&got, resync) {
                (Some(Gap::Behind(why)), true) if why.contains("rolled back") => {}
                (Some(Gap::Ahead(why)), false) if why.contains("lost durable tail") => {}
                _ => panic!("#{i}: expect resync={resync} got {got:?}"),
            }
        }
    }

    #[test]
    fn a_replica_resyncs_only_when_behind_and_stops_the_group_when_ahead() {
        // (watermark, last_local, trimmed) -> None, or (ahead?, reason containing)
        let gaps = [(Seq(20), Seq(65540))];
        let cases = [
            (5, 10, 3, None),
            (3, 10, 3, None),
            (10, 10, 3, None),
            (0, 0, 0, None),
            (20, 65545, 3, None),
            (65540, 65545, 3, None),
            (2, 10, 3, Some((false, "no longer holds frames 3..=3"))),
            (11, 10, 3, Some((true, "holds seqs 11..=11"))),
            (25, 65545, 3, Some((true, "holds seqs 21..=25"))),
        ];
        for (i, (wm, local, trimmed, want)) in cases.into_iter().enumerate() {
            let got = journal_gap(Seq(wm), Seq(local), Seq(trimmed), &gaps, None);
            match (want, &got) {
                (None, None) => {}
                (Some((true, w)), Some(Gap::Ahead(g))) if g.contains(w) => {}
                (Some((false, w)), Some(Gap::Behind(g))) if g.contains(w) => {}
                _ => panic!("#{i}: expect {want:?} got {got:?}"),
            }
        }
    }
}
