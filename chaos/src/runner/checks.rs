//! Judging a run: each [`Check`] of the scenario evaluated against the history, the final
//! state, the audit chain, the logs and the mesh's counters, into failures and notes. The
//! judging itself is the pure checkers of [`crate::checker`]; this room gathers their inputs.
//! I/O: volume images, logs, quarantine files, status and audit calls.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use tandem_coordinator::audit::{AuditKind, AuditRecord};

use super::cluster::Ctx;
use super::judge::{first3, image_hasher, mode_of, Findings, Judge};
use super::nodefiles::failpoint_fired;
use super::processes as proc;
use super::topology::VOLUME_GROUP;
use super::verify::{resync_group, verify_group};
use crate::checker::{
    corruption_caught, epochs_monotonic, lost_acknowledged_writes, no_ack_after_fence,
    no_double_promotion, rpo_recovers, split_brain, torn_tail_repaired, Promotion, ReplicationMode,
};
use crate::proxy::Direction;
use crate::scenario::{Check, FaultAction};

/// How long after the runner notes a failure an acknowledgement the failed primary sent
/// before it may still be recorded by the client (async loss window).
const IN_FLIGHT_ACK_MS: u64 = 500;

/// The whole audit chain.
fn audit(ctx: &Ctx) -> Result<Vec<AuditRecord>> {
    Ok(ctx.rt.block_on(ctx.client.audit::<AuditRecord>())?)
}

/// Evaluates check `c`; checks of the final state are skipped without a recovery.
///
/// # Errors
/// A file or the audit chain could not be read.
pub fn judge(j: &Judge<'_>, c: &Check, out: &mut Findings) -> Result<()> {
    let needs_final_state = matches!(
        c,
        Check::NoLostAcknowledgedWrites
            | Check::IdenticalAfterRecovery
            | Check::RtoWithinTarget
            | Check::AuditChainValid
            | Check::TailQuarantined
    );
    if needs_final_state && !j.recovered {
        return Ok(());
    }
    match c {
        Check::NoLostAcknowledgedWrites => lost_writes(j, out)?,
        Check::IdenticalAfterRecovery => {
            if let Err(e) = verify_group(j.ctx, j.host, VOLUME_GROUP, &mut out.notes) {
                out.failures
                    .push(format!("not identical after recovery: {e:#}"));
            }
        }
        Check::FailedOver => {
            if j.g_end.epoch < 3 {
                out.failures
                    .push(format!("no failover happened (epoch {})", j.g_end.epoch));
            }
        }
        Check::NoDoublePromotion => double_promotion(j, out)?,
        Check::TornTailRepaired => torn_tail(j, out),
        Check::NoFailover => {
            if j.g_end.primary != j.obs.primary0() || j.g_end.epoch != j.obs.epoch0() {
                out.failures.push(format!(
                    "unexpected failover: primary {} epoch {}",
                    j.g_end.primary, j.g_end.epoch
                ));
            }
        }
        Check::RtoWithinTarget => rto(j, out)?,
        Check::EpochsMonotonic => {
            let v = epochs_monotonic(&j.obs.epochs);
            if !v.ok {
                out.failures
                    .push(format!("epochs went backwards: {:?}", v.violations));
            }
        }
        Check::AuditChainValid => {
            let records = audit(j.ctx)?;
            if let Err(e) = tandem_coordinator::audit::verify_chain(&records) {
                out.failures.push(format!("audit chain: {e}"));
            }
        }
        Check::OldPrimaryFenced => {
            if j.old_primary_refused != Some(true) {
                out.failures
                    .push("the resumed old primary accepted a write".into());
            }
        }
        Check::NoSplitBrain => no_split_brain(j, out),
        Check::NoAckAfterFence => ack_after_fence(j, out),
        Check::RpoRecovers => rpo(j, out),
        Check::DbTailQuarantined => super::dbjudge::tail_quarantined(j, c, out),
        Check::DbNoLostCommits | Check::DbConsistent | Check::DbIdenticalAfterRecovery => {
            super::dbjudge::copies(j, c, out)
        }
        Check::PgNoLostCommits | Check::PgRejoined => super::pgjudge::judge_pg(j, c, out),
        Check::TailQuarantined => super::quarantine::tail_quarantined(j, out)?,
        Check::BitrotFoundAndRepaired => bitrot(j, out),
        Check::FailpointsFired => failpoints(j, out),
        Check::CorruptionCaught => corruption(j, out),
        Check::RecoversToCheckpoint => super::pitr::judge_recoveries(j, out),
        Check::OtherGroupsUndisturbed | Check::ReplicaGroupsResync => {
            out.failures.push(format!("{c:?} needs `hosts_per_site`"))
        }
        Check::PowerCutsDroppedWrites => {
            let idle = j.obs.power_cuts.iter().filter(|d| !**d).count();
            if j.obs.power_cuts.is_empty() || idle > 0 {
                out.failures.push(format!(
                    "{idle} of {} power cuts dropped nothing: they found every write durable",
                    j.obs.power_cuts.len()
                ));
            }
        }
    }
    Ok(())
}

fn lost_writes(j: &Judge<'_>, out: &mut Findings) -> Result<()> {
    let f = image_hasher(j)?;
    let mode = mode_of(j.s);
    let o = j.obs;
    // Acknowledgements sent before a kill reach the client (and its history) a little after
    // the runner noted the kill: they count as before the failure.
    let mut window = o.rpo_before_failure.max(0) as u64 + 1000 + IN_FLIGHT_ACK_MS;
    let mut failure_at = o.failure_ms.map_or(u64::MAX, |f| f + IN_FLIGHT_ACK_MS);
    if let (true, Some(fail), Some(fence)) = (
        mode == ReplicationMode::Async && o.primary_outlives_failure && j.g_end.epoch > o.epoch0(),
        o.failure_ms,
        o.fence_ms,
    ) {
        // A partitioned (or failed-over while alive) async primary keeps acknowledging until
        // its lease ends: what it acknowledged from (failure - RPO) to its fence may be lost.
        failure_at = fence.max(fail);
        window += failure_at - fail;
        out.notes.push(format!(
            "async loss window: {} ms before the old lease ended at {failure_at} ms",
            window
        ));
    }
    let v = lost_acknowledged_writes(j.history, &f, mode, window, failure_at);
    out.lost = v.violations.len();
    if !v.ok {
        out.failures.push(format!(
            "lost acknowledged writes: {}",
            first3(&v.violations)
        ));
    }
    Ok(())
}

fn double_promotion(j: &Judge<'_>, out: &mut Findings) -> Result<()> {
    let records = audit(j.ctx)?;
    let promos: Vec<Promotion> = records
        .iter()
        .filter(|r| r.kind == AuditKind::Promote && r.group.as_deref() == Some(VOLUME_GROUP))
        .map(|r| Promotion {
            site: r.detail["to_site"].as_str().unwrap_or("?").to_owned(),
            epoch: tandem_core::ids::Epoch(r.detail["to_epoch"].as_u64().unwrap_or(0)),
            time_ms: u64::try_from(r.at_ms).unwrap_or(0),
        })
        .collect();
    let v = no_double_promotion(&promos);
    let accepted = j.obs.orders_accepted;
    out.notes.push(format!(
        "{} promotions in the audit chain, {accepted} orders accepted",
        promos.len()
    ));
    if !v.ok {
        out.failures
            .push(format!("double promotion: {}", v.violations.join("; ")));
    }
    let planned_orders =
        j.s.faults
            .iter()
            .filter(|f| f.action == FaultAction::Order)
            .count();
    if planned_orders > 0 && promos.len() > accepted.max(1) {
        out.failures.push(format!(
            "{} promotions for {accepted} accepted orders",
            promos.len()
        ));
    }
    Ok(())
}

fn torn_tail(j: &Judge<'_>, out: &mut Findings) {
    let logs: Vec<(String, String)> = j
        .obs
        .torn
        .iter()
        .map(|n| {
            let log =
                std::fs::read_to_string(proc::log_file(&j.ctx.run_dir, n)).unwrap_or_default();
            (n.clone(), log)
        })
        .collect();
    let v = torn_tail_repaired(&logs);
    if !v.ok {
        out.failures
            .push(format!("torn tail: {}", v.violations.join("; ")));
    }
}

fn rto(j: &Judge<'_>, out: &mut Findings) -> Result<()> {
    // The RTO is audited when the failover run ends, which may come a little after the group
    // is protected again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rto = loop {
        let records = audit(j.ctx)?;
        let rto = records
            .iter()
            .filter_map(|r| {
                r.detail
                    .get("rto_ms")
                    .and_then(Value::as_i64)
                    .filter(|_| r.detail["op"] == "failover")
            })
            .next_back();
        if rto.is_some() || Instant::now() > deadline {
            break rto;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    out.rto_ms = rto.map(Value::from).unwrap_or(Value::Null);
    let target = j.obs.g0.rto_target_ms;
    match rto {
        Some(r) if r <= target => {}
        Some(r) => out
            .failures
            .push(format!("RTO {r} ms over target {target} ms")),
        None => out.failures.push("no failover RTO recorded".into()),
    }
    Ok(())
}

fn no_split_brain(j: &Judge<'_>, out: &mut Findings) {
    let v = split_brain(j.history);
    out.notes.extend(v.notes.iter().cloned());
    if !v.ok {
        out.failures
            .push(format!("split brain: {}", v.violations.join("; ")));
    }
    if j.load.pinned.is_empty() {
        out.failures.push(
            "no_split_brain needs clients_at_every_site = true (one history per site)".into(),
        );
    }
}

fn ack_after_fence(j: &Judge<'_>, out: &mut Findings) {
    match j.obs.fence_ms {
        Some(fence) if j.g_end.epoch > j.obs.epoch0() => {
            let v = no_ack_after_fence(j.history, j.obs.primary0(), fence);
            out.notes.extend(v.notes.iter().cloned());
            if !v.ok {
                out.failures.push(format!(
                    "acknowledged after fencing: {}",
                    first3(&v.violations)
                ));
            }
        }
        _ => out.failures.push(format!(
            "no_ack_after_fence: no failover away from {} to judge (epoch {})",
            j.obs.primary0(),
            j.g_end.epoch
        )),
    }
}

fn rpo(j: &Judge<'_>, out: &mut Findings) {
    match (j.obs.net_from_ms, j.obs.net_until_ms) {
        (Some(from), Some(until)) => {
            let v = rpo_recovers(
                &j.obs.rpo_samples,
                from,
                until,
                j.s.rpo_peak_min_ms.unwrap_or(1) as i64,
                j.s.rpo_recovered_max_ms.unwrap_or(0) as i64,
            );
            out.notes.extend(v.notes.iter().cloned());
            if !v.ok {
                out.failures
                    .push(format!("rpo: {}", v.violations.join("; ")));
            }
        }
        _ => out
            .failures
            .push("rpo_recovers needs a network fault and a later heal in the timeline".into()),
    }
}

fn bitrot(j: &Judge<'_>, out: &mut Findings) {
    let rotted = j.obs.rotted;
    if rotted == 0 {
        out.failures
            .push("bitrot_found_and_repaired: no byte was flipped".into());
    }
    match verify_group(j.ctx, j.host, VOLUME_GROUP, &mut out.notes) {
        Ok(()) => out.failures.push(format!(
            "verify found the copies equal after {rotted} bytes of the replica were flipped"
        )),
        Err(e) => {
            out.notes.push(format!("verify found the rot: {e:#}"));
            let repaired = resync_group(j.ctx, VOLUME_GROUP)
                .and_then(|()| verify_group(j.ctx, j.host, VOLUME_GROUP, &mut out.notes));
            match repaired {
                Ok(()) => out.notes.push("resync repaired it: verify equal".into()),
                Err(e) => out.failures.push(format!("not repaired by resync: {e:#}")),
            }
        }
    }
}

fn failpoints(j: &Judge<'_>, out: &mut Findings) {
    if j.obs.armed.is_empty() {
        out.failures
            .push("failpoints_fired: no failpoint was armed".into());
    }
    for (n, name) in &j.obs.armed {
        if failpoint_fired(&j.ctx.run_dir, n, name) {
            out.notes.push(format!("{n}: failpoint {name} fired"));
        } else {
            out.failures
                .push(format!("failpoint {name} of {n} never fired"));
        }
    }
}

fn corruption(j: &Judge<'_>, out: &mut Findings) {
    let g0 = &j.obs.g0;
    let (from, to) = (format!("{}-rep", g0.primary), format!("{}-rep", g0.replica));
    let stats = j.ctx.mesh.stats(&from, &to).unwrap_or_default();
    let log = std::fs::read_to_string(proc::log_file(&j.ctx.run_dir, &from)).unwrap_or_default();
    let v = corruption_caught(
        stats.corrupted(Direction::ToUpstream),
        log.matches("replica refused a frame").count() as u64,
        stats.connections_accepted.saturating_sub(1),
    );
    out.notes
        .extend(v.notes.iter().map(|n| format!("{from} -> {to}: {n}")));
    if !v.ok {
        out.failures
            .push(format!("corruption: {}", v.violations.join("; ")));
    }
}
