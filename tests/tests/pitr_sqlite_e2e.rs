//! Point-in-time recovery of a SQLite database through real processes: the sqlite3 CLI commits
//! transactions on the primary site, an operator marks a checkpoint, more commits and a
//! `DELETE` (the logical disaster) replicate; `tandem recover --checkpoint` builds a database
//! that opens with integrity_check ok and holds exactly the transactions committed before the
//! checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};

fn sqlite3(args: &[&str]) -> std::process::Output {
    Command::new("sqlite3").args(args).output().unwrap()
}

fn commit(db: &str, from: i64, to: i64) {
    for i in from..to {
        let sql = format!(
            "PRAGMA busy_timeout=5000; BEGIN; INSERT INTO orders(amount) VALUES ({i}); UPDATE orders SET amount = amount + 1 WHERE id = 1; COMMIT;"
        );
        let out = sqlite3(&[db, &sql]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn database_recovered_at_a_checkpoint_through_real_processes() {
    if Command::new("sqlite3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: sqlite3 is not installed");
        return;
    }
    let (dir, config) = tandem_tests::example_topology(|t| {
        t.replace(
            "name = \"db\"\n",
            "name = \"db\"\nhistory = \"1h\"\ncheckpoint_interval = \"1s\"\n",
        )
    });
    let cfg = config.to_str().unwrap();
    let run = dir.path().join("run");
    let tandem = tandem_tests::tandem_quiet;
    tandem_tests::local_up(&config, &run);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let wait = |what: &str, f: &dyn Fn(&serde_json::Value) -> bool| {
            tandem_tests::wait_group_of(&config, "db", what, Duration::from_secs(60), f)
        };
        wait("db protected with a lease", &|g| {
            g["state"] == "protected" && g["lease"]["status"] == "active"
        });
        let primary = dir.path().join("databases/hanoi/orders.db");
        let replica = dir.path().join("databases/hcm/orders.db");
        let p = primary.to_str().unwrap();
        let count = |db: &std::path::Path| {
            let o = sqlite3(&[
                "-readonly",
                db.to_str().unwrap(),
                "PRAGMA integrity_check; SELECT count(*) FROM orders;",
            ]);
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let replica_has = |want: &str| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while count(&replica) != want {
                assert!(
                    Instant::now() < deadline,
                    "replica: {:?}, want {want:?}",
                    count(&replica)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        // 1. 40 transactions, replicated; then the checkpoint.
        let out = sqlite3(&[p, "PRAGMA busy_timeout=5000; CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, amount INTEGER);"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        commit(p, 0, 40);
        replica_has("ok\n40\n");
        let o = tandem(&["checkpoint", "db", "--tag", "before-delete", "-c", cfg]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // 2. 25 more, then the disaster: every row deleted; it replicates.
        commit(p, 40, 65);
        let out = sqlite3(&[p, "PRAGMA busy_timeout=5000; DELETE FROM orders;"]);
        assert!(out.status.success());
        replica_has("ok\n0\n");
        // 3. Recover at the checkpoint: exactly the 40 transactions before it.
        // Inside the replica replicator's recover root (DATA_DIR/recovered).
        let out_dir = dir.path().join("data/hcm-rep/recovered/cli");
        let o = tandem(&[
            "recover",
            "db",
            "--checkpoint",
            "before-delete",
            "--out",
            out_dir.to_str().unwrap(),
            "-c",
            cfg,
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout.contains("merkle root"), "{stdout}");
        assert_eq!(count(&out_dir.join("orders.img")), "ok\n40\n");
        // The live replica still follows the primary (0 rows), untouched by the recovery.
        assert_eq!(count(&replica), "ok\n0\n");
    }));
    let _ = tandem(&["local", "down", "--dir", run.to_str().unwrap()]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
