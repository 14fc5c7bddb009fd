//! SQLite replication through real processes: the sqlite3 CLI writes transactions on the
//! primary site; the replica file opens read-only with integrity_check ok and every commit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};

fn sqlite3(args: &[&str]) -> std::process::Output {
    Command::new("sqlite3").args(args).output().unwrap()
}

#[test]
fn sqlite3_cli_commits_reach_a_consistent_replica() {
    if Command::new("sqlite3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: sqlite3 is not installed");
        return;
    }
    let (dir, config) = tandem_tests::example_topology(|t| t);
    let run = dir.path().join("run");
    let tandem = tandem_tests::tandem_quiet;
    tandem_tests::local_up(&config, &run);
    let wait = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
        tandem_tests::wait_group_of(&config, "db", what, Duration::from_secs(60), f)
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
    // `tandem verify`: blake3 over the primary's pages at its last commit equals the replica's.
    let v = tandem(&["verify", "db", "--config", config.to_str().unwrap()]);
    let verify_out = String::from_utf8_lossy(&v.stdout).into_owned();
    let verify_err = String::from_utf8_lossy(&v.stderr).into_owned();
    let _ = tandem(&["local", "down", "--dir", run.to_str().unwrap()]);
    assert!(
        v.status.success() && verify_out.contains("db/orders: EQUAL"),
        "verify: {verify_out}\n{verify_err}"
    );
    assert_eq!(
        got, expected,
        "replica database differs from the committed transactions"
    );
}
