//! Replication-stream checkers: the replica applied a prefix of the primary's sequence
//! (in order, no gaps, watermarks never going back), corruption on a link was caught, a torn
//! journal tail was truncated on restart, and two volumes hash the same after a resync.
//!
//! Pure: over apply logs, counters, log texts and hashes the caller hands in.

use std::collections::HashMap;

use tandem_core::ids::Seq;

use super::verdict::Verdict;

/// Checks that corruption injected on a link was noticed and survived: some bytes were
/// corrupted in flight (`corrupted_bytes`, from the proxy) and the receiver refused frames
/// that were then re-sent (`refused_frames`, from the sender's log) or the stream broke and
/// reconnected (`reconnects`). The caller also checks that the data ended identical.
pub fn corruption_caught(corrupted_bytes: u64, refused_frames: u64, reconnects: u64) -> Verdict {
    let mut violations = Vec::new();
    if corrupted_bytes == 0 {
        violations.push("no byte was corrupted in flight: the fault did not bite".to_owned());
    } else if refused_frames == 0 && reconnects == 0 {
        violations.push(format!(
            "{corrupted_bytes} bytes were corrupted in flight but no frame was refused and the \
             stream never reconnected: corruption went through unnoticed"
        ));
    }
    Verdict::new(
        "corruption_caught",
        violations,
        vec![format!(
            "{corrupted_bytes} bytes corrupted in flight, {refused_frames} frames refused and \
             resent, {reconnects} reconnects"
        )],
    )
}

/// Checks that every node whose journal tail was torn reported truncating it when it
/// restarted: `logs` holds (node, its log text). A tear without any node is a violation (the
/// fault never fired).
pub fn torn_tail_repaired(logs: &[(String, String)]) -> Verdict {
    let mut violations = Vec::new();
    if logs.is_empty() {
        violations.push("no journal tail was torn".to_owned());
    }
    for (node, log) in logs {
        if !log.contains("truncating torn tail") {
            violations.push(format!(
                "{node} restarted without truncating its torn journal tail"
            ));
        }
    }
    Verdict::new("torn_tail_repaired", violations, Vec::new())
}

/// One entry of a replica's apply log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// The replica applied this change.
    Applied(Seq),
    /// The replica reported this durable applied watermark.
    Watermark(Seq),
    /// The replica crashed and restarted from this durable watermark; it re-applies from the
    /// next change.
    Restarted {
        /// The watermark it restarted from.
        watermark: Seq,
    },
}

/// Checks that the replica applied a prefix of the primary's sequence: in order, no gaps, no
/// reordering, no change the primary never made; that watermarks never go backwards (also
/// across restarts) and never pass what was applied. Re-applying changes after a restart from
/// the durable watermark is allowed.
pub fn replica_prefix(primary_seq_log: &[Seq], replica_applied_log: &[ReplicaEvent]) -> Verdict {
    let mut violations = Vec::new();
    for (i, w) in primary_seq_log.windows(2).enumerate() {
        if w[1] <= w[0] {
            violations.push(format!(
                "primary log is not increasing at index {}: {} then {}",
                i + 1,
                w[0],
                w[1]
            ));
        }
    }
    let position: HashMap<Seq, usize> = primary_seq_log
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i))
        .collect();
    let mut next = 0usize; // index into the primary log of the next change to apply
    let mut highest_applied = Seq(0);
    let mut watermark = Seq(0);
    for (i, event) in replica_applied_log.iter().enumerate() {
        match *event {
            ReplicaEvent::Applied(s) => {
                let expected = primary_seq_log.get(next).copied();
                if expected == Some(s) {
                    next += 1;
                    highest_applied = highest_applied.max(s);
                    continue;
                }
                let what = match (position.get(&s), expected) {
                    (None, _) => "a change the primary never made".to_string(),
                    (Some(_), None) => "past the end of the primary log".to_string(),
                    (Some(&p), Some(e)) if p > next => format!("a gap: expected {e}"),
                    (Some(_), Some(e)) => format!("reordered or repeated: expected {e}"),
                };
                violations.push(format!("replica event {i}: applied {s}, {what}"));
                // Resynchronise on the primary's order so one fault is reported once.
                if let Some(&p) = position.get(&s) {
                    next = p + 1;
                    highest_applied = highest_applied.max(s);
                }
            }
            ReplicaEvent::Watermark(w) | ReplicaEvent::Restarted { watermark: w } => {
                if w < watermark {
                    violations.push(format!(
                        "replica event {i}: watermark went back from {watermark} to {w}"
                    ));
                }
                if w > highest_applied {
                    violations.push(format!(
                        "replica event {i}: watermark {w} is past the highest applied change \
                         {highest_applied}"
                    ));
                }
                watermark = watermark.max(w);
                if let ReplicaEvent::Restarted { .. } = event {
                    next = primary_seq_log.partition_point(|s| *s <= w);
                }
            }
        }
    }
    Verdict::new("replica_prefix", violations, Vec::new())
}

/// Checks that two volumes hash the same after a resync.
pub fn identical_after_resync(hash_a: &blake3::Hash, hash_b: &blake3::Hash) -> Verdict {
    let violations = if hash_a == hash_b {
        Vec::new()
    } else {
        vec![format!(
            "volumes differ after resync: {} vs {}",
            hash_a.to_hex(),
            hash_b.to_hex()
        )]
    };
    Verdict::new("identical_after_resync", violations, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn corruption_that_nobody_noticed_or_that_never_happened_is_caught() {
        assert!(corruption_caught(29, 29, 2).ok);
        assert!(corruption_caught(5, 0, 1).ok);
        let v = corruption_caught(0, 0, 0);
        assert!(
            v.violations[0].contains("did not bite"),
            "{:?}",
            v.violations
        );
        let v = corruption_caught(12, 0, 0);
        assert!(v.violations[0].contains("unnoticed"), "{:?}", v.violations);
    }

    #[test]
    fn torn_tail_restart_without_truncation_is_caught() {
        let ok = "... WARN journal: truncating torn tail segment=x".to_owned();
        assert!(torn_tail_repaired(&[("a".into(), ok.clone())]).ok);
        let v = torn_tail_repaired(&[("a".into(), ok), ("b".into(), "started".into())]);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].starts_with("b restarted"));
        assert!(!torn_tail_repaired(&[]).ok);
    }

    fn seqs(v: &[u64]) -> Vec<Seq> {
        v.iter().map(|s| Seq(*s)).collect()
    }

    use ReplicaEvent::{Applied as A, Restarted as R, Watermark as W};

    #[test]
    fn replica_applying_a_prefix_in_order_passes() {
        let primary = seqs(&[1, 2, 3, 4, 5]);
        let log = [A(Seq(1)), A(Seq(2)), W(Seq(2)), A(Seq(3))];
        assert!(replica_prefix(&primary, &log).ok);
        // Restart from watermark 2 and re-apply 3.
        let log = [
            A(Seq(1)),
            A(Seq(2)),
            W(Seq(2)),
            A(Seq(3)),
            R { watermark: Seq(2) },
            A(Seq(3)),
            A(Seq(4)),
        ];
        assert!(replica_prefix(&primary, &log).ok);
    }

    #[test]
    fn replica_gap_reorder_and_unknown_change_are_caught() {
        let primary = seqs(&[1, 2, 3, 4]);
        let gap = replica_prefix(&primary, &[A(Seq(1)), A(Seq(3))]);
        assert!(gap.violations[0].contains("gap"), "{:?}", gap.violations);
        let reorder = replica_prefix(&primary, &[A(Seq(2)), A(Seq(1))]);
        assert_eq!(reorder.violations.len(), 2, "{:?}", reorder.violations);
        assert!(reorder.violations[1].contains("reordered"));
        let unknown = replica_prefix(&primary, &[A(Seq(1)), A(Seq(9))]);
        assert!(unknown.violations[0].contains("never made"));
    }

    #[test]
    fn watermark_going_back_across_restart_is_caught() {
        let primary = seqs(&[1, 2, 3]);
        let log = [A(Seq(1)), A(Seq(2)), W(Seq(2)), R { watermark: Seq(1) }];
        let v = replica_prefix(&primary, &log);
        assert!(!v.ok);
        assert!(v.violations[0].contains("went back"));
        let ahead = replica_prefix(&primary, &[A(Seq(1)), W(Seq(3))]);
        assert!(ahead.violations[0].contains("past the highest applied"));
    }

    #[test]
    fn non_increasing_primary_log_is_caught() {
        assert!(!replica_prefix(&seqs(&[1, 3, 2]), &[]).ok);
    }

    #[test]
    fn identical_after_resync_compares_the_two_hashes() {
        let a = blake3::hash(b"a");
        let b = blake3::hash(b"b");
        assert!(identical_after_resync(&a, &a).ok);
        assert!(!identical_after_resync(&a, &b).ok);
    }

    proptest! {
        /// A replica that applies a prefix in order, restarting from any durable watermark it
        /// reached, passes; swapping two adjacent applied changes is always caught.
        #[test]
        fn replica_prefix_with_restarts_passes_and_any_swap_is_caught(
            n in 2u64..40,
            applied in 2usize..40,
            restarts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
            swap in any::<proptest::sample::Index>(),
        ) {
            let primary: Vec<Seq> = (1..=n).map(|s| Seq(s * 3)).collect();
            let applied = applied.min(primary.len());
            let mut log = Vec::new();
            let mut restart_points: Vec<usize> =
                restarts.iter().map(|i| i.index(applied)).collect();
            restart_points.sort_unstable();
            let mut i = 0;
            let mut durable = 0usize; // number of changes durable
            for r in restart_points {
                while i <= r {
                    log.push(ReplicaEvent::Applied(primary[i]));
                    i += 1;
                }
                durable = durable.max(r / 2 + 1).min(i);
                log.push(ReplicaEvent::Watermark(primary[durable - 1]));
                log.push(ReplicaEvent::Restarted { watermark: primary[durable - 1] });
                i = durable;
            }
            while i < applied {
                log.push(ReplicaEvent::Applied(primary[i]));
                i += 1;
            }
            prop_assert!(replica_prefix(&primary, &log).ok, "{:?}", log);
            let applied_at: Vec<usize> = log
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e, ReplicaEvent::Applied(_)))
                .map(|(k, _)| k)
                .collect();
            let pairs: Vec<(usize, usize)> = applied_at
                .windows(2)
                .filter(|w| w[1] == w[0] + 1)
                .map(|w| (w[0], w[1]))
                .collect();
            if !pairs.is_empty() {
                let (a, b) = pairs[swap.index(pairs.len())];
                log.swap(a, b);
                prop_assert!(!replica_prefix(&primary, &log).ok, "{:?}", log);
            }
        }
    }
}
