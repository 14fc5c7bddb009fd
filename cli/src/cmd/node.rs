//! `tandem node --config F --name N`: run one node of a topology in the foreground.

use crate::exit::bad_input;
use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;
use tandem_core::config::NodeRole;

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
    let skew = tandem_core::clock::skew_from_env().map_err(|v| {
        bad_input(format!(
            "{}={v:?}: not a whole number of milliseconds",
            tandem_core::clock::SKEW_ENV
        ))
    })?;
    if skew != 0 {
        tracing::warn!(skew_ms = skew, "chaos: this node's clock is skewed");
    }
    let topo = crate::cmd::load_topology(&a.config).map_err(|e| bad_input(e.to_string()))?;
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
    // Runbook `exec` steps run `tandem` commands (probe, ...) as children of this node: they
    // dial with this topology and this node's own certificate. Set before any thread starts.
    std::env::set_var("TANDEM_CONFIG", &a.config);
    if !topo.tls.insecure {
        std::env::set_var(
            "TANDEM_CERT",
            tandem_core::certs::cert_path(&topo.tls.dir, &a.name),
        );
        std::env::set_var(
            "TANDEM_KEY",
            tandem_core::certs::key_path(&topo.tls.dir, &a.name),
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async move {
        let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown_signal().await;
            let _ = signalled.send(());
        };
        let node_run = async move {
            match node.role {
                NodeRole::Coordinator => {
                    tandem_coordinator::server::run(topo, a.name, shutdown).await?;
                }
                NodeRole::Replicator => {
                    tandem_replicator::node::run(topo, a.name, shutdown).await?;
                }
            }
            anyhow::Ok(())
        };
        // Long-lived streams (raft peers, replication, NBD clients) can hold a graceful
        // shutdown open indefinitely; everything acknowledged is durable already, so after
        // SHUTDOWN_GRACE the process simply exits (as after a kill -9, which is safe).
        let grace = async move {
            if on_signal.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = node_run => r,
            _ = grace => {
                tracing::warn!(grace_ms = SHUTDOWN_GRACE.as_millis() as u64, "graceful shutdown did not finish in time: exiting");
                Ok(())
            }
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// How long a node may take to stop after SIGTERM before it exits regardless.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

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
