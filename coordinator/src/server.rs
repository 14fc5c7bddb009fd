//! The coordinator process: the raft node with the replicated state machine, the admin API
//! (status, audit, propose, heartbeat, operate), the failure detector and RPO sampling.
//! Failovers, switchovers, drills and failbacks are runbook runs driven by [`crate::runs`].
//! Every decision goes through raft; this module only stamps time, forwards to the leader and
//! waits.

use crate::raft::{self, RaftError, RaftHandle, RaftNodeConfig, StateMachine};
use crate::state::{
    self, ClusterSettings, Command, GroupSpec, GroupState, LeaseStatus as StLease, Mode, SiteSpec,
    SiteStatus, State, COORDINATOR_ACTOR,
};
use crate::status::{
    CertStatus, ClusterStatus, GroupStatus, LeaseStatus, MemberStatus, ResourceStatus,
    SiteStatus as StSite, TlsStatus,
};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tandem_core::certs::Role;
use tandem_core::clock::{Clock, SlewedClock};
use tandem_core::config::{NodeRole, ResourceKind, Topology};
use tandem_core::net::{Caller, Net};
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::coordinator_server::{Coordinator as CoordinatorApi, CoordinatorServer};
use tandem_core::proto::{
    AuditReply, AuditRequest, GroupLease, HeartbeatReply, HeartbeatRequest, OperateReply,
    OperateRequest, ProposeReply, ProposeRequest, StatusReply, StatusRequest,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// Errors of the coordinator process.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node is not a coordinator of the topology.
    #[error("{0}")]
    Topology(String),
    /// Raft failed to start.
    #[error("raft: {0}")]
    Raft(#[from] RaftError),
    /// The gRPC server failed.
    #[error("grpc server on {addr}: {source}")]
    Serve {
        /// Listen address.
        addr: String,
        /// Cause.
        source: tonic::transport::Error,
    },
    /// I/O (data dir).
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The replicated state machine as raft-rs sees it: JSON commands in, JSON results out.
#[derive(Debug, Default)]
pub struct CoordinatorSm {
    /// The state.
    pub state: State,
}

impl StateMachine for CoordinatorSm {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        let out = match serde_json::from_slice::<Command>(data) {
            Ok(cmd) => match state::apply(&mut self.state, &cmd) {
                Ok(events) => json!({ "ok": events }),
                Err(rej) => json!({ "rejected": rej, "message": rej.to_string() }),
            },
            Err(e) => json!({ "rejected": null, "message": format!("undecodable command: {e}") }),
        };
        serde_json::to_vec(&out).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.state.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.state = State::restore(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The last report of a group's replica replicator, as the leader heard it.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaReport {
    /// The reporter's epoch.
    pub epoch: u64,
    /// The reporting node.
    pub node: String,
    /// Its site.
    pub site: String,
    /// Its state (`in-sync`, `resyncing`, ...).
    pub state: String,
    /// Its durable seq.
    pub durable_seq: u64,
    /// When it was heard (leader clock).
    pub at_ms: i64,
    /// What it says of itself (resync progress, last error).
    pub reason: String,
}

/// Largest RPO (ms) at which a streaming replica counts as caught up for a group to be
/// protected again: under continuous writes the replica is always a few frames behind.
pub const IN_SYNC_MAX_RPO_MS: i64 = 1_000;

/// Whether a replica that reports itself in sync has caught up with the primary, from the
/// primary's last report (`captured`, `acked` by the replica, `rpo_ms`) and the replica's own
/// durable seq. Pure.
pub fn replica_caught_up(captured: u64, acked: u64, rpo_ms: i64, replica_durable: u64) -> bool {
    let everything = acked >= captured && replica_durable >= captured;
    let streaming = replica_durable >= acked && rpo_ms <= IN_SYNC_MAX_RPO_MS;
    everything || streaming
}

/// Live (not replicated) figures the leader keeps from replicator heartbeats.
#[derive(Debug, Default, Clone)]
pub(crate) struct LiveGroup {
    rpo_ms: i64,
    last_captured_seq: u64,
    durable_seq: u64,
    bytes_pending: u64,
    bytes_raw: u64,
    bytes_shipped: u64,
    throughput_bps: f64,
    reported_ms: i64,
    reporter: String,
    reporter_role: String,
    reporter_epoch: u64,
    reporter_state: String,
    reason: String,
    /// (oldest recoverable ms, seq) from the replica's history, if it keeps one.
    history_oldest: Option<(i64, u64)>,
    /// Epoch and time at which a replicator last reported itself primary and ready.
    primary_ready: Option<(u64, String, i64)>,
    /// The replica's last report.
    pub replica: Option<ReplicaReport>,
}

impl LiveGroup {
    /// RPO now as the primary last reported it (ms).
    pub fn rpo_ms(&self) -> i64 {
        self.rpo_ms
    }
    /// Highest seq the primary captured.
    pub fn last_captured_seq(&self) -> u64 {
        self.last_captured_seq
    }
    /// Highest seq durable on the replica, as the primary knows it.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }
    /// When the primary last reported (leader clock).
    pub fn reported_ms(&self) -> i64 {
        self.reported_ms
    }
    /// The primary reporter's epoch.
    pub fn reporter_epoch(&self) -> u64 {
        self.reporter_epoch
    }
}

#[derive(Debug, Default)]
struct Live {
    /// node -> last heartbeat (unix ms, leader clock)
    node_seen: HashMap<String, i64>,
    groups: HashMap<String, LiveGroup>,
    /// When this node last became leader (failure-detector grace).
    leader_since_ms: Option<i64>,
    last_rpo_sample_ms: i64,
}

struct Inner {
    topo: Topology,
    name: String,
    raft: RaftHandle<CoordinatorSm>,
    /// Command times (leases, failure detection, audit): slewed, so a step of the system
    /// clock does not expire every lease at once.
    clock: SlewedClock,
    live: Mutex<Live>,
    /// raft id -> coordinator node name
    names: BTreeMap<u64, String>,
    /// Runs this node drives while it leads.
    drivers: crate::runs::Drivers,
    /// How this node dials and serves (plaintext or mTLS).
    net: Net,
    /// Certificate not-after per node, from heartbeats.
    cert_seen: Mutex<BTreeMap<String, i64>>,
}

/// What a call of the admin API needs from its caller's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Any role (viewer, auditor, operator) or any node: status.
    Status,
    /// Auditor or operator, or a coordinator: the audit chain, evidence, run reports.
    Audit,
    /// Operator, or a node (replicators propose lease releases and their own records).
    Propose,
    /// Operator, or a coordinator (forwarding): runs, drills, switchover, failover, approvals.
    Operate,
}

/// A handle to the running coordinator, for the admin API implementation.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the coordinator node `name` of `topo` until `shutdown` resolves.
///
/// # Errors
/// The node is not a coordinator, its data dir cannot be made, raft does not start, or its
/// listen address cannot be served.
pub async fn run(
    topo: Topology,
    name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let node = topo
        .node(&name)
        .filter(|n| n.role == NodeRole::Coordinator)
        .ok_or_else(|| ServerError::Topology(format!("{name} is not a coordinator")))?
        .clone();
    let id = topo
        .raft_id(&name)
        .ok_or_else(|| ServerError::Topology(format!("{name} has no raft id")))?;
    let mut peers = BTreeMap::new();
    let mut names = BTreeMap::new();
    for c in topo.coordinators() {
        peers.insert(c.raft_id, format!("http://{}", c.node.listen));
        names.insert(c.raft_id, c.node.name.clone());
    }
    let data_dir = topo.node_data_dir(&node);
    std::fs::create_dir_all(&data_dir)?;
    let net = Net::for_node(&topo, &name).map_err(|e| ServerError::Topology(e.to_string()))?;
    net.spawn_reloader();
    let mut cfg = RaftNodeConfig::new(id, peers, data_dir.join("raft"));
    cfg.snapshot_every = 2000;
    cfg.net = net.clone();
    cfg.peer_names = names.clone();
    let handle = raft::start(cfg, CoordinatorSm::default()).await?;
    let inner = Arc::new(Inner {
        topo: topo.clone(),
        name: name.clone(),
        raft: handle.clone(),
        clock: SlewedClock::new(),
        live: Mutex::new(Live::default()),
        names,
        drivers: crate::runs::Drivers::default(),
        net: net.clone(),
        cert_seen: Mutex::new(BTreeMap::new()),
    });
    let coord = Coordinator {
        inner: inner.clone(),
    };
    let addr: SocketAddr = node
        .listen
        .parse()
        .map_err(|e| ServerError::Topology(format!("{}: bad listen address: {e}", node.listen)))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let bg = tokio::spawn(background(coord.clone(), stop_rx.clone()));
    serve_metrics(&coord, node.metrics_listen.as_deref(), stop_rx.clone()).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(node = %name, %addr, raft_id = id, tls = net.is_tls(), "coordinator listening");
    let api = tandem_core::grpc_limits!(CoordinatorServer::new(coord.clone()));
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(raft::peer_service(&handle))
        .add_service(api);
    let result = net.serve(router, listener, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = bg.await;
    let _ = handle.shutdown().await;
    result.map_err(|source| ServerError::Serve {
        addr: node.listen.clone(),
        source,
    })
}

impl Coordinator {
    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The topology this coordinator runs.
    pub(crate) fn topo(&self) -> &Topology {
        &self.inner.topo
    }

    /// The runs this node drives.
    pub(crate) fn drivers(&self) -> &crate::runs::Drivers {
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

    async fn leader_client(&self) -> Result<CoordinatorClient<tonic::transport::Channel>, Status> {
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

    fn is_coordinator(&self, node: &str) -> bool {
        self.inner.names.values().any(|n| n == node)
    }

    /// Checks the caller's certificate against what `call` needs. Returns the certificate's
    /// name for a person or tool (the actor to record), `None` for plaintext and nodes. Every
    /// refusal is recorded in the audit chain (actor, role, call, reason).
    async fn authorize<T>(
        &self,
        req: &Request<T>,
        call: &str,
        need: Need,
    ) -> Result<Option<String>, Status> {
        let (actor, role, refusal) = match self.inner.net.caller(req) {
            Ok(Caller::Anonymous) => return Ok(None),
            Ok(Caller::Node(n)) => {
                if self.is_coordinator(&n) || matches!(need, Need::Status | Need::Propose) {
                    return Ok(None);
                }
                let why = format!("node {n} may not call {call}");
                (n, "node".to_owned(), Status::permission_denied(why))
            }
            Ok(Caller::Client { name, role }) => {
                let ok = match need {
                    Need::Status => true,
                    Need::Audit => matches!(role, Role::Operator | Role::Auditor),
                    Need::Propose | Need::Operate => role == Role::Operator,
                };
                if ok {
                    return Ok(Some(name));
                }
                let why = format!("role {role} of {name} may not call {call}");
                (name, role.to_string(), Status::permission_denied(why))
            }
            Err(status) => ("unknown".to_owned(), "none".to_owned(), status),
        };
        warn!(%actor, %role, call, reason = refusal.message(), "admin call refused");
        let cmd = json!({"op": "record", "actor": actor, "kind": "refused", "group": null,
            "detail": {"call": call, "role": role, "reason": refusal.message()}});
        if let Err(e) = self.propose_via_leader(cmd, &actor).await {
            warn!("could not audit a refused call: {}", e.message());
        }
        Err(refusal)
    }

    /// Proposes on the leader, from any node.
    async fn propose_via_leader(&self, cmd: Value, actor: &str) -> Result<(), Status> {
        if self.is_leader() {
            return self.propose(cmd).await.map(|_| ());
        }
        let mut c = self.leader_client().await?;
        c.propose(ProposeRequest {
            command: cmd.to_string(),
            actor: actor.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Proposes a command on this node (which must be the leader); returns the events.
    pub(crate) async fn propose(&self, mut cmd: Value) -> Result<Value, Status> {
        if let Some(obj) = cmd.as_object_mut() {
            obj.insert("at_ms".into(), json!(self.now_ms()));
        }
        let parsed: Command = serde_json::from_value(cmd)
            .map_err(|e| Status::invalid_argument(format!("bad command: {e}")))?;
        let bytes = serde_json::to_vec(&parsed).map_err(|e| Status::internal(e.to_string()))?;
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

    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let sm = self.inner.raft.state_machine();
        let guard = lock(&sm);
        f(&guard.state)
    }

    fn bootstrap_command(&self) -> Value {
        let t = &self.inner.topo;
        let settings = ClusterSettings {
            lease_ttl_ms: t.cluster.lease_ttl.as_millis(),
            drift_margin_ms: t.cluster.drift_margin.as_millis(),
            detect_after_ms: t.cluster.detect_after.as_millis(),
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
                mode: match g.mode {
                    tandem_core::config::Mode::Sync => Mode::Sync,
                    tandem_core::config::Mode::Async => Mode::Async,
                },
                rpo_target_ms: g.rpo_target.as_millis(),
                allowed_jurisdictions: g.allowed_jurisdictions.clone(),
            })
            .collect();
        json!({
            "op": "bootstrap", "at_ms": 0, "actor": self.inner.name,
            "settings": settings, "sites": sites, "groups": groups,
        })
    }

    fn tls_status(&self, now_ms: i64) -> TlsStatus {
        let net = &self.inner.net;
        let mut seen = lock(&self.inner.cert_seen).clone();
        if let Some(at) = net.cert_not_after() {
            seen.insert(self.inner.name.clone(), at);
        }
        if net.is_tls() {
            // Nodes not heard from: their certificate file, when this machine has it.
            for n in &self.inner.topo.nodes {
                if !seen.contains_key(&n.name) {
                    let p = tandem_core::certs::cert_path(&self.inner.topo.tls.dir, &n.name);
                    if let Ok(at) = tandem_core::certs::cert_file_not_after(&p) {
                        seen.insert(n.name.clone(), at);
                    }
                }
            }
        }
        TlsStatus {
            enabled: net.is_tls(),
            certs: seen
                .into_iter()
                .map(|(node, not_after)| CertStatus {
                    node,
                    not_after,
                    expires_in_s: not_after - now_ms / 1000,
                })
                .collect(),
        }
    }

    fn status_doc(&self, stale: bool) -> ClusterStatus {
        let rs = self.inner.raft.status();
        let now = self.now_ms();
        let live = lock(&self.inner.live);
        let t = &self.inner.topo;
        let members = t
            .coordinators()
            .iter()
            .map(|c| MemberStatus {
                name: c.node.name.clone(),
                id: c.raft_id,
                site: c.node.site.clone(),
                address: c.node.listen.clone(),
                role: if rs.leader_id == Some(c.raft_id) {
                    "leader".into()
                } else if rs.leader_id.is_some() {
                    "follower".into()
                } else {
                    "unknown".into()
                },
            })
            .collect();
        self.read(|s| {
            let sites = t
                .sites
                .iter()
                .map(|site| {
                    let st = s.site(&site.name);
                    let last = t
                        .nodes
                        .iter()
                        .filter(|n| n.site == site.name && n.role == NodeRole::Replicator)
                        .filter_map(|n| live.node_seen.get(&n.name).copied())
                        .max();
                    StSite {
                        name: site.name.clone(),
                        witness: site.witness,
                        status: match st.map(|x| x.status) {
                            Some(SiteStatus::Up) => "up".into(),
                            Some(SiteStatus::Down) => "down".into(),
                            _ => "unknown".into(),
                        },
                        last_heartbeat_ago_ms: last.map(|l| now - l),
                    }
                })
                .collect();
            let groups = t
                .groups
                .iter()
                .filter_map(|cg| {
                    let g = s.group(&cg.name)?;
                    let lg = live.groups.get(&cg.name).cloned().unwrap_or_default();
                    let fresh = now - lg.reported_ms
                        < 3 * t.cluster.heartbeat_interval.as_millis() as i64 + 1000;
                    // RPO now: the primary's live figure while it reports; once it is silent
                    // the data at risk keeps growing with the silence.
                    let rpo_ms = if lg.reported_ms == 0 {
                        g.progress.rpo_ms as i64
                    } else if fresh || lg.rpo_ms == 0 {
                        lg.rpo_ms
                    } else {
                        lg.rpo_ms + (now - lg.reported_ms)
                    };
                    let resources = cg
                        .resources
                        .iter()
                        .map(|r| {
                            let primary_path = t
                                .resource_path(cg, r, &g.primary_site)
                                .map(|p| p.display().to_string())
                                .unwrap_or_default();
                            let replica_path = t
                                .resource_path(cg, r, &g.replica_site)
                                .map(|p| p.display().to_string())
                                .unwrap_or_default();
                            let nbd_url = match r.kind {
                                ResourceKind::Volume { .. } => t
                                    .replicators_at(&g.primary_site)
                                    .iter()
                                    .find_map(|n| n.nbd_listen.clone())
                                    .map(|a| format!("nbd://{a}/{}", r.name)),
                                _ => None,
                            };
                            let (port, bin_dir) = match &r.kind {
                                ResourceKind::Postgres {
                                    port,
                                    replica_port,
                                    bin_dir,
                                    ..
                                } => (
                                    Some(if g.primary_site == cg.primary {
                                        *port
                                    } else {
                                        *replica_port
                                    }),
                                    Some(bin_dir.display().to_string()),
                                ),
                                _ => (None, None),
                            };
                            ResourceStatus {
                                name: r.name.clone(),
                                kind: r.kind.name().into(),
                                primary_path,
                                replica_path,
                                nbd_url,
                                port,
                                bin_dir,
                            }
                        })
                        .collect();
                    Some(GroupStatus {
                        name: g.name.clone(),
                        primary: g.primary_site.clone(),
                        replica: g.replica_site.clone(),
                        epoch: g.epoch.0,
                        mode: match g.mode {
                            Mode::Sync => "sync".into(),
                            Mode::Async => "async".into(),
                        },
                        state: g.state.as_str().into(),
                        reason: {
                            // The coordinators' reason (site down, failing over), then what
                            // the primary says of its replication (journal, replica).
                            let mut reason = g.reason.clone();
                            if let Some(since) = g.sync_degraded_since {
                                if !reason.is_empty() {
                                    reason.push_str("; ");
                                }
                                reason.push_str(&format!(
                                    "sync degraded since {}: writes acknowledged at {} only; no automatic failover",
                                    crate::evidence::derive::iso_ms(since),
                                    g.primary_site
                                ));
                            }
                            if !lg.reason.is_empty() && fresh {
                                if !reason.is_empty() {
                                    reason.push_str("; ");
                                }
                                reason.push_str(&lg.reason);
                            }
                            // A replica says how far its resync is, its last error, and what
                            // its failback resync kept in quarantine.
                            if let Some(r) = lg
                                .replica
                                .as_ref()
                                .filter(|r| r.epoch == g.epoch.0 && !r.reason.is_empty())
                            {
                                if !reason.is_empty() {
                                    reason.push_str("; ");
                                }
                                reason.push_str(&format!("replica {}: {}", r.site, r.reason));
                            }
                            reason
                        },
                        rpo_ms,
                        rpo_target_ms: g.rpo_target_ms as i64,
                        rto_target_ms: cg.rto_target.as_millis() as i64,
                        paused: g.paused,
                        last_captured_seq: lg.last_captured_seq.max(g.progress.last_captured_seq.0),
                        durable_seq: lg.durable_seq.max(g.progress.durable_seq.0),
                        bytes_pending: lg.bytes_pending,
                        throughput_bps: if fresh { lg.throughput_bps } else { 0.0 },
                        bytes_raw: lg.bytes_raw,
                        bytes_shipped: lg.bytes_shipped,
                        max_bandwidth_bps: cg
                            .bandwidth_at(tandem_core::config::TimeOfDay::of(chrono::Utc::now())),
                        lease: g.lease.as_ref().map(|l| LeaseStatus {
                            holder: l.holder.clone(),
                            epoch: l.epoch.0,
                            expires_ms: l.expires_ms,
                            remaining_ms: l.expires_ms - now,
                            status: match l.status {
                                StLease::Active => "active".into(),
                                StLease::Revoked { .. } => "revoked".into(),
                                StLease::Released { .. } => "released".into(),
                            },
                        }),
                        last_failover_loss_ms: g.last_failover.as_ref().map(|w| w.rpo_ms as i64),
                        history_oldest_ms: lg.history_oldest.map(|h| h.0),
                        history_oldest_seq: lg.history_oldest.map(|h| h.1),
                        sync_degraded_since_ms: g.sync_degraded_since,
                        resources,
                    })
                })
                .collect();
            ClusterStatus {
                cluster: t.cluster.name.clone(),
                answered_by: self.inner.name.clone(),
                leader: rs.leader_id.and_then(|l| self.inner.names.get(&l).cloned()),
                term: rs.term,
                commit_index: rs.commit,
                applied_index: rs.applied,
                stale,
                members,
                sites,
                groups,
                audit_len: s.audit().len() as u64,
                audit_head: s.audit().head_hash().to_owned(),
                tls: self.tls_status(now),
            }
        })
    }
}

#[tonic::async_trait]
impl CoordinatorApi for Coordinator {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.authorize(&req, "status", Need::Status).await?;
        let mut stale = false;
        if !self.is_leader() {
            if let Ok(mut c) = self.leader_client().await {
                if let Ok(r) = c.status(StatusRequest {}).await {
                    return Ok(r);
                }
            }
            stale = true;
        }
        let doc = self.status_doc(stale);
        let json = serde_json::to_string(&doc).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(StatusReply { json }))
    }

    async fn audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditReply>, Status> {
        self.authorize(&req, "audit", Need::Audit).await?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(10_000)
        } as usize;
        let records = self.read(|s| {
            audit_page(
                s.audit_range(r.from_index, limit),
                tandem_core::limits::MAX_AUDIT_REPLY_BYTES,
            )
        });
        Ok(Response::new(AuditReply { records }))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let who = self.authorize(&req, "propose", Need::Propose).await?;
        let mut r = req.into_inner();
        let mut cmd: Value = serde_json::from_str(&r.command)
            .map_err(|e| Status::invalid_argument(format!("command is not JSON: {e}")))?;
        if let Some(name) = who {
            // With TLS, who did it is the certificate's name, never what the client wrote.
            if let Some(obj) = cmd.as_object_mut() {
                if obj.contains_key("actor") {
                    obj.insert("actor".into(), json!(name));
                }
            }
            r.actor = name;
            r.command = cmd.to_string();
        }
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.propose(r).await;
        }
        let events = self.propose(cmd).await?;
        Ok(Response::new(ProposeReply {
            index: self.inner.raft.status().commit,
            events: events.to_string(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        // A heartbeat speaks for node `r.node`: its certificate must name that node (or a
        // coordinator forwarding it to the leader).
        let claimed = req.get_ref().node.clone();
        match self.inner.net.caller(&req)? {
            Caller::Node(n) if n != claimed && !self.is_coordinator(&n) => {
                return Err(Status::permission_denied(format!(
                    "certificate names node {n} but the heartbeat claims to be node {claimed}"
                )));
            }
            Caller::Client { name, role } => {
                return Err(Status::permission_denied(format!(
                    "{name} ({role}) is not a node and may not send heartbeats"
                )));
            }
            _ => {}
        }
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.heartbeat(req.into_inner()).await;
        }
        let r = req.into_inner();
        let now = self.now_ms();
        if r.cert_not_after > 0 {
            lock(&self.inner.cert_seen).insert(r.node.clone(), r.cert_not_after);
        }
        {
            let mut live = lock(&self.inner.live);
            live.node_seen.insert(r.node.clone(), now);
            for p in &r.groups {
                let e = live.groups.entry(p.group.clone()).or_default();
                if p.role == "primary" {
                    e.rpo_ms = if p.oldest_unacked_ms > 0 {
                        now.saturating_sub(p.oldest_unacked_ms).max(0)
                    } else {
                        0
                    };
                    e.last_captured_seq = p.last_captured_seq;
                    e.durable_seq = p.durable_seq;
                    e.bytes_pending = p.bytes_pending;
                    e.bytes_raw = p.bytes_raw;
                    e.bytes_shipped = p.bytes_shipped;
                    e.throughput_bps = p.throughput_bps;
                    e.reported_ms = now;
                    e.reporter = r.node.clone();
                    e.reporter_role = p.role.clone();
                    e.reporter_epoch = p.epoch;
                    e.reporter_state = p.state.clone();
                    e.reason = p.reason.clone();
                    if p.state == "ready" {
                        e.primary_ready = Some((p.epoch, r.node.clone(), now));
                    }
                } else if p.role == "replica" {
                    e.replica = Some(ReplicaReport {
                        epoch: p.epoch,
                        node: r.node.clone(),
                        site: r.site.clone(),
                        state: p.state.clone(),
                        durable_seq: p.durable_seq,
                        at_ms: now,
                        reason: p.reason.clone(),
                    });
                    e.history_oldest = (p.history_oldest_ms > 0)
                        .then_some((p.history_oldest_ms, p.history_oldest_seq));
                }
            }
        }
        // Commit the progress (for data-loss windows and evidence), then leases.
        let _ = self.propose(heartbeat_command(&r, now)).await;
        // A replica that reports itself in sync with a caught-up primary ends an initial sync
        // or a post-failover resync: the group is protected again. Caught up: the replica
        // holds everything the primary has captured, or (under a steady stream of writes,
        // where that instant may never come) everything the primary knows it acknowledged,
        // with the primary's RPO under IN_SYNC_MAX_RPO_MS.
        for p in r
            .groups
            .iter()
            .filter(|p| p.role == "replica" && p.state == "in-sync")
        {
            let state = self.read(|s| s.group(&p.group).map(|g| (g.state, g.epoch.0)));
            let caught_up = {
                let live = lock(&self.inner.live);
                live.groups.get(&p.group).is_some_and(|l| {
                    l.reporter_epoch == p.epoch
                        && now - l.reported_ms < 5_000
                        && replica_caught_up(
                            l.last_captured_seq,
                            l.durable_seq,
                            l.rpo_ms,
                            p.durable_seq,
                        )
                })
            };
            if let Some((GroupState::Resyncing | GroupState::FailedOver, epoch)) = state {
                if caught_up && epoch == p.epoch {
                    let _ = self
                        .propose(
                            json!({"op": "set_group_state", "group": p.group, "state": "protected",
                            "reason": "replica in sync", "actor": r.node}),
                        )
                        .await;
                }
            }
        }
        let t0 = self.now_ms();
        for p in r.groups.iter().filter(|p| p.role == "primary") {
            let (holder, active) = self.read(|s| {
                s.group(&p.group)
                    .and_then(|g| g.lease.as_ref())
                    .map(|l| {
                        (
                            l.holder.clone(),
                            matches!(l.status, StLease::Active) && l.expires_ms > t0,
                        )
                    })
                    .unwrap_or_default()
            });
            let op = if holder == r.node && active {
                "renew_lease"
            } else {
                "acquire_lease"
            };
            if let Err(e) = self
                .propose(json!({"op": op, "group": p.group, "node": r.node, "site": r.site, "epoch": p.epoch}))
                .await
            {
                tracing::debug!(group = %p.group, node = %r.node, "lease {op} refused: {}", e.message());
            }
        }
        let now = self.now_ms();
        let leases = self.read(|s| {
            s.groups()
                .values()
                .map(|g| {
                    let mine = g.lease.as_ref().filter(|l| {
                        l.holder == r.node
                            && matches!(l.status, StLease::Active)
                            && l.expires_ms > now
                    });
                    GroupLease {
                        group: g.name.clone(),
                        epoch: g.epoch.0,
                        primary: g.primary_site.clone(),
                        replica: g.replica_site.clone(),
                        lease_expires_ms: mine.map(|l| l.expires_ms).unwrap_or(0),
                        state: g.state.as_str().into(),
                        paused: g.paused,
                        lease_remaining_ms: mine.map(|l| l.expires_ms - now).unwrap_or(0),
                    }
                })
                .collect()
        });
        Ok(Response::new(HeartbeatReply {
            leases,
            leader: self.inner.name.clone(),
        }))
    }

    async fn operate(
        &self,
        req: Request<OperateRequest>,
    ) -> Result<Response<OperateReply>, Status> {
        let op = req.get_ref().op.clone();
        let need = if matches!(op.as_str(), "runs" | "run") {
            Need::Audit
        } else {
            Need::Operate
        };
        let who = self.authorize(&req, &format!("operate {op}"), need).await?;
        let mut r = req.into_inner();
        if let Some(name) = who {
            r.actor = name;
        }
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.operate(r).await;
        }
        let actor = if r.actor.is_empty() {
            "operator".to_owned()
        } else {
            r.actor.clone()
        };
        let reply = crate::runs::operate(self, &r, &actor).await?;
        Ok(Response::new(OperateReply {
            json: reply.to_string(),
        }))
    }
}

/// The leader's periodic work: bootstrap, failure detection, RPO samples, automatic failover.
async fn background(c: Coordinator, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !c.is_leader() {
            lock(&c.inner.live).leader_since_ms = None;
            c.inner.drivers.stop_all();
            continue;
        }
        let now = c.now_ms();
        let since = {
            let mut live = lock(&c.inner.live);
            *live.leader_since_ms.get_or_insert(now)
        };
        let bootstrapped = c.read(|s| {
            s.settings().is_some()
                && c.inner
                    .topo
                    .groups
                    .iter()
                    .all(|g| s.group(&g.name).is_some())
        });
        if !bootstrapped {
            if let Err(e) = c.propose(c.bootstrap_command()).await {
                warn!("bootstrap refused: {}", e.message());
            }
            continue;
        }
        detect_failures(&c, now, since).await;
        sample_rpo(&c, now).await;
        crate::runs::drive_all(&c);
    }
}

async fn detect_failures(c: &Coordinator, now: i64, leader_since: i64) {
    let t = &c.inner.topo;
    let detect = t.cluster.detect_after.as_millis() as i64;
    for site in t.sites.iter().filter(|s| !s.witness) {
        let reps: Vec<String> = t
            .replicators_at(&site.name)
            .iter()
            .map(|n| n.name.clone())
            .collect();
        if reps.is_empty() {
            continue;
        }
        let last = {
            let live = lock(&c.inner.live);
            reps.iter()
                .filter_map(|n| live.node_seen.get(n).copied())
                .max()
        };
        // A new leader gives every site a full detection window before declaring it down.
        let last = last.unwrap_or(leader_since).max(leader_since);
        let status = c.read(|s| s.site(&site.name).map(|x| x.status));
        let silent = now - last > detect;
        if silent && status != Some(SiteStatus::Down) {
            warn!(site = %site.name, silent_ms = now - last, "site declared down");
            let _ = c
                .propose(json!({"op": "site_down", "site": site.name}))
                .await;
            start_auto_failovers(c, &site.name, now).await;
        } else if !silent && status == Some(SiteStatus::Down) {
            info!(site = %site.name, "site is back up");
            let _ = c.propose(json!({"op": "site_up", "site": site.name})).await;
        } else if silent {
            start_auto_failovers(c, &site.name, now).await;
        }
    }
}

async fn start_auto_failovers(c: &Coordinator, site: &str, detected_ms: i64) {
    for g in c.inner.topo.groups.iter().filter(|g| g.auto_failover) {
        let (primary, state, rpo, sync_degraded) = match c.read(|s| {
            s.group(&g.name).map(|x| {
                (
                    x.primary_site.clone(),
                    x.state,
                    x.progress.rpo_ms,
                    x.sync_degraded_since,
                )
            })
        }) {
            Some(v) => v,
            None => continue,
        };
        if primary != site || !matches!(state, GroupState::Protected | GroupState::Degraded) {
            continue;
        }
        if let Some(since) = sync_degraded {
            warn!(group = %g.name, since_ms = since, "the primary acknowledged writes without the replica: automatic failover would lose them; waiting for an operator");
            continue;
        }
        if let Some(max) = g.max_data_loss {
            if rpo > max.as_millis() {
                warn!(group = %g.name, rpo_ms = rpo, "automatic failover would lose more than max_data_loss: waiting for an operator");
                continue;
            }
        }
        let under_way = c.read(|s| {
            s.runs()
                .values()
                .any(|r| r.group == g.name && r.is_running())
        });
        if under_way {
            continue;
        }
        // RTO counts from the moment the outage began to be detected.
        let detect = c.inner.topo.cluster.detect_after.as_millis() as i64;
        let began = detected_ms - detect;
        info!(group = %g.name, "automatic failover: starting the failover runbook");
        match crate::runs::start(
            c,
            tandem_runbooks::RunbookKind::Failover,
            &g.name,
            COORDINATOR_ACTOR,
            &BTreeMap::new(),
            Some(began),
        )
        .await
        {
            Ok(id) => info!(group = %g.name, run = %id, "automatic failover run started"),
            Err(e) => warn!(group = %g.name, "automatic failover not started: {}", e.message()),
        }
    }
}

async fn sample_rpo(c: &Coordinator, now: i64) {
    let interval = c.inner.topo.cluster.rpo_sample_interval.as_millis() as i64;
    let due = {
        let mut live = lock(&c.inner.live);
        if now - live.last_rpo_sample_ms >= interval {
            live.last_rpo_sample_ms = now;
            true
        } else {
            false
        }
    };
    if !due {
        return;
    }
    let doc = c.status_doc(false);
    for g in doc.groups {
        let _ = c
            .propose(json!({"op": "rpo_sample", "group": g.name, "rpo_ms": g.rpo_ms.max(0)}))
            .await;
    }
}

/// Serves `GET /metrics` on the node's `metrics_listen` address (if set) until `stop`: the
/// figures are computed from the live status at every scrape.
async fn serve_metrics(
    c: &Coordinator,
    addr: Option<&str>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let registry = tandem_core::metrics::global().clone();
    let c = c.clone();
    registry
        .register_collector(move || crate::metrics::families(&c.status_doc(false), c.is_leader()));
    let (bound, _task) = tandem_core::metrics::start(addr, registry, stop)
        .await
        .map_err(|e| ServerError::Io(std::io::Error::other(e.to_string())))?;
    info!(%bound, "metrics listening");
    Ok(())
}

/// The `heartbeat` state-machine command (JSON, without `at_ms`) for a replicator's heartbeat
/// request received at `now`: the progress of its primary and replica groups, RPO computed
/// from the oldest unacknowledged capture time. Pure: the `admin_request` fuzz target decodes
/// arbitrary bytes as a `HeartbeatRequest` and applies the result to a state machine.
pub fn heartbeat_command(r: &HeartbeatRequest, now: i64) -> Value {
    let progress: Vec<Value> = r
        .groups
        .iter()
        .filter(|p| p.role == "primary" || p.role == "replica")
        .map(|p| {
            let rpo = if p.oldest_unacked_ms > 0 {
                now.saturating_sub(p.oldest_unacked_ms).max(0)
            } else {
                0
            };
            json!({
                "group": p.group, "role": p.role, "epoch": p.epoch,
                "last_captured_seq": p.last_captured_seq, "durable_seq": p.durable_seq,
                "rpo_ms": rpo, "bytes_pending": p.bytes_pending,
            })
        })
        .collect();
    json!({"op": "heartbeat", "node": r.node, "site": r.site, "progress": progress})
}

/// The records as JSON lines, stopping before the reply would pass `max_bytes` (the first
/// record is always included, so paging always moves on).
fn audit_page(records: &[crate::audit::AuditRecord], max_bytes: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for rec in records {
        let Ok(line) = serde_json::to_string(rec) else {
            continue;
        };
        if !out.is_empty() && bytes + line.len() > max_bytes {
            break;
        }
        bytes += line.len();
        out.push(line);
    }
    out
}

#[cfg(test)]
mod limit_tests {
    use super::*;
    use crate::audit::{AuditChain, AuditKind};

    #[test]
    fn a_streaming_replica_is_caught_up_without_an_idle_instant() {
        // Idle and equal.
        assert!(replica_caught_up(100, 100, 0, 100));
        // Steady writes: a few frames in flight, RPO 150 ms, the replica holds what it acked.
        assert!(replica_caught_up(120, 110, 150, 110));
        // Far behind: RPO of seconds.
        assert!(!replica_caught_up(5_000, 1_000, 4_000, 1_000));
        // The replica reports less than the primary saw acknowledged (a stale report).
        assert!(!replica_caught_up(120, 110, 150, 90));
        // Exactly at the bound, and just over.
        assert!(replica_caught_up(120, 110, IN_SYNC_MAX_RPO_MS, 110));
        assert!(!replica_caught_up(120, 110, IN_SYNC_MAX_RPO_MS + 1, 110));
    }

    #[test]
    fn an_audit_page_stops_at_its_byte_limit_but_always_moves_on() {
        let mut chain = AuditChain::default();
        for i in 0..10 {
            chain.append(
                i,
                "ops",
                AuditKind::Note,
                None,
                json!({"text": "x".repeat(1000)}),
            );
        }
        let all = audit_page(chain.records(), usize::MAX);
        assert_eq!(all.len(), 10);
        let one = all[0].len();
        let page = audit_page(chain.records(), one * 3 + one / 2);
        assert_eq!(page.len(), 3, "three records fit, the fourth would not");
        assert_eq!(
            audit_page(chain.records(), 1).len(),
            1,
            "never an empty page"
        );
    }
}
