//! Where a parsed runbook's fields sit in its file, and the helpers every diagnostic shares:
//! locating a field path as `line:column`, file-order sorting, "did you mean" hints.
//!
//! Pure; imports nothing of the crate, so the model, the parser and the validator can all
//! stand on it.

use std::collections::BTreeMap;

use tandem_core::config::{nearest, Diagnostic};

/// Where each field of a parsed runbook sits in its file (line and column by field path), so
/// that checks made after parsing can still point at the text.
///
/// Two maps always compare equal: the map describes the text, not the runbook.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    file: String,
    at: BTreeMap<String, (usize, usize)>,
}

impl PartialEq for SourceMap {
    fn eq(&self, _: &SourceMap) -> bool {
        true
    }
}
impl Eq for SourceMap {}

impl SourceMap {
    /// An empty map of the file named `file` (as given to the parser).
    pub(crate) fn new(file: &str) -> SourceMap {
        SourceMap {
            file: file.to_string(),
            at: BTreeMap::new(),
        }
    }

    /// Records that the value at `path` starts at `line_col`.
    pub(crate) fn note(&mut self, path: &str, line_col: (usize, usize)) {
        self.at.insert(path.to_string(), line_col);
    }

    /// Line and column of `path`, or of its nearest ancestor in the file (1:1 when none).
    pub fn locate(&self, path: &str) -> (usize, usize) {
        nearest(path, |p| self.at.get(p).copied()).unwrap_or((1, 1))
    }

    /// A diagnostic at `path`.
    pub fn diagnostic(&self, path: &str, message: String) -> Diagnostic {
        let (line, column) = self.locate(path);
        self.make(path, line, column, message)
    }

    /// A diagnostic `chars` characters into the string value at `path` (past its opening
    /// quote); exact for single-line strings without escapes.
    pub fn diagnostic_within(&self, path: &str, chars: usize, message: String) -> Diagnostic {
        match self.at.get(path) {
            Some(&(line, column)) => self.make(path, line, column + 1 + chars, message),
            None => self.diagnostic(path, message),
        }
    }

    fn make(&self, path: &str, line: usize, column: usize, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message,
        }
    }

    /// True when the file has a value at exactly `path`.
    pub fn has(&self, path: &str) -> bool {
        self.at.contains_key(path)
    }

    /// The file name given to the parser.
    pub fn file(&self) -> &str {
        &self.file
    }
}

/// Sorts diagnostics in file order and drops repeats.
pub(crate) fn sort_diagnostics(list: &mut Vec<Diagnostic>) {
    list.sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
    list.dedup();
}

/// Edit distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `names` to `word`, if close enough to be a typo.
pub(crate) fn suggest<'n>(word: &str, names: impl IntoIterator<Item = &'n str>) -> String {
    names
        .into_iter()
        .map(|n| (distance(word, n), n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3) && *d < n.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| format!(" (did you mean \"{n}\"?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            suggest("promte", ["promote", "demote"]),
            " (did you mean \"promote\"?)"
        );
        assert_eq!(suggest("xyzzy", ["promote", "demote"]), "");
    }
}
