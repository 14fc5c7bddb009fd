//! Validation of sites and nodes: names, jurisdictions, each node's site, addresses and data
//! folder, the coordinator count (an odd quorum of 3 or more) and its spread over sites. Pure.

use std::collections::HashMap;
use std::path::PathBuf;

use super::super::diagnostic::Diags;
use super::super::model::{is_loopback_address, Node, NodeRole, Topology};
use super::{check_address, check_name, check_unique, unknown_site, Found};
use crate::residency;

/// Site names (valid, unique) and jurisdiction codes.
pub(super) fn check_sites(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    let mut seen = HashMap::new();
    for (s, i) in t.sites.iter().zip(&f.sites_idx) {
        let path = format!("sites[{i}].name");
        check_name(d, &path, "site", &s.name);
        check_unique(d, &mut seen, &path, "site name", &s.name);
        if let Some(msg) = s
            .jurisdiction
            .as_deref()
            .and_then(residency::jurisdiction_error)
        {
            d.push(&format!("sites[{i}].jurisdiction"), msg);
        }
    }
}

/// Each node: its name, its site (known, and no replicator on a witness), its addresses
/// (well-formed and never shared) and its data folder (never shared).
pub(super) fn check_nodes(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    let mut seen = HashMap::new();
    let mut addresses = HashMap::new();
    let mut data_dirs: HashMap<PathBuf, String> = HashMap::new();
    for (n, i) in t.nodes.iter().zip(&f.nodes_idx) {
        let p = |field: &str| format!("nodes[{i}].{field}");
        check_name(d, &p("name"), "node", &n.name);
        check_unique(d, &mut seen, &p("name"), "node name", &n.name);
        check_node_site(t, f, d, n, *i);
        check_node_addresses(d, n, *i, &mut addresses);
        check_node_nbd(t, d, n, *i);
        check_recover_root(t, d, n, *i);
        let dir = t.node_data_dir(n);
        match data_dirs.get(&dir) {
            Some(other) => d.push(
                &p("data_dir"),
                format!(
                    "data_dir {} is also node \"{other}\"'s: two nodes must never share state",
                    dir.display()
                ),
            ),
            None => {
                data_dirs.insert(dir, n.name.clone());
            }
        }
    }
}

/// `recover_root`: replicators only, and never a folder that holds the node's own data
/// folder (a recovered copy must not land among the node's state).
fn check_recover_root(t: &Topology, d: &mut Diags<'_>, n: &Node, i: usize) {
    let Some(root) = &n.recover_root else {
        return;
    };
    let path = format!("nodes[{i}].recover_root");
    if n.role != NodeRole::Replicator {
        d.push(
            &path,
            format!(
                "recover_root is a replicator setting: {} is a {} (point-in-time copies are \
                 built by the replica's replicator)",
                n.name, n.role
            ),
        );
        return;
    }
    let data = t.node_data_dir(n);
    if data.starts_with(t.base_dir.join(root)) {
        d.push(
            &path,
            format!(
                "recover_root {} holds the node's data_dir {}: give a folder of its own \
                 (default DATA_DIR/recovered)",
                root.display(),
                data.display()
            ),
        );
    }
}

/// The node's site exists (unless some site entry was unreadable) and, when it is a witness,
/// the node is not a replicator.
fn check_node_site(t: &Topology, f: &Found, d: &mut Diags<'_>, n: &Node, i: usize) {
    let p = |field: &str| format!("nodes[{i}].{field}");
    match t.site(&n.site) {
        None if f.sites_partial => {}
        None => d.push(&p("site"), unknown_site(t, &n.site)),
        Some(site) if site.witness && n.role == NodeRole::Replicator => d.push(
            &p("role"),
            format!(
                "site \"{}\" is a witness: it hosts only a coordinator, never a replicator \
                 or data",
                site.name
            ),
        ),
        Some(_) => {}
    }
}

/// `listen`, `nbd_listen` (replicators only) and `metrics_listen`: well-formed, and each
/// address used once in the whole topology (`addresses` maps them to their first line).
fn check_node_addresses(
    d: &mut Diags<'_>,
    n: &Node,
    i: usize,
    addresses: &mut HashMap<String, usize>,
) {
    let p = |field: &str| format!("nodes[{i}].{field}");
    let mut addrs = vec![("listen", &n.listen)];
    if let Some(a) = &n.nbd_listen {
        addrs.push(("nbd_listen", a));
        if n.role == NodeRole::Coordinator {
            d.push(
                &p("nbd_listen"),
                "only replicators serve NBD; remove nbd_listen from this coordinator".to_string(),
            );
        }
    }
    if let Some(a) = &n.metrics_listen {
        addrs.push(("metrics_listen", a));
    }
    for (field, addr) in addrs {
        check_address(d, &p(field), addr);
        check_unique(d, addresses, &p(field), "listen address", addr);
    }
}

/// NBD's transport: `nbd_tls` / `nbd_plaintext_ok` only with `nbd_listen`; TLS only with the
/// cluster's certificates; plaintext only on loopback unless `nbd_plaintext_ok = true` says
/// the risk is accepted (then [`Topology::nbd_warnings`] has a line for it).
fn check_node_nbd(t: &Topology, d: &mut Diags<'_>, n: &Node, i: usize) {
    let p = |field: &str| format!("nodes[{i}].{field}");
    let Some(addr) = &n.nbd_listen else {
        for (field, set) in [
            ("nbd_tls", n.nbd_tls.is_some()),
            ("nbd_plaintext_ok", n.nbd_plaintext_ok),
        ] {
            if set {
                d.push(
                    &p(field),
                    format!("{field} has no effect without nbd_listen; remove it"),
                );
            }
        }
        return;
    };
    if n.nbd_tls == Some(true) && t.tls.insecure {
        d.push(
            &p("nbd_tls"),
            "NBD over TLS needs the cluster's certificates, but [tls] insecure = true; turn \
             [tls] on or set nbd_tls = false on a loopback nbd_listen"
                .to_string(),
        );
        return;
    }
    if t.nbd_uses_tls(n) || is_loopback_address(addr) || n.nbd_plaintext_ok {
        return;
    }
    let why = if n.nbd_tls == Some(false) {
        "nbd_tls = false"
    } else {
        "[tls] insecure = true"
    };
    let field = if n.nbd_tls.is_some() {
        "nbd_tls"
    } else {
        "nbd_listen"
    };
    d.push(
        &p(field),
        format!(
            "NBD on {addr} would be plaintext and unauthenticated ({why}): anyone who reaches \
             the port could read and write the volumes. Listen on loopback (127.0.0.1, [::1]), \
             use TLS (nbd_tls = true with [tls] on), or set nbd_plaintext_ok = true to accept \
             the risk"
        ),
    );
}

/// An odd number of coordinators, 3 or more (unless some node entry was unreadable).
pub(super) fn check_coordinator_count(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    let coordinators = t.coordinators();
    let count = coordinators.len();
    if !f.nodes_partial && (count < 3 || count.is_multiple_of(2)) {
        let why = if count < 3 {
            "at least 3 are needed so that losing one site or node leaves a quorum"
        } else {
            "an even count tolerates no more failures than one fewer and can split evenly"
        };
        let names: Vec<&str> = coordinators.iter().map(|c| c.node.name.as_str()).collect();
        let path = if t.nodes.is_empty() {
            "nodes"
        } else {
            "nodes[0]"
        };
        d.push_at(
            "nodes",
            d.offset_of(path),
            format!(
                "{count} coordinator(s) ({}): use an odd number, 3 or more (3 or 5); {why}",
                names.join(", ")
            ),
        );
    }
}

/// With any group on auto_failover, no site may hold a majority of the coordinators: losing
/// that site would lose the quorum that must decide the failover.
pub(super) fn check_coordinator_spread(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    let coordinators = t.coordinators();
    let count = coordinators.len();
    let auto = t.groups.iter().any(|g| g.auto_failover);
    if auto && count >= 3 && !f.nodes_partial {
        for s in &t.sites {
            let here = coordinators
                .iter()
                .filter(|c| c.node.site == s.name)
                .count();
            if here * 2 > count {
                d.push(
                    "nodes",
                    format!(
                        "site \"{}\" hosts {here} of {count} coordinators: losing it loses the \
                         quorum, so auto_failover could never happen; spread coordinators so \
                         that no site holds a majority (use a witness site)",
                        s.name
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;
    use std::path::PathBuf;

    #[test]
    fn node_on_unknown_site_is_refused() {
        let text = edit(
            BASE,
            "site = \"b\"\nrole = \"replicator\"",
            "site = \"x\"\nrole = \"replicator\"",
        );
        assert_diag(
            &text,
            "nodes[4].site",
            "site = \"x\"",
            "unknown site \"x\"; sites are: a, b, w",
        );
    }

    #[test]
    fn duplicate_site_names_are_refused() {
        let text = edit(BASE, "name = \"w\"", "name = \"b\"");
        // The duplicate is the later entry; its witness node now sits on "b" too.
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "sites[2].name").unwrap();
        assert_eq!(d.line, 11);
        assert!(d
            .message
            .contains("duplicate site name \"b\" (first used at line 8)"));
    }

    #[test]
    fn duplicate_node_names_are_refused() {
        let text = edit(BASE, "name = \"b-rep\"", "name = \"a-rep\"");
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "nodes[4].name").unwrap();
        assert_eq!(d.line, line_of(&text, "name = \"a-rep\"\nsite = \"b\""));
        assert!(
            d.message.contains("duplicate node name \"a-rep\""),
            "{}",
            d.message
        );
    }

    #[test]
    fn duplicate_listen_addresses_are_refused_across_fields() {
        let text = edit(
            BASE,
            "listen = \"127.0.0.1:7005\"",
            "listen = \"127.0.0.1:7005\"\nmetrics_listen = \"127.0.0.1:7002\"",
        );
        assert_diag(
            &text,
            "nodes[4].metrics_listen",
            "metrics_listen = \"127.0.0.1:7002\"",
            "duplicate listen address \"127.0.0.1:7002\"",
        );
    }

    #[test]
    fn even_number_of_coordinators_is_refused() {
        let text = edit(
            BASE,
            "name = \"a-rep\"\nsite = \"a\"\nrole = \"replicator\"",
            "name = \"a-rep\"\nsite = \"a\"\nrole = \"coordinator\"",
        );
        // a-rep is now a coordinator: 4 of them, and site a loses its replicator.
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "nodes").unwrap();
        assert_eq!(d.line, line_of(&text, "[[nodes]]\nname = \"a-coord\""));
        assert!(d.message.starts_with("4 coordinator(s)"), "{}", d.message);
        assert!(d.message.contains("even"));
    }

    #[test]
    fn fewer_than_three_coordinators_is_refused() {
        let text = edit(
            BASE,
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"coordinator\"",
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"replicator\"",
        );
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "nodes").unwrap();
        assert_eq!(d.line, line_of(&text, "[[nodes]]\nname = \"a-coord\""));
        assert!(
            d.message.starts_with("2 coordinator(s) (a-coord, b-coord)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn witness_site_hosting_a_replicator_is_refused() {
        let text = edit(
            BASE,
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"coordinator\"",
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"replicator\"",
        );
        assert_diag(
            &text,
            "nodes[2].role",
            "role = \"replicator\"\nlisten = \"127.0.0.1:7003\"",
            "witness",
        );
    }

    #[test]
    fn auto_failover_with_a_coordinator_majority_at_one_site_is_refused() {
        let text = edit(
            BASE,
            "rto_target = \"30s\"",
            "rto_target = \"30s\"\nauto_failover = true",
        );
        assert!(parse(&text).is_ok());
        let text = edit(
            &text,
            "name = \"w-coord\"\nsite = \"w\"",
            "name = \"w-coord\"\nsite = \"a\"",
        );
        let diags = diagnostics(&text);
        assert!(
            diags
                .iter()
                .any(|d| d.path == "nodes" && d.message.contains("site \"a\" hosts 2 of 3")),
            "{diags:?}"
        );
    }

    #[test]
    fn nodes_sharing_a_data_dir_are_refused() {
        let text = edit(
            BASE,
            "data_dir = \"data/b-rep\"",
            "data_dir = \"data/../data/a-rep\"",
        );
        // Not normalised: only the same written path is caught.
        assert!(parse(&text).is_ok());
        let text = edit(
            BASE,
            "data_dir = \"data/b-rep\"",
            "data_dir = \"data/a-rep\"",
        );
        assert_diag(
            &text,
            "nodes[4].data_dir",
            "data_dir = \"data/a-rep\"\n\n[[groups",
            "never share",
        );
    }

    #[test]
    fn recover_root_is_a_replicator_folder_outside_its_data_dir() {
        let text = edit(
            BASE,
            "data_dir = \"data/b-rep\"",
            "data_dir = \"data/b-rep\"\nrecover_root = \"/srv/recovered\"",
        );
        let t = parse(&text).unwrap();
        let n = t.node("b-rep").unwrap();
        assert_eq!(t.node_recover_root(n), PathBuf::from("/srv/recovered"));
        let a = t.node("a-rep").unwrap();
        assert_eq!(t.node_recover_root(a), t.node_data_dir(a).join("recovered"));
        let text = edit(
            BASE,
            "data_dir = \"data/b-rep\"",
            "data_dir = \"data/b-rep\"\nrecover_root = \"data\"",
        );
        assert_diag(
            &text,
            "nodes[4].recover_root",
            "recover_root = \"data\"",
            "holds the node's data_dir",
        );
    }

    #[test]
    fn jurisdiction_codes_must_be_iso_3166_alpha_2() {
        let text = edit(BASE, "name = \"b\"", "name = \"b\"\njurisdiction = \"vn\"");
        assert_diag(
            &text,
            "sites[1].jurisdiction",
            "jurisdiction = \"vn\"",
            "\"VN\"",
        );
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nallowed_jurisdictions = [\"XX\"]",
        );
        assert_diag(
            &text,
            "groups[0].allowed_jurisdictions[0]",
            "allowed_jurisdictions = [\"XX\"]",
            "not an ISO 3166-1 alpha-2",
        );
    }

    /// BASE with `nbd_listen = ADDR` (and `extra` lines) on a-rep, plus `tail` at the end.
    fn with_nbd(addr: &str, extra: &str, tail: &str) -> String {
        let text = edit(
            BASE,
            "listen = \"127.0.0.1:7004\"",
            &format!("listen = \"127.0.0.1:7004\"\nnbd_listen = \"{addr}\"{extra}"),
        );
        format!("{text}{tail}")
    }

    const INSECURE: &str = "\n[tls]\ninsecure = true\n";

    #[test]
    fn plaintext_nbd_on_a_network_address_is_refused() {
        let text = with_nbd("10.0.0.5:10809", "", INSECURE);
        assert_diag(
            &text,
            "nodes[3].nbd_listen",
            "nbd_listen = \"10.0.0.5:10809\"",
            "NBD on 10.0.0.5:10809 would be plaintext and unauthenticated ([tls] insecure = true)",
        );
        let text = with_nbd("0.0.0.0:10809", "", INSECURE);
        assert_diag(
            &text,
            "nodes[3].nbd_listen",
            "nbd_listen",
            "nbd_plaintext_ok = true",
        );
        for d in diagnostics(&text) {
            assert!(!d.message.contains("  "), "ragged message: {}", d.message);
        }
    }

    #[test]
    fn plaintext_nbd_on_loopback_is_allowed_without_a_warning() {
        for addr in [
            "127.0.0.1:10809",
            "127.9.9.9:10809",
            "[::1]:10809",
            "localhost:10809",
        ] {
            let topo = parse(&with_nbd(addr, "", INSECURE)).unwrap();
            let node = topo.node("a-rep").unwrap();
            assert!(!topo.nbd_uses_tls(node), "{addr}");
            assert!(topo.nbd_warnings().is_empty(), "{addr}");
        }
    }

    #[test]
    fn nbd_plaintext_ok_allows_a_network_address_with_a_loud_warning() {
        let text = with_nbd("10.0.0.5:10809", "\nnbd_plaintext_ok = true", INSECURE);
        let topo = parse(&text).unwrap();
        let warnings = topo.nbd_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("node a-rep: NBD on 10.0.0.5:10809 is PLAINTEXT"),
            "{warnings:?}"
        );
    }

    #[test]
    fn nbd_tls_defaults_on_with_cluster_tls_off_the_loopback() {
        let topo = parse(&with_nbd("10.0.0.5:10809", "", "")).unwrap();
        assert!(topo.nbd_uses_tls(topo.node("a-rep").unwrap()));
        assert!(topo.nbd_warnings().is_empty());
        let topo = parse(&with_nbd("127.0.0.1:10809", "", "")).unwrap();
        assert!(!topo.nbd_uses_tls(topo.node("a-rep").unwrap()));
        let topo = parse(&with_nbd("127.0.0.1:10809", "\nnbd_tls = true", "")).unwrap();
        assert!(topo.nbd_uses_tls(topo.node("a-rep").unwrap()));
    }

    #[test]
    fn nbd_tls_false_on_a_network_address_is_refused_at_the_field() {
        let text = with_nbd("10.0.0.5:10809", "\nnbd_tls = false", "");
        assert_diag(
            &text,
            "nodes[3].nbd_tls",
            "nbd_tls = false",
            "would be plaintext and unauthenticated (nbd_tls = false)",
        );
    }

    #[test]
    fn nbd_tls_without_certificates_or_without_a_listener_is_refused() {
        let text = with_nbd("127.0.0.1:10809", "\nnbd_tls = true", INSECURE);
        assert_diag(
            &text,
            "nodes[3].nbd_tls",
            "nbd_tls = true",
            "insecure = true",
        );
        let text = edit(
            BASE,
            "listen = \"127.0.0.1:7004\"",
            "listen = \"127.0.0.1:7004\"\nnbd_plaintext_ok = true",
        );
        assert_diag(
            &text,
            "nodes[3].nbd_plaintext_ok",
            "nbd_plaintext_ok = true",
            "no effect without nbd_listen",
        );
    }

    #[test]
    fn loopback_addresses_are_told_from_network_ones() {
        use crate::config::is_loopback_address as lo;
        for a in ["127.0.0.1:1", "127.200.0.1:1", "[::1]:1", "LOCALHOST:1"] {
            assert!(lo(a), "{a}");
        }
        for a in [
            "0.0.0.0:1",
            "10.0.0.1:1",
            "[::]:1",
            "example.com:1",
            "128.0.0.1:1",
            "[::2]:1",
        ] {
            assert!(!lo(a), "{a}");
        }
    }
}
