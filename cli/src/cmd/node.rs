//! `tandem node --config F --name N`: run one node of a topology in the foreground.

use crate::exit::bad_input;
use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;
use tandem_core::config::{NodeRole, Topology};

/// Arguments of `tandem node`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// This node's name in the topology.
    #[arg(long, short)]
    pub name: String,
}

/// Runs the node until SIGTERM or Ctrl-C.
pub fn run(a: Args) -> Result<()> {
    let topo = Topology::load(&a.config).map_err(|e| bad_input(e.to_string()))?;
    let node = topo
        .node(&a.name)
        .ok_or_else(|| {
            bad_input(format!(
                "{}: no node named {:?}",
                a.config.display(),
                a.name
            ))
        })?
        .clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shutdown = shutdown_signal();
        match node.role {
            NodeRole::Coordinator => {
                tandem_coordinator::server::run(topo, a.name, shutdown).await?;
            }
            NodeRole::Replicator => {
                tandem_replicator::node::run(topo, a.name, shutdown).await?;
            }
        }
        Ok(())
    })
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}
