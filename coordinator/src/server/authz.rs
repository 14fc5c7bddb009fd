//! Who may call what: the caller's certificate (node, or a person's role) checked against
//! what a call of the admin API needs; refusals are recorded in the audit chain.

use crate::handle::coordinator::Coordinator;
use serde_json::json;
use tandem_core::certs::Role;
use tandem_core::net::Caller;
use tonic::{Request, Status};
use tracing::warn;

/// What a call of the admin API needs from its caller's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// Any role (viewer, auditor, operator) or any node: status.
    Status,
    /// Auditor or operator, or a coordinator: the audit chain, evidence, run reports.
    Audit,
    /// Operator, or a node (replicators propose lease releases and their own records).
    Propose,
    /// Operator, or a coordinator (forwarding): runs, drills, switchover, failover, approvals.
    Operate,
}

impl Coordinator {
    /// refusal is recorded in the audit chain (actor, role, call, reason).
    pub(super) async fn authorize<T>(
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

    /// A heartbeat speaks for node `node`: the caller's certificate must name that node (or
    /// a coordinator forwarding it to the leader); people and tools may not send one.
    pub(super) fn authorize_heartbeat(
        &self,
        req: &Request<tandem_core::proto::HeartbeatRequest>,
    ) -> Result<(), Status> {
        let claimed = req.get_ref().node.clone();
        match self.inner.net.caller(req)? {
            Caller::Node(n) if n != claimed && !self.is_coordinator(&n) => {
                Err(Status::permission_denied(format!(
                    "certificate names node {n} but the heartbeat claims to be node {claimed}"
                )))
            }
            Caller::Client { name, role } => Err(Status::permission_denied(format!(
                "{name} ({role}) is not a node and may not send heartbeats"
            ))),
            _ => Ok(()),
        }
    }
}
