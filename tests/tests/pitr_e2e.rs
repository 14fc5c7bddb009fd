//! Point-in-time recovery with real processes and a real NBD client (qemu-io): write A,
//! checkpoint, write B over it, recover at the checkpoint (by tag and by time): the copy holds
//! A, byte-identical to a copy of the replica taken at that moment, while replication goes on;
//! the recovered point and its merkle roots are in the audit chain.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::path::PathBuf;
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
    let p = Pitr {
        topo,
        cfg: topo.config.to_str().unwrap(),
        url: format!("nbd://{}/disk0", topo.nbd_addr("hanoi-rep")),
        replica_image: topo.path().join("volumes/hcm/disk0.img"),
    };
    // 1. Write A and let the replica catch up.
    let seq_a = p.write_a();
    // 2. A tagged checkpoint through the primary; it returns once the replica has it.
    let at_checkpoint = p.checkpoint_before_b();
    // 3. Write B over A (and elsewhere) and let it replicate: the live replica has B.
    let live = p.write_b(seq_a, &at_checkpoint);
    // 4. The checkpoint is listed, and status shows the oldest recoverable time.
    let tagged = p.checkpoint_is_listed();
    // 5. Recover by tag while replication continues: the copy holds A, byte for byte.
    let root = p.recover_by_tag(&tagged, &at_checkpoint, &live);
    // 6. By time: the checkpoint's capture time selects the same point.
    p.recover_by_time(&tagged, &at_checkpoint);
    // 7. A tag that was never marked: a clear refusal, nothing built.
    p.unknown_tag_is_refused();
    // 8. A drill runbook with a `recover` step builds the same state at the replica site.
    p.drill_recovers(&at_checkpoint);
    // 9. The recovered points and their roots are in the audit chain (CLI and runbook).
    p.audit_has_the_recoveries(&tagged, &root);
}

/// What every step needs: the topology, its config path, the primary's NBD export and the
/// replica's image file.
struct Pitr<'a> {
    topo: &'a Topo,
    cfg: &'a str,
    url: String,
    replica_image: PathBuf,
}

impl Pitr<'_> {
    /// Caught up past `after`: the status may lag the writes by a heartbeat.
    fn caught_up(&self, what: &str, after: u64) -> u64 {
        self.topo
            .wait_status(&[], Duration::from_secs(30), what, |st| {
                let g = group(st)?;
                let seq = g["last_captured_seq"].as_u64()?;
                (g["state"] == "protected"
                    && g["lease"]["status"] == "active"
                    && g["durable_seq"] == g["last_captured_seq"]
                    && seq > after)
                    .then_some(seq)
            })
    }

    /// Step 1: writes A once the group is protected; returns the sequence A reached.
    fn write_a(&self) -> u64 {
        self.topo
            .wait_status(&[], Duration::from_secs(30), "protected", |st| {
                (group(st)?["state"] == "protected").then_some(())
            });
        qemu_write(
            &self.url,
            &["write -P 0xaa 0 1M", "write -P 0x11 4M 64k", "flush"],
        );
        self.caught_up("A replicated", 0)
    }

    /// Step 2: tags checkpoint `before-b`; returns the replica image as it was then.
    fn checkpoint_before_b(&self) -> Vec<u8> {
        let (code, out, err) =
            self.topo
                .tandem(&["checkpoint", "vol", "--tag", "before-b", "-c", self.cfg]);
        assert_eq!(code, 0, "checkpoint: {out}{err}");
        assert!(out.contains("before-b") && out.contains("seq"), "{out}");
        // The copy taken at that moment (nothing written since; the replica holds the checkpoint).
        let at_checkpoint = std::fs::read(&self.replica_image).unwrap();
        assert_eq!(&at_checkpoint[..1 << 20], &vec![0xaa; 1 << 20][..]);
        at_checkpoint
    }

    /// Step 3: writes B over A; returns the live replica image holding B.
    fn write_b(&self, seq_a: u64, at_checkpoint: &[u8]) -> Vec<u8> {
        qemu_write(
            &self.url,
            &["write -P 0xbb 512k 1M", "write -P 0x22 6M 128k", "flush"],
        );
        self.caught_up("B replicated", seq_a + 1);
        let live = std::fs::read(&self.replica_image).unwrap();
        assert_eq!(live[1 << 20], 0xbb);
        assert_ne!(live, at_checkpoint);
        live
    }

    /// Step 4: lists the checkpoints; returns the tagged one.
    fn checkpoint_is_listed(&self) -> Value {
        let (code, out, err) = self
            .topo
            .tandem(&["checkpoints", "vol", "-c", self.cfg, "--json"]);
        assert_eq!(code, 0, "checkpoints: {err}");
        let list: Value = serde_json::from_str(&out).unwrap();
        let tagged = list["points"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["tag"] == "before-b" && p["kind"] == "tagged")
            .unwrap_or_else(|| panic!("no tagged checkpoint in {out}"))
            .clone();
        let oldest_ms =
            self.topo
                .wait_status(&[], Duration::from_secs(10), "history_oldest_ms", |st| {
                    group(st)?["history_oldest_ms"].as_i64().filter(|m| *m > 0)
                });
        assert!(oldest_ms <= tagged["captured_ms"].as_i64().unwrap());
        let (code, out, _) = self.topo.tandem(&["checkpoints", "vol", "-c", self.cfg]);
        assert_eq!(code, 0);
        assert!(
            out.contains("oldest recoverable: seq") && out.contains("tagged      before-b"),
            "{out}"
        );
        let (code, out, _) = self.topo.tandem(&["status", "-c", self.cfg]);
        assert_eq!(code, 0);
        assert!(
            out.contains("history: oldest recoverable point seq"),
            "{out}"
        );
        tagged
    }

    /// Step 5: recovers at tag `before-b`; returns the recovered copy's merkle root.
    fn recover_by_tag(&self, tagged: &Value, at_checkpoint: &[u8], live: &[u8]) -> String {
        // Inside the replica replicator's recover root (DATA_DIR/recovered).
        let out_dir = self.topo.path().join("data/hcm-rep/recovered/cli/before-b");
        let d = out_dir.to_str().unwrap();
        let (code, out, err) = self.topo.tandem(&[
            "recover",
            "vol",
            "--checkpoint",
            "before-b",
            "--out",
            d,
            "-c",
            self.cfg,
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
        assert_eq!(std::fs::read(&self.replica_image).unwrap(), live);
        root
    }

    /// Step 6: recovers at the tagged checkpoint's capture time.
    fn recover_by_time(&self, tagged: &Value, at_checkpoint: &[u8]) {
        let out_dir2 = self.topo.path().join("data/hcm-rep/recovered/cli/at");
        let ms = tagged["captured_ms"].to_string();
        let (code, out, err) = self.topo.tandem(&[
            "recover",
            "vol",
            "--at",
            &ms,
            "--out",
            out_dir2.to_str().unwrap(),
            "-c",
            self.cfg,
        ]);
        assert_eq!(code, 0, "recover --at: {out}{err}");
        assert!(std::fs::read(out_dir2.join("disk0.img")).unwrap() == at_checkpoint);
    }

    /// Step 7: recovering at an unknown tag is refused.
    fn unknown_tag_is_refused(&self) {
        let (code, _, err) = self.topo.tandem(&[
            "recover",
            "vol",
            "--checkpoint",
            "nope",
            "--out",
            self.topo
                .path()
                .join("data/hcm-rep/recovered/cli/nope")
                .to_str()
                .unwrap(),
            "-c",
            self.cfg,
        ]);
        assert_ne!(code, 0);
        assert!(err.contains("no checkpoint tagged \"nope\""), "{err}");
    }

    /// Step 8: the drill's `recover` step builds one copy at the replica site.
    fn drill_recovers(&self, at_checkpoint: &[u8]) {
        let (code, out, err) = self.topo.tandem(&["drill", "vol", "-c", self.cfg]);
        assert_eq!(code, 0, "drill: {out}{err}");
        let rec = self.topo.path().join("data/hcm-rep/recovered/vol");
        let dirs: Vec<_> = std::fs::read_dir(&rec).unwrap().flatten().collect();
        assert_eq!(dirs.len(), 1, "one recovered copy in {}", rec.display());
        assert!(dirs[0].file_name().to_string_lossy().starts_with("pitr-"));
        assert!(std::fs::read(dirs[0].path().join("disk0.img")).unwrap() == at_checkpoint);
    }

    /// Step 9: three recover records with the point and root reach the audit chain.
    fn audit_has_the_recoveries(&self, tagged: &Value, root: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, out, _) = self.topo.tandem(&["audit", "--json", "-c", self.cfg]);
            assert_eq!(code, 0);
            let found = out
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|r| {
                    r["kind"] == "recover"
                        && r["detail"]["point"]["seq"] == tagged["seq"]
                        && r["detail"]["resources"][0]["root"] == root
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
}
