//! `tandem verify GROUP`: compare merkle roots of every volume of a group on its primary and
//! replica at a barrier (replica caught up, same seq on both sides), name differing ranges, and
//! record the result in the audit chain.

use crate::cmd::status::{coordinator_addrs, fetch, runtime};
use crate::exit::bad_input;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tandem_core::config::{ResourceKind, Topology};
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::MerkleRequest;
use tandem_core::proto::ProposeRequest;
use tandem_replicator::merkle;
use tandem_replicator::merkle::MerkleTree;
use tandem_replicator::resync;

/// Arguments of `tandem verify`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The protection group.
    pub group: String,
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// How long to wait for a barrier (replica caught up with the primary).
    #[arg(long, default_value = "30")]
    pub timeout_secs: u64,
    /// Who asks, for the audit chain.
    #[arg(long, env = "USER", default_value = "operator")]
    pub actor: String,
}

async fn client(addr: &str) -> Result<ReplicationClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(120))
        .connect()
        .await
        .with_context(|| format!("replicator {addr}"))?;
    Ok(ReplicationClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Runs `tandem verify`.
pub fn run(a: Args) -> Result<()> {
    let topo = Topology::load(&a.config).map_err(|e| bad_input(e.to_string()))?;
    let group = topo
        .group(&a.group)
        .ok_or_else(|| bad_input(format!("no group {:?} in {}", a.group, a.config.display())))?
        .clone();
    let addrs = coordinator_addrs(Some(&a.config), &[])?;
    let rt = runtime()?;
    rt.block_on(async {
        let st = fetch(&addrs).await?;
        let g = st
            .groups
            .iter()
            .find(|g| g.name == a.group)
            .context("group missing from status")?;
        let (psite, rsite) = (g.primary.clone(), g.replica.clone());
        let rep_at = |site: &str| {
            topo.replicators_at(site)
                .first()
                .map(|n| n.listen.clone())
                .with_context(|| format!("no replicator at site {site}"))
        };
        let paddr = rep_at(&psite)?;
        let mut pc = client(&paddr).await?;
        let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
        let mut results = Vec::new();
        let mut all_equal = true;
        for r in &group.resources {
            let ResourceKind::Volume { block_size, .. } = &r.kind else {
                println!("{}: {} resources are not verified by merkle yet: skipped", r.name, r.kind.name());
                continue;
            };
            let bs = block_size.bytes() as u32;
            // A barrier: the primary holds intake, lets the replica reach its seq, and answers
            // both trees at that seq (writes wait meanwhile, they do not fail).
            let (report, seq) = loop {
                let req = MerkleRequest {
                    group: a.group.clone(),
                    resource: r.name.clone(),
                    block_size: bs,
                    barrier: true,
                };
                match pc.merkle(req).await {
                    Ok(rep) => {
                        let rep = rep.into_inner();
                        let own = MerkleTree::from_leaves_bytes(rep.block_size, rep.length, &rep.leaves)?;
                        let peer = MerkleTree::from_leaves_bytes(rep.block_size, rep.peer_length, &rep.peer_leaves)?;
                        break (resync::verify(&own, &peer)?, rep.watermark);
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(s) => bail!("{}: verify barrier failed: {}", r.name, s.message()),
                }
            };
            all_equal &= report.equal;
            println!(
                "{}/{}: {} at seq {seq}: primary ({psite}) root {} | replica ({rsite}) root {}{}",
                a.group,
                r.name,
                if report.equal { "EQUAL" } else { "DIFFERENT" },
                resync::hex(&report.root_a),
                resync::hex(&report.root_b),
                if report.equal {
                    String::new()
                } else {
                    format!("\n  differing bytes: {}", merkle::describe_byte_ranges(&report.differing_bytes))
                }
            );
            results.push(json!({
                "resource": r.name, "seq": seq, "equal": report.equal,
                "primary_site": psite, "replica_site": rsite,
                "primary_root": resync::hex(&report.root_a), "replica_root": resync::hex(&report.root_b),
                "differing_bytes": merkle::describe_byte_ranges(&report.differing_bytes),
            }));
        }
        let cmd = json!({
            "op": "record", "at_ms": 0, "actor": a.actor, "kind": "verify", "group": a.group,
            "detail": {"equal": all_equal, "resources": results},
        });
        let mut cc = None;
        for addr in &addrs {
            if let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
                if let Ok(ch) = ep.connect_timeout(Duration::from_millis(500)).connect().await {
                    cc = Some(CoordinatorClient::new(ch));
                    break;
                }
            }
        }
        if let Some(mut c) = cc {
            c.propose(ProposeRequest { command: cmd.to_string(), actor: a.actor.clone() })
                .await
                .map_err(|s| anyhow::anyhow!("recording the verify result: {}", s.message()))?;
        }
        if !all_equal {
            bail!("group {}: replica differs from primary", a.group);
        }
        Ok(())
    })
}
