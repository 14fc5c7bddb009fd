//! The writers of the hosts workload: one NBD block writer per group (the harness's own
//! [`Writer`]), each with its own history (every group has its own volume) on one shared
//! clock, each following its group's primary host as an application behind a DNS or VIP
//! switch would. I/O: NBD through the writers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tandem_coordinator::status::{ClusterStatus, GroupStatus};

use super::topology::resource_name;
use crate::history::Recorder;
use crate::runner::cluster::Ctx;
use crate::runner::writer::Writer;
use crate::scenario::Scenario;
use crate::workload::WorkloadConfig;

/// Writer tasks per group: two, so one slow write does not by itself stop a group's writes.
const TASKS_PER_GROUP: u64 = 2;

/// One group's writer and history.
pub struct GroupLoad {
    /// The group.
    pub group: String,
    /// Its history.
    pub rec: Arc<Recorder>,
    /// Its writer.
    pub writer: Arc<Writer>,
}

/// The writers of a run.
pub struct HostsLoad {
    /// The clock every history counts from.
    origin: Instant,
    /// One writer per group, in group order.
    pub groups: Vec<GroupLoad>,
    /// When the writers started (ms on the shared clock).
    pub started_ms: u64,
}

/// The NBD address of replicator host `name`.
pub fn nbd_of_host(ctx: &Ctx, name: &str) -> Option<SocketAddr> {
    ctx.topo
        .node(name)
        .and_then(|n| n.nbd_listen.as_deref())
        .and_then(|a| a.parse().ok())
}

/// Group `name` in a status document.
pub fn group_in<'a>(st: &'a ClusterStatus, name: &str) -> Option<&'a GroupStatus> {
    st.groups.iter().find(|g| g.name == name)
}

impl HostsLoad {
    /// Starts a writer on every group of `names` at the primary host `st0` names, with
    /// `volume_bytes` volumes; writer `k` gets its own seed derived from `seed`.
    ///
    /// # Errors
    /// A group is missing from `st0` or its primary host has no NBD address.
    pub fn start(
        ctx: &Ctx,
        s: &Scenario,
        st0: &ClusterStatus,
        names: &[String],
        seed: u64,
        volume_bytes: u64,
    ) -> Result<HostsLoad> {
        let origin = Instant::now();
        let mut groups = Vec::new();
        for (k, name) in names.iter().enumerate() {
            let g = group_in(st0, name).with_context(|| format!("group {name} not in status"))?;
            let addr = nbd_of_host(ctx, &g.primary_host)
                .with_context(|| format!("{name}: primary host {:?} has no NBD", g.primary_host))?;
            let cfg = WorkloadConfig {
                seed: seed ^ (k as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                blocks_per_write: s.blocks_per_write.unwrap_or(1),
                op_timeout: Duration::from_secs(3),
                ..WorkloadConfig::new(seed, volume_bytes)
            };
            let rec = Arc::new(Recorder::new(origin));
            let writer = Writer::new(addr, &resource_name(name), cfg, rec.clone());
            writer.retarget_labeled(addr, &g.primary, g.epoch);
            writer.set_incompressible(s.incompressible);
            groups.push(GroupLoad {
                group: name.clone(),
                rec,
                writer,
            });
        }
        let started_ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(0);
        for g in &groups {
            g.writer.start(&ctx.rt, TASKS_PER_GROUP);
        }
        Ok(HostsLoad {
            origin,
            groups,
            started_ms,
        })
    }

    /// Milliseconds on the histories' clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Points each writer at the primary host `st` names for its group, labelled with the
    /// primary site and the group's epoch.
    pub fn follow(&self, ctx: &Ctx, st: &ClusterStatus) {
        for l in &self.groups {
            let Some(g) = group_in(st, &l.group) else {
                continue;
            };
            if let Some(addr) = nbd_of_host(ctx, &g.primary_host) {
                l.writer.retarget_labeled(addr, &g.primary, g.epoch);
            }
        }
    }

    /// Stops every writer (each waits for its writes in flight, bounded); returns when they
    /// were told to stop, the end of the judged window.
    pub fn stop(&self, ctx: &Ctx) -> u64 {
        let end = self.now_ms();
        for l in &self.groups {
            l.writer.stop(&ctx.rt);
        }
        end
    }

    /// Writes acknowledged, all groups.
    pub fn acked(&self) -> u64 {
        self.groups
            .iter()
            .map(|l| l.writer.ok.load(Ordering::SeqCst))
            .sum()
    }
}
