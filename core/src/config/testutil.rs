//! Test helpers shared by the config rooms' tests: a small valid topology to break one thing
//! at a time, text edits, and assertions on diagnostics (file, line, path, message).

use std::path::PathBuf;

use super::diagnostic::{display_lines, ConfigError, Diagnostic};
use super::model::Topology;

/// A small valid topology; tests break one thing in it at a time.
pub(crate) const BASE: &str = r#"[cluster]
name = "t"

[[sites]]
name = "a"

[[sites]]
name = "b"

[[sites]]
name = "w"
witness = true

[[nodes]]
name = "a-coord"
site = "a"
role = "coordinator"
listen = "127.0.0.1:7001"
data_dir = "data/a-coord"

[[nodes]]
name = "b-coord"
site = "b"
role = "coordinator"
listen = "127.0.0.1:7002"
data_dir = "data/b-coord"

[[nodes]]
name = "w-coord"
site = "w"
role = "coordinator"
listen = "127.0.0.1:7003"
data_dir = "data/w-coord"

[[nodes]]
name = "a-rep"
site = "a"
role = "replicator"
listen = "127.0.0.1:7004"
data_dir = "data/a-rep"

[[nodes]]
name = "b-rep"
site = "b"
role = "replicator"
listen = "127.0.0.1:7005"
data_dir = "data/b-rep"

[[groups]]
name = "g"
primary = "a"
replica = "b"
mode = "sync"
rto_target = "30s"

[[groups.resources]]
name = "disk0"
kind = "volume"
size = "1MiB"
path = "a/disk0.img"
replica_path = "b/disk0.img"
"#;

/// `text` with the only occurrence of `from` replaced by `to`.
pub(crate) fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur exactly once"
    );
    text.replace(from, to)
}

/// 1-based line of the only occurrence of `needle`.
pub(crate) fn line_of(text: &str, needle: &str) -> usize {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} must occur exactly once"
    );
    let at = text.find(needle).unwrap_or(0);
    text[..at].matches('\n').count() + 1
}

pub(crate) fn parse(text: &str) -> Result<Topology, ConfigError> {
    Topology::parse_in(text, "t.toml", PathBuf::from("/etc/tandem"))
}

pub(crate) fn diagnostics(text: &str) -> Vec<Diagnostic> {
    match parse(text) {
        Err(ConfigError::Invalid(d)) => d,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// Asserts a diagnostic at `path` on the line of `needle`, whose message contains `words`.
pub(crate) fn assert_diag(text: &str, path: &str, needle: &str, words: &str) {
    let diags = diagnostics(text);
    let all = display_lines(&diags);
    let line = line_of(text, needle);
    let d = diags
        .iter()
        .find(|d| d.path == path)
        .unwrap_or_else(|| panic!("no diagnostic at {path}; got:\n{all}"));
    assert_eq!(d.line, line, "{path} should be on line {line}; got:\n{all}");
    assert!(
        d.message.contains(words),
        "{path}: {:?} lacks {words:?}",
        d.message
    );
    assert!(
        d.to_string().starts_with(&format!("t.toml:{line}:")),
        "display form: {d}"
    );
}
