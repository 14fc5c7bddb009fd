//! PostgreSQL WAL streamed through Tandem (`stream = true`): the primary site's replicator is
//! a physical replication client of its server, and in a sync group the server names it in
//! `synchronous_standby_names`, so a COMMIT returns only once its WAL is durable at the other
//! site. Real PostgreSQL 15 servers, pgbench with per-transaction logs, kill -9 of the primary
//! site, and a count of what survived.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};
use tandem_tests::dump_logs;
use tandem_tests::pg::*;

/// pgbench as the `postgres` user against `port` (4 clients, 2 threads), writing its
/// per-transaction logs (`-l`) in `logs`.
fn pgbench_in_background(port: u16, logs: &Path, secs: u32) -> Child {
    tandem_chaos::pg::pgbench_logged(port, (4, 2), logs, secs).unwrap()
}

/// Transactions pgbench saw committed: one line per transaction in its `-l` logs.
fn logged_commits(logs: &Path) -> u64 {
    commit_times(logs).len() as u64
}

/// Commit times (unix ms) of the transactions in pgbench's `-l` logs, sorted.
fn commit_times(logs: &Path) -> Vec<i64> {
    tandem_chaos::pg::logged_commit_times(logs)
}

/// kill -9 of a PostgreSQL server: the postmaster and every process it started, at once.
fn kill9_server(data_dir: &Path) {
    tandem_chaos::pg::kill9_server(data_dir).unwrap();
}

fn count(port: u16, sql: &str) -> u64 {
    ok(sql, psql(port, sql)).trim().parse().unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pgbench did not stop within {within:?} of the primary's loss");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The primary site is lost (kill -9 of PostgreSQL and of hanoi's replicator) under pgbench;
/// after the automatic failover the promoted standby holds every transaction pgbench saw
/// committed, read from the WAL streamed into hcm's archive folder (the current segment too).
/// Then hanoi's replicator comes back, its crashed server rejoins as hcm's standby with
/// `tandem wal rejoin` (pg_rewind after crash recovery) and replays hcm's new writes.
#[test]
fn a_sync_group_loses_no_committed_transaction_when_the_primary_site_is_killed() {
    if pg_missing() {
        return;
    }
    // archive_timeout 1h: no segment is archived by time, only what streaming carries.
    let mut env = up_with(&Setup {
        archive_timeout: "3600s",
        mode: "sync",
        stream: true,
        auto_failover: true,
    });
    env.start_standby();
    let p1 = env.p1;
    pgbench_init(p1);
    let logs: PathBuf = env.root.join("pg/bench-logs");
    let mut bench = pgbench_in_background(p1, &logs, 30);
    // Streaming, and the RPO status shows is small while pgbench commits.
    let rpo = env
        .topo
        .wait_status(&[], Duration::from_secs(20), "streaming under load", |st| {
            let g = pg_group(st)?;
            (g["resources"][0]["health"]["state"] == "streaming" && logged_commits(&logs) > 100)
                .then(|| g["rpo_ms"].as_i64())?
        });
    eprintln!("status RPO under pgbench (sync, streaming): {rpo} ms");
    std::thread::sleep(Duration::from_secs(3));
    // The primary site is lost.
    let hanoi = env
        .procs
        .iter()
        .position(|p| p.name == "hanoi-rep")
        .unwrap();
    let t_loss = Instant::now();
    env.procs[hanoi].kill9();
    kill9_server(&env.primary);
    wait_exit(&mut bench, Duration::from_secs(60));
    let committed = logged_commits(&logs);
    assert!(
        committed > 200,
        "pgbench committed only {committed} transactions"
    );
    // The coordinators declare hanoi down and fail over on their own.
    let topo = &env.topo;
    let t0 = Instant::now();
    loop {
        let st = topo.status(&[]).ok();
        let g = st.as_ref().and_then(pg_group);
        if g.as_ref()
            .is_some_and(|g| g["primary"] == "hcm" && g["state"] != "failing-over")
        {
            let ready = ok("ready", psql(env.p2, "SELECT pg_is_in_recovery()"));
            if ready.trim() == "f" {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(90) {
            dump_logs(topo);
            eprintln!(
                "{}",
                std::fs::read_to_string(env.standby.with_extension("log")).unwrap_or_default()
            );
            panic!("no automatic failover within 90 s: {g:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "automatic failover: hcm in production {} ms after the loss",
        t_loss.elapsed().as_millis()
    );
    let have = count(env.p2, "SELECT count(*) FROM pgbench_history");
    eprintln!("pgbench saw {committed} commits; the promoted standby holds {have}");
    assert!(
        have >= committed,
        "lost {} of {committed} transactions pgbench saw committed",
        committed - have
    );
    // At most one transaction per client committed at hcm without pgbench hearing of it.
    assert!(have <= committed + 4, "{have} rows for {committed} commits");
    // hanoi comes back: its replicator becomes hcm's replica, its server rejoins.
    env.procs[hanoi] = tandem_tests::NodeProc::start(&env.topo, "hanoi-rep");
    let (code, out, err) = env.topo.tandem(&[
        "wal",
        "rejoin",
        "pg",
        "--config",
        env.topo.config.to_str().unwrap(),
        "--site",
        "hanoi",
        "--tandem-bin",
        env.tandem.to_str().unwrap(),
    ]);
    if code != 0 {
        dump_logs(&env.topo);
    }
    assert_eq!(code, 0, "rejoin after the crash failed:\n{out}\n{err}");
    eprintln!("{err}{out}");
    ok(
        "a write at hcm",
        psql(env.p2, "INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) SELECT 1, 1, 1, 9, now() FROM generate_series(1, 100)"),
    );
    let want = count(env.p2, "SELECT count(*) FROM pgbench_history");
    wait_until(
        "hanoi's standby to replay hcm's writes",
        Duration::from_secs(60),
        || {
            let o = psql(env.p1, "SELECT count(*) FROM pgbench_history");
            (o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == want.to_string())
                .then(String::new)
        },
    );
}

/// A switchover under pgbench loses nothing; the old primary rejoins as a standby of the new
/// one with `tandem wal rejoin` (pg_rewind, no full copy), follows its streamed WAL, and a
/// switch back under pgbench again loses nothing.
#[test]
fn a_switchover_then_a_rewind_rejoin_and_a_switch_back_lose_nothing() {
    if pg_missing() {
        return;
    }
    let env = up_with(&Setup {
        archive_timeout: "3600s",
        mode: "sync",
        stream: true,
        auto_failover: false,
    });
    env.start_standby();
    let (p1, p2) = (env.p1, env.p2);
    pgbench_init(p1);
    // Status shows the standby at hcm replaying, and how far behind the WAL durable at hcm.
    let (lag, text) = env.topo.wait_status(
        &[],
        Duration::from_secs(30),
        "the standby replaying",
        |st| {
            let sb = &pg_group(st)?["resources"][0]["standby"];
            (sb["site"] == "hcm" && sb["state"] == "replaying")
                .then(|| sb["replay_lag_bytes"].as_u64())
                .flatten()
                .filter(|lag| *lag < 1 << 20)
                .map(|lag| (lag, sb.to_string()))
        },
    );
    eprintln!("standby once pgbench -i is replayed: {lag} B behind: {text}");
    let (_, out, _) = env
        .topo
        .tandem(&["status", "--config", env.topo.config.to_str().unwrap()]);
    assert!(out.contains("standby at hcm: replaying"), "{out}");
    // 1. Switchover while pgbench writes: the drain stops hanoi's server mid-run.
    let logs = env.root.join("pg/logs-1");
    let mut bench = pgbench_in_background(p1, &logs, 60);
    wait_until("pgbench commits", Duration::from_secs(20), || {
        (logged_commits(&logs) > 100).then(String::new)
    });
    env.switch_over();
    wait_exit(&mut bench, Duration::from_secs(60));
    let committed = logged_commits(&logs);
    let have = count(p2, "SELECT count(*) FROM pgbench_history");
    eprintln!("switchover: pgbench saw {committed} commits, hcm holds {have}");
    assert!(have >= committed, "switchover lost {}", committed - have);
    assert!(have <= committed + 4, "{have} rows for {committed} commits");
    // 2. hanoi's old primary rejoins as hcm's standby without a full copy.
    let (code, out, err) = env.topo.tandem(&[
        "wal",
        "rejoin",
        "pg",
        "--config",
        env.topo.config.to_str().unwrap(),
        "--site",
        "hanoi",
        "--tandem-bin",
        env.tandem.to_str().unwrap(),
    ]);
    if code != 0 {
        dump_logs(&env.topo);
    }
    assert_eq!(code, 0, "rejoin failed:\n{out}\n{err}");
    eprintln!("{out}{err}");
    assert!(err.contains("pg_rewind"), "{err}");
    assert!(
        err.contains("dropped the stale replication slot tandem_pg_db"),
        "the old primary's slot was kept on the standby: {err}"
    );
    // 3. More writes at hcm, then the switch back while pgbench writes there.
    let logs2 = env.root.join("pg/logs-2");
    let mut bench = pgbench_in_background(p2, &logs2, 60);
    let t0 = Instant::now();
    while logged_commits(&logs2) <= 100 {
        if t0.elapsed() > Duration::from_secs(20) {
            dump_logs(&env.topo);
            let (_, st, _) = env.topo.tandem(&[
                "status",
                "--config",
                env.topo.config.to_str().unwrap(),
                "--json",
            ]);
            panic!("no commits at hcm after the rejoin:\n{st}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    env.switch_over_stopping(&env.standby, p2);
    wait_exit(&mut bench, Duration::from_secs(60));
    let committed2 = logged_commits(&logs2);
    let back = count(p1, "SELECT count(*) FROM pgbench_history");
    eprintln!("switch back: pgbench saw {committed2} more commits, hanoi holds {back}");
    assert!(
        back >= have + committed2,
        "switch back lost {}",
        have + committed2 - back
    );
    assert!(back <= have + committed2 + 4, "{back} rows");
    assert_eq!(
        ok("recovery state", psql(p1, "SELECT pg_is_in_recovery()")).trim(),
        "f"
    );
}

/// pgbench's throughput and mean latency: (tps, ms).
fn pgbench_run(port: u16, secs: u32) -> (f64, f64) {
    let out = ok(
        "pgbench run",
        as_pg(
            "pgbench",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-c",
                "4",
                "-j",
                "2",
                "-n",
                "-T",
                &secs.to_string(),
                "postgres",
            ],
        ),
    );
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (field("tps = "), field("latency average = "))
}

/// The status RPO sampled every 100 ms while `f` runs: sorted samples.
fn sampled_rpo<T>(env: &Env, f: impl FnOnce() -> T) -> (T, Vec<i64>) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
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
        let t = f();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut v = sampler.join().unwrap();
        v.sort_unstable();
        (t, v)
    })
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0)
}

/// Benchmark, not a test (ignored): pgbench (`-c 4 -j 2`, 15 s each, scale 1) on one primary,
/// in one run: through Tandem's stream async and sync (the slot in
/// `synchronous_standby_names`), with PostgreSQL's own synchronous streaming standby on the
/// same machine, and with no replication (Tandem's replicator stopped, no standby). Prints TPS,
/// mean latency, the ratio to PostgreSQL's own sync standby, and the status RPO while Tandem
/// streams. Run with `cargo build --release --workspace --bins && cargo test --release -p
/// tandem-tests --test postgres_stream_e2e -- --ignored --nocapture bench_`.
#[test]
#[ignore = "benchmark: run by hand, figures in docs/BENCHMARKS.md"]
fn bench_pgbench_tandem_stream_beside_postgres_sync_standby() {
    if pg_missing() {
        return;
    }
    let mut env = up_with(&Setup {
        archive_timeout: "60s",
        mode: "async",
        stream: true,
        auto_failover: false,
    });
    env.start_standby();
    let p1 = env.p1;
    pgbench_init(p1);
    let sync_names = |names: &str| {
        ok(
            "set",
            psql(
                p1,
                &format!("ALTER SYSTEM SET synchronous_standby_names = '{names}'"),
            ),
        );
        ok("reload", psql(p1, "SELECT pg_reload_conf()"));
        std::thread::sleep(Duration::from_millis(500));
    };
    let secs = 15;
    let mut rows = Vec::new();
    let (r, rpo) = sampled_rpo(&env, || pgbench_run(p1, secs));
    rows.push(("Tandem stream, async", r, Some(rpo)));
    sync_names("tandem_pg_db");
    let (r, rpo) = sampled_rpo(&env, || pgbench_run(p1, secs));
    rows.push((
        "Tandem stream, sync (synchronous_standby_names)",
        r,
        Some(rpo),
    ));
    // PostgreSQL's own synchronous standby on this machine.
    let native = env.root.join("pg/native");
    let p3 = tandem_tests::free_port();
    base_backup(p1, &native);
    let conf = native.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "port = {p3}\narchive_mode = off\nprimary_conninfo = 'host=127.0.0.1 port={p1} user=postgres application_name=native'\n"
    ));
    std::fs::write(&conf, text).unwrap();
    std::fs::write(native.join("standby.signal"), b"").unwrap();
    chown_pg(&native);
    start_server(&native);
    let _native = Servers(vec![native.clone()]);
    sync_names("native");
    let (r, _) = sampled_rpo(&env, || pgbench_run(p1, secs));
    rows.push(("PostgreSQL's own sync standby", r, None));
    // No replication: no standby, Tandem's primary replicator stopped.
    ok(
        "stop native",
        as_pg(
            "pg_ctl",
            &["-D", native.to_str().unwrap(), "-m", "fast", "-w", "stop"],
        ),
    );
    sync_names("");
    let hanoi = env
        .procs
        .iter()
        .position(|p| p.name == "hanoi-rep")
        .unwrap();
    env.procs[hanoi].kill9();
    let r = pgbench_run(p1, secs);
    rows.push(("no replication", r, None));
    let native_tps = rows[2].1 .0;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pgbench -c 4 -j 2 -T {secs}, scale 1, one machine; load average after the runs: {load}"
    );
    println!("| setup | TPS | mean latency ms | TPS / PostgreSQL sync standby | status RPO p50 / p99 / max ms |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, (tps, lat), rpo) in &rows {
        let rpo = rpo.as_ref().map_or("-".to_string(), |v| {
            format!(
                "{} / {} / {}",
                pct(v, 0.5),
                pct(v, 0.99),
                v.last().copied().unwrap_or(0)
            )
        });
        println!(
            "| {name} | {tps:.0} | {lat:.2} | {:.2} | {rpo} |",
            tps / native_tps
        );
    }
}

/// An async streaming group: the primary site is lost under pgbench. What is lost (counted
/// against pgbench's log) spans no more than the data-loss window the failover recorded
/// allows: its `rpo_ms` at the last primary report, plus the time from that report to the
/// loss; and status showed a streaming RPO of well under a second before.
#[test]
fn an_async_streaming_group_loses_only_what_its_recorded_window_allows() {
    if pg_missing() {
        return;
    }
    let mut env = up_with(&Setup {
        archive_timeout: "3600s",
        mode: "async",
        stream: true,
        auto_failover: false,
    });
    env.start_standby();
    let p1 = env.p1;
    pgbench_init(p1);
    let logs = env.root.join("pg/bench-logs");
    let mut bench = pgbench_in_background(p1, &logs, 60);
    let mut shown = Vec::new();
    let mut last_shown = (0i64, 0i64);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20)
        && (shown.len() < 20 || logged_commits(&logs) < 300)
    {
        if let Some(g) = env.topo.status(&[]).ok().and_then(|st| pg_group(&st)) {
            if g["resources"][0]["health"]["state"] == "streaming" {
                let r = g["rpo_ms"].as_i64().unwrap_or(-1);
                shown.push(r);
                last_shown = (r, chrono::Utc::now().timestamp_millis());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let hanoi = env
        .procs
        .iter()
        .position(|p| p.name == "hanoi-rep")
        .unwrap();
    let killed_ms = chrono::Utc::now().timestamp_millis();
    env.procs[hanoi].kill9();
    kill9_server(&env.primary);
    wait_exit(&mut bench, Duration::from_secs(60));
    let times = commit_times(&logs);
    let (code, out, err) = failover_pg(&env.topo);
    if code != 0 {
        dump_logs(&env.topo);
    }
    assert_eq!(code, 0, "failover failed:\n{out}\n{err}");
    let window: serde_json::Value = out
        .split("data-loss window ")
        .nth(1)
        .and_then(|rest| serde_json::Deserializer::from_str(rest).into_iter().next())
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no data-loss window in the failover's output:\n{out}"));
    let have = count(env.p2, "SELECT count(*) FROM pgbench_history");
    let committed = times.len() as u64;
    let lost = committed.saturating_sub(have) as usize;
    // The lost transactions are (at most) the newest ones pgbench saw committed.
    let lost_span = if lost > 0 {
        killed_ms - times[times.len() - lost]
    } else {
        0
    };
    let rpo_ms = window["rpo_ms"].as_i64().unwrap();
    let report_ms = window["progress_at_ms"].as_i64().unwrap();
    let allowed = rpo_ms + (killed_ms - report_ms).max(0);
    shown.sort_unstable();
    eprintln!(
        "pgbench saw {committed} commits, hcm holds {have}: {lost} lost, the newest {lost_span} ms \
         before the kill; recorded rpo_ms {rpo_ms} at a report {} ms before the kill (allows \
         {allowed} ms); status RPO while streaming p50 {} max {} ms",
        killed_ms - report_ms,
        shown.get(shown.len() / 2).copied().unwrap_or(-1),
        shown.last().copied().unwrap_or(-1)
    );
    assert!(
        shown.len() >= 10,
        "status showed streaming only {} times",
        shown.len()
    );
    assert!(
        lost_span <= allowed,
        "lost {lost} transactions spanning {lost_span} ms; the recorded window allows {allowed} ms"
    );
    // Nor more than status last showed, carried forward to the loss, plus one heartbeat
    // (500 ms: status reads the primary's last report).
    let (rpo_shown, shown_at) = last_shown;
    let by_status = rpo_shown + (killed_ms - shown_at) + 500;
    eprintln!(
        "status last showed RPO {rpo_shown} ms, {} ms before the kill",
        killed_ms - shown_at
    );
    assert!(
        lost_span <= by_status,
        "lost {lost_span} ms of commits; status last showed {rpo_shown} ms, {} ms before the loss",
        killed_ms - shown_at
    );
    assert!(
        shown[shown.len() / 2] < 1000,
        "status RPO while streaming async: median {} ms",
        shown[shown.len() / 2]
    );
}
