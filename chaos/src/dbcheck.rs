//! Pure checkers for the database workload: over the history of transactions (`f = txn`,
//! each with its id and the values it wrote) and the rows read back from a database file.
//!
//! The caller opens the database (read-only), runs `PRAGMA integrity_check` and reads the
//! rows into a [`DbState`]; these functions do no I/O.

use std::collections::{BTreeMap, HashMap};

use crate::checker::{ReplicationMode, Verdict};
use crate::history::{History, OpFn, OpKind};

/// The rows of a database as the workload wrote them: transaction id -> the values of its
/// rows, in insertion order.
pub type DbState = BTreeMap<u64, Vec<i64>>;

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `ok` (committed), acknowledged at this time.
    Committed(u64),
    /// `fail`: certainly rolled back.
    Failed,
    /// `info` or no completion: may or may not have committed.
    Unknown,
}

/// One transaction of the history.
#[derive(Debug, Clone)]
struct TxnRec {
    txn: u64,
    values: Vec<i64>,
    site: Option<String>,
    outcome: Outcome,
    invoke_ms: u64,
    /// Index of the run of consecutive transactions written at one site (0, 1, ...): the
    /// writer moves to the new primary's copy at a failover and starts a new segment.
    segment: usize,
}

/// The transactions of `history` in invoke order; duplicate ids are reported in `problems`.
fn txns(history: &History, problems: &mut Vec<String>) -> Vec<TxnRec> {
    let ops = history.ops();
    let mut out: Vec<TxnRec> = Vec::new();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for p in history.pairs() {
        let inv = &ops[p.invoke];
        if inv.f != OpFn::Txn {
            continue;
        }
        let Some(txn) = inv.txn else {
            problems.push(format!(
                "txn invoke at {} ms has no transaction id",
                inv.time_ms
            ));
            continue;
        };
        let outcome = match p.completion.map(|i| &ops[i]) {
            Some(c) if c.kind == OpKind::Ok => Outcome::Committed(c.time_ms),
            Some(c) if c.kind == OpKind::Fail => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        if let Some(prev) = seen.insert(txn, out.len()) {
            problems.push(format!(
                "txn {txn} invoked twice (at {} ms and {} ms)",
                out[prev].invoke_ms, inv.time_ms
            ));
        }
        let segment = match out.last() {
            Some(l) if l.site == inv.site => l.segment,
            Some(l) => l.segment + 1,
            None => 0,
        };
        out.push(TxnRec {
            txn,
            values: inv.values.clone().unwrap_or_default(),
            site: inv.site.clone(),
            outcome,
            invoke_ms: inv.time_ms,
            segment,
        });
    }
    out
}

fn site_of(r: &TxnRec) -> &str {
    r.site.as_deref().unwrap_or("?")
}

/// Checks that a database file is consistent: `integrity` (the output of `PRAGMA
/// integrity_check`) is `ok`; every transaction in `state` is one the history invoked and did
/// not `fail`, with exactly the values it wrote (no partial transaction, no foreign row); and
/// within each run of transactions written at one site the committed ones present form a
/// prefix: no committed transaction is missing while a later one of the same run is present
/// (no gap). Transactions of unknown outcome may be present or missing.
pub fn db_commit_prefix(history: &History, state: &DbState, integrity: &str) -> Verdict {
    const NAME: &str = "db_commit_prefix";
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    if integrity != "ok" {
        violations.push(format!("integrity_check: {integrity}"));
    }
    let recs = txns(history, &mut violations);
    let by_id: HashMap<u64, &TxnRec> = recs.iter().map(|r| (r.txn, r)).collect();
    for (txn, vals) in state {
        match by_id.get(txn) {
            None => violations.push(format!(
                "txn {txn} is in the database but was never invoked"
            )),
            Some(r) if r.outcome == Outcome::Failed => violations.push(format!(
                "txn {txn} failed (rolled back) but is in the database"
            )),
            Some(r) if &r.values != vals => violations.push(format!(
                "txn {txn} is partial or altered: the database holds {vals:?}, it wrote {:?}",
                r.values
            )),
            Some(_) => {}
        }
    }
    let segments = recs.last().map_or(0, |r| r.segment + 1);
    for seg in 0..segments {
        let run: Vec<&TxnRec> = recs.iter().filter(|r| r.segment == seg).collect();
        let Some(last) = run.iter().rposition(|r| state.contains_key(&r.txn)) else {
            continue;
        };
        let gaps: Vec<u64> = run[..last]
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Committed(_)) && !state.contains_key(&r.txn))
            .map(|r| r.txn)
            .collect();
        if let Some(first) = gaps.first() {
            violations.push(format!(
                "gap at {}: {} committed transactions missing (first txn {first}) while txn {} of the same run is present",
                site_of(run[last]),
                gaps.len(),
                run[last].txn
            ));
        }
        notes.push(format!(
            "run {seg} at {}: {} of {} transactions present (last txn {})",
            site_of(run[last]),
            run.iter().filter(|r| state.contains_key(&r.txn)).count(),
            run.len(),
            run[last].txn
        ));
    }
    Verdict::new(NAME, violations, notes)
}

/// Checks that no committed transaction the promises cover is missing from `state`.
///
/// A committed (`ok`) transaction may be missing only if all of these hold: it belongs to the
/// run of transactions that was being written when the failure struck (at `failure_ms`;
/// `u64::MAX` when there was none); the replica had not been seen holding it (`confirmed` is
/// the highest transaction id read from the replica's file before the failure); and it
/// committed less than `window_ms` before the failure (or after it). For `Sync`, `window_ms`
/// is the capture allowance (a committed transaction is read from the WAL within the source's
/// poll interval, and no later one is captured before it is durable at the replica); for
/// `Async` it is the RPO reported before the failure plus that allowance.
pub fn db_lost_commits(
    history: &History,
    state: &DbState,
    mode: ReplicationMode,
    window_ms: u64,
    failure_ms: u64,
    confirmed: u64,
) -> Verdict {
    const NAME: &str = "db_lost_commits";
    let mut violations = Vec::new();
    let recs = txns(history, &mut violations);
    let failure_segment = recs
        .iter()
        .rev()
        .find(|r| r.invoke_ms <= failure_ms)
        .map(|r| r.segment);
    let (mut committed, mut allowed) = (0usize, 0usize);
    for r in &recs {
        let Outcome::Committed(at) = r.outcome else {
            continue;
        };
        committed += 1;
        if state.contains_key(&r.txn) {
            continue;
        }
        let may_be_lost = Some(r.segment) == failure_segment
            && r.txn > confirmed
            && at.saturating_add(window_ms) > failure_ms;
        if may_be_lost {
            allowed += 1;
        } else {
            let why = if r.txn <= confirmed {
                format!("the replica held up to txn {confirmed} before the failure")
            } else if Some(r.segment) == failure_segment {
                format!(
                    "committed {} ms before the failure, outside the {window_ms} ms window",
                    failure_ms.saturating_sub(at)
                )
            } else {
                "committed outside the run the failure struck".to_owned()
            };
            violations.push(format!(
                "lost committed txn {} (at {}, committed at {at} ms): {why}",
                r.txn,
                site_of(r)
            ));
        }
    }
    let notes = vec![format!(
        "{mode:?}: {committed} committed transactions, {allowed} missing inside the window, {} lost",
        violations.len()
    )];
    Verdict::new(NAME, violations, notes)
}

/// Checks that a failback kept the old primary's unreplicated tail aside instead of dropping
/// it: every transaction committed at `old_site` that the final primary lacks (committed there
/// but never replicated before the failover) is in `quarantine`, the copy the returning old
/// primary kept of its database before resyncing it, with exactly its values. `None`: no
/// quarantine copy was found. (That such transactions were not silently merged into the new
/// primary is [`db_identical`] and [`db_commit_prefix`] on the final copies.)
pub fn db_tail_quarantined(
    history: &History,
    final_primary: &DbState,
    quarantine: Option<&DbState>,
    old_site: &str,
) -> Verdict {
    const NAME: &str = "db_tail_quarantined";
    let mut violations = Vec::new();
    let recs = txns(history, &mut violations);
    let (mut tail, mut kept) = (0usize, 0usize);
    for r in recs.iter().filter(|r| site_of(r) == old_site) {
        if !matches!(r.outcome, Outcome::Committed(_)) || final_primary.contains_key(&r.txn) {
            continue;
        }
        tail += 1;
        match quarantine.map(|q| q.get(&r.txn)) {
            None => {
                violations.push(format!(
                    "txn {} committed at {old_site} and missing from the primary, and no quarantine copy exists",
                    r.txn
                ));
                break;
            }
            Some(Some(v)) if *v == r.values => kept += 1,
            Some(Some(v)) => violations.push(format!(
                "txn {} in the quarantine copy with values {v:?}, written as {:?}",
                r.txn, r.values
            )),
            Some(None) => violations.push(format!(
                "txn {} committed at {old_site} is neither at the primary nor in the quarantine copy",
                r.txn
            )),
        }
    }
    let notes = vec![format!(
        "{tail} transactions committed at {old_site} never reached the new primary; {kept} of them kept in the quarantine copy{}",
        quarantine.map_or(" (none found)".to_owned(), |q| format!(" ({} transactions)", q.len()))
    )];
    Verdict::new(NAME, violations, notes)
}

/// Checks that the final replica holds exactly the final primary's transactions.
pub fn db_identical(primary: &DbState, replica: &DbState) -> Verdict {
    const NAME: &str = "db_identical";
    let mut violations = Vec::new();
    if primary != replica {
        let only_p = primary.keys().filter(|k| !replica.contains_key(k)).count();
        let only_r = replica.keys().filter(|k| !primary.contains_key(k)).count();
        let differ = primary
            .iter()
            .filter(|(k, v)| replica.get(k).is_some_and(|w| w != *v))
            .count();
        let first = primary
            .iter()
            .find(|(k, v)| replica.get(k) != Some(v))
            .map(|(k, _)| *k)
            .or_else(|| replica.keys().find(|k| !primary.contains_key(k)).copied());
        violations.push(format!(
            "replica differs: {only_p} transactions only at the primary, {only_r} only at the replica, {differ} with other values (first txn {first:?})"
        ));
    }
    Verdict::new(
        NAME,
        violations,
        vec![format!(
            "{} transactions at the primary, {} at the replica",
            primary.len(),
            replica.len()
        )],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;
    use proptest::prelude::*;

    fn vals(t: u64) -> Vec<i64> {
        (0..3).map(|k| (t * 10 + k) as i64).collect()
    }

    /// `n` transactions, each committed 10 ms after its invoke, 20 ms apart, at `site`,
    /// starting with txn `first` at `t0` ms.
    fn run(h: &mut History, site: &str, first: u64, n: u64, t0: u64) {
        for i in 0..n {
            let t = first + i;
            let at = t0 + i * 20;
            h.append(Op::txn(1, OpKind::Invoke, t, &vals(t), at).with_site(site));
            h.append(Op::txn(1, OpKind::Ok, t, &vals(t), at + 10).with_site(site));
        }
    }

    fn state(txns: impl IntoIterator<Item = u64>) -> DbState {
        txns.into_iter().map(|t| (t, vals(t))).collect()
    }

    #[test]
    fn an_unreplicated_tail_must_be_in_the_quarantine_copy() {
        let mut h = History::new();
        run(&mut h, "hanoi", 1, 10, 0);
        run(&mut h, "hcm", 11, 5, 1000);
        // hcm was promoted holding 1..=7: 8, 9 and 10 are hanoi's unreplicated tail.
        let primary = state((1..=7).chain(11..=15));
        let v = db_tail_quarantined(&h, &primary, Some(&state(1..=10)), "hanoi");
        assert!(v.ok, "{v:?}");
        assert!(v.notes[0].contains("3 transactions"), "{v:?}");
        let v = db_tail_quarantined(&h, &primary, None, "hanoi");
        assert!(
            !v.ok && v.violations[0].contains("no quarantine copy"),
            "{v:?}"
        );
        let v = db_tail_quarantined(&h, &primary, Some(&state(1..=9)), "hanoi");
        assert!(!v.ok && v.violations[0].contains("txn 10"), "{v:?}");
        let mut altered = state(1..=10);
        altered.insert(9, vec![1]);
        let v = db_tail_quarantined(&h, &primary, Some(&altered), "hanoi");
        assert!(!v.ok && v.violations[0].contains("txn 9"), "{v:?}");
        // Nothing missing: nothing to keep.
        let all = state(1..=15);
        assert!(db_tail_quarantined(&h, &all, None, "hanoi").ok);
    }

    #[test]
    fn a_full_prefix_passes_and_bad_integrity_fails() {
        let mut h = History::new();
        run(&mut h, "hanoi", 1, 10, 0);
        assert!(db_commit_prefix(&h, &state(1..=10), "ok").ok);
        assert!(db_commit_prefix(&h, &state(1..=4), "ok").ok);
        assert!(db_commit_prefix(&h, &DbState::new(), "ok").ok);
        let v = db_commit_prefix(
            &h,
            &state(1..=10),
            "*** in database main ***\nPage 3 is never used",
        );
        assert!(
            !v.ok && v.violations[0].contains("integrity_check"),
            "{v:?}"
        );
    }

    #[test]
    fn a_gap_a_partial_txn_a_failed_txn_and_a_foreign_txn_are_caught() {
        let mut h = History::new();
        run(&mut h, "hanoi", 1, 10, 0);
        h.append(Op::txn(2, OpKind::Invoke, 11, &vals(11), 500).with_site("hanoi"));
        h.append(Op::txn(2, OpKind::Fail, 11, &vals(11), 501).with_site("hanoi"));
        let gap = state([1, 2, 4, 5]);
        let v = db_commit_prefix(&h, &gap, "ok");
        assert!(!v.ok && v.violations[0].contains("first txn 3"), "{v:?}");
        let mut partial = state(1..=5);
        partial.insert(5, vals(5)[..2].to_vec());
        let v = db_commit_prefix(&h, &partial, "ok");
        assert!(!v.ok && v.violations[0].contains("partial"), "{v:?}");
        let v = db_commit_prefix(&h, &state((1..=10).chain([11])), "ok");
        assert!(!v.ok && v.violations[0].contains("failed"), "{v:?}");
        let v = db_commit_prefix(&h, &state([1, 2, 99]), "ok");
        assert!(!v.ok && v.violations[0].contains("never invoked"), "{v:?}");
    }

    #[test]
    fn prefix_is_judged_per_run_across_a_failover() {
        let mut h = History::new();
        run(&mut h, "hanoi", 1, 10, 0);
        run(&mut h, "hcm", 11, 5, 1000);
        // The promoted copy held 1..=7; the new primary then committed 11..=15.
        let after = state((1..=7).chain(11..=15));
        assert!(db_commit_prefix(&h, &after, "ok").ok);
        let gap = state((1..=7).chain([11, 13, 14, 15]));
        assert!(!db_commit_prefix(&h, &gap, "ok").ok);
    }

    #[test]
    fn unknown_outcomes_may_be_missing_or_present() {
        let mut h = History::new();
        run(&mut h, "hanoi", 1, 3, 0);
        h.append(Op::txn(3, OpKind::Invoke, 4, &vals(4), 100).with_site("hanoi"));
        h.append(Op::txn(3, OpKind::Info, 4, &vals(4), 101).with_site("hanoi"));
        run(&mut h, "hanoi", 5, 2, 200);
        assert!(db_commit_prefix(&h, &state([1, 2, 3, 5, 6]), "ok").ok);
        assert!(db_commit_prefix(&h, &state(1..=6), "ok").ok);
    }

    #[test]
    fn sync_loss_only_inside_the_capture_window_and_above_the_confirmed_txn() {
        let mut h = History::new();
        // txn t commits at (t-1)*20 + 10 ms; the failure at 200 ms.
        run(&mut h, "hanoi", 1, 10, 0);
        let m = ReplicationMode::Sync;
        // Lost 9 and 10 (committed at 170, 190): inside a 50 ms window.
        assert!(db_lost_commits(&h, &state(1..=8), m, 50, 200, 6).ok);
        // Lost 8 too (committed at 150): outside.
        let v = db_lost_commits(&h, &state(1..=7), m, 50, 200, 6);
        assert!(!v.ok && v.violations[0].contains("txn 8"), "{v:?}");
        // The replica had been seen holding 9: it may not be lost, window or not.
        let v = db_lost_commits(&h, &state(1..=8), m, 50, 200, 9);
        assert!(!v.ok && v.violations[0].contains("txn 9"), "{v:?}");
        // No failure at all: nothing may be missing.
        assert!(!db_lost_commits(&h, &state(1..=9), m, 50, u64::MAX, 0).ok);
        assert!(db_lost_commits(&h, &state(1..=10), m, 50, u64::MAX, 0).ok);
    }

    #[test]
    fn async_loss_bounded_by_the_window_and_later_runs_must_survive() {
        let mut h = History::new();
        run(&mut h, "hanoi", 1, 10, 0);
        run(&mut h, "hcm", 11, 5, 1000);
        let m = ReplicationMode::Async;
        let promoted = state((1..=5).chain(11..=15));
        // 6..=10 committed at 110..190 ms: inside a 100 ms window of a failure at 200 ms.
        assert!(db_lost_commits(&h, &promoted, m, 100, 200, 0).ok);
        assert!(!db_lost_commits(&h, &promoted, m, 60, 200, 0).ok);
        // A transaction of the new primary's run is lost: never allowed.
        let v = db_lost_commits(&h, &state((1..=5).chain(11..=14)), m, 100, 200, 0);
        assert!(!v.ok && v.violations[0].contains("txn 15"), "{v:?}");
    }

    #[test]
    fn identical_compares_every_row() {
        assert!(db_identical(&state(1..=5), &state(1..=5)).ok);
        assert!(!db_identical(&state(1..=5), &state(1..=4)).ok);
        let mut other = state(1..=5);
        other.insert(3, vec![1]);
        let v = db_identical(&state(1..=5), &other);
        assert!(
            !v.ok && v.violations[0].contains("first txn Some(3)"),
            "{v:?}"
        );
    }

    proptest! {
        /// Any prefix of committed transactions passes; removing any one below the last
        /// present is a gap, and truncating any one present is a partial transaction.
        #[test]
        fn prefixes_pass_and_holes_or_truncations_fail(
            n in 1u64..40,
            keep in any::<proptest::sample::Index>(),
            hole in any::<proptest::sample::Index>(),
        ) {
            let mut h = History::new();
            run(&mut h, "hanoi", 1, n, 0);
            let p = keep.index(n as usize + 1) as u64;
            let st = state(1..=p);
            prop_assert!(db_commit_prefix(&h, &st, "ok").ok);
            if p >= 2 {
                let k = 1 + hole.index(p as usize - 1) as u64;
                let mut holed = st.clone();
                holed.remove(&k);
                prop_assert!(!db_commit_prefix(&h, &holed, "ok").ok);
            }
            if p >= 1 {
                let k = 1 + hole.index(p as usize) as u64;
                let mut cut = st.clone();
                if let Some(v) = cut.get_mut(&k) {
                    v.pop();
                }
                prop_assert!(!db_commit_prefix(&h, &cut, "ok").ok);
            }
        }
    }
}
