//! When the raft node takes a state machine snapshot (and compacts its log): a pure decision.
//!
//! A snapshot is the whole state machine, so its cost grows with the number of groups; the log
//! it lets us discard grows with the commits and their size. The policy takes one only as often
//! as compaction needs: once the log since the last one holds `every` entries or as many bytes
//! as that snapshot (at least [`LOG_BYTES_FLOOR`]) *and* `min_interval` has passed; or at once
//! past `HARD_CAP_FACTOR` times either bound (so the log stays bounded under any proposal rate);
//! or at once when a follower needs a newer one than is stored. So snapshot writes cost at most
//! about as much as log writes, plus one snapshot per `min_interval`.

use std::time::Duration;

/// Past `HARD_CAP_FACTOR` times the entry or byte bound a snapshot is taken at once.
pub const HARD_CAP_FACTOR: u64 = 16;

/// The byte bound of the log is at least this, however small the snapshot.
pub const LOG_BYTES_FLOOR: u64 = 1 << 20;

/// What the node knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInputs {
    /// Index applied to the state machine.
    pub applied: u64,
    /// Index of the stored snapshot.
    pub last_snapshot: u64,
    /// Time since the stored snapshot was taken (or since the node started).
    pub since_last: Duration,
    /// Bytes of the entries applied since the stored snapshot.
    pub log_bytes: u64,
    /// Size of the stored snapshot in bytes.
    pub snapshot_bytes: u64,
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
        let byte_bound = i.snapshot_bytes.max(LOG_BYTES_FLOOR);
        let over = behind >= self.every || i.log_bytes >= byte_bound;
        let far_over = behind >= self.every.saturating_mul(HARD_CAP_FACTOR)
            || i.log_bytes >= byte_bound.saturating_mul(HARD_CAP_FACTOR);
        i.wanted || far_over || (over && i.since_last >= self.min_interval)
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
        const MB: u64 = 1 << 20;
        // (applied, last, since_last, wanted, log bytes, snapshot bytes, due)
        let tests = [
            (50, 0, s(60), false, 0, 0, false),
            (100, 0, s(29), false, 0, 0, false),
            (100, 0, s(30), false, 0, 0, true),
            (1599, 0, s(0), false, 0, 0, false),
            (1600, 0, s(0), false, 0, 0, true),
            (1, 0, s(0), true, 0, 0, true),
            (10, 10, s(99), true, 0, 0, false),
            (5, 10, s(99), false, 0, 0, false),
            // Few but large entries: as many log bytes as the snapshot (at least 1 MiB).
            (10, 0, s(30), false, MB - 1, 0, false),
            (10, 0, s(30), false, MB, 0, true),
            (10, 0, s(30), false, 3 * MB, 4 * MB, false),
            (10, 0, s(30), false, 4 * MB, 4 * MB, true),
            (10, 0, s(29), false, 4 * MB, 4 * MB, false),
            (10, 0, s(0), false, 64 * MB, 4 * MB, true),
        ];
        for (i, (applied, last_snapshot, since_last, wanted, log_bytes, snapshot_bytes, want)) in
            tests.into_iter().enumerate()
        {
            let got = p.due(SnapshotInputs {
                applied,
                last_snapshot,
                since_last,
                wanted,
                log_bytes,
                snapshot_bytes,
            });
            assert_eq!(got, want, "#{i}: applied {applied} last {last_snapshot} since {since_last:?} wanted {wanted} log {log_bytes} snap {snapshot_bytes}");
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
                log_bytes: 0,
                snapshot_bytes: 0,
            })
        };
        assert!(!due(5));
        assert!(due(6));
    }
}
