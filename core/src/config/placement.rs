//! Placement: which replicator host serves a group at a site. A group's `hosts` pin wins;
//! otherwise weighted rendezvous hashing over the site's replicators, weighted by their
//! declared `capacity`: the same answer on every node from the same topology, spread in
//! proportion to capacity, and a host added to a site takes groups only onto itself (no group
//! moves between the hosts that were there). Pure.
//!
//! A placement is where a volume's data lives, so it must never change under a running group
//! by accident: the coordinators record the host that held a group's lease at each site and
//! refuse the lease to any other host there (see the coordinator's `acquire_lease`).

use super::model::{Group, Node, NodeRole, Topology};

/// Weight of a replicator without a declared capacity: 1 GiB.
const DEFAULT_WEIGHT_BYTES: u64 = 1 << 30;

/// The rendezvous score of `node` for `group`: `weight / -ln(u)`, `u` uniform in (0, 1) from
/// blake3(group ‖ 0 ‖ node). The node with the highest score wins; the probability of winning
/// is proportional to the weight.
fn score(group: &str, node: &Node) -> f64 {
    let mut h = blake3::Hasher::new();
    h.update(group.as_bytes());
    h.update(&[0]);
    h.update(node.name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&h.finalize().as_bytes()[..8]);
    // 53 bits, shifted into (0, 1): never 0 (ln 0) nor 1 (division by 0).
    let u = ((u64::from_le_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let weight = node.capacity.map_or(DEFAULT_WEIGHT_BYTES, |c| c.0.max(1)) as f64;
    weight / -u.ln()
}

/// The replicator among `candidates` that an unpinned group named `group` is placed on: the
/// highest rendezvous score, ties to the earlier candidate.
pub fn place<'a>(group: &str, candidates: &[&'a Node]) -> Option<&'a Node> {
    let mut best: Option<(&Node, f64)> = None;
    for n in candidates {
        let s = score(group, n);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((n, s));
        }
    }
    best.map(|(n, _)| n)
}

impl Topology {
    /// The replicator host that serves `group` at `site`: its pin in `hosts` when there is
    /// one (a replicator at that site, as `config check` makes sure), else [`place`] over the
    /// site's replicators. `None` when the site has no replicator, or the pin names none.
    pub fn host_for(&self, group: &Group, site: &str) -> Option<&Node> {
        if let Some(name) = group.hosts.get(site) {
            return self
                .node(name)
                .filter(|n| n.site == site && n.role == NodeRole::Replicator);
        }
        place(&group.name, &self.replicators_at(site))
    }

    /// [`Topology::host_for`] by group name.
    pub fn host_for_group(&self, group: &str, site: &str) -> Option<&Node> {
        self.group(group).and_then(|g| self.host_for(g, site))
    }

    /// The replicator host that holds `group`'s data at `site` as the deciding side knows it:
    /// `recorded` (the coordinators' record of where the data lives there, or the target of a
    /// planned `tandem move`) when it names a replicator at that site, else the topology's
    /// placement ([`Topology::host_for_group`]). Once the coordinators have recorded a host,
    /// only a planned move changes it; a changed pin in the topology alone moves nothing.
    pub fn placed_host(&self, group: &str, site: &str, recorded: Option<&str>) -> Option<&Node> {
        if let Some(name) = recorded {
            if let Some(n) = self
                .node(name)
                .filter(|n| n.site == site && n.role == NodeRole::Replicator)
            {
                return Some(n);
            }
        }
        self.host_for_group(group, site)
    }

    /// The groups `node` serves: those with a side at its site that are placed on it.
    pub fn groups_served_by<'a>(&'a self, node: &'a Node) -> impl Iterator<Item = &'a Group> {
        self.groups.iter().filter(move |g| {
            (g.primary == node.site || g.replica == node.site)
                && self
                    .host_for(g, &node.site)
                    .is_some_and(|h| h.name == node.name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn rep(name: &str, capacity: Option<u64>) -> Node {
        Node {
            name: name.into(),
            site: "hanoi".into(),
            role: NodeRole::Replicator,
            listen: "127.0.0.1:1".into(),
            data_dir: PathBuf::from("/x"),
            nbd_listen: None,
            nbd_tls: None,
            nbd_plaintext_ok: false,
            metrics_listen: None,
            recover_root: None,
            capacity: capacity.map(ByteSize),
        }
    }

    fn counts(nodes: &[Node], groups: usize) -> BTreeMap<String, usize> {
        let refs: Vec<&Node> = nodes.iter().collect();
        let mut out = BTreeMap::new();
        for i in 0..groups {
            let n = place(&format!("g{i}"), &refs).map(|n| n.name.clone());
            *out.entry(n.unwrap_or_default()).or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn one_candidate_takes_everything_and_none_places_nothing() {
        let a = rep("a", None);
        assert_eq!(place("g", &[&a]).map(|n| n.name.as_str()), Some("a"));
        assert!(place("g", &[]).is_none());
    }

    #[test]
    fn equal_hosts_share_groups_evenly() {
        let nodes = [rep("a", None), rep("b", None), rep("c", None)];
        let c = counts(&nodes, 3000);
        for (n, k) in &c {
            assert!((850..=1150).contains(k), "{n} got {k} of 3000: {c:?}");
        }
    }

    #[test]
    fn capacity_weighs_the_share() {
        let nodes = [rep("small", Some(1 << 40)), rep("big", Some(3 << 40))];
        let c = counts(&nodes, 4000);
        let big = c.get("big").copied().unwrap_or(0);
        // Expected 3000 of 4000.
        assert!((2800..=3200).contains(&big), "{c:?}");
    }

    #[test]
    fn the_order_of_candidates_does_not_matter() {
        let (a, b, c) = (rep("a", None), rep("b", Some(5 << 30)), rep("c", None));
        for i in 0..200 {
            let g = format!("g{i}");
            let x = place(&g, &[&a, &b, &c]).map(|n| n.name.clone());
            let y = place(&g, &[&c, &a, &b]).map(|n| n.name.clone());
            assert_eq!(x, y, "{g}");
        }
    }

    #[test]
    fn a_new_host_takes_groups_only_onto_itself() {
        let (a, b, c) = (rep("a", None), rep("b", None), rep("c", None));
        let mut moved = 0;
        for i in 0..1000 {
            let g = format!("g{i}");
            let before = place(&g, &[&a, &b]).map(|n| n.name.clone());
            let after = place(&g, &[&a, &b, &c]).map(|n| n.name.clone());
            if before != after {
                assert_eq!(after.as_deref(), Some("c"), "{g} moved between old hosts");
                moved += 1;
            }
        }
        // About a third moves to the new host.
        assert!((250..=420).contains(&moved), "{moved}");
    }
}
