//! One simulated coordinator: a raft-rs `RawNode` over `MemStorage`, the durable disk image it
//! restarts from, and the replicated [`State`] it applies committed commands to.

use super::Bug;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use tandem_coordinator::state::{apply, Command, Event, LeaseStatus, Rejection, SiteStatus, State};

/// Raft election timeout in ticks (the randomized timeout lies in `[ELECTION_TICK, 2 *
/// ELECTION_TICK)`).
pub(crate) const ELECTION_TICK: usize = 10;
/// Raft heartbeat interval in ticks.
pub(crate) const HEARTBEAT_TICK: usize = 3;

/// What a node's disk holds after an fsync: the only thing that survives a crash.
#[derive(Debug, Clone, Default)]
struct Disk {
    hard_state: HardState,
    /// `entries[i]` has raft index `i + 1` (the log is never compacted in the simulation).
    entries: Vec<Entry>,
}

/// A write made to the page cache (the `MemStorage` raft reads) and not yet fsynced.
#[derive(Debug, Clone)]
enum DiskOp {
    Append(Vec<Entry>),
    HardState(HardState),
    Commit(u64),
}

impl Disk {
    fn apply(&mut self, op: DiskOp) {
        match op {
            DiskOp::Append(ents) => {
                if let Some(first) = ents.first() {
                    let keep = usize::try_from(first.index.saturating_sub(1)).unwrap_or(0);
                    self.entries.truncate(keep);
                    self.entries.extend(ents);
                }
            }
            DiskOp::HardState(hs) => self.hard_state = hs,
            DiskOp::Commit(c) => self.hard_state.commit = c,
        }
    }
}

/// One committed entry as a node applied it, for the checker and the trace.
#[derive(Debug, Clone)]
pub(crate) struct AppliedEntry {
    /// Raft index.
    pub index: u64,
    /// Raft term of the entry.
    pub term: u64,
    /// Hash of the entry's data (0 for the empty entry a new leader appends).
    pub data_hash: u64,
    /// Digest of the node's state after applying it.
    pub state_digest: u64,
    /// Every group's (name, epoch, primary site) after applying it.
    pub groups: Vec<(String, u64, String)>,
}

/// Commands already decoded, by raft index, with the bytes they came from: every node applies
/// the same entries, so each is parsed once (a node whose bytes differ parses its own).
pub(crate) type DecodeCache = BTreeMap<u64, (Vec<u8>, Command)>;

fn decode(cache: &mut DecodeCache, index: u64, data: &[u8]) -> Result<Command, String> {
    if let Some((bytes, cmd)) = cache.get(&index) {
        if bytes[..] == data[..] {
            return Ok(cmd.clone());
        }
    }
    let cmd: Command = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    cache.insert(index, (data.to_vec(), cmd.clone()));
    Ok(cmd)
}

/// A proposal made through a node, answered when the node applies its index.
#[derive(Debug, Clone, Copy)]
struct Pending {
    request: u64,
}

/// The answer to a proposal: applied (with the state machine's outcome) or overwritten.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The request id given at proposal.
    pub request: u64,
    /// Raft index the proposal got.
    pub index: u64,
    /// `Some(outcome)` when the proposal itself was applied, `None` when another entry took its
    /// index (a new leader overwrote it).
    pub outcome: Option<Result<Vec<Event>, Rejection>>,
}

/// Volatile part of a node: lost on a crash.
struct Live {
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    state: State,
    applied: u64,
    pending: BTreeMap<u64, Pending>,
    /// Page-cache writes not yet fsynced (only non-empty between two readies with
    /// [`Bug::AckBeforeFsync`]).
    unsynced: Vec<DiskOp>,
}

/// A simulated coordinator node.
pub(crate) struct SimNode {
    /// Raft id (1-based).
    pub id: u64,
    voters: Vec<u64>,
    disk: Disk,
    live: Option<Live>,
    /// Times it was started (1 after creation).
    pub incarnation: u64,
    seed: u64,
    bug: Option<Bug>,
}

/// An error the simulation itself hit (not an invariant of the system under test).
pub(crate) type SimError = String;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer: a deterministic, well-spread function of its input.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of bytes (FNV-1a), for digests only.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a as a [`Hasher`], for digests only.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A cheap digest of what matters in a state: clock, audit head, and every group's roles,
/// epoch, state and lease, and every site's status.
pub(crate) fn state_digest(state: &State) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    state.clock_ms().hash(&mut h);
    state.audit().len().hash(&mut h);
    state.audit().head_hash().hash(&mut h);
    for (name, g) in state.groups() {
        name.hash(&mut h);
        g.epoch.0.hash(&mut h);
        g.primary_site.hash(&mut h);
        g.replica_site.hash(&mut h);
        g.state.hash(&mut h);
        g.paused.hash(&mut h);
        if let Some(l) = &g.lease {
            l.holder.hash(&mut h);
            l.site.hash(&mut h);
            l.epoch.0.hash(&mut h);
            l.granted_ms.hash(&mut h);
            l.expires_ms.hash(&mut h);
            match l.status {
                LeaseStatus::Active => 1i64.hash(&mut h),
                LeaseStatus::Revoked { at_ms } => (2i64, at_ms).hash(&mut h),
                LeaseStatus::Released { at_ms } => (3i64, at_ms).hash(&mut h),
            }
        }
    }
    for (name, site) in state.sites() {
        name.hash(&mut h);
        let code: u8 = match site.status {
            SiteStatus::Unknown => 0,
            SiteStatus::Up => 1,
            SiteStatus::Down => 2,
        };
        code.hash(&mut h);
    }
    h.finish()
}

fn role_code(r: StateRole) -> u64 {
    match r {
        StateRole::Follower => 1,
        StateRole::Candidate => 2,
        StateRole::Leader => 3,
        StateRole::PreCandidate => 4,
    }
}

/// Applies one command as this build of the simulation does: [`apply`], or with
/// [`Bug::PromoteIgnoresLease`] a wrapper that first forges a release of any lease that would
/// block a promotion (deterministic, so every node still agrees).
pub(crate) fn sim_apply(
    state: &mut State,
    cmd: &Command,
    bug: Option<Bug>,
) -> Result<Vec<Event>, Rejection> {
    if bug == Some(Bug::PromoteIgnoresLease) {
        if let Command::Promote { at_ms, group, .. } = cmd {
            let now = (*at_ms).max(state.clock_ms());
            let holder = state
                .group(group)
                .and_then(|g| g.lease.as_ref())
                .map(|l| (l.holder.clone(), l.epoch));
            if let Some((node, epoch)) = holder {
                if state.lease_may_be_live(group, now) {
                    let forged = Command::ReleaseLease {
                        at_ms: *at_ms,
                        group: group.clone(),
                        node,
                        epoch,
                    };
                    let _ = apply(state, &forged);
                }
            }
        }
    }
    apply(state, cmd)
}

impl SimNode {
    /// A node with an empty disk, started.
    pub fn new(
        id: u64,
        voters: Vec<u64>,
        seed: u64,
        bug: Option<Bug>,
    ) -> Result<SimNode, SimError> {
        let mut n = SimNode {
            id,
            voters,
            disk: Disk::default(),
            live: None,
            incarnation: 0,
            seed,
            bug,
        };
        n.start()?;
        Ok(n)
    }

    /// Whether it is running.
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    /// Starts it from what its disk holds: a fresh `MemStorage` loaded from the disk, a raft
    /// node with `applied = 0`, and an empty state that replays every committed entry.
    pub fn start(&mut self) -> Result<(), SimError> {
        let storage =
            MemStorage::new_with_conf_state(ConfState::from((self.voters.clone(), vec![])));
        {
            let mut core = storage.wl();
            core.append(&self.disk.entries)
                .map_err(|e| format!("node {}: load entries: {e}", self.id))?;
            core.set_hardstate(self.disk.hard_state.clone());
        }
        let cfg = Config {
            id: self.id,
            election_tick: ELECTION_TICK,
            heartbeat_tick: HEARTBEAT_TICK,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            pre_vote: true,
            check_quorum: true,
            applied: 0,
            ..Config::default()
        };
        cfg.validate()
            .map_err(|e| format!("node {}: raft config: {e}", self.id))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&cfg, storage.clone(), &logger)
            .map_err(|e| format!("node {}: raft start: {e}", self.id))?;
        self.incarnation += 1;
        self.live = Some(Live {
            raw,
            storage,
            state: State::new(),
            applied: 0,
            pending: BTreeMap::new(),
            unsynced: Vec::new(),
        });
        self.fix_timeout();
        Ok(())
    }

    /// Crashes it: everything volatile (raft memory, unpersisted Ready parts, writes not
    /// fsynced, the applied state, pending proposals) is lost; the disk stays.
    pub fn crash(&mut self) {
        self.live = None;
    }

    /// raft-rs draws randomized election timeouts from `thread_rng`; replace them with a
    /// deterministic function of (seed, node, incarnation, term, role) after every operation.
    fn fix_timeout(&mut self) {
        let Some(l) = self.live.as_mut() else { return };
        let r = &mut l.raw.raft;
        let x = mix(self.seed
            ^ mix(self.id)
            ^ mix(self.incarnation << 20)
            ^ mix(r.term.wrapping_mul(31) ^ role_code(r.state)));
        let span = ELECTION_TICK as u64;
        let want = ELECTION_TICK + usize::try_from(x % span).unwrap_or(0);
        if r.randomized_election_timeout() != want {
            r.set_randomized_election_timeout(want);
        }
    }

    /// Role, term, commit index and applied index (`None` when down).
    pub fn raft_status(&self) -> Option<(StateRole, u64, u64, u64)> {
        self.live.as_ref().map(|l| {
            (
                l.raw.raft.state,
                l.raw.raft.term,
                l.raw.raft.raft_log.committed,
                l.applied,
            )
        })
    }

    /// Whether it believes it is the leader.
    pub fn is_leader(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| l.raw.raft.state == StateRole::Leader)
    }

    /// Its applied state (`None` when down).
    pub fn state(&self) -> Option<&State> {
        self.live.as_ref().map(|l| &l.state)
    }

    /// Advances its logical clock by one tick.
    pub fn tick(&mut self) {
        if let Some(l) = self.live.as_mut() {
            l.raw.tick();
        }
        self.fix_timeout();
    }

    /// Steps one message in (refusals are normal: stale terms and the like).
    pub fn step(&mut self, m: Message) {
        if let Some(l) = self.live.as_mut() {
            let _ = l.raw.step(m);
        }
        self.fix_timeout();
    }

    /// Proposes a command with request id `request`; the raft index on success, `None` when
    /// this node cannot take proposals (not leader, transferring).
    pub fn propose(&mut self, request: u64, cmd: &Command) -> Option<u64> {
        let l = self.live.as_mut()?;
        if l.raw.raft.state != StateRole::Leader {
            return None;
        }
        let data = serde_json::to_vec(cmd).ok()?;
        let before = l.raw.raft.raft_log.last_index();
        let ok = l.raw.propose(request.to_be_bytes().to_vec(), data).is_ok();
        let index = l.raw.raft.raft_log.last_index();
        self.fix_timeout();
        if !ok || index == before {
            return None;
        }
        let l = self.live.as_mut()?;
        l.pending.insert(index, Pending { request });
        Some(index)
    }

    fn fsync(l: &mut Live, disk: &mut Disk) {
        for op in l.unsynced.drain(..) {
            disk.apply(op);
        }
    }

    /// Handles one Ready the way raft requires: send the leader's messages, apply committed
    /// entries, append entries and save the hard state, fsync, and only then send the messages
    /// that depend on persistence. Returns the messages to put on the network, the entries
    /// applied and the answers to proposals.
    #[allow(clippy::type_complexity)]
    pub fn handle_ready(
        &mut self,
        cache: &mut DecodeCache,
    ) -> Result<(Vec<Message>, Vec<AppliedEntry>, Vec<Answer>), SimError> {
        let id = self.id;
        let bug = self.bug;
        let Some(l) = self.live.as_mut() else {
            return Ok((Vec::new(), Vec::new(), Vec::new()));
        };
        let mut out = Vec::new();
        let mut applied = Vec::new();
        let mut answers = Vec::new();
        if bug == Some(Bug::AckBeforeFsync) {
            // The broken build fsyncs the previous Ready's writes only now.
            Self::fsync(l, &mut self.disk);
        }
        if !l.raw.has_ready() {
            return Ok((out, applied, answers));
        }
        let mut rd = l.raw.ready();
        out.extend(rd.take_messages());
        if !rd
            .snapshot()
            .get_metadata()
            .get_conf_state()
            .voters
            .is_empty()
            || rd.snapshot().get_metadata().index > 0
        {
            return Err(format!(
                "node {id}: unexpected raft snapshot (the simulation never compacts)"
            ));
        }
        Self::apply_entries(
            id,
            bug,
            l,
            cache,
            rd.take_committed_entries(),
            &mut applied,
            &mut answers,
        )?;
        if !rd.entries().is_empty() {
            l.storage
                .wl()
                .append(rd.entries())
                .map_err(|e| format!("node {id}: append: {e}"))?;
            l.unsynced.push(DiskOp::Append(rd.entries().clone()));
        }
        if let Some(hs) = rd.hs() {
            l.storage.wl().set_hardstate(hs.clone());
            l.unsynced.push(DiskOp::HardState(hs.clone()));
        }
        if bug != Some(Bug::AckBeforeFsync) {
            Self::fsync(l, &mut self.disk);
        }
        out.extend(rd.take_persisted_messages());
        let mut light = l.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            l.storage.wl().mut_hard_state().commit = commit;
            l.unsynced.push(DiskOp::Commit(commit));
            if bug != Some(Bug::AckBeforeFsync) {
                Self::fsync(l, &mut self.disk);
            }
        }
        out.extend(light.take_messages());
        Self::apply_entries(
            id,
            bug,
            l,
            cache,
            light.take_committed_entries(),
            &mut applied,
            &mut answers,
        )?;
        l.raw.advance_apply();
        self.fix_timeout();
        Ok((out, applied, answers))
    }

    fn apply_entries(
        id: u64,
        bug: Option<Bug>,
        l: &mut Live,
        cache: &mut DecodeCache,
        entries: Vec<Entry>,
        applied: &mut Vec<AppliedEntry>,
        answers: &mut Vec<Answer>,
    ) -> Result<(), SimError> {
        for e in entries {
            if e.get_entry_type() != EntryType::EntryNormal {
                return Err(format!(
                    "node {id}: unexpected conf change at index {}",
                    e.index
                ));
            }
            if e.index != l.applied + 1 {
                return Err(format!(
                    "node {id}: applied {} then got entry {}",
                    l.applied, e.index
                ));
            }
            let outcome = if e.data.is_empty() {
                None
            } else {
                let cmd = decode(cache, e.index, &e.data).map_err(|err| {
                    format!("node {id}: entry {} is not a command: {err}", e.index)
                })?;
                Some(sim_apply(&mut l.state, &cmd, bug))
            };
            l.applied = e.index;
            // Proposals below this index that never showed up were overwritten.
            let rest = l.pending.split_off(&e.index);
            for (index, p) in std::mem::replace(&mut l.pending, rest) {
                answers.push(Answer {
                    request: p.request,
                    index,
                    outcome: None,
                });
            }
            if let Some(p) = l.pending.remove(&e.index) {
                let mine = e.context.len() == 8 && e.context[..] == p.request.to_be_bytes()[..];
                answers.push(Answer {
                    request: p.request,
                    index: e.index,
                    outcome: if mine { outcome.clone() } else { None },
                });
            }
            applied.push(AppliedEntry {
                index: e.index,
                term: e.term,
                data_hash: if e.data.is_empty() {
                    0
                } else {
                    hash_bytes(&e.data)
                },
                state_digest: state_digest(&l.state),
                groups: l
                    .state
                    .groups()
                    .values()
                    .map(|g| (g.name.clone(), g.epoch.0, g.primary_site.clone()))
                    .collect(),
            });
        }
        Ok(())
    }
}
