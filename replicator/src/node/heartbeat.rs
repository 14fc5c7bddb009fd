//! The heartbeat loop: every interval, report progress to a coordinator (trying each in turn)
//! and reconcile each group with the lease it answered. Network I/O; the decisions are in
//! [`super::decide`].

use super::coordinators::connect_within;
use super::hosting::follow_placement;
use super::reconcile::reconcile;
use super::report::progress_report;
use super::runtime::NodeRt;
use crate::receive::GroupView;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::ids::Epoch;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::warn;

/// Sends a heartbeat every `heartbeat_interval` until `stop`, and reconciles every group
/// with the lease the answering coordinator gave.
pub(super) async fn heartbeat_loop(rt: Arc<NodeRt>, mut stop: watch::Receiver<bool>) {
    let every: Duration = rt.topo.cluster.heartbeat_interval.into();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A coordinator behind a cut link must not eat the whole detection window: the failure
    // detector declares this site down after `detect_after` without a heartbeat, so each try
    // gets a third of it (the next coordinator is tried right after).
    let detect: Duration = rt.topo.cluster.detect_after.into();
    let per_try = (detect / 3).clamp(Duration::from_millis(200), Duration::from_secs(2));
    let mut client: Option<CoordinatorClient<Channel>> = None;
    let mut next = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let req = progress_report(&rt).await;
        let sent = Instant::now();
        let mut reply = None;
        for _ in 0..rt.coordinators.len().max(1) {
            if client.is_none() {
                let addr = &rt.coordinators[next % rt.coordinators.len().max(1)];
                next += 1;
                client = connect_within(&rt.me.net, addr, per_try).await;
            }
            if let Some(c) = client.as_mut() {
                match c.heartbeat(req.clone()).await {
                    Ok(r) => {
                        reply = Some(r.into_inner());
                        break;
                    }
                    Err(e) => {
                        tracing::debug!("heartbeat failed: {}", e.message());
                        client = None;
                    }
                }
            }
        }
        let Some(reply) = reply else {
            warn!("no coordinator answered the heartbeat; the lease will run out");
            continue;
        };
        for lease in &reply.leases {
            // Known groups only: a name the topology does not hold is not this node's.
            if rt.topo.group(&lease.group).is_some() {
                rt.views.learn(
                    &lease.group,
                    GroupView {
                        primary: lease.primary.clone(),
                        replica: lease.replica.clone(),
                        epoch: Epoch(lease.epoch),
                        hosts: lease.hosts.clone().into_iter().collect(),
                    },
                );
            }
        }
        // Where the coordinators record each group's data at this site decides which groups
        // run here, before any of them takes a role from this answer.
        follow_placement(&rt, &reply.leases).await;
        for lease in reply.leases {
            if let Err(e) = reconcile(&rt, &lease, sent).await {
                warn!(group = %lease.group, "role change failed: {e}");
                if let Some(g) = rt.groups.lock().await.get_mut(&lease.group) {
                    g.last_error = e.to_string();
                }
            }
        }
    }
}
