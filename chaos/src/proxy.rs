//! A TCP fault proxy: sits between two processes and delays, throttles, slices, corrupts,
//! blackholes or resets their traffic, changed live through a [`ProxyHandle`].
//!
//! Each direction of each connection is a reader and a writer joined by a bounded channel
//! (at most [`CHANNEL_CHUNKS`] chunks of [`CHUNK`] bytes), so latency is pipelined like a real
//! link and a stalled direction pushes back into the kernel buffers instead of growing memory.
//! The writer reads the current [`Faults`] for every chunk, so changes apply to live
//! connections at once. The pure parts ([`TokenBucket`], [`Corrupter`]) are tested in-file.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, warn};

use crate::rng::SplitMix64;
use crate::ChaosError;

/// Largest chunk read from a socket at once.
pub const CHUNK: usize = 16 * 1024;
/// Chunks buffered per direction of a connection (bounds memory at 512 KiB per direction).
pub const CHANNEL_CHUNKS: usize = 32;
/// Connections served at once; more are reset on accept.
pub const MAX_CONNECTIONS: u64 = 1024;
/// How long to wait for the upstream to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a blackholed direction does with the bytes it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blackhole {
    /// Nothing flows and nothing is lost: bytes wait (in bounded buffers, then in the kernel)
    /// and flow again when lifted, as over a real partition that TCP outlives.
    Stall,
    /// Bytes are read and discarded: nothing flows, and what was sent meanwhile is gone
    /// (the stream is damaged, as if the partition outlived TCP's retransmissions).
    Drop,
}

/// Delivery in small pieces (exercises parsers that must handle partial messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slicing {
    /// Largest piece written at once (at least 1).
    pub max_bytes: usize,
    /// Pause between pieces so the receiver sees them separately.
    pub gap: Duration,
}

/// Faults of one direction of the link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Added delay for every byte.
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter`, drawn per chunk (order is kept).
    pub jitter: Duration,
    /// Bandwidth cap in bytes per second (token bucket, 20 ms burst).
    pub bandwidth: Option<u64>,
    /// Partition this direction.
    pub blackhole: Option<Blackhole>,
    /// Deliver in small pieces.
    pub slicing: Option<Slicing>,
    /// Flip one random bit in every window of this many bytes (at least 1).
    pub corrupt_every: Option<u64>,
}

/// A direction of traffic through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client that connected to the proxy towards the upstream.
    ToUpstream,
    /// From the upstream back to the client.
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToClient => 1,
        }
    }
}

/// Every fault of the proxy; set as a whole through [`ProxyHandle::set`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Faults on client -> upstream traffic.
    pub to_upstream: LinkFaults,
    /// Faults on upstream -> client traffic.
    pub to_client: LinkFaults,
    /// Seed of jitter and corruption (each connection and direction draws its own stream).
    pub seed: u64,
}

impl Faults {
    /// No faults: a transparent proxy.
    pub fn none() -> Self {
        Self::default()
    }

    /// Both directions blackholed.
    pub fn partition(mode: Blackhole) -> Self {
        let mut f = Self::default();
        f.to_upstream.blackhole = Some(mode);
        f.to_client.blackhole = Some(mode);
        f
    }

    /// The faults of one direction.
    pub fn link(&self, dir: Direction) -> &LinkFaults {
        match dir {
            Direction::ToUpstream => &self.to_upstream,
            Direction::ToClient => &self.to_client,
        }
    }

    /// The faults of one direction, to change.
    pub fn link_mut(&mut self, dir: Direction) -> &mut LinkFaults {
        match dir {
            Direction::ToUpstream => &mut self.to_upstream,
            Direction::ToClient => &mut self.to_client,
        }
    }
}

/// A snapshot of the proxy's counters; arrays are indexed `[to_upstream, to_client]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Bytes delivered, per direction.
    pub bytes: [u64; 2],
    /// Bytes discarded by a `Drop` blackhole, per direction.
    pub dropped: [u64; 2],
    /// Bytes with a flipped bit, per direction.
    pub corrupted: [u64; 2],
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections closed abruptly by [`ProxyHandle::reset_connections`] or shutdown.
    pub connections_reset: u64,
}

impl ProxyStats {
    /// Bytes delivered in one direction.
    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes[dir.index()]
    }

    /// Bytes corrupted in one direction.
    pub fn corrupted(&self, dir: Direction) -> u64 {
        self.corrupted[dir.index()]
    }

    /// Bytes dropped in one direction.
    pub fn dropped(&self, dir: Direction) -> u64 {
        self.dropped[dir.index()]
    }
}

#[derive(Debug, Default)]
struct Counters {
    bytes: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    corrupted: [AtomicU64; 2],
    accepted: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ProxyStats {
        let pair =
            |a: &[AtomicU64; 2]| [a[0].load(Ordering::Relaxed), a[1].load(Ordering::Relaxed)];
        ProxyStats {
            bytes: pair(&self.bytes),
            dropped: pair(&self.dropped),
            corrupted: pair(&self.corrupted),
            connections_accepted: self.accepted.load(Ordering::Relaxed),
            connections_open: self.open.load(Ordering::Relaxed),
            connections_reset: self.reset.load(Ordering::Relaxed),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

/// A token bucket: `reserve` says how long to wait before sending `n` bytes at `rate`.
///
/// Tokens may go negative: a large piece is sent after waiting for its whole cost, so pieces
/// larger than the burst never block forever.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` bytes/s (at least 1) holding at most `burst` bytes, starting full.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        Self {
            rate: rate.max(1),
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
        }
    }

    /// The bucket used by the proxy: a 20 ms burst.
    pub fn for_rate(rate: u64, now: Instant) -> Self {
        Self::new(rate, rate / 50, now)
    }

    /// The configured rate.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `n` bytes of tokens at `now`; returns how long to wait before sending them.
    pub fn reserve(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

/// Flips one random bit in each consecutive window of `every` bytes of a stream, however the
/// stream is chunked; deterministic for a seed.
#[derive(Debug, Clone)]
pub struct Corrupter {
    every: u64,
    pos: u64,
    flip_at: u64,
    flipped: bool,
    rng: SplitMix64,
}

impl Corrupter {
    /// A corrupter for windows of `every` bytes (at least 1).
    pub fn new(every: u64, rng: SplitMix64) -> Self {
        let every = every.max(1);
        let mut rng = rng;
        let flip_at = rng.below(every);
        Self {
            every,
            pos: 0,
            flip_at,
            flipped: false,
            rng,
        }
    }

    /// The window size.
    pub fn every(&self) -> u64 {
        self.every
    }

    /// Corrupts `buf` (the next bytes of the stream) in place; returns how many bytes changed.
    pub fn apply(&mut self, buf: &mut [u8]) -> u64 {
        let mut i = 0usize;
        let mut flips = 0;
        while i < buf.len() {
            let avail = (buf.len() - i) as u64;
            if !self.flipped && self.flip_at - self.pos < avail {
                let at = i + (self.flip_at - self.pos) as usize;
                buf[at] ^= 1 << self.rng.below(8);
                flips += 1;
                self.flipped = true;
            }
            let step = (self.every - self.pos).min(avail);
            i += step as usize;
            self.pos += step;
            if self.pos == self.every {
                self.pos = 0;
                self.flip_at = self.rng.below(self.every);
                self.flipped = false;
            }
        }
        flips
    }
}

fn jitter(rng: &mut SplitMix64, max: Duration) -> Duration {
    let micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(rng.below(micros.saturating_add(1)))
}

// ---------------------------------------------------------------------------------------------
// I/O
// ---------------------------------------------------------------------------------------------

struct Shared {
    upstream: SocketAddr,
    counters: Counters,
    faults: watch::Receiver<Faults>,
    resets: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

/// Controls a running proxy. Dropping it stops the proxy and resets its connections.
#[derive(Debug)]
pub struct ProxyHandle {
    addr: SocketAddr,
    faults: watch::Sender<Faults>,
    resets: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl ProxyHandle {
    /// The address clients should connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces every fault; live connections follow from their next chunk.
    pub fn set(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// Changes the faults in place.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(change);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults.borrow().clone()
    }

    /// Closes every current connection abruptly (RST to both sides); new ones are accepted.
    pub fn reset_connections(&self) {
        self.resets.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        self.shared.counters.snapshot()
    }

    /// Stops accepting, resets every connection and waits for the proxy task to end.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// Starts fault proxies.
#[derive(Debug)]
pub struct FaultProxy;

impl FaultProxy {
    /// Listens on `listen` (such as `127.0.0.1:0`) and forwards each connection to `upstream`.
    /// Returns the handle and the bound address.
    ///
    /// # Errors
    /// `Io` when the address cannot be bound.
    pub async fn start(
        listen: &str,
        upstream: SocketAddr,
    ) -> Result<(ProxyHandle, SocketAddr), ChaosError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| ChaosError::io(format!("bind proxy on {listen}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| ChaosError::io(format!("local address of proxy on {listen}"), e))?;
        let (faults_tx, faults_rx) = watch::channel(Faults::none());
        let (resets_tx, resets_rx) = watch::channel(0u64);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            upstream,
            counters: Counters::default(),
            faults: faults_rx,
            resets: resets_rx,
            shutdown: shutdown_rx,
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        let handle = ProxyHandle {
            addr,
            faults: faults_tx,
            resets: resets_tx,
            shutdown: shutdown_tx,
            shared,
            task: Some(task),
        };
        Ok((handle, addr))
    }
}

async fn stopping(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return; // handle dropped
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut tasks = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            () = stopping(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "fault proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        if shared.counters.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            warn!(%peer, "fault proxy at its connection limit; resetting");
            let _ = client.set_zero_linger();
            continue;
        }
        shared.counters.open.fetch_add(1, Ordering::Relaxed);
        next_id += 1;
        tasks.spawn(connection(client, next_id, Arc::clone(&shared)));
    }
    // Connection tasks see the same shutdown signal and reset themselves.
    while tasks.join_next().await.is_some() {}
}

struct OpenGuard<'a>(&'a Counters);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn reset_requested(resets: &mut watch::Receiver<u64>, shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        r = resets.changed() => { let _ = r; }
        () = stopping(shutdown) => {}
    }
}

async fn connection(client: TcpStream, id: u64, shared: Arc<Shared>) {
    let _open = OpenGuard(&shared.counters);
    let mut resets = shared.resets.clone();
    resets.borrow_and_update();
    let mut shutdown = shared.shutdown.clone();
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(shared.upstream));
    let mut upstream = tokio::select! {
        () = reset_requested(&mut resets, &mut shutdown) => {
            let _ = client.set_zero_linger();
            return;
        }
        c = connect => match c {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                debug!(error = %e, upstream = %shared.upstream, "fault proxy cannot reach upstream");
                let _ = client.set_zero_linger();
                return;
            }
            Err(_) => {
                let _ = client.set_zero_linger();
                return;
            }
        },
    };
    let mut client = client;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let clean = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let up = pump(cr, uw, Direction::ToUpstream, id, &shared);
        let down = pump(ur, cw, Direction::ToClient, id, &shared);
        tokio::select! {
            r = async { tokio::try_join!(up, down) } => match r {
                Ok(_) => true,
                Err(e) => {
                    debug!(error = %e, id, "fault proxy connection failed");
                    false
                }
            },
            () = reset_requested(&mut resets, &mut shutdown) => {
                shared.counters.reset.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    };
    if !clean {
        // Abrupt close: SO_LINGER 0 makes the kernel send RST instead of FIN.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

enum Chunk {
    Data(Instant, Vec<u8>),
    Eof,
}

async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    dir: Direction,
    id: u64,
    shared: &Shared,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHANNEL_CHUNKS);
    let d = dir.index();
    let read_side = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                let _ = tx.send(Chunk::Eof).await;
                return Ok::<(), std::io::Error>(());
            }
            if shared.faults.borrow().link(dir).blackhole == Some(Blackhole::Drop) {
                shared.counters.dropped[d].fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            if tx
                .send(Chunk::Data(Instant::now(), buf[..n].to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write_side = async {
        let mut faults = shared.faults.clone();
        let seed = faults.borrow().seed;
        let mut rng = SplitMix64::for_stream(seed, id.wrapping_mul(2) + d as u64);
        let mut bucket: Option<TokenBucket> = None;
        let mut corrupter: Option<Corrupter> = None;
        'chunks: while let Some(chunk) = rx.recv().await {
            let (stamp, mut data) = match chunk {
                Chunk::Data(stamp, data) => (stamp, data),
                Chunk::Eof => {
                    // Nothing flows through a blackhole, not even the end of the stream.
                    while faults.borrow_and_update().link(dir).blackhole.is_some() {
                        if faults.changed().await.is_err() {
                            return Ok(());
                        }
                    }
                    writer.shutdown().await?;
                    return Ok(());
                }
            };
            let link = faults.borrow_and_update().link(dir).clone();
            let extra = jitter(&mut rng, link.jitter);
            tokio::time::sleep_until((stamp + link.latency + extra).into()).await;
            let link = loop {
                let link = faults.borrow_and_update().link(dir).clone();
                match link.blackhole {
                    None => break link,
                    Some(Blackhole::Drop) => {
                        shared.counters.dropped[d].fetch_add(data.len() as u64, Ordering::Relaxed);
                        continue 'chunks;
                    }
                    Some(Blackhole::Stall) => {
                        if faults.changed().await.is_err() {
                            return Ok(());
                        }
                    }
                }
            };
            match link.corrupt_every {
                Some(every) => {
                    let c = match &mut corrupter {
                        Some(c) if c.every() == every.max(1) => c,
                        slot => slot.insert(Corrupter::new(
                            every,
                            SplitMix64::for_stream(seed ^ 0xC0, id.wrapping_mul(2) + d as u64),
                        )),
                    };
                    let flips = c.apply(&mut data);
                    shared.counters.corrupted[d].fetch_add(flips, Ordering::Relaxed);
                }
                None => corrupter = None,
            }
            let piece_len = link
                .slicing
                .map_or(data.len(), |s| s.max_bytes.max(1))
                .max(1);
            let mut pieces = data.chunks(piece_len).peekable();
            while let Some(piece) = pieces.next() {
                if let Some(rate) = link.bandwidth {
                    let b = match &mut bucket {
                        Some(b) if b.rate() == rate.max(1) => b,
                        slot => slot.insert(TokenBucket::for_rate(rate, Instant::now())),
                    };
                    let wait = b.reserve(piece.len(), Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                } else {
                    bucket = None;
                }
                writer.write_all(piece).await?;
                shared.counters.bytes[d].fetch_add(piece.len() as u64, Ordering::Relaxed);
                if let Some(s) = link.slicing {
                    if pieces.peek().is_some() && !s.gap.is_zero() {
                        tokio::time::sleep(s.gap).await;
                    }
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read_side, write_side).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_bucket_paces_to_its_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1000, 100, start);
        let mut now = start;
        // The first 100 bytes are the burst; then 1000 bytes take one second.
        assert_eq!(b.reserve(100, now), Duration::ZERO);
        for _ in 0..10 {
            let wait = b.reserve(100, now);
            now += wait;
        }
        let elapsed = now - start;
        assert!(
            (elapsed.as_secs_f64() - 1.0).abs() < 0.01,
            "elapsed {elapsed:?}"
        );
    }

    #[test]
    fn token_bucket_does_not_save_more_than_its_burst() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1000, 100, start);
        let later = start + Duration::from_secs(10);
        assert_eq!(b.reserve(100, later), Duration::ZERO);
        assert!(b.reserve(100, later) >= Duration::from_millis(99));
    }

    #[test]
    fn corrupter_flips_exactly_one_bit_per_window() {
        let mut data = vec![0u8; 10_000];
        let flips = Corrupter::new(1000, SplitMix64::new(5)).apply(&mut data);
        assert_eq!(flips, 10);
        for window in data.chunks(1000) {
            let ones: u32 = window.iter().map(|b| b.count_ones()).sum();
            assert_eq!(ones, 1);
        }
    }

    proptest! {
        #[test]
        fn corruption_does_not_depend_on_chunking(
            every in 1u64..300,
            len in 0usize..3000,
            cuts in proptest::collection::vec(1usize..500, 1..20),
            seed in any::<u64>(),
        ) {
            let mut whole = vec![0u8; len];
            let flips_whole = Corrupter::new(every, SplitMix64::new(seed)).apply(&mut whole);
            let mut pieces = vec![0u8; len];
            let mut c = Corrupter::new(every, SplitMix64::new(seed));
            let mut flips = 0;
            let mut at = 0;
            let mut i = 0;
            while at < len {
                let n = cuts[i % cuts.len()].min(len - at);
                flips += c.apply(&mut pieces[at..at + n]);
                at += n;
                i += 1;
            }
            prop_assert_eq!(&whole, &pieces);
            prop_assert_eq!(flips, flips_whole);
            let complete_windows = len as u64 / every;
            prop_assert!(flips >= complete_windows && flips <= complete_windows + 1);
            let changed = whole.iter().filter(|b| **b != 0).count() as u64;
            prop_assert_eq!(changed, flips);
        }

        #[test]
        fn token_bucket_never_exceeds_rate_plus_burst(
            rate in 1_000u64..1_000_000,
            sizes in proptest::collection::vec(1usize..20_000, 1..50),
        ) {
            let start = Instant::now();
            let mut b = TokenBucket::for_rate(rate, start);
            let mut now = start;
            let mut sent = 0u64;
            for n in sizes {
                now += b.reserve(n, now);
                sent += n as u64;
                let allowed = (rate / 50) as f64 + rate as f64 * (now - start).as_secs_f64();
                prop_assert!(sent as f64 <= allowed + 1.0, "sent {} allowed {}", sent, allowed);
            }
        }
    }
}
