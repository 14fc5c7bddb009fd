//! Point-in-time recovery with real processes and a real NBD client (qemu-io): write A,
//! checkpoint, write B over it, recover at the checkpoint (by tag and by time): the copy holds
//! A, byte-identical to a copy of the replica taken at that moment, while replication goes on;
//! the recovered point and its merkle roots are in the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

fn have_qemu() -> bool {
    let ok = Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: qemu-io is not installed (apt-get install qemu-utils)");
    }
    ok
}

fn qemu_write(url: &str, cmds: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-t", "none", url]);
    for c in cmds {
        cmd.arg("-c").arg(c);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn group(st: &Value) -> Option<&Value> {
    st["groups"].as_array()?.iter().find(|g| g["name"] == "vol")
}

/// A drill on the group as it was at the checkpoint: the `recover` action.
const DRILL: &str = r#"
name = "pitr-drill"
kind = "drill"
description = "Drill on the group as it was at the checkpoint before-b."

[[steps]]
id = "rewind"
action = "recover"
name = "pitr"
checkpoint = "before-b"
timeout = "2m"

[[steps]]
id = "ready"
action = "check"
site = "replica"
command = 'true'
interval = "1s"
timeout = "1m"
"#;

#[test]
fn recover_at_a_checkpoint_rebuilds_what_the_replica_held_then() {
    if !have_qemu() {
        return;
    }
    let topo = Topo::new(TopoOpts {
        mode: "async",
        volume_mib: 8,
        group_extra: "history = \"1h\"\nhistory_max = \"64MiB\"\ncheckpoint_interval = \"1s\"\n[groups.runbooks]\ndrill = \"pitr-drill.toml\"\n",
        ..TopoOpts::default()
    });
    std::fs::write(topo.path().join("pitr-drill.toml"), DRILL).unwrap();
    let mut names = topo.coordinators.clone();
    names.push("hanoi-rep".into());
    names.push("hcm-rep".into());
    let _procs: Vec<NodeProc> = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| steps(&topo)));
    if let Err(e) = r {
        dump_logs(&topo);
        std::panic::resume_unwind(e);
    }
}

fn steps(topo: &Topo) {
    let cfg = topo.config.to_str().unwrap();
    let url = format!("nbd://{}/disk0", topo.nbd_addr("hanoi-rep"));
    let replica_image = topo.path().join("volumes/hcm/disk0.img");
    // Caught up past `after`: the status may lag the writes by a heartbeat.
    let caught_up = |what: &str, after: u64| -> u64 {
        topo.wait_status(&[], Duration::from_secs(30), what, |st| {
            let g = group(st)?;
            let seq = g["last_captured_seq"].as_u64()?;
            (g["state"] == "protected"
                && g["lease"]["status"] == "active"
                && g["durable_seq"] == g["last_captured_seq"]
                && seq > after)
                .then_some(seq)
        })
    };
    // 1. Write A and let the replica catch up.
    topo.wait_status(&[], Duration::from_secs(30), "protected", |st| {
        (group(st)?["state"] == "protected").then_some(())
    });
    qemu_write(
        &url,
        &["write -P 0xaa 0 1M", "write -P 0x11 4M 64k", "flush"],
    );
    let seq_a = caught_up("A replicated", 0);

    // 2. A tagged checkpoint through the primary; it returns once the replica has it.
    let (code, out, err) = topo.tandem(&["checkpoint", "vol", "--tag", "before-b", "-c", cfg]);
    assert_eq!(code, 0, "checkpoint: {out}{err}");
    assert!(out.contains("before-b") && out.contains("seq"), "{out}");
    // The copy taken at that moment (nothing written since; the replica holds the checkpoint).
    let at_checkpoint = std::fs::read(&replica_image).unwrap();
    assert_eq!(&at_checkpoint[..1 << 20], &vec![0xaa; 1 << 20][..]);

    // 3. Write B over A (and elsewhere) and let it replicate: the live replica has B.
    qemu_write(
        &url,
        &["write -P 0xbb 512k 1M", "write -P 0x22 6M 128k", "flush"],
    );
    caught_up("B replicated", seq_a + 1);
    let live = std::fs::read(&replica_image).unwrap();
    assert_eq!(live[1 << 20], 0xbb);
    assert_ne!(live, at_checkpoint);

    // 4. The checkpoint is listed, and status shows the oldest recoverable time.
    let (code, out, err) = topo.tandem(&["checkpoints", "vol", "-c", cfg, "--json"]);
    assert_eq!(code, 0, "checkpoints: {err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    let tagged = list["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tag"] == "before-b" && p["kind"] == "tagged")
        .unwrap_or_else(|| panic!("no tagged checkpoint in {out}"))
        .clone();
    let oldest_ms = topo.wait_status(&[], Duration::from_secs(10), "history_oldest_ms", |st| {
        group(st)?["history_oldest_ms"].as_i64().filter(|m| *m > 0)
    });
    assert!(oldest_ms <= tagged["captured_ms"].as_i64().unwrap());
    let (code, out, _) = topo.tandem(&["checkpoints", "vol", "-c", cfg]);
    assert_eq!(code, 0);
    assert!(
        out.contains("oldest recoverable: seq") && out.contains("tagged      before-b"),
        "{out}"
    );
    let (code, out, _) = topo.tandem(&["status", "-c", cfg]);
    assert_eq!(code, 0);
    assert!(
        out.contains("history: oldest recoverable point seq"),
        "{out}"
    );

    // 5. Recover by tag while replication continues: the copy holds A, byte for byte.
    let out_dir = topo.path().join("recovered");
    let d = out_dir.to_str().unwrap();
    let (code, out, err) = topo.tandem(&[
        "recover",
        "vol",
        "--checkpoint",
        "before-b",
        "--out",
        d,
        "-c",
        cfg,
    ]);
    assert_eq!(code, 0, "recover: {out}{err}");
    assert!(out.contains(&format!("to seq {}", tagged["seq"])), "{out}");
    let recovered = std::fs::read(out_dir.join("disk0.img")).unwrap();
    assert!(
        recovered == at_checkpoint,
        "recovered copy differs from the copy at the checkpoint"
    );
    let root = out
        .split("merkle root ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_string();
    assert_eq!(root.len(), 64, "{out}");
    // Replication was not disturbed: the live replica still has B.
    assert_eq!(std::fs::read(&replica_image).unwrap(), live);

    // 6. By time: the checkpoint's capture time selects the same point.
    let out_dir2 = topo.path().join("recovered-at");
    let ms = tagged["captured_ms"].to_string();
    let (code, out, err) = topo.tandem(&[
        "recover",
        "vol",
        "--at",
        &ms,
        "--out",
        out_dir2.to_str().unwrap(),
        "-c",
        cfg,
    ]);
    assert_eq!(code, 0, "recover --at: {out}{err}");
    assert!(std::fs::read(out_dir2.join("disk0.img")).unwrap() == at_checkpoint);

    // 7. A tag that was never marked: a clear refusal, nothing built.
    let (code, _, err) = topo.tandem(&[
        "recover",
        "vol",
        "--checkpoint",
        "nope",
        "--out",
        topo.path().join("nope").to_str().unwrap(),
        "-c",
        cfg,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no checkpoint tagged \"nope\""), "{err}");

    // 8. A drill runbook with a `recover` step builds the same state at the replica site.
    let (code, out, err) = topo.tandem(&["drill", "vol", "-c", cfg]);
    assert_eq!(code, 0, "drill: {out}{err}");
    let rec = topo.path().join("data/hcm-rep/recovered/vol");
    let dirs: Vec<_> = std::fs::read_dir(&rec).unwrap().flatten().collect();
    assert_eq!(dirs.len(), 1, "one recovered copy in {}", rec.display());
    assert!(dirs[0].file_name().to_string_lossy().starts_with("pitr-"));
    assert!(std::fs::read(dirs[0].path().join("disk0.img")).unwrap() == at_checkpoint);

    // 9. The recovered points and their roots are in the audit chain (CLI and runbook).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, _) = topo.tandem(&["audit", "--json", "-c", cfg]);
        assert_eq!(code, 0);
        let found = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| {
                r["kind"] == "recover"
                    && r["detail"]["point"]["seq"] == tagged["seq"]
                    && r["detail"]["resources"][0]["root"] == root.as_str()
            })
            .count();
        // `recover --checkpoint`, `recover --at` and the drill's `recover` step.
        if found >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recover record with root {root} in {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
