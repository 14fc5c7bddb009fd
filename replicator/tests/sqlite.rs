//! SQLite replication end to end in one process: an application writing a WAL-mode database
//! (rusqlite, or the real `sqlite3` CLI), a `SqliteSource` feeding a `GroupPipeline`, and a
//! replica `ReplicationService` over loopback gRPC applying whole transactions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rusqlite::{Connection, OpenFlags};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_replicator::apply::ReplicaGroup;
use tandem_replicator::pipeline::{GroupPipeline, PipelineConfig};
use tandem_replicator::receive::{serve, ReplicationService};
use tandem_replicator::ship::ShipConfig;
use tandem_replicator::sqlite::{SqliteOptions, SqliteSource};
use tokio::sync::{oneshot, watch};

const GROUP: &str = "g";

struct Replica {
    svc: ReplicationService,
    group: Arc<ReplicaGroup>,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    db: PathBuf,
}

async fn start_replica(dir: &Path) -> Replica {
    let db = dir.join("replica.db");
    let mut res = HashMap::new();
    res.insert("db".to_owned(), db.clone());
    let sqlite: HashSet<String> = ["db".to_owned()].into_iter().collect();
    let group =
        Arc::new(ReplicaGroup::open_with_sqlite(GROUP, &dir.join("meta"), res, &sqlite).unwrap());
    let svc = ReplicationService::new();
    svc.add_group(Arc::clone(&group));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let svc = svc.clone();
        async move {
            serve(svc, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        }
    });
    Replica {
        svc,
        group,
        addr,
        stop,
        task,
        db,
    }
}

impl Replica {
    async fn shutdown(self) {
        self.svc.close();
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// A copy of the replica database taken between two applied batches (the group's lock is
    /// held while reading), written to `to`.
    fn consistent_copy(&self, to: &Path) {
        let bytes = self.group.read_resource("db", 0, 256 << 20).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
}

/// `(rows in log, sum of balances)` of a database, and its integrity check result.
fn state_of(db: &Path) -> (String, i64, i64) {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    // Readers of the live replica wait while a transaction is being written.
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let has: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'log'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if has == 0 {
        return (ok, 0, 0);
    }
    let (n, s) = c
        .query_row(
            "SELECT (SELECT count(*) FROM log), (SELECT coalesce(sum(balance), 0) FROM accounts)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (ok, n, s)
}

/// The application: `n` transactions (an insert into `log`, an update of one account, every
/// 50th a new account) on a WAL database with autocheckpoint off. Returns the state after
/// each commit, `(log rows, sum of balances)`, and the elapsed time.
fn app_writer(db: &Path, n: usize) -> (Vec<(i64, i64)>, Duration) {
    app_writer_gated(db, n, None)
}

/// [`app_writer`] that, given `(k, gate)`, stops after `k` commits until the test opens the
/// gate (at most 60 s), so a check "while the application is writing" cannot be outrun by a
/// fast machine. The paused time is not counted in the elapsed time.
fn app_writer_gated(
    db: &Path,
    n: usize,
    gate: Option<(usize, std::sync::mpsc::Receiver<()>)>,
) -> (Vec<(i64, i64)>, Duration) {
    let c = Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE IF NOT EXISTS accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, account INTEGER, note TEXT);
         INSERT INTO accounts(balance) VALUES (0);",
    )
    .unwrap();
    let mut accounts = 1i64;
    let mut sum = 0i64;
    let mut states = Vec::with_capacity(n);
    let t0 = Instant::now();
    let mut paused = Duration::ZERO;
    for i in 0..n as i64 {
        if let Some((k, rx)) = &gate {
            if i as usize == *k {
                let p0 = Instant::now();
                let _ = rx.recv_timeout(Duration::from_secs(60));
                paused = p0.elapsed();
            }
        }
        let tx = c.unchecked_transaction().unwrap();
        if i % 50 == 49 {
            tx.execute("INSERT INTO accounts(balance) VALUES (0)", [])
                .unwrap();
            accounts += 1;
        }
        let acct = 1 + (i * 7919) % accounts;
        let amount = (i * 31) % 1000 - 300;
        tx.execute(
            "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
            [amount, acct],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO log(account, note) VALUES (?1, ?2)",
            rusqlite::params![acct, format!("txn {i} {}", "n".repeat((i % 200) as usize))],
        )
        .unwrap();
        tx.commit().unwrap();
        sum += amount;
        states.push((i + 1, sum));
    }
    (states, t0.elapsed() - paused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_holds_a_prefix_of_commits_and_all_of_them_at_the_end() {
    const N: usize = 3000;
    // 0. Baseline: the application alone, no capture.
    let base = tempfile::tempdir().unwrap();
    let (_, alone) = app_writer(&base.path().join("alone.db"), N);

    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let db = pdir.path().join("app.db");
    // 1. The application creates the database; the source starts (full snapshot first).
    let (first, _) = app_writer(&db, 10);
    let replica = start_replica(rdir.path()).await;
    let p = Arc::new(
        GroupPipeline::open(PipelineConfig::new(GROUP, pdir.path().join("journal")))
            .await
            .unwrap(),
    );
    let mut sc = ShipConfig::new(&format!("http://{}", replica.addr), "hanoi-1");
    sc.backoff_min = Duration::from_millis(20);
    let shipper = p.start_shipper(sc);
    let opts = SqliteOptions {
        poll_interval: Duration::from_millis(20),
        checkpoint_bytes: 512 << 10,
        ..SqliteOptions::default()
    };
    let src = SqliteSource::open("db", &db, opts).unwrap();
    let stats = src.stats();
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(src.run(Arc::clone(&p), stopped));

    // 2. The application writes N transactions while the capture runs; it waits half-way
    //    until the mid-run check below has seen replicated rows.
    let (go, gate) = std::sync::mpsc::channel();
    let writer = tokio::task::spawn_blocking({
        let db = db.clone();
        move || app_writer_gated(&db, N, Some((N / 2, gate)))
    });
    // 3. Mid-run: a consistent copy of the replica opens and passes its integrity check.
    let mid = rdir.path().join("mid.db");
    let mut max_rpo = 0i64;
    let mut checked_mid = false;
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(25)).await;
        max_rpo = max_rpo.max(p.progress().rpo_ms(chrono::Utc::now().timestamp_millis()));
        if !checked_mid {
            replica.consistent_copy(&mid);
            let (ok, n, _) = state_of(&mid);
            assert_eq!(ok, "ok");
            if n > first.len() as i64 {
                checked_mid = true;
                eprintln!("mid-run replica: {n} log rows");
                let _ = go.send(());
            }
        }
    }
    let (states, with_capture) = writer.await.unwrap();
    let committed_at = Instant::now();

    // 4. The replica catches up to every commit.
    let final_rows = (first.len() + N) as i64;
    let final_sum = first.last().unwrap().1 + states.last().unwrap().1;
    let deadline = Instant::now() + Duration::from_secs(60);
    let lag = loop {
        let pr = p.progress();
        if pr.durable_on_replica_seq >= pr.last_captured_seq {
            replica.consistent_copy(&mid);
            if state_of(&mid).1 == final_rows {
                break committed_at.elapsed();
            }
        }
        assert!(Instant::now() < deadline, "not caught up: {pr:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
    shipper.stop().await;
    let replica_db = replica.db.clone();
    replica.shutdown().await;

    assert!(checked_mid, "a mid-run copy with rows was checked");
    // The real sqlite3 CLI reads the replica file itself, in place.
    let out = std::process::Command::new("/usr/bin/sqlite3")
        .arg("-readonly")
        .arg(&replica_db)
        .arg("PRAGMA integrity_check; SELECT count(*) FROM log; SELECT sum(balance) FROM accounts; PRAGMA journal_mode;")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "ok",
            &final_rows.to_string(),
            &final_sum.to_string(),
            "delete"
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (cp, restarts) = (
        stats.checkpoints.load(Ordering::Relaxed),
        stats.wal_restarts.load(Ordering::Relaxed),
    );
    // Restarts depend on timing (the application must be idle when a checkpoint completes);
    // `source_follows_the_wal_restart_after_its_own_checkpoint` checks them step by step.
    assert!(cp > 0, "checkpoints {cp}");
    assert_eq!(
        stats.snapshots.load(Ordering::Relaxed),
        1,
        "only the start snapshot"
    );
    eprintln!(
        "sqlite: {N} txns; alone {:.0} txn/s, with capture {:.0} txn/s; catch-up after last commit {:?}; max RPO sampled {max_rpo} ms; {cp} checkpoints ({} busy), {restarts} WAL restarts, {} txns captured",
        N as f64 / alone.as_secs_f64(),
        N as f64 / with_capture.as_secs_f64(),
        lag,
        stats.checkpoints_busy.load(Ordering::Relaxed),
        stats.transactions.load(Ordering::Relaxed),
    );
}

/// Every intermediate replica state, copied between batches or read in place by SQLite while
/// replication goes on, must equal the state after one of the commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_copy_taken_during_writes_is_a_commit_prefix() {
    const N: usize = 1500;
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let db = pdir.path().join("app.db");
    let replica = start_replica(rdir.path()).await;
    let p = Arc::new(
        GroupPipeline::open(PipelineConfig::new(GROUP, pdir.path().join("journal")))
            .await
            .unwrap(),
    );
    let shipper = p.start_shipper(ShipConfig::new(
        &format!("http://{}", replica.addr),
        "hanoi-1",
    ));
    // The source opens an empty database (the application has not created it yet).
    let src = SqliteSource::open(
        "db",
        &db,
        SqliteOptions {
            poll_interval: Duration::from_millis(10),
            checkpoint_bytes: 256 << 10,
            ..SqliteOptions::default()
        },
    )
    .unwrap();
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(src.run(Arc::clone(&p), stopped));
    // The application waits half-way until several non-empty copies were checked.
    let (go, gate) = std::sync::mpsc::channel();
    let writer = tokio::task::spawn_blocking({
        let db = db.clone();
        move || app_writer_gated(&db, N, Some((N / 2, gate)))
    });
    let copy = rdir.path().join("copy.db");
    let mut seen = Vec::new();
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(15)).await;
        replica.consistent_copy(&copy);
        let (ok, n, s) = state_of(&copy);
        assert_eq!(ok, "ok", "copy with {n} rows");
        seen.push((n, s));
        // The live replica file itself, read in place while replication goes on.
        let (ok, n, s) = state_of(&replica.db);
        assert_eq!(ok, "ok", "live replica with {n} rows");
        seen.push((n, s));
        if seen.iter().filter(|x| x.0 > 0).count() > 3 {
            let _ = go.send(());
        }
    }
    let (states, _) = writer.await.unwrap();
    for &(n, s) in &seen {
        if n > 0 {
            assert_eq!(
                states[n as usize - 1],
                (n, s),
                "replica copy is the state after commit {n}"
            );
        }
    }
    assert!(
        seen.iter().filter(|x| x.0 > 0).count() > 3,
        "several non-empty copies: {seen:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        replica.consistent_copy(&copy);
        if state_of(&copy).1 == N as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "not caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state_of(&copy).2, states.last().unwrap().1);
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
    shipper.stop().await;
    replica.shutdown().await;
}

fn cli(db: &Path, sql: &str) -> String {
    let out = std::process::Command::new("/usr/bin/sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The real `sqlite3` CLI is the application (a process per transaction, default
/// autocheckpoint on); the capture is stopped and restarted half way (a new full snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite3_cli_writer_is_replicated_across_a_capture_restart() {
    const N: usize = 120;
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let db = pdir.path().join("cli.db");
    cli(
        &db,
        "PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER, s TEXT);",
    );
    let replica = start_replica(rdir.path()).await;
    let p = Arc::new(
        GroupPipeline::open(PipelineConfig::new(GROUP, pdir.path().join("journal")))
            .await
            .unwrap(),
    );
    let shipper = p.start_shipper(ShipConfig::new(
        &format!("http://{}", replica.addr),
        "hanoi-1",
    ));
    let opts = SqliteOptions {
        poll_interval: Duration::from_millis(10),
        checkpoint_bytes: 64 << 10,
        ..SqliteOptions::default()
    };
    let write = |from: usize, to: usize| {
        for i in from..to {
            cli(
                &db,
                &format!(
                    "PRAGMA busy_timeout=10000; BEGIN; INSERT INTO t(v, s) VALUES ({i}, hex(randomblob(600))); UPDATE t SET v = v + 1 WHERE id = 1; COMMIT;"
                ),
            );
        }
    };
    let mut snapshots = 0;
    for (from, to) in [(0, N / 2), (N / 2, N)] {
        // 1. A capture runs while the CLI writes half of the transactions.
        let src = SqliteSource::open("db", &db, opts.clone()).unwrap();
        let stats = src.stats();
        let (stop, stopped) = watch::channel(false);
        let run = tokio::spawn(src.run(Arc::clone(&p), stopped));
        while stats.snapshots.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::block_in_place(|| write(from, to));
        // 2. The replica reaches the primary's state, then the capture stops.
        let want = cli(&db, "SELECT count(*), sum(v), sum(length(s)) FROM t;");
        let copy = rdir.path().join("copy.db");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            replica.consistent_copy(&copy);
            if state_of(&copy).0 == "ok"
                && cli(&copy, "SELECT count(*), sum(v), sum(length(s)) FROM t;") == want
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica did not reach {want}: {:?} {:?} {:?} snapshots {} txns {} restarts {} checkpoints {}",
                state_of(&copy),
                cli(&copy, "SELECT count(*), sum(v), sum(length(s)) FROM t;"),
                p.progress(),
                stats.snapshots.load(Ordering::Relaxed),
                stats.transactions.load(Ordering::Relaxed),
                stats.wal_restarts.load(Ordering::Relaxed),
                stats.checkpoints.load(Ordering::Relaxed),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        run.await.unwrap().unwrap();
        snapshots += stats.snapshots.load(Ordering::Relaxed);
        assert!(stats.transactions.load(Ordering::Relaxed) > 0);
    }
    assert_eq!(snapshots, 2, "one full snapshot per capture start");
    shipper.stop().await;
    let replica_db = replica.db.clone();
    replica.shutdown().await;
    assert_eq!(
        cli(
            &replica_db,
            "PRAGMA integrity_check; SELECT count(*) FROM t;"
        ),
        format!("ok\n{N}\n")
    );
}

/// Feeds the source's submissions straight into a replica group as frames.
fn apply_batches(g: &ReplicaGroup, seq: &mut u64, batches: Vec<Vec<tandem_core::frame::Change>>) {
    use tandem_core::frame::{Encoder, FrameMeta};
    use tandem_core::ids::{Epoch, GroupId, Seq};
    let mut enc = Encoder::new(1).unwrap();
    let mut st = tandem_replicator::apply::StreamState::default();
    for b in batches {
        let n = b.len() as u64;
        let meta = FrameMeta {
            group: GroupId::from_name(GROUP),
            epoch: Epoch(1),
            first_seq: Seq(*seq + 1),
        };
        g.receive_batch(vec![enc.encode(meta, &b).unwrap()], &mut st)
            .unwrap();
        *seq += n;
        assert_eq!(g.watermark(), Seq(*seq));
    }
}

/// Step by step, without timers: the source's own checkpoint lets the next application write
/// restart the WAL (new salts), and the source reads the new generation from its first frame.
#[test]
fn source_follows_the_wal_restart_after_its_own_checkpoint() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let db = pdir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT);",
    )
    .unwrap();
    let mut res = HashMap::new();
    res.insert("db".to_owned(), rdir.path().join("r.db"));
    let sqlite: HashSet<String> = ["db".to_owned()].into_iter().collect();
    let g = ReplicaGroup::open_with_sqlite(GROUP, &rdir.path().join("meta"), res, &sqlite).unwrap();
    let mut src = SqliteSource::open("db", &db, SqliteOptions::default()).unwrap();
    let stats = src.stats();
    let mut seq = 0;
    // 1. The start snapshot holds the table.
    apply_batches(&g, &mut seq, src.snapshot().unwrap());
    for round in 0..3i64 {
        // 2. The application commits 40 transactions; the source reads them.
        for i in 0..40 {
            app.execute(
                "INSERT INTO t(s) VALUES (?1)",
                [format!("{round}-{i}-{}", "x".repeat(500))],
            )
            .unwrap();
        }
        let batches = src.poll().unwrap();
        let commits = batches
            .iter()
            .flatten()
            .filter(|c| c.kind == tandem_core::frame::ChangeKind::DbCommit)
            .count();
        assert_eq!(commits, 40, "round {round}: one commit per transaction");
        apply_batches(&g, &mut seq, batches);
        // 3. The source checkpoints; the application's next write restarts the WAL.
        assert!(src.checkpoint().unwrap().is_empty(), "nothing new to read");
        assert_eq!(stats.wal_restarts.load(Ordering::Relaxed), round as u64);
        let copy = rdir.path().join("copy.db");
        std::fs::write(&copy, g.read_resource("db", 0, 64 << 20).unwrap()).unwrap();
        let c = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!((ok.as_str(), n), ("ok", 40 * (round + 1)));
    }
    assert_eq!(stats.checkpoints.load(Ordering::Relaxed), 3);
    assert_eq!(stats.snapshots.load(Ordering::Relaxed), 1);
}

/// The verify digest: a WAL-mode primary and its rollback-mode replica hash alike at the same
/// commit (before and after checkpoints and WAL restarts), and differently once the primary
/// has a commit the replica lacks.
#[test]
fn primary_and_replica_digests_match_at_the_same_commit_only() {
    use tandem_replicator::sqlite::{primary_digest, replica_digest};
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let db = pdir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, s TEXT);",
    )
    .unwrap();
    let rpath = rdir.path().join("r.db");
    let mut res = HashMap::new();
    res.insert("db".to_owned(), rpath.clone());
    let sqlite: HashSet<String> = ["db".to_owned()].into_iter().collect();
    let g = ReplicaGroup::open_with_sqlite(GROUP, &rdir.path().join("meta"), res, &sqlite).unwrap();
    let mut src = SqliteSource::open("db", &db, SqliteOptions::default()).unwrap();
    let mut seq = 0;
    apply_batches(&g, &mut seq, src.snapshot().unwrap());
    for round in 0..2 {
        for i in 0..30 {
            app.execute("INSERT INTO t(s) VALUES (?1)", [format!("{round}-{i}")])
                .unwrap();
        }
        // Not replicated yet: the digests differ.
        assert_ne!(
            primary_digest(&db).unwrap(),
            replica_digest(&rpath).unwrap()
        );
        apply_batches(&g, &mut seq, src.poll().unwrap());
        let p = primary_digest(&db).unwrap();
        assert_eq!(p, replica_digest(&rpath).unwrap(), "round {round}");
        assert!(p.pages >= 2);
        // After the source's checkpoint the image is the same.
        assert!(src.checkpoint().unwrap().is_empty());
        assert_eq!(primary_digest(&db).unwrap(), p);
    }
}
