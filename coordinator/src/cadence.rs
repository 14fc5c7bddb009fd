//! Drills on a schedule, decided: when a group's next drill is due, when it is overdue, how
//! long a refused start waits before it is tried again, and whether a series of drills held
//! the cadence. Pure: values in, values out; the scheduler (`runs::schedule`), the state
//! machine, the status, the metrics and the evidence all call these, so they agree.
//!
//! The rules (docs/operations.md, "Drills on a schedule"):
//! - A drill counts from its **start**, whatever its outcome: a failed or cancelled drill was
//!   held (and its failure is evidence); counting from the start keeps the cadence from
//!   drifting by the drill's length, and the start is committed before the first step runs,
//!   so a new leader sees it.
//! - The next drill is due at `anchor + drill_every`, where the anchor is the start of the
//!   group's last drill, or the group's creation when it never drilled.
//! - The grace is 10% of `drill_every`, at least [`MIN_GRACE_MS`]: a drill is *overdue* when
//!   `now > due + grace`, and a gap between two drills *held* the cadence when it is at most
//!   `drill_every + grace`.
//! - A start the gates refuse is tried again after [`retry_ms`]: 10% of `drill_every`, between
//!   1 s and 5 min.

use serde::{Deserialize, Serialize};

/// The least grace, whatever `drill_every` (a scheduler tick is 200 ms; a start takes a
/// raft round trip and a runbook load).
pub const MIN_GRACE_MS: i64 = 1_000;
/// The least wait before a refused start is tried again.
pub const MIN_RETRY_MS: i64 = 1_000;
/// The most wait before a refused start is tried again.
pub const MAX_RETRY_MS: i64 = 300_000;

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The grace after a due time before the drill is overdue: 10% of `every_ms`, at least
/// [`MIN_GRACE_MS`].
pub fn grace_ms(every_ms: u64) -> i64 {
    (ms(every_ms) / 10).max(MIN_GRACE_MS)
}

/// How long a refused start waits before the next try: 10% of `every_ms`, within
/// [`MIN_RETRY_MS`]..=[`MAX_RETRY_MS`].
pub fn retry_ms(every_ms: u64) -> i64 {
    (ms(every_ms) / 10).clamp(MIN_RETRY_MS, MAX_RETRY_MS)
}

/// When the next drill is due: the last drill's start, else the group's creation, plus
/// `every_ms` (saturating). A group whose creation is unknown (a state from before creation
/// times were kept) counts from 0: its first drill is due at once.
pub fn next_due_ms(last_drill_ms: Option<i64>, created_ms: Option<i64>, every_ms: u64) -> i64 {
    last_drill_ms
        .or(created_ms)
        .unwrap_or(0)
        .saturating_add(ms(every_ms))
}

/// Whether a drill due at `due_ms` is overdue at `now_ms` (past its grace).
pub fn is_overdue(now_ms: i64, due_ms: i64, every_ms: u64) -> bool {
    now_ms > due_ms.saturating_add(grace_ms(every_ms))
}

/// A group's drill schedule at one moment, as status and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillSchedule {
    /// `drill_every`, ms.
    pub every_ms: u64,
    /// Start of the last drill, if any.
    pub last_drill_ms: Option<i64>,
    /// When the next drill is due.
    pub next_due_ms: i64,
    /// Past due by more than the grace.
    pub overdue: bool,
}

/// The schedule of a group with `drill_every = every_ms` at `now_ms`.
pub fn schedule(
    every_ms: u64,
    last_drill_ms: Option<i64>,
    created_ms: Option<i64>,
    now_ms: i64,
) -> DrillSchedule {
    let next_due_ms = next_due_ms(last_drill_ms, created_ms, every_ms);
    DrillSchedule {
        every_ms,
        last_drill_ms,
        next_due_ms,
        overdue: is_overdue(now_ms, next_due_ms, every_ms),
    }
}

/// One interval a cadence check looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Its start: a drill's start, or the window's (or the group's) start.
    pub from_ms: i64,
    /// Its end: the next drill's start, or the window's end.
    pub to_ms: i64,
    /// `to_ms - from_ms`.
    pub gap_ms: i64,
    /// What bounds it: `drill` (between two drills), `window-start` (before the first drill of
    /// the window) or `window-end` (after the last).
    pub between: String,
    /// `gap_ms <= drill_every + grace`.
    pub held: bool,
}

/// Whether the drills of a window held a cadence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cadence {
    /// `drill_every`, ms.
    pub every_ms: u64,
    /// The grace, ms ([`grace_ms`]).
    pub grace_ms: i64,
    /// Every gap that was checked, in time order.
    pub gaps: Vec<Gap>,
    /// True when every gap held.
    pub held: bool,
}

/// Whether the drills starting at `starts` (any order) held a cadence of `every_ms` over the
/// window `[from_ms, to_ms]`. Checked: every gap between consecutive drills; the stretch from
/// `from_ms` to the first drill (a drill before the window can only make the real gap longer,
/// so a stretch over the bound is a miss for sure; one within it proves nothing and is not
/// listed); and the stretch from the last drill (or `from_ms`) to `to_ms` (the next drill can
/// only come later). Drills outside the window are ignored.
pub fn cadence(starts: &[i64], every_ms: u64, from_ms: i64, to_ms: i64) -> Cadence {
    let grace = grace_ms(every_ms);
    let bound = ms(every_ms).saturating_add(grace);
    let mut inside: Vec<i64> = starts
        .iter()
        .copied()
        .filter(|t| (from_ms..=to_ms).contains(t))
        .collect();
    inside.sort_unstable();
    let gap = |from: i64, to: i64, between: &str| {
        let gap_ms = to.saturating_sub(from);
        Gap {
            from_ms: from,
            to_ms: to,
            gap_ms,
            between: between.to_string(),
            held: gap_ms <= bound,
        }
    };
    let mut gaps = Vec::new();
    let first = inside.first().copied().unwrap_or(to_ms);
    let lead = gap(from_ms, first, "window-start");
    if !lead.held {
        gaps.push(lead);
    }
    for pair in inside.windows(2) {
        gaps.push(gap(pair[0], pair[1], "drill"));
    }
    if let Some(&last) = inside.last() {
        gaps.push(gap(last, to_ms, "window-end"));
    }
    Cadence {
        every_ms,
        grace_ms: grace,
        held: gaps.iter().all(|g| g.held),
        gaps,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    const DAY: u64 = 86_400_000;

    #[test]
    fn due_counts_from_the_last_drill_else_from_creation() {
        // (last, created, every) -> due
        let cases = [
            (Some(1_000), Some(0), 3_000, 4_000),
            (None, Some(500), 3_000, 3_500),
            (None, None, 3_000, 3_000),
            (Some(i64::MAX - 1), None, 10, i64::MAX),
        ];
        for (i, (last, created, every, want)) in cases.into_iter().enumerate() {
            let got = next_due_ms(last, created, every);
            assert_eq!(got, want, "#{i}: expect {want} got {got}");
        }
    }

    #[test]
    fn grace_and_retry_are_a_tenth_of_the_interval_within_bounds() {
        // every -> (grace, retry)
        let cases = [
            (3_000, 1_000, 1_000),
            (30 * DAY, 3 * DAY as i64, 300_000),
            (60_000, 6_000, 6_000),
            (u64::MAX, i64::MAX / 10, 300_000),
        ];
        for (i, (every, grace, retry)) in cases.into_iter().enumerate() {
            assert_eq!(
                (grace_ms(every), retry_ms(every)),
                (grace, retry),
                "#{i}: every {every}"
            );
        }
    }

    #[test]
    fn overdue_only_past_the_grace() {
        let every = 30 * DAY;
        let due = 1_000_000;
        let grace = grace_ms(every);
        assert!(!is_overdue(due - 1, due, every));
        assert!(!is_overdue(due + grace, due, every), "at the grace's end");
        assert!(is_overdue(due + grace + 1, due, every));
        let s = schedule(every, Some(0), Some(-5), due);
        assert_eq!(s.next_due_ms, every as i64);
        assert!(!s.overdue);
    }

    #[test]
    fn cadence_names_the_gap_that_missed() {
        let every = 10_000; // grace 1 s: bound 11 s
        let c = cadence(&[20_000, 0, 10_500, 35_000], every, 0, 40_000);
        assert!(!c.held);
        let missed: Vec<_> = c.gaps.iter().filter(|g| !g.held).collect();
        assert_eq!(missed.len(), 1, "{c:?}");
        assert_eq!((missed[0].from_ms, missed[0].to_ms), (20_000, 35_000));
        assert_eq!(missed[0].between, "drill");
        let ok = cadence(&[0, 10_500, 20_000], every, 0, 25_000);
        assert!(ok.held, "{ok:?}");
        assert_eq!(ok.gaps.len(), 3, "two between drills and the tail: {ok:?}");
    }

    #[test]
    fn a_window_without_drills_misses_once_it_is_longer_than_the_bound() {
        let every = 10_000;
        assert!(cadence(&[], every, 0, 11_000).held);
        let c = cadence(&[], every, 0, 11_001);
        assert!(!c.held);
        assert_eq!(c.gaps[0].between, "window-start");
        // A late first drill is a miss; drills outside the window are not counted.
        let c = cadence(&[-5_000, 12_000, 50_000], every, 0, 20_000);
        assert_eq!(c.gaps[0].between, "window-start");
        assert!(!c.gaps[0].held);
        assert_eq!(c.gaps.len(), 2);
    }

    proptest! {
        /// Drills exactly `every` apart over a window that starts at the first and ends at the
        /// last always hold; moving one drill later than the bound always misses, at that gap.
        #[test]
        fn regular_drills_hold_and_a_late_one_misses(
            every in 1_000u64..10 * DAY,
            n in 2usize..12,
            late in 1i64..1_000_000,
            which in 0usize..11,
        ) {
            let e = every as i64;
            let starts: Vec<i64> = (0..n as i64).map(|k| k * e).collect();
            let end = *starts.last().unwrap();
            prop_assert!(cadence(&starts, every, 0, end).held);
            let k = which % (n - 1) + 1;
            let mut shifted = starts.clone();
            let push = grace_ms(every) + late;
            for t in shifted.iter_mut().skip(k) {
                *t += push;
            }
            let c = cadence(&shifted, every, 0, end + push);
            prop_assert!(!c.held);
            let missed: Vec<_> = c.gaps.iter().filter(|g| !g.held).collect();
            prop_assert_eq!(missed.len(), 1);
            prop_assert_eq!(missed[0].to_ms, shifted[k]);
        }

        /// Whatever the drills, `held` is exactly "no gap over the bound", every gap lies in
        /// the window, and the gaps between drills are in time order.
        #[test]
        fn held_is_no_gap_over_the_bound(
            every in 1_000u64..1_000_000,
            mut starts in proptest::collection::vec(-100_000i64..5_000_000, 0..20),
            to in 0i64..5_000_000,
        ) {
            let c = cadence(&starts, every, 0, to);
            let bound = every as i64 + grace_ms(every);
            prop_assert_eq!(c.held, c.gaps.iter().all(|g| g.gap_ms <= bound));
            for g in &c.gaps {
                prop_assert!(g.from_ms >= 0 && g.to_ms <= to && g.from_ms <= g.to_ms);
                prop_assert_eq!(g.held, g.gap_ms <= bound);
            }
            starts.retain(|t| (0..=to).contains(t));
            let drills = c.gaps.iter().filter(|g| g.between == "drill").count();
            prop_assert_eq!(drills, starts.len().saturating_sub(1));
        }

        /// Overdue is monotonic in time: once overdue, later is overdue too.
        #[test]
        fn overdue_is_monotonic(every in 1u64..100 * DAY, due in -1_000_000i64..1_000_000, a in 0i64..1_000_000_000, b in 0i64..1_000_000_000) {
            let (t1, t2) = (due + a.min(b), due + a.max(b));
            prop_assert!(!is_overdue(t1, due, every) || is_overdue(t2, due, every));
        }
    }
}
