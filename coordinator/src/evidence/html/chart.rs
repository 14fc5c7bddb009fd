//! The report's pictures as inline SVG: the RPO-over-time chart of a group and the step
//! timeline of a run. Told apart by line style, hatching and marker shape as well as colour,
//! so they read the same printed in black and white.

use super::text::{fill, fmt_time, tr, Lang, T};
use super::{esc, opt_ms, verdict};
use crate::evidence::derive::{RpoRow, Run};
use std::fmt::Write as _;

/// Most points drawn in one RPO chart; longer series are reduced to the maximum of each bucket so
/// peaks stay visible (the CSV keeps every row).
pub const MAX_CHART_POINTS: usize = 1_500;

/// Chart width in SVG units (the page scales it down to fit).
pub const CHART_W: f64 = 720.0;
const CHART_H: f64 = 236.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_R: f64 = 16.0;
const MARGIN_T: f64 = 28.0;
const MARGIN_B: f64 = 34.0;

/// Reduces `rows` to at most `max` points, each the worst RPO of its row (a summary row's
/// `max_ms`, a single sample's RPO): every row when few enough, else the highest row of each of
/// `max` equal runs of rows.
pub fn chart_points(rows: &[&RpoRow], max: usize) -> Vec<(i64, u64, Option<u64>)> {
    if rows.len() <= max || max == 0 {
        return rows
            .iter()
            .map(|r| (r.at_ms, r.max_ms, r.target_ms))
            .collect();
    }
    let per = rows.len().div_ceil(max);
    rows.chunks(per)
        .filter_map(|c| c.iter().max_by_key(|r| r.max_ms))
        .map(|r| (r.at_ms, r.max_ms, r.target_ms))
        .collect()
}

/// The legend above the plot: a solid line for the RPO, a dashed one for the target, a hollow
/// circle for a sample over target.
fn chart_legend(out: &mut String, lang: Lang) {
    let y = 14.0;
    let items = [
        (
            "<line x1=\"0\" y1=\"0\" x2=\"24\" y2=\"0\" stroke=\"#0d47a1\" stroke-width=\"2\"/>",
            T::ChartRpo,
        ),
        (
            "<line x1=\"0\" y1=\"0\" x2=\"24\" y2=\"0\" stroke=\"#b00\" stroke-width=\"1.5\" \
             stroke-dasharray=\"6 4\"/>",
            T::ChartTarget,
        ),
        (
            "<circle cx=\"12\" cy=\"0\" r=\"3.5\" fill=\"#fff\" stroke=\"#c62828\" \
             stroke-width=\"2\"/>",
            T::ChartOver,
        ),
    ];
    let mut x = MARGIN_L;
    for (mark, label) in items {
        let text = tr(lang, label);
        let _ = write!(
            out,
            "<g class=\"lg-item\" transform=\"translate({x:.1},{y:.1})\">{mark}\
             <text x=\"30\" y=\"4\" class=\"lg\">{}</text></g>",
            esc(text)
        );
        x += 40.0 + 6.0 * text.chars().count() as f64;
    }
}

/// The RPO-over-time chart of one group as an inline SVG: a solid polyline of the samples (one
/// point per sample, see [`MAX_CHART_POINTS`]), the target as a dashed polyline, hollow circles
/// on samples over target, and a legend.
pub fn rpo_chart(lang: Lang, group: &str, rows: &[&RpoRow]) -> String {
    let pts = chart_points(rows, MAX_CHART_POINTS);
    let mut out = String::new();
    let Some(first) = pts.first() else {
        return format!("<p class=\"na\">{}</p>", tr(lang, T::NoRpoSamples));
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
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"{label}\">",
        g = esc(group),
        n = rows.len(),
        p = pts.len(),
        label = fill(lang, T::ChartLabel, &[("group", &esc(group))]),
    );
    chart_legend(&mut out, lang);
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
        esc(&fmt_time(lang, t0)),
        MARGIN_L + plot_w,
        CHART_H - 10.0,
        esc(&fmt_time(lang, t1))
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
        "<polyline class=\"rpo\" fill=\"none\" stroke=\"#0d47a1\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    );
    for p in pts.iter().filter(|p| p.2.is_some_and(|t| p.1 > t)) {
        let _ = write!(
            out,
            "<circle class=\"over\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#fff\" \
             stroke=\"#c62828\" stroke-width=\"2\"/>",
            x(p.0),
            y(p.1)
        );
    }
    out.push_str("</svg>");
    out
}

/// A run's steps as horizontal SVG bars on the run's timeline (solid: ok, hatched: failed,
/// outlined: not recorded), followed by a table.
pub fn step_timeline(lang: Lang, run: &Run) -> String {
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
    let _ = write!(
        out,
        "<p class=\"legend\">{}</p><table class=\"steps\"><tr><th>{}</th><th>{}</th><th>{}</th>\
         <th>{}</th><th>{}</th></tr>",
        tr(lang, T::TimelineLegend),
        tr(lang, T::Step),
        tr(lang, T::StartsAt),
        tr(lang, T::Duration),
        tr(lang, T::Status),
        tr(lang, T::Record),
    );
    for s in &run.steps {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>+{} ms</td><td>{}</td><td>{} {}</td><td>#{}</td></tr>",
            esc(&s.name),
            s.offset_ms,
            esc(&opt_ms(s.ms)),
            esc(s.status.as_deref().unwrap_or("")),
            verdict(lang, s.ok, T::StepOk, T::StepFailed),
            s.record_index
        );
    }
    out.push_str("</table>");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(at_ms: i64, rpo_ms: u64, target: Option<u64>) -> RpoRow {
        RpoRow::single("g".into(), at_ms as u64, at_ms, rpo_ms, target)
    }

    #[test]
    fn a_summary_row_is_drawn_at_its_worst_and_marked_over_target() {
        // A summary whose last sample is back within target but whose worst was over.
        let summary = RpoRow {
            rpo_ms: 10,
            samples: 12,
            over_samples: 2,
            min_ms: 10,
            max_ms: 900,
            over_target_ms: Some(10_000),
            since_ms: 0,
            ..row(60_000, 10, Some(50))
        };
        let refs = [&summary];
        assert_eq!(
            chart_points(&refs, MAX_CHART_POINTS),
            vec![(60_000, 900, Some(50))]
        );
        let svg = rpo_chart(Lang::En, "g", &refs);
        assert_eq!(svg.matches("<circle class=\"over\"").count(), 1);
    }

    #[test]
    fn chart_has_one_point_per_sample_and_hollow_markers_over_target() {
        let rows = [
            row(0, 10, Some(50)),
            row(1_000, 80, Some(50)),
            row(2_000, 20, Some(50)),
        ];
        let refs: Vec<&RpoRow> = rows.iter().collect();
        let svg = rpo_chart(Lang::En, "g", &refs);
        let rpo_line = svg
            .split("class=\"rpo\"")
            .nth(1)
            .and_then(|s| s.split("points=\"").nth(1))
            .and_then(|s| s.split('"').next())
            .unwrap();
        assert_eq!(rpo_line.split(' ').count(), 3);
        assert_eq!(svg.matches("<circle class=\"over\"").count(), 1);
        // Black and white: the target is dashed, the over-target marker hollow, and the
        // legend names each by its shape.
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.contains("<circle class=\"over\" cx=\"") && svg.contains("fill=\"#fff\""));
        assert_eq!(svg.matches("class=\"lg-item\"").count(), 3);
    }

    #[test]
    fn chart_speaks_the_report_language() {
        let rows = [row(1_700_000_001_000, 10, Some(50))];
        let refs: Vec<&RpoRow> = rows.iter().collect();
        let vi = rpo_chart(Lang::Vi, "g", &refs);
        assert!(vi.contains("14/11/2023 22:13:21"), "{vi}");
        assert!(vi.contains(">mục tiêu<"));
        assert!(rpo_chart(Lang::Vi, "g", &[]).contains("Không có mẫu RPO"));
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
        assert!(rpo_chart(Lang::En, "g", &[]).contains("No RPO samples"));
    }
}
