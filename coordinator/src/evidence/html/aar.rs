//! The after-action section of `report.html`: one report per exercise (scope, objectives,
//! participants, approvals, timeline, measured RTO and data loss against target, integrity
//! checks, deviations, corrective actions, sign-off, next due exercise) and every corrective
//! action. Pure. Every word a reader sees is in [`AarText`] ([`EN`] today), so another
//! language is one more table.

use super::aar_text::{AarText, EN};
use super::esc;
use crate::evidence::derive::aar::{Act, ActionView, AfterActionDoc, Deviation, Exercise};
use crate::evidence::derive::RunKind;
use std::fmt::Write as _;

/// A participant's act in the language of `t`.
fn act_text(t: &AarText, a: &Act) -> String {
    let word = match a.act.as_str() {
        "started" => t.act_started,
        "started-on-schedule" => t.act_on_schedule,
        "approved" => t.act_approved,
        "rejected" => t.act_rejected,
        "confirmed-done" => t.act_confirmed,
        "verified" => t.act_verified,
        "refused" => t.act_refused,
        "added-action" => t.act_added,
        "closed-action" => t.act_closed,
        "signed-review" => t.act_signed,
        other => other,
    };
    match &a.about {
        Some(x) => format!("{} {}", esc(word), esc(x)),
        None => esc(word),
    }
}

/// A deviation's sentence in the language of `t` (its English `what` for a kind it does not
/// know), escaped.
fn deviation_text(t: &AarText, d: &Deviation) -> String {
    let template = match d.kind.as_str() {
        "rto-missed" => t.dev_rto_missed,
        "rto-not-measured" => t.dev_rto_not_measured,
        "data-loss-over-target" => t.dev_data_loss,
        "step-failed" => t.dev_step_failed,
        "step-retried" => t.dev_step_retried,
        "step-skipped" => t.dev_step_skipped,
        "approval-rejected" => t.dev_approval_rejected,
        "refused" => t.dev_refused,
        "outcome" => t.dev_outcome,
        "action-overdue" => t.dev_action_overdue,
        _ => return esc(&d.what),
    };
    let ms = |v: Option<i64>| v.map(secs).unwrap_or_default();
    esc(&template
        .replace("{measured}", &ms(d.measured_ms))
        .replace("{target}", &ms(d.target_ms))
        .replace("{step}", d.step.as_deref().unwrap_or("?"))
        .replace("{actor}", d.actor.as_deref().unwrap_or("?"))
        .replace("{detail}", d.detail.as_deref().unwrap_or("")))
}

/// How the data-loss window was found, in the language of `t`.
fn basis_text(t: &AarText, basis: &str) -> &'static str {
    match basis {
        "drill" => t.basis_drill,
        "switchover" => t.basis_switchover,
        "failover" => t.basis_failover,
        _ => t.basis_not_recorded,
    }
}

/// `1234` ms as `1.234 s`.
fn secs(ms: i64) -> String {
    format!("{}.{:03} s", ms / 1000, (ms % 1000).abs())
}

fn verdict(t: &AarText, ok: Option<bool>) -> String {
    match ok {
        Some(true) => format!("<span class=\"pass\">{}</span>", t.passed),
        Some(false) => format!("<span class=\"fail\">{}</span>", t.failed),
        None => format!("<span class=\"na\">{}</span>", t.unknown),
    }
}

fn met(t: &AarText, ok: Option<bool>) -> String {
    match ok {
        Some(true) => format!(" <span class=\"pass\">{}</span>", t.met),
        Some(false) => format!(" <span class=\"fail\">{}</span>", t.missed),
        None => String::new(),
    }
}

fn kind_name(t: &AarText, k: RunKind) -> &'static str {
    match k {
        RunKind::Switchover => t.switchover,
        RunKind::Failover => t.failover,
        _ => t.drill,
    }
}

/// Appends the after-action section (English) to `o`.
pub fn section(o: &mut String, doc: &AfterActionDoc) {
    section_in(o, doc, &EN);
}

/// Appends the after-action section in the language of `t` to `o`.
pub fn section_in(o: &mut String, doc: &AfterActionDoc, t: &AarText) {
    let _ = write!(
        o,
        "<h2 id=\"after-action\">{}</h2><p>{}</p>",
        t.title, t.intro
    );
    if doc.exercises.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", t.no_exercise);
    }
    for e in &doc.exercises {
        exercise(o, e, t);
    }
    let _ = write!(
        o,
        "<h3 id=\"aar-actions\">{}</h3><p>{}: {}</p>",
        t.all_actions,
        t.as_of,
        esc(&doc.as_of)
    );
    if doc.actions.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", t.no_actions_in_window);
    } else {
        actions_table(o, &doc.actions, t, true);
    }
}

/// One exercise's report.
fn exercise(o: &mut String, e: &Exercise, t: &AarText) {
    let group = e.scope.groups.join(", ");
    let _ = write!(
        o,
        "<h3 id=\"aar-{id}\">{k} {id} — {gl} {g}</h3><table>\
         <tr><th>{rb}</th><td>{runbook}</td></tr>\
         <tr><th>{st}</th><td>{start}</td></tr><tr><th>{en}</th><td>{end}</td></tr>\
         <tr><th>{oc}</th><td>{outcome}</td></tr><tr><th>{sb}</th><td>{by}</td></tr>",
        id = esc(&e.id),
        k = kind_name(t, e.kind),
        gl = t.group,
        g = esc(&group),
        rb = t.runbook,
        runbook = esc(&e.runbook),
        st = t.start,
        start = esc(&e.start),
        en = t.end,
        end = esc(&e.end),
        oc = t.outcome,
        outcome = esc(e.outcome.as_deref().unwrap_or("—")),
        sb = t.started_by,
        by = if e.scheduled {
            t.on_schedule.to_string()
        } else {
            format!("<code>{}</code>", esc(&e.started_by))
        },
    );
    scope_rows(o, e, t);
    measured_rows(o, e, t);
    let next = match &e.next_due {
        Some(n) => format!(
            "{}{} ({} {})",
            esc(&n.due),
            if n.overdue {
                format!(" <span class=\"fail\">{}</span>", t.overdue)
            } else {
                String::new()
            },
            t.every,
            secs(i64::try_from(n.every_ms).unwrap_or(i64::MAX))
        ),
        None => format!("<span class=\"na\">{}</span>", t.no_schedule),
    };
    let _ = write!(
        o,
        "<tr><th>{}</th><td>{next}</td></tr><tr><th>{}</th><td>{}</td></tr></table>",
        t.next_due,
        t.records,
        e.record_indexes
            .iter()
            .map(|x| format!("#{x}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    participants(o, e, t);
    approvals(o, e, t);
    timeline(o, e, t);
    integrity(o, e, t);
    deviations(o, e, t);
    let _ = write!(o, "<h4>{}</h4>", t.corrective_actions);
    if e.corrective_actions.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", t.no_actions);
    } else {
        actions_table(o, &e.corrective_actions, t, false);
    }
    sign_off(o, e, t);
}

/// Scope and objectives rows.
fn scope_rows(o: &mut String, e: &Exercise, t: &AarText) {
    let resources = if e.scope.resources.is_empty() {
        format!("<span class=\"na\">{}</span>", t.resources_none)
    } else {
        esc(&e.scope.resources.join(", "))
    };
    let sites = e
        .scope
        .sites
        .iter()
        .map(|s| {
            let role = match s.role.as_str() {
                "primary" => t.role_primary,
                "replica" => t.role_replica,
                _ => t.role_step,
            };
            format!("{} ({role})", esc(&s.site))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let target = |v: Option<i64>| {
        v.map_or_else(
            || format!("<span class=\"na\">{}</span>", t.no_target),
            secs,
        )
    };
    let _ = write!(
        o,
        "<tr><th colspan=\"2\">{}</th></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}</th><td>{resources}</td></tr><tr><th>{}</th><td>{sites}</td></tr>\
         <tr><th colspan=\"2\">{}</th></tr><tr><th>{}</th><td>{}</td></tr>\
         <tr><th>{}</th><td>{}</td></tr>",
        t.scope,
        t.groups,
        esc(&e.scope.groups.join(", ")),
        t.resources,
        t.sites,
        t.objectives,
        t.rto_target,
        target(e.objectives.rto_target_ms),
        t.rpo_target,
        target(e.objectives.rpo_target_ms),
    );
}

/// Measured RTO and data loss rows.
fn measured_rows(o: &mut String, e: &Exercise, t: &AarText) {
    let m = &e.measured;
    let rto = m.rto_ms.map_or_else(
        || format!("<span class=\"na\">{}</span>", t.not_measured),
        |x| format!("{}{}", secs(x), met(t, m.rto_met)),
    );
    let loss = match m.data_loss_ms {
        Some(x) => format!(
            "{}{}{} <br><span class=\"legend\">{}</span>",
            secs(x),
            m.lost_changes
                .map(|c| format!(", {c} {}", t.lost_changes))
                .unwrap_or_default(),
            met(t, m.data_loss_met),
            basis_text(t, &m.data_loss_basis)
        ),
        None => format!(
            "<span class=\"na\">{}</span>",
            basis_text(t, &m.data_loss_basis)
        ),
    };
    let _ = write!(
        o,
        "<tr><th>{}</th><td>{rto}</td></tr><tr><th>{}</th><td>{loss}</td></tr>",
        t.measured_rto, t.data_loss
    );
}

fn participants(o: &mut String, e: &Exercise, t: &AarText) {
    let _ = write!(
        o,
        "<h4>{}</h4><table><tr><th>{}</th><th>{}</th></tr>",
        t.participants, t.identity, t.did
    );
    for p in &e.participants {
        let _ = write!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            esc(&p.identity),
            p.did
                .iter()
                .map(|a| act_text(t, a))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    o.push_str("</table>");
}

fn approvals(o: &mut String, e: &Exercise, t: &AarText) {
    let _ = write!(o, "<h4>{}</h4>", t.approvals);
    if e.approvals.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", t.no_approvals);
        return;
    }
    let _ = write!(
        o,
        "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t.step, t.approver, t.decision, t.when, t.record
    );
    for a in &e.approvals {
        let _ = write!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>#{}</td></tr>",
            esc(a.step.as_deref().unwrap_or("—")),
            esc(&a.approver),
            esc(&a.decision),
            esc(&a.at),
            a.index
        );
    }
    o.push_str("</table>");
}

fn timeline(o: &mut String, e: &Exercise, t: &AarText) {
    let _ = write!(o, "<h4>{}</h4>", t.timeline);
    if e.timeline.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", t.no_steps);
        return;
    }
    let _ = write!(
        o,
        "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t.offset, t.step, t.duration, t.status, t.record
    );
    for s in &e.timeline {
        let status = s.status.as_deref().unwrap_or("—");
        let class = match s.ok {
            Some(true) => "pass",
            Some(false) => "fail",
            None => "na",
        };
        let _ = write!(
            o,
            "<tr><td>+{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>#{}</td></tr>",
            secs(s.offset_ms),
            esc(&s.name),
            s.ms.map_or_else(|| "—".to_string(), secs),
            esc(status),
            s.record_index
        );
    }
    o.push_str("</table>");
}

fn integrity(o: &mut String, e: &Exercise, t: &AarText) {
    let _ = write!(o, "<h4>{}</h4>", t.integrity);
    if e.integrity.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", t.no_integrity);
        return;
    }
    let _ = write!(
        o,
        "<table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t.record, t.check, t.step, t.result, t.detail
    );
    for c in &e.integrity {
        let _ = write!(
            o,
            "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            c.record_index,
            esc(&c.what),
            esc(c.step.as_deref().unwrap_or("—")),
            verdict(t, c.ok),
            esc(&c.detail)
        );
    }
    o.push_str("</table>");
}

fn deviations(o: &mut String, e: &Exercise, t: &AarText) {
    let _ = write!(o, "<h4>{}</h4>", t.deviations);
    if e.deviations.is_empty() {
        let _ = write!(o, "<p class=\"pass\">{}</p>", t.no_deviations);
        return;
    }
    o.push_str("<ul>");
    for d in &e.deviations {
        let _ = write!(
            o,
            "<li><span class=\"fail\">{}</span>{}</li>",
            deviation_text(t, d),
            d.record_index
                .map(|x| format!(" (#{x})"))
                .unwrap_or_default()
        );
    }
    o.push_str("</ul>");
}

/// The actions as a table (`with_run`: a column naming each one's exercise).
fn actions_table(o: &mut String, actions: &[ActionView], t: &AarText, with_run: bool) {
    let run_head = if with_run {
        format!("<th>{}</th>", t.run)
    } else {
        String::new()
    };
    let _ = write!(
        o,
        "<table><tr><th>{}</th>{run_head}<th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        t.action, t.detail, t.owner, t.due, t.state, t.closed_by, t.records
    );
    let dash = |v: &Option<String>| esc(v.as_deref().unwrap_or("—"));
    for a in actions {
        let (word, class) = match a.state.as_str() {
            "closed" => (t.state_closed, "pass"),
            "overdue" => (t.state_overdue, "fail"),
            _ => (t.state_open, "na"),
        };
        let run = if with_run {
            format!("<td>{}</td>", dash(&a.run_id))
        } else {
            String::new()
        };
        let closed = match (&a.closed_by, &a.close_note) {
            (Some(by), note) => format!(
                "<code>{}</code> {} {}: {}",
                esc(by),
                t.at,
                dash(&a.closed_at),
                dash(note)
            ),
            (None, _) => "—".into(),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td>{run}<td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{word}</td><td>{closed}</td><td>{}</td></tr>",
            esc(&a.id),
            dash(&a.title),
            dash(&a.owner),
            dash(&a.due),
            a.record_indexes
                .iter()
                .map(|x| format!("#{x}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    o.push_str("</table>");
}

fn sign_off(o: &mut String, e: &Exercise, t: &AarText) {
    let _ = write!(o, "<h4>{}</h4>", t.sign_off);
    if e.sign_off.is_empty() {
        let _ = write!(o, "<p class=\"fail\">{}</p>", t.not_signed);
        return;
    }
    o.push_str("<ul>");
    for s in &e.sign_off {
        let _ = write!(
            o,
            "<li>{} <code>{}</code> {} {}{} (#{})</li>",
            t.signed_by,
            esc(&s.by),
            t.at,
            esc(&s.at),
            if s.note.is_empty() {
                String::new()
            } else {
                format!(": {}", esc(&s.note))
            },
            s.record_index
        );
    }
    o.push_str("</ul>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::derive::aar::{Measured, Participant, AAR_FORMAT};
    use crate::evidence::derive::aar::{Objectives, Scope, SignOff};

    fn doc() -> AfterActionDoc {
        AfterActionDoc {
            format: AAR_FORMAT.into(),
            version: 1,
            as_of: "2027-01-01".into(),
            exercises: vec![Exercise {
                id: "drill-<1>".into(),
                kind: RunKind::Drill,
                runbook: "drill".into(),
                start_ms: 0,
                start: "s".into(),
                end_ms: 1,
                end: "e".into(),
                outcome: Some("ok".into()),
                started_by: "coordinator".into(),
                scheduled: true,
                scope: Scope {
                    groups: vec!["vol".into()],
                    ..Scope::default()
                },
                objectives: Objectives {
                    rto_target_ms: Some(60_000),
                    rpo_target_ms: None,
                },
                participants: vec![Participant {
                    identity: "bob".into(),
                    did: vec![Act {
                        act: "approved".into(),
                        about: Some("gate".into()),
                    }],
                }],
                approvals: Vec::new(),
                timeline: Vec::new(),
                measured: Measured {
                    rto_ms: Some(1_500),
                    rto_met: Some(true),
                    ..Measured::default()
                },
                integrity: Vec::new(),
                deviations: vec![Deviation {
                    kind: "rto-missed".into(),
                    what: "English".into(),
                    record_index: Some(7),
                    step: None,
                    actor: None,
                    measured_ms: Some(1_500),
                    target_ms: Some(1_000),
                    detail: None,
                }],
                corrective_actions: Vec::new(),
                sign_off: vec![SignOff {
                    by: "auditor".into(),
                    at_ms: 5,
                    at: "t5".into(),
                    note: "ok".into(),
                    record_index: 9,
                }],
                next_due: None,
                evidence_runs: Vec::new(),
                record_indexes: vec![1, 2],
            }],
            actions: Vec::new(),
        }
    }

    #[test]
    fn the_section_shows_each_exercise_escaped_with_its_targets_and_sign_off() {
        let mut o = String::new();
        section(&mut o, &doc());
        assert!(o.contains("id=\"aar-drill-&lt;1&gt;\""), "{o}");
        assert!(o.contains("1.500 s <span class=\"pass\">met</span>"), "{o}");
        assert!(o.contains("60.000 s"), "{o}");
        assert!(
            o.contains("Signed by <code>auditor</code> at t5: ok (#9)"),
            "{o}"
        );
        assert!(o.contains(EN.no_schedule), "{o}");
        assert!(o.contains(EN.on_schedule), "{o}");
        assert!(
            o.contains("RTO 1.500 s, over the target of 1.000 s</span> (#7)"),
            "{o}"
        );
        assert!(o.contains(EN.no_actions_in_window), "{o}");
        assert!(o.contains("approved step gate"), "{o}");
        assert!(!o.contains("<1>"), "unescaped markup");
    }
}
