//! The document: reading a runbook file (the crate's only I/O), its root fields (`name`,
//! `description`, `kind`, `parameters`, `steps`), and the whole-runbook checks that decide
//! whether it is a [`Runbook`].
//!
//! Pure apart from [`Runbook::load`] and [`Runbook::load_hashed`] reading the file.

use std::collections::HashSet;
use std::path::Path;
use tandem_core::config::line_col;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::params::parse_parameters;
use super::reader::{get, Ctx, Value};
use super::step::parse_step;
use crate::error::RunbookError;
use crate::model::{Runbook, RunbookKind};
use crate::source::{sort_diagnostics, suggest, SourceMap};
use crate::validate::{check_steps, ParsedStep};

const ROOT_FIELDS: [&str; 5] = ["name", "description", "kind", "parameters", "steps"];

/// The blake3 hash (hex) of a runbook file's bytes, recorded in each run.
pub fn runbook_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
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
    /// run records ([`runbook_hash`]).
    ///
    /// # Errors
    /// As [`Runbook::load`].
    pub fn load_hashed(path: &Path) -> Result<(Runbook, String), RunbookError> {
        let bytes = std::fs::read(path).map_err(|source| RunbookError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let hash = runbook_hash(&bytes);
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
            map: SourceMap::new(file),
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
            Some(v) => parse_kind(&mut cx, v),
        };
        let parameters = match get(table, "parameters") {
            None => Vec::new(),
            Some(v) => parse_parameters(&mut cx, v),
        };
        let (steps, known_ids) = parse_steps(&mut cx, table);

        let kind = kind.unwrap_or(RunbookKind::Custom);
        let mut diags = cx.diags;
        let map = cx.map;
        diags.extend(check_steps(kind, &parameters, &steps, &known_ids, &map));
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

/// The root `kind`, one of the known procedures.
fn parse_kind(cx: &mut Ctx<'_>, v: &Value<'_>) -> Option<RunbookKind> {
    cx.string("kind", v).and_then(|s| {
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
    })
}

/// The `[[steps]]` that parsed, and the ids of every step in the file (parsed or not), so that
/// a broken step does not also make each reference to it an error.
fn parse_steps(cx: &mut Ctx<'_>, table: &DeTable<'_>) -> (Vec<ParsedStep>, HashSet<String>) {
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
                    if let Some(step) = parse_step(cx, i, item) {
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
    (steps, known_ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Action, Command, OnFailure, ParamValue, Probe, RecoverPoint, Retries, SiteRef,
        DEFAULT_CHECK_INTERVAL, DEFAULT_TIMEOUT,
    };
    use crate::validate::validate_against;
    use std::collections::BTreeMap;
    use tandem_core::config::HumanDuration;

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
    fn duplicate_step_ids_do_not_hide_the_missing_check_step() {
        let step = "\n[[steps]]\nid = \"f\"\naction = \"fence\"\n";
        let text = format!("{HEAD}{step}{step}");
        let got = diags(&text);
        assert!(
            got.iter().any(|d| d.contains("duplicate step id \"f\"")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|d| d.contains("the runbook has no `check` step")),
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
    fn runbook_hash_is_blake3_hex() {
        assert_eq!(
            runbook_hash(b"abc"),
            blake3::hash(b"abc").to_hex().to_string()
        );
        assert_eq!(runbook_hash(b"abc").len(), 64);
    }
}
