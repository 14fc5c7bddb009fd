//! `tandem local up|down`: run every node of a topology on this machine as child processes.

use crate::exit::bad_input;
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tandem_chaos::runner::processes::{self as proc, Started};

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
    let topo = crate::cmd::load_topology(&config).map_err(|e| bad_input(e.to_string()))?;
    // The client identity below reads the operator certificate: make the cluster's
    // certificates first (a fresh folder has none; `up_with` would make them too late).
    proc::ensure_certs(&topo)?;
    let cluster = crate::cmd::cluster(&crate::cmd::status::addrs_of(&topo))?;
    proc::up_with(&topo, &cluster, dir, timeout, &|_| config.clone(), &|_| {
        Vec::new()
    })
}
