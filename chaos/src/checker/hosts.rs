//! Checkers for the loss of one replicator host among several at a site: when each group of
//! the lost host could write again (its RTO as its application saw it), and whether the
//! groups of the other hosts kept their role and never stopped writing.
//!
//! Pure: over one group's history (every group has its own) and the status samples the caller
//! hands in.

use super::verdict::Verdict;
use crate::history::{History, OpFn, OpKind};

/// A group's role as one status showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleSample {
    /// When, in history time (ms).
    pub time_ms: u64,
    /// The primary site.
    pub primary: String,
    /// The replicator host serving the primary.
    pub host: String,
    /// The epoch.
    pub epoch: u64,
}

/// The acknowledged writes of a window and the longest time without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckGaps {
    /// Writes acknowledged in the window.
    pub acks: usize,
    /// The longest time without an acknowledgement: from the start of the window to the first,
    /// between two, or from the last to the end of the window.
    pub max_gap_ms: u64,
    /// When that gap ended.
    pub gap_end_ms: u64,
}

/// The acknowledged writes of `history` between `from_ms` and `until_ms` and the longest
/// gap between them, the window's edges counting as acknowledgements (so a writer that stops
/// for good shows its silence up to `until_ms`).
pub fn ack_gaps(history: &History, from_ms: u64, until_ms: u64) -> AckGaps {
    let mut acks: Vec<u64> = history
        .ops()
        .iter()
        .filter(|o| o.f == OpFn::Write && o.kind == OpKind::Ok)
        .map(|o| o.time_ms)
        .filter(|t| (from_ms..=until_ms).contains(t))
        .collect();
    acks.sort_unstable();
    let mut out = AckGaps {
        acks: acks.len(),
        ..AckGaps::default()
    };
    let mut last = from_ms;
    for t in acks
        .into_iter()
        .chain(std::iter::once(until_ms.max(from_ms)))
    {
        if t - last > out.max_gap_ms {
            out.max_gap_ms = t - last;
            out.gap_end_ms = t;
        }
        last = t;
    }
    out
}

/// Checks that a group's writes never stopped between `from_ms` and `until_ms`: no write
/// invoked in the window failed, ended unknown or never ended, and no gap between
/// acknowledgements ([`ack_gaps`]) was longer than `max_gap_ms`.
pub fn writes_never_stopped(
    history: &History,
    from_ms: u64,
    until_ms: u64,
    max_gap_ms: u64,
) -> Verdict {
    const NAME: &str = "writes_never_stopped";
    let ops = history.ops();
    let mut violations = Vec::new();
    let unacked: Vec<String> = history
        .pairs()
        .into_iter()
        .filter(|p| ops[p.invoke].f == OpFn::Write)
        .filter(|p| (from_ms..=until_ms).contains(&ops[p.invoke].time_ms))
        .filter_map(|p| match p.completion.map(|i| &ops[i]) {
            Some(c) if c.kind == OpKind::Ok => None,
            Some(c) => Some(format!("{:?} at {} ms", c.kind, c.time_ms).to_lowercase()),
            None => Some(format!(
                "invoked at {} ms, never answered",
                ops[p.invoke].time_ms
            )),
        })
        .collect();
    if !unacked.is_empty() {
        violations.push(format!(
            "{} writes not acknowledged: {}",
            unacked.len(),
            unacked
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let g = ack_gaps(history, from_ms, until_ms);
    if g.max_gap_ms > max_gap_ms {
        violations.push(format!(
            "no write acknowledged for {} ms (until {} ms), more than {max_gap_ms} ms",
            g.max_gap_ms, g.gap_end_ms
        ));
    }
    let notes = vec![format!(
        "{} writes acknowledged from {from_ms} to {until_ms} ms, longest gap {} ms (ending at {} ms)",
        g.acks, g.max_gap_ms, g.gap_end_ms
    )];
    Verdict::new(NAME, violations, notes)
}

/// How long after `failure_ms` the first write was acknowledged at `site` (the group's new
/// primary site): the RTO its application saw, or `None` when none was.
pub fn first_write_after(history: &History, failure_ms: u64, site: &str) -> Option<u64> {
    history
        .ops()
        .iter()
        .filter(|o| o.f == OpFn::Write && o.kind == OpKind::Ok && o.time_ms >= failure_ms)
        .find(|o| o.site.as_deref() == Some(site))
        .map(|o| o.time_ms - failure_ms)
}

/// Checks that a write was acknowledged at `site` within `target_ms` of `failure_ms`;
/// returns the verdict and the RTO measured ([`first_write_after`]).
pub fn rto_to_first_write(
    history: &History,
    failure_ms: u64,
    site: &str,
    target_ms: u64,
) -> (Verdict, Option<u64>) {
    const NAME: &str = "rto_to_first_write";
    let rto = first_write_after(history, failure_ms, site);
    let violations = match rto {
        None => vec![format!(
            "no write acknowledged at {site} after the failure at {failure_ms} ms"
        )],
        Some(r) if r > target_ms => vec![format!(
            "the first write at {site} was acknowledged {r} ms after the failure, target {target_ms} ms"
        )],
        Some(_) => Vec::new(),
    };
    (Verdict::new(NAME, violations, Vec::new()), rto)
}

/// Checks that every sample shows the role of `first` (primary site, primary host, epoch)
/// and that the audit chain holds no promotion of the group (`promotions`).
pub fn role_never_changed(
    first: &RoleSample,
    samples: &[RoleSample],
    promotions: usize,
) -> Verdict {
    const NAME: &str = "role_never_changed";
    let role = |s: &RoleSample| format!("primary {} on {} epoch {}", s.primary, s.host, s.epoch);
    let changed: Vec<String> = samples
        .iter()
        .filter(|s| (&s.primary, &s.host, s.epoch) != (&first.primary, &first.host, first.epoch))
        .map(|s| format!("{} at {} ms", role(s), s.time_ms))
        .collect();
    let mut violations = Vec::new();
    if samples.is_empty() {
        violations.push("no status sample to judge".to_owned());
    }
    if !changed.is_empty() {
        violations.push(format!(
            "{} of {} samples differ from {}: {}",
            changed.len(),
            samples.len(),
            role(first),
            changed
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if promotions > 0 {
        violations.push(format!("{promotions} promotions in the audit chain"));
    }
    let notes = vec![format!("{}: {} samples", role(first), samples.len())];
    Verdict::new(NAME, violations, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    /// A history of one writer: `(invoke ms, completion ms, kind, site)` per write.
    fn writes(w: &[(u64, u64, OpKind, &str)]) -> History {
        let mut h = History::new();
        let mut ops: Vec<Op> = Vec::new();
        for (i, &(at, end, kind, site)) in w.iter().enumerate() {
            let p = i as u64;
            let mut inv = Op::write(p, OpKind::Invoke, 4096 * p, b"x", 0);
            inv.time_ms = at;
            let mut done = Op::write(p, kind, 4096 * p, b"x", 0).with_site(site);
            done.time_ms = end;
            ops.push(inv);
            ops.push(done);
        }
        ops.sort_by_key(|o| o.time_ms);
        for o in ops {
            h.append(o);
        }
        h
    }

    #[test]
    fn the_longest_gap_counts_the_window_edges() {
        let h = writes(&[
            (100, 150, OpKind::Ok, "a"),
            (150, 300, OpKind::Ok, "a"),
            (300, 1200, OpKind::Ok, "a"),
        ]);
        assert_eq!(
            ack_gaps(&h, 0, 1300),
            AckGaps {
                acks: 3,
                max_gap_ms: 900,
                gap_end_ms: 1200
            }
        );
        // A writer that stopped for good: its silence runs to the end of the window.
        let g = ack_gaps(&h, 0, 5000);
        assert_eq!((g.max_gap_ms, g.gap_end_ms), (3800, 5000));
        // Nothing acknowledged: the whole window is one gap.
        assert_eq!(ack_gaps(&History::new(), 10, 2010).max_gap_ms, 2000);
    }

    #[test]
    fn writes_that_stall_or_fail_are_caught() {
        let steady = writes(&[
            (0, 200, OpKind::Ok, "a"),
            (200, 400, OpKind::Ok, "a"),
            (400, 600, OpKind::Ok, "a"),
        ]);
        let v = writes_never_stopped(&steady, 0, 700, 250);
        assert!(v.ok, "{:?}", v.violations);
        assert!(v.notes[0].contains("longest gap 200 ms"), "{:?}", v.notes);
        let v = writes_never_stopped(&steady, 0, 700, 150);
        assert!(v.violations[0].contains("for 200 ms"), "{:?}", v.violations);
        let failed = writes(&[
            (0, 100, OpKind::Ok, "a"),
            (100, 200, OpKind::Fail, "a"),
            (200, 300, OpKind::Info, "a"),
            (300, 400, OpKind::Ok, "a"),
        ]);
        let v = writes_never_stopped(&failed, 0, 400, 1000);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].starts_with("2 writes not acknowledged: fail at 200 ms, info at 300"),
            "{:?}",
            v.violations
        );
        // A write left without an answer is not acknowledged either.
        let mut open = steady.clone();
        let mut inv = Op::write(9, OpKind::Invoke, 0, b"y", 0);
        inv.time_ms = 650;
        open.append(inv);
        let v = writes_never_stopped(&open, 0, 700, 1000);
        assert!(v.violations[0].contains("never answered"), "{:?}", v);
        // Writes invoked outside the window are not judged.
        assert!(writes_never_stopped(&failed, 300, 400, 1000).ok);
    }

    #[test]
    fn the_rto_runs_to_the_first_write_at_the_new_site() {
        let h = writes(&[
            (0, 900, OpKind::Ok, "hanoi"),
            (1000, 3000, OpKind::Info, "hanoi"),
            (3100, 4200, OpKind::Ok, "hcm"),
            (4200, 4300, OpKind::Ok, "hcm"),
        ]);
        assert_eq!(first_write_after(&h, 1000, "hcm"), Some(3200));
        // An acknowledgement at the old site, before the failure, is no recovery.
        assert_eq!(first_write_after(&h, 1000, "hanoi"), None);
        let (v, rto) = rto_to_first_write(&h, 1000, "hcm", 5000);
        assert!(v.ok && rto == Some(3200));
        let (v, _) = rto_to_first_write(&h, 1000, "hcm", 3000);
        assert_eq!(
            v.violations,
            vec![
                "the first write at hcm was acknowledged 3200 ms after the failure, target 3000 ms"
            ]
        );
        let (v, rto) = rto_to_first_write(&h, 5000, "hcm", 3000);
        assert!(!v.ok && rto.is_none(), "{v:?}");
    }

    #[test]
    fn a_role_that_moved_or_a_promotion_is_caught() {
        let s = |t: u64, p: &str, h: &str, e: u64| RoleSample {
            time_ms: t,
            primary: p.into(),
            host: h.into(),
            epoch: e,
        };
        let first = s(0, "hanoi", "hanoi-rep-1", 2);
        let same = vec![
            s(100, "hanoi", "hanoi-rep-1", 2),
            s(250, "hanoi", "hanoi-rep-1", 2),
        ];
        assert!(role_never_changed(&first, &same, 0).ok);
        let v = role_never_changed(&first, &same, 1);
        assert_eq!(v.violations, vec!["1 promotions in the audit chain"]);
        for moved in [
            s(300, "hcm", "hcm-rep-2", 3),
            s(300, "hanoi", "hanoi-rep-1", 3),
            s(300, "hanoi", "hanoi-rep-2", 2),
        ] {
            let mut v2 = same.clone();
            v2.push(moved.clone());
            let v = role_never_changed(&first, &v2, 0);
            assert!(
                v.violations[0].starts_with("1 of 3 samples differ"),
                "{moved:?}: {:?}",
                v.violations
            );
        }
        assert!(!role_never_changed(&first, &[], 0).ok);
    }
}
