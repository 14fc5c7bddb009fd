//! Placement with real processes (issue 20): three replicator hosts per site under
//! `tandem local up`, groups spread over them by the placement function and one pinned with
//! `hosts`; status names the host serving each group at each site, the lease is held by the
//! primary host, and a write through the pinned group's NBD export reaches the replica
//! byte for byte (verify).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;
use tandem_tests::{free_port, tandem_quiet as tandem, wait_group_of};

/// Groups `p1`..`p6`, each one 1 MiB async volume; `p6` pinned.
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
            "\n[[groups]]\nname = \"{g}\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\nmode = \"async\"\n\
             rpo_target = \"5s\"\nrto_target = \"1m\"\n{pin}\n[[groups.resources]]\nname = \"{g}d\"\n\
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
    let topo = tandem_core::config::Topology::load(&config).unwrap();
    let run = dir.path().join("run");
    tandem_tests::local_up(&config, &run);

    let mut at_hanoi = BTreeSet::new();
    for g in GROUPS {
        let cg = topo.group(g).unwrap();
        let want_p = topo.host_for(cg, "hanoi").unwrap().name.clone();
        let want_r = topo.host_for(cg, "hcm").unwrap().name.clone();
        if g == "p6" {
            assert_eq!((want_p.as_str(), want_r.as_str()), ("hanoi-rep-3", "hcm-rep-2"));
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
        let st: serde_json::Value = serde_json::from_slice(
            &tandem(&["status", "--json", "--config", cfg, "--group", "p6"]).stdout,
        )
        .unwrap();
        let url = st["groups"][0]["resources"][0]["nbd_url"]
            .as_str()
            .unwrap()
            .to_owned();
        let port = topo.node("hanoi-rep-3").unwrap().nbd_listen.clone().unwrap();
        assert!(url.contains(&port), "{url} is not hanoi-rep-3's export");
        let w = Command::new("qemu-io")
            .args(["-f", "raw", "-t", "none", &url, "-c", "write -P 171 0 65536"])
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
    let _ = tandem(&["local", "down", "--dir", run.to_str().unwrap()]);
}
