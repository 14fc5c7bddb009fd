//! The admin API (`Coordinator` gRPC service): status, audit pages, proposals, heartbeats and
//! operations, each authorized, then answered here on the leader or forwarded to it.

use super::authz::forwarded;
use super::table::Call;
use crate::audit::AuditKind;
use crate::handle::audit::AuditReadError;
use crate::handle::coordinator::Coordinator;
use crate::runs::admin;
use crate::state::Command;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tandem_core::proto::coordinator_server::Coordinator as CoordinatorApi;
use tandem_core::proto::{
    ActionReply, ActionsReply, ActionsRequest, AddActionRequest, AssignActionRequest,
    CloseActionRequest, SignReviewReply, SignReviewRequest,
};
use tandem_core::proto::{
    AuditReply, AuditRequest, Decided, GetRunReply, GetRunRequest, GroupCall, HeartbeatReply,
    HeartbeatRequest, MoveRequest, PlannedStepReply, PlannedStepRequest, ProposeReply,
    ProposeRequest, RecordKind, RecordRequest, ReleaseLeaseRequest, RunActionRequest, RunsReply,
    RunsRequest, SignAuditHeadReply, SignAuditHeadRequest, StartRunReply, StartRunRequest,
    StatusReply, StatusRequest, SyncDegradedRequest,
};
use tonic::{Request, Response, Status};

/// `req`'s message, as the leader must see it: through the forwarding client when this node
/// is not the leader (naming the caller), answered here otherwise.
macro_rules! on_leader {
    ($self:ident, $who:expr, $req:expr, $method:ident) => {
        if !$self.is_leader() {
            let mut c = $self.leader_client().await?;
            return c.$method(forwarded($req, &$who)).await;
        }
    };
}

impl Coordinator {
    /// Commits a pause or resume of `r.group` as `actor`, on the leader.
    async fn pause_or_resume(
        &self,
        pause: bool,
        r: GroupCall,
        actor: String,
    ) -> Result<Response<Decided>, Status> {
        let cmd = Command::pause_or_resume(pause, r.group, actor, r.reason);
        let events = self.propose_cmd(cmd).await?;
        Ok(Response::new(decided(self, &events)))
    }
}

impl Coordinator {
    /// A move's target must be a replicator of the topology at the move's site.
    fn check_move_target(&self, r: &MoveRequest) -> Result<(), Status> {
        use tandem_core::config::NodeRole;
        let topo = self.topo();
        if topo.group(&r.group).is_none() {
            return Err(Status::not_found(format!(
                "move: no group {:?} in the topology",
                r.group
            )));
        }
        match topo.node(&r.to) {
            None => Err(Status::invalid_argument(format!(
                "move: to = {:?} is no node of the topology",
                r.to
            ))),
            Some(n) if n.role != NodeRole::Replicator => Err(Status::invalid_argument(format!(
                "move: to = {:?} is a {}, not a replicator",
                r.to, n.role
            ))),
            Some(n) if n.site != r.site => Err(Status::invalid_argument(format!(
                "move: to = {:?} is at site {:?}, not {:?}",
                r.to, n.site, r.site
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// The reply to a committed decision.
fn decided(c: &Coordinator, events: &Value) -> Decided {
    let events = match events {
        Value::Array(a) => a.iter().map(Value::to_string).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    };
    Decided {
        index: c.commit_index(),
        events,
    }
}

#[tonic::async_trait]
impl CoordinatorApi for Coordinator {
    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        self.gate(&req, Call::Status, None).await?;
        let only = req.into_inner().groups;
        let mut stale = false;
        if !self.is_leader() {
            if let Ok(mut c) = self.leader_client().await {
                let ask = StatusRequest {
                    groups: only.clone(),
                };
                if let Ok(r) = c.status(ask).await {
                    return Ok(r);
                }
            }
            stale = true;
        }
        let doc = self.status_doc(stale, &only);
        let json = serde_json::to_string(&doc).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(StatusReply { json }))
    }

    async fn audit(&self, req: Request<AuditRequest>) -> Result<Response<AuditReply>, Status> {
        self.gate(&req, Call::Audit, None).await?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(10_000)
        } as usize;
        let records = self
            .audit_records(r.from_index, limit)
            .map_err(|e| match e {
                AuditReadError::Missing(_) => Status::unavailable(e.to_string()),
                AuditReadError::Store(_) => Status::internal(e.to_string()),
            })?;
        let records = audit_page(&records, tandem_core::limits::MAX_AUDIT_REPLY_BYTES);
        Ok(Response::new(AuditReply { records }))
    }

    async fn runs(&self, req: Request<RunsRequest>) -> Result<Response<RunsReply>, Status> {
        self.gate(&req, Call::Runs, None).await?;
        let runs = admin::runs(self, &req.get_ref().group);
        Ok(Response::new(RunsReply { runs }))
    }

    async fn get_run(&self, req: Request<GetRunRequest>) -> Result<Response<GetRunReply>, Status> {
        self.gate(&req, Call::GetRun, None).await?;
        let run = admin::get_run(self, &req.get_ref().run_id)?;
        let json = serde_json::to_string(&run).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(GetRunReply { json }))
    }

    async fn pause(&self, req: Request<GroupCall>) -> Result<Response<Decided>, Status> {
        let who = self.gate(&req, Call::Pause, None).await?;
        let r = req.into_inner();
        on_leader!(self, who, r, pause);
        self.pause_or_resume(true, r, who.actor).await
    }

    async fn resume(&self, req: Request<GroupCall>) -> Result<Response<Decided>, Status> {
        let who = self.gate(&req, Call::Resume, None).await?;
        let r = req.into_inner();
        on_leader!(self, who, r, resume);
        self.pause_or_resume(false, r, who.actor).await
    }

    async fn start_run(
        &self,
        req: Request<StartRunRequest>,
    ) -> Result<Response<StartRunReply>, Status> {
        let who = self.gate(&req, Call::StartRun, None).await?;
        let r = req.into_inner();
        let kind = admin::run_kind(r.kind())?;
        on_leader!(self, who, r, start_run);
        let params: BTreeMap<String, String> = r.params.into_iter().collect();
        let run_id = admin::start(self, kind, &r.group, &who.actor, &params, None).await?;
        Ok(Response::new(StartRunReply { run_id }))
    }

    async fn run_action(
        &self,
        req: Request<RunActionRequest>,
    ) -> Result<Response<Decided>, Status> {
        let who = self.gate(&req, Call::RunAction, None).await?;
        let r = req.into_inner();
        on_leader!(self, who, r, run_action);
        let events = admin::run_action(self, &r, &who.actor).await?;
        Ok(Response::new(decided(self, &events)))
    }

    async fn record(&self, req: Request<RecordRequest>) -> Result<Response<Decided>, Status> {
        let who = self.gate(&req, Call::Record, None).await?;
        let r = req.into_inner();
        let cmd = record_command(&r, &who.actor)?;
        on_leader!(self, who, r, record);
        let events = self.propose_cmd(cmd).await?;
        Ok(Response::new(decided(self, &events)))
    }

    async fn r#move(&self, req: Request<MoveRequest>) -> Result<Response<Decided>, Status> {
        let who = self.gate(&req, Call::Move, None).await?;
        let r = req.into_inner();
        on_leader!(self, who, r, r#move);
        self.check_move_target(&r)?;
        let events = self
            .propose_cmd(Command::MoveGroup {
                at_ms: 0,
                group: r.group,
                site: r.site,
                to: r.to,
                actor: who.actor,
                reason: r.reason,
            })
            .await?;
        Ok(Response::new(decided(self, &events)))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let who = self.gate(&req, Call::Heartbeat, None).await?;
        let r = req.into_inner();
        let checked = self.checked_heartbeat(r, &who)?;
        on_leader!(self, who, checked, heartbeat);
        let leases = self.on_heartbeat(&checked).await;
        Ok(Response::new(HeartbeatReply {
            leases,
            leader: self.inner.name.clone(),
        }))
    }

    async fn release_lease(
        &self,
        req: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<Decided>, Status> {
        let group = req.get_ref().group.clone();
        let who = self.gate(&req, Call::ReleaseLease, Some(&group)).await?;
        let r = req.into_inner();
        let node = self.node_of(&who, &r.node)?;
        on_leader!(self, who, r, release_lease);
        let events = self
            .propose_cmd(Command::ReleaseLease {
                at_ms: 0,
                group: r.group,
                node,
                epoch: tandem_core::ids::Epoch(r.epoch),
            })
            .await?;
        Ok(Response::new(decided(self, &events)))
    }

    async fn sync_degraded(
        &self,
        req: Request<SyncDegradedRequest>,
    ) -> Result<Response<Decided>, Status> {
        let group = req.get_ref().group.clone();
        let who = self.gate(&req, Call::SyncDegraded, Some(&group)).await?;
        let r = req.into_inner();
        let node = self.node_of(&who, &r.node)?;
        let site = self.site_of(&node)?;
        on_leader!(self, who, r, sync_degraded);
        let events = self
            .propose_cmd(Command::SyncDegraded {
                at_ms: 0,
                group: r.group,
                node,
                site,
                epoch: tandem_core::ids::Epoch(r.epoch),
                on: r.on,
            })
            .await?;
        Ok(Response::new(decided(self, &events)))
    }

    async fn planned_step(
        &self,
        req: Request<PlannedStepRequest>,
    ) -> Result<Response<PlannedStepReply>, Status> {
        self.gate(&req, Call::PlannedStep, None).await?;
        self.planned_step_call(req).await
    }

    async fn sign_audit_head(
        &self,
        req: Request<SignAuditHeadRequest>,
    ) -> Result<Response<SignAuditHeadReply>, Status> {
        self.sign_audit_head_call(req).await
    }

    async fn add_action(
        &self,
        req: Request<AddActionRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.add_action_call(req).await
    }

    async fn assign_action(
        &self,
        req: Request<AssignActionRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.assign_action_call(req).await
    }

    async fn close_action(
        &self,
        req: Request<CloseActionRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.close_action_call(req).await
    }

    async fn actions(
        &self,
        req: Request<ActionsRequest>,
    ) -> Result<Response<ActionsReply>, Status> {
        self.actions_call(req).await
    }

    async fn sign_review(
        &self,
        req: Request<SignReviewRequest>,
    ) -> Result<Response<SignReviewReply>, Status> {
        self.sign_review_call(req).await
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        self.gate(&req, Call::Propose, None).await?;
        let r = req.into_inner();
        let cmd: Command = serde_json::from_str(&r.command)
            .map_err(|e| Status::invalid_argument(format!("command is not a command: {e}")))?;
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.propose(r).await;
        }
        let events = self.propose_cmd(cmd).await?;
        Ok(Response::new(ProposeReply {
            index: self.commit_index(),
            events: events.to_string(),
        }))
    }
}

/// The `record` command for an operator's Record call: only the kinds a person may add, a
/// JSON object of at most 64 KiB as detail (the group is checked by the state machine).
/// Pure: the `admin_request` fuzz target applies what it makes.
///
/// # Errors
/// `InvalidArgument` naming the field.
pub fn record_command(r: &RecordRequest, actor: &str) -> Result<Command, Status> {
    let kind = match r.kind() {
        RecordKind::Note => AuditKind::Note,
        RecordKind::Operator => AuditKind::Operator,
        RecordKind::Verify => AuditKind::Verify,
        RecordKind::Recover => AuditKind::Recover,
        RecordKind::Unspecified => {
            return Err(Status::invalid_argument(
                "Record: kind must be note, operator, verify or recover",
            ))
        }
    };
    if r.detail_json.len() > MAX_RECORD_DETAIL {
        return Err(Status::invalid_argument(format!(
            "Record: detail_json is {} bytes, more than {MAX_RECORD_DETAIL}",
            r.detail_json.len()
        )));
    }
    let detail: Value = if r.detail_json.is_empty() {
        json!({})
    } else {
        serde_json::from_str(&r.detail_json)
            .map_err(|e| Status::invalid_argument(format!("Record: detail_json: {e}")))?
    };
    if !detail.is_object() {
        return Err(Status::invalid_argument(
            "Record: detail_json must be a JSON object",
        ));
    }
    Ok(Command::Record {
        at_ms: 0,
        actor: actor.to_owned(),
        kind,
        group: (!r.group.is_empty()).then(|| r.group.clone()),
        detail,
    })
}

/// Most bytes of a Record call's detail.
const MAX_RECORD_DETAIL: usize = 64 * 1024;

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
