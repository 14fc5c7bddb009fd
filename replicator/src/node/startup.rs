//! Starting the node: opens every group's volumes and NBD exports, builds the runtime, binds the
//! gRPC, NBD and metrics listeners, runs the heartbeat loop until shutdown and stops every role.

use super::blocks::NodeBlocks;
use super::heartbeat::heartbeat_loop;
use super::lease::RoleCell;
use super::lock::lock;
use super::metrics::serve_metrics;
use super::runtime::{GroupRt, NodeRt, NodeRtShared, Residency, Resolver, RoleState};
use super::transitions::stop_role;
use super::volume::GroupVolume;
use crate::error::{ReplicatorError, Result};
use crate::nbd::{self, ExportMap};
use crate::receive::{ReplicationService, StepRunner, Views};
use crate::resync::BlockServer;
use crate::volume::FileVolume;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tandem_core::clock::SystemClock;
use tandem_core::config::{Capture, Group, Node, NodeRole, ResourceKind, Topology};
use tandem_core::net::Net;
use tandem_core::proto::ResyncProgress;
use tokio::sync::watch;
use tracing::{info, warn};

/// Runs the replicator node `name` of `topo` until `shutdown` resolves.
///
/// # Errors
/// The node is not a replicator of the topology, its files cannot be opened, or its listen
/// addresses cannot be bound.
pub async fn run(
    topo: Topology,
    name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let node = topo
        .node(&name)
        .filter(|n| n.role == NodeRole::Replicator)
        .cloned()
        .ok_or_else(|| {
            ReplicatorError::Task(format!("{name} is not a replicator of the topology"))
        })?;
    let data_dir = topo.node_data_dir(&node);
    crate::durable_dir::create_dir_durable(&data_dir)?;
    let net = Net::for_node(&topo, &name).map_err(|e| ReplicatorError::Task(e.to_string()))?;
    net.spawn_reloader();

    let opened = open_groups(&topo, &node)?;
    let exports = opened.exports;
    let rt = build_runtime(&topo, &node, data_dir, &net, opened.groups, opened.shared);
    let service = rt.service.clone();

    let (stop_tx, stop_rx) = watch::channel(false);
    serve_metrics(&rt, stop_rx.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&node.listen)
        .await
        .map_err(|e| ReplicatorError::io("bind", Path::new(&node.listen), e))?;
    let mut stop_grpc = stop_rx.clone();
    let grpc = tokio::spawn(crate::receive::serve(
        service.clone(),
        listener,
        async move {
            let _ = stop_grpc.changed().await;
        },
    ));
    let nbd_task = match &node.nbd_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ReplicatorError::io("bind", Path::new(addr), e))?;
            let tls = if topo.nbd_uses_tls(&node) {
                Some(
                    nbd::NbdTls::from_net(net.clone())
                        .map_err(|e| ReplicatorError::Task(format!("nodes.{name}.nbd_tls: {e}")))?,
                )
            } else {
                if !tandem_core::config::is_loopback_address(addr) {
                    warn!(%addr, "NBD is PLAINTEXT and unauthenticated on a non-loopback address (nbd_plaintext_ok = true): anyone who reaches this port can read and write the volumes");
                }
                None
            };
            info!(%addr, exports = exports.len(), tls = tls.is_some(), "NBD exports listening");
            Some(tokio::spawn(nbd::serve(
                l,
                Arc::new(exports),
                tls,
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    info!(node = %name, listen = %node.listen, "replicator running");
    let hb = tokio::spawn(heartbeat_loop(rt.clone(), stop_rx.clone()));
    let standbys = tokio::spawn(super::pg_standby::probe_loop(rt.clone(), stop_rx.clone()));
    shutdown.await;
    info!("replicator shutting down");
    let _ = stop_tx.send(true);
    service.close();
    let _ = hb.await;
    let _ = standbys.await;
    let _ = grpc.await;
    if let Some(t) = nbd_task {
        let _ = t.await;
    }
    let mut groups = rt.groups.lock().await;
    for g in groups.values_mut() {
        stop_role(g).await;
    }
    Ok(())
}

/// What [`open_groups`] opened: the NBD exports, each group's runtime and what the block
/// source shares of them.
struct Opened {
    exports: ExportMap,
    groups: BTreeMap<String, GroupRt>,
    shared: Shared,
}

/// The parts of [`NodeRtShared`] that opening the groups fills in.
struct Shared {
    cells: HashMap<String, Arc<RoleCell>>,
    paths: HashMap<(String, String), PathBuf>,
    wal_pushes: HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>,
}

/// Opens every group placed on this node (at its site: `hosts`, else the placement function).
/// Every volume of every such group is exported over NBD; an export is writable only while
/// this site is primary with a live lease.
fn open_groups(topo: &Topology, node: &Node) -> Result<Opened> {
    let site = node.site.as_str();
    let mut exports = ExportMap::new();
    let mut groups = BTreeMap::new();
    let mut paths = HashMap::new();
    let mut cells = HashMap::new();
    let mut wal_pushes = HashMap::new();
    for g in topo.groups_served_by(node) {
        let cell = Arc::new(RoleCell::default());
        cell.may_overflow.store(
            g.resources
                .iter()
                .all(|r| matches!(r.kind, ResourceKind::Volume { .. })),
            std::sync::atomic::Ordering::SeqCst,
        );
        for r in &g.resources {
            if matches!(r.kind, ResourceKind::Postgres { .. }) {
                wal_pushes.insert((g.name.clone(), r.name.clone()), Default::default());
            }
            if let ResourceKind::Volume { size, capture, .. } = &r.kind {
                let path = topo.resource_path(g, r, site).ok_or_else(|| {
                    ReplicatorError::Task(format!("no path for {}/{}", g.name, r.name))
                })?;
                let vol = open_volume(&r.name, &path, size.bytes(), &cell)?;
                // A scanned volume is written by others, not through an NBD export.
                if *capture == Capture::Nbd {
                    exports
                        .insert(&r.name, Arc::new(vol))
                        .map_err(|e| ReplicatorError::Task(format!("export {}: {e}", r.name)))?;
                }
                lock(&cell.images).push(path.clone());
                paths.insert((g.name.clone(), r.name.clone()), path);
            }
        }
        cells.insert(g.name.clone(), cell.clone());
        groups.insert(g.name.clone(), group_rt(g, cell));
    }
    let shared = Shared {
        cells,
        paths,
        wal_pushes,
    };
    Ok(Opened {
        exports,
        groups,
        shared,
    })
}

/// Opens (creating it sparse, or extending it) the image of volume `resource` at `path`,
/// behind the group's lease gate `cell`.
fn open_volume(
    resource: &str,
    path: &Path,
    size: u64,
    cell: &Arc<RoleCell>,
) -> Result<GroupVolume> {
    if let Some(dir) = path.parent() {
        crate::durable_dir::create_dir_durable(dir)?;
    }
    let file = FileVolume::create(path, size)
        .map_err(|e| ReplicatorError::Task(format!("opening volume {}: {e}", path.display())))?;
    Ok(GroupVolume {
        resource: resource.to_owned(),
        file,
        role: cell.clone(),
        clock: SystemClock::new(),
    })
}

/// A group's runtime before the coordinators have said anything.
pub(super) fn group_rt(g: &Group, cell: Arc<RoleCell>) -> GroupRt {
    GroupRt {
        cfg: g.clone(),
        role: RoleState::Unknown,
        sources_stop: None,
        scans: Vec::new(),
        cell,
        last_shipped: 0,
        last_tick: Instant::now(),
        throughput: 0.0,
        last_error: String::new(),
        quarantined: String::new(),
        resync: watch::channel(ResyncProgress {
            group: g.name.clone(),
            ..ResyncProgress::default()
        })
        .0,
        pg_feeds: Default::default(),
        pg_streams: Default::default(),
        pg_standbys: Default::default(),
    }
}

/// The node's runtime: the Replication service with this node's block source, the groups,
/// and the shared parts the block source reads.
fn build_runtime(
    topo: &Topology,
    node: &Node,
    data_dir: PathBuf,
    net: &Net,
    groups: BTreeMap<String, GroupRt>,
    shared: Shared,
) -> Arc<NodeRt> {
    let shared = Arc::new(NodeRtShared {
        cells: Mutex::new(shared.cells),
        replicas: Mutex::new(HashMap::new()),
        paths: shared.paths,
        peers: Mutex::new(HashMap::new()),
        node: std::sync::OnceLock::new(),
        wal_pushes: shared.wal_pushes,
        residency: Residency::of(topo, node),
        net: net.clone(),
    });
    let resolver_shared = shared.clone();
    let resolver: Resolver = Box::new(move |g: &str, r: &str| {
        resolver_shared
            .paths
            .get(&(g.to_owned(), r.to_owned()))
            .cloned()
    });
    let recovered = topo.node_recover_root(node);
    let blocks = NodeBlocks {
        shared: shared.clone(),
        snapshots: data_dir.join("snapshots"),
        recovered: recovered.clone(),
        server: BlockServer::new(resolver),
    };
    let views = Views::new();
    let service = ReplicationService::new()
        .with_block_source(Arc::new(blocks))
        .with_net(net.clone())
        .with_topology(topo)
        .with_views(views.clone())
        .with_recover_root(recovered);
    let service = match StepRunner::new(topo, &node.name, net.clone()) {
        Some(runner) => service.with_step_runner(runner),
        None => service,
    };
    let coordinators = topo
        .coordinators()
        .iter()
        .map(|c| format!("http://{}", c.node.listen))
        .collect();
    let rt = Arc::new(NodeRt {
        topo: topo.clone(),
        node: node.clone(),
        data_dir,
        service,
        views,
        groups: tokio::sync::Mutex::new(groups),
        coordinators,
        me: shared,
    });
    let _ = rt.me.node.set(Arc::downgrade(&rt));
    rt
}
