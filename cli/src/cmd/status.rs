//! `tandem status`: the cluster, its groups and their RPO, as a table, JSON, or a live view.

use crate::exit::bad_input;
use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::time::Duration;
use tandem_coordinator::status::{ClusterStatus, DrillStatus};
use tandem_core::config::Topology;

/// Arguments of `tandem status`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The topology file (the coordinators are dialled in file order).
    #[arg(long, short, env = "TANDEM_CONFIG")]
    pub config: Option<PathBuf>,
    /// A coordinator address to ask instead (`127.0.0.1:7101`); may be repeated.
    #[arg(long)]
    pub addr: Vec<String>,
    /// Print the status document as JSON (schema in README.md, "Status JSON").
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Only these groups (may be repeated).
    #[arg(long)]
    pub group: Vec<String>,
    /// Only groups with this site as primary or replica (may be repeated).
    #[arg(long)]
    pub site: Vec<String>,
    /// Only groups in this state (`protected`, `degraded`, `failing-over`, ...; may be
    /// repeated).
    #[arg(long)]
    pub state: Vec<String>,
}

/// Which groups `tandem status` shows: those matching every filter given (each filter
/// matches any of its values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Group names.
    pub groups: Vec<String>,
    /// Sites (primary or replica).
    pub sites: Vec<String>,
    /// States.
    pub states: Vec<String>,
}

impl Filter {
    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.sites.is_empty() && self.states.is_empty()
    }

    /// Keeps the groups of `st` that match; the summary still counts every group.
    pub fn apply(&self, st: &mut ClusterStatus) {
        let any = |v: &[String], x: &str| v.is_empty() || v.iter().any(|f| f == x);
        st.groups.retain(|g| {
            any(&self.groups, &g.name)
                && (self.sites.is_empty()
                    || self
                        .sites
                        .iter()
                        .any(|s| *s == g.primary || *s == g.replica))
                && any(&self.states, &g.state)
        });
    }
}

/// One line over every group: how many are in each state, how many over their RPO target, and
/// the largest RPO: `groups: 3 (2 protected, 1 degraded); 1 over its RPO target; RPO max 2.1s`.
pub fn summary_line(st: &ClusterStatus) -> String {
    let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
    for g in &st.groups {
        *by_state.entry(g.state.as_str()).or_default() += 1;
    }
    let states: Vec<String> = by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let over = st
        .groups
        .iter()
        .filter(|g| g.rpo_ms > g.rpo_target_ms)
        .count();
    let max = st.groups.iter().map(|g| g.rpo_ms).max().unwrap_or(0);
    format!(
        "groups: {} ({}); {over} over its RPO target; RPO max {}",
        st.groups.len(),
        if states.is_empty() {
            "none".into()
        } else {
            states.join(", ")
        },
        ms(max)
    )
}

/// Runs `tandem status`.
pub fn run(a: Args) -> Result<()> {
    let addrs = coordinator_addrs(a.config.as_ref(), &a.addr)?;
    let rt = runtime()?;
    let filter = Filter {
        groups: a.group.clone(),
        sites: a.site.clone(),
        states: a.state.clone(),
    };
    loop {
        let mut st = rt.block_on(fetch(&addrs))?;
        let summary = summary_line(&st);
        let total = st.groups.len();
        filter.apply(&mut st);
        if a.json {
            println!("{}", serde_json::to_string_pretty(&st)?);
        } else {
            if a.watch {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&st, a.watch));
            println!("\n{summary}");
            if !filter.is_empty() {
                println!("shown: {} of {total} groups (filtered)", st.groups.len());
            }
        }
        if !a.watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A small multi-threaded runtime for the CLI's client calls.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The coordinator addresses to dial: `--addr` values, else the topology's coordinators.
pub fn coordinator_addrs(config: Option<&PathBuf>, addrs: &[String]) -> Result<Vec<String>> {
    if !addrs.is_empty() {
        // The topology still says how to dial them (its `[tls]` section and node ids).
        if let Some(config) = config {
            crate::cmd::load_topology(config).map_err(|e| bad_input(e.to_string()))?;
        }
        return Ok(addrs.to_vec());
    }
    let Some(config) = config else {
        return Err(bad_input(
            "give --config FILE (or TANDEM_CONFIG) or --addr HOST:PORT",
        ));
    };
    let topo = crate::cmd::load_topology(config).map_err(|e| bad_input(e.to_string()))?;
    Ok(addrs_of(&topo))
}

/// The coordinator listen addresses of a topology, in file order.
pub fn addrs_of(topo: &Topology) -> Vec<String> {
    topo.coordinators()
        .iter()
        .map(|c| c.node.listen.clone())
        .collect()
}

/// Asks each coordinator in turn for the status until one answers.
pub async fn fetch(addrs: &[String]) -> Result<ClusterStatus> {
    Ok(crate::cmd::cluster(addrs)?.status().await?)
}

fn ms(v: i64) -> String {
    if v < 1000 {
        format!("{v}ms")
    } else {
        format!("{:.1}s", v as f64 / 1000.0)
    }
}

fn rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.1} MB/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.1} kB/s", bps / 1e3)
    } else {
        format!("{bps:.0} B/s")
    }
}

/// Renders the status as the human table (`colour` adds ANSI colours for RPO vs target).
pub fn render(st: &ClusterStatus, colour: bool) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cluster {}  leader {}  term {}  commit {}  (answered by {}{})",
        st.cluster,
        st.leader.as_deref().unwrap_or("NONE"),
        st.term,
        st.commit_index,
        st.answered_by,
        if st.stale {
            ", STALE: leader unreachable"
        } else {
            ""
        }
    );
    let members: Vec<String> = st
        .members
        .iter()
        .map(|m| format!("{}({})", m.name, m.role))
        .collect();
    let _ = writeln!(o, "coordinators: {}", members.join("  "));
    if st.tls.enabled {
        let soonest = st.tls.certs.iter().min_by_key(|c| c.not_after);
        let _ = writeln!(
            o,
            "tls: mTLS on every link{}",
            soonest
                .map(|c| format!(
                    "; first certificate to expire: {} in {} days",
                    c.node,
                    c.expires_in_s.div_euclid(86_400)
                ))
                .unwrap_or_default()
        );
    } else {
        let _ = writeln!(
            o,
            "tls: OFF ([tls] insecure = true): every link is plaintext and unauthenticated"
        );
    }
    let sites: Vec<String> = st
        .sites
        .iter()
        .map(|s| {
            format!(
                "{}{}: {}",
                s.name,
                if s.witness { " (witness)" } else { "" },
                s.status
            )
        })
        .collect();
    let _ = writeln!(o, "sites: {}", sites.join("  "));
    let _ = writeln!(
        o,
        "\n{:<10} {:<8} {:<8} {:>5} {:<6} {:<13} {:>9} {:>8} {:>12} {:>12}  lease",
        "GROUP",
        "PRIMARY",
        "REPLICA",
        "EPOCH",
        "MODE",
        "STATE",
        "RPO",
        "TARGET",
        "PENDING",
        "THROUGHPUT"
    );
    for g in &st.groups {
        let over = g.rpo_ms > g.rpo_target_ms;
        let rpo = ms(g.rpo_ms);
        let rpo = if colour {
            format!(
                "{}{:>9}\x1b[0m",
                if over { "\x1b[31m" } else { "\x1b[32m" },
                rpo
            )
        } else {
            format!("{rpo:>9}")
        };
        let lease = match &g.lease {
            Some(l) => format!("{} {} ({})", l.holder, l.status, ms(l.remaining_ms.max(0))),
            None => "none".into(),
        };
        let _ = writeln!(
            o,
            "{:<10} {:<8} {:<8} {:>5} {:<6} {:<13} {} {:>8} {:>12} {:>12}  {}",
            g.name,
            g.primary,
            g.replica,
            g.epoch,
            g.mode,
            g.state,
            rpo,
            ms(g.rpo_target_ms),
            format!("{} B", g.bytes_pending),
            rate(g.throughput_bps),
            lease
        );
        if !g.reason.is_empty() {
            let _ = writeln!(o, "{:<10} reason: {}", "", g.reason);
        }
        if !g.primary_host.is_empty() || !g.replica_host.is_empty() {
            let _ = writeln!(
                o,
                "{:<10} hosts: {} at {}, {} at {}",
                "",
                or_none(&g.primary_host),
                g.primary,
                or_none(&g.replica_host),
                g.replica
            );
        }
        if let (Some(at), Some(seq)) = (g.history_oldest_ms, g.history_oldest_seq) {
            let _ = writeln!(
                o,
                "{:<10} history: oldest recoverable point seq {seq} at {}",
                "",
                crate::timefmt::rfc3339(at)
            );
        }
        if let Some(d) = &g.drill {
            let _ = writeln!(o, "{:<10} {}", "", drill_line(d));
        }
        for r in &g.resources {
            let _ = writeln!(
                o,
                "{:<10} {} {}  primary {}  replica {}{}",
                "",
                r.kind,
                r.name,
                r.primary_path,
                r.replica_path,
                r.nbd_url
                    .as_ref()
                    .map(|u| format!("  nbd {u}"))
                    .unwrap_or_default()
            );
            if let Some(h) = &r.health {
                let _ = writeln!(o, "{:<10}   feed: {} ({})", "", h.state, h.detail);
            }
            if let Some(sb) = &r.standby {
                let _ = writeln!(o, "{:<10}   {}", "", standby_line(sb));
            }
        }
    }
    o
}

/// `s`, or `(none)` when empty.
fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

/// A streamed PostgreSQL resource's standby in one line: `standby at hcm: replaying, 12288 B
/// behind (replayed through 0/3000060, probed 1.2 s ago)`.
pub fn standby_line(sb: &tandem_coordinator::status::StandbyStatus) -> String {
    let behind = match sb.replay_lag_bytes {
        Some(b) => format!(", {b} B behind"),
        None => String::new(),
    };
    match &sb.replay_lsn {
        Some(lsn) => format!(
            "standby at {}: {}{behind} (replayed through {lsn}, probed {} ago)",
            sb.site,
            sb.state,
            ms(sb.probed_ago_ms)
        ),
        None => format!("standby at {}: {} ({})", sb.site, sb.state, sb.detail),
    }
}

/// A group's drill schedule in one line: every, last drill, next due (`OVERDUE` past the
/// grace) and why the due drill could not start, if it could not.
pub fn drill_line(d: &DrillStatus) -> String {
    let every = tandem_core::config::HumanDuration::from_millis(d.every_ms);
    let last = match (d.last_drill_ms, &d.last_run_id) {
        (Some(at), Some(id)) => format!(
            "last {} ({id}, {})",
            crate::timefmt::rfc3339(at),
            d.last_status.as_deref().unwrap_or("?")
        ),
        _ => "never drilled".to_string(),
    };
    let mut line = format!(
        "drill: every {every}, {last}, next due {}",
        crate::timefmt::rfc3339(d.next_due_ms)
    );
    if d.overdue {
        line.push_str(" OVERDUE");
    }
    if let Some(why) = &d.refused {
        line.push_str(&format!(
            "; not started since {}: {why}; next try {}",
            crate::timefmt::rfc3339(d.refused_since_ms.unwrap_or_default()),
            crate::timefmt::rfc3339(d.retry_at_ms.unwrap_or_default())
        ));
    }
    line
}

/// The listen address of the replicator that serves `group` at `site` (its placement).
///
/// # Errors
/// No replicator at that site serves the group.
pub fn replicator_at(topo: &Topology, group: &str, site: &str) -> Result<String> {
    topo.host_for_group(group, site)
        .map(|n| n.listen.clone())
        .with_context(|| format!("no replicator serves group {group} at site {site}"))
}

/// The listen address of the replicator the status names as `host` for `group` at `site`
/// (where the coordinators record its data); the topology's placement when the status names
/// none (an older coordinator).
///
/// # Errors
/// The host is no replicator at that site, or none serves the group there.
pub fn host_addr(topo: &Topology, group: &str, site: &str, host: &str) -> Result<String> {
    if host.is_empty() {
        return replicator_at(topo, group, site);
    }
    topo.placed_host(group, site, Some(host))
        .map(|n| n.listen.clone())
        .with_context(|| format!("no replicator serves group {group} at site {site}"))
}

/// The site and replicator listen address of the group's current primary (`primary = true`)
/// or replica, from the cluster status.
///
/// # Errors
/// No coordinator answers, the group is missing from the status, or no replicator is there.
pub async fn replicator_of(
    topo: &Topology,
    addrs: &[String],
    group: &str,
    primary: bool,
) -> Result<(String, String)> {
    let st = fetch(addrs).await?;
    let g = st
        .groups
        .iter()
        .find(|g| g.name == group)
        .with_context(|| format!("group {group:?} missing from the cluster status"))?;
    let (site, host) = if primary {
        (&g.primary, &g.primary_host)
    } else {
        (&g.replica, &g.replica_host)
    };
    Ok((site.clone(), host_addr(topo, group, site, host)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_matching_groups_and_the_summary_counts_states() {
        use tandem_coordinator::status::GroupStatus;
        let g = |name: &str, p: &str, r: &str, state: &str, rpo: i64| GroupStatus {
            name: name.into(),
            primary: p.into(),
            replica: r.into(),
            state: state.into(),
            rpo_ms: rpo,
            rpo_target_ms: 1000,
            ..Default::default()
        };
        let st = ClusterStatus {
            groups: vec![
                g("a", "hanoi", "hcm", "protected", 10),
                g("b", "hcm", "hanoi", "degraded", 2500),
                g("c", "hue", "hcm", "protected", 0),
            ],
            ..Default::default()
        };
        assert_eq!(
            summary_line(&st),
            "groups: 3 (1 degraded, 2 protected); 1 over its RPO target; RPO max 2.5s"
        );
        let names = |f: Filter| {
            let mut s = st.clone();
            f.apply(&mut s);
            s.groups.iter().map(|g| g.name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(Filter::default()), ["a", "b", "c"]);
        let site = |s: &str| Filter {
            sites: vec![s.into()],
            ..Default::default()
        };
        assert_eq!(names(site("hanoi")), ["a", "b"]);
        assert_eq!(names(site("hue")), ["c"]);
        let f = Filter {
            sites: vec!["hcm".into()],
            states: vec!["protected".into()],
            ..Default::default()
        };
        assert_eq!(names(f), ["a", "c"]);
        let f = Filter {
            groups: vec!["b".into(), "c".into()],
            ..Default::default()
        };
        assert_eq!(names(f), ["b", "c"]);
        let f = Filter {
            states: vec!["failing-over".into()],
            ..Default::default()
        };
        assert!(names(f).is_empty());
    }

    #[test]
    fn the_drill_line_shows_the_next_due_drill_overdue_and_refusals() {
        let mut d = DrillStatus {
            every_ms: 30 * 86_400_000,
            last_drill_ms: Some(0),
            last_run_id: Some("drill-vol-0".into()),
            last_status: Some("succeeded".into()),
            next_due_ms: 30 * 86_400_000,
            grace_ms: 3 * 86_400_000,
            ..Default::default()
        };
        assert_eq!(
            drill_line(&d),
            "drill: every 30d, last 1970-01-01T00:00:00.000Z (drill-vol-0, succeeded), next due 1970-01-31T00:00:00.000Z"
        );
        d.overdue = true;
        d.refused = Some("the group is degraded (site hcm down)".into());
        d.refused_since_ms = Some(1_000);
        d.retry_at_ms = Some(301_000);
        assert_eq!(
            drill_line(&d),
            "drill: every 30d, last 1970-01-01T00:00:00.000Z (drill-vol-0, succeeded), next due 1970-01-31T00:00:00.000Z OVERDUE; not started since 1970-01-01T00:00:01.000Z: the group is degraded (site hcm down); next try 1970-01-01T00:05:01.000Z"
        );
        d.last_drill_ms = None;
        d.last_run_id = None;
        assert!(drill_line(&d).contains(", never drilled, "));
    }
}
