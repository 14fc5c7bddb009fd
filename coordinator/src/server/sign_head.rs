//! `SignAuditHead` on the leader: sign an audit-chain head that is in this node's own committed
//! chain, with this node's certificate key (the files its TLS identity is served from, read at
//! each call so a rotated certificate signs at once). A follower forwards the call.

use super::authz::forwarded;
use super::table::Call;
use crate::evidence::sign::{self, HeadClaim};
use crate::handle::coordinator::Coordinator;
use tandem_core::certs;
use tandem_core::proto::{SignAuditHeadReply, SignAuditHeadRequest};
use tonic::{Request, Response, Status};

/// Why the leader refuses to sign `(index, hash)` given the hash its own chain has at `index`
/// (`None`: the chain does not reach it). Pure.
pub(crate) fn refusal(index: u64, hash: &str, own: Option<&str>) -> Option<String> {
    match own {
        None => Some(format!(
            "SignAuditHead: record {index} (hash {hash}) is not in this leader's audit chain (it does not reach index {index})"
        )),
        Some(h) if h != hash => Some(format!(
            "SignAuditHead: record {index} has hash {h} in this leader's audit chain, not {hash}"
        )),
        Some(_) => None,
    }
}

impl Coordinator {
    /// The `SignAuditHead` call: authorize, forward to the leader, check the head is in this
    /// chain, sign.
    pub(crate) async fn sign_audit_head_call(
        &self,
        req: Request<SignAuditHeadRequest>,
    ) -> Result<Response<SignAuditHeadReply>, Status> {
        let who = self.gate(&req, Call::SignAuditHead, None).await?;
        let r = req.into_inner();
        if !self.is_leader() {
            let mut c = self.leader_client().await?;
            return c.sign_audit_head(forwarded(r, &who)).await;
        }
        let own = self
            .audit_records(r.index, 1)
            .map_err(|e| Status::unavailable(format!("SignAuditHead: {e}")))?
            .into_iter()
            .find(|rec| rec.index == r.index)
            .map(|rec| rec.hash);
        if let Some(why) = refusal(r.index, &r.hash, own.as_deref()) {
            return Err(Status::failed_precondition(why));
        }
        let tls = &self.topo().tls;
        if tls.insecure {
            return Err(Status::failed_precondition(
                "SignAuditHead: this cluster runs without TLS ([tls] insecure = true): no node certificate to sign with",
            ));
        }
        let node = self.inner.name.clone();
        let read = |p: std::path::PathBuf| async move {
            tokio::fs::read_to_string(&p)
                .await
                .map_err(|e| Status::internal(format!("SignAuditHead: {}: {e}", p.display())))
        };
        let key_pem = read(certs::key_path(&tls.dir, &node)).await?;
        let certificate_pem = read(certs::cert_path(&tls.dir, &node)).await?;
        let claim = HeadClaim {
            cluster: self.topo().cluster.name.clone(),
            signer: node,
            index: r.index,
            hash: r.hash,
            signed_at_ms: self.now_ms(),
        };
        let signature = sign::sign(&claim, &key_pem)
            .map_err(|e| Status::failed_precondition(format!("SignAuditHead: {e}")))?;
        Ok(Response::new(SignAuditHeadReply {
            cluster: claim.cluster,
            index: claim.index,
            hash: claim.hash,
            signer: claim.signer,
            signed_at_ms: claim.signed_at_ms,
            algorithm: sign::ALGORITHM.into(),
            signature,
            certificate_pem,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_refuses_a_head_not_in_its_chain_naming_index_and_hash() {
        let h = "ab".repeat(32);
        assert_eq!(refusal(3, &h, Some(&h)), None);
        let why = refusal(3, &h, Some(&"cd".repeat(32))).unwrap_or_default();
        assert!(why.contains("record 3") && why.contains(&h), "{why}");
        let why = refusal(9, &h, None).unwrap_or_default();
        assert!(why.contains("record 9") && why.contains(&h), "{why}");
    }
}
