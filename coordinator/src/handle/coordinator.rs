//! The coordinator handle: the raft node with the replicated state machine, the leader's live
//! figures, the run drivers and the network context, shared by the admin API, the background
//! work and the runbook executor; proposing (on the leader or via it) and reading the state.
//! Acts: raft proposals and calls to the leader.

use super::drivers::Drivers;
use super::live::{Live, LiveGroup};
use crate::audit::backfill::{evictable, gap_after_restore};
use crate::audit::store::AuditStore;
use crate::raft::{RaftError, RaftHandle, StateMachine};
use crate::state::{self, ClusterSettings, Command, GroupSpec, SiteSpec, State};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::clock::{Clock, SlewedClock};
use tandem_core::config::Topology;
use tandem_core::net::Net;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::ProposeRequest;
use tonic::Status;

/// How many recent audit records the state keeps in memory (and in every raft snapshot) once
/// they are in the audit store, unless `[cluster] audit_memory_records` says otherwise: about
/// 2 MB at the size of RPO summaries.
pub const AUDIT_TAIL_KEEP: u64 = 4_096;

/// The replicated state machine as raft-rs sees it: JSON commands in, JSON results out. The
/// audit records it appends are written to the audit store as they are applied, and the state
/// keeps only a tail of them.
#[derive(Debug)]
pub struct CoordinatorSm {
    /// The state.
    pub state: State,
    /// The audit chain on disk, once the raft node opened its store (`None`: every record stays
    /// in memory, as in tests that drive the state machine without a store).
    pub audit: Option<AuditStore>,
    /// How many of the newest records stay in memory once on disk ([`AUDIT_TAIL_KEEP`] unless
    /// configured).
    pub tail_keep: u64,
}

impl Default for CoordinatorSm {
    fn default() -> Self {
        CoordinatorSm::with_tail_keep(AUDIT_TAIL_KEEP)
    }
}

impl CoordinatorSm {
    /// An empty state machine that keeps the newest `tail_keep` audit records in memory (at
    /// least 4).
    pub fn with_tail_keep(tail_keep: u64) -> Self {
        CoordinatorSm {
            state: State::default(),
            audit: None,
            tail_keep: tail_keep.max(4),
        }
    }

    /// Writes the records appended since the store's end, then drops from the state's tail the
    /// records the store holds, beyond the last `tail_keep` (in batches of a quarter of
    /// that). A failed write drops nothing: the records stay in memory and are written with the
    /// next ones.
    fn persist_audit(&mut self) {
        let Some(store) = &self.audit else { return };
        let chain = self.state.audit();
        let written = match store.end() {
            Ok(end) => end,
            Err(e) => {
                tracing::error!(error = %e, "audit store unreadable; records stay in memory");
                return;
            }
        };
        let new = chain
            .tail_range(written.max(chain.tail_first()), usize::MAX)
            .unwrap_or_default();
        if let Err(e) = store.put(new) {
            tracing::error!(error = %e, "audit records not written; they stay in memory");
            return;
        }
        let next = chain.len() as u64;
        let end = written.max(next);
        let drop = evictable(chain.tail_first(), next, end, self.tail_keep);
        if drop >= self.tail_keep / 4 {
            let before = chain.tail_first() + drop;
            self.state.drop_audit_before(before);
        }
    }

    /// After a snapshot was installed: the records the node now lacks (between what its store
    /// held and the snapshot's tail) become its gap, and the tail is written.
    fn store_restored_tail(&mut self) -> Result<(), String> {
        let Some(store) = &self.audit else {
            return Ok(());
        };
        let chain = self.state.audit();
        let end = store.end().map_err(|e| e.to_string())?;
        let gap = gap_after_restore(
            store.gap().map_err(|e| e.to_string())?,
            end,
            chain.tail_first(),
        );
        store.put(chain.records()).map_err(|e| e.to_string())?;
        store.set_gap(gap).map_err(|e| e.to_string())?;
        if let Some(g) = gap {
            tracing::warn!(%g, "audit records missing after a snapshot: back-filling from a peer");
        }
        self.persist_audit();
        Ok(())
    }
}

impl StateMachine for CoordinatorSm {
    fn attach(&mut self, db: &sled::Db) -> Result<(), String> {
        self.audit = Some(AuditStore::open(db).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        let out = match serde_json::from_slice::<Command>(data) {
            Ok(cmd) => match state::apply(&mut self.state, &cmd) {
                Ok(events) => json!({ "ok": events }),
                Err(rej) => json!({ "rejected": rej, "message": rej.to_string() }),
            },
            Err(e) => json!({ "rejected": null, "message": format!("undecodable command: {e}") }),
        };
        self.persist_audit();
        serde_json::to_vec(&out).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.state = State::restore(snapshot).map_err(|e| e.to_string())?;
        self.store_restored_tail()
    }
}

pub(crate) struct Inner {
    pub(crate) topo: Topology,
    pub(crate) name: String,
    pub(crate) raft: RaftHandle<CoordinatorSm>,
    /// Command times (leases, failure detection, audit): slewed, so a step of the system
    /// clock does not expire every lease at once.
    pub(crate) clock: SlewedClock,
    pub(crate) live: Mutex<Live>,
    /// raft id -> coordinator node name
    pub(crate) names: BTreeMap<u64, String>,
    /// Runs this node drives while it leads.
    pub(crate) drivers: Drivers,
    /// How this node dials and serves (plaintext or mTLS).
    pub(crate) net: Net,
    /// Certificate not-after per node, from heartbeats.
    pub(crate) cert_seen: Mutex<BTreeMap<String, i64>>,
    /// Refused calls counted per (actor, call) window, recorded in aggregate.
    pub(crate) refusals: Mutex<crate::refusals::Refusals>,
}

/// A handle to the running coordinator, for the admin API implementation.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) use tandem_core::bytes::lock;

impl Coordinator {
    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The topology this coordinator runs.
    pub(crate) fn topo(&self) -> &Topology {
        &self.inner.topo
    }

    /// The runs this node drives.
    pub(crate) fn drivers(&self) -> &Drivers {
        &self.inner.drivers
    }

    /// The leader's live figures of a group (from heartbeats).
    pub(crate) fn live_group(&self, group: &str) -> Option<LiveGroup> {
        lock(&self.inner.live).groups.get(group).cloned()
    }

    pub(crate) fn is_leader(&self) -> bool {
        let st = self.inner.raft.status();
        st.leader_id == Some(st.id)
    }

    fn leader_addr(&self) -> Option<String> {
        let st = self.inner.raft.status();
        let leader = st.leader_id?;
        if leader == st.id {
            return None;
        }
        let name = self.inner.names.get(&leader)?;
        self.inner
            .topo
            .node(name)
            .map(|n| format!("http://{}", n.listen))
    }

    pub(crate) async fn leader_client(
        &self,
    ) -> Result<CoordinatorClient<tonic::transport::Channel>, Status> {
        let addr = self
            .leader_addr()
            .ok_or_else(|| Status::unavailable("no coordinator leader known (no quorum?)"))?;
        let net = &self.inner.net;
        let ep = net
            .endpoint(&addr)
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(60));
        let ch = net
            .connect(ep)
            .await
            .map_err(|e| Status::unavailable(format!("leader {addr} unreachable: {e}")))?;
        Ok(tandem_core::grpc_limits!(CoordinatorClient::new(ch)))
    }

    /// This node's network context.
    pub(crate) fn net(&self) -> &Net {
        &self.inner.net
    }

    pub(crate) fn is_coordinator(&self, node: &str) -> bool {
        self.inner.names.values().any(|n| n == node)
    }

    /// Proposes `cmd` on the leader, from any node (a follower hands it over with Propose).
    pub(crate) async fn propose_via_leader(&self, cmd: &Command) -> Result<(), Status> {
        if self.is_leader() {
            return self.propose_cmd(cmd.clone()).await.map(|_| ());
        }
        let command = serde_json::to_string(cmd).map_err(|e| Status::internal(e.to_string()))?;
        let mut c = self.leader_client().await?;
        c.propose(ProposeRequest { command }).await.map(|_| ())
    }

    /// Proposes a command on this node (which must be the leader), stamped with the leader's
    /// time; returns the events.
    pub(crate) async fn propose_cmd(&self, mut cmd: Command) -> Result<Value, Status> {
        cmd.stamp(self.now_ms());
        let bytes = serde_json::to_vec(&cmd).map_err(|e| Status::internal(e.to_string()))?;
        let committed = self.inner.raft.propose(bytes).await.map_err(|e| match e {
            RaftError::NotLeader { .. } => Status::unavailable(format!("not the leader: {e}")),
            other => Status::unavailable(other.to_string()),
        })?;
        let reply: Value = serde_json::from_slice(&committed.reply)
            .map_err(|e| Status::internal(format!("bad apply reply: {e}")))?;
        if let Some(events) = reply.get("ok") {
            Ok(events.clone())
        } else {
            let msg = reply
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("refused")
                .to_owned();
            Err(Status::failed_precondition(msg))
        }
    }

    /// The raft index committed last (as this node knows it).
    pub(crate) fn commit_index(&self) -> u64 {
        self.inner.raft.status().commit
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let sm = self.inner.raft.state_machine();
        let guard = lock(&sm);
        f(&guard.state)
    }

    pub(crate) fn bootstrap_command(&self) -> Command {
        let t = &self.inner.topo;
        let settings = ClusterSettings {
            lease_ttl_ms: t.cluster.lease_ttl.as_millis(),
            drift_margin_ms: t.cluster.drift_margin.as_millis(),
            detect_after_ms: t.cluster.detect_after.as_millis(),
            rpo_audit_every_ms: Some(t.cluster.rpo_audit_interval.as_millis()),
        };
        let sites: Vec<SiteSpec> = t
            .sites
            .iter()
            .map(|s| SiteSpec {
                name: s.name.clone(),
                witness: s.witness,
                jurisdiction: s.jurisdiction.clone(),
            })
            .collect();
        let groups: Vec<GroupSpec> = t
            .groups
            .iter()
            .map(|g| GroupSpec {
                name: g.name.clone(),
                primary: g.primary.clone(),
                replica: g.replica.clone(),
                mode: g.mode,
                rpo_target_ms: g.rpo_target.as_millis(),
                allowed_jurisdictions: g.allowed_jurisdictions.clone(),
            })
            .collect();
        Command::Bootstrap {
            at_ms: 0,
            actor: self.inner.name.clone(),
            settings,
            sites,
            groups,
        }
    }
}
