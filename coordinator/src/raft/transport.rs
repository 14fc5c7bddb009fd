//! Raft peer transport over tonic: the `RaftPeer` service (inbound) and one sender task per
//! peer (outbound) with a bounded queue, reconnect with backoff and snapshot status reports.
//!
//! Messages are raft-rs `eraftpb::Message`s in protobuf 2, carried as bytes in
//! `RaftEnvelope`. protobuf 2.28 has RUSTSEC-2024-0437 (stack overflow on crafted input):
//! expose this service only to authenticated peers (mTLS or a private network).

use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;
use tandem_core::net::Net;
use tandem_core::proto::raft_peer_client::RaftPeerClient;
use tandem_core::proto::raft_peer_server::{RaftPeer, RaftPeerServer};
use tandem_core::proto::{RaftEnvelope, RaftSendReply};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::cmd::{is_blocked, Blocked, Cmd, Parts};

/// Largest raft message (snapshots included) accepted or sent.
pub const MAX_MESSAGE_BYTES: usize = tandem_core::limits::MAX_GRPC_MESSAGE_BYTES;
/// Messages queued per peer before new ones are dropped (raft retransmits).
pub const PEER_QUEUE: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The inbound side: steps envelopes addressed to this node into its raft task.
#[derive(Clone)]
pub struct PeerService {
    id: u64,
    inbound: SyncSender<Cmd>,
    blocked: Blocked,
    net: Net,
    peer_names: BTreeMap<u64, String>,
}

/// The `RaftPeer` gRPC service over what the transport needs from a running node.
pub(crate) fn service(p: Parts) -> RaftPeerServer<PeerService> {
    RaftPeerServer::new(PeerService {
        id: p.id,
        inbound: p.inbound,
        blocked: p.blocked,
        net: p.net,
        peer_names: p.peer_names,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Checks an envelope and decodes its raft message.
///
/// # Errors
/// A status naming what was wrong: wrong recipient, undecodable message, or ids that do not
/// match the envelope.
pub fn open_envelope(env: &RaftEnvelope, my_id: u64) -> Result<Message, Status> {
    if env.to_id != my_id {
        return Err(Status::failed_precondition(format!(
            "envelope for node {} reached node {my_id}",
            env.to_id
        )));
    }
    let mut msg = Message::default();
    msg.merge_from_bytes(&env.message)
        .map_err(|e| Status::invalid_argument(format!("raft message from {}: {e}", env.from_id)))?;
    if msg.to != env.to_id || msg.from != env.from_id {
        return Err(Status::invalid_argument(format!(
            "raft message {}->{} in envelope {}->{}",
            msg.from, msg.to, env.from_id, env.to_id
        )));
    }
    Ok(msg)
}

/// Wraps a raft message in an envelope.
///
/// # Errors
/// protobuf encoding failed.
pub fn seal_envelope(msg: &Message) -> Result<RaftEnvelope, protobuf::ProtobufError> {
    Ok(RaftEnvelope {
        from_id: msg.from,
        to_id: msg.to,
        message: msg.write_to_bytes()?,
    })
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<RaftEnvelope>>,
    ) -> Result<Response<RaftSendReply>, Status> {
        // With TLS the stream's certificate must name the node whose raft id the envelopes
        // carry: a valid certificate of another node cannot speak as this peer.
        let caller = self.net.require_node(&request)?;
        let mut stream = request.into_inner();
        while let Some(env) = stream.message().await? {
            if let Some(cert_node) = &caller {
                let claimed = self.peer_names.get(&env.from_id);
                if claimed != Some(cert_node) {
                    return Err(Status::permission_denied(format!(
                        "certificate names node {cert_node} but the raft envelope claims raft id {} ({})",
                        env.from_id,
                        claimed.map_or("unknown", String::as_str)
                    )));
                }
            }
            let msg = open_envelope(&env, self.id)?;
            if is_blocked(&self.blocked, msg.from) {
                continue;
            }
            match self.inbound.try_send(Cmd::Step(Box::new(msg))) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(
                        node = self.id,
                        from = env.from_id,
                        "raft inbox full, message dropped"
                    );
                }
                Err(TrySendError::Disconnected(_)) => {
                    return Err(Status::unavailable(format!(
                        "raft node {} is shut down",
                        self.id
                    )));
                }
            }
        }
        Ok(Response::new(RaftSendReply {}))
    }
}

/// The outbound side for one peer: a bounded queue drained by a task that keeps a stream open.
pub(crate) struct PeerSender {
    tx: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerSender {
    /// Spawns the sender task for peer `to` at `addr` on `rt`.
    pub(crate) fn spawn(
        rt: &tokio::runtime::Handle,
        to: u64,
        addr: String,
        inbound: SyncSender<Cmd>,
        net: Net,
    ) -> Self {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let task = rt.spawn(run_peer(to, addr, rx, inbound, net));
        PeerSender { tx, task }
    }

    /// Queues a message; `false` when the queue is full (the message is dropped).
    pub(crate) fn try_send(&self, msg: Message) -> bool {
        self.tx.try_send(msg).is_ok()
    }
}

impl Drop for PeerSender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn report(inbound: &SyncSender<Cmd>, cmd: Cmd) {
    // Best effort: when the inbox is full raft will notice the peer by itself.
    let _ = inbound.try_send(cmd);
}

async fn connect(net: &Net, addr: &str) -> Result<RaftPeerClient<Channel>, String> {
    let endpoint = net
        .endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = net.connect(endpoint).await.map_err(|e| e.to_string())?;
    Ok(RaftPeerClient::new(channel)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

async fn send_snapshot(mut client: RaftPeerClient<Channel>, env: RaftEnvelope) -> bool {
    client
        .send(tokio_stream::once(env))
        .await
        .map(|_| true)
        .unwrap_or(false)
}

async fn run_peer(
    to: u64,
    addr: String,
    mut rx: mpsc::Receiver<Message>,
    inbound: SyncSender<Cmd>,
    net: Net,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let client = match connect(&net, &addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(peer = to, error = %e, "raft peer unreachable");
                // Drop what queued up meanwhile: raft resends; fail pending snapshots.
                loop {
                    match rx.try_recv() {
                        Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot => {
                            report(&inbound, Cmd::Snapshot(to, SnapshotStatus::Failure));
                        }
                        Ok(_) => {}
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                report(&inbound, Cmd::Unreachable(to));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        let (stx, srx) = mpsc::channel::<RaftEnvelope>(PEER_QUEUE);
        let mut call = {
            let mut c = client.clone();
            Box::pin(async move { c.send(ReceiverStream::new(srx)).await })
        };
        loop {
            tokio::select! {
                res = &mut call => {
                    if let Err(e) = res {
                        tracing::debug!(peer = to, error = %e, "raft stream to peer ended");
                    }
                    report(&inbound, Cmd::Unreachable(to));
                    break;
                }
                m = rx.recv() => {
                    let Some(msg) = m else { return };
                    let env = match seal_envelope(&msg) {
                        Ok(env) => env,
                        Err(e) => {
                            tracing::error!(peer = to, error = %e, "cannot encode raft message");
                            continue;
                        }
                    };
                    if msg.get_msg_type() == MessageType::MsgSnapshot {
                        let client = client.clone();
                        let inbound = inbound.clone();
                        tokio::spawn(async move {
                            let status = if send_snapshot(client, env).await {
                                SnapshotStatus::Finish
                            } else {
                                SnapshotStatus::Failure
                            };
                            report(&inbound, Cmd::Snapshot(to, status));
                        });
                    } else if stx.try_send(env).is_err() {
                        report(&inbound, Cmd::Unreachable(to));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: u64, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = 3;
        m
    }

    #[test]
    fn envelope_round_trips() {
        let env = seal_envelope(&msg(1, 2)).unwrap();
        assert_eq!((env.from_id, env.to_id), (1, 2));
        assert_eq!(open_envelope(&env, 2).unwrap(), msg(1, 2));
    }

    #[test]
    fn envelope_for_another_node_is_rejected() {
        let env = seal_envelope(&msg(1, 3)).unwrap();
        let err = open_envelope(&env, 2).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn envelope_with_mismatched_ids_or_garbage_is_rejected() {
        let mut env = seal_envelope(&msg(1, 2)).unwrap();
        env.from_id = 5;
        assert_eq!(
            open_envelope(&env, 2).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let env = RaftEnvelope {
            from_id: 1,
            to_id: 2,
            message: vec![0xff, 0xff, 0xff],
        };
        assert_eq!(
            open_envelope(&env, 2).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
