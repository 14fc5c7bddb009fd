//! Validation of a parsed topology: every rule a config must follow beyond its syntax, each
//! problem pushed as a diagnostic at its field so that one load reports them all. Pure: it
//! reads the topology and writes diagnostics, nothing else.
//!
//! - this room: the entry point, the shared name/address/uniqueness checks and the cluster
//!   timings;
//! - [`nodes`]: sites, nodes, the coordinator quorum and its spread over sites;
//! - [`groups`]: protection groups (sites, residency, RPO/RTO targets, journal and history);
//! - [`resources`]: the resources of a group (volumes, databases, files shared by two);
//! - [`placement`]: a group's `hosts` pins and each replicator's `capacity`.

mod groups;
mod nodes;
mod placement;
mod resources;

use std::collections::HashMap;

use super::diagnostic::{line_col, Diags};
use super::model::{Cluster, Topology};

/// What was deserialized, by original index in the file, so that checks name the right entry
/// and skip conclusions that a broken entry would make wrong.
#[derive(Default)]
pub(in crate::config) struct Found {
    pub(in crate::config) sites_idx: Vec<usize>,
    pub(in crate::config) nodes_idx: Vec<usize>,
    pub(in crate::config) groups_idx: Vec<usize>,
    /// Per group (as in `Topology::groups`): the file index of each resource.
    pub(in crate::config) resources_idx: Vec<Vec<usize>>,
    /// Some `[[sites]]` entry could not be read: "unknown site" would be a guess.
    pub(in crate::config) sites_partial: bool,
    /// Some `[[nodes]]` entry could not be read: counts of nodes would be wrong.
    pub(in crate::config) nodes_partial: bool,
    /// Per group: some resource could not be read.
    pub(in crate::config) resources_partial: Vec<bool>,
}

/// Checks everything the deserializer cannot: names, references, counts, timings, residency.
/// `f` tells which entries were read, so a broken one is not also reported as missing.
pub(in crate::config) fn validate(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    check_cluster(&t.cluster, d);
    nodes::check_sites(t, f, d);
    nodes::check_nodes(t, f, d);
    nodes::check_coordinator_count(t, f, d);
    nodes::check_coordinator_spread(t, f, d);
    groups::check_groups(t, f, d);
    placement::check_hosts(t, f, d);
    placement::check_capacity(t, f, d);
}

/// True when none of the cluster `fields` had a value that failed to parse (a check of them
/// would then report a consequence of that error).
fn cluster_clean(d: &Diags<'_>, fields: &[&str]) -> bool {
    fields
        .iter()
        .all(|name| !d.bad.contains(&format!("cluster.{name}")))
}

/// Least `snapshot_entries` and `audit_memory_records`: a coordinator keeps a quarter of each
/// as its margin (log entries after a snapshot, records dropped from memory at once).
const MIN_CLUSTER_COUNT: u64 = 16;

/// The `[cluster]` timings: none zero, and none contradicting another.
fn check_cluster(c: &Cluster, d: &mut Diags<'_>) {
    check_name(d, "cluster.name", "cluster", &c.name);
    for (field, value) in [
        ("lease_ttl", c.lease_ttl),
        ("heartbeat_interval", c.heartbeat_interval),
        ("detect_after", c.detect_after),
        ("rpo_sample_interval", c.rpo_sample_interval),
        ("rpo_audit_interval", c.rpo_audit_interval),
    ] {
        if value.is_zero() {
            d.push(&format!("cluster.{field}"), "must be above 0s".to_string());
        }
    }
    if cluster_clean(d, &["heartbeat_interval", "detect_after"])
        && c.detect_after.as_millis() < c.heartbeat_interval.as_millis().saturating_mul(2)
    {
        d.push(
            "cluster.detect_after",
            format!(
                "detect_after ({}) must be at least 2 heartbeat_intervals ({}): one lost \
                 heartbeat must not declare a site down",
                c.detect_after, c.heartbeat_interval
            ),
        );
    }
    if cluster_clean(d, &["heartbeat_interval", "lease_ttl"])
        && c.lease_ttl.as_millis() < c.heartbeat_interval.as_millis().saturating_mul(2)
    {
        d.push(
            "cluster.lease_ttl",
            format!(
                "lease_ttl ({}) must be at least 2 heartbeat_intervals ({}): a lease must \
                 survive one missed renewal",
                c.lease_ttl, c.heartbeat_interval
            ),
        );
    }
    for (field, value) in [
        ("snapshot_entries", c.snapshot_entries),
        ("audit_memory_records", c.audit_memory_records),
    ] {
        if value < MIN_CLUSTER_COUNT {
            d.push(
                &format!("cluster.{field}"),
                format!("{field} is {value}; it must be at least {MIN_CLUSTER_COUNT}"),
            );
        }
    }
    if cluster_clean(d, &["drift_margin", "lease_ttl"]) && c.drift_margin >= c.lease_ttl {
        d.push(
            "cluster.drift_margin",
            format!(
                "drift_margin ({}) must be below lease_ttl ({})",
                c.drift_margin, c.lease_ttl
            ),
        );
    }
}

/// "unknown site" with the list of the sites there are (each name once, in file order).
fn unknown_site(t: &Topology, name: &str) -> String {
    let mut site_names: Vec<&str> = Vec::new();
    for s in &t.sites {
        if !site_names.contains(&s.name.as_str()) {
            site_names.push(&s.name);
        }
    }
    format!(
        "unknown site \"{name}\"; sites are: {}",
        if site_names.is_empty() {
            "(none: add [[sites]] entries)".to_string()
        } else {
            site_names.join(", ")
        }
    )
}

/// Names must be safe in paths, metrics labels, URLs and certificate names.
pub(super) fn check_name(diags: &mut Diags<'_>, path: &str, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        diags.push(
            path,
            format!(
                "invalid {what} name \"{name}\": use 1-63 letters, digits, '-', '_' or '.', \
                 starting with a letter or digit"
            ),
        );
    }
}

/// Reports a second use of a name; `first` maps names to the line of their first use.
pub(super) fn check_unique(
    diags: &mut Diags<'_>,
    first: &mut HashMap<String, usize>,
    path: &str,
    what: &str,
    name: &str,
) {
    let line = line_col(diags.text, diags.offset_of(path)).0;
    match first.get(name) {
        Some(at) => diags.push(
            path,
            format!("duplicate {what} \"{name}\" (first used at line {at})"),
        ),
        None => {
            first.insert(name.to_string(), line);
        }
    }
}

/// `host:port` with a non-empty host and a numeric port.
pub(super) fn check_address(diags: &mut Diags<'_>, path: &str, addr: &str) {
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    });
    if !ok {
        diags.push(
            path,
            format!("invalid address \"{addr}\": write host:port, e.g. \"127.0.0.1:7101\""),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;

    #[test]
    fn snapshot_and_audit_memory_counts_below_the_floor_are_refused() {
        let text = edit(
            BASE,
            "name = \"t\"",
            "name = \"t\"\nsnapshot_entries = 4\naudit_memory_records = 0",
        );
        assert_diag(
            &text,
            "cluster.snapshot_entries",
            "snapshot_entries = 4",
            "at least 16",
        );
        assert_diag(
            &text,
            "cluster.audit_memory_records",
            "audit_memory_records = 0",
            "at least 16",
        );
        let ok = edit(
            BASE,
            "name = \"t\"",
            "name = \"t\"\nsnapshot_entries = 16\nsnapshot_min_interval = \"0s\"\naudit_memory_records = 64",
        );
        let t = parse(&ok).unwrap();
        assert_eq!(
            (t.cluster.snapshot_entries, t.cluster.audit_memory_records),
            (16, 64)
        );
        assert!(t.cluster.snapshot_min_interval.is_zero());
    }

    #[test]
    fn cluster_timings_that_contradict_each_other_are_refused() {
        let text = edit(
            BASE,
            "name = \"t\"",
            "name = \"t\"\nheartbeat_interval = \"3s\"",
        );
        assert_diag(
            &text,
            "cluster.detect_after",
            "[cluster]",
            "at least 2 heartbeat_intervals",
        );
        assert_diag(
            &text,
            "cluster.lease_ttl",
            "[cluster]",
            "survive one missed renewal",
        );
    }
}
