//! Runbook runs executed by the coordinator leader, with real processes: a drill with writes
//! running, a lossless switchover, a failover after losing the primary site, and a run that
//! survives the loss of the coordinator leader.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

/// Every node of the topology, started, with the volume group protected.
fn cluster(topo: &Topo) -> Vec<NodeProc> {
    let mut procs: Vec<NodeProc> = topo
        .coordinators
        .iter()
        .map(|n| NodeProc::start(topo, n))
        .collect();
    procs.push(NodeProc::start(topo, "hanoi-rep"));
    procs.push(NodeProc::start(topo, "hcm-rep"));
    topo.wait_status(&[], Duration::from_secs(30), "vol protected", |st| {
        let g = &st["groups"][0];
        (g["state"] == "protected" && g["lease"]["status"] == "active").then_some(())
    });
    procs
}

fn addr_args<'a>(topo: &'a Topo, nodes: &[&'a str]) -> Vec<&'a str> {
    nodes
        .iter()
        .flat_map(|n| ["--addr", topo.addr(n)])
        .collect()
}

fn qemu_io(nbd: &str, cmd: &str) -> bool {
    Command::new("qemu-io")
        .args(["-f", "raw", &format!("nbd://{nbd}/disk0"), "-c", cmd])
        .output()
        .map(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("failed"))
        .unwrap_or(false)
}

/// A write that is retried while the export refuses it (a primary may fence itself for a moment
/// on a loaded machine); only an acknowledged write counts.
fn write_acked(nbd: &str, cmd: &str) -> bool {
    (0..10).any(|_| {
        qemu_io(nbd, cmd) || {
            std::thread::sleep(Duration::from_millis(300));
            false
        }
    })
}

fn run_json(topo: &Topo, id: &str, ask: &[&str]) -> Option<Value> {
    let mut args = vec!["run", "show", id, "--json"];
    args.extend(addr_args(topo, ask));
    let (code, out, _) = topo.tandem(&args);
    (code == 0)
        .then(|| serde_json::from_str(&out).ok())
        .flatten()
}

fn step_status(run: &Value, step: &str) -> String {
    let steps = run["state"]["plan"]["steps"].as_array().unwrap();
    let i = steps.iter().position(|p| p["id"] == step).unwrap();
    run["state"]["steps"][i]["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn rto_of(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("RTO "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no RTO line in:\n{out}"))
}

#[test]
fn drill_with_writes_running_takes_and_removes_a_copy() {
    let topo = Topo::new(TopoOpts::default());
    let _procs = cluster(&topo);
    let all: Vec<&str> = topo.coordinators.iter().map(String::as_str).collect();

    // 1. A writer keeps writing to the primary's export during the whole drill.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let nbd = topo.nbd_addr("hanoi-rep").to_string();
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let off = (i % 64) * 65536;
                if qemu_io(&nbd, &format!("write -P {} {off} 64k", i % 251)) {
                    written.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    // 2. The drill runs to its end while writes continue.
    let mut args = vec!["drill", "vol"];
    args.extend(addr_args(&topo, &all));
    let before = written.load(Ordering::SeqCst);
    let (code, out, err) = topo.tandem(&args);
    let during = written.load(Ordering::SeqCst) - before;
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "drill failed:\n{out}\n{err}");
    eprintln!("{out}");
    assert!(
        out.contains("snapshot") && out.contains("succeeded"),
        "{out}"
    );
    assert!(
        written.load(Ordering::SeqCst) > 5,
        "the writer did not write"
    );
    eprintln!("{during} writes during the drill");
    rto_of(&out);

    // 3. The copy was made at the replica and removed at the end.
    let snaps = topo.path().join("data/hcm-rep/snapshots/vol");
    let left: Vec<_> = std::fs::read_dir(&snaps)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "drill copies left behind: {left:?}");

    // 4. The audit chain has the drill, its steps (with the run id) and the verify result.
    let mut args = vec!["audit", "--json"];
    args.extend(addr_args(&topo, &all));
    let (_, audit, _) = topo.tandem(&args);
    let recs: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let run_id = recs
        .iter()
        .find(|r| r["kind"] == "drill" && r["detail"]["phase"] == "start")
        .map(|r| r["detail"]["run_id"].as_str().unwrap().to_string())
        .expect("drill start record");
    assert!(recs.iter().any(|r| r["kind"] == "drill"
        && r["detail"]["phase"] == "end"
        && r["detail"]["ok"] == true));
    assert!(recs.iter().any(|r| r["kind"] == "runbook_step"
        && r["detail"]["run_id"] == run_id.as_str()
        && r["detail"]["step"] == "snapshot"
        && r["detail"]["status"] == "ok"));
    assert!(recs
        .iter()
        .any(|r| r["kind"] == "verify" && r["detail"]["root_match"] == true));
    // Replication kept going: the primary is unchanged and in sync.
    let st = topo.status(&[]).unwrap();
    assert_eq!(st["groups"][0]["primary"], "hanoi");
}

#[test]
fn switchover_reverses_roles_without_losing_a_write() {
    let topo = Topo::new(TopoOpts::default());
    let _procs = cluster(&topo);
    let all: Vec<&str> = topo.coordinators.iter().map(String::as_str).collect();

    // 1. Writes at the primary.
    let nbd = topo.nbd_addr("hanoi-rep").to_string();
    for i in 0..8u64 {
        assert!(qemu_io(
            &nbd,
            &format!("write -P {} {} 256k", 0x10 + i, i * 262_144)
        ));
    }

    // 2. The switchover runs to its end.
    let mut args = vec!["switchover", "vol"];
    args.extend(addr_args(&topo, &all));
    let (code, out, err) = topo.tandem(&args);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "switchover failed:\n{out}\n{err}");
    eprintln!("{out}");
    let rto = rto_of(&out);
    assert!(rto < 30_000, "RTO {rto} ms");

    // 3. Roles are reversed and every write is at the new primary, in its file and through
    //    its export.
    let st = topo.status(&[]).unwrap();
    let g = &st["groups"][0];
    assert_eq!(
        (g["primary"].as_str(), g["replica"].as_str()),
        (Some("hcm"), Some("hanoi"))
    );
    let file = std::fs::read(topo.path().join("volumes/hcm/disk0.img")).unwrap();
    for i in 0..8usize {
        let block = &file[i * 262_144..(i + 1) * 262_144];
        assert!(block.iter().all(|&b| b == 0x10 + i as u8), "write {i} lost");
    }
    let new_nbd = topo.nbd_addr("hcm-rep").to_string();
    assert!(qemu_io(&new_nbd, "read -P 0x17 1792k 256k"));
    // The new primary takes writes.
    assert!(write_acked(&new_nbd, "write -P 0x99 0 64k"));
}

#[test]
fn failover_after_losing_the_primary_site_prints_rto() {
    let topo = Topo::new(TopoOpts::default());
    let mut procs = cluster(&topo);
    let nbd = topo.nbd_addr("hanoi-rep").to_string();
    assert!(write_acked(&nbd, "write -P 0x42 0 1M"));

    // 1. The primary site is lost: its replicator and its coordinator, kill -9.
    for p in procs
        .iter_mut()
        .filter(|p| p.name == "hanoi-rep" || p.name == "hanoi-coord1")
    {
        p.kill9();
    }
    let t0 = Instant::now();

    // 2. `tandem failover` runs the stock runbook and prints the RTO.
    let mut args = vec!["failover", "vol"];
    args.extend(addr_args(&topo, &["hcm-coord1", "danang-coord1"]));
    let (code, out, err) = topo.tandem(&args);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "failover failed:\n{out}\n{err}");
    eprintln!("{out}\nfailover command took {:?}", t0.elapsed());
    let rto = rto_of(&out);
    assert!(rto < 20_000, "RTO {rto} ms");
    assert!(out.contains("lease_wait_ms="), "{out}");

    // 3. hcm is primary in a new epoch and serves the data written before the loss.
    let st = topo.status(&["hcm-coord1", "danang-coord1"]).unwrap();
    let g = &st["groups"][0];
    assert_eq!(g["primary"], "hcm");
    assert!(g["epoch"].as_u64().unwrap() >= 2);
    assert!(qemu_io(topo.nbd_addr("hcm-rep"), "read -P 0x42 0 1M"));
}

#[test]
fn a_run_survives_the_loss_of_the_coordinator_leader() {
    // A lease that outlives a coordinator election, so the primary does not self-fence while
    // the new leader is chosen.
    let topo = Topo::new(TopoOpts {
        lease_ttl: "4s",
        ..TopoOpts::default()
    });
    let mut procs = cluster(&topo);
    let all: Vec<&str> = topo.coordinators.iter().map(String::as_str).collect();

    // 1. A switchover that waits for an approval before changing anything.
    let mut args = vec![
        "switchover",
        "vol",
        "--detach",
        "--param",
        "require_approval=true",
    ];
    args.extend(addr_args(&topo, &all));
    let (code, out, err) = topo.tandem(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let id = out.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(run) = run_json(&topo, &id, &all) {
            if step_status(&run, "go-ahead") == "awaiting-approval" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the run never reached its approval gate"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 2. kill -9 the coordinator leader while the run waits.
    let leader = topo.status(&[]).unwrap()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    procs.iter_mut().find(|p| p.name == leader).unwrap().kill9();
    let others: Vec<&str> = all.iter().copied().filter(|n| *n != leader).collect();
    topo.wait_status(&others, Duration::from_secs(15), "a new leader", |st| {
        st["leader"]
            .as_str()
            .filter(|l| *l != leader && !st["stale"].as_bool().unwrap_or(true))
            .map(str::to_owned)
    });

    // 3. The approval goes to the new leader; the run finishes there.
    // With mTLS the approver is the name in the client certificate: alice gets an operator
    // certificate from the cluster's CA.
    let certs = topo.path().join("certs");
    tandem_core::certs::Ca::load(&certs)
        .unwrap()
        .issue_client(
            &certs,
            "alice",
            "alice",
            tandem_core::certs::Role::Operator,
            Duration::from_secs(3600),
        )
        .unwrap();
    let mut args = vec!["approve", &id, "go-ahead", "--identity", "alice"];
    args.extend(addr_args(&topo, &others));
    let (code, out, err) = topo.tandem(&args);
    assert_eq!(code, 0, "approve failed:\n{out}\n{err}");
    let mut args = vec!["run", "follow", &id];
    args.extend(addr_args(&topo, &others));
    let (code, out, err) = topo.tandem(&args);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(
        code, 0,
        "the run did not finish on the new leader:\n{out}\n{err}"
    );
    let run = run_json(&topo, &id, &others).unwrap();
    assert_eq!(run["state"]["status"]["status"], "succeeded");
    assert_eq!(run["state"]["steps"][1]["decided_by"][0], "alice", "{run}");
    let st = topo.status(&others).unwrap();
    assert_eq!(st["groups"][0]["primary"], "hcm");
}

#[test]
fn a_repeatable_step_cut_short_by_the_leaders_loss_runs_again_on_the_new_leader() {
    let topo = Topo::new(TopoOpts::default());
    // 1. The group's drill runbook is a custom one with a long sleep step.
    let rb = topo.path().join("slow-drill.toml");
    std::fs::write(
        &rb,
        "name = \"slow-drill\"\nkind = \"drill\"\n\n[[steps]]\nid = \"wait\"\naction = \"sleep\"\nduration = \"3s\"\n\n[[steps]]\nid = \"ready\"\naction = \"check\"\nsite = \"replica\"\ncommand = 'test \"$TANDEM_STEP\" = ready'\ninterval = \"200ms\"\n",
    )
    .unwrap();
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
    let all: Vec<&str> = topo.coordinators.iter().map(String::as_str).collect();

    // 2. Start it and kill -9 the leader while the sleep step runs.
    let mut args = vec!["drill", "vol", "--detach"];
    args.extend(addr_args(&topo, &all));
    let (code, out, err) = topo.tandem(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let id = out.trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while run_json(&topo, &id, &all).is_none_or(|r| step_status(&r, "wait") != "running") {
        assert!(Instant::now() < deadline, "the sleep step never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let leader = topo.status(&[]).unwrap()["leader"]
        .as_str()
        .unwrap()
        .to_string();
    procs.iter_mut().find(|p| p.name == leader).unwrap().kill9();
    let others: Vec<&str> = all.iter().copied().filter(|n| *n != leader).collect();

    // 3. The new leader runs the step again and finishes the run.
    let mut args = vec!["run", "follow", &id];
    args.extend(addr_args(&topo, &others));
    let (code, out, err) = topo.tandem(&args);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "{out}\n{err}");
    let run = run_json(&topo, &id, &others).unwrap();
    let wait = &run["state"]["steps"][0];
    assert_eq!(wait["status"], "succeeded", "{run}");
    assert_eq!(wait["interruptions"], 1, "{run}");
    assert_eq!(wait["attempts"], 2, "{run}");
    assert_eq!(run["state"]["plan"]["runbook"], "slow-drill");
}

#[test]
fn runbook_check_and_plan_report_problems_as_file_line_column_with_exit_2() {
    let topo = Topo::new(TopoOpts::default());
    let bad = topo.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\nkind = \"drill\"\n\n[[steps]]\nid = \"a\"\naction = \"promte\"\n",
    )
    .unwrap();
    let bad_s = bad.to_str().unwrap();
    let (code, _, err) = topo.tandem(&["runbook", "check", bad_s]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{bad_s}:6:10: steps[0].action: unknown action \"promte\""
        )),
        "{err}"
    );
    let cfg = topo.config.to_str().unwrap();
    let (code, _, err) =
        topo.tandem(&["runbook", "plan", bad_s, "--group", "vol", "--config", cfg]);
    assert_eq!(code, 2, "{err}");
    // A stock runbook plans for the group (no coordinator running: roles from the file).
    let stock = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../runbooks/library/switchover.toml"
    );
    let (code, out, err) = topo.tandem(&[
        "runbook",
        "plan",
        stock,
        "--group",
        "vol",
        "--config",
        cfg,
        "--param",
        "require_approval=true",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("primary hanoi, replica hcm"), "{out}");
    assert!(
        out.contains("go-ahead") && !out.contains("skipped: when param.require_approval"),
        "{out}"
    );
    let (code, _, err) = topo.tandem(&[
        "runbook", "plan", stock, "--group", "vol", "--config", cfg, "--param", "nope=1",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no parameter \"nope\""), "{err}");
}

#[test]
fn failback_resyncs_the_returning_site_and_makes_it_primary_again() {
    let topo = Topo::new(TopoOpts {
        mode: "async",
        ..TopoOpts::default()
    });
    let mut procs = cluster(&topo);
    let all: Vec<&str> = topo.coordinators.iter().map(String::as_str).collect();
    let hanoi_nbd = topo.nbd_addr("hanoi-rep").to_string();
    let hcm_nbd = topo.nbd_addr("hcm-rep").to_string();

    // 1. Data at hanoi, replicated; then hanoi's replicator is lost and hcm takes over.
    assert!(write_acked(&hanoi_nbd, "write -P 0x11 0 1M"));
    topo.wait_status(&[], Duration::from_secs(10), "RPO 0", |st| {
        let g = &st["groups"][0];
        (g["rpo_ms"] == 0 && g["durable_seq"] == g["last_captured_seq"]).then_some(())
    });
    procs
        .iter_mut()
        .find(|p| p.name == "hanoi-rep")
        .unwrap()
        .kill9();
    let mut args = vec!["failover", "vol"];
    args.extend(addr_args(&topo, &all));
    let (code, out, err) = topo.tandem(&args);
    assert_eq!(code, 0, "failover failed:\n{out}\n{err}");

    // 2. Writes at hcm while hanoi is away.
    assert!(write_acked(&hcm_nbd, "write -P 0x22 1M 1M"));

    // 3. hanoi comes back; the failback resyncs it, verifies and switches back.
    procs.push(NodeProc::start(&topo, "hanoi-rep"));
    let mut args = vec!["failback", "vol", "--param", "require_approval=false"];
    args.extend(addr_args(&topo, &all));
    let (code, out, err) = topo.tandem(&args);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "failback failed:\n{out}\n{err}");
    eprintln!("{out}");
    let st = topo.status(&[]).unwrap();
    assert_eq!(st["groups"][0]["primary"], "hanoi");
    assert!(qemu_io(&hanoi_nbd, "read -P 0x11 0 1M"));
    assert!(qemu_io(&hanoi_nbd, "read -P 0x22 1M 1M"));
}
