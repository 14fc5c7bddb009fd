//! What a `fence` step must do, decided from the group as the replicated state holds it. Pure:
//! takes values, returns the decision; `failover.rs` carries it out through raft.
//!
//! Unplanned runs (failover, drill-free takeovers): the group goes `failing-over` (no lease
//! renewals), then the epoch is raised and the lease revoked — unless this run already did
//! (a resumed step after a leader change). Planned runs (switchover, failback): the group goes
//! `switching-over`, which stops intake at the primary; it drains and releases its lease, and
//! the epoch rises at `promote` (raising it here would make the live primary restart its
//! journal).

use crate::state::{GroupState, Lease, LeaseStatus};
use tandem_core::ids::Epoch;
use tandem_runbooks::RunbookKind;

/// What the fence step proposes after the group state (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceAct {
    /// Planned: nothing more; the primary drains and releases its lease.
    StopIntake,
    /// Unplanned, and this run already raised the epoch over the revoked lease.
    AlreadyFenced,
    /// Unplanned: raise the epoch and revoke the lease (`fence` command).
    RaiseEpoch,
}

/// The fence step's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FenceDecision {
    /// The group state to commit first, when the group is not in it yet.
    pub set_state: Option<GroupState>,
    /// What follows.
    pub act: FenceAct,
}

/// Whether a run of `kind` is planned (zero loss, the primary drains).
pub(crate) fn planned_kind(kind: RunbookKind) -> bool {
    matches!(kind, RunbookKind::Switchover | RunbookKind::Failback)
}

/// Decides the fence step of a run of `kind` planned at `plan_epoch`, for a group in `state`
/// at `epoch` holding `lease`.
pub(crate) fn decide_fence(
    kind: RunbookKind,
    state: GroupState,
    epoch: Epoch,
    lease: Option<&Lease>,
    plan_epoch: Epoch,
) -> FenceDecision {
    let want = if planned_kind(kind) {
        GroupState::SwitchingOver
    } else {
        GroupState::FailingOver
    };
    let set_state = (state != want).then_some(want);
    let act = if planned_kind(kind) {
        FenceAct::StopIntake
    } else if lease.is_some_and(|l| {
        matches!(l.status, LeaseStatus::Revoked { .. }) && l.epoch < epoch && epoch > plan_epoch
    }) {
        FenceAct::AlreadyFenced
    } else {
        FenceAct::RaiseEpoch
    };
    FenceDecision { set_state, act }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(epoch: u64, status: LeaseStatus) -> Lease {
        Lease {
            holder: "hanoi-rep".into(),
            site: "hanoi".into(),
            epoch: Epoch(epoch),
            granted_ms: 0,
            expires_ms: 5_000,
            status,
        }
    }

    #[test]
    fn fence_decisions_follow_the_run_kind_the_state_and_the_lease() {
        use FenceAct::{AlreadyFenced, RaiseEpoch, StopIntake};
        use GroupState::{FailingOver, Protected, SwitchingOver};
        let active = LeaseStatus::Active;
        let revoked = LeaseStatus::Revoked { at_ms: 1 };
        let released = LeaseStatus::Released { at_ms: 1 };
        // (kind, state, epoch, lease, plan epoch) -> (state to set, act)
        let cases = [
            (
                RunbookKind::Switchover,
                Protected,
                3,
                Some(lease(3, active)),
                3,
                Some(SwitchingOver),
                StopIntake,
            ),
            (
                RunbookKind::Switchover,
                SwitchingOver,
                3,
                Some(lease(3, active)),
                3,
                None,
                StopIntake,
            ),
            (
                RunbookKind::Failback,
                Protected,
                4,
                None,
                4,
                Some(SwitchingOver),
                StopIntake,
            ),
            (
                RunbookKind::Failover,
                Protected,
                3,
                Some(lease(3, active)),
                3,
                Some(FailingOver),
                RaiseEpoch,
            ),
            (
                RunbookKind::Failover,
                FailingOver,
                3,
                Some(lease(3, active)),
                3,
                None,
                RaiseEpoch,
            ),
            (
                RunbookKind::Failover,
                Protected,
                3,
                None,
                3,
                Some(FailingOver),
                RaiseEpoch,
            ),
            // Resumed after this run raised the epoch over the revoked lease.
            (
                RunbookKind::Failover,
                FailingOver,
                4,
                Some(lease(3, revoked)),
                3,
                None,
                AlreadyFenced,
            ),
            // Revoked, but by an older run: the epoch is still the plan's, so fence again.
            (
                RunbookKind::Failover,
                FailingOver,
                3,
                Some(lease(2, revoked)),
                3,
                None,
                RaiseEpoch,
            ),
            // A released lease is no fence.
            (
                RunbookKind::Failover,
                FailingOver,
                4,
                Some(lease(3, released)),
                3,
                None,
                RaiseEpoch,
            ),
        ];
        for (i, (kind, state, epoch, l, plan, want_state, want_act)) in cases.iter().enumerate() {
            let got = decide_fence(*kind, *state, Epoch(*epoch), l.as_ref(), Epoch(*plan));
            assert_eq!(
                (got.set_state, got.act),
                (*want_state, *want_act),
                "#{i}: expect {want_state:?}/{want_act:?} got {:?}/{:?}",
                got.set_state,
                got.act
            );
        }
    }
}
