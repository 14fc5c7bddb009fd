//! Fault proxy against a real echo server over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_chaos::proxy::{
    Blackhole, Direction, FaultProxy, Faults, LinkFaults, ProxyHandle, Slicing,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn setup() -> (ProxyHandle, TcpStream) {
    let upstream = echo_server().await;
    let (proxy, addr) = FaultProxy::start("127.0.0.1:0", upstream).await.unwrap();
    assert_eq!(proxy.local_addr(), addr);
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    (proxy, stream)
}

async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, msg);
    start.elapsed()
}

#[tokio::test]
async fn transparent_proxy_echoes_and_counts_bytes() {
    let (proxy, mut s) = setup().await;
    round_trip(&mut s, b"hello").await;
    let stats = proxy.stats();
    assert_eq!(stats.bytes(Direction::ToUpstream), 5);
    assert_eq!(stats.bytes(Direction::ToClient), 5);
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_open, 1);
}

#[tokio::test]
async fn latency_delays_each_direction_and_applies_to_live_connections() {
    let (proxy, mut s) = setup().await;
    let base = round_trip(&mut s, b"ping").await;
    assert!(base < Duration::from_millis(100), "baseline {base:?}");
    proxy.update(|f| {
        f.to_upstream.latency = Duration::from_millis(100);
        f.to_client.latency = Duration::from_millis(50);
        f.to_client.jitter = Duration::from_millis(20);
    });
    let slow = round_trip(&mut s, b"ping").await;
    assert!(slow >= Duration::from_millis(150), "with latency {slow:?}");
    assert!(slow < Duration::from_millis(600), "with latency {slow:?}");
    proxy.set(Faults::none());
    let fast = round_trip(&mut s, b"ping").await;
    assert!(fast < Duration::from_millis(100), "after lifting {fast:?}");
}

#[tokio::test]
async fn stall_blackhole_stops_traffic_and_lifting_delivers_everything() {
    let (proxy, mut s) = setup().await;
    round_trip(&mut s, b"before").await;
    proxy.set(Faults::partition(Blackhole::Stall));
    s.write_all(b"during").await.unwrap();
    let mut buf = [0u8; 6];
    let stalled = timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
    assert!(stalled.is_err(), "bytes flowed through a partition");
    assert_eq!(proxy.stats().connections_open, 1, "connection stays open");
    proxy.set(Faults::none());
    timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .expect("bytes flow after the partition is lifted")
        .unwrap();
    assert_eq!(&buf, b"during");
}

#[tokio::test]
async fn drop_blackhole_discards_bytes_and_lifting_resumes_traffic() {
    let (proxy, mut s) = setup().await;
    let mut f = Faults::none();
    f.to_upstream.blackhole = Some(Blackhole::Drop);
    proxy.set(f);
    s.write_all(b"lost bytes").await.unwrap();
    let mut buf = [0u8; 4];
    let nothing = timeout(Duration::from_millis(300), s.read(&mut buf)).await;
    assert!(nothing.is_err(), "bytes flowed through a blackhole");
    assert_eq!(proxy.stats().dropped(Direction::ToUpstream), 10);
    proxy.set(Faults::none());
    round_trip(&mut s, b"after").await;
}

#[tokio::test]
async fn bandwidth_cap_holds_within_twenty_percent() {
    let (proxy, s) = setup().await;
    const RATE: u64 = 400_000;
    const TOTAL: usize = 300_000;
    proxy.update(|f| f.to_client.bandwidth = Some(RATE));
    let (mut r, mut w) = s.into_split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        w.write_all(&vec![7u8; TOTAL]).await.unwrap();
        w
    });
    let mut back = vec![0u8; TOTAL];
    timeout(Duration::from_secs(5), r.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let _w = writer.await.unwrap();
    let rate = TOTAL as f64 / elapsed;
    println!("measured {rate:.0} B/s for a cap of {RATE} B/s");
    assert!(
        rate <= RATE as f64 * 1.2 && rate >= RATE as f64 * 0.8,
        "measured {rate:.0} B/s, cap {RATE}"
    );
}

#[tokio::test]
async fn corruption_flips_bits_and_counts_them() {
    let (proxy, s) = setup().await;
    proxy.update(|f| {
        f.seed = 42;
        f.to_upstream.corrupt_every = Some(1000);
    });
    let (mut r, mut w) = s.into_split();
    let sent = vec![0u8; 64_000];
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move { w.write_all(&sent).await.unwrap() })
    };
    let mut back = vec![0u8; sent.len()];
    timeout(Duration::from_secs(5), r.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_ne!(back, sent);
    let bits: u32 = back.iter().map(|b| b.count_ones()).sum();
    let bytes = back.iter().filter(|b| **b != 0).count() as u64;
    assert_eq!(bits, 64, "one bit per 1000-byte window");
    assert_eq!(proxy.stats().corrupted(Direction::ToUpstream), bytes);
    assert_eq!(proxy.stats().corrupted(Direction::ToClient), 0);
}

#[tokio::test]
async fn reset_closes_live_connections_but_accepts_new_ones() {
    let (proxy, mut s) = setup().await;
    round_trip(&mut s, b"x").await;
    proxy.reset_connections();
    let mut buf = [0u8; 1];
    let r = timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("reset is seen promptly");
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => assert_eq!(n, 0, "expected the connection to close"),
    }
    assert_eq!(proxy.stats().connections_reset, 1);
    let mut fresh = TcpStream::connect(proxy.local_addr()).await.unwrap();
    round_trip(&mut fresh, b"again").await;
}

#[tokio::test]
async fn slicing_delivers_small_pieces_intact() {
    let (proxy, mut s) = setup().await;
    proxy.update(|f| {
        f.to_client.slicing = Some(Slicing {
            max_bytes: 10,
            gap: Duration::from_millis(5),
        })
    });
    let msg: Vec<u8> = (0..100u8).collect();
    s.write_all(&msg).await.unwrap();
    let mut got = Vec::new();
    let mut reads = 0;
    while got.len() < msg.len() {
        let mut buf = [0u8; 256];
        let n = timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0 && n <= 10, "piece of {n} bytes");
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    assert_eq!(got, msg);
    assert!(reads >= 10);
}

#[tokio::test]
async fn shutdown_resets_connections() {
    let (proxy, mut s) = setup().await;
    round_trip(&mut s, b"x").await;
    let addr = proxy.local_addr();
    proxy.shutdown().await;
    let mut buf = [0u8; 1];
    let r = timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)));
    assert!(TcpStream::connect(addr).await.is_err());
}

#[test]
fn faults_link_accessors_pick_the_direction() {
    let mut f = Faults::none();
    f.link_mut(Direction::ToClient).latency = Duration::from_millis(3);
    assert_eq!(f.to_client.latency, Duration::from_millis(3));
    assert_eq!(f.link(Direction::ToUpstream), &LinkFaults::default());
}

#[tokio::test]
async fn one_way_blackhole_lets_the_other_direction_flow() {
    let (proxy, mut s) = setup().await;
    proxy.update(|f| f.to_client.blackhole = Some(Blackhole::Stall));
    s.write_all(b"one way").await.unwrap();
    let mut buf = [0u8; 7];
    let stalled = timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
    assert!(stalled.is_err(), "the reply crossed a one-way partition");
    let stats = proxy.stats();
    assert_eq!(
        stats.bytes(Direction::ToUpstream),
        7,
        "requests still reach upstream"
    );
    assert_eq!(stats.bytes(Direction::ToClient), 0);
    proxy.set(Faults::none());
    timeout(Duration::from_secs(2), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"one way");
}
