//! `tandem certs init|rotate|wal-client|show`: the CA, node and role certificates of a
//! topology.

use crate::exit::bad_input;
use anyhow::Result;
use clap::{Args as ClapArgs, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tandem_core::certs;

/// `tandem certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Make a CA, one certificate per node of the topology (DNS SAN = node id) and one client
    /// certificate per role (operator, auditor, viewer); keys are written 0600.
    Init(InitArgs),
    /// Issue a new certificate for one node (or role) signed by the folder's CA; running nodes
    /// pick it up without restart (they watch their files and reload on SIGHUP).
    Rotate(RotateArgs),
    /// Issue a `wal-client` certificate for one group (`wal-client-GROUP.pem` / `.key`, named
    /// `NAME@GROUP`): it may push that group's WAL (`tandem wal push` as PostgreSQL's
    /// `archive_command`) and nothing else. Give it to the database's OS user instead of the
    /// operator certificate.
    WalClient(WalClientArgs),
    /// List the certificates of a folder: who each names and when it expires.
    Show(ShowArgs),
}

/// Arguments of `tandem certs init`.
#[derive(Debug, ClapArgs)]
pub struct InitArgs {
    /// The topology file (its nodes get certificates).
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// Output folder (default: the topology's `[tls] dir`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Validity of node and client certificates, in days.
    #[arg(long, default_value = "365")]
    pub days: u64,
}

/// Arguments of `tandem certs rotate`.
#[derive(Debug, ClapArgs)]
pub struct RotateArgs {
    /// The node (or role: operator, auditor, viewer) to issue a new certificate for.
    #[arg(long)]
    pub node: String,
    /// The certificate folder (holds `ca.pem` and `ca.key`).
    #[arg(long)]
    pub dir: PathBuf,
    /// First make a new CA; `roots.pem` then holds the new and the old root, so nodes still
    /// on old certificates are accepted until they are rotated too.
    #[arg(long)]
    pub new_ca: bool,
    /// Cluster name written into a new CA's subject.
    #[arg(long, default_value = "tandem")]
    pub cluster: String,
    /// Validity of the new certificate, in days.
    #[arg(long, default_value = "365")]
    pub days: u64,
}

/// Arguments of `tandem certs wal-client`.
#[derive(Debug, ClapArgs)]
pub struct WalClientArgs {
    /// The group whose WAL the certificate may push.
    #[arg(long)]
    pub group: String,
    /// Who holds it (recorded as the actor of its pushes): `NAME@GROUP`.
    #[arg(long, default_value = "postgres")]
    pub name: String,
    /// The certificate folder (holds `ca.pem` and `ca.key`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Validity, in days.
    #[arg(long, default_value = "365")]
    pub days: u64,
}

/// Arguments of `tandem certs show`.
#[derive(Debug, ClapArgs)]
pub struct ShowArgs {
    /// The certificate folder.
    #[arg(long)]
    pub dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `tandem certs` subcommand.
pub fn run(cmd: CertsCmd) -> Result<()> {
    match cmd {
        CertsCmd::Init(a) => init(a),
        CertsCmd::Rotate(a) => rotate(a),
        CertsCmd::WalClient(a) => wal_client(a),
        CertsCmd::Show(a) => show(a),
    }
}

fn days(d: u64) -> Result<Duration> {
    if d == 0 || d > 36_500 {
        return Err(bad_input(format!("--days {d}: must be 1..=36500")));
    }
    Ok(Duration::from_secs(d * 86_400))
}

/// Makes the certificates `topo` needs when its `[tls] dir` has none yet (TLS on only): what
/// `local up`, `demo` and the chaos runner do, so a fresh run dir works without a step.
/// Nodes added since get a certificate from the folder's CA.
///
/// # Errors
/// A file cannot be read or written.
pub fn ensure(topo: &tandem_core::config::Topology) -> Result<()> {
    tandem_chaos::runner::processes::ensure_certs(topo)
}

fn init(a: InitArgs) -> Result<()> {
    let topo = crate::cmd::load_topology(&a.config).map_err(|e| bad_input(e.to_string()))?;
    let out = a.out.unwrap_or_else(|| topo.tls.dir.clone());
    let nodes: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    let r = certs::init(&out, &topo.cluster.name, &nodes, days(a.days)?)?;
    for f in &r.files {
        println!("wrote {}", f.display());
    }
    println!(
        "{} node certificates and 3 role certificates in {} (keep ca.key offline)",
        nodes.len(),
        out.display()
    );
    Ok(())
}

fn rotate(a: RotateArgs) -> Result<()> {
    certs::rotate(&a.dir, &a.cluster, &a.node, a.new_ca, days(a.days)?)?;
    let p = certs::cert_path(&a.dir, &a.node);
    let at = certs::cert_file_not_after(&p)?;
    println!(
        "wrote {} (not after {}){}",
        p.display(),
        fmt_time(at),
        if a.new_ca {
            "; new CA; roots.pem holds the old and the new root: rotate every node, then drop the old root"
        } else {
            ""
        }
    );
    Ok(())
}

fn wal_client(a: WalClientArgs) -> Result<()> {
    let p = certs::issue_wal_client(&a.dir, &a.group, &a.name, days(a.days)?)
        .map_err(|e| bad_input(e.to_string()))?;
    let at = certs::cert_file_not_after(&p)?;
    println!(
        "wrote {} and its key (not after {}): {}@{} may push WAL for group {} and nothing else",
        p.display(),
        fmt_time(at),
        a.name,
        a.group,
        a.group
    );
    Ok(())
}

fn fmt_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}

fn show(a: ShowArgs) -> Result<()> {
    let mut rows = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&a.dir)
        .map_err(|e| bad_input(format!("{}: {e}", a.dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    entries.sort();
    let now = chrono::Utc::now().timestamp();
    for p in entries {
        for der in certs::read_pem_certs(&p)? {
            let info =
                certs::parse_cert(&der).map_err(|e| bad_input(format!("{}: {e}", p.display())))?;
            rows.push(serde_json::json!({
                "file": p.file_name().map(|f| f.to_string_lossy().into_owned()),
                "subject": info.subject.to_string(),
                "dns_names": info.dns_names,
                "not_after": info.not_after,
                "expires_in_s": info.not_after - now,
            }));
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<16} {:<32} NOT AFTER", "FILE", "SUBJECT");
    for r in rows {
        println!(
            "{:<16} {:<32} {}",
            r["file"].as_str().unwrap_or(""),
            r["subject"].as_str().unwrap_or(""),
            fmt_time(r["not_after"].as_i64().unwrap_or(0))
        );
    }
    Ok(())
}
