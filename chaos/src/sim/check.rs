//! The invariants checked after every simulation step, across every node's applied history.

use super::node::AppliedEntry;
use super::workload::Replicator;
use super::Invariant;
use std::collections::BTreeMap;
use tandem_coordinator::audit::{verify_segment, ZERO_HASH};
use tandem_coordinator::state::State;

/// What the first node to apply an index saw: the reference every other node must match.
#[derive(Debug, Clone, Copy)]
struct Canonical {
    term: u64,
    data_hash: u64,
    state_digest: u64,
    node: u64,
}

/// Per-node checker memory, reset when the node restarts (its state is rebuilt by replay).
#[derive(Debug, Clone, Default)]
struct NodeMemory {
    /// Highest epoch seen per group in this incarnation.
    epochs: BTreeMap<String, u64>,
}

/// A broken invariant: which one, and what was seen.
pub(crate) type Broken = (Invariant, String);

/// The invariant checker.
pub(crate) struct Checker {
    /// `canonical[i - 1]` is the reference for raft index `i`.
    canonical: Vec<Canonical>,
    /// The primary site of every (group, epoch) any node ever applied.
    primaries: BTreeMap<(String, u64), (String, u64)>,
    nodes: Vec<NodeMemory>,
    /// Entries a client saw applied: index -> data hash.
    acked: BTreeMap<u64, u64>,
    /// Audit records verified so far (on any node) and the hash of the last one.
    audit_next: u64,
    audit_prev: String,
}

impl Checker {
    /// A checker for `n` nodes.
    pub fn new(n: usize) -> Checker {
        Checker {
            canonical: Vec::new(),
            primaries: BTreeMap::new(),
            nodes: vec![NodeMemory::default(); n],
            acked: BTreeMap::new(),
            audit_next: 0,
            audit_prev: ZERO_HASH.to_string(),
        }
    }

    /// Forgets what a node's previous incarnation applied (it replays from index 1).
    pub fn restarted(&mut self, node: usize) {
        self.nodes[node] = NodeMemory::default();
    }

    /// Highest index any client saw applied.
    pub fn max_acked(&self) -> u64 {
        self.acked.keys().next_back().copied().unwrap_or(0)
    }

    /// Number of indexes committed somewhere.
    pub fn committed_len(&self) -> u64 {
        self.canonical.len() as u64
    }

    /// (a) committed entries are identical on every node (logs are prefixes of each other),
    /// and applying them yields the same state; (b) epochs only grow; (c) one primary site per
    /// (group, epoch); (e) an acknowledged entry is what every node applies at its index.
    pub fn applied(&mut self, node: usize, node_id: u64, e: &AppliedEntry) -> Result<(), Broken> {
        let pos = usize::try_from(e.index.saturating_sub(1)).unwrap_or(usize::MAX);
        if pos < self.canonical.len() {
            let c = self.canonical[pos];
            if c.term != e.term || c.data_hash != e.data_hash {
                return Err((
                    Invariant::LogPrefix,
                    format!(
                        "index {}: node {node_id} applied term {} data {:016x}, node {} applied term {} data {:016x}",
                        e.index, e.term, e.data_hash, c.node, c.term, c.data_hash
                    ),
                ));
            }
            if c.state_digest != e.state_digest {
                return Err((
                    Invariant::StateDivergence,
                    format!(
                        "index {}: node {node_id} reached state {:016x}, node {} reached {:016x}",
                        e.index, e.state_digest, c.node, c.state_digest
                    ),
                ));
            }
        } else if pos == self.canonical.len() {
            self.canonical.push(Canonical {
                term: e.term,
                data_hash: e.data_hash,
                state_digest: e.state_digest,
                node: node_id,
            });
        } else {
            return Err((
                Invariant::LogPrefix,
                format!(
                    "node {node_id} applied index {} but only {} are known committed",
                    e.index,
                    self.canonical.len()
                ),
            ));
        }
        if let Some(h) = self.acked.get(&e.index) {
            if *h != e.data_hash {
                return Err((
                    Invariant::AckedLost,
                    format!(
                        "index {}: acknowledged entry {:016x}, node {node_id} applied {:016x}",
                        e.index, h, e.data_hash
                    ),
                ));
            }
        }
        for (group, epoch, primary) in &e.groups {
            let mem = &mut self.nodes[node];
            let last = mem.epochs.entry(group.clone()).or_insert(0);
            if *epoch < *last {
                return Err((
                    Invariant::EpochRegressed,
                    format!(
                        "node {node_id} index {}: group {group} epoch {epoch} after {}",
                        e.index, *last
                    ),
                ));
            }
            *last = *epoch;
            match self.primaries.get(&(group.clone(), *epoch)) {
                Some((site, at)) if site != primary => {
                    return Err((
                        Invariant::TwoPrimariesInEpoch,
                        format!(
                            "group {group} epoch {epoch}: primary {site} (index {at}) and {primary} (node {node_id} index {})",
                            e.index
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    self.primaries
                        .insert((group.clone(), *epoch), (primary.clone(), e.index));
                }
            }
        }
        Ok(())
    }

    /// (e) records an acknowledged entry; it must match what was committed at its index.
    pub fn acked(&mut self, index: u64, data_hash: u64) -> Result<(), Broken> {
        let pos = usize::try_from(index.saturating_sub(1)).unwrap_or(usize::MAX);
        match self.canonical.get(pos) {
            Some(c) if c.data_hash == data_hash => {
                self.acked.insert(index, data_hash);
                Ok(())
            }
            other => Err((
                Invariant::AckedLost,
                format!("acknowledged index {index} ({data_hash:016x}) but committed {other:?}"),
            )),
        }
    }

    /// (f) the node's audit chain verifies. Incremental: the records past the longest chain
    /// verified so far are verified, chained to its head hash. Every node applying an index
    /// reaches the same state digest, which covers the audit length and head hash, so all
    /// nodes share one chain and each record needs verifying once.
    pub fn audit(&mut self, node_id: u64, state: &State) -> Result<(), Broken> {
        let chain = state.audit();
        let fresh = chain.range(self.audit_next, usize::MAX);
        if fresh.is_empty() {
            return Ok(());
        }
        verify_segment(fresh, self.audit_next, &self.audit_prev).map_err(|e| {
            (
                Invariant::AuditChain,
                format!("node {node_id}: audit chain: {e}"),
            )
        })?;
        self.audit_next = chain.len() as u64;
        self.audit_prev = chain.head_hash().to_string();
        Ok(())
    }

    /// (d) at most one replicator believes it holds a live lease at `now` (each writes only
    /// while `now < expires_ms` of the last grant or renewal it saw acknowledged).
    pub fn leases(&self, replicators: &[Replicator], now: i64) -> Result<(), Broken> {
        let live: Vec<String> = replicators
            .iter()
            .filter_map(|r| {
                r.belief
                    .filter(|b| now < b.expires_ms)
                    .map(|b| format!("{} (epoch {}, until {})", r.node, b.epoch.0, b.expires_ms))
            })
            .collect();
        if live.len() > 1 {
            return Err((
                Invariant::TwoLiveLeases,
                format!("at {now} ms these hold a live lease: {}", live.join(", ")),
            ));
        }
        Ok(())
    }

    /// Every acknowledged entry is applied, identically, on a node that applied `applied`
    /// entries (the final check once the cluster is healed and quiet).
    pub fn caught_up(&self, node_id: u64, applied: u64) -> Result<(), Broken> {
        let want = self.max_acked();
        if applied < want {
            return Err((
                Invariant::AckedLost,
                format!(
                    "node {node_id} applied only {applied} entries after the quiet period; acknowledged entries reach {want}"
                ),
            ));
        }
        Ok(())
    }
}
