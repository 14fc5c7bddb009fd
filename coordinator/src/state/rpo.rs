//! RPO history: commits an RPO sample into the group's bounded ring and decides when the audit
//! chain hears of it. Pure.
//!
//! With `rpo_audit_every_ms` set (every cluster bootstrapped by this build), a group's RPO is
//! audited as `rpo_summary` records, each summarizing the samples since the group's previous
//! RPO record (count, samples over target, min, max, last, time over target):
//! - at once when a sample crosses the target (over → record; back within → record), so the
//!   chain shows the start and the end of every breach at the sample that saw it;
//! - otherwise at most once per `rpo_audit_every_ms` per group (at the first sample at least
//!   that long after the previous record), so the worst RPO of every interval is in the chain;
//! - at the first sample of a group, so the chain shows that sampling began.
//!
//! The chain grows by about one record per group per interval instead of one per sample (the
//! sample interval is 5 s by default, the audit interval 60 s). Without the setting (states from
//! before it), every sample is one `rpo_sample` record, as it always was.

use super::event::Event;
use super::machine::{get_group, group_mut, State};
use super::model::{RpoSample, RpoWindow, COORDINATOR_ACTOR, RPO_RING_CAPACITY};
use super::rejection::Rejection;
use crate::audit::AuditKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Why an `rpo_summary` record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpoAuditReason {
    /// The group's first sample.
    First,
    /// The sample went over the target (the previous one was within).
    Over,
    /// The sample came back within the target (the previous one was over).
    Within,
    /// The audit interval passed since the group's previous RPO record.
    Interval,
}

/// The content of one `rpo_summary` record: the samples since the group's previous RPO record,
/// the current one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpoSummary {
    /// Why it was written now.
    pub reason: RpoAuditReason,
    /// Samples summarized (at least 1).
    pub samples: u64,
    /// Of those, how many were over the target.
    pub over_samples: u64,
    /// When the first of them was taken (leader ms).
    pub since_ms: i64,
    /// Smallest RPO.
    pub min_ms: u64,
    /// Largest RPO: the worst of the interval.
    pub max_ms: u64,
    /// The RPO of the last sample (the one taken at the record's time).
    pub last_ms: u64,
    /// The target the samples were judged by.
    pub target_ms: u64,
    /// Time over target since the previous record (a gap between two samples counts as over
    /// when the earlier sample was over).
    pub over_target_ms: u64,
    /// Whether the last sample is over the target (the group's state as the chain now shows it).
    pub over_target: bool,
}

impl RpoSummary {
    /// The record's detail (integers, strings and booleans only, so it hashes stably).
    pub fn detail(&self) -> Value {
        json!({
            "reason": self.reason,
            "samples": self.samples,
            "over_samples": self.over_samples,
            "since_ms": self.since_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "last_ms": self.last_ms,
            "target_ms": self.target_ms,
            "over_target_ms": self.over_target_ms,
            "over_target": self.over_target,
        })
    }
}

/// Decides what one RPO sample does to a group's audit window: the window after it, and the
/// summary to record now, if any (see the module doc for when). Pure and total: a sample older
/// than the previous one counts no time over target.
pub fn rpo_audit_step(
    prev: Option<&RpoWindow>,
    at_ms: i64,
    rpo_ms: u64,
    target_ms: u64,
    every_ms: u64,
) -> (RpoWindow, Option<RpoSummary>) {
    let over = rpo_ms > target_ms;
    let (mut w, reason) = match prev {
        None => (RpoWindow::default(), Some(RpoAuditReason::First)),
        Some(p) => {
            let mut w = *p;
            if p.last_over {
                let gap = at_ms.saturating_sub(p.last_at_ms).max(0);
                w.over_target_ms = w.over_target_ms.saturating_add(gap.unsigned_abs());
            }
            let since_record = at_ms.saturating_sub(p.recorded_ms).max(0).unsigned_abs();
            let reason = if over && !p.last_over {
                Some(RpoAuditReason::Over)
            } else if !over && p.last_over {
                Some(RpoAuditReason::Within)
            } else if since_record >= every_ms {
                Some(RpoAuditReason::Interval)
            } else {
                None
            };
            (w, reason)
        }
    };
    if w.samples == 0 {
        w.since_ms = at_ms;
        w.min_ms = rpo_ms;
        w.max_ms = rpo_ms;
    } else {
        w.min_ms = w.min_ms.min(rpo_ms);
        w.max_ms = w.max_ms.max(rpo_ms);
    }
    w.samples = w.samples.saturating_add(1);
    w.over_samples = w.over_samples.saturating_add(u64::from(over));
    w.last_at_ms = at_ms;
    w.last_over = over;
    let Some(reason) = reason else {
        return (w, None);
    };
    let summary = RpoSummary {
        reason,
        samples: w.samples,
        over_samples: w.over_samples,
        since_ms: w.since_ms,
        min_ms: w.min_ms,
        max_ms: w.max_ms,
        last_ms: rpo_ms,
        target_ms,
        over_target_ms: w.over_target_ms,
        over_target: over,
    };
    let next = RpoWindow {
        recorded_ms: at_ms,
        last_at_ms: at_ms,
        last_over: over,
        ..RpoWindow::default()
    };
    (next, Some(summary))
}

pub(super) fn rpo_sample(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    rpo_ms: u64,
) -> Result<(), Rejection> {
    get_group(state, group)?;
    let every_ms = state.settings.and_then(|s| s.rpo_audit_every_ms);
    let g = group_mut(state, group)?;
    if g.rpo_samples.len() >= RPO_RING_CAPACITY {
        g.rpo_samples.pop_front();
    }
    g.rpo_samples.push_back(RpoSample { at_ms: now, rpo_ms });
    let target = g.rpo_target_ms;
    let over_target = rpo_ms > target;
    ev.push(Event::RpoSampled {
        group: group.to_string(),
        rpo_ms,
        over_target,
    });
    let (kind, detail) = match every_ms {
        None => (
            AuditKind::RpoSample,
            json!({"rpo_ms": rpo_ms, "target_ms": target, "over_target": over_target}),
        ),
        Some(every_ms) => {
            let (window, summary) =
                rpo_audit_step(g.rpo_window.as_ref(), now, rpo_ms, target, every_ms);
            g.rpo_window = Some(window);
            let Some(summary) = summary else {
                return Ok(());
            };
            (AuditKind::RpoSummary, summary.detail())
        }
    };
    state.record_audit(ev, now, COORDINATOR_ACTOR, kind, Some(group), detail);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TARGET: u64 = 1_000;
    const EVERY: u64 = 60_000;

    /// Runs samples `(at_ms, rpo_ms)` through the decision; returns the records (with the index
    /// of the sample that wrote each) and the window left.
    fn run(samples: &[(i64, u64)], every: u64) -> (Vec<(usize, RpoSummary)>, Option<RpoWindow>) {
        let mut w: Option<RpoWindow> = None;
        let mut out = Vec::new();
        for (i, &(at, rpo)) in samples.iter().enumerate() {
            let (next, s) = rpo_audit_step(w.as_ref(), at, rpo, TARGET, every);
            w = Some(next);
            if let Some(s) = s {
                out.push((i, s));
            }
        }
        (out, w)
    }

    #[test]
    fn first_sample_is_recorded_then_one_summary_per_interval() {
        // 5 s samples within target for 3 minutes: the first, then one every 60 s.
        let samples: Vec<(i64, u64)> = (0..37).map(|k| (k * 5_000, 100 + k as u64)).collect();
        let (recs, w) = run(&samples, EVERY);
        let at: Vec<i64> = recs.iter().map(|(i, _)| samples[*i].0).collect();
        assert_eq!(at, vec![0, 60_000, 120_000, 180_000]);
        assert_eq!(recs[0].1.reason, RpoAuditReason::First);
        let second = recs[1].1;
        assert_eq!(second.reason, RpoAuditReason::Interval);
        assert_eq!(second.samples, 12, "5 s .. 60 s");
        assert_eq!(
            (second.min_ms, second.max_ms, second.last_ms),
            (101, 112, 112)
        );
        assert_eq!(second.since_ms, 5_000);
        assert_eq!((second.over_samples, second.over_target_ms), (0, 0));
        assert_eq!(w.unwrap().samples, 0);
    }

    #[test]
    fn a_breach_is_recorded_when_it_starts_and_when_it_ends() {
        let samples = [
            (0, 100),
            (5_000, 200),
            (10_000, 5_000), // over
            (15_000, 9_000), // still over, worst
            (20_000, 3_000), // still over
            (25_000, 400),   // back within
            (30_000, 100),
        ];
        let (recs, w) = run(&samples, EVERY);
        let reasons: Vec<(usize, RpoAuditReason)> =
            recs.iter().map(|(i, s)| (*i, s.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                (0, RpoAuditReason::First),
                (2, RpoAuditReason::Over),
                (5, RpoAuditReason::Within),
            ]
        );
        let over = recs[1].1;
        assert_eq!((over.samples, over.over_samples), (2, 1));
        assert_eq!((over.max_ms, over.last_ms), (5_000, 5_000));
        assert!(over.over_target);
        let within = recs[2].1;
        assert_eq!((within.samples, within.over_samples), (3, 2));
        assert_eq!(
            (within.min_ms, within.max_ms, within.last_ms),
            (400, 9_000, 400)
        );
        assert_eq!(within.over_target_ms, 15_000, "10 s .. 25 s over");
        assert!(!within.over_target);
        assert_eq!(
            w.unwrap().samples,
            1,
            "the 30 s sample waits for the interval"
        );
    }

    #[test]
    fn a_long_breach_is_summarized_every_interval_with_its_worst() {
        let mut samples = vec![(0, 100)];
        samples.extend((1..=30).map(|k| (k * 5_000, 2_000 + (k as u64 % 7) * 1_000)));
        let (recs, _) = run(&samples, EVERY);
        assert_eq!(recs[1].1.reason, RpoAuditReason::Over);
        let interval = recs[2].1;
        assert_eq!(interval.reason, RpoAuditReason::Interval);
        assert_eq!(interval.samples, 12);
        assert_eq!(interval.over_samples, 12);
        assert_eq!(interval.over_target_ms, 60_000);
        assert_eq!(interval.max_ms, 8_000);
        assert!(interval.over_target);
    }

    #[test]
    fn a_sample_from_the_past_counts_no_time() {
        let (w, _) = rpo_audit_step(None, 10_000, 5_000, TARGET, EVERY);
        let (w, s) = rpo_audit_step(Some(&w), 4_000, 6_000, TARGET, EVERY);
        assert_eq!(s, None);
        assert_eq!(w.over_target_ms, 0);
        assert_eq!(w.max_ms, 6_000);
    }

    fn samples_strategy() -> impl Strategy<Value = Vec<(i64, u64)>> {
        proptest::collection::vec((0i64..20_000, 0u64..3_000), 1..300).prop_map(|steps| {
            let mut t = 0i64;
            steps
                .into_iter()
                .map(|(dt, rpo)| {
                    t += dt;
                    (t, rpo)
                })
                .collect()
        })
    }

    proptest! {
        /// No breach is ever missing from the chain, and the records account for every sample:
        /// the recorded summaries partition the samples up to the last record (counts, over
        /// counts, min and max exact); every sample that went over the target was recorded at
        /// once; any over-target sample not yet in a record follows a record that shows the
        /// group over target.
        #[test]
        fn no_breach_is_missing_and_every_sample_is_accounted(
            samples in samples_strategy(),
            every in prop_oneof![Just(0u64), 1u64..100_000],
        ) {
            let (recs, w) = run(&samples, every);
            let mut start = 0usize;
            for (i, s) in &recs {
                let part = &samples[start..=*i];
                prop_assert_eq!(s.samples, part.len() as u64);
                prop_assert_eq!(s.since_ms, part[0].0);
                prop_assert_eq!(s.max_ms, part.iter().map(|p| p.1).max().unwrap_or(0));
                prop_assert_eq!(s.min_ms, part.iter().map(|p| p.1).min().unwrap_or(0));
                let over = part.iter().filter(|p| p.1 > TARGET).count() as u64;
                prop_assert_eq!(s.over_samples, over);
                prop_assert_eq!(s.last_ms, samples[*i].1);
                start = i + 1;
            }
            for k in 0..samples.len() {
                let over = samples[k].1 > TARGET;
                let was_over = k > 0 && samples[k - 1].1 > TARGET;
                if over && !was_over {
                    prop_assert!(recs.iter().any(|(i, s)| *i == k && s.over_target),
                        "sample {} crossed the target unrecorded", k);
                }
            }
            let pending = &samples[start..];
            if pending.iter().any(|p| p.1 > TARGET) {
                prop_assert!(recs.last().is_some_and(|(_, s)| s.over_target));
            }
            prop_assert_eq!(w.map_or(0, |w| w.samples), pending.len() as u64);
            // The total time over target is what the samples say.
            let total: u64 = samples.windows(2)
                .filter(|p| p[0].1 > TARGET)
                .map(|p| (p[1].0 - p[0].0) as u64)
                .sum();
            let recorded: u64 = recs.iter().map(|(_, s)| s.over_target_ms).sum();
            prop_assert_eq!(recorded + w.map_or(0, |w| w.over_target_ms), total);
        }

        /// Outside crossings, a group writes at most one record per interval.
        #[test]
        fn records_are_bounded_by_crossings_and_intervals(samples in samples_strategy()) {
            let every = 60_000u64;
            let (recs, _) = run(&samples, every);
            let mut last: Option<i64> = None;
            for (i, s) in &recs {
                let at = samples[*i].0;
                if s.reason == RpoAuditReason::Interval {
                    prop_assert!(at - last.unwrap_or(i64::MIN / 2) >= every as i64);
                }
                last = Some(at);
            }
            let crossings = samples.windows(2)
                .filter(|p| (p[0].1 > TARGET) != (p[1].1 > TARGET))
                .count();
            let span = (samples[samples.len() - 1].0 - samples[0].0) as u64;
            prop_assert!(recs.len() as u64 <= 1 + crossings as u64 + span / every + 1);
        }
    }
}
