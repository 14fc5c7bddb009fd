//! The several-hosts part of `tandem bench scale`: `--hosts-per-site H` adds replicators
//! `hanoi-rep-2..H` and `hcm-rep-2..H` (groups spread over them by the placement function),
//! and `--kill-host` ends the run by killing one primary-site host (`kill -9`) and timing how
//! long until every group it served has failed over, while checking that no other group
//! changed role or epoch.

use crate::cmd::bench_cluster::pct;
use crate::cmd::status::fetch;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tandem_chaos::runner::processes as proc;
use tandem_coordinator::status::ClusterStatus;

/// The `[[nodes]]` tables of the replicators beyond the first at each site: `hanoi-rep-k` and
/// `hcm-rep-k` for k in 2..=`hosts_per_site`, each on free loopback ports, with an NBD export
/// listener (the hcm ones serve after a failover).
///
/// # Errors
/// No free port.
pub fn hosts_toml(hosts_per_site: usize) -> Result<String> {
    let mut out = String::new();
    for site in ["hanoi", "hcm"] {
        for k in 2..=hosts_per_site {
            let listen = tandem_core::ports::free_port()?;
            let nbd = tandem_core::ports::free_port()?;
            let _ = write!(
                out,
                "\n[[nodes]]\nname = \"{site}-rep-{k}\"\nsite = \"{site}\"\nrole = \"replicator\"\n\
                 listen = \"127.0.0.1:{listen}\"\ndata_dir = \"data/{site}-rep-{k}\"\n\
                 nbd_listen = \"127.0.0.1:{nbd}\"\n"
            );
        }
    }
    Ok(out)
}

/// The address and export name of an `nbd://HOST:PORT/NAME` URL (pure).
pub fn parse_nbd_url(url: &str) -> Option<(SocketAddr, String)> {
    let rest = url.strip_prefix("nbd://")?;
    let (addr, name) = rest.split_once('/')?;
    Some((addr.parse().ok()?, name.to_owned()))
}

/// Every group's first volume export as status names it (on the group's primary host).
pub fn nbd_targets(st: &ClusterStatus) -> Vec<(SocketAddr, String)> {
    st.groups
        .iter()
        .filter_map(|g| {
            g.resources
                .iter()
                .find_map(|r| r.nbd_url.as_deref().and_then(parse_nbd_url))
        })
        .collect()
}

/// Kills `host` (a primary-site replicator started under `run_dir`) with `kill -9` and waits
/// up to `timeout` until every group whose primary it served has a new primary site with an
/// active lease. Reports how long each took, and how many of the other groups changed role or
/// epoch meanwhile (none should).
///
/// # Errors
/// The host is unknown, serves no group, cannot be killed, or not every group failed over
/// within `timeout`.
pub async fn lose_host(
    addrs: &[String],
    run_dir: &Path,
    host: &str,
    timeout: Duration,
) -> Result<Value> {
    let before = fetch(addrs).await?;
    let lost: BTreeMap<String, String> = before
        .groups
        .iter()
        .filter(|g| g.primary_host == host)
        .map(|g| (g.name.clone(), g.primary.clone()))
        .collect();
    if lost.is_empty() {
        bail!("{host} serves no group as primary: nothing to fail over");
    }
    let others: BTreeMap<String, (String, u64)> = before
        .groups
        .iter()
        .filter(|g| g.primary_host != host)
        .map(|g| (g.name.clone(), (g.primary.clone(), g.epoch)))
        .collect();
    let pid = proc::read_pid(run_dir, host)?;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .context("kill -9")?;
    if !killed.success() {
        bail!("kill -9 {pid} ({host}) failed");
    }
    let t0 = Instant::now();
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    let mut moved_others = 0usize;
    while done.len() < lost.len() {
        if t0.elapsed() > timeout {
            bail!(
                "{} of {} groups of {host} failed over within {} s",
                done.len(),
                lost.len(),
                timeout.as_secs()
            );
        }
        if let Ok(st) = fetch(addrs).await {
            let at = t0.elapsed().as_secs_f64();
            for g in &st.groups {
                if let Some(old) = lost.get(&g.name) {
                    let leased = g.lease.as_ref().is_some_and(|l| l.status == "active");
                    if &g.primary != old && leased {
                        done.entry(g.name.clone()).or_insert(at);
                    }
                } else if let Some((p, e)) = others.get(&g.name) {
                    if &g.primary != p || g.epoch != *e {
                        moved_others += 1;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut times: Vec<f64> = done.values().copied().collect();
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(json!({
        "host": host,
        "groups_failed_over": lost.len(),
        "other_groups": others.len(),
        "other_group_changes_seen": moved_others,
        "secs_to_first": pct(&times, 0.0),
        "secs_p50": pct(&times, 0.5),
        "secs_to_all": pct(&times, 1.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_urls_split_into_address_and_export() {
        assert_eq!(
            parse_nbd_url("nbd://127.0.0.1:10809/d0002"),
            Some(("127.0.0.1:10809".parse().unwrap(), "d0002".into()))
        );
        assert_eq!(parse_nbd_url("http://127.0.0.1:1/x"), None);
        assert_eq!(parse_nbd_url("nbd://nohost/x"), None);
    }

    #[test]
    fn extra_hosts_are_declared_at_both_sites() {
        let t = hosts_toml(3).unwrap();
        for n in ["hanoi-rep-2", "hanoi-rep-3", "hcm-rep-2", "hcm-rep-3"] {
            assert!(t.contains(&format!("name = \"{n}\"")), "{n}");
        }
        assert!(hosts_toml(1).unwrap().is_empty());
    }
}
