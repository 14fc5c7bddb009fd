//! PostgreSQL 15 around real tandem processes: throwaway servers run as the `postgres` user,
//! a cluster with a group `pg` whose postgres resource `db` has its primary at `pg/hanoi` and
//! its standby at `pg/hcm`, and the steps the PostgreSQL end-to-end tests share.
#![allow(missing_docs)]

use crate::{dump_logs, free_port, tandem_bin, NodeProc, Topo, TopoOpts};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use tandem_chaos::pg as cpg;
pub use tandem_chaos::pg::{common_settings, PgClient, BIN, PG_USER};

/// Runs a PostgreSQL binary as the `postgres` user.
pub fn as_pg(prog: &str, args: &[&str]) -> Output {
    cpg::as_pg(prog, args).unwrap()
}

pub fn ok(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `ALTER SYSTEM {change}` on the server at `port` (an `archive_command` change), then a
/// configuration reload.
pub fn alter_archive_command(port: u16, change: &str) {
    ok(change, psql(port, &format!("ALTER SYSTEM {change}")));
    ok("reload", psql(port, "SELECT pg_reload_conf()"));
}

/// `tandem failover pg` (its runbook's `ready_command` set to `true`): exit code, stdout, stderr.
pub fn failover_pg(topo: &Topo) -> (i32, String, String) {
    topo.tandem(&[
        "failover",
        "pg",
        "--config",
        topo.config.to_str().unwrap(),
        "--param",
        "ready_command=true",
    ])
}

pub fn psql(port: u16, sql: &str) -> Output {
    cpg::psql(port, sql).unwrap()
}

/// Stops both servers when the test ends, however it ends.
pub struct Servers(pub Vec<PathBuf>);

impl Drop for Servers {
    fn drop(&mut self) {
        for d in &self.0 {
            cpg::stop_immediate(d);
        }
    }
}

pub fn chown_pg(path: &Path) {
    cpg::chown_pg(path).unwrap();
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running cluster (3 coordinators, 2 replicators) with group `pg` (postgres resource `db`:
/// primary at `pg/hanoi`, standby at `pg/hcm`) and the primary server running, archiving with
/// `tandem wal push` every `archive_timeout`.
/// Fields drop in order: the servers stop, then the nodes, then the folder goes.
pub struct Env {
    pub _servers: Servers,
    pub procs: Vec<NodeProc>,
    pub topo: Topo,
    pub root: PathBuf,
    pub primary: PathBuf,
    pub standby: PathBuf,
    pub p1: u16,
    pub p2: u16,
    pub hcm_rep: String,
    pub tandem: PathBuf,
    pub client: PgClient,
}

/// Group `pg` of a status document.
pub fn pg_group(st: &serde_json::Value) -> Option<serde_json::Value> {
    st["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "pg")
        .cloned()
}

pub fn pg_missing() -> bool {
    if !Path::new(BIN).join("postgres").exists() || !Path::new(BIN).join("pgbench").exists() {
        eprintln!(
            "SKIPPED: PostgreSQL 15 binaries not found in {BIN} (apt-get install postgresql-15)"
        );
        return true;
    }
    false
}

pub fn start_server(dir: &Path) {
    cpg::start_server(dir).unwrap();
}

/// `archive_command`: `tandem wal push` as the `postgres` user, with the topology (for the
/// replicators' TLS names and roots) and group `pg`'s wal-client certificate that user can read.
pub fn archive_command(tandem: &Path, rep: &str, client: &PgClient) -> String {
    cpg::archive_command(tandem, rep, "pg", "db", client)
}

/// Issues group `pg`'s `wal-client` certificate and copies it and its key into `dir`, owned
/// by the `postgres` user, and makes the roots readable: an archive_command runs as that
/// user, with no more rights than pushing that group's WAL.
pub fn pg_client(config: &Path, dir: &Path) -> PgClient {
    let topo = tandem_core::config::Topology::load(config).unwrap();
    cpg::pg_client(config, &topo.tls.dir, &topo.tls.peer_ca_path(), dir, "pg").unwrap()
}

/// How [`up_with`] sets the group and the primary up.
pub struct Setup<'a> {
    /// The primary's `archive_timeout`.
    pub archive_timeout: &'a str,
    /// The group's `mode`.
    pub mode: &'a str,
    /// `stream = true` on the resource; with `mode = "sync"` the primary also names
    /// Tandem's slot in `synchronous_standby_names`.
    pub stream: bool,
    /// `auto_failover = true`: the coordinators fail over on their own when hanoi is down.
    pub auto_failover: bool,
}

/// An async group archiving only, with `archive_timeout`.
pub fn up(archive_timeout: &str) -> Env {
    up_with(&Setup {
        archive_timeout,
        mode: "async",
        stream: false,
        auto_failover: false,
    })
}

/// A cluster with group `pg` set up as `s` says, the primary server running.
pub fn up_with(s: &Setup<'_>) -> Env {
    let archive_timeout = s.archive_timeout;
    let topo = Topo::new(TopoOpts::default());
    let root = topo.path().to_owned();
    // The postgres user must reach the data dirs, the archive folder and the tandem binary.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (p1, p2) = (free_port(), free_port());
    let hanoi_rep = topo.addr("hanoi-rep").to_owned();
    let hcm_rep = topo.addr("hcm-rep").to_owned();
    let mut cfg = std::fs::read_to_string(&topo.config).unwrap();
    cfg.push_str(&format!(
        "\n[[groups]]\nname = \"pg\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\nmode = \"{}\"\nrpo_target = \"10s\"\nrto_target = \"1m\"\nauto_failover = {}\n\n[[groups.resources]]\nname = \"db\"\nkind = \"postgres\"\ndata_dir = \"pg/hanoi\"\nreplica_data_dir = \"pg/hcm\"\nport = {p1}\nreplica_port = {p2}\nbin_dir = \"{BIN}\"\n{}",
        s.mode,
        s.auto_failover,
        if s.stream { "stream = true\n" } else { "" }
    ));
    std::fs::write(&topo.config, cfg).unwrap();
    let pg = root.join("pg");
    std::fs::create_dir_all(&pg).unwrap();
    chown_pg(&pg);
    let client = pg_client(&topo.config, &pg.join("client"));
    let (primary, standby) = (pg.join("hanoi"), pg.join("hcm"));
    let _servers = Servers(vec![primary.clone(), standby.clone()]);

    // 1. The cluster: three coordinators, a replicator per site.
    let mut procs: Vec<NodeProc> = topo
        .coordinators
        .iter()
        .map(|n| NodeProc::start(&topo, n))
        .collect();
    procs.push(NodeProc::start(&topo, "hanoi-rep"));
    procs.push(NodeProc::start(&topo, "hcm-rep"));
    // Before PostgreSQL exists the group is not protected: its database's feed is absent.
    topo.wait_status(
        &[],
        Duration::from_secs(20),
        "pg leased, degraded: no cluster",
        |st| {
            let g = pg_group(st)?;
            (g["lease"]["status"] == "active"
                && g["state"] == "degraded"
                && g["resources"][0]["health"]["state"] == "absent")
                .then_some(())
        },
    );

    // 2. The primary: archive_mode on, every completed segment pushed through tandem.
    // A copy inside the (0755) test folder: the checkout holding target/ may not be
    // reachable by the postgres user (a 0700 temporary clone).
    let tandem = root.join("tandem");
    std::fs::copy(tandem_bin(), &tandem).unwrap();
    std::fs::set_permissions(&tandem, std::fs::Permissions::from_mode(0o755)).unwrap();
    cpg::initdb(&primary).unwrap();
    let common = common_settings(&pg, archive_timeout);
    let conf = primary.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "{common}port = {p1}\n{}",
        archive_command(&tandem, &hanoi_rep, &client)
    ));
    if s.stream && s.mode == "sync" {
        text.push_str("synchronous_standby_names = 'tandem_pg_db'\n");
    }
    std::fs::write(&conf, text).unwrap();
    start_server(&primary);
    // 3. Now the database is protected: its WAL is archived.
    topo.wait_status(&[], Duration::from_secs(20), "pg protected", |st| {
        let g = pg_group(st)?;
        let feed = if s.stream { "streaming" } else { "archiving" };
        (g["state"] == "protected" && g["resources"][0]["health"]["state"] == feed).then_some(())
    });
    Env {
        _servers,
        procs,
        topo,
        root,
        primary,
        standby,
        p1,
        p2,
        hcm_rep,
        tandem,
        client,
    }
}

pub const FACTS: &str = "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)";

/// The steps of the switchover test, one per numbered step.
impl Env {
    /// Step 3: base-backs up the primary into a standby restoring from hcm's archive folder
    /// and starts it; returns that folder.
    pub fn start_standby(&self) -> PathBuf {
        let Env {
            ref root,
            ref standby,
            p1,
            p2,
            ref hcm_rep,
            ref tandem,
            ref client,
            ..
        } = *self;
        base_backup(p1, standby);
        let archive = root.join("data/hcm-rep/archive/pg/db");
        let conf = standby.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&format!(
            "port = {p2}\n{}{}",
            archive_command(tandem, hcm_rep, client),
            cpg::restore_command(tandem, &archive)
        ));
        std::fs::write(&conf, text).unwrap();
        std::fs::write(standby.join("standby.signal"), b"").unwrap();
        chown_pg(standby);
        start_server(standby);
        archive
    }

    /// Step 4: pgbench init and a 3 s run against the primary.
    pub fn run_pgbench(&self) {
        let p1 = self.p1;
        let bench = |args: &[&str]| {
            let mut a = vec!["-h", "127.0.0.1"];
            let port = p1.to_string();
            a.extend(["-p", &port]);
            a.extend(args);
            a.push("postgres");
            ok("pgbench", as_pg("pgbench", &a))
        };
        bench(&["-i", "-s", "1", "-q"]);
        bench(&["-c", "2", "-j", "1", "-T", "3", "-n"]);
    }

    /// Step 4b: `tandem verify` says EQUAL, then DIFFERENT after one more row on the primary;
    /// returns the primary's facts and its pgbench row count.
    pub fn verify_then_commit_one_more_row(&self) -> (String, u64) {
        let (topo, p1) = (&self.topo, self.p1);
        let verify = |secs: &str| {
            topo.tandem(&[
                "verify",
                "pg",
                "--config",
                topo.config.to_str().unwrap(),
                "--query",
                FACTS,
                "--timeout-secs",
                secs,
            ])
        };
        let (code, out, err) = verify("20");
        assert_eq!(code, 0, "verify failed:\n{out}\n{err}");
        assert!(out.contains("EQUAL"), "{out}");
        eprint!("{out}");
        ok(
            "one more row",
            psql(
                p1,
                "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 5, now())",
            ),
        );
        let (code, out, err) = verify("0");
        assert_eq!(
            code, 1,
            "verify should see the unarchived row:\n{out}\n{err}"
        );
        assert!(out.contains("DIFFERENT"), "{out}");
        let committed = ok("count on the primary", psql(p1, FACTS));
        let rows: u64 = committed.split(' ').next().unwrap().parse().unwrap();
        assert!(rows > 50, "pgbench committed only {rows} transactions");
        (committed, rows)
    }

    /// Waits for the standby to be in recovery with WAL replayed from a non-empty `archive`.
    pub fn wait_for_the_standby_to_replay(&self, archive: &Path) {
        let p2 = self.p2;
        wait_until(
            "the standby to replay archived WAL",
            Duration::from_secs(20),
            || {
                let o = psql(
                    p2,
                    "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() IS NOT NULL",
                );
                (o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "t")
                    .then(String::new)
            },
        );
        assert!(archive.read_dir().unwrap().count() > 0);
    }

    /// Step 5: `tandem switchover pg` with a drain that switches WAL and stops the primary.
    pub fn switch_over(&self) {
        self.switch_over_stopping(&self.primary, self.p1);
    }

    /// `tandem switchover pg` whose drain switches WAL and stops the server at `dir` (`port`),
    /// the current primary.
    pub fn switch_over_stopping(&self, dir: &Path, port: u16) {
        let Env {
            ref topo,
            ref standby,
            ..
        } = *self;
        let drain = format!(
            "runuser -u {PG_USER} -- {BIN}/psql -X -h 127.0.0.1 -p {port} -d postgres -c 'SELECT pg_switch_wal()' && runuser -u {PG_USER} -- {BIN}/pg_ctl -D {} -m fast -w stop",
            dir.display()
        );
        let (code, out, err) = topo.tandem(&[
            "switchover",
            "pg",
            "--config",
            topo.config.to_str().unwrap(),
            "--param",
            &format!("drain_command={drain}"),
        ]);
        if code != 0 {
            dump_logs(topo);
            eprintln!(
                "{}",
                std::fs::read_to_string(standby.with_extension("log")).unwrap_or_default()
            );
        }
        assert_eq!(code, 0, "switchover failed:\n{out}\n{err}");
        eprintln!("{out}");
    }

    /// Step 6: the promoted standby left recovery and holds the `committed` facts.
    pub fn check_the_promoted_standby(&self, committed: &str) {
        let p2 = self.p2;
        let got = ok("count on the promoted standby", psql(p2, FACTS));
        assert_eq!(
            got, committed,
            "promoted standby differs from the committed transactions"
        );
        assert_eq!(
            ok("recovery state", psql(p2, "SELECT pg_is_in_recovery()")).trim(),
            "f"
        );
    }

    /// Step 7: a write on the new primary brings its timeline history file to hanoi.
    pub fn check_replication_runs_back(&self) {
        ok(
            "write on the new primary",
            psql(self.p2, "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 7, now()); SELECT pg_switch_wal();"),
        );
        let back = self
            .root
            .join("data/hanoi-rep/archive/pg/db/00000002.history");
        wait_until(
            "the new timeline's history at hanoi",
            Duration::from_secs(20),
            || back.exists().then(String::new),
        );
    }
}

/// `pg_basebackup` of the server on `port` into `dest` (as the `postgres` user).
pub fn base_backup(port: u16, dest: &Path) {
    cpg::base_backup(port, dest).unwrap();
}

/// `pgbench -i -s 1` against the server on `port`.
pub fn pgbench_init(port: u16) {
    cpg::pgbench_init(port).unwrap();
}
