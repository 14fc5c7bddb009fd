//! Applying the coordinators' answer to one group: asks [`super::decide`] what to do with the
//! lease, then takes or renews the primary role, raises a replica's fence, starts a drain or
//! becomes the replica.

use super::lease::{unsafe_skip_lease_check, LEASE_SAFETY};
use super::lock::lock;
use super::primary::become_primary;
use super::runtime::{NodeRt, Role};
use super::transitions::become_replica;
use super::transitions::start_drain;
use crate::error::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::ids::Epoch;
use tandem_core::proto::GroupLease;

pub(super) async fn reconcile(rt: &Arc<NodeRt>, lease: &GroupLease, sent: Instant) -> Result<()> {
    let site = rt.node.site.clone();
    let epoch = Epoch(lease.epoch);
    let mut groups = rt.groups.lock().await;
    let Some(g) = groups.get_mut(&lease.group) else {
        return Ok(());
    };
    if lease.primary == site {
        let same = matches!(&g.role, Role::Primary { epoch: e, .. } if *e == epoch);
        if !same {
            become_primary(rt, g, epoch, &lease.replica).await?;
        }
        // The lease: counted from when the heartbeat was sent, minus a safety margin.
        let deadline = (lease.lease_remaining_ms > 0).then(|| {
            sent + Duration::from_millis(lease.lease_remaining_ms as u64)
                .saturating_sub(LEASE_SAFETY)
        });
        *lock(&g.cell.lease_deadline) = deadline;
        if lease.state == "switching-over" {
            start_drain(rt, g).await;
        }
    } else if lease.replica == site {
        if unsafe_skip_lease_check() && matches!(g.role, Role::Primary { .. }) {
            // The deliberately broken build keeps acting as primary after a demotion.
            return Ok(());
        }
        match &g.role {
            Role::Replica { epoch: e, rg, .. } if *e >= epoch => {
                let _ = rg;
            }
            Role::Replica {
                rg: Some(rg),
                resyncing: false,
                ..
            } => {
                rg.set_fence(epoch)?;
                g.role = Role::Replica {
                    epoch,
                    rg: Some(rg.clone()),
                    resyncing: false,
                };
            }
            Role::Replica { .. } => {}
            _ => become_replica(rt, g, epoch, &lease.primary).await?,
        }
    }
    Ok(())
}
