//! Placement with real processes (issue 20): three replicator hosts per site under
//! `tandem local up`, groups spread over them by the placement function and one pinned with
//! `hosts`; status names the host serving each group at each site, the lease is held by the
//! primary host, and a write through the pinned group's NBD export reaches the replica
//! byte for byte (verify). Then one primary-site host is killed (kill -9): only its groups fail
//! over, with the write they acknowledged; the other hosts' groups keep their role and epoch
//! and still take writes.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;
use tandem_core::config::Topology;
use tandem_tests::{free_port, tandem_quiet as tandem, wait_group_of};

/// Groups `p1`..`p6`, each one 1 MiB sync volume with automatic failover; `p6` pinned.
const GROUPS: [&str; 6] = ["p1", "p2", "p3", "p4", "p5", "p6"];

fn more_hosts_and_groups(mut text: String) -> String {
    for site in ["hanoi", "hcm"] {
        for k in 2..=3 {
            let _ = write!(
                text,
                "\n[[nodes]]\nname = \"{site}-rep-{k}\"\nsite = \"{site}\"\nrole = \"replicator\"\n\
                 listen = \"127.0.0.1:{}\"\ndata_dir = \"data/{site}-rep-{k}\"\n\
                 nbd_listen = \"127.0.0.1:{}\"\n",
                free_port(),
                free_port()
            );
        }
    }
    for g in GROUPS {
        let pin = if g == "p6" {
            "hosts = { hanoi = \"hanoi-rep-3\", hcm = \"hcm-rep-2\" }\n"
        } else {
            ""
        };
        let _ = write!(
            text,
            "\n[[groups]]\nname = \"{g}\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\nmode = \"sync\"\n\
             auto_failover = true\nrto_target = \"1m\"\n{pin}\n[[groups.resources]]\nname = \"{g}d\"\n\
             kind = \"volume\"\nsize = \"1MiB\"\npath = \"volumes/hanoi/{g}.img\"\n\
             replica_path = \"volumes/hcm/{g}.img\"\n"
        );
    }
    text
}

#[test]
fn groups_are_served_by_their_placed_hosts_and_status_names_them() {
    let (dir, config) = tandem_tests::example_topology(more_hosts_and_groups);
    let cfg = config.to_str().unwrap();
    let check = tandem(&["config", "check", cfg]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let topo = Topology::load(&config).unwrap();
    let run = dir.path().join("run");
    tandem_tests::local_up(&config, &run);
    let _down = tandem_tests::LocalDown(run.clone());

    let mut at_hanoi = BTreeSet::new();
    for g in GROUPS {
        let cg = topo.group(g).unwrap();
        let want_p = topo.host_for(cg, "hanoi").unwrap().name.clone();
        let want_r = topo.host_for(cg, "hcm").unwrap().name.clone();
        if g == "p6" {
            assert_eq!(
                (want_p.as_str(), want_r.as_str()),
                ("hanoi-rep-3", "hcm-rep-2")
            );
        }
        wait_group_of(
            &config,
            g,
            "protected, leased by its placed host, hosts named",
            Duration::from_secs(90),
            &|st| {
                st["state"] == "protected"
                    && st["lease"]["status"] == "active"
                    && st["lease"]["holder"] == want_p.as_str()
                    && st["primary_host"] == want_p.as_str()
                    && st["replica_host"] == want_r.as_str()
            },
        );
        at_hanoi.insert(want_p);
    }
    assert!(
        at_hanoi.len() >= 2,
        "the placement function put every group on one host: {at_hanoi:?}"
    );

    // The human status shows the hosts.
    let out = tandem(&["status", "--config", cfg, "--group", "p6"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hosts: hanoi-rep-3 at hanoi, hcm-rep-2 at hcm"),
        "{text}"
    );

    // A write through the pinned group's export (on hanoi-rep-3) reaches hcm-rep-2.
    if Command::new("qemu-io").arg("--version").output().is_ok() {
        let url = nbd_url(cfg, "p6");
        let port = topo
            .node("hanoi-rep-3")
            .unwrap()
            .nbd_listen
            .clone()
            .unwrap();
        assert!(url.contains(&port), "{url} is not hanoi-rep-3's export");
        let w = Command::new("qemu-io")
            .args([
                "-f",
                "raw",
                "-t",
                "none",
                &url,
                "-c",
                "write -P 171 0 65536",
            ])
            .output()
            .unwrap();
        assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
        let v = tandem(&["verify", "p6", "--config", cfg]);
        assert!(
            v.status.success(),
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        let replica = std::fs::read(dir.path().join("volumes/hcm/p6.img")).unwrap();
        assert!(replica[..65536].iter().all(|b| *b == 171));
    } else {
        eprintln!("SKIPPED the write: qemu-io is not installed (apt-get install qemu-utils)");
    }
    lose_one_host(&dir, &config, &topo);
    let _ = tandem(&["local", "down", "--dir", run.to_str().unwrap()]);
}

/// The NBD URL of `group`'s first volume, from `tandem status`.
fn nbd_url(cfg: &str, group: &str) -> String {
    let st: serde_json::Value = serde_json::from_slice(
        &tandem(&["status", "--json", "--config", cfg, "--group", group]).stdout,
    )
    .unwrap();
    st["groups"][0]["resources"][0]["nbd_url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Kills hanoi-rep-3 (p6's primary host): its groups fail over to hcm, the others do not.
fn lose_one_host(dir: &tempfile::TempDir, config: &std::path::Path, topo: &Topology) {
    let cfg = config.to_str().unwrap();
    let status = || -> serde_json::Value {
        serde_json::from_slice(&tandem(&["status", "--json", "--config", cfg]).stdout).unwrap()
    };
    let before = status();
    let epoch = |st: &serde_json::Value, g: &str| {
        st["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|x| x["name"] == g))
            .map(|x| x["epoch"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let on_lost: Vec<&str> = GROUPS
        .into_iter()
        .filter(|g| {
            topo.host_for_group(g, "hanoi")
                .is_some_and(|h| h.name == "hanoi-rep-3")
        })
        .collect();
    assert!(on_lost.contains(&"p6"));
    assert!(
        on_lost.len() < GROUPS.len(),
        "every group is on hanoi-rep-3"
    );
    let pid = std::fs::read_to_string(dir.path().join("run/hanoi-rep-3.pid")).unwrap();
    let kill = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(kill.success());
    for g in &on_lost {
        wait_group_of(
            config,
            g,
            "failed over to hcm",
            Duration::from_secs(60),
            &|st| {
                st["primary"] == "hcm"
                    && st["lease"]["status"] == "active"
                    && st["lease"]["holder"] == topo.host_for_group(g, "hcm").unwrap().name.as_str()
            },
        );
    }
    // p6's acknowledged write is at hcm-rep-2, now its primary.
    if Command::new("qemu-io").arg("--version").output().is_ok() {
        let img = std::fs::read(dir.path().join("volumes/hcm/p6.img")).unwrap();
        assert!(img[..65536].iter().all(|b| *b == 171), "p6 lost its write");
    }
    // The other hosts' groups never changed role or epoch, and still take writes.
    let after = status();
    for g in GROUPS.into_iter().filter(|g| !on_lost.contains(g)) {
        let st = after["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|x| x["name"] == g))
            .cloned()
            .unwrap_or_default();
        assert_eq!(st["primary"], "hanoi", "{g}: {st}");
        assert_eq!(epoch(&after, g), epoch(&before, g), "{g}: {st}");
        assert_ne!(st["state"], "failing-over", "{g}: {st}");
        if let Some(url) = st["resources"][0]["nbd_url"].as_str() {
            if Command::new("qemu-io").arg("--version").output().is_ok() {
                let w = Command::new("qemu-io")
                    .args(["-f", "raw", "-t", "none", url, "-c", "write -P 7 4096 4096"])
                    .output()
                    .unwrap();
                assert!(
                    w.status.success(),
                    "{g}: {}",
                    String::from_utf8_lossy(&w.stderr)
                );
            }
        }
    }
}

/// A writer on `url` until `stop`: 64 KiB writes, pattern `1 + n % 250` at slot `n % 16`,
/// one qemu-io process each; returns each slot's last acknowledged pattern, the number of
/// writes and the longest one.
fn write_until(
    url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<Option<u8>>, usize, Duration)> {
    std::thread::spawn(move || {
        let mut last = vec![None; 16];
        let (mut n, mut longest) = (0usize, Duration::ZERO);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let (slot, pattern) = (n % 16, (1 + n % 250) as u8);
            let cmd = format!("write -P {pattern} {} 65536", slot * 65536);
            let t = std::time::Instant::now();
            let w = Command::new("qemu-io")
                .args(["-f", "raw", "-t", "none", &url, "-c", &cmd])
                .output()
                .unwrap();
            longest = longest.max(t.elapsed());
            assert!(
                w.status.success() && !String::from_utf8_lossy(&w.stdout).contains("failed"),
                "write {n} failed during the move: {}{}",
                String::from_utf8_lossy(&w.stdout),
                String::from_utf8_lossy(&w.stderr)
            );
            last[slot] = Some(pattern);
            n += 1;
        }
        (last, n, longest)
    })
}

#[test]
fn tandem_move_takes_the_replica_side_to_another_host_under_writes() {
    if Command::new("qemu-io").arg("--version").output().is_err() {
        eprintln!("SKIPPED: qemu-io is not installed (apt-get install qemu-utils)");
        return;
    }
    let (dir, config) = tandem_tests::example_topology(more_hosts_and_groups);
    let cfg = config.to_str().unwrap();
    let run = dir.path().join("run");
    tandem_tests::local_up(&config, &run);
    let _down = tandem_tests::LocalDown(run.clone());
    let protected_on = |host: &'static str| {
        move |st: &serde_json::Value| {
            st["state"] == "protected"
                && st["replica_host"] == host
                && st["lease"]["remaining_ms"].as_i64() > Some(0)
        }
    };
    wait_group_of(
        &config,
        "p6",
        "protected",
        Duration::from_secs(90),
        &protected_on("hcm-rep-2"),
    );
    // hcm-rep-3 becomes a host with its own disk: restarted from a copy of the topology in
    // another folder, its volumes and data resolve there (on one machine, the hosts of a
    // site otherwise share the topology's folder).
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(&config, other.path().join("topology.toml")).unwrap();
    let topo = Topology::load(&config).unwrap();
    let tls = topo.tls.dir.file_name().unwrap();
    std::os::unix::fs::symlink(&topo.tls.dir, other.path().join(tls)).unwrap();
    let pid = std::fs::read_to_string(run.join("hcm-rep-3.pid")).unwrap();
    assert!(Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap()
        .success());
    let log = std::fs::File::create(other.path().join("hcm-rep-3.log")).unwrap();
    let mut rep3 = Command::new(tandem_tests::tandem_bin())
        .args(["node", "--config"])
        .arg(other.path().join("topology.toml"))
        .args(["--name", "hcm-rep-3"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _rep3 = Kill(&mut rep3);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_until(nbd_url(cfg, "p6"), stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    let moved = tandem(&[
        "move",
        "p6",
        "--site",
        "hcm",
        "--to",
        "hcm-rep-3",
        "--reason",
        "rebalance",
        "--config",
        cfg,
        "--timeout-secs",
        "120",
    ]);
    let out = String::from_utf8_lossy(&moved.stdout).into_owned();
    assert!(
        moved.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    assert!(out.contains("moved p6 at hcm to hcm-rep-3"), "{out}");
    // Writes go on after the move, to the new host.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (last, writes, longest) = writer.join().unwrap();
    eprintln!("{writes} writes during the move, the longest {longest:?}");
    assert!(writes >= 4, "only {writes} writes");
    // The topology still pins p6 to hcm-rep-2: status says where the data lives now, and
    // that the file no longer agrees, until it is changed.
    wait_group_of(
        &config,
        "p6",
        "protected by hcm-rep-3, the pin in the file named as changed",
        Duration::from_secs(30),
        &|st| {
            protected_on("hcm-rep-3")(st)
                && st["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("its data lives on hcm-rep-3, which keeps serving it")
        },
    );
    let v = tandem(&["verify", "p6", "--config", cfg]);
    assert!(
        v.status.success(),
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    // Nothing acknowledged is missing from the new host's own copy.
    let copy = std::fs::read(other.path().join("volumes/hcm/p6.img")).unwrap();
    for (slot, want) in last.iter().enumerate() {
        if let Some(p) = want {
            let got = &copy[slot * 65536..(slot + 1) * 65536];
            assert!(
                got.iter().all(|b| b == p),
                "slot {slot}: want {p}, got {}",
                got[0]
            );
        }
    }
    // The move is in the audit chain, started and completed, under the operator's name.
    let audit =
        String::from_utf8_lossy(&tandem(&["audit", "--json", "--config", cfg]).stdout).into_owned();
    let phases: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "move")
        .collect();
    assert_eq!(phases.len(), 2, "{phases:?}");
    assert_eq!(phases[0]["detail"]["phase"], "started");
    assert_eq!(phases[0]["detail"]["from"], "hcm-rep-2");
    assert_eq!(phases[1]["detail"]["phase"], "completed");
    assert_eq!(phases[1]["actor"], "hcm-rep-3");
    // A second move to the same host is refused, naming why.
    let again = tandem(&[
        "move",
        "p6",
        "--site",
        "hcm",
        "--to",
        "hcm-rep-3",
        "--config",
        cfg,
    ]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The primary side does not move this way.
    let primary = tandem(&[
        "move",
        "p6",
        "--site",
        "hanoi",
        "--to",
        "hanoi-rep-2",
        "--config",
        cfg,
    ]);
    assert!(!primary.status.success());
    let _ = tandem(&["local", "down", "--dir", run.to_str().unwrap()]);
}

#[test]
fn a_failover_during_a_move_cancels_it_and_promotes_the_old_replica_host() {
    if Command::new("qemu-io").arg("--version").output().is_err() {
        eprintln!("SKIPPED: qemu-io is not installed (apt-get install qemu-utils)");
        return;
    }
    let (dir, config) = tandem_tests::example_topology(more_hosts_and_groups);
    let cfg = config.to_str().unwrap();
    let run = dir.path().join("run");
    tandem_tests::local_up(&config, &run);
    let _down = tandem_tests::LocalDown(run.clone());
    wait_group_of(
        &config,
        "p6",
        "protected on hcm-rep-2",
        Duration::from_secs(90),
        &|st| {
            st["state"] == "protected"
                && st["replica_host"] == "hcm-rep-2"
                && st["lease"]["remaining_ms"].as_i64() > Some(0)
        },
    );
    let w = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-t",
            "none",
            &nbd_url(cfg, "p6"),
            "-c",
            "write -P 77 0 65536",
        ])
        .output()
        .unwrap();
    assert!(w.status.success(), "{}", String::from_utf8_lossy(&w.stderr));
    // The move's target is down: the move cannot end.
    let kill = |node: &str| {
        let pid = std::fs::read_to_string(run.join(format!("{node}.pid"))).unwrap();
        assert!(Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap()
            .success());
    };
    kill("hcm-rep-3");
    let moved = tandem(&[
        "move",
        "p6",
        "--site",
        "hcm",
        "--to",
        "hcm-rep-3",
        "--no-wait",
        "--config",
        cfg,
    ]);
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );
    wait_group_of(
        &config,
        "p6",
        "moving to hcm-rep-3",
        Duration::from_secs(10),
        &|st| st["state"] == "degraded" && st["replica_host"] == "hcm-rep-3",
    );
    // Give hcm-rep-2 a heartbeat to close the group, then lose p6's primary host.
    std::thread::sleep(Duration::from_secs(2));
    kill("hanoi-rep-3");
    wait_group_of(
        &config,
        "p6",
        "failed over to the old replica host",
        Duration::from_secs(90),
        &|st| {
            st["primary"] == "hcm"
                && st["lease"]["status"] == "active"
                && st["lease"]["holder"] == "hcm-rep-2"
        },
    );
    // The write p6 acknowledged before the move is in the promoted copy.
    let r = Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-t",
            "none",
            &nbd_url(cfg, "p6"),
            "-c",
            "read -P 77 0 65536",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert!(
        r.status.success() && !out.contains("Pattern verification failed"),
        "{out}"
    );
    let audit =
        String::from_utf8_lossy(&tandem(&["audit", "--json", "--config", cfg]).stdout).into_owned();
    let cancelled = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|r| r["kind"] == "move" && r["detail"]["phase"] == "cancelled");
    assert!(cancelled, "no cancelled move in the chain");
    let _ = tandem(&["local", "down", "--dir", run.to_str().unwrap()]);
}
