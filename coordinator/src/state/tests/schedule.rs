//! Drills on a schedule: a scheduled `start_run` starts a drill only while it is due, only for
//! a group that may drill, and only once per last drill (a second leader is refused).

use super::*;

const EVERY: u64 = 3_000;

fn protect(s: &mut State, at_ms: i64, group: &str) {
    let cmd = Command::SetGroupState {
        at_ms,
        group: group.into(),
        state: GroupState::Protected,
        reason: String::new(),
        actor: COORDINATOR_ACTOR.into(),
        host: None,
    };
    apply(s, &cmd).unwrap();
}

fn scheduled(s: &State, at_ms: i64, group: &str, last: Option<i64>) -> Command {
    let mut cmd = start_run_cmd(s, at_ms, &format!("drill-{group}-{at_ms}"), group);
    if let Command::StartRun {
        started_by,
        schedule,
        ..
    } = &mut cmd
    {
        *started_by = COORDINATOR_ACTOR.into();
        *schedule = Some(Box::new(ScheduledDrill {
            every_ms: EVERY,
            last_drill_ms: last,
            reason: format!("scheduled: drill_every 3s, last drill at {last:?}"),
        }));
    }
    cmd
}

/// Applies a scheduled start of `group` at `at_ms` that saw `last` as the last drill.
fn sched(
    s: &mut State,
    at_ms: i64,
    group: &str,
    last: Option<i64>,
) -> Result<Vec<Event>, Rejection> {
    let cmd = scheduled(s, at_ms, group, last);
    apply(s, &cmd)
}

fn finish(s: &mut State, mut at: i64, group: &str) -> i64 {
    while s
        .runs()
        .values()
        .any(|r| r.group == group && r.is_running())
    {
        at += 10;
        let c = run_op(s, at, group, true);
        apply(s, &c).unwrap();
    }
    at
}

fn not_due(r: Result<Vec<Event>, Rejection>, words: &str) {
    match r {
        Err(Rejection::ScheduledDrillRefused { reason, .. }) => {
            assert!(reason.contains(words), "{reason:?} lacks {words:?}")
        }
        other => panic!("expected ScheduledDrillRefused ({words}), got {other:?}"),
    }
}

#[test]
fn bootstrap_records_when_each_group_was_created() {
    let mut s = State::new();
    apply(&mut s, &bootstrap_cmd(1_234)).unwrap();
    assert_eq!(s.group("vol").unwrap().created_ms, Some(1_234));
}

#[test]
fn a_scheduled_drill_starts_when_due_and_once_per_last_drill() {
    let mut s = booted();
    protect(&mut s, 1, "vol");
    // 1. Never drilled: due at creation (0) + 3 s.
    not_due(sched(&mut s, 2_999, "vol", None), "not due");
    let from = s.audit().len();
    sched(&mut s, 3_000, "vol", None).unwrap();
    // 2. The start is audited as the coordinator's, with the schedule's reason.
    let rec = s
        .audit_range(from as u64, 10)
        .iter()
        .find(|r| r.kind == AuditKind::Drill)
        .cloned()
        .unwrap();
    assert_eq!(rec.actor, COORDINATOR_ACTOR);
    assert_eq!(rec.detail["phase"], "start");
    assert!(rec.detail["reason"]
        .as_str()
        .unwrap()
        .starts_with("scheduled: drill_every 3s"));
    assert_eq!(rec.detail["scheduled"]["drill_every_ms"], EVERY);
    assert_eq!(s.last_drill_ms("vol"), Some(3_000));
    // 3. A second leader that saw no drill yet is refused, while the run is under way and
    //    after it ended.
    assert!(matches!(
        sched(&mut s, 3_100, "vol", None),
        Err(Rejection::RunUnderWay { .. })
    ));
    let at = finish(&mut s, 3_100, "vol");
    not_due(
        sched(&mut s, at + 10_000, "vol", None),
        "last drill started at Some(3000)",
    );
    // 4. The next one is due 3 s after the last one's start, not its end.
    not_due(
        sched(&mut s, 5_999, "vol", Some(3_000)),
        "not due before 6000",
    );
    let at = at.max(6_000);
    sched(&mut s, at, "vol", Some(3_000)).unwrap();
    assert_eq!(s.last_drill_ms("vol"), Some(at));
    assert_eq!(s.last_drill_ms("db"), None);
}

#[test]
fn a_scheduled_drill_is_refused_while_the_group_may_not_drill() {
    let mut s = booted();
    // 1. Resyncing (the initial sync): refused, with the group's state and reason.
    not_due(
        sched(&mut s, 10_000, "vol", None),
        "the group is resyncing (initial sync)",
    );
    // 2. Paused.
    protect(&mut s, 10_001, "vol");
    let pause = Command::pause_or_resume(true, "vol".into(), "ops".into(), "maint".into());
    apply(&mut s, &{
        let mut c = pause;
        c.stamp(10_002);
        c
    })
    .unwrap();
    not_due(sched(&mut s, 10_003, "vol", None), "paused");
    // 3. Only the coordinators start drills on the schedule, and only drills.
    let mut s = booted();
    protect(&mut s, 1, "vol");
    let mut by_alice = scheduled(&s, 10_000, "vol", None);
    if let Command::StartRun { started_by, .. } = &mut by_alice {
        *started_by = "alice".into();
    }
    not_due(
        apply(&mut s, &by_alice),
        "only a drill started by coordinator",
    );
    let mut failover = scheduled(&s, 10_000, "vol", None);
    if let Command::StartRun { kind, .. } = &mut failover {
        *kind = RunbookKind::Failover;
    }
    not_due(apply(&mut s, &failover), "not a failover");
    // 4. Nothing of it reached the chain or the runs.
    assert!(s.runs().is_empty());
    // 5. An operator's drill (no schedule) is not held to the schedule: it starts at once
    //    and then counts as the last drill.
    let op = start_run_cmd(&s, 10_010, "op-drill", "vol");
    apply(&mut s, &op).unwrap();
    assert_eq!(s.last_drill_ms("vol"), Some(10_010));
}

#[test]
fn a_scheduled_start_without_a_schedule_field_reads_as_before() {
    // Commands committed before the field existed decode with `schedule: None`.
    let s = booted();
    let cmd = start_run_cmd(&s, 5, "r", "vol");
    let mut v = to_json(&cmd);
    assert!(v.get("schedule").is_none(), "not written when absent");
    v.as_object_mut().unwrap().remove("schedule");
    let back: Command = serde_json::from_value(v).unwrap();
    assert_eq!(back, cmd);
}
