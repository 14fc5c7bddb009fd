//! The parser's cursor over `toml`'s spanned document: typed readers for one value each
//! (string, integer, duration, command, ...), each reporting a located diagnostic instead of
//! failing, so that every problem of a file is found in one pass.
//!
//! Pure: takes the text and spanned values, records positions in a [`SourceMap`].

use std::collections::BTreeMap;
use std::ops::Range;
use tandem_core::config::{line_col, Diagnostic, HumanDuration};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::model::Command;
use crate::source::{suggest, SourceMap};

/// A spanned TOML value of the document being parsed.
pub(super) type Value<'a> = Spanned<DeValue<'a>>;

/// The parse under way: the text, where its fields sit, and the problems found so far.
pub(super) struct Ctx<'t> {
    pub(super) text: &'t str,
    pub(super) map: SourceMap,
    pub(super) diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(super) fn note(&mut self, path: &str, span: &Range<usize>) {
        let lc = line_col(self.text, span.start);
        self.map.note(path, lc);
    }

    pub(super) fn err(&mut self, path: &str, span: &Range<usize>, message: String) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.map.file().to_string(),
            line,
            column,
            path: path.to_string(),
            message,
        });
    }

    pub(super) fn wrong_type(&mut self, path: &str, v: &Value<'_>, expected: &str) {
        let got = v.get_ref().type_str();
        self.err(path, &v.span(), format!("expected {expected}, found {got}"));
    }

    pub(super) fn string(&mut self, path: &str, v: &Value<'_>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(path, v, "a string");
                None
            }
        }
    }

    pub(super) fn nonempty(&mut self, path: &str, v: &Value<'_>) -> Option<String> {
        let s = self.string(path, v)?;
        if s.trim().is_empty() {
            self.err(path, &v.span(), "must not be empty".to_string());
            return None;
        }
        Some(s)
    }

    pub(super) fn boolean(&mut self, path: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(path, v, "true or false");
                None
            }
        }
    }

    pub(super) fn integer(&mut self, path: &str, v: &Value<'_>) -> Option<i64> {
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.err(path, &v.span(), "integer out of range".to_string());
                    None
                }
            },
            _ => {
                self.wrong_type(path, v, "an integer");
                None
            }
        }
    }

    pub(super) fn bounded(&mut self, path: &str, v: &Value<'_>, lo: i64, hi: i64) -> Option<i64> {
        let n = self.integer(path, v)?;
        if n < lo || n > hi {
            self.err(
                path,
                &v.span(),
                format!("must be between {lo} and {hi}, got {n}"),
            );
            return None;
        }
        Some(n)
    }

    pub(super) fn duration(&mut self, path: &str, v: &Value<'_>) -> Option<HumanDuration> {
        match v.get_ref() {
            DeValue::String(s) => match s.parse::<HumanDuration>() {
                Ok(d) => Some(d),
                Err(e) => {
                    self.err(path, &v.span(), e.to_string());
                    None
                }
            },
            _ => {
                self.wrong_type(path, v, "a quoted duration such as \"30s\"");
                None
            }
        }
    }

    pub(super) fn string_map(
        &mut self,
        path: &str,
        v: &Value<'_>,
    ) -> Option<BTreeMap<String, String>> {
        let DeValue::Table(t) = v.get_ref() else {
            self.wrong_type(path, v, "a table of strings, e.g. { NAME = \"value\" }");
            return None;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, val) in t.iter() {
            let p = format!("{path}.{}", k.get_ref());
            self.note(&p, &val.span());
            match self.string(&p, val) {
                Some(s) => {
                    out.insert(k.get_ref().to_string(), s);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(super) fn command(&mut self, path: &str, v: &Value<'_>) -> Option<Command> {
        match v.get_ref() {
            DeValue::String(s) if !s.trim().is_empty() => Some(Command::Shell(s.to_string())),
            DeValue::Array(items) if !items.is_empty() => {
                let mut argv = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    argv.push(self.string(&format!("{path}[{i}]"), item)?);
                }
                Some(Command::Argv(argv))
            }
            DeValue::String(_) | DeValue::Array(_) => {
                self.err(path, &v.span(), "must not be empty".to_string());
                None
            }
            _ => {
                self.wrong_type(path, v, "a shell line or a list of program and arguments");
                None
            }
        }
    }

    pub(super) fn status(&mut self, path: &str, v: &Value<'_>) -> Option<u16> {
        self.bounded(path, v, 100, 599)
            .and_then(|n| u16::try_from(n).ok())
    }

    /// Reports every key of `table` not in `allowed`.
    pub(super) fn unknown_keys(
        &mut self,
        prefix: &str,
        table: &DeTable<'_>,
        allowed: &[&str],
        what: &str,
    ) {
        for (k, _) in table.iter() {
            let key = k.get_ref().as_ref();
            if !allowed.contains(&key) {
                let hint = suggest(key, allowed.iter().copied());
                self.err(
                    &join(prefix, key),
                    &k.span(),
                    format!("unknown field \"{key}\" in {what}{hint}"),
                );
            }
        }
    }
}

/// `prefix.key`, or `key` at the root.
pub(super) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The value at `key` of `table`.
pub(super) fn get<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Value<'i>> {
    table.get(key)
}
