//! Pure decisions of the node: what to do with the lease the coordinators answered for a group
//! ([`transition`]), whether a write may pass the lease gate ([`write_allowed`]), how a
//! returning replica starts ([`replica_start`]) and what state a group reports. Values in,
//! values out: no I/O, no clock (callers pass the instants), no locks. The I/O rooms
//! (`reconcile`, `lease`, `transitions`, `report`) gather the inputs and act on the answer.

use std::time::{Duration, Instant};
use tandem_core::group::GroupState;
use tandem_core::ids::Epoch;
use tandem_core::proto::GroupLease;

/// Keep this much of the lease unused: stop writes before the coordinators' expiry.
pub(super) const LEASE_SAFETY: Duration = Duration::from_millis(200);

/// Which side of a group the lease gives this site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// This site is the group's primary in the lease's epoch.
    Primary,
    /// This site is the group's replica.
    Replica,
    /// The lease names neither side as this site.
    Neither,
}

/// What the coordinators said about one group, from this site's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Told {
    /// The group's epoch.
    pub(super) epoch: Epoch,
    /// This site's side in it.
    pub(super) side: Side,
    /// The group's state, parsed once where the answer arrives (`None` for a name this build
    /// does not know: the replicator then follows the roles alone).
    pub(super) phase: Option<GroupState>,
}

impl Told {
    /// Reads a lease as seen from `site` (the primary side wins when the lease names this site
    /// for both).
    pub(super) fn of(lease: &GroupLease, site: &str) -> Told {
        let side = if lease.primary == site {
            Side::Primary
        } else if lease.replica == site {
            Side::Replica
        } else {
            Side::Neither
        };
        Told {
            epoch: Epoch(lease.epoch),
            side,
            phase: GroupState::from_name(&lease.state),
        }
    }
}

/// The group's current role on this node, as far as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// Not yet told by the coordinators.
    Unknown,
    /// Primary in `epoch`.
    Primary {
        /// The epoch.
        epoch: Epoch,
    },
    /// Replica in `epoch`; `open` when its copy is open and applying (not resyncing).
    Replica {
        /// The epoch.
        epoch: Epoch,
        /// The replica group is open (not resyncing).
        open: bool,
    },
}

/// What to do with a group after the coordinators' answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// Nothing changes.
    Keep,
    /// This site is primary: take the role first when `take` (not primary in this epoch yet),
    /// then renew the lease deadline; start the drain when `drain` (switchover).
    Primary {
        /// Become primary in the told epoch.
        take: bool,
        /// Stop intake and drain to the replica.
        drain: bool,
    },
    /// The open replica moves to the newer epoch: raise its fence.
    RaiseFence,
    /// Become the replica (from unknown, or from primary after a demotion).
    BecomeReplica,
}

/// Decides what to do with a group's role given what the coordinators said.
/// `disobey_fencing` is the deliberately broken chaos build (see `unsafe_skip_lease_check`):
/// a demoted primary keeps acting as primary.
pub(super) fn transition(told: Told, held: Held, disobey_fencing: bool) -> Transition {
    match told.side {
        Side::Primary => Transition::Primary {
            take: !matches!(held, Held::Primary { epoch } if epoch == told.epoch),
            // Only a planned switchover drains: the primary stops intake, drains to the replica
            // and releases its lease; every other state follows the roles alone.
            drain: told.phase == Some(GroupState::SwitchingOver),
        },
        Side::Replica => match held {
            // The deliberately broken build keeps acting as primary after a demotion.
            Held::Primary { .. } if disobey_fencing => Transition::Keep,
            Held::Replica { epoch, .. } if epoch >= told.epoch => Transition::Keep,
            Held::Replica { open: true, .. } => Transition::RaiseFence,
            // A resync is running: it registers the replica when done.
            Held::Replica { open: false, .. } => Transition::Keep,
            Held::Unknown | Held::Primary { .. } => Transition::BecomeReplica,
        },
        Side::Neither => Transition::Keep,
    }
}

/// The local lease deadline: counted from when the heartbeat was `sent`, minus
/// [`LEASE_SAFETY`]; none when the coordinators granted no lease (`remaining_ms <= 0`).
pub(super) fn lease_deadline(sent: Instant, remaining_ms: i64) -> Option<Instant> {
    (remaining_ms > 0)
        .then(|| sent + Duration::from_millis(remaining_ms as u64).saturating_sub(LEASE_SAFETY))
}

/// Whether a lease with local `deadline` is still live at `now`.
pub(super) fn lease_live(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| now < d)
}

/// The lease gate: a write may be journaled only when the group is not fenced (demoted or
/// draining), the lease is live and the group has a pipeline (it is primary here).
pub(super) fn write_allowed(fenced: bool, lease_live: bool, has_pipeline: bool) -> bool {
    !fenced && lease_live && has_pipeline
}

/// How a group becomes replica when no clean hand-off left its copy equal to the primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplicaStart {
    /// The stored copy is trusted: reopen it and continue from its watermark.
    Reopen,
    /// The copy is resynced from the primary, for the reason given.
    Resync(&'static str),
}

/// Decides how a replica starts: an old primary (it holds journals) and a copy whose resync
/// was interrupted are resynced, as is a copy that never received anything; otherwise the
/// stored copy is reopened.
pub(super) fn replica_start(
    was_primary: bool,
    interrupted: bool,
    stored_watermark: Option<u64>,
) -> ReplicaStart {
    if was_primary {
        ReplicaStart::Resync("the old primary returns as replica")
    } else if interrupted {
        ReplicaStart::Resync("a resync was interrupted")
    } else if stored_watermark.is_none_or(|w| w == 0) {
        ReplicaStart::Resync("initial sync")
    } else {
        ReplicaStart::Reopen
    }
}

/// The state a primary group reports: draining during a switchover, ready while it takes
/// writes, starting before that.
pub(super) fn primary_state(draining: bool, ready: bool) -> &'static str {
    if draining {
        "draining"
    } else if ready {
        "ready"
    } else {
        "starting"
    }
}

/// The reason a primary group reports: the pipeline's own, else the last role-change error.
pub(super) fn primary_reason(pipeline_reason: &str, last_error: &str) -> String {
    if pipeline_reason.is_empty() {
        last_error.to_owned()
    } else {
        pipeline_reason.to_owned()
    }
}

/// The reason an in-sync replica group reports: the last error and what its last resync kept
/// in quarantine, joined by `; `, empty parts left out.
pub(super) fn replica_reason(last_error: &str, quarantined: &str) -> String {
    [last_error, quarantined]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(primary: &str, replica: &str, epoch: u64, state: &str) -> GroupLease {
        GroupLease {
            group: "g".into(),
            epoch,
            primary: primary.into(),
            replica: replica.into(),
            state: state.into(),
            ..GroupLease::default()
        }
    }

    #[test]
    fn lease_state_names_parse_to_the_shared_group_state() {
        let cases = [
            ("switching-over", Some(GroupState::SwitchingOver)),
            ("protected", Some(GroupState::Protected)),
            ("failing-over", Some(GroupState::FailingOver)),
            ("Switching-Over", None),
            ("", None),
            ("some-future-state", None),
        ];
        for (i, (s, want)) in cases.iter().enumerate() {
            let got = Told::of(&lease("a", "b", 1, s), "a").phase;
            assert_eq!(got, *want, "#{i}: expect {want:?} got {got:?} for {s:?}");
        }
    }

    #[test]
    fn told_reads_this_sites_side_with_primary_first() {
        let cases = [
            (lease("a", "b", 3, "protected"), "a", Side::Primary),
            (lease("a", "b", 3, "protected"), "b", Side::Replica),
            (lease("a", "b", 3, "protected"), "c", Side::Neither),
            (lease("a", "a", 3, "protected"), "a", Side::Primary),
            (lease("", "", 3, "protected"), "a", Side::Neither),
        ];
        for (i, (l, site, want)) in cases.iter().enumerate() {
            let got = Told::of(l, site);
            assert_eq!(got.side, *want, "#{i}: expect {want:?} got {:?}", got.side);
            assert_eq!(
                got.epoch,
                Epoch(3),
                "#{i}: expect epoch 3 got {}",
                got.epoch
            );
        }
        let s = Told::of(&lease("a", "b", 1, "switching-over"), "a");
        assert_eq!(s.phase, Some(GroupState::SwitchingOver));
    }

    #[test]
    fn transition_follows_the_lease_and_the_held_role() {
        let told = |side, epoch, phase| Told {
            epoch: Epoch(epoch),
            side,
            phase,
        };
        let (p, r, n) = (Side::Primary, Side::Replica, Side::Neither);
        let (sw, other) = (Some(GroupState::SwitchingOver), Some(GroupState::Protected));
        let prim = |e| Held::Primary { epoch: Epoch(e) };
        let repl = |e, open| Held::Replica {
            epoch: Epoch(e),
            open,
        };
        let primary = |take, drain| Transition::Primary { take, drain };
        use Transition::{BecomeReplica, Keep, RaiseFence};
        let cases = [
            // Primary side: take the role unless already primary in this very epoch.
            (
                told(p, 5, other),
                Held::Unknown,
                false,
                primary(true, false),
            ),
            (told(p, 5, other), prim(5), false, primary(false, false)),
            (told(p, 5, other), prim(4), false, primary(true, false)),
            (told(p, 5, other), prim(6), false, primary(true, false)),
            (
                told(p, 5, other),
                repl(5, true),
                false,
                primary(true, false),
            ),
            (
                told(p, 5, other),
                repl(4, false),
                false,
                primary(true, false),
            ),
            (told(p, 5, sw), prim(5), false, primary(false, true)),
            (told(p, 5, sw), Held::Unknown, false, primary(true, true)),
            (told(p, 5, other), prim(5), true, primary(false, false)),
            // Replica side.
            (told(r, 5, other), Held::Unknown, false, BecomeReplica),
            (told(r, 5, other), prim(4), false, BecomeReplica),
            (told(r, 5, other), prim(4), true, Keep),
            (told(r, 5, other), Held::Unknown, true, BecomeReplica),
            (told(r, 5, other), repl(5, true), false, Keep),
            (told(r, 5, other), repl(6, true), false, Keep),
            (told(r, 5, other), repl(5, false), false, Keep),
            (told(r, 5, other), repl(4, true), false, RaiseFence),
            (told(r, 5, other), repl(4, true), true, RaiseFence),
            (told(r, 5, other), repl(4, false), false, Keep),
            (told(r, 5, sw), repl(4, true), false, RaiseFence),
            // Neither side: nothing to do, whatever is held.
            (told(n, 5, other), Held::Unknown, false, Keep),
            (told(n, 5, sw), prim(5), false, Keep),
            (told(n, 5, other), repl(4, true), false, Keep),
        ];
        for (i, (t, held, disobey, want)) in cases.iter().enumerate() {
            let got = transition(*t, *held, *disobey);
            assert_eq!(
                got, *want,
                "#{i}: expect {want:?} got {got:?} (told {t:?}, held {held:?}, disobey {disobey})"
            );
        }
    }

    #[test]
    fn lease_deadline_counts_from_sending_minus_the_safety_margin() {
        let sent = Instant::now();
        let cases = [
            (0, None),
            (-5, None),
            (1, Some(sent)),
            (200, Some(sent)),
            (1_000, Some(sent + Duration::from_millis(800))),
        ];
        for (i, (ms, want)) in cases.iter().enumerate() {
            let got = lease_deadline(sent, *ms);
            assert_eq!(got, *want, "#{i}: expect {want:?} got {got:?} for {ms} ms");
        }
    }

    #[test]
    fn the_lease_gate_admits_writes_only_unfenced_with_a_live_lease_and_a_pipeline() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let live_cases = [(None, false), (Some(now), false), (Some(later), true)];
        for (i, (d, want)) in live_cases.iter().enumerate() {
            let got = lease_live(*d, now);
            assert_eq!(got, *want, "#{i}: expect {want} got {got} for {d:?}");
        }
        for i in 0..8u8 {
            let (fenced, live, pipe) = (i & 1 != 0, i & 2 != 0, i & 4 != 0);
            let want = !fenced && live && pipe;
            let got = write_allowed(fenced, live, pipe);
            assert_eq!(
                got, want,
                "#{i}: expect {want} got {got} (fenced {fenced}, live {live}, pipeline {pipe})"
            );
        }
    }

    #[test]
    fn replica_start_resyncs_old_primaries_interrupted_and_empty_copies() {
        let resync = ReplicaStart::Resync;
        let cases = [
            (
                true,
                true,
                Some(9),
                resync("the old primary returns as replica"),
            ),
            (
                true,
                false,
                None,
                resync("the old primary returns as replica"),
            ),
            (false, true, Some(9), resync("a resync was interrupted")),
            (false, false, None, resync("initial sync")),
            (false, false, Some(0), resync("initial sync")),
            (false, false, Some(9), ReplicaStart::Reopen),
        ];
        for (i, (was_primary, interrupted, stored, want)) in cases.iter().enumerate() {
            let got = replica_start(*was_primary, *interrupted, *stored);
            assert_eq!(got, *want, "#{i}: expect {want:?} got {got:?}");
        }
    }

    #[test]
    fn reported_states_and_reasons() {
        let states = [
            (true, true, "draining"),
            (true, false, "draining"),
            (false, true, "ready"),
            (false, false, "starting"),
        ];
        for (i, (draining, ready, want)) in states.iter().enumerate() {
            let got = primary_state(*draining, *ready);
            assert_eq!(got, *want, "#{i}: expect {want} got {got}");
        }
        let reasons = [
            ("", "", ""),
            ("err", "", "err"),
            ("", "kept x", "kept x"),
            ("err", "kept x", "err; kept x"),
        ];
        for (i, (e, q, want)) in reasons.iter().enumerate() {
            let got = replica_reason(e, q);
            assert_eq!(got, *want, "#{i}: expect {want:?} got {got:?}");
        }
        assert_eq!(primary_reason("", "last"), "last");
        assert_eq!(primary_reason("journal full", "last"), "journal full");
    }
}
