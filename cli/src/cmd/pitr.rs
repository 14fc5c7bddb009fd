//! `tandem checkpoint`, `tandem checkpoints` and `tandem recover`: point-in-time recovery
//! from the history a replica keeps (groups with `history` set).
//!
//! A tagged checkpoint is asked of the group's primary replicator, which puts a marker into
//! the group's one ordered stream: everything acknowledged before it is in it, for every
//! resource of the group (a consistent cut), and the command returns once the replica has it
//! durable. Listing and recovering are asked of the replica replicator. The recovered point
//! and its merkle roots are recorded in the audit chain through the coordinators.

use crate::cmd::status::{coordinator_addrs, replicator_of, runtime};
use crate::cmd::ConnectNet;
use crate::exit::bad_input;
use crate::timefmt::rfc3339;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tandem_core::config::{HumanDuration, Topology};
use tandem_core::proto::RecordKind;
use tandem_core::proto::{
    CheckpointRequest, CheckpointsRequest, RecoverReply, RecoverRequest, RecoveryPoint,
};

/// Arguments of `tandem checkpoint`.
#[derive(Debug, ClapArgs)]
pub struct CheckpointArgs {
    /// The protection group.
    pub group: String,
    /// The checkpoint's tag (`before-upgrade`); recover to it with `--checkpoint TAG`.
    #[arg(long)]
    pub tag: String,
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
}

/// Arguments of `tandem checkpoints`.
#[derive(Debug, ClapArgs)]
pub struct CheckpointsArgs {
    /// The protection group.
    pub group: String,
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// Also list every barrier (flush, database commit), not only checkpoints.
    #[arg(long)]
    pub all: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `tandem recover`.
#[derive(Debug, ClapArgs)]
pub struct RecoverArgs {
    /// The protection group.
    pub group: String,
    /// Recover to the latest point at or before this time (RFC 3339 such as
    /// `2026-12-01T08:00:00Z`, or unix milliseconds).
    #[arg(long, conflicts_with_all = ["ago", "checkpoint"])]
    pub at: Option<String>,
    /// Recover to the latest point at or before this long ago (`10m`, `90s`).
    #[arg(long, conflicts_with = "checkpoint")]
    pub ago: Option<String>,
    /// Recover to the latest checkpoint with this tag.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// Folder to build the copy in, at the replica site (created; must be empty); it must lie
    /// under that replicator's `recover_root` (default `DATA_DIR/recovered`).
    #[arg(long)]
    pub out: PathBuf,
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// Merkle block size of the printed roots, in bytes.
    #[arg(long, default_value = "65536")]
    pub block_size: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn load(config: &std::path::Path, group: &str) -> Result<Topology> {
    let topo = crate::cmd::load_topology(config).map_err(|e| bad_input(e.to_string()))?;
    if topo.group(group).is_none() {
        return Err(bad_input(format!(
            "no group {group:?} in {}",
            config.display()
        )));
    }
    Ok(topo)
}

/// A replication client for the replicator at `addr`; a recovery copies and rewinds whole
/// volumes, so calls may take long (one hour at most).
async fn client(
    addr: &str,
) -> Result<tandem_core::proto::replication_client::ReplicationClient<tonic::transport::Channel>> {
    let ch = crate::cmd::endpoint(addr)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3600))
        .connect_net()
        .await
        .with_context(|| format!("replicator {addr}"))?;
    Ok(tandem_core::grpc_limits!(
        tandem_core::proto::replication_client::ReplicationClient::new(ch)
    ))
}

use tandem_core::bytes::hex;

fn point_json(p: &RecoveryPoint) -> Value {
    json!({"seq": p.seq, "captured_ms": p.captured_ms, "time": rfc3339(p.captured_ms), "kind": p.kind, "tag": p.tag})
}

/// Parses `--at` (RFC 3339 or unix ms) or `--ago` (a duration before now) into unix ms.
///
/// # Errors
/// A bad-input error naming the flag and the accepted forms.
pub fn parse_time(at: Option<&str>, ago: Option<&str>, now_ms: i64) -> Result<Option<i64>> {
    if let Some(a) = at {
        if let Ok(ms) = a.parse::<i64>() {
            return Ok(Some(ms));
        }
        let t = chrono::DateTime::parse_from_rfc3339(a).map_err(|e| {
            bad_input(format!(
                "--at {a:?}: {e} (give RFC 3339 such as 2026-12-01T08:00:00Z, or unix ms)"
            ))
        })?;
        return Ok(Some(t.timestamp_millis()));
    }
    if let Some(a) = ago {
        let d = HumanDuration::from_str(a)
            .map_err(|e| bad_input(format!("--ago {a:?}: {e} (give a duration such as 10m)")))?;
        return Ok(Some(now_ms - Duration::from(d).as_millis() as i64));
    }
    Ok(None)
}

/// Runs `tandem checkpoint`.
pub fn checkpoint(a: CheckpointArgs) -> Result<()> {
    let topo = load(&a.config, &a.group)?;
    let addrs = coordinator_addrs(Some(&a.config), &[])?;
    runtime()?.block_on(async {
        let (site, addr) = replicator_of(&topo, &addrs, &a.group, true).await?;
        let mut c = client(&addr).await?;
        let r = c
            .checkpoint(CheckpointRequest {
                group: a.group.clone(),
                tag: a.tag.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("checkpoint at the primary ({site}): {}", s.message()))?
            .into_inner();
        println!(
            "checkpoint {:?} of {} at seq {}, {} (marked by the primary at {site}, durable on the replica)",
            a.tag,
            a.group,
            r.seq,
            rfc3339(r.captured_ms)
        );
        Ok(())
    })
}

/// Runs `tandem checkpoints`.
pub fn checkpoints(a: CheckpointsArgs) -> Result<()> {
    let topo = load(&a.config, &a.group)?;
    let addrs = coordinator_addrs(Some(&a.config), &[])?;
    runtime()?.block_on(async {
        let (site, addr) = replicator_of(&topo, &addrs, &a.group, false).await?;
        let mut c = client(&addr).await?;
        let r = c
            .checkpoints(CheckpointsRequest {
                group: a.group.clone(),
                barriers: a.all,
            })
            .await
            .map_err(|s| anyhow::anyhow!("checkpoints at the replica ({site}): {}", s.message()))?
            .into_inner();
        if a.json {
            let doc = json!({
                "group": a.group, "replica": site, "watermark": r.watermark,
                "history_bytes": r.history_bytes,
                "oldest": r.oldest.as_ref().map(point_json),
                "points": r.points.iter().map(point_json).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
            return Ok(());
        }
        println!(
            "{}: history at {site}, {:.1} MB, replica at seq {}; oldest recoverable: {}",
            a.group,
            r.history_bytes as f64 / 1e6,
            r.watermark,
            r.oldest
                .as_ref()
                .map(|p| format!("seq {} at {}", p.seq, rfc3339(p.captured_ms)))
                .unwrap_or_else(|| "none yet".into())
        );
        println!("{:<26} {:>12}  {:<10}  tag", "time", "seq", "kind");
        for p in &r.points {
            println!(
                "{:<26} {:>12}  {:<10}  {}",
                rfc3339(p.captured_ms),
                p.seq,
                p.kind,
                p.tag
            );
        }
        Ok(())
    })
}

/// The audit detail of a recovery.
pub fn recover_detail(site: &str, out: &str, r: &RecoverReply) -> Value {
    json!({
        "site": site, "out_dir": out,
        "point": r.point.as_ref().map(point_json),
        "copied_at": r.copied_at, "undone": r.undone, "block_size": r.block_size,
        "resources": r.resources.iter().map(|x| json!({
            "name": x.name, "path": x.path, "length": x.length, "root": hex(&x.root),
        })).collect::<Vec<_>>(),
    })
}

/// Runs `tandem recover`.
pub fn recover(a: RecoverArgs) -> Result<()> {
    let topo = load(&a.config, &a.group)?;
    let now = chrono::Utc::now().timestamp_millis();
    let at_ms = parse_time(a.at.as_deref(), a.ago.as_deref(), now)?;
    let (at_ms, tag) = match (at_ms, &a.checkpoint) {
        (Some(ms), None) => (ms, String::new()),
        (None, Some(t)) => (0, t.clone()),
        _ => {
            return Err(bad_input(
                "give one of --at TIME, --ago DURATION or --checkpoint TAG",
            ))
        }
    };
    let out = if a.out.is_absolute() {
        a.out.clone()
    } else {
        std::env::current_dir()
            .context("current directory")?
            .join(&a.out)
    };
    let addrs = coordinator_addrs(Some(&a.config), &[])?;
    runtime()?.block_on(async {
        let (site, addr) = replicator_of(&topo, &addrs, &a.group, false).await?;
        let mut c = client(&addr).await?;
        let r = c
            .recover(RecoverRequest {
                group: a.group.clone(),
                at_ms,
                tag,
                out_dir: out.display().to_string(),
                block_size: a.block_size,
                name: String::new(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("recover at the replica ({site}): {}", s.message()))?
            .into_inner();
        let detail = recover_detail(&site, &out.display().to_string(), &r);
        let audited = crate::cmd::cluster(&addrs)?
            .record(RecordKind::Recover, &a.group, &detail)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "recording the recovery in the audit chain: {}",
                    e.peer_message()
                )
            })?;
        if a.json {
            let mut d = detail;
            d["audit_index"] = json!(audited.index);
            println!("{}", serde_json::to_string_pretty(&d)?);
            return Ok(());
        }
        let Some(p) = &r.point else {
            bail!("the replica answered without a recovery point");
        };
        println!(
            "recovered {} to seq {} ({}{}), captured {} ({} ms)",
            a.group,
            p.seq,
            p.kind,
            if p.tag.is_empty() {
                String::new()
            } else {
                format!(" {:?}", p.tag)
            },
            rfc3339(p.captured_ms),
            p.captured_ms
        );
        println!(
            "  from a copy of the live replica at seq {} ({site}), {} undo records applied",
            r.copied_at, r.undone
        );
        for x in &r.resources {
            println!(
                "  {}: {} ({} bytes) merkle root {} ({} KiB blocks)",
                x.name,
                x.path,
                x.length,
                hex(&x.root),
                r.block_size / 1024
            );
        }
        println!("  recorded in the audit chain at index {}", audited.index);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_accepted_form() {
        assert_eq!(parse_time(Some("1500"), None, 0).unwrap(), Some(1500));
        assert_eq!(
            parse_time(Some("1970-01-01T00:00:01.250Z"), None, 0).unwrap(),
            Some(1250)
        );
        assert_eq!(
            parse_time(None, Some("10m"), 1_000_000).unwrap(),
            Some(400_000)
        );
        assert_eq!(parse_time(None, None, 5).unwrap(), None);
        assert!(parse_time(Some("yesterday"), None, 0).is_err());
        assert!(parse_time(None, Some("soon"), 0).is_err());
        assert_eq!(rfc3339(1250), "1970-01-01T00:00:01.250Z");
    }
}
