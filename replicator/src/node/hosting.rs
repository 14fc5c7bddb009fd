//! Which groups this replicator hosts. At start, the groups the topology places on it; then,
//! at every heartbeat, as the coordinators record it: a group whose data they record on this
//! host at its site (a planned `tandem move` to it) is opened here, and a group they record
//! on another host here is closed (its files stay on disk). The decision is pure
//! ([`hosting_changes`]); opening and closing touch files, the NBD export table and the
//! Replication service.

use super::layout::{replica_dir, RESYNC_MARKER};
use super::lease::RoleCell;
use super::lock::lock;
use super::runtime::{GroupRt, NodeRt, NodeRtShared, RoleState};
use super::transitions::stop_role;
use super::volume::GroupVolume;
use crate::error::{ReplicatorError, Result};
use crate::volume::FileVolume;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::config::{Capture, Group, Node, ResourceKind, Topology};
use tandem_core::proto::GroupLease;
use tandem_core::proto::ResyncProgress;
use tokio::sync::watch;
use tracing::{info, warn};

/// A change of the set of groups this node hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostingChange {
    /// The coordinators place the group's data at this site on this node: open it.
    Open(String),
    /// They place it on another node at this site: close it here.
    Close(String),
}

/// What to open and close after the coordinators' answer `leases`: a group with a side at
/// this node's site is hosted here when [`Topology::placed_host`] (the coordinators' record
/// for the site, else the topology's placement) names this node. A group this node is the
/// primary of (`primaries`) is never closed: the primary side does not move by this path, and
/// its writers must not lose their export under them. Unknown groups are ignored.
pub(super) fn hosting_changes(
    topo: &Topology,
    node: &Node,
    leases: &[GroupLease],
    hosted: &BTreeSet<String>,
    primaries: &BTreeSet<String>,
) -> Vec<HostingChange> {
    let site = node.site.as_str();
    let mut out = Vec::new();
    for l in leases {
        if topo.group(&l.group).is_none() || (l.primary != site && l.replica != site) {
            continue;
        }
        let recorded = l.hosts.get(site).map(String::as_str);
        let here = topo
            .placed_host(&l.group, site, recorded)
            .is_some_and(|h| h.name == node.name);
        match (here, hosted.contains(&l.group)) {
            (true, false) => out.push(HostingChange::Open(l.group.clone())),
            (false, true) if !primaries.contains(&l.group) => {
                out.push(HostingChange::Close(l.group.clone()));
            }
            _ => {}
        }
    }
    out
}

/// Opens group `g` on this node: its volumes (created sparse when missing) and their NBD
/// exports, its role cell, its database archive gates. The runtime starts with no role; the
/// next heartbeat gives it one.
///
/// # Errors
/// A volume cannot be opened or an export name is invalid.
pub(super) fn open_group(
    topo: &Topology,
    node: &Node,
    shared: &NodeRtShared,
    g: &Group,
) -> Result<GroupRt> {
    let site = node.site.as_str();
    let cell = Arc::new(RoleCell::default());
    cell.may_overflow.store(
        g.resources
            .iter()
            .all(|r| matches!(r.kind, ResourceKind::Volume { .. })),
        std::sync::atomic::Ordering::SeqCst,
    );
    for r in &g.resources {
        if matches!(r.kind, ResourceKind::Postgres { .. }) {
            lock(&shared.wal_pushes).insert((g.name.clone(), r.name.clone()), Default::default());
        }
        if let ResourceKind::Volume { size, capture, .. } = &r.kind {
            let path = topo.resource_path(g, r, site).ok_or_else(|| {
                ReplicatorError::Task(format!("no path for {}/{}", g.name, r.name))
            })?;
            let vol = open_volume(&r.name, &path, size.bytes(), &cell)?;
            // A scanned volume is written by others, not through an NBD export.
            if *capture == Capture::Nbd {
                shared
                    .exports
                    .insert(&r.name, Arc::new(vol))
                    .map_err(|e| ReplicatorError::Task(format!("export {}: {e}", r.name)))?;
            }
            lock(&cell.images).push(path.clone());
            lock(&shared.paths).insert((g.name.clone(), r.name.clone()), path);
        }
    }
    lock(&shared.cells).insert(g.name.clone(), cell.clone());
    Ok(group_rt(g, cell))
}

/// Applies [`hosting_changes`] for the coordinators' answer `leases`. Failures are logged
/// and retried at the next heartbeat.
pub(super) async fn follow_placement(rt: &Arc<NodeRt>, leases: &[GroupLease]) {
    let (hosted, primaries) = {
        let groups = rt.groups.lock().await;
        let hosted: BTreeSet<String> = groups.keys().cloned().collect();
        let primaries = groups
            .iter()
            .filter(|(_, g)| matches!(g.role, RoleState::Primary { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        (hosted, primaries)
    };
    for change in hosting_changes(&rt.topo, &rt.node, leases, &hosted, &primaries) {
        match change {
            HostingChange::Open(name) => {
                let Some(cfg) = rt.topo.group(&name) else {
                    continue;
                };
                // A replica copy this host kept from an earlier stay is older than the group's
                // stream: it is resynced by merkle diff, never reopened as if current. (Opened
                // as the primary, after a failover that cancelled a move away from this host,
                // its copy is the consistent one and is kept as it is.)
                let rdir = replica_dir(rt, &name);
                let as_replica = leases
                    .iter()
                    .any(|l| l.group == name && l.replica == rt.node.site);
                // Files and fsyncs: off the reactor (the heartbeat loop runs on it).
                let (rt2, cfg) = (rt.clone(), cfg.clone());
                let opened = tokio::task::spawn_blocking(move || {
                    if as_replica && rdir.exists() {
                        let now = SystemClock::new().now_ms().max(0) as u64;
                        crate::meta::write_meta(&rdir.join(RESYNC_MARKER), *b"RSYN", &[now])
                            .map_err(|e| format!("marking an old copy for resync: {e}"))?;
                    }
                    open_group(&rt2.topo, &rt2.node, &rt2.me, &cfg).map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(format!("the opening task failed: {e}")));
                match opened {
                    Ok(g) => {
                        info!(group = %name, "the coordinators place the group on this host: opened");
                        rt.groups.lock().await.insert(name, g);
                    }
                    Err(e) => {
                        warn!(group = %name, "opening a group placed on this host failed: {e}")
                    }
                }
            }
            HostingChange::Close(name) => close_group(rt, &name).await,
        }
    }
}

/// Stops serving group `name` here: its role, its replica registration, its exports and
/// paths. Its files stay on disk (the group's data now lives on another host here; an
/// operator removes them once the move is verified).
async fn close_group(rt: &Arc<NodeRt>, name: &str) {
    let mut groups = rt.groups.lock().await;
    let Some(mut g) = groups.remove(name) else {
        return;
    };
    stop_role(&mut g).await;
    rt.service.remove_group(name);
    lock(&rt.me.replicas).remove(name);
    lock(&rt.me.cells).remove(name);
    lock(&rt.me.peers).remove(name);
    lock(&rt.me.paths).retain(|(group, _), _| group != name);
    lock(&rt.me.wal_pushes).retain(|(group, _), _| group != name);
    for r in &g.cfg.resources {
        if matches!(r.kind, ResourceKind::Volume { .. }) {
            rt.me.exports.remove(&r.name);
        }
    }
    info!(group = %name, "the coordinators place the group on another host at this site: closed here (its files stay)");
}

/// Opens (creating it sparse, or extending it) the image of volume `resource` at `path`,
/// behind the group's lease gate `cell`.
pub(super) fn open_volume(
    resource: &str,
    path: &Path,
    size: u64,
    cell: &Arc<RoleCell>,
) -> Result<GroupVolume> {
    if let Some(dir) = path.parent() {
        crate::durable_dir::create_dir_durable(dir)?;
    }
    let file = FileVolume::create(path, size)
        .map_err(|e| ReplicatorError::Task(format!("opening volume {}: {e}", path.display())))?;
    Ok(GroupVolume {
        resource: resource.to_owned(),
        file,
        role: cell.clone(),
        clock: SystemClock::new(),
    })
}

/// A group's runtime before the coordinators have said anything.
pub(super) fn group_rt(g: &Group, cell: Arc<RoleCell>) -> GroupRt {
    GroupRt {
        cfg: g.clone(),
        role: RoleState::Unknown,
        sources_stop: None,
        scans: Vec::new(),
        cell,
        last_shipped: 0,
        last_tick: Instant::now(),
        throughput: 0.0,
        last_error: String::new(),
        quarantined: String::new(),
        resync: watch::channel(ResyncProgress {
            group: g.name.clone(),
            ..ResyncProgress::default()
        })
        .0,
        pg_feeds: Default::default(),
        pg_streams: Default::default(),
        pg_standbys: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// The example topology plus a second replicator at hcm.
    fn topo() -> Topology {
        let text = format!(
            "{}\n[[nodes]]\nname = \"hcm-rep-2\"\nsite = \"hcm\"\nrole = \"replicator\"\n\
             listen = \"127.0.0.1:7998\"\ndata_dir = \"data/hcm-rep-2\"\n",
            include_str!("../../../examples/two-sites.toml")
        );
        Topology::parse(&text, "three.toml").expect("topology parses")
    }

    fn lease(group: &str, hcm_host: Option<&str>) -> GroupLease {
        GroupLease {
            group: group.into(),
            epoch: 1,
            primary: "hanoi".into(),
            replica: "hcm".into(),
            hosts: hcm_host
                .map(|h| [("hcm".to_string(), h.to_string())].into())
                .unwrap_or_default(),
            ..GroupLease::default()
        }
    }

    #[test]
    fn groups_follow_the_recorded_host_and_a_primary_never_closes() {
        let t = topo();
        let g = t
            .groups
            .iter()
            .find(|g| g.replica == "hcm")
            .unwrap()
            .name
            .clone();
        let placed = t.host_for_group(&g, "hcm").unwrap().name.clone();
        let other = if placed == "hcm-rep-2" {
            "hcm-rep"
        } else {
            "hcm-rep-2"
        };
        let node = |n: &str| t.node(n).unwrap().clone();
        let none = BTreeSet::new();
        let hosted: BTreeSet<String> = [g.clone()].into();
        // No record: the topology's placement.
        assert_eq!(
            hosting_changes(&t, &node(&placed), &[lease(&g, None)], &none, &none),
            vec![HostingChange::Open(g.clone())]
        );
        assert!(hosting_changes(&t, &node(other), &[lease(&g, None)], &none, &none).is_empty());
        // Recorded (or moving) on the other host: it opens, the placed one closes.
        let moved = [lease(&g, Some(other))];
        assert_eq!(
            hosting_changes(&t, &node(other), &moved, &none, &none),
            vec![HostingChange::Open(g.clone())]
        );
        assert_eq!(
            hosting_changes(&t, &node(&placed), &moved, &hosted, &none),
            vec![HostingChange::Close(g.clone())]
        );
        // ... unless it is the group's primary here.
        assert!(hosting_changes(&t, &node(&placed), &moved, &hosted, &hosted).is_empty());
        // A record naming no replicator of the site is ignored; unknown groups too.
        let bogus = [lease(&g, Some("hanoi-rep"))];
        assert!(hosting_changes(&t, &node(&placed), &bogus, &hosted, &none).is_empty());
        assert!(
            hosting_changes(&t, &node(&placed), &[lease("nope", None)], &none, &none).is_empty()
        );
    }
}
