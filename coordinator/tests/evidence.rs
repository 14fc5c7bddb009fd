//! Evidence export and verification over a chain built by the real state machine: bootstrap,
//! leases, RPO samples over time, a failover and a switchover with operator reports, approvals,
//! verify results and a refusal; then tampering with the exported folder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use tandem_coordinator::audit::{verify_chain, AuditKind, AuditRecord, ChainError};
use tandem_coordinator::evidence::{
    self, EvidenceError, ExportOptions, AUDIT_FILE, MANIFEST_FILE, REPORT_FILE, RPO_FILE, RUNS_FILE,
};
use tandem_coordinator::state::{
    apply, ClusterSettings, Command, GroupSpec, GroupState, Mode, SiteSpec, State,
};
use tandem_core::ids::Epoch;

const T0: i64 = 1_700_000_000_000;
const VOL_SAMPLES: usize = 40;
const DB_SAMPLES: usize = 40;

fn ok(s: &mut State, cmd: Command) {
    apply(s, &cmd).unwrap_or_else(|e| panic!("{} refused: {e}", cmd.op_name()));
}

fn record(s: &mut State, at_ms: i64, actor: &str, kind: AuditKind, group: &str, detail: Value) {
    ok(
        s,
        Command::Record {
            at_ms,
            actor: actor.into(),
            kind,
            group: Some(group.into()),
            detail,
        },
    );
}

fn set_state(s: &mut State, at_ms: i64, group: &str, state: GroupState) {
    ok(
        s,
        Command::SetGroupState {
            at_ms,
            group: group.into(),
            state,
            reason: "test".into(),
            actor: "alice".into(),
            host: None,
        },
    );
}

/// A realistic chain, verified before it is returned.
fn build_chain() -> Vec<AuditRecord> {
    let mut s = State::new();
    // 1. bootstrap three sites and two groups
    bootstrap(&mut s);
    // 2. bring the sites up, protect both groups and lease them on hanoi
    protect_and_lease(&mut s);
    // 3. RPO samples every 5 s; vol climbs over its 5 s target in the middle
    sample_rpo(&mut s);
    let t = T0 + 1_000 + VOL_SAMPLES as i64 * 5_000;
    // 4. a refused command: pausing db twice, then resuming
    pause_twice_and_resume(&mut s, t);
    // 5. unplanned failover of vol, approved by the DR manager
    fail_over_vol(&mut s, t);
    // 6. planned switchover of db (RTO target 2 s, achieved 2.5 s: a FAIL)
    switch_over_db(&mut s, t);
    // 7. a drill on db with runbook steps
    let d = t + 10_000;
    drill_db(&mut s, d);
    // 8. more samples after the failover
    sample_vol_after_failover(&mut s, d);
    let recs = s.audit().records().to_vec();
    verify_chain(&recs).unwrap();
    recs
}

/// Bootstraps hanoi, hcm and the danang witness with an async `vol` and a sync `db` group.
fn bootstrap(s: &mut State) {
    ok(
        s,
        Command::Bootstrap {
            at_ms: T0,
            actor: "ops".into(),
            settings: ClusterSettings {
                lease_ttl_ms: 2_000,
                drift_margin_ms: 500,
                detect_after_ms: 3_000,
                rpo_audit_every_ms: None,
            },
            sites: vec![
                SiteSpec {
                    name: "hanoi".into(),
                    witness: false,
                    jurisdiction: Some("VN".into()),
                },
                SiteSpec {
                    name: "hcm".into(),
                    witness: false,
                    jurisdiction: Some("VN".into()),
                },
                SiteSpec {
                    name: "danang".into(),
                    witness: true,
                    jurisdiction: Some("VN".into()),
                },
            ],
            groups: vec![
                GroupSpec {
                    name: "vol".into(),
                    primary: "hanoi".into(),
                    replica: "hcm".into(),
                    mode: Mode::Async,
                    rpo_target_ms: 5_000,
                    allowed_jurisdictions: vec!["VN".into()],
                },
                GroupSpec {
                    name: "db".into(),
                    primary: "hanoi".into(),
                    replica: "hcm".into(),
                    mode: Mode::Sync,
                    rpo_target_ms: 1_000,
                    allowed_jurisdictions: vec!["VN".into()],
                },
            ],
        },
    );
}

/// Brings hanoi and hcm up, marks both groups protected and grants their leases to n1.
fn protect_and_lease(s: &mut State) {
    for site in ["hanoi", "hcm"] {
        ok(
            s,
            Command::SiteUp {
                at_ms: T0 + 10,
                site: site.into(),
            },
        );
    }
    for g in ["vol", "db"] {
        set_state(s, T0 + 20, g, GroupState::Protected);
        ok(
            s,
            Command::AcquireLease {
                at_ms: T0 + 30,
                group: g.into(),
                node: "n1".into(),
                site: "hanoi".into(),
                epoch: Epoch(1),
            },
        );
    }
}

/// Records `VOL_SAMPLES` RPO samples for vol and db, 5 s apart.
fn sample_rpo(s: &mut State) {
    for k in 0..VOL_SAMPLES as i64 {
        let at = T0 + 1_000 + k * 5_000;
        let vol = 1_000 + (k * 317) % 7_000;
        ok(
            s,
            Command::RpoSample {
                at_ms: at,
                group: "vol".into(),
                rpo_ms: vol as u64,
            },
        );
        ok(
            s,
            Command::RpoSample {
                at_ms: at + 1,
                group: "db".into(),
                rpo_ms: (k % 3) as u64 * 400,
            },
        );
    }
}

/// Pauses db twice at `t` (the second is refused), then resumes it.
fn pause_twice_and_resume(s: &mut State, t: i64) {
    for _ in 0..2 {
        let _ = apply(
            s,
            &Command::PauseReplication {
                at_ms: t,
                group: "db".into(),
                actor: "eve".into(),
                reason: "maintenance".into(),
            },
        );
    }
    ok(
        s,
        Command::ResumeReplication {
            at_ms: t + 5,
            group: "db".into(),
            actor: "eve".into(),
            reason: "done".into(),
        },
    );
}

/// Approves, fences and promotes vol to hcm, then records the operator report and a verify.
fn fail_over_vol(s: &mut State, t: i64) {
    record(
        s,
        t + 10,
        "alice",
        AuditKind::Approval,
        "vol",
        json!({"approver": "dr-manager@bank", "decision": "approved", "comment": "site hanoi lost"}),
    );
    set_state(s, t + 20, "vol", GroupState::FailingOver);
    ok(
        s,
        Command::Fence {
            at_ms: t + 30,
            group: "vol".into(),
            actor: "alice".into(),
            reason: "site lost".into(),
        },
    );
    // The lease (granted at T0+30, 2 s ttl) is long gone.
    ok(
        s,
        Command::Promote {
            at_ms: t + 40,
            group: "vol".into(),
            to_site: "hcm".into(),
            actor: "alice".into(),
            reason: "site lost".into(),
            planned: false,
        },
    );
    let loss = s.group("vol").unwrap().last_failover.clone().unwrap();
    record(
        s,
        t + 4_020,
        "alice",
        AuditKind::Operator,
        "vol",
        json!({
            "op": "failover", "group": "vol", "from": "hanoi", "to": "hcm", "epoch": 3,
            "detected_ms": t + 20, "rto_ms": 4_000, "ready": true,
            "data_loss_window": serde_json::to_value(&loss).unwrap(), "rpo_at_loss_ms": 2_345,
            "steps": [
                {"step": "fence", "at_ms": t + 30, "ms": 8},
                {"step": "lease_wait", "at_ms": t + 38, "ms": 0},
                {"step": "promote", "at_ms": t + 40, "ms": 12},
                {"step": "check", "at_ms": t + 52, "ms": 3_968, "ok": true},
            ],
        }),
    );
    record(
        s,
        t + 5_000,
        "alice",
        AuditKind::Verify,
        "vol",
        json!({"root_match": true, "chunks": 4096, "differing": 0}),
    );
}

/// Releases db's lease, promotes it to hcm (planned), then records the report and a verify.
fn switch_over_db(s: &mut State, t: i64) {
    set_state(s, t + 6_000, "db", GroupState::SwitchingOver);
    ok(
        s,
        Command::ReleaseLease {
            at_ms: t + 7_000,
            group: "db".into(),
            node: "n1".into(),
            epoch: Epoch(1),
        },
    );
    ok(
        s,
        Command::Promote {
            at_ms: t + 7_100,
            group: "db".into(),
            to_site: "hcm".into(),
            actor: "bob".into(),
            reason: "quarterly switchover".into(),
            planned: true,
        },
    );
    record(
        s,
        t + 8_500,
        "bob",
        AuditKind::Operator,
        "db",
        json!({
            "op": "switchover", "group": "db", "from": "hanoi", "to": "hcm", "epoch": 2,
            "rto_ms": 2_500, "ready": true,
            "steps": [
                {"step": "drain_and_release", "ms": 1_000},
                {"step": "promote", "ms": 100},
                {"step": "check", "ms": 1_400, "ok": true},
            ],
        }),
    );
    record(
        s,
        t + 9_000,
        "bob",
        AuditKind::Verify,
        "db",
        json!({"root_match": false, "chunks": 512, "differing": 3}),
    );
}

/// Records drill `drill-7` on db starting at `d`: start, a runbook step, an approval, end.
fn drill_db(s: &mut State, d: i64) {
    record(
        s,
        d,
        "carol",
        AuditKind::Drill,
        "db",
        json!({"run_id": "drill-7", "runbook": "db-drill", "phase": "start"}),
    );
    record(
        s,
        d + 100,
        "carol",
        AuditKind::RunbookStep,
        "db",
        json!({"run_id": "drill-7", "step": "snapshot replica", "status": "started"}),
    );
    record(
        s,
        d + 900,
        "carol",
        AuditKind::RunbookStep,
        "db",
        json!({"run_id": "drill-7", "step": "snapshot replica", "status": "ok"}),
    );
    record(
        s,
        d + 1_000,
        "dave",
        AuditKind::Approval,
        "db",
        json!({"run_id": "drill-7", "step": "boot copy", "approver": "dave"}),
    );
    record(
        s,
        d + 1_500,
        "carol",
        AuditKind::Drill,
        "db",
        json!({"run_id": "drill-7", "phase": "end", "ok": true}),
    );
}

/// Records ten more vol RPO samples after the drill.
fn sample_vol_after_failover(s: &mut State, d: i64) {
    for k in 0..10i64 {
        ok(
            s,
            Command::RpoSample {
                at_ms: d + 2_000 + k * 5_000,
                group: "vol".into(),
                rpo_ms: 100 + k as u64,
            },
        );
    }
}

fn opts() -> ExportOptions {
    ExportOptions {
        cluster: "bank-dr".into(),
        from_ms: None,
        to_ms: None,
        rto_targets_ms: BTreeMap::from([("vol".into(), 5_000), ("db".into(), 2_000)]),
        rpo_targets_ms: BTreeMap::new(),
        generated_at_ms: T0 + 1_000_000,
        residency_start: Default::default(),
        drill_every_ms: BTreeMap::new(),
        lang: Default::default(),
    }
}

fn exported() -> (tempfile::TempDir, Vec<AuditRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let recs = build_chain();
    evidence::export(&recs, &opts(), dir.path()).unwrap();
    (dir, recs)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

/// Re-hashes every file into the manifest, as a forger would after editing one.
fn forge_manifest(dir: &Path) {
    let mut m: Value = serde_json::from_str(&read(dir, MANIFEST_FILE)).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        let bytes = std::fs::read(dir.join(f["name"].as_str().unwrap())).unwrap();
        f["bytes"] = json!(bytes.len());
        f["blake3"] = json!(blake3::hash(&bytes).to_hex().to_string());
    }
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
}

#[test]
fn full_export_verifies_and_lists_every_file() {
    let (dir, recs) = exported();
    let report = evidence::verify(dir.path()).unwrap();
    assert_eq!(report.records, recs.len() as u64);
    assert_eq!(report.files_checked.len(), 5);
    assert_eq!(report.files_rederived.len(), 5);
    assert_eq!(report.manifest.chain.head_hash, recs.last().unwrap().hash);
    assert_eq!(report.manifest.chain.first_index, Some(0));
    let m: Value = serde_json::from_str(&read(dir.path(), MANIFEST_FILE)).unwrap();
    for f in m["files"].as_array().unwrap() {
        let bytes = std::fs::read(dir.path().join(f["name"].as_str().unwrap())).unwrap();
        assert_eq!(
            f["blake3"],
            json!(blake3::hash(&bytes).to_hex().to_string())
        );
    }
    // No temporary files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 6, "{names:?}");
}

#[test]
fn runs_json_has_the_failover_switchover_and_drill_with_rto_verdicts() {
    let (dir, _) = exported();
    let doc: Value = serde_json::from_str(&read(dir.path(), RUNS_FILE)).unwrap();
    let runs = doc["runs"].as_array().unwrap();
    let find = |kind: &str| {
        runs.iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} run in {runs:?}"))
    };
    let fo = find("failover");
    assert_eq!(fo["group"], "vol");
    assert_eq!(fo["rto_ms"], 4_000);
    assert_eq!(fo["rto_target_ms"], 5_000);
    assert_eq!(fo["rto_met"], true);
    assert_eq!(fo["steps"].as_array().unwrap().len(), 4);
    assert_eq!(fo["rpo_at_loss_ms"], 2_345);
    assert_eq!(fo["approvals"][0]["approver"], "dr-manager@bank");
    let so = find("switchover");
    assert_eq!(so["group"], "db");
    assert_eq!(so["rto_met"], false);
    let drill = find("drill");
    assert_eq!(drill["id"], "drill-7");
    assert_eq!(drill["rto_ms"], 1_500);
    assert_eq!(drill["approvals"][0]["approver"], "dave");
    assert_eq!(runs.iter().filter(|r| r["kind"] == "failover").count(), 1);
    assert_eq!(doc["verify_results"].as_array().unwrap().len(), 2);
    assert_eq!(doc["refused"].as_array().unwrap().len(), 1);
    assert_eq!(doc["refused"][0]["op"], "pause_replication");
}

#[test]
fn rpo_csv_has_every_sample_with_its_target() {
    let (dir, _) = exported();
    let csv = read(dir.path(), RPO_FILE);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("group,at_ms,iso_time,rpo_ms,rpo_target_ms,samples,over_samples,min_ms,max_ms,over_target_ms,since_ms")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), VOL_SAMPLES + DB_SAMPLES + 10);
    // A chain from before the audit interval: one row per `rpo_sample` record, a summary of one.
    assert_eq!(
        rows[0],
        vec![
            "vol",
            "1700000001000",
            "2023-11-14T22:13:21.000Z",
            "1000",
            "5000",
            "1",
            "0",
            "1000",
            "1000",
            "",
            "1700000001000"
        ]
    );
    assert!(rows.iter().filter(|r| r[0] == "db").all(|r| r[4] == "1000"));
}

#[test]
fn report_has_an_rpo_chart_per_group_and_the_rto_table() {
    let (dir, _) = exported();
    let html = read(dir.path(), REPORT_FILE);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"));
    assert!(!html.contains("src=") && !html.contains("href=\"http") && !html.contains("@import"));
    for (group, n) in [("vol", VOL_SAMPLES + 10), ("db", DB_SAMPLES)] {
        let svg = html
            .split(&format!("<svg class=\"rpo-chart\" data-group=\"{group}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no chart for {group}"));
        let svg = svg.split("</svg>").next().unwrap();
        let points = svg
            .split("class=\"rpo\"")
            .nth(1)
            .and_then(|s| s.split("points=\"").nth(1))
            .and_then(|s| s.split('"').next())
            .unwrap();
        assert_eq!(points.split(' ').count(), n, "{group}");
        assert!(svg.contains("class=\"target\""), "{group}: dashed target");
        assert!(svg.contains("stroke-dasharray"));
    }
    let vol = html.split("<h2 id=\"g-vol\">").nth(1).unwrap();
    let vol_chart = vol.split("class=\"rpo-chart\"").nth(1).unwrap();
    let over = vol_chart
        .split("</svg>")
        .next()
        .unwrap()
        .matches("class=\"over\"")
        .count();
    let expected_over = (0..VOL_SAMPLES as i64)
        .filter(|k| 1_000 + (k * 317) % 7_000 > 5_000)
        .count();
    assert_eq!(over, expected_over);
    // The RTO table: one row per operation with the verdict.
    let rto_rows: Vec<&str> = html.split("<tr class=\"run\">").skip(1).collect();
    assert_eq!(rto_rows.len(), 3, "failover, switchover, drill");
    let failover = rto_rows.iter().find(|r| r.contains(">failover<")).unwrap();
    assert!(failover.contains("4000 ms") && failover.contains("5000 ms"));
    assert!(failover.contains("PASS"));
    let switchover = rto_rows
        .iter()
        .find(|r| r.contains(">switchover<"))
        .unwrap();
    assert!(switchover.contains("FAIL"));
    assert!(html.contains("class=\"timeline\""));
    assert!(html.contains("dr-manager@bank"));
    assert!(html.contains("MISMATCH"));
    assert!(html.contains("pause_replication"));
}

#[test]
fn one_changed_digit_in_audit_jsonl_names_the_record_and_line() {
    let (dir, recs) = exported();
    let text = read(dir.path(), AUDIT_FILE);
    // The 8th vol sample: change one digit of its rpo_ms.
    let victim = recs
        .iter()
        .filter(|r| r.kind == AuditKind::RpoSample)
        .nth(14)
        .unwrap();
    let rpo = victim.detail["rpo_ms"].as_u64().unwrap();
    let line_no = text
        .lines()
        .position(|l| l.contains(&format!("\"index\":{},", victim.index)))
        .unwrap()
        + 1;
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(n, l)| {
            if n + 1 == line_no {
                l.replacen(
                    &format!("\"rpo_ms\":{rpo}"),
                    &format!("\"rpo_ms\":{}", rpo ^ 1),
                    1,
                )
            } else {
                l.to_string()
            }
        })
        .collect();
    let tampered = lines.join("\n") + "\n";
    assert_eq!(
        tampered.len(),
        text.len(),
        "one byte changed, no length change"
    );
    assert_eq!(
        tampered
            .bytes()
            .zip(text.bytes())
            .filter(|(a, b)| a != b)
            .count(),
        1
    );
    std::fs::write(dir.path().join(AUDIT_FILE), tampered).unwrap();
    match evidence::verify(dir.path()) {
        Err(EvidenceError::Chain {
            line,
            index,
            source: ChainError::HashMismatch { .. },
        }) => {
            assert_eq!(index, victim.index);
            assert_eq!(line, line_no);
        }
        other => panic!(
            "expected a chain error at record {}, got {other:?}",
            victim.index
        ),
    }
}

#[test]
fn edited_csv_is_named_and_a_forged_manifest_does_not_hide_it() {
    let (dir, _) = exported();
    let csv = read(dir.path(), RPO_FILE);
    let edited = csv.replacen(",6706,5000", ",4999,5000", 1);
    assert_ne!(edited, csv);
    std::fs::write(dir.path().join(RPO_FILE), &edited).unwrap();
    match evidence::verify(dir.path()) {
        Err(EvidenceError::FileMismatch { name, .. }) => assert_eq!(name, RPO_FILE),
        other => panic!("expected rpo.csv mismatch, got {other:?}"),
    }
    forge_manifest(dir.path());
    let line = edited
        .lines()
        .zip(csv.lines())
        .position(|(a, b)| a != b)
        .unwrap()
        + 1;
    match evidence::verify(dir.path()) {
        Err(EvidenceError::DerivedMismatch { name, line: l }) => {
            assert_eq!(name, RPO_FILE);
            assert_eq!(l, line);
        }
        other => panic!("expected rpo.csv derivation mismatch, got {other:?}"),
    }
}

#[test]
fn forged_report_under_a_rehashed_manifest_is_named() {
    let (dir, _) = exported();
    let html = read(dir.path(), REPORT_FILE);
    std::fs::write(
        dir.path().join(REPORT_FILE),
        html.replacen("FAIL", "PASS", 1),
    )
    .unwrap();
    forge_manifest(dir.path());
    let err = evidence::verify(dir.path()).unwrap_err();
    assert!(
        matches!(&err, EvidenceError::DerivedMismatch { name, .. } if name == REPORT_FILE),
        "{err:?}"
    );
}

#[test]
fn edited_after_action_report_is_named_even_under_a_rehashed_manifest() {
    let (dir, _) = exported();
    let name = evidence::AFTER_ACTION_FILE;
    let text = read(dir.path(), name);
    let edited = text.replacen("\"rto_met\": false", "\"rto_met\": true", 1);
    assert_ne!(
        edited, text,
        "the failover missed its RTO target in this chain"
    );
    std::fs::write(dir.path().join(name), &edited).unwrap();
    match evidence::verify(dir.path()) {
        Err(EvidenceError::FileMismatch { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected an after-action.json mismatch, got {other:?}"),
    }
    forge_manifest(dir.path());
    match evidence::verify(dir.path()) {
        Err(EvidenceError::DerivedMismatch { name: n, .. }) => assert_eq!(n, name),
        other => panic!("expected an after-action.json derivation mismatch, got {other:?}"),
    }
}

#[test]
fn deleted_file_is_named() {
    let (dir, _) = exported();
    std::fs::remove_file(dir.path().join(RUNS_FILE)).unwrap();
    let err = evidence::verify(dir.path()).unwrap_err();
    assert!(
        matches!(&err, EvidenceError::FileMissing { name } if name == RUNS_FILE),
        "{err:?}"
    );
    assert_eq!(err.file(), Some(RUNS_FILE));
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    assert!(matches!(
        evidence::verify(dir.path()),
        Err(EvidenceError::FileMissing { name }) if name == MANIFEST_FILE
    ));
}

#[test]
fn truncated_chain_does_not_match_the_manifest_head() {
    let (dir, _) = exported();
    let text = read(dir.path(), AUDIT_FILE);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(dir.path().join(AUDIT_FILE), lines.join("\n") + "\n").unwrap();
    let err = evidence::verify(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            EvidenceError::ChainSummaryMismatch {
                field: "last_index",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn window_export_verifies_as_a_segment() {
    let recs = build_chain();
    let from = T0 + 50_000;
    let to = T0 + 150_000;
    let dir = tempfile::tempdir().unwrap();
    let o = ExportOptions {
        from_ms: Some(from),
        to_ms: Some(to),
        ..opts()
    };
    let summary = evidence::export(&recs, &o, dir.path()).unwrap();
    let inside: Vec<&AuditRecord> = recs
        .iter()
        .filter(|r| r.at_ms >= from && r.at_ms <= to)
        .collect();
    let first = inside[0];
    assert!(first.index > 0);
    assert_eq!(
        summary.manifest.chain.first_prev_hash,
        recs[first.index as usize - 1].hash
    );
    assert_eq!(summary.manifest.chain.records, inside.len() as u64);
    let report = evidence::verify(dir.path()).unwrap();
    assert_eq!(report.manifest.chain.first_index, Some(first.index));
    let csv = read(dir.path(), RPO_FILE);
    assert_eq!(csv.lines().count() - 1, summary.rpo_rows);
    assert_eq!(
        summary.rpo_samples, summary.rpo_rows as u64,
        "one sample per row"
    );
    assert!(csv
        .lines()
        .skip(1)
        .all(|l| (from..=to).contains(&l.split(',').nth(1).unwrap().parse::<i64>().unwrap())));
    // The segment does not verify from the zero hash: the anchor matters.
    let mut m: Value = serde_json::from_str(&read(dir.path(), MANIFEST_FILE)).unwrap();
    m["chain"]["first_prev_hash"] = json!(tandem_coordinator::audit::ZERO_HASH);
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    assert!(matches!(
        evidence::verify(dir.path()),
        Err(EvidenceError::Chain {
            line: 1,
            source: ChainError::PrevHashMismatch { .. },
            ..
        })
    ));
}

#[test]
fn reexport_overwrites_in_place_and_still_verifies() {
    let (dir, recs) = exported();
    evidence::export(&recs[..recs.len() - 3], &opts(), dir.path()).unwrap();
    let report = evidence::verify(dir.path()).unwrap();
    assert_eq!(report.records, recs.len() as u64 - 3);
}

/// Timing of a large export (run with `--ignored --nocapture`): 100k records, 1% operator reports.
#[test]
#[ignore = "benchmark, not a check: prints export and verify timings for 100k records; run with --ignored --nocapture"]
fn large_export_and_verify_timing() {
    let mut c = tandem_coordinator::audit::AuditChain::default();
    for k in 0..100_000i64 {
        let g = if k % 2 == 0 { "vol" } else { "db" };
        if k % 100 == 99 {
            c.append(
                T0 + k * 1_000,
                "alice",
                AuditKind::Operator,
                Some(g),
                json!({"op": "failover", "rto_ms": 3_000, "ready": true,
                       "steps": [{"step": "fence", "ms": 5}, {"step": "promote", "ms": 9}]}),
            );
        } else {
            c.append(
                T0 + k * 1_000,
                "coordinator",
                AuditKind::RpoSample,
                Some(g),
                json!({"rpo_ms": k % 9_000, "target_ms": 5_000, "over_target": k % 9_000 > 5_000}),
            );
        }
    }
    let t = std::time::Instant::now();
    tandem_coordinator::audit::verify_chain(c.records()).unwrap();
    let chain = t.elapsed();
    let t = std::time::Instant::now();
    evidence::render(c.records(), &opts()).unwrap();
    let render = t.elapsed();
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let s = evidence::export(c.records(), &opts(), dir.path()).unwrap();
    let export = t.elapsed();
    let t = std::time::Instant::now();
    evidence::verify(dir.path()).unwrap();
    let verify = t.elapsed();
    let bytes: u64 = s.manifest.files.iter().map(|f| f.bytes).sum();
    println!(
        "100k records: chain check {chain:?}, render {render:?}, export {export:?}, \
         verify {verify:?}, {} runs, {bytes} bytes written",
        s.runs
    );
}

/// One row of the residency table: site, jurisdiction, held as, since record.
type HeldRow = (String, Option<String>, Vec<String>, Option<u64>);

/// The residency table of a rendered export, by group.
fn residency_of(recs: &[AuditRecord], o: &ExportOptions) -> BTreeMap<String, Vec<HeldRow>> {
    let r = evidence::render(recs, o).unwrap();
    let runs = &r
        .files
        .iter()
        .find(|(n, _)| *n == evidence::RUNS_FILE)
        .unwrap()
        .1;
    let doc: evidence::derive::RunsDoc = serde_json::from_slice(runs).unwrap();
    assert!(String::from_utf8_lossy(
        &r.files
            .iter()
            .find(|(n, _)| *n == evidence::REPORT_FILE)
            .unwrap()
            .1
    )
    .contains("<h2>Data residency</h2>"));
    doc.residency
        .into_iter()
        .map(|g| {
            assert_eq!(g.allowed_jurisdictions, vec!["VN".to_string()]);
            let sites = g
                .sites
                .into_iter()
                .map(|h| {
                    assert!(h.allowed, "{h:?}");
                    (h.site, h.jurisdiction, h.held_as, h.first_index)
                })
                .collect();
            (g.group, sites)
        })
        .collect()
}

#[test]
fn evidence_names_every_site_that_held_each_group() {
    let recs = build_chain();
    let vn = Some("VN".to_string());
    let held = residency_of(&recs, &opts());
    // vol: bootstrapped hanoi -> hcm (record 0), failed over to hcm; db: switched over; db's
    // drill copy step names no site, so it adds none.
    let vol = &held["vol"];
    assert_eq!(vol.len(), 2, "{vol:?}");
    assert_eq!(vol[0].0, "hanoi");
    assert_eq!(vol[0].1, vn);
    assert_eq!(vol[0].2, vec!["primary".to_string(), "replica".to_string()]);
    assert_eq!(vol[0].3, Some(0), "placed by the bootstrap");
    assert_eq!(vol[1].0, "hcm");
    assert!(held.contains_key("db"));

    // A window after the bootstrap still names the sites held at its start.
    let from = T0 + 50_000;
    let o = ExportOptions {
        from_ms: Some(from),
        ..opts()
    };
    let held = residency_of(&recs, &o);
    let vol = &held["vol"];
    assert_eq!(vol.len(), 2, "{vol:?}");
    assert!(vol.iter().all(|h| h.1 == vn));
    assert!(
        vol.iter().any(|h| h.3.is_none()),
        "held at the window start: {vol:?}"
    );
    // And such a window exports and verifies (the start state is in the manifest).
    let dir = tempfile::tempdir().unwrap();
    evidence::export(&recs, &o, dir.path()).unwrap();
    evidence::verify(dir.path()).unwrap();
}

#[test]
fn an_export_with_a_drill_schedule_shows_the_cadence_and_verifies() {
    let recs = build_chain();
    let dir = tempfile::tempdir().unwrap();
    // db drilled once (drill-7), long before the export: a 60 s schedule missed at the end.
    let o = ExportOptions {
        drill_every_ms: BTreeMap::from([("db".into(), 60_000)]),
        ..opts()
    };
    evidence::export(&recs, &o, dir.path()).unwrap();
    evidence::verify(dir.path()).unwrap();
    let runs: Value = serde_json::from_str(&read(dir.path(), "runs.json")).unwrap();
    let c = &runs["drill_cadence"][0];
    assert_eq!(c["group"], "db");
    assert_eq!(c["every_ms"], 60_000);
    assert_eq!(c["drills"][0]["run_id"], "drill-7");
    assert_eq!(c["drills"][0]["scheduled"], false);
    assert_eq!(c["held"], false, "{c}");
    let report = read(dir.path(), "report.html");
    assert!(report.contains("<h2 id=\"drill-cadence\">Drill cadence</h2>"));
    assert!(
        report.contains("window-end"),
        "the gap that missed is named"
    );
    // The schedule is part of what verify re-derives from: changing it is caught.
    let mut m: Value = serde_json::from_str(&read(dir.path(), MANIFEST_FILE)).unwrap();
    assert_eq!(m["drill_every_ms"]["db"], 60_000);
    m["drill_every_ms"]["db"] = json!(86_400_000);
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&m).unwrap(),
    )
    .unwrap();
    assert!(evidence::verify(dir.path()).is_err());
    // Without a schedule nothing is added: earlier folders re-derive byte for byte.
    let (plain, _) = exported();
    assert!(!read(plain.path(), "runs.json").contains("drill_cadence"));
    assert!(!read(plain.path(), MANIFEST_FILE).contains("drill_every_ms"));
}
