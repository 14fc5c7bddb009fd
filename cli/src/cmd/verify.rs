//! `tandem verify GROUP`: compare merkle roots of every volume of a group on its primary and
//! replica at a barrier (replica caught up, same seq on both sides), name differing ranges, and
//! record the result in the audit chain. Postgres resources (with `--query`): the query's
//! output has the same blake3 on the primary and the standby, and the standby has replayed
//! into the primary's last archived segment. SQLite resources: blake3 over the primary's pages
//! at its last commit equals the replica's.

use crate::cmd::status::{coordinator_addrs, fetch, runtime};
use crate::exit::bad_input;
use crate::progress::Bar;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tandem_core::client::verdict::{verdict_detail, verdict_line};
use tandem_core::client::{ClientError, Replicator};
use tandem_core::config::{ResourceKind, Topology};
use tandem_core::proto::RecordKind;
use tandem_core::proto::VerifyRequest;

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
    /// MiB of each volume hashed under one barrier: writes on the primary pause while both
    /// copies hash one chunk (smaller: shorter pauses, more round trips).
    #[arg(long, default_value = "64", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub chunk_mib: u64,
    /// For postgres resources: a query whose output must be the same on the primary and on
    /// the standby (compared by blake3), e.g. `SELECT count(*), sum(abalance) FROM
    /// pgbench_accounts`. Without it postgres resources are skipped.
    #[arg(long)]
    pub query: Option<String>,
}

/// Verifies one SQLite resource: blake3 over the primary's pages at its last commit (database
/// file + committed WAL pages, under a read transaction) equals the replica file's, with the
/// header fields replication rewrites left out. Retries until `deadline` (the replica trails
/// by the replication lag), so under constant writes it compares only once both stand at the
/// same commit.
async fn verify_sqlite(
    topo: &Topology,
    group: &tandem_core::config::Group,
    r: &tandem_core::config::Resource,
    psite: &str,
    rsite: &str,
    deadline: Instant,
) -> Result<(bool, serde_json::Value)> {
    use tandem_replicator::sqlite::{primary_digest, replica_digest};
    let path_at = |site: &str| {
        topo.resource_path(group, r, site)
            .with_context(|| format!("no path of {} at {site}", r.name))
    };
    let (pp, rp) = (path_at(psite)?, path_at(rsite)?);
    loop {
        let (a, b) = (pp.clone(), rp.clone());
        let (p, q) = tokio::task::spawn_blocking(move || {
            Ok::<_, anyhow::Error>((primary_digest(&a)?, replica_digest(&b)?))
        })
        .await
        .context("sqlite digest task")??;
        let equal = p == q;
        if equal || Instant::now() >= deadline {
            println!(
                "{}/{}: {}: primary ({psite}) {} pages blake3 {} | replica ({rsite}) {} pages blake3 {}",
                group.name,
                r.name,
                if equal { "EQUAL" } else { "DIFFERENT" },
                p.pages,
                &p.hash.to_hex()[..16],
                q.pages,
                &q.hash.to_hex()[..16],
            );
            let detail = json!({
                "resource": r.name, "kind": "sqlite", "equal": equal,
                "primary_site": psite, "replica_site": rsite,
                "primary_pages": p.pages, "replica_pages": q.pages,
                "primary_hash": p.hash.to_hex().to_string(), "replica_hash": q.hash.to_hex().to_string(),
            });
            return Ok((equal, detail));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `0/3000060` -> the log and segment parts of its WAL file name (16 hex digits, no timeline),
/// for 16 MiB segments.
fn lsn_segment(lsn: &str) -> Option<String> {
    let (hi, lo) = lsn.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    let segno = ((hi << 32) | lo) >> 24;
    Some(format!("{:08X}{:08X}", segno >> 8, segno & 0xff))
}

/// What one side of a postgres resource answered.
struct PgSide {
    checksum: String,
    lsn: String,
}

/// Runs the verify query on one site's server and, as LSN, the standby's last replayed one
/// (`standby`) or the primary's last archived segment.
fn pg_side(
    bin: &std::path::Path,
    dir: &std::path::Path,
    port: u16,
    query: &str,
    standby: bool,
) -> Result<PgSide> {
    use tandem_core::pgctl;
    let out = pgctl::query(bin, dir, port, query)?;
    let lsn_sql = if standby {
        "SELECT coalesce(pg_last_wal_replay_lsn()::text, '')"
    } else {
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"
    };
    let lsn = pgctl::query(bin, dir, port, lsn_sql)?;
    Ok(PgSide {
        checksum: blake3::hash(out.as_bytes()).to_hex().to_string(),
        lsn,
    })
}

/// Verifies one postgres resource: the query's output has the same blake3 on both sites, and
/// the standby has replayed into the primary's last archived segment. Retries until `deadline`
/// (the standby lags by up to `archive_timeout`).
#[allow(clippy::too_many_arguments)]
async fn verify_postgres(
    topo: &Topology,
    group: &tandem_core::config::Group,
    r: &tandem_core::config::Resource,
    psite: &str,
    rsite: &str,
    query: &str,
    deadline: Instant,
) -> Result<(bool, serde_json::Value)> {
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
        if site == group.primary {
            *port
        } else {
            *replica_port
        }
    };
    let dir_at = |site: &str| {
        topo.resource_path(group, r, site)
            .with_context(|| format!("no data dir of {} at {site}", r.name))
    };
    let (pdir, rdir) = (dir_at(psite)?, dir_at(rsite)?);
    let (pport, rport) = (port_at(psite), port_at(rsite));
    loop {
        let (b, q, pd, rd) = (
            bin_dir.clone(),
            query.to_owned(),
            pdir.clone(),
            rdir.clone(),
        );
        let (p, s) = tokio::task::spawn_blocking(move || {
            Ok::<_, anyhow::Error>((
                pg_side(&b, &pd, pport, &q, false)?,
                pg_side(&b, &rd, rport, &q, true)?,
            ))
        })
        .await
        .context("psql task")??;
        let archived_seg = p.lsn.get(8..24).unwrap_or_default().to_owned();
        let replayed_seg = lsn_segment(&s.lsn).unwrap_or_default();
        let caught_up = !archived_seg.is_empty() && replayed_seg >= archived_seg;
        let equal = p.checksum == s.checksum && caught_up;
        if equal || Instant::now() >= deadline {
            println!(
                "{}/{}: {}: primary ({psite}, port {pport}) query blake3 {}, last archived {} | standby ({rsite}, port {rport}) query blake3 {}, replayed through {}",
                group.name,
                r.name,
                if equal { "EQUAL" } else { "DIFFERENT" },
                &p.checksum[..16],
                if p.lsn.is_empty() { "nothing" } else { &p.lsn },
                &s.checksum[..16],
                if s.lsn.is_empty() { "nothing" } else { &s.lsn },
            );
            let detail = json!({
                "resource": r.name, "kind": "postgres", "equal": equal, "query": query,
                "primary_site": psite, "replica_site": rsite,
                "primary_checksum": p.checksum, "replica_checksum": s.checksum,
                "primary_last_archived": p.lsn, "replica_replay_lsn": s.lsn,
            });
            return Ok((equal, detail));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Verifies one volume through the primary's `Verify` RPC: barriers chunk by chunk (for
/// each chunk the primary holds intake while the replica reaches its seq and both copies hash
/// that chunk; writes wait, they do not fail), with a progress bar; prints the verdict line and
/// returns (equal, audit details).
#[allow(clippy::too_many_arguments)]
async fn verify_volume(
    primary: &Replicator,
    a: &Args,
    resource: &str,
    block_size: tandem_core::config::ByteSize,
    deadline: Instant,
    psite: &str,
    rsite: &str,
) -> Result<(bool, Vec<serde_json::Value>)> {
    let bs = block_size.bytes();
    let chunk_blocks = ((a.chunk_mib << 20) / bs).max(1);
    let req = VerifyRequest {
        group: a.group.clone(),
        resource: resource.to_owned(),
        block_size: 0,
        chunk_bytes: chunk_blocks * bs,
        timeout_ms: (deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64)
            .max(1),
    };
    let mut bar = Bar::new();
    let label = format!("verifying {resource}");
    let verdicts = primary
        .verify_volumes(req, &mut |p| {
            bar.update(&label, p.bytes_done, p.bytes_total, "")
        })
        .await;
    bar.finish();
    let verdicts =
        verdicts.map_err(|e| anyhow::anyhow!("{resource}: verify barrier failed: {e}"))?;
    let mut equal = true;
    let mut details = Vec::new();
    for v in &verdicts {
        equal &= v.equal;
        println!("{}", verdict_line(&a.group, v, psite, rsite));
        details.push(verdict_detail(v, psite, rsite));
    }
    Ok((equal, details))
}

/// Runs `tandem verify`.
pub fn run(a: Args) -> Result<()> {
    let topo = crate::cmd::load_topology(&a.config).map_err(|e| bad_input(e.to_string()))?;
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
        let primary = crate::cmd::replicator(&crate::cmd::status::host_addr(
            &topo,
            &a.group,
            &psite,
            &g.primary_host,
        )?)?;
        let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
        let mut results = Vec::new();
        let mut all_equal = true;
        for r in &group.resources {
            if let ResourceKind::Sqlite { .. } = &r.kind {
                let (equal, detail) =
                    verify_sqlite(&topo, &group, r, &psite, &rsite, deadline).await?;
                all_equal &= equal;
                results.push(detail);
                continue;
            }
            if let (ResourceKind::Postgres { .. }, Some(q)) = (&r.kind, &a.query) {
                let (equal, detail) =
                    verify_postgres(&topo, &group, r, &psite, &rsite, q, deadline).await?;
                all_equal &= equal;
                results.push(detail);
                continue;
            }
            let ResourceKind::Volume { block_size, .. } = &r.kind else {
                println!(
                    "{}: {} resources are not verified by merkle yet: skipped",
                    r.name,
                    r.kind.name()
                );
                continue;
            };
            let (equal, details) =
                verify_volume(&primary, &a, &r.name, *block_size, deadline, &psite, &rsite).await?;
            all_equal &= equal;
            results.extend(details);
        }
        let detail = json!({"equal": all_equal, "resources": results});
        match crate::cmd::cluster(&addrs)?
            .record(RecordKind::Verify, &a.group, &detail)
            .await
        {
            Ok(_) | Err(ClientError::Unreachable { .. } | ClientError::NoAddress { .. }) => {}
            Err(e) => bail!("recording the verify result: {}", e.peer_message()),
        }
        if !all_equal {
            bail!("group {}: replica differs from primary", a.group);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::lsn_segment;

    #[test]
    fn lsns_map_to_their_wal_segment() {
        assert_eq!(
            lsn_segment("0/3000060").as_deref(),
            Some("0000000000000003")
        );
        assert_eq!(
            lsn_segment("1/FF000000").as_deref(),
            Some("00000001000000FF")
        );
        assert_eq!(lsn_segment("garbage"), None);
    }
}
