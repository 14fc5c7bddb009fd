//! kill -9 of the primary replicator, and separately of the replica replicator, in the middle
//! of a rusqlite transaction stream on an async SQLite group (a SQLite group cannot be sync:
//! `config check` refuses it, since the application's COMMIT never waits): the replica stays openable
//! (`integrity_check` = ok) and holds a commit prefix all along, never loses a transaction it
//! was seen holding, and after the restart catches up to every committed transaction.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROWS: i64 = 4;

/// Each test starts a whole cluster: one at a time on a 2-core machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn values(txn: i64) -> Vec<i64> {
    (0..ROWS).map(|k| txn * 10 + k).collect()
}

/// The application: commits transactions 1, 2, ... (ROWS rows each) until `stop`; returns
/// the ids committed (an error ends the writer: a local SQLite commit must not fail here).
fn writer(db: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<i64>> {
    std::thread::spawn(move || {
        let mut c = Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, txn INTEGER, amount INTEGER);",
        )
        .unwrap();
        let mut done = Vec::new();
        let mut n = 0i64;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let tx = c.transaction().unwrap();
            for v in values(n) {
                tx.execute(
                    "INSERT INTO orders(txn, amount) VALUES (?1, ?2)",
                    rusqlite::params![n, v],
                )
                .unwrap();
            }
            tx.commit().unwrap();
            done.push(n);
            std::thread::sleep(Duration::from_millis(3));
        }
        done
    })
}

/// Reads the replica read-only: (integrity_check, txn -> values). `None` while the file or
/// its table does not exist yet, or the applier holds its lock longer than the busy timeout.
fn replica_state(db: &Path) -> Option<(String, BTreeMap<i64, Vec<i64>>)> {
    if !db.exists() {
        return None;
    }
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.busy_timeout(Duration::from_secs(2)).ok()?;
    let integrity: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .ok()?;
    let mut q = c
        .prepare("SELECT txn, amount FROM orders ORDER BY id")
        .ok()?;
    let mut state: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let rows = q
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
        .ok()?;
    for r in rows {
        let (t, v) = r.ok()?;
        state.entry(t).or_default().push(v);
    }
    Some((integrity, state))
}

/// Asserts the replica is sound and holds exactly transactions 1..=k (whole); returns k.
fn assert_prefix(when: &str, integrity: &str, state: &BTreeMap<i64, Vec<i64>>) -> i64 {
    assert_eq!(integrity, "ok", "{when}: integrity_check");
    let k = state.keys().next_back().copied().unwrap_or(0);
    assert_eq!(
        state.len() as i64,
        k,
        "{when}: the replica has a gap (holds {} transactions, the last is {k})",
        state.len()
    );
    for (t, v) in state {
        assert_eq!(v, &values(*t), "{when}: txn {t} is partial or altered");
    }
    k
}

fn kill9(run: &Path, node: &str) {
    let pid = std::fs::read_to_string(run.join(format!("{node}.pid"))).unwrap();
    let st = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -9 {node}");
}

/// Starts `node` again the way `tandem local up` does (its pid file is rewritten, so `tandem
/// local down` stops it).
fn restart(config: &Path, run: &Path, node: &str) {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(run.join(format!("{node}.log")))
        .unwrap();
    let mut child = Command::new(tandem_tests::tandem_bin())
        .args(["node", "--config"])
        .arg(config)
        .args(["--name", node])
        .env("TANDEM_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(run.join(format!("{node}.pid")), format!("{}\n", child.id())).unwrap();
    // Reaped when `tandem local down` stops it.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// Stops the cluster of a test even when an assertion fails.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = tandem_tests::tandem_quiet(&["local", "down", "--dir", self.0.to_str().unwrap()]);
    }
}

fn kill9_mid_stream(victim: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The example topology (its SQLite group is async) with no automatic failover: the
    // victim comes back, nothing fails over.
    let (dir, config) = tandem_tests::example_topology(|t| {
        t.replace("auto_failover = true", "auto_failover = false")
    });
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains("name = \"db\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\nmode = \"async\""),
        "the db group of examples/two-sites.toml is no longer where this test expects it"
    );
    let run = dir.path().join("run");
    let _down = Down(run.clone());
    tandem_tests::local_up(&config, &run);
    let wait = |what: &str, secs: u64, f: &dyn Fn(&serde_json::Value) -> bool| {
        tandem_tests::wait_group_of(&config, "db", what, Duration::from_secs(secs), f)
    };
    wait("db protected with a lease", 60, &|g| {
        g["state"] == "protected" && g["lease"]["status"] == "active"
    });
    let primary = dir.path().join("databases/hanoi/orders.db");
    let replica = dir.path().join("databases/hcm/orders.db");
    let stop = Arc::new(AtomicBool::new(false));
    let app = writer(primary, stop.clone());

    // Mid-stream: the replica holds some transactions.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    while seen < 50 {
        assert!(
            Instant::now() < deadline,
            "the replica never held 50 transactions"
        );
        if let Some((i, s)) = replica_state(&replica) {
            seen = assert_prefix("before the kill", &i, &s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kill9(&run, victim);
    // While the victim is down (and as it comes back) the replica opens, is sound, holds a
    // prefix and never loses what it was seen holding.
    let watch = |label: &str, secs: u64, seen: &mut i64| {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if let Some((i, s)) = replica_state(&replica) {
                let k = assert_prefix(label, &i, &s);
                assert!(
                    k >= *seen,
                    "{label}: the replica went back from txn {seen} to {k}"
                );
                *seen = k;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    };
    watch("while the victim is down", 2, &mut seen);
    restart(&config, &run, victim);
    watch("after the restart", 3, &mut seen);
    stop.store(true, Ordering::SeqCst);
    let committed = app.join().expect("the application writer failed");
    let last = *committed.last().unwrap();
    // Caught up: every committed transaction, whole, in a sound file.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((i, s)) = replica_state(&replica) {
            let k = assert_prefix("catching up", &i, &s);
            assert!(
                k >= seen,
                "catching up: the replica went back from txn {seen} to {k}"
            );
            seen = k;
            if k == last {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not catch up after {victim} restarted: it holds txn {seen} of {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait("db protected and caught up", 30, &|g| {
        g["state"] == "protected" && g["rpo_ms"] == 0 && g["durable_seq"] == g["last_captured_seq"]
    });
}

#[test]
fn kill9_of_the_primary_replicator_mid_stream() {
    kill9_mid_stream("hanoi-rep");
}

#[test]
fn kill9_of_the_replica_replicator_mid_stream() {
    kill9_mid_stream("hcm-rep");
}
