//! What the runner saw while the faults ran ([`Observed`]): the group at the start, the
//! epochs and RPO sampled from every status, when the failure came, which nodes are killed
//! or paused, and the notes for the report. Mostly pure bookkeeping; [`Observed::sample`]
//! asks for a status.

use std::collections::BTreeMap;

use tandem_coordinator::status::{ClusterStatus, GroupStatus};

use super::cluster::Ctx;
use super::load::Load;
use super::topology::group;
use crate::checker::{EpochObservation, RpoSample};

/// The state of a run between its steps.
#[derive(Default)]
pub struct Observed {
    /// The volume group at the start.
    pub g0: GroupStatus,
    /// Nodes killed (by the scenario or by a failpoint) and not restarted.
    pub killed: Vec<String>,
    /// For each `power-cut` fault: whether it dropped anything not durable.
    pub power_cuts: Vec<bool>,
    /// For each `checkpoint` fault: its tag and the blake3 hash of the replica's image then.
    pub checkpoints: Vec<(String, String)>,
    /// Nodes paused (SIGSTOP) and not resumed.
    pub paused: Vec<String>,
    /// Epochs as the client saw them.
    pub epochs: Vec<EpochObservation>,
    /// RPO samples.
    pub rpo_samples: Vec<RpoSample>,
    /// The highest RPO seen.
    pub max_rpo: i64,
    /// The RPO at the last sample before the failure.
    pub rpo_before_failure: i64,
    /// When the first failure came (ms on the recorder's clock).
    pub failure_ms: Option<u64>,
    /// The primary stayed alive through the failure (partition, cut, ordered failover).
    pub primary_outlives_failure: bool,
    /// The faults applied, for the report.
    pub fault_names: Vec<String>,
    /// Notes for the report.
    pub notes: Vec<String>,
    /// The last status seen.
    pub last_st: Option<ClusterStatus>,
    /// When the first primary's lease ended, at the latest.
    pub fence_ms: Option<u64>,
    /// When the first network fault came.
    pub net_from_ms: Option<u64>,
    /// When the network was last healed.
    pub net_until_ms: Option<u64>,
    /// The newest epoch seen.
    pub newest_epoch: u64,
    /// Nodes whose journal tail was torn.
    pub torn: Vec<String>,
    /// Runs ordered and accepted.
    pub orders_accepted: usize,
    /// Failpoints set per node.
    pub failpoints: BTreeMap<String, BTreeMap<String, String>>,
    /// (node, failpoint) pairs armed with a `return` action.
    pub armed: Vec<(String, String)>,
    /// Bytes flipped by bitrot faults.
    pub rotted: usize,
}

fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Observed {
    /// The state at the start: the first status.
    pub fn new(st0: &ClusterStatus) -> Observed {
        let g0 = group(st0).cloned().unwrap_or_default();
        Observed {
            newest_epoch: g0.epoch,
            g0,
            last_st: Some(st0.clone()),
            ..Observed::default()
        }
    }

    /// The first primary.
    pub fn primary0(&self) -> &str {
        &self.g0.primary
    }

    /// The first epoch.
    pub fn epoch0(&self) -> u64 {
        self.g0.epoch
    }

    /// Notes the failure at `now` unless one came already.
    pub fn failed_at(&mut self, now: u64) {
        self.failure_ms.get_or_insert(now);
    }

    /// A node that a failpoint crashed counts as killed from the moment it is seen gone.
    pub fn note_crashes(&mut self, ctx: &Ctx, now: u64) {
        for n in ctx.crashed(&self.killed) {
            self.notes
                .push(format!("{n} crashed at {now} ms (failpoint)"));
            self.killed.push(n);
            self.failed_at(now);
        }
    }

    /// Samples the status: epochs, RPO, the first lease's end; points the writers at the
    /// primary; follows the database group.
    pub fn sample(&mut self, ctx: &Ctx, load: &mut Load) {
        let Some(st) = ctx.status() else {
            return;
        };
        if let Some(g) = group(&st) {
            let now = load.rec.now_ms();
            self.epochs.push(EpochObservation {
                observer: "client".into(),
                epoch: tandem_core::ids::Epoch(g.epoch),
                time_ms: now,
            });
            self.rpo_samples.push(RpoSample {
                time_ms: now,
                rpo_ms: g.rpo_ms,
            });
            self.max_rpo = self.max_rpo.max(g.rpo_ms);
            if self.failure_ms.is_none() {
                self.rpo_before_failure = g.rpo_ms;
            }
            let epoch0 = self.epoch0();
            if g.epoch == epoch0 {
                if let Some(l) = g.lease.as_ref().filter(|l| l.epoch == epoch0) {
                    let end = now as i64 + (l.expires_ms - now_unix_ms());
                    self.fence_ms = Some(self.fence_ms.unwrap_or(0).max(end.max(0) as u64));
                }
            }
            self.newest_epoch = self.newest_epoch.max(g.epoch);
            // The client follows the primary, as an application behind a DNS or VIP switch.
            load.follow(ctx, &g.primary, self.newest_epoch);
        }
        let failed = self.failure_ms.is_some();
        if let Some(d) = load.db.as_mut() {
            d.observe(&st, &load.rec, failed, &self.killed);
        }
        if let Some(p) = load.pg.as_mut() {
            p.observe(&st, failed, &self.killed);
        }
        self.last_st = Some(st);
    }
}
