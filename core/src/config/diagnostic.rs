//! Diagnostics of a config file: the `Diagnostic` (`FILE:LINE:COL: field.path: message`), the
//! `ConfigError` of a load, and `Diags`, which maps field paths of the parsed TOML to places in
//! the text and collects every problem so that one load reports them all. Pure; no I/O.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// One problem in a config file, located by field path and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as named to the loader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Field path such as `groups[0].replica` (0-based indexes in file order).
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{file}:{line}:{column}: TOML syntax error: {message}")]
    Syntax {
        /// The file as named to the loader.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The TOML is well formed but the topology is not valid: every problem found, in file order.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// True when trying again might succeed (only a read error can be transient).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConfigError::Read { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock))
    }

    /// The diagnostics of an [`ConfigError::Invalid`] error (empty for other variants).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            _ => &[],
        }
    }
}

/// What `find` knows of `path` (`a.b[2].c`), or of its nearest ancestor (`a.b[2]`, `a.b`,
/// `a`): how a diagnostic about a field missing from the file finds the place to point at.
/// Shared by the config loader and the runbook parser.
pub fn nearest<T>(path: &str, find: impl Fn(&str) -> Option<T>) -> Option<T> {
    let mut p = path;
    loop {
        if let Some(t) = find(p) {
            return Some(t);
        }
        p = &p[..p.rfind(['.', '['])?];
    }
}

/// Diagnostics one per line, as `ConfigError::Invalid` (and the runbook errors) print them.
pub fn display_lines(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(Diagnostic::to_string).collect();
    lines.join("\n")
}
/// 1-based line and column (in characters) of a byte offset; shared by every TOML parser
/// that reports `file:line:column` (topology, runbooks).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Collects diagnostics and maps field paths to places in the text.
pub(super) struct Diags<'t> {
    file: String,
    pub(super) text: &'t str,
    /// Span of every value (and table element) by field path.
    values: HashMap<String, Range<usize>>,
    /// Every key span and value span, with its path, to map a span back to a path.
    spans: Vec<(String, Range<usize>)>,
    /// Fields whose humane value did not parse; later checks of them are suppressed.
    pub(super) bad: HashSet<String>,
    pub(super) list: Vec<Diagnostic>,
}

impl<'t> Diags<'t> {
    pub(super) fn new(file: &str, text: &'t str, root: &Spanned<DeTable<'_>>) -> Diags<'t> {
        let mut d = Diags {
            file: file.to_string(),
            text,
            values: HashMap::new(),
            spans: Vec::new(),
            bad: HashSet::new(),
            list: Vec::new(),
        };
        d.index_table("", root.get_ref());
        d
    }

    fn index_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.spans.push((path.clone(), key.span()));
            self.index_value(path, value);
        }
    }

    fn index_value(&mut self, path: String, value: &Spanned<DeValue<'_>>) {
        self.spans.push((path.clone(), value.span()));
        self.values.insert(path.clone(), value.span());
        match value.get_ref() {
            DeValue::Table(t) => self.index_table(&path, t),
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.index_value(format!("{path}[{i}]"), v);
                }
            }
            _ => {}
        }
    }

    /// The byte offset of `path`, or of its nearest ancestor present in the file.
    pub(super) fn offset_of(&self, path: &str) -> usize {
        nearest(path, |p| self.values.get(p).map(|span| span.start)).unwrap_or(0)
    }

    /// The innermost path whose key or value span contains `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        self.spans
            .iter()
            .filter(|(_, s)| s.start <= span.start && span.end <= s.end.max(s.start + 1))
            // Smallest span first; on a tie (a table header) the deeper path.
            .min_by_key(|(p, s)| (s.end - s.start, std::cmp::Reverse(p.len())))
            .map(|(p, _)| p.as_str())
    }

    pub(super) fn push(&mut self, path: &str, message: String) {
        if self.bad.contains(path) {
            return;
        }
        let offset = self.offset_of(path);
        self.push_at(path, offset, message);
    }

    pub(super) fn push_at(&mut self, path: &str, offset: usize, message: String) {
        let (line, column) = line_col(self.text, offset);
        self.list.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message,
        });
    }

    /// Deserializes `value` (found at `path`) as a `T`, reporting the error on failure.
    pub(super) fn deserialize<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let outer = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or(outer);
                let mut at = self.path_at(&span).unwrap_or(path).to_string();
                if !at.starts_with(path) {
                    at = path.to_string();
                }
                let message = e.message().trim().to_string();
                // "missing field `x`" belongs to the field, at the table's place.
                if let Some(field) = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.strip_suffix('`'))
                {
                    let offset = self.offset_of(&at);
                    self.push_at(
                        &format!("{at}.{field}"),
                        offset,
                        format!("missing `{field}`"),
                    );
                } else {
                    self.push_at(&at, span.start, message);
                }
                None
            }
        }
    }

    /// Runs `f` on every element of the array `value` found at `path`, keeping each result with
    /// its index; false when any failed.
    pub(super) fn each<T>(
        &mut self,
        path: &str,
        value: Spanned<DeValue<'_>>,
        out: &mut Vec<(usize, T)>,
        mut f: impl FnMut(&mut Self, &str, Spanned<DeValue<'_>>) -> Option<T>,
    ) -> bool {
        let DeValue::Array(items) = value.into_inner() else {
            self.push(
                path,
                format!("expected a list of tables: write [[{path}]] for each entry"),
            );
            return false;
        };
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            match f(self, &format!("{path}[{i}]"), item) {
                Some(v) => out.push((i, v)),
                None => ok = false,
            }
        }
        ok
    }

    pub(super) fn finish(mut self) -> ConfigError {
        self.list
            .sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
        self.list.dedup();
        ConfigError::Invalid(self.list)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;
    use crate::config::*;
    use std::path::Path;

    #[test]
    fn line_col_counts_characters_not_bytes() {
        assert_eq!(line_col("a\nđà = 1", 7), (2, 4));
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }

    #[test]
    fn unknown_field_is_reported_at_its_key() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nrpo_taget = \"1s\"",
        );
        assert_diag(
            &text,
            "groups[0].rpo_taget",
            "rpo_taget",
            "unknown field `rpo_taget`",
        );
    }

    #[test]
    fn unknown_enum_value_is_reported_at_its_value() {
        let text = edit(BASE, "mode = \"sync\"", "mode = \"semi\"");
        assert_diag(
            &text,
            "groups[0].mode",
            "mode = \"semi\"",
            "unknown variant `semi`",
        );
    }

    #[test]
    fn missing_required_field_is_reported_at_its_table() {
        let text = edit(BASE, "listen = \"127.0.0.1:7002\"\n", "");
        assert_diag(
            &text,
            "nodes[1].listen",
            "[[nodes]]\nname = \"b-coord\"",
            "missing `listen`",
        );
    }

    #[test]
    fn a_broken_entry_does_not_hide_errors_elsewhere_or_cause_false_ones() {
        // nodes[1] cannot be read; coordinator counts are then not judged, but the group's
        // error is still found.
        let text = edit(BASE, "listen = \"127.0.0.1:7002\"\n", "");
        let text = edit(&text, "replica = \"b\"", "replica = \"a\"");
        let diags = diagnostics(&text);
        let paths: Vec<&str> = diags.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["nodes[1].listen", "groups[0].replica"]);
    }

    #[test]
    fn broken_fixture_reports_every_error_with_path_and_line() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken-topology.toml");
        let err = Topology::load(&path).unwrap_err();
        let ConfigError::Invalid(diags) = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        let got: Vec<(&str, usize)> = diags.iter().map(|d| (d.path.as_str(), d.line)).collect();
        assert_eq!(
            got,
            [
                ("cluster.lease_ttl", 5),
                ("sites[2].name", 14),
                ("nodes", 16),
                ("nodes[1].site", 25),
                ("nodes[1].listen", 27),
                ("groups[0].replica", 40),
                ("groups[0].journal_max", 43),
                ("groups[0].resources[0].size", 45),
            ],
            "\n{err}"
        );
        let unknown = diags.iter().find(|d| d.path == "nodes[1].site").unwrap();
        assert!(
            unknown.message.ends_with("sites are: hanoi, hcm"),
            "{}",
            unknown.message
        );
        // One line per diagnostic, each FILE:LINE:COL: path: message.
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), diags.len());
        let first = shown.lines().next().unwrap();
        assert!(
            first.ends_with(
                "broken-topology.toml:5:13: cluster.lease_ttl: invalid duration \"4 seconds\": \
                 unknown unit \"seconds\"; use ms, s, m, h or d"
            ),
            "{first}"
        );
    }
}
