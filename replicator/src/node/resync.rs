//! Resync orchestration at a replica: retries a merkle resync from the primary (quarantining
//! what the old copy held first) until it succeeds or the role changes, then registers the
//! replica. Touches the data folder, the images and the network.

use super::layout::{
    journal_epochs, peer_replicator, replica_dir, replica_paths, sqlite_names, RESYNC_MARKER,
};
use super::replica::{open_replica, register_replica};
use super::runtime::{GroupRt, NodeRt, RoleState};
use crate::apply::ReplicaGroup;
use crate::error::{ReplicatorError, Result};
use crate::resync::{self, ResyncOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_core::clock::{Clock, SystemClock};
use tandem_core::config::{Group, ResourceKind};
use tandem_core::ids::{Epoch, Seq};
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{MerkleRequest, ResyncProgress};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{info, warn};

/// Brings this copy of `g` to the primary's by merkle diff while the primary keeps writing,
/// then registers the replica to continue from the primary's seq at hashing time. Retries
/// until it succeeds or the role changes; progress goes to `g.resync`.
pub(super) fn start_resync(
    rt: &Arc<NodeRt>,
    g: &mut GroupRt,
    epoch: Epoch,
    primary_site: &str,
    why: &str,
) -> Result<()> {
    let Some(addr) = peer_replicator(rt, &g.cfg, primary_site) else {
        return Err(ReplicatorError::Task(format!(
            "no replicator serves {} at {primary_site}",
            g.cfg.name
        )));
    };
    let rdir = replica_dir(rt, &g.cfg.name);
    crate::durable_dir::create_dir_durable(&rdir)?;
    let now_ms = SystemClock::new().now_ms().max(0) as u64;
    crate::meta::write_meta(&rdir.join(RESYNC_MARKER), *b"RSYN", &[now_ms])?;
    info!(group = %g.cfg.name, %why, "resync starting");
    g.role = RoleState::Replica {
        epoch,
        rg: None,
        resyncing: true,
    };
    let started = Instant::now();
    let progress = g.resync.clone();
    progress.send_replace(ResyncProgress {
        group: g.cfg.name.clone(),
        phase: "hashing".into(),
        ..ResyncProgress::default()
    });
    let cfg = g.cfg.clone();
    // A copy with a journal was a primary: what its volumes hold that the new primary does
    // not (the unreplicated tail) is kept in quarantine before the resync overwrites it.
    let keep_tail = (!journal_epochs(rt, &cfg.name).is_empty()).then_some(epoch);
    let job = ResyncJob {
        rt: rt.clone(),
        cfg,
        addr,
        epoch,
        progress,
        started,
        keep_tail,
    };
    tokio::spawn(job.run());
    Ok(())
}

/// One resync of a group at this replica, retried until it succeeds or the role changes.
struct ResyncJob {
    rt: Arc<NodeRt>,
    cfg: Group,
    /// The primary replicator's URL.
    addr: String,
    epoch: Epoch,
    progress: watch::Sender<ResyncProgress>,
    started: Instant,
    keep_tail: Option<Epoch>,
}

impl ResyncJob {
    /// Quarantines the SQLite databases (once), resyncs, and registers the replica; retries
    /// with backoff (200 ms doubling to 3 s).
    async fn run(self) {
        let (rt2, cfg, progress, epoch) = (&self.rt, &self.cfg, &self.progress, self.epoch);
        let mut delay = Duration::from_millis(200);
        let mut quarantined = sqlite_names(cfg).is_empty();
        let mut kept: Vec<String> = Vec::new();
        loop {
            if !quarantined {
                match self.quarantine_databases().await {
                    Ok(paths) => {
                        quarantined = true;
                        kept.extend(
                            paths
                                .iter()
                                .map(|p| format!("database copy {}", p.display())),
                        );
                    }
                    Err(e) => {
                        // Nothing is overwritten before its copy is kept.
                        warn!(group = %cfg.name, "quarantining the SQLite databases before the resync (will retry): {e}");
                        progress.send_modify(|p| p.error = format!("quarantine: {e}"));
                        if let Some(g) = rt2.groups.lock().await.get_mut(&cfg.name) {
                            g.last_error = format!("resync: quarantine: {e}");
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(3));
                        continue;
                    }
                }
            }
            let addr = &self.addr;
            match resync_from(rt2, cfg, addr, progress, self.started, self.keep_tail).await {
                Ok((seq, from, blocks)) => {
                    kept.extend(blocks);
                    let opened = open_replica(rt2, cfg).and_then(|rg| {
                        rg.set_fence(epoch)?;
                        rg.set_sqlite_from(&from)?;
                        // The copy is the primary's now, whatever history it was bound to.
                        rg.unbind_lineage()?;
                        rg.reset_watermark(seq)?;
                        Ok(rg)
                    });
                    match opened {
                        Ok(rg) => {
                            self.finish(rg, seq, &kept).await;
                            return;
                        }
                        Err(e) => warn!(group = %cfg.name, "opening replica after resync: {e}"),
                    }
                }
                Err(e) => {
                    warn!(group = %cfg.name, "resync from {addr} failed (will retry): {e}");
                    progress.send_modify(|p| p.error = e.to_string());
                    if let Some(g) = rt2.groups.lock().await.get_mut(&cfg.name) {
                        if !matches!(
                            g.role,
                            RoleState::Replica {
                                resyncing: true,
                                ..
                            }
                        ) {
                            progress.send_modify(|p| p.phase = "failed".into());
                            return;
                        }
                        g.last_error = format!("resync: {e}");
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    /// Keeps a copy of each SQLite database before the resync overwrites it (on the blocking
    /// pool); returns the copies.
    async fn quarantine_databases(&self) -> Result<Vec<PathBuf>> {
        let (rt3, cfg3, epoch) = (self.rt.clone(), self.cfg.clone(), self.epoch);
        tokio::task::spawn_blocking(move || quarantine_sqlite(&rt3, &cfg3, epoch))
            .await
            .map_err(|e| ReplicatorError::Task(e.to_string()))
            .and_then(|r| r)
    }

    /// The resync is done and the copy `rg` continues from `seq`: unless the role changed
    /// meanwhile, drop the old journals and the resync marker, register the replica and
    /// report what was kept in quarantine.
    async fn finish(&self, rg: ReplicaGroup, seq: Seq, kept: &[String]) {
        let (rt2, cfg, progress, epoch) = (&self.rt, &self.cfg, &self.progress, self.epoch);
        let started = self.started;
        let mut groups = rt2.groups.lock().await;
        let Some(g) = groups.get_mut(&cfg.name) else {
            return;
        };
        if !matches!(
            g.role,
            RoleState::Replica {
                resyncing: true,
                ..
            }
        ) {
            return;
        }
        let _ = std::fs::remove_dir_all(rt2.data_dir.join("journal").join(&cfg.name));
        let marker = replica_dir(rt2, &cfg.name).join(RESYNC_MARKER);
        let removed = std::fs::remove_file(&marker)
            .map_err(|e| ReplicatorError::io("remove", &marker, e))
            .and_then(|()| crate::meta::sync_dir(&replica_dir(rt2, &cfg.name)));
        if let Err(e) = removed {
            warn!(group = %cfg.name, "removing {}: {e}", marker.display());
        }
        register_replica(rt2, g, epoch, Arc::new(rg));
        g.last_error.clear();
        g.quarantined = if kept.is_empty() {
            String::new()
        } else {
            format!(
                "quarantined the old copy's overwritten data: {}",
                kept.join("; ")
            )
        };
        progress.send_modify(|p| {
            p.phase = "done".into();
            p.seq = seq.0;
            p.error.clear();
            p.elapsed_ms = started.elapsed().as_millis() as u64;
        });
    }
}

/// Resyncs every volume of `g` from the primary replicator at `addr` and has the primary
/// journal a fresh snapshot of every SQLite database; returns the seq the copy continues from
/// (the smallest of the primary's watermarks taken before each hash, and of the seqs just
/// before each snapshot) and, per database, the seq its snapshot starts at.
async fn resync_from(
    rt: &NodeRt,
    g: &Group,
    addr: &str,
    progress: &watch::Sender<ResyncProgress>,
    started: Instant,
    keep_tail: Option<Epoch>,
) -> Result<(Seq, HashMap<String, Seq>, Vec<String>)> {
    let pull = Pull {
        rt,
        g,
        addr,
        progress,
        started,
        keep_tail,
    };
    let mut kept = Vec::new();
    let mut client = pull.dial().await?;
    let mut seq: Option<u64> = None;
    for r in &g.resources {
        let ResourceKind::Volume {
            block_size, size, ..
        } = &r.kind
        else {
            continue;
        };
        let Some(path) = rt.topo.resource_path(g, r, &rt.node.site) else {
            continue;
        };
        let watermark = pull
            .volume(
                &mut client,
                &r.name,
                &path,
                (block_size.bytes() as u32, size.bytes()),
                &mut kept,
            )
            .await?;
        seq = Some(seq.map_or(watermark, |s| s.min(watermark)));
    }
    let only_postgres = g
        .resources
        .iter()
        .all(|r| matches!(r.kind, ResourceKind::Postgres { .. }));
    if seq.is_none() && only_postgres {
        seq = Some(pull.journal_start(&mut client).await?);
    }
    let from = pull.sqlite_snapshots(&mut client, &mut seq).await?;
    Ok((Seq(seq.unwrap_or(0)), from, kept))
}

/// The replica's side of one resync attempt of a group from the primary at `addr`.
struct Pull<'a> {
    rt: &'a NodeRt,
    g: &'a Group,
    addr: &'a str,
    progress: &'a watch::Sender<ResyncProgress>,
    started: Instant,
    /// Set (to the epoch) when the copy was a primary: what the resync overwrites is kept in
    /// quarantine.
    keep_tail: Option<Epoch>,
}

impl Pull<'_> {
    fn transport(&self, reason: String) -> ReplicatorError {
        ReplicatorError::Transport {
            addr: self.addr.to_owned(),
            reason,
        }
    }

    /// A Replication client of the primary. Blocks cross compressed as the resync chooses per
    /// link (`ReadBlocksRequest::zstd_level`); no gRPC compression on top (leaves are hashes,
    /// blocks are compressed already).
    async fn dial(&self) -> Result<ReplicationClient<Channel>> {
        let net = &self.rt.me.net;
        let ep = net
            .endpoint(self.addr)
            .map_err(|e| ReplicatorError::Task(e.to_string()))?
            .connect_timeout(Duration::from_secs(1));
        let ch = net
            .connect(ep)
            .await
            .map_err(|e| self.transport(e.to_string()))?;
        Ok(tandem_core::grpc_limits!(ReplicationClient::new(ch)))
    }

    /// Resyncs volume `resource` (image at `path`, `(block size, configured size)`) by merkle
    /// diff; notes what it quarantined in `kept`; returns the primary's watermark taken before
    /// it hashed. A primary whose copy is longer than the configured size is refused.
    async fn volume(
        &self,
        client: &mut ReplicationClient<Channel>,
        resource: &str,
        path: &Path,
        (block_size, size): (u32, u64),
        kept: &mut Vec<String>,
    ) -> Result<u64> {
        let (rt, g, started) = (self.rt, self.g, self.started);
        let (tx, name) = (self.progress.clone(), resource.to_owned());
        let opts = ResyncOptions {
            live_source: true,
            // A live source's roots may differ at the end anyway (the journal replay after
            // the resync brings the copy up to date), so read back only the written blocks.
            full_rehash: false,
            progress: Some(Arc::new(move |t: resync::ResyncTick| {
                tx.send_modify(|p| {
                    p.phase = t.phase.into();
                    p.resource = name.clone();
                    p.bytes_done = t.bytes_done;
                    p.bytes_total = t.bytes_total;
                    p.blocks_differing = t.blocks_differing;
                    p.blocks_copied = t.blocks_copied;
                    p.wire_bytes = t.wire_bytes;
                    p.elapsed_ms = started.elapsed().as_millis() as u64;
                })
            })),
            quarantine: self.keep_tail.map(|e| {
                let ms = SystemClock::new().now_ms().max(0);
                rt.data_dir
                    .join("quarantine")
                    .join(&g.name)
                    .join(format!("{}-epoch{}-{ms}.blocks", resource, e.0))
            }),
            max_length: Some(size),
            // Compression chosen per link; the link is no faster than the group's cap.
            link_bytes_per_sec: g.max_bandwidth.map(|b| b.bytes_per_sec),
            ..ResyncOptions::default()
        };
        let report = resync::resync(client, &g.name, resource, path, block_size, opts)
            .await
            .map_err(|e| self.transport(e.to_string()))?;
        info!(
            group = %g.name, resource = %resource,
            differing_blocks = report.blocks_differing, total_blocks = report.blocks_total,
            wire_bytes = report.bytes_sent_over_wire, zstd_level = report.zstd_level,
            ms = report.duration.as_millis() as u64,
            from_seq = report.source_watermark, "resynced from the primary"
        );
        if let Some(q) = &report.quarantine {
            kept.push(format!(
                "{} blocks of {} in {}",
                report.quarantined_blocks,
                resource,
                q.display()
            ));
            warn!(group = %g.name, resource = %resource, blocks = report.quarantined_blocks, copy = %q.display(),
                "quarantined the old content of the blocks this resync overwrote: what this copy held that the primary does not is kept there, not merged");
        }
        Ok(report.source_watermark)
    }

    /// Nothing to diff: an archive folder needs no resync (a standby is rebuilt from a base
    /// backup). Continue from what the primary's journal still holds, so a returning old
    /// primary does not ask for frames the journal has trimmed.
    async fn journal_start(&self, client: &mut ReplicationClient<Channel>) -> Result<u64> {
        let r = client
            .merkle(MerkleRequest {
                group: self.g.name.clone(),
                resource: String::new(),
                block_size: 0,
                barrier: false,
                ..Default::default()
            })
            .await
            .map_err(|s| self.transport(s.message().to_owned()))?;
        Ok(r.into_inner().watermark)
    }

    /// SQLite databases: the primary journals a fresh full snapshot of each; the copy applies
    /// each database's changes only from its snapshot on (`ReplicaGroup::set_sqlite_from`).
    /// Lowers `seq` to just before each snapshot; returns where each database's starts.
    async fn sqlite_snapshots(
        &self,
        client: &mut ReplicationClient<Channel>,
        seq: &mut Option<u64>,
    ) -> Result<HashMap<String, Seq>> {
        let g = self.g;
        let names = sqlite_names(g);
        let mut from = HashMap::new();
        if names.is_empty() {
            return Ok(from);
        }
        self.progress.send_modify(|p| {
            p.phase = "snapshot".into();
            p.elapsed_ms = self.started.elapsed().as_millis() as u64;
        });
        let r = client
            .merkle(MerkleRequest {
                group: g.name.clone(),
                resource: String::new(),
                sqlite_snapshots: true,
                ..Default::default()
            })
            .await
            .map_err(|s| self.transport(s.message().to_owned()))?
            .into_inner();
        for name in &names {
            let first = r.snapshot_from.get(name).copied().ok_or_else(|| {
                self.transport(format!(
                    "the primary took no snapshot of the SQLite resource {name:?}"
                ))
            })?;
            let before = first.saturating_sub(1);
            *seq = Some(seq.map_or(before, |s| s.min(before)));
            from.insert(name.clone(), Seq(first));
        }
        info!(group = %g.name, ?from, "SQLite databases follow the primary's fresh snapshots");
        Ok(from)
    }
}

/// Before a resync overwrites them: copies each SQLite database of the group at this site
/// (its committed WAL included) into `quarantine/GROUP/` under the data folder, once per
/// epoch, then removes its `-wal` and `-shm` files. The copy keeps what a returning old
/// primary committed that never reached the replica, for an operator to inspect or merge;
/// the stale WAL must go, or SQLite would lay its frames over the resynced pages.
fn quarantine_sqlite(rt: &NodeRt, g: &Group, epoch: Epoch) -> Result<Vec<PathBuf>> {
    let names = sqlite_names(g);
    let qdir = rt.data_dir.join("quarantine").join(&g.name);
    let mut kept = Vec::new();
    for (name, path) in replica_paths(rt, g) {
        if !names.contains(&name) {
            continue;
        }
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        let mut shm = path.as_os_str().to_owned();
        shm.push("-shm");
        let shm = PathBuf::from(shm);
        let prefix = format!("{name}-epoch{}-", epoch.0);
        let done = std::fs::read_dir(&qdir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        });
        if len > 0 && !done {
            crate::durable_dir::create_dir_durable(&qdir)?;
            let now_ms = SystemClock::new().now_ms().max(0);
            let out = qdir.join(format!("{prefix}{now_ms}.db"));
            // A consistent copy through SQLite (WAL content included); a raw copy of the
            // files when SQLite cannot read it.
            let vacuumed = rusqlite::Connection::open(&path).and_then(|c| {
                c.execute("VACUUM INTO ?1", [out.display().to_string()])
                    .map(|_| ())
            });
            if let Err(e) = vacuumed {
                warn!(group = %g.name, resource = %name, "VACUUM INTO failed ({e}): copying the files as they are");
                let _ = std::fs::remove_file(&out);
                std::fs::copy(&path, &out).map_err(|e| ReplicatorError::io("copy", &path, e))?;
                if wal.exists() {
                    let mut w = out.as_os_str().to_owned();
                    w.push("-wal");
                    std::fs::copy(&wal, PathBuf::from(w))
                        .map_err(|e| ReplicatorError::io("copy", &wal, e))?;
                }
            }
            crate::meta::sync_dir(&qdir)?;
            warn!(group = %g.name, resource = %name, copy = %out.display(),
                "quarantined this site's copy of the database before resyncing it: what it holds that the primary does not is kept there, not merged");
            kept.push(out);
        }
        for f in [&wal, &shm] {
            match std::fs::remove_file(f) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ReplicatorError::io("remove", f, e)),
            }
        }
    }
    Ok(kept)
}
