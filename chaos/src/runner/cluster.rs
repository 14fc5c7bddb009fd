//! The running cluster of one scenario ([`Ctx`]): its topology, processes, fault mesh and
//! client; the freshest status, waiting for a condition, which nodes a fault target names,
//! and (re)starting a node. I/O: status calls and processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tandem_coordinator::status::ClusterStatus;
use tandem_core::client::Cluster;
use tandem_core::config::{NodeRole, Topology};
use tandem_core::net::Net;

use super::nodefiles::{node_env, set_failpoints};
use super::processes as proc;
use super::topology::group;
use crate::mesh::Mesh;
use crate::scenario::ClockSkew;

/// How long one coordinator may take to answer a status call of the runner.
const STATUS_WAIT: Duration = Duration::from_millis(700);

/// The end of a scenario, however it ends (verdict, error, early return, panic): every
/// process started for it is killed with its process group and reaped, so none outlives it.
impl Drop for Ctx {
    fn drop(&mut self) {
        let left = proc::kill_started(&self.run_dir);
        if !left.is_empty() {
            tracing::debug!(run_dir = %self.run_dir.display(), pids = ?left, "killed at the end of the scenario");
        }
    }
}

/// What a timed-out wait last saw of the group: its state and why, roles, seqs, RPO, lease.
fn last_seen(st: &ClusterStatus) -> String {
    match group(st) {
        Some(g) => format!(
            "group {} {:?} (reason {:?}), primary {} replica {} epoch {}, captured {} durable {} rpo {} ms, lease {}",
            g.name,
            g.state,
            g.reason,
            g.primary,
            g.replica,
            g.epoch,
            g.last_captured_seq,
            g.durable_seq,
            g.rpo_ms,
            g.lease
                .as_ref()
                .map_or("none".to_owned(), |l| format!("{} {}", l.holder, l.status)),
        ),
        None => "no group in the status".to_owned(),
    }
}

/// A scenario's cluster, started.
pub struct Ctx {
    /// The runtime of the proxies, the writers and the client calls.
    pub rt: tokio::runtime::Runtime,
    /// The coordinators.
    pub client: Cluster,
    /// The network context the client dials with.
    pub net: Net,
    /// The real topology file.
    pub config: PathBuf,
    /// The scenario's folder (topology, data, volumes, databases).
    pub dir: PathBuf,
    /// The folder of pid, log, clock and failpoint files.
    pub run_dir: PathBuf,
    /// The ports the embedded topology chose (`SITE-nbd` among them).
    pub nbd: Vec<(String, u16)>,
    /// The topology.
    pub topo: Topology,
    /// One fault proxy per ordered pair of nodes; every node dials its peers through them.
    pub mesh: Mesh,
    /// The topology file each node runs with (peer addresses are proxies).
    pub node_configs: BTreeMap<String, PathBuf>,
    /// Clock skews of the scenario.
    pub skews: Vec<ClockSkew>,
    /// Every node follows a clock program file (the scenario has clock faults).
    pub clock_files: bool,
    /// Every node follows a failpoint file (the scenario has failpoint faults).
    pub failpoint_files: bool,
    /// The power-loss file systems under every node (the scenario has power cuts). Unmounted
    /// when the context drops, after its `Drop` has killed every process of the run.
    pub power: Option<super::power::Feeds>,
}

impl Ctx {
    /// The freshest status: every coordinator is asked at once (a partitioned one must not
    /// hold the runner up); stale answers are ignored; among the rest the highest epoch wins,
    /// then an answer from the leader itself.
    pub fn status(&self) -> Option<ClusterStatus> {
        let answers = self
            .rt
            .block_on(self.client.statuses::<ClusterStatus>(STATUS_WAIT));
        let rank = |s: &ClusterStatus| {
            (
                group(s).map(|g| g.epoch).unwrap_or(0),
                s.leader.as_deref() == Some(s.answered_by.as_str()),
            )
        };
        answers
            .into_iter()
            .filter(|s| !s.stale && s.leader.is_some())
            .fold(None, |best: Option<ClusterStatus>, s| match best {
                Some(b) if rank(&b) >= rank(&s) => Some(b),
                _ => Some(s),
            })
    }

    /// Waits (polling every 100 ms, up to `secs`) for a status for which `f` holds.
    ///
    /// # Errors
    /// Timed out.
    pub fn wait(
        &self,
        what: &str,
        secs: u64,
        f: &dyn Fn(&ClusterStatus) -> bool,
    ) -> Result<ClusterStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = None;
        loop {
            if let Some(st) = self.status() {
                if f(&st) {
                    return Ok(st);
                }
                last = Some(st);
            }
            if Instant::now() > deadline {
                let seen = last.as_ref().map_or("no status".to_owned(), last_seen);
                bail!("timed out after {secs}s waiting for {what} (last seen: {seen})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The NBD address of a data site.
    pub fn nbd_of_site(&self, site: &str) -> SocketAddr {
        let port = self
            .nbd
            .iter()
            .find(|(n, _)| n == &format!("{site}-nbd"))
            .map(|(_, p)| *p)
            .unwrap_or(0);
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Starts (again) node `n` with its own topology file (and clock skew); a restarted node
    /// has no failpoint set (the crash a failpoint caused does not come back by itself). A
    /// node whose process still runs (after up to 2 s for one just killed) is left as it is.
    ///
    /// # Errors
    /// Its failpoint file cannot be written or it cannot start.
    pub fn start(&self, n: &str) -> Result<()> {
        let config = self.node_configs.get(n).unwrap_or(&self.config);
        let clocks = self.clock_files.then_some(self.run_dir.as_path());
        let failpoints = self.failpoint_files.then_some(self.run_dir.as_path());
        if self.failpoint_files {
            set_failpoints(&self.run_dir, n, &BTreeMap::new())?;
        }
        if let Ok(pid) = proc::read_pid(&self.run_dir, n) {
            // A node killed a moment ago may take a little while to go; one that still runs
            // after that is not started twice (two copies of a node, one no pid file names).
            let deadline = Instant::now() + Duration::from_secs(2);
            while proc::alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if proc::alive(pid) {
                tracing::warn!(node = %n, pid, "not started again: it still runs");
                return Ok(());
            }
        }
        let env = node_env(&self.skews, clocks, failpoints, n);
        proc::start_node_env(config, n, &self.run_dir, &env)?;
        Ok(())
    }

    /// Nodes not in `killed` whose process is gone (a failpoint crashed them).
    pub fn crashed(&self, killed: &[String]) -> Vec<String> {
        self.all_nodes()
            .into_iter()
            .filter(|n| !killed.contains(n))
            .filter(|n| proc::read_pid(&self.run_dir, n).is_ok_and(|pid| !proc::alive(pid)))
            .collect()
    }

    /// Every node of the topology.
    pub fn all_nodes(&self) -> Vec<String> {
        self.topo.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The nodes a target names, resolved with the last status known (roles move).
    pub fn nodes_of(&self, target: &str, st: Option<&ClusterStatus>) -> Vec<String> {
        let g = st.and_then(group);
        let site_nodes = |site: &str| -> Vec<String> {
            self.topo
                .nodes
                .iter()
                .filter(|n| n.site == site)
                .map(|n| n.name.clone())
                .collect()
        };
        let role_nodes = |role: NodeRole| -> Vec<String> {
            self.topo
                .nodes
                .iter()
                .filter(|n| n.role == role)
                .map(|n| n.name.clone())
                .collect()
        };
        match target {
            "site:primary" => g.map(|g| site_nodes(&g.primary)).unwrap_or_default(),
            "site:replica" => g.map(|g| site_nodes(&g.replica)).unwrap_or_default(),
            "leader" => st.and_then(|s| s.leader.clone()).into_iter().collect(),
            "primary-replicator" => g
                .map(|g| format!("{}-rep", g.primary))
                .into_iter()
                .collect(),
            "replica-replicator" => g
                .map(|g| format!("{}-rep", g.replica))
                .into_iter()
                .collect(),
            "coordinators" => role_nodes(NodeRole::Coordinator),
            "replicators" => role_nodes(NodeRole::Replicator),
            "all" => self.all_nodes(),
            t => {
                if let Some(site) = t.strip_prefix("site:") {
                    site_nodes(site)
                } else {
                    t.strip_prefix("node:")
                        .map(str::to_owned)
                        .into_iter()
                        .collect()
                }
            }
        }
    }
}
