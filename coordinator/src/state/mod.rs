//! The coordinators' replicated state machine: topology, roles, epochs, leases, RPO history and
//! the audit chain, changed only by [`apply`].
//!
//! [`apply`] is pure and deterministic: no I/O, no clock reads, no hash maps. Every command carries
//! `at_ms` (unix ms) stamped by the raft leader when it proposes; every node applies the same
//! committed command and reaches the same state, the same events and the same rejections.
//!
//! Rules worth knowing (see also the docs on [`Command`]):
//! - Time: the state keeps `clock_ms`, the highest `at_ms` applied; a command is evaluated at
//!   `now = max(at_ms, clock_ms)`, so a new leader whose clock is behind cannot move time back
//!   and re-open a lease window.
//! - Rejections: a refused command leaves the state untouched, except that refusals of role,
//!   epoch and operator commands (`bootstrap`, `release_lease`, `fence`, `promote`,
//!   `set_group_state`, `pause_replication`, `resume_replication`) append one `refused` audit
//!   record, and so does a `start_run` refused for residency (a plan placing data outside the
//!   group's `allowed_jurisdictions`). Refusals of high-rate commands (`heartbeat`, `acquire_lease`, `renew_lease`,
//!   `site_down`, `site_up`, `rpo_sample`, `rpo_samples`, `record`) and of commands over the size limits are not
//!   recorded, so a retrying replicator cannot flood the chain. `clock_ms` does not advance on a
//!   refusal.
//! - Leases never depend on heartbeats: only `acquire_lease`/`renew_lease` extend a lease, so
//!   heartbeats may be committed at any interval.
//! - A lease that was not released voluntarily *may be live* (its holder may still believe in
//!   it) until `expires_ms + drift_margin_ms`; until then nobody else gets a lease and no
//!   promotion is accepted. A fence revokes the lease but does not shorten that window.
//! - Renewals of a live lease are not audited (they would dominate the chain); grants, releases,
//!   revocations (in the `fence` record) and the blocking lease of every promotion are.
//!
//! Rooms (each pure; only [`apply`] in this file dispatches between them):
//! - `model`: the value types of the state (sites, groups, leases, progress, runs) and the
//!   enums `Mode`, `GroupState`, `Role`.
//! - `command`, `event`, `rejection`: what goes in and what comes out (wire/JSON types).
//! - `machine`: the [`State`] itself, its read accessors and the helpers every room uses.
//! - `limits`: size limits checked before anything else.
//! - `bootstrap`: the topology (first and later bootstraps).
//! - `site`: heartbeats and site up/down, with the group moves they cause.
//! - `lease`: lease grant, renewal, release, and a sync group's degradation.
//! - `role`: fence, promotion, group state and pause/resume.
//! - `rpo`, `record`: committed RPO samples (and when they are audited) and generic audit
//!   records.
//! - `residency`: where a group's data may be placed.
//! - `run`: runbook runs (start, events, closing records).
//! - `action`: corrective actions after an exercise and the reviewer's sign-off of a run.
//! - `snapshot`: the durable snapshot format (magic, version, checksum).
//!
//! Rooms import each other by their own paths (`super::machine::State`), never through this
//! file; `rejection` is `pub(crate)` so that `crate::error` names it directly. The tests, which
//! drive [`apply`] as a whole, are in `tests/`, one file per topic.

mod action;
mod bootstrap;
mod command;
mod event;
mod lease;
mod limits;
mod machine;
mod model;
mod moves;
mod record;
pub(crate) mod rejection;
mod residency;
mod role;
mod rpo;
mod run;
mod site;
mod snapshot;

pub use self::action::is_due_date;
pub use self::command::{Command, GroupRpo, LeaseRenewal};
pub use self::event::Event;
pub use self::limits::{MAX_DETAIL_BYTES, MAX_ENTRIES, MAX_NAME_LEN, MAX_TEXT_LEN};
pub use self::machine::State;
pub use self::model::{ActionClosure, CorrectiveAction};
pub use self::model::{
    ClusterSettings, DataLossWindow, Group, GroupMove, GroupProgress, GroupSpec, GroupState, Lease,
    LeaseStatus, Mode, Progress, Role, RpoSample, RpoWindow, Run, ScheduledDrill, Site, SiteSpec,
    SiteStatus, COORDINATOR_ACTOR, FIRST_EPOCH, RPO_RING_CAPACITY,
};
pub use self::rejection::Rejection;
pub use self::residency::plan_placements;
pub use self::rpo::{rpo_audit_step, RpoAuditReason, RpoSummary};
pub use self::snapshot::{SNAPSHOT_MAGIC, SNAPSHOT_VERSION};

use self::action::{add_action, assign_action, close_action, sign_review, NewAction};
use self::bootstrap::bootstrap;
use self::lease::{acquire_lease, release_lease, renew_lease, sync_degraded};
use self::limits::check_limits;
use self::machine::to_json;
use self::moves::{cancel_move, complete_move, start_move, MoveStart};
use self::record::record;
use self::role::{fence, promote, set_group_state, set_paused};
use self::rpo::rpo_sample;
use self::run::{run_event, start_run, RunStart};
use self::site::{heartbeat, site_status};
use crate::audit::AuditKind;
use serde_json::json;

/// Applies one committed command. On `Ok` the state changed as the events say; on `Err` it did
/// not, except for the `refused` audit record described in the module docs.
///
/// # Errors
/// A [`Rejection`], identical on every node for the same state and command.
pub fn apply(state: &mut State, cmd: &Command) -> Result<Vec<Event>, Rejection> {
    check_limits(cmd)?;
    let now = cmd.at_ms().max(state.clock_ms);
    let mut ev = Vec::new();
    match dispatch(state, &mut ev, now, cmd) {
        Ok(()) => {
            state.clock_ms = now;
            Ok(ev)
        }
        Err(rejection) => {
            audit_refusal(state, now, cmd, &rejection);
            Err(rejection)
        }
    }
}

/// Runs the command's room. On `Err` the state is unchanged.
fn dispatch(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    cmd: &Command,
) -> Result<(), Rejection> {
    match cmd {
        Command::Bootstrap {
            actor,
            settings,
            sites,
            groups,
            ..
        } => bootstrap(state, ev, now, actor, settings, sites, groups),
        _ if state.settings.is_none() => Err(Rejection::NotBootstrapped),
        Command::Heartbeat {
            node,
            site,
            progress,
            renew,
            ..
        } => {
            heartbeat(state, ev, now, node, site, progress)?;
            for r in renew {
                // A refused renewal (lease revoked, failing over, another epoch) leaves that
                // lease to run out, as a refused RenewLease would; the others are renewed.
                let _ = renew_lease(state, ev, now, &r.group, node, site, r.epoch);
            }
            Ok(())
        }
        Command::AcquireLease {
            group,
            node,
            site,
            epoch,
            ..
        } => acquire_lease(state, ev, now, group, node, site, *epoch),
        Command::RenewLease {
            group,
            node,
            site,
            epoch,
            ..
        } => renew_lease(state, ev, now, group, node, site, *epoch),
        Command::ReleaseLease {
            group, node, epoch, ..
        } => release_lease(state, ev, now, group, node, *epoch),
        Command::Fence {
            group,
            actor,
            reason,
            ..
        } => fence(state, ev, now, group, actor, reason),
        Command::Promote {
            group,
            to_site,
            actor,
            reason,
            planned,
            ..
        } => {
            promote(state, ev, now, group, to_site, actor, reason, *planned)?;
            cancel_move(state, ev, now, group, actor, to_site)
        }
        Command::SyncDegraded {
            group,
            node,
            site,
            epoch,
            on,
            ..
        } => sync_degraded(state, ev, now, group, node, site, *epoch, *on),
        Command::SetGroupState {
            group,
            state: to,
            reason,
            actor,
            host,
            ..
        } => {
            set_group_state(
                state,
                ev,
                now,
                group,
                role::StateChange {
                    to: *to,
                    reason,
                    actor,
                    host: host.as_deref(),
                },
            )?;
            match (to, host) {
                (GroupState::Protected, Some(host)) => {
                    complete_move(state, ev, now, group, host, actor)
                }
                _ => Ok(()),
            }
        }
        Command::PauseReplication {
            group,
            actor,
            reason,
            ..
        } => set_paused(state, ev, now, group, actor, reason, true),
        Command::ResumeReplication {
            group,
            actor,
            reason,
            ..
        } => set_paused(state, ev, now, group, actor, reason, false),
        Command::MoveGroup {
            group,
            site,
            to,
            actor,
            reason,
            ..
        } => start_move(
            state,
            ev,
            now,
            &MoveStart {
                group,
                site,
                to,
                actor,
                reason,
            },
        ),
        Command::SiteDown { site, .. } => site_status(state, ev, now, site, false, None),
        Command::SiteUp { site, .. } => site_status(state, ev, now, site, true, None),
        Command::RpoSample { group, rpo_ms, .. } => rpo_sample(state, ev, now, group, *rpo_ms),
        Command::RpoSamples { samples, .. } => {
            for s in samples {
                // An unknown group is refused before anything changes: skip it.
                let _ = rpo_sample(state, ev, now, &s.group, s.rpo_ms);
            }
            Ok(())
        }
        Command::Record { .. }
        | Command::StartRun { .. }
        | Command::RunEvent { .. }
        | Command::AddAction { .. }
        | Command::AssignAction { .. }
        | Command::CloseAction { .. }
        | Command::SignReview { .. } => dispatch_runs(state, ev, now, cmd),
    }
}

/// [`dispatch`] of records, runs, corrective actions and reviews.
fn dispatch_runs(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    cmd: &Command,
) -> Result<(), Rejection> {
    match cmd {
        Command::Record {
            actor,
            kind,
            group,
            detail,
            ..
        } => record(state, ev, now, actor, *kind, group.as_deref(), detail),
        Command::StartRun {
            run_id,
            group,
            kind,
            runbook_hash,
            plan,
            started_by,
            rto_from_ms,
            schedule,
            ..
        } => start_run(
            state,
            ev,
            now,
            RunStart {
                run_id,
                group,
                kind: *kind,
                runbook_hash,
                plan,
                started_by,
                rto_from_ms: *rto_from_ms,
                schedule: schedule.as_deref(),
            },
        ),
        Command::RunEvent { run_id, event, .. } => run_event(state, ev, now, run_id, event),
        Command::AddAction {
            actor,
            group,
            run_id,
            title,
            owner,
            due,
            ..
        } => add_action(
            state,
            ev,
            now,
            &NewAction {
                actor,
                group,
                run_id,
                title,
                owner,
                due,
            },
        ),
        Command::AssignAction {
            actor, id, owner, ..
        } => assign_action(state, ev, now, actor, id, owner),
        Command::CloseAction {
            actor, id, note, ..
        } => close_action(state, ev, now, actor, id, note),
        Command::SignReview {
            actor,
            run_id,
            note,
            ..
        } => sign_review(state, ev, now, actor, run_id, note),
        // Never reached: `dispatch` sends only the commands above here.
        _ => Ok(()),
    }
}

/// Appends the `refused` audit record of a refusal that is audited (see the module docs).
fn audit_refusal(state: &mut State, now: i64, cmd: &Command, rejection: &Rejection) {
    let audit = cmd.refusal_audit().or(match (cmd, rejection) {
        // A run refused for residency is an operator's attempt to place data where it
        // may not go: auditors must see it.
        (
            Command::StartRun {
                started_by, group, ..
            },
            Rejection::Residency { .. },
        ) => Some((started_by.as_str(), Some(group.as_str()))),
        _ => None,
    });
    if let Some((actor, group)) = audit {
        let detail = json!({
            "op": cmd.op_name(),
            "command": to_json(cmd),
            "rejection": to_json(rejection),
            "message": rejection.to_string(),
        });
        state
            .audit
            .append(now, actor, AuditKind::Refused, group, detail);
    }
}

#[cfg(test)]
mod tests;
