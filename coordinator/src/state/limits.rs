//! Size limits of commands (names, free text, entries, JSON details), checked before anything
//! else so an oversized command is refused without touching the state; these refusals are never
//! audited. Pure.

use super::command::Command;
use super::model::{GroupSpec, SiteSpec};
use super::rejection::Rejection;
use tandem_runbooks::run::RunEvent;

/// Longest accepted name (group, site, node, actor), in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest accepted free text (reasons), in bytes.
pub const MAX_TEXT_LEN: usize = 4096;
/// Largest accepted `Record` detail, as compact JSON bytes.
pub const MAX_DETAIL_BYTES: usize = 64 * 1024;
/// Most progress entries in one heartbeat, sites or groups in one bootstrap.
pub const MAX_ENTRIES: usize = 4096;

fn check_len(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() || value.len() > max {
        return Err(Rejection::FieldLength {
            field: field.to_string(),
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn check_reason(value: &str) -> Result<(), Rejection> {
    if value.len() > MAX_TEXT_LEN {
        return Err(Rejection::FieldLength {
            field: "reason".into(),
            len: value.len(),
            max: MAX_TEXT_LEN,
        });
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(Rejection::FieldLength {
            field: field.to_string(),
            len: value.len(),
            max,
        });
    }
    Ok(())
}

fn check_count(field: &str, len: usize) -> Result<(), Rejection> {
    if len > MAX_ENTRIES {
        return Err(Rejection::FieldLength {
            field: field.to_string(),
            len,
            max: MAX_ENTRIES,
        });
    }
    Ok(())
}

/// Size limits, checked before anything else; refusals here are never audited.
pub(super) fn check_limits(cmd: &Command) -> Result<(), Rejection> {
    match cmd {
        Command::Bootstrap {
            actor,
            sites,
            groups,
            ..
        } => check_bootstrap(actor, sites, groups)?,
        Command::Heartbeat {
            node,
            site,
            progress,
            ..
        } => {
            check_len("node", node, MAX_NAME_LEN)?;
            check_len("site", site, MAX_NAME_LEN)?;
            check_count("progress", progress.len())?;
            for p in progress {
                check_len("progress.group", &p.group, MAX_NAME_LEN)?;
            }
        }
        Command::AcquireLease {
            group, node, site, ..
        }
        | Command::RenewLease {
            group, node, site, ..
        }
        | Command::SyncDegraded {
            group, node, site, ..
        } => {
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("node", node, MAX_NAME_LEN)?;
            check_len("site", site, MAX_NAME_LEN)?;
        }
        Command::ReleaseLease { group, node, .. } => {
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("node", node, MAX_NAME_LEN)?;
        }
        Command::Fence {
            group,
            actor,
            reason,
            ..
        }
        | Command::SetGroupState {
            group,
            actor,
            reason,
            host: None,
            ..
        }
        | Command::PauseReplication {
            group,
            actor,
            reason,
            ..
        }
        | Command::ResumeReplication {
            group,
            actor,
            reason,
            ..
        } => {
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_reason(reason)?;
        }
        Command::SetGroupState {
            group,
            actor,
            reason,
            host: Some(host),
            ..
        } => {
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_len("host", host, MAX_NAME_LEN)?;
            check_reason(reason)?;
        }
        Command::MoveGroup {
            group,
            site,
            to,
            actor,
            reason,
            ..
        } => {
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("site", site, MAX_NAME_LEN)?;
            check_len("to", to, MAX_NAME_LEN)?;
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_reason(reason)?;
        }
        Command::Promote {
            group,
            to_site,
            actor,
            reason,
            ..
        } => {
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("to_site", to_site, MAX_NAME_LEN)?;
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_reason(reason)?;
        }
        Command::SiteDown { site, .. } | Command::SiteUp { site, .. } => {
            check_len("site", site, MAX_NAME_LEN)?;
        }
        Command::RpoSample { group, .. } => check_len("group", group, MAX_NAME_LEN)?,
        Command::RpoSamples { samples, .. } => {
            check_count("samples", samples.len())?;
            for s in samples {
                check_len("samples.group", &s.group, MAX_NAME_LEN)?;
            }
        }
        Command::StartRun { .. }
        | Command::RunEvent { .. }
        | Command::AddAction { .. }
        | Command::AssignAction { .. }
        | Command::CloseAction { .. }
        | Command::SignReview { .. }
        | Command::Record { .. } => check_run_limits(cmd)?,
    }
    Ok(())
}

/// Limits of the commands about runs, corrective actions, reviews and records (the rest of
/// [`check_limits`]).
fn check_run_limits(cmd: &Command) -> Result<(), Rejection> {
    match cmd {
        Command::StartRun {
            run_id,
            group,
            runbook_hash,
            plan,
            started_by,
            schedule,
            ..
        } => {
            if let Some(s) = schedule {
                check_reason(&s.reason)?;
            }
            check_len("run_id", run_id, MAX_NAME_LEN)?;
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("runbook_hash", runbook_hash, MAX_NAME_LEN)?;
            check_len("started_by", started_by, MAX_NAME_LEN)?;
            let len = serde_json::to_vec(plan).map_or(usize::MAX, |b| b.len());
            if len > MAX_DETAIL_BYTES {
                return Err(Rejection::FieldLength {
                    field: "plan".into(),
                    len,
                    max: MAX_DETAIL_BYTES,
                });
            }
        }
        Command::RunEvent { run_id, event, .. } => {
            check_len("run_id", run_id, MAX_NAME_LEN)?;
            check_run_event(event)?;
        }
        Command::AddAction {
            actor,
            group,
            run_id,
            title,
            owner,
            due,
            ..
        } => {
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_len("group", group, MAX_NAME_LEN)?;
            check_len("run_id", run_id, MAX_NAME_LEN)?;
            check_len("title", title, MAX_TEXT_LEN)?;
            check_len("owner", owner, MAX_NAME_LEN)?;
            check_len("due", due, MAX_NAME_LEN)?;
        }
        Command::AssignAction {
            actor, id, owner, ..
        } => {
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_len("id", id, MAX_NAME_LEN)?;
            check_len("owner", owner, MAX_NAME_LEN)?;
        }
        Command::CloseAction {
            actor, id, note, ..
        } => {
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_len("id", id, MAX_NAME_LEN)?;
            check_len("note", note, MAX_TEXT_LEN)?;
        }
        Command::SignReview {
            actor,
            run_id,
            note,
            ..
        } => {
            check_len("actor", actor, MAX_NAME_LEN)?;
            check_len("run_id", run_id, MAX_NAME_LEN)?;
            check_text("note", note, MAX_TEXT_LEN)?;
        }
        Command::Record {
            actor,
            group,
            detail,
            ..
        } => {
            check_len("actor", actor, MAX_NAME_LEN)?;
            if let Some(g) = group {
                check_len("group", g, MAX_NAME_LEN)?;
            }
            let len = serde_json::to_vec(detail).map_or(usize::MAX, |b| b.len());
            if len > MAX_DETAIL_BYTES {
                return Err(Rejection::FieldLength {
                    field: "detail".into(),
                    len,
                    max: MAX_DETAIL_BYTES,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// Limits of a bootstrap: the actor, the number of sites and groups, and their names.
fn check_bootstrap(actor: &str, sites: &[SiteSpec], groups: &[GroupSpec]) -> Result<(), Rejection> {
    check_len("actor", actor, MAX_NAME_LEN)?;
    check_count("sites", sites.len())?;
    check_count("groups", groups.len())?;
    for s in sites {
        check_len("sites.name", &s.name, MAX_NAME_LEN)?;
        if let Some(j) = &s.jurisdiction {
            check_len("sites.jurisdiction", j, MAX_NAME_LEN)?;
        }
    }
    for g in groups {
        check_len("groups.name", &g.name, MAX_NAME_LEN)?;
        check_len("groups.primary", &g.primary, MAX_NAME_LEN)?;
        check_len("groups.replica", &g.replica, MAX_NAME_LEN)?;
        check_count(
            "groups.allowed_jurisdictions",
            g.allowed_jurisdictions.len(),
        )?;
        for j in &g.allowed_jurisdictions {
            check_len("groups.allowed_jurisdictions", j, MAX_NAME_LEN)?;
        }
    }
    Ok(())
}

/// Limits of a run event's free text (step output, error) and of who decided.
fn check_run_event(event: &RunEvent) -> Result<(), Rejection> {
    match event {
        RunEvent::StepSucceeded { output, .. } => check_text("output", output, 4 * MAX_TEXT_LEN)?,
        RunEvent::StepFailed { error, output, .. } => {
            check_text("error", error, MAX_TEXT_LEN)?;
            check_text("output", output, 4 * MAX_TEXT_LEN)?;
        }
        RunEvent::Approved { by, .. }
        | RunEvent::ConfirmedDone { by, .. }
        | RunEvent::Rejected { by, .. }
        | RunEvent::Cancelled { by, .. } => check_len("by", by, MAX_NAME_LEN)?,
        RunEvent::StepStarted { .. } | RunEvent::LeaderChanged { .. } => {}
    }
    Ok(())
}
