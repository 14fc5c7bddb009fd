//! `tandem wal rejoin`: turns a site's old PostgreSQL primary into a standby of the group's
//! current primary without a full copy, as Patroni does: stop it, `pg_rewind` it onto the
//! primary's timeline, then `standby.signal` and a `restore_command` that reads this site's
//! archive folder (where the primary's WAL arrives through the group's stream), and start it.

use crate::exit::bad_input;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tandem_core::config::{Group, Resource, ResourceKind, Topology};

/// Arguments of `tandem wal rejoin`.
#[derive(Debug, ClapArgs)]
pub struct RejoinArgs {
    /// The protection group.
    pub group: String,
    /// The topology file.
    #[arg(long, env = "TANDEM_CONFIG")]
    pub config: PathBuf,
    /// The site whose PostgreSQL server rejoins (it must not be the group's primary now).
    #[arg(long)]
    pub site: String,
    /// The postgres resource (default: the group's only one).
    #[arg(long)]
    pub resource: Option<String>,
    /// libpq connection string of the current primary's server, for pg_rewind (default:
    /// `host=127.0.0.1 port=PORT user=postgres dbname=postgres`, PORT the primary site's).
    #[arg(long)]
    pub source: Option<String>,
    /// The `tandem` binary the standby's restore_command runs (default: this one; the
    /// PostgreSQL user must be able to execute it).
    #[arg(long)]
    pub tandem_bin: Option<PathBuf>,
}

fn postgres_resource<'a>(g: &'a Group, name: Option<&str>) -> Result<&'a Resource> {
    let mut pg = g
        .resources
        .iter()
        .filter(|r| matches!(r.kind, ResourceKind::Postgres { .. }));
    match name {
        Some(n) => pg
            .find(|r| r.name == n)
            .ok_or_else(|| bad_input(format!("group {} has no postgres resource {n:?}", g.name))),
        None => {
            let first = pg
                .next()
                .ok_or_else(|| bad_input(format!("group {} has no postgres resource", g.name)))?;
            if pg.next().is_some() {
                return Err(bad_input(format!(
                    "group {} has several postgres resources: name one with --resource",
                    g.name
                )));
            }
            Ok(first)
        }
    }
}

/// Runs `tandem wal rejoin`.
pub fn run(a: RejoinArgs) -> Result<()> {
    let topo = crate::cmd::load_topology(&a.config).map_err(|e| bad_input(e.to_string()))?;
    let g = topo
        .group(&a.group)
        .ok_or_else(|| bad_input(format!("no group {:?} in {}", a.group, a.config.display())))?;
    let r = postgres_resource(g, a.resource.as_deref())?;
    let ResourceKind::Postgres {
        port,
        replica_port,
        bin_dir,
        ..
    } = &r.kind
    else {
        bail!("{} is not a postgres resource", r.name);
    };
    let port_at = |site: &str| {
        if site == g.primary {
            *port
        } else {
            *replica_port
        }
    };
    let data_dir = topo.resource_path(g, r, &a.site).ok_or_else(|| {
        bad_input(format!(
            "site {:?} is not a site of group {}",
            a.site, g.name
        ))
    })?;
    // Never rewind the server that takes the writes: ask the coordinators who is primary.
    let addrs = crate::cmd::status::addrs_of(&topo);
    let st = crate::cmd::status::runtime()?
        .block_on(crate::cmd::status::fetch(&addrs))
        .context("asking the coordinators which site is primary")?;
    let primary = st
        .groups
        .iter()
        .find(|s| s.name == g.name)
        .map(|s| s.primary.clone())
        .ok_or_else(|| anyhow::anyhow!("the coordinators do not know group {}", g.name))?;
    if primary == a.site {
        bail!(
            "{} is the primary site of group {} now: only an old primary rejoins as a standby",
            a.site,
            g.name
        );
    }
    let source = a.source.clone().unwrap_or_else(|| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            port_at(&primary)
        )
    });
    let archive = archive_dir(&topo, &a.site, g, r)?;
    let tandem = match &a.tandem_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the tandem binary")?,
    };
    let t0 = Instant::now();
    if tandem_core::pgctl::stop_fast(bin_dir, &data_dir)? {
        eprintln!("{}: stopped", data_dir.display());
    }
    // A just-promoted source writes its new timeline into pg_control only at its next
    // checkpoint; pg_rewind reads the timeline from there.
    let mut cp = tandem_core::pgctl::command(bin_dir, "psql", &data_dir)?;
    cp.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &source,
        "-c",
        "CHECKPOINT",
    ])
    .env("PGCONNECT_TIMEOUT", "5");
    tandem_core::pgctl::run(cp).context("CHECKPOINT on the primary before pg_rewind")?;
    // pg_rewind copies the source's configuration files too (its port, its settings): keep
    // this server's own, as Patroni does.
    let kept = keep_config(&data_dir)?;
    let report = tandem_core::pgctl::rewind(bin_dir, &data_dir, &source)?;
    restore_config(&data_dir, &kept)?;
    eprintln!("pg_rewind from {primary} ({source}):\n{report}");
    make_standby(&data_dir, &tandem, &archive)?;
    let log = data_dir.join("tandem-rejoin.log");
    tandem_core::pgctl::start(bin_dir, &data_dir, &log)?;
    wait_in_recovery(bin_dir, &data_dir, port_at(&a.site))?;
    // The slot this server had as primary survives pg_rewind and would keep its WAL forever
    // on the standby; a new one is made when it is primary again.
    let slot = tandem_core::config::PgStream::slot_name(&g.name, &r.name);
    let dropped = tandem_core::pgctl::query(
        bin_dir,
        &data_dir,
        port_at(&a.site),
        &format!(
            "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots \
             WHERE slot_name = '{slot}' AND NOT active"
        ),
    )
    .context("dropping the old primary's replication slot")?;
    if dropped.trim() != "0" {
        eprintln!("dropped the stale replication slot {slot}");
    }
    println!(
        "{}/{}: the server at {} ({}) is a standby of {primary}, restoring from {}, in {} ms",
        g.name,
        r.name,
        a.site,
        data_dir.display(),
        archive.display(),
        t0.elapsed().as_millis()
    );
    Ok(())
}

/// The configuration files pg_rewind would overwrite with the source's.
const CONFIG_FILES: [&str; 4] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
];

/// The bytes of each configuration file present in `data_dir`.
fn keep_config(data_dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut kept = Vec::new();
    for name in CONFIG_FILES {
        let p = data_dir.join(name);
        match std::fs::read(&p) {
            Ok(bytes) => kept.push((p, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    Ok(kept)
}

/// Puts back the files [`keep_config`] read (the directory's owner keeps owning them).
fn restore_config(data_dir: &Path, kept: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let meta = std::fs::metadata(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    for (p, bytes) in kept {
        std::fs::write(p, bytes).with_context(|| format!("restoring {}", p.display()))?;
        std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("chown {}", p.display()))?;
    }
    Ok(())
}

/// This site's archive folder of the resource: where the replicator that serves the group
/// there writes the primary's WAL.
fn archive_dir(topo: &Topology, site: &str, g: &Group, r: &Resource) -> Result<PathBuf> {
    let node = topo.host_for(g, site).ok_or_else(|| {
        bad_input(format!(
            "no replicator serves group {} at site {site}",
            g.name
        ))
    })?;
    Ok(tandem_replicator::node::archive_dir(
        &topo.node_data_dir(node),
        &g.name,
        &r.name,
    ))
}

/// `standby.signal` and a `restore_command` (in `postgresql.auto.conf`, which overrides
/// `postgresql.conf`), both owned like the data directory.
fn make_standby(data_dir: &Path, tandem: &Path, archive: &Path) -> Result<()> {
    let meta = std::fs::metadata(data_dir)
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    let signal = data_dir.join("standby.signal");
    std::fs::write(&signal, b"").with_context(|| format!("writing {}", signal.display()))?;
    let auto = data_dir.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .with_context(|| format!("opening {}", auto.display()))?;
    writeln!(
        f,
        "# tandem wal rejoin\nrestore_command = '{} wal fetch %f %p --archive {}'",
        tandem.display(),
        archive.display()
    )
    .with_context(|| format!("writing {}", auto.display()))?;
    for p in [&signal, &auto] {
        std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid()))
            .with_context(|| format!("chown {}", p.display()))?;
    }
    Ok(())
}

fn wait_in_recovery(bin_dir: &Path, data_dir: &Path, port: u16) -> Result<()> {
    let t0 = Instant::now();
    loop {
        match tandem_core::pgctl::query(bin_dir, data_dir, port, "SELECT pg_is_in_recovery()") {
            Ok(s) if s.trim() == "t" => return Ok(()),
            Ok(s) => bail!(
                "the server at {} answers pg_is_in_recovery() = {s:?}, not a standby",
                data_dir.display()
            ),
            Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                bail!(
                    "the rejoined server at {} did not answer within 60 s: {e}",
                    data_dir.display()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
