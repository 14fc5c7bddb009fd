//! Validation of placement: a group's `hosts` pins (a site of the group, a replicator at that
//! site) and each replicator's `capacity` (replicators only, and not below the volumes of the
//! groups placed on it). Pure.

use super::super::diagnostic::Diags;
use super::super::model::{Group, NodeRole, ResourceKind, Topology};
use super::super::units::ByteSize;
use super::Found;

/// Every group's `hosts`.
pub(super) fn check_hosts(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    if f.nodes_partial {
        return;
    }
    for (g, i) in t.groups.iter().zip(&f.groups_idx) {
        for (site, name) in &g.hosts {
            let path = format!("groups[{i}].hosts.{site}");
            if let Some(msg) = host_error(t, g, site, name) {
                d.push(&path, msg);
            }
        }
    }
}

/// Why `name` cannot serve group `g` at `site`, if it cannot.
fn host_error(t: &Topology, g: &Group, site: &str, name: &str) -> Option<String> {
    if site != g.primary && site != g.replica {
        return Some(format!(
            "site \"{site}\" is neither the group's primary (\"{}\") nor its replica (\"{}\")",
            g.primary, g.replica
        ));
    }
    let here: Vec<&str> = t
        .replicators_at(site)
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    let choices = if here.is_empty() {
        "(none)".to_string()
    } else {
        here.join(", ")
    };
    match t.node(name) {
        None => Some(format!(
            "unknown node \"{name}\"; the replicators at site \"{site}\" are: {choices}"
        )),
        Some(n) if n.role != NodeRole::Replicator => Some(format!(
            "node \"{name}\" is a {}, not a replicator; the replicators at site \"{site}\" \
             are: {choices}",
            n.role
        )),
        Some(n) if n.site != site => Some(format!(
            "node \"{name}\" is at site \"{}\", not \"{site}\"; the replicators at site \
             \"{site}\" are: {choices}",
            n.site
        )),
        Some(_) => None,
    }
}

/// Every node's `capacity`: replicators only, and at least the volumes placed on it.
pub(super) fn check_capacity(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    for (n, i) in t.nodes.iter().zip(&f.nodes_idx) {
        let Some(cap) = n.capacity else { continue };
        let path = format!("nodes[{i}].capacity");
        if n.role != NodeRole::Replicator {
            d.push(
                &path,
                "only a replicator holds volumes; remove capacity from this coordinator"
                    .to_string(),
            );
            continue;
        }
        if f.nodes_partial || f.resources_partial.iter().any(|p| *p) {
            continue;
        }
        let placed: Vec<(&str, u64)> = t
            .groups_served_by(n)
            .map(|g| (g.name.as_str(), volume_bytes(g)))
            .filter(|(_, b)| *b > 0)
            .collect();
        let need: u64 = placed.iter().map(|(_, b)| b).sum();
        if need > cap.0 {
            let list: Vec<String> = placed
                .iter()
                .map(|(g, b)| format!("{g} {}", ByteSize(*b)))
                .collect();
            d.push(
                &path,
                format!(
                    "the volumes of the groups placed on \"{}\" need {} ({}), more than its \
                     capacity {cap}: raise capacity, or pin groups to another replicator at \
                     site \"{}\" with hosts = {{ {} = \"NODE\" }}",
                    n.name,
                    ByteSize(need),
                    list.join(", "),
                    n.site,
                    n.site
                ),
            );
        }
    }
}

/// Total size of the group's volumes.
fn volume_bytes(g: &Group) -> u64 {
    g.resources
        .iter()
        .map(|r| match r.kind {
            ResourceKind::Volume { size, .. } => size.0,
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;

    /// BASE with two more replicators at site a, and `tail` added to group g.
    fn three_hosts(tail: &str) -> String {
        let extra = r#"
[[nodes]]
name = "a-rep-2"
site = "a"
role = "replicator"
listen = "127.0.0.1:7006"
data_dir = "data/a-rep-2"

[[nodes]]
name = "a-rep-3"
site = "a"
role = "replicator"
listen = "127.0.0.1:7007"
data_dir = "data/a-rep-3"

[[groups]]"#;
        let text = edit(BASE, "\n[[groups]]", extra);
        edit(
            &text,
            "rto_target = \"30s\"",
            &format!("rto_target = \"30s\"\n{tail}"),
        )
    }

    #[test]
    fn a_pin_is_honoured_and_unpinned_groups_are_placed() {
        let t = parse(&three_hosts("hosts = { a = \"a-rep-3\" }")).unwrap();
        let g = t.group("g").unwrap();
        assert_eq!(t.host_for(g, "a").map(|n| n.name.as_str()), Some("a-rep-3"));
        assert_eq!(t.host_for(g, "b").map(|n| n.name.as_str()), Some("b-rep"));
        let n = t.node("a-rep-3").unwrap();
        assert_eq!(t.groups_served_by(n).count(), 1);
        assert_eq!(t.groups_served_by(t.node("a-rep").unwrap()).count(), 0);
    }

    #[test]
    fn a_pin_to_an_unknown_node_names_the_choices() {
        let text = three_hosts("hosts = { a = \"a-rep-9\" }");
        assert_diag(
            &text,
            "groups[0].hosts.a",
            "hosts = {",
            "unknown node \"a-rep-9\"; the replicators at site \"a\" are: a-rep, a-rep-2, a-rep-3",
        );
    }

    #[test]
    fn a_pin_to_another_sites_node_or_a_coordinator_is_refused() {
        let text = three_hosts("hosts = { a = \"b-rep\" }");
        assert_diag(
            &text,
            "groups[0].hosts.a",
            "hosts = {",
            "is at site \"b\", not \"a\"",
        );
        let text = three_hosts("hosts = { a = \"a-coord\" }");
        assert_diag(&text, "groups[0].hosts.a", "hosts = {", "is a coordinator");
    }

    #[test]
    fn a_pin_for_a_site_the_group_does_not_use_is_refused() {
        let text = three_hosts("hosts = { w = \"a-rep\" }");
        assert_diag(
            &text,
            "groups[0].hosts.w",
            "hosts = {",
            "neither the group's primary (\"a\") nor its replica (\"b\")",
        );
    }

    #[test]
    fn capacity_below_the_placed_volumes_is_refused() {
        let text = edit(
            BASE,
            "data_dir = \"data/a-rep\"",
            "data_dir = \"data/a-rep\"\ncapacity = \"512KiB\"",
        );
        assert_diag(
            &text,
            "nodes[3].capacity",
            "capacity = \"512KiB\"",
            "need 1MiB (g 1MiB), more than its capacity 512KiB",
        );
        let ok = edit(
            BASE,
            "data_dir = \"data/a-rep\"",
            "data_dir = \"data/a-rep\"\ncapacity = \"1GiB\"",
        );
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn capacity_on_a_coordinator_is_refused_and_a_bad_unit_is_named() {
        let text = edit(
            BASE,
            "data_dir = \"data/a-coord\"",
            "data_dir = \"data/a-coord\"\ncapacity = \"1GiB\"",
        );
        assert_diag(
            &text,
            "nodes[0].capacity",
            "capacity = \"1GiB\"",
            "only a replicator",
        );
        let text = edit(
            BASE,
            "data_dir = \"data/a-rep\"",
            "data_dir = \"data/a-rep\"\ncapacity = \"lots\"",
        );
        assert_diag(
            &text,
            "nodes[3].capacity",
            "capacity = \"lots\"",
            "invalid size",
        );
    }
}
