//! Who is calling and may they: the caller's certificate (or, for a call a coordinator
//! forwards, the caller it names) classed by the topology and the group's current sites, then
//! checked against the authorization table ([`super::table`]). The actor of everything the
//! call decides is that certificate's identity. Refusals are logged, and recorded in the audit
//! chain in aggregate ([`crate::refusals`]).

use super::table::{self, Call};
use crate::audit::AuditKind;
use crate::handle::coordinator::{lock, Coordinator};
use crate::refusals::Refused;
use crate::state::Command;
use serde_json::json;
use tandem_core::authz::{actor_of, classify, GroupSites};
use tandem_core::certs::Role;
use tandem_core::net::Caller;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};
use tracing::warn;

/// The metadata key a coordinator names the original caller under when it forwards a call to
/// the leader. Honoured only from a coordinator's certificate.
const FORWARDED_FOR: &str = "x-tandem-for-bin";

/// A checked caller.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    /// Who the certificate says (or the forwarding coordinator says) called.
    pub(crate) caller: Caller,
    /// The actor to record: the certificate's identity.
    pub(crate) actor: String,
}

/// The caller as the forwarding header carries it.
fn encode(caller: &Caller) -> String {
    match caller {
        Caller::Anonymous => "anonymous".into(),
        Caller::Node(n) => format!("node\n{n}"),
        Caller::Client { name, role } => format!("client\n{role}\n{name}"),
    }
}

fn decode(text: &str) -> Option<Caller> {
    let mut parts = text.splitn(3, '\n');
    match (parts.next()?, parts.next(), parts.next()) {
        ("anonymous", None, None) => Some(Caller::Anonymous),
        ("node", Some(n), None) if !n.is_empty() => Some(Caller::Node(n.to_owned())),
        ("client", Some(role), Some(name)) if !name.is_empty() => Some(Caller::Client {
            name: name.to_owned(),
            role: Role::parse(role)?,
        }),
        _ => None,
    }
}

/// `msg` as a request to the leader that names `who` as its caller.
pub(crate) fn forwarded<M>(msg: M, who: &Who) -> Request<M> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert_bin(
        FORWARDED_FOR,
        MetadataValue::from_bytes(encode(&who.caller).as_bytes()),
    );
    r
}

impl Coordinator {
    /// The caller of `req`: its certificate's identity; for a call forwarded by a coordinator,
    /// the caller that coordinator names.
    fn caller_of<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let direct = self.inner.net.caller(req)?;
        let Caller::Node(n) = &direct else {
            return Ok(direct);
        };
        if !self.is_coordinator(n) {
            return Ok(direct);
        }
        match req.metadata().get_bin(FORWARDED_FOR) {
            None => Ok(direct),
            Some(v) => {
                let bytes = v.to_bytes().map_err(|e| {
                    Status::invalid_argument(format!("{FORWARDED_FOR} from {n}: {e}"))
                })?;
                std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(decode)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{FORWARDED_FOR} from {n} names no caller"
                        ))
                    })
            }
        }
    }

    /// Checks the caller of `req` against the table for `call` (about `group`, for the
    /// group-scoped calls). Returns who called; a refusal is logged, recorded (aggregated) and
    /// answered `PermissionDenied` (or `Unauthenticated`) naming the certificate and the call.
    pub(crate) async fn gate<T>(
        &self,
        req: &Request<T>,
        call: Call,
        group: Option<&str>,
    ) -> Result<Who, Status> {
        let name = table::name(call);
        let caller = match self.caller_of(req) {
            Ok(c) => c,
            Err(status) => {
                self.refused("unknown", "none", name, status.message())
                    .await;
                return Err(status);
            }
        };
        let sites = group.filter(|_| table::group_scoped(call)).and_then(|g| {
            self.read(|s| {
                s.group(g).map(|x| {
                    let hosts = x.placed_hosts();
                    (g, x.primary_site.clone(), x.replica_site.clone(), hosts)
                })
            })
        });
        let class = classify(
            self.topo(),
            &caller,
            sites.as_ref().map(|(g, p, r, h)| GroupSites {
                group: g,
                primary: p,
                replica: r,
                hosts: Some(h),
            }),
        );
        let actor = actor_of(&caller);
        if table::allowed(call, class) {
            return Ok(Who { caller, actor });
        }
        let about = group.map(|g| format!(" for group {g}")).unwrap_or_default();
        let why = format!("{actor} ({class}) may not call {name}{about}");
        self.refused(&actor, class.as_str(), name, &why).await;
        Err(Status::permission_denied(why))
    }

    /// A refusal: logged; recorded in the audit chain if it is the first of its window.
    pub(crate) async fn refused(&self, actor: &str, role: &str, call: &str, reason: &str) {
        warn!(%actor, %role, call, reason, "call refused");
        let first = lock(&self.inner.refusals).note(self.now_ms(), actor, role, call, reason);
        if let Some(r) = first {
            self.record_refusal(r).await;
        }
    }

    /// Commits one `refused` record (on the leader, via it from a follower).
    pub(crate) async fn record_refusal(&self, r: Refused) {
        let cmd = Command::Record {
            at_ms: 0,
            actor: r.actor.clone(),
            kind: AuditKind::Refused,
            group: None,
            detail: json!({"call": r.call, "role": r.role, "reason": r.reason, "count": r.count,
                "first_ms": r.first_ms, "last_ms": r.last_ms}),
        };
        if let Err(e) = self.propose_via_leader(&cmd).await {
            warn!("could not audit a refused call: {}", e.message());
        }
    }

    /// Records the refusals counted in windows that have ended.
    pub(crate) async fn flush_refusals(&self) {
        let due = lock(&self.inner.refusals).flush(self.now_ms());
        for r in due {
            self.record_refusal(r).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_forwarding_header_round_trips_every_caller_and_refuses_garbage() {
        for c in [
            Caller::Anonymous,
            Caller::Node("hcm-rep".into()),
            Caller::Client {
                name: "Nguyễn Văn A".into(),
                role: Role::Operator,
            },
            Caller::Client {
                name: "a\nb".into(),
                role: Role::Viewer,
            },
        ] {
            assert_eq!(decode(&encode(&c)), Some(c));
        }
        for bad in [
            "",
            "node",
            "node\n",
            "client\nking\nx",
            "client\noperator\n",
            "x\ny",
        ] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
