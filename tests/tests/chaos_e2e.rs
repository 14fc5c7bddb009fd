//! The chaos scenarios against real processes (short profile), and proof that they catch a
//! deliberately broken build.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use tandem_tests::tandem_bin;

/// The scenarios start whole clusters: one at a time on a 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scenarios() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../chaos/scenarios");
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_scenario_keeps_the_promises() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(tandem_bin())
        .args(["chaos", "run"])
        .args(scenarios())
        .arg("--out")
        .arg(out_dir.path())
        .env("TANDEM_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.path().join("report.json")).unwrap())
            .unwrap();
    let rows = report.as_array().unwrap();
    assert_eq!(rows.len(), scenarios().len());
    assert!(rows.iter().all(|r| r["verdict"] == "PASS"), "{stdout}");
}

#[test]
fn a_replicator_that_ignores_its_lease_is_caught() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out_dir = tempfile::tempdir().unwrap();
    let paused =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../chaos/scenarios/primary-paused.toml");
    let out = Command::new(tandem_bin())
        .args(["chaos", "run"])
        .arg(paused)
        .arg("--out")
        .arg(out_dir.path())
        .env("TANDEM_LOG", "warn")
        .env("TANDEM_UNSAFE_SKIP_LEASE_CHECK", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the broken build passed:\n{stdout}");
    // Caught either by the fencing check or because the cluster cannot recover from the split
    // brain the broken replicator causes.
    assert!(
        stdout.contains("accepted a write") || stdout.contains("ERROR"),
        "{stdout}"
    );
}
