//! Tests of the history as a whole: changes written through a [`History`], copies rewound.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::store::{piece_len, PARALLEL_MIN_LEN};
use super::*;
use crate::error::ReplicatorError;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tandem_core::ids::{GroupId, Seq};

fn open_file(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
        .unwrap()
}

/// Applies writes to a file through the history as the applier does: the undo record
/// durable, then the write.
fn write(h: &mut History, f: &File, p: &Path, seq: u64, ms: i64, off: u64, data: &[u8]) {
    h.record_undo(Seq(seq), ms, "v", f, p, off, data.len() as u64, true)
        .unwrap();
    h.sync().unwrap();
    f.write_all_at(data, off).unwrap();
}

#[test]
fn rewind_restores_each_point_and_the_length() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    let mut cfg = HistoryConfig::new(3_600_000);
    cfg.segment_bytes = 200; // several segments
    let mut h = History::open(&d.path().join("h"), GroupId(1), Seq(0), cfg).unwrap();
    let mut states = vec![(0u64, Vec::new())];
    let mut seq = 0;
    for i in 0..6u8 {
        seq += 1;
        write(
            &mut h,
            &f,
            &vp,
            seq,
            i as i64,
            u64::from(i) * 3,
            &[i + 1; 10],
        );
        seq += 1;
        h.record_point(Seq(seq), i as i64, RecordKind::Barrier, "v", true)
            .unwrap();
        states.push((seq, std::fs::read(&vp).unwrap()));
    }
    h.sync().unwrap();
    assert!(h.segment_count() > 2);
    for (target, want) in &states {
        let c = d.path().join("copy.img");
        std::fs::copy(&vp, &c).unwrap();
        let files = HashMap::from([("v".to_string(), (open_file(&c), c.clone()))]);
        rewind(&h.snapshot().unwrap(), Seq(*target), Seq(seq), &files).unwrap();
        assert_eq!(&std::fs::read(&c).unwrap(), want, "target {target}");
    }
    // Reopened, the history holds the same points and does not re-record old seqs.
    let pts = h.points();
    drop(h);
    let h = History::open(
        &d.path().join("h"),
        GroupId(1),
        Seq(seq),
        HistoryConfig::new(3_600_000),
    )
    .unwrap();
    assert_eq!(h.points(), pts);
    assert!(!h.wants(Seq(seq)) && h.wants(Seq(seq + 1)));
}

#[test]
fn one_change_larger_than_a_segment_is_split_into_records_and_rewound() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    // Incompressible, so the records really are about 1 MiB each.
    let old = crate::testdata::noise(3 << 20);
    f.write_all_at(&old, 0).unwrap();
    let mut cfg = HistoryConfig::new(3_600_000);
    cfg.segment_bytes = 1 << 20;
    let mut h = History::open(&d.path().join("h"), GroupId(1), Seq(0), cfg).unwrap();
    h.record_point(Seq(1), 0, RecordKind::Barrier, "v", true)
        .unwrap();
    // A 3 MiB trim: three records of one seq.
    h.record_undo(Seq(2), 1, "v", &f, &vp, 0, 3 << 20, true)
        .unwrap();
    f.write_all_at(&vec![0u8; 3 << 20], 0).unwrap();
    h.sync().unwrap();
    // Split once after its first record (base 2 holds the rest of seq 2), and not again:
    // a segment never rotates into another with the same base.
    assert_eq!(h.segment_count(), 2);
    assert!(h.bytes() > 3 << 20);
    let files = HashMap::from([("v".to_string(), (open_file(&vp), vp.clone()))]);
    let snap = h.snapshot().unwrap();
    assert_eq!(rewind(&snap, Seq(2), Seq(2), &files).unwrap(), 0);
    // At least three records (more when more cores share the compression).
    assert!(rewind(&snap, Seq(1), Seq(2), &files).unwrap() >= 3);
    assert!(std::fs::read(&vp).unwrap() == old);
}

#[test]
fn undo_pieces_split_large_changes_over_the_compressors_only() {
    let mib = 1u64 << 20;
    let cases = [
        // (bytes kept, contexts, piece)
        (4096, 2, MAX_RECORD_DATA as u64),
        (PARALLEL_MIN_LEN - 1, 4, MAX_RECORD_DATA as u64),
        (mib, 1, MAX_RECORD_DATA as u64),
        (mib, 2, mib / 2),
        (mib, 4, mib / 4),
        (300 << 10, 8, 64 << 10),
        (8 * mib, 2, MAX_RECORD_DATA as u64),
    ];
    for (i, (total, contexts, want)) in cases.into_iter().enumerate() {
        let got = piece_len(total, contexts);
        assert_eq!(got, want, "#{i}: expect {want} got {got}");
    }
}

#[test]
fn a_large_mixed_change_split_over_the_cores_is_rewound_exactly() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    let old = tandem_core::mixed::mixed(5, 1_500_000);
    f.write_all_at(&old, 0).unwrap();
    let mut h = History::open(
        &d.path().join("h"),
        GroupId(1),
        Seq(0),
        HistoryConfig::new(3_600_000),
    )
    .unwrap();
    h.record_point(Seq(1), 0, RecordKind::Barrier, "v", true)
        .unwrap();
    // 1.2 MB written at 100 000, running past the end by 200 000 bytes.
    write(
        &mut h,
        &f,
        &vp,
        2,
        1,
        100_000,
        &tandem_core::mixed::mixed(6, 1_600_000),
    );
    h.sync().unwrap();
    assert!(h.bytes() < 1_400_000 / 2, "mixed data is kept compressed");
    let files = HashMap::from([("v".to_string(), (open_file(&vp), vp.clone()))]);
    rewind(&h.snapshot().unwrap(), Seq(1), Seq(2), &files).unwrap();
    assert!(std::fs::read(&vp).unwrap() == old);
}

#[test]
fn torn_tail_is_cut_and_corrupt_old_segment_drops_older_history() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    let mut cfg = HistoryConfig::new(3_600_000);
    cfg.segment_bytes = 150;
    let hd = d.path().join("h");
    let mut h = History::open(&hd, GroupId(1), Seq(0), cfg.clone()).unwrap();
    for s in 1..=6 {
        write(&mut h, &f, &vp, s, s as i64, 0, &[s as u8; 20]);
    }
    h.sync().unwrap();
    let segs: Vec<PathBuf> = h.snapshot().unwrap().into_iter().map(|s| s.path).collect();
    drop(h);
    // A torn tail on the newest segment: cut, earlier records kept.
    let newest = segs.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    let fh = OpenOptions::new().write(true).open(newest).unwrap();
    fh.set_len(len - 3).unwrap();
    let h = History::open(&hd, GroupId(1), Seq(6), cfg.clone()).unwrap();
    assert!(h.wants(Seq(6)), "the torn seq is recorded again");
    assert!(!h.wants(Seq(5)));
    drop(h);
    // A flipped byte in the second segment: it and the first are dropped.
    let mut b = std::fs::read(&segs[1]).unwrap();
    b[SEGMENT_HEADER_LEN + 10] ^= 1;
    std::fs::write(&segs[1], b).unwrap();
    let h = History::open(&hd, GroupId(1), Seq(6), cfg).unwrap();
    assert_eq!(h.segment_count(), segs.len() - 2);
    assert!(h.oldest_seq() >= Seq(2));
}

#[test]
fn trimming_moves_the_oldest_point_forward_and_keeps_newer_ones() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    let mut cfg = HistoryConfig::new(1000);
    cfg.segment_bytes = 100;
    let mut h = History::open(&d.path().join("h"), GroupId(1), Seq(0), cfg).unwrap();
    for s in 1..=10u64 {
        write(
            &mut h,
            &f,
            &vp,
            2 * s - 1,
            s as i64 * 100,
            0,
            &[s as u8; 16],
        );
        h.record_point(Seq(2 * s), s as i64 * 100, RecordKind::Barrier, "v", true)
            .unwrap();
    }
    h.sync().unwrap();
    let before = h.oldest_point().unwrap().clone();
    let all = h.points();
    assert_eq!(h.trim(1000).unwrap(), 0, "nothing older than the window");
    let n = h.trim(1650).unwrap();
    assert!(n > 0);
    let after = h.oldest_point().unwrap().clone();
    assert!(after.seq > before.seq, "{before:?} -> {after:?}");
    assert!(after.captured_ms >= 650 - 100);
    // Nothing newer than the oldest point is lost, and rewinding to it works.
    let kept: Vec<_> = all.iter().filter(|p| p.seq >= after.seq).cloned().collect();
    assert_eq!(h.points(), kept);
    let c = d.path().join("copy.img");
    std::fs::copy(&vp, &c).unwrap();
    let files = HashMap::from([("v".to_string(), (open_file(&c), c.clone()))]);
    rewind(&h.snapshot().unwrap(), after.seq, Seq(20), &files).unwrap();
    let s = after.seq.0 / 2;
    assert_eq!(std::fs::read(&c).unwrap(), vec![s as u8; 16]);
    // Too far back: refused, not silently wrong.
    assert!(matches!(
        rewind(&h.snapshot().unwrap(), Seq(1), Seq(20), &files),
        Err(ReplicatorError::NoRecoveryPoint(_))
    ));
    // The size cap removes the oldest segments too.
    let mut h2cfg = HistoryConfig::new(i64::MAX / 4);
    h2cfg.max_bytes = Some(300);
    h2cfg.segment_bytes = 100;
    let mut h2 = History::open(&d.path().join("h2"), GroupId(1), Seq(0), h2cfg).unwrap();
    for s in 1..=10u64 {
        write(&mut h2, &f, &vp, s, 0, 0, &[1; 16]);
    }
    h2.trim(0).unwrap();
    assert!(h2.bytes() <= 300 + 200, "{}", h2.bytes());
}

#[test]
fn undo_records_are_compressed_off_the_caller_and_appended_in_order_by_the_sync() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    let old = tandem_core::mixed::mixed(9, 4 << 20);
    f.write_all_at(&old, 0).unwrap();
    let mut h = History::open(
        &d.path().join("h"),
        GroupId(1),
        Seq(0),
        HistoryConfig::new(3_600_000),
    )
    .unwrap();
    h.record_point(Seq(1), 0, RecordKind::Barrier, "v", true)
        .unwrap();
    let before = h.bytes();
    // Four changes of 1 MiB, each read now and handed to the encoders.
    for i in 0..4u64 {
        h.record_undo(Seq(2 + i), 1, "v", &f, &vp, i << 20, 1 << 20, true)
            .unwrap();
    }
    assert_eq!(h.bytes(), before, "nothing appended before the sync");
    assert!(h.wants(Seq(5)));
    // The data may be written only once the sync has returned.
    h.sync().unwrap();
    assert!(h.bytes() > before, "appended by the sync");
    assert!(!h.wants(Seq(5)), "every record of seq 5 is in the history");
    f.write_all_at(&vec![0xAB; 4 << 20], 0).unwrap();
    let files = HashMap::from([("v".to_string(), (open_file(&vp), vp.clone()))]);
    let records = rewind(&h.snapshot().unwrap(), Seq(1), Seq(5), &files).unwrap();
    assert!(records >= 4, "{records} records");
    assert!(std::fs::read(&vp).unwrap() == old);
    // A point record appends what is pending first: the points stay in seq order.
    h.record_undo(Seq(6), 2, "v", &f, &vp, 0, 4096, true)
        .unwrap();
    h.record_point(Seq(7), 2, RecordKind::Barrier, "v", true)
        .unwrap();
    assert!(!h.wants(Seq(6)));
    let seqs: Vec<u64> = h.points().iter().map(|p| p.seq.0).collect();
    assert_eq!(seqs, vec![1, 7]);
}

/// The flags of every record in the history's segment files, in order.
fn record_flags(dir: &Path) -> Vec<u8> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hist"))
        .collect();
    segs.sort();
    let mut flags = Vec::new();
    for s in segs {
        let b = std::fs::read(&s).unwrap();
        let mut at = codec::SEGMENT_HEADER_LEN;
        while at < b.len() {
            let h = codec::parse_record_header(&b[at..]).unwrap();
            flags.push(h.flags);
            at += h.record_len() as usize;
        }
    }
    flags
}

#[test]
fn a_hole_is_recorded_as_zero_bytes_and_data_in_the_page_cache_is_read() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    f.set_len(8 << 20).unwrap();
    // Data at [1 MiB, 2 MiB), written and never synced: in the page cache only.
    let data = crate::testdata::noise(1 << 20);
    f.write_all_at(&data, 1 << 20).unwrap();
    assert!(!store::is_hole(&f, 1 << 20, 4096));
    assert!(
        !store::is_hole(&f, (1 << 20) - 4096, 8192),
        "a hole that runs into data"
    );
    if !store::is_hole(&f, 4 << 20, 1 << 20) {
        eprintln!("SKIPPED: this file system reports no holes (SEEK_DATA), everything is read");
        return;
    }
    assert!(store::is_hole(&f, 0, 1 << 20));
    assert!(
        store::is_hole(&f, 2 << 20, 6 << 20),
        "a hole to the end of the file"
    );

    let hd = d.path().join("h");
    let mut h = History::open(&hd, GroupId(1), Seq(0), HistoryConfig::new(3_600_000)).unwrap();
    h.record_point(Seq(1), 0, RecordKind::Barrier, "v", true)
        .unwrap();
    let before = std::fs::read(&vp).unwrap();
    // One write over the hole and the data, one over a hole only.
    write(&mut h, &f, &vp, 2, 1, 0, &vec![9u8; 2 << 20]);
    write(&mut h, &f, &vp, 3, 2, 5 << 20, &vec![8u8; 1 << 20]);
    h.sync().unwrap();
    let flags = record_flags(&hd);
    let zero = flags.iter().filter(|&&x| x & codec::FLAG_ZERO != 0).count();
    let read = flags.len() - 1 - zero;
    assert!(zero >= 2, "the hole pieces are zero records: {flags:?}");
    assert!(read >= 1, "the data piece was read: {flags:?}");
    let files = HashMap::from([("v".to_string(), (open_file(&vp), vp.clone()))]);
    rewind(&h.snapshot().unwrap(), Seq(1), Seq(3), &files).unwrap();
    assert!(
        std::fs::read(&vp).unwrap() == before,
        "rewound to the hole and the data"
    );
}

#[test]
fn with_no_level_undo_data_is_stored_raw_and_rewound() {
    let d = tempfile::tempdir().unwrap();
    let vp = d.path().join("v.img");
    let f = open_file(&vp);
    let old = b"old bytes of a volume ".repeat(50_000);
    f.write_all_at(&old, 0).unwrap();
    f.sync_data().unwrap();
    let hd = d.path().join("h");
    let mut cfg = HistoryConfig::new(3_600_000);
    cfg.level = None;
    let mut h = History::open(&hd, GroupId(1), Seq(0), cfg).unwrap();
    h.record_point(Seq(1), 0, RecordKind::Barrier, "v", true)
        .unwrap();
    write(&mut h, &f, &vp, 2, 1, 0, &vec![1u8; old.len()]);
    h.sync().unwrap();
    let flags = record_flags(&hd);
    assert!(flags.len() > 1);
    assert!(
        flags.iter().all(|x| x & codec::FLAG_ZSTD == 0),
        "compressible data stored raw: {flags:?}"
    );
    assert!(h.bytes() > old.len() as u64, "raw: at least the old bytes");
    let files = HashMap::from([("v".to_string(), (open_file(&vp), vp.clone()))]);
    rewind(&h.snapshot().unwrap(), Seq(1), Seq(2), &files).unwrap();
    assert!(std::fs::read(&vp).unwrap() == old);
}
