//! Applying the coordinators' answer to one group: asks [`super::decide::transition`] what to
//! do with the lease, then takes or renews the primary role, raises a replica's fence, starts
//! a drain or becomes the replica.

use super::decide::{lease_deadline, transition, Told, Transition};
use super::lease::unsafe_skip_lease_check;
use super::lock::lock;
use super::primary::{become_primary, follow_replica_host};
use super::runtime::{NodeRt, RoleState};
use super::transitions::{become_replica, start_drain};
use crate::error::Result;
use std::sync::Arc;
use std::time::Instant;
use tandem_core::proto::GroupLease;

/// Brings the group of `lease` to the role the coordinators gave this site; `sent` is when the
/// heartbeat that brought the lease was sent (the lease is counted from then).
///
/// # Errors
/// Taking or leaving a role failed (files, journal, network); the next heartbeat tries again.
pub(super) async fn reconcile(rt: &Arc<NodeRt>, lease: &GroupLease, sent: Instant) -> Result<()> {
    let told = Told::of(lease, &rt.node.site);
    let epoch = told.epoch;
    let mut groups = rt.groups.lock().await;
    let Some(g) = groups.get_mut(&lease.group) else {
        return Ok(());
    };
    match transition(told, g.role.held(), unsafe_skip_lease_check()) {
        Transition::Keep => {}
        Transition::Primary { take, drain } => {
            if take {
                become_primary(rt, g, epoch, &lease.replica).await?;
            }
            *lock(&g.cell.lease_deadline) = lease_deadline(sent, lease.lease_remaining_ms);
            if drain {
                start_drain(rt, g).await;
            }
        }
        Transition::RaiseFence => {
            if let RoleState::Replica { rg: Some(rg), .. } = &g.role {
                let rg = rg.clone();
                rg.set_fence(epoch)?;
                g.role = RoleState::Replica {
                    epoch,
                    rg: Some(rg),
                    resyncing: false,
                };
            }
        }
        Transition::BecomeReplica => become_replica(rt, g, epoch, &lease.primary).await?,
    }
    if matches!(g.role, RoleState::Primary { .. }) {
        follow_replica_host(rt, g, &lease.replica).await;
    }
    Ok(())
}
