//! Verify and resync of a scenario's groups through the cluster client: a volume group is
//! compared by the primary's `Verify` RPC and the result recorded in the audit chain (op
//! `record`, kind `verify`, actor `chaos`), as `tandem verify` does; a database group is
//! verified by the host; a resync follows the replica's `Resync` stream and records it. Prints
//! the same lines `tandem verify` and `tandem resync` print. I/O: gRPC, stdout.

use std::time::{Duration, Instant};
use tandem_core::proto::RecordKind;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tandem_coordinator::status::ClusterStatus;
use tandem_core::client::verdict::{verdict_detail, verdict_line};
use tandem_core::client::{ClientError, Replicator};
use tandem_core::config::ResourceKind;
use tandem_core::proto::VerifyRequest;

use super::cluster::Ctx;
use super::host::Host;

/// Who the runner is in the audit chain.
const ACTOR: &str = "chaos";
/// Bytes of a volume hashed under one barrier.
const CHUNK_BYTES: u64 = 64 << 20;
/// How long a barrier may wait for the replica.
const VERIFY_TIMEOUT_MS: u64 = 30_000;
/// How long a resync is followed.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// Verifies group `name`; a verify that could not run (a coordinator still electing, roles
/// still settling) is tried again; a verdict "differs" is final.
///
/// # Errors
/// The copies differ, or the verify could not run in 8 tries.
pub fn verify_group(ctx: &Ctx, host: &Host<'_>, name: &str, notes: &mut Vec<String>) -> Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        match verify_once(ctx, host, name) {
            Err(e) if tries < 8 && !format!("{e:#}").contains("differs") => {
                notes.push(format!("verify {name} try {tries} could not run: {e:#}"));
                std::thread::sleep(Duration::from_millis(2500));
            }
            r => return r,
        }
    }
}

/// The listen address of the replicator that serves `group` at `site` (its placement).
pub(super) fn replicator_at(ctx: &Ctx, group: &str, site: &str) -> Result<String> {
    ctx.topo
        .host_for_group(group, site)
        .map(|n| n.listen.clone())
        .with_context(|| format!("no replicator serves group {group} at site {site}"))
}

/// The group's (primary, replica) sites from the status.
async fn sites_of(ctx: &Ctx, name: &str) -> Result<(String, String)> {
    let st: ClusterStatus = ctx.client.status().await?;
    let g = st
        .groups
        .iter()
        .find(|g| g.name == name)
        .with_context(|| format!("group {name:?} missing from the cluster status"))?;
    Ok((g.primary.clone(), g.replica.clone()))
}

/// One verify of group `name`.
fn verify_once(ctx: &Ctx, host: &Host<'_>, name: &str) -> Result<()> {
    let group = ctx
        .topo
        .group(name)
        .with_context(|| format!("no group {name:?} in the topology"))?
        .clone();
    let volumes_only = group
        .resources
        .iter()
        .all(|r| matches!(r.kind, ResourceKind::Volume { .. }));
    if !volumes_only {
        return (host.verify_database)(&ctx.config, name);
    }
    ctx.rt.block_on(async {
        let (psite, rsite) = sites_of(ctx, name).await?;
        let primary = Replicator::new(ctx.net.clone(), replicator_at(ctx, name, &psite)?);
        let mut results = Vec::new();
        let mut all_equal = true;
        for r in &group.resources {
            let req = VerifyRequest {
                group: name.to_owned(),
                resource: r.name.clone(),
                block_size: 0,
                chunk_bytes: CHUNK_BYTES,
                timeout_ms: VERIFY_TIMEOUT_MS,
            };
            let verdicts = primary
                .verify_volumes(req, &mut |_| {})
                .await
                .map_err(|e| anyhow::anyhow!("{}: verify barrier failed: {e}", r.name))?;
            for v in &verdicts {
                all_equal &= v.equal;
                println!("{}", verdict_line(name, v, &psite, &rsite));
                results.push(verdict_detail(v, &psite, &rsite));
            }
        }
        let detail = json!({"equal": all_equal, "resources": results});
        match ctx.client.record(RecordKind::Verify, name, &detail).await {
            Ok(_) | Err(ClientError::Unreachable { .. } | ClientError::NoAddress { .. }) => {}
            Err(e) => bail!("recording the verify result: {}", e.peer_message()),
        }
        if !all_equal {
            bail!("group {name}: replica differs from primary");
        }
        Ok(())
    })
}

/// Resyncs group `name`'s replica from its primary (by merkle diff), follows it to its end and
/// records it in the audit chain, as `tandem resync` does.
///
/// # Errors
/// The replica could not be asked, the resync failed, or it did not end in time.
pub fn resync_group(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.rt.block_on(async {
        let (_, rsite) = sites_of(ctx, name).await?;
        let replica = Replicator::new(ctx.net.clone(), replicator_at(ctx, name, &rsite)?);
        let mut stream = replica
            .resync(name, &format!("tandem resync by {ACTOR}"))
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", replica.addr(), e.peer_message()))?;
        let mut last_error = String::new();
        let deadline = Instant::now() + RESYNC_TIMEOUT;
        let last = stream
            .follow(deadline, &mut |msg| {
                if !msg.error.is_empty() && msg.error != last_error {
                    eprintln!("attempt failed (retrying): {}", msg.error);
                    last_error = msg.error.clone();
                }
            })
            .await
            .map_err(|e| match e {
                ClientError::Timeout { .. } => anyhow::anyhow!(
                    "gave up following after {}s; the resync goes on (tandem status shows it)",
                    RESYNC_TIMEOUT.as_secs()
                ),
                e => anyhow::anyhow!("resync stream from {}: {}", replica.addr(), e.peer_message()),
            })?;
        let p = last.context("the replica sent no progress")?;
        if p.phase != "done" {
            bail!("resync of {name} {}: {}", p.phase, p.error);
        }
        println!(
            "{name}: replica at {rsite} resynced from the primary in {:.2}s: {} differing blocks pulled, {} bytes over the wire; stream resumes after seq {}",
            p.elapsed_ms as f64 / 1000.0,
            p.blocks_differing,
            p.wire_bytes,
            p.seq
        );
        let detail = json!({
            "action": "resync", "replica_site": rsite, "seq": p.seq, "elapsed_ms": p.elapsed_ms,
            "blocks_differing": p.blocks_differing, "wire_bytes": p.wire_bytes,
        });
        ctx.client
            .record(RecordKind::Operator, name, &detail)
            .await
            .map_err(|e| anyhow::anyhow!("recording in the audit chain: {}", e.peer_message()))?;
        Ok(())
    })
}
