//! The primary's side of `Replication.Verify`: which volumes to compare with what settings
//! ([`Catalog::plan`], pure), and the comparison itself, chunk by chunk at barriers through the
//! service's own merkle backend ([`stream`]), streamed as [`VerifyProgress`] messages.
//!
//! It compares exactly as [`resync::verify_chunks`] does for a client over gRPC: the backend's
//! barrier `Merkle` holds intake while the replica reaches the primary's seq, hashes one chunk
//! of both copies and answers both leaf sets; `unavailable` (the replica is not caught up yet)
//! is retried until the barrier's deadline. Touches no file itself: I/O is the backend's.

use crate::merkle;
use crate::receive::source::BlockSource;
use crate::resync::{self, ChunkTick, ChunkedVerify, MerkleSource, Patience, ResyncError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tandem_core::config::{ResourceKind, Topology};
use tandem_core::proto::{
    MerkleReply, MerkleRequest, VerifyProgress, VerifyRequest, VolumeVerdict,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Status;

/// Bytes of a volume hashed under one barrier when the request leaves it at 0: 64 MiB.
pub const DEFAULT_CHUNK_BYTES: u64 = 64 << 20;

/// How long a barrier may wait for the replica when the request leaves it at 0: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One resource of a group, as Verify needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    /// `volume`, `sqlite`, `postgres`.
    kind: &'static str,
    /// The configured merkle block size (volumes only).
    block_size: Option<u32>,
}

/// The groups this replicator knows and their resources in topology order: what a
/// `VerifyRequest` may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    groups: HashMap<String, Vec<Entry>>,
}

/// What one Verify call compares, decided before anything is hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyPlan {
    /// The group.
    pub group: String,
    /// The volumes to compare, in topology order, each with its block size.
    pub volumes: Vec<(String, u32)>,
    /// Bytes of a volume hashed under one barrier.
    pub chunk_bytes: u64,
    /// How long each barrier may wait for the replica.
    pub timeout: Duration,
}

impl Catalog {
    /// Every group of `topo` with its resources.
    pub fn from_topology(topo: &Topology) -> Catalog {
        let groups = topo
            .groups
            .iter()
            .map(|g| {
                let entries = g
                    .resources
                    .iter()
                    .map(|r| Entry {
                        name: r.name.clone(),
                        kind: r.kind.name(),
                        block_size: match &r.kind {
                            ResourceKind::Volume { block_size, .. } => {
                                Some(block_size.bytes() as u32)
                            }
                            _ => None,
                        },
                    })
                    .collect();
                (g.name.clone(), entries)
            })
            .collect();
        Catalog { groups }
    }

    /// Adds a volume of `group` with its configured block size (after the ones added before);
    /// the group is known from then on.
    pub fn with_volume(mut self, group: &str, volume: &str, block_size: u32) -> Catalog {
        self.groups
            .entry(group.to_owned())
            .or_default()
            .push(Entry {
                name: volume.to_owned(),
                kind: "volume",
                block_size: Some(block_size),
            });
        self
    }

    /// Decides what `req` compares: the group's volumes (or the one named) with the asked or
    /// configured block size, and the chunk and timeout defaults.
    ///
    /// # Errors
    /// `not_found` for a group this replicator does not know, `invalid_argument` for a
    /// resource that is not a volume of the group or a block size out of range.
    pub fn plan(&self, req: &VerifyRequest) -> Result<VerifyPlan, Status> {
        let entries = self.groups.get(&req.group).ok_or_else(|| {
            Status::not_found(format!(
                "no group {:?} in this replicator's topology",
                req.group
            ))
        })?;
        if !req.resource.is_empty() {
            match entries.iter().find(|e| e.name == req.resource) {
                None => {
                    return Err(Status::invalid_argument(format!(
                        "group {:?} has no resource {:?}",
                        req.group, req.resource
                    )))
                }
                Some(e) if e.block_size.is_none() => {
                    return Err(Status::invalid_argument(format!(
                        "{}/{} is a {} resource: Verify compares volumes",
                        req.group, req.resource, e.kind
                    )))
                }
                Some(_) => {}
            }
        }
        let mut volumes = Vec::new();
        for e in entries {
            let Some(configured) = e.block_size else {
                continue;
            };
            if !req.resource.is_empty() && e.name != req.resource {
                continue;
            }
            let bs = if req.block_size == 0 {
                configured
            } else {
                req.block_size
            };
            merkle::check_block_size(bs).map_err(|err| {
                Status::invalid_argument(format!("{}/{}: {err}", req.group, e.name))
            })?;
            volumes.push((e.name.clone(), bs));
        }
        Ok(VerifyPlan {
            group: req.group.clone(),
            volumes,
            chunk_bytes: if req.chunk_bytes == 0 {
                DEFAULT_CHUNK_BYTES
            } else {
                req.chunk_bytes
            },
            timeout: if req.timeout_ms == 0 {
                DEFAULT_TIMEOUT
            } else {
                Duration::from_millis(req.timeout_ms)
            },
        })
    }
}

/// The service's own merkle backend as a [`MerkleSource`].
struct Local<'a>(&'a dyn BlockSource);

#[tonic::async_trait]
impl MerkleSource for Local<'_> {
    async fn merkle(&mut self, req: MerkleRequest) -> Result<MerkleReply, Status> {
        self.0.merkle(req).await
    }
}

/// The messages of one Verify call.
pub type VerifyStream = UnboundedReceiverStream<Result<VerifyProgress, Status>>;

/// Runs `plan` against `blocks` in a task: a [`VerifyProgress`] after each chunk, the last of
/// each volume with its [`VolumeVerdict`]; a failure ends the stream with its status. The task
/// stops (releasing any barrier) when the caller goes away.
pub fn stream(blocks: Arc<dyn BlockSource>, plan: VerifyPlan) -> VerifyStream {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        tokio::select! {
            _ = verify_all(&*blocks, &plan, &tx) => {}
            _ = tx.closed() => {
                tracing::debug!(group = %plan.group, "verify caller went away");
            }
        }
    });
    UnboundedReceiverStream::new(rx)
}

type Sender = mpsc::UnboundedSender<Result<VerifyProgress, Status>>;

async fn verify_all(blocks: &dyn BlockSource, plan: &VerifyPlan, tx: &Sender) {
    for (resource, bs) in &plan.volumes {
        let last = verify_volume(blocks, plan, resource, *bs, tx).await;
        let failed = last.is_err();
        if tx.send(last).is_err() || failed {
            return;
        }
    }
}

/// Compares one volume; sends the progress of every chunk but the last, and returns the last
/// message (with the verdict).
async fn verify_volume(
    blocks: &dyn BlockSource,
    plan: &VerifyPlan,
    resource: &str,
    block_size: u32,
    tx: &Sender,
) -> Result<VerifyProgress, Status> {
    let chunk_blocks = (plan.chunk_bytes / u64::from(block_size)).max(1);
    let mut tick = |t: ChunkTick| {
        if t.blocks_done < t.blocks_total {
            let _ = tx.send(Ok(progress(resource, block_size, t)));
        }
    };
    let v = resync::verify_chunks(
        &mut Local(blocks),
        &plan.group,
        resource,
        block_size,
        chunk_blocks,
        Patience::PerBarrier(plan.timeout),
        &mut tick,
    )
    .await
    .map_err(|e| status_of(e, &plan.group, resource, plan.timeout))?;
    tracing::info!(group = %plan.group, %resource, equal = v.report.equal, seq = v.last_seq, chunks = v.chunks, "verified");
    Ok(last_message(resource, block_size, &v))
}

/// The progress message after a chunk.
fn progress(resource: &str, block_size: u32, t: ChunkTick) -> VerifyProgress {
    VerifyProgress {
        resource: resource.to_owned(),
        bytes_done: t
            .blocks_done
            .saturating_mul(u64::from(block_size))
            .min(t.length),
        bytes_total: t.length,
        verdict: None,
    }
}

/// The last message of a volume: all of it compared, and what the comparison found.
fn last_message(resource: &str, block_size: u32, v: &ChunkedVerify) -> VerifyProgress {
    let r = &v.report;
    let total = r.length_a.max(r.length_b);
    VerifyProgress {
        resource: resource.to_owned(),
        bytes_done: total,
        bytes_total: total,
        verdict: Some(VolumeVerdict {
            resource: resource.to_owned(),
            equal: r.equal,
            block_size,
            primary_root: r.root_a.to_vec(),
            replica_root: r.root_b.to_vec(),
            primary_length: r.length_a,
            replica_length: r.length_b,
            first_seq: v.first_seq,
            last_seq: v.last_seq,
            chunks: v.chunks,
            differing: tandem_core::ranges::to_wire(&r.differing_bytes),
        }),
    }
}

/// The status ending the stream for a failed volume: a barrier still `unavailable` at its
/// deadline is `deadline_exceeded`; a refusal keeps its code (`failed_precondition` when this
/// replicator is not the group's primary).
fn status_of(e: ResyncError, group: &str, resource: &str, timeout: Duration) -> Status {
    match e {
        ResyncError::Rpc { status, .. } if status.code() == tonic::Code::Unavailable => {
            Status::deadline_exceeded(format!(
                "verify {group}/{resource}: no barrier within {} ms: {}",
                timeout.as_millis(),
                status.message()
            ))
        }
        ResyncError::Rpc { status, .. } => Status::new(
            status.code(),
            format!("verify {group}/{resource}: {}", status.message()),
        ),
        ResyncError::Merkle(e) => {
            Status::invalid_argument(format!("verify {group}/{resource}: {e}"))
        }
        e => Status::internal(format!("verify {group}/{resource}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::merkle::MerkleTree;

    fn catalog() -> Catalog {
        let mut c = Catalog::default()
            .with_volume("g", "disk0", 4096)
            .with_volume("g", "disk1", 65536);
        c.groups.get_mut("g").unwrap().insert(
            1,
            Entry {
                name: "db".into(),
                kind: "sqlite",
                block_size: None,
            },
        );
        c
    }

    fn ask(group: &str, resource: &str, block_size: u32) -> VerifyRequest {
        VerifyRequest {
            group: group.into(),
            resource: resource.into(),
            block_size,
            ..Default::default()
        }
    }

    #[test]
    fn a_plan_takes_every_volume_in_order_with_its_configured_block_size_and_defaults() {
        let p = catalog().plan(&ask("g", "", 0)).unwrap();
        assert_eq!(
            p.volumes,
            vec![("disk0".to_string(), 4096), ("disk1".to_string(), 65536)]
        );
        assert_eq!(
            (p.chunk_bytes, p.timeout),
            (64 << 20, Duration::from_secs(30))
        );
        let p = catalog()
            .plan(&VerifyRequest {
                chunk_bytes: 1 << 20,
                timeout_ms: 500,
                ..ask("g", "disk1", 8192)
            })
            .unwrap();
        assert_eq!(p.volumes, vec![("disk1".to_string(), 8192)]);
        assert_eq!(
            (p.chunk_bytes, p.timeout),
            (1 << 20, Duration::from_millis(500))
        );
    }

    #[test]
    fn a_plan_refuses_unknown_groups_resources_and_bad_block_sizes_by_name() {
        let cases = [
            (ask("h", "", 0), tonic::Code::NotFound, "\"h\""),
            (ask("g", "disk9", 0), tonic::Code::InvalidArgument, "disk9"),
            (ask("g", "db", 0), tonic::Code::InvalidArgument, "sqlite"),
            (
                ask("g", "disk0", 8 << 20),
                tonic::Code::InvalidArgument,
                "disk0",
            ),
        ];
        for (i, (req, code, names)) in cases.into_iter().enumerate() {
            let got = catalog().plan(&req).unwrap_err();
            assert_eq!(got.code(), code, "#{i}: expect {code:?} got {got:?}");
            assert!(got.message().contains(names), "#{i}: {}", got.message());
        }
    }

    #[test]
    fn an_unavailable_barrier_at_its_deadline_is_deadline_exceeded_and_refusals_keep_their_code() {
        let rpc = |status| ResyncError::Rpc {
            rpc: "Merkle",
            group: "g".into(),
            resource: "v".into(),
            status,
        };
        let t = Duration::from_millis(300);
        let s = status_of(rpc(Status::unavailable("behind")), "g", "v", t);
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
        assert!(s.message().contains("300 ms") && s.message().contains("behind"));
        let s = status_of(rpc(Status::failed_precondition("not primary")), "g", "v", t);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(s.message().starts_with("verify g/v: "));
    }

    #[test]
    fn the_last_message_carries_the_verdict_with_wire_ranges() {
        let a = vec![1u8; 100];
        let mut b = a.clone();
        b[40] = 9;
        let ta = MerkleTree::from_bytes(16, &a).unwrap();
        let tb = MerkleTree::from_bytes(16, &b).unwrap();
        let v = ChunkedVerify {
            report: resync::verify(&ta, &tb).unwrap(),
            first_seq: 3,
            last_seq: 7,
            chunks: 2,
        };
        let m = last_message("v", 16, &v);
        assert_eq!((m.bytes_done, m.bytes_total), (100, 100));
        let verdict = m.verdict.unwrap();
        assert!(!verdict.equal);
        assert_eq!(
            (verdict.first_seq, verdict.last_seq, verdict.chunks),
            (3, 7, 2)
        );
        assert_eq!(
            tandem_core::ranges::from_wire(&verdict.differing),
            vec![32..48]
        );
        let t = ChunkTick {
            blocks_done: 4,
            blocks_total: 7,
            length: 100,
        };
        assert_eq!(progress("v", 16, t).bytes_done, 64);
    }
}
