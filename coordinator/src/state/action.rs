//! Corrective actions after an exercise (add, assign, close) and the auditor's sign-off of a
//! run's review: typed commands whose records only this room writes (kinds `action` and
//! `review`, never recordable by a generic `record`). Pure.
//!
//! Invariants: an action's id is `A-<n>`, n counting from 1 in the order actions were added,
//! so every node names it alike; an action is added against a run of its own group; a closed
//! action is never assigned or closed again; a review is signed only for a finished run. The
//! record's actor is the caller's certificate identity, set by the admin API.

use super::event::Event;
use super::machine::{get_group, State};
use super::model::{ActionClosure, CorrectiveAction};
use super::rejection::Rejection;
use crate::audit::AuditKind;
use serde_json::json;
use tandem_runbooks::run::RunStatus;

/// What the `add_action` command carries.
pub(super) struct NewAction<'a> {
    pub actor: &'a str,
    pub group: &'a str,
    pub run_id: &'a str,
    pub title: &'a str,
    pub owner: &'a str,
    pub due: &'a str,
}

/// Whether `due` is a calendar date written `YYYY-MM-DD`.
pub fn is_due_date(due: &str) -> bool {
    due.len() == 10 && chrono::NaiveDate::parse_from_str(due, "%Y-%m-%d").is_ok()
}

/// Adds an action against a run of its group.
pub(super) fn add_action(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    a: &NewAction<'_>,
) -> Result<(), Rejection> {
    get_group(state, a.group)?;
    let run = state
        .runs
        .get(a.run_id)
        .ok_or_else(|| Rejection::UnknownRun {
            run_id: a.run_id.to_string(),
        })?;
    if run.group != a.group {
        return Err(Rejection::ActionRefused {
            id: String::new(),
            reason: format!(
                "run {} is of group {}, not {}",
                a.run_id, run.group, a.group
            ),
        });
    }
    if !is_due_date(a.due) {
        return Err(Rejection::ActionRefused {
            id: String::new(),
            reason: format!("due {:?} is not a date YYYY-MM-DD", a.due),
        });
    }
    let id = format!("A-{}", state.actions.len() + 1);
    let action = CorrectiveAction {
        id: id.clone(),
        group: a.group.to_string(),
        run_id: a.run_id.to_string(),
        title: a.title.to_string(),
        owner: a.owner.to_string(),
        due: a.due.to_string(),
        opened_by: a.actor.to_string(),
        opened_ms: now,
        closed: None,
    };
    let detail = json!({
        "op": "add", "id": id, "run_id": a.run_id, "title": a.title,
        "owner": a.owner, "due": a.due,
    });
    state.actions.insert(id.clone(), action);
    state.record_audit(ev, now, a.actor, AuditKind::Action, Some(a.group), detail);
    ev.push(Event::ActionChanged { id });
    Ok(())
}

/// The open action `id`, or why not.
fn open_action<'a>(state: &'a mut State, id: &str) -> Result<&'a mut CorrectiveAction, Rejection> {
    let action = state
        .actions
        .get_mut(id)
        .ok_or_else(|| Rejection::ActionRefused {
            id: id.to_string(),
            reason: "no such action".into(),
        })?;
    if let Some(c) = &action.closed {
        return Err(Rejection::ActionRefused {
            id: id.to_string(),
            reason: format!("closed by {} already", c.by),
        });
    }
    Ok(action)
}

/// Gives an open action to a new owner.
pub(super) fn assign_action(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    actor: &str,
    id: &str,
    owner: &str,
) -> Result<(), Rejection> {
    let action = open_action(state, id)?;
    let previous = std::mem::replace(&mut action.owner, owner.to_string());
    let group = action.group.clone();
    let detail = json!({"op": "assign", "id": id, "owner": owner, "previous_owner": previous});
    state.record_audit(ev, now, actor, AuditKind::Action, Some(&group), detail);
    ev.push(Event::ActionChanged { id: id.to_string() });
    Ok(())
}

/// Closes an open action with a note of what was done.
pub(super) fn close_action(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    actor: &str,
    id: &str,
    note: &str,
) -> Result<(), Rejection> {
    let action = open_action(state, id)?;
    action.closed = Some(ActionClosure {
        by: actor.to_string(),
        at_ms: now,
        note: note.to_string(),
    });
    let group = action.group.clone();
    let detail = json!({"op": "close", "id": id, "note": note});
    state.record_audit(ev, now, actor, AuditKind::Action, Some(&group), detail);
    ev.push(Event::ActionChanged { id: id.to_string() });
    Ok(())
}

/// The reviewer's sign-off of a finished run (the admin API lets only auditors propose it).
pub(super) fn sign_review(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    actor: &str,
    run_id: &str,
    note: &str,
) -> Result<(), Rejection> {
    let run = state
        .runs
        .get(run_id)
        .ok_or_else(|| Rejection::UnknownRun {
            run_id: run_id.to_string(),
        })?;
    if run.is_running() {
        return Err(Rejection::RunUnderWay {
            group: run.group.clone(),
            run_id: run_id.to_string(),
        });
    }
    let group = run.group.clone();
    let status = match &run.state.status {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "ok",
        RunStatus::Failed { .. } => "failed",
        RunStatus::Cancelled { .. } => "cancelled",
    };
    let detail = json!({
        "run_id": run_id,
        "run_kind": run.kind,
        "run_status": status,
        "note": note,
    });
    state.record_audit(ev, now, actor, AuditKind::Review, Some(&group), detail);
    Ok(())
}
