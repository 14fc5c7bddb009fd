//! Drill cadence in the evidence: for each group with a `drill_every`, the drills the window
//! holds (from the `drill` start records: when, who, whether the schedule started it, how it
//! ended) and whether every gap between them stayed within `drill_every` plus the grace, or
//! which gap missed it ([`crate::cadence::cadence`]). Pure: records and options in.

use super::fields::s;
use super::model::{CadenceDrill, GroupCadence, Run, RunKind};
use crate::audit::{AuditKind, AuditRecord};
use crate::cadence;
use serde_json::Value;
use std::collections::BTreeMap;

/// The cadence of every group of `drill_every_ms` over the window `[from_ms, to_ms]` of
/// `records` (`runs` assembled from the same records give the outcomes). A group created by a
/// bootstrap record inside the window counts from that record.
pub fn drill_cadence(
    records: &[AuditRecord],
    runs: &[Run],
    drill_every_ms: &BTreeMap<String, u64>,
    from_ms: i64,
    to_ms: i64,
) -> Vec<GroupCadence> {
    drill_every_ms
        .iter()
        .map(|(group, &every_ms)| {
            let from = created_at(records, group).map_or(from_ms, |c| c.max(from_ms));
            let drills = drills_of(records, runs, group);
            let starts: Vec<i64> = drills.iter().map(|d| d.start_ms).collect();
            let c = cadence::cadence(&starts, every_ms, from, to_ms);
            GroupCadence {
                group: group.clone(),
                every_ms,
                grace_ms: c.grace_ms,
                from_ms: from,
                to_ms,
                drills: drills
                    .into_iter()
                    .filter(|d| (from..=to_ms).contains(&d.start_ms))
                    .collect(),
                gaps: c.gaps,
                held: c.held,
            }
        })
        .collect()
}

/// When a bootstrap record of the window added `group`.
fn created_at(records: &[AuditRecord], group: &str) -> Option<i64> {
    records
        .iter()
        .filter(|r| r.kind == AuditKind::Bootstrap)
        .find(|r| {
            r.detail
                .get("groups_added")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|g| s(g, "name").as_deref() == Some(group)))
        })
        .map(|r| r.at_ms)
}

/// The drills of `group` started in the records, in chain order.
fn drills_of(records: &[AuditRecord], runs: &[Run], group: &str) -> Vec<CadenceDrill> {
    records
        .iter()
        .filter(|r| {
            r.kind == AuditKind::Drill
                && r.group.as_deref() == Some(group)
                && matches!(s(&r.detail, "phase").as_deref(), Some("start" | "started"))
        })
        .map(|r| {
            let run = runs
                .iter()
                .find(|x| x.kind == RunKind::Drill && x.record_indexes.contains(&r.index));
            CadenceDrill {
                run_id: s(&r.detail, "run_id")
                    .or_else(|| run.map(|x| x.id.clone()))
                    .unwrap_or_else(|| format!("drill-{}", r.index)),
                record_index: r.index,
                start_ms: r.at_ms,
                start: super::iso_ms(r.at_ms),
                actor: r.actor.clone(),
                scheduled: r.actor == crate::state::COORDINATOR_ACTOR
                    && s(&r.detail, "reason").is_some_and(|x| x.starts_with("scheduled:")),
                outcome: run.and_then(|x| x.outcome.clone()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::audit::AuditChain;
    use serde_json::json;

    /// A chain: the group created at 0, drills started at the given times (scheduled ones by
    /// the coordinator with a `scheduled:` reason), each ended ok 100 ms later.
    fn chain(drills: &[(i64, bool)]) -> Vec<AuditRecord> {
        let mut c = AuditChain::default();
        c.append(
            0,
            "ops",
            AuditKind::Bootstrap,
            None,
            json!({"groups_added": [{"name": "vol"}]}),
        );
        for (k, (at, scheduled)) in drills.iter().enumerate() {
            let id = format!("drill-vol-{k}");
            let mut start = json!({"run_id": id, "runbook": "drill", "phase": "start"});
            start["reason"] = json!("scheduled: drill_every 10s, last drill at ...");
            // Only the coordinator's record is a scheduled drill; alice's claim is not.
            let actor = if *scheduled { "coordinator" } else { "alice" };
            c.append(*at, actor, AuditKind::Drill, Some("vol"), start);
            c.append(
                at + 100,
                "coordinator",
                AuditKind::Drill,
                Some("vol"),
                json!({"run_id": id, "runbook": "drill", "phase": "end", "status": "ok", "ok": true}),
            );
        }
        c.records().to_vec()
    }

    fn of(recs: &[AuditRecord], from: i64, to: i64) -> GroupCadence {
        let runs = super::super::assemble(recs, &BTreeMap::new()).runs;
        let every = BTreeMap::from([("vol".to_string(), 10_000u64)]);
        drill_cadence(recs, &runs, &every, from, to).remove(0)
    }

    #[test]
    fn the_evidence_shows_the_drills_and_that_the_cadence_held() {
        let recs = chain(&[(9_000, true), (19_500, true), (25_000, false)]);
        let c = of(&recs, 0, 30_000);
        assert!(c.held, "{c:?}");
        assert_eq!(c.drills.len(), 3);
        assert_eq!(
            c.drills.iter().map(|d| d.scheduled).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert_eq!(c.drills[0].actor, "coordinator");
        assert_eq!(c.drills[2].actor, "alice");
        assert_eq!(c.drills[0].run_id, "drill-vol-0");
        assert_eq!(c.drills[0].outcome.as_deref(), Some("ok"));
        assert_eq!((c.every_ms, c.grace_ms), (10_000, 1_000));
    }

    #[test]
    fn the_evidence_names_the_gap_that_missed_the_cadence() {
        let recs = chain(&[(9_000, true), (25_000, true)]);
        let c = of(&recs, 0, 30_000);
        assert!(!c.held);
        let missed: Vec<_> = c.gaps.iter().filter(|g| !g.held).collect();
        assert_eq!(missed.len(), 1, "{c:?}");
        assert_eq!((missed[0].from_ms, missed[0].to_ms), (9_000, 25_000));
        // Nothing after the last drill for longer than the bound: the window's end misses.
        let c = of(&chain(&[(9_000, true)]), 0, 30_000);
        let missed: Vec<_> = c.gaps.iter().filter(|g| !g.held).collect();
        assert_eq!(missed[0].between, "window-end");
    }
}
