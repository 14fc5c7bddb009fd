//! Pure rendering of `report.html`: one self-contained page (inline CSS and SVG, no script, no
//! external asset) that an auditor can read in any browser and print on A4, in the language
//! the export was made in ([`Lang`], `--lang`).
//!
//! - [`text`]: every word of the report in every language, and dates in each one's format.
//! - [`style`]: the stylesheet (screen and print) and the charts' patterns.
//! - [`chart`]: the RPO chart and the step timelines (SVG).
//! - [`sections`]: data residency, drill cadence and each group's section.
//! - [`controls`]: the controls mapping (decided in [`crate::evidence::derive::controls`]).
//! - [`aar`], [`aar_text`]: the after-action reports (derived in
//!   [`crate::evidence::derive::aar`]) and their words in each language.

pub mod aar;
pub mod aar_text;
pub mod chart;
pub mod controls;
pub mod sections;
pub mod style;
pub mod text;

pub use self::chart::{chart_points, rpo_chart, MAX_CHART_POINTS};
pub use self::text::{fill, fmt_time, tr, Lang, T};

use super::derive::controls::{controls as control_rows, AfterActionFacts, ControlsInput};
use super::derive::{rpo_totals, AfterActionDoc, RpoRow, Run, RunKind, RunsDoc};
use super::Manifest;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Escapes text for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn opt_ms(v: Option<i64>) -> String {
    v.map_or_else(|| "—".to_string(), |x| format!("{x} ms"))
}

/// A verdict word with a mark (✓ / ✗) besides its colour, so it reads printed in black and
/// white.
fn verdict(lang: Lang, ok: Option<bool>, yes: T, no: T) -> String {
    match ok {
        Some(true) => format!("<span class=\"pass\">✓ {}</span>", tr(lang, yes)),
        Some(false) => format!("<span class=\"fail\">✗ {}</span>", tr(lang, no)),
        None => "<span class=\"na\">—</span>".into(),
    }
}

/// A run kind in words.
pub fn kind_name(lang: Lang, kind: RunKind) -> &'static str {
    tr(
        lang,
        match kind {
            RunKind::Failover => T::KindFailover,
            RunKind::Switchover => T::KindSwitchover,
            RunKind::Drill => T::KindDrill,
            RunKind::Runbook => T::KindRunbook,
            RunKind::Operator => T::KindOperator,
        },
    )
}

/// Renders `report.html` from the derived views and the manifest's chain, window, targets and
/// language (the `files` list is not used, so the report can be rendered before the manifest
/// is complete). The after-action part of the controls mapping is listed as missing.
pub fn render_report(
    manifest: &Manifest,
    groups: &BTreeSet<String>,
    runs: &RunsDoc,
    rpo: &[RpoRow],
    aar: &AfterActionDoc,
) -> String {
    render_report_with(manifest, groups, runs, rpo, Some(aar))
}

/// What the controls mapping counts of the after-action reports: reports, actions open,
/// closed and overdue, signed reviews. Pure.
pub fn after_action_facts(aar: &AfterActionDoc) -> AfterActionFacts {
    let state = |s: &str| aar.actions.iter().filter(|a| a.state == s).count();
    AfterActionFacts {
        reports: aar.exercises.len(),
        actions_open: state("open") + state("overdue"),
        actions_closed: state("closed"),
        actions_overdue: state("overdue"),
        signed_reviews: aar.exercises.iter().map(|e| e.sign_off.len()).sum(),
    }
}

/// [`render_report`] with or without the after-action reports of the window (their section,
/// and the facts the controls mapping counts: reports, corrective actions, signed reviews).
pub fn render_report_with(
    manifest: &Manifest,
    groups: &BTreeSet<String>,
    runs: &RunsDoc,
    rpo: &[RpoRow],
    aar: Option<&AfterActionDoc>,
) -> String {
    let facts = aar.map(after_action_facts);
    let after_action = facts.as_ref();
    let lang = manifest.lang;
    let mut o = String::with_capacity(64 * 1024);
    header(&mut o, lang, manifest);
    contents(&mut o, lang, groups, runs);
    let mut by_group: BTreeMap<&str, Vec<&RpoRow>> = BTreeMap::new();
    for r in rpo {
        by_group.entry(r.group.as_str()).or_default().push(r);
    }
    if !runs.unauthenticated.is_none() {
        let u = &runs.unauthenticated;
        let _ = write!(
            o,
            "<p class=\"warn\" id=\"unauthenticated\"><strong>{}</strong></p>",
            fill(
                lang,
                T::Unauthenticated,
                &[
                    ("n", &u.records.to_string()),
                    ("first", &u.first_index.to_string()),
                    ("last", &u.last_index.to_string())
                ]
            )
        );
    }
    summary(&mut o, lang, manifest, groups, runs, &by_group);
    let rows = control_rows(&ControlsInput {
        groups,
        runs,
        rpo,
        rto_targets_ms: &manifest.rto_targets_ms,
        rpo_targets_ms: &manifest.rpo_targets_ms,
        drill_every_ms: &manifest.drill_every_ms,
        after_action,
    });
    controls::section(&mut o, lang, &rows);
    sections::residency(&mut o, lang, runs);
    sections::drill_cadence(&mut o, lang, runs);
    for g in groups {
        let samples = by_group.get(g.as_str()).map_or(&[][..], Vec::as_slice);
        sections::group_section(&mut o, lang, g, runs, samples);
    }
    // Records not tied to a group.
    if runs.refused.iter().any(|r| r.group.is_none())
        || runs.approvals.iter().any(|a| a.group.is_none())
    {
        let _ = write!(o, "<h2>{}</h2>", tr(lang, T::NotTiedToGroup));
        sections::approvals_table(&mut o, lang, runs, None);
        sections::refused_table(&mut o, lang, runs, None);
    }
    if let Some(doc) = aar {
        aar::section_in(&mut o, doc, aar_text::for_lang(lang));
    }
    how_to_verify(&mut o, lang);
    o
}

/// The page's head and the export's identity: cluster, generation time, window, chain.
fn header(o: &mut String, lang: Lang, manifest: &Manifest) {
    let window = format!(
        "{} → {}",
        manifest.from.map_or_else(
            || tr(lang, T::StartOfChain).to_string(),
            |t| fmt_time(lang, t)
        ),
        manifest.to.map_or_else(
            || tr(lang, T::EndOfChain).to_string(),
            |t| fmt_time(lang, t)
        )
    );
    let title = fill(lang, T::Title, &[("cluster", &esc(&manifest.cluster))]);
    let dash = |x: Option<u64>| x.map_or_else(|| "—".into(), |x| x.to_string());
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>{style}</style></head><body>{defs}\
         <h1>{title}</h1>\
         <table class=\"identity\"><tr><th>{t_gen}</th><td>{gen}</td></tr>\
         <tr><th>{t_win}</th><td>{win}</td></tr>\
         <tr><th>{t_rec}</th><td>{rec}</td></tr>\
         <tr><th>{t_head}</th><td class=\"hash\">{head}</td></tr>\
         <tr><th>{t_prev}</th><td class=\"hash\">{prev}</td></tr>\
         <tr><th>{t_lang}</th><td>{lang_name}</td></tr></table><p class=\"legend\">{times}</p>",
        code = lang.code(),
        style = style::STYLE,
        defs = style::SVG_DEFS,
        t_gen = tr(lang, T::Generated),
        gen = esc(&fmt_time(lang, manifest.generated_at_ms)),
        t_win = tr(lang, T::Window),
        win = esc(&window),
        t_rec = tr(lang, T::AuditRecords),
        rec = fill(
            lang,
            T::RecordsRange,
            &[
                ("n", &manifest.chain.records.to_string()),
                ("first", &dash(manifest.chain.first_index)),
                ("last", &dash(manifest.chain.last_index))
            ]
        ),
        t_head = tr(lang, T::ChainHead),
        head = esc(&manifest.chain.head_hash),
        t_prev = tr(lang, T::HashBefore),
        prev = esc(&manifest.chain.first_prev_hash),
        t_lang = tr(lang, T::Language),
        lang_name = tr(lang, T::LanguageName),
        times = fill(lang, T::TimesAre, &[("format", tr(lang, T::TimeFormat))]),
    );
}

/// The table of contents (screen only).
fn contents(o: &mut String, lang: Lang, groups: &BTreeSet<String>, runs: &RunsDoc) {
    let _ = write!(
        o,
        "<nav class=\"toc\"><h2>{}</h2><ol><li><a href=\"#summary\">{}</a></li>\
         <li><a href=\"#controls\">{}</a></li><li><a href=\"#residency\">{}</a></li>",
        tr(lang, T::Contents),
        tr(lang, T::Summary),
        tr(lang, T::ControlsTitle),
        tr(lang, T::DataResidency),
    );
    if !runs.drill_cadence.is_empty() {
        let _ = write!(
            o,
            "<li><a href=\"#drill-cadence\">{}</a></li>",
            tr(lang, T::DrillCadence)
        );
    }
    for g in groups {
        let _ = write!(
            o,
            "<li><a href=\"#g-{}\">{}</a></li>",
            esc(g),
            fill(lang, T::GroupTitle, &[("group", &esc(g))])
        );
    }
    let _ = write!(
        o,
        "<li><a href=\"#how-to-verify\">{}</a></li></ol></nav>",
        tr(lang, T::HowToVerify)
    );
}

/// The summary table: one row per group.
fn summary(
    o: &mut String,
    lang: Lang,
    manifest: &Manifest,
    groups: &BTreeSet<String>,
    runs: &RunsDoc,
    by_group: &BTreeMap<&str, Vec<&RpoRow>>,
) {
    let _ = write!(
        o,
        "<section id=\"summary\"><h2>{}</h2><table class=\"summary wide\">{}",
        tr(lang, T::Summary),
        sections::header_row(
            lang,
            &[
                T::Group,
                T::Failovers,
                T::Switchovers,
                T::Drills,
                T::RunbookRuns,
                T::RtoTarget,
                T::WorstRto,
                T::RtoMet,
                T::RpoSamples,
                T::MaxRpo,
                T::OverTarget,
                T::VerifyOkFailed,
                T::Approvals,
                T::Refused,
            ]
        )
    );
    for g in groups {
        let gruns: Vec<&Run> = runs
            .runs
            .iter()
            .filter(|r| r.group.as_deref() == Some(g.as_str()))
            .collect();
        let count = |k: RunKind| gruns.iter().filter(|r| r.kind == k).count();
        let worst = gruns.iter().filter_map(|r| r.rto_ms).max();
        let target = manifest.rto_targets_ms.get(g).copied();
        let judged: Vec<bool> = gruns.iter().filter_map(|r| r.rto_met).collect();
        let met = if judged.is_empty() {
            None
        } else {
            Some(judged.iter().all(|m| *m))
        };
        let samples = by_group.get(g.as_str()).map_or(&[][..], Vec::as_slice);
        let (n_samples, over, max_rpo) = match rpo_totals(samples.iter().copied()) {
            Some((n, over, max)) => (n, over, Some(max)),
            None => (0, 0, None),
        };
        let (vok, vbad) = runs
            .verify_results
            .iter()
            .filter(|v| v.group.as_deref() == Some(g.as_str()))
            .fold((0, 0), |(a, b), v| match v.ok {
                Some(true) => (a + 1, b),
                Some(false) => (a, b + 1),
                None => (a, b),
            });
        let _ = write!(
            o,
            "<tr><td><a href=\"#g-{id}\">{id}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{over}</td>\
             <td>{vok} / {vbad}</td><td>{}</td><td>{}</td></tr>",
            count(RunKind::Failover),
            count(RunKind::Switchover),
            count(RunKind::Drill),
            count(RunKind::Runbook),
            opt_ms(target),
            opt_ms(worst),
            verdict(lang, met, T::Yes, T::No),
            n_samples,
            max_rpo.map_or_else(|| "—".into(), |m| format!("{m} ms")),
            runs.approvals
                .iter()
                .filter(|a| a.group.as_deref() == Some(g.as_str()))
                .count(),
            runs.refused
                .iter()
                .filter(|r| r.group.as_deref() == Some(g.as_str()))
                .count(),
            id = esc(g),
        );
    }
    o.push_str("</table></section>");
}

/// How an auditor checks the folder, closing the page.
fn how_to_verify(o: &mut String, lang: Lang) {
    let _ = writeln!(
        o,
        "<section id=\"how-to-verify\"><h2>{}</h2><ol><li>{}</li><li>{}</li><li>{}</li>\
         <li>{}</li></ol></section></body></html>",
        tr(lang, T::HowToVerify),
        tr(lang, T::Verify1),
        tr(lang, T::Verify2),
        tr(lang, T::Verify3),
        tr(lang, T::Verify4),
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::{AuditChain, AuditKind, AuditRecord};
    use crate::evidence::{self, EvidenceError, ExportOptions, REPORT_FILE};
    use serde_json::json;

    /// A group on two VN sites, RPO samples, a drill with a step, a verify result.
    fn chain() -> Vec<AuditRecord> {
        let mut c = AuditChain::default();
        let t0 = 1_700_000_000_000;
        c.append(
            t0,
            "ops",
            AuditKind::Bootstrap,
            None,
            json!({"sites_added": [{"name": "hanoi", "jurisdiction": "VN"},
                                   {"name": "hcm", "jurisdiction": "VN"}],
                   "groups_added": [{"name": "vol", "primary": "hanoi", "replica": "hcm",
                                     "allowed_jurisdictions": ["VN"]}]}),
        );
        for k in 0..5 {
            c.append(
                t0 + 1_000 * k,
                "coordinator",
                AuditKind::RpoSample,
                Some("vol"),
                json!({"rpo_ms": 100 * k, "target_ms": 250}),
            );
        }
        c.append(
            t0 + 9_000,
            "alice",
            AuditKind::Drill,
            Some("vol"),
            json!({"run_id": "drill-1", "runbook": "drill", "phase": "start"}),
        );
        c.append(
            t0 + 9_500,
            "coordinator",
            AuditKind::Drill,
            Some("vol"),
            json!({"run_id": "drill-1", "runbook": "drill", "phase": "end", "status": "ok",
                   "ok": true, "rto_ms": 500}),
        );
        c.append(
            t0 + 9_600,
            "alice",
            AuditKind::Verify,
            Some("vol"),
            json!({"root_match": true}),
        );
        c.records().to_vec()
    }

    fn opts(lang: Lang) -> ExportOptions {
        ExportOptions {
            cluster: "bank-dr".into(),
            rto_targets_ms: BTreeMap::from([("vol".into(), 60_000)]),
            generated_at_ms: 1_700_000_100_000,
            lang,
            ..ExportOptions::default()
        }
    }

    fn report(lang: Lang) -> String {
        let r = evidence::render(&chain(), &opts(lang)).unwrap();
        let (_, html) = r.files.iter().find(|(n, _)| *n == REPORT_FILE).unwrap();
        String::from_utf8(html.clone()).unwrap()
    }

    #[test]
    fn every_link_of_the_report_leads_to_an_anchor_in_it() {
        for lang in Lang::ALL {
            let html = report(lang);
            let links: Vec<&str> = html
                .split("href=\"#")
                .skip(1)
                .filter_map(|s| s.split('"').next())
                .collect();
            assert!(links.len() >= 10, "{lang}: {links:?}");
            for l in links {
                assert!(
                    html.contains(&format!("id=\"{l}\"")),
                    "{lang}: #{l} leads nowhere"
                );
            }
            assert_eq!(html.matches("<tr id=\"control-").count(), 6, "{lang}");
            assert!(
                html.contains("href=\"#run-drill-1\""),
                "{lang}: the drill is linked"
            );
        }
    }

    #[test]
    fn the_vietnamese_report_is_vietnamese_with_its_dates() {
        let vi = report(Lang::Vi);
        assert!(vi.contains("<html lang=\"vi\">"));
        assert!(vi.contains("Đối chiếu với các yêu cầu kiểm soát"));
        assert!(
            vi.contains("14/11/2023 22:13:29"),
            "the drill's start, dd/mm/yyyy"
        );
        for english in [
            ">Summary<",
            "Controls mapping",
            "Data residency",
            "How to verify",
        ] {
            assert!(!vi.contains(english), "{english:?} left in English");
        }
        let en = report(Lang::En);
        assert!(en.contains("<html lang=\"en\">") && en.contains("2023-11-14T22:13:29.000Z"));
        assert!(!en.contains("14/11/2023"));
    }

    #[test]
    fn a_vietnamese_folder_verifies_and_its_language_is_part_of_what_verify_derives() {
        let dir = tempfile::tempdir().unwrap();
        evidence::export(&chain(), &opts(Lang::Vi), dir.path()).unwrap();
        evidence::verify(dir.path()).unwrap();
        let path = dir.path().join(evidence::MANIFEST_FILE);
        let manifest = std::fs::read_to_string(&path).unwrap();
        assert!(manifest.contains("\"lang\": \"vi\""), "{manifest}");
        // An English folder's manifest has no `lang`: folders from before still verify.
        let en = tempfile::tempdir().unwrap();
        evidence::export(&chain(), &opts(Lang::En), en.path()).unwrap();
        let m = std::fs::read_to_string(en.path().join(evidence::MANIFEST_FILE)).unwrap();
        assert!(!m.contains("\"lang\""));
        // Claiming the Vietnamese report is English is caught.
        std::fs::write(&path, manifest.replace("\"lang\": \"vi\",\n", "")).unwrap();
        assert!(matches!(
            evidence::verify(dir.path()),
            Err(EvidenceError::DerivedMismatch { name, .. }) if name == REPORT_FILE
        ));
    }

    #[test]
    fn escapes_markup_in_names() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }
}
