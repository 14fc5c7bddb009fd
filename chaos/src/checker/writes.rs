//! Data-loss checkers over a write history and the final volume: no acknowledged write lost
//! (in async mode, loss bounded by the reported RPO), and on failback the old primary's
//! unreplicated tail quarantined rather than dropped.
//!
//! Pure: the caller hands in the history and hash functions over the final volume and the
//! quarantine files.

use std::collections::{BTreeMap, BTreeSet};

use super::verdict::{ReplicationMode, Verdict};
use crate::history::{History, OpFn, OpKind};

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `ok`, at this history index and time.
    Acked { index: usize, time_ms: u64 },
    /// `fail`: certainly not applied.
    Failed,
    /// `info` or no completion: may or may not be applied.
    Unknown,
}

#[derive(Debug, Clone)]
struct WriteRec {
    process: u64,
    invoke: usize,
    outcome: Outcome,
    hash: Option<blake3::Hash>,
    /// The site that served it, when labelled.
    site: Option<String>,
}

impl WriteRec {
    /// The last history index at which this write could have taken effect.
    fn end(&self) -> usize {
        match self.outcome {
            Outcome::Acked { index, .. } => index,
            Outcome::Failed | Outcome::Unknown => usize::MAX,
        }
    }
}

fn short(h: &blake3::Hash) -> String {
    h.to_hex()[..12].to_string()
}

/// The writes of a history grouped by exact byte range, with the ranges that partly overlap
/// another (which whole-range hashes cannot judge).
struct WriteRanges {
    ranges: BTreeMap<(u64, u64), Vec<WriteRec>>,
    overlapping: BTreeSet<(u64, u64)>,
    violations: Vec<String>,
    notes: Vec<String>,
}

fn write_ranges(history: &History) -> WriteRanges {
    let ops = history.ops();
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    let mut ranges: BTreeMap<(u64, u64), Vec<WriteRec>> = BTreeMap::new();

    for pair in history.pairs() {
        let invoke = &ops[pair.invoke];
        if invoke.f != OpFn::Write {
            continue;
        }
        let completion = pair.completion.map(|i| &ops[i]);
        let outcome = match completion {
            Some(c) if c.kind == OpKind::Ok => Outcome::Acked {
                index: pair.completion.unwrap_or(usize::MAX),
                time_ms: c.time_ms,
            },
            Some(c) if c.kind == OpKind::Fail => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        let field = |f: fn(&crate::history::Op) -> Option<u64>| {
            f(invoke).or_else(|| completion.and_then(f))
        };
        let (Some(offset), Some(length)) = (field(|o| o.offset), field(|o| o.length)) else {
            notes.push(format!(
                "write invoked at history index {} has no offset/length; skipped",
                pair.invoke
            ));
            continue;
        };
        let hash_text = invoke
            .value_hash
            .as_deref()
            .or_else(|| completion.and_then(|c| c.value_hash.as_deref()));
        let hash = hash_text.and_then(|t| blake3::Hash::from_hex(t).ok());
        if hash.is_none() && matches!(outcome, Outcome::Acked { .. }) {
            violations.push(format!(
                "acknowledged write at offset {offset} length {length} (history index {}) \
                 has no valid value_hash, so it cannot be verified",
                pair.invoke
            ));
        }
        let site = invoke
            .site
            .clone()
            .or_else(|| completion.and_then(|c| c.site.clone()));
        ranges.entry((offset, length)).or_default().push(WriteRec {
            process: invoke.process,
            invoke: pair.invoke,
            outcome,
            hash,
            site,
        });
    }

    // Ranges that partly overlap a different range.
    let keys: Vec<(u64, u64)> = ranges.keys().copied().collect();
    let mut overlapping = BTreeSet::new();
    for (i, &(off_a, len_a)) in keys.iter().enumerate() {
        let end_a = off_a.saturating_add(len_a);
        for &(off_b, len_b) in &keys[i + 1..] {
            if off_b >= end_a {
                break;
            }
            overlapping.insert((off_a, len_a));
            overlapping.insert((off_b, len_b));
        }
    }
    if !overlapping.is_empty() {
        notes.push(format!(
            "{} block ranges partly overlap other ranges and were not checked",
            overlapping.len()
        ));
    }

    WriteRanges {
        ranges,
        overlapping,
        violations,
        notes,
    }
}

/// Checks that no acknowledged write is missing from the final volume.
///
/// Writes are grouped by exact byte range (offset, length). For each range the final content
/// must equal the value of some write that may legitimately be last: one that did not `fail`
/// and that no *definite* write followed (invoked after it completed). In `Sync` mode every
/// `ok` write is definite. In `Async` mode an `ok` whose acknowledgement falls within
/// `reported_rpo_before_failure_ms` before `failure_time_ms` may be lost, so it is treated like
/// an `info` write (it may or may not be there). Ranges with no definite write are skipped
/// (their content may still be the initial one). Ranges that partly overlap a different range
/// cannot be judged by whole-range hashes and are skipped with a note.
///
/// `final_blocks(offset, length)` returns the blake3 of the final content of that range.
pub fn lost_acknowledged_writes(
    history: &History,
    final_blocks: &dyn Fn(u64, u64) -> blake3::Hash,
    mode: ReplicationMode,
    reported_rpo_before_failure_ms: u64,
    failure_time_ms: u64,
) -> Verdict {
    const NAME: &str = "lost_acknowledged_writes";
    let WriteRanges {
        ranges,
        overlapping,
        mut violations,
        mut notes,
    } = write_ranges(history);

    let window_start = failure_time_ms.saturating_sub(reported_rpo_before_failure_ms);
    let definite = |w: &WriteRec| match (w.outcome, mode) {
        (Outcome::Acked { .. }, ReplicationMode::Sync) => true,
        (Outcome::Acked { time_ms, .. }, ReplicationMode::Async) => {
            !(time_ms >= window_start && time_ms <= failure_time_ms)
        }
        _ => false,
    };

    let mut checked = 0usize;
    let mut without_definite = 0usize;
    for ((offset, length), writes) in &ranges {
        if overlapping.contains(&(*offset, *length)) {
            continue;
        }
        if !writes.iter().any(definite) {
            without_definite += 1;
            continue;
        }
        checked += 1;
        // A write may be last when it did not fail and no definite write began after it ended.
        let may_be_last = |x: &WriteRec| {
            x.outcome != Outcome::Failed
                && !writes
                    .iter()
                    .any(|y| definite(y) && x.end() != usize::MAX && y.invoke > x.end())
        };
        let allowed: Vec<&WriteRec> = writes.iter().filter(|x| may_be_last(x)).collect();
        let actual = final_blocks(*offset, *length);
        if allowed.iter().any(|x| x.hash == Some(actual)) {
            continue;
        }
        let lost: Vec<String> = writes
            .iter()
            .filter(|w| definite(w) && may_be_last(w))
            .map(|w| {
                let at = match w.outcome {
                    Outcome::Acked { time_ms, .. } => time_ms,
                    _ => 0,
                };
                format!(
                    "process {} acked at {at} ms (hash {})",
                    w.process,
                    w.hash.as_ref().map(short).unwrap_or_else(|| "?".into())
                )
            })
            .collect();
        violations.push(format!(
            "block range offset {offset} length {length}: final content {} is none of the \
             {} values that may be last; lost acknowledged write(s): {}",
            short(&actual),
            allowed.len(),
            lost.join(", ")
        ));
    }
    notes.push(format!(
        "{checked} ranges checked, {without_definite} without a definite acknowledged write"
    ));
    Verdict::new(NAME, violations, notes)
}

/// Checks that on failback the old primary's unreplicated tail was quarantined, not dropped.
///
/// A range is in the tail when `old_site` acknowledged a write to it, no other site ever wrote
/// it, and the final volume holds none of the old site's values that may be last (as in
/// [`lost_acknowledged_writes`]): the old primary had a value the new primary never got. Each
/// such range must be found in the quarantine with one of those values;
/// `quarantined(offset, length)` gives the blake3 of every copy of the range the quarantine
/// files hold. Returns the verdict and how many tail ranges there were (a run with none shows
/// nothing about quarantine).
pub fn tail_quarantined(
    history: &History,
    old_site: &str,
    final_blocks: &dyn Fn(u64, u64) -> blake3::Hash,
    quarantined: &dyn Fn(u64, u64) -> Vec<blake3::Hash>,
) -> (Verdict, usize) {
    let WriteRanges {
        ranges,
        overlapping,
        mut violations,
        mut notes,
    } = write_ranges(history);
    let mut tail = 0usize;
    let mut kept = 0usize;
    for ((offset, length), writes) in &ranges {
        if overlapping.contains(&(*offset, *length)) {
            continue;
        }
        let ours = |w: &WriteRec| w.site.as_deref() == Some(old_site);
        if writes
            .iter()
            .any(|w| !ours(w) && w.outcome != Outcome::Failed)
            || !writes
                .iter()
                .any(|w| ours(w) && matches!(w.outcome, Outcome::Acked { .. }))
        {
            continue;
        }
        let may_be_last = |x: &WriteRec| {
            x.outcome != Outcome::Failed
                && !writes.iter().any(|y| {
                    matches!(y.outcome, Outcome::Acked { .. })
                        && x.end() != usize::MAX
                        && y.invoke > x.end()
                })
        };
        let last: Vec<blake3::Hash> = writes
            .iter()
            .filter(|w| may_be_last(w))
            .filter_map(|w| w.hash)
            .collect();
        if last.contains(&final_blocks(*offset, *length)) {
            continue;
        }
        tail += 1;
        let copies = quarantined(*offset, *length);
        if copies.iter().any(|h| last.contains(h)) {
            kept += 1;
            continue;
        }
        violations.push(format!(
            "block range offset {offset} length {length}: {old_site} acknowledged a value the \
             final volume does not hold and the quarantine does not keep it ({} copies of the \
             range there, none of the {} values that may be last)",
            copies.len(),
            last.len()
        ));
    }
    notes.push(format!(
        "{tail} ranges of {old_site}'s unreplicated tail, {kept} of them found in quarantine"
    ));
    (Verdict::new("tail_quarantined", violations, notes), tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;
    use proptest::prelude::*;

    const B: u64 = 4096;

    fn data(tag: u8) -> Vec<u8> {
        vec![tag; B as usize]
    }

    /// A volume map for `final_blocks`: offset -> data tag; 0 = never written.
    fn finals(map: &[(u64, u8)]) -> impl Fn(u64, u64) -> blake3::Hash + '_ {
        move |offset, len| {
            let tag = map
                .iter()
                .find(|(o, _)| *o == offset)
                .map(|(_, t)| *t)
                .unwrap_or(0);
            blake3::hash(&vec![tag; len as usize])
        }
    }

    struct H {
        h: History,
        t: u64,
    }

    impl H {
        fn new() -> Self {
            Self {
                h: History::new(),
                t: 0,
            }
        }
        fn ev(&mut self, process: u64, kind: OpKind, offset: u64, tag: u8) -> &mut Self {
            self.t += 10;
            self.h
                .append(Op::write(process, kind, offset, &data(tag), self.t));
            self
        }
        fn at(&mut self, t: u64) -> &mut Self {
            self.t = t - 10;
            self
        }
    }

    fn lost(h: &History, map: &[(u64, u8)]) -> Verdict {
        lost_acknowledged_writes(h, &finals(map), ReplicationMode::Sync, 0, 0)
    }

    /// Writes labelled with a site (the tail checker tells sites apart).
    fn site_ev(h: &mut H, site: &str, kind: OpKind, offset: u64, tag: u8) {
        h.t += 10;
        h.h.append(Op::write(1, kind, offset, &data(tag), h.t).with_site(site));
    }

    #[test]
    fn an_unreplicated_tail_missing_from_quarantine_is_caught() {
        let mut h = H::new();
        // hanoi (old primary) writes 1 at 0 and 2 at B; 3 at 2B is also its, replicated.
        for (off, tag) in [(0, 1), (B, 2), (2 * B, 3)] {
            site_ev(&mut h, "hanoi", OpKind::Invoke, off, tag);
            site_ev(&mut h, "hanoi", OpKind::Ok, off, tag);
        }
        // After the failover hcm writes 9 at 3B.
        site_ev(&mut h, "hcm", OpKind::Invoke, 3 * B, 9);
        site_ev(&mut h, "hcm", OpKind::Ok, 3 * B, 9);
        // The final volume lacks hanoi's writes at 0 and B (the tail), holds 3 and 9.
        let fin = finals(&[(2 * B, 3), (3 * B, 9)]);
        let none = |_: u64, _: u64| Vec::new();
        let (v, tail) = tail_quarantined(&h.h, "hanoi", &fin, &none);
        assert_eq!(tail, 2);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        // Only block 0 kept, with the wrong value: still caught, for both.
        let wrong = |o: u64, l: u64| {
            if o == 0 {
                vec![blake3::hash(&vec![7u8; l as usize])]
            } else {
                Vec::new()
            }
        };
        let (v, _) = tail_quarantined(&h.h, "hanoi", &fin, &wrong);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        // Both kept with hanoi's values: passes.
        let kept = |o: u64, l: u64| {
            let tag = if o == 0 { 1u8 } else { 2 };
            vec![blake3::hash(&vec![tag; l as usize])]
        };
        let (v, tail) = tail_quarantined(&h.h, "hanoi", &fin, &kept);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(tail, 2);
        // A range the new primary also wrote is not hanoi's tail to keep.
        site_ev(&mut h, "hcm", OpKind::Invoke, 0, 8);
        site_ev(&mut h, "hcm", OpKind::Ok, 0, 8);
        let (v, tail) = tail_quarantined(&h.h, "hanoi", &finals(&[(0, 8), (2 * B, 3)]), &none);
        assert_eq!((tail, v.violations.len()), (1, 1), "{:?}", v.violations);
    }

    #[test]
    fn acknowledged_write_missing_from_final_state_is_caught() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(1, OpKind::Invoke, B, 2).ev(1, OpKind::Ok, B, 2);
        let v = lost(&h.h, &[(0, 1)]);
        assert!(!v.ok);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("offset 4096"),
            "{:?}",
            v.violations
        );
        assert!(lost(&h.h, &[(0, 1), (B, 2)]).ok);
    }

    #[test]
    fn later_write_to_same_block_replaces_the_earlier_one() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(2, OpKind::Invoke, 0, 2).ev(2, OpKind::Ok, 0, 2);
        assert!(lost(&h.h, &[(0, 2)]).ok);
        // Holding the older value means the newer acknowledged write was lost.
        let v = lost(&h.h, &[(0, 1)]);
        assert!(!v.ok);
        assert!(v.violations[0].contains("process 2"), "{:?}", v.violations);
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(2, OpKind::Invoke, 0, 2);
        h.ev(1, OpKind::Ok, 0, 1).ev(2, OpKind::Ok, 0, 2);
        assert!(lost(&h.h, &[(0, 1)]).ok);
        assert!(lost(&h.h, &[(0, 2)]).ok);
        assert!(!lost(&h.h, &[(0, 3)]).ok);
        assert!(!lost(&h.h, &[]).ok);
    }

    #[test]
    fn indeterminate_write_may_or_may_not_be_present() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(2, OpKind::Invoke, 0, 2).ev(2, OpKind::Info, 0, 2);
        h.ev(3, OpKind::Invoke, 0, 3); // never completed
        assert!(lost(&h.h, &[(0, 1)]).ok);
        assert!(lost(&h.h, &[(0, 2)]).ok);
        assert!(lost(&h.h, &[(0, 3)]).ok);
        assert!(!lost(&h.h, &[(0, 9)]).ok);
    }

    #[test]
    fn failed_write_must_not_be_the_final_content() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(2, OpKind::Invoke, 0, 2).ev(2, OpKind::Fail, 0, 2);
        assert!(lost(&h.h, &[(0, 1)]).ok);
        assert!(!lost(&h.h, &[(0, 2)]).ok);
    }

    #[test]
    fn range_with_only_unacknowledged_writes_is_not_judged() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Info, 0, 1);
        let v = lost(&h.h, &[(0, 7)]);
        assert!(v.ok);
        assert!(
            v.notes.iter().any(|n| n.contains("1 without")),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn async_mode_allows_loss_only_within_the_reported_rpo() {
        let mut h = H::new();
        h.at(100)
            .ev(1, OpKind::Invoke, 0, 1)
            .ev(1, OpKind::Ok, 0, 1);
        h.at(940)
            .ev(1, OpKind::Invoke, 0, 2)
            .ev(1, OpKind::Ok, 0, 2); // acked at 950
        let check = |rpo, map: &[(u64, u8)]| {
            lost_acknowledged_writes(&h.h, &finals(map), ReplicationMode::Async, rpo, 1000)
        };
        assert!(
            check(100, &[(0, 1)]).ok,
            "write at 950 is within 100 ms of 1000"
        );
        assert!(!check(10, &[(0, 1)]).ok, "write at 950 is older than 10 ms");
        assert!(check(10, &[(0, 2)]).ok);
        // The write acknowledged at 110 is outside any small window: losing both is a violation.
        assert!(!check(100, &[]).ok);
        // Sync mode never allows it.
        assert!(
            !lost_acknowledged_writes(&h.h, &finals(&[(0, 1)]), ReplicationMode::Sync, 100, 1000)
                .ok
        );
    }

    #[test]
    fn acknowledged_write_without_hash_is_a_violation() {
        let mut h = History::new();
        h.append(Op::new(1, OpKind::Invoke, OpFn::Write, 0).with_range(0, B));
        h.append(Op::new(1, OpKind::Ok, OpFn::Write, 1).with_range(0, B));
        assert!(!lost(&h, &[]).ok);
    }

    #[test]
    fn partly_overlapping_ranges_are_noted_not_judged() {
        let mut h = History::new();
        h.append(Op::write(1, OpKind::Invoke, 0, &data(1), 0));
        h.append(Op::write(1, OpKind::Ok, 0, &data(1), 1));
        h.append(Op::write(1, OpKind::Invoke, B / 2, &data(2), 2));
        h.append(Op::write(1, OpKind::Ok, B / 2, &data(2), 3));
        let v = lost(&h, &[]);
        assert!(v.ok);
        assert!(v.notes[0].contains("2 block ranges"), "{:?}", v.notes);
    }

    proptest! {
        /// Sequential writes (one at a time) with the final state holding the last write of
        /// each block always pass; changing one block's final content is always caught.
        #[test]
        fn sequential_history_passes_and_any_lost_block_is_caught(
            writes in proptest::collection::vec((0u64..8, 1u8..=255), 1..40),
            victim in any::<proptest::sample::Index>(),
        ) {
            let mut h = History::new();
            let mut last: BTreeMap<u64, u8> = BTreeMap::new();
            for (i, (block, tag)) in writes.iter().enumerate() {
                let t = i as u64 * 2;
                h.append(Op::write(1, OpKind::Invoke, block * B, &data(*tag), t));
                h.append(Op::write(1, OpKind::Ok, block * B, &data(*tag), t + 1));
                last.insert(block * B, *tag);
            }
            let map: Vec<(u64, u8)> = last.iter().map(|(o, t)| (*o, *t)).collect();
            prop_assert!(lost(&h, &map).ok);
            let mut broken = map.clone();
            let i = victim.index(broken.len());
            broken[i].1 = 0; // tag 0 is never written
            let v = lost(&h, &broken);
            prop_assert!(!v.ok);
            prop_assert_eq!(v.violations.len(), 1);
        }
    }
}
