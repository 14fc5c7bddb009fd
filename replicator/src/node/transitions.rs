//! RoleState transitions other than taking the primary role (that is the `primary` room): stopping a
//! group's role (sources, shipper, pipeline), the switchover drain (stop intake, wait for the
//! replica, release the lease) and becoming the replica (a clean hand-off, a reopened copy, or
//! a resync). Touches the pipeline and the data folder, and asks the coordinators.

use super::coordinators::connect;
use super::decide::{replica_start, ReplicaStart};
use super::layout::{journal_epochs, replica_dir, stored_watermark, RESYNC_MARKER};
use super::lock::lock;
use super::replica::{open_replica, register_replica};
use super::resync::start_resync;
use super::runtime::{GroupRt, NodeRt, RoleState};
use crate::apply::ReplicaGroup;
use crate::error::Result;
use std::sync::Arc;
use tandem_core::ids::Epoch;
use tandem_core::proto::ReleaseLeaseRequest;
use tracing::{info, warn};

/// Stops the group's role: capture sources, pipeline and shipper (primary), or the applying
/// of frames (replica, see [`retire_replica`]); the role becomes unknown.
pub(super) async fn stop_role(g: &mut GroupRt) {
    g.scans.clear();
    if let Some(stop) = g.sources_stop.take() {
        let _ = stop.send(true);
    }
    let role = std::mem::replace(&mut g.role, RoleState::Unknown);
    match role {
        RoleState::Primary { shipper, .. } => {
            g.cell.set_pipeline(None);
            if let Some(s) = shipper {
                let _ = s.stop().await;
            }
        }
        RoleState::Replica { rg: Some(rg), .. } => {
            let name = rg.name().to_owned();
            if let Err(e) = retire_replica(rg).await {
                warn!(group = %name, error = %e, "retiring the replica failed");
            }
        }
        RoleState::Replica { rg: None, .. } | RoleState::Unknown => {}
    }
}

/// Ends the applying of frames to a replica's files: waits for the batch being applied, after
/// which every Ship stream still open on `rg` is refused and ends. Removing the group from the
/// service only stops new streams: a stream opened earlier holds the group, and over a stalled
/// link (a partition that TCP outlives) it delivers the old primary's frames seconds later,
/// onto files that have since become the new primary's.
///
/// # Errors
/// The blocking task that retires it did not finish (it panicked or was cancelled).
pub(super) async fn retire_replica(
    rg: Arc<ReplicaGroup>,
) -> std::result::Result<(), tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || rg.retire()).await
}

/// Switchover at the primary: stops intake, then (in a task) waits out in-flight writes,
/// runs a last scan pass, waits until the replica has every seq, fences the pipeline and
/// releases the lease. Does nothing when the group is already draining.
pub(super) async fn start_drain(rt: &Arc<NodeRt>, g: &mut GroupRt) {
    let RoleState::Primary {
        epoch,
        pipeline,
        drained,
        draining,
        ..
    } = &mut g.role
    else {
        return;
    };
    if *draining {
        return;
    }
    *draining = true;
    let _ = drained;
    info!(group = %g.cfg.name, "switchover: stopping intake and draining to the replica");
    // Stop intake: no new write is accepted, in-flight ones finish.
    g.cell
        .fenced
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (pipeline, epoch, group) = (pipeline.clone(), *epoch, g.cfg.name.clone());
    let rt2 = rt.clone();
    tokio::spawn(async move {
        let cell = {
            let groups = rt2.groups.lock().await;
            groups.get(&group).map(|g| g.cell.clone())
        };
        if let Some(cell) = &cell {
            // Wait out writes between journal and image.
            let _g = cell.inflight.write().await;
        }
        // Scanned volumes: one last pass, so what their writers wrote before the switchover
        // is on the replica too.
        let scans = {
            let groups = rt2.groups.lock().await;
            groups
                .get(&group)
                .map(|g| g.scans.clone())
                .unwrap_or_default()
        };
        for s in scans {
            if let Err(e) = s.pass().await {
                warn!(%group, "drain: last scan pass failed: {e}");
                return;
            }
        }
        let last = pipeline.progress().last_captured_seq;
        if let Err(e) = pipeline.wait_replica_durable(last).await {
            warn!(%group, "drain failed: {e}");
            return;
        }
        pipeline.fence("switchover: intake stopped, drained");
        {
            let mut groups = rt2.groups.lock().await;
            if let Some(g) = groups.get_mut(&group) {
                if let RoleState::Primary { drained, .. } = &mut g.role {
                    *drained = Some(last);
                }
            }
        }
        let req = ReleaseLeaseRequest {
            group: group.clone(),
            epoch: epoch.0,
            node: rt2.node.name.clone(),
        };
        for addr in &rt2.coordinators {
            if let Some(mut c) = connect(&rt2.me.net, addr).await {
                let r = c.release_lease(req.clone()).await;
                match r {
                    Ok(_) => {
                        info!(%group, seq = last.0, "drained; lease released");
                        return;
                    }
                    Err(e) => warn!(%group, "release_lease via {addr}: {}", e.message()),
                }
            }
        }
    });
}

/// Makes this site the replica of `g` in `epoch` (primary at `primary_site`): a drained
/// primary continues from its drained seq, a trusted copy is reopened, anything else is
/// resynced.
pub(super) async fn become_replica(
    rt: &Arc<NodeRt>,
    g: &mut GroupRt,
    epoch: Epoch,
    primary_site: &str,
) -> Result<()> {
    let name = g.cfg.name.clone();
    info!(group = %name, %epoch, "becoming replica");
    // A clean hand-off (drained switchover) leaves this copy equal to the new primary's start.
    let clean = match &g.role {
        RoleState::Primary {
            drained: Some(seq), ..
        } => Some(*seq),
        _ => None,
    };
    let was_primary =
        matches!(g.role, RoleState::Primary { .. }) || !journal_epochs(rt, &name).is_empty();
    stop_role(g).await;
    g.cell
        .fenced
        .store(true, std::sync::atomic::Ordering::SeqCst);
    *lock(&g.cell.lease_deadline) = None;
    let rdir = replica_dir(rt, &name);
    if let Some(seq) = clean {
        let rg = Arc::new(open_replica(rt, &g.cfg)?);
        rg.set_fence(epoch)?;
        // Equal to the new primary's start: bound to its journal at its first Hello.
        rg.unbind_lineage()?;
        rg.reset_watermark(seq)?;
        register_replica(rt, g, epoch, rg);
        let _ = std::fs::remove_dir_all(rt.data_dir.join("journal").join(&name));
        return Ok(());
    }
    let existing = stored_watermark(&rdir)?;
    let interrupted = !was_primary && rdir.join(RESYNC_MARKER).exists();
    match replica_start(was_primary, interrupted, existing) {
        ReplicaStart::Resync(why) => start_resync(rt, g, epoch, primary_site, why),
        ReplicaStart::Reopen => {
            let rg = Arc::new(open_replica(rt, &g.cfg)?);
            rg.set_fence(epoch)?;
            register_replica(rt, g, epoch, rg);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::apply::StreamState;
    use crate::error::ReplicatorError;
    use tandem_core::frame::{Change, Encoder, FrameMeta};
    use tandem_core::ids::{GroupId, Seq};

    fn frame(first: u64, byte: u8) -> Vec<u8> {
        let meta = FrameMeta {
            group: GroupId::from_name("vol"),
            epoch: Epoch(1),
            first_seq: Seq(first),
        };
        let change = Change::write("disk0", 0, vec![byte; 4096], 0);
        Encoder::new(1).unwrap().encode(meta, &[change]).unwrap()
    }

    /// The split seen in `partition-sites-replica-majority`: the old primary's Ship stream,
    /// stalled by a partition, delivered its frames after this site was promoted, onto the
    /// new primary's image. Leaving the replica role must end every stream on its files.
    #[tokio::test]
    async fn leaving_the_replica_role_ends_the_streams_still_open_on_its_files() {
        let topo = tandem_core::config::Topology::parse(
            include_str!("../../../examples/two-sites.toml"),
            "two-sites.toml",
        )
        .unwrap();
        let cfg = topo.groups.iter().find(|g| g.name == "vol").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk0.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let resources = std::collections::HashMap::from([("disk0".to_owned(), image.clone())]);
        let rg = Arc::new(ReplicaGroup::open("vol", &dir.path().join("meta"), resources).unwrap());
        let mut stream = StreamState::default();
        // A stream opened while this site was the replica applies its frames...
        rg.receive_batch(vec![frame(1, 1)], &mut stream).unwrap();
        assert_eq!(rg.watermark(), Seq(1));
        let mut g = super::super::hosting::group_rt(cfg, Arc::default());
        g.role = RoleState::Replica {
            epoch: Epoch(1),
            rg: Some(Arc::clone(&rg)),
            resyncing: false,
        };
        stop_role(&mut g).await;
        // ...and none once the role is gone, though the stream still holds the group.
        let late = rg.receive_batch(vec![frame(2, 2)], &mut stream);
        assert!(matches!(late, Err(ReplicatorError::Closed(_))), "{late:?}");
        assert_eq!(rg.watermark(), Seq(1));
        assert_eq!(std::fs::read(&image).unwrap()[..4096], [1u8; 4096][..]);
    }
}
