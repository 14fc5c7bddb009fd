//! `tandem demo`: the whole product on this machine in under 90 seconds.

use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;

/// Arguments of `tandem demo`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Folder for the demo's topology, data, logs and evidence (default: a new temp folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the processes running at the end (stop them with `tandem local down --dir DIR`).
    #[arg(long)]
    pub keep: bool,
}

/// Runs the demo.
pub fn run(_a: Args) -> Result<()> {
    anyhow::bail!("demo: not wired yet")
}
