//! PostgreSQL archive pushes at the primary: one archive file's changes journaled in
//! submissions of at most 32 changes, then waited for until the replica has them durable.
//! One push at a time per resource; touches the group's pipeline only.

use super::blocks::NodeBlocks;
use super::lock::lock;
use std::time::Duration;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::frame::Change;
use tandem_core::ids::Seq;
use tandem_core::proto::{ArchiveWalReply, ArchiveWalRequest};
use tonic::Status;
use tracing::info;

impl NodeBlocks {
    /// `ArchiveWal`: journals one PostgreSQL archive file and waits until the replica has it.
    pub(super) async fn push_wal(
        &self,
        req: ArchiveWalRequest,
    ) -> std::result::Result<ArchiveWalReply, Status> {
        let key = (req.group.clone(), req.resource.clone());
        let one = self.shared.wal_pushes.get(&key).cloned().ok_or_else(|| {
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
