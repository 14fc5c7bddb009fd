//! PostgreSQL's own tools (`pg_ctl`, `pg_controldata`, `psql`) run against a data directory as
//! the directory's owner: what the runbooks' `promote` and readiness `check` use for a
//! `postgres` resource.
//!
//! PostgreSQL refuses to run as root, so when Tandem runs as root and the data directory
//! belongs to another user (`postgres`), the tools run with that user's uid and gid. Blocking:
//! call from a blocking thread.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What failed when running a PostgreSQL tool.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The tool could not be started (missing binary, permissions).
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{program} failed ({status}): {output}")]
    Failed {
        /// The binary.
        program: PathBuf,
        /// Its exit status.
        status: String,
        /// Its stderr and stdout.
        output: String,
    },
    /// The data directory cannot be read.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The cluster did not reach the expected state in time.
    #[error("{0}")]
    Timeout(String),
}

/// The uid this process runs as (the owner of `/proc/self`), without unsafe code.
fn my_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// `program` (under `bin_dir`) as a command that runs as the owner of `data_dir` when this
/// process is root and the directory belongs to someone else; cwd `/` (the owner may not be
/// able to read ours).
///
/// # Errors
/// [`PgError::DataDir`] when the directory cannot be stat'ed.
pub fn command(bin_dir: &Path, program: &str, data_dir: &Path) -> Result<Command, PgError> {
    let meta = std::fs::metadata(data_dir).map_err(|source| PgError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let mut cmd = Command::new(bin_dir.join(program));
    cmd.current_dir("/").stdin(Stdio::null());
    if my_uid() == Some(0) && meta.uid() != 0 {
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    Ok(cmd)
}

/// Runs `cmd`; its stdout on success.
///
/// # Errors
/// [`PgError::Spawn`] or [`PgError::Failed`] (with stderr and stdout).
pub fn run(mut cmd: Command) -> Result<String, PgError> {
    let program = PathBuf::from(cmd.get_program());
    let out = cmd.output().map_err(|source| PgError::Spawn {
        program: program.clone(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(PgError::Failed {
            program,
            status: out.status.to_string(),
            output: format!("{}{}", String::from_utf8_lossy(&out.stderr), stdout)
                .trim()
                .to_owned(),
        });
    }
    Ok(stdout)
}

/// The `Database cluster state` line of `pg_controldata` (`in production`,
/// `in archive recovery`, `shut down`, ...).
///
/// # Errors
/// The tool failed, or printed no such line.
pub fn cluster_state(bin_dir: &Path, data_dir: &Path) -> Result<String, PgError> {
    let mut cmd = command(bin_dir, "pg_controldata", data_dir)?;
    cmd.arg("-D").arg(data_dir).env("LC_ALL", "C");
    let out = run(cmd)?;
    parse_cluster_state(&out).ok_or_else(|| PgError::Failed {
        program: bin_dir.join("pg_controldata"),
        status: "0".into(),
        output: "no \"Database cluster state\" line".into(),
    })
}

/// The state from `pg_controldata` output (pure).
pub fn parse_cluster_state(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("Database cluster state:"))
        .map(|s| s.trim().to_owned())
}

/// Promotes the standby at `data_dir` (`pg_ctl promote`, which waits) and waits until
/// `pg_controldata` says `in production`; a cluster already in production is left alone.
/// Returns what was done.
///
/// # Errors
/// A tool failed, or the cluster was not in production within `timeout`.
pub fn promote(bin_dir: &Path, data_dir: &Path, timeout: Duration) -> Result<String, PgError> {
    let t0 = Instant::now();
    let before = cluster_state(bin_dir, data_dir)?;
    if before == "in production" {
        return Ok(format!("{}: already in production", data_dir.display()));
    }
    let mut cmd = command(bin_dir, "pg_ctl", data_dir)?;
    cmd.arg("promote")
        .arg("-D")
        .arg(data_dir)
        .arg("-w")
        .arg("-t")
        .arg(timeout.as_secs().max(1).to_string());
    let said = run(cmd)?;
    loop {
        let state = cluster_state(bin_dir, data_dir)?;
        if state == "in production" {
            return Ok(format!(
                "{}: promoted ({before} -> in production) in {} ms; {}",
                data_dir.display(),
                t0.elapsed().as_millis(),
                said.trim()
            ));
        }
        if t0.elapsed() > timeout {
            return Err(PgError::Timeout(format!(
                "{}: still {state:?} {} ms after pg_ctl promote",
                data_dir.display(),
                t0.elapsed().as_millis()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rewinds the stopped cluster at `data_dir` onto the timeline of the running server
/// `source` (a libpq connection string) with `pg_rewind` (which first finishes crash recovery
/// of a cluster that was not shut down cleanly). The cluster needs `wal_log_hints = on` or
/// data checksums. Returns pg_rewind's report.
///
/// # Errors
/// pg_rewind failed (its output says why: no common timeline, no `wal_log_hints`, ...).
pub fn rewind(bin_dir: &Path, data_dir: &Path, source: &str) -> Result<String, PgError> {
    let mut cmd = command(bin_dir, "pg_rewind", data_dir)?;
    cmd.arg("-D")
        .arg(data_dir)
        .arg(format!("--source-server={source}"))
        .arg("--progress")
        .env("LC_ALL", "C");
    let out = cmd.output().map_err(|source| PgError::Spawn {
        program: bin_dir.join("pg_rewind"),
        source,
    })?;
    // pg_rewind reports on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
    .trim()
    .to_owned();
    if !out.status.success() {
        return Err(PgError::Failed {
            program: bin_dir.join("pg_rewind"),
            status: out.status.to_string(),
            output: text,
        });
    }
    Ok(text)
}

/// `pg_ctl start -w` of the cluster at `data_dir`, its server log in `log`.
///
/// # Errors
/// pg_ctl failed (its output, and the log's path to read).
pub fn start(bin_dir: &Path, data_dir: &Path, log: &Path) -> Result<String, PgError> {
    let mut cmd = command(bin_dir, "pg_ctl", data_dir)?;
    cmd.arg("start")
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "60"]);
    run(cmd).map_err(|e| match e {
        PgError::Failed {
            program,
            status,
            output,
        } => PgError::Failed {
            program,
            status,
            output: format!("{output} (server log: {})", log.display()),
        },
        other => other,
    })
}

/// `pg_ctl stop -m fast -w` of the cluster at `data_dir` when a server runs there
/// (`pg_ctl status`: a `postmaster.pid` left by a crash is not a running server). Returns
/// whether one was stopped.
///
/// # Errors
/// pg_ctl failed.
pub fn stop_fast(bin_dir: &Path, data_dir: &Path) -> Result<bool, PgError> {
    let mut status = command(bin_dir, "pg_ctl", data_dir)?;
    status.arg("status").arg("-D").arg(data_dir);
    let out = status.output().map_err(|source| PgError::Spawn {
        program: bin_dir.join("pg_ctl"),
        source,
    })?;
    // 3: no server running (pg_ctl's documented exit code).
    if out.status.code() == Some(3) {
        return Ok(false);
    }
    let mut cmd = command(bin_dir, "pg_ctl", data_dir)?;
    cmd.arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "fast", "-w", "-t", "60"]);
    run(cmd).map(|_| true)
}

/// Runs one SQL query with `psql` (from `bin_dir`, else `/usr/bin`) against the server on
/// `port` of this host, as the data directory's owner; returns the unaligned, tuples-only
/// output. `PGHOST` (default `127.0.0.1`), `PGUSER` and `PGDATABASE` (default `postgres`)
/// from the environment apply.
///
/// # Errors
/// psql failed (connection refused, SQL error).
pub fn query(bin_dir: &Path, data_dir: &Path, port: u16, sql: &str) -> Result<String, PgError> {
    let dir = if bin_dir.join("psql").exists() {
        bin_dir.to_owned()
    } else {
        PathBuf::from("/usr/bin")
    };
    let mut cmd = command(&dir, "psql", data_dir)?;
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
    let db = std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into());
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &host, "-p", &port.to_string(), "-d", &db, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "3");
    run(cmd).map(|s| s.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_state_is_read_from_pg_controldata_output() {
        let out = "pg_control version number:            1300\nDatabase cluster state:               in archive recovery\npg_control last modified:             Tue\n";
        assert_eq!(
            parse_cluster_state(out).as_deref(),
            Some("in archive recovery")
        );
        assert_eq!(parse_cluster_state("nothing here"), None);
    }

    #[test]
    fn a_missing_data_dir_is_named() {
        let e = cluster_state(
            Path::new("/nonexistent-bin"),
            Path::new("/nonexistent-pgdata"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent-pgdata"), "{e}");
    }
}
