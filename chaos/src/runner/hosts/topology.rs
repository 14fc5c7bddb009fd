//! The topology of the hosts workload: the embedded cluster (its timings, sites and three
//! coordinators) with `N` replicator hosts per data site instead of one, and volume groups
//! pinned over them so that every host serves at least one group at each site and the hosts
//! of the replica site each stand behind groups of several primary hosts. Pure but for
//! picking free ports.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use crate::runner::topology::topology_text;

/// Where the embedded topology's replicators begin: everything before it (cluster, sites,
/// coordinators) is kept.
/// Volume size of every group, in MiB.
pub const VOLUME_MIB: u64 = 8;

const FIRST_REPLICATOR: &str = "\n[[nodes]]\nname = \"hanoi-rep\"\n";
/// The data sites, primary first.
const SITES: [&str; 2] = ["hanoi", "hcm"];

/// Group `i` (from 0).
pub fn group_name(i: u32) -> String {
    format!("g{}", i + 1)
}

/// The one volume of group `g`: the NBD export its writer writes to.
pub fn resource_name(g: &str) -> String {
    format!("{g}d")
}

/// Host `k` (from 1) at `site`.
pub fn host_name(site: &str, k: u32) -> String {
    format!("{site}-rep-{k}")
}

/// The hosts (from 1) that serve group `i` of `hosts` per site: (primary site, replica
/// site). Primaries go round the hosts; replicas go round shifted by one more at every
/// round, so a replica host stands behind the groups of several primary hosts.
pub fn pins(i: u32, hosts: u32) -> (u32, u32) {
    let h = hosts.max(1);
    (i % h + 1, (i + i / h + 1) % h + 1)
}

/// The topology text of the hosts workload (`hosts` per site, `groups` sync or async volume
/// groups of `volume_mib` each) and the ports it chose (`NODE-nbd` among them).
///
/// # Errors
/// No free port, or the embedded topology changed shape.
pub fn hosts_topology_text(
    hosts: u32,
    groups: u32,
    volume_mib: u64,
    mode: &str,
    auto_failover: bool,
) -> Result<(String, Vec<(String, u16)>)> {
    let (embedded, ports) = topology_text(volume_mib, mode, auto_failover)?;
    let Some(cut) = embedded.find(FIRST_REPLICATOR) else {
        bail!("the embedded topology has no `hanoi-rep` node to replace");
    };
    let mut text = embedded[..cut].to_owned();
    let mut ports: Vec<(String, u16)> = ports
        .into_iter()
        .filter(|(n, _)| n.ends_with("-coord"))
        .collect();
    for site in SITES {
        for k in 1..=hosts {
            let name = host_name(site, k);
            let (listen, nbd) = (
                tandem_core::ports::free_port()?,
                tandem_core::ports::free_port()?,
            );
            let _ = write!(
                text,
                "\n[[nodes]]\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"replicator\"\n\
                 listen = \"127.0.0.1:{listen}\"\ndata_dir = \"data/{name}\"\n\
                 nbd_listen = \"127.0.0.1:{nbd}\"\n"
            );
            ports.push((name.clone(), listen));
            ports.push((format!("{name}-nbd"), nbd));
        }
    }
    let rpo = if mode == "sync" { "0s" } else { "2s" };
    for i in 0..groups {
        let (g, (p, r)) = (group_name(i), pins(i, hosts));
        let _ = write!(
            text,
            "\n[[groups]]\nname = \"{g}\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\n\
             mode = \"{mode}\"\nrpo_target = \"{rpo}\"\nrto_target = \"15s\"\n\
             sync_timeout = \"1s\"\nauto_failover = {auto_failover}\n\
             allowed_jurisdictions = [\"VN\"]\nhosts = {{ hanoi = \"{hp}\", hcm = \"{hr}\" }}\n\
             \n[[groups.resources]]\nname = \"{res}\"\nkind = \"volume\"\n\
             size = \"{volume_mib}MiB\"\npath = \"volumes/hanoi/{g}.img\"\n\
             replica_path = \"volumes/hcm/{g}.img\"\n",
            hp = host_name("hanoi", p),
            hr = host_name("hcm", r),
            res = resource_name(&g),
        );
    }
    Ok((text, ports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use tandem_core::config::Topology;

    #[test]
    fn every_host_serves_a_group_and_replica_hosts_mix_primary_hosts() {
        for hosts in 2..=8 {
            for groups in hosts..=24 {
                let all: Vec<(u32, u32)> = (0..groups).map(|i| pins(i, hosts)).collect();
                let p: BTreeSet<u32> = all.iter().map(|x| x.0).collect();
                let r: BTreeSet<u32> = all.iter().map(|x| x.1).collect();
                let want: BTreeSet<u32> = (1..=hosts).collect();
                assert_eq!((&p, &r), (&want, &want), "{hosts} hosts, {groups} groups");
            }
        }
        // 3 hosts, 6 groups: hanoi-rep-3 serves g3 and g6, whose replicas are on two hosts
        // that also stand behind groups of the other primary hosts.
        let six: Vec<(u32, u32)> = (0..6).map(|i| pins(i, 3)).collect();
        assert_eq!(six, vec![(1, 2), (2, 3), (3, 1), (1, 3), (2, 1), (3, 2)]);
    }

    #[test]
    fn the_hosts_topology_passes_config_check_with_its_pins() {
        let (text, ports) = hosts_topology_text(3, 6, 8, "sync", true).unwrap();
        let topo = Topology::parse(&text, "topology.toml").unwrap();
        assert_eq!(topo.replicators_at("hanoi").len(), 3);
        assert_eq!(topo.replicators_at("hcm").len(), 3);
        assert_eq!(topo.coordinators().len(), 3);
        assert_eq!(topo.groups.len(), 6);
        let g6 = topo.group("g6").unwrap();
        assert_eq!(topo.host_for(g6, "hanoi").unwrap().name, "hanoi-rep-3");
        assert_eq!(topo.host_for(g6, "hcm").unwrap().name, "hcm-rep-2");
        assert_eq!(g6.resources[0].name, "g6d");
        for n in topo.replicators_at("hcm") {
            let nbd = ports.iter().find(|(p, _)| *p == format!("{}-nbd", n.name));
            assert_eq!(
                n.nbd_listen.as_deref(),
                nbd.map(|(_, p)| format!("127.0.0.1:{p}")).as_deref()
            );
        }
    }
}
