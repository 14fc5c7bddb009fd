//! Local process management: start the nodes of a topology as child processes in their own
//! process group, with `DIR/NODE.pid` and `DIR/NODE.log`, and stop, kill, pause or resume
//! them by pid file (`tandem local up|down`, `tandem demo` and the chaos runner). I/O:
//! processes, pid and log files, TCP probes; errors are `anyhow` (every one ends in a message
//! to the operator, none is matched on).
//!
//! Every process started for a folder is also recorded in memory ([`kill_started`]): a pid
//! file names only the last process of a node, and a node started twice (a restart of a node
//! that was not dead) would otherwise outlive its scenario. [`stop_all`] and the chaos
//! runner's cluster (on drop: success, failure, early return or panic) kill every recorded
//! process group and reap it.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tandem_core::client::Cluster;
use tandem_core::config::Topology;

/// A node started by [`start_node`].
#[derive(Debug, Clone)]
pub struct Started {
    /// Node name.
    pub name: String,
    /// Its process id.
    pub pid: i32,
}

/// Path of the pid file of `name` in `dir`.
pub fn pid_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pid"))
}

/// Path of the log file of `name` in `dir`.
pub fn log_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Starts `tandem node --config CONFIG --name NAME` detached in its own process group, logging
/// to `DIR/NAME.log` (appended) and writing `DIR/NAME.pid`.
pub fn start_node(config: &Path, name: &str, dir: &Path) -> Result<Started> {
    start_node_env(config, name, dir, &[])
}

/// Like [`start_node`], with extra environment variables for the child.
pub fn start_node_env(
    config: &Path,
    name: &str,
    dir: &Path,
    env: &[(String, String)],
) -> Result<Started> {
    let exe = std::env::current_exe().context("finding the tandem binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .arg("--config")
        .arg(config)
        .arg("--name")
        .arg(name)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    start_process(cmd, name, dir)
}

/// Starts `cmd` as process `name` of `dir`: detached in a process group of its own, stdin
/// closed, output appended to `DIR/NAME.log`, its pid in `DIR/NAME.pid` and in the record of
/// every process started for `dir` ([`kill_started`]).
///
/// # Errors
/// The folder, log or pid file cannot be written, or the process cannot start.
pub fn start_process(mut cmd: Command, name: &str, dir: &Path) -> Result<Started> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file(dir, name))
        .with_context(|| format!("opening {}", log_file(dir, name).display()))?;
    let log2 = log.try_clone()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting node {name}"))?;
    let pid = i32::try_from(child.id()).context("pid out of range")?;
    record_started(dir, pid);
    fs::write(pid_file(dir, name), format!("{pid}\n"))
        .with_context(|| format!("writing {}", pid_file(dir, name).display()))?;
    // The child is not waited for here: `local down` stops it by pid. Dropping `Child` does
    // not kill it.
    drop(child);
    Ok(Started {
        name: name.to_owned(),
        pid,
    })
}

/// Every process this process started, by folder (each is the leader of its own group).
static STARTED: Mutex<BTreeMap<PathBuf, Vec<i32>>> = Mutex::new(BTreeMap::new());

fn record_started(dir: &Path, pid: i32) {
    STARTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(dir.to_path_buf())
        .or_default()
        .push(pid);
}

/// Whether `pid` is a child of this process not reaped yet (running or a zombie); reaps
/// nothing.
fn our_child(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: `info` is a zeroed siginfo_t that waitid(2) may fill; WNOWAIT leaves a zombie
    // as it is. It fails with ECHILD for a pid that is not our child (or was reaped).
    #[allow(unsafe_code)]
    let rc = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    rc == 0
}

/// Whether `pid` is a child of this process that has not exited (reaping it if it has).
/// A pid that is not our child (never was, or already reaped and maybe reused) is not.
fn running_child(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: waitpid on one pid with WNOHANG and a null status pointer is always sound; it
    // returns 0 for a running child, the pid for a child it just reaped, -1 (ECHILD) for a
    // pid that is not our child.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    rc == 0
}

/// Kills (SIGKILL) the process group of every process started for `dir` by this process that
/// still exists, whether or not a pid file still names it, and reaps them (up to 5 s); forgets
/// them and removes the pid files that named them. Returns the pids whose group was killed.
/// What a scenario's end does, however it ends.
pub fn kill_started(dir: &Path) -> Vec<i32> {
    let pids = STARTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(dir)
        .unwrap_or_default();
    // Only our children not reaped yet (running, or zombies): a pid reaped before may name
    // another process by now.
    let killed: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| our_child(*p) && signal_group(*p, libc::SIGKILL).unwrap_or(false))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|p| running_child(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Their pid files name pids that are free now: nobody may signal them later.
    for (name, pid) in pids_in(dir).unwrap_or_default() {
        if pids.contains(&pid) && !our_child(pid) {
            let _ = fs::remove_file(pid_file(dir, &name));
        }
    }
    killed
}

/// [`kill_started`] for every folder this process started processes for: what a chaos run
/// does when it is told to stop (SIGTERM, SIGINT) before its scenarios end their clusters.
/// Returns the pids whose group was killed.
pub fn kill_all_started() -> Vec<i32> {
    let dirs: Vec<PathBuf> = STARTED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    dirs.iter().flat_map(|d| kill_started(d)).collect()
}

/// Reads the pid recorded for `name` in `dir`.
pub fn read_pid(dir: &Path, name: &str) -> Result<i32> {
    let p = pid_file(dir, name);
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a pid: {:?}", p.display(), text.trim()))
}

/// All pid files in `dir`, as (node name, pid).
pub fn pids_in(dir: &Path) -> Result<Vec<(String, i32)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("pid") {
            if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                out.push((name.to_owned(), read_pid(dir, name)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Sends `sig` to `pid`; Ok(false) if the process does not exist.
pub fn signal(pid: i32, sig: i32) -> Result<bool> {
    if pid <= 0 {
        bail!("refusing to signal pid {pid}");
    }
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 0 targets one process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, sig) };
    kill_result(rc, pid)
}

/// Sends `sig` to the process group `pid` leads (a node started here and whatever it
/// started), or to `pid` alone when it leads none; Ok(false) if it does not exist. The group
/// is signalled only while `pid` exists (a zombie counts) and leads it, so its id cannot name
/// another group.
pub fn signal_group(pid: i32, sig: i32) -> Result<bool> {
    if pid <= 0 {
        bail!("refusing to signal pid {pid}");
    }
    // SAFETY: getpgid(2) has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let pgid = unsafe { libc::getpgid(pid) };
    if pgid != pid {
        return signal(pid, sig);
    }
    // SAFETY: kill(2) has no memory-safety preconditions; -pid targets the group pid leads.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(-pid, sig) };
    kill_result(rc, pid)
}

fn kill_result(rc: i32, pid: i32) -> Result<bool> {
    if rc == 0 {
        Ok(true)
    } else {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(false)
        } else {
            Err(err).with_context(|| format!("signalling pid {pid}"))
        }
    }
}

/// True while `pid` exists (a child of ours that exited is reaped first, so it does not count
/// as alive while a zombie).
pub fn alive(pid: i32) -> bool {
    if pid > 0 {
        // SAFETY: waitpid on one pid with WNOHANG and a null status pointer is always sound;
        // for a pid that is not our child it fails with ECHILD and changes nothing. Only this
        // pid is reaped, never another child whose status someone else waits for.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
    signal(pid, 0).unwrap_or(false)
}

/// Stops every node with a pid file in `dir` and removes the pid files; kills whatever else
/// this process started for `dir` ([`kill_started`]).
///
/// All are signalled at once and waited for together (a node exits at most a couple of
/// seconds after SIGTERM; whatever is left after 5 s is killed).
pub fn stop_all(dir: &Path) -> Result<Vec<String>> {
    let nodes = pids_in(dir)?;
    let mut running = Vec::new();
    for (_, pid) in &nodes {
        if signal_group(*pid, libc::SIGTERM)? {
            running.push(*pid);
        }
    }
    for pid in wait_gone(&running, Duration::from_secs(5)) {
        signal_group(pid, libc::SIGKILL)?;
    }
    wait_gone(&running, Duration::from_secs(5));
    // What no pid file names any more (a node started twice) ends too.
    kill_started(dir);
    let mut stopped = Vec::new();
    for (name, _) in nodes {
        let _ = fs::remove_file(pid_file(dir, &name));
        stopped.push(name);
    }
    Ok(stopped)
}

/// Waits (polling every 10 ms, up to `timeout`) until none of `pids` is alive; returns
/// those still alive then.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resolves a `host:port` listen address.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))
}

/// Waits until something accepts TCP connections on `addr`, or the deadline passes.
pub fn wait_listening(addr: SocketAddr, pid: i32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !alive(pid) {
            bail!("process {pid} exited before listening on {addr}");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes the certificates `topo` needs when its `[tls] dir` has none yet (TLS on only): what
/// `local up`, `demo` and the chaos runner do, so a fresh run dir works without a step.
/// Nodes added since get a certificate from the folder's CA.
///
/// # Errors
/// A file cannot be read or written.
pub fn ensure_certs(topo: &Topology) -> Result<()> {
    use tandem_core::certs;
    if topo.tls.insecure {
        return Ok(());
    }
    let dir = &topo.tls.dir;
    if !certs::roots_path(dir).exists() {
        let nodes: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
        certs::init(dir, &topo.cluster.name, &nodes, certs::DEFAULT_VALIDITY)?;
        return Ok(());
    }
    for n in &topo.nodes {
        if !certs::cert_path(dir, &n.name).exists() {
            certs::rotate(
                dir,
                &topo.cluster.name,
                &n.name,
                false,
                certs::DEFAULT_VALIDITY,
            )?;
        }
    }
    Ok(())
}

/// Waits until a coordinator of `cluster` reports a leader (on a small runtime of its own).
///
/// # Errors
/// No leader within `timeout`.
pub fn wait_for_leader(cluster: &Cluster, timeout: Duration) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let deadline = Instant::now() + timeout;
    loop {
        let st = rt.block_on(cluster.status::<serde_json::Value>());
        if st.is_ok_and(|st| !st["leader"].is_null()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no coordinator leader after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts every node of `topo` (loaded from `config`), waits until each listens, then until
/// the coordinators of `cluster` have elected a leader. Node `N` runs with the topology file
/// `node_config(N)` (the chaos runner gives each node a copy whose peer addresses are fault
/// proxies) and the extra environment variables `node_env(N)`. On failure every node started
/// is stopped again.
///
/// # Errors
/// A node already runs from `dir`, cannot start, does not listen within `timeout`, exits
/// after start, or no leader is elected.
pub fn up_with(
    topo: &Topology,
    cluster: &Cluster,
    dir: &Path,
    timeout: Duration,
    node_config: &dyn Fn(&str) -> PathBuf,
    node_env: &dyn Fn(&str) -> Vec<(String, String)>,
) -> Result<Vec<Started>> {
    ensure_certs(topo)?;
    let mut started = Vec::new();
    for node in &topo.nodes {
        if let Ok(pid) = read_pid(dir, &node.name) {
            if alive(pid) {
                bail!(
                    "node {} already runs as pid {pid} (from {}); run `tandem local down --dir {}` first",
                    node.name,
                    dir.display(),
                    dir.display()
                );
            }
        }
        started.push(start_node_env(
            &node_config(&node.name),
            &node.name,
            dir,
            &node_env(&node.name),
        )?);
    }
    let result = (|| -> Result<()> {
        for (node, s) in topo.nodes.iter().zip(&started) {
            let addr = resolve(&node.listen)?;
            wait_listening(addr, s.pid, timeout).with_context(|| {
                format!(
                    "node {} did not come up; see {}",
                    node.name,
                    log_file(dir, &node.name).display()
                )
            })?;
        }
        wait_for_leader(cluster, timeout)?;
        // Something else may have answered on a node's port (a node left running from another
        // cluster): every process we started must still be alive.
        for s in &started {
            if !alive(s.pid) {
                bail!(
                    "node {} (pid {}) exited after start; see {}",
                    s.name,
                    s.pid,
                    log_file(dir, &s.name).display()
                );
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = stop_all(dir);
        return Err(e);
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A long sleeper that also starts a grandchild in its group.
    fn sleeper() -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", "sleep 60 & sleep 60; wait"]);
        c
    }

    /// The processes of the group led by `pid` that still run (zombies excluded).
    fn group_members(pgid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            let rest: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            if rest.len() > 2 && rest[0] != "Z" && rest[2] == pgid.to_string() {
                out.push(pid);
            }
        }
        out
    }

    /// A scenario-like run: three nodes, one restarted while it still ran (its pid file now
    /// names only the second copy), then a wait that fails.
    fn scenario_that_fails(dir: &Path, pids: &mut Vec<i32>) -> Result<()> {
        for name in ["coord-a", "coord-b", "rep-a"] {
            pids.push(start_process(sleeper(), name, dir)?.pid);
        }
        pids.push(start_process(sleeper(), "coord-b", dir)?.pid);
        bail!("timed out after 90s waiting for recovery")
    }

    #[test]
    fn stop_all_ends_every_process_started_for_the_folder_even_a_node_started_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut pids = Vec::new();
        assert!(scenario_that_fails(&dir, &mut pids).is_err());
        std::thread::sleep(Duration::from_millis(100));
        for p in &pids {
            assert!(
                group_members(*p).len() >= 2,
                "pid {p}: a shell and its children"
            );
        }
        stop_all(&dir).unwrap();
        for p in &pids {
            assert!(
                group_members(*p).is_empty(),
                "process group {p} outlived stop_all: {:?}",
                group_members(*p)
            );
            // Once in CI (a loaded 2-core machine, other tests spawning in parallel) a pid
            // answered kill(0) just after stop_all with its group already empty: allow it a
            // bounded moment to be reaped rather than judge one instant.
            assert!(
                wait_gone(&[*p], Duration::from_secs(2)).is_empty(),
                "pid {p} still alive 2 s after stop_all"
            );
        }
        assert!(pids_in(&dir).unwrap().is_empty());
    }

    #[test]
    fn kill_started_ends_every_group_of_a_scenario_that_returned_early() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let mut pids = Vec::new();
        assert!(scenario_that_fails(&dir, &mut pids).is_err());
        let killed = kill_started(&dir);
        assert_eq!(killed.len(), pids.len(), "{killed:?} vs {pids:?}");
        for p in &pids {
            assert!(group_members(*p).is_empty(), "group {p} survived");
        }
        // Forgotten once killed, their pid files gone, and nothing else is touched.
        assert!(pids_in(&dir).unwrap().is_empty());
        assert!(kill_started(&dir).is_empty());
    }
}
