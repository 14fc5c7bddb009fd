//! The power feeds of a scenario with `power-cut` faults: every folder a node keeps state in
//! (its data folder; for a replicator also the folders of the volumes its site holds) lives
//! on its own power-loss file system ([`crate::powerfs`]), mounted before the node first
//! starts. A cut of a node kills its process, then drops what its folders had not made
//! durable. Which folders belong to which node is pure ([`folders_of`]); the rest is I/O.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tandem_core::config::{NodeRole, Topology};

use super::processes as proc;
use crate::powerfs::{CutReport, PowerFs};

/// The folders node `node` keeps state in (pure): its data folder and, for a replicator, the
/// folders of every resource its site holds (primary or replica copy), without duplicates.
pub fn folders_of(topo: &Topology, node: &str) -> Vec<PathBuf> {
    let Some(n) = topo.node(node) else {
        return Vec::new();
    };
    let mut out = vec![topo.node_data_dir(n)];
    if n.role == NodeRole::Replicator {
        for g in &topo.groups {
            for r in &g.resources {
                let parent = topo
                    .resource_path(g, r, &n.site)
                    .and_then(|p| p.parent().map(Path::to_path_buf));
                if let Some(p) = parent {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

/// The power-loss file systems of a run, one per folder.
pub struct Feeds {
    mounts: BTreeMap<PathBuf, PowerFs>,
}

impl Feeds {
    /// Mounts a power-loss file system on every folder of every node of `topo` (created
    /// empty), each keeping its durable state under `dir/power/`.
    ///
    /// # Errors
    /// A folder is not empty or a mount failed (FUSE missing: install fuse3).
    pub fn mount_all(topo: &Topology, dir: &Path, seed: u64) -> Result<Feeds> {
        let mut mounts = BTreeMap::new();
        let backing_root = dir.join("power");
        for n in &topo.nodes {
            for folder in folders_of(topo, &n.name) {
                if mounts.contains_key(&folder) {
                    continue;
                }
                std::fs::create_dir_all(&folder)
                    .with_context(|| format!("creating {}", folder.display()))?;
                let label = folder
                    .strip_prefix(dir)
                    .unwrap_or(&folder)
                    .to_string_lossy()
                    .replace('/', "-");
                let backing = backing_root.join(label);
                let k = mounts.len() as u64;
                let fs = PowerFs::mount(&folder, &backing, seed ^ k.wrapping_mul(0x9E37_79B9))
                    .with_context(|| {
                        format!(
                            "mounting the power-loss file system on {} (needs /dev/fuse and \
                             fusermount3: apt-get install fuse3)",
                            folder.display()
                        )
                    })?;
                mounts.insert(folder, fs);
            }
        }
        Ok(Feeds { mounts })
    }

    /// Cuts the power of `nodes`: each process is killed (and waited for), then every folder
    /// of theirs drops what it had not made durable. Returns each folder's report.
    ///
    /// # Errors
    /// A process outlived SIGKILL for 5 s, or a cut failed.
    pub fn cut(
        &self,
        topo: &Topology,
        run_dir: &Path,
        nodes: &[String],
        torn: bool,
    ) -> Result<Vec<(PathBuf, CutReport)>> {
        let mut pids = Vec::new();
        for n in nodes {
            if let Ok(pid) = proc::read_pid(run_dir, n) {
                if proc::signal(pid, libc::SIGKILL)? {
                    pids.push((n, pid));
                }
            }
        }
        let all: Vec<i32> = pids.iter().map(|(_, p)| *p).collect();
        let left = proc::wait_gone(&all, Duration::from_secs(5));
        if !left.is_empty() {
            let names: Vec<&str> = pids
                .iter()
                .filter(|(_, p)| left.contains(p))
                .map(|(n, _)| n.as_str())
                .collect();
            bail!("power cut: {names:?} still alive 5 s after SIGKILL");
        }
        let mut out = Vec::new();
        let mut done: Vec<PathBuf> = Vec::new();
        for n in nodes {
            for folder in folders_of(topo, n) {
                if done.contains(&folder) {
                    continue;
                }
                if let Some(fs) = self.mounts.get(&folder) {
                    let r = fs
                        .power_cut(torn)
                        .with_context(|| format!("power cut of {}", folder.display()))?;
                    out.push((folder.clone(), r));
                }
                done.push(folder);
            }
        }
        Ok(out)
    }

    /// The folders on power-loss file systems.
    pub fn folders(&self) -> Vec<PathBuf> {
        self.mounts.keys().cloned().collect()
    }
}

/// One line of the report for a folder's cut.
pub fn cut_note(dir: &Path, folder: &Path, r: &CutReport) -> String {
    format!(
        "power cut {}: dropped {} unsynced bytes and {} folder changes, reverted {} files, {} torn writes",
        folder.strip_prefix(dir).unwrap_or(folder).display(),
        r.bytes_dropped,
        r.dir_changes_dropped,
        r.files_reverted,
        r.torn_writes
    )
}

/// True when a cut dropped anything (pure).
pub fn dropped_anything(r: &CutReport) -> bool {
    r.bytes_dropped > 0 || r.dir_changes_dropped > 0 || r.files_reverted > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicator_owns_its_data_folder_and_its_sites_volume_folders_a_coordinator_only_its_data()
    {
        let (text, _) = super::super::topology::topology_text(32, "sync", true).unwrap();
        let topo = Topology::parse_in(&text, "t.toml", PathBuf::from("/x")).unwrap();
        assert_eq!(
            folders_of(&topo, "hanoi-rep"),
            vec![
                PathBuf::from("/x/data/hanoi-rep"),
                PathBuf::from("/x/volumes/hanoi")
            ]
        );
        assert_eq!(
            folders_of(&topo, "hcm-rep"),
            vec![
                PathBuf::from("/x/data/hcm-rep"),
                PathBuf::from("/x/volumes/hcm")
            ]
        );
        assert_eq!(
            folders_of(&topo, "danang-coord"),
            vec![PathBuf::from("/x/data/danang-coord")]
        );
        assert!(folders_of(&topo, "nobody").is_empty());
    }
}
