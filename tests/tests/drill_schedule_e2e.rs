//! Drills on a schedule, with real processes: a group with `drill_every = "3s"` gets its drill
//! started by the coordinator leader by itself, attributed to the coordinator with a
//! `scheduled:` reason in the audit chain; status shows the next due drill; while replication
//! is paused the due drill is refused with the reason shown and becomes overdue, by the new
//! leader too once the leader is lost; once resumed it starts again, never more often than
//! the schedule.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::time::Duration;
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

fn audit(topo: &Topo) -> Vec<Value> {
    let (code, out, err) = topo.tandem(&["audit", "--json"]);
    assert_eq!(code, 0, "tandem audit: {err}");
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn drill_of(st: &Value) -> Value {
    st["groups"][0]["drill"].clone()
}

#[test]
fn a_scheduled_drill_starts_by_itself_as_the_coordinator_and_waits_out_a_pause_and_a_leader_change()
{
    let topo = Topo::new(TopoOpts {
        group_extra: "drill_every = \"3s\"",
        ..TopoOpts::default()
    });
    let mut procs: Vec<NodeProc> = topo
        .coordinators
        .iter()
        .map(|n| NodeProc::start(&topo, n))
        .collect();
    procs.push(NodeProc::start(&topo, "hanoi-rep"));
    procs.push(NodeProc::start(&topo, "hcm-rep"));

    // 1. Nobody asks for a drill: the leader starts one once the group is protected.
    let first = topo.wait_status(&[], Duration::from_secs(40), "a scheduled drill", |st| {
        drill_of(st)["last_run_id"].as_str().map(str::to_owned)
    });

    // 2. The audit chain has its start, by the coordinator, with the schedule's reason.
    let recs = audit(&topo);
    let start = recs
        .iter()
        .find(|r| r["kind"] == "drill" && r["detail"]["run_id"] == first.as_str())
        .unwrap_or_else(|| panic!("no drill record of {first}"));
    assert_eq!(start["detail"]["phase"], "start");
    assert_eq!(start["actor"], "coordinator", "{start}");
    let reason = start["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("scheduled: drill_every 3s, "), "{start}");

    // 3. Status shows the schedule: due 3 s after the last drill's start; the text says so.
    let st = topo.status(&[]).unwrap();
    let d = drill_of(&st);
    assert_eq!(d["every_ms"], 3_000, "{d}");
    let last = d["last_drill_ms"].as_i64().unwrap();
    assert_eq!(d["next_due_ms"].as_i64(), Some(last + 3_000), "{d}");
    let (_, text, _) = topo.tandem(&["status"]);
    assert!(text.contains("drill: every 3s, last "), "{text}");

    // 4. Paused: the due drill is refused, the reason shown, and it becomes overdue.
    let (code, _, err) = topo.tandem(&["pause", "vol", "--reason", "drill schedule test"]);
    assert_eq!(code, 0, "pause: {err}");
    let held = topo.wait_status(&[], Duration::from_secs(40), "a refused drill", |st| {
        let d = drill_of(st);
        let refused = d["refused"].as_str().unwrap_or_default();
        (refused.contains("paused") && d["overdue"] == true).then(|| d.clone())
    });
    assert!(
        held["retry_at_ms"].as_i64().is_some(),
        "a retry time: {held}"
    );
    let paused_run = held["last_run_id"].as_str().unwrap().to_owned();
    let (_, text, _) = topo.tandem(&["status"]);
    assert!(
        text.contains("OVERDUE; not started since "),
        "status text: {text}"
    );
    let st = topo.status(&[]).unwrap();
    assert_eq!(
        drill_of(&st)["last_run_id"].as_str(),
        Some(paused_run.as_str()),
        "no drill starts while paused"
    );

    // 5. The leader is lost: the new one reads the same last drill from the replicated runs
    //    and refuses the due drill for the same reason (no drill is started twice, none
    //    forgotten).
    let st = topo.status(&[]).unwrap();
    let leader = st["leader"].as_str().unwrap().to_owned();
    let i = topo.coordinators.iter().position(|c| *c == leader).unwrap();
    procs[i].kill9();
    topo.wait_status(
        &[],
        Duration::from_secs(30),
        "a new leader's refusal",
        |st| {
            let d = drill_of(st);
            (st["leader"].as_str().is_some_and(|l| l != leader)
                && d["refused"].as_str().unwrap_or_default().contains("paused")
                && d["last_run_id"].as_str() == Some(paused_run.as_str()))
            .then_some(())
        },
    );

    // 6. Resumed: the overdue drill starts, and the refusal is gone.
    let (code, _, err) = topo.tandem(&["resume", "vol"]);
    assert_eq!(code, 0, "resume: {err}");
    topo.wait_status(&[], Duration::from_secs(30), "the next drill", |st| {
        let d = drill_of(st);
        (d["last_run_id"].as_str() != Some(paused_run.as_str()) && d["refused"].is_null())
            .then_some(())
    });
    let scheduled: Vec<i64> = audit(&topo)
        .iter()
        .filter(|r| {
            r["kind"] == "drill"
                && r["detail"]["phase"] == "start"
                && r["actor"] == "coordinator"
                && r["detail"]["reason"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("scheduled:"))
        })
        .map(|r| r["at_ms"].as_i64().unwrap())
        .collect();
    if scheduled.len() < 2 {
        dump_logs(&topo);
    }
    assert!(
        scheduled.len() >= 2,
        "{} scheduled drill starts",
        scheduled.len()
    );
    // 7. Never more often than the schedule, across the pause and the leader change.
    for w in scheduled.windows(2) {
        assert!(w[1] - w[0] >= 3_000, "scheduled starts {scheduled:?}");
    }

    // 8. The evidence lists the scheduled drills, started by the coordinator, and the cadence
    //    (the pause made a gap over 3 s + 1 s: it missed, and says where).
    let work = tempfile::tempdir().unwrap();
    let ev = work.path().join("ev");
    let (code, out, err) = topo.tandem(&["evidence", "export", "--out", ev.to_str().unwrap()]);
    assert_eq!(code, 0, "evidence export: {out}\n{err}");
    let runs: Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("runs.json")).unwrap()).unwrap();
    let c = &runs["drill_cadence"][0];
    assert_eq!(
        (c["group"].as_str(), c["every_ms"].as_u64()),
        (Some("vol"), Some(3_000))
    );
    let drills = c["drills"].as_array().unwrap();
    let from_schedule: Vec<&Value> = drills.iter().filter(|d| d["scheduled"] == true).collect();
    assert!(from_schedule.len() >= scheduled.len(), "{c}");
    assert!(
        from_schedule.iter().all(|d| d["actor"] == "coordinator"),
        "{c}"
    );
    assert_eq!(c["held"], false, "the pause is a missed gap: {c}");
    let report = std::fs::read_to_string(ev.join("report.html")).unwrap();
    assert!(report.contains("Drill cadence"), "report section");
    drop(procs);
}
