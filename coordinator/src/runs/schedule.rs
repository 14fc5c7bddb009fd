//! Drills on a schedule, on the leader: at every tick of the leader's background work, each
//! group with `drill_every` whose next drill is due ([`crate::cadence`]) gets its drill runbook
//! started as the coordinators, through the same start as an operator's drill
//! ([`super::admin::start_scheduled_drill`]: runbook load, plan, residency, one run per group)
//! plus the state's schedule gates. A refused start is logged, shown by status (the leader's
//! [`DrillRefusal`]) and tried again after [`cadence::retry_ms`].
//!
//! What is due comes from the replicated runs (the last drill's start), so a new leader or a
//! restarted one neither forgets nor starts twice: the command carries the last drill the
//! scheduler saw and the state refuses it once another drill has started. [`decide`] is pure;
//! [`tick`] only reads, proposes and logs.

use super::admin::start_scheduled_drill;
use crate::cadence;
use crate::evidence::derive::iso_ms;
use crate::handle::coordinator::{lock, Coordinator};
use crate::handle::live::DrillRefusal;
use crate::state::{Group, ScheduledDrill};
use tandem_core::config::HumanDuration;
use tracing::{info, warn};

/// What the scheduler does for one group at one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Not due yet (any refusal on record is over).
    NotDue,
    /// Due, but refused a moment ago: wait for the retry time.
    Wait,
    /// Due, and the group cannot drill now: why.
    Refuse(String),
    /// Due: start it.
    Start(ScheduledDrill),
}

/// What the scheduler knows of one group at `now_ms`.
pub(crate) struct Seen<'a> {
    /// The group in the replicated state.
    pub(crate) group: &'a Group,
    /// Start of its last drill.
    pub(crate) last_drill_ms: Option<i64>,
    /// A run of the group under way, if any.
    pub(crate) run_under_way: Option<&'a str>,
    /// When a refused start may be tried again, if one was refused.
    pub(crate) retry_at_ms: Option<i64>,
}

/// Decides what to do for a group with `drill_every = every_ms`. Pure.
pub(crate) fn decide(seen: &Seen<'_>, every_ms: u64, now_ms: i64) -> Next {
    let due = cadence::next_due_ms(seen.last_drill_ms, seen.group.created_ms, every_ms);
    if now_ms < due {
        return Next::NotDue;
    }
    if seen.retry_at_ms.is_some_and(|t| now_ms < t) {
        return Next::Wait;
    }
    if let Some(run) = seen.run_under_way {
        return Next::Refuse(format!("run {run} of the group is still under way"));
    }
    if let Err(why) = seen.group.scheduled_drill_allowed() {
        return Next::Refuse(why);
    }
    Next::Start(ScheduledDrill {
        every_ms,
        last_drill_ms: seen.last_drill_ms,
        reason: reason(every_ms, seen.last_drill_ms, seen.group.created_ms, due),
    })
}

/// The audit reason of a scheduled drill (`scheduled: drill_every 30d, last drill at ...`).
pub(crate) fn reason(
    every_ms: u64,
    last_drill_ms: Option<i64>,
    created_ms: Option<i64>,
    due_ms: i64,
) -> String {
    let every = HumanDuration::from_millis(every_ms);
    let since = match (last_drill_ms, created_ms) {
        (Some(t), _) => format!("last drill at {}", iso_ms(t)),
        (None, Some(t)) => format!("no drill since the group was created at {}", iso_ms(t)),
        (None, None) => "no drill on record".to_string(),
    };
    format!(
        "scheduled: drill_every {every}, {since}, due at {}",
        iso_ms(due_ms)
    )
}

/// One pass of the scheduler over the topology's groups (the leader calls it every tick).
pub(crate) async fn tick(c: &Coordinator) {
    let now = c.now_ms();
    for g in &c.topo().groups {
        let Some(every) = g.drill_every else {
            continue;
        };
        let every_ms = every.as_millis();
        let retry_at = lock(&c.inner.live)
            .drill_refusals
            .get(&g.name)
            .map(|r| r.retry_at_ms);
        let next = c.read(|s| {
            let group = s.group(&g.name)?;
            let run_under_way = s
                .runs()
                .iter()
                .find(|(_, r)| r.group == g.name && r.is_running())
                .map(|(id, _)| id.as_str());
            let seen = Seen {
                group,
                last_drill_ms: s.last_drill_ms(&g.name),
                run_under_way,
                retry_at_ms: retry_at,
            };
            Some(decide(&seen, every_ms, now))
        });
        match next {
            None | Some(Next::Wait) => {}
            Some(Next::NotDue) => {
                lock(&c.inner.live).drill_refusals.remove(&g.name);
            }
            Some(Next::Refuse(why)) => refused(c, &g.name, every_ms, now, why),
            Some(Next::Start(sched)) => {
                info!(group = %g.name, reason = %sched.reason, "scheduled drill: starting the drill runbook");
                match start_scheduled_drill(c, &g.name, sched).await {
                    Ok(run) => {
                        info!(group = %g.name, %run, "scheduled drill started");
                        lock(&c.inner.live).drill_refusals.remove(&g.name);
                    }
                    Err(e) => refused(c, &g.name, every_ms, now, e.message().to_string()),
                }
            }
        }
    }
}

/// Records a refused start: logged, kept for status, tried again after the retry interval.
fn refused(c: &Coordinator, group: &str, every_ms: u64, now: i64, reason: String) {
    let retry_at_ms = now.saturating_add(cadence::retry_ms(every_ms));
    warn!(%group, retry_in_ms = retry_at_ms - now, "scheduled drill not started: {reason}");
    let mut live = lock(&c.inner.live);
    let since_ms = live.drill_refusals.get(group).map_or(now, |r| r.since_ms);
    live.drill_refusals.insert(
        group.to_string(),
        DrillRefusal {
            reason,
            since_ms,
            retry_at_ms,
        },
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::state::{Command, GroupState, State};

    fn group(state: GroupState, paused: bool) -> Group {
        let mut s = State::new();
        let cmd: Command = serde_json::from_value(serde_json::json!({
            "op": "bootstrap", "at_ms": 1_000, "actor": "ops",
            "settings": {"lease_ttl_ms": 1000, "drift_margin_ms": 100, "detect_after_ms": 1000},
            "sites": [{"name": "a", "witness": false}, {"name": "b", "witness": false}],
            "groups": [{"name": "vol", "primary": "a", "replica": "b", "mode": "async",
                        "rpo_target_ms": 1000}],
        }))
        .unwrap();
        crate::state::apply(&mut s, &cmd).unwrap();
        let mut g = s.group("vol").unwrap().clone();
        g.state = state;
        g.reason = if state == GroupState::Protected {
            String::new()
        } else {
            "site b down".into()
        };
        g.paused = paused;
        g
    }

    /// (group, last drill, run under way, retry at, now, expected kind)
    type Case<'a> = (
        &'a Group,
        Option<i64>,
        Option<&'a str>,
        Option<i64>,
        i64,
        &'a str,
    );

    #[test]
    fn the_scheduler_starts_only_a_due_drill_of_a_group_that_may_drill() {
        let ok = group(GroupState::Protected, false);
        let degraded = group(GroupState::Degraded, false);
        let paused = group(GroupState::Protected, true);
        let every = 3_000;
        let cases: [Case<'_>; 8] = [
            (&ok, None, None, None, 3_999, "not-due"),
            (&ok, None, None, None, 4_000, "start"),
            (&ok, Some(10_000), None, None, 12_999, "not-due"),
            (&ok, Some(10_000), None, None, 13_000, "start"),
            (
                &ok,
                Some(10_000),
                Some("failover-vol-1"),
                None,
                13_000,
                "refuse",
            ),
            (&degraded, Some(10_000), None, None, 13_000, "refuse"),
            (&paused, Some(10_000), None, None, 13_000, "refuse"),
            (&degraded, Some(10_000), None, Some(14_000), 13_500, "wait"),
        ];
        for (i, (g, last, run, retry, now, want)) in cases.into_iter().enumerate() {
            let seen = Seen {
                group: g,
                last_drill_ms: last,
                run_under_way: run,
                retry_at_ms: retry,
            };
            let got = decide(&seen, every, now);
            let kind = match &got {
                Next::NotDue => "not-due",
                Next::Wait => "wait",
                Next::Refuse(_) => "refuse",
                Next::Start(_) => "start",
            };
            assert_eq!(kind, want, "#{i}: expect {want} got {got:?}");
            match got {
                Next::Refuse(why) => assert!(
                    why.contains("failover-vol-1")
                        || why.contains("degraded (site b down)")
                        || why.contains("paused"),
                    "#{i}: {why}"
                ),
                Next::Start(s) => {
                    assert_eq!((s.every_ms, s.last_drill_ms), (every, last), "#{i}");
                    assert!(s.reason.starts_with("scheduled: drill_every 3s, "), "#{i}");
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_reason_says_it_was_scheduled_and_from_when() {
        assert_eq!(
            reason(30 * 86_400_000, Some(0), Some(0), 30 * 86_400_000),
            "scheduled: drill_every 30d, last drill at 1970-01-01T00:00:00.000Z, due at 1970-01-31T00:00:00.000Z"
        );
        assert_eq!(
            reason(3_000, None, Some(1_000), 4_000),
            "scheduled: drill_every 3s, no drill since the group was created at 1970-01-01T00:00:01.000Z, due at 1970-01-01T00:00:04.000Z"
        );
    }
}
