//! `tandem probe`: the built-in readiness check of the stock runbooks — the site is the
//! group's primary with a live lease, and every volume's NBD export there accepts a client,
//! is writable and answers a read; every postgres resource's server there answers a query out
//! of recovery. Exit 0 when ready, 1 when not.
//!
//! An export whose replicator requires TLS (`nbd_tls`, on by default off the loopback with the
//! cluster's `[tls]`) is opened with `NBD_OPT_STARTTLS`: the probe presents the CLI's identity
//! (`--identity`, or `--cert`/`--key` — in a runbook step, the node's own certificate) and
//! expects the certificate of the replicator whose `nbd_listen` it dials. It learns which
//! exports need TLS from the topology (`--config` or `TANDEM_CONFIG`).

use crate::cmd::status::runtime;
use crate::exit::bad_input;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tandem_chaos::nbd_client::{NbdClient, NbdClientTls};
use tandem_chaos::ChaosError;
use tandem_core::config::Topology;
use tandem_core::nbd::REP_ERR_TLS_REQD;
use tandem_core::proto::StatusRequest;

/// How the probe opens the export at `host` (the `HOST:PORT` of an `nbd_url`): over TLS when the
/// topology's replicator listening there requires it, expecting that replicator's
/// certificate; plaintext when it does not, or when there is no topology.
fn nbd_tls(topo: Option<&Topology>, host: &str) -> Result<Option<NbdClientTls>> {
    let Some(topo) = topo else {
        return Ok(None);
    };
    let Some(node) = topo
        .nodes
        .iter()
        .find(|n| n.nbd_listen.as_deref() == Some(host))
    else {
        return Ok(None);
    };
    if !topo.nbd_uses_tls(node) {
        return Ok(None);
    }
    let config = crate::cmd::net()
        .context("the CLI's certificate for NBD over TLS")?
        .nbd_client_config()
        .with_context(|| {
            format!(
                "node {}: nbd_tls is on but the topology's [tls] is insecure",
                node.name
            )
        })?;
    Ok(Some(NbdClientTls::new(config, &node.name)?))
}

/// Opens the export of `url` (`nbd://HOST:PORT/NAME`), over TLS when [`nbd_tls`] says so.
async fn open_export(url: &str, topo: Option<&Topology>) -> Result<NbdClient> {
    let rest = url.trim_start_matches("nbd://");
    let (host, export) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("bad NBD address {url}"))?;
    let tls = nbd_tls(topo, host).with_context(|| url.to_owned())?;
    let connect = NbdClient::connect_with(addr, export, tls.as_ref());
    match tokio::time::timeout(Duration::from_secs(3), connect)
        .await
        .with_context(|| format!("{url}: no answer"))?
    {
        Ok(c) => Ok(c),
        Err(
            e @ ChaosError::NbdRefused {
                reply_type: REP_ERR_TLS_REQD,
                ..
            },
        ) if topo.is_none() => bail!(
            "{url}: {e}; give the topology (--config or TANDEM_CONFIG) so that the probe \
             knows which exports use TLS"
        ),
        Err(e) => match &tls {
            Some(t) => bail!("{url} (TLS, expecting node {}): {e}", t.node()),
            None => bail!("{url}: {e}"),
        },
    }
}

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
    /// The topology, for which NBD exports require TLS (`nbd_tls`) and the certificates to
    /// present; without it every export is opened in plaintext.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
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
    let topo = a
        .config
        .as_deref()
        .map(|p| crate::cmd::load_topology(p).map_err(|e| bad_input(e.to_string())))
        .transpose()?;
    runtime()?.block_on(async {
        let mut c = crate::cmd::ops::connect(&addrs).await?;
        let r = c
            .status(StatusRequest {
                groups: vec![a.group.clone()],
            })
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
            let mut client = open_export(url, topo.as_ref()).await?;
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
