//! Applying each fault of a scenario's timeline to the running cluster: network faults on
//! the mesh, ordered runs through the client, signals to processes, clock and failpoint files,
//! and faults on files at rest (torn journal tail, bitrot) of a killed node. I/O: processes,
//! files, the mesh, the coordinators.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_coordinator::status::ClusterStatus;

use super::cluster::Ctx;
use super::load::Load;
use super::nodefiles::{set_clock, set_failpoints};
use super::observe::Observed;
use super::processes as proc;
use super::topology::VOLUME_GROUP;
use crate::proxy::Blackhole;
use crate::scenario::{Fault, FaultAction, Tear};

/// Applies fault `f` of the timeline.
///
/// # Errors
/// The fault could not be applied (no link to fault, a signal failed, a file fault on a
/// node still running).
pub fn apply(ctx: &Ctx, f: &Fault, seed: u64, obs: &mut Observed, load: &mut Load) -> Result<()> {
    obs.fault_names
        .push(format!("{:?}@{}s:{}", f.action, f.at.as_millis() / 1000, f.target).to_lowercase());
    if f.action.is_network() {
        return apply_network(ctx, f, seed, obs, load);
    }
    if f.action == FaultAction::Order {
        apply_order(ctx, f, obs, load);
        return Ok(());
    }
    if f.action == FaultAction::Checkpoint {
        return super::pitr::checkpoint(ctx, f, obs, load);
    }
    let nodes = ctx.nodes_of(&f.target, obs.last_st.as_ref());
    if let (Some(d), FaultAction::Kill) = (load.db.as_ref(), f.action) {
        d.before_kill(&nodes);
    }
    if let (Some(p), FaultAction::Kill) = (load.pg.as_mut(), f.action) {
        p.before_kill(&nodes)?;
    }
    if f.action == FaultAction::PowerCut {
        return power_cut(ctx, f, &nodes, obs, load);
    }
    for n in &nodes {
        apply_to_node(ctx, f, n, seed, obs, load)?;
    }
    if matches!(f.action, FaultAction::Restart | FaultAction::PowerRestore) {
        // Restart what this scenario killed of the target (the target may have moved:
        // restart every killed node of the named site or role).
        let again: Vec<String> = obs
            .killed
            .iter()
            .filter(|k| nodes.contains(k) || f.target == "leader" || f.target.starts_with("site:"))
            .cloned()
            .collect();
        for n in &again {
            // A restarted node starts with no failpoint set.
            obs.failpoints.remove(n);
            ctx.start(n)?;
        }
        obs.killed.retain(|k| !again.contains(k));
    } else if matches!(f.action, FaultAction::Kill | FaultAction::Pause) {
        obs.failed_at(load.rec.now_ms());
    }
    Ok(())
}

/// A power cut of `nodes`: their processes killed, then what their folders had not made
/// durable dropped; they count as killed (`power-restore`, `restart` and the recovery start
/// them again).
fn power_cut(
    ctx: &Ctx,
    f: &Fault,
    nodes: &[String],
    obs: &mut Observed,
    load: &Load,
) -> Result<()> {
    let Some(feeds) = ctx.power.as_ref() else {
        bail!("power-cut without power-loss file systems (the scenario was set up without them)");
    };
    let reports = feeds.cut(&ctx.topo, &ctx.run_dir, nodes, f.torn_write.unwrap_or(true))?;
    let now = load.rec.now_ms();
    for n in nodes {
        if !obs.killed.contains(n) {
            obs.killed.push(n.clone());
        }
    }
    let dropped = reports
        .iter()
        .any(|(_, r)| super::power::dropped_anything(r));
    obs.power_cuts.push(dropped);
    for (folder, r) in &reports {
        obs.notes.push(format!(
            "{now} ms: {}",
            super::power::cut_note(&ctx.dir, folder, r)
        ));
    }
    obs.failed_at(now);
    Ok(())
}

/// A network fault: changes the links through the mesh.
fn apply_network(ctx: &Ctx, f: &Fault, seed: u64, obs: &mut Observed, load: &Load) -> Result<()> {
    let n = network_fault(ctx, f, obs.last_st.as_ref(), seed);
    if n == 0 && f.action != FaultAction::Heal {
        bail!(
            "{:?} at {} ms: no link between {} and {}",
            f.action,
            f.at.as_millis(),
            f.target,
            f.peer.as_deref().unwrap_or("the other nodes")
        );
    }
    let now = load.rec.now_ms();
    if f.action == FaultAction::Heal {
        obs.net_until_ms = Some(now);
    } else {
        obs.net_from_ms.get_or_insert(now);
        if matches!(f.action, FaultAction::Partition | FaultAction::Cut) && obs.failure_ms.is_none()
        {
            obs.failure_ms = Some(now);
            obs.primary_outlives_failure = true;
        }
    }
    Ok(())
}

/// An ordered run (`failover` unless the fault names another runbook) through the client.
fn apply_order(ctx: &Ctx, f: &Fault, obs: &mut Observed, load: &Load) {
    let kind = f.runbook.as_deref().unwrap_or("failover");
    let at = load.rec.now_ms();
    match ctx.rt.block_on(ctx.client.order(kind, VOLUME_GROUP)) {
        Ok(id) => {
            obs.orders_accepted += 1;
            obs.notes
                .push(format!("{kind} ordered at {at} ms: run {id}"));
        }
        Err(e) => {
            let refused = matches!(
                e.code(),
                Some(tonic::Code::InvalidArgument | tonic::Code::NotFound)
            );
            obs.notes.push(format!(
                "{kind} ordered at {at} ms: refused: {}{kind}: {}",
                if refused { "refused: " } else { "" },
                e.peer_message()
            ));
        }
    }
    if obs.failure_ms.is_none() {
        obs.failure_ms = Some(at);
        obs.primary_outlives_failure = true;
    }
}

/// A fault on one node: a signal, its clock, its failpoints, or its files at rest.
fn apply_to_node(
    ctx: &Ctx,
    f: &Fault,
    n: &String,
    seed: u64,
    obs: &mut Observed,
    load: &Load,
) -> Result<()> {
    match f.action {
        FaultAction::Kill => {
            if let Ok(pid) = proc::read_pid(&ctx.run_dir, n) {
                proc::signal(pid, libc::SIGKILL)?;
                obs.killed.push(n.clone());
            }
        }
        FaultAction::Pause => {
            if let Ok(pid) = proc::read_pid(&ctx.run_dir, n) {
                proc::signal(pid, libc::SIGSTOP)?;
                obs.paused.push(n.clone());
            }
        }
        FaultAction::Resume => {
            if let Ok(pid) = proc::read_pid(&ctx.run_dir, n) {
                proc::signal(pid, libc::SIGCONT)?;
                obs.paused.retain(|p| p != n);
            }
        }
        FaultAction::Clock => {
            let (skew, drift) = (f.skew_ms.unwrap_or(0), f.drift_ms_per_s.unwrap_or(0));
            set_clock(&ctx.run_dir, n, skew, drift)?;
        }
        FaultAction::Bitrot => {
            let site = stopped_node(ctx, &obs.killed, n, "bitrot")?.site.clone();
            let img = ctx.dir.join(format!("volumes/{site}/disk0.img"));
            let at = rot_volume(&img, f.bytes.unwrap_or(1), seed)?;
            obs.notes.push(format!(
                "{n}: flipped {} bytes of {} (first at offset {})",
                at.len(),
                img.display(),
                at.first().copied().unwrap_or(0)
            ));
            obs.rotted += at.len();
        }
        FaultAction::Failpoint => {
            let (Some(name), Some(actions)) = (&f.failpoint, &f.actions) else {
                bail!("failpoint fault without failpoint and actions");
            };
            let set = obs.failpoints.entry(n.clone()).or_default();
            if actions.trim() == "off" {
                set.remove(name);
            } else {
                set.insert(name.clone(), actions.clone());
            }
            set_failpoints(&ctx.run_dir, n, set)?;
            if actions.contains("return") {
                obs.armed.push((n.clone(), name.clone()));
            }
            obs.notes.push(format!(
                "{n}: failpoint {name}={actions} at {} ms",
                load.rec.now_ms()
            ));
        }
        FaultAction::TornTail => {
            let node = stopped_node(ctx, &obs.killed, n, "torn-tail")?;
            let what =
                tear_journal_tail(&ctx.topo.node_data_dir(node), f.bytes.unwrap_or(1), f.tear)?;
            obs.notes.push(format!("{n}: {what}"));
            obs.torn.push(n.clone());
        }
        _ => {}
    }
    Ok(())
}

/// Applies a network fault to the links between `target` and `peer` (default: every other
/// node); returns how many links changed.
pub fn network_fault(ctx: &Ctx, f: &Fault, st: Option<&ClusterStatus>, seed: u64) -> usize {
    let a = ctx.nodes_of(&f.target, st);
    let b: Vec<String> = match &f.peer {
        Some(p) => ctx.nodes_of(p, st),
        None => ctx
            .all_nodes()
            .into_iter()
            .filter(|n| !a.contains(n))
            .collect(),
    };
    let mesh = &ctx.mesh;
    match f.action {
        FaultAction::Partition | FaultAction::Flap => mesh.partition(&a, &b),
        FaultAction::Cut => mesh.update(&a, &b, &|x, dir, from_a| {
            if from_a {
                x.link_mut(dir).blackhole = Some(Blackhole::Stall);
            }
        }),
        FaultAction::Heal if f.target == "all" && f.peer.is_none() => {
            mesh.heal_all();
            mesh.heal(&a, &a)
        }
        FaultAction::Heal => mesh.heal(&a, &b),
        FaultAction::Corrupt => {
            let every = f.every.unwrap_or(1 << 20);
            mesh.update(&a, &b, &|x, dir, from_a| {
                x.seed = seed;
                if from_a {
                    x.link_mut(dir).corrupt_every = Some(every);
                }
            })
        }
        FaultAction::Bandwidth => {
            let rate = f.bytes_per_sec;
            mesh.update(&a, &b, &|x, dir, _| {
                x.link_mut(dir).bandwidth = rate;
            })
        }
        FaultAction::Latency => {
            let delay = f.delay.map(|d| d.as_duration()).unwrap_or_default();
            mesh.update(&a, &b, &|x, dir, _| {
                x.link_mut(dir).latency = delay;
            })
        }
        FaultAction::Kill
        | FaultAction::Pause
        | FaultAction::Resume
        | FaultAction::Restart
        | FaultAction::Order
        | FaultAction::Clock
        | FaultAction::Strobe
        | FaultAction::Failpoint
        | FaultAction::Bitrot
        | FaultAction::TornTail
        | FaultAction::PowerCut
        | FaultAction::PowerRestore
        | FaultAction::Checkpoint => 0,
    }
}

/// The newest journal segment (`*.seg`, by modification time, then name) under `dir`.
fn newest_segment(dir: &Path) -> Option<PathBuf> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "seg") {
                let t = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                if best.as_ref().is_none_or(|(bt, bp)| (t, &p) > (*bt, bp)) {
                    best = Some((t, p));
                }
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Tears the newest journal segment under `data_dir` over `bytes` bytes as `tear` says;
/// returns what was done.
fn tear_journal_tail(data_dir: &Path, bytes: u64, tear: Tear) -> Result<String> {
    use std::os::unix::fs::FileExt;
    let seg = newest_segment(data_dir)
        .with_context(|| format!("torn-tail: no journal segment under {}", data_dir.display()))?;
    let len = std::fs::metadata(&seg)
        .with_context(|| format!("torn-tail: {}", seg.display()))?
        .len();
    if len == 0 {
        bail!("torn-tail: {} is empty: nothing to tear", seg.display());
    }
    let n = bytes.min(len);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .with_context(|| format!("torn-tail: opening {}", seg.display()))?;
    let mut buf = vec![0u8; usize::try_from(n)?];
    let what = match tear {
        Tear::Cut => {
            f.set_len(len - n)?;
            "cut the last"
        }
        Tear::Garble => {
            f.read_exact_at(&mut buf, len - n)?;
            for b in &mut buf {
                *b ^= 0xA5;
            }
            f.write_all_at(&buf, len - n)?;
            "garbled the last"
        }
        Tear::PartialFrame => {
            f.read_exact_at(&mut buf, 0)?;
            f.write_all_at(&buf, len)?;
            "appended a partial frame of"
        }
    };
    f.sync_all()?;
    Ok(format!(
        "{what} {n} bytes of {} ({len} bytes)",
        seg.display()
    ))
}

/// Node `n` once its process is gone: faults on its files at rest (`torn-tail`, `bitrot`)
/// need it killed first.
fn stopped_node<'a>(
    ctx: &'a Ctx,
    killed: &[String],
    n: &str,
    what: &str,
) -> Result<&'a tandem_core::config::Node> {
    if !killed.iter().any(|k| k == n) {
        bail!("{what} of {n}: kill it first (it changes files at rest)");
    }
    wait_dead(&ctx.run_dir, n)?;
    ctx.topo
        .node(n)
        .with_context(|| format!("{what}: no node {n}"))
}

/// Flips `count` bytes of `img` at offsets drawn from `seed` (each byte XOR 0xFF, fsynced);
/// returns the offsets, sorted.
fn rot_volume(img: &Path, count: u64, seed: u64) -> Result<Vec<u64>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .with_context(|| format!("bitrot: opening {}", img.display()))?;
    let len = f.metadata()?.len();
    if len == 0 {
        bail!("bitrot: {} is empty", img.display());
    }
    let mut rng = crate::rng::SplitMix64::for_stream(seed, 0xB17_0707);
    let mut at: Vec<u64> = (0..count).map(|_| rng.below(len)).collect();
    at.sort_unstable();
    at.dedup();
    for &o in &at {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, o)?;
        b[0] ^= 0xFF;
        f.write_all_at(&b, o)?;
    }
    f.sync_all()?;
    Ok(at)
}

/// Waits (bounded) until the process of `node` is gone, so its files can be changed.
fn wait_dead(run_dir: &Path, node: &str) -> Result<()> {
    let Ok(pid) = proc::read_pid(run_dir, node) else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc::alive(pid) {
        if Instant::now() > deadline {
            bail!("{node} (pid {pid}) still runs: kill it before changing its files");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_tear_shortens_the_newest_segment() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("journal/vol");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("0001.seg"), [1u8; 100]).unwrap();
        let what = tear_journal_tail(dir.path(), 10, Tear::Cut).unwrap();
        assert!(what.starts_with("cut the last 10 bytes"), "{what}");
        assert_eq!(std::fs::metadata(sub.join("0001.seg")).unwrap().len(), 90);
        assert!(tear_journal_tail(&dir.path().join("none"), 1, Tear::Cut).is_err());
    }

    #[test]
    fn bitrot_flips_the_same_bytes_for_the_same_seed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, vec![0u8; 4096]).unwrap();
        std::fs::write(&b, vec![0u8; 4096]).unwrap();
        let at = rot_volume(&a, 5, 7).unwrap();
        assert_eq!(at, rot_volume(&b, 5, 7).unwrap());
        let bytes = std::fs::read(&a).unwrap();
        for o in &at {
            assert_eq!(bytes[*o as usize], 0xFF, "offset {o}");
        }
        assert_eq!(bytes.iter().filter(|b| **b != 0).count(), at.len());
    }
}
