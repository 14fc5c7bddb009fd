//! The local cluster every `tandem bench` command measures (three coordinators, two
//! replicators, a volume group `vol` and any more groups, on free loopback ports, torn down on
//! drop) and the percentile helper they share. Below both `bench` and `bench_scale`.

use crate::cmd::status::{fetch, runtime};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tandem_chaos::runner::processes as proc;

/// The `p` quantile (0..=1) of `sorted`, nearest rank; 0 when empty.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A running bench cluster: its folder (removed on drop when it was a temp folder).
pub(crate) struct Cluster {
    pub(crate) dir: PathBuf,
    temp: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = proc::stop_all(&self.dir.join("run"));
        if self.temp {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes the bench topology into `dir` (a temp folder when `None`), starts it with `local
/// up` and waits for the leader to bootstrap it; returns the cluster, the coordinator addresses
/// and the primary's NBD port.
pub(crate) fn cluster(
    dir: Option<&Path>,
    mode: &str,
    volume_mib: u64,
    group_extra: &str,
    more_groups: &str,
    insecure: bool,
) -> Result<(Cluster, Vec<String>, u16)> {
    cluster_with(
        dir,
        mode,
        volume_mib,
        group_extra,
        more_groups,
        insecure,
        "",
    )
}

/// [`cluster`] with extra `key = value` lines in `[cluster]` (`rpo_sample_interval = "1s"`).
pub(crate) fn cluster_with(
    dir: Option<&Path>,
    mode: &str,
    volume_mib: u64,
    group_extra: &str,
    more_groups: &str,
    insecure: bool,
    cluster_extra: &str,
) -> Result<(Cluster, Vec<String>, u16)> {
    let (dir, temp) = match dir {
        Some(d) => (d.to_path_buf(), false),
        None => (
            std::env::temp_dir().join(format!("tandem-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)?;
    let p: Vec<u16> = (0..7)
        .map(|_| tandem_core::ports::free_port())
        .collect::<std::io::Result<_>>()?;
    let rpo = if mode == "sync" { "0s" } else { "5s" };
    let text = format!(
        r#"[cluster]
name = "bench"
{cluster_extra}
[[sites]]
name = "hanoi"
[[sites]]
name = "hcm"
[[sites]]
name = "danang"
witness = true
[[nodes]]
name = "c1"
site = "hanoi"
role = "coordinator"
listen = "127.0.0.1:{}"
data_dir = "data/c1"
[[nodes]]
name = "c2"
site = "hcm"
role = "coordinator"
listen = "127.0.0.1:{}"
data_dir = "data/c2"
[[nodes]]
name = "c3"
site = "danang"
role = "coordinator"
listen = "127.0.0.1:{}"
data_dir = "data/c3"
[[nodes]]
name = "hanoi-rep"
site = "hanoi"
role = "replicator"
listen = "127.0.0.1:{}"
data_dir = "data/hanoi-rep"
nbd_listen = "127.0.0.1:{}"
[[nodes]]
name = "hcm-rep"
site = "hcm"
role = "replicator"
listen = "127.0.0.1:{}"
data_dir = "data/hcm-rep"
[[groups]]
name = "vol"
primary = "hanoi"
replica = "hcm"
mode = "{mode}"
rpo_target = "{rpo}"
rto_target = "30s"
journal_max = "4GiB"
{group_extra}
[[groups.resources]]
name = "disk0"
kind = "volume"
size = "{volume_mib}MiB"
path = "volumes/hanoi/disk0.img"
replica_path = "volumes/hcm/disk0.img"
{more_groups}"#,
        p[0], p[1], p[2], p[3], p[4], p[5]
    );
    // mTLS on every link unless asked for plaintext (the cost of TLS is `--insecure` vs not).
    let text = if insecure {
        format!("{text}\n[tls]\ninsecure = true\n")
    } else {
        text
    };
    let config = dir.join("topology.toml");
    std::fs::write(&config, text)?;
    let c = Cluster {
        dir: dir.clone(),
        temp,
    };
    crate::cmd::local::up(&config, &dir.join("run"), Duration::from_secs(60))?;
    let addrs = vec![
        format!("127.0.0.1:{}", p[0]),
        format!("127.0.0.1:{}", p[1]),
        format!("127.0.0.1:{}", p[2]),
    ];
    // Wait for the leader to bootstrap the topology.
    let rt = runtime()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt
        .block_on(fetch(&addrs))
        .is_ok_and(|st| !st.groups.is_empty())
    {
        if Instant::now() > deadline {
            bail!("the cluster did not bootstrap within 30s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((c, addrs, p[4]))
}
