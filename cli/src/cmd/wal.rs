//! `tandem wal push` (PostgreSQL `archive_command`) and `tandem wal fetch` (`restore_command`):
//! WAL segments through the group's stream, durable at the replica before push exits 0.

use crate::cmd::status::runtime;
use crate::cmd::ConnectNet;
use crate::exit::bad_input;
use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Subcommand};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::ArchiveWalRequest;

/// `tandem wal ...`.
#[derive(Debug, Subcommand)]
pub enum WalCmd {
    /// archive_command: ship one completed WAL segment (or history file) through the group's
    /// stream; exits 0 only once the replica has it durable. Use
    /// `archive_command = 'tandem wal push %p --addr HOST:PORT --group G --resource R'`.
    Push(PushArgs),
    /// restore_command: copy an archived file from the replica replicator's archive folder to
    /// PATH; exits 1 when it is not (yet) there. Use
    /// `restore_command = 'tandem wal fetch %f %p --archive DIR'`.
    Fetch(FetchArgs),
    /// Turn a site's old PostgreSQL primary into a standby of the group's current primary:
    /// stop it, pg_rewind it from the primary, write standby.signal and a restore_command
    /// reading this site's archive folder, and start it (no full copy).
    Rejoin(crate::cmd::wal_rejoin::RejoinArgs),
}

/// Arguments of `tandem wal push`.
#[derive(Debug, ClapArgs)]
pub struct PushArgs {
    /// The file to archive (`%p`: relative to the data directory, which is PostgreSQL's cwd).
    pub path: PathBuf,
    /// The local (primary) replicator's listen address, `HOST:PORT`.
    #[arg(long, env = "TANDEM_REPLICATOR")]
    pub addr: String,
    /// The protection group.
    #[arg(long)]
    pub group: String,
    /// The postgres resource of the group.
    #[arg(long)]
    pub resource: String,
    /// How long to wait for the replica's durable acknowledgement, in seconds.
    #[arg(long, default_value = "60")]
    pub timeout_secs: u64,
}

/// Arguments of `tandem wal fetch`.
#[derive(Debug, ClapArgs)]
pub struct FetchArgs {
    /// The archived file name PostgreSQL asks for (`%f`).
    pub name: String,
    /// Where to write it (`%p`).
    pub dest: PathBuf,
    /// The replica replicator's archive folder for the resource
    /// (`DATA_DIR/archive/GROUP/RESOURCE`).
    #[arg(long, conflicts_with_all = ["config", "node", "group", "resource"])]
    pub archive: Option<PathBuf>,
    /// Or: the topology file, ...
    #[arg(long, requires_all = ["node", "group", "resource"])]
    pub config: Option<PathBuf>,
    /// ... the replica replicator node, ...
    #[arg(long)]
    pub node: Option<String>,
    /// ... the group ...
    #[arg(long)]
    pub group: Option<String>,
    /// ... and the postgres resource.
    #[arg(long)]
    pub resource: Option<String>,
}

/// Runs `tandem wal`.
pub fn run(c: WalCmd) -> Result<()> {
    match c {
        WalCmd::Push(a) => push(a),
        WalCmd::Fetch(a) => fetch(a),
        WalCmd::Rejoin(a) => crate::cmd::wal_rejoin::run(a),
    }
}

fn push(a: PushArgs) -> Result<()> {
    let name = a
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad_input(format!("{}: no file name", a.path.display())))?
        .to_owned();
    tandem_core::walfile::check_name(&name)
        .map_err(|r| bad_input(format!("{}: {r}", a.path.display())))?;
    let data = std::fs::read(&a.path).with_context(|| format!("reading {}", a.path.display()))?;
    let t0 = Instant::now();
    let len = data.len();
    let reply = runtime()?.block_on(async {
        let ch = crate::cmd::endpoint(&a.addr)
            .map_err(|e| bad_input(format!("--addr {}: {e}", a.addr)))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(a.timeout_secs + 10))
            .connect_net()
            .await
            .with_context(|| format!("replicator {} unreachable", a.addr))?;
        let mut client = tandem_core::grpc_limits!(ReplicationClient::new(ch));
        let r = client
            .archive_wal(ArchiveWalRequest {
                group: a.group.clone(),
                resource: a.resource.clone(),
                name: name.clone(),
                data,
                timeout_ms: a.timeout_secs.saturating_mul(1000),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{name}: {}", s.message()))?;
        anyhow::Ok(r.into_inner())
    })?;
    eprintln!(
        "{name}: {len} bytes durable at the replica (seq {}, blake3 {}) in {} ms",
        reply.seq,
        &reply.blake3[..16.min(reply.blake3.len())],
        t0.elapsed().as_millis()
    );
    Ok(())
}

fn fetch(a: FetchArgs) -> Result<()> {
    tandem_core::walfile::check_name(&a.name)
        .map_err(|r| bad_input(format!("{:?}: {r}", a.name)))?;
    let dir = match (&a.archive, &a.config) {
        (Some(d), _) => d.clone(),
        (None, Some(cfg)) => {
            let topo = crate::cmd::load_topology(cfg).map_err(|e| bad_input(e.to_string()))?;
            let node_name = a.node.as_deref().unwrap_or_default();
            let node = topo
                .node(node_name)
                .ok_or_else(|| bad_input(format!("no node {node_name:?} in {}", cfg.display())))?;
            tandem_replicator::node::archive_dir(
                &topo.node_data_dir(node),
                a.group.as_deref().unwrap_or_default(),
                a.resource.as_deref().unwrap_or_default(),
            )
        }
        (None, None) => {
            return Err(bad_input(
                "give --archive DIR, or --config F --node N --group G --resource R",
            ))
        }
    };
    let src = source(&dir, &a.name).ok_or_else(|| {
        // PostgreSQL's "not available (yet)": a plain failure, exit 1.
        anyhow::anyhow!("{} is not in the archive {}", a.name, dir.display())
    })?;
    copy_atomically(&src, &a.dest)?;
    Ok(())
}

/// The file that answers a request for `name`: the archived file itself, or, for a WAL
/// segment not archived (complete) yet, its `.streaming` file of streamed WAL — the segment's
/// full size, zeroes past the newest piece, which PostgreSQL reads as the end of the WAL
/// available so far (and asks again later).
fn source(dir: &Path, name: &str) -> Option<PathBuf> {
    let whole = dir.join(name);
    if whole.exists() {
        return Some(whole);
    }
    let is_segment = name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let partial = dir.join(format!(
        "{name}{}",
        tandem_replicator::pg_archive::PARTIAL_SUFFIX
    ));
    (is_segment && partial.exists()).then_some(partial)
}

/// Copies `src` to `dest` through a temporary file in the same folder, so PostgreSQL never
/// reads a half-written file.
fn copy_atomically(src: &Path, dest: &Path) -> Result<()> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad_input(format!("{}: no file name", dest.display())))?;
    let tmp = parent.join(format!(".{file_name}.tandem-tmp"));
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    Ok(())
}
