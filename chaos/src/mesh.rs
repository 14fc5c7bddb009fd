//! A mesh of fault proxies, one per ordered pair of nodes, and the per-node topology files that
//! make every node dial its peers through them, so faults can target a link, a node or a site.
//!
//! Node `a` dialing node `b` connects to the proxy of link `a -> b`, which forwards to `b`'s
//! real listen address. The proxy's `ToUpstream` direction carries what `a` sends to `b`, its
//! `ToClient` direction what `b` answers. Each node gets its own copy of the topology in which
//! every *other* node's `listen` is the proxy of its link to that node; its own `listen` stays
//! real. Nothing else in the topology changes, so processes need no knowledge of the mesh.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::proxy::{Blackhole, Direction, FaultProxy, Faults, ProxyHandle, ProxyStats};
use crate::ChaosError;

/// A running mesh of link proxies.
#[derive(Debug)]
pub struct Mesh {
    links: BTreeMap<(String, String), ProxyHandle>,
}

/// Rewrites topology TOML `text` for `node`: every other node's `listen` becomes
/// `dial(node, other)` when that returns an address. Pure.
///
/// # Errors
/// `Config` when the text is not TOML or has no `[[nodes]]` with names.
pub fn rewrite_topology(
    text: &str,
    node: &str,
    dial: &dyn Fn(&str, &str) -> Option<SocketAddr>,
) -> Result<String, ChaosError> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| ChaosError::Config {
        field: "topology",
        reason: e.to_string(),
    })?;
    let nodes = doc
        .get_mut("nodes")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| ChaosError::Config {
            field: "nodes",
            reason: "the topology has no [[nodes]]".into(),
        })?;
    for (i, n) in nodes.iter_mut().enumerate() {
        let table = n.as_table_mut().ok_or_else(|| ChaosError::Config {
            field: "nodes",
            reason: format!("nodes[{i}] is not a table"),
        })?;
        let name = table
            .get("name")
            .and_then(toml::Value::as_str)
            .ok_or_else(|| ChaosError::Config {
                field: "nodes",
                reason: format!("nodes[{i}] has no name"),
            })?
            .to_owned();
        if name == node {
            continue;
        }
        if let Some(addr) = dial(node, &name) {
            table.insert("listen".into(), toml::Value::String(addr.to_string()));
        }
    }
    toml::to_string(&doc).map_err(|e| ChaosError::Config {
        field: "topology",
        reason: e.to_string(),
    })
}

impl Mesh {
    /// Starts one proxy on `127.0.0.1:0` for every ordered pair of distinct `nodes`
    /// (name, real listen address). Ports in `avoid` (chosen for processes that have not
    /// bound them yet) are never taken.
    ///
    /// # Errors
    /// `Io` when a proxy cannot bind.
    pub async fn start(nodes: &[(String, SocketAddr)], avoid: &[u16]) -> Result<Mesh, ChaosError> {
        let mut links = BTreeMap::new();
        let mut refused = Vec::new();
        for (from, _) in nodes {
            for (to, upstream) in nodes {
                if from == to {
                    continue;
                }
                let handle = loop {
                    let (handle, addr) = FaultProxy::start("127.0.0.1:0", *upstream).await?;
                    if avoid.contains(&addr.port()) {
                        refused.push(handle); // held until done, so the port is not drawn again
                        continue;
                    }
                    break handle;
                };
                links.insert((from.clone(), to.clone()), handle);
            }
        }
        drop(refused);
        Ok(Mesh { links })
    }

    /// The address `from` must dial to reach `to`.
    pub fn dial_addr(&self, from: &str, to: &str) -> Option<SocketAddr> {
        self.links
            .get(&(from.to_owned(), to.to_owned()))
            .map(ProxyHandle::local_addr)
    }

    /// The topology `node` runs with (see [`rewrite_topology`]).
    ///
    /// # Errors
    /// As [`rewrite_topology`].
    pub fn topology_for(&self, text: &str, node: &str) -> Result<String, ChaosError> {
        rewrite_topology(text, node, &|a, b| self.dial_addr(a, b))
    }

    /// Changes the links between the node sets `a` and `b` (both ways; a node in both sets is
    /// not linked to itself). `change(faults, dir_from_a)` is called once per direction of
    /// each link with the direction that carries bytes sent by the `a` side (`true`) or the
    /// `b` side (`false`). Returns how many links changed.
    pub fn update(
        &self,
        a: &[String],
        b: &[String],
        change: &dyn Fn(&mut Faults, Direction, bool),
    ) -> usize {
        let mut n = 0;
        for ((from, to), h) in &self.links {
            let a_to_b = a.contains(from) && b.contains(to);
            let b_to_a = b.contains(from) && a.contains(to);
            if !a_to_b && !b_to_a {
                continue;
            }
            h.update(|f| {
                // On link from -> to, ToUpstream carries `from`'s bytes.
                change(f, Direction::ToUpstream, a_to_b);
                change(f, Direction::ToClient, !a_to_b);
            });
            n += 1;
        }
        n
    }

    /// Partitions `a` from `b` (bytes stall both ways until healed).
    pub fn partition(&self, a: &[String], b: &[String]) -> usize {
        self.update(a, b, &|f, dir, _| {
            f.link_mut(dir).blackhole = Some(Blackhole::Stall);
        })
    }

    /// Removes every fault from the links between `a` and `b`.
    pub fn heal(&self, a: &[String], b: &[String]) -> usize {
        self.update(a, b, &|f, dir, _| {
            *f.link_mut(dir) = Default::default();
        })
    }

    /// Removes every fault from every link.
    pub fn heal_all(&self) {
        for h in self.links.values() {
            h.set(Faults::none());
        }
    }

    /// The counters of link `from -> to`.
    pub fn stats(&self, from: &str, to: &str) -> Option<ProxyStats> {
        self.links
            .get(&(from.to_owned(), to.to_owned()))
            .map(ProxyHandle::stats)
    }

    /// Stops every proxy.
    pub async fn shutdown(self) {
        for (_, h) in self.links {
            h.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPO: &str = r#"
[cluster]
name = "x"

[[nodes]]
name = "a"
listen = "127.0.0.1:1001"
data_dir = "data/a"

[[nodes]]
name = "b"
listen = "127.0.0.1:1002"
data_dir = "data/b"
"#;

    #[test]
    fn rewrite_points_peers_at_their_link_and_keeps_own_listen() {
        let dial = |from: &str, to: &str| -> Option<SocketAddr> {
            assert_eq!(from, "a");
            (to == "b").then(|| SocketAddr::from(([127, 0, 0, 1], 2002)))
        };
        let out = rewrite_topology(TOPO, "a", &dial).unwrap();
        let doc: toml::Table = toml::from_str(&out).unwrap();
        let nodes = doc["nodes"].as_array().unwrap();
        assert_eq!(nodes[0]["listen"].as_str(), Some("127.0.0.1:1001"));
        assert_eq!(nodes[1]["listen"].as_str(), Some("127.0.0.1:2002"));
        assert_eq!(nodes[1]["data_dir"].as_str(), Some("data/b"));
        assert_eq!(doc["cluster"]["name"].as_str(), Some("x"));
    }

    #[test]
    fn rewrite_refuses_text_without_nodes() {
        let e = rewrite_topology("[cluster]\nname = \"x\"\n", "a", &|_, _| None).unwrap_err();
        assert!(e.to_string().contains("nodes"), "{e}");
        assert!(rewrite_topology("nodes = [", "a", &|_, _| None).is_err());
    }

    #[tokio::test]
    async fn partition_and_heal_touch_only_the_links_between_the_sets() {
        let addr = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let nodes: Vec<(String, SocketAddr)> = ["a", "b", "c"]
            .iter()
            .zip([1u16, 2, 3])
            .map(|(n, p)| (n.to_string(), addr(p)))
            .collect();
        let mesh = Mesh::start(&nodes, &[]).await.unwrap();
        assert_eq!(mesh.links.len(), 6);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(mesh.partition(&s(&["a"]), &s(&["b", "c"])), 4);
        let cut = |f: &str, t: &str| {
            mesh.links[&(f.to_owned(), t.to_owned())]
                .faults()
                .to_upstream
                .blackhole
                .is_some()
        };
        assert!(cut("a", "b") && cut("b", "a") && cut("c", "a") && cut("a", "c"));
        assert!(!cut("b", "c") && !cut("c", "b"));
        // Corruption only of what `b` sends to `c`.
        mesh.update(&s(&["b"]), &s(&["c"]), &|f, dir, from_b| {
            if from_b {
                f.link_mut(dir).corrupt_every = Some(10);
            }
        });
        let bc = mesh.links[&("b".to_owned(), "c".to_owned())].faults();
        let cb = mesh.links[&("c".to_owned(), "b".to_owned())].faults();
        assert_eq!(bc.to_upstream.corrupt_every, Some(10));
        assert_eq!(bc.to_client.corrupt_every, None);
        assert_eq!(cb.to_client.corrupt_every, Some(10));
        assert_eq!(cb.to_upstream.corrupt_every, None);
        assert_eq!(mesh.heal(&s(&["a"]), &s(&["b"])), 2);
        assert!(!cut("a", "b") && cut("a", "c"));
        mesh.heal_all();
        assert!(!cut("a", "c"));
        assert!(mesh.dial_addr("a", "b").is_some() && mesh.dial_addr("a", "a").is_none());
        mesh.shutdown().await;
    }
}
