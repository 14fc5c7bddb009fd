//! Operator commands sent to the coordinators: `pause`, `resume`, `audit`; `failover`,
//! `switchover`, `drill` and `failback` start runbook runs (see `cmd::runs`). Who asked is
//! what the audit chain records: the identity of the client certificate (`--cert`), never a
//! name the command line gives.

use crate::cmd::status::{coordinator_addrs, runtime};
use anyhow::Result;
use clap::Args as ClapArgs;
use serde_json::Value;
use std::path::PathBuf;
use tandem_core::client::ClientError;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::{AuditRequest, Decided, RecordKind};
use tonic::transport::Channel;

/// Where the coordinators are and who is asking.
#[derive(Debug, ClapArgs)]
pub struct Target {
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// A coordinator address to ask instead (`127.0.0.1:7101`); may be repeated.
    #[arg(long)]
    pub addr: Vec<String>,
}

/// Arguments of commands on one group.
#[derive(Debug, ClapArgs)]
pub struct GroupArgs {
    /// The protection group.
    pub group: String,
    /// Why (recorded in the audit chain).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub target: Target,
}

/// Arguments of `tandem audit`.
#[derive(Debug, ClapArgs)]
pub struct AuditArgs {
    /// First record index.
    #[arg(long, default_value = "0")]
    pub from: u64,
    /// Most records to print.
    #[arg(long, default_value = "1000")]
    pub limit: u64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Connects to the first coordinator of `addrs` that answers.
pub async fn connect(addrs: &[String]) -> Result<CoordinatorClient<Channel>> {
    let (c, _) = crate::cmd::cluster(addrs)?.connect("connect").await?;
    Ok(c)
}

/// Adds a record of `kind` about `group` with `detail` to the audit chain through the first
/// coordinator that answers; the coordinators record this client's certificate as its actor.
///
/// # Errors
/// No coordinator answers, or the call is refused.
pub async fn record(addrs: &[String], kind: RecordKind, group: &str, detail: &Value) -> Result<()> {
    crate::cmd::cluster(addrs)?
        .record(kind, group, detail)
        .await
        .map_err(|e| match e {
            e @ ClientError::Refused { .. } => {
                anyhow::anyhow!("recording in the audit chain: {}", e.peer_message())
            }
            e => anyhow::Error::new(e),
        })?;
    Ok(())
}

/// The events of a decision, as JSON.
fn events(d: &Decided) -> Value {
    Value::Array(
        d.events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap_or_else(|_| Value::String(e.clone())))
            .collect(),
    )
}

/// `tandem pause GROUP`: pause replication of a group.
pub fn pause(a: GroupArgs) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let d = runtime()?.block_on(async {
        crate::cmd::cluster(&addrs)?
            .pause(&a.group, &a.reason)
            .await
            .map_err(|e| anyhow::anyhow!("pause {}: {}", a.group, e.peer_message()))
    })?;
    println!("paused {}: {}", a.group, events(&d));
    Ok(())
}

/// `tandem resume GROUP`: resume replication of a group.
pub fn resume(a: GroupArgs) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let d = runtime()?.block_on(async {
        crate::cmd::cluster(&addrs)?
            .resume(&a.group, &a.reason)
            .await
            .map_err(|e| anyhow::anyhow!("resume {}: {}", a.group, e.peer_message()))
    })?;
    println!("resumed {}: {}", a.group, events(&d));
    Ok(())
}

/// `tandem audit`: print the audit chain (verifying it as it goes).
pub fn audit(a: AuditArgs) -> Result<()> {
    let addrs = coordinator_addrs(a.target.config.as_ref(), &a.target.addr)?;
    let records = runtime()?.block_on(async {
        // A coordinator that lacks the records asked (back-filling after a snapshot) answers
        // Unavailable: ask the next one.
        let mut last = anyhow::anyhow!("no coordinator address");
        for addr in &addrs {
            let mut c = match connect(std::slice::from_ref(addr)).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let req = AuditRequest {
                from_index: a.from,
                limit: a.limit,
            };
            match c.audit(req).await {
                Ok(r) => return anyhow::Ok(r.into_inner().records),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    last = anyhow::anyhow!("{addr}: {}", s.message());
                }
                Err(s) => anyhow::bail!("{}", s.message()),
            }
        }
        Err(last)
    })?;
    for r in &records {
        if a.json {
            println!("{r}");
        } else {
            let v: Value = serde_json::from_str(r)?;
            println!(
                "{:>5} {} {:<12} {:<18} {:<8} {}",
                v["index"],
                chrono::DateTime::from_timestamp_millis(v["at_ms"].as_i64().unwrap_or(0))
                    .map(|t| t.format("%H:%M:%S%.3f").to_string())
                    .unwrap_or_default(),
                v["actor"].as_str().unwrap_or(""),
                v["kind"].as_str().unwrap_or(""),
                v["group"].as_str().unwrap_or("-"),
                v["detail"]
            );
        }
    }
    Ok(())
}
