//! The text exposition format 0.0.4: rendering families (HELP, TYPE, escaped labels, `+Inf`)
//! and parsing an exposition back (the test oracle of the renderer, and what `tandem status`
//! reads from a node). Pure.

use std::collections::BTreeMap;

use super::error::MetricsError;
use super::family::{valid_label_name, valid_metric_name, Family, Kind, Labels, Sample};

/// The `Content-Type` of the text exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Formats a sample value as Prometheus expects (`+Inf`, `-Inf`, `NaN`, else a decimal).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Renders families in the text exposition format 0.0.4: per family a `# HELP` and a `# TYPE`
/// line, then its samples, one per line.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        out.push_str("# HELP ");
        out.push_str(&f.name);
        out.push(' ');
        escape_help(&f.help, &mut out);
        out.push('\n');
        out.push_str("# TYPE ");
        out.push_str(&f.name);
        out.push(' ');
        out.push_str(f.kind.as_str());
        out.push('\n');
        for s in &f.samples {
            out.push_str(&s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push_str("=\"");
                    escape_label_value(v, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&format_value(s.value));
            out.push('\n');
        }
    }
    out
}

/// A parsed text exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Family name -> help text (unescaped).
    pub help: BTreeMap<String, String>,
    /// Family name -> type.
    pub types: BTreeMap<String, Kind>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The samples named `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
    }
}

fn parse_err(line: usize, reason: impl Into<String>) -> MetricsError {
    MetricsError::Parse {
        line,
        reason: reason.into(),
    }
}

/// Parses a sample value: a decimal or exponent float, `+Inf`, `-Inf`, `NaN`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// The family a series belongs to: its own name, or the histogram it is a `_bucket`, `_sum` or
/// `_count` of when such a histogram was declared.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, Kind>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base) == Some(&Kind::Histogram) {
                return base;
            }
        }
    }
    name
}

/// Parses a text exposition (format 0.0.4): `# HELP` and `# TYPE` lines, other comments, and
/// samples `name{label="value",...} value [timestamp]`.
///
/// Checks names, label syntax and escapes, values, at most one `TYPE` per family and that it
/// comes before the family's samples, and that histogram buckets carry an `le` label.
///
/// # Errors
/// [`MetricsError::Parse`] with the 1-based line number and what is wrong.
pub fn parse_text(text: &str) -> Result<Exposition, MetricsError> {
    let mut exp = Exposition::default();
    let mut seen_samples: std::collections::BTreeSet<String> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), help) => {
                    if !valid_metric_name(name) {
                        return Err(parse_err(n, format!("bad metric name {name:?} in HELP")));
                    }
                    let help = unescape(help.unwrap_or(""), false)
                        .map_err(|e| parse_err(n, format!("HELP of {name}: {e}")))?;
                    if exp.help.insert(name.to_owned(), help).is_some() {
                        return Err(parse_err(n, format!("second HELP for {name}")));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_metric_name(name) {
                        return Err(parse_err(n, format!("bad metric name {name:?} in TYPE")));
                    }
                    let kind = match kind.trim() {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "untyped" | "summary" => Kind::Untyped,
                        other => return Err(parse_err(n, format!("unknown type {other:?}"))),
                    };
                    if seen_samples.contains(name) {
                        return Err(parse_err(n, format!("TYPE of {name} after its samples")));
                    }
                    if exp.types.insert(name.to_owned(), kind).is_some() {
                        return Err(parse_err(n, format!("second TYPE for {name}")));
                    }
                }
                (Some("TYPE"), _, _) => return Err(parse_err(n, "TYPE line without a type")),
                _ => {} // a plain comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|reason| parse_err(n, reason))?;
        let family = family_of(&sample.name, &exp.types).to_owned();
        if exp.types.get(&family) == Some(&Kind::Histogram)
            && sample.name.ends_with("_bucket")
            && sample.label("le").and_then(parse_value).is_none()
        {
            return Err(parse_err(
                n,
                format!("{} has no numeric le label", sample.name),
            ));
        }
        seen_samples.insert(family);
        exp.samples.push(sample);
    }
    Ok(exp)
}

fn unescape(s: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            other => return Err(format!("bad escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or_else(|| "sample without a value".to_owned())?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut s = body;
        loop {
            s = s.trim_start();
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s
                .find('=')
                .ok_or_else(|| format!("label without '=' in {name}"))?;
            let key = s[..eq].trim();
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?} in {name}"));
            }
            let after_eq = s[eq + 1..].trim_start();
            let quoted = after_eq
                .strip_prefix('"')
                .ok_or_else(|| format!("label {key} of {name}: value not quoted"))?;
            // Find the closing quote, skipping escaped characters.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or_else(|| format!("label {key} of {name}: unterminated value"))?;
            let value = unescape(&quoted[..end], true)
                .map_err(|e| format!("label {key} of {name}: {e}"))?;
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} twice in {name}"));
            }
            labels.push((key.to_owned(), value));
            s = quoted[end + 1..].trim_start();
            if let Some(after) = s.strip_prefix(',') {
                s = after;
            } else if !s.starts_with('}') {
                return Err(format!("expected ',' or '}}' after label {key} of {name}"));
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("no space before the value of {name}"));
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields
        .next()
        .ok_or_else(|| format!("{name} has no value"))?;
    let value =
        parse_value(value_text).ok_or_else(|| format!("{name}: bad value {value_text:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("{name}: bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err(format!("{name}: trailing text after the value"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    /// A gauge whose help and label value need every escape, and a label-less `+Inf` sample.
    fn escaped_family() -> Family {
        Family::new("tandem_x", "A \\ help\nline", Kind::Gauge)
            .with(&[("group", "a\"b\\c\nd")], 1.5)
            .with(&[], f64::INFINITY)
    }

    fn rendered_lines() -> Vec<String> {
        render(&[escaped_family()])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn render_escapes_backslash_and_newline_in_help() {
        assert_eq!(rendered_lines()[0], r"# HELP tandem_x A \\ help\nline");
    }

    #[test]
    fn render_writes_the_type_line_after_help() {
        assert_eq!(rendered_lines()[1], "# TYPE tandem_x gauge");
    }

    #[test]
    fn render_escapes_quote_backslash_and_newline_in_label_values() {
        assert_eq!(rendered_lines()[2], r#"tandem_x{group="a\"b\\c\nd"} 1.5"#);
    }

    #[test]
    fn render_writes_a_labelless_sample_without_braces_and_infinity_as_plus_inf() {
        assert_eq!(rendered_lines()[3], "tandem_x +Inf");
    }

    #[test]
    fn render_ends_each_line_with_a_newline_and_writes_no_eof_marker() {
        let text = render(&[escaped_family()]);
        assert_eq!(text, rendered_lines().join("\n") + "\n");
        assert_eq!(text.lines().count(), 4);
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn parse_rejects_malformed_lines_with_their_line_number() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok 1\n9bad 1\n", 2, "bad metric name"),
            ("a{b=\"c} 1\n", 1, "unterminated"),
            ("a{b=c} 1\n", 1, "not quoted"),
            ("a{1b=\"c\"} 1\n", 1, "bad label name"),
            ("a 1x\n", 1, "bad value"),
            ("a\n", 1, "without a value"),
            ("a{b=\"x\",b=\"y\"} 1\n", 1, "twice"),
            ("a 1\n# TYPE a gauge\n", 2, "after its samples"),
            ("# TYPE a gauge\n# TYPE a gauge\n", 2, "second TYPE"),
            ("# TYPE a widget\n", 1, "unknown type"),
            ("# TYPE h histogram\nh_bucket 1\n", 2, "le"),
            ("a{b=\"\\x\"} 1\n", 1, "bad escape"),
            ("a 1 2 3\n", 1, "trailing"),
            ("a 1 notatime\n", 1, "timestamp"),
        ];
        for (i, (text, line, what)) in cases.iter().enumerate() {
            match parse_text(text) {
                Err(MetricsError::Parse { line: l, reason }) => {
                    assert_eq!(l, *line, "#{i}: expect line {line}, got {l} ({reason})");
                    assert!(reason.contains(what), "#{i}: expect {what:?} in {reason:?}");
                }
                other => panic!("#{i}: expect a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn parse_accepts_timestamps_comments_and_special_values() {
        let exp = parse_text(
            "# a comment\n\n# TYPE a untyped\na{x=\"1\"} -Inf 1700000000000\nb NaN\nc 1e-3\n",
        )
        .unwrap();
        assert_eq!(exp.value("a", &[("x", "1")]), Some(f64::NEG_INFINITY));
        assert!(exp.value("b", &[]).unwrap().is_nan());
        assert_eq!(exp.value("c", &[]), Some(0.001));
    }

    fn label_value() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\\'),
                Just('"'),
                Just('\n'),
                Just('x'),
                Just('é'),
                Just(' '),
                Just('}'),
                Just(',')
            ],
            0..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn parse_of_render_gives_back_every_sample(
            values in proptest::collection::vec((label_value(), -1e12f64..1e12), 1..8),
            help in label_value(),
        ) {
            let mut f = Family::new("tandem_prop", &help, Kind::Gauge);
            for (i, (lv, v)) in values.iter().enumerate() {
                f.push(&[("i", &i.to_string()), ("v", lv)], *v);
            }
            let exp = parse_text(&render(&[f.clone()])).unwrap();
            prop_assert_eq!(exp.samples, f.samples);
            prop_assert_eq!(exp.help.get("tandem_prop"), Some(&help));
        }
    }
}
