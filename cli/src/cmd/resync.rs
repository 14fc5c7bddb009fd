//! `tandem resync GROUP`: ask the group's replica to resync its volumes from the primary by
//! merkle diff (only differing blocks move), follow it with a progress bar, and record the
//! result in the audit chain. Joins a resync already running (initial sync, a returning site,
//! a journal overflow) instead of starting a second one.

use crate::cmd::status::{coordinator_addrs, replicator_of, runtime};
use crate::exit::bad_input;
use crate::progress::Bar;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tandem_core::proto::RecordKind;

use tandem_core::client::ClientError;
use tandem_core::proto::ResyncProgress;

/// Arguments of `tandem resync`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The protection group.
    pub group: String,
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// Give up following after this many seconds (the resync itself goes on).
    #[arg(long, default_value = "600")]
    pub timeout_secs: u64,
}

/// Runs `tandem resync`.
pub fn run(a: Args) -> Result<()> {
    let topo = crate::cmd::load_topology(&a.config).map_err(|e| bad_input(e.to_string()))?;
    if topo.group(&a.group).is_none() {
        return Err(bad_input(format!(
            "no group {:?} in {}",
            a.group,
            a.config.display()
        )));
    }
    let addrs = coordinator_addrs(Some(&a.config), &[])?;
    let rt = runtime()?;
    rt.block_on(async {
        let (rsite, raddr) = replicator_of(&topo, &addrs, &a.group, false).await?;
        let replica = crate::cmd::replicator(&raddr)?;
        let mut stream = replica
            .resync(&a.group, "tandem resync")
            .await
            .map_err(|e| match e {
                e @ ClientError::Unreachable { .. } => {
                    anyhow::Error::new(e).context(format!("replica replicator {raddr}"))
                }
                e => anyhow::anyhow!("{}: {}", raddr, e.peer_message()),
            })?;
        let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
        let mut bar = Bar::new();
        let mut last_error = String::new();
        let followed = stream
            .follow(deadline, &mut |msg| {
                if !msg.error.is_empty() && msg.error != last_error {
                    bar.finish();
                    eprintln!("attempt failed (retrying): {}", msg.error);
                    last_error = msg.error.clone();
                }
                show(&mut bar, msg);
            })
            .await;
        bar.finish();
        let last = followed.map_err(|e| match e {
            ClientError::Timeout { .. } => anyhow::anyhow!(
                "gave up following after {}s; the resync goes on (tandem status shows it)",
                a.timeout_secs
            ),
            e => anyhow::anyhow!("resync stream from {raddr}: {}", e.peer_message()),
        })?;
        let p = last.context("the replica sent no progress")?;
        if p.phase != "done" {
            bail!("resync of {} {}: {}", a.group, p.phase, p.error);
        }
        println!(
            "{}: replica at {rsite} resynced from the primary in {:.2}s: {} differing blocks pulled, {} bytes over the wire; stream resumes after seq {}",
            a.group,
            p.elapsed_ms as f64 / 1000.0,
            p.blocks_differing,
            p.wire_bytes,
            p.seq
        );
        let detail = json!({
            "action": "resync", "replica_site": rsite, "seq": p.seq, "elapsed_ms": p.elapsed_ms,
            "blocks_differing": p.blocks_differing, "wire_bytes": p.wire_bytes,
        });
        crate::cmd::ops::record(&addrs, RecordKind::Operator, &a.group, &detail).await?;
        Ok(())
    })
}

/// Draws one progress message on the bar (hashing, then copying).
fn show(bar: &mut Bar, msg: &ResyncProgress) {
    match msg.phase.as_str() {
        "hashing" => bar.update(
            &format!("hashing {}", msg.resource),
            msg.bytes_done,
            msg.bytes_total,
            "",
        ),
        "copying" => bar.update(
            &format!("copying {}", msg.resource),
            msg.bytes_done,
            msg.bytes_total,
            &format!("{}/{} blocks", msg.blocks_copied, msg.blocks_differing),
        ),
        _ => {}
    }
}
