//! [`Replicator`]: one replicator, called through typed methods: the `Resync` and `Verify`
//! progress streams, each read through a [`ProgressStream`] whose errors say which call and
//! which address. I/O: gRPC calls only.

use std::time::{Duration, Instant};

use tonic::transport::Channel;

use super::error::ClientError;
use crate::net::Net;
use crate::proto::replication_client::ReplicationClient;
use crate::proto::{
    CheckpointReply, CheckpointRequest, RecoverReply, RecoverRequest, ResyncProgress,
    ResyncRequest, RunStepReply, RunStepRequest, VerifyProgress, VerifyRequest, VolumeVerdict,
};

/// How long dialling a replicator may take for a resync.
const RESYNC_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long dialling a replicator may take to run a step.
const RUN_STEP_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long dialling a replicator may take for a verify.
const VERIFY_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One replicator, at its listen address.
#[derive(Debug, Clone)]
pub struct Replicator {
    net: Net,
    addr: String,
}

/// A server stream of progress messages of one call.
#[derive(Debug)]
pub struct ProgressStream<T> {
    call: &'static str,
    addr: String,
    inner: tonic::Streaming<T>,
}

impl<T> ProgressStream<T> {
    /// The next message; `None` once the server ended the stream.
    ///
    /// # Errors
    /// [`ClientError::Refused`] with the status the stream ended with.
    pub async fn next(&mut self) -> Result<Option<T>, ClientError> {
        self.inner
            .message()
            .await
            .map_err(|s| ClientError::refused(self.call, &self.addr, &s))
    }

    /// The replicator's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl ProgressStream<ResyncProgress> {
    /// Follows a resync until it says it finished (`done` or `failed`), the server ends the
    /// stream, or `deadline` passes; `on_progress` sees every message. Returns the last
    /// message (`None` when the replica sent none).
    ///
    /// # Errors
    /// [`ClientError::Timeout`] at the deadline (the resync itself goes on), or the status
    /// the stream ended with.
    pub async fn follow(
        &mut self,
        deadline: Instant,
        on_progress: &mut (dyn FnMut(&ResyncProgress) + Send),
    ) -> Result<Option<ResyncProgress>, ClientError> {
        let started = Instant::now();
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, self.next()).await {
                Err(_) => {
                    return Err(ClientError::Timeout {
                        call: self.call,
                        addr: self.addr.clone(),
                        after_ms: started.elapsed().as_millis() as u64,
                    })
                }
                Ok(r) => match r? {
                    None => return Ok(last),
                    Some(p) => p,
                },
            };
            on_progress(&msg);
            let end = resync_finished(&msg);
            last = Some(msg);
            if end {
                return Ok(last);
            }
        }
    }
}

/// True for the last message of a resync: it is `done` or it `failed`.
pub fn resync_finished(p: &ResyncProgress) -> bool {
    p.phase == "done" || p.phase == "failed"
}

impl Replicator {
    /// The replicator at `addr`, dialled through `net`.
    pub fn new(net: Net, addr: impl Into<String>) -> Self {
        Replicator {
            net,
            addr: addr.into(),
        }
    }

    /// Its address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn dial(
        &self,
        call: &'static str,
        connect_timeout: Duration,
    ) -> Result<ReplicationClient<Channel>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            call,
            addr: self.addr.clone(),
            reason,
        };
        let ep = self
            .net
            .endpoint(&self.addr)
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(connect_timeout);
        let ch = self
            .net
            .connect(ep)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(crate::grpc_limits!(ReplicationClient::new(ch)))
    }

    /// Asks this replicator (the group's replica) to resync `group` from its primary by
    /// merkle diff, or joins the resync already running; returns its progress stream, which
    /// ends after the message that says it finished.
    ///
    /// # Errors
    /// Unreachable, or the replicator refused to start.
    pub async fn resync(
        &self,
        group: &str,
        reason: &str,
    ) -> Result<ProgressStream<ResyncProgress>, ClientError> {
        const CALL: &str = "resync";
        let mut c = self.dial(CALL, RESYNC_CONNECT_TIMEOUT).await?;
        let req = ResyncRequest {
            group: group.to_owned(),
            reason: reason.to_owned(),
        };
        let inner = c
            .resync(req)
            .await
            .map_err(|s| ClientError::refused(CALL, &self.addr, &s))?
            .into_inner();
        Ok(ProgressStream {
            call: CALL,
            addr: self.addr.clone(),
            inner,
        })
    }

    /// Asks this replicator (the group's primary) to compare the volumes of `req.group` with
    /// the replica's under barriers; returns the progress stream, whose last message of each
    /// volume carries its verdict.
    ///
    /// # Errors
    /// Unreachable, or the replicator refused (not the primary, no such group, or, on a
    /// replicator that predates it, `Unimplemented`).
    pub async fn verify(
        &self,
        req: VerifyRequest,
    ) -> Result<ProgressStream<VerifyProgress>, ClientError> {
        const CALL: &str = "verify";
        let mut c = self.dial(CALL, VERIFY_CONNECT_TIMEOUT).await?;
        let inner = c
            .verify(req)
            .await
            .map_err(|s| ClientError::refused(CALL, &self.addr, &s))?
            .into_inner();
        Ok(ProgressStream {
            call: CALL,
            addr: self.addr.clone(),
            inner,
        })
    }

    /// Asks this replicator to run step `step` of run `run_id` on its host
    /// (`Replication.RunStep`): it reads the step from the coordinators' committed plan and
    /// answers with the command's exit status and output. The call may take up to
    /// `timeout` (the step's own bound and some slack).
    ///
    /// # Errors
    /// Unreachable, or the replicator refused (not asked by a coordinator, the step is not
    /// at its site or not current, or the command could not start).
    pub async fn run_step(
        &self,
        run_id: &str,
        step: u32,
        timeout: Duration,
    ) -> Result<RunStepReply, ClientError> {
        const CALL: &str = "run_step";
        let mut c = self.dial(CALL, RUN_STEP_CONNECT_TIMEOUT).await?;
        let mut req = tonic::Request::new(RunStepRequest {
            run_id: run_id.to_owned(),
            step,
        });
        req.set_timeout(timeout);
        c.run_step(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::refused(CALL, &self.addr, &s))
    }

    /// Asks this replicator (the group's primary) to mark checkpoint `tag` in the stream of
    /// `group`; answers once the replica holds it durably.
    ///
    /// # Errors
    /// Unreachable, or the replicator refused (not the primary, no history, timed out).
    pub async fn checkpoint(&self, group: &str, tag: &str) -> Result<CheckpointReply, ClientError> {
        const CALL: &str = "checkpoint";
        let mut c = self.dial(CALL, VERIFY_CONNECT_TIMEOUT).await?;
        c.checkpoint(CheckpointRequest {
            group: group.to_owned(),
            tag: tag.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| ClientError::refused(CALL, &self.addr, &s))
    }

    /// Asks this replicator (the group's replica) to build a point-in-time copy as `req`
    /// says (`Replication.Recover`).
    ///
    /// # Errors
    /// Unreachable, or the replicator refused (no such point, not the replica, bad folder).
    pub async fn recover(&self, req: RecoverRequest) -> Result<RecoverReply, ClientError> {
        const CALL: &str = "recover";
        let mut c = self.dial(CALL, VERIFY_CONNECT_TIMEOUT).await?;
        c.recover(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::refused(CALL, &self.addr, &s))
    }

    /// Runs [`Replicator::verify`] to its end: `on_progress` sees every message; returns the
    /// verdict of each volume compared, in the order they came.
    ///
    /// # Errors
    /// As [`Replicator::verify`], or the stream ended with an error status.
    pub async fn verify_volumes(
        &self,
        req: VerifyRequest,
        on_progress: &mut (dyn FnMut(&VerifyProgress) + Send),
    ) -> Result<Vec<VolumeVerdict>, ClientError> {
        let mut stream = self.verify(req).await?;
        let mut out = Vec::new();
        while let Some(p) = stream.next().await? {
            on_progress(&p);
            if let Some(v) = p.verdict {
                out.push(v);
            }
        }
        Ok(out)
    }
}
