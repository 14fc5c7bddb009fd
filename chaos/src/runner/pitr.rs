//! Point-in-time checkpoints in a run: the `checkpoint` fault (writers stopped, checkpoint
//! marked at the primary and durable at the replica, the replica's image hashed as the image
//! at that point, writers started again) and the `recovers_to_checkpoint` check (each
//! checkpoint rebuilt at the replica by a recovery and its image compared with that hash).
//! I/O: gRPC to the replicators, the image files.

use anyhow::{bail, Context, Result};
use tandem_core::client::Replicator;
use tandem_core::proto::RecoverRequest;

use super::cluster::Ctx;
use super::judge::{Findings, Judge};
use super::load::Load;
use super::observe::Observed;
use super::topology::VOLUME_GROUP;
use super::verify::replicator_at;
use crate::scenario::Fault;

/// The blake3 hash (hex) of the file at `path`.
fn hash_file(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// The volume image of the group's first resource at `site`.
fn image_at(ctx: &Ctx, site: &str) -> Result<std::path::PathBuf> {
    let g = ctx
        .topo
        .group(VOLUME_GROUP)
        .with_context(|| format!("no group {VOLUME_GROUP} in the topology"))?;
    let r = g
        .resources
        .first()
        .context("the volume group has no resource")?;
    ctx.topo
        .resource_path(g, r, site)
        .with_context(|| format!("{} has no copy at {site}", r.name))
}

/// The `checkpoint` fault: stops the writers, marks the checkpoint, hashes the replica's
/// image (which then holds exactly the writes before the checkpoint), starts the writers.
///
/// # Errors
/// No status, the checkpoint was refused, or the image could not be read.
pub fn checkpoint(ctx: &Ctx, f: &Fault, obs: &mut Observed, load: &mut Load) -> Result<()> {
    let tag = f.tag.clone().context("checkpoint without a tag")?;
    let st = ctx.status().or_else(|| obs.last_st.clone());
    let Some(g) = st.as_ref().and_then(super::topology::group).cloned() else {
        bail!("checkpoint {tag:?}: no status to find the primary");
    };
    load.writer.stop(&ctx.rt);
    let primary = Replicator::new(ctx.net.clone(), replicator_at(ctx, &g.name, &g.primary)?);
    let marked = ctx
        .rt
        .block_on(primary.checkpoint(VOLUME_GROUP, &tag))
        .map_err(|e| anyhow::anyhow!("checkpoint {tag:?} at {}: {e}", g.primary));
    let hashed = marked.and_then(|r| Ok((r, hash_file(&image_at(ctx, &g.replica)?)?)));
    load.writer.start(&ctx.rt, 4);
    let (r, hash) = hashed?;
    obs.notes.push(format!(
        "{} ms: checkpoint {tag:?} at seq {}: replica image ({}) blake3 {}",
        load.rec.now_ms(),
        r.seq,
        g.replica,
        &hash[..16]
    ));
    obs.checkpoints.push((tag, hash));
    Ok(())
}

/// `recovers_to_checkpoint`: each checkpoint rebuilt by the replica of the end and compared.
pub fn judge_recoveries(j: &Judge<'_>, out: &mut Findings) {
    if !j.recovered {
        out.failures
            .push("recovers_to_checkpoint: not judged, the run did not recover".into());
        return;
    }
    for (tag, want) in &j.obs.checkpoints {
        match recover_and_hash(j.ctx, &j.g_end.replica, tag) {
            Ok((got, seq)) if &got == want => out.notes.push(format!(
                "checkpoint {tag:?} recovered at seq {seq}: equal to the image at the checkpoint"
            )),
            Ok((got, seq)) => out.failures.push(format!(
                "checkpoint {tag:?} recovered at seq {seq} differs from the image at the \
                 checkpoint (blake3 {} != {})",
                &got[..16],
                &want[..16]
            )),
            Err(e) => out
                .failures
                .push(format!("checkpoint {tag:?}: recovery failed: {e:#}")),
        }
    }
}

/// Recovers checkpoint `tag` at the replicator of `site`; returns the image's hash and the
/// point's seq.
fn recover_and_hash(ctx: &Ctx, site: &str, tag: &str) -> Result<(String, u64)> {
    let rep = Replicator::new(ctx.net.clone(), replicator_at(ctx, VOLUME_GROUP, site)?);
    let req = RecoverRequest {
        group: VOLUME_GROUP.to_owned(),
        at_ms: 0,
        tag: tag.to_owned(),
        out_dir: String::new(),
        block_size: 0,
        name: format!("chaos-{tag}"),
    };
    let r = ctx
        .rt
        .block_on(rep.recover(req))
        .map_err(|e| anyhow::anyhow!("recover at {site}: {e}"))?;
    let x = r
        .resources
        .first()
        .context("the recovery built no resource")?;
    let seq = r.point.as_ref().map(|p| p.seq).unwrap_or(0);
    Ok((hash_file(std::path::Path::new(&x.path))?, seq))
}
