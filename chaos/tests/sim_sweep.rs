//! Sweeps the deterministic coordinator simulation over many seeds, checks that a run replays
//! exactly, and shows that deliberately broken variants are caught.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;
use tandem_chaos::sim::{sweep, Bug, Invariant, Sim, SimConfig};

/// Seeds to sweep: `TANDEM_SIM_SEEDS` or 500.
fn seed_count() -> u64 {
    std::env::var("TANDEM_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

#[test]
fn every_seed_keeps_the_invariants() {
    let n = seed_count();
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let report = sweep(0..n, threads, SimConfig::for_seed);
    let secs = started.elapsed().as_secs_f64();
    let t = &report.totals;
    println!(
        "sim sweep: {} seeds on {threads} threads in {secs:.2} s ({:.1} seeds/s), {:.0} steps/seed",
        report.runs,
        report.runs as f64 / secs,
        t.steps as f64 / report.runs.max(1) as f64
    );
    println!("sim sweep totals: {t}");
    for v in &report.failures {
        println!("FAILED {v}");
    }
    assert!(
        report.failures.is_empty(),
        "{} of {} seeds failed; first: {}",
        report.failures.len(),
        report.runs,
        report.failures[0]
    );
    // The schedule must actually exercise the faults and the failovers.
    if n >= 100 {
        assert!(t.elections > report.runs, "{t}");
        assert!(t.partitions > 0 && t.crashes > 0 && t.restarts > 0, "{t}");
        assert!(t.failovers > 0 && t.switchovers > 0, "{t}");
        assert!(t.lease_grants > report.runs, "{t}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 1234, 99_999] {
        let a = Sim::run(seed, SimConfig::for_seed(seed));
        let b = Sim::run(seed, SimConfig::for_seed(seed));
        assert_eq!(a, b, "seed {seed} did not replay");
    }
}

/// Runs seeds with `bug` until one fails; returns how many it took and the violation.
fn first_failure(bug: Bug, max_seeds: u64) -> Option<(u64, tandem_chaos::sim::Violation)> {
    (0..max_seeds).find_map(|seed| {
        let cfg = SimConfig {
            bug: Some(bug),
            ..SimConfig::for_seed(seed)
        };
        Sim::run(seed, cfg).violation.map(|v| (seed, v))
    })
}

#[test]
fn promotion_that_ignores_the_lease_is_caught() {
    let (seed, v) = first_failure(Bug::PromoteIgnoresLease, seed_count())
        .expect("no seed caught a promotion that ignores the lease");
    println!("caught: {v}");
    assert!(
        matches!(v.invariant, Invariant::TwoLiveLeases),
        "unexpected invariant: {v}"
    );
    // The failing seed replays to the same violation.
    let again = Sim::run(
        seed,
        SimConfig {
            bug: Some(Bug::PromoteIgnoresLease),
            ..SimConfig::for_seed(seed)
        },
    );
    assert_eq!(again.violation, Some(v));
}

#[test]
fn acknowledging_before_fsync_is_caught() {
    let (seed, v) = first_failure(Bug::AckBeforeFsync, seed_count())
        .expect("no seed caught acknowledgements sent before fsync");
    println!("caught: {v}");
    // Replays to the same violation.
    let again = Sim::run(
        seed,
        SimConfig {
            bug: Some(Bug::AckBeforeFsync),
            ..SimConfig::for_seed(seed)
        },
    );
    assert_eq!(again.violation, Some(v));
}

#[test]
fn sweep_result_does_not_depend_on_thread_count() {
    let one = sweep(0..12, 1, SimConfig::for_seed);
    let two = sweep(0..12, 2, SimConfig::for_seed);
    assert_eq!(one, two);
    assert_eq!(one.runs, 12);
}
