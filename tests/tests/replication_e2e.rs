//! Block-volume replication with real processes and a real NBD client (qemu-io): the replica
//! image becomes byte-identical, across replica and primary crashes, and sync mode keeps every
//! acknowledged write.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

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

struct Cluster {
    topo: Topo,
    procs: Vec<NodeProc>,
}

impl Cluster {
    fn start(opts: TopoOpts) -> Cluster {
        let topo = Topo::new(opts);
        let mut names = topo.coordinators.clone();
        names.push("hanoi-rep".into());
        names.push("hcm-rep".into());
        let procs = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
        let c = Cluster { topo, procs };
        c.wait_group(Duration::from_secs(30), "protected with a lease", |g| {
            g["state"] == "protected" && g["lease"]["status"] == "active"
        });
        c
    }

    fn proc(&mut self, name: &str) -> &mut NodeProc {
        self.procs.iter_mut().find(|p| p.name == name).unwrap()
    }

    fn restart(&mut self, name: &str) {
        let p = NodeProc::start(&self.topo, name);
        let i = self.procs.iter().position(|p| p.name == name).unwrap();
        self.procs[i] = p;
    }

    fn wait_group(&self, timeout: Duration, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.topo.wait_status(&[], timeout, what, |st| {
                st["groups"]
                    .as_array()?
                    .iter()
                    .find(|g| g["name"] == "vol")
                    .filter(|g| f(g))
                    .map(|_| ())
            })
        }));
        if let Err(e) = r {
            dump_logs(&self.topo);
            std::panic::resume_unwind(e);
        }
    }

    fn wait_caught_up(&self) {
        self.wait_group(
            Duration::from_secs(30),
            "RPO 0 and replica caught up",
            |g| {
                g["rpo_ms"] == 0
                    && g["durable_seq"] == g["last_captured_seq"]
                    && g["last_captured_seq"].as_u64() > Some(0)
            },
        );
    }

    fn url(&self, rep: &str) -> String {
        format!("nbd://{}/disk0", self.topo.nbd_addr(rep))
    }

    fn image(&self, site: &str) -> Vec<u8> {
        std::fs::read(self.topo.path().join(format!("volumes/{site}/disk0.img"))).unwrap()
    }

    fn assert_identical(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (a, b) = (self.image("hanoi"), self.image("hcm"));
            if a == b {
                return;
            }
            if Instant::now() > deadline {
                let first = a.iter().zip(&b).position(|(x, y)| x != y);
                dump_logs(&self.topo);
                panic!("replica differs from primary (first differing byte {first:?})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// qemu-io commands writing `n` patterns at pseudo-random offsets; returns (offset, len, pattern).
fn writes(seed: u64, n: usize, volume: u64) -> Vec<(u64, u64, u8)> {
    let mut rng = tandem_core_rng(seed);
    (0..n)
        .map(|i| {
            let len = 4096 * (1 + rng() % 32);
            let off = (rng() % ((volume - len) / 512)) * 512;
            (off, len, (i % 250 + 1) as u8)
        })
        .collect()
}

fn tandem_core_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

fn qemu_write(url: &str, ws: &[(u64, u64, u8)]) -> std::process::Output {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-t", "none", url]);
    for (off, len, p) in ws {
        cmd.arg("-c").arg(format!("write -P {p} {off} {len}"));
    }
    cmd.output().unwrap()
}

const MIB16: u64 = 16 << 20;

#[test]
fn qemu_writes_reach_a_byte_identical_replica_across_replica_and_primary_crashes() {
    if !have_qemu() {
        return;
    }
    // `compression = "auto"`: frames of whatever level the backlog chose (raw, zstd-1, zstd-3)
    // are journaled, replayed after the crashes and applied alike (every other suite runs the
    // default, zstd-1).
    let mut c = Cluster::start(TopoOpts {
        mode: "async",
        group_extra: "compression = \"auto\"",
        ..TopoOpts::default()
    });
    let url = c.url("hanoi-rep");
    // 1. Random pattern writes through the primary's NBD export.
    let out = qemu_write(&url, &writes(1, 60, MIB16));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_caught_up();
    c.assert_identical();

    // 2. The replica is killed -9 while more writes arrive, then restarted: it resumes from
    //    its watermark.
    c.proc("hcm-rep").kill9();
    let out = qemu_write(&url, &writes(2, 60, MIB16));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.restart("hcm-rep");
    c.wait_caught_up();
    c.assert_identical();

    // 3. The primary replicator is killed -9 right after acknowledging writes, and restarted:
    //    its journal is replayed and shipping resumes; nothing acknowledged is missing.
    let ws = writes(3, 60, MIB16);
    let out = qemu_write(&url, &ws);
    assert!(out.status.success());
    c.proc("hanoi-rep").kill9();
    c.restart("hanoi-rep");
    c.wait_group(Duration::from_secs(30), "lease back", |g| {
        g["lease"]["status"] == "active"
    });
    c.wait_caught_up();
    c.assert_identical();
    // The last writes of every offset are on both sides.
    let img = c.image("hcm");
    let mut last = std::collections::BTreeMap::new();
    for (off, len, p) in writes(1, 60, MIB16)
        .into_iter()
        .chain(writes(2, 60, MIB16))
        .chain(ws)
    {
        for b in (off..off + len).step_by(512) {
            last.insert(b, p);
        }
    }
    for (b, p) in last {
        assert_eq!(img[b as usize], p, "byte {b} lost");
    }
}

#[test]
fn sync_mode_keeps_every_acknowledged_write_when_the_primary_dies() {
    if !have_qemu() {
        return;
    }
    let mut c = Cluster::start(TopoOpts {
        mode: "sync",
        ..TopoOpts::default()
    });
    let url = c.url("hanoi-rep");
    let ws = writes(7, 80, MIB16);
    let out = qemu_write(&url, &ws);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kill -9 the primary the moment qemu-io saw its last acknowledgement.
    c.proc("hanoi-rep").kill9();
    let img = c.image("hcm");
    let mut last = std::collections::BTreeMap::new();
    for (off, len, p) in ws {
        for b in (off..off + len).step_by(512) {
            last.insert(b, p);
        }
    }
    for (b, p) in last {
        assert_eq!(
            img[b as usize], p,
            "acknowledged write at byte {b} missing on the replica"
        );
    }
}

/// A file of `len` incompressible bytes (xorshift), for writes zstd cannot shrink.
fn random_file(dir: &std::path::Path, seed: u64, len: usize) -> std::path::PathBuf {
    let mut rng = tandem_core_rng(seed);
    let data: Vec<u8> = (0..len / 8).flat_map(|_| rng().to_le_bytes()).collect();
    let path = dir.join(format!("random-{seed}.img"));
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn a_full_journal_overflows_into_a_merkle_resync_and_tandem_resync_repairs_a_diverged_replica() {
    if !have_qemu() {
        return;
    }
    let mut c = Cluster::start(TopoOpts {
        mode: "async",
        group_extra: "journal_max = \"1MiB\"",
        ..TopoOpts::default()
    });
    let url = c.url("hanoi-rep");
    // 1. Some writes reach the replica.
    let out = qemu_write(&url, &writes(21, 20, MIB16));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_caught_up();

    // 2. The replica site's replicator dies; 16 MiB of incompressible data arrives, 16 times the
    //    journal limit. Intake does not stop: the journal overflows and the group says so.
    c.proc("hcm-rep").kill9();
    let src = random_file(c.topo.path(), 22, MIB16 as usize);
    let out = Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw", "-t", "none"])
        .arg(&src)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "writes refused with the journal full: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait_group(Duration::from_secs(10), "journal overflow reported", |g| {
        g["reason"]
            .as_str()
            .is_some_and(|r| r.contains("journal overflow"))
            && g["rpo_ms"].as_i64() > Some(0)
    });

    // 3. The replica returns: it can no longer be sent the dropped frames, so the primary asks
    //    it to resync by merkle diff; then the stream resumes and the copies are identical.
    c.restart("hcm-rep");
    c.wait_caught_up();
    c.assert_identical();
    assert_eq!(
        c.image("hcm"),
        std::fs::read(&src).unwrap(),
        "replica holds the new data"
    );
    c.wait_group(Duration::from_secs(10), "overflow cleared", |g| {
        !g["reason"]
            .as_str()
            .is_some_and(|r| r.contains("journal overflow"))
    });

    // 4. The replica's image is damaged behind Tandem's back (a disk fault): verify sees it,
    //    `tandem resync` repairs it with a progress report, and verify agrees again.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(c.topo.path().join("volumes/hcm/disk0.img"))
            .unwrap();
        f.write_all_at(&[0x5a; 8192], 3 << 20).unwrap();
        f.sync_all().unwrap();
    }
    let cfg = c.topo.config.display().to_string();
    // 1 MiB chunks: 16 barriers, the damage in the fourth.
    let (code, out, err) = c
        .topo
        .tandem(&["verify", "vol", "--config", &cfg, "--chunk-mib", "1"]);
    assert_eq!(code, 1, "verify must see the damage: {out}\n{err}");
    assert!(out.contains("DIFFERENT"), "{out}");
    assert!(
        out.contains("0x300000..0x310000"),
        "the damaged block is named: {out}"
    );
    assert!(err.contains("verifying disk0"), "progress shown: {err}");
    let (code, out, err) =
        c.topo
            .tandem(&["resync", "vol", "--config", &cfg, "--timeout-secs", "60"]);
    assert_eq!(code, 0, "resync failed: {out}\n{err}");
    assert!(out.contains("resynced from the primary"), "{out}");
    assert!(
        out.contains("1 differing blocks pulled"),
        "one 64 KiB block was damaged: {out}"
    );
    assert!(err.contains("copying disk0"), "progress shown: {err}");
    c.wait_caught_up();
    let (code, out, err) = c.topo.tandem(&["verify", "vol", "--config", &cfg]);
    assert_eq!(code, 0, "verify after resync: {out}\n{err}");
    // Writes still replicate after the resync.
    let out = qemu_write(&url, &writes(23, 20, MIB16));
    assert!(out.status.success());
    c.wait_caught_up();
    c.assert_identical();
    let (_, audit, _) = c.topo.tandem(&["audit", "--config", &cfg]);
    assert!(
        audit.contains("resync"),
        "resync recorded in the audit chain: {audit}"
    );
}

#[test]
fn a_scanned_volume_written_by_others_reaches_a_byte_identical_replica_across_a_primary_restart() {
    let mut c = Cluster::start(TopoOpts {
        mode: "async",
        resource_extra: "capture = \"scan\"\nscan_interval = \"200ms\"",
        ..TopoOpts::default()
    });
    let primary = c.topo.path().join("volumes/hanoi/disk0.img");
    let write_direct = |seed: u64, n: usize| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&primary)
            .unwrap();
        for (off, len, p) in writes(seed, n, MIB16) {
            f.write_all_at(&vec![p; len as usize], off).unwrap();
        }
    };
    // 1. Another program writes the primary's image; scan passes ship the changed blocks.
    write_direct(31, 40);
    c.wait_caught_up();
    c.assert_identical();
    // 2. The primary replicator restarts: it keeps its tree of what it journaled, so it ships
    //    only what changed meanwhile, and the replica converges again.
    c.proc("hanoi-rep").kill9();
    write_direct(32, 40);
    c.restart("hanoi-rep");
    c.wait_group(Duration::from_secs(30), "lease back", |g| {
        g["lease"]["status"] == "active"
    });
    c.wait_caught_up();
    c.assert_identical();
    let raw = c.topo.status(&[]).unwrap();
    let g = raw["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "vol")
        .unwrap()
        .clone();
    assert!(
        g["bytes_raw"].as_u64().unwrap() < MIB16,
        "after the restart only changed blocks are shipped, not the volume again: {g}"
    );
}

/// Starts node `name` as [`NodeProc::start`] does, following the failpoint file `fp`.
fn start_with_failpoints(topo: &Topo, name: &str, fp: &std::path::Path) -> NodeProc {
    NodeProc::start_with_env(
        topo,
        name,
        &[(tandem_core::fault::FAILPOINTS_FILE_ENV, fp.as_os_str())],
    )
}

/// Writes `ws` through the export at `url` once it takes writes (a restarted primary's
/// export is read-only until it holds its lease again; the status may say so late).
fn write_once_writable(c: &Cluster, url: &str, ws: &[(u64, u64, u8)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = qemu_write(url, ws);
        if out.status.success() {
            return;
        }
        if Instant::now() > deadline {
            dump_logs(&c.topo);
            panic!("{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sync writes leave for the replica while the primary's journal sync runs. A primary that
/// loses power after the replica made a write durable but before its own journal sync ended
/// comes back without that write (never acknowledged), the replica holding it: the replica is
/// rolled back by a resync from the primary before the group is protected again, the copies
/// are equal by `tandem verify`, and no acknowledged write is lost.
#[test]
fn a_replica_holding_a_write_the_restarted_primary_lost_before_its_sync_is_rolled_back() {
    if !have_qemu() || !tandem_core::fault::ENABLED {
        eprintln!("SKIPPED: needs qemu-io and a build with failpoints");
        return;
    }
    let mut c = Cluster::start(TopoOpts {
        mode: "sync",
        ..TopoOpts::default()
    });
    // 1. The primary replicator follows a failpoint file (empty for now); acknowledged sync
    //    writes reach both copies.
    let fp = c.topo.path().join("hanoi-rep.failpoints");
    std::fs::write(&fp, "").unwrap();
    c.proc("hanoi-rep").kill9();
    let p = start_with_failpoints(&c.topo, "hanoi-rep", &fp);
    let i = c.procs.iter().position(|p| p.name == "hanoi-rep").unwrap();
    c.procs[i] = p;
    c.wait_group(Duration::from_secs(30), "protected with a lease", |g| {
        g["state"] == "protected" && g["lease"]["status"] == "active"
    });
    let url = c.url("hanoi-rep");
    let acked = writes(31, 40, MIB16);
    write_once_writable(&c, &url, &acked);
    c.wait_caught_up();

    // 2. Power loss at the primary between shipping and its journal sync: the failpoint
    //    waits for the replica's durable acknowledgement, drops the journal's unsynced tail
    //    and aborts. The write is never acknowledged.
    std::fs::write(&fp, "journal-before-fsync-shipped=1*return(lose)\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let lost = [(1u64 << 20, 4096u64, 0xeeu8)];
    let out = qemu_write(&url, &lost);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !said.contains("wrote 4096/4096"),
        "the write must not be acknowledged: {said}"
    );
    let exited = c.proc("hanoi-rep").child.wait().unwrap();
    assert!(!exited.success(), "the primary aborted at the failpoint");
    let log = std::fs::read_to_string(c.topo.path().join("hanoi-rep.log")).unwrap();
    assert!(
        log.contains("failpoint journal-before-fsync-shipped fired"),
        "the failpoint fired"
    );
    // The failpoint waited for the replica's durable acknowledgement: it holds the write.
    assert_eq!(
        c.image("hcm")[1 << 20],
        0xee,
        "the replica holds the lost write"
    );

    // 3. Restarted without a failover: its journal ends below what the replica applied. The
    //    replica is resynced from it (the write is rolled back), then protected again.
    std::fs::write(&fp, "").unwrap();
    c.restart("hanoi-rep");
    let log_path = c.topo.path().join("hanoi-rep.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("rolled back by a resync from the primary") {
            break;
        }
        if Instant::now() > deadline {
            dump_logs(&c.topo);
            panic!("the primary never asked the replica to roll back");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait_group(Duration::from_secs(60), "protected again", |g| {
        g["state"] == "protected" && g["lease"]["status"] == "active"
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("lost durable tail"),
        "not mistaken for a lost durable tail"
    );

    // 4. Writes replicate again; the copies are equal by `tandem verify` and byte for byte;
    //    every acknowledged write is on both.
    let more = writes(32, 20, MIB16);
    write_once_writable(&c, &url, &more);
    c.wait_caught_up();
    let cfg = c.topo.config.display().to_string();
    let (code, out, err) = c.topo.tandem(&["verify", "vol", "--config", &cfg]);
    assert_eq!(code, 0, "verify: {out}\n{err}");
    c.assert_identical();
    let img = c.image("hcm");
    let mut last = std::collections::BTreeMap::new();
    for (off, len, p) in acked.into_iter().chain(more) {
        for b in (off..off + len).step_by(512) {
            last.insert(b, p);
        }
    }
    for (b, p) in last {
        assert_eq!(img[b as usize], p, "acknowledged write at byte {b} lost");
    }
}
