//! `tandem local up|down`: run every node of a topology on this machine as child processes.

use crate::exit::bad_input;
use crate::local::{self as proc, Started};
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `tandem local` subcommands.
#[derive(Debug, Subcommand)]
pub enum LocalCmd {
    /// Start every node of the topology; returns once every node answers. Leaves
    /// `DIR/NODE.pid` and `DIR/NODE.log` for each.
    Up(UpArgs),
    /// Stop every node started in DIR (SIGTERM, then SIGKILL after 5 s).
    Down(DownArgs),
}

/// Arguments of `tandem local up`.
#[derive(Debug, ClapArgs)]
pub struct UpArgs {
    /// The topology file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Folder for pid and log files.
    #[arg(long, short)]
    pub dir: PathBuf,
    /// How long to wait for every node to answer.
    #[arg(long, default_value = "30")]
    pub timeout_secs: u64,
}

/// Arguments of `tandem local down`.
#[derive(Debug, ClapArgs)]
pub struct DownArgs {
    /// The folder given to `local up`.
    #[arg(long, short)]
    pub dir: PathBuf,
}

/// Runs a `tandem local` subcommand.
pub fn run(cmd: LocalCmd) -> Result<()> {
    match cmd {
        LocalCmd::Up(a) => {
            let started = up(&a.config, &a.dir, Duration::from_secs(a.timeout_secs))?;
            for s in &started {
                println!("{} pid {}", s.name, s.pid);
            }
            println!(
                "all {} nodes answer; logs in {}",
                started.len(),
                a.dir.display()
            );
            Ok(())
        }
        LocalCmd::Down(a) => {
            let stopped = proc::stop_all(&a.dir)?;
            println!("stopped {} nodes", stopped.len());
            Ok(())
        }
    }
}

/// Starts every node of the topology in `config`, waits until each listens, then until the
/// coordinators have elected a leader.
pub fn up(config: &Path, dir: &Path, timeout: Duration) -> Result<Vec<Started>> {
    let config =
        std::fs::canonicalize(config).with_context(|| format!("resolving {}", config.display()))?;
    up_with(&config, dir, timeout, &|_| config.clone(), &|_| Vec::new())
}

/// Like [`up`], but node `N` runs with the topology file `node_config(N)` (the chaos runner
/// gives each node a copy whose peer addresses are fault proxies); `config` is the real
/// topology, whose listen addresses are waited on; `node_env(N)` are extra environment
/// variables of node `N`.
pub fn up_with(
    config: &Path,
    dir: &Path,
    timeout: Duration,
    node_config: &dyn Fn(&str) -> PathBuf,
    node_env: &dyn Fn(&str) -> Vec<(String, String)>,
) -> Result<Vec<Started>> {
    let topo = crate::cmd::load_topology(config).map_err(|e| bad_input(e.to_string()))?;
    crate::cmd::certs::ensure(&topo)?;
    let mut started = Vec::new();
    for node in &topo.nodes {
        if let Ok(pid) = proc::read_pid(dir, &node.name) {
            if proc::alive(pid) {
                anyhow::bail!(
                    "node {} already runs as pid {pid} (from {}); run `tandem local down --dir {}` first",
                    node.name,
                    dir.display(),
                    dir.display()
                );
            }
        }
        started.push(proc::start_node_env(
            &node_config(&node.name),
            &node.name,
            dir,
            &node_env(&node.name),
        )?);
    }
    let result = (|| -> Result<()> {
        for (node, s) in topo.nodes.iter().zip(&started) {
            let addr = proc::resolve(&node.listen)?;
            proc::wait_listening(addr, s.pid, timeout).with_context(|| {
                format!(
                    "node {} did not come up; see {}",
                    node.name,
                    proc::log_file(dir, &node.name).display()
                )
            })?;
        }
        crate::cmd::status::wait_for_leader(&topo, timeout)?;
        // Something else may have answered on a node's port (a node left running from another
        // cluster): every process we started must still be alive.
        for s in &started {
            if !proc::alive(s.pid) {
                anyhow::bail!(
                    "node {} (pid {}) exited after start; see {}",
                    s.name,
                    s.pid,
                    proc::log_file(dir, &s.name).display()
                );
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = proc::stop_all(dir);
        return Err(e);
    }
    Ok(started)
}
