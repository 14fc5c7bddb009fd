//! The raft node: one thread owns the `RawNode` and drives it as raft-rs's `five_mem_node`
//! does; [`RaftHandle`] is the cloneable, async front callers use.
//!
//! The thread is a plain OS thread because sled I/O is blocking and it is the single flusher
//! of the storage (STACK-NOTES 6). Peer sender tasks run on the tokio runtime `start` was
//! called from.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;

use super::cmd::{is_blocked, Blocked, Cmd, Parts, Reply};
pub use super::cmd::{Committed, MembershipChange};
use super::snapshot_policy::{SnapshotInputs, SnapshotPolicy};
use super::storage::error::StorageError;
use super::storage::format::{decode_peers, encode_peers};
use super::storage::sled_store::SledStorage;
use super::transport::{self, PeerSender, PeerService};
use super::{RaftError, RaftNodeConfig, StateMachine};
use tandem_core::proto::raft_peer_server::RaftPeerServer;

/// Capacity of the node's command inbox (inbound raft messages, proposals, reports).
pub const INBOX: usize = 16 * 1024;

/// This node's raft role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRole {
    /// Follower.
    Follower,
    /// Pre-vote candidate.
    PreCandidate,
    /// Candidate.
    Candidate,
    /// Leader.
    Leader,
}

impl From<StateRole> for RaftRole {
    fn from(r: StateRole) -> Self {
        match r {
            StateRole::Follower => RaftRole::Follower,
            StateRole::PreCandidate => RaftRole::PreCandidate,
            StateRole::Candidate => RaftRole::Candidate,
            StateRole::Leader => RaftRole::Leader,
        }
    }
}

/// A point-in-time view of the node, refreshed by the raft thread after every loop turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node's id.
    pub id: u64,
    /// The leader this node knows of.
    pub leader_id: Option<u64>,
    /// Current term.
    pub term: u64,
    /// This node's role.
    pub role: RaftRole,
    /// Highest index known committed.
    pub commit: u64,
    /// Highest index applied to the state machine.
    pub applied: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Index of the last stored state machine snapshot (0 = none).
    pub snapshot_index: u64,
    /// Current voters (sorted).
    pub voters: Vec<u64>,
    /// Current learners (sorted).
    pub learners: Vec<u64>,
    /// Whether the raft thread is still running.
    pub running: bool,
    /// For each peer this node has received a raft message from: how long ago (ms, when the
    /// status was published). A leader hears every live follower at each heartbeat.
    pub heard_ms_ago: BTreeMap<u64, u64>,
}

struct Shared<SM> {
    id: u64,
    cmd: SyncSender<Cmd>,
    status: Arc<Mutex<RaftStatus>>,
    sm: Arc<Mutex<SM>>,
    blocked: Blocked,
    net: tandem_core::net::Net,
    peer_names: BTreeMap<u64, String>,
    propose_timeout: Duration,
    thread: Mutex<Option<JoinHandle<Result<(), RaftError>>>>,
}

/// The `RaftPeer` gRPC service of a node, for the node's single tonic server.
pub fn peer_service<SM>(handle: &RaftHandle<SM>) -> RaftPeerServer<PeerService> {
    transport::service(handle.transport_parts())
}

/// The cloneable front of a running raft node.
pub struct RaftHandle<SM> {
    inner: Arc<Shared<SM>>,
}

impl<SM> Clone for RaftHandle<SM> {
    fn clone(&self) -> Self {
        RaftHandle {
            inner: Arc::clone(&self.inner),
        }
    }
}

use tandem_core::bytes::lock;

impl<SM> RaftHandle<SM> {
    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The latest status published by the raft thread.
    pub fn status(&self) -> RaftStatus {
        lock(&self.inner.status).clone()
    }

    /// The applied state machine, for reads (hold the lock briefly: the raft thread applies
    /// under it).
    pub fn state_machine(&self) -> Arc<Mutex<SM>> {
        Arc::clone(&self.inner.sm)
    }

    /// Drops all raft traffic to and from the given peers until [`RaftHandle::unblock_all`]
    /// (fault injection: network partitions in tests and the chaos harness).
    pub fn block_peers(&self, ids: &[u64]) {
        if let Ok(mut b) = self.inner.blocked.write() {
            b.extend(ids.iter().copied());
        }
    }

    /// Restores traffic with every peer blocked by [`RaftHandle::block_peers`].
    pub fn unblock_all(&self) {
        if let Ok(mut b) = self.inner.blocked.write() {
            b.clear();
        }
    }

    pub(crate) fn transport_parts(&self) -> Parts {
        Parts {
            id: self.inner.id,
            inbound: self.inner.cmd.clone(),
            blocked: Arc::clone(&self.inner.blocked),
            net: self.inner.net.clone(),
            peer_names: self.inner.peer_names.clone(),
        }
    }

    fn send(&self, cmd: Cmd) -> Result<(), RaftError> {
        self.inner.cmd.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => RaftError::Busy,
            TrySendError::Disconnected(_) => RaftError::ShuttingDown,
        })
    }

    async fn wait(
        &self,
        rx: oneshot::Receiver<Result<Committed, RaftError>>,
    ) -> Result<Committed, RaftError> {
        let after = self.inner.propose_timeout;
        match tokio::time::timeout(after, rx).await {
            Err(_) => Err(RaftError::Timeout { after }),
            Ok(Err(_)) => Err(RaftError::ShuttingDown),
            Ok(Ok(r)) => r,
        }
    }

    /// Proposes a command and waits until this node has applied it.
    ///
    /// # Errors
    /// [`RaftError::NotLeader`] at once when this node is not the leader (forward to
    /// `leader`); [`RaftError::ProposalDropped`] when a leader change discarded the entry;
    /// [`RaftError::Timeout`] after `propose_timeout` (outcome unknown);
    /// [`RaftError::Busy`] / [`RaftError::ShuttingDown`].
    pub async fn propose(&self, data: Vec<u8>) -> Result<Committed, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Propose { data, reply })?;
        self.wait(rx).await
    }

    /// Proposes a single-step membership change on the leader and waits until it is applied
    /// here.
    ///
    /// # Errors
    /// As [`RaftHandle::propose`], plus [`RaftError::ConfChangeRejected`]. A change proposed
    /// while another is in flight is dropped by raft-rs: [`RaftError::ProposalDropped`].
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Committed, RaftError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::ChangeMembership { change, reply })?;
        self.wait(rx).await
    }

    /// Waits until this node has applied `index` (read-your-writes on any node).
    ///
    /// # Errors
    /// [`RaftError::Timeout`] after `timeout`; [`RaftError::ShuttingDown`] if the node stops.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let st = self.status();
            if st.applied >= index {
                return Ok(());
            }
            if !st.running {
                return Err(RaftError::ShuttingDown);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RaftError::Timeout { after: timeout });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the raft thread and its peer senders, flushes storage, and releases the data
    /// directory. Pending proposals fail with [`RaftError::ShuttingDown`].
    ///
    /// # Errors
    /// The error that stopped the node earlier, if it died of one.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        let _ = self.inner.cmd.try_send(Cmd::Shutdown);
        let thread = lock(&self.inner.thread).take();
        let Some(thread) = thread else {
            return Ok(());
        };
        if thread.is_finished() {
            return thread.join().unwrap_or(Err(RaftError::ShuttingDown));
        }
        // The inbox may have been full: keep knocking until the thread notices.
        let cmd = self.inner.cmd.clone();
        tokio::task::spawn_blocking(move || {
            while !thread.is_finished() {
                let _ = cmd.try_send(Cmd::Shutdown);
                std::thread::sleep(Duration::from_millis(5));
            }
            thread.join().unwrap_or(Err(RaftError::ShuttingDown))
        })
        .await
        .unwrap_or(Err(RaftError::ShuttingDown))
    }
}

/// Encodes a stored snapshot: version byte, peer address map, then the state machine bytes.
pub fn encode_snapshot_data(peers: &BTreeMap<u64, String>, sm: &[u8]) -> Vec<u8> {
    let mut out = vec![SNAPSHOT_VERSION];
    out.extend_from_slice(&encode_peers(peers));
    out.extend_from_slice(sm);
    out
}

/// Decodes [`encode_snapshot_data`] into the peer map and the state machine bytes.
///
/// # Errors
/// Unknown version or a malformed peer map.
pub fn decode_snapshot_data(data: &[u8]) -> Result<(BTreeMap<u64, String>, &[u8]), String> {
    match data.first() {
        Some(&SNAPSHOT_VERSION) => {}
        Some(v) => return Err(format!("unknown snapshot data version {v}")),
        None => return Err("empty snapshot data".to_string()),
    }
    let (peers, used) = decode_peers(&data[1..])?;
    Ok((peers, &data[1 + used..]))
}

const SNAPSHOT_VERSION: u8 = 1;

fn open_with_retry(cfg: &RaftNodeConfig) -> Result<SledStorage, RaftError> {
    // A node restarted in the same process may find the previous sled instance still
    // releasing its lock for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match SledStorage::open(&cfg.data_dir) {
            Ok(s) => return Ok(s),
            Err(StorageError::Sled(sled::Error::Io(e))) if Instant::now() < deadline => {
                tracing::debug!(error = %e, dir = %cfg.data_dir.display(), "raft storage busy, retrying");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Starts a raft node: opens (or bootstraps) its storage in `cfg.data_dir`, rebuilds the
/// state machine from the last snapshot, and spawns the raft thread and peer senders.
///
/// On a fresh data dir every initial voter starts from the same snapshot at index 1 whose
/// conf state holds all of `cfg.peers` (and the state machine's empty state), so no bootstrap
/// leader is needed; with `cfg.join` the node starts empty and waits to be added, then
/// catches up by snapshot. On restart the stored state wins (`cfg.peers` only updates addresses).
/// Must be called inside a tokio runtime.
///
/// # Errors
/// Invalid config, storage errors, or the state machine refusing the stored snapshot.
pub async fn start<SM: StateMachine>(
    cfg: RaftNodeConfig,
    sm: SM,
) -> Result<RaftHandle<SM>, RaftError> {
    cfg.validate()?;
    let rt = tokio::runtime::Handle::current();
    let (cmd_tx, cmd_rx) = std::sync::mpsc::sync_channel(INBOX);
    let sm = Arc::new(Mutex::new(sm));
    let blocked: Blocked = Arc::default();
    let status = Arc::new(Mutex::new(RaftStatus {
        id: cfg.id,
        leader_id: None,
        term: 0,
        role: RaftRole::Follower,
        commit: 0,
        applied: 0,
        last_index: 0,
        snapshot_index: 0,
        voters: Vec::new(),
        learners: Vec::new(),
        running: true,
        heard_ms_ago: BTreeMap::new(),
    }));
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), RaftError>>();
    let thread = {
        let (cfg, sm, blocked, status, cmd_tx) = (
            cfg.clone(),
            Arc::clone(&sm),
            Arc::clone(&blocked),
            Arc::clone(&status),
            cmd_tx.clone(),
        );
        std::thread::Builder::new()
            .name(format!("raft-{}", cfg.id))
            .spawn(move || {
                let node = Node::open(&cfg, sm, blocked, Arc::clone(&status), cmd_tx, cmd_rx, rt);
                let res = match node {
                    Ok(node) => {
                        let _ = ready_tx.send(Ok(()));
                        node.run()
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        Ok(())
                    }
                };
                lock(&status).running = false;
                if let Err(e) = &res {
                    tracing::error!(error = %e, "raft node stopped");
                }
                res
            })
            .map_err(|e| RaftError::Config(format!("cannot spawn raft thread: {e}")))?
    };
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(RaftError::ShuttingDown),
    }
    Ok(RaftHandle {
        inner: Arc::new(Shared {
            id: cfg.id,
            cmd: cmd_tx,
            status,
            sm,
            blocked,
            net: cfg.net.clone(),
            peer_names: cfg.peer_names.clone(),
            propose_timeout: cfg.propose_timeout,
            thread: Mutex::new(Some(thread)),
        }),
    })
}

struct Pending {
    ctx: [u8; 16],
    reply: Reply,
}

struct Node<SM> {
    id: u64,
    raw: RawNode<SledStorage>,
    storage: SledStorage,
    sm: Arc<Mutex<SM>>,
    rx: Receiver<Cmd>,
    cmd_tx: SyncSender<Cmd>,
    rt: tokio::runtime::Handle,
    blocked: Blocked,
    net: tandem_core::net::Net,
    status: Arc<Mutex<RaftStatus>>,
    peers: BTreeMap<u64, String>,
    senders: HashMap<u64, PeerSender>,
    pending: BTreeMap<u64, Pending>,
    next_ctx: u64,
    applied: u64,
    conf_index: u64,
    last_snapshot: u64,
    /// When the stored snapshot was taken (or the node started).
    last_snapshot_at: Instant,
    /// Bytes of the entries applied since the stored snapshot.
    log_bytes: u64,
    /// Size of the stored snapshot.
    snapshot_bytes: u64,
    snapshot_every: u64,
    snapshot_policy: SnapshotPolicy,
    tick: Duration,
    /// When a raft message from each peer last arrived.
    heard: BTreeMap<u64, Instant>,
}

impl<SM: StateMachine> Node<SM> {
    #[allow(clippy::too_many_arguments)]
    fn open(
        cfg: &RaftNodeConfig,
        sm: Arc<Mutex<SM>>,
        blocked: Blocked,
        status: Arc<Mutex<RaftStatus>>,
        cmd_tx: SyncSender<Cmd>,
        rx: Receiver<Cmd>,
        rt: tokio::runtime::Handle,
    ) -> Result<Self, RaftError> {
        let storage = open_with_retry(cfg)?;
        lock(&sm).attach(storage.db()).map_err(RaftError::Restore)?;
        let mut peers = storage.peers()?;
        if storage.is_fresh() && !cfg.join {
            // As five_mem_node: every initial voter starts from the same snapshot at index 1
            // holding all of `cfg.peers`, so nodes added later must catch up by a snapshot
            // (the log alone does not carry the initial configuration).
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 1;
            snap.mut_metadata().term = 1;
            snap.mut_metadata().mut_conf_state().voters = cfg.peers.keys().copied().collect();
            snap.data = encode_snapshot_data(&cfg.peers, &lock(&sm).snapshot()).into();
            storage.apply_snapshot(snap)?;
        }
        let snap = storage.snapshot_metadata();
        let mut snapshot_bytes = 0;
        if snap.index > 0 {
            let data = storage.snapshot_data()?;
            snapshot_bytes = data.len() as u64;
            let (snap_peers, sm_bytes) = decode_snapshot_data(&data).map_err(RaftError::Restore)?;
            lock(&sm).restore(sm_bytes).map_err(RaftError::Restore)?;
            for (id, addr) in snap_peers {
                peers.entry(id).or_insert(addr);
            }
        }
        peers.extend(cfg.peers.clone());
        storage.set_peers(&peers)?;
        storage.flush()?;
        let conf_index = storage.conf_state().1;
        let raft_cfg = cfg.raft_config(snap.index)?;
        let raw = RawNode::new(&raft_cfg, storage.clone(), &super::log::logger(cfg.id))?;
        let next_ctx = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let mut node = Node {
            id: cfg.id,
            raw,
            storage,
            sm,
            rx,
            cmd_tx,
            rt,
            blocked,
            net: cfg.net.clone(),
            status,
            peers: BTreeMap::new(),
            senders: HashMap::new(),
            pending: BTreeMap::new(),
            next_ctx,
            applied: snap.index,
            conf_index,
            last_snapshot: snap.index,
            last_snapshot_at: Instant::now(),
            log_bytes: 0,
            snapshot_bytes,
            snapshot_every: cfg.snapshot_every,
            snapshot_policy: SnapshotPolicy {
                every: cfg.snapshot_every,
                min_interval: cfg.snapshot_min_interval,
            },
            tick: cfg.tick,
            heard: BTreeMap::new(),
        };
        node.add_peers(peers);
        node.publish_status();
        Ok(node)
    }

    fn add_peers(&mut self, peers: BTreeMap<u64, String>) {
        for (id, addr) in peers {
            if id == self.id {
                self.peers.insert(id, addr);
                continue;
            }
            if self.peers.get(&id) != Some(&addr) || !self.senders.contains_key(&id) {
                let sender = PeerSender::spawn(
                    &self.rt,
                    id,
                    addr.clone(),
                    self.cmd_tx.clone(),
                    self.net.clone(),
                );
                self.senders.insert(id, sender);
            }
            self.peers.insert(id, addr);
        }
    }

    fn run(mut self) -> Result<(), RaftError> {
        let res = self.run_loop();
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(RaftError::ShuttingDown));
        }
        self.senders.clear();
        let flushed = self.storage.flush();
        res?;
        flushed?;
        Ok(())
    }

    fn run_loop(&mut self) -> Result<(), RaftError> {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return Ok(());
                    }
                    for _ in 0..1024 {
                        match self.rx.try_recv() {
                            Ok(cmd) => {
                                if !self.handle(cmd) {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick = Instant::now() + self.tick;
                // Forget proposals whose callers gave up.
                self.pending.retain(|_, p| !p.reply.is_closed());
            }
            self.on_ready()?;
            self.snapshot_if_due()?;
            self.publish_status();
        }
    }

    /// Handles one command; `false` to stop.
    fn handle(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Step(m) => {
                if !is_blocked(&self.blocked, m.from) {
                    self.heard.insert(m.from, Instant::now());
                    if let Err(e) = self.raw.step(*m) {
                        tracing::debug!(node = self.id, error = %e, "raft step refused a message");
                    }
                }
            }
            Cmd::Propose { data, reply } => {
                self.propose(reply, |raw, ctx| raw.propose(ctx, data));
            }
            Cmd::ChangeMembership { change, reply } => {
                let mut single = ConfChangeSingle::default();
                let mut cc = ConfChangeV2::default();
                match change {
                    MembershipChange::AddVoter { id, addr } => {
                        single.node_id = id;
                        single.set_change_type(ConfChangeType::AddNode);
                        let mut m = BTreeMap::new();
                        m.insert(id, addr);
                        cc.context = encode_peers(&m).into();
                    }
                    MembershipChange::RemoveVoter { id } => {
                        single.node_id = id;
                        single.set_change_type(ConfChangeType::RemoveNode);
                    }
                }
                cc.set_changes(vec![single].into());
                self.propose(reply, |raw, ctx| raw.propose_conf_change(ctx, cc));
            }
            Cmd::Unreachable(id) => self.raw.report_unreachable(id),
            Cmd::Snapshot(id, st) => self.raw.report_snapshot(id, st),
            Cmd::Shutdown => return false,
        }
        true
    }

    fn leader(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|l| *l != 0)
    }

    fn propose(
        &mut self,
        reply: Reply,
        f: impl FnOnce(&mut RawNode<SledStorage>, Vec<u8>) -> raft::Result<()>,
    ) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(RaftError::NotLeader {
                leader: self.leader(),
            }));
            return;
        }
        self.next_ctx = self.next_ctx.wrapping_add(1);
        let mut ctx = [0u8; 16];
        ctx[..8].copy_from_slice(&self.id.to_be_bytes());
        ctx[8..].copy_from_slice(&self.next_ctx.to_be_bytes());
        let before = self.raw.raft.raft_log.last_index();
        match f(&mut self.raw, ctx.to_vec()) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                if index == before {
                    let _ = reply.send(Err(RaftError::NotLeader {
                        leader: self.leader(),
                    }));
                } else {
                    self.pending.insert(index, Pending { ctx, reply });
                }
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(RaftError::NotLeader {
                    leader: self.leader(),
                }));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn send_messages(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            if is_blocked(&self.blocked, to) {
                continue;
            }
            let sent = self.senders.get(&to).is_some_and(|s| s.try_send(m));
            if !sent {
                self.raw.report_unreachable(to);
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), RaftError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send_messages(rd.take_messages());
        if *rd.snapshot() != Snapshot::default() {
            self.install_snapshot(rd.snapshot().clone())?;
        }
        self.apply_entries(rd.take_committed_entries())?;
        self.storage.append(rd.entries())?;
        if let Some(hs) = rd.hs() {
            self.storage.set_hardstate(hs)?;
        }
        if rd.must_sync() {
            self.storage.flush()?;
        }
        self.send_messages(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.storage.set_commit(commit)?;
        }
        self.send_messages(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), RaftError> {
        let index = snap.get_metadata().index;
        let data = snap.data.clone();
        self.storage.apply_snapshot(snap)?;
        let (peers, sm_bytes) = decode_snapshot_data(&data).map_err(RaftError::Restore)?;
        lock(&self.sm)
            .restore(sm_bytes)
            .map_err(RaftError::Restore)?;
        let mut all = peers;
        all.extend(std::mem::take(&mut self.peers));
        self.storage.set_peers(&all)?;
        self.peers = all.clone();
        self.add_peers(all);
        self.applied = index;
        self.conf_index = index;
        self.last_snapshot = index;
        self.last_snapshot_at = Instant::now();
        self.log_bytes = 0;
        self.snapshot_bytes = data.len() as u64;
        // Proposals at or below the snapshot may or may not be in it.
        let rest = self.pending.split_off(&(index + 1));
        for (i, p) in std::mem::replace(&mut self.pending, rest) {
            let _ = p.reply.send(Err(RaftError::OutcomeUnknown { index: i }));
            tracing::debug!(
                node = self.id,
                index = i,
                "proposal overtaken by a snapshot"
            );
        }
        super::trim::release_freed_memory();
        tracing::info!(node = self.id, index, "installed raft snapshot");
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftError> {
        for e in entries {
            let index = e.index;
            self.log_bytes += e.data.len() as u64;
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => Ok(Vec::new()),
                EntryType::EntryNormal => Ok(lock(&self.sm).apply(index, &e.data)),
                EntryType::EntryConfChange => {
                    let mut cc = ConfChange::default();
                    cc.merge_from_bytes(&e.data)
                        .map_err(|err| StorageError::Corrupt {
                            key: format!("entry {index}"),
                            reason: format!("conf change: {err}"),
                        })?;
                    // Legacy single change: the same as a one-step v2 change.
                    let mut single = ConfChangeSingle::default();
                    single.node_id = cc.node_id;
                    single.set_change_type(cc.get_change_type());
                    let mut v2 = ConfChangeV2::default();
                    v2.set_changes(vec![single].into());
                    v2.context = cc.context.clone();
                    self.apply_conf_change(index, &v2)?
                }
                EntryType::EntryConfChangeV2 => {
                    let mut cc = ConfChangeV2::default();
                    cc.merge_from_bytes(&e.data)
                        .map_err(|err| StorageError::Corrupt {
                            key: format!("entry {index}"),
                            reason: format!("conf change v2: {err}"),
                        })?;
                    self.apply_conf_change(index, &cc)?
                }
            };
            self.applied = index;
            // Anything pending below this index was skipped (cannot happen without a snapshot).
            let rest = self.pending.split_off(&index);
            for (i, p) in std::mem::replace(&mut self.pending, rest) {
                let _ = p.reply.send(Err(RaftError::ProposalDropped { index: i }));
            }
            if let Some(p) = self.pending.remove(&index) {
                let out = if e.context[..] == p.ctx[..] {
                    result.map(|reply| Committed { index, reply })
                } else {
                    Err(RaftError::ProposalDropped { index })
                };
                let _ = p.reply.send(out);
            }
        }
        Ok(())
    }

    /// Applies a committed conf change; the outer error is fatal, the inner one is the
    /// proposer's reply.
    fn apply_conf_change(
        &mut self,
        index: u64,
        v2: &ConfChangeV2,
    ) -> Result<Result<Vec<u8>, RaftError>, RaftError> {
        if index <= self.conf_index {
            // Replay after restart: the stored conf state already includes it.
            return Ok(Ok(Vec::new()));
        }
        let cs = match self.raw.apply_conf_change(v2) {
            Ok(cs) => cs,
            Err(e) => {
                tracing::warn!(node = self.id, index, error = %e, "conf change rejected");
                return Ok(Err(RaftError::ConfChangeRejected {
                    index,
                    reason: e.to_string(),
                }));
            }
        };
        self.storage.set_conf_state(&cs, index)?;
        self.conf_index = index;
        if !v2.context.is_empty() {
            match decode_peers(&v2.context) {
                Ok((added, _)) => {
                    self.add_peers(added);
                }
                Err(e) => tracing::warn!(node = self.id, index, error = %e, "conf change context"),
            }
        }
        for ch in v2.get_changes() {
            if ch.get_change_type() == ConfChangeType::RemoveNode && ch.node_id != self.id {
                self.senders.remove(&ch.node_id);
                self.peers.remove(&ch.node_id);
            }
        }
        self.storage.set_peers(&self.peers)?;
        Ok(Ok(Vec::new()))
    }

    /// When [`SnapshotPolicy::due`]: snapshot the state machine and compact the log,
    /// keeping a tail of `snapshot_every / 4` entries so a follower that is only a little
    /// behind still catches up from the log.
    fn snapshot_if_due(&mut self) -> Result<(), RaftError> {
        let due = self.snapshot_policy.due(SnapshotInputs {
            applied: self.applied,
            last_snapshot: self.last_snapshot,
            since_last: self.last_snapshot_at.elapsed(),
            wanted: self.storage.snapshot_wanted(),
            log_bytes: self.log_bytes,
            snapshot_bytes: self.snapshot_bytes,
        });
        if !due {
            return Ok(());
        }
        self.storage.take_snapshot_wanted();
        let sm_bytes = lock(&self.sm).snapshot();
        let data = encode_snapshot_data(&self.peers, &sm_bytes);
        self.snapshot_bytes = data.len() as u64;
        let cs = self.raw.raft.prs().conf().to_conf_state();
        self.storage.create_snapshot(self.applied, cs, data)?;
        let keep = self.snapshot_every / 4;
        let compact_to = (self.applied + 1).saturating_sub(keep);
        self.storage.compact(compact_to)?;
        self.last_snapshot = self.applied;
        self.last_snapshot_at = Instant::now();
        self.log_bytes = 0;
        drop(sm_bytes);
        super::trim::release_freed_memory();
        tracing::debug!(
            node = self.id,
            index = self.applied,
            "raft snapshot taken, log compacted"
        );
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let mut st = lock(&self.status);
        st.leader_id = self.leader();
        st.term = raft.term;
        st.role = raft.state.into();
        st.commit = raft.raft_log.committed;
        st.applied = self.applied;
        st.last_index = raft.raft_log.last_index();
        st.snapshot_index = self.storage.snapshot_metadata().index;
        st.voters = voters;
        st.learners = learners;
        st.heard_ms_ago = self
            .heard
            .iter()
            .map(|(id, at)| (*id, at.elapsed().as_millis() as u64))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_data_round_trips_peers_and_state() {
        let mut peers = BTreeMap::new();
        peers.insert(2, "http://127.0.0.1:2".to_string());
        let data = encode_snapshot_data(&peers, b"sm-state");
        let (p, sm) = decode_snapshot_data(&data).unwrap();
        assert_eq!(p, peers);
        assert_eq!(sm, b"sm-state");
    }

    #[test]
    fn snapshot_data_with_unknown_version_is_refused() {
        let mut data = encode_snapshot_data(&BTreeMap::new(), b"x");
        data[0] = 9;
        assert!(decode_snapshot_data(&data)
            .unwrap_err()
            .contains("version 9"));
        assert!(decode_snapshot_data(&[]).is_err());
    }
}
