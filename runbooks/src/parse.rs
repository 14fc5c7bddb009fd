//! Parsing runbook TOML into a [`Runbook`], every problem located as `file:line:column`.
//!
//! The document is walked by hand over `toml`'s spanned tables rather than through serde, so
//! that each problem (an unknown action, a missing argument, a bad duration) points at the
//! exact key or value, and so that all problems are reported at once.

use std::collections::{BTreeMap, HashSet};

use std::ops::Range;
use std::path::Path;
use tandem_core::config::{line_col, HumanDuration};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::condition::Condition;
use crate::model::{
    Action, ActionKind, Command, OnFailure, ParamType, ParamValue, Parameter, Probe, RecoverPoint,
    Retries, Runbook, RunbookKind, SiteRef, Step, DEFAULT_CHECK_INTERVAL, DEFAULT_TIMEOUT,
    MAX_BACKOFF, MAX_RETRIES,
};
use crate::{Diagnostic, RunbookError};

type Value<'a> = Spanned<DeValue<'a>>;

/// The step fields every action accepts.
pub const STEP_FIELDS: [&str; 10] = [
    "id",
    "action",
    "site",
    "description",
    "timeout",
    "retries",
    "when",
    "on_failure",
    "repeatable",
    "handler",
];

const ROOT_FIELDS: [&str; 5] = ["name", "description", "kind", "parameters", "steps"];
const PARAM_FIELDS: [&str; 4] = ["name", "type", "default", "description"];

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
    /// Line and column of `path`, or of its nearest ancestor in the file (1:1 when none).
    pub fn locate(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(lc) = self.at.get(p) {
                return *lc;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
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

struct Ctx<'t> {
    text: &'t str,
    map: SourceMap,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn note(&mut self, path: &str, span: &Range<usize>) {
        let lc = line_col(self.text, span.start);
        self.map.at.insert(path.to_string(), lc);
    }

    fn err(&mut self, path: &str, span: &Range<usize>, message: String) {
        let (line, column) = line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.map.file.clone(),
            line,
            column,
            path: path.to_string(),
            message,
        });
    }

    fn wrong_type(&mut self, path: &str, v: &Value<'_>, expected: &str) {
        let got = v.get_ref().type_str();
        self.err(path, &v.span(), format!("expected {expected}, found {got}"));
    }

    fn string(&mut self, path: &str, v: &Value<'_>) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(path, v, "a string");
                None
            }
        }
    }

    fn nonempty(&mut self, path: &str, v: &Value<'_>) -> Option<String> {
        let s = self.string(path, v)?;
        if s.trim().is_empty() {
            self.err(path, &v.span(), "must not be empty".to_string());
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, path: &str, v: &Value<'_>) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(path, v, "true or false");
                None
            }
        }
    }

    fn integer(&mut self, path: &str, v: &Value<'_>) -> Option<i64> {
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

    fn bounded(&mut self, path: &str, v: &Value<'_>, lo: i64, hi: i64) -> Option<i64> {
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

    fn duration(&mut self, path: &str, v: &Value<'_>) -> Option<HumanDuration> {
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

    fn string_map(&mut self, path: &str, v: &Value<'_>) -> Option<BTreeMap<String, String>> {
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

    fn command(&mut self, path: &str, v: &Value<'_>) -> Option<Command> {
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

    fn status(&mut self, path: &str, v: &Value<'_>) -> Option<u16> {
        self.bounded(path, v, 100, 599)
            .and_then(|n| u16::try_from(n).ok())
    }

    /// Reports every key of `table` not in `allowed`.
    fn unknown_keys(&mut self, prefix: &str, table: &DeTable<'_>, allowed: &[&str], what: &str) {
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

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn get<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Value<'i>> {
    table.get(key)
}

/// A step as parsed, before whole-runbook checks, with its index in the file.
pub(crate) struct ParsedStep {
    pub(crate) index: usize,
    pub(crate) step: Step,
}

impl Runbook {
    /// Reads, parses and validates the runbook file at `path`. The only I/O in this crate.
    ///
    /// # Errors
    /// [`RunbookError::Read`] when the file cannot be read, [`RunbookError::Syntax`] for bad
    /// TOML, [`RunbookError::Invalid`] with every problem found otherwise.
    pub fn load(path: &Path) -> Result<Runbook, RunbookError> {
        let text = std::fs::read_to_string(path).map_err(|source| RunbookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Runbook::parse(&text, &path.display().to_string())
    }

    /// As [`Runbook::load`], also returning the blake3 hash (hex) of the file's bytes, which a
    /// run records ([`crate::run::runbook_hash`]).
    ///
    /// # Errors
    /// As [`Runbook::load`].
    pub fn load_hashed(path: &Path) -> Result<(Runbook, String), RunbookError> {
        let bytes = std::fs::read(path).map_err(|source| RunbookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let hash = crate::run::runbook_hash(&bytes);
        let text = String::from_utf8(bytes).map_err(|e| RunbookError::Syntax {
            file: path.display().to_string(),
            line: 1,
            column: 1,
            message: format!(
                "not UTF-8 text (first bad byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        })?;
        Ok((Runbook::parse(&text, &path.display().to_string())?, hash))
    }

    /// Parses and validates runbook `text`; `file` names it in diagnostics.
    ///
    /// # Errors
    /// [`RunbookError::Syntax`] for bad TOML, [`RunbookError::Invalid`] with every problem found.
    pub fn parse(text: &str, file: &str) -> Result<Runbook, RunbookError> {
        let root = DeTable::parse(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            RunbookError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let mut cx = Ctx {
            text,
            map: SourceMap {
                file: file.to_string(),
                at: BTreeMap::new(),
            },
            diags: Vec::new(),
        };
        let table = root.get_ref();
        cx.unknown_keys("", table, &ROOT_FIELDS, "a runbook");
        for (k, v) in table.iter() {
            cx.note(k.get_ref(), &v.span());
        }

        let name = match get(table, "name") {
            Some(v) => cx.nonempty("name", v),
            None => {
                cx.err("name", &(0..0), "missing `name`".to_string());
                None
            }
        };
        let description = get(table, "description")
            .and_then(|v| cx.string("description", v))
            .unwrap_or_default();
        let kind = match get(table, "kind") {
            None => Some(RunbookKind::Custom),
            Some(v) => cx.string("kind", v).and_then(|s| {
                let found = RunbookKind::ALL.into_iter().find(|k| k.as_str() == s);
                if found.is_none() {
                    let hint = suggest(&s, RunbookKind::ALL.map(RunbookKind::as_str));
                    cx.err(
                        "kind",
                        &v.span(),
                        format!(
                            "unknown kind \"{s}\": use drill, switchover, failover, failback or custom{hint}"
                        ),
                    );
                }
                found
            }),
        };

        let parameters = match get(table, "parameters") {
            None => Vec::new(),
            Some(v) => parse_parameters(&mut cx, v),
        };

        let mut steps = Vec::new();
        let mut known_ids = HashSet::new();
        match get(table, "steps") {
            None => cx.err(
                "steps",
                &(0..0),
                "a runbook needs steps: add [[steps]] tables".to_string(),
            ),
            Some(v) => match v.get_ref() {
                DeValue::Array(items) if !items.is_empty() => {
                    for item in items.iter() {
                        if let Some(DeValue::String(id)) =
                            item.get_ref().get("id").map(Spanned::get_ref)
                        {
                            known_ids.insert(id.to_string());
                        }
                    }
                    for (i, item) in items.iter().enumerate() {
                        if let Some(step) = parse_step(&mut cx, i, item) {
                            steps.push(step);
                        }
                    }
                }
                DeValue::Array(_) => cx.err(
                    "steps",
                    &v.span(),
                    "a runbook needs steps: add [[steps]] tables".to_string(),
                ),
                _ => cx.wrong_type("steps", v, "a list of tables: write [[steps]]"),
            },
        }

        let kind = kind.unwrap_or(RunbookKind::Custom);
        let mut diags = cx.diags;
        let map = cx.map;
        diags.extend(crate::validate::check_steps(
            kind,
            &parameters,
            &steps,
            &known_ids,
            &map,
        ));
        sort_diagnostics(&mut diags);
        match name {
            Some(name) if diags.is_empty() => Ok(Runbook {
                name,
                description,
                kind,
                parameters,
                steps: steps.into_iter().map(|p| p.step).collect(),
                source: map,
            }),
            _ => Err(RunbookError::Invalid(diags)),
        }
    }
}

fn parse_parameters(cx: &mut Ctx<'_>, v: &Value<'_>) -> Vec<Parameter> {
    let DeValue::Array(items) = v.get_ref() else {
        cx.wrong_type("parameters", v, "a list of tables: write [[parameters]]");
        return Vec::new();
    };
    let mut out: Vec<Parameter> = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("parameters[{i}]");
        cx.note(&path, &item.span());
        let DeValue::Table(t) = item.get_ref() else {
            cx.wrong_type(&path, item, "a table");
            continue;
        };
        cx.unknown_keys(&path, t, &PARAM_FIELDS, "a parameter");
        for (k, val) in t.iter() {
            cx.note(&join(&path, k.get_ref()), &val.span());
        }
        let name = match get(t, "name") {
            Some(v) => {
                let p = format!("{path}.name");
                cx.string(&p, v).and_then(|n| {
                    if !valid_name(&n) {
                        cx.err(&p, &v.span(), format!("invalid parameter name \"{n}\": use letters, digits and '_', starting with a letter"));
                        return None;
                    }
                    let line = line_col(cx.text, v.span().start).0;
                    if let Some(first) = seen.get(&n) {
                        cx.err(&p, &v.span(), format!("duplicate parameter \"{n}\" (first declared at line {first})"));
                        return None;
                    }
                    seen.insert(n.clone(), line);
                    Some(n)
                })
            }
            None => {
                cx.err(
                    &format!("{path}.name"),
                    &item.span(),
                    "missing `name`".to_string(),
                );
                None
            }
        };
        let ty = match get(t, "type") {
            Some(v) => {
                let p = format!("{path}.type");
                cx.string(&p, v).and_then(|s| {
                    let ty = [
                        ParamType::String,
                        ParamType::Bool,
                        ParamType::Integer,
                        ParamType::Duration,
                    ]
                    .into_iter()
                    .find(|t| t.as_str() == s);
                    if ty.is_none() {
                        cx.err(
                            &p,
                            &v.span(),
                            format!("unknown type \"{s}\": use string, bool, integer or duration"),
                        );
                    }
                    ty
                })
            }
            None => {
                cx.err(
                    &format!("{path}.type"),
                    &item.span(),
                    "missing `type`".to_string(),
                );
                None
            }
        };
        let description = get(t, "description")
            .and_then(|v| cx.string(&format!("{path}.description"), v))
            .unwrap_or_default();
        let default = match (get(t, "default"), ty) {
            (Some(v), Some(ty)) => {
                let p = format!("{path}.default");
                let value = match (ty, v.get_ref()) {
                    (ParamType::String, DeValue::String(s)) => {
                        Some(ParamValue::String(s.to_string()))
                    }
                    (ParamType::Bool, DeValue::Boolean(b)) => Some(ParamValue::Bool(*b)),
                    (ParamType::Integer, DeValue::Integer(_)) => {
                        cx.integer(&p, v).map(ParamValue::Integer)
                    }
                    (ParamType::Duration, DeValue::String(_)) => {
                        cx.duration(&p, v).map(ParamValue::Duration)
                    }
                    _ => {
                        cx.err(
                            &p,
                            &v.span(),
                            format!(
                                "default does not match the parameter's type ({ty}), found {}",
                                v.get_ref().type_str()
                            ),
                        );
                        None
                    }
                };
                if value.is_none() {
                    continue;
                }
                value
            }
            _ => None,
        };
        if let (Some(name), Some(ty)) = (name, ty) {
            out.push(Parameter {
                name,
                ty,
                default,
                description,
            });
        }
    }
    out
}

fn valid_name(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && n.len() <= 63
}

fn valid_step_id(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && n.len() <= 63
}

fn parse_step(cx: &mut Ctx<'_>, i: usize, item: &Value<'_>) -> Option<ParsedStep> {
    let path = format!("steps[{i}]");
    cx.note(&path, &item.span());
    let DeValue::Table(t) = item.get_ref() else {
        cx.wrong_type(&path, item, "a table: write [[steps]]");
        return None;
    };
    for (k, val) in t.iter() {
        cx.note(&join(&path, k.get_ref()), &val.span());
    }
    let mut ok = true;

    let id = match get(t, "id") {
        Some(v) => {
            let p = format!("{path}.id");
            cx.string(&p, v).and_then(|id| {
                if valid_step_id(&id) {
                    Some(id)
                } else {
                    cx.err(&p, &v.span(), format!("invalid step id \"{id}\": use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"));
                    None
                }
            })
        }
        None => {
            cx.err(
                &format!("{path}.id"),
                &item.span(),
                "missing `id`".to_string(),
            );
            None
        }
    };

    let action_path = format!("{path}.action");
    let kind = match get(t, "action") {
        Some(v) => cx.string(&action_path, v).and_then(|name| {
            let kind = ActionKind::from_name(&name);
            if kind.is_none() {
                let hint = suggest(&name, ActionKind::ALL.map(ActionKind::as_str));
                cx.err(
                    &action_path,
                    &v.span(),
                    format!("unknown action \"{name}\"{hint}"),
                );
            }
            kind
        }),
        None => {
            cx.err(
                &action_path,
                &item.span(),
                format!(
                    "missing `action`: one of {}",
                    ActionKind::ALL.map(ActionKind::as_str).join(", ")
                ),
            );
            None
        }
    };

    // Common fields.
    let site_given = get(t, "site").and_then(|v| cx.nonempty(&format!("{path}.site"), v));
    let explicit_site = get(t, "site").is_some();
    if explicit_site && site_given.is_none() {
        ok = false;
    }
    let description = match get(t, "description") {
        Some(v) => {
            let d = cx.string(&format!("{path}.description"), v);
            ok &= d.is_some();
            d
        }
        None => None,
    };
    let timeout = match get(t, "timeout") {
        Some(v) => {
            let p = format!("{path}.timeout");
            match cx.duration(&p, v) {
                Some(d) if d.is_zero() => {
                    cx.err(&p, &v.span(), "timeout must be above zero".to_string());
                    None
                }
                d => d,
            }
        }
        None => Some(DEFAULT_TIMEOUT),
    };
    let retries = match get(t, "retries") {
        Some(v) => parse_retries(cx, &format!("{path}.retries"), v),
        None => Some(Retries::NONE),
    };
    let when = match get(t, "when") {
        Some(v) => {
            let p = format!("{path}.when");
            cx.string(&p, v)
                .and_then(|text| match Condition::parse(&text) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let chars = text[..e.offset.min(text.len())].chars().count();
                        let d = cx.map.diagnostic_within(
                            &p,
                            chars,
                            format!("bad condition: {}", e.message),
                        );
                        cx.diags.push(d);
                        None
                    }
                })
        }
        None => None,
    };
    let when_ok = get(t, "when").is_none() || when.is_some();
    let on_failure = match get(t, "on_failure") {
        Some(v) => parse_on_failure(cx, &format!("{path}.on_failure"), v),
        None => Some(OnFailure::Abort),
    };
    let repeatable = match get(t, "repeatable") {
        Some(v) => cx.boolean(&format!("{path}.repeatable"), v).map(Some),
        None => Some(None),
    };
    let handler = match get(t, "handler") {
        Some(v) => cx.boolean(&format!("{path}.handler"), v),
        None => Some(false),
    };

    let kind = kind?;
    // Arguments.
    let allowed: Vec<&str> = STEP_FIELDS
        .iter()
        .copied()
        .chain(kind.arguments().iter().copied())
        .collect();
    for (k, _) in t.iter() {
        let key = k.get_ref().as_ref();
        if !allowed.contains(&key) {
            let args = kind.arguments();
            let takes = if args.is_empty() {
                "it takes no arguments".to_string()
            } else {
                format!("it takes {}", args.join(", "))
            };
            let hint = suggest(key, allowed.iter().copied());
            cx.err(
                &join(&path, key),
                &k.span(),
                format!("unknown argument \"{key}\" for action \"{kind}\" ({takes}){hint}"),
            );
            ok = false;
        }
    }
    let action = parse_action(cx, &path, kind, t);

    let site = match site_given {
        Some(s) => SiteRef::from_text(&s),
        None => match kind.default_site() {
            Some(s) => s,
            None => {
                if !explicit_site {
                    cx.err(&format!("{path}.site"), &t.get("action").map_or(item.span(), |v| v.span()), format!("missing `site`: say where \"{kind}\" runs (primary, replica or a site name)"));
                }
                return None;
            }
        },
    };
    if kind.coordinator_only() && site != SiteRef::Coordinator {
        let span = t.get("site").map_or(item.span(), |v| v.span());
        cx.err(
            &format!("{path}.site"),
            &span,
            format!(
                "\"{kind}\" runs on the coordinator: remove `site` or write site = \"coordinator\""
            ),
        );
        ok = false;
    }

    let repeatable = repeatable?.unwrap_or(kind.default_repeatable());
    if !(ok && when_ok) {
        return None;
    }
    Some(ParsedStep {
        index: i,
        step: Step {
            id: id?,
            action: action?,
            site,
            description,
            timeout: timeout?,
            retries: retries?,
            when,
            on_failure: on_failure?,
            repeatable,
            handler: handler?,
        },
    })
}

fn parse_retries(cx: &mut Ctx<'_>, path: &str, v: &Value<'_>) -> Option<Retries> {
    let count_of = |cx: &mut Ctx<'_>, p: &str, v: &Value<'_>| {
        cx.integer(p, v).and_then(|n| {
            if n < 0 || n > i64::from(MAX_RETRIES) {
                cx.err(p, &v.span(), format!("retries must be between 0 and {MAX_RETRIES}, got {n}: a step that needs more is broken, not unlucky"));
                None
            } else {
                u32::try_from(n).ok()
            }
        })
    };
    match v.get_ref() {
        DeValue::Integer(_) => count_of(cx, path, v).map(|count| Retries {
            count,
            ..Retries::NONE
        }),
        DeValue::Table(t) => {
            cx.unknown_keys(path, t, &["count", "backoff", "max_backoff"], "retries");
            let mut r = Retries::NONE;
            let mut ok = true;
            match get(t, "count") {
                Some(c) => match count_of(cx, &format!("{path}.count"), c) {
                    Some(n) => r.count = n,
                    None => ok = false,
                },
                None => {
                    cx.err(
                        &format!("{path}.count"),
                        &v.span(),
                        "missing `count`".to_string(),
                    );
                    ok = false;
                }
            }
            for (key, slot) in [
                ("backoff", &mut r.backoff),
                ("max_backoff", &mut r.max_backoff),
            ] {
                if let Some(d) = get(t, key) {
                    let p = format!("{path}.{key}");
                    match cx.duration(&p, d) {
                        Some(x) if x > MAX_BACKOFF => {
                            cx.err(
                                &p,
                                &d.span(),
                                format!("{key} must be at most {MAX_BACKOFF}"),
                            );
                            ok = false;
                        }
                        Some(x) => *slot = x,
                        None => ok = false,
                    }
                }
            }
            if get(t, "max_backoff").is_none() {
                r.max_backoff = r.max_backoff.max(r.backoff);
            }
            if ok && r.max_backoff < r.backoff {
                let span = get(t, "max_backoff").map_or(v.span(), |x| x.span());
                cx.err(
                    &format!("{path}.max_backoff"),
                    &span,
                    format!(
                        "max_backoff ({}) is below backoff ({})",
                        r.max_backoff, r.backoff
                    ),
                );
                ok = false;
            }
            ok.then_some(r)
        }
        _ => {
            cx.wrong_type(path, v, "a count or { count = N, backoff = \"5s\" }");
            None
        }
    }
}

fn parse_on_failure(cx: &mut Ctx<'_>, path: &str, v: &Value<'_>) -> Option<OnFailure> {
    let list = |cx: &mut Ctx<'_>, p: &str, v: &Value<'_>| -> Option<OnFailure> {
        let DeValue::Array(items) = v.get_ref() else {
            cx.wrong_type(p, v, "a list of step ids");
            return None;
        };
        if items.is_empty() {
            cx.err(
                p,
                &v.span(),
                "name at least one step, or write on_failure = \"abort\"".to_string(),
            );
            return None;
        }
        let mut ids = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            cx.note(&ip, &item.span());
            ids.push(cx.string(&ip, item)?);
        }
        Some(OnFailure::Steps(ids))
    };
    match v.get_ref() {
        DeValue::String(s) => match s.as_ref() {
            "abort" => Some(OnFailure::Abort),
            "continue" => Some(OnFailure::Continue),
            other => {
                cx.err(path, &v.span(), format!("unknown on_failure \"{other}\": use \"abort\", \"continue\" or {{ steps = [\"id\", ...] }}"));
                None
            }
        },
        DeValue::Array(_) => list(cx, path, v),
        DeValue::Table(t) => {
            cx.unknown_keys(path, t, &["steps"], "on_failure");
            match get(t, "steps") {
                Some(s) => list(cx, &format!("{path}.steps"), s),
                None => {
                    cx.err(
                        &format!("{path}.steps"),
                        &v.span(),
                        "missing `steps`".to_string(),
                    );
                    None
                }
            }
        }
        _ => {
            cx.wrong_type(
                path,
                v,
                "\"abort\", \"continue\" or { steps = [\"id\", ...] }",
            );
            None
        }
    }
}

/// Reads the action's arguments from the step table (unknown keys were reported already).
fn parse_action(cx: &mut Ctx<'_>, path: &str, kind: ActionKind, t: &DeTable<'_>) -> Option<Action> {
    let action_span = t.get("action").map_or(0..0, |v| v.span());
    let missing = |cx: &mut Ctx<'_>, arg: &str| {
        cx.err(
            &format!("{path}.{arg}"),
            &action_span,
            format!("missing argument `{arg}` for action \"{kind}\""),
        );
    };
    let arg = |name: &str| (format!("{path}.{name}"), get(t, name));
    macro_rules! required {
        ($name:literal, $read:ident) => {{
            match arg($name) {
                (p, Some(v)) => cx.$read(&p, v),
                (_, None) => {
                    missing(cx, $name);
                    None
                }
            }
        }};
    }
    macro_rules! optional {
        ($name:literal, $read:ident) => {{
            match arg($name) {
                (p, Some(v)) => match cx.$read(&p, v) {
                    Some(x) => Some(Some(x)),
                    None => None,
                },
                (_, None) => Some(None),
            }
        }};
    }
    Some(match kind {
        ActionKind::Fence => Action::Fence,
        ActionKind::PauseReplication => Action::PauseReplication,
        ActionKind::ResumeReplication => Action::ResumeReplication,
        ActionKind::Promote => Action::Promote,
        ActionKind::Demote => Action::Demote,
        ActionKind::Reverse => Action::Reverse,
        ActionKind::Verify => Action::Verify,
        ActionKind::WaitReplicated => {
            let max_lag = match arg("max_lag") {
                (p, Some(v)) => cx
                    .bounded(&p, v, 0, i64::MAX)
                    .and_then(|n| u64::try_from(n).ok())?,
                (_, None) => 0,
            };
            Action::WaitReplicated { max_lag }
        }
        ActionKind::Snapshot => Action::Snapshot {
            name: required!("name", nonempty)?,
        },
        ActionKind::Recover => {
            let name = required!("name", nonempty);
            let checkpoint = optional!("checkpoint", nonempty)?;
            let ago = optional!("ago", duration)?;
            let point = match (checkpoint, ago) {
                (Some(tag), None) => RecoverPoint::Checkpoint(tag),
                (None, Some(d)) => RecoverPoint::Ago(d),
                (c, _) => {
                    let span = if c.is_some() {
                        get(t, "ago").map_or(action_span.clone(), |v| v.span())
                    } else {
                        action_span.clone()
                    };
                    cx.err(
                        &format!("{path}.checkpoint"),
                        &span,
                        "action \"recover\" needs exactly one of `checkpoint = \"TAG\"` or `ago = \"10m\"`"
                            .to_string(),
                    );
                    return None;
                }
            };
            Action::Recover { name: name?, point }
        }
        ActionKind::Exec => {
            let command = required!("command", command);
            let env = optional!("env", string_map)?;
            Action::Exec {
                command: command?,
                env: env.unwrap_or_default(),
            }
        }
        ActionKind::Http => {
            let url = required!("url", nonempty);
            let method = optional!("method", string)?;
            let body = optional!("body", string)?;
            let headers = optional!("headers", string_map)?;
            let expect_status = optional!("expect_status", status)?;
            let method = method.unwrap_or_else(|| "POST".to_string());
            const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];
            if !METHODS.contains(&method.as_str()) {
                let p = format!("{path}.method");
                let span = get(t, "method").map_or(action_span.clone(), |v| v.span());
                cx.err(
                    &p,
                    &span,
                    format!("unknown method \"{method}\": use {}", METHODS.join(", ")),
                );
                return None;
            }
            Action::Http {
                url: url?,
                method,
                body,
                headers: headers.unwrap_or_default(),
                expect_status,
            }
        }
        ActionKind::Approve => Action::Approve {
            prompt: required!("prompt", nonempty)?,
        },
        ActionKind::Sleep => Action::Sleep {
            duration: required!("duration", duration)?,
        },
        ActionKind::Notify => {
            let message = required!("message", nonempty);
            let channel = optional!("channel", nonempty)?;
            Action::Notify {
                message: message?,
                channel,
            }
        }
        ActionKind::Check => {
            let command = optional!("command", command)?;
            let env = optional!("env", string_map)?;
            let url = optional!("url", nonempty)?;
            let expect_status = optional!("expect_status", status)?;
            let interval = optional!("interval", duration)?.unwrap_or(DEFAULT_CHECK_INTERVAL);
            let probe = match (command, url) {
                (Some(command), None) => {
                    if expect_status.is_some() {
                        let span =
                            get(t, "expect_status").map_or(action_span.clone(), |v| v.span());
                        cx.err(
                            &format!("{path}.expect_status"),
                            &span,
                            "`expect_status` goes with `url`, not `command`".to_string(),
                        );
                        return None;
                    }
                    Probe::Command {
                        command,
                        env: env.unwrap_or_default(),
                    }
                }
                (None, Some(url)) => {
                    if env.is_some() {
                        let span = get(t, "env").map_or(action_span.clone(), |v| v.span());
                        cx.err(
                            &format!("{path}.env"),
                            &span,
                            "`env` goes with `command`, not `url`".to_string(),
                        );
                        return None;
                    }
                    Probe::Http { url, expect_status }
                }
                (Some(_), Some(_)) => {
                    let span = get(t, "url").map_or(action_span.clone(), |v| v.span());
                    cx.err(
                        &format!("{path}.url"),
                        &span,
                        "a check probes a `command` or a `url`, not both".to_string(),
                    );
                    return None;
                }
                (None, None) => {
                    cx.err(
                        &format!("{path}.command"),
                        &action_span,
                        "missing argument `command` or `url` for action \"check\"".to_string(),
                    );
                    return None;
                }
            };
            Action::Check { probe, interval }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::validate_against;

    const HEAD: &str = "name = \"t\"\nkind = \"custom\"\n";
    const CHECK: &str =
        "\n[[steps]]\nid = \"ready\"\naction = \"check\"\nsite = \"replica\"\ncommand = \"true\"\n";

    fn diags(text: &str) -> Vec<String> {
        match Runbook::parse(text, "rb.toml") {
            Ok(_) => Vec::new(),
            Err(RunbookError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn recover_step_takes_exactly_one_point() {
        let text = format!(
            "{HEAD}[[steps]]\nid = \"r\"\naction = \"recover\"\nname = \"pitr\"\ncheckpoint = \"before\"\n[[steps]]\nid = \"s\"\naction = \"recover\"\nname = \"x\"\nago = \"10m\"\n{CHECK}"
        );
        let rb = Runbook::parse(&text, "rb.toml").unwrap();
        assert_eq!(
            rb.steps[0].action,
            Action::Recover {
                name: "pitr".into(),
                point: RecoverPoint::Checkpoint("before".into())
            }
        );
        assert_eq!(
            rb.steps[1].action,
            Action::Recover {
                name: "x".into(),
                point: RecoverPoint::Ago(HumanDuration::from_secs(600))
            }
        );
        let both = format!("{HEAD}[[steps]]\nid = \"r\"\naction = \"recover\"\nname = \"p\"\ncheckpoint = \"a\"\nago = \"1m\"\n{CHECK}");
        let d = diags(&both);
        assert!(
            d.iter().any(|m| m.starts_with(
                "rb.toml:8:7: steps[0].checkpoint: action \"recover\" needs exactly one"
            )),
            "{d:?}"
        );
        let none =
            format!("{HEAD}[[steps]]\nid = \"r\"\naction = \"recover\"\nname = \"p\"\n{CHECK}");
        assert!(
            diags(&none).iter().any(|m| m.contains("needs exactly one")),
            "{:?}",
            diags(&none)
        );
    }

    #[test]
    fn minimal_runbook_parses_with_defaults() {
        let text = format!("{HEAD}[[steps]]\nid = \"f\"\naction = \"fence\"\n{CHECK}");
        let rb = Runbook::parse(&text, "rb.toml").unwrap();
        assert_eq!(rb.kind, RunbookKind::Custom);
        let f = &rb.steps[0];
        assert_eq!(f.action, Action::Fence);
        assert_eq!(f.site, SiteRef::Coordinator);
        assert_eq!(f.timeout, DEFAULT_TIMEOUT);
        assert_eq!(f.retries, Retries::NONE);
        assert_eq!(f.on_failure, OnFailure::Abort);
        assert!(f.repeatable);
        assert!(!f.handler);
        assert_eq!(
            rb.steps[1].action,
            Action::Check {
                probe: Probe::Command {
                    command: Command::Shell("true".into()),
                    env: BTreeMap::new()
                },
                interval: DEFAULT_CHECK_INTERVAL
            }
        );
    }

    #[test]
    fn every_field_and_argument_is_read() {
        let text = r#"
name = "full"
description = "all of it"
kind = "switchover"

[[parameters]]
name = "skip"
type = "bool"
default = false
description = "skip it"

[[parameters]]
name = "wait"
type = "duration"
default = "30s"

[[steps]]
id = "fence"
action = "fence"
retries = { count = 3, backoff = "2s", max_backoff = "10s" }

[[steps]]
id = "run"
action = "exec"
site = "hanoi"
description = "does things"
command = ["echo", "hi"]
env = { A = "1" }
timeout = "90s"
when = 'mode == "sync" and not param.skip'
on_failure = { steps = ["cleanup"] }
repeatable = true

[[steps]]
id = "hook"
action = "http"
url = "http://127.0.0.1:1/hook"
method = "PUT"
body = "{}"
headers = { X = "y" }
expect_status = 204
on_failure = "continue"

[[steps]]
id = "ready"
action = "check"
site = "primary"
url = "http://127.0.0.1:1/ready"
expect_status = 200
interval = "1s"

[[steps]]
id = "cleanup"
action = "notify"
message = "failed"
channel = "ops"
handler = true
"#;
        let rb = Runbook::parse(text, "full.toml").unwrap();
        assert_eq!(rb.description, "all of it");
        assert_eq!(rb.parameters.len(), 2);
        assert_eq!(
            rb.parameters[1].default,
            Some(ParamValue::Duration(HumanDuration::from_secs(30)))
        );
        assert_eq!(rb.steps[0].retries.count, 3);
        assert_eq!(
            rb.steps[0].retries.max_backoff,
            HumanDuration::from_secs(10)
        );
        let run = &rb.steps[1];
        assert_eq!(run.site, SiteRef::Named("hanoi".into()));
        assert_eq!(run.timeout, HumanDuration::from_secs(90));
        assert!(run.repeatable);
        assert_eq!(run.on_failure, OnFailure::Steps(vec!["cleanup".into()]));
        assert_eq!(
            run.when.as_ref().map(|c| c.text()),
            Some(r#"mode == "sync" and not param.skip"#)
        );
        match &run.action {
            Action::Exec { command, env } => {
                assert_eq!(command, &Command::Argv(vec!["echo".into(), "hi".into()]));
                assert_eq!(env.get("A").map(String::as_str), Some("1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(!rb.steps[2].repeatable, "http is not repeatable by default");
        assert_eq!(rb.steps[2].on_failure, OnFailure::Continue);
        match &rb.steps[3].action {
            Action::Check {
                probe: Probe::Http { url, expect_status },
                interval,
            } => {
                assert_eq!(url, "http://127.0.0.1:1/ready");
                assert_eq!(*expect_status, Some(200));
                assert_eq!(*interval, HumanDuration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(rb.steps[4].handler);
    }

    /// Each case: a runbook body (after HEAD) and the one diagnostic expected, as
    /// `line:column: path: message-fragment`.
    #[test]
    fn each_error_names_line_column_and_path() {
        let cases: &[(&str, &str)] = &[
            // 1. unknown action, with a suggestion.
            (
                "[[steps]]\nid = \"p\"\naction = \"promte\"\n",
                "5:10: steps[0].action: unknown action \"promte\" (did you mean \"promote\"?)",
            ),
            // 2. missing argument.
            (
                "[[steps]]\nid = \"s\"\naction = \"sleep\"\n",
                "5:10: steps[0].duration: missing argument `duration` for action \"sleep\"",
            ),
            // 3. extra argument.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\nduration = \"1s\"\n",
                "6:1: steps[0].duration: unknown argument \"duration\" for action \"fence\" (it takes no arguments)",
            ),
            // 4. duplicate step id.
            (
                "[[steps]]\nid = \"a\"\naction = \"fence\"\n[[steps]]\nid = \"a\"\naction = \"verify\"\n",
                "7:6: steps[1].id: duplicate step id \"a\" (first used at line 4)",
            ),
            // 5. on_failure names an unknown step.
            (
                "[[steps]]\nid = \"a\"\naction = \"fence\"\non_failure = [\"cleanp\"]\n[[steps]]\nid = \"cleanup\"\naction = \"verify\"\n",
                "6:15: steps[0].on_failure[0]: on_failure names unknown step \"cleanp\" (did you mean \"cleanup\"?)",
            ),
            // 6. fence after promote.
            (
                "[[steps]]\nid = \"p\"\naction = \"promote\"\n[[steps]]\nid = \"f\"\naction = \"fence\"\n",
                "8:10: steps[1].action: fence after promote \"p\"",
            ),
            // 7. bad duration.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\ntimeout = \"30\"\n",
                "6:11: steps[0].timeout: invalid duration \"30\"",
            ),
            // 8. too many retries.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\nretries = 50\n",
                "6:11: steps[0].retries: retries must be between 0 and 10, got 50",
            ),
            // 9. a `when` that does not parse: column inside the string.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\nwhen = 'mode = \"sync\"'\n",
                "6:14: steps[0].when: bad condition: use \"==\" to compare",
            ),
            // 10. a `when` naming an undeclared parameter.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\nwhen = \"not param.skip\"\n",
                "6:13: steps[0].when: unknown parameter \"skip\"",
            ),
            // 11. unknown step field.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\ntimout = \"1s\"\n",
                "6:1: steps[0].timout: unknown argument \"timout\" for action \"fence\" (it takes no arguments) (did you mean \"timeout\"?)",
            ),
            // 12. exec without a site.
            (
                "[[steps]]\nid = \"x\"\naction = \"exec\"\ncommand = \"true\"\n",
                "5:10: steps[0].site: missing `site`",
            ),
            // 13. approve at a site.
            (
                "[[steps]]\nid = \"a\"\naction = \"approve\"\nprompt = \"ok?\"\nsite = \"hanoi\"\n",
                "7:8: steps[0].site: \"approve\" runs on the coordinator",
            ),
            // 14. wrong type.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\nrepeatable = \"yes\"\n",
                "6:14: steps[0].repeatable: expected true or false, found string",
            ),
            // 15. a handler nothing names.
            (
                "[[steps]]\nid = \"h\"\naction = \"verify\"\nhandler = true\n",
                "6:11: steps[0].handler: handler \"h\" never runs",
            ),
            // 16. parameter default of the wrong type.
            (
                "[[parameters]]\nname = \"n\"\ntype = \"integer\"\ndefault = \"3\"\n[[steps]]\nid = \"f\"\naction = \"fence\"\n",
                "6:11: parameters[0].default: default does not match the parameter's type (integer)",
            ),
            // 17. unknown on_failure word.
            (
                "[[steps]]\nid = \"f\"\naction = \"fence\"\non_failure = \"retry\"\n",
                "6:14: steps[0].on_failure: unknown on_failure \"retry\"",
            ),
            // 18. check with both command and url.
            (
                "[[steps]]\nid = \"c2\"\naction = \"check\"\nsite = \"replica\"\ncommand = \"true\"\nurl = \"http://x\"\n",
                "8:7: steps[0].url: a check probes a `command` or a `url`, not both",
            ),
        ];
        for (i, (body, want)) in cases.iter().enumerate() {
            let text = format!("{HEAD}{body}{CHECK}");
            let want = format!("rb.toml:{want}");
            let got = diags(&text);
            assert!(
                got.iter().any(|d| d.starts_with(&want)),
                "#{i}: expected a diagnostic starting with\n  {want}\ngot\n  {}",
                got.join("\n  ")
            );
            assert_eq!(got.len(), 1, "#{i}: expected one diagnostic, got {got:#?}");
        }
    }

    #[test]
    fn runbook_without_a_check_step_is_refused() {
        let text = format!("{HEAD}\n[[steps]]\nid = \"f\"\naction = \"fence\"\n");
        let got = diags(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("rb.toml:4:1: steps: the runbook has no `check` step"),
            "{got:?}"
        );
    }

    #[test]
    fn failover_promote_needs_a_preceding_fence() {
        let text = format!(
            "name = \"f\"\nkind = \"failover\"\n[[steps]]\nid = \"p\"\naction = \"promote\"\n{CHECK}"
        );
        let got = diags(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("rb.toml:5:10: steps[0].action: promote without a preceding fence in a failover runbook"),
            "{got:?}"
        );
        // The same runbook as `custom` is accepted.
        assert!(diags(&text.replace("failover", "custom")).is_empty());
    }

    #[test]
    fn all_problems_are_reported_at_once_in_file_order() {
        let text = format!(
            "{HEAD}[[steps]]\nid = \"a\"\naction = \"promte\"\n[[steps]]\nid = \"b\"\naction = \"sleep\"\nduration = \"5x\"\n{CHECK}"
        );
        let got = diags(&text);
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(got[0].starts_with("rb.toml:5:10: steps[0].action"));
        assert!(got[1].starts_with("rb.toml:9:12: steps[1].duration"));
    }

    #[test]
    fn toml_syntax_error_is_located() {
        match Runbook::parse("name = \"x\"\nsteps = [\n", "bad.toml") {
            Err(RunbookError::Syntax { file, line, .. }) => {
                assert_eq!(file, "bad.toml");
                assert!(line >= 2, "{line}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_name_and_steps_are_reported() {
        let got = diags("kind = \"drill\"\n");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.iter().any(|d| d.contains("name: missing `name`")));
        assert!(got
            .iter()
            .any(|d| d.contains("steps: a runbook needs steps")));
    }

    #[test]
    fn unknown_kind_suggests_the_closest() {
        let got = diags(&format!("name = \"x\"\nkind = \"failovr\"\n{CHECK}"));
        assert_eq!(
            got,
            vec!["rb.toml:2:8: kind: unknown kind \"failovr\": use drill, switchover, failover, failback or custom (did you mean \"failover\"?)".to_string()]
        );
    }

    #[test]
    fn unknown_site_is_reported_by_validate_against() {
        let text = format!(
            "{HEAD}[[steps]]\nid = \"x\"\naction = \"exec\"\nsite = \"hanio\"\ncommand = \"true\"\n{CHECK}"
        );
        let rb = Runbook::parse(&text, "rb.toml").unwrap();
        let sites = vec!["hanoi".to_string(), "hcm".to_string()];
        let err = validate_against(&rb, &sites).unwrap_err();
        let got: Vec<String> = err.diagnostics().iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            vec!["rb.toml:6:8: steps[0].site: unknown site \"hanio\" (sites: hanoi, hcm; or primary, replica, coordinator) (did you mean \"hanoi\"?)".to_string()]
        );
        let ok = text.replace("hanio", "hanoi");
        let rb = Runbook::parse(&ok, "rb.toml").unwrap();
        assert!(validate_against(&rb, &sites).is_ok());
    }

    proptest::proptest! {
        /// The parser never panics, and every diagnostic points inside the text, whatever is
        /// done to a stock runbook.
        #[test]
        fn parser_survives_mutations_of_stock_runbooks(
            which in 0usize..4,
            edits in proptest::collection::vec((0usize..20_000, 0u8..3, 0usize..12), 1..6),
        ) {
            let texts = [
                crate::library::DRILL,
                crate::library::SWITCHOVER,
                crate::library::FAILOVER,
                crate::library::FAILBACK,
            ];
            let mut text: Vec<char> = texts[which].chars().collect();
            let alphabet = ['"', '\'', '=', '[', ']', '\n', 'x', '1', ' ', '{', '}', '#'];
            for (at, op, c) in edits {
                if text.is_empty() {
                    break;
                }
                let at = at % text.len();
                match op {
                    0 => {
                        text.remove(at);
                    }
                    1 => text.insert(at, alphabet[c]),
                    _ => text[at] = alphabet[c],
                }
            }
            let text: String = text.into_iter().collect();
            let lines = text.lines().count() + 1;
            match Runbook::parse(&text, "m.toml") {
                Ok(rb) => {
                    let cx = crate::plan::PlanContext {
                        group: "g".into(),
                        primary_site: "a".into(),
                        replica_site: "b".into(),
                        mode: tandem_core::config::Mode::Async,
                        epoch: tandem_core::ids::Epoch(1),
                        params: BTreeMap::new(),
                    };
                    let _ = crate::plan::plan(&rb, &cx);
                }
                Err(RunbookError::Invalid(d)) => {
                    proptest::prop_assert!(!d.is_empty());
                    for x in d {
                        proptest::prop_assert!(x.line >= 1 && x.line <= lines && x.column >= 1, "{x}");
                    }
                }
                Err(RunbookError::Syntax { line, .. }) => proptest::prop_assert!(line >= 1 && line <= lines),
                Err(e) => proptest::prop_assert!(false, "unexpected error {e}"),
            }
        }
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        assert_eq!(
            suggest("promte", ["promote", "demote"]),
            " (did you mean \"promote\"?)"
        );
        assert_eq!(suggest("xyzzy", ["promote", "demote"]), "");
    }
}
