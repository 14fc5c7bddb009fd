//! The node's `/metrics` endpoint: gauges and totals read from the role cells and replica
//! groups at every scrape. Serves HTTP; decides nothing.

use super::lease::RoleCell;
use super::lock::lock;
use super::runtime::NodeRt;
use crate::error::{ReplicatorError, Result};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tandem_core::clock::{Clock, SystemClock};
use tokio::sync::watch;
use tracing::info;

/// Serves `GET /metrics` on the node's `metrics_listen` address (if set) until `stop`. Gauges
/// and the pipeline's running totals are read from the role cells and replica groups at every
/// scrape; NBD writes and apply latency are counted where they happen (nbd, receive).
pub(super) async fn serve_metrics(rt: &Arc<NodeRt>, stop: watch::Receiver<bool>) -> Result<()> {
    use tandem_core::metrics::{Family, Kind};
    let Some(addr) = rt.node.metrics_listen.clone() else {
        return Ok(());
    };
    let shared = rt.me.clone();
    let journal_max: HashMap<String, u64> = rt
        .topo
        .groups
        .iter()
        .map(|g| (g.name.clone(), g.journal_max.bytes()))
        .collect();
    let clock = SystemClock::new();
    let registry = tandem_core::metrics::global().clone();
    registry.register_collector(move || {
        let fam = |n: &str, h: &str, k: Kind| Family::new(n, h, k);
        let mut bytes = fam(
            "tandem_replication_bytes_total",
            "Bytes captured (kind=raw) and shipped on the wire (kind=wire, resends included) by this primary since it took the role.",
            Kind::Counter,
        );
        let mut frames = fam(
            "tandem_replication_frames_total",
            "Frames shipped to the replica by this primary since it took the role (resends included).",
            Kind::Counter,
        );
        let mut ratio = fam(
            "tandem_compression_ratio",
            "Raw bytes captured over bytes shipped on the wire.",
            Kind::Gauge,
        );
        let mut level = fam(
            "tandem_compression_level",
            "zstd level this primary encodes frames at now (0: stored raw); moves under compression = \"auto\".",
            Kind::Gauge,
        );
        let mut journal = fam(
            "tandem_journal_bytes",
            "Encoded bytes in the journal not yet acknowledged by the replica.",
            Kind::Gauge,
        );
        let mut jmax = fam(
            "tandem_journal_max_bytes",
            "Journal size limit (journal_max); writes fail with ENOSPC beyond it.",
            Kind::Gauge,
        );
        let mut rpo = fam(
            "tandem_replication_rpo_seconds",
            "RPO as this primary sees it: age of the oldest change the replica has not made durable.",
            Kind::Gauge,
        );
        let mut lease = fam(
            "tandem_lease_remaining_seconds",
            "Seconds of write lease left on this replicator (0: not primary or lease lost).",
            Kind::Gauge,
        );
        let mut writable = fam(
            "tandem_replicator_writable",
            "1 when this replicator accepts writes for the group (primary, lease held, not fenced).",
            Kind::Gauge,
        );
        let mut watermark = fam(
            "tandem_replica_watermark",
            "Highest seq durable and applied on this replica.",
            Kind::Gauge,
        );
        let now = Instant::now();
        let cells: Vec<(String, Arc<RoleCell>)> = lock(&shared.cells)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (group, cell) in cells {
            let l = [("group", group.as_str())];
            let left = lock(&cell.lease_deadline)
                .map(|d| d.saturating_duration_since(now).as_secs_f64())
                .unwrap_or(0.0);
            lease.push(&l, left);
            writable.push(&l, if cell.writable() { 1.0 } else { 0.0 });
            if let Some(max) = journal_max.get(&group) {
                jmax.push(&l, *max as f64);
            }
            if let Some(p) = cell.pipeline() {
                let pr = p.progress();
                bytes.push(&[("group", &group), ("kind", "raw")], pr.bytes_raw_total as f64);
                bytes.push(
                    &[("group", &group), ("kind", "wire")],
                    pr.bytes_shipped_total as f64,
                );
                frames.push(&l, pr.frames_shipped as f64);
                if pr.bytes_shipped_total > 0 {
                    ratio.push(&l, pr.bytes_raw_total as f64 / pr.bytes_shipped_total as f64);
                }
                level.push(&l, f64::from(pr.zstd_level));
                journal.push(&l, p.journal().pending_bytes() as f64);
                rpo.push(&l, pr.rpo_ms(clock.now_ms()) as f64 / 1000.0);
            }
        }
        for (group, rg) in lock(&shared.replicas).iter() {
            watermark.push(&[("group", group)], rg.watermark().0 as f64);
        }
        vec![
            bytes, frames, ratio, level, journal, jmax, rpo, lease, writable, watermark,
        ]
    });
    let (bound, _task) = tandem_core::metrics::start(&addr, registry, stop)
        .await
        .map_err(|e| ReplicatorError::Task(e.to_string()))?;
    info!(%bound, "metrics listening");
    Ok(())
}
