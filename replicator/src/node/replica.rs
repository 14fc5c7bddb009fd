//! The replica side of a group: opening it (volumes, databases, archives, history, as the
//! config says) and registering it with the Replication service. Touches the data folder.

use super::layout::{archive_dir, history_dir, replica_dir, replica_paths, sqlite_names};
use super::lock::lock;
use super::runtime::{GroupRt, NodeRt, RoleState};
use crate::apply::ReplicaGroup;
use crate::error::{ReplicatorError, Result};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::config::{Group, ResourceKind};
use tandem_core::ids::Epoch;

/// Opens the replica side of a group (volumes and SQLite databases).
pub(super) fn open_replica(rt: &NodeRt, g: &Group) -> Result<ReplicaGroup> {
    let paths = replica_paths(rt, g);
    for p in paths.values() {
        if let Some(dir) = p.parent() {
            crate::durable_dir::create_dir_durable(dir)?;
        }
    }
    let archives = g
        .resources
        .iter()
        .filter(|r| matches!(r.kind, ResourceKind::Postgres { .. }))
        .map(|r| (r.name.clone(), archive_dir(&rt.data_dir, &g.name, &r.name)))
        .collect();
    let rg = ReplicaGroup::open_with_sqlite(
        &g.name,
        &replica_dir(rt, &g.name),
        paths,
        &sqlite_names(g),
    )?
    .with_archives(archives)?;
    let hdir = history_dir(rt, &g.name);
    match g.history {
        Some(keep) => {
            let mut cfg =
                crate::history::HistoryConfig::new(Duration::from(keep).as_millis() as i64);
            cfg.max_bytes = g.history_max.map(|m| m.bytes());
            cfg.checkpoint_interval_ms = Duration::from(g.checkpoint_interval).as_millis() as i64;
            if !g.history_compress {
                cfg.level = None;
            }
            // Segments of about 1/16 of the size cap, so trimming is fine-grained.
            if let Some(m) = cfg.max_bytes {
                cfg.segment_bytes = (m / 16).clamp(1 << 20, crate::history::DEFAULT_SEGMENT_BYTES);
            }
            rg.enable_history(&hdir, cfg)?;
        }
        None => {
            // History switched off: what is left no longer follows the stream.
            if hdir.exists() {
                std::fs::remove_dir_all(&hdir)
                    .map_err(|e| ReplicatorError::io("remove", &hdir, e))?;
            }
        }
    }
    Ok(rg)
}

/// Serves `rg` as the group's replica (Replication service, block source) in `epoch`.
pub(super) fn register_replica(rt: &NodeRt, g: &mut GroupRt, epoch: Epoch, rg: Arc<ReplicaGroup>) {
    rt.service.add_group(rg.clone());
    lock(&rt.me.replicas).insert(g.cfg.name.clone(), rg.clone());
    g.role = RoleState::Replica {
        epoch,
        rg: Some(rg),
        resyncing: false,
    };
}
