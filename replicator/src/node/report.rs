//! What a heartbeat tells the coordinators: each group's role, epoch, progress, state and
//! reason, and the one-line resync progress for status. Reads the runtime, and (primary
//! groups with postgres resources) their `pg_wal` folders through [`super::archive`].

use super::archive::pg_feeds;
use super::decide::{primary_reason, primary_state, replica_reason};
use super::runtime::{NodeRt, RoleState};
use std::time::Instant;
use tandem_core::clock::SystemClock;
use tandem_core::proto::{GroupProgress, HeartbeatRequest, ResyncProgress};

/// The heartbeat: every group's role and progress (updating the primaries' throughput).
pub(super) async fn progress_report(rt: &NodeRt) -> HeartbeatRequest {
    let mut groups = rt.groups.lock().await;
    let mut out = Vec::new();
    for (name, g) in groups.iter_mut() {
        let p = match &g.role {
            RoleState::Unknown => None,
            RoleState::Primary {
                epoch,
                pipeline,
                draining,
                ..
            } => {
                let pr = pipeline.progress();
                let dt = g.last_tick.elapsed().as_secs_f64().max(1e-3);
                g.throughput = (pr.bytes_shipped_total.saturating_sub(g.last_shipped)) as f64 / dt;
                g.last_shipped = pr.bytes_shipped_total;
                g.last_tick = Instant::now();
                let ready = g.cell.writable() || *draining;
                let now_ms = tandem_core::clock::Clock::now_ms(&SystemClock::new());
                let feeds: Vec<_> =
                    pg_feeds(&rt.topo, &rt.node.site, &g.cfg, &mut g.pg_feeds, now_ms)
                        .await
                        .into_iter()
                        .map(|h| match g.pg_streams.get(&h.resource) {
                            Some(s) => crate::pg_stream::judge(
                                h,
                                &mut s.lock().unwrap_or_else(|p| p.into_inner()),
                            ),
                            None => h,
                        })
                        .collect();
                Some(GroupProgress {
                    group: name.clone(),
                    role: "primary".into(),
                    epoch: epoch.0,
                    last_captured_seq: pr.last_captured_seq.0,
                    // The oldest change not durable at the replica: in the stream, or
                    // WAL PostgreSQL wrote and has not archived yet.
                    oldest_unacked_ms: pr
                        .oldest_unacked_capture_ms
                        .into_iter()
                        .chain(feeds.iter().map(|h| h.oldest_unarchived_ms))
                        .filter(|t| *t > 0)
                        .min()
                        .unwrap_or(0),
                    resources: feeds,
                    durable_seq: pr.durable_on_replica_seq.0,
                    bytes_pending: pr.bytes_pending,
                    bytes_shipped: pr.bytes_shipped_total,
                    bytes_raw: pr.bytes_raw_total,
                    throughput_bps: g.throughput,
                    state: primary_state(*draining, ready).into(),
                    reason: primary_reason(&pr.reason, &g.last_error),
                    ..Default::default()
                })
            }
            RoleState::Replica {
                epoch,
                rg,
                resyncing,
            } => Some(GroupProgress {
                history_oldest_ms: rg
                    .as_ref()
                    .and_then(|r| r.history_oldest())
                    .map(|p| p.captured_ms)
                    .unwrap_or(0),
                history_oldest_seq: rg
                    .as_ref()
                    .and_then(|r| r.history_oldest())
                    .map(|p| p.seq.0)
                    .unwrap_or(0),
                group: name.clone(),
                role: "replica".into(),
                epoch: epoch.0,
                durable_seq: rg.as_ref().map(|r| r.watermark().0).unwrap_or(0),
                state: if *resyncing {
                    "resyncing".into()
                } else {
                    "in-sync".into()
                },
                reason: if *resyncing {
                    describe_resync(&g.resync.borrow())
                } else {
                    replica_reason(&g.last_error, &g.quarantined)
                },
                resources: g.pg_standbys.values().cloned().collect(),
                ..Default::default()
            }),
        };
        out.extend(p);
    }
    HeartbeatRequest {
        node: rt.node.name.clone(),
        site: rt.node.site.clone(),
        groups: out,
        cert_not_after: rt.me.net.cert_not_after().unwrap_or(0),
    }
}

/// One line of resync progress for status: `resync: copying disk0 40% (12/30 blocks)`.
pub fn describe_resync(p: &ResyncProgress) -> String {
    let pct = |d: u64, t: u64| (d * 100).checked_div(t).unwrap_or(100);
    let mut out = match p.phase.as_str() {
        "hashing" => format!(
            "resync: hashing {} {}%",
            p.resource,
            pct(p.bytes_done, p.bytes_total)
        ),
        "copying" => format!(
            "resync: copying {} {}% ({}/{} blocks)",
            p.resource,
            pct(p.bytes_done, p.bytes_total),
            p.blocks_copied,
            p.blocks_differing
        ),
        other => format!("resync: {other}"),
    };
    if !p.error.is_empty() {
        out.push_str(&format!("; last attempt failed: {}", p.error));
    }
    out
}
