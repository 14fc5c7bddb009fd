//! Tests of a replica group as a whole: batches of frames in, files, watermark and
//! acknowledgements out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::error::ReplicatorError;
use std::collections::HashMap;
use tandem_core::frame::{Change, ChangeKind};
use tandem_core::frame::{Encoder, FrameMeta};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_core::proto::{ship_response, Refusal, ShipResponse};

fn enc(group: &str, epoch: u64, first: u64, changes: &[Change]) -> Vec<u8> {
    Encoder::new(1)
        .unwrap()
        .encode(
            FrameMeta {
                group: GroupId::from_name(group),
                epoch: Epoch(epoch),
                first_seq: Seq(first),
            },
            changes,
        )
        .unwrap()
}

/// Size of the test volume (its image is created at this size, as the node does).
const VOL_SIZE: u64 = 64 << 10;

fn setup() -> (tempfile::TempDir, ReplicaGroup) {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    std::fs::File::create(&vol)
        .unwrap()
        .set_len(VOL_SIZE)
        .unwrap();
    let mut res = HashMap::new();
    res.insert("vol".to_owned(), vol);
    let g = ReplicaGroup::open("g", &dir.path().join("meta"), res).unwrap();
    (dir, g)
}

fn refusal(out: &[ShipResponse]) -> Option<Refusal> {
    out.iter().find_map(|r| match &r.msg {
        Some(ship_response::Msg::Refusal(r)) => Some(r.clone()),
        _ => None,
    })
}

fn acked(out: &[ShipResponse]) -> Option<u64> {
    out.iter().find_map(|r| match &r.msg {
        Some(ship_response::Msg::Ack(a)) => Some(a.durable_seq),
        _ => None,
    })
}

#[test]
fn an_archive_file_is_acknowledged_only_once_whole_and_a_restart_resends_it() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let open = || {
        let mut arch = HashMap::new();
        arch.insert("db".to_owned(), archive.clone());
        ReplicaGroup::open("g", &dir.path().join("meta"), HashMap::new())
            .unwrap()
            .with_archives(arch)
            .unwrap()
    };
    let g = open();
    let data: Vec<u8> = (0..tandem_core::walfile::CHUNK_LEN + 3)
        .map(|i| i as u8)
        .collect();
    let cs = tandem_core::walfile::changes("db", "000000010000000000000001", &data, 0).unwrap();
    assert_eq!(cs.len(), 3);
    let mut st = StreamState::default();
    // The first chunk alone: applied, but nothing acknowledged yet.
    let out = g
        .receive_batch(vec![enc("g", 1, 1, &cs[..1])], &mut st)
        .unwrap();
    assert_eq!(acked(&out), None);
    assert_eq!(g.watermark(), Seq(1));
    // A restart: the watermark is back before the file, which is resent whole.
    drop(g);
    let g = open();
    assert_eq!(g.watermark(), Seq(0));
    assert!(!archive.join("000000010000000000000001").exists());
    let out = g.receive_batch(vec![enc("g", 1, 1, &cs)], &mut st).unwrap();
    assert_eq!(acked(&out), Some(3));
    assert_eq!(g.archive_dir("db"), Some(archive.clone()));
    assert_eq!(
        std::fs::read(archive.join("000000010000000000000001")).unwrap(),
        data
    );
    // A volume change for the postgres resource is refused for good.
    let out = g
        .receive_batch(
            vec![enc("g", 1, 4, &[Change::write("db", 0, vec![1], 0)])],
            &mut st,
        )
        .unwrap();
    let r = refusal(&out).unwrap();
    assert!(r.fatal && r.reason.contains("postgres"), "{r:?}");
}

#[test]
fn snapshot_copy_holds_what_was_applied_and_does_not_follow_later_frames() {
    let (dir, g) = setup();
    let mut st = StreamState::default();
    let f1 = enc("g", 1, 1, &[Change::write("vol", 0, vec![7; 8], 0)]);
    g.receive_batch(vec![f1], &mut st).unwrap();
    let snap = dir.path().join("snapshots/g/drill");
    let (wm, paths) = g.copy_to(&snap).unwrap();
    assert_eq!(wm, Seq(1));
    assert_eq!(paths, vec![snap.join("vol.img")]);
    let f2 = enc("g", 1, 2, &[Change::write("vol", 0, vec![9; 8], 0)]);
    g.receive_batch(vec![f2], &mut st).unwrap();
    let copy = std::fs::read(&paths[0]).unwrap();
    assert_eq!((&copy[..8], copy.len() as u64), (&[7u8; 8][..], VOL_SIZE));
    assert_eq!(g.read_resource("vol", 0, 8).unwrap(), vec![9; 8]);
}

#[test]
fn replica_applies_in_order_and_persists_watermark() {
    let (dir, g) = setup();
    let mut st = StreamState::default();
    let f1 = enc("g", 1, 1, &[Change::write("vol", 0, vec![1; 10], 0)]);
    let f2 = enc(
        "g",
        1,
        2,
        &[
            Change::write("vol", 5, vec![2; 10], 0),
            Change::trim("vol", 0, 3, 0),
            Change::barrier("vol", 0),
        ],
    );
    let out = g.receive_batch(vec![f1.clone(), f2], &mut st).unwrap();
    assert_eq!(acked(&out), Some(4));
    assert_eq!(
        g.read_resource("vol", 0, 15).unwrap(),
        [0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    );
    // A duplicate is acknowledged and not applied again.
    let out = g.receive_batch(vec![f1], &mut st).unwrap();
    assert_eq!(acked(&out), Some(4));
    assert_eq!(g.applied_changes(), 4);
    drop(g);
    let mut res = HashMap::new();
    res.insert("vol".to_owned(), dir.path().join("vol.img"));
    let g = ReplicaGroup::open("g", &dir.path().join("meta"), res).unwrap();
    assert_eq!(g.watermark(), Seq(4));
    assert_eq!(g.epoch(), Epoch(1));
}

#[test]
fn replica_refuses_gap_once_and_resumes_from_watermark() {
    let (_d, g) = setup();
    let mut st = StreamState::default();
    let f3 = enc("g", 1, 3, &[Change::write("vol", 0, vec![1; 4], 0)]);
    let f4 = enc("g", 1, 4, &[Change::write("vol", 0, vec![1; 4], 0)]);
    let out = g.receive_batch(vec![f3, f4], &mut st).unwrap();
    let r = refusal(&out).unwrap();
    assert_eq!((r.resume_from, r.fatal), (1, false));
    assert_eq!(out.len(), 1, "one refusal for the two gap frames");
    assert_eq!(g.watermark(), Seq(0));
}

#[test]
fn replica_refuses_corrupt_frame_and_accepts_the_resend() {
    let (_d, g) = setup();
    let mut st = StreamState::default();
    let good = enc("g", 1, 1, &[Change::write("vol", 0, vec![7; 4096], 0)]);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let out = g.receive_batch(vec![bad], &mut st).unwrap();
    let r = refusal(&out).unwrap();
    assert!(!r.fatal && r.resume_from == 1, "{r:?}");
    assert_eq!(g.watermark(), Seq(0));
    let out = g.receive_batch(vec![good], &mut st).unwrap();
    assert_eq!(acked(&out), Some(1));
}

#[test]
fn replica_refuses_frame_from_old_epoch() {
    let (_d, g) = setup();
    g.set_fence(Epoch(3)).unwrap();
    let mut st = StreamState::default();
    let f = enc("g", 2, 1, &[Change::write("vol", 0, vec![1; 4], 0)]);
    let out = g.receive_batch(vec![f], &mut st).unwrap();
    assert!(refusal(&out).unwrap().fatal);
    assert!(st.finished);
    assert_eq!(g.watermark(), Seq(0));
    assert!(g.hello(Epoch(2), Epoch(4)).unwrap().is_err());
    assert_eq!(
        g.hello(Epoch(4), Epoch(4)).unwrap().unwrap(),
        (Seq(0), Epoch(4))
    );
    assert_eq!(g.epoch(), Epoch(4));
}

#[test]
fn hello_never_raises_the_fence_above_the_coordinators_epoch() {
    let (_d, g) = setup();
    g.set_fence(Epoch(3)).unwrap();
    let r = g.hello(Epoch(u64::MAX), Epoch(3)).unwrap().unwrap_err();
    assert!(!r.fatal, "{r:?}");
    assert!(r.reason.contains("newer than the epoch 3"), "{}", r.reason);
    assert_eq!(g.epoch(), Epoch(3));
    assert_eq!(
        g.hello(Epoch(3), Epoch(3)).unwrap().unwrap(),
        (Seq(0), Epoch(3))
    );
}

#[test]
fn replica_applies_only_the_new_tail_of_an_overlapping_frame() {
    let (_d, g) = setup();
    let mut st = StreamState::default();
    let a = enc("g", 1, 1, &[Change::write("vol", 0, vec![1; 4], 0)]);
    g.receive_batch(vec![a], &mut st).unwrap();
    let b = enc(
        "g",
        1,
        1,
        &[
            Change::write("vol", 0, vec![9; 4], 0),
            Change::write("vol", 4, vec![2; 4], 0),
        ],
    );
    let out = g.receive_batch(vec![b], &mut st).unwrap();
    assert_eq!(acked(&out), Some(2));
    assert_eq!(
        g.read_resource("vol", 0, 8).unwrap(),
        [1, 1, 1, 1, 2, 2, 2, 2]
    );
}

fn db_setup() -> (tempfile::TempDir, ReplicaGroup) {
    let dir = tempfile::tempdir().unwrap();
    let mut res = HashMap::new();
    res.insert("db".to_owned(), dir.path().join("r.db"));
    let sq = ["db".to_owned()].into_iter().collect();
    let g = ReplicaGroup::open_with_sqlite("g", &dir.path().join("meta"), res, &sq).unwrap();
    (dir, g)
}

fn page(pgno: u64, fill: u8) -> Change {
    let mut data = vec![fill; 512];
    if pgno == 1 {
        data[..16].copy_from_slice(crate::sqlite_wal::DB_MAGIC);
        data[16..18].copy_from_slice(&512u16.to_be_bytes());
        data[18] = 2;
        data[19] = 2;
        data[21..24].copy_from_slice(&[64, 32, 32]);
    }
    Change {
        resource: "db".into(),
        kind: ChangeKind::DbPage,
        offset: pgno,
        length: 512,
        captured_ms: 0,
        data,
    }
}

fn commit(pages: u64) -> Change {
    Change {
        resource: "db".into(),
        kind: ChangeKind::DbCommit,
        offset: pages,
        length: 0,
        captured_ms: 0,
        data: vec![],
    }
}

#[test]
fn sqlite_resource_skips_changes_below_its_snapshot_seq_across_a_reopen() {
    let (dir, g) = db_setup();
    let mut st = StreamState::default();
    let f1 = enc("g", 1, 1, &[page(1, 0), page(2, 7), commit(2)]);
    g.receive_batch(vec![f1], &mut st).unwrap();
    // A resync: the primary's snapshot starts at seq 13; the stream resumes at 10, with an
    // increment (seqs 10-11) over a state this copy never had, then the snapshot.
    let from: HashMap<String, Seq> = [("db".to_owned(), Seq(13))].into_iter().collect();
    g.set_sqlite_from(&from).unwrap();
    g.reset_watermark(Seq(9)).unwrap();
    drop(g);
    let mut res = HashMap::new();
    res.insert("db".to_owned(), dir.path().join("r.db"));
    let sq = ["db".to_owned()].into_iter().collect();
    let g = ReplicaGroup::open_with_sqlite("g", &dir.path().join("meta"), res, &sq).unwrap();
    assert_eq!(g.watermark(), Seq(9));
    let mut st = StreamState::default();
    let inc = enc("g", 1, 10, &[page(2, 0xee), commit(2), page(3, 1)]);
    let out = g.receive_batch(vec![inc], &mut st).unwrap();
    assert_eq!(acked(&out), Some(12));
    // The copy keeps its own consistent state until the snapshot: no mix of the two.
    assert_eq!(g.read_resource("db", 512, 1).unwrap(), [7]);
    let snap = enc("g", 1, 13, &[page(1, 0), page(2, 5), page(3, 6), commit(3)]);
    let out = g.receive_batch(vec![snap], &mut st).unwrap();
    assert_eq!(acked(&out), Some(16));
    assert_eq!(
        g.read_resource("db", 512, 1).unwrap(),
        [5],
        "the snapshot's page 2"
    );
    assert_eq!(g.read_resource("db", 1024, 1).unwrap(), [6]);
    // Later changes apply on top.
    let next = enc("g", 1, 17, &[page(2, 9), commit(3)]);
    g.receive_batch(vec![next], &mut st).unwrap();
    assert_eq!(g.read_resource("db", 512, 1).unwrap(), [9]);
}

#[test]
fn sqlite_from_names_only_sqlite_resources() {
    let (_dir, g) = db_setup();
    let from: HashMap<String, Seq> = [("nope".to_owned(), Seq(3))].into_iter().collect();
    assert!(matches!(
        g.set_sqlite_from(&from),
        Err(ReplicatorError::UnknownResource { .. })
    ));
}

#[test]
fn sqlite_transaction_split_over_batches_applies_only_at_commit() {
    let (dir, g) = db_setup();
    let mut st = StreamState::default();
    let f1 = enc("g", 1, 1, &[page(1, 0), page(2, 7), commit(2)]);
    let out = g.receive_batch(vec![f1], &mut st).unwrap();
    assert_eq!(acked(&out), Some(3));
    let file = dir.path().join("r.db");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024);
    let head = g.read_resource("db", 0, 100).unwrap();
    assert_eq!(
        (head[18], head[19]),
        (1, 1),
        "materialised for rollback readers"
    );
    // The next transaction's pages arrive in one batch, its commit in the next.
    let f2 = enc("g", 1, 4, &[page(2, 8), page(3, 9)]);
    let out = g.receive_batch(vec![f2], &mut st).unwrap();
    assert_eq!(acked(&out), None, "nothing new is durable: no ack");
    assert_eq!(g.watermark(), Seq(5));
    assert_eq!(g.read_resource("db", 512, 1).unwrap(), [7]);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024);
    let f3 = enc("g", 1, 6, &[commit(3)]);
    let out = g.receive_batch(vec![f3], &mut st).unwrap();
    assert_eq!(acked(&out), Some(6));
    assert_eq!(g.read_resource("db", 512, 1).unwrap(), [8]);
    assert_eq!(g.read_resource("db", 1024, 1).unwrap(), [9]);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1536);
}

#[test]
fn sqlite_replica_restarted_mid_transaction_resumes_before_its_first_page() {
    let (dir, g) = db_setup();
    let mut st = StreamState::default();
    let f1 = enc("g", 1, 1, &[page(1, 0), commit(1), page(1, 0)]);
    g.receive_batch(vec![f1], &mut st).unwrap();
    drop(g);
    let mut res = HashMap::new();
    res.insert("db".to_owned(), dir.path().join("r.db"));
    let sq = ["db".to_owned()].into_iter().collect();
    let g = ReplicaGroup::open_with_sqlite("g", &dir.path().join("meta"), res, &sq).unwrap();
    assert_eq!(g.watermark(), Seq(2));
}

#[test]
fn sqlite_resource_refuses_volume_writes_and_volume_refuses_pages() {
    let (_d, g) = db_setup();
    let mut st = StreamState::default();
    let f = enc("g", 1, 1, &[Change::write("db", 0, vec![1; 4], 0)]);
    assert!(
        refusal(&g.receive_batch(vec![f], &mut st).unwrap())
            .unwrap()
            .fatal
    );
    let (_d, g) = setup();
    let mut p = page(1, 0);
    p.resource = "vol".into();
    let f = enc("g", 1, 1, &[p]);
    let mut st = StreamState::default();
    assert!(
        refusal(&g.receive_batch(vec![f], &mut st).unwrap())
            .unwrap()
            .fatal
    );
}

#[test]
fn sqlite_page_of_bad_size_is_refused() {
    let (_d, g) = db_setup();
    let mut st = StreamState::default();
    let mut p = page(2, 0);
    p.data.truncate(500);
    p.length = 500;
    let f = enc("g", 1, 1, &[p]);
    let r = refusal(&g.receive_batch(vec![f], &mut st).unwrap()).unwrap();
    assert!(r.fatal && r.reason.contains("500 bytes"), "{r:?}");
}

#[test]
fn replica_refuses_unknown_resource_fatally() {
    let (_d, g) = setup();
    let mut st = StreamState::default();
    let f = enc("g", 1, 1, &[Change::write("nope", 0, vec![1; 4], 0)]);
    let out = g.receive_batch(vec![f], &mut st).unwrap();
    assert!(refusal(&out).unwrap().fatal);
    assert_eq!(g.watermark(), Seq(0));
}

#[test]
fn replica_refuses_out_of_bounds_changes_before_any_of_their_frame_is_written() {
    let (dir, g) = setup();
    g.enable_history(
        &dir.path().join("history"),
        crate::history::HistoryConfig::new(3_600_000),
    )
    .unwrap();
    let vol = dir.path().join("vol.img");
    let mut st = StreamState::default();
    let f1 = enc("g", 1, 1, &[Change::write("vol", 0, vec![1; 8], 0)]);
    assert_eq!(acked(&g.receive_batch(vec![f1], &mut st).unwrap()), Some(1));
    let before = std::fs::read(&vol).unwrap();
    let history_bytes = g.history_view().unwrap().bytes;
    // Each frame starts with an in-bounds write that must not land either.
    let cases = [
        (
            Change::write("vol", VOL_SIZE - 2, vec![2; 4], 0),
            "ends at 65538",
        ),
        (
            Change::write("vol", VOL_SIZE, vec![2; 1], 0),
            "past the size 65536",
        ),
        (
            Change::trim("vol", 0, 1 << 63, 0),
            "length 9223372036854775808",
        ),
        (Change::trim("vol", u64::MAX, 2, 0), "overflows"),
    ];
    for (i, (bad, want)) in cases.into_iter().enumerate() {
        let mut st = StreamState::default();
        let f = enc(
            "g",
            1,
            2,
            &[Change::write("vol", 16, vec![3; 16], 0), bad.clone()],
        );
        let out = g.receive_batch(vec![f], &mut st).unwrap();
        let r = refusal(&out).unwrap();
        assert!(
            r.fatal && r.reason.contains("out of bounds") && r.reason.contains(want),
            "#{i}: expect a fatal out-of-bounds refusal naming {want:?} got {r:?}"
        );
        assert!(r.reason.contains("seq 3"), "#{i}: names the change: {r:?}");
        assert_eq!(acked(&out), None, "#{i}");
        assert!(st.finished, "#{i}: the stream ends");
        assert_eq!(g.watermark(), Seq(1), "#{i}: the watermark does not move");
        assert_eq!(
            std::fs::read(&vol).unwrap(),
            before,
            "#{i}: image unchanged"
        );
        assert_eq!(
            g.history_view().unwrap().bytes,
            history_bytes,
            "#{i}: nothing recorded in the history"
        );
    }
    // The fence is not raised by a refused frame either.
    let f = enc("g", 5, 2, &[Change::write("vol", VOL_SIZE, vec![2; 1], 0)]);
    g.receive_batch(vec![f], &mut StreamState::default())
        .unwrap();
    assert_eq!(g.epoch(), Epoch(1));
    // The last byte is still writable.
    let f = enc("g", 1, 2, &[Change::write("vol", VOL_SIZE - 1, vec![4], 0)]);
    assert_eq!(acked(&g.receive_batch(vec![f], &mut st).unwrap()), Some(2));
    assert_eq!(std::fs::metadata(&vol).unwrap().len(), VOL_SIZE);
}

/// A group over two 64 KiB volumes, `vol` and `b`, keeping history in `dir/history`.
fn setup_two_with_history() -> (tempfile::TempDir, ReplicaGroup) {
    let dir = tempfile::tempdir().unwrap();
    let g = open_two(dir.path());
    (dir, g)
}

fn open_two(dir: &std::path::Path) -> ReplicaGroup {
    let mut res = HashMap::new();
    for name in ["vol", "b"] {
        let p = dir.join(format!("{name}.img"));
        if !p.exists() {
            std::fs::File::create(&p)
                .unwrap()
                .set_len(VOL_SIZE)
                .unwrap();
        }
        res.insert(name.to_owned(), p);
    }
    let g = ReplicaGroup::open("g", &dir.join("meta"), res).unwrap();
    g.enable_history(
        &dir.join("history"),
        crate::history::HistoryConfig::new(3_600_000),
    )
    .unwrap();
    g
}

/// A power loss after a batch wrote its data but before anything else was synced: the new
/// bytes reached the volume (unsynced data may reach the disk at any moment), the history
/// keeps only what it fdatasync'ed. Re-applied after the restart, the change must not record
/// its own new bytes as the old ones: a recovery to the checkpoint before it holds the old
/// bytes.
#[test]
fn undo_records_are_durable_before_the_data_they_undo_survives_a_power_loss() {
    let (dir, g) = setup_two_with_history();
    let mut st = StreamState::default();
    let f1 = enc(
        "g",
        1,
        1,
        &[
            Change::write("vol", 0, vec![1; 4096], 1000),
            Change::checkpoint("before", 1001),
        ],
    );
    assert_eq!(acked(&g.receive_batch(vec![f1], &mut st).unwrap()), Some(2));
    // The batch stops after the write of `vol` reached the file: `b` cannot be written (its
    // handle is read-only), so nothing of the batch is synced or acknowledged.
    let b = dir.path().join("b.img");
    g.inner().resources.get_mut("b").unwrap().file = std::fs::File::open(&b).unwrap();
    let f2 = enc(
        "g",
        1,
        3,
        &[
            Change::write("vol", 0, vec![2; 4096], 2000),
            Change::write("b", 0, vec![3; 16], 2001),
        ],
    );
    assert!(g.receive_batch(vec![f2.clone()], &mut st).is_err());
    assert_eq!(g.watermark(), Seq(2));
    assert_eq!(g.read_resource("vol", 0, 4).unwrap(), vec![2; 4]);
    // The power loss: the history loses what it never fdatasync'ed.
    let (seg, durable) = g.inner().history.as_ref().unwrap().durable_tail().unwrap();
    drop(g);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(durable)
        .unwrap();
    // Restarted: the primary resends the batch.
    let g = open_two(dir.path());
    let mut st = StreamState::default();
    assert_eq!(acked(&g.receive_batch(vec![f2], &mut st).unwrap()), Some(4));
    let out = dir.path().join("recovered");
    let r = g
        .recover(&crate::history::Selector::Tag("before".into()), &out, 4096)
        .unwrap();
    assert_eq!(r.point.seq, Seq(2));
    let img = std::fs::read(out.join("vol.img")).unwrap();
    assert!(
        img[..4096].iter().all(|b| *b == 1),
        "the recovered image holds the bytes of the checkpoint, not the later write: first byte {}",
        img[0]
    );
    let b_img = std::fs::read(out.join("b.img")).unwrap();
    assert!(
        b_img.iter().all(|b| *b == 0),
        "b holds nothing at the checkpoint"
    );
}

/// Writes held until their undo records are durable still see each other in seq order: a
/// change overlapping a held one records the held one's bytes as its old bytes (the batch
/// flushes first), and a batch without overlaps costs one history fdatasync.
#[test]
fn overlapping_changes_in_one_batch_record_each_others_bytes_as_old() {
    let (dir, g) = setup_two_with_history();
    let mut st = StreamState::default();
    let f = enc(
        "g",
        1,
        1,
        &[
            Change::write("vol", 0, vec![1; 100], 1000),
            Change::write("b", 0, vec![9; 100], 1000),
            Change::checkpoint("one", 1001),
            Change::write("vol", 50, vec![2; 100], 1002),
            Change::checkpoint("two", 1003),
            Change::trim("vol", 0, 60, 1004),
        ],
    );
    assert_eq!(acked(&g.receive_batch(vec![f], &mut st).unwrap()), Some(6));
    let mut want_now = vec![0u8; 60];
    want_now.extend([2u8; 90]);
    assert_eq!(g.read_resource("vol", 0, 150).unwrap(), want_now);
    for (tag, want) in [
        ("one", [vec![1u8; 100], vec![0; 50]].concat()),
        ("two", [vec![1u8; 50], vec![2; 100]].concat()),
    ] {
        let out = dir.path().join(tag);
        g.recover(&crate::history::Selector::Tag(tag.into()), &out, 4096)
            .unwrap();
        let img = std::fs::read(out.join("vol.img")).unwrap();
        assert_eq!(&img[..150], &want[..], "recovered to {tag}");
    }
}

/// New folders of a replica group (its metadata folder, its history, a recovery's output)
/// are fsynced in their parents: a power loss cannot take back a folder holding durable files.
#[test]
fn new_replica_folders_are_fsynced_in_their_parents() {
    let dir = tempfile::tempdir().unwrap();
    let vol = dir.path().join("vol.img");
    std::fs::File::create(&vol)
        .unwrap()
        .set_len(VOL_SIZE)
        .unwrap();
    crate::durable_dir::take_synced();
    let meta = dir.path().join("replica").join("meta");
    let g = ReplicaGroup::open("g", &meta, HashMap::from([("vol".to_owned(), vol)])).unwrap();
    let hist = dir.path().join("history");
    g.enable_history(&hist, crate::history::HistoryConfig::new(3_600_000))
        .unwrap();
    let synced = crate::durable_dir::take_synced();
    for want in [dir.path(), &dir.path().join("replica")] {
        assert!(
            synced.iter().any(|p| p == want),
            "{} not fsynced: {synced:?}",
            want.display()
        );
    }
    let mut st = StreamState::default();
    let f = enc("g", 1, 1, &[Change::checkpoint("a", 1)]);
    g.receive_batch(vec![f], &mut st).unwrap();
    let out = dir.path().join("recoveries").join("a");
    g.recover(&crate::history::Selector::Tag("a".into()), &out, 4096)
        .unwrap();
    let synced = crate::durable_dir::take_synced();
    assert!(
        synced.contains(&dir.path().join("recoveries")),
        "{synced:?}"
    );
}

/// As [`undo_records_are_durable_before_the_data_they_undo_survives_a_power_loss`], for a
/// SQLite commit: its pages' old bytes are durable before the pages are written.
#[test]
fn a_sqlite_commits_undo_is_durable_before_its_pages_survives_a_power_loss() {
    let dir = tempfile::tempdir().unwrap();
    let db2 = dir.path().join("r2.db");
    let open = || {
        let res = HashMap::from([
            ("db".to_owned(), dir.path().join("r.db")),
            ("db2".to_owned(), db2.clone()),
        ]);
        let sq = ["db".to_owned(), "db2".to_owned()].into_iter().collect();
        let g = ReplicaGroup::open_with_sqlite("g", &dir.path().join("meta"), res, &sq).unwrap();
        g.enable_history(
            &dir.path().join("history"),
            crate::history::HistoryConfig::new(3_600_000),
        )
        .unwrap();
        g
    };
    let on_db2 = |mut c: Change| {
        c.resource = "db2".into();
        c
    };
    let g = open();
    let mut st = StreamState::default();
    let before = Change::checkpoint("before", 0);
    let f1 = enc(
        "g",
        1,
        1,
        &[
            page(1, 0),
            page(2, 7),
            commit(2),
            on_db2(page(1, 0)),
            on_db2(commit(1)),
            before,
        ],
    );
    assert_eq!(acked(&g.receive_batch(vec![f1], &mut st).unwrap()), Some(6));
    // The commit of `db` reaches the file; `db2` cannot be written (read-only handle), so
    // the batch stops there, nothing synced after.
    g.inner().resources.get_mut("db2").unwrap().file = std::fs::File::open(&db2).unwrap();
    let f2 = enc(
        "g",
        1,
        7,
        &[page(2, 8), commit(2), on_db2(page(1, 1)), on_db2(commit(1))],
    );
    assert!(g.receive_batch(vec![f2.clone()], &mut st).is_err());
    assert_eq!(g.read_resource("db", 512, 1).unwrap(), [8]);
    let (seg, durable) = g.inner().history.as_ref().unwrap().durable_tail().unwrap();
    drop(g);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(durable)
        .unwrap();
    let g = open();
    let mut st = StreamState::default();
    assert_eq!(
        acked(&g.receive_batch(vec![f2], &mut st).unwrap()),
        Some(10)
    );
    let out = dir.path().join("recovered");
    g.recover(&crate::history::Selector::Tag("before".into()), &out, 4096)
        .unwrap();
    let db = std::fs::read(out.join("db.img")).unwrap();
    assert_eq!(db[512], 7, "page 2 as it was at the checkpoint");
}

#[test]
fn frames_decoded_ahead_are_applied_and_refused_as_if_decoded_in_the_apply() {
    // The same stream of frames, once decoded under the lock and once decoded ahead.
    let frames = || {
        let f1 = enc("g", 1, 1, &[Change::write("vol", 0, vec![7; 4096], 0)]);
        let f2 = enc("g", 1, 2, &[Change::write("vol", 4096, vec![8; 4096], 0)]);
        let mut bad = enc("g", 1, 3, &[Change::write("vol", 0, vec![9; 4096], 0)]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        vec![f1.clone(), f2, f1, bad]
    };
    let (_d1, plain) = setup();
    let mut st = StreamState::default();
    let want = plain.receive_batch(frames(), &mut st).unwrap();
    let (_d2, ahead) = setup();
    let mut st = StreamState::default();
    let mut dec = tandem_core::frame::Decoder::new().unwrap();
    let received = frames()
        .into_iter()
        .map(|f| Received::decode(&mut dec, f))
        .collect();
    let got = ahead.receive_received(received, &mut st).unwrap();
    assert_eq!(got, want);
    assert_eq!(acked(&got), Some(2));
    let r = refusal(&got).unwrap();
    assert!(!r.fatal && r.resume_from == 3, "{r:?}");
    assert_eq!(ahead.watermark(), Seq(2));
    assert_eq!(
        ahead.read_resource("vol", 0, 8192).unwrap(),
        plain.read_resource("vol", 0, 8192).unwrap()
    );
}
