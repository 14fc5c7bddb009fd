//! PostgreSQL replication through real processes: a PostgreSQL 15 primary archives its WAL with
//! `tandem wal push` through the group's stream, a standby restores it with `tandem wal fetch`,
//! pgbench writes, and the stock switchover runbook promotes the standby, which then holds
//! every committed transaction.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_tests::pg::*;
use tandem_tests::{dump_logs, free_port, tandem_bin, NodeProc, Topo, TopoOpts};

#[test]
fn pgbench_commits_survive_a_switchover_to_the_wal_restored_standby() {
    if pg_missing() {
        return;
    }
    let t0 = Instant::now();
    let env = up("1s");

    // 3. The standby: a base backup in recovery, fed only from the replica's archive folder.
    let archive = env.start_standby();
    // 4. Load: pgbench init and a short run.
    env.run_pgbench();
    // 4b. `tandem verify` with a query: equal once the standby replayed the archive; a row
    //     committed a moment ago (not archived yet) makes it differ.
    let (committed, rows) = env.verify_then_commit_one_more_row();
    // The standby replays what the archive holds while replication continues.
    env.wait_for_the_standby_to_replay(&archive);
    // 5. Switchover through the stock runbook: the drain switches to a new WAL segment (so
    //    the last commits are archived) and stops the primary; catch-up, fence, promote
    //    (pg_ctl promote on the standby), reverse, and the postgres readiness probe follow.
    env.switch_over();
    // 6. The promoted standby holds every committed transaction.
    env.check_the_promoted_standby(&committed);
    // 7. Replication runs the other way: the new primary's WAL (its timeline history file
    //    first) reaches the old primary's site through hcm's replicator.
    env.check_replication_runs_back();
    eprintln!(
        "{rows} pgbench transactions, switchover ok, test took {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(env.procs.len(), 5);
}

/// WAL that PostgreSQL wrote and could not archive counts in the RPO status shows, and a broken
/// `archive_command` stalls the database's feed: the group is not protected until archiving
/// works again.
#[test]
fn unarchived_wal_counts_in_the_rpo_and_a_broken_archive_command_degrades_the_group() {
    if pg_missing() {
        return;
    }
    let env = up("1s");
    let (topo, p1) = (&env.topo, env.p1);
    // 1. archive_command broken, then commits and a completed segment that cannot be archived.
    alter_archive_command(p1, "SET archive_command = '/bin/false'");
    ok(
        "commits",
        psql(
            p1,
            "CREATE TABLE t(x int); INSERT INTO t SELECT generate_series(1, 10000); SELECT pg_switch_wal(); INSERT INTO t VALUES (1)",
        ),
    );
    let committed = Instant::now();
    // 2. The RPO grows from those commits (at least their age, less a margin); the
    //    completed segment waits for archiving. (Margin: a heartbeat, the status call, load.)
    let rpo = topo.wait_status(&[], Duration::from_secs(15), "RPO over 2 s", |st| {
        let g = pg_group(st)?;
        let rpo = g["rpo_ms"].as_i64()?;
        let age = committed.elapsed().as_millis() as i64;
        assert!(
            rpo >= age - 2_500,
            "status RPO {rpo} ms while the unarchived commits are {age} ms old: {g}"
        );
        (rpo > 2_000 && g["resources"][0]["health"]["unarchived_segments"].as_u64()? >= 1)
            .then_some(rpo)
    });
    eprintln!("status RPO {rpo} ms with archive_command failing");
    // 3. The feed stalls: the group is degraded and says why.
    topo.wait_status(&[], Duration::from_secs(15), "feed stalled", |st| {
        let g = pg_group(st)?;
        (g["state"] == "degraded"
            && g["resources"][0]["health"]["state"] == "stalled"
            && g["reason"].as_str()?.contains("archive_command failing"))
        .then_some(())
    });
    // 4. archive_command repaired: everything reaches the replica, protected with RPO 0.
    alter_archive_command(p1, "RESET archive_command");
    topo.wait_status(&[], Duration::from_secs(30), "protected, RPO 0", |st| {
        let g = pg_group(st)?;
        (g["state"] == "protected"
            && g["rpo_ms"] == 0
            && g["resources"][0]["health"]["state"] == "archiving")
            .then_some(())
    });
}

/// An unplanned failover records the WAL PostgreSQL had not archived in its data-loss window:
/// `last_failover_loss_ms` is the RPO status showed, not 0.
#[test]
fn a_failover_records_the_unarchived_wal_in_its_data_loss_window() {
    if pg_missing() {
        return;
    }
    let mut env = up("1s");
    env.start_standby();
    let (p1, primary) = (env.p1, env.primary.clone());
    // 1. archive_command broken, then commits that never reach the replica site.
    alter_archive_command(p1, "SET archive_command = '/bin/false'");
    ok(
        "commits",
        psql(
            p1,
            "CREATE TABLE lost(x int); INSERT INTO lost SELECT generate_series(1, 1000)",
        ),
    );
    let shown = env
        .topo
        .wait_status(&[], Duration::from_secs(15), "RPO over 2 s", |st| {
            let rpo = pg_group(st)?["rpo_ms"].as_i64()?;
            (rpo > 2_000).then_some(rpo)
        });
    // 2. hanoi is lost: its replicator and PostgreSQL die.
    let hanoi = env
        .procs
        .iter()
        .position(|p| p.name == "hanoi-rep")
        .unwrap();
    env.procs[hanoi].kill9();
    ok(
        "stop the primary",
        as_pg(
            "pg_ctl",
            &[
                "-D",
                primary.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        ),
    );
    // 3. Failover to hcm: the recorded window is at least what status showed before the loss.
    let topo = &env.topo;
    let (code, out, err) = failover_pg(topo);
    if code != 0 {
        dump_logs(topo);
    }
    assert_eq!(code, 0, "failover failed:\n{out}\n{err}");
    let loss = topo.wait_status(&[], Duration::from_secs(20), "the loss window", |st| {
        let g = pg_group(st)?;
        (g["primary"] == "hcm").then_some(())?;
        g["last_failover_loss_ms"].as_i64()
    });
    eprintln!("status RPO {shown} ms before the loss; recorded loss window {loss} ms");
    assert!(
        loss >= shown,
        "recorded data-loss window {loss} ms, status showed RPO {shown} ms before the loss"
    );
    // The rows are indeed lost: the promoted standby never saw the table.
    let o = psql(env.p2, "SELECT count(*) FROM lost");
    assert!(
        !o.status.success(),
        "the unarchived table reached the standby"
    );
}

/// A failed `exec` step (here the switchover's drain) says why: the tail of the command's
/// output is in the live output and in `tandem run show`, not only in `--json`.
#[test]
fn a_failed_drain_quotes_its_stderr_in_the_live_output_and_run_show() {
    if pg_missing() {
        return;
    }
    let env = up("1s");
    let topo = &env.topo;
    let cfg = topo.config.to_str().unwrap();
    let (code, out, err) = topo.tandem(&[
        "switchover",
        "pg",
        "--config",
        cfg,
        "--param",
        "drain_command=echo drain-went-wrong-marker >&2; exit 3",
    ]);
    assert_ne!(code, 0, "the switchover should fail:\n{out}\n{err}");
    let live = format!("{out}{err}");
    assert!(
        live.contains("the command failed: drain-went-wrong-marker"),
        "live output:\n{live}"
    );
    let (code, list, err) = topo.tandem(&["runs", "--group", "pg", "--json", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    let runs: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = runs[0]["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id in {list}"))
        .to_owned();
    let (code, show, err) = topo.tandem(&["run", "show", &id, "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        show.contains("the command failed: drain-went-wrong-marker"),
        "run show:\n{show}"
    );
}

/// The facts compared between primary and standby: pgbench history rows, their delta sum and
/// the accounts' balance sum.
/// Commit timestamps (unix ms) of the COMMIT records in one WAL segment file.
fn commit_times(segment: &Path) -> Vec<i64> {
    let out = Command::new(Path::new(BIN).join("pg_waldump"))
        .arg(segment)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    // pg_waldump exits non-zero at the segment's end when a record continues in the next one.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("desc: COMMIT ").map(|(_, t)| t))
        .filter_map(|t| {
            let stamp = t.get(..26)?;
            chrono::NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|d| d.and_utc().timestamp_millis())
        })
        .collect()
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Benchmark, not a test (ignored): the PostgreSQL RPO through Tandem for two
/// `archive_timeout` settings. A rate-limited pgbench (50 tps, 20 s) writes on the primary;
/// for every committed transaction in an archived segment, the exposure window is the time
/// from its commit (its WAL COMMIT record's timestamp, read with pg_waldump) until the segment
/// was durable in the replica's archive folder (the file's mtime, taken just before fsync and
/// rename). Run with
/// `cargo test -p tandem-tests --test postgres_e2e -- --ignored --nocapture bench_`.
#[test]
#[ignore = "benchmark: run by hand, figures in docs/BENCHMARKS.md"]
fn bench_postgres_rpo_by_archive_timeout() {
    if pg_missing() {
        return;
    }
    let timeouts = std::env::var("TANDEM_BENCH_ARCHIVE_TIMEOUTS").unwrap_or("1s,5s".into());
    let mut rows = Vec::new();
    for at in timeouts.split(',') {
        let env = up(at);
        let port = env.p1.to_string();
        let bench = |args: &[&str]| {
            let mut a = vec!["-h", "127.0.0.1", "-p", &port];
            a.extend(args);
            a.push("postgres");
            ok("pgbench", as_pg("pgbench", &a))
        };
        bench(&["-i", "-s", "1", "-q"]);
        let load_start = chrono::Utc::now().timestamp_millis() + 500;
        std::thread::sleep(Duration::from_millis(500));
        // Status RPO sampled every 100 ms during the load, beside the measured exposure.
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut shown: Vec<i64> = std::thread::scope(|sc| {
            let sampler = sc.spawn(|| {
                let mut v = Vec::new();
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(r) = env
                        .topo
                        .status(&[])
                        .ok()
                        .and_then(|st| pg_group(&st)?["rpo_ms"].as_i64())
                    {
                        v.push(r);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                v
            });
            bench(&["-c", "1", "-j", "1", "-R", "50", "-T", "20", "-n"]);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            sampler.join().unwrap()
        });
        shown.sort_unstable();
        // Close the last segment so the tail is archived, but do not count it: its switch was
        // forced here, not by archive_timeout.
        let last = ok(
            "pg_switch_wal",
            psql(env.p1, "SELECT pg_walfile_name(pg_switch_wal())"),
        )
        .trim()
        .to_owned();
        let archive = env.root.join("data/hcm-rep/archive/pg/db");
        wait_until(
            "the last segment at the replica",
            Duration::from_secs(30),
            || archive.join(&last).exists().then(String::new),
        );
        let mut delays = Vec::new();
        let mut segments = 0;
        for e in archive.read_dir().unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() != 24 || name.as_str() >= last.as_str() {
                continue;
            }
            let durable = e
                .metadata()
                .unwrap()
                .modified()
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            let commits: Vec<i64> = commit_times(&e.path())
                .into_iter()
                .filter(|c| *c >= load_start)
                .collect();
            if !commits.is_empty() {
                segments += 1;
            }
            delays.extend(commits.iter().map(|c| durable - c));
        }
        delays.sort_unstable();
        // archive_command latency, from the primary's log (tandem wal push reports each file).
        let log = std::fs::read_to_string(env.primary.with_extension("log")).unwrap_or_default();
        let mut push: Vec<i64> = log
            .lines()
            .filter(|l| l.contains("durable at the replica"))
            .filter_map(|l| l.rsplit_once(" in ")?.1.strip_suffix(" ms")?.parse().ok())
            .collect();
        push.sort_unstable();
        let row = format!(
            "| {at} | {} commits in {segments} segments | p50 {} ms, p99 {} ms, max {} ms | p50 {} ms, p99 {} ms | p50 {} ms, p99 {} ms, max {} ms ({} samples) |",
            delays.len(),
            pct(&delays, 0.5),
            pct(&delays, 0.99),
            delays.last().copied().unwrap_or(0),
            pct(&push, 0.5),
            pct(&push, 0.99),
            pct(&shown, 0.5),
            pct(&shown, 0.99),
            shown.last().copied().unwrap_or(0),
            shown.len(),
        );
        eprintln!("{row}");
        rows.push(row);
        assert!(!delays.is_empty(), "no commits found in the archive");
        drop(env);
    }
    eprintln!("| archive_timeout | measured | commit -> durable at the replica (RPO exposure) | tandem wal push latency | status RPO (sampled every 100 ms) |\n| --- | --- | --- | --- | --- |");
    for r in rows {
        eprintln!("{r}");
    }
}

/// `tandem wal fetch` and `push` answer with the exit codes PostgreSQL reads: 0 copied, 1 not
/// there (yet) or not pushed, 2 bad input. No PostgreSQL needed.
#[test]
fn wal_commands_exit_codes_are_what_archive_and_restore_commands_expect() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(tandem_bin())
            .args(args)
            .env("TANDEM_LOG", "warn")
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let dest = dir.path().join("RECOVERYXLOG");
    let (a, d) = (archive.to_str().unwrap(), dest.to_str().unwrap());
    let seg = "000000010000000000000003";
    let (code, err) = run(&["wal", "fetch", seg, d, "--archive", a]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not in the archive"), "{err}");
    std::fs::write(archive.join(seg), b"segment bytes").unwrap();
    let (code, err) = run(&["wal", "fetch", seg, d, "--archive", a]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&dest).unwrap(), b"segment bytes");
    let (code, err) = run(&["wal", "fetch", "../etc/passwd", d, "--archive", a]);
    assert_eq!(code, 2, "{err}");
    // Nothing listens there: PostgreSQL must see a failure and retry.
    let port = free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let src = archive.join(seg);
    let (code, err) = run(&[
        "wal",
        "push",
        src.to_str().unwrap(),
        "--addr",
        &addr,
        "--group",
        "pg",
        "--resource",
        "db",
        "--timeout-secs",
        "2",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unreachable"), "{err}");
}

/// After an unplanned failover of a postgres group, the old primary comes back as the replica
/// and receives the new primary's archive files (it continues from what the new primary's
/// journal holds instead of asking for trimmed frames). Archive files are pushed with
/// `tandem wal push` directly; `bin_dir` holds a stand-in `pg_controldata` that reports the
/// cluster in production, so no PostgreSQL server is needed.
#[test]
fn returning_old_primary_receives_archive_files_after_a_failover() {
    let topo = Topo::new(TopoOpts::default());
    let root = topo.path().to_owned();
    let bin = root.join("fake-pg-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("pg_controldata");
    std::fs::write(
        &tool,
        "#!/bin/sh\necho 'Database cluster state:               in production'\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("pg/hanoi")).unwrap();
    std::fs::create_dir_all(root.join("pg/hcm")).unwrap();
    let mut cfg = std::fs::read_to_string(&topo.config).unwrap();
    cfg.push_str(&format!(
        "\n[[groups]]\nname = \"pg\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\nmode = \"async\"\nrpo_target = \"10s\"\nrto_target = \"1m\"\n\n[[groups.resources]]\nname = \"db\"\nkind = \"postgres\"\ndata_dir = \"pg/hanoi\"\nreplica_data_dir = \"pg/hcm\"\nport = {}\nreplica_port = {}\nbin_dir = \"{}\"\n",
        free_port(),
        free_port(),
        bin.display()
    ));
    std::fs::write(&topo.config, cfg).unwrap();
    let mut procs: Vec<NodeProc> = topo
        .coordinators
        .iter()
        .map(|n| NodeProc::start(&topo, n))
        .collect();
    procs.push(NodeProc::start(&topo, "hanoi-rep"));
    procs.push(NodeProc::start(&topo, "hcm-rep"));
    let group = |st: &serde_json::Value| {
        st["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == "pg").cloned())
    };
    // No PostgreSQL cluster at hanoi: leased, but not protected.
    topo.wait_status(&[], Duration::from_secs(20), "pg leased", |st| {
        let g = group(st)?;
        (g["state"] == "degraded" && g["lease"]["status"] == "active").then_some(())
    });
    let file = |name: &str, fill: u8| {
        let p = root.join(name);
        std::fs::write(&p, vec![fill; 3 << 20]).unwrap();
        p
    };
    let push = |path: &Path, node: &str, secs: &str| {
        topo.tandem(&[
            "wal",
            "push",
            path.to_str().unwrap(),
            "--addr",
            topo.addr(node),
            "--group",
            "pg",
            "--resource",
            "db",
            "--timeout-secs",
            secs,
        ])
    };
    // 1. A file pushed at hanoi is durable at hcm when the push exits 0.
    let a = file("000000010000000000000001", 1);
    let (code, _, err) = push(&a, "hanoi-rep", "20");
    assert_eq!(code, 0, "{err}");
    let at_hcm = root.join("data/hcm-rep/archive/pg/db");
    assert_eq!(
        std::fs::read(at_hcm.join("000000010000000000000001")).unwrap(),
        vec![1; 3 << 20]
    );
    // 1b. A wal-client certificate pushes its own group's WAL and nothing else.
    let certs = root.join("certs");
    for g in ["pg", "other"] {
        let (code, out, err) = topo.tandem(&[
            "certs",
            "wal-client",
            "--group",
            g,
            "--dir",
            certs.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains(&format!("postgres@{g} may push WAL for group {g}")),
            "{out}"
        );
    }
    let as_client = |group: &str, args: &[&str]| {
        let o = Command::new(tandem_bin())
            .args(args)
            .env("TANDEM_LOG", "warn")
            .env("TANDEM_CONFIG", &topo.config)
            .env("TANDEM_CERT", certs.join(format!("wal-client-{group}.pem")))
            .env("TANDEM_KEY", certs.join(format!("wal-client-{group}.key")))
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let a2 = file("000000010000000000000002", 4);
    let push_args = |path: &Path| {
        vec![
            "wal".to_string(),
            "push".into(),
            path.to_str().unwrap().into(),
            "--addr".into(),
            topo.addr("hanoi-rep").into(),
            "--group".into(),
            "pg".into(),
            "--resource".into(),
            "db".into(),
            "--timeout-secs".into(),
            "20".into(),
        ]
    };
    let args = push_args(&a2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = as_client("other", &args);
    assert_eq!(code, 1, "another group's WAL client pushed: {err}");
    assert!(
        err.contains(
            "postgres@other (WAL client) may push WAL only for group other, not for group pg"
        ),
        "{err}"
    );
    assert!(!at_hcm.join("000000010000000000000002").exists());
    let (code, err) = as_client("pg", &args);
    assert_eq!(code, 0, "the group's own WAL client was refused: {err}");
    assert_eq!(
        std::fs::read(at_hcm.join("000000010000000000000002")).unwrap(),
        vec![4; 3 << 20]
    );
    let (code, err) = as_client("pg", &["status"]);
    assert_ne!(code, 0, "a WAL client read the status");
    assert!(
        err.contains("postgres@pg") && err.contains("may not call"),
        "{err}"
    );
    // 2. hanoi is lost; fail over to hcm.
    let hanoi = procs.iter().position(|p| p.name == "hanoi-rep").unwrap();
    procs[hanoi].kill9();
    let (code, out, err) = failover_pg(&topo);
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "failover failed:\n{out}\n{err}");
    topo.wait_status(
        &[],
        Duration::from_secs(20),
        "hcm primary with a lease",
        |st| {
            let g = group(st)?;
            (g["primary"] == "hcm" && g["lease"]["status"] == "active").then_some(())
        },
    );
    // 3. With no replica, a push is journaled but not durable there: PostgreSQL must retry.
    let b = file("00000002.history", 2);
    let (code, _, err) = push(&b, "hcm-rep", "1");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("did not acknowledge"), "{err}");
    // 4. hanoi returns as the replica and receives what hcm journaled meanwhile, and more.
    procs[hanoi] = NodeProc::start(&topo, "hanoi-rep");
    let c = file("000000020000000000000002", 3);
    let (code, _, err) = push(&c, "hcm-rep", "30");
    if code != 0 {
        dump_logs(&topo);
    }
    assert_eq!(code, 0, "{err}");
    let at_hanoi = root.join("data/hanoi-rep/archive/pg/db");
    assert_eq!(
        std::fs::read(at_hanoi.join("00000002.history")).unwrap(),
        vec![2; 3 << 20]
    );
    assert_eq!(
        std::fs::read(at_hanoi.join("000000020000000000000002")).unwrap(),
        vec![3; 3 << 20]
    );
}
