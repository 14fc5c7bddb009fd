//! Where the node keeps things: the folders and files under its data folder (journals, replica
//! metadata, history, archives) and the local paths of a group's resources. Paths only, plus
//! reading folder listings and the stored replica watermark.

use super::runtime::NodeRt;
use crate::error::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tandem_core::config::{Group, ResourceKind};
use tandem_core::ids::Epoch;

/// The folder where the replica replicator with data folder `node_data_dir` keeps the
/// PostgreSQL archive files of `resource` of `group` (what `tandem wal fetch` reads).
pub fn archive_dir(node_data_dir: &Path, group: &str, resource: &str) -> PathBuf {
    node_data_dir.join("archive").join(group).join(resource)
}

/// `DATA_DIR/journal/GROUP/eEPOCH`: the journal this node keeps as primary in `epoch`.
pub(super) fn journal_dir(rt: &NodeRt, group: &str, epoch: Epoch) -> PathBuf {
    rt.data_dir
        .join("journal")
        .join(group)
        .join(format!("e{}", epoch.0))
}

/// `DATA_DIR/replica/GROUP`: the replica metadata of a group (watermark, resync marker).
pub(super) fn replica_dir(rt: &NodeRt, group: &str) -> PathBuf {
    rt.data_dir.join("replica").join(group)
}

/// `DATA_DIR/history/GROUP`: the point-in-time history of a replica group.
pub(super) fn history_dir(rt: &NodeRt, group: &str) -> PathBuf {
    rt.data_dir.join("history").join(group)
}

/// Epochs of the journals this node kept for `group` (it was primary in those epochs).
pub(super) fn journal_epochs(rt: &NodeRt, group: &str) -> Vec<u64> {
    let dir = rt.data_dir.join("journal").join(group);
    let mut out: Vec<u64> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix('e'))
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The replica watermark stored in `dir`, if this node ever was a replica of the group.
pub(super) fn stored_watermark(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join(crate::apply::REPLICA_META_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let (_, v) = crate::meta::SlotFile::open(&path, crate::apply::REPLICA_META_MAGIC, 3, &[0; 3])?;
    Ok(v.first().copied())
}

/// Local paths of every volume of the group at this site.
pub(super) fn resource_paths(rt: &NodeRt, g: &Group) -> HashMap<String, PathBuf> {
    g.resources
        .iter()
        .filter(|r| matches!(r.kind, ResourceKind::Volume { .. }))
        .filter_map(|r| {
            rt.topo
                .resource_path(g, r, &rt.node.site)
                .map(|p| (r.name.clone(), p))
        })
        .collect()
}

/// Names of the group's SQLite resources.
pub(super) fn sqlite_names(g: &Group) -> std::collections::HashSet<String> {
    g.resources
        .iter()
        .filter(|r| matches!(r.kind, ResourceKind::Sqlite { .. }))
        .map(|r| r.name.clone())
        .collect()
}

/// Local paths of every volume and SQLite resource of the group at this site.
pub(super) fn replica_paths(rt: &NodeRt, g: &Group) -> HashMap<String, PathBuf> {
    g.resources
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                ResourceKind::Volume { .. } | ResourceKind::Sqlite { .. }
            )
        })
        .filter_map(|r| {
            rt.topo
                .resource_path(g, r, &rt.node.site)
                .map(|p| (r.name.clone(), p))
        })
        .collect()
}

/// The URL of the replicator that serves `g` at `site`: where the coordinators last said its
/// data lives there (a planned move's target included), else its placement in the topology
/// (the pin in `hosts`, else [`tandem_core::config::place`]).
pub(super) fn peer_replicator(rt: &NodeRt, g: &Group, site: &str) -> Option<String> {
    let recorded = rt.views.host_at(&g.name, site);
    rt.topo
        .placed_host(&g.name, site, recorded.as_deref())
        .map(|n| format!("http://{}", n.listen))
}

/// Name of the marker file in the replica folder while a resync rewrites the files: a copy
/// left half-resynced by a crash is resynced again, never trusted.
pub(super) const RESYNC_MARKER: &str = "RESYNCING";
