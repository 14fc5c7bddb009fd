//! The files a node of a chaos run follows while it runs: its clock program
//! (`clock.NODE`) and its failpoints (`failpoints.NODE`), and the environment that points it
//! at them. I/O: small files in the run folder, written tmp → rename.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::scenario::ClockSkew;

/// The environment of node `n`: its clock skew, if the scenario gives it one, and the clock
/// program and failpoint files it follows (`clock_dir`, `failpoint_dir`: the run folder when
/// the scenario has clock faults or failpoints).
pub fn node_env(
    skews: &[ClockSkew],
    clock_dir: Option<&Path>,
    failpoint_dir: Option<&Path>,
    n: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = skews
        .iter()
        .filter(|c| c.node == n)
        .map(|c| {
            (
                tandem_core::clock::SKEW_ENV.to_owned(),
                c.skew_ms.to_string(),
            )
        })
        .collect();
    if let Some(dir) = clock_dir {
        env.push((
            tandem_core::clock::CLOCK_FILE_ENV.to_owned(),
            clock_file(dir, n).display().to_string(),
        ));
    }
    if let Some(dir) = failpoint_dir {
        env.push((
            tandem_core::fault::FAILPOINTS_FILE_ENV.to_owned(),
            failpoint_file(dir, n).display().to_string(),
        ));
    }
    env
}

/// The failpoint file of node `n` (see [`tandem_core::fault::FAILPOINTS_FILE_ENV`]).
pub fn failpoint_file(run_dir: &Path, n: &str) -> PathBuf {
    run_dir.join(format!("failpoints.{n}"))
}

/// Writes the failpoints of node `n` (`NAME=ACTIONS` lines; empty: none).
///
/// # Errors
/// The file cannot be written.
pub fn set_failpoints(run_dir: &Path, n: &str, points: &BTreeMap<String, String>) -> Result<()> {
    let p = failpoint_file(run_dir, n);
    let tmp = p.with_extension("tmp");
    let text: String = points.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &p))
        .with_context(|| format!("writing {}", p.display()))
}

/// True if the log of node `n` says failpoint `name` fired.
pub fn failpoint_fired(run_dir: &Path, n: &str, name: &str) -> bool {
    let needle = format!("failpoint {name} fired");
    std::fs::read_to_string(super::processes::log_file(run_dir, n))
        .is_ok_and(|t| t.contains(&needle))
}

/// The clock program file of node `n` (see [`tandem_core::clock::CLOCK_FILE_ENV`]).
pub fn clock_file(run_dir: &Path, n: &str) -> PathBuf {
    run_dir.join(format!("clock.{n}"))
}

/// Writes the clock program of node `n`: `skew_ms` off from now on, drifting `drift` ms/s.
///
/// # Errors
/// The file cannot be written.
pub fn set_clock(run_dir: &Path, n: &str, skew_ms: i64, drift: i64) -> Result<()> {
    let p = clock_file(run_dir, n);
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, format!("{skew_ms} {drift}\n"))
        .and_then(|()| std::fs::rename(&tmp, &p))
        .with_context(|| format!("writing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_gets_its_own_skew_and_the_files_it_follows() {
        let skews = vec![ClockSkew {
            node: "hanoi-rep".into(),
            skew_ms: -250,
        }];
        let dir = Path::new("/run");
        let env = node_env(&skews, Some(dir), Some(dir), "hanoi-rep");
        assert!(env.contains(&(tandem_core::clock::SKEW_ENV.to_owned(), "-250".to_owned())));
        assert!(env.contains(&(
            tandem_core::clock::CLOCK_FILE_ENV.to_owned(),
            "/run/clock.hanoi-rep".to_owned()
        )));
        assert!(env.contains(&(
            tandem_core::fault::FAILPOINTS_FILE_ENV.to_owned(),
            "/run/failpoints.hanoi-rep".to_owned()
        )));
        assert!(node_env(&skews, None, None, "hcm-rep").is_empty());
    }

    #[test]
    fn failpoints_and_clock_programs_are_written_as_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut points = BTreeMap::new();
        points.insert("journal.fsync".to_owned(), "return".to_owned());
        set_failpoints(dir.path(), "n", &points).unwrap();
        let text = std::fs::read_to_string(failpoint_file(dir.path(), "n")).unwrap();
        assert_eq!(text, "journal.fsync=return\n");
        set_clock(dir.path(), "n", 1500, -3).unwrap();
        let text = std::fs::read_to_string(clock_file(dir.path(), "n")).unwrap();
        assert_eq!(text, "1500 -3\n");
    }
}
