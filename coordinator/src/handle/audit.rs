//! Reading the audit chain on this coordinator: recent records from the state's tail, older
//! ones from the audit store, never across a gap the node has not back-filled yet; and what the
//! back-fill needs (the gap, the hashes it must meet, the other coordinators). Thin: the
//! decisions are `crate::audit::backfill`'s.

use super::coordinator::{lock, Coordinator};
use crate::audit::backfill::{read_plan, Gap};
use crate::audit::store::AuditStore;
use crate::audit::AuditRecord;

/// Why this coordinator cannot serve a range of the audit chain.
#[derive(Debug, thiserror::Error)]
pub enum AuditReadError {
    /// The node installed a snapshot and has not back-filled these records from a peer yet.
    #[error("this coordinator lacks {0} (installed a snapshot; back-filling from a peer): ask another coordinator")]
    Missing(Gap),
    /// The audit store failed or holds a corrupt record.
    #[error("audit store: {0}")]
    Store(String),
}

/// What the back-fill needs to fill the top of the gap: the store, the gap, the `prev_hash` of
/// record `gap.hi` (the anchor a page must end at) and the hash of record `gap.lo - 1`, when
/// held.
pub(crate) struct GapToFill {
    pub(crate) store: AuditStore,
    pub(crate) gap: Gap,
    pub(crate) anchor: String,
    pub(crate) below: Option<String>,
}

impl Coordinator {
    /// Up to `limit` audit records from index `from`, oldest first: empty past the head, fewer
    /// than `limit` before a record this node lacks.
    ///
    /// # Errors
    /// [`AuditReadError::Missing`] naming the range when `from` is inside a gap (the chain is
    /// not served partially), or a store error.
    pub(crate) fn audit_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, AuditReadError> {
        let sm = self.inner.raft.state_machine();
        let (store, plan, tail) = {
            let g = lock(&sm);
            let chain = g.state.audit();
            let gap = match &g.audit {
                Some(s) => s.gap().map_err(|e| AuditReadError::Store(e.to_string()))?,
                None => None,
            };
            let plan = read_plan(from, limit as u64, chain.tail_first(), gap)
                .map_err(AuditReadError::Missing)?;
            let tail = match plan.tail_from {
                Some(t) => {
                    let room = limit.saturating_sub(usize::try_from(plan.disk).unwrap_or(0));
                    chain.tail_range(t, room).unwrap_or_default().to_vec()
                }
                None => Vec::new(),
            };
            (g.audit.clone(), plan, tail)
        };
        if plan.disk == 0 {
            return Ok(tail);
        }
        let Some(store) = store else {
            // Records below the tail without a store: a snapshot from a node that had one.
            return Err(AuditReadError::Missing(Gap {
                lo: from,
                hi: from + plan.disk,
            }));
        };
        let limit_disk = usize::try_from(plan.disk).unwrap_or(usize::MAX);
        let mut out = store
            .range(from, limit_disk)
            .map_err(|e| AuditReadError::Store(e.to_string()))?;
        if out.is_empty() {
            return Err(AuditReadError::Missing(Gap {
                lo: from,
                hi: from + plan.disk,
            }));
        }
        if out.len() == limit_disk {
            out.extend(tail);
        }
        Ok(out)
    }

    /// The gap this node must still fill, with the hashes a page must meet; `None` when the
    /// node holds the whole chain (or keeps it in memory).
    ///
    /// # Errors
    /// A store error.
    pub(crate) fn audit_gap(&self) -> Result<Option<GapToFill>, AuditReadError> {
        let sm = self.inner.raft.state_machine();
        let g = lock(&sm);
        let Some(store) = g.audit.clone() else {
            return Ok(None);
        };
        let err = |e: crate::raft::storage::StorageError| AuditReadError::Store(e.to_string());
        let Some(gap) = store.gap().map_err(err)? else {
            return Ok(None);
        };
        let chain = g.state.audit();
        let anchor = match chain.tail_range(gap.hi, 1).and_then(|r| r.first()) {
            Some(r) => Some(r.prev_hash.clone()),
            None => store.get(gap.hi).map_err(err)?.map(|r| r.prev_hash),
        };
        let Some(anchor) = anchor else {
            return Err(AuditReadError::Store(format!(
                "record {} above the gap is not held",
                gap.hi
            )));
        };
        let below = match gap.lo.checked_sub(1) {
            Some(i) => store.get(i).map_err(err)?.map(|r| r.hash),
            None => None,
        };
        Ok(Some(GapToFill {
            store,
            gap,
            anchor,
            below,
        }))
    }

    /// The admin addresses of the other coordinators.
    pub(crate) fn peer_coordinator_addrs(&self) -> Vec<String> {
        self.inner
            .names
            .values()
            .filter(|n| **n != self.inner.name)
            .filter_map(|n| self.inner.topo.node(n))
            .map(|n| format!("http://{}", n.listen))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::coordinator::AUDIT_TAIL_KEEP;
    use super::*;
    use crate::audit::backfill::{accept_page, next_request};
    use crate::audit::{verify_chain, AuditKind};
    use crate::raft::StateMachine;
    use crate::server::CoordinatorSm;
    use crate::state::{ClusterSettings, Command, SiteSpec};
    use serde_json::json;

    /// A state machine over an empty temporary store, not bootstrapped.
    fn empty() -> CoordinatorSm {
        let mut sm = CoordinatorSm::default();
        let db = sled::Config::new().temporary(true).open().unwrap();
        sm.attach(&db).unwrap();
        sm
    }

    /// A bootstrapped state machine over a temporary store.
    fn sm() -> CoordinatorSm {
        let mut sm = empty();
        let site = |name: &str| SiteSpec {
            name: name.into(),
            witness: false,
            jurisdiction: None,
        };
        let boot = Command::Bootstrap {
            at_ms: 0,
            actor: "ops".into(),
            settings: ClusterSettings {
                lease_ttl_ms: 2_000,
                drift_margin_ms: 500,
                detect_after_ms: 3_000,
                rpo_audit_every_ms: Some(60_000),
            },
            sites: vec![site("hanoi"), site("hcm")],
            groups: Vec::new(),
        };
        let reply = sm.apply(1, &serde_json::to_vec(&boot).unwrap());
        assert!(String::from_utf8_lossy(&reply).contains("\"ok\""));
        sm
    }

    fn note(sm: &mut CoordinatorSm, i: u64) {
        let cmd = Command::Record {
            at_ms: i as i64,
            actor: "alice".into(),
            kind: AuditKind::Note,
            group: None,
            detail: json!({ "n": i }),
        };
        let reply = sm.apply(i, &serde_json::to_vec(&cmd).unwrap());
        assert!(String::from_utf8_lossy(&reply).contains("\"ok\""));
    }

    #[test]
    fn applied_records_go_to_disk_and_memory_keeps_a_bounded_tail() {
        // 1. Apply far more records than the tail keeps.
        let mut a = sm();
        let n = 3 * AUDIT_TAIL_KEEP;
        for i in 1..n {
            note(&mut a, i);
            assert!(a.state.audit().records().len() as u64 <= AUDIT_TAIL_KEEP * 5 / 4 + 1);
        }
        let chain = a.state.audit();
        assert_eq!(chain.len() as u64, n);
        assert!(chain.tail_first() > 0);
        // 2. The store holds the whole chain, and it verifies.
        let store = a.audit.clone().unwrap();
        let all = store.range(0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, n);
        assert_eq!(verify_chain(&all), Ok(()));
        assert_eq!(all.last().unwrap().hash, chain.head_hash());
    }

    #[test]
    fn a_node_restored_from_a_snapshot_names_its_gap_then_fills_it_from_a_peer() {
        let mut a = sm();
        let n = 2 * AUDIT_TAIL_KEEP + 100;
        for i in 1..n {
            note(&mut a, i);
        }
        // 1. A new node installs a's snapshot: head and tail only.
        let snap = a.snapshot();
        let mut b = empty();
        b.restore(&snap).unwrap();
        let first = b.state.audit().tail_first();
        assert!(first > 0);
        let store = b.audit.clone().unwrap();
        let gap = store.gap().unwrap().unwrap();
        assert_eq!((gap.lo, gap.hi), (0, first));
        // 2. Reads inside the gap are refused naming it; reads of the tail are served.
        assert_eq!(read_plan(10, 5, first, Some(gap)), Err(gap));
        assert!(read_plan(first, 5, first, Some(gap)).is_ok());
        // 3. Fill it from a's store page by page, downwards, each page checked.
        let peer = a.audit.clone().unwrap();
        let mut left = Some(gap);
        while let Some(g) = left {
            let (from, limit) = next_request(g, 1_000);
            let page = peer.range(from, limit as usize).unwrap();
            let anchor = match store.get(g.hi).unwrap() {
                Some(r) => r.prev_hash,
                None => b.state.audit().records()[0].prev_hash.clone(),
            };
            left = accept_page(g, from, &page, &anchor, None).unwrap();
            store.put(&page).unwrap();
            store.set_gap(left).unwrap();
        }
        // 4. b now holds the whole chain, equal to a's.
        let all = store.range(0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, n);
        assert_eq!(all, peer.range(0, usize::MAX).unwrap());
        // 5. b keeps applying after the head.
        note(&mut b, n);
        assert_eq!(b.state.audit().len() as u64, n + 1);
        assert_eq!(verify_chain(&store.range(0, usize::MAX).unwrap()), Ok(()));
    }
}
