//! The steps that ask a site's replicator: `verify` (the primary's replicator compares both
//! copies, `Replication.Verify`), `snapshot` and `recover`; their results are audited.
//! Acts: gRPC calls to replicators and raft proposals.

use super::failure::{Failure, StepResult};
use crate::audit::AuditKind;
use crate::handle::coordinator::Coordinator;
use crate::state::Command;
use crate::state::Run;
use serde_json::{json, Value};
use std::time::Duration;
use tandem_core::client::verdict::hex;
use tandem_core::client::{ClientError, Replicator};
use tandem_core::config::ResourceKind;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{SnapshotRequest, VerifyRequest, VolumeVerdict};
use tandem_core::ranges::{describe_byte_ranges, from_wire};
use tandem_runbooks::run as rb;
use tandem_runbooks::{Action, PlannedStep, ResolvedSite};

/// Block size of the Merkle trees a `verify` step compares.
const VERIFY_BLOCK_SIZE: u32 = 1 << 20;

/// Merkle block size of the roots a `recover` step records (the same as `tandem recover`'s
/// default, so both kinds of record compare).
const RECOVER_BLOCK_SIZE: u32 = 64 << 10;

/// Blocks of [`VERIFY_BLOCK_SIZE`] hashed under one barrier (64 MiB).
const VERIFY_CHUNK_BLOCKS: u64 = 64;

/// How long the primary's replicator may wait for the replica to reach a barrier during a
/// `verify`: in effect unbounded, as the step's timeout bounds the whole comparison.
const VERIFY_BARRIER_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The replication address (`http://...`) of the replicator that serves `group` at `site`
/// (its placement).
fn replicator_addr(c: &Coordinator, group: &str, site: &str) -> Result<String, Failure> {
    let recorded = c.read(|s| {
        s.group(group)
            .and_then(|g| g.host_at(site).map(str::to_owned))
    });
    c.topo()
        .placed_host(group, site, recorded.as_deref())
        .map(|n| format!("http://{}", n.listen))
        .ok_or_else(|| Failure::new(format!("no replicator serves group {group} at site {site}")))
}

async fn replication_client(
    c: &Coordinator,
    addr: &str,
) -> Result<ReplicationClient<tonic::transport::Channel>, Failure> {
    replication_client_bounded(c, addr, Some(Duration::from_secs(120))).await
}

/// A replication client whose requests are bounded by `request_timeout`.
async fn replication_client_bounded(
    c: &Coordinator,
    addr: &str,
    request_timeout: Option<Duration>,
) -> Result<ReplicationClient<tonic::transport::Channel>, Failure> {
    let net = c.net();
    let mut ep = net
        .endpoint(addr)
        .map_err(|e| Failure::new(e.to_string()))?
        .connect_timeout(Duration::from_millis(1000));
    if let Some(t) = request_timeout {
        ep = ep.timeout(t);
    }
    let ch = net
        .connect(ep)
        .await
        .map_err(|e| Failure::new(format!("replicator {addr} unreachable: {e}")))?;
    Ok(tandem_core::grpc_limits!(ReplicationClient::new(ch)))
}

/// One volume compared by the primary's replicator (`Replication.Verify`, through core's
/// client): the stream read to its end, with no per-request timeout (the step's timeout
/// bounds it), and the verdict it gave for `resource`.
async fn verify_volume(
    primary: &Replicator,
    group: &str,
    resource: &str,
) -> Result<VolumeVerdict, ClientError> {
    let req = VerifyRequest {
        group: group.to_string(),
        resource: resource.to_string(),
        block_size: VERIFY_BLOCK_SIZE,
        chunk_bytes: VERIFY_CHUNK_BLOCKS * u64::from(VERIFY_BLOCK_SIZE),
        timeout_ms: VERIFY_BARRIER_TIMEOUT.as_millis() as u64,
    };
    let verdicts = primary.verify_volumes(req, &mut |_| {}).await?;
    verdicts
        .into_iter()
        .find(|v| v.resource == resource)
        .ok_or_else(|| ClientError::Decode {
            call: "verify",
            addr: primary.addr().to_string(),
            reason: "the verify stream ended without a verdict".into(),
        })
}

/// `verify`: Merkle roots of every volume at both sites, compared when both sides stand at the
/// same seq (so writes in flight do not count as differences). Recorded as a `verify` audit
/// record with the roots and the result.
pub(super) async fn verify(c: &Coordinator, run: &Run) -> StepResult {
    let group = run.group.as_str();
    let (primary, replica) = c
        .read(|s| {
            s.group(group)
                .map(|g| (g.primary_site.clone(), g.replica_site.clone()))
        })
        .ok_or_else(|| Failure::new(format!("no group {group}")))?;
    let resources: Vec<String> = c
        .topo()
        .group(group)
        .map(|g| {
            g.resources
                .iter()
                .filter(|r| matches!(r.kind, ResourceKind::Volume { .. }))
                .map(|r| r.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let pc = Replicator::new(c.net().clone(), replicator_addr(c, group, &primary)?);
    let mut rows = Vec::new();
    let mut all_match = true;
    for res in &resources {
        // The primary's replicator barriers chunk by chunk: it holds intake while the replica
        // reaches the same seq and both copies hash one chunk, so live writes cannot make equal
        // copies look different, and writes pause for one chunk's hashing only. It retries a
        // replica that does not catch up; the step's timeout bounds the whole comparison.
        let v = verify_volume(&pc, group, res)
            .await
            .map_err(|e| Failure::new(format!("verify {group}/{res}: {e}")))?;
        all_match &= v.equal;
        rows.push(json!({"resource": res, "primary_root": hex(&v.primary_root), "replica_root": hex(&v.replica_root),
            "primary_seq": v.last_seq, "replica_seq": v.last_seq, "first_seq": v.first_seq, "chunks": v.chunks,
            "length": v.primary_length, "replica_length": v.replica_length, "root_match": v.equal,
            "differing_bytes": describe_byte_ranges(&from_wire(&v.differing))}));
    }
    let detail = json!({"run_id": run.state.run_id, "group": group, "primary": primary, "replica": replica,
        "resources": rows, "root_match": all_match, "ok": all_match, "attempts": 1});
    c.propose_cmd(Command::Record {
        at_ms: 0,
        actor: crate::state::COORDINATOR_ACTOR.into(),
        kind: AuditKind::Verify,
        group: Some(group.to_string()),
        detail,
    })
    .await?;
    let text = serde_json::to_string_pretty(&rows).unwrap_or_default();
    if all_match {
        Ok(format!(
            "{} volume(s) identical at both sites\n{text}",
            resources.len()
        ))
    } else {
        Err(Failure {
            error: "the sites differ".into(),
            output: text,
        })
    }
}

/// The snapshot name of a run: the step's `name` and the run id.
fn snapshot_name(run: &Run, name: &str) -> String {
    format!("{name}-{}", run.state.run_id)
}

/// `snapshot`: a copy of the replica's volumes at the step's site, taken between two frames.
pub(super) async fn snapshot(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    name: &str,
) -> StepResult {
    let site = match &step.site {
        ResolvedSite::Site(s) => s.clone(),
        ResolvedSite::Coordinator => run.state.plan.replica.clone(),
    };
    let mut client = replication_client(c, &replicator_addr(c, &run.group, &site)?).await?;
    let req = SnapshotRequest {
        group: run.group.clone(),
        name: snapshot_name(run, name),
    };
    // A previous attempt may have left a partial copy.
    client.delete_snapshot(req.clone()).await?;
    let r = client.snapshot(req).await?.into_inner();
    Ok(format!(
        "{}\nwatermark {}\n{}",
        r.dir,
        r.watermark,
        r.paths.join("\n")
    ))
}

/// `recover`: the group's resources as they were at a recovery point of the replica's
/// history, built at the step's site into `DATA_DIR/recovered/GROUP/NAME-RUN`; the point and
/// the merkle roots of the copy are audited. The first output line is the folder.
pub(super) async fn recover(
    c: &Coordinator,
    run: &Run,
    step: &PlannedStep,
    name: &str,
    point: &tandem_runbooks::RecoverPoint,
) -> StepResult {
    let site = match &step.site {
        ResolvedSite::Site(s) => s.clone(),
        ResolvedSite::Coordinator => run.state.plan.replica.clone(),
    };
    let mut client = replication_client(c, &replicator_addr(c, &run.group, &site)?).await?;
    let (at_ms, tag) = match point {
        tandem_runbooks::RecoverPoint::Checkpoint(t) => (0, t.clone()),
        tandem_runbooks::RecoverPoint::Ago(d) => (c.now_ms() - d.as_millis() as i64, String::new()),
    };
    let req = tandem_core::proto::RecoverRequest {
        group: run.group.clone(),
        at_ms,
        tag,
        out_dir: String::new(),
        block_size: RECOVER_BLOCK_SIZE,
        name: snapshot_name(run, name),
    };
    let r = client.recover(req).await?.into_inner();
    let p = r
        .point
        .as_ref()
        .ok_or_else(|| Failure::new("the replica answered without a recovery point"))?;
    let dir = r
        .resources
        .first()
        .and_then(|x| std::path::Path::new(&x.path).parent())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let resources: Vec<Value> = r
        .resources
        .iter()
        .map(|x| json!({"name": x.name, "path": x.path, "length": x.length, "root": hex(&x.root)}))
        .collect();
    let point_json =
        json!({"seq": p.seq, "captured_ms": p.captured_ms, "kind": p.kind, "tag": p.tag});
    let detail = json!({"run_id": run.state.run_id, "site": site, "out_dir": dir,
        "point": point_json, "copied_at": r.copied_at, "undone": r.undone,
        "block_size": r.block_size, "resources": resources});
    c.propose_cmd(Command::Record {
        at_ms: 0,
        actor: crate::state::COORDINATOR_ACTOR.into(),
        kind: AuditKind::Recover,
        group: Some(run.group.clone()),
        detail,
    })
    .await?;
    Ok(format!(
        "{dir}\npoint seq {} ({}{}) captured at {} ms; copy of seq {}, {} undo records\n{}",
        p.seq,
        p.kind,
        if p.tag.is_empty() {
            String::new()
        } else {
            format!(" {:?}", p.tag)
        },
        p.captured_ms,
        r.copied_at,
        r.undone,
        serde_json::to_string_pretty(&resources).unwrap_or_default()
    ))
}

/// The snapshot directory this run's `snapshot` step made, if it has run.
pub(super) fn snapshot_of(run: &Run) -> Option<(String, String)> {
    run.state
        .plan
        .steps
        .iter()
        .zip(&run.state.steps)
        .find_map(|(p, s)| match &p.action {
            Action::Snapshot { name } if s.status == rb::StepStatus::Succeeded => {
                let dir = s.output_excerpt.lines().next()?.to_string();
                Some((snapshot_name(run, name), dir))
            }
            _ => None,
        })
}
