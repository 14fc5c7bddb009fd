//! `tandem config check FILE`: validate a topology and print a summary.

use crate::exit::bad_input;
use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use std::path::PathBuf;
use tandem_core::config::NodeRole;

/// `tandem config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate a topology file; errors name the file, line, column and field path.
    Check(CheckArgs),
}

/// Arguments of `tandem config check`.
#[derive(Debug, ClapArgs)]
pub struct CheckArgs {
    /// The topology file (TOML).
    pub file: PathBuf,
}

/// Runs a `tandem config` subcommand.
pub fn run(cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Check(a) => check(a),
    }
}

fn check(a: CheckArgs) -> Result<()> {
    let topo = crate::cmd::load_topology(&a.file).map_err(|e| bad_input(e.to_string()))?;
    let coords = topo
        .nodes
        .iter()
        .filter(|n| n.role == NodeRole::Coordinator)
        .count();
    println!(
        "{}: ok: cluster {:?}, {} sites, {} nodes ({} coordinators), {} groups",
        a.file.display(),
        topo.cluster.name,
        topo.sites.len(),
        topo.nodes.len(),
        coords,
        topo.groups.len()
    );
    for w in topo.nbd_warnings() {
        eprintln!("WARNING: {w}");
    }
    for g in &topo.groups {
        println!(
            "  group {}: {} -> {} ({}), {} resources, rpo_target {}, rto_target {}",
            g.name,
            g.primary,
            g.replica,
            g.mode,
            g.resources.len(),
            g.rpo_target,
            g.rto_target
        );
    }
    Ok(())
}
