//! End-to-end data path in one process: a primary `GroupPipeline` + shipper and a replica
//! `ReplicationService`, each on its own tonic client/server over 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::frame::Change;
use tandem_core::ids::{Epoch, Seq};
use tandem_core::mixed::{mixed, XorShift};
use tandem_replicator::apply::ReplicaGroup;
use tandem_replicator::error::ReplicatorError;
use tandem_replicator::pipeline::{GroupPipeline, GroupState, Mode, PipelineConfig};
use tandem_replicator::receive::{serve, ReplicationService};
use tandem_replicator::ship::{ShipConfig, ShipExit};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const VOL: u64 = 16 << 20;
const GROUP: &str = "g";

struct Replica {
    svc: ReplicationService,
    group: Arc<ReplicaGroup>,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn vol_path(dir: &Path) -> PathBuf {
    dir.join("vol.img")
}

async fn start_replica(dir: &Path, port: u16) -> Replica {
    let vol = vol_path(dir);
    if !vol.exists() {
        std::fs::File::create(&vol).unwrap().set_len(VOL).unwrap();
    }
    let mut res = HashMap::new();
    res.insert("vol".to_owned(), vol);
    let group = Arc::new(ReplicaGroup::open(GROUP, &dir.join("meta"), res).unwrap());
    let svc = ReplicationService::new();
    svc.add_group(Arc::clone(&group));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
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
    }
}

impl Replica {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes streams, shuts the server down, returns the group (no apply in progress).
    async fn shutdown(self) -> Arc<ReplicaGroup> {
        self.svc.close();
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        self.group
    }
}

fn cfg(dir: &Path, mode: Mode) -> PipelineConfig {
    let mut c = PipelineConfig::new(GROUP, dir.join("journal"));
    c.mode = mode;
    c
}

fn ship_cfg(url: &str) -> ShipConfig {
    let mut c = ShipConfig::new(url, "hanoi-1");
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

/// A random workload: writes of 512 B..256 KiB (log-uniform) at 512-aligned offsets, with an
/// occasional trim and barrier.
fn workload(seed: u64, n: usize) -> Vec<Change> {
    let mut rng = XorShift::new(seed);
    (0..n)
        .map(|i| match rng.below(50) {
            0 => {
                let len = 512 * (1 + rng.below(64));
                let off = rng.below((VOL - len) / 512) * 512;
                Change::trim("vol", off, len, 1)
            }
            1 => Change::barrier("vol", 1),
            _ => {
                let len = (512u64 << rng.below(10)).min(256 << 10);
                let len = len + rng.below(len) / 512 * 512;
                let len = len.min(256 << 10);
                let off = rng.below((VOL - len) / 512) * 512;
                Change::write("vol", off, mixed(seed ^ (i as u64) << 20, len as usize), 1)
            }
        })
        .collect()
}

/// Applies changes (in seq order) to an in-memory primary copy.
fn apply_local(image: &mut [u8], changes: &[(Seq, Change)]) {
    let mut sorted: Vec<&(Seq, Change)> = changes.iter().collect();
    sorted.sort_by_key(|(s, _)| *s);
    for (_, c) in sorted {
        let o = c.offset as usize;
        match c.kind {
            tandem_core::frame::ChangeKind::Write => {
                image[o..o + c.data.len()].copy_from_slice(&c.data)
            }
            tandem_core::frame::ChangeKind::Trim => image[o..o + c.length as usize].fill(0),
            _ => {}
        }
    }
}

/// Submits each change on its own from `conc` concurrent tasks; returns (seq, change).
async fn submit_all(
    p: &Arc<GroupPipeline>,
    changes: Vec<Change>,
    conc: usize,
) -> Vec<(Seq, Change)> {
    let queue = Arc::new(std::sync::Mutex::new(changes));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (p, queue) = (Arc::clone(p), Arc::clone(&queue));
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let Some(c) = queue.lock().unwrap().pop() else {
                    break;
                };
                let seq = loop {
                    match p.submit(vec![c.clone()]).await {
                        Ok(s) => break s,
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                        Err(e) => panic!("submit: {e}"),
                    }
                };
                done.push((seq, c));
            }
            done
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn wait_caught_up(p: &GroupPipeline, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let pr = p.progress();
        if pr.durable_on_replica_seq >= pr.last_captured_seq {
            assert_eq!(pr.oldest_unacked_capture_ms, None);
            assert_eq!(pr.rpo_ms(i64::MAX), 0);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up in {secs}s: {pr:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_same(image: &[u8], replica_dir: &Path) {
    let got = std::fs::read(vol_path(replica_dir)).unwrap();
    assert_eq!(got.len(), image.len());
    if let Some(i) = got.iter().zip(image).position(|(a, b)| a != b) {
        panic!("replica differs from primary at byte {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_matches_primary_after_thousands_of_random_writes() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let replica = start_replica(rdir.path(), 0).await;
    let p = Arc::new(
        GroupPipeline::open(cfg(pdir.path(), Mode::Async))
            .await
            .unwrap(),
    );
    let shipper = p.start_shipper(ship_cfg(&replica.url()));
    let done = submit_all(&p, workload(1, 2000), 8).await;
    let mut image = vec![0u8; VOL as usize];
    apply_local(&mut image, &done);
    wait_caught_up(&p, 60).await;
    let pr = p.progress();
    assert_eq!(pr.last_captured_seq, Seq(2000));
    assert_eq!(pr.state, GroupState::Protected, "{pr:?}");
    assert!(pr.frames_shipped > 0 && pr.bytes_shipped_total < pr.bytes_raw_total);
    assert_eq!(replica.group.watermark(), Seq(2000));
    assert_eq!(replica.group.applied_changes(), 2000);
    assert_same(&image, rdir.path());
    assert_eq!(p.journal().pending_bytes(), 0, "acked frames are trimmed");
    assert_eq!(shipper.stop().await, ShipExit::Stopped);
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_restart_mid_stream_resumes_without_applying_twice() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let replica = start_replica(rdir.path(), 0).await;
    let port = replica.addr.port();
    let url = replica.url();
    let p = Arc::new(
        GroupPipeline::open(cfg(pdir.path(), Mode::Async))
            .await
            .unwrap(),
    );
    let shipper = p.start_shipper(ship_cfg(&url));
    // 1. Writes stream in; the replica is stopped while they are still being submitted.
    let first_half = tokio::spawn({
        let p = Arc::clone(&p);
        async move { submit_all(&p, workload(2, 600), 4).await }
    });
    while replica.group.watermark() < Seq(100) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let old = replica.shutdown().await;
    let mut done = first_half.await.unwrap();
    assert!(old.watermark() < Seq(600), "the replica stopped mid-stream");
    let applied_before = old.applied_changes();
    assert_eq!(
        old.watermark().0,
        applied_before,
        "watermark counts every applied change"
    );
    drop(old);
    // 2. More writes while the replica is down: they wait in the journal.
    done.extend(submit_all(&p, workload(3, 600), 4).await);
    assert!(p.progress().oldest_unacked_capture_ms.is_some());
    // 3. Reopen the replica from its directory on the same port: the shipper resumes.
    let replica = start_replica(rdir.path(), port).await;
    wait_caught_up(&p, 60).await;
    assert_eq!(
        applied_before + replica.group.applied_changes(),
        1200,
        "no change applied twice, none lost"
    );
    let mut image = vec![0u8; VOL as usize];
    apply_local(&mut image, &done);
    assert_same(&image, rdir.path());
    shipper.stop().await;
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_reopened_from_its_journal_resumes_shipping() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    // 1. The replica is down at first: everything stays in the journal.
    let replica = start_replica(rdir.path(), 0).await;
    let port = replica.addr.port();
    let url = replica.url();
    replica.shutdown().await;
    let p = Arc::new(
        GroupPipeline::open(cfg(pdir.path(), Mode::Async))
            .await
            .unwrap(),
    );
    let shipper = p.start_shipper(ship_cfg(&url));
    let mut done = submit_all(&p, workload(4, 500), 4).await;
    shipper.stop().await;
    let p = Arc::try_unwrap(p).unwrap();
    let segments = p.journal().segment_paths();
    p.close().await;
    // 2. A crash mid-append leaves a torn frame at the end of the last segment.
    let last = segments.last().unwrap();
    let head = std::fs::read(last).unwrap()[..200].to_vec();
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    std::io::Write::write_all(&mut f, &head).unwrap();
    drop(f);
    // 3. Reopen the primary from its journal (torn tail dropped); the replica comes back.
    let p = Arc::new(
        GroupPipeline::open(cfg(pdir.path(), Mode::Async))
            .await
            .unwrap(),
    );
    assert_eq!(p.progress().last_captured_seq, Seq(500));
    let replica = start_replica(rdir.path(), port).await;
    let shipper = p.start_shipper(ship_cfg(&url));
    done.extend(submit_all(&p, workload(5, 300), 4).await);
    wait_caught_up(&p, 60).await;
    assert_eq!(replica.group.applied_changes(), 800);
    let mut image = vec![0u8; VOL as usize];
    apply_local(&mut image, &done);
    assert_same(&image, rdir.path());
    shipper.stop().await;
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_frame_in_flight_is_refused_and_resent() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let replica = start_replica(rdir.path(), 0).await;
    let p = Arc::new(
        GroupPipeline::open(cfg(pdir.path(), Mode::Async))
            .await
            .unwrap(),
    );
    let corrupted = Arc::new(AtomicU64::new(0));
    let mut sc = ship_cfg(&replica.url());
    let c2 = Arc::clone(&corrupted);
    // Corrupt the first transmission of every 7th-ish frame, never its resend.
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    sc.frame_hook = Some(Arc::new(move |seq: Seq, bytes: &mut Vec<u8>| {
        if seq.0 % 7 == 3 && seen.lock().unwrap().insert(seq) {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x5a;
            c2.fetch_add(1, Ordering::SeqCst);
        }
    }));
    let shipper = p.start_shipper(sc);
    let done = submit_all(&p, workload(6, 400), 2).await;
    wait_caught_up(&p, 60).await;
    assert!(
        corrupted.load(Ordering::SeqCst) > 0,
        "the hook corrupted frames"
    );
    assert_eq!(replica.group.applied_changes(), 400);
    let mut image = vec![0u8; VOL as usize];
    apply_local(&mut image, &done);
    assert_same(&image, rdir.path());
    assert!(p.progress().frames_shipped > corrupted.load(Ordering::SeqCst));
    shipper.stop().await;
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_from_older_epoch_is_refused_fatally_and_fences_the_primary() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let replica = start_replica(rdir.path(), 0).await;
    replica.group.set_fence(Epoch(5)).unwrap();
    let mut c = cfg(pdir.path(), Mode::Async);
    c.epoch = Epoch(3);
    let p = GroupPipeline::open(c).await.unwrap();
    p.submit(workload(7, 3)).await.unwrap();
    let shipper = p.start_shipper(ship_cfg(&replica.url()));
    let exit = tokio::time::timeout(Duration::from_secs(10), shipper.join())
        .await
        .unwrap();
    assert!(matches!(exit, ShipExit::Fenced(_)), "{exit:?}");
    assert_eq!(
        replica.group.watermark(),
        Seq(0),
        "nothing from epoch 3 applied"
    );
    let pr = p.progress();
    assert_eq!(pr.state, GroupState::Degraded);
    assert!(pr.reason.contains("fenced"), "{}", pr.reason);
    assert!(matches!(
        p.submit(workload(8, 1)).await,
        Err(ReplicatorError::Fenced { .. })
    ));
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_bounds_changes_from_the_primary_are_refused_and_the_image_keeps_its_size() {
    let cases = [
        (
            "a write past the end",
            Change::write("vol", VOL - 512, vec![0xee; 1024], 1),
        ),
        ("a trim of 2^63 bytes", Change::trim("vol", 0, 1 << 63, 1)),
    ];
    for (name, bad) in cases {
        let pdir = tempfile::tempdir().unwrap();
        let rdir = tempfile::tempdir().unwrap();
        // 1. The rightful primary (same epoch as the replica's fence) replicates in-bounds writes.
        let replica = start_replica(rdir.path(), 0).await;
        let p = Arc::new(
            GroupPipeline::open(cfg(pdir.path(), Mode::Async))
                .await
                .unwrap(),
        );
        let shipper = p.start_shipper(ship_cfg(&replica.url()));
        submit_all(&p, workload(11, 20), 1).await;
        wait_caught_up(&p, 30).await;
        let watermark = replica.group.watermark();
        assert_eq!(watermark, Seq(20), "{name}");
        let before = std::fs::read(vol_path(rdir.path())).unwrap();
        // 2. One frame: an in-bounds write, then the out-of-bounds change. The submitter may
        // hear of the fence first: the shipper can ship the frame, hear the refusal and fence
        // the group before the acknowledgement's last check (then it is not acknowledged).
        match p
            .submit(vec![Change::write("vol", 0, vec![0x11; 4096], 1), bad])
            .await
        {
            Ok(_) | Err(ReplicatorError::Fenced { .. }) => {}
            Err(e) => panic!("{name}: submit: {e}"),
        }
        // 3. The replica refuses it fatally, naming the reason; the shipper stops.
        let exit = tokio::time::timeout(Duration::from_secs(10), shipper.join())
            .await
            .unwrap();
        let ShipExit::Fenced(reason) = exit else {
            panic!("{name}: expect a fatal refusal got {exit:?}");
        };
        assert!(
            reason.contains("out of bounds") && reason.contains("past the size 16777216"),
            "{name}: {reason}"
        );
        assert!(
            reason.contains("seq 22"),
            "{name}: names the change: {reason}"
        );
        // 4. Nothing of the frame landed: watermark, length and bytes are as before.
        assert_eq!(replica.group.watermark(), watermark, "{name}");
        let len = std::fs::metadata(vol_path(rdir.path())).unwrap().len();
        assert_eq!(len, VOL, "{name}: the image keeps its size");
        let after = std::fs::read(vol_path(rdir.path())).unwrap();
        assert!(after == before, "{name}: the image is unchanged");
        replica.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_submit_returns_only_once_the_replica_has_it() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let replica = start_replica(rdir.path(), 0).await;
    let p = GroupPipeline::open(cfg(pdir.path(), Mode::Sync))
        .await
        .unwrap();
    let shipper = p.start_shipper(ship_cfg(&replica.url()));
    for c in workload(9, 100) {
        let seq = p.submit(vec![c]).await.unwrap();
        assert!(
            replica.group.watermark() >= seq,
            "submit returned {seq} before the replica watermark {} covered it",
            replica.group.watermark()
        );
    }
    // With the replica gone, a sync submit does not return.
    let group = replica.shutdown().await;
    let pending = tokio::time::timeout(Duration::from_millis(300), p.submit(workload(10, 1))).await;
    assert!(pending.is_err(), "sync submit returned without a replica");
    assert_eq!(group.watermark(), Seq(100));
    shipper.stop().await;
}

/// A coordinator stand-in: answers `ask` with its `grant` switch and records every question.
#[derive(Debug, Default, Clone)]
struct FakeConsent {
    grant: Arc<std::sync::atomic::AtomicBool>,
    asked: Arc<std::sync::Mutex<Vec<bool>>>,
}

impl tandem_replicator::pipeline::SyncConsent for FakeConsent {
    fn ask(&self, _epoch: Epoch, degraded: bool) -> tandem_replicator::pipeline::ConsentFuture {
        let me = self.clone();
        Box::pin(async move {
            me.asked.lock().unwrap().push(degraded);
            if me.grant.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("no coordinator leader".to_owned())
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_degrades_after_the_timeout_only_with_consent_and_resumes_after_catch_up() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let replica = start_replica(rdir.path(), 0).await;
    let port = replica.addr.port();
    let consent = FakeConsent::default();
    let mut c = cfg(pdir.path(), Mode::Sync);
    c.sync_timeout = Some(Duration::from_millis(200));
    c.sync_consent = Some(Arc::new(consent.clone()));
    let p = Arc::new(GroupPipeline::open(c).await.unwrap());
    let shipper = p.start_shipper(ship_cfg(&replica.url()));
    for c in workload(21, 20) {
        p.submit(vec![c]).await.unwrap();
    }
    assert!(
        consent.asked.lock().unwrap().is_empty(),
        "no question while in step"
    );
    // 1. The replica goes away and the coordinators do not answer: writes keep waiting,
    //    long past the sync timeout, instead of being acknowledged on the local journal.
    let group = replica.shutdown().await;
    drop(group);
    let pending = tokio::spawn({
        let p = Arc::clone(&p);
        async move { p.submit(workload(22, 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert!(!pending.is_finished(), "acknowledged without consent");
    assert!(consent.asked.lock().unwrap().iter().all(|&d| d));
    assert!(
        consent.asked.lock().unwrap().len() >= 2,
        "refusals are asked again"
    );
    let pr = p.progress();
    assert_eq!(pr.state, GroupState::Degraded);
    assert!(pr.reason.contains("coordinators agree"), "{}", pr.reason);
    // 2. The coordinators agree: the waiting write and the next ones are acknowledged alone.
    consent.grant.store(true, Ordering::SeqCst);
    let seq = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("acknowledged once the coordinators agreed")
        .unwrap()
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(1), p.submit(workload(23, 1)))
        .await
        .expect("degraded: no wait for the replica")
        .unwrap();
    assert!(next > seq);
    assert!(p.progress().reason.contains("sync degraded"));
    // 3. The replica returns and catches up: synchronous again, and the coordinators are told.
    let replica = start_replica(rdir.path(), port).await;
    wait_caught_up(&p, 30).await;
    let s = p.submit(workload(24, 1)).await.unwrap();
    assert!(
        replica.group.watermark() >= s,
        "sync acknowledgements resumed"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while consent.asked.lock().unwrap().last() != Some(&false) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "catch-up not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        p.progress().state,
        GroupState::Protected,
        "{:?}",
        p.progress()
    );
    shipper.stop().await;
    replica.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_journal_refuses_intake_and_degrades_until_the_replica_catches_up() {
    let pdir = tempfile::tempdir().unwrap();
    let rdir = tempfile::tempdir().unwrap();
    let mut c = cfg(pdir.path(), Mode::Async);
    c.journal_max = 1 << 20;
    let p = GroupPipeline::open(c).await.unwrap();
    let mut rng = XorShift::new(11);
    let mut full = None;
    for i in 0..200u64 {
        let data: Vec<u8> = (0..65536).map(|_| rng.next_u64() as u8).collect();
        match p
            .submit(vec![Change::write("vol", i * 65536 % VOL, data, 1)])
            .await
        {
            Ok(_) => {}
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let e = full.expect("intake refused before 200 x 64 KiB of incompressible data");
    assert!(
        matches!(e, ReplicatorError::JournalFull { .. }) && e.is_retryable(),
        "{e}"
    );
    let pr = p.progress();
    assert_eq!(pr.state, GroupState::Degraded);
    assert!(pr.reason.contains("journal full"), "{}", pr.reason);
    assert!(pr.bytes_pending <= 1 << 20);
    // The replica comes up: the journal drains and intake resumes.
    let replica = start_replica(rdir.path(), 0).await;
    let shipper = p.start_shipper(ship_cfg(&replica.url()));
    wait_caught_up(&p, 30).await;
    // The journal is trimmed off the shipper's loop (at most every 20 ms): the group is
    // protected again once the acknowledged frames are trimmed, a moment after the catch-up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while p.progress().state != GroupState::Protected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "drained: still degraded 5 s after the catch-up: {:?}",
            p.progress()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.submit(workload(12, 1)).await.unwrap();
    shipper.stop().await;
    replica.shutdown().await;
}
