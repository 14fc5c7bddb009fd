//! `tandem config check` through the real binary: exit codes and messages.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use tandem_tests::tandem_bin;

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-sites.toml")
}

#[test]
fn example_topology_passes_config_check() {
    let out = Command::new(tandem_bin())
        .args(["config", "check"])
        .arg(example())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok"), "{stdout}");
}

#[test]
fn group_with_same_primary_and_replica_fails_with_exit_2_naming_group_and_line() {
    let text = std::fs::read_to_string(example()).unwrap();
    // Make the first group's replica its primary.
    let broken = text.replacen("replica = \"hcm\"", "replica = \"hanoi\"", 1);
    assert_ne!(broken, text);
    let line = broken
        .lines()
        .position(|l| l.starts_with("replica = \"hanoi\""))
        .unwrap()
        + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(tandem_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("groups[0]"), "{stderr}");
    assert!(
        stderr.contains(&format!("broken.toml:{line}:")),
        "line {line} not named: {stderr}"
    );
}

#[test]
fn unknown_subcommand_is_bad_usage() {
    let out = Command::new(tandem_bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn replica_outside_the_allowed_jurisdictions_fails_config_check_naming_the_field() {
    let text = std::fs::read_to_string(example()).unwrap();
    // Move the replica site of `vol` (VN only) to Singapore.
    let broken = text.replacen(
        "name = \"hcm\"\njurisdiction = \"VN\"",
        "name = \"hcm\"\njurisdiction = \"SG\"",
        1,
    );
    assert_ne!(broken, text);
    let line = broken
        .lines()
        .position(|l| l.starts_with("allowed_jurisdictions = [\"VN\"]"))
        .unwrap()
        + 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sg.toml");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(tandem_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "sg.toml:{line}:25: groups[0].allowed_jurisdictions: replica site \"hcm\" is in SG, allowed: VN"
        )),
        "{stderr}"
    );
}
