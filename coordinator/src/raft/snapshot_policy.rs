//! When the raft node takes a state machine snapshot (and compacts its log): a pure decision.
//!
//! A snapshot is the whole state machine, so its cost grows with the number of groups; the log
//! it lets us discard grows with the number of commits. The policy takes one only as often as
//! compaction needs: after `every` entries *and* at least `min_interval` after the previous one,
//! or after `every * HARD_CAP_FACTOR` entries whatever the time (so the log stays bounded under
//! any proposal rate), or at once when a follower needs a newer one than is stored.

use std::time::Duration;

/// Past `every * HARD_CAP_FACTOR` entries since the last snapshot one is taken at once.
pub const HARD_CAP_FACTOR: u64 = 16;

/// What the node knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInputs {
    /// Index applied to the state machine.
    pub applied: u64,
    /// Index of the stored snapshot.
    pub last_snapshot: u64,
    /// Time since the stored snapshot was taken (or since the node started).
    pub since_last: Duration,
    /// Raft asked for a snapshot newer than the stored one (a follower is behind the log).
    pub wanted: bool,
}

/// The node's snapshot settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Entries applied since the last snapshot before another is considered.
    pub every: u64,
    /// Least time between two snapshots taken for compaction (not for a follower).
    pub min_interval: Duration,
}

impl SnapshotPolicy {
    /// Whether to take a snapshot now.
    pub fn due(&self, i: SnapshotInputs) -> bool {
        if i.applied <= i.last_snapshot {
            return false;
        }
        let behind = i.applied - i.last_snapshot;
        i.wanted
            || behind >= self.every.saturating_mul(HARD_CAP_FACTOR)
            || (behind >= self.every && i.since_last >= self.min_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_waits_for_entries_and_time_unless_wanted_or_far_behind() {
        let p = SnapshotPolicy {
            every: 100,
            min_interval: Duration::from_secs(30),
        };
        let s = Duration::from_secs;
        // (applied, last, since_last, wanted, due)
        let tests = [
            (50, 0, s(60), false, false),
            (100, 0, s(29), false, false),
            (100, 0, s(30), false, true),
            (1599, 0, s(0), false, false),
            (1600, 0, s(0), false, true),
            (1, 0, s(0), true, true),
            (10, 10, s(99), true, false),
            (5, 10, s(99), false, false),
        ];
        for (i, (applied, last_snapshot, since_last, wanted, want)) in
            tests.into_iter().enumerate()
        {
            let got = p.due(SnapshotInputs {
                applied,
                last_snapshot,
                since_last,
                wanted,
            });
            assert_eq!(got, want, "#{i}: applied {applied} last {last_snapshot} since {since_last:?} wanted {wanted}");
        }
    }

    #[test]
    fn zero_interval_is_every_n_entries() {
        let p = SnapshotPolicy {
            every: 3,
            min_interval: Duration::ZERO,
        };
        let due = |applied| {
            p.due(SnapshotInputs {
                applied,
                last_snapshot: 3,
                since_last: Duration::ZERO,
                wanted: false,
            })
        };
        assert!(!due(5));
        assert!(due(6));
    }
}
