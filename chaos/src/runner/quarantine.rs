//! Judging `tail_quarantined`: after a failback, what the failed primary wrote past the
//! replica is kept in its quarantine files (read through the host, whose replicator owns their
//! format) and status names the quarantine. I/O: the volume image, quarantine files, status.

use anyhow::Result;

use super::host::KeptCopy;
use super::judge::{first3, image_hasher, quarantine_shown, Findings, Judge};
use super::topology::VOLUME_GROUP;

/// `tail_quarantined`.
///
/// # Errors
/// The final volume image cannot be read.
pub fn tail_quarantined(j: &Judge<'_>, out: &mut Findings) -> Result<()> {
    let f = image_hasher(j)?;
    let primary0 = j.obs.primary0();
    let node = format!("{primary0}-rep");
    let topo = &j.ctx.topo;
    let qdir = topo
        .node(&node)
        .map(|n| topo.node_data_dir(n).join("quarantine").join(VOLUME_GROUP))
        .unwrap_or_default();
    let mut kept: Vec<KeptCopy> = Vec::new();
    for (p, q) in (j.host.quarantine)(&qdir, "disk0") {
        match q {
            Ok(q) => {
                out.notes
                    .push(format!("quarantine {}: {} blocks", p.display(), q.blocks));
                kept.push(q);
            }
            Err(e) => out.failures.push(format!("quarantine unreadable: {e}")),
        }
    }
    let q = |off: u64, len: u64| {
        kept.iter()
            .filter_map(|k| (k.range)(off, len))
            .map(|b| blake3::hash(&b))
            .collect()
    };
    // Status must say so too (the replica reports it in its heartbeats).
    match quarantine_shown(j.ctx) {
        Some(r) => out.notes.push(format!("status: {r}")),
        None if !kept.is_empty() => out
            .failures
            .push("tandem status does not show the quarantine".into()),
        None => {}
    }
    let (v, tail) = crate::checker::tail_quarantined(j.history, primary0, &f, &q);
    out.notes.extend(v.notes.iter().cloned());
    if j.g_end.epoch == j.obs.epoch0() {
        out.failures
            .push("tail_quarantined: no failover, so no failback to judge".into());
    } else if tail == 0 {
        out.failures.push(format!(
            "tail_quarantined: {primary0} left no unreplicated tail: the run shows nothing about quarantine"
        ));
    }
    if !v.ok {
        out.failures
            .push(format!("tail not quarantined: {}", first3(&v.violations)));
    }
    Ok(())
}
