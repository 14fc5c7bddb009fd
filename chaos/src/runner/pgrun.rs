//! The PostgreSQL workload of a scenario (`postgres = true`): a primary server at the group's
//! primary site streaming through Tandem, a standby at the replica site restoring from
//! Tandem's archive folder, pgbench with per-transaction logs at the primary; what the runner
//! saw of group `pg` while faults ran (the RPO status showed, the loss, the promoted server's
//! rows); and at recovery the rejoin of the old primary with `tandem wal rejoin`. I/O:
//! PostgreSQL processes, files, status.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_coordinator::status::{ClusterStatus, GroupStatus};

use super::cluster::Ctx;
use super::topology::{pg_group, protected, PG_GROUP, PG_RESOURCE};
use crate::pg;

/// pgbench clients (one thread): enough commits in flight to lose some, light on 2 cores.
pub const CLIENTS: u32 = 2;
/// The query whose answer must be equal on two servers holding the same transactions:
/// transactions, their summed deltas, the accounts' summed balances.
const FACTS: &str = "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)";
/// Rows of `pgbench_history`: one per pgbench transaction.
const ROWS: &str = "SELECT count(*) FROM pgbench_history";

fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The servers of a run, stopped (`-m immediate`) when it ends however it ends.
struct Servers(Vec<PathBuf>);

impl Drop for Servers {
    fn drop(&mut self) {
        for d in &self.0 {
            pg::stop_immediate(d);
        }
    }
}

/// A pgbench run in the background and the folder of its logs.
struct Bench {
    child: Child,
    logs: PathBuf,
}

impl Bench {
    /// Waits (at most `within`) for pgbench to end on its own (it writes its logs out as it
    /// exits); kills it after that.
    fn finish(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PostgreSQL workload of a scenario and what the runner saw of group `pg`.
pub struct PgRun {
    /// Each site's data directory and port.
    sites: BTreeMap<String, (PathBuf, u16)>,
    /// The copy of the tandem binary the `postgres` user runs.
    tandem: PathBuf,
    /// The topology file.
    config: PathBuf,
    /// The first primary site.
    pub site0: String,
    bench: Option<Bench>,
    after: Option<Bench>,
    /// The RPO status last showed while the group streamed, and when (unix ms).
    pub rpo_shown: Option<(i64, i64)>,
    /// The highest RPO seen.
    pub max_rpo: i64,
    /// When the first primary's server was killed (unix ms).
    pub loss_ms: Option<i64>,
    /// At a failover: the new primary site and the rows its server held when it first
    /// answered out of recovery, before any new write.
    pub promoted: Option<(String, Result<u64>)>,
    /// Commit times (unix ms) pgbench logged at the first primary, read once it ended.
    pub commits: Vec<i64>,
    /// `tandem wal rejoin` of the old primary: its output, or why it failed.
    pub rejoin: Option<Result<String>>,
    /// After the rejoin: both servers' facts once equal, or why they never were.
    pub rejoined_facts: Option<Result<String>>,
    _servers: Servers,
}

impl PgRun {
    /// Sets the group's servers up once the cluster runs: the primary (streaming through
    /// Tandem, archiving through `tandem wal push`; sync: Tandem's slot in
    /// `synchronous_standby_names`), pgbench's tables, and a standby of it at the replica
    /// site restoring from that site's archive folder.
    ///
    /// # Errors
    /// PostgreSQL 15 is not installed, or a server could not be made or started.
    pub fn prepare(ctx: &Ctx, mode: &str) -> Result<PgRun> {
        if !pg::installed() {
            bail!(
                "postgres = true needs PostgreSQL 15 in {} (apt-get install postgresql-15)",
                pg::BIN
            );
        }
        let group = ctx
            .topo
            .groups
            .iter()
            .find(|g| g.name == PG_GROUP)
            .context("no group pg in the scenario's topology")?;
        let (site0, site1) = (group.primary.clone(), group.replica.clone());
        let r = group
            .resources
            .iter()
            .find(|r| r.name == PG_RESOURCE)
            .context("no resource db in group pg")?;
        let tandem_core::config::ResourceKind::Postgres {
            data_dir,
            replica_data_dir,
            port,
            replica_port,
            ..
        } = &r.kind
        else {
            bail!("resource pg/db is not a postgres resource");
        };
        let (d0, d1) = (data_dir.clone(), replica_data_dir.clone());
        let servers = Servers(vec![d0.clone(), d1.clone()]);
        let root = d0.parent().context("the data directory has no parent")?;
        std::fs::create_dir_all(root).with_context(|| format!("making {}", root.display()))?;
        pg::open_path_to(root)?;
        pg::chown_pg(root)?;
        let tandem = root.join("tandem");
        let exe = std::env::current_exe().context("finding the tandem binary")?;
        std::fs::copy(&exe, &tandem).with_context(|| format!("copying {}", exe.display()))?;
        let client = pg::pg_client(
            &ctx.config,
            &ctx.topo.tls.dir,
            &ctx.topo.tls.peer_ca_path(),
            &root.join("client"),
            PG_GROUP,
        )?;
        let rep = |site: &str| -> Result<(String, PathBuf)> {
            let n = ctx
                .topo
                .node(&format!("{site}-rep"))
                .with_context(|| format!("no replicator {site}-rep"))?;
            Ok((n.listen.clone(), n.data_dir.join("archive/pg/db")))
        };
        let push = |site: &str| -> Result<String> {
            let (addr, _) = rep(site)?;
            Ok(pg::archive_command(
                &tandem,
                &addr,
                PG_GROUP,
                PG_RESOURCE,
                &client,
            ))
        };
        // The primary.
        pg::initdb(&d0)?;
        let common = pg::common_settings(root, "3600s");
        let mut conf = format!("{common}port = {port}\n{}", push(&site0)?);
        if mode == "sync" {
            let slot = tandem_core::config::PgStream::slot_name(PG_GROUP, PG_RESOURCE);
            conf.push_str(&format!("synchronous_standby_names = '{slot}'\n"));
        }
        pg::append_conf(&d0, &conf)?;
        pg::start_server(&d0)?;
        // Sync: these commits wait for Tandem's stream, so it runs end to end from here.
        pg::pgbench_init(*port)?;
        // The standby at the replica site.
        pg::base_backup(*port, &d1)?;
        let (_, archive) = rep(&site1)?;
        pg::append_conf(
            &d1,
            &format!(
                "port = {replica_port}\n{}{}",
                push(&site1)?,
                pg::restore_command(&tandem, &archive)
            ),
        )?;
        std::fs::write(d1.join("standby.signal"), b"")
            .with_context(|| format!("writing {}/standby.signal", d1.display()))?;
        pg::chown_pg(&d1)?;
        pg::start_server(&d1)?;
        let mut sites = BTreeMap::new();
        sites.insert(site0.clone(), (d0, *port));
        sites.insert(site1, (d1, *replica_port));
        Ok(PgRun {
            sites,
            tandem,
            config: ctx.config.clone(),
            site0,
            bench: None,
            after: None,
            rpo_shown: None,
            max_rpo: 0,
            loss_ms: None,
            promoted: None,
            commits: Vec::new(),
            rejoin: None,
            rejoined_facts: None,
            _servers: servers,
        })
    }

    fn port(&self, site: &str) -> Option<u16> {
        self.sites.get(site).map(|(_, p)| *p)
    }

    fn logs(&self, name: &str) -> PathBuf {
        self.tandem.with_file_name(name)
    }

    /// Starts pgbench at the first primary (for up to `secs`; the loss of the site ends it).
    ///
    /// # Errors
    /// pgbench could not be started.
    pub fn start(&mut self, secs: u32) -> Result<()> {
        let port = self
            .port(&self.site0)
            .context("no port for the first primary")?;
        let logs = self.logs("bench-logs");
        self.bench = Some(Bench {
            child: pg::pgbench_logged(port, (CLIENTS, 1), &logs, secs)?,
            logs,
        });
        Ok(())
    }

    /// Follows group `pg`: the RPO status shows while it streams (before the failure); after
    /// it, the first answer of the promoted server out of recovery (its rows counted before
    /// anything new is written), then pgbench moves to it, as the application would.
    pub fn observe(&mut self, st: &ClusterStatus, failed: bool, killed: &[String]) {
        let Some(g) = pg_group(st) else {
            return;
        };
        self.max_rpo = self.max_rpo.max(g.rpo_ms);
        if !failed && streaming(g) {
            self.rpo_shown = Some((g.rpo_ms, now_unix_ms()));
        }
        if self.promoted.is_some() || g.primary == self.site0 {
            return;
        }
        let holder = format!("{}-rep", g.primary);
        let leased = g
            .lease
            .as_ref()
            .is_some_and(|l| l.status == "active" && l.holder == holder && l.epoch == g.epoch);
        let Some(port) = self.port(&g.primary) else {
            return;
        };
        if !leased || killed.contains(&holder) {
            return;
        }
        if pg::query(port, "SELECT pg_is_in_recovery()")
            .ok()
            .as_deref()
            != Some("f")
        {
            return;
        }
        self.promoted = Some((g.primary.clone(), pg::count(port, ROWS)));
        let logs = self.logs("bench-logs-after");
        match pg::pgbench_logged(port, (CLIENTS, 1), &logs, 4) {
            Ok(child) => self.after = Some(Bench { child, logs }),
            Err(e) => {
                self.promoted = Some((
                    g.primary.clone(),
                    Err(e.context("pgbench at the new primary")),
                ))
            }
        }
    }

    /// The primary site is lost with its replicator: its server is killed -9 at the same
    /// moment (the application's pgbench loses its connections and ends).
    pub fn before_kill(&mut self, nodes: &[String]) -> Result<()> {
        if self.loss_ms.is_some() || !nodes.contains(&format!("{}-rep", self.site0)) {
            return Ok(());
        }
        self.loss_ms = Some(now_unix_ms());
        let dir = self.sites.get(&self.site0).map(|(d, _)| d.clone());
        pg::kill9_server(&dir.context("no data directory for the first primary")?)
    }

    /// After the timeline: reads what pgbench saw committed at the first primary; with
    /// `rejoin`, turns the old primary into a standby of the new one with `tandem wal
    /// rejoin`, waits until the group is protected again, writes at the new primary and
    /// waits until the standby holds the same facts.
    pub fn recover(&mut self, ctx: &Ctx, rejoin: bool) {
        if let Some(mut b) = self.bench.take() {
            b.finish(Duration::from_secs(30));
            self.commits = pg::logged_commit_times(&b.logs);
        }
        if let Some(mut b) = self.after.take() {
            b.finish(Duration::from_secs(30));
        }
        if !rejoin {
            return;
        }
        let Some(new_primary) = self.promoted.as_ref().map(|(s, _)| s.clone()) else {
            self.rejoin = Some(Err(anyhow::anyhow!("no promoted server to rejoin")));
            return;
        };
        let r = self.run_rejoin();
        let ok = r.is_ok();
        self.rejoin = Some(r);
        if ok {
            self.rejoined_facts = Some(self.replay_check(ctx, &new_primary));
        }
    }

    fn run_rejoin(&self) -> Result<String> {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["wal", "rejoin", PG_GROUP, "--site", &self.site0, "--config"])
            .arg(&self.config)
            .arg("--tandem-bin")
            .arg(&self.tandem)
            .env("TANDEM_LOG", "warn")
            .output()
            .context("running tandem wal rejoin")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        if !out.status.success() {
            bail!("tandem wal rejoin failed ({}): {}", out.status, text.trim());
        }
        Ok(text)
    }

    /// Group `pg` protected again, a write at `new_primary`, and the rejoined standby holding
    /// the same facts (60 s each).
    fn replay_check(&self, ctx: &Ctx, new_primary: &str) -> Result<String> {
        ctx.wait("recovery: pg protected after the rejoin", 90, &|st| {
            protected(pg_group(st)) && pg_group(st).is_some_and(streaming)
        })?;
        let p_new = self
            .port(new_primary)
            .context("no port for the new primary")?;
        let p_old = self
            .port(&self.site0)
            .context("no port for the old primary")?;
        pg::query(
            p_new,
            "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) SELECT 1, 1, 1, 9, now() FROM generate_series(1, 100)",
        )?;
        let want = pg::query(p_new, FACTS)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = pg::query(p_old, FACTS);
            match got {
                Ok(g) if g == want => return Ok(want),
                _ if Instant::now() > deadline => {
                    bail!("the rejoined standby holds {got:?}; the new primary {want:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// The notes of the workload in the report.
    pub fn notes(&self) -> Vec<String> {
        let mut n = vec![format!(
            "pg: pgbench saw {} transactions committed at {}; max RPO {} ms; status last showed {} while streaming",
            self.commits.len(),
            self.site0,
            self.max_rpo,
            match (self.rpo_shown, self.loss_ms) {
                (Some((r, at)), Some(l)) => format!("{r} ms, {} ms before the loss", l - at),
                (Some((r, _)), None) => format!("{r} ms"),
                (None, _) => "nothing".into(),
            }
        )];
        match &self.promoted {
            Some((site, Ok(rows))) => n.push(format!(
                "pg: the promoted server at {site} held {rows} transactions"
            )),
            Some((site, Err(e))) => n.push(format!("pg: the promoted server at {site}: {e:#}")),
            None => n.push("pg: no promoted server answered".into()),
        }
        if let Some(Ok(out)) = &self.rejoin {
            if let Some(l) = out.lines().find(|l| l.contains("pg_rewind")) {
                n.push(format!("pg: rejoin: {}", l.trim()));
            }
        }
        n
    }
}

/// The group's PostgreSQL resource streams.
fn streaming(g: &GroupStatus) -> bool {
    g.resources
        .iter()
        .any(|r| r.health.as_ref().is_some_and(|h| h.state == "streaming"))
}
