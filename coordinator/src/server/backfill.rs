//! Back-filling the audit chain after a snapshot: a node that installed a snapshot holds the
//! head and the tail of the chain but may lack older records. This loop asks the other
//! coordinators for them with `Audit` (the call `tandem evidence export` pages with), page by
//! page downwards from the tail, and keeps a page only when [`accept_page`] finds it is the
//! chain's own (it meets the hash the record above it names). Until the gap is filled, reads
//! inside it are refused naming it. Thin I/O: the decisions are in `crate::audit::backfill`.

use crate::audit::backfill::{accept_page, next_request};
use crate::audit::AuditRecord;
use crate::handle::coordinator::Coordinator;
use std::time::Duration;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::AuditRequest;

/// Records asked per page. A reply is also cut by its byte limit; a shorter page is asked
/// again at the length the peer sent.
const PAGE: u64 = 512;

/// Runs until `stop`: every 2 s, while this node lacks records, fills its gap from the first
/// coordinator whose page links.
pub(crate) async fn backfill_audit(c: Coordinator, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut page = PAGE;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        loop {
            match fill_once(&c, page).await {
                Ok(Step::Done) => break,
                Ok(Step::More) => page = PAGE,
                Ok(Step::Shorter(got)) => page = got.max(1),
                Err(why) => {
                    tracing::warn!(%why, "audit back-fill: no coordinator sent a page that links");
                    break;
                }
            }
        }
    }
}

/// What one attempt did.
enum Step {
    /// Nothing (left) to fill.
    Done,
    /// A page was kept; more to fill.
    More,
    /// A peer sent fewer records than asked (its reply's byte limit): ask that many.
    Shorter(u64),
}

async fn fill_once(c: &Coordinator, page: u64) -> Result<Step, String> {
    let Some(todo) = c.audit_gap().map_err(|e| e.to_string())? else {
        return Ok(Step::Done);
    };
    let gap = todo.gap;
    let (from, limit) = next_request(gap, page);
    let mut why = String::from("no other coordinator");
    for addr in c.peer_coordinator_addrs() {
        let recs = match fetch(c, &addr, from, limit).await {
            Ok(r) => r,
            Err(e) => {
                why = format!("{addr}: {e}");
                continue;
            }
        };
        if !recs.is_empty() && (recs.len() as u64) < limit {
            return Ok(Step::Shorter(recs.len() as u64));
        }
        match accept_page(gap, from, &recs, &todo.anchor, todo.below.as_deref()) {
            Ok(left) => {
                todo.store.put(&recs).map_err(|e| e.to_string())?;
                todo.store.set_gap(left).map_err(|e| e.to_string())?;
                tracing::info!(from, to = gap.hi, peer = %addr, "audit records back-filled");
                return Ok(if left.is_some() {
                    Step::More
                } else {
                    Step::Done
                });
            }
            Err(e) => why = format!("{addr}: page {from}..{} refused: {e}", gap.hi),
        }
    }
    Err(why)
}

/// One `Audit` page from the coordinator at `addr`.
async fn fetch(
    c: &Coordinator,
    addr: &str,
    from: u64,
    limit: u64,
) -> Result<Vec<AuditRecord>, String> {
    let net = c.net();
    let ep = net
        .endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(30));
    let ch = net.connect(ep).await.map_err(|e| e.to_string())?;
    let mut client = tandem_core::grpc_limits!(CoordinatorClient::new(ch));
    let reply = client
        .audit(AuditRequest {
            from_index: from,
            limit,
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    reply
        .records
        .iter()
        .map(|l| serde_json::from_str::<AuditRecord>(l).map_err(|e| e.to_string()))
        .collect()
}
