//! Tests of the pipeline's intake: changes handed back without copies, per submitter, and on refusal.

use super::*;

fn write(offset: u64, len: usize, byte: u8) -> Change {
    Change::write("disk0", offset, vec![byte; len], 0)
}

#[tokio::test]
async fn journaled_changes_come_back_without_their_data_being_copied() {
    let dir = tempfile::tempdir().unwrap();
    let p = GroupPipeline::open(PipelineConfig::new("g", dir.path()))
        .await
        .unwrap();
    // 4 MiB: the buffer that comes back is the one that went in (same heap address).
    let change = write(0, 4 << 20, 0xab);
    let sent = change.data.as_ptr();
    let (seq, back) = p.journal_and_return(vec![change]).await.unwrap();
    assert_eq!(seq, Seq(1));
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].data.as_ptr(), sent, "the payload was copied");
    assert!(back[0].data.iter().all(|&b| b == 0xab));
    // Durable before it came back.
    assert_eq!(*p.shared.durable_local.borrow(), Seq(1));
}

#[tokio::test]
async fn batched_submitters_each_get_their_own_changes_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(
        GroupPipeline::open(PipelineConfig::new("g", dir.path()))
            .await
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let p = Arc::clone(&p);
        let give = i % 2 == 0;
        tasks.push(tokio::spawn(async move {
            let changes = vec![write(u64::from(i) * 4096, 4096, i); 1 + usize::from(i % 3)];
            let n = changes.len();
            let (_, back) = if give {
                p.journal_and_return(changes).await.unwrap()
            } else {
                (p.submit_journaled(changes).await.unwrap(), Vec::new())
            };
            (i, give, n, back)
        }));
    }
    for t in tasks {
        let (i, give, n, back) = t.await.unwrap();
        let want = if give { n } else { 0 };
        assert_eq!(back.len(), want, "#{i}: expect {want} changes back");
        for c in back {
            assert_eq!(c.offset, u64::from(i) * 4096, "#{i}: someone else's change");
            assert!(c.data.iter().all(|&b| b == i), "#{i}: wrong data");
        }
    }
}

#[tokio::test]
async fn a_change_refused_by_a_full_journal_comes_back_for_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PipelineConfig::new("g", dir.path());
    cfg.journal_max = 64 << 10;
    let p = GroupPipeline::open(cfg).await.unwrap();
    // An empty journal takes one submission whatever its size; the next is refused.
    // Incompressible bytes, so the journal really holds more than its limit.
    let noise = crate::testdata::noise(128 << 10);
    let first = Change::write("disk0", 0, noise, 0);
    p.journal_and_return(vec![first]).await.unwrap();
    let change = write(0, 4096, 2);
    let sent = change.data.as_ptr();
    let Err(refused) = p.journal_and_return(vec![change]).await else {
        panic!("a write past journal_max was journaled");
    };
    assert!(
        matches!(refused.error, ReplicatorError::JournalFull { .. }),
        "expect JournalFull got {:?}",
        refused.error
    );
    assert_eq!(refused.changes.len(), 1);
    assert_eq!(refused.changes[0].data.as_ptr(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_encoded_in_parallel_reach_the_journal_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(
        GroupPipeline::open(PipelineConfig::new("g", dir.path()))
            .await
            .unwrap(),
    );
    // Writes of different sizes (and so encode times) from many submitters at once.
    let mut tasks = Vec::new();
    for i in 0..48u64 {
        let p = Arc::clone(&p);
        tasks.push(tokio::spawn(async move {
            let len = 4096 << (i % 6);
            p.submit_journaled(vec![write(i * (1 << 20), len, i as u8)])
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=48).map(Seq).collect::<Vec<_>>());
    // The journal holds every seq once, frame after frame, and each frame decodes to the
    // seqs its entry names.
    let entries = p.journal().entries();
    let mut next = Seq(1);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.first_seq, next,
            "#{i}: expect frame at {next} got {}",
            e.first_seq
        );
        next = e.last_seq.next();
    }
    assert_eq!(next, Seq(49));
    let mut dec = tandem_core::frame::Decoder::new().unwrap();
    for (e, bytes) in p.journal().frames_from(Seq(1), usize::MAX).unwrap() {
        let f = dec.decode(&bytes).unwrap();
        assert_eq!(f.header.meta.first_seq, e.first_seq);
        assert_eq!(f.header.last_seq(), e.last_seq);
    }
}

#[tokio::test]
async fn a_submission_the_codec_refuses_takes_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let p = GroupPipeline::open(PipelineConfig::new("g", dir.path()))
        .await
        .unwrap();
    assert_eq!(
        p.submit_journaled(vec![write(0, 4096, 1)]).await.unwrap(),
        Seq(1)
    );
    let mut bad = write(4096, 4096, 2);
    bad.length = 1;
    let refused = p.submit_journaled(vec![bad]).await;
    assert!(
        matches!(refused, Err(ReplicatorError::Frame(_))),
        "expect a frame error got {refused:?}"
    );
    // The next submission continues the seqs: nothing was given to the refused one.
    assert_eq!(
        p.submit_journaled(vec![write(8192, 4096, 3)])
            .await
            .unwrap(),
        Seq(2)
    );
    assert!(
        p.shared.fenced.borrow().is_none(),
        "the group is not fenced"
    );
}

/// Whether each journaled frame is compressed (its zstd flag), oldest first.
fn frame_compressed(p: &GroupPipeline) -> Vec<bool> {
    let j = p.journal();
    j.frames_from(Seq(1), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, bytes)| {
            u16::from_le_bytes([bytes[6], bytes[7]]) & tandem_core::frame::FLAG_ZSTD != 0
        })
        .collect()
}

#[tokio::test]
async fn auto_compression_starts_at_level_1_and_climbs_while_no_shipper_drains_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = PipelineConfig::new("g", dir.path());
    cfg.compression = Compression::Auto;
    let p = GroupPipeline::open(cfg).await.unwrap();
    assert_eq!(p.progress().zstd_level, 1);
    // Noise does not compress, so 40 MiB of it is 40 MiB of journal; nothing ships it, so all
    // of it is backlog, over the 16 MiB mark at every look.
    let mut rng = tandem_core::mixed::XorShift::new(7);
    for i in 0..40u64 {
        let data: Vec<u8> = (0..(1 << 20) / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect();
        p.submit(vec![Change::write("disk0", i << 20, data, 0)])
            .await
            .unwrap();
    }
    // Two looks at a backlog over the mark: level 1 → 3.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while p.progress().zstd_level != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "level stayed {}",
            p.progress().zstd_level
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.close().await;
}

#[tokio::test]
async fn a_fixed_setting_never_moves_and_off_stores_every_frame_raw() {
    for (setting, compressed) in [(Compression::Off, false), (Compression::Zstd(3), true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = PipelineConfig::new("g", dir.path());
        cfg.compression = setting;
        let p = GroupPipeline::open(cfg).await.unwrap();
        for i in 0..4u64 {
            let text = b"replica primary journal ".repeat(2000);
            p.submit(vec![Change::write("disk0", i << 16, text, 0)])
                .await
                .unwrap();
        }
        tokio::time::sleep(adapt::TICK * 2).await;
        let want = if compressed { 3 } else { 0 };
        assert_eq!(p.progress().zstd_level, want, "{setting}");
        let frames = frame_compressed(&p);
        assert!(!frames.is_empty());
        assert!(
            frames.iter().all(|c| *c == compressed),
            "{setting}: {frames:?}"
        );
        p.close().await;
    }
}
