//! PostgreSQL streaming at the primary: for each postgres resource with `stream = true`, a task
//! that connects to the local server as a physical replication client (its own slot,
//! `application_name` = the slot's name), submits the WAL it receives to the group pipeline
//! as it arrives, and reports to the server as flushed only WAL the replica site has
//! acknowledged durable — so a COMMIT waits for the other site when the server names the slot
//! in `synchronous_standby_names`. The decisions are in [`crate::pg_stream`]; this room does
//! the I/O. A session that fails ends; the task opens a new one a second later, from the start
//! of the segment holding the slot's position (the slot keeps that WAL).

use super::lease::RoleCell;
use super::runtime::{GroupRt, NodeRt};
use crate::pg_repl::{Client, ConnConfig, Lsn, StatusWriter, WalEvent, WalReader};
use crate::pg_stream::{
    segment_start, timeline_for_segment, Acks, Splitter, StreamStatus, STATUS_INTERVAL_MS,
};
use crate::pipeline::GroupPipeline;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::config::{PgStream, ResourceKind};
use tandem_core::frame::Change;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use crate::pg_stream::SharedStatus as Shared;

/// Most WAL (bytes) one submission to the pipeline carries.
const MAX_SUBMIT: usize = 8 << 20;

/// What a stream task needs to connect.
#[derive(Clone)]
struct Target {
    group: String,
    resource: String,
    slot: String,
    host: String,
    port: u16,
    user: String,
    password_file: Option<PathBuf>,
}

/// Starts a stream task for every postgres resource of `g` with `stream = true` (until
/// `stop`), with a fresh status in `g.pg_streams`.
pub(super) fn start_pg_streams(
    rt: &NodeRt,
    g: &mut GroupRt,
    pipeline: &Arc<GroupPipeline>,
    stop_rx: &watch::Receiver<bool>,
) {
    g.pg_streams.clear();
    for r in &g.cfg.resources {
        let ResourceKind::Postgres {
            port,
            replica_port,
            stream:
                Some(PgStream {
                    user,
                    host,
                    password_file,
                }),
            ..
        } = &r.kind
        else {
            continue;
        };
        let port = if rt.node.site == g.cfg.primary {
            *port
        } else {
            *replica_port
        };
        let target = Target {
            group: g.cfg.name.clone(),
            resource: r.name.clone(),
            slot: PgStream::slot_name(&g.cfg.name, &r.name),
            host: host.clone(),
            port,
            user: user.clone(),
            password_file: password_file.as_ref().map(|p| rt.topo.base_dir.join(p)),
        };
        let status: Shared = Arc::default();
        g.pg_streams.insert(r.name.clone(), status.clone());
        info!(group = %target.group, resource = %target.resource, slot = %target.slot, port, "streaming PostgreSQL WAL");
        tokio::spawn(run(
            target,
            g.cell.clone(),
            pipeline.clone(),
            status,
            stop_rx.clone(),
        ));
    }
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, StreamStatus> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(
    t: Target,
    cell: Arc<RoleCell>,
    pipeline: Arc<GroupPipeline>,
    status: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_said = String::new();
    // The end of the WAL submitted so far: the next session goes on from there.
    let mut resume = 0u64;
    while !*stop.borrow() {
        let ended = tokio::select! {
            r = session(&t, &cell, &pipeline, &status, &mut resume) => r,
            _ = stop.changed() => break,
        };
        let why = match ended {
            Ok(()) => "the server ended the timeline".to_string(),
            Err(e) => e,
        };
        {
            let mut st = lock(&status);
            st.connected = false;
            st.last_error = Some(why.clone());
        }
        if why != last_said {
            warn!(group = %t.group, resource = %t.resource, "WAL stream: {why}; retrying every second");
            last_said = why;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
    }
    lock(&status).connected = false;
}

/// One replication session: connect, start at the segment holding the slot's position, and
/// run the reader, the submitter and the feedback until one of them ends.
async fn session(
    t: &Target,
    cell: &Arc<RoleCell>,
    pipeline: &Arc<GroupPipeline>,
    status: &Shared,
    resume: &mut u64,
) -> Result<(), String> {
    let password = match &t.password_file {
        Some(p) => Some(
            tokio::fs::read_to_string(p)
                .await
                .map_err(|e| format!("stream_password_file {}: {e}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        None => None,
    };
    let cfg = ConnConfig {
        host: t.host.clone(),
        port: t.port,
        user: t.user.clone(),
        password,
        application_name: t.slot.clone(),
        connect_timeout: Duration::from_secs(5),
    };
    let mut c = Client::connect(&cfg).await.map_err(|e| e.to_string())?;
    let sys = c.identify_system().await.map_err(|e| e.to_string())?;
    let seg_len = c.wal_segment_size().await.map_err(|e| e.to_string())?;
    c.ensure_physical_slot(&t.slot)
        .await
        .map_err(|e| e.to_string())?;
    let from = match c
        .slot_restart_lsn(&t.slot)
        .await
        .map_err(|e| e.to_string())?
    {
        Some((lsn, _)) => lsn.0,
        None => sys.xlog_pos.0,
    };
    // From the segment holding the slot's position, or the end of what this task submitted
    // already (WAL acknowledged to the server moves the slot only later).
    let start = segment_start(from.max(*resume), seg_len);
    // A slot made on a just-promoted server starts before the switch point: that WAL is on
    // the parent timeline, streamed as such up to its end (then the next session goes on).
    let tli = if sys.timeline > 1 {
        let (_, history) = c
            .timeline_history(sys.timeline)
            .await
            .map_err(|e| e.to_string())?;
        timeline_for_segment(
            &String::from_utf8_lossy(&history),
            start,
            seg_len,
            sys.timeline,
        )?
    } else {
        sys.timeline
    };
    let mut splitter = Splitter::new(&t.resource, tli, seg_len, start)?;
    let (reader, writer) = c
        .start(&t.slot, Lsn(start), tli)
        .await
        .map_err(|e| e.to_string())?;
    {
        let mut st = lock(status);
        st.connected = true;
        st.last_error = None;
        st.timeline = tli;
        st.flushed = st.flushed.max(from);
    }
    info!(group = %t.group, resource = %t.resource, timeline = tli, server_timeline = sys.timeline, from = %Lsn(start), "WAL stream open");
    let acks = Arc::new(Mutex::new(Acks::new(from)));
    let reply = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel::<(Vec<Change>, u64)>(64);
    // The submitter journals everything read before the reader ended (the end of a timeline
    // is a normal end), so the next session goes on after it.
    let wake = reply.clone();
    let work = async {
        let (read, submitted) = tokio::join!(
            async move {
                let r = read(reader, &mut splitter, status, &tx, &wake).await;
                drop(tx);
                r
            },
            submit(rx, cell, pipeline, &acks, &reply)
        );
        read.and(submitted)
    };
    tokio::pin!(work);
    let ended = tokio::select! {
        r = &mut work => r,
        r = feedback(writer, pipeline, &acks, status, &reply) => {
            // The reader ends too once the connection or stream is gone: let the submitter
            // journal what was read (bounded, should the reader hang).
            let rest = tokio::time::timeout(Duration::from_secs(30), &mut work).await;
            r.and(rest.unwrap_or_else(|_| Err("the reader did not stop within 30 s".into())))
        }
    };
    *resume = (*resume).max(
        acks.lock()
            .unwrap_or_else(|p| p.into_inner())
            .submitted_end(),
    );
    ended
}

/// Reads the server's messages: WAL becomes changes for the submitter, every message's WAL
/// end feeds the exposure, and a keepalive that asks for a reply wakes the feedback.
async fn read(
    mut reader: WalReader,
    splitter: &mut Splitter,
    status: &Shared,
    tx: &mpsc::Sender<(Vec<Change>, u64)>,
    reply: &Notify,
) -> Result<(), String> {
    loop {
        match reader.next().await.map_err(|e| e.to_string())? {
            WalEvent::Data {
                start,
                wal_end,
                send_time_ms,
                bytes,
            } => {
                let captured = {
                    let mut st = lock(status);
                    // Before this message: the newest one that predates this WAL.
                    let b = st.exposure.bound_for(start.0);
                    st.exposure
                        .observe(wal_end.0.max(start.0 + bytes.len() as u64), send_time_ms);
                    b.unwrap_or_else(|| send_time_ms.min(SystemClock::new().now_ms()))
                };
                let changes = splitter.push(start.0, &bytes, captured)?;
                tx.send((changes, splitter.next()))
                    .await
                    .map_err(|_| "the submitter stopped".to_string())?;
            }
            WalEvent::Keepalive {
                wal_end,
                send_time_ms,
                reply_requested,
            } => {
                lock(status).exposure.observe(wal_end.0, send_time_ms);
                if reply_requested {
                    reply.notify_one();
                }
            }
            WalEvent::EndOfTimeline { .. } => return Ok(()),
        }
    }
}

/// Submits the WAL read so far to the pipeline, as many messages per submission as are
/// waiting (the pipeline journals each submission with one fdatasync), while this site may
/// write the group.
async fn submit(
    mut rx: mpsc::Receiver<(Vec<Change>, u64)>,
    cell: &Arc<RoleCell>,
    pipeline: &Arc<GroupPipeline>,
    acks: &Mutex<Acks>,
    wake: &Notify,
) -> Result<(), String> {
    while let Some((mut changes, mut end)) = rx.recv().await {
        let mut bytes: usize = changes.iter().map(|c| c.data.len()).sum();
        while bytes < MAX_SUBMIT {
            let Ok((more, e)) = rx.try_recv() else {
                break;
            };
            bytes += more.iter().map(|c| c.data.len()).sum::<usize>();
            changes.extend(more);
            end = e;
        }
        if changes.is_empty() {
            continue;
        }
        if !cell.writable() {
            return Err(
                "this site may not write the group now (not primary, no live lease, or intake stopped)"
                    .into(),
            );
        }
        let seq = {
            let _g = cell.inflight.read().await;
            pipeline
                .submit_journaled(changes)
                .await
                .map_err(|e| format!("journaling streamed WAL: {e}"))?
        };
        acks.lock()
            .unwrap_or_else(|p| p.into_inner())
            .submitted(seq, end);
        // The replica may have acknowledged it already.
        wake.notify_one();
    }
    Ok(())
}

/// Tells the server the WAL position durable at the replica: when the replica acknowledges
/// more, when the server asks, and every [`STATUS_INTERVAL_MS`] (asking for a reply, which
/// keeps the exposure's bound fresh).
async fn feedback(
    mut writer: StatusWriter,
    pipeline: &Arc<GroupPipeline>,
    acks: &Mutex<Acks>,
    status: &Shared,
    reply: &Notify,
) -> Result<(), String> {
    let mut durable = pipeline.replica_durable();
    let mut tick = tokio::time::interval(Duration::from_millis(STATUS_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let ask = tokio::select! {
            r = durable.changed() => { r.map_err(|_| "the pipeline closed".to_string())?; false }
            _ = reply.notified() => false,
            _ = tick.tick() => true,
        };
        let d = *durable.borrow();
        let flushed = {
            let mut a = acks.lock().unwrap_or_else(|p| p.into_inner());
            a.acked(d);
            a.flushed()
        };
        lock(status).flushed = flushed;
        let f = Lsn(flushed);
        writer.send(f, f, f, ask).await.map_err(|e| e.to_string())?;
    }
}
