//! The coordinator process: starts raft, serves the admin API, the raft peer service and the
//! metrics endpoint, and runs the leader's periodic work (bootstrap, failure detection,
//! automatic failover, RPO samples, scheduled drills, run drivers) until shutdown.

use crate::handle::coordinator::{lock, Coordinator, CoordinatorSm, Inner};
use crate::handle::live::Live;
use crate::raft::{self, RaftError, RaftNodeConfig};
use crate::state::{Command, GroupRpo};
use crate::state::{GroupState, SiteStatus, COORDINATOR_ACTOR};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::clock::SlewedClock;
use tandem_core::config::{NodeRole, Topology};
use tandem_core::net::Net;
use tandem_core::proto::coordinator_server::CoordinatorServer;
use tracing::{debug, info, warn};

/// Errors of the coordinator process.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node is not a coordinator of the topology.
    #[error("{0}")]
    Topology(String),
    /// Raft failed to start.
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    /// The gRPC server failed.
    #[error("grpc server on {addr}: {source}")]
    Serve {
        /// Listen address.
        addr: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// I/O (data dir).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the coordinator node `name` of `topo` until `shutdown` resolves.
///
/// # Errors
/// The node is not a coordinator, its data dir cannot be made, raft does not start, or its
/// listen address cannot be served.
pub async fn run(
    topo: Topology,
    name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let node = topo
        .node(&name)
        .filter(|n| n.role == NodeRole::Coordinator)
        .ok_or_else(|| ServerError::Topology(format!("{name} is not a coordinator")))?
        .clone();
    let id = topo
        .raft_id(&name)
        .ok_or_else(|| ServerError::Topology(format!("{name} has no raft id")))?;
    let mut peers = BTreeMap::new();
    let mut names = BTreeMap::new();
    for c in topo.coordinators() {
        peers.insert(c.raft_id, format!("http://{}", c.node.listen));
        names.insert(c.raft_id, c.node.name.clone());
    }
    let data_dir = topo.node_data_dir(&node);
    std::fs::create_dir_all(&data_dir)?;
    let net = Net::for_node(&topo, &name).map_err(|e| ServerError::Topology(e.to_string()))?;
    net.spawn_reloader();
    let mut cfg = RaftNodeConfig::new(id, peers, data_dir.join("raft"));
    // A snapshot is the whole state (it grows with the groups): by default at most one per
    // 30 s for compaction, however fast heartbeats and RPO samples commit (issue 20).
    cfg.snapshot_every = topo.cluster.snapshot_entries.max(1);
    cfg.snapshot_min_interval = topo.cluster.snapshot_min_interval.as_duration();
    cfg.net = net.clone();
    cfg.peer_names = names.clone();
    let handle = raft::start(
        cfg,
        CoordinatorSm::with_tail_keep(topo.cluster.audit_memory_records),
    )
    .await?;
    let inner = Arc::new(Inner {
        topo: topo.clone(),
        name: name.clone(),
        raft: handle.clone(),
        clock: SlewedClock::new(),
        live: Mutex::new(Live::default()),
        names,
        drivers: crate::handle::drivers::Drivers::default(),
        net: net.clone(),
        cert_seen: Mutex::new(BTreeMap::new()),
        refusals: Mutex::new(crate::refusals::Refusals::default()),
    });
    let coord = Coordinator {
        inner: inner.clone(),
    };
    let addr: SocketAddr = node
        .listen
        .parse()
        .map_err(|e| ServerError::Topology(format!("{}: bad listen address: {e}", node.listen)))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let bg = tokio::spawn(background(coord.clone(), stop_rx.clone()));
    tokio::spawn(flush_refusals(coord.clone(), stop_rx.clone()));
    tokio::spawn(super::backfill::backfill_audit(
        coord.clone(),
        stop_rx.clone(),
    ));
    serve_metrics(&coord, node.metrics_listen.as_deref(), stop_rx.clone()).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(node = %name, %addr, raft_id = id, tls = net.is_tls(), "coordinator listening");
    let api = tandem_core::grpc_limits!(CoordinatorServer::new(coord.clone()));
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(raft::peer_service(&handle))
        .add_service(api);
    let result = net.serve(router, listener, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = bg.await;
    let _ = handle.shutdown().await;
    result.map_err(|source| ServerError::Serve {
        addr: node.listen.clone(),
        source,
    })
}

/// On every coordinator: records the refusals counted in windows that have ended.
async fn flush_refusals(c: Coordinator, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        c.flush_refusals().await;
    }
}

/// The leader's periodic work: bootstrap, failure detection, RPO samples, automatic failover,
/// scheduled drills.
async fn background(c: Coordinator, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !c.is_leader() {
            lock(&c.inner.live).leader_since = None;
            c.inner.drivers.stop_all();
            continue;
        }
        let now = c.now_ms();
        let term = c.inner.raft.status().term;
        let since = lock(&c.inner.live).leader_since(term, now);
        let bootstrapped = c.read(|s| {
            s.settings().is_some()
                && c.inner
                    .topo
                    .groups
                    .iter()
                    .all(|g| s.group(&g.name).is_some())
        });
        if !bootstrapped {
            if let Err(e) = c.propose_cmd(c.bootstrap_command()).await {
                warn!("bootstrap refused: {}", e.message());
            }
            continue;
        }
        detect_failures(&c, now, since).await;
        detect_host_failures(&c, now, since).await;
        sample_rpo(&c, now).await;
        crate::runs::schedule::tick(&c).await;
        crate::runs::driver::drive_all(&c);
    }
}

async fn detect_failures(c: &Coordinator, now: i64, leader_since: i64) {
    let t = &c.inner.topo;
    let detect = t.cluster.detect_after.as_millis() as i64;
    for site in t.sites.iter().filter(|s| !s.witness) {
        let reps: Vec<String> = t
            .replicators_at(&site.name)
            .iter()
            .map(|n| n.name.clone())
            .collect();
        if reps.is_empty() {
            continue;
        }
        let last = {
            let live = lock(&c.inner.live);
            reps.iter()
                .filter_map(|n| live.node_seen.get(n).copied())
                .max()
        };
        // A new leader gives every site a full detection window before declaring it down.
        let last = last.unwrap_or(leader_since).max(leader_since);
        let status = c.read(|s| s.site(&site.name).map(|x| x.status));
        let silent = now - last > detect;
        if silent && status != Some(SiteStatus::Down) {
            warn!(site = %site.name, silent_ms = now - last, "site declared down");
            let _ = c
                .propose_cmd(Command::SiteDown {
                    at_ms: 0,
                    site: site.name.clone(),
                })
                .await;
            start_auto_failovers(c, &site.name, now).await;
        } else if !silent && status == Some(SiteStatus::Down) {
            info!(site = %site.name, "site is back up");
            let _ = c
                .propose_cmd(Command::SiteUp {
                    at_ms: 0,
                    site: site.name.clone(),
                })
                .await;
        } else if silent {
            start_auto_failovers(c, &site.name, now).await;
        }
    }
}

async fn start_auto_failovers(c: &Coordinator, site: &str, detected_ms: i64) {
    for g in c.inner.topo.groups.iter().filter(|g| g.auto_failover) {
        start_auto_failover(c, g, site, detected_ms).await;
    }
}

/// Starts the failover runbook of `g` when its primary is at `site` (declared lost at
/// `detected_ms`), it is protected or degraded, no run of it is under way, and its policy
/// allows it (no sync degradation, the RPO within `max_data_loss`).
async fn start_auto_failover(
    c: &Coordinator,
    g: &tandem_core::config::Group,
    site: &str,
    detected_ms: i64,
) {
    let Some((primary, state, rpo, sync_degraded)) = c.read(|s| {
        s.group(&g.name).map(|x| {
            (
                x.primary_site.clone(),
                x.state,
                x.progress.rpo_ms,
                x.sync_degraded_since,
            )
        })
    }) else {
        return;
    };
    if !g.auto_failover
        || primary != site
        || !matches!(state, GroupState::Protected | GroupState::Degraded)
    {
        return;
    }
    if let Some(since) = sync_degraded {
        warn!(group = %g.name, since_ms = since, "the primary acknowledged writes without the replica: automatic failover would lose them; waiting for an operator");
        return;
    }
    if let Some(max) = g.max_data_loss {
        if rpo > max.as_millis() {
            warn!(group = %g.name, rpo_ms = rpo, "automatic failover would lose more than max_data_loss: waiting for an operator");
            return;
        }
    }
    let under_way = c.read(|s| {
        s.runs()
            .values()
            .any(|r| r.group == g.name && r.is_running())
    });
    if under_way {
        return;
    }
    // RTO counts from the moment the outage began to be detected.
    let detect = c.inner.topo.cluster.detect_after.as_millis() as i64;
    let began = detected_ms - detect;
    info!(group = %g.name, "automatic failover: starting the failover runbook");
    match crate::runs::admin::start(
        c,
        tandem_runbooks::RunbookKind::Failover,
        &g.name,
        COORDINATOR_ACTOR,
        &BTreeMap::new(),
        Some(began),
    )
    .await
    {
        Ok(id) => info!(group = %g.name, run = %id, "automatic failover run started"),
        Err(e) => warn!(group = %g.name, "automatic failover not started: {}", e.message()),
    }
}

/// One replicator host silent while others at its site report ([`crate::host_loss`]): the
/// groups whose primary it serves fail over by their own policy, the protected groups whose
/// replica it serves are degraded; the other hosts' groups are untouched.
async fn detect_host_failures(c: &Coordinator, now: i64, leader_since: i64) {
    use crate::host_loss::{host_actions, silent_hosts, GroupRoles, HostAction};
    let t = &c.inner.topo;
    let detect = t.cluster.detect_after.as_millis() as i64;
    let lost = {
        let live = lock(&c.inner.live);
        silent_hosts(t, &live.node_seen, now, leader_since, detect)
    };
    if lost.is_empty() {
        return;
    }
    let groups: Vec<GroupRoles> = c.read(|s| {
        s.groups()
            .values()
            .map(|g| GroupRoles {
                group: g.name.clone(),
                primary: g.primary_site.clone(),
                replica: g.replica_site.clone(),
                state: g.state,
                hosts: g.placed_hosts(),
            })
            .collect()
    });
    for action in host_actions(t, &lost, &groups) {
        match action {
            HostAction::FailOver { group, host, site } => {
                if let Some(g) = t.group(&group) {
                    debug!(%group, %host, %site, "primary host lost");
                    start_auto_failover(c, g, &site, now).await;
                }
            }
            HostAction::Degrade {
                group,
                host,
                reason,
            } => {
                warn!(%group, %host, "replica host lost: group degraded");
                let _ = c
                    .propose_cmd(Command::SetGroupState {
                        at_ms: 0,
                        group,
                        state: GroupState::Degraded,
                        reason,
                        actor: COORDINATOR_ACTOR.into(),
                        host: None,
                    })
                    .await;
            }
        }
    }
}

async fn sample_rpo(c: &Coordinator, now: i64) {
    let interval = c.inner.topo.cluster.rpo_sample_interval.as_millis() as i64;
    let due = {
        let mut live = lock(&c.inner.live);
        if now - live.last_rpo_sample_ms >= interval {
            live.last_rpo_sample_ms = now;
            true
        } else {
            false
        }
    };
    if !due {
        return;
    }
    // One commit for every group (issue 20: one per group was O(groups) commits per interval,
    // proposed one after the other, and fell behind the interval at a thousand groups).
    let doc = c.status_doc(false, &[]);
    let samples: Vec<GroupRpo> = doc
        .groups
        .iter()
        .map(|g| GroupRpo {
            group: g.name.clone(),
            rpo_ms: u64::try_from(g.rpo_ms.max(0)).unwrap_or(0),
        })
        .collect();
    for chunk in samples.chunks(crate::state::MAX_ENTRIES) {
        let _ = c
            .propose_cmd(Command::RpoSamples {
                at_ms: 0,
                samples: chunk.to_vec(),
            })
            .await;
    }
}

/// Serves `GET /metrics` on the node's `metrics_listen` address (if set) until `stop`: the
/// figures are computed from the live status at every scrape.
async fn serve_metrics(
    c: &Coordinator,
    addr: Option<&str>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let registry = tandem_core::metrics::global().clone();
    let c = c.clone();
    registry.register_collector(move || {
        crate::metrics::families(&c.status_doc(false, &[]), c.is_leader())
    });
    let (bound, _task) = tandem_core::metrics::start(addr, registry, stop)
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
    info!(%bound, "metrics listening");
    Ok(())
}
