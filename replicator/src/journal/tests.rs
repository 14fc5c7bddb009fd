//! Tests of the journal: layout, reopen and scan, trim, seq reservation and generations.
use super::*;
use crate::meta::read_meta_any;
use tandem_core::frame::{Change, Encoder, FrameMeta};

const G: &str = "g";

fn frame(enc: &mut Encoder, first: u64, n: u64, fill: u8) -> NewFrame {
    let changes: Vec<Change> = (0..n)
        .map(|i| Change::write("vol", i * 4096, vec![fill; 4096], 1_000 + i as i64))
        .collect();
    let bytes = enc
        .encode(
            FrameMeta {
                group: GroupId::from_name(G),
                epoch: Epoch(1),
                first_seq: Seq(first),
            },
            &changes,
        )
        .unwrap();
    NewFrame {
        bytes,
        first_seq: Seq(first),
        last_seq: Seq(first + n - 1),
        oldest_capture_ms: 1_000,
    }
}

fn open(dir: &Path, seg: u64) -> Result<Journal> {
    Journal::open(dir, GroupId::from_name(G), Epoch(1), seg)
}

fn write_frames(j: &Journal, count: u64) -> Vec<NewFrame> {
    let mut enc = Encoder::new(1).unwrap();
    let mut out = Vec::new();
    for i in 0..count {
        let f = frame(&mut enc, j.next_seq().0, 2, i as u8);
        j.append(std::slice::from_ref(&f)).unwrap();
        out.push(f);
    }
    out
}

#[test]
fn bytes_from_counts_the_frames_ending_at_or_after_a_seq_up_to_a_cap() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let frames = write_frames(&j, 4); // seqs 1-2, 3-4, 5-6, 7-8
    let len = |i: usize| frames[i].bytes.len() as u64;
    let all: u64 = (0..4).map(len).sum();
    assert_eq!(j.bytes_from(Seq(1), u64::MAX), all);
    assert_eq!(
        j.bytes_from(Seq(4), u64::MAX),
        len(1) + len(2) + len(3),
        "seq 4 is in the second frame"
    );
    assert_eq!(j.bytes_from(Seq(9), u64::MAX), 0, "nothing past the end");
    assert_eq!(j.bytes_from(Seq(1), len(3) + 1), len(3) + 1, "capped");
    j.trim_through(Seq(4)).unwrap();
    assert_eq!(
        j.bytes_from(Seq(1), u64::MAX),
        len(2) + len(3),
        "trimmed frames are gone"
    );
}

#[test]
fn journal_golden_layout_is_concatenated_frames_in_seq_named_segments() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let frames = write_frames(&j, 3);
    let seg = dir.path().join("00000000000000000001.seg");
    let on_disk = std::fs::read(&seg).unwrap();
    let expected: Vec<u8> = frames.iter().flat_map(|f| f.bytes.clone()).collect();
    assert_eq!(on_disk, expected);
    assert_eq!(&on_disk[..4], b"TNDF");
    assert_eq!(j.next_seq(), Seq(7));
    assert_eq!(j.pending_bytes(), expected.len() as u64);
    let got = j.frames_from(Seq(3), usize::MAX).unwrap();
    assert_eq!(got.len(), 2, "frames from seq 3 start at the second frame");
    assert_eq!(got[0].1, frames[1].bytes);
    assert_eq!(got[0].0.first_seq, Seq(3));
}

#[test]
fn journal_rotates_segments_by_size_and_reopens_with_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), 1).unwrap();
    write_frames(&j, 4);
    assert_eq!(
        j.segment_paths().len(),
        4,
        "a tiny segment size rotates per frame"
    );
    let before = j.entries();
    drop(j);
    let j = open(dir.path(), 1).unwrap();
    assert_eq!(j.entries(), before);
    assert_eq!(j.last_seq(), Seq(8));
    let first = Seq(2 + RESERVE_SEQS + 1);
    assert_eq!(
        j.next_seq(),
        first,
        "a reopen continues after the reservation"
    );
    write_frames(&j, 1);
    assert_eq!(j.last_seq(), Seq(first.0 + 1));
    drop(j);
    let j = open(dir.path(), 1).unwrap();
    let seqs: Vec<u64> = j.entries().iter().map(|e| e.first_seq.0).collect();
    assert_eq!(
        seqs,
        [1, 3, 5, 7, first.0],
        "the gap at the generation start is accepted"
    );
}

#[test]
fn journal_truncates_torn_tail_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let frames = write_frames(&j, 3);
    drop(j);
    let seg = dir.path().join("00000000000000000001.seg");
    let full = std::fs::read(&seg).unwrap();
    let cut = full.len() - frames[2].bytes.len() / 2;
    std::fs::write(&seg, &full[..cut]).unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(j.last_seq(), Seq(4), "the torn third frame is gone");
    assert_eq!(j.entries().len(), 2);
    let keep = frames[0].bytes.len() + frames[1].bytes.len();
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), keep as u64);
    // Appending after the truncation continues cleanly and survives another reopen.
    write_frames(&j, 1);
    let last = j.last_seq();
    drop(j);
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(j.last_seq(), last);
    assert_eq!(j.entries().len(), 3);
}

#[test]
fn journal_truncates_zero_filled_tail() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    write_frames(&j, 2);
    drop(j);
    let seg = dir.path().join("00000000000000000001.seg");
    let mut b = std::fs::read(&seg).unwrap();
    let len = b.len();
    b.resize(len + 8192, 0);
    std::fs::write(&seg, &b).unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(j.last_seq(), Seq(4));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len as u64);
}

#[test]
fn journal_refuses_corrupt_middle_frame() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let frames = write_frames(&j, 4);
    drop(j);
    let seg = dir.path().join("00000000000000000001.seg");
    let mut b = std::fs::read(&seg).unwrap();
    let second = frames[0].bytes.len();
    b[second + HEADER_LEN + 10] ^= 0xff; // payload byte of frame 2
    std::fs::write(&seg, &b).unwrap();
    match open(dir.path(), DEFAULT_SEGMENT_BYTES) {
        Err(ReplicatorError::CorruptJournal { offset, .. }) => {
            assert_eq!(offset, second as u64)
        }
        other => panic!("expected CorruptJournal, got {other:?}"),
    }
}

#[test]
fn journal_trim_drops_acked_frames_and_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), 1).unwrap();
    write_frames(&j, 5); // seqs 1..=10, one frame per segment
    assert_eq!(j.segment_paths().len(), 5);
    j.trim_through(Seq(6)).unwrap();
    assert_eq!(j.entries().first().map(|e| e.first_seq), Some(Seq(7)));
    assert_eq!(j.segment_paths().len(), 2, "segments 1, 3, 5 removed");
    assert!(!dir.path().join("00000000000000000001.seg").exists());
    assert!(j.frames_from(Seq(1), usize::MAX).unwrap()[0].0.first_seq == Seq(7));
    j.trim_through(Seq(10)).unwrap();
    assert_eq!(j.pending_bytes(), 0);
    assert_eq!(
        j.segment_paths().len(),
        1,
        "the segment being written stays"
    );
    drop(j);
    let j = open(dir.path(), 1).unwrap();
    assert_eq!(j.trimmed_through(), Seq(10));
    assert_eq!(j.last_seq(), Seq(10));
    assert!(j.next_seq() > Seq(10));
    assert!(j.entries().is_empty(), "acked frames are not served again");
}

/// Cuts the last `n` frames of the journal's only segment off: a disk that lost frames
/// after their fdatasync (the chaos `torn-tail` fault, `cut`).
fn lose_last_frames(dir: &Path, frames: &[NewFrame], n: usize) {
    let seg = dir.join("00000000000000000001.seg");
    let full = std::fs::read(&seg).unwrap();
    let lost: usize = frames[frames.len() - n..]
        .iter()
        .map(|f| f.bytes.len())
        .sum();
    std::fs::write(&seg, &full[..full.len() - lost]).unwrap();
}

#[test]
fn reopen_after_a_lost_durable_tail_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let frames = write_frames(&j, 3); // seqs 1..=6, all fdatasync'd (and maybe shipped)
    let handed_out = j.last_seq();
    drop(j);
    lose_last_frames(dir.path(), &frames, 2);
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(j.last_seq(), Seq(2), "frames 3..=6 are gone");
    assert!(
        j.next_seq() > handed_out,
        "seqs 3..=6 named writes a replica may hold: next seq {} must be past {handed_out}",
        j.next_seq()
    );
    let start = *j.lineage().last().unwrap();
    assert_eq!((start.after, start.first), (Seq(2), j.next_seq()));
    // The new generation's frames land after the gap and survive a reopen.
    let first = j.next_seq();
    write_frames(&j, 2);
    drop(j);
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let seqs: Vec<u64> = j.entries().iter().map(|e| e.first_seq.0).collect();
    assert_eq!(seqs, [1, first.0, first.0 + 2]);
    assert!(j.next_seq() > Seq(first.0 + 3));
}

#[test]
fn seqs_are_reserved_durably_before_a_frame_carries_them() {
    let dir = tempfile::tempdir().unwrap();
    let meta_path = dir.path().join(JOURNAL_META_FILE);
    let stored = || {
        let v = read_meta_any(&meta_path, JOURNAL_META_MAGIC)
            .unwrap()
            .unwrap();
        JournalMeta::decode(&v).unwrap()
    };
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(
        stored().reserved_through,
        Seq(0),
        "nothing reserved before a write"
    );
    write_frames(&j, 1); // seqs 1..=2
    assert_eq!(stored().reserved_through, Seq(2 + RESERVE_SEQS));
    let before = std::fs::read(&meta_path).unwrap();
    write_frames(&j, 3);
    assert_eq!(
        std::fs::read(&meta_path).unwrap(),
        before,
        "appends inside the reservation write no metadata"
    );
    // One frame running past the reservation reserves again before it is written.
    let mut enc = Encoder::new(1).unwrap();
    let first = j.next_seq();
    let n = RESERVE_SEQS;
    let changes: Vec<Change> = (0..n).map(|_| Change::barrier("vol", 1)).collect();
    let bytes = enc
        .encode(
            FrameMeta {
                group: GroupId::from_name(G),
                epoch: Epoch(1),
                first_seq: first,
            },
            &changes,
        )
        .unwrap();
    let last = Seq(first.0 + n - 1);
    j.append(&[NewFrame {
        bytes,
        first_seq: first,
        last_seq: last,
        oldest_capture_ms: 1,
    }])
    .unwrap();
    assert_eq!(stored().reserved_through, Seq(last.0 + RESERVE_SEQS));
    // Losing every segment still never hands those seqs out again.
    drop(j);
    for p in std::fs::read_dir(dir.path()).unwrap() {
        let p = p.unwrap().path();
        if p.extension().is_some_and(|x| x == "seg") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(j.next_seq(), Seq(last.0 + RESERVE_SEQS + 1));
}

#[test]
fn each_open_starts_a_generation_persisted_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let meta_path = dir.path().join(JOURNAL_META_FILE);
    let stored = || {
        let v = read_meta_any(&meta_path, JOURNAL_META_MAGIC)
            .unwrap()
            .unwrap();
        JournalMeta::decode(&v).unwrap()
    };
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let g1 = j.generation();
    assert_ne!(g1, 0);
    assert_eq!(
        stored().generation,
        g1,
        "persisted by open, before any append"
    );
    assert_eq!(stored().starts, j.lineage());
    write_frames(&j, 2);
    drop(j);
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let g2 = j.generation();
    assert_ne!(g2, g1, "every open is a new generation");
    assert_eq!(stored().generation, g2);
    let gens: Vec<u64> = j.lineage().iter().map(|s| s.generation).collect();
    assert_eq!(gens, [g1, g2]);
    assert_eq!(j.lineage()[1].after, Seq(4));
    // Once the replica acknowledged past the second start, the first is dropped.
    let first2 = j.lineage()[1].first;
    write_frames(&j, 1);
    j.trim_through(first2).unwrap();
    let gens: Vec<u64> = j.lineage().iter().map(|s| s.generation).collect();
    assert_eq!(gens, [g2]);
}

#[test]
fn a_new_epoch_journal_continues_the_older_ones_history() {
    let dir = tempfile::tempdir().unwrap();
    let old = open(&dir.path().join("e1"), DEFAULT_SEGMENT_BYTES).unwrap();
    write_frames(&old, 2); // 1..=4
    let next = dir.path().join("e2");
    Journal::init_continuing(&next, Epoch(2), &old).unwrap();
    let j = Journal::open(
        &next,
        GroupId::from_name(G),
        Epoch(2),
        DEFAULT_SEGMENT_BYTES,
    )
    .unwrap();
    assert_eq!(j.trimmed_through(), Seq(4));
    assert_eq!(j.last_seq(), Seq(4));
    assert_eq!(j.next_seq(), old.reserved_through().next());
    let gens: Vec<u64> = j.lineage().iter().map(|s| s.generation).collect();
    assert_eq!(gens, [old.generation(), j.generation()]);
}

proptest::proptest! {
    #[test]
    fn scan_keeps_exactly_the_whole_frames_before_any_cut(n in 1u64..6, cut_back in 0usize..3000) {
        let mut enc = Encoder::new(1).unwrap();
        let mut bytes = Vec::new();
        let mut ends = vec![0usize];
        for i in 0..n {
            bytes.extend(frame(&mut enc, 1 + 2 * i, 2, i as u8).bytes);
            ends.push(bytes.len());
        }
        let cut = bytes.len().saturating_sub(cut_back);
        let mut dec = Decoder::new().unwrap();
        let scan = scan_segment(&bytes[..cut], 1, GroupId::from_name(G), None, &mut dec);
        let whole = ends.iter().filter(|e| **e <= cut).count() - 1;
        proptest::prop_assert_eq!(scan.frames.len(), whole);
        proptest::prop_assert_eq!(scan.valid_len as usize, ends[whole]);
        match scan.bad {
            None => proptest::prop_assert_eq!(cut, ends[whole]),
            Some((_, _, reaches_eof)) => proptest::prop_assert!(reaches_eof, "a cut is a torn tail"),
        }
    }

    #[test]
    fn scan_reports_any_flipped_byte_before_the_last_frame_as_corruption(at in 0usize..1000) {
        let mut enc = Encoder::new(1).unwrap();
        let a = frame(&mut enc, 1, 2, 1).bytes;
        let b = frame(&mut enc, 3, 2, 2).bytes;
        let pos = at % a.len();
        let mut bytes = [a.clone(), b].concat();
        bytes[pos] ^= 0x01;
        let mut dec = Decoder::new().unwrap();
        let scan = scan_segment(&bytes, 1, GroupId::from_name(G), None, &mut dec);
        let (offset, _, reaches_eof) = scan.bad.expect("flip detected");
        proptest::prop_assert_eq!(offset, 0);
        proptest::prop_assert!(!reaches_eof, "a bad frame followed by data is not a torn tail");
        proptest::prop_assert!(scan.frames.is_empty());
    }
}

#[test]
fn journal_refuses_out_of_order_append() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
    let mut enc = Encoder::new(1).unwrap();
    let f = frame(&mut enc, 5, 1, 0);
    assert!(matches!(
        j.append(&[f]),
        Err(ReplicatorError::InvalidSubmission(_))
    ));
}
