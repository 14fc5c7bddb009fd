//! Point-in-time recovery through the real applier: a SQLite application (WAL mode) captured
//! by `SqliteSource`, shipped over loopback gRPC to a replica keeping history, recovered at a
//! checkpoint and at a commit (integrity_check ok, exactly the transactions up to the point);
//! and volume history across a replica restart and under retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rusqlite::{Connection, OpenFlags};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::frame::{Change, Encoder, FrameMeta};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_replicator::apply::{ReplicaGroup, StreamState};
use tandem_replicator::history::{HistoryConfig, RecordKind, Selector};
use tandem_replicator::pipeline::{GroupPipeline, PipelineConfig};
use tandem_replicator::receive::{serve, ReplicationService};
use tandem_replicator::ship::ShipConfig;
use tandem_replicator::sqlite::{SqliteOptions, SqliteSource};
use tokio::sync::{oneshot, watch};

const GROUP: &str = "g";

fn rows(db: &Path) -> (String, i64) {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    let has: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 't'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if has == 0 {
        return (ok, 0);
    }
    let n = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    (ok, n)
}

fn commit_txns(c: &Connection, from: i64, to: i64) {
    for i in from..to {
        let tx = c.unchecked_transaction().unwrap();
        tx.execute(
            "INSERT INTO t(v, s) VALUES (?1, ?2)",
            rusqlite::params![i, "x".repeat(300 + (i % 500) as usize)],
        )
        .unwrap();
        // Rewrites old pages too: the undo history must bring them back.
        tx.execute("UPDATE t SET v = v + 1 WHERE id % 7 = ?1", [i % 7])
            .unwrap();
        tx.commit().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_recovered_at_a_checkpoint_holds_exactly_the_commits_before_it() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let db = pdir.path().join("app.db");
    let app = Connection::open(&db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER, s TEXT);",
    )
    .unwrap();
    // 1. A replica keeping history, a pipeline, a shipper and the WAL capture.
    let rdb = rdir.path().join("replica.db");
    let res = HashMap::from([("db".to_owned(), rdb.clone())]);
    let sq: HashSet<String> = ["db".to_owned()].into_iter().collect();
    let rg = Arc::new(
        ReplicaGroup::open_with_sqlite(GROUP, &rdir.path().join("meta"), res, &sq).unwrap(),
    );
    rg.enable_history(&rdir.path().join("history"), HistoryConfig::new(3_600_000))
        .unwrap();
    let svc = ReplicationService::new();
    svc.add_group(Arc::clone(&rg));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_srv, stopped_srv) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let svc = svc.clone();
        async move {
            let _ = serve(svc, listener, async {
                let _ = stopped_srv.await;
            })
            .await;
        }
    });
    let p = Arc::new(
        GroupPipeline::open(PipelineConfig::new(GROUP, pdir.path().join("journal")))
            .await
            .unwrap(),
    );
    let shipper = p.start_shipper(ShipConfig::new(&format!("http://{addr}"), "hanoi-1"));
    let opts = SqliteOptions {
        poll_interval: Duration::from_millis(10),
        checkpoint_bytes: 128 << 10,
        ..SqliteOptions::default()
    };
    let src = SqliteSource::open("db", &db, opts).unwrap();
    let (stop, stopped) = watch::channel(false);
    let run = tokio::spawn(src.run(Arc::clone(&p), stopped));
    let caught_up = |want: i64| {
        let (rg, rdb) = (Arc::clone(&rg), rdb.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let copy = rdb.with_extension("probe");
                std::fs::write(&copy, rg.read_resource("db", 0, 256 << 20).unwrap()).unwrap();
                if rows(&copy).1 == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica did not reach {want} rows"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // 2. 200 transactions, replicated; then a tagged checkpoint in the stream.
    tokio::task::block_in_place(|| commit_txns(&app, 0, 200));
    caught_up(200).await;
    let cp = p
        .submit(vec![Change::checkpoint("before-drop", 0)])
        .await
        .unwrap();
    p.wait_replica_durable(cp).await.unwrap();
    // 3. 300 more, then the "logical disaster": the table is emptied.
    tokio::task::block_in_place(|| {
        commit_txns(&app, 200, 500);
        app.execute_batch("DELETE FROM t;").unwrap();
    });
    caught_up(0).await;
    // 4. Recover at the checkpoint while replication is live: exactly 200 rows.
    let out = rdir.path().join("recovered");
    let r = tokio::task::block_in_place(|| {
        rg.recover(&Selector::Tag("before-drop".into()), &out, 4096)
            .unwrap()
    });
    assert_eq!(r.point.seq, cp);
    assert!(r.undone > 0);
    let (ok, n) = rows(&out.join("db.img"));
    assert_eq!((ok.as_str(), n), ("ok", 200));
    // 5. Recover at every tenth commit point after it: each opens and is a commit prefix.
    let view = rg.history_view().unwrap();
    let commits: Vec<_> = view
        .points
        .iter()
        .filter(|p| p.kind == RecordKind::Barrier && p.seq > cp)
        .collect();
    assert!(commits.len() >= 300, "{} commit points", commits.len());
    let mut last = 200;
    for (i, point) in commits.iter().enumerate().step_by(37) {
        let out = rdir.path().join(format!("at-{i}"));
        let r = tokio::task::block_in_place(|| {
            rg.recover(&Selector::Seq(point.seq), &out, 4096).unwrap()
        });
        let (ok, n) = rows(&out.join("db.img"));
        assert_eq!(ok, "ok", "commit point {i} (seq {})", r.point.seq);
        assert!(n >= last && n <= 500, "point {i}: {n} rows after {last}");
        last = n;
    }
    stop.send(true).unwrap();
    run.await.unwrap().unwrap();
    shipper.stop().await;
    svc.close();
    let _ = stop_srv.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
}

fn frame(first: u64, changes: &[Change]) -> Vec<u8> {
    Encoder::new(1)
        .unwrap()
        .encode(
            FrameMeta {
                group: GroupId::from_name(GROUP),
                epoch: Epoch(1),
                first_seq: Seq(first),
            },
            changes,
        )
        .unwrap()
}

/// Opens the replica group over `dir/vol.img`, created at 64 KiB (as the node creates an
/// image at its configured size) when missing.
fn open_vol(dir: &Path) -> ReplicaGroup {
    let vol = dir.join("vol.img");
    if !vol.exists() {
        std::fs::File::create(&vol)
            .unwrap()
            .set_len(64 << 10)
            .unwrap();
    }
    let res = HashMap::from([("vol".to_owned(), vol)]);
    ReplicaGroup::open(GROUP, &dir.join("meta"), res).unwrap()
}

#[test]
fn volume_history_survives_a_replica_restart_and_a_resend() {
    let d = tempfile::tempdir().unwrap();
    let cfg = HistoryConfig::new(3_600_000);
    let g = open_vol(d.path());
    g.enable_history(&d.path().join("h"), cfg.clone()).unwrap();
    let mut st = StreamState::default();
    let f1 = frame(
        1,
        &[
            Change::write("vol", 0, vec![0xaa; 8192], 1000),
            Change::checkpoint("a", 1001),
        ],
    );
    let f2 = frame(3, &[Change::write("vol", 4096, vec![0xbb; 8192], 2000)]);
    g.receive_batch(vec![f1.clone()], &mut st).unwrap();
    let snap = d.path().join("snap");
    let (wm, paths) = g.copy_to(&snap).unwrap();
    assert_eq!(wm, Seq(2));
    g.receive_batch(vec![f2.clone()], &mut st).unwrap();
    drop(g);
    // Restarted: the history is reopened, the primary resends everything (duplicates are
    // acknowledged, never recorded again with the new bytes as "old" ones).
    let g = open_vol(d.path());
    g.enable_history(&d.path().join("h"), cfg).unwrap();
    let mut st = StreamState::default();
    g.receive_batch(vec![f1, f2], &mut st).unwrap();
    let f3 = frame(4, &[Change::trim("vol", 0, 4096, 3000)]);
    g.receive_batch(vec![f3], &mut st).unwrap();
    for (sel, name) in [
        (Selector::Tag("a".into()), "by-tag"),
        (Selector::At(1500), "by-time"),
    ] {
        let out = d.path().join(name);
        let r = g.recover(&sel, &out, 4096).unwrap();
        assert_eq!(r.point.seq, Seq(2), "{name}");
        assert_eq!(r.copied_at, Seq(4));
        assert_eq!(
            std::fs::read(out.join("vol.img")).unwrap(),
            std::fs::read(&paths[0]).unwrap(),
            "{name}: byte-identical to the copy taken at the checkpoint"
        );
        assert_eq!(r.resources[0].3, {
            let t = tandem_replicator::scan::hash_file(&paths[0], 4096).unwrap();
            t.root()
        });
    }
    // A non-empty output folder is refused.
    assert!(g
        .recover(&Selector::Tag("a".into()), &d.path().join("by-tag"), 4096)
        .is_err());
}

#[test]
fn retention_trims_the_oldest_points_and_keeps_every_newer_one_recoverable() {
    let d = tempfile::tempdir().unwrap();
    let g = open_vol(d.path());
    let mut cfg = HistoryConfig::new(i64::MAX / 4);
    cfg.max_bytes = Some(64 << 10);
    cfg.segment_bytes = 8 << 10;
    cfg.checkpoint_interval_ms = 10;
    g.enable_history(&d.path().join("h"), cfg).unwrap();
    let mut st = StreamState::default();
    let mut images = HashMap::new();
    let mut oldest = Vec::new();
    for i in 0..200u64 {
        // Incompressible 4 KiB blocks, so the history grows by about 4 KiB per write.
        let data: Vec<u8> = (0..4096u64)
            .map(|k| ((k * 2654435761 + i * 40503) >> 7) as u8)
            .collect();
        let f = frame(
            2 * i + 1,
            &[
                Change::write("vol", (i % 16) * 4096, data, i as i64 * 100),
                Change::barrier("vol", i as i64 * 100),
            ],
        );
        g.receive_batch(vec![f], &mut st).unwrap();
        images.insert(2 * i + 2, g.read_resource("vol", 0, 1 << 20).unwrap());
        let v = g.history_view().unwrap();
        assert!(
            v.bytes <= (64 << 10) + (8 << 10) + 8192,
            "{} bytes",
            v.bytes
        );
        oldest.push(v.oldest.unwrap().seq);
    }
    // The oldest point only moves forward, and it did move.
    assert!(oldest.windows(2).all(|w| w[0] <= w[1]));
    assert!(oldest.last().unwrap() > &Seq(100), "{:?}", oldest.last());
    // Every point still listed recovers to exactly the state it had.
    let v = g.history_view().unwrap();
    let first = v.oldest.clone().unwrap().seq;
    let listed: Vec<_> = v
        .points
        .iter()
        .filter(|p| p.kind == RecordKind::Barrier)
        .collect();
    assert_eq!(listed.first().map(|p| p.seq), Some(first));
    for (i, p) in listed.iter().enumerate().step_by(3) {
        let out = d.path().join(format!("r{i}"));
        g.recover(&Selector::Seq(p.seq), &out, 4096).unwrap();
        assert_eq!(
            std::fs::read(out.join("vol.img")).unwrap(),
            images[&p.seq.0],
            "point seq {}",
            p.seq
        );
    }
    // A point older than the history: refused with a reason.
    let e = g
        .recover(&Selector::Seq(Seq(2)), &d.path().join("old"), 4096)
        .unwrap_err();
    assert!(e.to_string().contains("not a recovery point"), "{e}");
}
