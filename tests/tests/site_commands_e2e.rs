//! Commands run where they belong (issue 16, item 7), with real processes: a drill's
//! `start_command` at the replica site runs on that site's replicator (a marker lands in the
//! folder only that process knows), a replicator runs a step only when a coordinator asks and
//! only the step's committed command, the committed plan is readable only by the replicator of
//! the step's site, and a step whose site is unreachable fails naming the site and the node.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_core::config::Topology;
use tandem_core::net::Net;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{PlannedStepRequest, RunStepRequest};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

/// The environment variable that tells each node process its own folder: only that process
/// (and its children) has it, so a file written under `$NODE_HOME` says which process ran
/// the command.
const NODE_HOME: &str = "NODE_HOME";

/// The folder only node `name` knows of (its data folder).
fn home(topo: &Topo, name: &str) -> PathBuf {
    topo.path().join("data").join(name)
}

/// Starts node `name` with `NODE_HOME` set to its own folder.
fn start(topo: &Topo, name: &str) -> NodeProc {
    let dir = home(topo, name);
    std::fs::create_dir_all(&dir).unwrap();
    NodeProc::start_with_env(topo, name, &[(NODE_HOME, dir.as_os_str())])
}

/// Every node started (each with its own `NODE_HOME`), the volume group protected.
fn cluster(topo: &Topo) -> Vec<NodeProc> {
    let mut procs: Vec<NodeProc> = topo.coordinators.iter().map(|n| start(topo, n)).collect();
    procs.push(start(topo, "hanoi-rep"));
    procs.push(start(topo, "hcm-rep"));
    topo.wait_status(&[], Duration::from_secs(30), "vol protected", |st| {
        let g = &st["groups"][0];
        (g["state"] == "protected" && g["lease"]["status"] == "active").then_some(())
    });
    procs
}

fn addr_args(topo: &Topo) -> Vec<String> {
    topo.coordinators
        .iter()
        .flat_map(|n| ["--addr".to_string(), topo.addr(n).to_string()])
        .collect()
}

/// `tandem ARGS --addr ...` (every coordinator).
fn tandem(topo: &Topo, args: &[&str]) -> (i32, String, String) {
    let extra = addr_args(topo);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    topo.tandem(&all)
}

/// Starts a drill of `vol` with `params`, follows it to its end; (follow's exit code, run).
fn drill(topo: &Topo, params: &[&str]) -> (i32, Value) {
    let mut args = vec!["drill", "vol", "--detach"];
    for p in params {
        args.extend(["--param", p]);
    }
    let (code, out, err) = tandem(topo, &args);
    assert_eq!(code, 0, "drill did not start:\n{out}\n{err}");
    let id = out.trim().to_string();
    let (code, _, _) = tandem(topo, &["run", "follow", &id]);
    let (show, out, err) = tandem(topo, &["run", "show", &id, "--json"]);
    assert_eq!(show, 0, "run show {id}:\n{out}\n{err}");
    (code, serde_json::from_str(&out).unwrap())
}

/// The state of step `id` of `run`.
fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    let plan = run["state"]["plan"]["steps"].as_array().unwrap();
    let i = plan.iter().position(|p| p["id"] == id).unwrap();
    &run["state"]["steps"][i]
}

/// Every file named `name` under `dir`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(find(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_drills_start_command_runs_on_the_replica_sites_replicator() {
    let topo = Topo::new(TopoOpts::default());
    let _procs = cluster(&topo);

    // The stock drill; its start command writes a marker under the folder of whichever
    // process runs it, and says where it ran.
    let start = "start_command=echo \"$TANDEM_SNAPSHOT_PATH\" > \"$NODE_HOME/drill-marker\" && echo \"started the copy on $TANDEM_NODE at $TANDEM_SITE\"";
    let (code, run) = drill(&topo, &[start]);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "the drill failed: {run}");

    // The marker is in the replica site's replicator folder, and nowhere else.
    let markers = find(topo.path(), "drill-marker");
    assert_eq!(
        markers,
        vec![home(&topo, "hcm-rep").join("drill-marker")],
        "the start command ran elsewhere than on hcm-rep"
    );
    let copy = std::fs::read_to_string(&markers[0]).unwrap();
    assert!(
        copy.contains("data/hcm-rep/snapshots"),
        "TANDEM_SNAPSHOT_PATH is the copy at the replica: {copy}"
    );

    // The command's output and where it ran are in the run, and in the audit chain.
    let s = step(&run, "start-copy");
    assert_eq!(s["status"], "succeeded", "{run}");
    let out = s["output_excerpt"].as_str().unwrap();
    assert!(
        out.contains("started the copy on hcm-rep at hcm")
            && out.contains("[ran on hcm-rep at site hcm]"),
        "{out}"
    );
    let ready = step(&run, "ready")["output_excerpt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ready.contains("[ran on hcm-rep at site hcm]"), "{ready}");
    let (_, audit, _) = tandem(&topo, &["audit", "--json"]);
    let run_id = run["state"]["run_id"].as_str().unwrap();
    assert!(
        audit
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| {
                r["kind"] == "runbook_step"
                    && r["detail"]["run_id"] == run_id
                    && r["detail"]["step"] == "start-copy"
                    && r["detail"]["output"]
                        .as_str()
                        .is_some_and(|o| o.contains("started the copy on hcm-rep"))
            }),
        "no audited output of start-copy:\n{audit}"
    );
}

/// A drill runbook of one `exec` and one `check` step at the replica site.
const SITE_DRILL: &str = r#"name = "site-drill"
kind = "drill"

[[steps]]
id = "here"
action = "exec"
site = "replica"
command = 'echo "on $TANDEM_NODE"'

[[steps]]
id = "ready"
action = "check"
site = "replica"
command = 'test -n "$TANDEM_NODE"'
interval = "200ms"
timeout = "20s"
"#;

#[test]
fn only_coordinators_make_a_replicator_run_a_step_and_an_unreachable_site_fails_the_step() {
    let topo = Topo::new(TopoOpts::default());
    let rb = topo.path().join("site-drill.toml");
    std::fs::write(&rb, SITE_DRILL).unwrap();
    let cfg = std::fs::read_to_string(&topo.config).unwrap().replacen(
        "auto_failover = false\n",
        &format!(
            "auto_failover = false\nrunbooks = {{ drill = \"{}\" }}\n",
            rb.display()
        ),
        1,
    );
    std::fs::write(&topo.config, cfg).unwrap();
    let mut procs = cluster(&topo);

    // 1. A run of it: both steps run on hcm-rep.
    let (code, run) = drill(&topo, &[]);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "{run}");
    let here = step(&run, "here")["output_excerpt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        here.starts_with("on hcm-rep\n[ran on hcm-rep at site hcm]"),
        "{here}"
    );
    let run_id = run["state"]["run_id"].as_str().unwrap().to_string();

    // 2. Who may ask: real mTLS clients with the cluster's certificates.
    let t = Topology::load(&topo.config).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hcm_rep = topo.addr("hcm-rep").to_string();
    let coord = topo.addr(&topo.coordinators[0]).to_string();
    let run_step = |net: Net, run: &str, step: u32| {
        let addr = hcm_rep.clone();
        let run = run.to_string();
        rt.block_on(async move {
            let ch = net.connect(net.endpoint(&addr).unwrap()).await.unwrap();
            ReplicationClient::new(ch)
                .run_step(RunStepRequest { run_id: run, step })
                .await
        })
    };
    let node = |n: &str| Net::for_node(&t, n).unwrap();
    let person = |n: &str| Net::for_client(&t, n, None).unwrap();
    for (who, net) in [
        ("hanoi-rep", node("hanoi-rep")),
        ("operator", person("operator")),
    ] {
        let e = run_step(net, &run_id, 0).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e:?}");
        assert!(
            e.message().contains(who) && e.message().contains("RunStep"),
            "{who}: {}",
            e.message()
        );
    }
    // A coordinator passes the gate, and the replicator then checks the committed plan: no
    // such run; a step that is no longer current.
    let coordinator = topo.coordinators[0].clone();
    let e = run_step(node(&coordinator), "no-such-run", 0).unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = run_step(node(&coordinator), &run_id, 0).unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("not the run's current step"),
        "{}",
        e.message()
    );

    // 3. The committed plan is readable by the replicator of the step's site only.
    let planned = |net: Net| {
        let addr = coord.clone();
        let run = run_id.clone();
        rt.block_on(async move {
            let ch = net.connect(net.endpoint(&addr).unwrap()).await.unwrap();
            CoordinatorClient::new(ch)
                .planned_step(PlannedStepRequest {
                    run_id: run,
                    step: 0,
                })
                .await
        })
    };
    let ok = planned(node("hcm-rep")).unwrap().into_inner();
    assert_eq!((ok.site.as_str(), ok.current), ("hcm", false));
    assert_eq!(ok.shell, "echo \"on $TANDEM_NODE\"");
    assert_eq!(ok.env.get("TANDEM_STEP").map(String::as_str), Some("here"));
    for (who, net) in [
        ("hanoi-rep", node("hanoi-rep")),
        ("operator", person("operator")),
        (coordinator.as_str(), node(&coordinator)),
    ] {
        let e = planned(net).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e:?}");
        assert!(
            e.message().contains(who) && e.message().contains("PlannedStep"),
            "{who}: {}",
            e.message()
        );
    }

    // 4. The replica site's replicator is gone: the step fails, naming the site and the node.
    procs
        .iter_mut()
        .find(|p| p.name == "hcm-rep")
        .unwrap()
        .kill9();
    let (code, run) = drill(&topo, &[]);
    assert_ne!(code, 0, "{run}");
    let s = step(&run, "here");
    assert_eq!(s["status"], "failed", "{run}");
    let error = s["error"].as_str().unwrap();
    assert!(
        error.contains("site hcm unreachable")
            && error.contains("hcm-rep")
            && error.contains(&hcm_rep),
        "{error}"
    );
}
