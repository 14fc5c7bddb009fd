//! Bringing a scenario's cluster up: the embedded topology with the scenario's mode and
//! overrides, one topology file per node whose peers are fault proxies, the clock and
//! failpoint files, then every node started and a leader elected. I/O: files, processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tandem_core::client::Cluster;
use tandem_core::config::Topology;

use super::cluster::Ctx;
use super::host::Host;
use super::hosts::topology::{hosts_topology_text, VOLUME_MIB as HOSTS_VOLUME_MIB};
use super::nodefiles::{node_env, set_clock, set_failpoints};
use super::power::Feeds;
use super::processes as proc;
use super::topology::{db_group_text, pg_group_text, topology_text};
use crate::mesh::Mesh;
use crate::scenario::Scenario;

/// Volume size of every scenario, in MiB.
const VOLUME_MIB: u64 = 32;

/// The coordinator listen addresses of a topology, in file order.
pub fn addrs_of(topo: &Topology) -> Vec<String> {
    topo.coordinators()
        .iter()
        .map(|c| c.node.listen.clone())
        .collect()
}

/// The topology text of scenario `s` and the ports it chose.
fn scenario_topology(s: &Scenario) -> Result<(String, Vec<(String, u16)>)> {
    if let Some(hosts) = s.hosts_per_site {
        return hosts_topology_text(
            hosts,
            s.group_count(),
            HOSTS_VOLUME_MIB,
            &s.mode,
            s.auto_failover,
        );
    }
    let (mut text, ports) = topology_text(VOLUME_MIB, &s.mode, s.auto_failover)?;
    if s.database {
        text.push_str(&db_group_text(&s.mode, s.auto_failover));
    }
    if s.postgres {
        let (p1, p2) = (
            tandem_core::ports::free_port()?,
            tandem_core::ports::free_port()?,
        );
        text.push_str(&pg_group_text(&s.mode, s.auto_failover, p1, p2));
    }
    if s.history {
        // Point-in-time history on the volume group (the first group of the text).
        let line = "allowed_jurisdictions = [\"VN\"]\n";
        if !text.contains(line) {
            bail!(
                "the embedded topology has no `{}` to add history after",
                line.trim()
            );
        }
        text = text.replacen(
            line,
            &format!(
                "{line}history = \"1h\"\nhistory_max = \"64MiB\"\ncheckpoint_interval = \"1s\"\n"
            ),
            1,
        );
    }
    if let Some(t) = s.sync_timeout {
        let line = "sync_timeout = \"1s\"";
        if !text.contains(line) {
            bail!("the embedded topology has no `{line}` to override");
        }
        text = text.replace(line, &format!("sync_timeout = \"{}ms\"", t.as_millis()));
    }
    Ok((text, ports))
}

/// Starts the fault proxies (in this process, on `rt`, before any node starts) and writes
/// each node's topology file; returns the mesh and the files.
fn start_mesh(
    s: &Scenario,
    rt: &tokio::runtime::Runtime,
    topo: &Topology,
    text: &str,
    ports: &[(String, u16)],
    dir: &Path,
) -> Result<(Mesh, BTreeMap<String, PathBuf>)> {
    let mut real = Vec::new();
    for n in &topo.nodes {
        real.push((n.name.clone(), proc::resolve(&n.listen)?));
    }
    let avoid: Vec<u16> = ports
        .iter()
        .map(|(_, p)| *p)
        .chain(real.iter().map(|(_, a)| a.port()))
        .collect();
    // Only scenarios with network faults pay for the proxies (all traffic then crosses this
    // process); the others run exactly as `tandem local up` does.
    let needs_mesh = s.faults.iter().any(|f| f.action.is_network());
    let linked: &[(String, SocketAddr)] = if needs_mesh { &real } else { &[] };
    let mesh = rt.block_on(Mesh::start(linked, &avoid))?;
    let mut node_configs = BTreeMap::new();
    for n in &topo.nodes {
        let p = dir.join(format!("topology.{}.toml", n.name));
        std::fs::write(&p, mesh.topology_for(text, &n.name)?)
            .with_context(|| format!("writing {}", p.display()))?;
        node_configs.insert(n.name.clone(), std::fs::canonicalize(&p)?);
    }
    Ok((mesh, node_configs))
}

/// Writes the clock and failpoint files every node follows when the scenario has such
/// faults; returns (clock files, failpoint files).
fn prepare_node_files(s: &Scenario, topo: &Topology, run_dir: &Path) -> Result<(bool, bool)> {
    for c in &s.clock_skew {
        if topo.node(&c.node).is_none() {
            bail!("clock_skew: no node {:?} in the topology", c.node);
        }
    }
    let clock_files = s.has_clock_faults();
    if clock_files {
        std::fs::create_dir_all(run_dir)?;
        for n in &topo.nodes {
            set_clock(run_dir, &n.name, 0, 0)?;
        }
    }
    let failpoint_files = s.has_failpoints();
    if failpoint_files {
        if !tandem_core::fault::ENABLED {
            bail!(
                "{} sets failpoints, but this tandem was built without them: build with \
                 `cargo build --workspace --bins` (the test build) or `--features tandem/failpoints`",
                s.name
            );
        }
        std::fs::create_dir_all(run_dir)?;
        for n in &topo.nodes {
            set_failpoints(run_dir, &n.name, &BTreeMap::new())?;
        }
    }
    Ok((clock_files, failpoint_files))
}

/// Brings scenario `s` up in `dir` and returns its running cluster.
///
/// # Errors
/// The topology, the proxies, the node files or a node could not be made or started.
pub fn start_cluster(s: &Scenario, dir: &Path, host: &Host<'_>) -> Result<Ctx> {
    let (text, ports) = scenario_topology(s)?;
    let config = dir.join("topology.toml");
    std::fs::write(&config, &text)?;
    let config = std::fs::canonicalize(&config)?;
    let topo = Topology::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The client's identity needs the certificates before any node is started.
    proc::ensure_certs(&topo)?;
    let net = (host.net)(&topo)?;
    let client = Cluster::new(net.clone(), addrs_of(&topo));
    let run_dir = dir.join("run");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (mesh, node_configs) = start_mesh(s, &rt, &topo, &text, &ports, dir)?;
    let (clock_files, failpoint_files) = prepare_node_files(s, &topo, &run_dir)?;
    // Power cuts need every node's folders on a power-loss file system before it starts.
    let power = if s.has_power_cuts() {
        Some(Feeds::mount_all(&topo, dir, 0x5EED_F00D)?)
    } else {
        None
    };
    let clock_dir = clock_files.then_some(run_dir.as_path());
    let failpoint_dir = failpoint_files.then_some(run_dir.as_path());
    proc::up_with(
        &topo,
        &client,
        &run_dir,
        Duration::from_secs(60),
        &|n| {
            node_configs
                .get(n)
                .cloned()
                .unwrap_or_else(|| config.clone())
        },
        &|n| node_env(&s.clock_skew, clock_dir, failpoint_dir, n),
    )?;
    Ok(Ctx {
        rt,
        client,
        net,
        config,
        dir: dir.to_path_buf(),
        run_dir,
        nbd: ports,
        topo,
        mesh,
        node_configs,
        skews: s.clock_skew.clone(),
        clock_files,
        failpoint_files,
        power,
    })
}
