//! `tandem demo` end to end (small volume): every promise it checks must hold, exit 0.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use tandem_tests::tandem_bin;

#[test]
fn demo_runs_to_a_green_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(tandem_bin())
        .args(["demo", "--volume-mib", "16", "--write-secs", "2", "--dir"])
        .arg(dir.path())
        .env("TANDEM_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("[PASS] no acknowledged write lost (sync)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[PASS] SQLite replica holds every committed transaction, integrity ok"),
        "{stdout}"
    );
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
    assert!(
        stdout.contains("[PASS] drill on the schedule started by the coordinators and succeeded"),
        "{stdout}"
    );
    // The evidence shows the scheduled drill: in the drill cadence (started by the
    // coordinators on the schedule) and as an exercise of the after-action reports.
    let ev = dir.path().join("evidence");
    let read = |name: &str| std::fs::read_to_string(ev.join(name)).unwrap();
    let runs: serde_json::Value = serde_json::from_str(&read("runs.json")).unwrap();
    let scheduled: Vec<&str> = runs["drill_cadence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["group"] == "db")
        .flat_map(|c| c["drills"].as_array().unwrap())
        .filter(|d| d["scheduled"] == true && d["actor"] == "coordinator")
        .map(|d| d["run_id"].as_str().unwrap())
        .collect();
    assert!(
        !scheduled.is_empty(),
        "no scheduled drill in {}",
        runs["drill_cadence"]
    );
    let aar: serde_json::Value = serde_json::from_str(&read("after-action.json")).unwrap();
    assert!(
        aar["exercises"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == scheduled[0] && e["kind"] == "drill"),
        "the scheduled drill {} has no after-action report",
        scheduled[0]
    );
    let report = read("report.html");
    assert!(
        report.contains(&format!("id=\"aar-{}\"", scheduled[0])),
        "report section"
    );
    // The evidence folder it names verifies on its own.
    let v = Command::new(tandem_bin())
        .args(["evidence", "verify"])
        .arg(&ev)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // And it is authentic: the coordinator leader signed its head with a certificate of the
    // demo's CA (issue 22).
    let v = Command::new(tandem_bin())
        .args(["evidence", "verify"])
        .arg(&ev)
        .arg("--ca")
        .arg(dir.path().join("certs").join("ca.pem"))
        .arg("--config")
        .arg(dir.path().join("topology.toml"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert!(out.contains("AUTHENTIC: coordinator"), "{out}");
    // No process of the demo is left running.
    let pids = std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pid")
        })
        .count();
    assert_eq!(pids, 0, "the demo left pid files behind");
}
