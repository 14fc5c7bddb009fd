//! SQLite replication through real processes: the sqlite3 CLI writes transactions on the
//! primary site; the replica file opens read-only with integrity_check ok and every commit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};
use tandem_tests::{free_port, tandem_bin};

fn sqlite3(args: &[&str]) -> std::process::Output {
    Command::new("sqlite3").args(args).output().unwrap()
}

#[test]
fn sqlite3_cli_commits_reach_a_consistent_replica() {
    if Command::new("sqlite3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: sqlite3 is not installed");
        return;
    }
    // The example topology, on free ports and with a small volume.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-sites.toml");
    let mut text = std::fs::read_to_string(example)
        .unwrap()
        .replace("256MiB", "16MiB");
    for old in [
        7101, 7102, 7103, 7104, 7105, 10809, 10810, 9101, 9102, 9103, 9104, 9105,
    ] {
        text = text.replace(
            &format!("127.0.0.1:{old}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("topology.toml");
    std::fs::write(&config, text).unwrap();
    let run = dir.path().join("run");
    let tandem = |args: &[&str]| {
        Command::new(tandem_bin())
            .args(args)
            .env("TANDEM_LOG", "warn")
            .output()
            .unwrap()
    };
    let up = tandem(&[
        "local",
        "up",
        "--config",
        config.to_str().unwrap(),
        "--dir",
        run.to_str().unwrap(),
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let status = || -> serde_json::Value {
        let o = tandem(&["status", "--json", "--config", config.to_str().unwrap()]);
        serde_json::from_slice(&o.stdout).unwrap_or_default()
    };
    let db_group = |st: &serde_json::Value| -> serde_json::Value {
        st["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["name"] == "db").cloned())
            .unwrap_or_default()
    };
    let wait = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let g = db_group(&status());
            if f(&g) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {g}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("db protected with a lease", &|g| {
        g["state"] == "protected" && g["lease"]["status"] == "active"
    });
    let primary = dir.path().join("databases/hanoi/orders.db");
    let replica = dir.path().join("databases/hcm/orders.db");
    let p = primary.to_str().unwrap();
    let out = sqlite3(&[p, "PRAGMA busy_timeout=5000; CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, amount INTEGER);"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=60 {
        let sql = format!(
            "PRAGMA busy_timeout=5000; BEGIN; INSERT INTO orders(amount) VALUES ({i}); INSERT INTO orders(amount) VALUES ({}); COMMIT;",
            1000 + i
        );
        let out = sqlite3(&[p, &sql]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait("the replica caught up", &|g| {
        g["rpo_ms"] == 0
            && g["durable_seq"] == g["last_captured_seq"]
            && g["last_captured_seq"].as_u64() > Some(0)
    });
    let check = || {
        let o = sqlite3(&[
            "-readonly",
            replica.to_str().unwrap(),
            "PRAGMA integrity_check; SELECT count(*), sum(amount) FROM orders;",
        ]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let expected = format!("ok\n120|{}\n", (1..=60).map(|i| i + 1000 + i).sum::<i64>());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = check();
    while got != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        got = check();
    }
    let _ = tandem(&["local", "down", "--dir", run.to_str().unwrap()]);
    assert_eq!(
        got, expected,
        "replica database differs from the committed transactions"
    );
}
