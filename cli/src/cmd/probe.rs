//! `tandem probe`: the built-in readiness check of the stock runbooks — the site is the
//! group's primary with a live lease, and every volume's NBD export there accepts a client,
//! is writable and answers a read; every postgres resource's server there answers a query out
//! of recovery. Exit 0 when ready, 1 when not.

use crate::cmd::status::runtime;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tandem_chaos::nbd_client::NbdClient;
use tandem_core::proto::StatusRequest;

/// A postgres resource is ready when its server on the primary answers a query and is out of
/// recovery (`SELECT pg_is_in_recovery()` is false), asked with psql as the data dir's owner.
async fn probe_postgres(r: &Value) -> Result<()> {
    let name = r["name"].as_str().unwrap_or_default().to_owned();
    let data_dir = std::path::PathBuf::from(r["primary_path"].as_str().unwrap_or_default());
    let bin_dir = std::path::PathBuf::from(
        r["bin_dir"]
            .as_str()
            .unwrap_or(tandem_core::config::DEFAULT_POSTGRES_BIN_DIR),
    );
    let port = r["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .with_context(|| format!("postgres resource {name}: no port in the status"))?;
    let out = tokio::task::spawn_blocking(move || {
        tandem_core::pgctl::query(&bin_dir, &data_dir, port, "SELECT pg_is_in_recovery()")
    })
    .await
    .context("psql task")?
    .map_err(|e| anyhow::anyhow!("postgres resource {name}: {e}"))?;
    if out.trim() != "f" {
        bail!("postgres resource {name} (port {port}) is still in recovery");
    }
    println!("postgres {name}: port {port} answers, out of recovery");
    Ok(())
}

/// Arguments of `tandem probe`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Coordinator addresses (`HOST:PORT`), repeated or comma-separated.
    #[arg(long, required = true)]
    pub addr: Vec<String>,
    /// The protection group.
    #[arg(long)]
    pub group: String,
    /// The site that must be primary.
    #[arg(long)]
    pub site: String,
}

/// Runs the probe.
pub fn run(a: Args) -> Result<()> {
    let addrs: Vec<String> = a
        .addr
        .iter()
        .flat_map(|x| x.split(','))
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect();
    runtime()?.block_on(async {
        let mut c = crate::cmd::ops::connect(&addrs).await?;
        let r = c
            .status(StatusRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("status: {}", s.message()))?
            .into_inner();
        let doc: Value = serde_json::from_str(&r.json).context("decoding the status")?;
        let g = doc["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == a.group.as_str()))
            .with_context(|| format!("no group {}", a.group))?;
        if g["primary"] != a.site.as_str() {
            bail!(
                "{} is not the primary of {} (primary: {})",
                a.site,
                a.group,
                g["primary"]
            );
        }
        let lease = &g["lease"];
        if lease["status"] != "active" || lease["remaining_ms"].as_i64().unwrap_or(0) <= 0 {
            bail!("{}: no live lease at {} yet ({})", a.group, a.site, lease);
        }
        for r in g["resources"].as_array().cloned().unwrap_or_default() {
            if r["kind"] == "postgres" {
                probe_postgres(&r).await?;
                continue;
            }
            let Some(url) = r["nbd_url"].as_str() else {
                continue;
            };
            let rest = url.trim_start_matches("nbd://");
            let (host, export) = rest.split_once('/').unwrap_or((rest, ""));
            let addr: SocketAddr = host
                .parse()
                .with_context(|| format!("bad NBD address {url}"))?;
            let mut client =
                tokio::time::timeout(Duration::from_secs(3), NbdClient::connect(addr, export))
                    .await
                    .with_context(|| format!("{url}: no answer"))?
                    .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
            if client.read_only() {
                bail!("{url}: the export is read-only");
            }
            let n = client.size().min(4096) as usize;
            client
                .read(0, n)
                .await
                .map_err(|e| anyhow::anyhow!("{url}: read: {e}"))?;
            let _ = client.disconnect().await;
            println!("{url}: writable, answers reads");
        }
        println!("{} ready at {} (epoch {})", a.group, a.site, g["epoch"]);
        Ok(())
    })
}
