//! Raft cluster tests: real nodes, sled storage and tonic transport on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_coordinator::raft::{
    peer_service, start, RaftError, RaftHandle, RaftNodeConfig, RaftRole, StateMachine,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

/// Records every applied command, so nodes can be compared entry by entry.
#[derive(Default)]
struct LogSm {
    applied: Vec<(u64, Vec<u8>)>,
    /// Length of `applied` after each restore (not part of the replicated state).
    restores: Vec<usize>,
}

impl StateMachine for LogSm {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        self.applied.push((index, data.to_vec()));
        format!("applied#{}", self.applied.len()).into_bytes()
    }
    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&self.applied).unwrap()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.applied = serde_json::from_slice(snapshot).map_err(|e| e.to_string())?;
        self.restores.push(self.applied.len());
        Ok(())
    }
}

struct Running {
    handle: RaftHandle<LogSm>,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

struct Cluster {
    peers: BTreeMap<u64, String>,
    addrs: BTreeMap<u64, SocketAddr>,
    nodes: BTreeMap<u64, Option<Running>>,
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    snapshot_every: u64,
    snapshot_min_interval: Duration,
}

impl Cluster {
    async fn new(n: u64, snapshot_every: u64) -> Cluster {
        Cluster::with_interval(n, snapshot_every, Duration::ZERO).await
    }

    async fn with_interval(n: u64, snapshot_every: u64, min_interval: Duration) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let mut listeners = BTreeMap::new();
        let mut peers = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            peers.insert(id, format!("http://{addr}"));
            addrs.insert(id, addr);
            listeners.insert(id, l);
        }
        let mut c = Cluster {
            peers,
            addrs,
            nodes: BTreeMap::new(),
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            snapshot_every,
            snapshot_min_interval: min_interval,
        };
        for (id, l) in listeners {
            c.launch(id, l).await;
        }
        c
    }

    async fn launch(&mut self, id: u64, listener: TcpListener) {
        let mut cfg = RaftNodeConfig::new(id, self.peers.clone(), self.dir.join(format!("n{id}")));
        cfg.join = !self.peers.contains_key(&id);
        if cfg.join {
            cfg.peers
                .insert(id, format!("http://{}", listener.local_addr().unwrap()));
        }
        cfg.tick = Duration::from_millis(25);
        cfg.election_tick = 10;
        cfg.heartbeat_tick = 2;
        cfg.snapshot_every = self.snapshot_every;
        cfg.snapshot_min_interval = self.snapshot_min_interval;
        cfg.propose_timeout = Duration::from_secs(3);
        let handle = start(cfg, LogSm::default()).await.unwrap();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let svc = peer_service(&handle);
        let server = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        self.nodes.insert(
            id,
            Some(Running {
                handle,
                stop,
                server,
            }),
        );
    }

    fn handle(&self, id: u64) -> &RaftHandle<LogSm> {
        &self.nodes[&id].as_ref().unwrap().handle
    }

    fn live(&self) -> impl Iterator<Item = &RaftHandle<LogSm>> {
        self.nodes.values().flatten().map(|r| &r.handle)
    }

    async fn stop(&mut self, id: u64) {
        let r = self.nodes.get_mut(&id).unwrap().take().unwrap();
        r.handle.shutdown().await.unwrap();
        let _ = r.stop.send(());
        // Graceful shutdown would wait for peers' long-lived streams; the listener closes
        // when the accept loop is dropped, and open streams fail once the node is gone.
        r.server.abort();
    }

    async fn restart(&mut self, id: u64) {
        let addr = self.addrs[&id];
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {addr}: {e}"),
            }
        };
        self.launch(id, listener).await;
    }

    /// Waits until one live node is leader and every live node in `among` knows it.
    async fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let st: Vec<_> = self.live().map(|h| h.status()).collect();
            if let Some(l) = st.iter().find(|s| s.role == RaftRole::Leader) {
                if st.iter().filter(|s| s.role == RaftRole::Leader).count() == 1 {
                    return l.id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {within:?}: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes on whichever node is leader, retrying on leader changes; returns the index.
    async fn propose(&self, data: &[u8], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let l = self
                .leader(deadline.saturating_duration_since(Instant::now()))
                .await;
            match self.handle(l).propose(data.to_vec()).await {
                Ok(c) => return c.index,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("proposal {data:?} failed: {e}"),
            }
        }
    }

    /// The commands applied on node `id`, in order.
    fn applied(&self, id: u64) -> Vec<Vec<u8>> {
        let sm = self.handle(id).state_machine();
        let sm = sm.lock().unwrap();
        sm.applied.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Waits until every live node has applied `index`, then checks they applied the same
    /// commands in the same order.
    async fn converge(&self, index: u64) -> Vec<Vec<u8>> {
        for h in self.live() {
            h.wait_applied(index, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("node {} did not apply {index}: {e}", h.id()));
        }
        let ids: Vec<u64> = self.live().map(|h| h.id()).collect();
        let first = self.applied(ids[0]);
        for id in &ids[1..] {
            let other = self.applied(*id);
            let n = first.len().min(other.len());
            assert_eq!(
                first[..n],
                other[..n],
                "node {id} diverged from node {}",
                ids[0]
            );
        }
        first
    }

    async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].is_some() {
                self.stop(id).await;
            }
        }
    }
}

fn cmd(i: usize) -> Vec<u8> {
    format!("cmd-{i}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_apply_the_same_sequence() {
    // 1. Start three voters on a fresh data dir.
    let c = Cluster::new(3, 1000).await;
    let leader = c.leader(Duration::from_secs(5)).await;

    // 2. Proposals on the leader commit and reply with their own entry's result.
    let mut last = 0;
    let mut lat = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let r = c.handle(leader).propose(cmd(i)).await.unwrap();
        lat.push(t.elapsed());
        assert!(r.index > last, "indexes must grow");
        last = r.index;
        let sm = c.handle(leader).state_machine();
        let pos = sm
            .lock()
            .unwrap()
            .applied
            .iter()
            .position(|(ix, _)| *ix == r.index)
            .unwrap();
        assert_eq!(r.reply, format!("applied#{}", pos + 1).into_bytes());
    }

    lat.sort();
    eprintln!(
        "propose latency (debug build, 3 nodes, fsync): median {:?}, max {:?}",
        lat[10], lat[19]
    );

    // 3. A follower refuses at once and names the leader.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    match c.handle(follower).propose(b"x".to_vec()).await {
        Err(RaftError::NotLeader { leader: Some(l) }) => assert_eq!(l, leader),
        other => panic!("follower accepted or gave a wrong error: {other:?}"),
    }

    // 4. Every node applied the same 20 commands in order.
    let applied = c.converge(last).await;
    assert_eq!(applied, (0..20).map(cmd).collect::<Vec<_>>());
    let st = c.handle(leader).status();
    assert_eq!(st.voters, vec![1, 2, 3]);
    assert_eq!(st.leader_id, Some(leader));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_new_leader_and_old_leader_catches_up_by_snapshot() {
    // 1. Three nodes, snapshot and compact every 5 entries.
    let mut c = Cluster::new(3, 5).await;
    for i in 0..3 {
        c.propose(&cmd(i), Duration::from_secs(5)).await;
    }
    let old = c.leader(Duration::from_secs(5)).await;
    let applied_before = c.applied(old).len();

    // 2. Stop the leader; a new one is elected within a few seconds.
    let t = Instant::now();
    c.stop(old).await;
    let new = c.leader(Duration::from_secs(5)).await;
    assert_ne!(new, old);
    eprintln!(
        "new leader {new} elected {:?} after stopping {old}",
        t.elapsed()
    );

    // 3. Proposals during the outage commit (enough to compact past the old leader's log).
    let mut last = 0;
    for i in 3..23 {
        last = c.propose(&cmd(i), Duration::from_secs(5)).await;
    }
    assert!(c.handle(new).status().snapshot_index > applied_before as u64);

    // 4. Restart the old leader from its data dir: it catches up, by snapshot.
    c.restart(old).await;
    let applied = c.converge(last).await;
    assert_eq!(applied, (0..23).map(cmd).collect::<Vec<_>>());
    let restores = c
        .handle(old)
        .state_machine()
        .lock()
        .unwrap()
        .restores
        .clone();
    assert!(
        restores.iter().any(|n| *n > applied_before),
        "old leader never installed a newer snapshot: restores {restores:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_while_majority_does() {
    // 1. Three nodes; isolate the leader from both followers.
    let c = Cluster::new(3, 1000).await;
    let first = c.propose(b"before", Duration::from_secs(5)).await;
    c.converge(first).await;
    let old = c.leader(Duration::from_secs(5)).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    c.handle(old).block_peers(&others);
    for id in &others {
        c.handle(*id).block_peers(&[old]);
    }

    // 2. A proposal on the isolated leader cannot commit.
    let lost = {
        let h = c.handle(old).clone();
        tokio::spawn(async move { h.propose(b"lost".to_vec()).await })
    };

    // 3. Meanwhile the majority elects a leader and commits.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(8);
    let new = loop {
        let l = others
            .iter()
            .find(|id| c.handle(**id).status().role == RaftRole::Leader);
        if let Some(l) = l {
            break *l;
        }
        assert!(Instant::now() < deadline, "majority elected no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let idx = c
        .handle(new)
        .propose(b"majority".to_vec())
        .await
        .unwrap()
        .index;
    eprintln!(
        "majority leader {new} committed {:?} after the partition",
        t.elapsed()
    );
    // With check_quorum the isolated node steps down within an election timeout.
    let deadline = Instant::now() + Duration::from_secs(2);
    while c.handle(old).status().role == RaftRole::Leader {
        assert!(
            Instant::now() < deadline,
            "isolated leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !lost.is_finished(),
        "minority proposal finished before healing"
    );

    // 4. Heal: the minority's entry is overwritten and its proposer told so, not left hanging.
    for h in c.live() {
        h.unblock_all();
    }
    let res = lost.await.unwrap();
    assert!(
        matches!(res, Err(RaftError::ProposalDropped { .. })),
        "minority proposal: {res:?}"
    );
    let applied = c.converge(idx).await;
    assert!(applied.contains(&b"majority".to_vec()));
    assert!(!applied.contains(&b"lost".to_vec()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_keep_committing_with_two_down() {
    // 1. Five nodes commit.
    let mut c = Cluster::new(5, 1000).await;
    let idx = c.propose(b"five", Duration::from_secs(5)).await;
    c.converge(idx).await;

    // 2. Kill two, the leader among them.
    let leader = c.leader(Duration::from_secs(5)).await;
    let other = (1..=5).find(|id| *id != leader).unwrap();
    c.stop(leader).await;
    c.stop(other).await;

    // 3. The remaining three still commit.
    let mut last = 0;
    for i in 0..5 {
        last = c.propose(&cmd(i), Duration::from_secs(8)).await;
    }
    let applied = c.converge(last).await;
    assert_eq!(applied.len(), 6);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_voter_catches_up_by_snapshot_and_then_votes() {
    use tandem_coordinator::raft::MembershipChange;
    // 1. Three nodes commit some commands.
    let mut c = Cluster::new(3, 1000).await;
    for i in 0..5 {
        c.propose(&cmd(i), Duration::from_secs(5)).await;
    }

    // 2. Start node 4 empty (join) and add it as a voter through the leader.
    let l4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr4 = format!("http://{}", l4.local_addr().unwrap());
    c.addrs.insert(4, l4.local_addr().unwrap());
    c.launch(4, l4).await;
    let leader = c.leader(Duration::from_secs(5)).await;
    c.handle(leader)
        .change_membership(MembershipChange::AddVoter { id: 4, addr: addr4 })
        .await
        .unwrap();

    // 3. Node 4 catches up and everyone sees four voters.
    let last = c.propose(b"after-join", Duration::from_secs(5)).await;
    let applied = c.converge(last).await;
    assert_eq!(applied.len(), 6);
    assert_eq!(c.applied(4), applied);
    assert_eq!(c.handle(4).status().voters, vec![1, 2, 3, 4]);
    assert!(!c
        .handle(4)
        .state_machine()
        .lock()
        .unwrap()
        .restores
        .is_empty());

    // 4. Remove node 1; the rest keep committing.
    let leader = c.leader(Duration::from_secs(5)).await;
    c.handle(leader)
        .change_membership(MembershipChange::RemoveVoter { id: 1 })
        .await
        .unwrap();
    if leader == 1 {
        c.stop(1).await;
    }
    let last = c.propose(b"after-remove", Duration::from_secs(8)).await;
    let st = c.handle(4);
    st.wait_applied(last, Duration::from_secs(5)).await.unwrap();
    assert_eq!(st.status().voters, vec![2, 3, 4]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restarts_from_its_own_snapshots_and_compacted_logs() {
    // 1. Three nodes, snapshot and compact every 5 entries; 30 commands.
    let mut c = Cluster::new(3, 5).await;
    let mut last = 0;
    for i in 0..30 {
        last = c.propose(&cmd(i), Duration::from_secs(5)).await;
    }
    c.converge(last).await;
    // 2. Every node snapshotted past the bootstrap snapshot and compacted its log.
    let mut snap_before = BTreeMap::new();
    for id in 1..=3 {
        let st = c.handle(id).status();
        assert!(
            st.snapshot_index > 1 && st.snapshot_index <= st.applied,
            "node {id}: {st:?}"
        );
        snap_before.insert(id, st.snapshot_index);
    }

    // 3. Stop all three, start all three from their data dirs.
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.restart(id).await;
    }

    // 4. Each rebuilt its state from its own snapshot (not from the bootstrap one, not
    //    from a peer: the first restore holds what its snapshot held), then the log after it.
    let applied = c.converge(last).await;
    assert_eq!(applied, (0..30).map(cmd).collect::<Vec<_>>());
    for id in 1..=3 {
        let restores = c
            .handle(id)
            .state_machine()
            .lock()
            .unwrap()
            .restores
            .clone();
        let own = usize::try_from(snap_before[&id]).unwrap();
        assert!(
            restores.first().is_some_and(|n| *n > 0 && *n < own),
            "node {id}: restores {restores:?}, its snapshot was at index {own}"
        );
    }

    // 5. The restarted cluster keeps committing and snapshotting.
    for i in 30..40 {
        last = c.propose(&cmd(i), Duration::from_secs(5)).await;
    }
    assert_eq!(c.converge(last).await, (0..40).map(cmd).collect::<Vec<_>>());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_wait_for_the_least_interval_until_the_log_reaches_its_cap() {
    // 1. Snapshot every 5 entries but at most once a minute: 40 entries take no snapshot
    //    (the bootstrap snapshot is at index 1).
    let c = Cluster::with_interval(3, 5, Duration::from_secs(60)).await;
    let mut last = 0;
    for i in 0..40 {
        last = c.propose(&cmd(i), Duration::from_secs(5)).await;
    }
    c.converge(last).await;
    for h in c.live() {
        assert_eq!(h.status().snapshot_index, 1, "node {}", h.id());
    }

    // 2. Past 16 x 5 entries the log is compacted whatever the time.
    for i in 40..90 {
        last = c.propose(&cmd(i), Duration::from_secs(5)).await;
    }
    c.converge(last).await;
    for h in c.live() {
        let st = h.status();
        assert!(st.snapshot_index >= 80, "node {}: {st:?}", h.id());
    }
    c.shutdown().await;
}
