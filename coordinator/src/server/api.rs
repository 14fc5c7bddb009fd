//! The admin API (`Coordinator` gRPC service): status, audit pages, proposals, heartbeats and
//! operations, each authorized, then answered here on the leader or forwarded to it.

use super::authz::Need;
use crate::handle::coordinator::Coordinator;
use serde_json::{json, Value};
use tandem_core::proto::coordinator_server::Coordinator as CoordinatorApi;
use tandem_core::proto::{
    AuditReply, AuditRequest, Decided, GetRunReply, GetRunRequest, GroupCall, HeartbeatReply,
    HeartbeatRequest, OperateReply, OperateRequest, PlannedStepReply, PlannedStepRequest,
    ProposeReply, ProposeRequest, RecordRequest, ReleaseLeaseRequest, RunActionRequest, RunsReply,
    RunsRequest, StartRunReply, StartRunRequest, StatusReply, StatusRequest, SyncDegradedRequest,
};
use tonic::{Request, Response, Status};

#[tonic::async_trait]
impl CoordinatorApi for Coordinator {
    async fn runs(&self, _req: Request<RunsRequest>) -> Result<Response<RunsReply>, Status> {
        Err(Status::unimplemented("runs"))
    }

    async fn get_run(&self, _req: Request<GetRunRequest>) -> Result<Response<GetRunReply>, Status> {
        Err(Status::unimplemented("get_run"))
    }

    async fn pause(&self, _req: Request<GroupCall>) -> Result<Response<Decided>, Status> {
        Err(Status::unimplemented("pause"))
    }

    async fn resume(&self, _req: Request<GroupCall>) -> Result<Response<Decided>, Status> {
        Err(Status::unimplemented("resume"))
    }

    async fn start_run(
        &self,
        _req: Request<StartRunRequest>,
    ) -> Result<Response<StartRunReply>, Status> {
        Err(Status::unimplemented("start_run"))
    }

    async fn run_action(
        &self,
        _req: Request<RunActionRequest>,
    ) -> Result<Response<Decided>, Status> {
        Err(Status::unimplemented("run_action"))
    }

    async fn record(&self, _req: Request<RecordRequest>) -> Result<Response<Decided>, Status> {
        Err(Status::unimplemented("record"))
    }

    async fn release_lease(
        &self,
        _req: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<Decided>, Status> {
        Err(Status::unimplemented("release_lease"))
    }

    async fn sync_degraded(
        &self,
        _req: Request<SyncDegradedRequest>,
    ) -> Result<Response<Decided>, Status> {
        Err(Status::unimplemented("sync_degraded"))
    }

    async fn planned_step(
        &self,
        req: Request<PlannedStepRequest>,
    ) -> Result<Response<PlannedStepReply>, Status> {
        self.planned_step_call(req).await
    }

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
        self.authorize_heartbeat(&req)?;
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.heartbeat(req.into_inner()).await;
        }
        let leases = self.on_heartbeat(&req.into_inner()).await;
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
        let reply = crate::runs::admin::operate(self, &r, &actor).await?;
        Ok(Response::new(OperateReply {
            json: reply.to_string(),
        }))
    }
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
mod tests {
    use super::*;
    use crate::audit::{AuditChain, AuditKind};

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
