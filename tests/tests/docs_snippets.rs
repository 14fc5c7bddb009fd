//! The TOML snippets of the docs are checked by the same code that checks real files: every
//! ```` ```toml ```` block of `docs/*.md` and `README.md` is extracted and
//!
//! - a topology (it has `[cluster]`) goes through `tandem config check`;
//! - a topology fragment (`[[sites]]`, `[[nodes]]`, `[[groups]]`, `[[groups.resources]]`,
//!   `[tls]`, ... without `[cluster]`) is merged into a copy of `examples/two-sites.toml`
//!   (entries with the `name` of an example entry change that entry, others are added) and
//!   the result goes through `tandem config check`;
//! - a runbook (`[[steps]]` or `[[parameters]]`) goes through `tandem runbook check --config
//!   examples/two-sites.toml`;
//! - a chaos scenario (`[[faults]]`) through the scenario parser `tandem chaos run` uses.
//!
//! A snippet that is deliberately partial carries `<!-- snippet: fragment -->` on the line
//! before its fence and is skipped; one that shows a mistake carries
//! `<!-- snippet: invalid -->` and must FAIL its check. Any other snippet must pass. Failures
//! name the doc file and the line of the fence.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use tandem_tests::tandem_bin;

/// One fenced TOML block of a markdown file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snippet {
    /// The markdown file, relative to the repository root (`docs/config.md`).
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    /// The block's text, without the fences (and without the fence's indentation).
    text: String,
    /// The `<!-- snippet: MARK -->` on the line before the fence, if any.
    mark: Option<String>,
}

impl Snippet {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// What a snippet is, judged by its table headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Topology,
    TopologyFragment,
    Runbook,
    Scenario,
    Unknown,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// Every ```` ```toml ```` block of `text` (the markdown of `file`).
fn extract(file: &str, text: &str) -> Vec<Snippet> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        let indent = lines[i].len() - trimmed.len();
        if trimmed.trim_end() != "```toml" {
            i += 1;
            continue;
        }
        let mark = i
            .checked_sub(1)
            .map(|p| lines[p].trim())
            .and_then(|l| l.strip_prefix("<!-- snippet:"))
            .and_then(|l| l.strip_suffix("-->"))
            .map(|m| m.trim().to_owned());
        let start = i;
        let mut body = String::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            let l = lines[i];
            let cut = l.len() - l.trim_start().len();
            body.push_str(&l[cut.min(indent)..]);
            body.push('\n');
            i += 1;
        }
        assert!(
            i < lines.len(),
            "{file}:{}: ```toml block is never closed",
            start + 1
        );
        out.push(Snippet {
            file: file.to_owned(),
            line: start + 1,
            text: body,
            mark,
        });
        i += 1;
    }
    out
}

fn kind_of(text: &str) -> Kind {
    let headers: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('['))
        .map(|l| l.split('#').next().unwrap_or("").trim().replace(' ', ""))
        .collect();
    let has = |h: &str| headers.iter().any(|x| x == h);
    if has("[[steps]]") || has("[[parameters]]") {
        Kind::Runbook
    } else if has("[[faults]]") || has("[[clock_skew]]") {
        Kind::Scenario
    } else if has("[cluster]") {
        Kind::Topology
    } else if [
        "[[sites]]",
        "[[nodes]]",
        "[[groups]]",
        "[[groups.resources]]",
        "[[groups.bandwidth_schedule]]",
        "[groups.runbooks]",
        "[tls]",
    ]
    .iter()
    .any(|h| has(h))
    {
        Kind::TopologyFragment
    } else {
        Kind::Unknown
    }
}

/// Merges `from` into `into`: tables key by key; arrays of named tables entry by entry (an
/// entry with the `name` of an existing one changes it, a new name is appended).
fn merge(into: &mut toml::Table, from: toml::Table) -> Result<(), String> {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b)?,
            (Some(toml::Value::Array(a)), toml::Value::Array(b))
                if !b.is_empty()
                    && b.iter().all(toml::Value::is_table)
                    && a.iter().all(toml::Value::is_table) =>
            {
                for entry in b {
                    let toml::Value::Table(entry) = entry else {
                        unreachable!()
                    };
                    let Some(name) = entry.get("name").and_then(toml::Value::as_str) else {
                        return Err(format!(
                            "an entry of `{key}` has no `name`, so it matches no entry of the \
                             example: name it, or mark the snippet <!-- snippet: fragment -->"
                        ));
                    };
                    let existing = a.iter_mut().find_map(|x| match x {
                        toml::Value::Table(t)
                            if t.get("name").and_then(toml::Value::as_str) == Some(name) =>
                        {
                            Some(t)
                        }
                        _ => None,
                    });
                    match existing {
                        Some(t) => merge(t, entry)?,
                        None => a.push(toml::Value::Table(entry)),
                    }
                }
            }
            (Some(toml::Value::Array(_)), toml::Value::Table(_)) => {
                return Err(format!(
                    "`{key}` is a list of tables in the example but not in the snippet (write \
                     [[{key}]] with a `name` before its sub-tables), or mark the snippet \
                     <!-- snippet: fragment -->"
                ));
            }
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
    Ok(())
}

/// The text to check for `s`: the snippet itself, or a fragment merged into the example.
fn topology_text(s: &Snippet, kind: Kind) -> Result<String, String> {
    if kind == Kind::Topology {
        return Ok(s.text.clone());
    }
    let example = std::fs::read_to_string(repo_root().join("examples/two-sites.toml")).unwrap();
    let mut base: toml::Table = toml::from_str(&example).unwrap();
    let fragment: toml::Table =
        toml::from_str(&s.text).map_err(|e| format!("not valid TOML: {e}"))?;
    merge(&mut base, fragment)?;
    toml::to_string(&base).map_err(|e| format!("cannot write the merged topology: {e}"))
}

/// Runs the check for `s`: `Ok(())` when it passed, `Err(why)` when it failed.
fn check(s: &Snippet, kind: Kind, dir: &Path) -> Result<(), String> {
    let example = repo_root().join("examples/two-sites.toml");
    let name = format!("{}-{}.toml", s.file.replace(['/', '.'], "_"), s.line);
    let path = dir.join(&name);
    let args: Vec<std::ffi::OsString> = match kind {
        Kind::Topology | Kind::TopologyFragment => {
            std::fs::write(&path, topology_text(s, kind)?).unwrap();
            vec!["config".into(), "check".into(), path.clone().into()]
        }
        Kind::Runbook => {
            std::fs::write(&path, &s.text).unwrap();
            vec![
                "runbook".into(),
                "check".into(),
                "--config".into(),
                example.into(),
                path.clone().into(),
            ]
        }
        Kind::Scenario => {
            return tandem_chaos::scenario::Scenario::parse(&s.text, &name)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        Kind::Unknown => unreachable!("unknown snippets are not checked"),
    };
    let out = Command::new(tandem_bin()).args(&args).output().unwrap();
    match out.status.code() {
        Some(0) => Ok(()),
        code => Err(format!(
            "`tandem {}` exited {code:?}:\n{}{}",
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

fn doc_snippets() -> Vec<Snippet> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files.push(root.join("README.md"));
    files
        .iter()
        .flat_map(|p| {
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            extract(&rel, &std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

#[test]
fn every_toml_snippet_of_the_docs_passes_its_check_unless_marked() {
    let snippets = doc_snippets();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for s in &snippets {
        let kind = kind_of(&s.text);
        let label = match kind {
            Kind::Topology => "topology",
            Kind::TopologyFragment => "topology fragment",
            Kind::Runbook => "runbook",
            Kind::Scenario => "chaos scenario",
            Kind::Unknown => "unknown",
        };
        match s.mark.as_deref() {
            Some("fragment") => {
                *counts.entry("skipped (fragment)").or_default() += 1;
            }
            Some("invalid") => {
                if kind == Kind::Unknown {
                    failures.push(format!(
                        "{}: marked invalid, but it is no topology, runbook or scenario to check",
                        s.at()
                    ));
                } else if check(s, kind, dir.path()).is_ok() {
                    failures.push(format!(
                        "{}: marked <!-- snippet: invalid --> but this {label} passes its check",
                        s.at()
                    ));
                } else {
                    *counts.entry("invalid (fails as it should)").or_default() += 1;
                }
            }
            Some(other) => failures.push(format!(
                "{}: unknown mark <!-- snippet: {other} --> (use fragment or invalid)",
                s.at()
            )),
            None if kind == Kind::Unknown => failures.push(format!(
                "{}: neither a topology, a topology fragment, a runbook nor a chaos scenario: \
                 complete it, or mark it <!-- snippet: fragment --> on the line before the fence",
                s.at()
            )),
            None => match check(s, kind, dir.path()) {
                Ok(()) => *counts.entry(label).or_default() += 1,
                Err(why) => {
                    let lines = if kind == Kind::TopologyFragment {
                        "the file checked is the snippet merged into examples/two-sites.toml"
                            .to_owned()
                    } else {
                        format!(
                            "line N of the file checked is line {} + N of the doc",
                            s.line
                        )
                    };
                    failures.push(format!("{}: {label} ({lines}): {why}", s.at()));
                }
            },
        }
    }
    eprintln!("doc snippets: {counts:?}");
    assert!(
        failures.is_empty(),
        "{} doc snippet(s) wrong:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    let checked: usize = ["topology", "topology fragment", "runbook", "chaos scenario"]
        .iter()
        .filter_map(|k| counts.get(k))
        .sum();
    assert!(checked > 0, "no doc snippet was checked: {counts:?}");
    for needed in ["topology", "runbook"] {
        assert!(
            counts.get(needed).is_some_and(|n| *n > 0),
            "the docs hold no complete {needed} snippet any more: {counts:?}"
        );
    }
}

#[test]
fn extract_finds_toml_fences_with_their_line_and_mark() {
    let md = "# T\n\n```toml\na = 1\n```\n\n<!-- snippet: fragment -->\n```toml\nb = 2\n```\n\n```sh\nc\n```\n   ```toml\n   [cluster]\n   name = \"x\"\n   ```\n";
    let got = extract("x.md", md);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].line, got[0].mark.as_deref()), (3, None));
    assert_eq!(got[0].text, "a = 1\n");
    assert_eq!((got[1].line, got[1].mark.as_deref()), (8, Some("fragment")));
    assert_eq!(got[2].line, 15);
    assert_eq!(got[2].text, "[cluster]\nname = \"x\"\n");
    assert_eq!(kind_of(&got[2].text), Kind::Topology);
}

#[test]
fn snippets_are_classified_by_their_tables() {
    assert_eq!(
        kind_of("name = \"x\"\n[[steps]]\nid = \"a\"\n"),
        Kind::Runbook
    );
    assert_eq!(kind_of("[[faults]]\nat = \"1s\"\n"), Kind::Scenario);
    assert_eq!(
        kind_of("[[groups]]  # a group\nname = \"vol\"\n"),
        Kind::TopologyFragment
    );
    assert_eq!(kind_of("[cluster]\n[[sites]]\n"), Kind::Topology);
    assert_eq!(kind_of("history = \"24h\"\n"), Kind::Unknown);
}

#[test]
fn a_fragment_changes_the_named_example_entry_and_adds_new_ones() {
    let mut base: toml::Table = toml::from_str(
        "[[groups]]\nname = \"vol\"\nmode = \"sync\"\nallowed_jurisdictions = [\"VN\"]\n[[groups.resources]]\nname = \"d\"\nsize = \"1MiB\"\n",
    )
    .unwrap();
    let frag: toml::Table = toml::from_str(
        "[[groups]]\nname = \"vol\"\nhistory = \"1h\"\nallowed_jurisdictions = [\"SG\"]\n[[groups.resources]]\nname = \"d\"\nsize = \"2MiB\"\n[[groups]]\nname = \"pg\"\n",
    )
    .unwrap();
    merge(&mut base, frag).unwrap();
    let groups = base["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["mode"].as_str(), Some("sync"));
    assert_eq!(groups[0]["history"].as_str(), Some("1h"));
    assert_eq!(groups[0]["allowed_jurisdictions"][0].as_str(), Some("SG"));
    assert_eq!(
        groups[0]["allowed_jurisdictions"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(groups[0]["resources"][0]["size"].as_str(), Some("2MiB"));
    assert_eq!(groups[1]["name"].as_str(), Some("pg"));
    let unnamed: toml::Table = toml::from_str("[[groups.resources]]\nname = \"x\"\n").unwrap();
    assert!(merge(&mut base, unnamed).is_err());
}
