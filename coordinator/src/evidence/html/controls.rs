//! The controls mapping section: one row per audit control with the evidence that addresses
//! it (each linked to where the report shows it), the findings and what is missing, in the
//! report's language. The decisions are [`crate::evidence::derive::controls`]'; this room only
//! puts them into words.

use super::sections::location_verdict;
use super::text::{fill, fmt_time, tr, Lang, T};
use super::{esc, kind_name};
use crate::evidence::derive::controls::{
    Anchor, Control, ControlRow, Evidence, Finding, Missing, Status,
};
use crate::evidence::derive::RunKind;
use std::fmt::Write as _;

/// A duration in the largest whole unit (`30 d`, `3 s`, `1500 ms`).
pub fn human_ms(ms: u64) -> String {
    for (unit, name) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
    ] {
        if ms >= unit && ms.is_multiple_of(unit) {
            return format!("{} {name}", ms / unit);
        }
    }
    format!("{ms} ms")
}

/// The control's name and what an audit tests.
fn control_words(c: Control) -> (T, T) {
    match c {
        Control::Iso22301Exercises => (T::CtlIso22301, T::CtlIso22301What),
        Control::Iso27001IctReadiness => (T::CtlA530, T::CtlA530What),
        Control::Iso27001Redundancy => (T::CtlA814, T::CtlA814What),
        Control::Soc2RecoveryTesting => (T::CtlSoc2, T::CtlSoc2What),
        Control::NistTestAndAfterAction => (T::CtlNist, T::CtlNistWhat),
        Control::Decree53DataLocation => (T::CtlDecree53, T::CtlDecree53What),
    }
}

/// A status word with a mark for black-and-white prints.
fn status_cell(lang: Lang, s: Status) -> String {
    let (class, mark, key) = match s {
        Status::Covered => ("st-covered", "✓", T::StatusCovered),
        Status::Gaps => ("st-gaps", "◐", T::StatusGaps),
        Status::Findings => ("st-findings", "✗", T::StatusFindings),
        Status::NoEvidence => ("st-none", "∅", T::StatusNoEvidence),
    };
    format!("<span class=\"{class}\">{mark} {}</span>", tr(lang, key))
}

fn jurisdiction(j: &Option<String>) -> String {
    j.as_deref().map_or_else(|| "—".to_string(), esc)
}

fn allowed(lang: Lang, a: &[String]) -> String {
    if a.is_empty() {
        tr(lang, T::Anywhere).to_string()
    } else {
        esc(&a.join(", "))
    }
}

/// A recovery's measured RTO, with its target when it has one.
fn rto_measured_text(
    lang: Lang,
    kind: RunKind,
    run: &str,
    group: &str,
    ms: i64,
    target_ms: Option<i64>,
) -> String {
    let (kind, run, group, ms) = (kind_name(lang, kind), esc(run), esc(group), ms.to_string());
    let mut args = vec![
        ("kind", kind),
        ("run", &run),
        ("group", &group),
        ("ms", &ms),
    ];
    match target_ms.map(|t| t.to_string()) {
        Some(t) => {
            args.push(("target", &t));
            fill(lang, T::EvRtoMeasured, &args)
        }
        None => fill(lang, T::EvRtoUnjudged, &args),
    }
}

/// A recovery's data-loss window.
fn data_loss_text(
    lang: Lang,
    kind: RunKind,
    run: &str,
    group: &str,
    rpo_at_loss_ms: Option<i64>,
    lost_changes: Option<u64>,
) -> String {
    let mut loss = rpo_at_loss_ms.map_or_else(
        || tr(lang, T::LossRecorded).to_string(),
        |ms| fill(lang, T::RpoAtLoss, &[("ms", &ms.to_string())]),
    );
    if let Some(n) = lost_changes {
        loss.push_str(&fill(lang, T::LostChanges, &[("n", &n.to_string())]));
    }
    fill(
        lang,
        T::EvDataLoss,
        &[
            ("kind", kind_name(lang, kind)),
            ("run", &esc(run)),
            ("group", &esc(group)),
            ("loss", &loss),
        ],
    )
}

/// A piece of evidence in words (values escaped).
pub fn evidence_text(lang: Lang, e: &Evidence) -> String {
    match e {
        Evidence::Drill {
            run,
            group,
            start_ms,
            outcome,
        } => fill(
            lang,
            T::EvDrill,
            &[
                ("run", &esc(run)),
                ("group", &esc(group)),
                ("when", &esc(&fmt_time(lang, *start_ms))),
                (
                    "outcome",
                    &outcome.as_deref().map_or_else(|| "—".into(), esc),
                ),
            ],
        ),
        Evidence::CadenceHeld {
            group,
            every_ms,
            drills,
        } => fill(
            lang,
            T::EvCadenceHeld,
            &[
                ("group", &esc(group)),
                ("every", &human_ms(*every_ms)),
                ("n", &drills.to_string()),
            ],
        ),
        Evidence::RtoTarget { group, ms } => fill(
            lang,
            T::EvRtoTarget,
            &[("group", &esc(group)), ("ms", &ms.to_string())],
        ),
        Evidence::RpoTarget { group, ms } => fill(
            lang,
            T::EvRpoTarget,
            &[("group", &esc(group)), ("ms", &ms.to_string())],
        ),
        Evidence::RtoMeasured {
            kind,
            run,
            group,
            ms,
            target_ms,
        } => rto_measured_text(lang, *kind, run, group, *ms, *target_ms),
        Evidence::RpoSamples { group, n, max_ms } => fill(
            lang,
            T::EvRpoSamples,
            &[
                ("group", &esc(group)),
                ("n", &n.to_string()),
                ("max", &max_ms.to_string()),
            ],
        ),
        Evidence::VerifyOk { group, n } => fill(
            lang,
            T::EvVerifyOk,
            &[("group", &esc(group)), ("n", &n.to_string())],
        ),
        Evidence::SecondSite { group, sites } => fill(
            lang,
            T::EvSecondSite,
            &[("group", &esc(group)), ("sites", &esc(&sites.join(", ")))],
        ),
        Evidence::DataLoss {
            kind,
            run,
            group,
            rpo_at_loss_ms,
            lost_changes,
        } => data_loss_text(lang, *kind, run, group, *rpo_at_loss_ms, *lost_changes),
        Evidence::Timeline {
            kind,
            run,
            group,
            steps,
            actor,
        } => fill(
            lang,
            T::EvTimeline,
            &[
                ("kind", kind_name(lang, *kind)),
                ("run", &esc(run)),
                ("group", &esc(group)),
                ("n", &steps.to_string()),
                ("actor", &esc(actor)),
            ],
        ),
        Evidence::Approval {
            run,
            approver,
            decision,
            ..
        } => fill(
            lang,
            T::EvApproval,
            &[
                ("run", &esc(run)),
                ("approver", &esc(approver)),
                ("decision", &esc(decision)),
            ],
        ),
        Evidence::Location {
            group,
            site,
            jurisdiction: j,
            allowed: a,
            verdict,
        } => fill(
            lang,
            T::EvLocation,
            &[
                ("group", &esc(group)),
                ("site", &esc(site)),
                ("jurisdiction", &jurisdiction(j)),
                ("allowed", &allowed(lang, a)),
                ("verdict", &location_verdict(lang, *verdict)),
            ],
        ),
        Evidence::AfterActionReports { n } => {
            fill(lang, T::EvAfterAction, &[("n", &n.to_string())])
        }
        Evidence::CorrectiveActions { open, closed } => fill(
            lang,
            T::EvActions,
            &[("open", &open.to_string()), ("closed", &closed.to_string())],
        ),
        Evidence::SignedReviews { n } => fill(lang, T::EvSignedReview, &[("n", &n.to_string())]),
    }
}

/// A finding in words (values escaped).
pub fn finding_text(lang: Lang, f: &Finding) -> String {
    match f {
        Finding::CadenceMissed {
            group,
            every_ms,
            gaps,
        } => fill(
            lang,
            T::FindCadenceMissed,
            &[
                ("group", &esc(group)),
                ("every", &human_ms(*every_ms)),
                ("n", &gaps.to_string()),
            ],
        ),
        Finding::RtoMissed {
            kind,
            run,
            group,
            ms,
            target_ms,
        } => fill(
            lang,
            T::FindRtoMissed,
            &[
                ("kind", kind_name(lang, *kind)),
                ("run", &esc(run)),
                ("group", &esc(group)),
                ("ms", &ms.to_string()),
                ("target", &target_ms.to_string()),
            ],
        ),
        Finding::RpoOver {
            group,
            over,
            n,
            max_ms,
        } => fill(
            lang,
            T::FindRpoOver,
            &[
                ("group", &esc(group)),
                ("over", &over.to_string()),
                ("n", &n.to_string()),
                ("max", &max_ms.to_string()),
            ],
        ),
        Finding::VerifyFailed { group, n } => fill(
            lang,
            T::FindVerifyFailed,
            &[("group", &esc(group)), ("n", &n.to_string())],
        ),
        Finding::RunFailed {
            kind,
            run,
            group,
            outcome,
        } => fill(
            lang,
            T::FindRunFailed,
            &[
                ("kind", kind_name(lang, *kind)),
                ("run", &esc(run)),
                ("group", &esc(group)),
                ("outcome", &esc(outcome)),
            ],
        ),
        Finding::LocationViolated {
            group,
            site,
            jurisdiction: j,
            allowed: a,
        } => fill(
            lang,
            T::FindLocation,
            &[
                ("group", &esc(group)),
                ("site", &esc(site)),
                ("jurisdiction", &jurisdiction(j)),
                ("allowed", &allowed(lang, a)),
            ],
        ),
        Finding::ActionsOverdue { n } => {
            fill(lang, T::FindOpenActionsOverdue, &[("n", &n.to_string())])
        }
    }
}

/// A missing item in words (values escaped).
pub fn missing_text(lang: Lang, m: &Missing) -> String {
    let group = |key: T, g: &str| fill(lang, key, &[("group", &esc(g))]);
    match m {
        Missing::NoDrill(g) => group(T::MissNoDrill, g),
        Missing::NoSchedule(g) => group(T::MissNoSchedule, g),
        Missing::NoRtoTarget(g) => group(T::MissNoRtoTarget, g),
        Missing::NoRpoTarget(g) => group(T::MissNoRpoTarget, g),
        Missing::NoRtoMeasured(g) => group(T::MissNoRtoMeasured, g),
        Missing::NoRpoSamples(g) => group(T::MissNoRpoSamples, g),
        Missing::NoVerify(g) => group(T::MissNoVerify, g),
        Missing::NoSecondSite(g) => group(T::MissNoSecondSite, g),
        Missing::NoRule(g) => group(T::MissNoRule, g),
        Missing::SiteJurisdiction(s) => fill(lang, T::MissSiteJurisdiction, &[("site", &esc(s))]),
        Missing::NoRecoveryTest => tr(lang, T::MissNoRecoveryTest).to_string(),
        Missing::NoApproval => tr(lang, T::MissNoApproval).to_string(),
        Missing::NoAfterAction => tr(lang, T::MissNoAfterAction).to_string(),
        Missing::NoActions => tr(lang, T::MissNoActions).to_string(),
        Missing::NoSignedReview => tr(lang, T::MissNoSignedReview).to_string(),
        Missing::NoResidency => tr(lang, T::MissNoResidency).to_string(),
    }
}

/// `items` as a list, each linked to its anchor when it has one.
fn list(lang: Lang, items: Vec<(String, Option<Anchor>)>) -> String {
    if items.is_empty() {
        return format!("<span class=\"na\">{}</span>", tr(lang, T::NoneWord));
    }
    let mut o = String::from("<ul>");
    for (text, anchor) in items {
        match anchor {
            Some(a) => {
                let _ = write!(o, "<li><a href=\"#{}\">{text}</a></li>", esc(&a.fragment()));
            }
            None => {
                let _ = write!(o, "<li>{text}</li>");
            }
        }
    }
    o.push_str("</ul>");
    o
}

/// The controls mapping section.
pub fn section(o: &mut String, lang: Lang, rows: &[ControlRow]) {
    let _ = write!(
        o,
        "<section id=\"controls\"><h2>{}</h2><p>{}</p><table class=\"controls wide\">\
         <colgroup><col class=\"c-name\"><col class=\"c-what\"><col class=\"c-status\"><col>\
         <col class=\"c-what\"><col class=\"c-what\"></colgroup>{}",
        tr(lang, T::ControlsTitle),
        tr(lang, T::ControlsIntro),
        super::sections::header_row(
            lang,
            &[
                T::Control,
                T::WhatIsTested,
                T::Status,
                T::EvidenceHere,
                T::Findings,
                T::Missing
            ]
        )
    );
    for row in rows {
        let (name, what) = control_words(row.control);
        let evidence = row
            .evidence
            .iter()
            .map(|e| (evidence_text(lang, e), e.anchor()))
            .collect();
        let findings = row
            .findings
            .iter()
            .map(|f| (finding_text(lang, f), f.anchor()))
            .collect();
        let missing = row
            .missing
            .iter()
            .map(|m| (missing_text(lang, m), None))
            .collect();
        let _ = write!(
            o,
            "<tr id=\"{}\" class=\"control\"><th>{}</th><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"findings\">{}</td><td class=\"missing\">{}</td></tr>",
            row.control.id(),
            tr(lang, name),
            tr(lang, what),
            status_cell(lang, row.status()),
            list(lang, evidence),
            list(lang, findings),
            list(lang, missing),
        );
    }
    o.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_their_largest_unit() {
        for (ms, want) in [
            (2_592_000_000, "30 d"),
            (3_000, "3 s"),
            (90_000, "90 s"),
            (120_000, "2 min"),
            (1_500, "1500 ms"),
            (0, "0 ms"),
        ] {
            assert_eq!(human_ms(ms), want, "{ms}");
        }
    }

    #[test]
    fn values_in_the_mapping_are_escaped() {
        let m = Missing::NoDrill("<b>x</b>".into());
        assert!(missing_text(Lang::En, &m).contains("&lt;b&gt;x"));
        let e = Evidence::Approval {
            run: "r".into(),
            group: "g".into(),
            approver: "<i>".into(),
            decision: "approved".into(),
        };
        assert!(evidence_text(Lang::Vi, &e).contains("được &lt;i&gt; phê duyệt"));
    }
}
