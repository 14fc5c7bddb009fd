//! Becoming the primary of a group: where the seq numbering continues, replaying older
//! journals onto the images, opening the pipeline and shipper, and starting the scan and SQLite
//! capture sources. Touches the data folder, the images and the network.

use super::coordinators::CoordinatorConsent;
use super::layout::{
    history_dir, journal_dir, journal_epochs, peer_replicator, replica_dir, resource_paths,
    sqlite_names, stored_watermark, RESYNC_MARKER,
};
use super::lock::lock;
use super::replay::{replay_frames, replay_journal};
use super::runtime::{GroupRt, NodeRt, RoleState};
use super::transitions::stop_role;
use crate::error::{ReplicatorError, Result};
use crate::journal::Journal;
use crate::pipeline::{GroupPipeline, PipelineConfig};
use crate::ship::{ShipConfig, ShipperHandle};
use std::path::Path;
use std::sync::Arc;
use tandem_core::config::{Capture, ResourceKind};
use tandem_core::ids::{Epoch, Seq};
use tokio::sync::watch;
use tracing::{info, warn};

/// Makes this site the primary of `g` in `epoch`, shipping to the replicator at
/// `replica_site`: continues the seq numbering, opens the epoch's journal and pipeline, starts
/// the shipper and the capture sources, and opens the lease gate's pipeline.
///
/// # Errors
/// Reading the stored watermark or older journals, replaying them, opening the journal,
/// pipeline or a scan source failed.
pub(super) async fn become_primary(
    rt: &Arc<NodeRt>,
    g: &mut GroupRt,
    epoch: Epoch,
    replica_site: &str,
) -> Result<()> {
    let name = g.cfg.name.clone();
    info!(group = %name, %epoch, "becoming primary");
    let replica = match &g.role {
        RoleState::Replica { rg: Some(rg), .. } => Some(rg.clone()),
        _ => None,
    };
    let captured = match &g.role {
        RoleState::Primary { pipeline, .. } => Some(pipeline.progress().last_captured_seq),
        _ => None,
    };
    // Journals of older epochs are this node's own writes as primary (a replica's are removed
    // once it is resynced), unless it was a replica since or its copy is half-resynced.
    let own_old_journals = !matches!(g.role, RoleState::Replica { .. })
        && !replica_dir(rt, &name).join(RESYNC_MARKER).exists();
    rt.service.remove_group(&name);
    lock(&rt.me.replicas).remove(&name);
    // A replica is retired here: no frame of a stream the old primary opened lands after this.
    stop_role(g).await;
    // Where the group's seq numbering continues from: read once nothing more is applied.
    let mut start = match (replica, captured) {
        (Some(rg), _) => rg.watermark(),
        (None, Some(seq)) => seq,
        (None, None) => Seq(stored_watermark(&replica_dir(rt, &name))?.unwrap_or(0)),
    };
    // The local files now take the primary's writes, with no undo: the replica history of
    // this site ends here.
    let hdir = history_dir(rt, &name);
    if hdir.exists() {
        std::fs::remove_dir_all(&hdir).map_err(|e| ReplicatorError::io("remove", &hdir, e))?;
    }
    let dir = journal_dir(rt, &name, epoch);
    let fresh = !dir.exists();
    if fresh && own_old_journals {
        start = continue_after_old_journals(rt, g, epoch, &dir, start).await?;
    }
    Journal::init(&dir, epoch, start.next())?;
    let pipeline = open_pipeline(rt, g, epoch, &dir).await?;
    if !fresh {
        // A restart: frames journaled before the crash may not have reached the image.
        replay_journal(&pipeline, &resource_paths(rt, &g.cfg)).await?;
    }
    // Journals of older epochs are history now.
    for e in journal_epochs(rt, &name) {
        if e < epoch.0 {
            let old = journal_dir(rt, &name, Epoch(e));
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    let shipper = start_shipper(rt, g, &pipeline, replica_site);
    let (stop_tx, stop_rx) = watch::channel(false);
    start_scans(rt, g, epoch, &pipeline, &stop_rx).await?;
    start_sqlite(rt, g, &pipeline, &stop_rx);
    super::pg_stream::start_pg_streams(rt, g, &pipeline, &stop_rx);
    g.sources_stop = Some(stop_tx);
    g.cell
        .fenced
        .store(false, std::sync::atomic::Ordering::SeqCst);
    g.cell.set_pipeline(Some(pipeline.clone()));
    g.role = RoleState::Primary {
        epoch,
        pipeline,
        shipper,
        drained: None,
        draining: false,
    };
    Ok(())
}

/// Staying primary into a new epoch (or restarting into one): continue the numbering after
/// every seq the older epochs' journals reserved, so no seq is used twice, and make sure their
/// frames are all on the images (a crash may have come between journal and image). The new
/// journal in `dir` continues the newest older journal's history (its lineage, trimmed
/// through its last frame), so a replica at that frame goes on without a resync; a replica
/// that lacks some of them is behind the new journal's start and is resynced by merkle diff.
/// Returns the seq the numbering continues after.
async fn continue_after_old_journals(
    rt: &NodeRt,
    g: &GroupRt,
    epoch: Epoch,
    dir: &Path,
    mut start: Seq,
) -> Result<Seq> {
    let mut newest: Option<Arc<Journal>> = None;
    let name = &g.cfg.name;
    for e in journal_epochs(rt, name)
        .into_iter()
        .filter(|e| *e < epoch.0)
    {
        let old = journal_dir(rt, name, Epoch(e));
        let gid = tandem_core::ids::GroupId::from_name(name);
        let j = tokio::task::spawn_blocking(move || {
            Journal::open(&old, gid, Epoch(e), crate::journal::DEFAULT_SEGMENT_BYTES)
        })
        .await
        .map_err(|e| ReplicatorError::Task(e.to_string()))??;
        let j = Arc::new(j);
        let last = j.reserved_through();
        replay_frames(Arc::clone(&j), &resource_paths(rt, &g.cfg)).await?;
        if last > start {
            info!(group = %name, old_epoch = e, %last, was = %start, "numbering continues after the older epoch's journal reservation");
            start = last;
        }
        newest = Some(j);
    }
    if let Some(j) = newest.filter(|j| j.reserved_through() >= start) {
        Journal::init_continuing(dir, epoch, &j)?;
    }
    Ok(start)
}

/// Opens the group's pipeline on the journal in `dir` (initialised for `epoch`), with the
/// group's limits and mode, asking the coordinators' consent before a sync group degrades.
async fn open_pipeline(
    rt: &NodeRt,
    g: &GroupRt,
    epoch: Epoch,
    dir: &Path,
) -> Result<Arc<GroupPipeline>> {
    let name = &g.cfg.name;
    let mut cfg = PipelineConfig::new(name, dir);
    cfg.epoch = epoch;
    cfg.journal_max = g.cfg.journal_max.bytes();
    cfg.sync_timeout = (!g.cfg.sync_timeout.is_zero()).then(|| g.cfg.sync_timeout.into());
    if !rt.coordinators.is_empty() {
        cfg.sync_consent = Some(Arc::new(CoordinatorConsent {
            group: name.clone(),
            node: rt.node.name.clone(),
            coordinators: rt.coordinators.clone(),
            net: rt.me.net.clone(),
        }));
    }
    cfg.mode = g.cfg.mode;
    cfg.compression = g.cfg.compression;
    Ok(Arc::new(GroupPipeline::open(cfg).await?))
}

/// A primary whose replica host changed (a planned `tandem move` of the replica side) ships
/// to the new host: the old shipper stops and a new one starts towards the host the
/// coordinators now record (which resyncs first: it holds nothing, or an older copy). Does
/// nothing while the host is the same, or while the group drains for a switchover.
pub(super) async fn follow_replica_host(rt: &NodeRt, g: &mut GroupRt, replica_site: &str) {
    let want = peer_replicator(rt, &g.cfg, replica_site);
    if want.is_none() || lock(&rt.me.peers).get(&g.cfg.name) == want.as_ref() {
        return;
    }
    let pipeline = match &mut g.role {
        RoleState::Primary {
            pipeline,
            shipper,
            draining: false,
            ..
        } => {
            if let Some(s) = shipper.take() {
                let _ = s.stop().await;
            }
            pipeline.clone()
        }
        _ => return,
    };
    info!(group = %g.cfg.name, to = want.as_deref().unwrap_or(""), "the replica host changed: shipping to the new one");
    let started = start_shipper(rt, g, &pipeline, replica_site);
    if let RoleState::Primary { shipper, .. } = &mut g.role {
        *shipper = started;
    }
}

/// Records the replica replicator at `replica_site` as the group's peer and starts shipping
/// to it (with the group's bandwidth limit and schedule); none when no replicator is there.
fn start_shipper(
    rt: &NodeRt,
    g: &GroupRt,
    pipeline: &Arc<GroupPipeline>,
    replica_site: &str,
) -> Option<ShipperHandle> {
    let addr = peer_replicator(rt, &g.cfg, replica_site);
    if let Some(addr) = &addr {
        lock(&rt.me.peers).insert(g.cfg.name.clone(), addr.clone());
    }
    addr.map(|addr| {
        let mut cfg = ShipConfig::new(&addr, &rt.node.name);
        cfg.net = rt.me.net.clone();
        cfg.window_bytes = usize::try_from(g.cfg.ship_window.0).unwrap_or(usize::MAX);
        cfg.max_bytes_per_sec = g.cfg.max_bandwidth.map(|b| b.bytes_per_sec);
        if !g.cfg.bandwidth_schedule.is_empty() {
            let group = g.cfg.clone();
            cfg.rate_now = Some(Arc::new(move || {
                group.bandwidth_at(tandem_core::config::TimeOfDay::of(chrono::Utc::now()))
            }));
        }
        pipeline.start_shipper(cfg)
    })
}

/// Scanned volumes: re-hash every interval, journal the changed blocks (until `stop`).
async fn start_scans(
    rt: &NodeRt,
    g: &mut GroupRt,
    epoch: Epoch,
    pipeline: &Arc<GroupPipeline>,
    stop_rx: &watch::Receiver<bool>,
) -> Result<()> {
    let name = g.cfg.name.clone();
    for r in &g.cfg.resources {
        let ResourceKind::Volume {
            capture: Capture::Scan,
            scan_interval,
            block_size,
            ..
        } = &r.kind
        else {
            continue;
        };
        let Some(path) = rt.topo.resource_path(&g.cfg, r, &rt.node.site) else {
            continue;
        };
        let tree_file = crate::scan_capture::tree_path(&rt.data_dir, &name, &r.name);
        let src = crate::scan_capture::ScanSource::open(
            &r.name,
            &path,
            &tree_file,
            epoch,
            block_size.bytes() as u32,
            pipeline.clone(),
        )
        .await?;
        info!(resource = %r.name, path = %path.display(), interval = %scan_interval, "scanning the volume for changes");
        g.scans.push(src.clone());
        tokio::spawn(src.run((*scan_interval).into(), g.cell.clone(), stop_rx.clone()));
    }
    Ok(())
}

/// SQLite resources: follow each database's WAL into the same pipeline (until `stop`).
fn start_sqlite(
    rt: &NodeRt,
    g: &GroupRt,
    pipeline: &Arc<GroupPipeline>,
    stop_rx: &watch::Receiver<bool>,
) {
    let names = sqlite_names(&g.cfg);
    if !names.is_empty() {
        lock(&g.cell.sqlite_asks).clear();
        for r in g.cfg.resources.iter().filter(|r| names.contains(&r.name)) {
            let Some(path) = rt.topo.resource_path(&g.cfg, r, &rt.node.site) else {
                continue;
            };
            let ask = Arc::new(crate::sqlite::SnapshotAsk::default());
            lock(&g.cell.sqlite_asks).insert(r.name.clone(), ask.clone());
            let (pipeline, stop, res) = (pipeline.clone(), stop_rx.clone(), r.name.clone());
            tokio::spawn(async move {
                if let Some(dir) = path.parent() {
                    let _ = crate::durable_dir::create_dir_durable(dir);
                }
                let (res2, path2) = (res.clone(), path.clone());
                let opened = tokio::task::spawn_blocking(move || {
                    crate::sqlite::SqliteSource::open(
                        &res2,
                        &path2,
                        crate::sqlite::SqliteOptions::default(),
                    )
                })
                .await;
                match opened {
                    Ok(Ok(src)) => {
                        info!(resource = %res, path = %path.display(), "following the SQLite WAL");
                        if let Err(e) = src.with_ask(ask).run(pipeline, stop).await {
                            warn!(resource = %res, "SQLite capture stopped: {e}");
                        }
                    }
                    Ok(Err(e)) => warn!(resource = %res, "cannot open SQLite database: {e}"),
                    Err(e) => warn!(resource = %res, "SQLite open task failed: {e}"),
                }
            });
        }
    }
}
