//! Starting the node: opens every group's volumes and NBD exports, builds the runtime, binds the
//! gRPC, NBD and metrics listeners, runs the heartbeat loop until shutdown and stops every role.

use super::blocks::NodeBlocks;
use super::heartbeat::heartbeat_loop;
use super::hosting::open_group;
use super::lock::lock;
use super::metrics::serve_metrics;
use super::runtime::{GroupRt, NodeRt, NodeRtShared, Residency, Resolver};
use super::transitions::stop_role;
use crate::error::{ReplicatorError, Result};
use crate::nbd;
use crate::receive::{ReplicationService, StepRunner, Views};
use crate::resync::BlockServer;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tandem_core::config::{Node, NodeRole, Topology};
use tandem_core::net::Net;
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
    super::malloc::fix_thresholds();
    let data_dir = topo.node_data_dir(&node);
    crate::durable_dir::create_dir_durable(&data_dir)?;
    let net = Net::for_node(&topo, &name).map_err(|e| ReplicatorError::Task(e.to_string()))?;
    net.spawn_reloader();

    let shared = Arc::new(NodeRtShared {
        residency: Residency::of(&topo, &node),
        net: net.clone(),
        ..NodeRtShared::default()
    });
    let mut groups = BTreeMap::new();
    for g in topo.groups_served_by(&node) {
        groups.insert(g.name.clone(), open_group(&topo, &node, &shared, g)?);
    }
    let exports = shared.exports.clone();
    let rt = build_runtime(&topo, &node, data_dir, &net, groups, shared);
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
            Some(tokio::spawn(nbd::serve(l, exports, tls, stop_rx.clone())))
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

/// The node's runtime: the Replication service with this node's block source, the groups,
/// and the shared parts the block source reads.
fn build_runtime(
    topo: &Topology,
    node: &Node,
    data_dir: PathBuf,
    net: &Net,
    groups: BTreeMap<String, GroupRt>,
    shared: Arc<NodeRtShared>,
) -> Arc<NodeRt> {
    let resolver_shared = shared.clone();
    let resolver: Resolver = Box::new(move |g: &str, r: &str| {
        lock(&resolver_shared.paths)
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
