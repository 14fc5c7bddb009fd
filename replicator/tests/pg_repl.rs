//! The PostgreSQL replication client against a real PostgreSQL 15 (a throwaway cluster per
//! test, 1 MiB WAL segments, unix socket in the test's folder), and against fake servers for
//! the failure paths a real server does not produce on demand (silence, oversized lengths).
//!
//! The PostgreSQL tests print a reason and pass when /usr/lib/postgresql/15/bin/initdb is
//! missing; CI installs it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tandem_replicator::pg_repl::{
    segment_name, Client, ConnConfig, Lsn, PgReplError, WalEvent, WalReader,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The OS user the servers run as when the tests run as root (PostgreSQL refuses root).
const PG_USER: &str = "postgres";
/// WAL segment size of the test clusters (initdb --wal-segsize=1): not the default, so that
/// `wal_segment_size` is read, not assumed, and a few inserts cross segment boundaries.
const SEG: u64 = 1 << 20;
const STEP: Duration = Duration::from_secs(15);

fn pg_missing() -> bool {
    if Path::new(BIN).join("initdb").exists() {
        return false;
    }
    eprintln!("SKIPPED: PostgreSQL 15 not found ({BIN}/initdb; apt-get install postgresql-15)");
    true
}

fn is_root() -> bool {
    // The effective uid through `id`: no unsafe `geteuid` call in this crate.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// A PostgreSQL tool, as the `postgres` user when running as root.
fn pg_command(prog: &str) -> Command {
    let path = Path::new(BIN).join(prog);
    let mut c = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    c.current_dir("/");
    c
}

fn ok(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway cluster; stopped (immediate) and deleted when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    data: PathBuf,
    port: u16,
}

const HBA: &str = "\
local all all trust
local replication all trust
host replication tandem_scram 127.0.0.1/32 scram-sha-256
host replication tandem_md5 127.0.0.1/32 md5
host replication tandem_pw 127.0.0.1/32 password
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
";

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        if is_root() {
            let o = Command::new("chown")
                .arg(format!("{PG_USER}:{PG_USER}"))
                .arg(dir.path())
                .output()
                .unwrap();
            ok("chown", o);
        }
        let data = dir.path().join("data");
        let port = free_port();
        ok(
            "initdb",
            pg_command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "--wal-segsize=1",
                ])
                .output()
                .unwrap(),
        );
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 4\nmax_replication_slots = 4\nshared_buffers = 16MB\nfsync = off\n",
            dir.path().display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        std::fs::write(data.join("pg_hba.conf"), HBA).unwrap();
        let c = Cluster { dir, data, port };
        c.pg_ctl(&["start"]);
        c
    }

    fn pg_ctl(&self, args: &[&str]) {
        let log = self.dir.path().join("server.log");
        let o = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30"])
            .args(args)
            .output()
            .unwrap();
        if !o.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "pg_ctl {args:?}: {}\n{log}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    /// `psql -c sql` over the unix socket as `postgres`: its output (unaligned, tuples only).
    async fn psql(&self, sql: &str) -> String {
        let std_cmd = self.psql_command(sql);
        let o = tokio::process::Command::from(std_cmd)
            .output()
            .await
            .unwrap();
        ok(sql, o)
    }

    fn psql_command(&self, sql: &str) -> Command {
        let mut c = pg_command("psql");
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
        ])
        .arg("-h")
        .arg(self.dir.path())
        .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql]);
        c
    }

    /// Connection settings for the unix socket as `postgres` (trust).
    fn unix(&self, app: &str) -> ConnConfig {
        ConnConfig {
            host: self.dir.path().to_str().unwrap().to_owned(),
            port: self.port,
            user: "postgres".into(),
            password: None,
            application_name: app.into(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Connection settings over TCP to 127.0.0.1.
    fn tcp(&self, user: &str, password: Option<&str>) -> ConnConfig {
        ConnConfig {
            host: "127.0.0.1".into(),
            port: self.port,
            user: user.into(),
            password: password.map(str::to_owned),
            application_name: "tandem_tcp".into(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Polls `sql` until it prints `want`.
    async fn wait_for(&self, sql: &str, want: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let got = self.psql(sql).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sql}: expect {want:?} got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bytes `pg_wal` holds at `lsn..lsn + len` on timeline `tli`, across segment files.
    fn wal_bytes(&self, tli: u32, lsn: Lsn, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut pos = lsn.0;
        let end = lsn.0 + len as u64;
        while pos < end {
            let name = segment_name(tli, Lsn(pos), SEG).unwrap();
            let file = std::fs::File::open(self.data.join("pg_wal").join(&name)).unwrap();
            let n = (end - pos).min(SEG - pos % SEG) as usize;
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, pos % SEG).unwrap();
            out.extend(buf);
            pos += n as u64;
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// The next event, failing the test after [`STEP`].
async fn next(rd: &mut WalReader) -> WalEvent {
    tokio::time::timeout(STEP, rd.next())
        .await
        .expect("no replication event within the step timeout")
        .unwrap()
}

/// Reads WAL until the received data reaches `target`: the Data events in order.
async fn read_until(rd: &mut WalReader, target: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    let mut got = Vec::new();
    let mut end = Lsn(0);
    while end < target {
        let ev = next(rd).await;
        if let Some(e) = ev.data_end() {
            end = e;
        }
        if let WalEvent::Data { start, bytes, .. } = ev {
            got.push((start, bytes));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_wal_equals_pg_wal_and_the_reported_flush_moves_the_slot() {
    if pg_missing() {
        return;
    }
    // 1. A cluster, and a replication connection over its unix socket (trust).
    let pg = Cluster::start();
    let mut c = Client::connect(&pg.unix("tandem_stream_test"))
        .await
        .unwrap();
    assert!(
        c.parameter("server_version").unwrap().starts_with("15."),
        "{:?}",
        c.parameter("server_version")
    );
    let sys = c.identify_system().await.unwrap();
    let sysid = pg
        .psql("SELECT system_identifier FROM pg_control_system()")
        .await;
    assert_eq!(sys.system_id, sysid);
    assert_eq!(sys.timeline, 1);
    assert!(sys.xlog_pos > Lsn(0));
    assert_eq!(c.wal_segment_size().await.unwrap(), SEG);

    // 2. The slot: created once, found the second time; its restart position is readable.
    assert!(c.ensure_physical_slot("tandem_t1").await.unwrap());
    assert!(!c.ensure_physical_slot("tandem_t1").await.unwrap());
    let (from, tli) = c.slot_restart_lsn("tandem_t1").await.unwrap().unwrap();
    assert_eq!(tli, 1);
    assert!(
        from > Lsn(0) && from <= sys.xlog_pos,
        "{from} vs {}",
        sys.xlog_pos
    );
    assert_eq!(c.slot_restart_lsn("no_such_slot").await.unwrap(), None);

    // 3. Stream from the slot while the database writes more than a segment of WAL.
    let (mut rd, mut st) = c.start("tandem_t1", from, 1).await.unwrap();
    pg.psql("CREATE TABLE t(x int, pad text); INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 8000) g")
        .await;
    let target: Lsn = pg
        .psql("SELECT pg_current_wal_flush_lsn()")
        .await
        .parse()
        .unwrap();
    assert!(target.0 - from.0 > SEG, "the load crosses a segment");
    let got = read_until(&mut rd, target).await;

    // 4. The stream is contiguous from the slot's position, and byte for byte what PostgreSQL
    // wrote into its own segment files.
    let mut pos = from;
    for (start, bytes) in &got {
        assert_eq!(*start, pos, "contiguous stream");
        assert_eq!(
            bytes,
            &pg.wal_bytes(1, *start, bytes.len()),
            "WAL at {start} +{}",
            bytes.len()
        );
        pos = Lsn(start.0 + bytes.len() as u64);
    }
    assert!(pos >= target);

    // 5. Reporting a flush position moves the slot and pg_stat_replication to it.
    st.send(pos, pos, pos, false).await.unwrap();
    pg.wait_for(
        "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'tandem_stream_test'",
        &pos.to_string(),
    )
    .await;
    pg.wait_for(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'tandem_t1'",
        &pos.to_string(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_commit_returns_only_after_the_client_reports_its_flush() {
    if pg_missing() {
        return;
    }
    // 1. A cluster whose synchronous standby is our application_name.
    let pg = Cluster::start();
    pg.psql("CREATE TABLE t(x int)").await;
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'tandem_test'")
        .await;
    pg.psql("SELECT pg_reload_conf()").await;
    let mut c = Client::connect(&pg.unix("tandem_test")).await.unwrap();
    assert!(c.ensure_physical_slot("tandem_sync").await.unwrap());
    let (from, _) = c.slot_restart_lsn("tandem_sync").await.unwrap().unwrap();
    let (mut rd, mut st) = c.start("tandem_sync", from, 1).await.unwrap();
    // PostgreSQL counts a receiver as a synchronous standby once it reported a valid flush
    // position (until then pg_stat_replication shows it as async): report where it starts.
    st.send(from, from, from, false).await.unwrap();
    pg.wait_for(
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'tandem_test'",
        "sync",
    )
    .await;
    let before: Lsn = pg
        .psql("SELECT pg_current_wal_flush_lsn()")
        .await
        .parse()
        .unwrap();

    // 2. A COMMIT in the background; the client receives its WAL but reports nothing.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rx = std::sync::Arc::clone(&received);
    let reader = tokio::spawn(async move {
        loop {
            match rd.next().await {
                Ok(WalEvent::Data { start, bytes, .. }) => {
                    let end = start.0 + bytes.len() as u64;
                    rx.fetch_max(end, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    });
    let mut commit = tokio::process::Command::from(pg.psql_command("INSERT INTO t VALUES (1)"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let got = || Lsn(received.load(std::sync::atomic::Ordering::SeqCst));
    let deadline = Instant::now() + STEP;
    while got() <= before {
        assert!(Instant::now() < deadline, "the commit's WAL never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        commit.try_wait().unwrap().is_none(),
        "COMMIT returned while no flush position was reported"
    );

    // 3. A flush position before the commit does not release it.
    st.send(got(), before, before, false).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        commit.try_wait().unwrap().is_none(),
        "COMMIT returned with the reported flush {before} before its WAL"
    );

    // 4. The flush position of everything received releases it.
    let released = Instant::now();
    let status = loop {
        let flush = got();
        st.send(flush, flush, flush, false).await.unwrap();
        if let Ok(s) = tokio::time::timeout(Duration::from_millis(200), commit.wait()).await {
            break s.unwrap();
        }
        assert!(
            released.elapsed() < STEP,
            "COMMIT still waiting after the flush report"
        );
    };
    assert!(status.success());
    eprintln!(
        "COMMIT returned {:?} after the flush report",
        released.elapsed()
    );
    assert_eq!(pg.psql("SELECT count(*) FROM t").await, "1");
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_tcp_accepts_the_right_password_and_refuses_a_wrong_one() {
    if pg_missing() {
        return;
    }
    let pg = Cluster::start();
    pg.psql("CREATE ROLE tandem_scram LOGIN REPLICATION PASSWORD 'pencil-42'")
        .await;
    assert!(pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'tandem_scram'")
        .await
        .starts_with("SCRAM-SHA-256$"));
    // 1. The right password.
    let mut c = Client::connect(&pg.tcp("tandem_scram", Some("pencil-42")))
        .await
        .unwrap();
    assert_eq!(c.identify_system().await.unwrap().timeline, 1);
    c.close().await.unwrap();
    // 2. A wrong one: the server's refusal, with its SQLSTATE.
    let e = Client::connect(&pg.tcp("tandem_scram", Some("pencil-43")))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.sqlstate(), Some("28P01"), "{text}");
    assert!(
        text.contains("password authentication failed for user \"tandem_scram\""),
        "{text}"
    );
    // 3. None at all.
    let e = Client::connect(&pg.tcp("tandem_scram", None))
        .await
        .unwrap_err();
    assert!(matches!(e, PgReplError::Auth(_)), "{e}");
    assert!(e.to_string().contains("SCRAM-SHA-256 password"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_password_works_and_md5_is_refused_with_the_fix() {
    if pg_missing() {
        return;
    }
    let pg = Cluster::start();
    pg.psql("CREATE ROLE tandem_pw LOGIN REPLICATION PASSWORD 'pw1'")
        .await;
    pg.psql(
        "SET password_encryption = 'md5'; CREATE ROLE tandem_md5 LOGIN REPLICATION PASSWORD 'pw2'",
    )
    .await;
    let mut c = Client::connect(&pg.tcp("tandem_pw", Some("pw1")))
        .await
        .unwrap();
    assert_eq!(c.wal_segment_size().await.unwrap(), SEG);
    let e = Client::connect(&pg.tcp("tandem_pw", Some("nope")))
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("28P01"), "{e}");
    let e = Client::connect(&pg.tcp("tandem_md5", Some("pw2")))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "server asks for md5 authentication, which Tandem does not support: use scram-sha-256 or trust/peer for the replication user in pg_hba.conf"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_name_the_call_the_sqlstate_and_the_object() {
    if pg_missing() {
        return;
    }
    let pg = Cluster::start();
    let mut c = Client::connect(&pg.unix("tandem_err")).await.unwrap();
    let sys = c.identify_system().await.unwrap();
    // A failed command leaves the connection usable.
    let e = c.timeline_history(7).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("58P01"), "{e}");
    assert!(
        e.to_string()
            .starts_with("TIMELINE_HISTORY: server error 58P01"),
        "{e}"
    );
    assert!(c.ensure_physical_slot("Bad-Name").await.is_err());
    let e = c.start("no_such_slot", sys.xlog_pos, 1).await.unwrap_err();
    let text = e.to_string();
    assert_eq!(e.sqlstate(), Some("42704"), "{text}");
    assert!(
        text.starts_with("START_REPLICATION: server error 42704: ")
            && text.contains("no_such_slot"),
        "{text}"
    );
    assert!(!e.is_retryable());
    // A slot held by another stream: "in use", worth retrying (the holder may be exiting).
    let mut c = Client::connect(&pg.unix("tandem_err")).await.unwrap();
    assert!(c.ensure_physical_slot("busy").await.unwrap());
    let (_rd, _st) = c.start("busy", sys.xlog_pos, 1).await.unwrap();
    let c2 = Client::connect(&pg.unix("tandem_err2")).await.unwrap();
    let e = c2.start("busy", sys.xlog_pos, 1).await.unwrap_err();
    assert_eq!(e.sqlstate(), Some("55006"), "{e}");
    assert!(e.is_retryable(), "{e}");
    // A missing socket names its path.
    let mut cfg = pg.unix("x");
    cfg.port = free_port();
    let e = Client::connect(&cfg).await.unwrap_err();
    assert!(
        e.to_string().contains(&format!(".s.PGSQL.{}", cfg.port)),
        "{e}"
    );
    assert!(e.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_ends_the_old_timeline_with_the_next_one_and_its_history() {
    if pg_missing() {
        return;
    }
    // 1. A slot on timeline 1, some WAL, then a restart as a standby and a promotion:
    // timeline 2 begins.
    let pg = Cluster::start();
    let mut c = Client::connect(&pg.unix("tandem_tli")).await.unwrap();
    assert!(c.ensure_physical_slot("tandem_tli").await.unwrap());
    let (from, _) = c.slot_restart_lsn("tandem_tli").await.unwrap().unwrap();
    c.close().await.unwrap();
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) x")
        .await;
    pg.pg_ctl(&["-m", "fast", "stop"]);
    let signal = pg.data.join("standby.signal");
    std::fs::write(&signal, "").unwrap();
    if is_root() {
        ok(
            "chown",
            Command::new("chown")
                .arg(format!("{PG_USER}:{PG_USER}"))
                .arg(&signal)
                .output()
                .unwrap(),
        );
    }
    pg.pg_ctl(&["start"]);
    pg.pg_ctl(&["promote"]);

    // 2. The server is on timeline 2 and serves its history file.
    let mut c = Client::connect(&pg.unix("tandem_tli")).await.unwrap();
    assert_eq!(c.identify_system().await.unwrap().timeline, 2);
    let (name, content) = c.timeline_history(2).await.unwrap();
    assert_eq!(name, "00000002.history");
    let text = String::from_utf8(content).unwrap();
    let switch: Lsn = text.split('\t').nth(1).unwrap().parse().unwrap();
    assert!(text.starts_with("1\t"), "{text}");

    // 3. Streaming timeline 1 from the slot ends at the switch point, naming timeline 2.
    let (mut rd, mut st) = c.start("tandem_tli", from, 1).await.unwrap();
    let mut end = from;
    let last = loop {
        match next(&mut rd).await {
            WalEvent::Data { start, bytes, .. } => {
                assert_eq!(start, end, "contiguous");
                end = Lsn(start.0 + bytes.len() as u64);
            }
            WalEvent::Keepalive { .. } => {}
            eot @ WalEvent::EndOfTimeline { .. } => break eot,
        }
    };
    assert_eq!(
        last,
        WalEvent::EndOfTimeline {
            next_timeline: Some(2),
            next_start: Some(switch)
        }
    );
    assert_eq!(end, switch, "all of timeline 1 arrived");
    assert!(rd.next().await.is_err(), "the stream is over");
    assert!(st.send(end, end, end, false).await.is_err());

    // 4. Starting exactly at the switch point: no copy at all, only the end of the timeline.
    let c = Client::connect(&pg.unix("tandem_tli")).await.unwrap();
    let (mut rd, _st) = c.start("tandem_tli", switch, 1).await.unwrap();
    assert_eq!(next(&mut rd).await, last);
}

/// A fake server on loopback: accepts one connection and runs `serve` on it.
async fn fake_server<F, Fut>(serve: F) -> ConnConfig
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        serve(s).await;
    });
    ConnConfig {
        host: "127.0.0.1".into(),
        port,
        user: "u".into(),
        password: None,
        application_name: "t".into(),
        connect_timeout: Duration::from_millis(500),
    }
}

#[tokio::test]
async fn a_nul_byte_in_a_connection_setting_is_refused_before_connecting() {
    let cfg = ConnConfig {
        host: "/nonexistent".into(),
        port: 5432,
        user: "a\0b".into(),
        password: None,
        application_name: "t".into(),
        connect_timeout: Duration::from_secs(1),
    };
    let e = Client::connect(&cfg).await.unwrap_err();
    assert_eq!(e.to_string(), "connection setting user contains a NUL byte");
}

#[tokio::test]
async fn connect_times_out_against_a_server_that_never_answers() {
    let cfg = fake_server(|mut s| async move {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let t = Instant::now();
    let e = Client::connect(&cfg).await.unwrap_err();
    assert!(matches!(e, PgReplError::ConnectTimeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(e.is_retryable());
}

#[tokio::test]
async fn an_oversized_length_from_the_server_is_refused_naming_the_message() {
    let cfg = fake_server(|mut s| async move {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await;
        let mut msg = vec![b'R'];
        msg.extend_from_slice(&(100i32 << 20).to_be_bytes());
        let _ = s.write_all(&msg).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let e = Client::connect(&cfg).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, PgReplError::Protocol { .. }), "{text}");
    assert!(
        text.contains("message 'R' declares a length of 104857600 bytes"),
        "{text}"
    );
}

#[tokio::test]
async fn an_unsupported_authentication_method_is_named() {
    let cfg = fake_server(|mut s| async move {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await;
        // AuthenticationGSS.
        let _ = s.write_all(b"R\x00\x00\x00\x08\x00\x00\x00\x07").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let e = Client::connect(&cfg).await.unwrap_err();
    assert!(
        e.to_string().starts_with(
            "server asks for authentication method 7 (GSSAPI), which Tandem does not support"
        ),
        "{e}"
    );
}

/// Reads one length-prefixed frontend message (the startup message when `tagged` is false).
async fn read_frontend(s: &mut tokio::net::TcpStream, tagged: bool) -> Vec<u8> {
    if tagged {
        s.read_u8().await.unwrap();
    }
    let len = s.read_u32().await.unwrap() as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await.unwrap();
    body
}

fn xlog_data(start: u64, data: &[u8]) -> Vec<u8> {
    let mut payload = vec![b'w'];
    payload.extend_from_slice(&start.to_be_bytes());
    payload.extend_from_slice(&(start + 1000).to_be_bytes());
    payload.extend_from_slice(&0i64.to_be_bytes());
    payload.extend_from_slice(data);
    let mut msg = vec![b'd'];
    msg.extend_from_slice(&(payload.len() as u32 + 4).to_be_bytes());
    msg.extend(payload);
    msg
}

#[tokio::test]
async fn a_gap_in_the_wal_stream_is_refused_naming_both_positions() {
    let cfg = fake_server(|mut s| async move {
        read_frontend(&mut s, false).await;
        // AuthenticationOk, ReadyForQuery.
        s.write_all(b"R\x00\x00\x00\x08\x00\x00\x00\x00Z\x00\x00\x00\x05I")
            .await
            .unwrap();
        let q = read_frontend(&mut s, true).await;
        assert!(q.starts_with(b"START_REPLICATION SLOT s PHYSICAL 0/100 TIMELINE 1\0"));
        // CopyBothResponse, WAL at 0/100 (10 bytes), then WAL at 0/114: 10 bytes missing.
        s.write_all(b"W\x00\x00\x00\x07\x00\x00\x00").await.unwrap();
        s.write_all(&xlog_data(0x100, &[1; 10])).await.unwrap();
        s.write_all(&xlog_data(0x114, &[2; 10])).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let c = Client::connect(&cfg).await.unwrap();
    let (mut rd, _st) = c.start("s", Lsn(0x100), 1).await.unwrap();
    let first = rd.next().await.unwrap();
    assert_eq!(first.data_end(), Some(Lsn(0x10A)));
    let e = rd.next().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("WAL data at 0/114, expected 0/10A: a gap or an overlap"),
        "{e}"
    );
    assert!(
        rd.next().await.is_err(),
        "the stream is over after the error"
    );
}
