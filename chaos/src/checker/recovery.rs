//! Recovery checkers over timings: the RPO rose under a fault and came back after it, and
//! the measured recovery time is within its target.
//!
//! Pure: over RPO readings and times the caller hands in.

use super::verdict::Verdict;

/// One RPO reading taken from the status over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpoSample {
    /// When, in history time (ms).
    pub time_ms: u64,
    /// The RPO reported then, ms.
    pub rpo_ms: i64,
}

/// Checks that the RPO rose to at least `min_peak_ms` between `fault_from_ms` and
/// `fault_until_ms` (the fault really held replication back) and that a reading of at most
/// `recovered_max_ms` came after `fault_until_ms` (it recovered once the fault was lifted;
/// 0 = fully caught up). `samples` are in time order.
pub fn rpo_recovers(
    samples: &[RpoSample],
    fault_from_ms: u64,
    fault_until_ms: u64,
    min_peak_ms: i64,
    recovered_max_ms: i64,
) -> Verdict {
    let mut violations = Vec::new();
    let peak = samples
        .iter()
        .filter(|s| s.time_ms >= fault_from_ms && s.time_ms <= fault_until_ms)
        .map(|s| s.rpo_ms)
        .max();
    match peak {
        None => violations.push(format!(
            "no RPO reading between {fault_from_ms} and {fault_until_ms} ms"
        )),
        Some(p) if p < min_peak_ms => violations.push(format!(
            "RPO peaked at {p} ms while the fault was on, expected at least {min_peak_ms} ms \
             (the fault did not hold replication back)"
        )),
        Some(_) => {}
    }
    let recovered = samples
        .iter()
        .find(|s| s.time_ms > fault_until_ms && s.rpo_ms <= recovered_max_ms);
    let mut notes = vec![format!(
        "peak RPO under the fault: {} ms",
        peak.unwrap_or(0)
    )];
    match recovered {
        Some(s) => notes.push(format!(
            "RPO back to {} ms at {} ms, {} ms after the fault was lifted",
            s.rpo_ms,
            s.time_ms,
            s.time_ms - fault_until_ms
        )),
        None => violations.push(format!(
            "RPO never came back to {recovered_max_ms} ms or less after the fault was lifted at \
             {fault_until_ms} ms (last reading {} ms)",
            samples.last().map(|s| s.rpo_ms).unwrap_or(0)
        )),
    }
    Verdict::new("rpo_recovers", violations, notes)
}

/// Checks that the measured recovery time is within the target.
pub fn rto_within_target(measured_ms: u64, target_ms: u64) -> Verdict {
    let violations = if measured_ms <= target_ms {
        Vec::new()
    } else {
        vec![format!(
            "recovery took {measured_ms} ms, target {target_ms} ms"
        )]
    };
    Verdict::new(
        "rto_within_target",
        violations,
        vec![format!("measured {measured_ms} ms, target {target_ms} ms")],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpo(v: &[(u64, i64)]) -> Vec<RpoSample> {
        v.iter()
            .map(|&(time_ms, rpo_ms)| RpoSample { time_ms, rpo_ms })
            .collect()
    }

    #[test]
    fn rpo_that_rises_and_recovers_passes() {
        let s = rpo(&[(0, 0), (1000, 400), (2000, 1500), (3000, 900), (3500, 0)]);
        let v = rpo_recovers(&s, 500, 3000, 1000, 0);
        assert!(v.ok, "{:?}", v.violations);
    }

    #[test]
    fn rpo_that_never_recovers_or_never_rises_is_caught() {
        let stuck = rpo(&[(1000, 400), (2000, 1500), (3500, 2500), (4000, 3000)]);
        let v = rpo_recovers(&stuck, 500, 3000, 1000, 0);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("never came back"),
            "{:?}",
            v.violations
        );
        // A tolerance lets a reading of 2500 count; 3000 alone would not.
        assert!(rpo_recovers(&stuck, 500, 3000, 1000, 2500).ok);
        assert!(!rpo_recovers(&stuck, 500, 3000, 1000, 2000).ok);
        let flat = rpo(&[(1000, 0), (2000, 20), (3500, 0)]);
        let v = rpo_recovers(&flat, 500, 3000, 1000, 0);
        assert!(
            v.violations[0].contains("peaked at 20"),
            "{:?}",
            v.violations
        );
        // A 0 reading before the lift does not count as recovery.
        let early = rpo(&[(1000, 1500), (2000, 0), (3500, 700)]);
        assert!(!rpo_recovers(&early, 500, 3000, 1000, 0).ok);
        assert!(!rpo_recovers(&[], 500, 3000, 1000, 0).ok);
    }

    #[test]
    fn recovery_over_the_target_is_caught() {
        assert!(rto_within_target(900, 1000).ok);
        assert!(rto_within_target(1000, 1000).ok);
        let v = rto_within_target(1001, 1000);
        assert!(!v.ok);
        assert_eq!(v.violations, vec!["recovery took 1001 ms, target 1000 ms"]);
    }
}
