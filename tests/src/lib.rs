//! Helpers for end-to-end tests: locate the `tandem` binary, write topologies on free loopback
//! ports, start and signal real node processes, and ask the real CLI for status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod pg;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `tandem` binary built next to the test executable (`cargo build --bins`).
pub fn tandem_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/test-xxxx -> target/debug/tandem
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("tandem");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bins` before the tests (README: Run the tests)",
        bin.display()
    );
    bin
}

/// A free TCP port on 127.0.0.1, never the same twice in one test process
/// ([`tandem_core::ports::free_port`]).
pub fn free_port() -> u16 {
    tandem_core::ports::free_port().expect("free port")
}

/// A topology written to a temp folder with fresh ports.
pub struct Topo {
    /// The folder (config, data, logs, pid files).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// Coordinator names, in raft-id order.
    pub coordinators: Vec<String>,
    /// node name -> gRPC address.
    pub addrs: Vec<(String, String)>,
    /// node name -> NBD address (replicators).
    pub nbd: Vec<(String, String)>,
    /// node name -> `metrics_listen` address (every node, when [`TopoOpts::metrics`] is set).
    pub metrics: Vec<(String, String)>,
}

/// Options for [`Topo::new`].
pub struct TopoOpts {
    /// Coordinators per site, in order hanoi, hcm, danang (witness).
    pub coords: [usize; 3],
    /// Mode of the volume group.
    pub mode: &'static str,
    /// Volume size in MiB.
    pub volume_mib: u64,
    /// Automatic failover of the volume group.
    pub auto_failover: bool,
    /// Lease TTL.
    pub lease_ttl: &'static str,
    /// Give every node a `metrics_listen` address on a free port.
    pub metrics: bool,
    /// Extra `key = value` lines for the volume group (`journal_max = "1MiB"`).
    pub group_extra: &'static str,
    /// Extra `key = value` lines for the volume resource `disk0` (`capture = "scan"`).
    pub resource_extra: &'static str,
    /// Plaintext links (`[tls] insecure = true`) instead of mTLS with certificates generated
    /// into `DIR/certs`.
    pub insecure: bool,
    /// Extra `key = value` lines for `[cluster]` (`snapshot_entries = 16`).
    pub cluster_extra: &'static str,
}

impl Default for TopoOpts {
    fn default() -> Self {
        TopoOpts {
            coords: [1, 1, 1],
            mode: "sync",
            volume_mib: 16,
            auto_failover: false,
            lease_ttl: "2s",
            metrics: false,
            group_extra: "",
            resource_extra: "",
            insecure: false,
            cluster_extra: "",
        }
    }
}

impl Topo {
    /// Writes a two-site topology (hanoi primary, hcm replica, danang witness) with one volume
    /// group `vol` (resource `disk0`).
    pub fn new(o: TopoOpts) -> Topo {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = String::new();
        let _ = writeln!(
            t,
            "[cluster]\nname = \"test\"\nlease_ttl = \"{}\"\ndrift_margin = \"300ms\"\nheartbeat_interval = \"200ms\"\ndetect_after = \"1500ms\"\nrpo_sample_interval = \"2s\"\n{}\n",
            o.lease_ttl, o.cluster_extra
        );
        for (s, w) in [("hanoi", false), ("hcm", false), ("danang", true)] {
            let _ = writeln!(t, "[[sites]]\nname = \"{s}\"\nwitness = {w}\n");
        }
        let mut coordinators = Vec::new();
        let mut addrs = Vec::new();
        let mut nbd = Vec::new();
        let mut metrics = Vec::new();
        let mut metrics_line = |name: &str| -> String {
            if !o.metrics {
                return String::new();
            }
            let addr = format!("127.0.0.1:{}", free_port());
            metrics.push((name.to_owned(), addr.clone()));
            format!("metrics_listen = \"{addr}\"\n")
        };
        for (i, site) in ["hanoi", "hcm", "danang"].iter().enumerate() {
            for k in 0..o.coords[i] {
                let name = format!("{site}-coord{}", k + 1);
                let addr = format!("127.0.0.1:{}", free_port());
                let _ = writeln!(
                    t,
                    "[[nodes]]\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"coordinator\"\nlisten = \"{addr}\"\ndata_dir = \"data/{name}\"\n{}",
                    metrics_line(&name)
                );
                coordinators.push(name.clone());
                addrs.push((name, addr));
            }
        }
        for site in ["hanoi", "hcm"] {
            let name = format!("{site}-rep");
            let addr = format!("127.0.0.1:{}", free_port());
            let nbd_addr = format!("127.0.0.1:{}", free_port());
            let _ = writeln!(
                t,
                "[[nodes]]\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"replicator\"\nlisten = \"{addr}\"\ndata_dir = \"data/{name}\"\nnbd_listen = \"{nbd_addr}\"\n{}",
                metrics_line(&name)
            );
            addrs.push((name.clone(), addr));
            nbd.push((name, nbd_addr));
        }
        let _ = writeln!(
            t,
            "[[groups]]\nname = \"vol\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\nmode = \"{}\"\nrpo_target = \"{}\"\nrto_target = \"30s\"\nauto_failover = {}\n{}\n\n[[groups.resources]]\nname = \"disk0\"\nkind = \"volume\"\nsize = \"{}MiB\"\npath = \"volumes/hanoi/disk0.img\"\nreplica_path = \"volumes/hcm/disk0.img\"\n{}\n",
            o.mode,
            if o.mode == "sync" { "0s" } else { "2s" },
            o.auto_failover,
            o.group_extra,
            o.volume_mib,
            o.resource_extra
        );
        if o.insecure {
            t.push_str("[tls]\ninsecure = true\n");
        }
        let config = dir.path().join("topology.toml");
        std::fs::write(&config, t).expect("write topology");
        if !o.insecure {
            make_certs(&config);
        }
        Topo {
            dir,
            config,
            coordinators,
            addrs,
            nbd,
            metrics,
        }
    }

    /// gRPC address of a node.
    pub fn addr(&self, node: &str) -> &str {
        &self.addrs.iter().find(|(n, _)| n == node).expect("node").1
    }

    /// `metrics_listen` address of a node (topologies written with [`TopoOpts::metrics`]).
    pub fn metrics_addr(&self, node: &str) -> &str {
        &self
            .metrics
            .iter()
            .find(|(n, _)| n == node)
            .expect("node")
            .1
    }

    /// NBD address of a replicator.
    pub fn nbd_addr(&self, node: &str) -> &str {
        &self.nbd.iter().find(|(n, _)| n == node).expect("node").1
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `tandem ARGS` and returns (exit code, stdout, stderr).
    pub fn tandem(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(tandem_bin())
            .args(args)
            .env("TANDEM_LOG", "warn")
            .env("TANDEM_CONFIG", &self.config)
            .output()
            .expect("run tandem");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `tandem status --json` asked of the given coordinators (or all).
    pub fn status(&self, ask: &[&str]) -> Result<Value> {
        let mut args = vec!["status", "--json"];
        let addrs: Vec<&str> = if ask.is_empty() {
            self.coordinators.iter().map(|c| self.addr(c)).collect()
        } else {
            ask.iter().map(|c| self.addr(c)).collect()
        };
        for a in &addrs {
            args.push("--addr");
            args.push(a);
        }
        let (code, out, err) = self.tandem(&args);
        if code != 0 {
            bail!("tandem status failed ({code}): {err}");
        }
        serde_json::from_str(&out).context("status JSON")
    }

    /// Polls `f` on the status until it returns Some or `timeout` passes.
    pub fn wait_status<T>(
        &self,
        ask: &[&str],
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut last: Option<String>;
        loop {
            match self.status(ask) {
                Ok(st) => {
                    if let Some(v) = f(&st) {
                        return v;
                    }
                    last = Some(st.to_string());
                }
                Err(e) => last = Some(e.to_string()),
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}; last status: {last:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A node process started by a test; killed (SIGKILL) on drop.
pub struct NodeProc {
    /// Node name.
    pub name: String,
    /// The child.
    pub child: Child,
}

impl NodeProc {
    /// Starts `tandem node --config CONFIG --name NAME`, logging to DIR/NAME.log.
    pub fn start(topo: &Topo, name: &str) -> NodeProc {
        NodeProc::start_with_env(topo, name, &[])
    }

    /// [`NodeProc::start`] with extra environment variables (a failpoint file, `NODE_HOME`).
    pub fn start_with_env(topo: &Topo, name: &str, env: &[(&str, &std::ffi::OsStr)]) -> NodeProc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(topo.path().join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(tandem_bin())
            .args(["node", "--config"])
            .arg(&topo.config)
            .args(["--name", name])
            .env("TANDEM_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node");
        NodeProc {
            name: name.to_owned(),
            child,
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (SIGSTOP / SIGCONT) by running `kill`.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the tail of every node log in the topology folder (for failing tests).
pub fn dump_logs(topo: &Topo) {
    if let Ok(rd) = std::fs::read_dir(topo.path()) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("==== {} ====", p.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The example topology (examples/two-sites.toml) with a 16 MiB volume and every port moved to
/// a free one, after `edit` of its text, written into a new temp folder: (folder, config).
pub fn example_topology(edit: impl FnOnce(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-sites.toml");
    let mut text = edit(
        std::fs::read_to_string(example)
            .expect("examples/two-sites.toml")
            .replace("256MiB", "16MiB"),
    );
    for old in [
        7101, 7102, 7103, 7104, 7105, 10809, 10810, 9101, 9102, 9103, 9104, 9105,
    ] {
        text = text.replace(
            &format!("127.0.0.1:{old}"),
            &format!("127.0.0.1:{}", free_port()),
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("topology.toml");
    std::fs::write(&config, text).expect("write topology");
    make_certs(&config);
    (dir, config)
}

/// Generates the CA, node and role certificates of the topology at `config` into its
/// `[tls] dir` (nothing when it says `insecure = true`), with the code `tandem certs init`
/// runs.
pub fn make_certs(config: &Path) {
    let topo = tandem_core::config::Topology::load(config).expect("load topology");
    if topo.tls.insecure {
        return;
    }
    let nodes: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    tandem_core::certs::init(
        &topo.tls.dir,
        &topo.cluster.name,
        &nodes,
        tandem_core::certs::DEFAULT_VALIDITY,
    )
    .expect("generate certificates");
}

/// Starts the topology at `config` with `tandem local up --dir run` and fails the test, with
/// its stderr, if that does not succeed.
pub fn local_up(config: &Path, run: &Path) {
    let up = tandem_quiet(&[
        "local",
        "up",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--dir",
        run.to_str().expect("utf-8 path"),
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
}

/// Runs `tandem local down --dir RUN` when dropped, so that a failing test (a panic) leaves no
/// node running behind it.
pub struct LocalDown(pub PathBuf);

impl Drop for LocalDown {
    fn drop(&mut self) {
        let _ = tandem_quiet(&["local", "down", "--dir", &self.0.to_string_lossy()]);
    }
}

/// Runs `tandem ARGS` with warnings-only logs and returns its output.
pub fn tandem_quiet(args: &[&str]) -> std::process::Output {
    Command::new(tandem_bin())
        .args(args)
        .env("TANDEM_LOG", "warn")
        .output()
        .expect("run tandem")
}

/// Waits up to `timeout` until group `group` in `tandem status --json --config CONFIG`
/// satisfies `f`; panics naming `what` and the last group status otherwise.
pub fn wait_group_of(
    config: &Path,
    group: &str,
    what: &str,
    timeout: Duration,
    f: &dyn Fn(&Value) -> bool,
) {
    let cfg = config.to_string_lossy();
    let deadline = Instant::now() + timeout;
    loop {
        let o = tandem_quiet(&["status", "--json", "--config", &cfg]);
        let st: Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let g = st["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == group).cloned())
            .unwrap_or_default();
        if f(&g) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {g}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
