//! PostgreSQL at the primary: archive pushes (one archive file's changes journaled in
//! submissions of at most 32 changes, then waited for until the replica has them durable; one
//! push at a time per resource; touches the group's pipeline only), and the poll of each
//! postgres resource's `pg_wal` folder for the heartbeat ([`pg_feeds`]: WAL not archived yet
//! and the feed's health, decided in [`crate::pg_feed`]).

use super::blocks::NodeBlocks;
use super::lock::lock;
use crate::pg_feed::{observe, Tracker};
use std::collections::BTreeMap;
use std::time::Duration;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::config::{Group, ResourceKind, Topology};
use tandem_core::frame::Change;
use tandem_core::ids::Seq;
use tandem_core::proto::{ArchiveWalReply, ArchiveWalRequest, ResourceHealth};
use tonic::Status;
use tracing::info;

impl NodeBlocks {
    /// `ArchiveWal`: journals one PostgreSQL archive file and waits until the replica has it.
    pub(super) async fn push_wal(
        &self,
        req: ArchiveWalRequest,
    ) -> std::result::Result<ArchiveWalReply, Status> {
        let key = (req.group.clone(), req.resource.clone());
        let one = lock(&self.shared.wal_pushes)
            .get(&key)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "group {:?} has no postgres resource {:?} on this replicator",
                    req.group, req.resource
                ))
            })?;
        let now = SystemClock::new().now_ms();
        let changes = tandem_core::walfile::changes(&req.resource, &req.name, &req.data, now)
            .map_err(|r| Status::invalid_argument(format!("archive file {:?}: {r}", req.name)))?;
        let hash = blake3::hash(&req.data).to_hex().to_string();
        let cell = lock(&self.shared.cells).get(&req.group).cloned();
        let _one = one.lock().await;
        let retry = || {
            Status::failed_precondition(format!(
                "group {:?} is not writable here (not the primary, no live lease, or intake stopped for a switchover); PostgreSQL will retry",
                req.group
            ))
        };
        let cell = cell.filter(|c| c.writable()).ok_or_else(retry)?;
        let p = cell.pipeline().ok_or_else(retry)?;
        let mut last = Seq(0);
        {
            let _g = cell.inflight.read().await;
            // At most 32 MiB of file per submission: well inside the 64 MiB frame limit.
            let mut rest = changes.into_iter();
            loop {
                let batch: Vec<Change> = rest.by_ref().take(32).collect();
                if batch.is_empty() {
                    break;
                }
                last = p
                    .submit(batch)
                    .await
                    .map_err(|e| Status::unavailable(format!("{}: {e}", req.name)))?;
            }
        }
        let wait = match req.timeout_ms {
            0 => Duration::from_secs(60),
            ms => Duration::from_millis(ms),
        };
        tokio::time::timeout(wait, p.wait_replica_durable(last))
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "{} journaled at seq {last} but the replica did not acknowledge it durable within {} ms",
                    req.name,
                    wait.as_millis()
                ))
            })?
            .map_err(|e| Status::unavailable(format!("{}: {e}", req.name)))?;
        info!(group = %req.group, resource = %req.resource, file = %req.name, bytes = req.data.len(), seq = last.0, "archive file durable at the replica");
        Ok(ArchiveWalReply {
            seq: last.0,
            blake3: hash,
        })
    }
}

/// [`poll_pg_feeds`] on the blocking pool, never on the async reactor (it reads folders and
/// may run `pg_controldata`); a group without postgres resources costs nothing.
pub(super) async fn pg_feeds(
    topo: &Topology,
    site: &str,
    g: &Group,
    trackers: &mut BTreeMap<String, Tracker>,
    now_ms: i64,
) -> Vec<ResourceHealth> {
    if !g
        .resources
        .iter()
        .any(|r| matches!(r.kind, ResourceKind::Postgres { .. }))
    {
        trackers.clear();
        return Vec::new();
    }
    let (topo, site, g) = (topo.clone(), site.to_owned(), g.clone());
    let mut owned = std::mem::take(trackers);
    let polled = tokio::task::spawn_blocking(move || {
        let feeds = poll_pg_feeds(&topo, &site, &g, &mut owned, now_ms);
        (feeds, owned)
    })
    .await;
    match polled {
        Ok((feeds, owned)) => {
            *trackers = owned;
            feeds
        }
        Err(e) => {
            tracing::warn!(error = %e, "polling pg_wal failed");
            Vec::new()
        }
    }
}

/// Polls the `pg_wal` folder of every postgres resource of primary group `g` at `site`
/// (blocking reads of a few directory entries and page headers; `pg_controldata` only for a
/// stopped server with unarchived WAL) and judges each feed with its tracker in `trackers`.
fn poll_pg_feeds(
    topo: &Topology,
    site: &str,
    g: &Group,
    trackers: &mut BTreeMap<String, Tracker>,
    now_ms: i64,
) -> Vec<ResourceHealth> {
    let mut out = Vec::new();
    for r in &g.resources {
        let ResourceKind::Postgres { bin_dir, .. } = &r.kind else {
            continue;
        };
        let Some(data_dir) = topo.resource_path(g, r, site) else {
            continue;
        };
        let controldata = || {
            let mut cmd = tandem_core::pgctl::command(bin_dir, "pg_controldata", &data_dir).ok()?;
            cmd.arg("-D").arg(&data_dir).env("LC_ALL", "C");
            tandem_core::pgctl::run(cmd).ok()
        };
        let obs = observe(&data_dir, now_ms, controldata);
        let h = trackers.entry(r.name.clone()).or_default().assess(&obs);
        let (last_archived, last_archived_ms) = h.last_archived.clone().unwrap_or_default();
        out.push(ResourceHealth {
            resource: r.name.clone(),
            state: h.state.as_str().into(),
            healthy: h.healthy(),
            last_archived,
            last_archived_ms,
            unarchived_segments: h.unarchived_segments,
            oldest_unarchived_ms: h.oldest_unarchived_ms.unwrap_or(0),
            detail: h.detail,
            ..Default::default()
        });
    }
    trackers.retain(|name, _| g.resources.iter().any(|r| &r.name == name));
    out
}
