//! Data residency with real processes: a drill whose copy would land in a site outside the
//! group's allowed jurisdictions is refused by the coordinators before any step runs, and the
//! refusal is in the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::time::Duration;
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

#[test]
fn a_drill_copy_in_a_site_outside_the_allowed_jurisdictions_is_refused_and_audited() {
    // 1. hanoi and hcm are in VN, a third site sg in SG; `vol` may live only in VN and its
    //    drill runbook takes the copy at sg.
    //    (The restriction is added after `Topo::new`, which loads the topology to make its
    //    certificates, once the sites have their jurisdictions.)
    let topo = Topo::new(TopoOpts {
        group_extra: "runbooks = { drill = \"drill-sg.toml\" }",
        ..TopoOpts::default()
    });
    let text = std::fs::read_to_string(&topo.config).unwrap();
    let text = text
        .replace(
            "runbooks = { drill = \"drill-sg.toml\" }",
            "runbooks = { drill = \"drill-sg.toml\" }\nallowed_jurisdictions = [\"VN\"]",
        )
        .replace(
            "name = \"hanoi\"\nwitness = false",
            "name = \"hanoi\"\nwitness = false\njurisdiction = \"VN\"",
        )
        .replace(
            "name = \"hcm\"\nwitness = false",
            "name = \"hcm\"\nwitness = false\njurisdiction = \"VN\"",
        );
    let text = format!("{text}\n[[sites]]\nname = \"sg\"\njurisdiction = \"SG\"\n");
    std::fs::write(&topo.config, text).unwrap();
    let stock = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runbooks/library/drill.toml"
    ))
    .unwrap();
    let drill = stock.replacen(
        "site = \"replica\"\nname = \"drill\"",
        "site = \"sg\"\nname = \"drill\"",
        1,
    );
    assert_ne!(drill, stock);
    std::fs::write(topo.path().join("drill-sg.toml"), drill).unwrap();
    let cfg = topo.config.to_str().unwrap();
    let (code, _, err) = topo.tandem(&["config", "check", cfg]);
    assert_eq!(code, 0, "the topology itself is valid: {err}");

    // 2. The coordinators bootstrap the topology (no replicator is needed to be refused).
    let _procs: Vec<NodeProc> = topo
        .coordinators
        .iter()
        .map(|n| NodeProc::start(&topo, n))
        .collect();
    topo.wait_status(&[], Duration::from_secs(30), "vol bootstrapped", |st| {
        (st["groups"][0]["name"] == "vol").then_some(())
    });

    // 3. The drill is refused, naming the step, the site and the jurisdictions.
    let (code, out, err) = topo.tandem(&["drill", "vol", "--config", cfg, "--detach"]);
    if code == 0 {
        dump_logs(&topo);
    }
    assert_ne!(code, 0, "drill accepted: {out}");
    assert!(
        err.contains("step snapshot (drill copy) site \"sg\" is in SG, allowed: VN"),
        "{err}"
    );

    // 4. No run exists and the refusal is audited with who asked.
    let (code, out, err) = topo.tandem(&["runs", "--json", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    let runs: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert!(
        runs.as_array().is_none_or(|a| a.is_empty()),
        "a run was created: {out}"
    );
    let (code, out, err) = topo.tandem(&["audit", "--json", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    let refused: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "refused")
        .collect();
    let r = refused
        .iter()
        .find(|r| r["detail"]["op"] == "start_run")
        .unwrap_or_else(|| panic!("no refused start_run record in:\n{out}"));
    assert_eq!(r["group"], "vol");
    assert_eq!(r["detail"]["rejection"]["code"], "residency");
    assert!(r["detail"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("\"sg\" is in SG"));
}
