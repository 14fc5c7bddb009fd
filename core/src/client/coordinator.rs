//! [`Cluster`]: the coordinators of a topology, called through typed methods: status, audit,
//! pause and resume, records in the audit chain, runs (start, act on, list, show), and find
//! the leader. No call names its caller: the coordinators take it from the certificate.
//! Replies that the coordinators send as JSON documents are decoded into the caller's type
//! (e.g. `tandem_coordinator::status::ClusterStatus`), so core stays below the coordinator.
//! I/O: gRPC calls only.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use super::error::ClientError;
use crate::net::Net;
use crate::proto::coordinator_client::CoordinatorClient;
use crate::proto::{
    AuditRequest, Decided, GetRunRequest, GroupCall, PlannedStepReply, PlannedStepRequest,
    RecordKind, RecordRequest, RunAction, RunActionRequest, RunKind, RunSummary, RunsRequest,
    StartRunRequest, StatusRequest,
};

/// How long dialling one coordinator may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one audit page may take.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a decision or run call may take (a run's first step may be slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a planned-step read may take.
const PLANNED_STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Records asked for per audit page.
const AUDIT_PAGE: u64 = 5000;
/// How long [`Cluster::call`] keeps trying while no leader answers (an election).
const OPERATE_RETRY_FOR: Duration = Duration::from_secs(20);

/// The coordinators of a cluster, asked in the order given.
#[derive(Debug, Clone)]
pub struct Cluster {
    net: Net,
    addrs: Vec<String>,
}

impl Cluster {
    /// The coordinators at `addrs` (listen addresses, in topology order), dialled through
    /// `net`.
    pub fn new(net: Net, addrs: Vec<String>) -> Self {
        Cluster { net, addrs }
    }

    /// The coordinator addresses.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    async fn dial(
        &self,
        call: &'static str,
        addr: &str,
        timeout: Option<Duration>,
    ) -> Result<CoordinatorClient<Channel>, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            call,
            addr: addr.to_owned(),
            reason,
        };
        let mut ep = self
            .net
            .endpoint(addr)
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(t) = timeout {
            ep = ep.timeout(t);
        }
        let ch = self
            .net
            .connect(ep)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(crate::grpc_limits!(CoordinatorClient::new(ch)))
    }

    /// Connects to the first coordinator that answers (a follower forwards what needs the
    /// leader); returns it with its address.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] of the last coordinator tried, or
    /// [`ClientError::NoAddress`].
    pub async fn connect(
        &self,
        call: &'static str,
    ) -> Result<(CoordinatorClient<Channel>, String), ClientError> {
        let mut last = ClientError::NoAddress { call };
        for a in &self.addrs {
            match self.dial(call, a, Some(CALL_TIMEOUT)).await {
                Ok(c) => return Ok((c, a.clone())),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The status document of the coordinator at `addr`, decoded as `T`.
    ///
    /// # Errors
    /// Unreachable, refused, or a document that does not decode as `T`.
    pub async fn status_of<T: DeserializeOwned>(&self, addr: &str) -> Result<T, ClientError> {
        const CALL: &str = "status";
        let mut c = self.dial(CALL, addr, Some(STATUS_TIMEOUT)).await?;
        let reply = c
            .status(StatusRequest::default())
            .await
            .map_err(|s| ClientError::refused(CALL, addr, &s))?
            .into_inner();
        serde_json::from_str(&reply.json).map_err(|e| ClientError::Decode {
            call: CALL,
            addr: addr.to_owned(),
            reason: format!("decoding the status document: {e}"),
        })
    }

    /// Step `step` of run `run_id` as the committed plan of the coordinator at `addr` holds
    /// it (`Coordinator.PlannedStep`: its command, environment, site and whether it is the
    /// run's current step).
    ///
    /// # Errors
    /// Unreachable, or refused (no such run or step, or the caller may not read it).
    pub async fn planned_step_of(
        &self,
        addr: &str,
        run_id: &str,
        step: u32,
    ) -> Result<PlannedStepReply, ClientError> {
        const CALL: &str = "planned_step";
        let mut c = self.dial(CALL, addr, Some(PLANNED_STEP_TIMEOUT)).await?;
        let req = PlannedStepRequest {
            run_id: run_id.to_owned(),
            step,
        };
        c.planned_step(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::refused(CALL, addr, &s))
    }

    /// [`Self::planned_step_of`] asked of `first` (when given, e.g. the coordinator that is
    /// asking for the step to run), then of the others in order while they cannot be reached
    /// or are unavailable; a coordinator that answers "no" is the answer.
    ///
    /// # Errors
    /// The refusal, or the error of the last coordinator tried ([`ClientError::NoAddress`]
    /// when there is none).
    pub async fn planned_step(
        &self,
        first: Option<&str>,
        run_id: &str,
        step: u32,
    ) -> Result<PlannedStepReply, ClientError> {
        let mut order: Vec<&str> = first.into_iter().collect();
        order.extend(
            self.addrs
                .iter()
                .map(String::as_str)
                .filter(|a| Some(*a) != first),
        );
        let mut last = ClientError::NoAddress {
            call: "planned_step",
        };
        for a in order {
            match self.planned_step_of(a, run_id, step).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_retryable() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The status from the first coordinator (in order) that answers.
    ///
    /// # Errors
    /// The error of the last coordinator asked, or [`ClientError::NoAddress`].
    pub async fn status<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        let mut last = ClientError::NoAddress { call: "status" };
        for a in &self.addrs {
            match self.status_of(a).await {
                Ok(st) => return Ok(st),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The status of every coordinator that answers within `each`, all asked at once (a
    /// partitioned coordinator must not hold the caller up); in no particular order.
    pub async fn statuses<T>(&self, each: Duration) -> Vec<T>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let mut set = tokio::task::JoinSet::new();
        for a in self.addrs.clone() {
            let me = self.clone();
            set.spawn(async move {
                tokio::time::timeout(each, me.status_of::<T>(&a))
                    .await
                    .ok()
                    .and_then(Result::ok)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Some(st)) = r {
                out.push(st);
            }
        }
        out
    }

    /// The name of the leader, as the first coordinator that answers and is not stale (it
    /// hears from the leader) reports it; `None` while no coordinator knows one.
    pub async fn leader(&self) -> Option<String> {
        for a in &self.addrs {
            if let Ok(st) = self.status_of::<serde_json::Value>(a).await {
                let stale = st["stale"].as_bool().unwrap_or(false);
                if let (false, Some(l)) = (stale, st["leader"].as_str()) {
                    return Some(l.to_owned());
                }
            }
        }
        None
    }

    /// The whole audit chain, page by page, from the first coordinator that can be reached and
    /// holds it all (one that answers `Unavailable`, e.g. still back-filling records it lacks
    /// after a snapshot, is passed over), each record decoded as `T`.
    ///
    /// # Errors
    /// No coordinator reachable, the audit call refused, or a record that does not decode.
    pub async fn audit<T: DeserializeOwned>(&self) -> Result<Vec<T>, ClientError> {
        const CALL: &str = "audit";
        let mut last = ClientError::NoAddress { call: CALL };
        for addr in &self.addrs {
            let mut c = match self.dial(CALL, addr, Some(AUDIT_TIMEOUT)).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let mut out: Vec<T> = Vec::new();
            let mut whole = true;
            loop {
                let r = match c
                    .audit(AuditRequest {
                        from_index: out.len() as u64,
                        limit: AUDIT_PAGE,
                    })
                    .await
                {
                    Ok(r) => r.into_inner(),
                    // This coordinator lacks some records (it installed a snapshot and is
                    // back-filling) or went away: read the whole chain from the next one.
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        last = ClientError::refused(CALL, addr, &s);
                        whole = false;
                        break;
                    }
                    Err(s) => return Err(ClientError::refused(CALL, addr, &s)),
                };
                if r.records.is_empty() {
                    break;
                }
                for rec in r.records {
                    out.push(serde_json::from_str(&rec).map_err(|e| ClientError::Decode {
                        call: CALL,
                        addr: addr.clone(),
                        reason: format!("decoding an audit record: {e}"),
                    })?);
                }
            }
            if whole {
                return Ok(out);
            }
        }
        Err(last)
    }

    /// Sends one call to the first coordinator that answers (a follower forwards it to the
    /// leader). While none can be reached or none answers as leader (an election after the
    /// leader was lost), tries again for up to 20 s.
    ///
    /// # Errors
    /// The last error once the 20 s are over, or a refusal that retrying cannot change.
    async fn call<R, F, Fut>(&self, call: &'static str, f: F) -> Result<R, ClientError>
    where
        F: Fn(CoordinatorClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let deadline = Instant::now() + OPERATE_RETRY_FOR;
        loop {
            let err = match self.connect(call).await {
                Ok((c, addr)) => match f(c).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) => ClientError::refused(call, &addr, &s),
                },
                Err(e) => e,
            };
            if !err.is_retryable() || Instant::now() >= deadline {
                return Err(err);
            }
            tracing::debug!("{call}: {err}; retrying");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Pauses replication of `group`. The coordinators record the caller's certificate as
    /// the actor.
    ///
    /// # Errors
    /// As [`Cluster::call`].
    pub async fn pause(&self, group: &str, reason: &str) -> Result<Decided, ClientError> {
        let req = GroupCall {
            group: group.into(),
            reason: reason.into(),
        };
        self.call("Pause", |mut c| {
            let req = req.clone();
            async move { c.pause(req).await }
        })
        .await
    }

    /// Starts a planned move of `group`'s replica side at `site` to the replicator `to`.
    ///
    /// # Errors
    /// As [`Cluster::call`].
    pub async fn move_group(
        &self,
        group: &str,
        site: &str,
        to: &str,
        reason: &str,
    ) -> Result<Decided, ClientError> {
        let req = crate::proto::MoveRequest {
            group: group.into(),
            site: site.into(),
            to: to.into(),
            reason: reason.into(),
        };
        self.call("Move", |mut c| {
            let req = req.clone();
            async move { c.r#move(req).await }
        })
        .await
    }

    /// Resumes replication of `group`.
    ///
    /// # Errors
    /// As [`Cluster::call`].
    pub async fn resume(&self, group: &str, reason: &str) -> Result<Decided, ClientError> {
        let req = GroupCall {
            group: group.into(),
            reason: reason.into(),
        };
        self.call("Resume", |mut c| {
            let req = req.clone();
            async move { c.resume(req).await }
        })
        .await
    }

    /// Adds a record of `kind` about `group` (empty: none) with `detail` (a JSON object) to
    /// the audit chain.
    ///
    /// # Errors
    /// As [`Cluster::call`].
    pub async fn record(
        &self,
        kind: RecordKind,
        group: &str,
        detail: &serde_json::Value,
    ) -> Result<Decided, ClientError> {
        let req = RecordRequest {
            kind: kind.into(),
            group: group.into(),
            detail_json: detail.to_string(),
        };
        self.call("Record", |mut c| {
            let req = req.clone();
            async move { c.record(req).await }
        })
        .await
    }

    /// Starts a run of the group's runbook of `kind` with `params`; returns the run id.
    ///
    /// # Errors
    /// As [`Cluster::call`].
    pub async fn start_run(
        &self,
        kind: RunKind,
        group: &str,
        params: std::collections::HashMap<String, String>,
    ) -> Result<String, ClientError> {
        let req = StartRunRequest {
            kind: kind.into(),
            group: group.into(),
            params,
            ..StartRunRequest::default()
        };
        let r = self
            .call("StartRun", |mut c| {
                let req = req.clone();
                async move { c.start_run(req).await }
            })
            .await?;
        Ok(r.run_id)
    }

    /// Orders a run of kind `kind` (`failover`, `switchover`, `drill`, `failback`) of
    /// `group`; returns the run id.
    ///
    /// # Errors
    /// An unknown kind, or as [`Cluster::start_run`].
    pub async fn order(&self, kind: &str, group: &str) -> Result<String, ClientError> {
        let k = run_kind(kind).ok_or_else(|| ClientError::Decode {
            call: "StartRun",
            addr: self.addrs.join(","),
            reason: format!("unknown run kind {kind:?} (failover | switchover | drill | failback)"),
        })?;
        self.start_run(k, group, Default::default()).await
    }

    /// Approves, confirms or rejects step `step` of run `run_id`, or cancels the run.
    ///
    /// # Errors
    /// As [`Cluster::call`].
    pub async fn run_action(
        &self,
        run_id: &str,
        action: RunAction,
        step: &str,
    ) -> Result<Decided, ClientError> {
        let req = RunActionRequest {
            run_id: run_id.into(),
            action: action.into(),
            step: step.into(),
        };
        self.call("RunAction", |mut c| {
            let req = req.clone();
            async move { c.run_action(req).await }
        })
        .await
    }

    /// The runs of `group` (all when empty).
    ///
    /// # Errors
    /// As [`Cluster::call`].
    pub async fn runs(&self, group: &str) -> Result<Vec<RunSummary>, ClientError> {
        let req = RunsRequest {
            group: group.into(),
        };
        let r = self
            .call("Runs", |mut c| {
                let req = req.clone();
                async move { c.runs(req).await }
            })
            .await?;
        Ok(r.runs)
    }

    /// One run, whole, decoded as `T`.
    ///
    /// # Errors
    /// As [`Cluster::call`], or a document that does not decode.
    pub async fn get_run<T: DeserializeOwned>(&self, run_id: &str) -> Result<T, ClientError> {
        const CALL: &str = "GetRun";
        let req = GetRunRequest {
            run_id: run_id.into(),
        };
        let r = self
            .call(CALL, |mut c| {
                let req = req.clone();
                async move { c.get_run(req).await }
            })
            .await?;
        serde_json::from_str(&r.json).map_err(|e| ClientError::Decode {
            call: CALL,
            addr: self.addrs.join(","),
            reason: format!("decoding the run: {e}"),
        })
    }
}

/// The run kind named `kind` (`failover`, `switchover`, `drill`, `failback`).
pub fn run_kind(kind: &str) -> Option<RunKind> {
    match kind {
        "failover" => Some(RunKind::Failover),
        "switchover" => Some(RunKind::Switchover),
        "drill" => Some(RunKind::Drill),
        "failback" => Some(RunKind::Failback),
        _ => None,
    }
}
