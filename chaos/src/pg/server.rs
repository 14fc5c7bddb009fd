//! Throwaway PostgreSQL 15 servers run as the `postgres` user (its tools refuse root):
//! initdb and configuration, start, kill -9, base backups, psql and pgbench, and the file
//! rights that user needs. I/O: processes and files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::runner::processes::{alive, signal};

/// Where Debian's PostgreSQL 15 binaries are.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The user PostgreSQL's servers and tools run as.
pub const PG_USER: &str = "postgres";

/// True when PostgreSQL 15 (server and pgbench) is installed.
pub fn installed() -> bool {
    Path::new(BIN).join("postgres").exists() && Path::new(BIN).join("pgbench").exists()
}

/// Runs a PostgreSQL binary as the `postgres` user (in `/`, which that user may enter).
///
/// # Errors
/// `runuser` could not be started.
pub fn as_pg(prog: &str, args: &[&str]) -> Result<Output> {
    Command::new("runuser")
        .args(["-u", PG_USER, "--"])
        .arg(Path::new(BIN).join(prog))
        .args(args)
        .current_dir("/")
        .output()
        .with_context(|| format!("running {prog} as {PG_USER} (runuser)"))
}

/// The standard output of a command that succeeded.
///
/// # Errors
/// The command failed: its status, stderr and stdout.
pub fn stdout_of(what: &str, o: Output) -> Result<String> {
    if !o.status.success() {
        bail!(
            "{what} failed ({}): {} {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            String::from_utf8_lossy(&o.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `psql` against the server on 127.0.0.1:`port`, database `postgres`, unaligned tuples only,
/// stopping at the first error.
///
/// # Errors
/// psql could not be started.
pub fn psql(port: u16, sql: &str) -> Result<Output> {
    let port = port.to_string();
    as_pg(
        "psql",
        &[
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-d",
            "postgres",
            "-c",
            sql,
        ],
    )
}

/// The trimmed result of `sql` on the server at `port`.
///
/// # Errors
/// psql failed (server down, SQL error).
pub fn query(port: u16, sql: &str) -> Result<String> {
    Ok(stdout_of(sql, psql(port, sql)?)?.trim().to_owned())
}

/// A count from `sql` on the server at `port`.
///
/// # Errors
/// psql failed or did not print a number.
pub fn count(port: u16, sql: &str) -> Result<u64> {
    let v = query(port, sql)?;
    v.parse()
        .with_context(|| format!("{sql}: not a count: {v:?}"))
}

/// Gives `path` (recursively) to the `postgres` user.
///
/// # Errors
/// chown failed.
pub fn chown_pg(path: &Path) -> Result<()> {
    let out = Command::new("chown")
        .args(["-R", &format!("{PG_USER}:{PG_USER}")])
        .arg(path)
        .output()
        .context("running chown")?;
    stdout_of(&format!("chown {}", path.display()), out).map(drop)
}

/// Lets every user enter `dir` and its parents (adds o+x where missing): the `postgres`
/// user must reach the data folders under it.
///
/// # Errors
/// A folder's rights could not be read or set.
pub fn open_path_to(dir: &Path) -> Result<()> {
    let mut d = Some(dir);
    while let Some(p) = d {
        let mode = std::fs::metadata(p)
            .with_context(|| format!("reading the rights of {}", p.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("letting {PG_USER} enter {}", p.display()))?;
        }
        d = p.parent();
    }
    Ok(())
}

/// `initdb` of a new cluster at `dir` (trust authentication, superuser `postgres`, no sync:
/// a throwaway server).
///
/// # Errors
/// initdb failed.
pub fn initdb(dir: &Path) -> Result<()> {
    let d = path_str(dir)?;
    let args = ["-D", d, "-A", "trust", "-U", PG_USER, "--no-sync"];
    stdout_of("initdb", as_pg("initdb", &args)?).map(drop)
}

/// The settings every test server shares: loopback only, its socket in `socket_dir`,
/// replication on, WAL kept for rewinds, small memory, real fsync.
pub fn common_settings(socket_dir: &Path, archive_timeout: &str) -> String {
    format!(
        "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\n\
         archive_mode = on\narchive_timeout = {archive_timeout}\n\
         wal_retrieve_retry_interval = 200ms\ntimezone = 'UTC'\nlog_timezone = 'UTC'\n\
         max_wal_senders = 4\nwal_log_hints = on\nshared_buffers = 32MB\nfsync = on\n",
        socket_dir.display()
    )
}

/// Appends `text` to the `postgresql.conf` of the cluster at `dir`.
///
/// # Errors
/// The file could not be read or written.
pub fn append_conf(dir: &Path, text: &str) -> Result<()> {
    let conf = dir.join("postgresql.conf");
    let mut t =
        std::fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
    t.push_str(text);
    std::fs::write(&conf, t).with_context(|| format!("writing {}", conf.display()))
}

/// Starts the server of `dir` (its log beside it, `DIR.log`) and waits until it accepts
/// connections (20 s).
///
/// # Errors
/// pg_ctl failed.
pub fn start_server(dir: &Path) -> Result<()> {
    let log = dir.with_extension("log");
    let args = [
        "-D",
        path_str(dir)?,
        "-l",
        path_str(&log)?,
        "-w",
        "-t",
        "20",
        "start",
    ];
    stdout_of("pg_ctl start", as_pg("pg_ctl", &args)?).map(drop)
}

/// Stops the server of `dir` at once (`-m immediate`), if it runs.
pub fn stop_immediate(dir: &Path) {
    if dir.join("postmaster.pid").exists() {
        if let Ok(d) = path_str(dir) {
            let _ = as_pg("pg_ctl", &["-D", d, "-m", "immediate", "-w", "stop"]);
        }
    }
}

/// kill -9 of the server of `dir`: the postmaster and every process it started, at once;
/// waits (10 s) until the postmaster is gone.
///
/// # Errors
/// No pid file, or the postmaster survived.
pub fn kill9_server(dir: &Path) -> Result<()> {
    let pidfile = dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?;
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("{}: line 1 is not a pid", pidfile.display()))?;
    let children = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .context("running pgrep")?;
    let mut all = vec![pid];
    all.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok()),
    );
    for p in &all {
        // A backend may exit between pgrep and the kill: a missing pid is not a failure.
        let _ = signal(*p, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("postmaster {pid} of {} survived kill -9", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `pg_basebackup` of the server on `port` into `dest` (fast checkpoint).
///
/// # Errors
/// pg_basebackup failed.
pub fn base_backup(port: u16, dest: &Path) -> Result<()> {
    let port = port.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-D",
        path_str(dest)?,
        "-c",
        "fast",
    ];
    stdout_of("pg_basebackup", as_pg("pg_basebackup", &args)?).map(drop)
}

/// `pgbench -i -s 1` against the server on `port`.
///
/// # Errors
/// pgbench failed.
pub fn pgbench_init(port: u16) -> Result<()> {
    let port = port.to_string();
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-i",
        "-s",
        "1",
        "-q",
        "postgres",
    ];
    stdout_of("pgbench -i", as_pg("pgbench", &args)?).map(drop)
}

/// pgbench (`clients` clients on `threads` threads, no vacuum) for `secs` against `port`,
/// writing its per-transaction logs (`-l`) into `logs` (made and given to the `postgres`
/// user). Its output is dropped.
///
/// # Errors
/// The folder or the process could not be made.
pub fn pgbench_logged(
    port: u16,
    (clients, threads): (u32, u32),
    logs: &Path,
    secs: u32,
) -> Result<Child> {
    std::fs::create_dir_all(logs).with_context(|| format!("making {}", logs.display()))?;
    chown_pg(logs)?;
    Command::new("runuser")
        .args(["-u", PG_USER, "--"])
        .arg(Path::new(BIN).join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
            "-n",
            "-l",
        ])
        .args(["-T", &secs.to_string(), "postgres"])
        .current_dir(logs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting pgbench")
}

/// Commit times (unix ms) of every transaction in the pgbench `-l` logs in `logs`, sorted.
pub fn logged_commit_times(logs: &Path) -> Vec<i64> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(logs).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        v.extend(super::commit_times(&text));
    }
    v.sort_unstable();
    v
}

/// What `tandem wal push` needs to dial a TLS replicator as the `postgres` user.
#[derive(Debug, Clone)]
pub struct PgClient {
    /// The topology file.
    pub config: PathBuf,
    /// A copy of the group's `wal-client` certificate that user can read.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// Issues `group`'s `wal-client` certificate (`postgres@GROUP`: it may push that group's WAL
/// and nothing else) with the CA in `tls_dir`, copies it and its key into `dir`, owned by the
/// `postgres` user, and makes `tls_dir` and `roots` readable: an `archive_command` runs as
/// that user.
///
/// # Errors
/// The certificate could not be issued; a copy, chmod or chown failed.
pub fn pg_client(
    config: &Path,
    tls_dir: &Path,
    roots: &Path,
    dir: &Path,
    group: &str,
) -> Result<PgClient> {
    std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    tandem_core::certs::issue_wal_client(
        tls_dir,
        group,
        PG_USER,
        tandem_core::certs::DEFAULT_VALIDITY,
    )?;
    let file = format!("wal-client-{group}");
    let (cert, key) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    for (from, to) in [
        (format!("{file}.pem"), &cert),
        (format!("{file}.key"), &key),
    ] {
        std::fs::copy(tls_dir.join(&from), to).with_context(|| {
            format!(
                "copying {} to {}",
                tls_dir.join(from).display(),
                to.display()
            )
        })?;
    }
    std::fs::set_permissions(tls_dir, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("opening {}", tls_dir.display()))?;
    std::fs::set_permissions(roots, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("opening {}", roots.display()))?;
    chown_pg(dir)?;
    Ok(PgClient {
        config: config.to_owned(),
        cert,
        key,
    })
}

/// The `archive_command` line: `tandem wal push` of group `group`'s resource `resource` to
/// the replicator at `rep`, as the `postgres` user with `client`'s certificate.
pub fn archive_command(
    tandem: &Path,
    rep: &str,
    group: &str,
    resource: &str,
    client: &PgClient,
) -> String {
    format!(
        "archive_command = 'TANDEM_LOG=warn TANDEM_CONFIG={} TANDEM_CERT={} TANDEM_KEY={} {} wal push %p --addr {rep} --group {group} --resource {resource}'\n",
        client.config.display(),
        client.cert.display(),
        client.key.display(),
        tandem.display()
    )
}

/// The `restore_command` line: `tandem wal fetch` from the archive folder `archive`.
pub fn restore_command(tandem: &Path, archive: &Path) -> String {
    format!(
        "restore_command = 'TANDEM_LOG=warn {} wal fetch %f %p --archive {}'\n",
        tandem.display(),
        archive.display()
    )
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{}: not UTF-8", p.display()))
}
