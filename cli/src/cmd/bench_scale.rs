//! `tandem bench scale`: many small async groups on 3 local coordinators and 2 replicators (or
//! `--hosts-per-site H` per site, and `--kill-host` to time the loss of one)
//! (real processes on loopback, as `bench replication` starts them); reports what the
//! coordinators cost while the groups idle or take a light write load: `tandem status` latency,
//! raft commits per second, coordinator CPU, memory and disk writes (from `/proc`), and the
//! raft store on disk at the end. The figures of "Scale (issue 20)" in docs/BENCHMARKS.md.

use crate::cmd::bench_cluster::{cluster_with, pct};
use crate::cmd::bench_hostloss::{hosts_toml, lose_host, nbd_targets};
use crate::cmd::status::{fetch, runtime};
use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_chaos::nbd_client::NbdPool;
use tandem_chaos::runner::processes as proc;

/// Arguments of `tandem bench scale`.
#[derive(Debug, ClapArgs)]
pub struct ScaleArgs {
    /// Number of async groups (one small volume each, primary hanoi, replica hcm).
    #[arg(long, default_value = "10")]
    pub groups: usize,
    /// Seconds of the measured window (after every group is protected).
    #[arg(long, default_value = "60")]
    pub secs: u64,
    /// Size of each group's volume in MiB.
    #[arg(long, default_value = "1")]
    pub volume_mib: u64,
    /// Light write load: 4 KiB writes per second spread over all groups in turn (0 = idle).
    #[arg(long, default_value = "0")]
    pub writes_per_sec: u64,
    /// How often `tandem status` is asked during the window (ms).
    #[arg(long, default_value = "500")]
    pub status_every_ms: u64,
    /// Most seconds to wait for every group to be protected before the window starts.
    #[arg(long, default_value = "300")]
    pub ready_secs: u64,
    /// Folder for the cluster (default: a temp folder, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Replicator hosts per site (the groups are spread over them by the placement function).
    #[arg(long, default_value = "1")]
    pub hosts_per_site: usize,
    /// After the window, kill one primary-site host (`hanoi-rep-2`) and time the automatic
    /// failover of every group it served (needs `--hosts-per-site` of 2 or more: with one
    /// host per site that is the loss of the site). Turns `auto_failover` on for every group.
    #[arg(long)]
    pub kill_host: bool,
    /// The cluster's `rpo_sample_interval` (default 5 s): each group keeps its last 720
    /// samples, so a shorter interval fills that ring within the window and shows whether
    /// memory levels off once everything bounded is full.
    #[arg(long, default_value = "5s")]
    pub rpo_sample_interval: String,
}

/// The `[[groups]]` tables of groups 2..=n (group 1 is the `vol` group `cluster` writes).
pub fn groups_toml(n: usize, volume_mib: u64) -> String {
    let mut out = String::new();
    for i in 2..=n {
        let _ = write!(
            out,
            r#"
[[groups]]
name = "g{i:04}"
primary = "hanoi"
replica = "hcm"
mode = "async"
rpo_target = "5s"
rto_target = "30s"
journal_max = "16MiB"
[[groups.resources]]
name = "d{i:04}"
kind = "volume"
size = "{volume_mib}MiB"
path = "volumes/hanoi/d{i:04}.img"
replica_path = "volumes/hcm/d{i:04}.img"
"#
        );
    }
    out
}

/// What `/proc` says of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    /// User + system CPU time, clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Bytes the process caused to be written to storage (`write_bytes`).
    pub write_bytes: u64,
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    stat_user_sys_ticks(stat).map(|(u, s)| u + s)
}

/// (utime, stime) (fields 14 and 15) of a `/proc/PID/stat` line, clock ticks.
pub fn stat_user_sys_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 (state) is f[0], so field k is f[k - 3].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// Minor page faults (field 10) of a `/proc/PID/stat` line.
pub fn stat_minor_faults(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(7)?.parse().ok()
}

/// (user, system) CPU seconds and minor page faults of `pid` so far; `None` when it is gone.
pub(crate) fn cpu_secs(pid: i32) -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (u, s) = stat_user_sys_ticks(&stat)?;
    Some((
        u as f64 / USER_HZ,
        s as f64 / USER_HZ,
        stat_minor_faults(&stat)?,
    ))
}

/// The value of `key` (e.g. `VmRSS:`, `write_bytes:`) in a `/proc` key-value file.
pub fn proc_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn sample(pid: i32) -> Option<ProcSample> {
    let rd = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok();
    Some(ProcSample {
        cpu_ticks: stat_cpu_ticks(&rd("stat")?)?,
        rss_kib: proc_field(&rd("status")?, "VmRSS:")?,
        write_bytes: proc_field(&rd("io")?, "write_bytes:").unwrap_or(0),
    })
}

/// Clock ticks per second of `/proc/PID/stat` times: Linux reports them in USER_HZ, which is
/// 100 on every architecture it exports to user space.
const USER_HZ: f64 = 100.0;

/// Total bytes and file count under `dir`, and the same for its `blobs` subfolder (sled's
/// large values).
fn du(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    bytes += m.len();
                    files += 1;
                }
                Err(_) => {}
            }
        }
    }
    (bytes, files)
}

/// `/proc/loadavg` as one line (empty when unreadable).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs `tandem bench scale`.
pub fn run(a: ScaleArgs) -> Result<()> {
    if a.groups == 0 {
        return Err(crate::exit::bad_input("--groups must be at least 1"));
    }
    if a.hosts_per_site == 0 || (a.kill_host && a.hosts_per_site < 2) {
        return Err(crate::exit::bad_input(
            "--hosts-per-site must be at least 1, and at least 2 with --kill-host",
        ));
    }
    let load_before = loadavg();
    let t_start = Instant::now();
    let mut more = groups_toml(a.groups, a.volume_mib);
    let mut extra = String::new();
    if a.kill_host {
        more = more.replace("mode = \"async\"", "mode = \"async\"\nauto_failover = true");
        extra.push_str("auto_failover = true");
    }
    more.push_str(&hosts_toml(a.hosts_per_site)?);
    let sample_every = a
        .rpo_sample_interval
        .parse::<tandem_core::config::HumanDuration>()
        .map_err(|e| crate::exit::bad_input(format!("--rpo-sample-interval: {e}")))?;
    let (c, addrs, _) = cluster_with(
        a.dir.as_deref(),
        "async",
        a.volume_mib,
        &extra,
        &more,
        false,
        &format!("rpo_sample_interval = \"{sample_every}\""),
    )?;
    let run_dir = c.dir.join("run");
    let coords = ["c1", "c2", "c3"];
    let pids: Vec<i32> = coords
        .iter()
        .map(|n| proc::read_pid(&run_dir, n))
        .collect::<Result<_>>()?;
    let rt = runtime()?;
    let report = rt.block_on(async {
        // 1. Every group protected (bounded).
        let deadline = Instant::now() + Duration::from_secs(a.ready_secs);
        loop {
            if let Ok(st) = fetch(&addrs).await {
                let protected = st.groups.iter().filter(|g| g.state == "protected").count();
                if st.groups.len() == a.groups && protected == a.groups {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{protected} of {} groups protected after {}s",
                        a.groups,
                        a.ready_secs
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ready_secs = t_start.elapsed().as_secs_f64();
        // 2. The window: light load, status asked as the CLI asks it, /proc before and after.
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        // Each group's export on its primary host, as status names it.
        let targets = nbd_targets(&fetch(&addrs).await?);
        let load = (a.writes_per_sec > 0 && !targets.is_empty()).then(|| {
            let (stop, written) = (stop.clone(), written.clone());
            let pools: Vec<NbdPool> = targets
                .into_iter()
                .map(|(addr, e)| NbdPool::new(addr, e, 1))
                .collect();
            let every = Duration::from_secs_f64(1.0 / a.writes_per_sec as f64);
            let slots = (a.volume_mib << 20) / 4096;
            tokio::spawn(async move {
                let block = tandem_core::mixed::mixed(5, 4096);
                let mut tick = tokio::time::interval(every);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let pool = &pools[(i % pools.len() as u64) as usize];
                    let off = ((i / pools.len() as u64 * 7919) % slots.max(1)) * 4096;
                    if pool.write(off, &block, false).await.is_ok() {
                        written.fetch_add(1, Ordering::SeqCst);
                    }
                    i += 1;
                }
            })
        });
        let st0 = fetch(&addrs).await?;
        let before: Vec<Option<ProcSample>> = pids.iter().map(|p| sample(*p)).collect();
        let t0 = Instant::now();
        let mut lat = Vec::new();
        let mut rss = RssSeries::new(pids.len(), RSS_PARTS, a.secs);
        let mut doc_bytes = 0usize;
        while t0.elapsed() < Duration::from_secs(a.secs) {
            let t = Instant::now();
            match fetch(&addrs).await {
                Ok(st) => {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    doc_bytes = serde_json::to_vec(&st).map(|v| v.len()).unwrap_or(0);
                }
                Err(e) => tracing::debug!(error = %e, "status failed during the window"),
            }
            let now: Vec<u64> = pids
                .iter()
                .map(|p| sample(*p).map_or(0, |s| s.rss_kib))
                .collect();
            rss.add(t0.elapsed().as_secs_f64(), &now);
            tokio::time::sleep(Duration::from_millis(a.status_every_ms)).await;
        }
        let window = t0.elapsed().as_secs_f64();
        let after: Vec<Option<ProcSample>> = pids.iter().map(|p| sample(*p)).collect();
        let st1 = fetch(&addrs).await?;
        stop.store(true, Ordering::SeqCst);
        if let Some(l) = load {
            let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
        }
        let host_loss = if a.kill_host {
            Some(lose_host(&addrs, &run_dir, "hanoi-rep-2", Duration::from_secs(300)).await?)
        } else {
            None
        };
        lat.sort_by(|x, y| x.total_cmp(y));
        let per_coord = coordinator_figures(&c.dir, &coords, &before, &after, &rss, window);
        let commits = st1.commit_index.saturating_sub(st0.commit_index) as f64 / window;
        let audit = st1.audit_len.saturating_sub(st0.audit_len) as f64 / window;
        let protected = st1.groups.iter().filter(|g| g.state == "protected").count();
        anyhow::Ok(json!({
            "groups": a.groups,
            "volume_mib": a.volume_mib,
            "writes_per_sec_asked": a.writes_per_sec,
            "writes_per_sec_done": written.load(Ordering::SeqCst) as f64 / window,
            "seconds_to_all_protected": ready_secs,
            "window_secs": window,
            "groups_protected_at_end": protected,
            "status": {
                "calls": lat.len(),
                "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0),
                "target_p99_ms": 200.0,
                "ratio_p99_to_target": pct(&lat, 0.99) / 200.0,
                "document_kb": doc_bytes as f64 / 1e3,
            },
            "hosts_per_site": a.hosts_per_site,
            "host_loss": host_loss,
            "raft_commits_per_sec": commits,
            "raft_commits_per_sec_per_group": commits / a.groups as f64,
            "audit_records_per_sec": audit,
            "coordinators": per_coord,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
        }))
    });
    drop(c);
    let report: Value = report?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Parts of the window the RSS series is cut into (`rss_mib_max_by_part`).
const RSS_PARTS: usize = 10;

/// Each coordinator's largest RSS in each equal part of the window: memory that levels off shows
/// as equal maxima in the later parts, memory that grows as rising ones.
#[derive(Debug, Clone, PartialEq)]
pub struct RssSeries {
    /// `max[part][coordinator]`, KiB.
    max: Vec<Vec<u64>>,
    /// The window's length, seconds.
    secs: f64,
}

impl RssSeries {
    /// An empty series of `parts` parts of a `secs`-long window for `n` coordinators.
    pub fn new(n: usize, parts: usize, secs: u64) -> Self {
        RssSeries {
            max: vec![vec![0; n]; parts.max(1)],
            secs: secs.max(1) as f64,
        }
    }

    /// One sample of every coordinator's RSS (KiB) at `t` seconds into the window (a sample
    /// past the end counts in the last part).
    pub fn add(&mut self, t: f64, rss_kib: &[u64]) {
        let parts = self.max.len();
        let part = ((t / self.secs * parts as f64) as usize).min(parts - 1);
        for (m, r) in self.max[part].iter_mut().zip(rss_kib) {
            *m = (*m).max(*r);
        }
    }

    /// Coordinator `i`'s largest RSS over the whole window, KiB.
    pub fn overall(&self, i: usize) -> u64 {
        self.max
            .iter()
            .filter_map(|p| p.get(i))
            .copied()
            .max()
            .unwrap_or(0)
    }

    /// Coordinator `i`'s largest RSS in each part, MiB (0: no sample in that part).
    pub fn by_part_mib(&self, i: usize) -> Vec<f64> {
        self.max
            .iter()
            .map(|p| {
                p.get(i)
                    .map_or(0.0, |k| (*k as f64 / 1024.0 * 10.0).round() / 10.0)
            })
            .collect()
    }
}

/// The `/proc` and disk figures of each coordinator over the window.
fn coordinator_figures(
    dir: &Path,
    coords: &[&str],
    before: &[Option<ProcSample>],
    after: &[Option<ProcSample>],
    rss: &RssSeries,
    window: f64,
) -> Vec<Value> {
    let mut per_coord = Vec::new();
    for (i, name) in coords.iter().enumerate() {
        let b = before.get(i).copied().flatten().unwrap_or_default();
        let e = after.get(i).copied().flatten().unwrap_or_default();
        let raft = dir.join("data").join(name).join("raft");
        let (store_bytes, store_files) = du(&raft);
        let (blob_bytes, blob_files) = du(&raft.join("blobs"));
        per_coord.push(json!({
            "node": name,
            "cpu_pct_of_a_core": (e.cpu_ticks.saturating_sub(b.cpu_ticks)) as f64 / USER_HZ / window * 100.0,
            "rss_mib_end": e.rss_kib as f64 / 1024.0,
            "rss_mib_max": rss.overall(i) as f64 / 1024.0,
            "rss_mib_max_by_part": rss.by_part_mib(i),
            "disk_write_mb_per_s": (e.write_bytes.saturating_sub(b.write_bytes)) as f64 / window / 1e6,
            "raft_store_mb_end": store_bytes as f64 / 1e6,
            "raft_store_files": store_files,
            "sled_blobs_mb_end": blob_bytes as f64 / 1e6,
            "sled_blob_files": blob_files,
        }));
    }
    per_coord
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_counts_fields_after_the_command_name() {
        let line =
            "4242 (tandem node) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(stat_cpu_ticks(line), Some(300));
        assert_eq!(stat_user_sys_ticks(line), Some((250, 50)));
        assert_eq!(stat_minor_faults(line), Some(100));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn proc_field_reads_rss_and_write_bytes() {
        let status = "Name:\ttandem\nVmRSS:\t   51200 kB\nThreads:\t9\n";
        assert_eq!(proc_field(status, "VmRSS:"), Some(51200));
        let io = "rchar: 10\nwchar: 20\nwrite_bytes: 4096\ncancelled_write_bytes: 0\n";
        assert_eq!(proc_field(io, "write_bytes:"), Some(4096));
        assert_eq!(proc_field(io, "missing:"), None);
    }

    #[test]
    fn rss_series_keeps_each_parts_maximum_per_coordinator() {
        let mut r = RssSeries::new(2, 4, 100);
        r.add(0.0, &[1024, 2048]);
        r.add(10.0, &[4096, 1024]);
        r.add(60.0, &[2048, 8192]);
        r.add(250.0, &[3072, 0]);
        assert_eq!(r.by_part_mib(0), vec![4.0, 0.0, 2.0, 3.0]);
        assert_eq!(r.by_part_mib(1), vec![2.0, 0.0, 8.0, 0.0]);
        assert_eq!((r.overall(0), r.overall(1)), (4096, 8192));
        assert_eq!(r.by_part_mib(5), vec![0.0; 4]);
    }

    #[test]
    fn groups_toml_declares_the_groups_after_the_first() {
        let t = groups_toml(3, 2);
        assert_eq!(t.matches("[[groups]]").count(), 2);
        assert!(t.contains("name = \"g0002\"") && t.contains("name = \"d0003\""));
        assert!(t.contains("size = \"2MiB\""));
        assert_eq!(groups_toml(1, 1), "");
    }
}
