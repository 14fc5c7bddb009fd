//! Pure rendering of `report.html`: one self-contained page (inline CSS and SVG, no script, no
//! external asset) that an auditor can read in any browser.

use super::derive::{iso_ms, RpoRow, Run, RunsDoc};
use super::Manifest;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Most points drawn in one RPO chart; longer series are reduced to the maximum of each bucket so
/// peaks stay visible (the CSV keeps every sample).
pub const MAX_CHART_POINTS: usize = 1_500;

const CHART_W: f64 = 720.0;
const CHART_H: f64 = 220.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_R: f64 = 16.0;
const MARGIN_T: f64 = 12.0;
const MARGIN_B: f64 = 34.0;

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

fn verdict(ok: Option<bool>, yes: &str, no: &str) -> String {
    match ok {
        Some(true) => format!("<span class=\"pass\">{yes}</span>"),
        Some(false) => format!("<span class=\"fail\">{no}</span>"),
        None => "<span class=\"na\">—</span>".into(),
    }
}

/// Reduces `rows` to at most `max` points: every sample when few enough, else the highest sample
/// of each of `max` equal runs of samples.
pub fn chart_points(rows: &[&RpoRow], max: usize) -> Vec<(i64, u64, Option<u64>)> {
    if rows.len() <= max || max == 0 {
        return rows
            .iter()
            .map(|r| (r.at_ms, r.rpo_ms, r.target_ms))
            .collect();
    }
    let per = rows.len().div_ceil(max);
    rows.chunks(per)
        .filter_map(|c| c.iter().max_by_key(|r| r.rpo_ms))
        .map(|r| (r.at_ms, r.rpo_ms, r.target_ms))
        .collect()
}

/// The RPO-over-time chart of one group as an inline SVG: a solid polyline of the samples (one
/// point per sample, see [`MAX_CHART_POINTS`]), the target as a dashed polyline, red dots on
/// samples over target.
pub fn rpo_chart(group: &str, rows: &[&RpoRow]) -> String {
    let pts = chart_points(rows, MAX_CHART_POINTS);
    let mut out = String::new();
    let Some(first) = pts.first() else {
        return "<p class=\"na\">No RPO samples in this window.</p>".into();
    };
    let t0 = first.0;
    let t1 = pts.last().map_or(t0, |p| p.0);
    let vmax = pts
        .iter()
        .map(|p| p.1.max(p.2.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.1;
    let plot_w = CHART_W - MARGIN_L - MARGIN_R;
    let plot_h = CHART_H - MARGIN_T - MARGIN_B;
    let x = |t: i64| {
        if t1 > t0 {
            MARGIN_L + (t - t0) as f64 / (t1 - t0) as f64 * plot_w
        } else {
            MARGIN_L + plot_w / 2.0
        }
    };
    let y = |v: u64| MARGIN_T + plot_h - v as f64 / vmax * plot_h;
    let _ = write!(
        out,
        "<svg class=\"rpo-chart\" data-group=\"{g}\" data-samples=\"{n}\" data-points=\"{p}\" \
         width=\"{CHART_W}\" height=\"{CHART_H}\" viewBox=\"0 0 {CHART_W} {CHART_H}\" \
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"RPO over time for {g}\">",
        g = esc(group),
        n = rows.len(),
        p = pts.len()
    );
    // Axes and gridlines with labels.
    let _ = write!(
        out,
        "<rect x=\"{MARGIN_L}\" y=\"{MARGIN_T}\" width=\"{plot_w}\" height=\"{plot_h}\" class=\"plot\"/>"
    );
    for k in 0..=4u32 {
        let v = (vmax / 1.1) * f64::from(k) / 4.0;
        let yy = y(v as u64);
        let _ = write!(
            out,
            "<line x1=\"{MARGIN_L}\" y1=\"{yy:.1}\" x2=\"{:.1}\" y2=\"{yy:.1}\" class=\"grid\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"ylab\">{} ms</text>",
            MARGIN_L + plot_w,
            MARGIN_L - 4.0,
            yy + 4.0,
            v as u64
        );
    }
    let _ = write!(
        out,
        "<text x=\"{MARGIN_L}\" y=\"{:.1}\" class=\"xlab\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" class=\"xlab end\">{}</text>",
        CHART_H - 10.0,
        esc(&iso_ms(t0)),
        MARGIN_L + plot_w,
        CHART_H - 10.0,
        esc(&iso_ms(t1))
    );
    // Target (dashed), only where known.
    let target: Vec<String> = pts
        .iter()
        .filter_map(|p| p.2.map(|t| format!("{:.1},{:.1}", x(p.0), y(t))))
        .collect();
    if !target.is_empty() {
        let _ = write!(
            out,
            "<polyline class=\"target\" fill=\"none\" stroke=\"#b00\" stroke-width=\"1.5\" \
             stroke-dasharray=\"6 4\" points=\"{}\"/>",
            target.join(" ")
        );
    }
    let line: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
        .collect();
    let _ = write!(
        out,
        "<polyline class=\"rpo\" fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{}\"/>",
        line.join(" ")
    );
    for p in pts.iter().filter(|p| p.2.is_some_and(|t| p.1 > t)) {
        let _ = write!(
            out,
            "<circle class=\"over\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#c62828\"/>",
            x(p.0),
            y(p.1)
        );
    }
    out.push_str("</svg>");
    out
}

/// A run's steps as horizontal SVG bars on the run's timeline, followed by a table.
fn step_timeline(run: &Run) -> String {
    let mut out = String::new();
    if run.steps.is_empty() {
        return out;
    }
    let span = run
        .steps
        .iter()
        .map(|s| s.offset_ms.saturating_add(s.ms.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(run.end_ms.saturating_sub(run.start_ms))
        .max(1) as f64;
    let label_w = 150.0;
    let bar_w = CHART_W - label_w - 80.0;
    let row_h = 20.0;
    let h = row_h * run.steps.len() as f64 + 6.0;
    let _ = write!(
        out,
        "<svg class=\"timeline\" data-run=\"{}\" width=\"{CHART_W}\" height=\"{h}\" \
         viewBox=\"0 0 {CHART_W} {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(&run.id)
    );
    for (n, s) in run.steps.iter().enumerate() {
        let yy = 3.0 + row_h * n as f64;
        let x = label_w + s.offset_ms as f64 / span * bar_w;
        let w = (s.ms.unwrap_or(0) as f64 / span * bar_w).max(2.0);
        let class = match s.ok {
            Some(true) => "ok",
            Some(false) => "bad",
            None => "unk",
        };
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"slab\">{}</text>\
             <rect x=\"{x:.1}\" y=\"{yy:.1}\" width=\"{w:.1}\" height=\"{:.1}\" class=\"bar {class}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"sval\">{}</text>",
            label_w - 6.0,
            yy + 13.0,
            esc(&s.name),
            row_h - 6.0,
            x + w + 4.0,
            yy + 13.0,
            esc(&opt_ms(s.ms))
        );
    }
    out.push_str("</svg>");
    out.push_str(
        "<table class=\"steps\"><tr><th>step</th><th>starts at</th><th>duration</th>\
         <th>status</th><th>record</th></tr>",
    );
    for s in &run.steps {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>+{} ms</td><td>{}</td><td>{} {}</td><td>#{}</td></tr>",
            esc(&s.name),
            s.offset_ms,
            esc(&opt_ms(s.ms)),
            esc(s.status.as_deref().unwrap_or("")),
            verdict(s.ok, "ok", "failed"),
            s.record_index
        );
    }
    out.push_str("</table>");
    out
}

const STYLE: &str = "body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;\
color:#222;max-width:1100px}h1{font-size:1.6em}h2{border-bottom:2px solid #1565c0;margin-top:2em}\
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:3px 8px;\
text-align:left;vertical-align:top;font-size:.92em}th{background:#eef3fa}.pass{color:#1b5e20;\
font-weight:bold}.fail{color:#b71c1c;font-weight:bold}.na{color:#777}code,.hash{font-family:\
ui-monospace,Consolas,monospace;font-size:.9em;word-break:break-all}.plot{fill:#fafafa;stroke:#999}\
.grid{stroke:#ddd}.ylab{font-size:10px;text-anchor:end;fill:#555}.xlab{font-size:10px;fill:#555}\
.end{text-anchor:end}.slab{font-size:11px;text-anchor:end}.sval{font-size:10px;fill:#555}\
.bar.ok{fill:#43a047}.bar.bad{fill:#e53935}.bar.unk{fill:#90a4ae}.legend{font-size:.85em;color:#555}\
.warn{background:#fff3e0;border:2px solid #e65100;padding:.6em 1em;color:#bf360c}";

/// Renders `report.html` from the derived views and the manifest's chain and window fields (the
/// `files` list is not used, so the report can be rendered before the manifest is complete).
pub fn render_report(
    manifest: &Manifest,
    groups: &BTreeSet<String>,
    runs: &RunsDoc,
    rpo: &[RpoRow],
    aar: &super::derive::AfterActionDoc,
) -> String {
    let mut o = String::with_capacity(64 * 1024);
    header(&mut o, manifest);
    let mut by_group: BTreeMap<&str, Vec<&RpoRow>> = BTreeMap::new();
    for r in rpo {
        by_group.entry(r.group.as_str()).or_default().push(r);
    }
    if !runs.unauthenticated.is_none() {
        let u = &runs.unauthenticated;
        let _ = write!(
            o,
            "<p class=\"warn\" id=\"unauthenticated\"><strong>Warning: {} record(s) of this window \
             (#{} to #{}) were made while the cluster ran without TLS (<code>[tls] insecure = true</code>): \
             their actor is <code>unauthenticated</code> and nobody vouches for who acted.</strong></p>",
            u.records, u.first_index, u.last_index
        );
    }
    summary(&mut o, manifest, groups, runs, &by_group);
    residency(&mut o, runs);
    drill_cadence(&mut o, runs);
    for g in groups {
        let samples = by_group.get(g.as_str()).map_or(&[][..], Vec::as_slice);
        group_section(&mut o, g, runs, samples);
    }
    // Records not tied to a group.
    if runs.refused.iter().any(|r| r.group.is_none())
        || runs.approvals.iter().any(|a| a.group.is_none())
    {
        o.push_str("<h2>Not tied to a group</h2>");
        approvals_table(&mut o, runs, None);
        refused_table(&mut o, runs, None);
    }
    super::aar_html::section(&mut o, aar);
    o.push_str(HOW_TO_VERIFY);
    o
}

/// The page's head and the export's identity: cluster, generation time, window, chain.
fn header(o: &mut String, manifest: &Manifest) {
    let window = format!(
        "{} → {}",
        manifest
            .from
            .map_or_else(|| "start of chain".to_string(), iso_ms),
        manifest
            .to
            .map_or_else(|| "end of chain".to_string(), iso_ms)
    );
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Tandem DR evidence — {c}</title><style>{STYLE}</style></head><body>\
         <h1>Tandem DR evidence — cluster {c}</h1>\
         <table><tr><th>Generated</th><td>{gen}</td></tr>\
         <tr><th>Window</th><td>{win}</td></tr>\
         <tr><th>Audit records</th><td>{n} (index {fi} to {li})</td></tr>\
         <tr><th>Chain head hash</th><td class=\"hash\">{head}</td></tr>\
         <tr><th>Hash before first record</th><td class=\"hash\">{prev}</td></tr></table>",
        c = esc(&manifest.cluster),
        gen = esc(&manifest.generated_at),
        win = esc(&window),
        n = manifest.chain.records,
        fi = manifest
            .chain
            .first_index
            .map_or_else(|| "—".into(), |x| x.to_string()),
        li = manifest
            .chain
            .last_index
            .map_or_else(|| "—".into(), |x| x.to_string()),
        head = esc(&manifest.chain.head_hash),
        prev = esc(&manifest.chain.first_prev_hash),
    );
}

/// The summary table: one row per group.
fn summary(
    o: &mut String,
    manifest: &Manifest,
    groups: &BTreeSet<String>,
    runs: &RunsDoc,
    by_group: &BTreeMap<&str, Vec<&RpoRow>>,
) {
    o.push_str(
        "<h2>Summary</h2><table><tr><th>group</th><th>failovers</th><th>switchovers</th>\
         <th>drills</th><th>runbook runs</th><th>RTO target</th><th>worst RTO</th><th>RTO met</th>\
         <th>RPO samples</th><th>max RPO</th><th>over target</th><th>verify ok / failed</th>\
         <th>approvals</th><th>refused</th></tr>",
    );
    for g in groups {
        let gruns: Vec<&Run> = runs
            .runs
            .iter()
            .filter(|r| r.group.as_deref() == Some(g.as_str()))
            .collect();
        let count = |k: super::derive::RunKind| gruns.iter().filter(|r| r.kind == k).count();
        let worst = gruns.iter().filter_map(|r| r.rto_ms).max();
        let target = manifest.rto_targets_ms.get(g).copied();
        let judged: Vec<bool> = gruns.iter().filter_map(|r| r.rto_met).collect();
        let met = if judged.is_empty() {
            None
        } else {
            Some(judged.iter().all(|m| *m))
        };
        let samples = by_group.get(g.as_str()).map_or(&[][..], Vec::as_slice);
        let over = samples.iter().filter(|r| r.over_target()).count();
        let vr = runs
            .verify_results
            .iter()
            .filter(|v| v.group.as_deref() == Some(g.as_str()));
        let (vok, vbad) = vr.fold((0, 0), |(a, b), v| match v.ok {
            Some(true) => (a + 1, b),
            Some(false) => (a, b + 1),
            None => (a, b),
        });
        let _ = write!(
            o,
            "<tr><td><a href=\"#g-{id}\">{g}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{over}</td>\
             <td>{vok} / {vbad}</td><td>{}</td><td>{}</td></tr>",
            count(super::derive::RunKind::Failover),
            count(super::derive::RunKind::Switchover),
            count(super::derive::RunKind::Drill),
            count(super::derive::RunKind::Runbook),
            opt_ms(target),
            opt_ms(worst),
            verdict(met, "yes", "no"),
            samples.len(),
            samples
                .iter()
                .map(|r| r.rpo_ms)
                .max()
                .map_or_else(|| "—".into(), |m| format!("{m} ms")),
            runs.approvals
                .iter()
                .filter(|a| a.group.as_deref() == Some(g.as_str()))
                .count(),
            runs.refused
                .iter()
                .filter(|r| r.group.as_deref() == Some(g.as_str()))
                .count(),
            id = esc(g),
            g = esc(g),
        );
    }
    o.push_str("</table>");
}

/// Drill cadence: per group with a schedule, whether every gap between drills held
/// `drill_every` plus the grace, the gaps that missed it, and the drills.
fn drill_cadence(o: &mut String, runs: &RunsDoc) {
    if runs.drill_cadence.is_empty() {
        return;
    }
    o.push_str(
        "<h2 id=\"drill-cadence\">Drill cadence</h2><p>Groups with a drill schedule \
         (<code>drill_every</code>): a gap between two drills (or from the window's start to the \
         first, or from the last to the window's end) holds when it is at most \
         <code>drill_every</code> plus the grace (10%, at least 1 s).</p>\
         <table><tr><th>group</th><th>every</th><th>grace</th><th>drills</th>\
         <th>scheduled</th><th>cadence held</th><th>gaps that missed</th></tr>",
    );
    for c in &runs.drill_cadence {
        let missed: Vec<String> = c
            .gaps
            .iter()
            .filter(|g| !g.held)
            .map(|g| {
                format!(
                    "{} → {} ({}, {} ms)",
                    iso_ms(g.from_ms),
                    iso_ms(g.to_ms),
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
            verdict(Some(c.held), "yes", "NO"),
            if missed.is_empty() {
                "—".to_string()
            } else {
                esc(&missed.join("; "))
            },
        );
    }
    o.push_str(
        "</table><table><tr><th>group</th><th>drill</th><th>started</th><th>by</th>\
         <th>scheduled</th><th>outcome</th><th>record</th></tr>",
    );
    for c in &runs.drill_cadence {
        for d in &c.drills {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>#{}</td></tr>",
                esc(&c.group),
                esc(&d.run_id),
                esc(&d.start),
                esc(&d.actor),
                if d.scheduled { "yes" } else { "no" },
                d.outcome.as_deref().map_or_else(|| "—".to_string(), esc),
                d.record_index,
            );
        }
    }
    o.push_str("</table>");
}

/// Residency: every site that held each group's data during the window.
fn residency(o: &mut String, runs: &RunsDoc) {
    o.push_str(
        "<h2>Data residency</h2><p>Every site that held each group's data during the window \
         (primary and replica of every epoch, drill copies, point-in-time copies).</p>\
         <table><tr><th>group</th><th>allowed jurisdictions</th><th>site</th>\
         <th>jurisdiction</th><th>held as</th><th>since record</th><th>inside allowed</th></tr>",
    );
    for gr in &runs.residency {
        for h in &gr.sites {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&gr.group),
                if gr.allowed_jurisdictions.is_empty() {
                    "anywhere".to_string()
                } else {
                    esc(&gr.allowed_jurisdictions.join(", "))
                },
                esc(&h.site),
                h.jurisdiction.as_deref().map_or_else(|| "—".to_string(), esc),
                esc(&h.held_as.join(", ")),
                h.first_index
                    .map_or_else(|| "window start".to_string(), |i| format!("#{i}")),
                verdict(Some(h.allowed), "yes", "NO"),
            );
        }
    }
    o.push_str("</table>");
}

/// A group's section: its operations, RPO chart, verify results, approvals and refusals.
fn group_section(o: &mut String, g: &str, runs: &RunsDoc, samples: &[&RpoRow]) {
    let gs = Some(g);
    let _ = write!(o, "<h2 id=\"g-{0}\">Group {0}</h2>", esc(g));
    let gruns: Vec<&Run> = runs
        .runs
        .iter()
        .filter(|r| r.group.as_deref() == gs)
        .collect();
    operations(o, &gruns);
    o.push_str("<h3>RPO over time</h3>");
    o.push_str(&rpo_chart(g, samples));
    if !samples.is_empty() {
        let over = samples.iter().filter(|r| r.over_target()).count();
        let _ = write!(
            o,
            "<p class=\"legend\">{} samples; solid blue: RPO; dashed red: target; red dots: \
             samples over target ({over}). Every sample is in rpo.csv.</p>",
            samples.len()
        );
    }
    verify_results(o, runs, gs);
    approvals_table(o, runs, gs);
    refused_table(o, runs, gs);
}

/// A group's verify results.
fn verify_results(o: &mut String, runs: &RunsDoc, gs: Option<&str>) {
    let vr: Vec<_> = runs
        .verify_results
        .iter()
        .filter(|v| v.group.as_deref() == gs)
        .collect();
    o.push_str("<h3>Verify results</h3>");
    if vr.is_empty() {
        o.push_str("<p class=\"na\">No verify results in this window.</p>");
    } else {
        o.push_str(
            "<table class=\"verify\"><tr><th>record</th><th>time</th><th>by</th>\
             <th>result</th><th>detail</th></tr>",
        );
        for v in vr {
            let _ = write!(
                o,
                "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                v.index,
                esc(&v.at),
                esc(&v.actor),
                verdict(v.ok, "match", "MISMATCH"),
                esc(&v.detail.to_string())
            );
        }
        o.push_str("</table>");
    }
}

/// A group's operations: the RTO table, then the step timeline of each run with steps.
fn operations(o: &mut String, gruns: &[&Run]) {
    o.push_str("<h3>Operations</h3>");
    if gruns.is_empty() {
        o.push_str("<p class=\"na\">No operations in this window.</p>");
        return;
    }
    o.push_str(
        "<table class=\"rto\"><tr><th>run</th><th>kind</th><th>operation</th><th>by</th>\
         <th>start</th><th>end</th><th>RTO achieved</th><th>RTO target</th><th>RTO</th>\
         <th>outcome</th><th>data-loss window</th><th>approvals</th><th>records</th></tr>",
    );
    for r in gruns {
        operation_row(o, r);
    }
    o.push_str("</table>");
    for r in gruns.iter().filter(|r| !r.steps.is_empty()) {
        let _ = write!(
            o,
            "<h4>Step timeline: {} {} ({})</h4>",
            r.kind.as_str(),
            esc(&r.id),
            esc(&r.start)
        );
        o.push_str(&step_timeline(r));
    }
}

/// One run in the operations table.
fn operation_row(o: &mut String, r: &Run) {
    let loss = match (&r.data_loss_window, r.rpo_at_loss_ms) {
        (_, Some(ms)) => format!("RPO at loss {ms} ms"),
        (Some(l), None) => l
            .get("rpo_ms")
            .and_then(serde_json::Value::as_i64)
            .map_or_else(|| "recorded".into(), |ms| format!("RPO at loss {ms} ms")),
        (None, None) => "—".into(),
    };
    let lost = r
        .data_loss_window
        .as_ref()
        .and_then(|l| l.get("lost_changes"))
        .and_then(serde_json::Value::as_u64)
        .map(|n| format!(", {n} changes"))
        .unwrap_or_default();
    let approvers: Vec<String> = r
        .approvals
        .iter()
        .map(|a| format!("{} ({})", a.approver, a.decision))
        .collect();
    let indexes: Vec<String> = r.record_indexes.iter().map(|x| format!("#{x}")).collect();
    let _ = write!(
        o,
        "<tr class=\"run\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td class=\"rto-achieved\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}{}</td><td>{}</td><td>{}</td></tr>",
        esc(&r.id),
        r.kind.as_str(),
        esc(&r.op),
        esc(&r.actor),
        esc(&r.start),
        esc(&r.end),
        opt_ms(r.rto_ms),
        opt_ms(r.rto_target_ms),
        verdict(r.rto_met, "PASS", "FAIL"),
        esc(r.outcome.as_deref().unwrap_or("—")),
        esc(&loss),
        esc(&lost),
        esc(&approvers.join(", ")),
        indexes.join(" ")
    );
}

/// How an auditor checks the folder, closing the page.
const HOW_TO_VERIFY: &str = "<h2>How to verify this evidence</h2><ol>\
 <li>Run <code>tandem evidence verify DIR</code>: it re-checks the chain and every file \
 and names the first record or file that does not match.</li>\
 <li>By hand: compute the BLAKE3 hash of each file (<code>b3sum audit.jsonl runs.json \
 rpo.csv report.html</code>) and compare with <code>manifest.json</code>.</li>\
 <li>Each line of <code>audit.jsonl</code> is one record. Its <code>hash</code> must equal \
 BLAKE3(the 32 bytes of <code>prev_hash</code> ‖ the compact JSON of the record without \
 <code>hash</code>, fields in the order index, at_ms, actor, kind, group, detail, \
 prev_hash, object keys inside detail sorted). Each <code>prev_hash</code> must equal the \
 previous line's <code>hash</code>; the first equals the manifest's \
 <code>first_prev_hash</code> (all zeros when the window starts at record 0).</li>\
 <li>The last record's hash must equal the chain head above; compare it with the head the \
 live cluster reports (<code>tandem audit</code>) to show nothing was cut off.</li>\
 </ol></body></html>\n";

fn approvals_table(o: &mut String, runs: &RunsDoc, group: Option<&str>) {
    let ap: Vec<_> = runs
        .approvals
        .iter()
        .filter(|a| a.group.as_deref() == group)
        .collect();
    o.push_str("<h3>Approvals</h3>");
    if ap.is_empty() {
        o.push_str("<p class=\"na\">No approvals in this window.</p>");
        return;
    }
    o.push_str(
        "<table class=\"approvals\"><tr><th>record</th><th>time</th><th>approver</th>\
         <th>submitted by</th><th>decision</th><th>run</th><th>step</th><th>comment</th></tr>",
    );
    for a in ap {
        let _ = write!(
            o,
            "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            a.index,
            esc(&a.at),
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

fn refused_table(o: &mut String, runs: &RunsDoc, group: Option<&str>) {
    let rf: Vec<_> = runs
        .refused
        .iter()
        .filter(|r| r.group.as_deref() == group)
        .collect();
    o.push_str("<h3>Refused commands</h3>");
    if rf.is_empty() {
        o.push_str("<p class=\"na\">No refused commands in this window.</p>");
        return;
    }
    o.push_str(
        "<table class=\"refused\"><tr><th>record</th><th>time</th><th>by</th><th>command</th>\
         <th>why</th></tr>",
    );
    for r in rf {
        let _ = write!(
            o,
            "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.index,
            esc(&r.at),
            esc(&r.actor),
            esc(&r.op),
            esc(&r.message)
        );
    }
    o.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(at_ms: i64, rpo_ms: u64, target: Option<u64>) -> RpoRow {
        RpoRow {
            group: "g".into(),
            index: at_ms as u64,
            at_ms,
            rpo_ms,
            target_ms: target,
        }
    }

    #[test]
    fn escapes_markup_in_names() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn chart_has_one_point_per_sample_and_dots_over_target() {
        let rows = [
            row(0, 10, Some(50)),
            row(1_000, 80, Some(50)),
            row(2_000, 20, Some(50)),
        ];
        let refs: Vec<&RpoRow> = rows.iter().collect();
        let svg = rpo_chart("g", &refs);
        let rpo_line = svg
            .split("class=\"rpo\"")
            .nth(1)
            .and_then(|s| s.split("points=\"").nth(1))
            .and_then(|s| s.split('"').next())
            .unwrap();
        assert_eq!(rpo_line.split(' ').count(), 3);
        assert_eq!(svg.matches("<circle class=\"over\"").count(), 1);
        assert!(svg.contains("stroke-dasharray"));
    }

    #[test]
    fn long_series_keep_each_buckets_peak() {
        let rows: Vec<RpoRow> = (0..10_000)
            .map(|n| row(n, if n == 4_321 { 99_999 } else { 5 }, None))
            .collect();
        let refs: Vec<&RpoRow> = rows.iter().collect();
        let pts = chart_points(&refs, MAX_CHART_POINTS);
        assert!(pts.len() <= MAX_CHART_POINTS);
        assert!(pts.iter().any(|p| p.1 == 99_999));
    }

    #[test]
    fn empty_series_says_so() {
        assert!(rpo_chart("g", &[]).contains("No RPO samples"));
    }
}
