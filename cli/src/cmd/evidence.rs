//! `tandem evidence export|verify|report`: the auditor's folder (report.html, audit.jsonl,
//! runs.json, rpo.csv, signed-head.json, manifest.json), its re-check (with `--ca` its
//! authenticity), and its report rendered again in another language.

use crate::cmd::status::runtime;
use crate::exit::bad_input;
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tandem_coordinator::audit::AuditRecord;
use tandem_coordinator::evidence::html::Lang;
use tandem_coordinator::evidence::sign::{self, HeadClaim, SignedHead};
use tandem_coordinator::evidence::{self, ChainSummary, ExportOptions};
use tandem_core::proto::SignAuditHeadRequest;

/// `tandem evidence` subcommands.
#[derive(Debug, Subcommand)]
pub enum EvidenceCmd {
    /// Write the evidence folder for a time window.
    Export(ExportArgs),
    /// Re-check a folder: the audit chain, every file's blake3, and every derived file; with
    /// `--ca`, also that a coordinator of that CA signed the chain's head.
    Verify(VerifyArgs),
    /// Render a verified folder's report.html again in another language, into a file outside
    /// the folder's manifest (offline: no cluster needed).
    Report(ReportArgs),
}

/// Arguments of `tandem evidence report`.
#[derive(Debug, ClapArgs)]
pub struct ReportArgs {
    /// The evidence folder (verified first).
    pub dir: PathBuf,
    /// Language of the report: `en` (English, ISO 8601 dates) or `vi` (Vietnamese,
    /// dd/mm/yyyy dates).
    #[arg(long, default_value = "en")]
    pub lang: Lang,
    /// The HTML file to write.
    #[arg(long)]
    pub out: PathBuf,
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
    /// Language of report.html: `en` (English, ISO 8601 dates) or `vi` (Vietnamese,
    /// dd/mm/yyyy dates). Recorded in the manifest, so verify renders it the same way.
    #[arg(long, default_value = "en")]
    pub lang: Lang,
}

/// Arguments of `tandem evidence verify`.
#[derive(Debug, ClapArgs)]
pub struct VerifyArgs {
    /// The evidence folder.
    pub dir: PathBuf,
    /// The cluster CA (PEM, e.g. the `ca.pem` or `roots.pem` of the certificate folder): check
    /// offline that a node certificate of this CA signed the head of the folder's chain.
    /// Without it, authenticity is NOT checked.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The topology file: the signer must be one of its coordinators (with `--ca`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The coordinator node names the signer must be one of (comma-separated; with `--ca`,
    /// instead of `--config`).
    #[arg(long, value_delimiter = ',', conflicts_with = "config")]
    pub coordinators: Vec<String>,
}

/// Runs a `tandem evidence` subcommand.
pub fn run(cmd: EvidenceCmd) -> Result<()> {
    match cmd {
        EvidenceCmd::Export(a) => export(a),
        EvidenceCmd::Report(a) => report(a),
        EvidenceCmd::Verify(a) => {
            let report = evidence::verify(&a.dir)
                .with_context(|| format!("{} does not verify", a.dir.display()))?;
            let authentic = authenticity(&a)?;
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
            match authentic {
                Some(ok) => {
                    let c = &ok.claim;
                    println!(
                        "AUTHENTIC: coordinator {} signed record {} (hash {}) of cluster {} at {}; its certificate chains to {}",
                        c.signer,
                        c.index,
                        c.hash,
                        c.cluster,
                        evidence::derive::iso_ms(c.signed_at_ms),
                        ok.ca_subject
                    );
                    if !ok.coordinator_checked {
                        println!("NOTE: the signer is a node certificate of this CA; it was not checked to be a coordinator (pass --config or --coordinators)");
                    }
                }
                None => println!(
                    "WARNING: authenticity NOT checked (no --ca): anyone holding this folder could have rebuilt a consistent chain; pass --ca CA.pem to check the coordinators' signature"
                ),
            }
            Ok(())
        }
    }
}

/// With `--ca`: the signature check of the folder (after the integrity checks it runs first).
fn authenticity(a: &VerifyArgs) -> Result<Option<sign::Authenticity>> {
    let Some(ca) = &a.ca else {
        return Ok(None);
    };
    let ca_ders = tandem_core::certs::read_pem_certs(ca).map_err(|e| bad_input(e.to_string()))?;
    let coordinators: Option<Vec<String>> = match &a.config {
        Some(path) => {
            let topo = crate::cmd::load_topology(path).map_err(|e| bad_input(e.to_string()))?;
            Some(
                topo.coordinators()
                    .iter()
                    .map(|c| c.node.name.clone())
                    .collect(),
            )
        }
        None => (!a.coordinators.is_empty()).then(|| a.coordinators.clone()),
    };
    let (_, ok) =
        evidence::verify_signed(&a.dir, &ca_ders, coordinators.as_deref()).with_context(|| {
            format!(
                "{} is not authentic under {}",
                a.dir.display(),
                ca.display()
            )
        })?;
    Ok(Some(ok))
}

/// `tandem evidence report`: verifies the folder, then renders its report in `--lang` from its
/// `audit.jsonl` and manifest, exactly as an export in that language would have.
fn report(a: ReportArgs) -> Result<()> {
    evidence::verify(&a.dir).with_context(|| format!("{} does not verify", a.dir.display()))?;
    let read = |name: &str| {
        let path = a.dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let manifest = evidence::parse_manifest(&read(evidence::MANIFEST_FILE)?)?;
    let records = evidence::parse_audit_jsonl(&read(evidence::AUDIT_FILE)?)?;
    let mut opts = manifest.options();
    opts.lang = a.lang;
    let rendered = evidence::render_window(&records, &manifest.chain.first_prev_hash, &opts);
    let html = rendered
        .files
        .iter()
        .find(|(name, _)| *name == evidence::REPORT_FILE)
        .map(|(_, bytes)| bytes.as_slice())
        .unwrap_or_default();
    std::fs::write(&a.out, html).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{}: the report of {} ({} audit records, verified) in {}",
        a.out.display(),
        a.dir.display(),
        manifest.chain.records,
        a.lang
    );
    Ok(())
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

/// Asks the leader (through any coordinator) to sign the head of `chain`, and checks the reply
/// is for that head and cluster.
async fn sign_head(addrs: &[String], cluster: &str, chain: &ChainSummary) -> Result<SignedHead> {
    let index = chain.last_index.unwrap_or_default();
    let (mut c, addr) = crate::cmd::cluster(addrs)?
        .connect("sign_audit_head")
        .await?;
    let r = c
        .sign_audit_head(SignAuditHeadRequest {
            index,
            hash: chain.head_hash.clone(),
        })
        .await
        .with_context(|| {
            format!("SignAuditHead at {addr}: the leader did not sign record {index}")
        })?
        .into_inner();
    if r.index != index || r.hash != chain.head_hash || r.cluster != cluster {
        anyhow::bail!(
            "SignAuditHead at {addr}: asked to sign record {index} ({}) of cluster {cluster}, the reply is for record {} ({}) of cluster {}",
            chain.head_hash, r.index, r.hash, r.cluster
        );
    }
    if r.algorithm != sign::ALGORITHM {
        anyhow::bail!(
            "SignAuditHead at {addr}: algorithm {:?}, this build writes {}",
            r.algorithm,
            sign::ALGORITHM
        );
    }
    let claim = HeadClaim {
        cluster: r.cluster,
        signer: r.signer,
        index: r.index,
        hash: r.hash,
        signed_at_ms: r.signed_at_ms,
    };
    Ok(SignedHead::new(claim, &r.signature, r.certificate_pem))
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
        drill_every_ms: topo
            .groups
            .iter()
            .filter_map(|g| Some((g.name.clone(), g.drill_every?.as_millis())))
            .collect(),
        lang: a.lang,
    };
    let rendered = evidence::render(&records, &opts)
        .with_context(|| format!("exporting evidence to {}", a.out.display()))?;
    let signed = if topo.tls.insecure {
        println!("WARNING: [tls] insecure = true: no node certificate, so the export is NOT signed; `evidence verify --ca` will refuse it");
        None
    } else if rendered.manifest.chain.last_index.is_none() {
        println!("NOTE: the window holds no record: there is no head to sign, so the export is NOT signed");
        None
    } else {
        Some(runtime()?.block_on(sign_head(&addrs, &opts.cluster, &rendered.manifest.chain))?)
    };
    let summary = evidence::write_rendered(rendered, signed.as_ref(), &a.out)
        .with_context(|| format!("exporting evidence to {}", a.out.display()))?;
    if let Some(h) = &signed {
        println!(
            "signed by coordinator {} at {}: record {} (hash {})",
            h.claim.signer, h.signed_at, h.claim.index, h.claim.hash
        );
    }
    println!(
        "evidence written to {}: {} audit records, {} runs, {} RPO samples in {} rows, chain head {}",
        summary.dir.display(),
        summary.manifest.chain.records,
        summary.runs,
        summary.rpo_samples,
        summary.rpo_rows,
        summary.manifest.chain.head_hash
    );
    println!(
        "open {}/report.html; check with `tandem evidence verify {} --ca CA.pem`",
        summary.dir.display(),
        summary.dir.display()
    );
    Ok(())
}
