//! The report's sections over the derived views: data residency, drill cadence, and each
//! group's operations (RTO table and step timelines), RPO chart, verify results, approvals and
//! refusals. Pure: views in, HTML out, in the report's language.

use super::chart::{rpo_chart, step_timeline};
use super::text::{fill, fmt_time, tr, Lang, T};
use super::{esc, kind_name, opt_ms, verdict};
use crate::evidence::derive::controls::{location, Location};
use crate::evidence::derive::{rpo_totals, RpoRow, Run, RunsDoc};
use std::fmt::Write as _;

/// A time cell: the time in the language's format, escaped, with a line-break opportunity
/// between date and time (`<wbr>` after the `T` of ISO 8601) so a narrow printed column breaks
/// it there.
pub(super) fn when(lang: Lang, ms: i64) -> String {
    esc(&fmt_time(lang, ms)).replacen('T', "T<wbr>", 1)
}

/// `<tr>` of header cells.
pub(super) fn header_row(lang: Lang, keys: &[T]) -> String {
    let mut o = String::from("<tr>");
    for k in keys {
        let _ = write!(o, "<th>{}</th>", tr(lang, *k));
    }
    o.push_str("</tr>");
    o
}

/// What a site held, in words.
fn held_as(lang: Lang, what: &str) -> String {
    let key = match what {
        "primary" => T::HeldPrimary,
        "replica" => T::HeldReplica,
        "drill copy" => T::HeldDrillCopy,
        "point-in-time copy" => T::HeldPitrCopy,
        other => return esc(other),
    };
    tr(lang, key).to_string()
}

/// A site's data location verdict, with a mark for black-and-white prints.
pub(super) fn location_verdict(lang: Lang, l: Location) -> String {
    match l {
        Location::Held => format!(
            "<span class=\"pass\">✓ {}</span>",
            tr(lang, T::LocationHeld)
        ),
        Location::Violated => format!(
            "<span class=\"fail\">✗ {}</span>",
            tr(lang, T::LocationViolated)
        ),
        Location::NotDeclared => format!(
            "<span class=\"na\">? {}</span>",
            tr(lang, T::LocationNotDeclared)
        ),
    }
}

/// Residency: every site that held each group's data during the window, held / violated /
/// not declared against the group's allowed jurisdictions.
pub(super) fn residency(o: &mut String, lang: Lang, runs: &RunsDoc) {
    let _ = write!(
        o,
        "<section id=\"residency\"><h2>{}</h2><p>{}</p><table class=\"residency\">{}",
        tr(lang, T::DataResidency),
        tr(lang, T::ResidencyIntro),
        header_row(
            lang,
            &[
                T::Group,
                T::AllowedJurisdictions,
                T::Site,
                T::Jurisdiction,
                T::HeldAs,
                T::SinceRecord,
                T::InsideAllowed,
            ]
        )
    );
    for gr in &runs.residency {
        for h in &gr.sites {
            let what: Vec<String> = h.held_as.iter().map(|w| held_as(lang, w)).collect();
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&gr.group),
                if gr.allowed_jurisdictions.is_empty() {
                    tr(lang, T::Anywhere).to_string()
                } else {
                    esc(&gr.allowed_jurisdictions.join(", "))
                },
                esc(&h.site),
                h.jurisdiction.as_deref().map_or_else(|| "—".to_string(), esc),
                what.join(", "),
                h.first_index
                    .map_or_else(|| tr(lang, T::WindowStart).to_string(), |i| format!("#{i}")),
                location_verdict(
                    lang,
                    location(&gr.allowed_jurisdictions, h.jurisdiction.as_deref())
                ),
            );
        }
    }
    o.push_str("</table></section>");
}

/// Drill cadence: per group with a schedule, whether every gap between drills held
/// `drill_every` plus the grace, the gaps that missed it, and the drills.
pub(super) fn drill_cadence(o: &mut String, lang: Lang, runs: &RunsDoc) {
    if runs.drill_cadence.is_empty() {
        return;
    }
    let _ = write!(
        o,
        "<section><h2 id=\"drill-cadence\">{}</h2><p>{}</p><table class=\"cadence\">{}",
        tr(lang, T::DrillCadence),
        tr(lang, T::CadenceIntro),
        header_row(
            lang,
            &[
                T::Group,
                T::Every,
                T::Grace,
                T::Drills,
                T::Scheduled,
                T::CadenceHeld,
                T::GapsMissed
            ]
        )
    );
    for c in &runs.drill_cadence {
        let missed: Vec<String> = c
            .gaps
            .iter()
            .filter(|g| !g.held)
            .map(|g| {
                format!(
                    "{} → {} ({}, {} ms)",
                    fmt_time(lang, g.from_ms),
                    fmt_time(lang, g.to_ms),
                    g.between,
                    g.gap_ms
                )
            })
            .collect();
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{} ms</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.group),
            c.every_ms,
            c.grace_ms,
            c.drills.len(),
            c.drills.iter().filter(|d| d.scheduled).count(),
            verdict(lang, Some(c.held), T::Yes, T::NoLoud),
            if missed.is_empty() {
                "—".to_string()
            } else {
                esc(&missed.join("; "))
            },
        );
    }
    let _ = write!(
        o,
        "</table><table class=\"drills\">{}",
        header_row(
            lang,
            &[
                T::Group,
                T::Drill,
                T::Started,
                T::By,
                T::Scheduled,
                T::Outcome,
                T::Record
            ]
        )
    );
    for c in &runs.drill_cadence {
        for d in &c.drills {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>#{}</td></tr>",
                esc(&c.group),
                esc(&d.run_id),
                when(lang, d.start_ms),
                esc(&d.actor),
                tr(lang, if d.scheduled { T::Yes } else { T::No }),
                d.outcome.as_deref().map_or_else(|| "—".to_string(), esc),
                d.record_index,
            );
        }
    }
    o.push_str("</table></section>");
}

/// A group's section: its operations, RPO chart, verify results, approvals and refusals.
pub(super) fn group_section(
    o: &mut String,
    lang: Lang,
    g: &str,
    runs: &RunsDoc,
    samples: &[&RpoRow],
) {
    let gs = Some(g);
    let _ = write!(
        o,
        "<h2 id=\"g-{}\">{}</h2>",
        esc(g),
        fill(lang, T::GroupTitle, &[("group", &esc(g))])
    );
    let gruns: Vec<&Run> = runs
        .runs
        .iter()
        .filter(|r| r.group.as_deref() == gs)
        .collect();
    operations(o, lang, &gruns);
    let _ = write!(
        o,
        "<h3 id=\"rpo-{}\">{}</h3>",
        esc(g),
        tr(lang, T::RpoOverTime)
    );
    o.push_str(&rpo_chart(lang, g, samples));
    if let Some((n, over, _)) = rpo_totals(samples.iter().copied()) {
        let _ = write!(
            o,
            "<p class=\"legend\">{}</p>",
            fill(
                lang,
                T::ChartLegend,
                &[
                    ("n", &n.to_string()),
                    ("rows", &samples.len().to_string()),
                    ("over", &over.to_string())
                ]
            )
        );
    }
    verify_results(o, lang, runs, g);
    approvals_table(o, lang, runs, gs);
    refused_table(o, lang, runs, gs);
}

/// A group's verify results.
fn verify_results(o: &mut String, lang: Lang, runs: &RunsDoc, g: &str) {
    let vr: Vec<_> = runs
        .verify_results
        .iter()
        .filter(|v| v.group.as_deref() == Some(g))
        .collect();
    let _ = write!(
        o,
        "<h3 id=\"verify-{}\">{}</h3>",
        esc(g),
        tr(lang, T::VerifyResults)
    );
    if vr.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", tr(lang, T::NoVerifyResults));
        return;
    }
    let _ = write!(
        o,
        "<table class=\"verify wide\"><colgroup><col style=\"width:9%\"><col style=\"width:20%\">\
         <col style=\"width:15%\"><col style=\"width:12%\"><col></colgroup>{}",
        header_row(lang, &[T::Record, T::Time, T::By, T::Result, T::Detail])
    );
    for v in vr {
        let _ = write!(
            o,
            "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            v.index,
            when(lang, v.at_ms),
            esc(&v.actor),
            verdict(lang, v.ok, T::Match, T::Mismatch),
            esc(&v.detail.to_string())
        );
    }
    o.push_str("</table>");
}

/// A group's operations: the RTO table, then the step timeline of each run with steps.
fn operations(o: &mut String, lang: Lang, gruns: &[&Run]) {
    let _ = write!(o, "<h3>{}</h3>", tr(lang, T::Operations));
    if gruns.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", tr(lang, T::NoOperations));
        return;
    }
    let _ = write!(
        o,
        "<table class=\"rto wide\"><colgroup><col style=\"width:10%\"><col style=\"width:7%\">\
         <col style=\"width:7%\"><col style=\"width:8%\"><col style=\"width:11%\">\
         <col style=\"width:11%\"><col style=\"width:7%\"><col style=\"width:7%\">\
         <col style=\"width:6%\"><col style=\"width:6%\"><col style=\"width:8%\">\
         <col style=\"width:6%\"><col style=\"width:6%\"></colgroup>{}",
        header_row(
            lang,
            &[
                T::Run,
                T::Kind,
                T::Operation,
                T::By,
                T::Start,
                T::End,
                T::RtoAchieved,
                T::RtoTarget,
                T::Rto,
                T::Outcome,
                T::DataLossWindow,
                T::Approvals,
                T::Records,
            ]
        )
    );
    for r in gruns {
        operation_row(o, lang, r);
    }
    o.push_str("</table>");
    for r in gruns.iter().filter(|r| !r.steps.is_empty()) {
        let _ = write!(
            o,
            "<h4>{}</h4>",
            fill(
                lang,
                T::StepTimeline,
                &[
                    ("kind", kind_name(lang, r.kind)),
                    ("run", &esc(&r.id)),
                    ("start", &esc(&fmt_time(lang, r.start_ms)))
                ]
            )
        );
        o.push_str(&step_timeline(lang, r));
    }
}

/// One run in the operations table; its first cell is the run's anchor (`#run-<id>`).
fn operation_row(o: &mut String, lang: Lang, r: &Run) {
    let rpo_at_loss = |ms: i64| fill(lang, T::RpoAtLoss, &[("ms", &ms.to_string())]);
    let loss = match (&r.data_loss_window, r.rpo_at_loss_ms) {
        (_, Some(ms)) => rpo_at_loss(ms),
        (Some(l), None) => l
            .get("rpo_ms")
            .and_then(serde_json::Value::as_i64)
            .map_or_else(|| tr(lang, T::LossRecorded).to_string(), rpo_at_loss),
        (None, None) => "—".into(),
    };
    let lost = r
        .data_loss_window
        .as_ref()
        .and_then(|l| l.get("lost_changes"))
        .and_then(serde_json::Value::as_u64)
        .map(|n| fill(lang, T::LostChanges, &[("n", &n.to_string())]))
        .unwrap_or_default();
    let approvers: Vec<String> = r
        .approvals
        .iter()
        .map(|a| format!("{} ({})", a.approver, a.decision))
        .collect();
    let indexes: Vec<String> = r.record_indexes.iter().map(|x| format!("#{x}")).collect();
    let _ = write!(
        o,
        "<tr class=\"run\"><td id=\"run-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td class=\"rto-achieved\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}{}</td><td>{}</td><td class=\"records\">{}</td></tr>",
        esc(&r.id),
        esc(&r.id),
        kind_name(lang, r.kind),
        esc(&r.op),
        esc(&r.actor),
        when(lang, r.start_ms),
        when(lang, r.end_ms),
        opt_ms(r.rto_ms),
        opt_ms(r.rto_target_ms),
        verdict(lang, r.rto_met, T::Pass, T::Fail),
        esc(r.outcome.as_deref().unwrap_or("—")),
        esc(&loss),
        esc(&lost),
        esc(&approvers.join(", ")),
        indexes.join(" ")
    );
}

/// The approvals of a group (`None`: those tied to no group).
pub(super) fn approvals_table(o: &mut String, lang: Lang, runs: &RunsDoc, group: Option<&str>) {
    let ap: Vec<_> = runs
        .approvals
        .iter()
        .filter(|a| a.group.as_deref() == group)
        .collect();
    let _ = write!(o, "<h3>{}</h3>", tr(lang, T::ApprovalsTitle));
    if ap.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", tr(lang, T::NoApprovals));
        return;
    }
    let _ = write!(
        o,
        "<table class=\"approvals wide\">{}",
        header_row(
            lang,
            &[
                T::Record,
                T::Time,
                T::Approver,
                T::SubmittedBy,
                T::Decision,
                T::Run,
                T::Step,
                T::Comment
            ]
        )
    );
    for a in ap {
        let _ = write!(
            o,
            "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            a.index,
            when(lang, a.at_ms),
            esc(&a.approver),
            esc(&a.actor),
            esc(&a.decision),
            esc(a
                .attached_to
                .as_deref()
                .or(a.run_id.as_deref())
                .unwrap_or("—")),
            esc(a.step.as_deref().unwrap_or("—")),
            esc(a.comment.as_deref().unwrap_or(""))
        );
    }
    o.push_str("</table>");
}

/// The refused commands of a group (`None`: those tied to no group).
pub(super) fn refused_table(o: &mut String, lang: Lang, runs: &RunsDoc, group: Option<&str>) {
    let rf: Vec<_> = runs
        .refused
        .iter()
        .filter(|r| r.group.as_deref() == group)
        .collect();
    let _ = write!(o, "<h3>{}</h3>", tr(lang, T::RefusedTitle));
    if rf.is_empty() {
        let _ = write!(o, "<p class=\"na\">{}</p>", tr(lang, T::NoRefused));
        return;
    }
    let _ = write!(
        o,
        "<table class=\"refused wide\">{}",
        header_row(lang, &[T::Record, T::Time, T::By, T::Command, T::Why])
    );
    for r in rf {
        let _ = write!(
            o,
            "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.index,
            when(lang, r.at_ms),
            esc(&r.actor),
            esc(&r.op),
            esc(&r.message)
        );
    }
    o.push_str("</table>");
}
