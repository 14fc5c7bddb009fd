//! Evidence over a chain whose RPO is audited both ways: per-sample records (a cluster from
//! before the audit interval), then, once a later bootstrap sets `rpo_audit_every_ms`, summaries
//! at most once a minute and at every crossing of the target. The export must verify, count every
//! sample, and keep the worst RPO of each interval and every breach.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use tandem_coordinator::audit::{verify_chain, AuditKind, AuditRecord};
use tandem_coordinator::evidence::{self, ExportOptions, REPORT_FILE, RPO_FILE};
use tandem_coordinator::state::{
    apply, ClusterSettings, Command, GroupRpo, GroupSpec, Mode, SiteSpec, State,
};

const T0: i64 = 1_700_000_000_000;
const TARGET: u64 = 5_000;

fn bootstrap(at_ms: i64, every: Option<u64>) -> Command {
    let site = |name: &str| SiteSpec {
        name: name.into(),
        witness: false,
        jurisdiction: None,
    };
    Command::Bootstrap {
        at_ms,
        actor: "ops".into(),
        settings: ClusterSettings {
            lease_ttl_ms: 2_000,
            drift_margin_ms: 500,
            detect_after_ms: 3_000,
            rpo_audit_every_ms: every,
        },
        sites: vec![site("hanoi"), site("hcm")],
        groups: vec![GroupSpec {
            name: "vol".into(),
            primary: "hanoi".into(),
            replica: "hcm".into(),
            mode: Mode::Async,
            rpo_target_ms: TARGET,
            allowed_jurisdictions: Vec::new(),
        }],
    }
}

/// The RPO of sample `k` (5 s apart): within target but for a breach at samples 70..=74 whose
/// worst is 10 345 ms, and one lone peak of 4 999 ms (within target) at sample 100.
fn rpo_of(k: i64) -> u64 {
    match k {
        70..=74 => 6_000 + (k as u64 - 70) * 1_000 + if k == 72 { 2_345 } else { 0 },
        100 => 4_999,
        _ => 100 + (k as u64 % 10),
    }
}

/// 1. Ten per-sample records, 2. the interval set by a later bootstrap, 3. 170 more samples.
fn build_chain() -> (Vec<AuditRecord>, usize) {
    let mut s = State::new();
    apply(&mut s, &bootstrap(T0, None)).unwrap();
    let sample = |s: &mut State, k: i64| {
        apply(
            s,
            &Command::RpoSamples {
                at_ms: T0 + 1_000 + k * 5_000,
                samples: vec![GroupRpo {
                    group: "vol".into(),
                    rpo_ms: rpo_of(k),
                }],
            },
        )
        .unwrap();
    };
    for k in 0..10 {
        sample(&mut s, k);
    }
    apply(&mut s, &bootstrap(T0 + 50_500, Some(60_000))).unwrap();
    for k in 10..180 {
        sample(&mut s, k);
    }
    let recs = s.audit().records().to_vec();
    verify_chain(&recs).unwrap();
    (recs, 180)
}

#[test]
fn a_chain_of_samples_then_summaries_exports_verifies_and_counts_every_sample() {
    let (recs, samples) = build_chain();
    let kinds = |k: AuditKind| recs.iter().filter(|r| r.kind == k).count();
    assert_eq!(kinds(AuditKind::RpoSample), 10);
    let summaries = kinds(AuditKind::RpoSummary);
    // 170 samples over 850 s: the first, one a minute, and the breach's start and end.
    assert_eq!(
        summaries, 15,
        "k = 10, 22, 34, 46, 58, 70 (over), 75 (within), 87 .. 171"
    );
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        cluster: "bank-dr".into(),
        generated_at_ms: T0 + 2_000_000,
        rpo_targets_ms: BTreeMap::new(),
        ..ExportOptions::default()
    };
    let summary = evidence::export(&recs, &opts, dir.path()).unwrap();
    evidence::verify(dir.path()).unwrap();
    let csv = std::fs::read_to_string(dir.path().join(RPO_FILE)).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 10 + summaries);
    assert_eq!(summary.rpo_rows, rows.len());
    // Every sample up to the last summary is counted once (column `samples`): the 8 samples
    // after it (k = 172..179) wait for the next interval. The worst survives (`max_ms`).
    let total: u64 = rows.iter().map(|r| r[5].parse::<u64>().unwrap()).sum();
    assert_eq!(total, samples as u64 - 8);
    assert_eq!(summary.rpo_samples, total);
    let worst = rows.iter().map(|r| r[8].parse::<u64>().unwrap()).max();
    assert_eq!(worst, Some(10_345));
    let over: u64 = rows.iter().map(|r| r[6].parse::<u64>().unwrap()).sum();
    assert_eq!(over, 5);
    assert!(rows.iter().any(|r| r[8] == "4999"), "the lone peak");
    // The breach's start is a row at the very sample that crossed (k = 70).
    let start = (T0 + 1_000 + 70 * 5_000).to_string();
    assert!(rows.iter().any(|r| r[1] == start && r[6] == "1"));
    // The report counts samples, not rows, and names the breach.
    let html = std::fs::read_to_string(dir.path().join(REPORT_FILE)).unwrap();
    assert!(html.contains("172 samples in"), "legend counts samples");
    assert!(html.contains("5 of 172 RPO samples over target (max 10345 ms)"));
}
