//! After-action reports with real processes: an operator drills, adds, assigns and closes
//! corrective actions (typed calls, recorded under the operator's certificate); an operator
//! may not sign the review, an auditor may; the evidence export carries all of it in
//! `after-action.json` and the report; `tandem evidence verify` accepts the folder and
//! refuses it once a byte of `after-action.json` is changed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::time::Duration;
use tandem_tests::{NodeProc, Topo, TopoOpts};

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn actions_and_an_auditors_sign_off_reach_the_after_action_report_and_verify_guards_it() {
    let topo = Topo::new(TopoOpts::default());
    let mut procs: Vec<NodeProc> = topo
        .coordinators
        .iter()
        .map(|n| NodeProc::start(&topo, n))
        .collect();
    procs.push(NodeProc::start(&topo, "hanoi-rep"));
    procs.push(NodeProc::start(&topo, "hcm-rep"));
    topo.wait_status(&[], Duration::from_secs(40), "protected", |st| {
        (st["groups"][0]["state"] == "protected").then_some(())
    });

    // 1. A drill, followed to its end by the CLI.
    let (code, out, err) = topo.tandem(&["drill", "vol"]);
    assert_eq!(code, 0, "drill: {out}\n{err}");
    let (code, out, err) = topo.tandem(&["runs", "--json"]);
    assert_eq!(code, 0, "runs: {err}");
    let runs: Value = serde_json::from_str(&out).unwrap();
    let run = runs
        .as_array()
        .and_then(|a| a.iter().find(|r| r["kind"] == "drill"))
        .unwrap_or_else(|| panic!("no drill in {runs}"));
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    // 2. Corrective actions: one already overdue, one assigned on, one closed.
    let add = |title: &str, due: &str| {
        let (code, out, err) = topo.tandem(&[
            "action", "add", "--group", "vol", "--run", &run_id, "--title", title, "--owner",
            "bob", "--due", due,
        ]);
        assert_eq!(code, 0, "action add: {out}\n{err}");
        out
    };
    assert!(add("shorten the snapshot step", "2000-01-31").starts_with("added A-1:"));
    assert!(add("document the drill copy", "2999-12-31").starts_with("added A-2:"));
    let (code, out, err) = topo.tandem(&["action", "assign", "A-2", "--owner", "carol"]);
    assert_eq!(code, 0, "assign: {out}\n{err}");
    let (code, out, err) = topo.tandem(&["action", "close", "A-2", "--note", "written up"]);
    assert_eq!(code, 0, "close: {out}\n{err}");
    let (code, _, err) = topo.tandem(&["action", "close", "A-2", "--note", "again"]);
    assert_ne!(code, 0, "a closed action closes once");
    assert!(err.contains("closed by"), "{err}");
    let (code, _, err) = topo.tandem(&[
        "action",
        "add",
        "--group",
        "vol",
        "--run",
        &run_id,
        "--title",
        "x",
        "--owner",
        "y",
        "--due",
        "2027-02-30",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("YYYY-MM-DD"), "{err}");
    let (code, out, err) = topo.tandem(&["action", "list", "--json"]);
    assert_eq!(code, 0, "list: {err}");
    let listed = json_lines(&out);
    let states: Vec<(&str, &str, &str)> = listed
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap(),
                a["owner"].as_str().unwrap(),
                a["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [("A-1", "bob", "overdue"), ("A-2", "carol", "closed")]
    );

    // 3. The review: refused to the operator, signed by the auditor.
    let (code, _, err) = topo.tandem(&["review", "sign", &run_id, "--note", "mine"]);
    assert_ne!(code, 0, "an operator signed a review");
    assert!(err.contains("may not call SignReview"), "{err}");
    let (code, out, err) = topo.tandem(&[
        "--identity",
        "auditor",
        "review",
        "sign",
        &run_id,
        "--note",
        "drill reviewed",
    ]);
    assert_eq!(code, 0, "auditor review sign: {out}\n{err}");
    assert!(out.contains("signed by auditor"), "{out}");
    let (code, _, err) = topo.tandem(&[
        "--identity",
        "auditor",
        "action",
        "add",
        "--group",
        "vol",
        "--run",
        &run_id,
        "--title",
        "x",
        "--owner",
        "y",
        "--due",
        "2030-01-01",
    ]);
    assert_ne!(code, 0, "an auditor added an action");
    assert!(err.contains("may not call AddAction"), "{err}");

    // 4. The audit chain names the certificates that acted.
    let (code, out, err) = topo.tandem(&["audit", "--json", "--limit", "100000"]);
    assert_eq!(code, 0, "audit: {err}");
    let recs = json_lines(&out);
    let actors = |kind: &str| -> Vec<String> {
        recs.iter()
            .filter(|r| r["kind"] == kind)
            .map(|r| r["actor"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(actors("action"), ["operator"; 4]);
    assert_eq!(actors("review"), ["auditor"]);

    // 5. The evidence: after-action.json and the report carry the exercise's actions and sign-off.
    let work = tempfile::tempdir().unwrap();
    let ev = work.path().join("ev");
    let (code, out, err) = topo.tandem(&["evidence", "export", "--out", ev.to_str().unwrap()]);
    assert_eq!(code, 0, "evidence export: {out}\n{err}");
    let aar: Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("after-action.json")).unwrap())
            .unwrap();
    let e = aar["exercises"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == run_id.as_str())
        .unwrap_or_else(|| panic!("no exercise {run_id} in {aar}"));
    assert_eq!(e["kind"], "drill");
    assert_eq!(e["scope"]["groups"][0], "vol");
    assert!(e["objectives"]["rto_target_ms"].as_i64().is_some(), "{e}");
    assert!(e["measured"]["rto_ms"].as_i64().is_some(), "{e}");
    assert!(!e["timeline"].as_array().unwrap().is_empty(), "{e}");
    let acts: Vec<(&str, &str)> = e["corrective_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["id"].as_str().unwrap(), a["state"].as_str().unwrap()))
        .collect();
    assert_eq!(acts, [("A-1", "overdue"), ("A-2", "closed")]);
    assert_eq!(e["sign_off"][0]["by"], "auditor", "{e}");
    assert_eq!(e["sign_off"][0]["note"], "drill reviewed");
    let people: Vec<&str> = e["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["identity"].as_str().unwrap())
        .collect();
    assert!(
        people.contains(&"operator") && people.contains(&"auditor"),
        "{people:?}"
    );
    assert!(
        e["deviations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["kind"] == "action-overdue"),
        "{e}"
    );
    let report = std::fs::read_to_string(ev.join("report.html")).unwrap();
    assert!(report.contains("After-action reports"), "report section");
    assert!(
        report.contains("Signed by <code>auditor</code>"),
        "sign-off in the report"
    );
    assert!(
        report.contains("shorten the snapshot step"),
        "action in the report"
    );

    // 6. Verify accepts the folder, and names after-action.json once one byte of it changed.
    let (code, out, err) = topo.tandem(&["evidence", "verify", ev.to_str().unwrap()]);
    assert_eq!(code, 0, "evidence verify: {out}\n{err}");
    let path = ev.join("after-action.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .windows(6)
        .position(|w| w == b"closed")
        .expect("a closed action in after-action.json");
    bytes[at] = b'C';
    std::fs::write(&path, bytes).unwrap();
    let (code, out, err) = topo.tandem(&["evidence", "verify", ev.to_str().unwrap()]);
    assert_ne!(
        code, 0,
        "verify accepted a changed after-action.json: {out}"
    );
    assert!(
        format!("{out}{err}").contains("after-action.json"),
        "verify must name the file: {out}\n{err}"
    );
    drop(procs);
}
