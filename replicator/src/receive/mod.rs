//! The replicator's gRPC endpoint: the [`ReplicationService`] (one per replicator, many
//! groups), which admits callers and routes each RPC: Ship streams to `stream`, Verify to
//! [`crate::verify`], the others to a [`BlockSource`]. Re-exports [`classify`], the pure
//! per-frame decision, from its room `crate::apply::classify`.
//!
//! Rooms: [`source`] (the [`BlockSource`] trait), `stream` (one Ship stream: batch, apply,
//! acknowledge), `steps` (RunStep: a runbook step's command, read from the committed plan),
//! [`authz`] (who may call what: the table of docs/SECURITY.md), [`peers`] (the
//! groups' sites and epochs as the coordinators last gave them, the caller checks and the
//! recover root).
//!
//! Every call is authorized first ([`peers::Gate::authorize`]): refused callers get
//! `permission_denied` naming their certificate and the call, logged at warn (the
//! coordinators' audit chain is not reachable from here). A Ship stream is accepted only from
//! a replicator at the group's primary site with the group's current epoch, and only when the
//! copy is a prefix of the history its `Hello` announces ([`crate::lineage`]): otherwise a
//! fatal refusal names both generations and seqs, and the primary stops replicating.

pub mod authz;
pub mod peers;
pub mod source;
mod steps;
mod stream;

pub use self::authz::{replication_table_markdown, ReplicationCall};
use self::peers::{check_recover_out, Gate};
pub use self::peers::{GroupView, Views};
pub use self::source::{resync_finished, BlockSource};
pub use self::steps::{StepRunner, MAX_STEP_OUTPUT};
use self::stream::{response, run_stream};
pub use crate::apply::classify::{classify, Verdict};
use crate::apply::{ReplicaGroup, StreamState};
use crate::lineage::GenerationStart;
use crate::verify::{Catalog, VerifyStream};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tandem_core::config::Topology;
use tandem_core::ids::{Epoch, Seq};
use tandem_core::net::{Caller, Net};
use tandem_core::proto::replication_server::{Replication, ReplicationServer};
use tandem_core::proto::{
    ship_request, ship_response, ArchiveWalReply, ArchiveWalRequest, CheckpointReply,
    CheckpointRequest, CheckpointsReply, CheckpointsRequest, MerkleReply, MerkleRequest,
    ReadBlocksReply, ReadBlocksRequest, RecoverReply, RecoverRequest, Refusal, ResyncProgress,
    ResyncRequest, ShipRequest, ShipResponse, SnapshotReply, SnapshotRequest, VerifyRequest,
    Welcome,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Largest gRPC message accepted or sent on the replication stream (a frame is at most
/// 64 MiB raw plus zstd overhead).
pub const MAX_MESSAGE_BYTES: usize = tandem_core::limits::MAX_GRPC_MESSAGE_BYTES;
/// HTTP/2 stream window (STACK-NOTES gotcha 5).
pub const STREAM_WINDOW: u32 = 16 << 20;
/// HTTP/2 connection window (STACK-NOTES gotcha 5).
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// HTTP/2 frame size (STACK-NOTES gotcha 5).
pub const H2_FRAME_SIZE: u32 = (1 << 20) - 1;

/// The replica replicator's `Replication` service: a registry of groups by name.
#[derive(Clone)]
pub struct ReplicationService {
    groups: Arc<RwLock<HashMap<String, Arc<ReplicaGroup>>>>,
    blocks: Option<Arc<dyn BlockSource>>,
    /// The groups and volumes Verify may name (from the topology).
    catalog: Option<Arc<Catalog>>,
    closed: Arc<watch::Sender<bool>>,
    net: Net,
    /// Runs runbook steps at this node's site (RunStep); without it RunStep is unimplemented.
    steps: Option<Arc<StepRunner>>,
    /// The topology and the groups' views the callers are judged by.
    gate: Gate,
    /// `Recover` writes only inside this folder (`None`: anywhere absolute; unit tests).
    recover_root: Option<PathBuf>,
}

impl Default for ReplicationService {
    fn default() -> Self {
        ReplicationService {
            groups: Arc::default(),
            blocks: None,
            catalog: None,
            closed: Arc::new(watch::channel(false).0),
            net: Net::plaintext(),
            steps: None,
            gate: Gate::default(),
            recover_root: None,
        }
    }
}

impl std::fmt::Debug for ReplicationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationService")
            .field("groups", &self.group_names())
            .field("blocks", &self.blocks.is_some())
            .finish()
    }
}

impl ReplicationService {
    /// An empty registry.
    pub fn new() -> ReplicationService {
        ReplicationService::default()
    }

    /// Serves Merkle and ReadBlocks from `source` (without one they answer `unimplemented`).
    pub fn with_block_source(mut self, source: Arc<dyn BlockSource>) -> ReplicationService {
        self.blocks = Some(source);
        self
    }

    /// Knows the groups and volumes of `topo`, so that Verify can be served (through the block
    /// source's barrier `Merkle`); without it Verify answers `unimplemented`.
    /// The topology also places node certificates in the authorization table.
    pub fn with_topology(mut self, topo: &Topology) -> ReplicationService {
        self.gate.topo = Some(Arc::new(topo.clone()));
        self.with_catalog(Catalog::from_topology(topo))
    }

    /// Judges replicators and Ship epochs by `views` (what the coordinators last said of each
    /// group; the node's heartbeat loop fills it). Without views a service judges replicators
    /// as outside every group and bounds no Ship epoch (unit tests of single pieces).
    pub fn with_views(mut self, views: Views) -> ReplicationService {
        self.gate.views = Some(views);
        self
    }

    /// `Recover` writes only strictly inside `root` (after resolving `..` and symlinks).
    pub fn with_recover_root(mut self, root: PathBuf) -> ReplicationService {
        self.recover_root = Some(root);
        self
    }

    /// Serves Verify for the groups and volumes of `catalog` (see [`Self::with_topology`]).
    pub fn with_catalog(mut self, catalog: Catalog) -> ReplicationService {
        self.catalog = Some(Arc::new(catalog));
        self
    }

    /// Ends every open Ship stream (after the batch being applied) and refuses new ones with
    /// `unavailable`; lets a server shut down gracefully and the groups be reopened.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Registers (or replaces) a group.
    pub fn add_group(&self, group: Arc<ReplicaGroup>) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.name().to_owned(), group);
    }

    /// Unregisters a group, returning it.
    pub fn remove_group(&self, name: &str) -> Option<Arc<ReplicaGroup>> {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// A registered group.
    pub fn group(&self, name: &str) -> Option<Arc<ReplicaGroup>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Names of the registered groups.
    pub fn group_names(&self) -> Vec<String> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Serves and authenticates through `net` (plaintext by default): with TLS every call is
    /// judged by the caller's certificate against [`authz::allowed`].
    pub fn with_net(mut self, net: Net) -> ReplicationService {
        self.net = net;
        self
    }

    /// Serves RunStep with `runner` (this node's steps, read from the coordinators' plan).
    pub fn with_step_runner(mut self, runner: StepRunner) -> ReplicationService {
        self.steps = Some(Arc::new(runner));
        self
    }

    /// Refuses the caller of `req` for `call` about `group` unless the table allows it;
    /// returns the group's view when one was needed.
    fn authorize<T>(
        &self,
        call: ReplicationCall,
        req: &Request<T>,
        group: &str,
    ) -> Result<Option<GroupView>, Status> {
        let caller = self.net.caller(req)?;
        self.gate.authorize(call, &caller, group)
    }

    /// The tonic server wrapper with message limits raised for whole frames. Replies are
    /// zstd-compressed for clients that ask (the resync client does, for `Merkle` leaves and
    /// `ReadBlocks` blocks; the shipper does not: its frames are compressed already).
    pub fn into_server(self) -> ReplicationServer<ReplicationService> {
        ReplicationServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
            .send_compressed(tonic::codec::CompressionEncoding::Zstd)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
    }
}

/// The fatal refusal of a Hello whose epoch is older than the one the coordinators gave this
/// replica for the group (`current`): the sender has been replaced and must stop.
fn old_epoch_refusal(group: &ReplicaGroup, epoch: Epoch, current: Epoch) -> Refusal {
    let wm = group.watermark();
    Refusal {
        seq: wm.0 + 1,
        reason: format!(
            "epoch {epoch} is older than the epoch {current} the coordinators gave this replica \
             for group {}",
            group.name()
        ),
        resume_from: wm.0 + 1,
        fatal: true,
    }
}

/// The lineage a `Hello` announces, as the pure check takes it.
fn hello_lineage(hello: &tandem_core::proto::Hello) -> Vec<GenerationStart> {
    hello
        .lineage
        .iter()
        .map(|s| GenerationStart {
            generation: s.generation,
            first: Seq(s.first_seq),
            after: Seq(s.after_seq),
        })
        .collect()
}

/// Serves `service` on `listener` with TCP_NODELAY and large fixed HTTP/2 windows
/// (STACK-NOTES gotchas 4 and 5) until `shutdown` completes.
///
/// # Errors
/// The tonic transport error.
pub async fn serve(
    service: ReplicationService,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let net = service.net.clone();
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(H2_FRAME_SIZE)
        .add_service(service.into_server());
    net.serve(router, listener, shutdown).await
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    type ShipStream = ReceiverStream<Result<ShipResponse, Status>>;
    type ResyncStream = ReceiverStream<Result<ResyncProgress, Status>>;
    type VerifyStream = VerifyStream;

    async fn run_step(
        &self,
        request: Request<tandem_core::proto::RunStepRequest>,
    ) -> Result<Response<tandem_core::proto::RunStepReply>, Status> {
        self.authorize(ReplicationCall::RunStep, &request, "")?;
        let Some(steps) = &self.steps else {
            return Err(Status::unimplemented(
                "run_step: no step runner on this service",
            ));
        };
        steps.run_step(request).await.map(Response::new)
    }

    async fn verify(
        &self,
        request: Request<VerifyRequest>,
    ) -> Result<Response<Self::VerifyStream>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::Verify, &request, &group)?;
        let (Some(blocks), Some(catalog)) = (&self.blocks, &self.catalog) else {
            return Err(Status::unimplemented(
                "verify not wired: this service has no topology or merkle backend",
            ));
        };
        let plan = catalog.plan(request.get_ref())?;
        Ok(Response::new(crate::verify::stream(
            Arc::clone(blocks),
            plan,
        )))
    }

    async fn resync(
        &self,
        request: Request<ResyncRequest>,
    ) -> Result<Response<Self::ResyncStream>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::Resync, &request, &group)?;
        let Some(b) = &self.blocks else {
            return Err(Status::unimplemented("resync not wired"));
        };
        let mut rx = b.resync(request.into_inner()).await?;
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let p = rx.borrow_and_update().clone();
                let last = resync_finished(&p);
                if tx.send(Ok(p)).await.is_err() || last {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn ship(
        &self,
        request: Request<Streaming<ShipRequest>>,
    ) -> Result<Response<Self::ShipStream>, Status> {
        if *self.closed.borrow() {
            return Err(Status::unavailable("replica service closed"));
        }
        let caller = self.net.caller(&request)?;
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(ShipRequest {
                msg: Some(ship_request::Msg::Hello(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the stream must start with Hello")),
        };
        // A valid certificate of another node cannot ship as this one.
        match &caller {
            Caller::Anonymous => {}
            Caller::Node(n) if *n == hello.from_node => {}
            other => {
                let actor = tandem_core::authz::actor_of(other);
                tracing::warn!(group = %hello.group, claimed = %hello.from_node, %actor, "refused Replication call Ship: certificate names another identity");
                return Err(Status::permission_denied(format!(
                    "certificate {actor} may not call Replication.Ship: its Hello claims to be \
                     node {}",
                    hello.from_node
                )));
            }
        }
        let view = self
            .gate
            .authorize(ReplicationCall::Ship, &caller, &hello.group)?;
        // Plaintext: the caller cannot be placed, but the epoch is still bounded by the view.
        let view = match (&self.gate.views, view) {
            (Some(views), None) => Some(views.require(&hello.group)?),
            (_, v) => v,
        };
        let group = self
            .group(&hello.group)
            .ok_or_else(|| Status::not_found(format!("no replica group {:?}", hello.group)))?;
        let (tx, rx) = mpsc::channel(64);
        let g = Arc::clone(&group);
        let epoch = Epoch(hello.epoch);
        let max_epoch = view.as_ref().map_or(Epoch(u64::MAX), |v| v.epoch);
        let verdict = if view.is_some() && epoch < max_epoch {
            // An epoch the coordinators have moved past: the sender is fenced.
            Err(old_epoch_refusal(&group, epoch, max_epoch))
        } else {
            tokio::task::spawn_blocking(move || g.hello(epoch, max_epoch))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?
        };
        let verdict = match verdict {
            Ok(at) => {
                let starts = hello_lineage(&hello);
                let g = Arc::clone(&group);
                let judged = tokio::task::spawn_blocking(move || g.judge_lineage(epoch, &starts))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?
                    .map_err(|e| Status::internal(e.to_string()))?;
                match judged.reason(group.name()) {
                    None => Ok(at),
                    Some(reason) => Err(Refusal {
                        seq: at.0 .0 + 1,
                        reason,
                        resume_from: at.0 .0 + 1,
                        fatal: true,
                    }),
                }
            }
            refused => refused,
        };
        match verdict {
            Err(refusal) => {
                tracing::warn!(group = %hello.group, from = %hello.from_node, cert = %caller, reason = %refusal.reason, "refusing sender");
                let _ = tx
                    .send(response(ship_response::Msg::Refusal(refusal)))
                    .await;
            }
            Ok((watermark, fence)) => {
                tracing::info!(group = %hello.group, from = %hello.from_node, %watermark, %fence, "ship stream open");
                let _ = tx
                    .send(response(ship_response::Msg::Welcome(Welcome {
                        watermark: watermark.0,
                        epoch: fence.0,
                        primary_durable: group.primary_durable().map(|s| s.0),
                    })))
                    .await;
                let state = StreamState {
                    jumps: crate::lineage::jumps(&hello_lineage(&hello)),
                    ..StreamState::default()
                };
                tokio::spawn(run_stream(
                    group,
                    inbound,
                    tx,
                    self.closed.subscribe(),
                    self.gate.views.clone(),
                    state,
                ));
            }
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn merkle(
        &self,
        request: Request<MerkleRequest>,
    ) -> Result<Response<MerkleReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::Merkle, &request, &group)?;
        match &self.blocks {
            Some(b) => b.merkle(request.into_inner()).await.map(Response::new),
            None => Err(Status::unimplemented("merkle not wired")),
        }
    }

    async fn read_blocks(
        &self,
        request: Request<ReadBlocksRequest>,
    ) -> Result<Response<ReadBlocksReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::ReadBlocks, &request, &group)?;
        match &self.blocks {
            Some(b) => b.read_blocks(request.into_inner()).await.map(Response::new),
            None => Err(Status::unimplemented("read_blocks not wired")),
        }
    }

    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::Snapshot, &request, &group)?;
        match &self.blocks {
            Some(b) => b.snapshot(request.into_inner()).await.map(Response::new),
            None => Err(Status::unimplemented("snapshot not wired")),
        }
    }

    async fn delete_snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::DeleteSnapshot, &request, &group)?;
        match &self.blocks {
            Some(b) => b
                .delete_snapshot(request.into_inner())
                .await
                .map(Response::new),
            None => Err(Status::unimplemented("delete_snapshot not wired")),
        }
    }

    async fn checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::Checkpoint, &request, &group)?;
        match &self.blocks {
            Some(b) => b.checkpoint(request.into_inner()).await.map(Response::new),
            None => Err(Status::unimplemented("checkpoint not wired")),
        }
    }

    async fn checkpoints(
        &self,
        request: Request<CheckpointsRequest>,
    ) -> Result<Response<CheckpointsReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::Checkpoints, &request, &group)?;
        match &self.blocks {
            Some(b) => b.checkpoints(request.into_inner()).await.map(Response::new),
            None => Err(Status::unimplemented("checkpoints not wired")),
        }
    }

    async fn recover(
        &self,
        request: Request<RecoverRequest>,
    ) -> Result<Response<RecoverReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::Recover, &request, &group)?;
        let out = &request.get_ref().out_dir;
        if let (Some(root), false) = (&self.recover_root, out.is_empty()) {
            check_recover_out(std::path::Path::new(out), root)?;
        }
        match &self.blocks {
            Some(b) => b.recover(request.into_inner()).await.map(Response::new),
            None => Err(Status::unimplemented("recover not wired")),
        }
    }

    async fn archive_wal(
        &self,
        request: Request<ArchiveWalRequest>,
    ) -> Result<Response<ArchiveWalReply>, Status> {
        let group = request.get_ref().group.clone();
        self.authorize(ReplicationCall::ArchiveWal, &request, &group)?;
        match &self.blocks {
            Some(b) => b.archive_wal(request.into_inner()).await.map(Response::new),
            None => Err(Status::unimplemented("archive_wal not wired")),
        }
    }
}
