//! Deterministic simulation of the coordinator logic: raft-rs nodes over an in-memory network,
//! each applying committed commands to its own replicated [`State`], driven by a seeded schedule
//! of message drops, delays, duplicates, partitions, crashes and restarts, with the safety
//! invariants checked after every step.
//!
//! Everything runs on one thread from one seed: the clock is simulated (ms), randomness comes
//! from [`XorShift`], maps are B-trees, and raft-rs's own random election timeouts are replaced
//! by a function of the seed. The same seed therefore replays the same run exactly, and a
//! failing run reports its seed and step ([`Violation`]).
//!
//! What one step does, in order:
//! 1. the clock advances by [`SimConfig::step_ms`];
//! 2. maybe one fault: isolate a node, split a minority off, bridge two halves through one node,
//!    heal, crash a node (it loses everything not fsynced), or restart a crashed node from its
//!    disk (it replays its committed log into a fresh state);
//! 3. messages due are delivered, unless dropped or their link is cut;
//! 4. nodes tick (some ticks are skipped, so timers drift apart);
//! 5. clients (two replicators, an operator, a failure detector) propose on a node that believes
//!    it leads, reading that node's applied state;
//! 6. nodes handle their Ready (some skip a step, so a crash can catch unpersisted raft state):
//!    entries and hard state are fsynced before the messages that depend on them are sent;
//! 7. the invariants are checked (see [`Invariant`]).
//!
//! After [`SimConfig::steps`] the network heals, crashed nodes restart and
//! [`SimConfig::quiet_steps`] fault-free steps follow (clients stop proposing in the last 40);
//! then every node must have applied every acknowledged entry.
//!
//! The log is never compacted (no raft snapshots are sent) and the membership is fixed.

mod check;
mod net;
mod node;
mod workload;

use check::{Broken, Checker};
use net::Network;
use node::{DecodeCache, SimNode};
use raft::StateRole;
use std::collections::BTreeMap;
use std::fmt;
use tandem_coordinator::state::{ClusterSettings, Event, State};
use tandem_core::mixed::XorShift;
use workload::{Client, Workload};

pub use workload::GROUP;

/// Quiet steps at the very end in which clients propose nothing.
const DRAIN_STEPS: usize = 40;

/// A deliberately broken variant of the system, to show the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The state machine wrapper forges a release of any lease that blocks a promotion, so a
    /// promotion never waits for the old primary's lease (a split brain in waiting).
    PromoteIgnoresLease,
    /// Nodes send the messages that depend on persistence (votes, append acknowledgements)
    /// before the Ready's writes are fsynced; the fsync happens at the next Ready, so a crash
    /// in between forgets votes and acknowledged entries.
    AckBeforeFsync,
}

/// Parameters of one simulated run. Probabilities are in per mille.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Coordinators (3 or 5).
    pub nodes: usize,
    /// Steps with faults.
    pub steps: usize,
    /// Fault-free steps after the network heals and every node restarts.
    pub quiet_steps: usize,
    /// Simulated ms per step (one raft tick).
    pub step_ms: u64,
    /// Largest message delay in ms (each message takes 1..=this).
    pub max_delay_ms: u64,
    /// Chance a delivered message is dropped.
    pub drop_per_mille: u64,
    /// Chance a sent message is also delivered a second time.
    pub duplicate_per_mille: u64,
    /// Chance of a fault (partition, heal, crash, restart) per step.
    pub fault_per_mille: u64,
    /// Chance a node skips its Ready handling in a step.
    pub ready_skip_per_mille: u64,
    /// Chance a node skips its tick in a step.
    pub tick_skip_per_mille: u64,
    /// Lease length granted by the state machine.
    pub lease_ttl_ms: u64,
    /// Clock-drift margin of the state machine.
    pub drift_margin_ms: u64,
    /// Failure detector threshold.
    pub detect_after_ms: u64,
    /// A deliberately broken variant, `None` for the real system.
    pub bug: Option<Bug>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: 3,
            steps: 400,
            quiet_steps: 120,
            step_ms: 50,
            max_delay_ms: 120,
            drop_per_mille: 50,
            duplicate_per_mille: 10,
            fault_per_mille: 40,
            ready_skip_per_mille: 150,
            tick_skip_per_mille: 100,
            lease_ttl_ms: 2000,
            drift_margin_ms: 500,
            detect_after_ms: 3000,
            bug: None,
        }
    }
}

impl SimConfig {
    /// The default configuration, with 5 nodes for one seed in four and 3 otherwise.
    pub fn for_seed(seed: u64) -> SimConfig {
        SimConfig {
            nodes: if seed % 4 == 3 { 5 } else { 3 },
            ..SimConfig::default()
        }
    }
}

/// The invariants the simulation checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// (a) Two nodes applied different entries at one index: committed logs must be prefixes
    /// of each other.
    LogPrefix,
    /// (a) The same committed entries led two nodes to different states.
    StateDivergence,
    /// (b) A group's epoch went down on a node.
    EpochRegressed,
    /// (c) Two different primary sites for one (group, epoch).
    TwoPrimariesInEpoch,
    /// (d) Two replicators believe they hold a live lease at the same time.
    TwoLiveLeases,
    /// (e) An acknowledged entry is missing or different on a node that applied that far, or
    /// not applied everywhere once the cluster is healed and quiet.
    AckedLost,
    /// (f) An audit chain does not verify.
    AuditChain,
    /// A node panicked: raft-rs aborts when it finds its log inconsistent with what it
    /// acknowledged (for example a commit index past its last entry after a lost write).
    NodePanicked,
    /// The simulation itself failed (a raft call refused what the harness gave it).
    Harness,
}

impl Invariant {
    /// A short stable name (`two-live-leases`).
    pub fn name(self) -> &'static str {
        match self {
            Invariant::LogPrefix => "log-prefix",
            Invariant::StateDivergence => "state-divergence",
            Invariant::EpochRegressed => "epoch-regressed",
            Invariant::TwoPrimariesInEpoch => "two-primaries-in-epoch",
            Invariant::TwoLiveLeases => "two-live-leases",
            Invariant::AckedLost => "acked-lost",
            Invariant::AuditChain => "audit-chain",
            Invariant::NodePanicked => "node-panicked",
            Invariant::Harness => "harness",
        }
    }
}

/// A broken invariant, with what is needed to replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The seed of the run.
    pub seed: u64,
    /// The step after which the check failed (1-based; `steps + quiet_steps + 1` for the final
    /// check).
    pub step: usize,
    /// Simulated time of that step.
    pub at_ms: u64,
    /// Which invariant.
    pub invariant: Invariant,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {} (t={} ms): {} violated: {} (replay: Sim::run({}, config))",
            self.seed,
            self.step,
            self.at_ms,
            self.invariant.name(),
            self.detail,
            self.seed
        )
    }
}

/// Counters of what happened in a run (or a sweep, summed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Steps run.
    pub steps: u64,
    /// Times a node became leader.
    pub elections: u64,
    /// Partitions made (isolate, split, bridge).
    pub partitions: u64,
    /// Heals.
    pub heals: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Node restarts.
    pub restarts: u64,
    /// Acknowledged unplanned failovers (promotions with `planned: false`).
    pub failovers: u64,
    /// Acknowledged planned switchovers.
    pub switchovers: u64,
    /// Acknowledged fences.
    pub fences: u64,
    /// Acknowledged lease grants.
    pub lease_grants: u64,
    /// Proposals a leader accepted.
    pub proposals: u64,
    /// Proposals applied and answered `Ok`.
    pub acked: u64,
    /// Proposals applied and answered with a rejection.
    pub refused: u64,
    /// Raft messages sent.
    pub messages_sent: u64,
    /// Raft messages delivered.
    pub messages_delivered: u64,
    /// Raft messages dropped (loss, cut link, node down).
    pub messages_dropped: u64,
    /// Raft messages duplicated.
    pub messages_duplicated: u64,
    /// Entries committed (highest index applied anywhere).
    pub committed: u64,
}

impl SimStats {
    /// Adds another run's counters.
    pub fn add(&mut self, o: &SimStats) {
        self.steps += o.steps;
        self.elections += o.elections;
        self.partitions += o.partitions;
        self.heals += o.heals;
        self.crashes += o.crashes;
        self.restarts += o.restarts;
        self.failovers += o.failovers;
        self.switchovers += o.switchovers;
        self.fences += o.fences;
        self.lease_grants += o.lease_grants;
        self.proposals += o.proposals;
        self.acked += o.acked;
        self.refused += o.refused;
        self.messages_sent += o.messages_sent;
        self.messages_delivered += o.messages_delivered;
        self.messages_dropped += o.messages_dropped;
        self.messages_duplicated += o.messages_duplicated;
        self.committed += o.committed;
    }
}

impl fmt::Display for SimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "steps {} elections {} partitions {} heals {} crashes {} restarts {} failovers {} \
             switchovers {} fences {} lease_grants {} proposals {} acked {} refused {} \
             committed {} messages sent {} delivered {} dropped {} duplicated {}",
            self.steps,
            self.elections,
            self.partitions,
            self.heals,
            self.crashes,
            self.restarts,
            self.failovers,
            self.switchovers,
            self.fences,
            self.lease_grants,
            self.proposals,
            self.acked,
            self.refused,
            self.committed,
            self.messages_sent,
            self.messages_delivered,
            self.messages_dropped,
            self.messages_duplicated
        )
    }
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// The first broken invariant, `None` if the run passed.
    pub violation: Option<Violation>,
    /// What happened.
    pub stats: SimStats,
    /// blake3 (hex) of the trace of every fault, delivery, proposal, applied entry and answer:
    /// equal digests mean identical runs.
    pub digest: String,
}

/// The result of a sweep over many seeds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Seeds run.
    pub runs: u64,
    /// Every failing run's violation, in seed order.
    pub failures: Vec<Violation>,
    /// Counters summed over all runs.
    pub totals: SimStats,
}

/// Runs every seed in `seeds` with `config(seed)`, on `threads` threads (each run is
/// single-threaded and independent of the others, so the result does not depend on
/// `threads`).
pub fn sweep(
    seeds: std::ops::Range<u64>,
    threads: usize,
    config: impl Fn(u64) -> SimConfig + Sync,
) -> SweepReport {
    let threads = threads.max(1) as u64;
    let config = &config;
    let mut reports: Vec<SimReport> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                scope.spawn(move || {
                    seeds
                        .filter(|s| s % threads == t)
                        .map(|s| Sim::run(s, config(s)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    reports.sort_by_key(|r| r.seed);
    let mut out = SweepReport::default();
    for r in reports {
        out.runs += 1;
        out.totals.add(&r.stats);
        if let Some(v) = r.violation {
            out.failures.push(v);
        }
    }
    out
}

/// One simulated cluster and its clients, advanced step by step.
pub struct Sim {
    seed: u64,
    cfg: SimConfig,
    rng: XorShift,
    now: u64,
    step: usize,
    nodes: Vec<SimNode>,
    net: Network,
    checker: Checker,
    workload: Workload,
    requests: BTreeMap<u64, Client>,
    next_request: u64,
    last_role: Vec<(StateRole, u64)>,
    stats: SimStats,
    trace: blake3::Hasher,
    trace_buf: Vec<u8>,
    failed: Option<Violation>,
    decoded: DecodeCache,
}

impl Sim {
    /// A cluster of `cfg.nodes` fresh coordinators at time 0, with the schedule drawn from
    /// `seed`.
    pub fn new(seed: u64, cfg: SimConfig) -> Sim {
        let n = cfg.nodes.max(1);
        let voters: Vec<u64> = (1..=n as u64).collect();
        let mut nodes = Vec::with_capacity(n);
        let mut failed = None;
        for id in &voters {
            match SimNode::new(*id, voters.clone(), seed, cfg.bug) {
                Ok(node) => nodes.push(node),
                Err(detail) => {
                    failed = Some(Violation {
                        seed,
                        step: 0,
                        at_ms: 0,
                        invariant: Invariant::Harness,
                        detail,
                    });
                    break;
                }
            }
        }
        let settings = ClusterSettings {
            lease_ttl_ms: cfg.lease_ttl_ms,
            drift_margin_ms: cfg.drift_margin_ms,
            detect_after_ms: cfg.detect_after_ms,
            rpo_audit_every_ms: None,
        };
        let mut trace = blake3::Hasher::new();
        trace.update(&seed.to_le_bytes());
        trace.update(format!("{cfg:?}").as_bytes());
        Sim {
            seed,
            rng: XorShift::new(seed ^ 0x005E_ED0F_7A4D_E401),
            now: 0,
            step: 0,
            last_role: vec![(StateRole::Follower, 0); nodes.len()],
            nodes,
            net: Network::default(),
            checker: Checker::new(n),
            workload: Workload::new(settings),
            requests: BTreeMap::new(),
            next_request: 0,
            stats: SimStats::default(),
            trace,
            trace_buf: Vec::new(),
            failed,
            decoded: DecodeCache::new(),
            cfg,
        }
    }

    /// Runs `seed` to the end (faulty steps, quiet steps, final check) and reports.
    pub fn run(seed: u64, cfg: SimConfig) -> SimReport {
        let mut sim = Sim::new(seed, cfg);
        let total = sim.cfg.steps + sim.cfg.quiet_steps;
        while sim.step < total {
            if sim.step().is_err() {
                break;
            }
        }
        if sim.failed.is_none() {
            let _ = sim.final_check();
        }
        sim.report()
    }

    /// The report of the run so far.
    pub fn report(&self) -> SimReport {
        let mut stats = self.stats.clone();
        stats.committed = self.checker.committed_len();
        SimReport {
            seed: self.seed,
            violation: self.failed.clone(),
            stats,
            digest: {
                let mut h = self.trace.clone();
                h.update(&self.trace_buf);
                h.finalize().to_hex().to_string()
            },
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Simulated time in ms.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// Steps run so far.
    pub fn steps_run(&self) -> usize {
        self.step
    }

    /// The applied state of node `id` (1-based), `None` when it is down or unknown.
    pub fn node_state(&self, id: u64) -> Option<&State> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.nodes.get(i)?.state()
    }

    /// Runs one step and checks the invariants.
    ///
    /// # Errors
    /// The first broken invariant (also returned by every later call).
    pub fn step(&mut self) -> Result<(), Violation> {
        if let Some(v) = &self.failed {
            return Err(v.clone());
        }
        self.step += 1;
        self.now += self.cfg.step_ms;
        self.stats.steps += 1;
        let quiet = self.step > self.cfg.steps;
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_step(quiet)))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err((Invariant::NodePanicked, what))
                });
        if let Err((invariant, detail)) = result {
            let v = Violation {
                seed: self.seed,
                step: self.step,
                at_ms: self.now,
                invariant,
                detail,
            };
            self.failed = Some(v.clone());
            return Err(v);
        }
        Ok(())
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.below(1000) < per_mille
    }

    fn trace(&mut self, words: &[u64]) {
        for w in words {
            self.trace_buf.extend_from_slice(&w.to_le_bytes());
        }
        if self.trace_buf.len() >= 64 * 1024 {
            self.trace.update(&self.trace_buf);
            self.trace_buf.clear();
        }
    }

    fn run_step(&mut self, quiet: bool) -> Result<(), Broken> {
        self.trace(&[u64::MAX, self.step as u64]);
        if quiet && self.step == self.cfg.steps + 1 {
            self.net.heal();
            for i in 0..self.nodes.len() {
                if !self.nodes[i].is_live() {
                    self.restart(i)?;
                }
            }
        } else if !quiet && self.chance(self.cfg.fault_per_mille) {
            self.fault()?;
        }
        self.deliver(quiet);
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_live() && (quiet || !self.chance(self.cfg.tick_skip_per_mille)) {
                self.nodes[i].tick();
            }
        }
        // The last steps of the quiet period take no new proposals, so every node can drain.
        let drain_from = self.cfg.steps + self.cfg.quiet_steps.saturating_sub(DRAIN_STEPS);
        if self.step <= drain_from {
            self.clients();
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_live() && (quiet || !self.chance(self.cfg.ready_skip_per_mille)) {
                self.ready(i)?;
            }
        }
        for i in 0..self.nodes.len() {
            if let Some((role, term, _, _)) = self.nodes[i].raft_status() {
                let last = self.last_role[i];
                if role == StateRole::Leader && (last.0 != StateRole::Leader || last.1 != term) {
                    self.stats.elections += 1;
                    self.trace(&[1, i as u64, term]);
                }
                self.last_role[i] = (role, term);
            } else {
                self.last_role[i] = (StateRole::Follower, 0);
            }
        }
        let now = i64::try_from(self.now).unwrap_or(i64::MAX);
        self.checker.leases(&self.workload.replicators, now)
    }

    fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn shuffled_ids(&mut self) -> Vec<u64> {
        let mut ids = self.ids();
        for i in (1..ids.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            ids.swap(i, j);
        }
        ids
    }

    fn fault(&mut self) -> Result<(), Broken> {
        let n = self.nodes.len();
        let kind = self.rng.below(8);
        self.trace(&[2, kind]);
        match kind {
            0 | 1 => {
                let ids = self.shuffled_ids();
                let size = 1 + self.rng.below((n / 2).max(1) as u64) as usize;
                self.net.split(&ids[..size], &ids);
                self.stats.partitions += 1;
            }
            2 => {
                let ids = self.shuffled_ids();
                let half = (n - 1) / 2;
                self.net.bridge(&ids[..half], &ids[half + 1..]);
                self.stats.partitions += 1;
            }
            3 | 4 => {
                if self.net.partitioned() {
                    self.net.heal();
                    self.stats.heals += 1;
                }
            }
            5 => {
                let down = self.nodes.iter().filter(|x| !x.is_live()).count();
                if down < n / 2 {
                    let live: Vec<usize> = (0..n).filter(|i| self.nodes[*i].is_live()).collect();
                    let leader = live.iter().copied().find(|i| self.nodes[*i].is_leader());
                    let victim = match leader {
                        Some(l) if self.rng.below(2) == 0 => l,
                        _ => live[self.rng.below(live.len() as u64) as usize],
                    };
                    self.nodes[victim].crash();
                    self.stats.crashes += 1;
                    self.trace(&[3, victim as u64]);
                }
            }
            _ => {
                let down: Vec<usize> = (0..n).filter(|i| !self.nodes[*i].is_live()).collect();
                if !down.is_empty() {
                    let i = down[self.rng.below(down.len() as u64) as usize];
                    self.restart(i)?;
                }
            }
        }
        Ok(())
    }

    fn restart(&mut self, i: usize) -> Result<(), Broken> {
        self.nodes[i].start().map_err(|e| (Invariant::Harness, e))?;
        self.checker.restarted(i);
        self.stats.restarts += 1;
        self.trace(&[4, i as u64]);
        Ok(())
    }

    fn deliver(&mut self, quiet: bool) {
        for m in self.net.due(self.now) {
            let to = usize::try_from(m.to.saturating_sub(1)).unwrap_or(usize::MAX);
            let up = self.nodes.get(to).is_some_and(SimNode::is_live);
            if !up
                || !self.net.connected(m.from, m.to)
                || (!quiet && self.chance(self.cfg.drop_per_mille))
            {
                self.stats.messages_dropped += 1;
                continue;
            }
            self.stats.messages_delivered += 1;
            self.trace(&[
                5,
                m.from,
                m.to,
                m.get_msg_type() as u64,
                m.term,
                m.index,
                m.commit,
            ]);
            self.nodes[to].step(m);
        }
    }

    fn clients(&mut self) {
        for c in self.workload.due(self.now) {
            let leaders: Vec<usize> = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].is_leader())
                .collect();
            if leaders.is_empty() {
                self.workload.no_leader(c, self.now);
                continue;
            }
            let pick = leaders[self.rng.below(leaders.len() as u64) as usize];
            let Some(view) = self.nodes[pick].state() else {
                continue;
            };
            let Some(cmd) = self.workload.command(c, view, self.now, &mut self.rng) else {
                continue;
            };
            self.next_request += 1;
            let req = self.next_request;
            match self.nodes[pick].propose(req, &cmd) {
                Some(index) => {
                    self.requests.insert(req, c);
                    self.workload.sent(c, req, self.now);
                    self.stats.proposals += 1;
                    self.trace(&[6, pick as u64, req, index]);
                }
                None => self.workload.no_leader(c, self.now),
            }
        }
    }

    fn ready(&mut self, i: usize) -> Result<(), Broken> {
        let id = self.nodes[i].id;
        let (msgs, applied, answers) = self.nodes[i]
            .handle_ready(&mut self.decoded)
            .map_err(|e| (Invariant::Harness, e))?;
        for m in msgs {
            self.stats.messages_sent += 1;
            if !self.net.connected(m.from, m.to) {
                self.stats.messages_dropped += 1;
                continue;
            }
            let delay = 1 + self.rng.below(self.cfg.max_delay_ms.max(1));
            if self.chance(self.cfg.duplicate_per_mille) {
                let again = 1 + self.rng.below(self.cfg.max_delay_ms.max(1) * 2);
                self.stats.messages_duplicated += 1;
                self.net.send(self.now + again, m.clone());
            }
            self.net.send(self.now + delay, m);
        }
        for e in &applied {
            self.trace(&[7, id, e.index, e.term, e.data_hash, e.state_digest]);
            self.checker.applied(i, id, e)?;
        }
        if let Some(state) = self.nodes[i].state() {
            self.checker.audit(id, state)?;
        }
        for a in answers {
            let Some(c) = self.requests.remove(&a.request) else {
                continue;
            };
            self.trace(&[8, a.request, a.index, u64::from(a.outcome.is_some())]);
            if a.outcome.is_some() {
                let hash = applied
                    .iter()
                    .find(|e| e.index == a.index)
                    .map_or(0, |e| e.data_hash);
                self.checker.acked(a.index, hash)?;
            }
            if let Some(Ok(events)) = &a.outcome {
                for ev in events {
                    match ev {
                        Event::LeaseGranted { .. } => self.stats.lease_grants += 1,
                        Event::LeaseRevoked { .. } => {}
                        Event::EpochRaised { .. }
                            if !events.iter().any(|e| matches!(e, Event::Promoted { .. })) =>
                        {
                            self.stats.fences += 1
                        }
                        _ => {}
                    }
                }
            }
            self.workload.answered(
                c,
                a.request,
                a.outcome.as_ref(),
                self.now,
                &mut self.rng,
                &mut self.stats,
            );
        }
        Ok(())
    }

    /// After the quiet period: every node is up, has applied every acknowledged entry, and its
    /// whole audit chain verifies.
    fn final_check(&mut self) -> Result<(), Violation> {
        let mut result = Ok(());
        for n in &self.nodes {
            let applied = n.raft_status().map_or(0, |s| s.3);
            if let Err(b) = self.checker.caught_up(n.id, applied) {
                result = Err(b);
                break;
            }
        }
        // The longest chain is verified whole; every other node's chain must be a prefix of it
        // (same length and head hash as the longest chain at that length).
        let longest = self
            .nodes
            .iter()
            .filter_map(|n| n.state().map(|s| (n.id, s.audit())))
            .max_by_key(|(_, a)| a.len());
        if let (Ok(()), Some((id, chain))) = (&result, longest) {
            if let Err(e) = chain.verify() {
                result = Err((Invariant::AuditChain, format!("node {id}: {e}")));
            }
            for n in &self.nodes {
                let Some(mine) = n.state().map(State::audit) else {
                    continue;
                };
                let same = mine.is_empty()
                    || chain
                        .records()
                        .get(mine.len() - 1)
                        .is_some_and(|r| r.hash == mine.head_hash());
                if result.is_ok() && !same {
                    result = Err((
                        Invariant::AuditChain,
                        format!(
                            "node {}: audit chain of {} records is not a prefix of node {id}'s",
                            n.id,
                            mine.len()
                        ),
                    ));
                }
            }
        }
        result.map_err(|(invariant, detail)| {
            let v = Violation {
                seed: self.seed,
                step: self.step + 1,
                at_ms: self.now,
                invariant,
                detail,
            };
            self.failed = Some(v.clone());
            v
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(seed: u64) -> SimConfig {
        SimConfig {
            steps: 200,
            quiet_steps: 100,
            ..SimConfig::for_seed(seed)
        }
    }

    #[test]
    fn same_seed_replays_the_same_run() {
        let a = Sim::run(7, short(7));
        let b = Sim::run(7, short(7));
        assert_eq!(a, b);
        let c = Sim::run(8, short(8));
        assert_ne!(
            a.digest, c.digest,
            "different seeds should give different runs"
        );
    }

    #[test]
    fn cluster_elects_commits_and_acknowledges() {
        let r = Sim::run(11, short(11));
        assert_eq!(r.violation, None);
        assert!(r.stats.elections >= 1, "{}", r.stats);
        assert!(r.stats.acked > 10, "{}", r.stats);
        assert!(r.stats.lease_grants >= 1, "{}", r.stats);
    }

    #[test]
    fn violation_names_seed_step_and_invariant() {
        let v = Violation {
            seed: 42,
            step: 17,
            at_ms: 850,
            invariant: Invariant::TwoLiveLeases,
            detail: "x".into(),
        };
        let s = v.to_string();
        assert!(s.contains("seed 42 step 17"), "{s}");
        assert!(s.contains("two-live-leases"), "{s}");
    }
}
