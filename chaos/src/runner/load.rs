//! The workload of a run: the block writer that follows the primary, the clients pinned to
//! each data site (split-brain scenarios), the database writer, and the one recorder of
//! their history. I/O: NBD and SQLite through the writers.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_coordinator::status::{ClusterStatus, GroupStatus};

use super::cluster::Ctx;
use super::dbrun::DbRun;
use super::pgrun::PgRun;
use super::writer::Writer;
use crate::history::Recorder;
use crate::scenario::Scenario;
use crate::workload::WorkloadConfig;

/// Size of the volume the writers write to, in bytes.
const VOLUME_BYTES: u64 = 32 << 20;

/// The writers of a run.
pub struct Load {
    /// The one recorder of every writer's operations.
    pub rec: Arc<Recorder>,
    /// The writer that follows the primary, as an application behind a DNS or VIP switch.
    pub writer: Arc<Writer>,
    /// Clients pinned to each data site (they do not follow the primary).
    pub pinned: Vec<(String, Arc<Writer>)>,
    /// The database workload, when the scenario has one.
    pub db: Option<DbRun>,
    /// The PostgreSQL workload, when the scenario has one.
    pub pg: Option<PgRun>,
}

impl Load {
    /// Starts the writers of scenario `s` against the group `g0` of the first status (and
    /// pgbench on `pg`, prepared already).
    ///
    /// # Errors
    /// pgbench could not be started.
    pub fn start(
        ctx: &Ctx,
        s: &Scenario,
        st0: &ClusterStatus,
        g0: &GroupStatus,
        seed: u64,
        dir: &Path,
        mut pg: Option<PgRun>,
    ) -> anyhow::Result<Load> {
        let cfg = WorkloadConfig {
            blocks_per_write: s.blocks_per_write.unwrap_or(4),
            op_timeout: Duration::from_secs(3),
            ..WorkloadConfig::new(seed, VOLUME_BYTES)
        };
        let rec = Arc::new(Recorder::new(Instant::now()));
        let primary0 = &g0.primary;
        let writer = Writer::new(ctx.nbd_of_site(primary0), "disk0", cfg.clone(), rec.clone());
        writer.retarget_labeled(ctx.nbd_of_site(primary0), primary0, g0.epoch);
        writer.set_incompressible(s.incompressible);
        writer.start(&ctx.rt, 4);
        // Clients pinned to each data site (they do not follow the primary): what each site
        // acknowledges, labelled with the newest epoch known, for the split-brain checkers.
        let mut pinned: Vec<(String, Arc<Writer>)> = Vec::new();
        if s.clients_at_every_site {
            for (k, site) in [g0.primary.clone(), g0.replica.clone()].iter().enumerate() {
                let k = k as u64 + 1;
                let c = WorkloadConfig {
                    seed: seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ..cfg.clone()
                };
                let w = Writer::new(ctx.nbd_of_site(site), "disk0", c, rec.clone());
                w.retarget_labeled(ctx.nbd_of_site(site), site, g0.epoch);
                w.start_at(&ctx.rt, 1, 100_000 * (k + 1) * 10);
                pinned.push((site.clone(), w));
            }
        }
        let db = s
            .database
            .then(|| DbRun::start(st0, dir.to_path_buf(), &rec));
        if let Some(p) = pg.as_mut() {
            // pgbench for the whole run and a margin; the loss of the site ends it sooner.
            p.start(s.duration.as_millis().div_ceil(1000) as u32 + 30)?;
        }
        Ok(Load {
            rec,
            writer,
            pinned,
            db,
            pg,
        })
    }

    /// Points the writers at what the newest status says: the following writer at the
    /// primary, the pinned ones at their own site, all labelled with `epoch`.
    pub fn follow(&self, ctx: &Ctx, primary: &str, epoch: u64) {
        self.writer
            .retarget_labeled(ctx.nbd_of_site(primary), primary, epoch);
        for (site, w) in &self.pinned {
            w.retarget_labeled(ctx.nbd_of_site(site), site, epoch);
        }
    }

    /// Stops every writer at once (the run could not recover).
    pub fn abandon(&mut self, ctx: &Ctx) {
        for (_, w) in &self.pinned {
            w.stop(&ctx.rt);
        }
        self.writer.stop(&ctx.rt);
        if let Some(d) = self.db.as_mut() {
            let _ = d.writer.stop();
        }
    }

    /// Writes acknowledged to the block writers.
    pub fn acked(&self) -> u64 {
        self.writer.ok.load(Ordering::SeqCst)
            + self
                .pinned
                .iter()
                .map(|(_, w)| w.ok.load(Ordering::SeqCst))
                .sum::<u64>()
    }
}
