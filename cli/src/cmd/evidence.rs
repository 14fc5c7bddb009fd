//! `tandem evidence export|verify`: the auditor's folder (report.html, audit.jsonl, runs.json,
//! rpo.csv, manifest.json) and its re-check.

use crate::cmd::status::runtime;
use crate::exit::bad_input;
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tandem_coordinator::audit::AuditRecord;
use tandem_coordinator::evidence::{self, ExportOptions};

/// `tandem evidence` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvidenceCmd {
    /// Write the evidence folder for a time window.
    Export(ExportArgs),
    /// Re-check a folder: the audit chain, every file's blake3, and every derived file.
    Verify(VerifyArgs),
}

/// Arguments of `tandem evidence export`.
#[derive(Debug, ClapArgs)]
pub struct ExportArgs {
    /// The topology file.
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Start of the window (RFC 3339, e.g. 2026-11-01T00:00:00Z); default: the beginning.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window (RFC 3339); default: now.
    #[arg(long)]
    pub to: Option<String>,
}

/// Arguments of `tandem evidence verify`.
#[derive(Debug, ClapArgs)]
pub struct VerifyArgs {
    /// The evidence folder.
    pub dir: PathBuf,
}

/// Runs a `tandem evidence` subcommand.
pub fn run(cmd: EvidenceCmd) -> Result<()> {
    match cmd {
        EvidenceCmd::Export(a) => export(a),
        EvidenceCmd::Verify(a) => {
            let report = evidence::verify(&a.dir)
                .with_context(|| format!("{} does not verify", a.dir.display()))?;
            println!(
                "{}: OK: {} audit records chain to head {}; files checked: {}; re-derived: {}",
                a.dir.display(),
                report.records,
                report.manifest.chain.head_hash,
                report.files_checked.join(", "),
                report.files_rederived.join(", ")
            );
            let u = &report.unauthenticated;
            if !u.is_none() {
                println!(
                    "WARNING: {} record(s) (#{} to #{}) were made without TLS ([tls] insecure = true): their actor is \"unauthenticated\"; nobody vouches for who acted",
                    u.records, u.first_index, u.last_index
                );
            }
            Ok(())
        }
    }
}

fn parse_time(s: &str, field: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| bad_input(format!("--{field} {s:?}: not an RFC 3339 time: {e}")))
}

/// Fetches the whole audit chain from the first coordinator that answers.
pub async fn fetch_audit(addrs: &[String]) -> Result<Vec<AuditRecord>> {
    Ok(crate::cmd::cluster(addrs)?.audit().await?)
}

fn export(a: ExportArgs) -> Result<()> {
    let topo = crate::cmd::load_topology(&a.config).map_err(|e| bad_input(e.to_string()))?;
    let from_ms = a
        .from
        .as_deref()
        .map(|s| parse_time(s, "from"))
        .transpose()?;
    let to_ms = a.to.as_deref().map(|s| parse_time(s, "to")).transpose()?;
    let addrs = crate::cmd::status::addrs_of(&topo);
    let records = runtime()?.block_on(fetch_audit(&addrs))?;
    let opts = ExportOptions {
        cluster: topo.cluster.name.clone(),
        from_ms,
        to_ms,
        rto_targets_ms: topo
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.rto_target.as_millis() as i64))
            .collect::<BTreeMap<_, _>>(),
        rpo_targets_ms: topo
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.rpo_target.as_millis() as i64))
            .collect(),
        generated_at_ms: chrono::Utc::now().timestamp_millis(),
        residency_start: Default::default(),
    };
    let summary = evidence::export(&records, &opts, &a.out)
        .with_context(|| format!("exporting evidence to {}", a.out.display()))?;
    println!(
        "evidence written to {}: {} audit records, {} runs, {} RPO samples, chain head {}",
        summary.dir.display(),
        summary.manifest.chain.records,
        summary.runs,
        summary.rpo_samples,
        summary.manifest.chain.head_hash
    );
    println!(
        "open {}/report.html; check with `tandem evidence verify {}`",
        summary.dir.display(),
        summary.dir.display()
    );
    Ok(())
}
