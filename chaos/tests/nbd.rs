//! NBD client and write workload against real NBD servers (tandem-replicator's server and
//! qemu-nbd), directly and through the fault proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_chaos::checker::{lost_acknowledged_writes, ReplicationMode};
use tandem_chaos::history::{OpKind, Recorder};
use tandem_chaos::nbd_client::{NbdClient, NbdPool};
use tandem_chaos::proxy::{FaultProxy, Faults};
use tandem_chaos::workload::{run_writes, WorkloadConfig};
use tandem_chaos::ChaosError;
use tandem_replicator::nbd::{serve, ExportMap};
use tandem_replicator::volume::{FileVolume, VolumeBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;

const SIZE: u64 = 4 * 1024 * 1024;

struct Server {
    addr: SocketAddr,
    path: PathBuf,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn tandem_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk0.img");
    let volume = Arc::new(FileVolume::create(&path, SIZE).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exports = ExportMap::new();
    exports
        .insert("disk0", volume as Arc<dyn VolumeBackend>)
        .unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve(listener, Arc::new(exports), None, rx));
    Server {
        addr,
        path,
        _stop: stop,
        _dir: dir,
    }
}

fn file_hash(path: &Path) -> impl Fn(u64, u64) -> blake3::Hash {
    let content = std::fs::read(path).unwrap();
    move |offset, len| blake3::hash(&content[offset as usize..(offset + len) as usize])
}

async fn write_read_flush(addr: SocketAddr) {
    let mut c = NbdClient::connect(addr, "disk0").await.unwrap();
    assert_eq!(c.size(), SIZE);
    assert!(!c.read_only());
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    c.write(4096, &data, false).await.unwrap();
    c.write(65536, &data, true).await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(c.read(4096, 8192).await.unwrap(), data);
    assert_eq!(c.read(0, 4096).await.unwrap(), vec![0u8; 4096]);
    // Past the end: the server answers with an error value (ENOSPC from tandem, EINVAL from
    // qemu-nbd), and the connection goes on.
    let err = c.write(SIZE, &data, false).await.unwrap_err();
    assert!(
        matches!(err, ChaosError::NbdCommand { errno: 28 | 22, .. }),
        "{err}"
    );
    assert!(err.write_definitely_not_applied());
    assert_eq!(c.read(65536, 8192).await.unwrap(), data);
    c.disconnect().await.unwrap();
}

#[tokio::test]
async fn client_writes_reads_and_flushes_against_tandem_server() {
    let server = tandem_server().await;
    write_read_flush(server.addr).await;
    let file = std::fs::read(&server.path).unwrap();
    assert_eq!(file[4096], 0);
    assert_eq!(file[4097], 1);
}

#[tokio::test]
async fn unknown_export_is_refused_by_name() {
    let server = tandem_server().await;
    let err = NbdClient::connect(server.addr, "nope").await.unwrap_err();
    assert!(
        matches!(err, ChaosError::NbdRefused { option: 7, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn client_works_against_qemu_nbd() {
    let qemu = Path::new("/usr/bin/qemu-nbd");
    if !qemu.exists() {
        println!("skipping: /usr/bin/qemu-nbd is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("q.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(qemu)
        .args(["-f", "raw", "-x", "disk0", "-p", &port.to_string()])
        .args(["-b", "127.0.0.1", "--persistent"])
        .arg(&image)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match NbdClient::connect(addr, "disk0").await {
            Ok(c) => {
                c.disconnect().await.unwrap();
                break;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("qemu-nbd did not come up: {e}"),
        }
    }
    write_read_flush(addr).await;
    child.kill().await.unwrap();
    let file = std::fs::read(&image).unwrap();
    assert_eq!(&file[65536..65536 + 3], &[0, 1, 2]);
}

#[tokio::test]
async fn workload_through_proxy_and_nbd_loses_no_acknowledged_write() {
    let server = tandem_server().await;
    let (proxy, proxy_addr) = FaultProxy::start("127.0.0.1:0", server.addr).await.unwrap();
    let pool = NbdPool::new(proxy_addr, "disk0", 4);
    let recorder = Recorder::new(Instant::now());
    let mut config = WorkloadConfig::new(7, SIZE);
    config.max_ops = 400;
    config.concurrency = 4;
    config.op_timeout = Duration::from_secs(2);
    config.error_backoff = Duration::from_millis(10);

    // 1. Write while the proxy resets every connection twice and adds latency once.
    let faults = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        proxy.reset_connections();
        proxy.update(|f| f.to_client.latency = Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(30)).await;
        proxy.reset_connections();
        proxy.set(Faults::none());
    };
    let run = run_writes(&config, &recorder, |offset, data: Vec<u8>| {
        let pool = &pool;
        async move { pool.write(offset, &data, false).await }
    });
    let (summary, ()) = tokio::join!(run, faults);
    let summary = summary.unwrap();
    pool.flush().await.unwrap();
    pool.close().await;
    println!("{summary:?} stats {:?}", proxy.stats());

    // 2. Everything was attempted; the resets were felt but most writes succeeded.
    assert_eq!(summary.invoked, 400);
    assert!(summary.ok > 300, "{summary:?}");
    assert!(proxy.stats().connections_reset >= 1);

    // 3. The image holds every acknowledged write.
    let history = recorder.into_history();
    let verdict = lost_acknowledged_writes(
        &history,
        &file_hash(&server.path),
        ReplicationMode::Sync,
        0,
        0,
    );
    assert!(verdict.ok, "{:?}", verdict.violations);

    // 4. The checker is not vacuous: overwrite one acknowledged block and it is caught.
    let last_ok = history
        .ops()
        .iter()
        .rev()
        .find(|o| o.kind == OpKind::Ok)
        .unwrap();
    let offset = last_ok.offset.unwrap();
    let mut c = NbdClient::connect(server.addr, "disk0").await.unwrap();
    c.write(offset, &vec![0xEE; 4096], true).await.unwrap();
    c.disconnect().await.unwrap();
    let verdict = lost_acknowledged_writes(
        &history,
        &file_hash(&server.path),
        ReplicationMode::Sync,
        0,
        0,
    );
    assert!(!verdict.ok);
}
