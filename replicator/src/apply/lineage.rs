//! The replica's binding to a primary's journal generation (see [`crate::lineage`]): kept in
//! `lineage.meta` beside the watermark file, judged and rebound at each `Hello` under the
//! group's lock, forgotten when a resync replaces the copy. Blocking file I/O.
//!
//! Durability order: a binding is persisted (tmp → fsync → rename → fsync dir) before the
//! `Welcome` that lets frames of the new generation in, so a watermark is never persisted
//! past a generation start the stored binding does not cover.

use super::group::ReplicaGroup;
use crate::error::{ReplicatorError, Result};
use crate::lineage::{judge, Bound, GenerationStart, Judgement};
use crate::meta::{read_meta, write_meta};
use std::path::Path;
use tandem_core::ids::Epoch;

/// Magic of the replica's lineage file.
pub const LINEAGE_META_MAGIC: [u8; 4] = *b"TNDL";
/// Name of the replica's lineage file (generation, epoch of the binding) in the group
/// directory.
pub const LINEAGE_META_FILE: &str = "lineage.meta";

fn read_bound(dir: &Path) -> Result<Option<Bound>> {
    Ok(
        read_meta(&dir.join(LINEAGE_META_FILE), LINEAGE_META_MAGIC, 2)?
            .filter(|v| v[0] != 0)
            .map(|v| Bound {
                generation: v[0],
                epoch: Epoch(v[1]),
            }),
    )
}

fn write_bound(dir: &Path, bound: Option<Bound>) -> Result<()> {
    let v = bound.map_or([0, 0], |b| [b.generation, b.epoch.0]);
    write_meta(&dir.join(LINEAGE_META_FILE), LINEAGE_META_MAGIC, &v)
}

impl ReplicaGroup {
    /// The primary journal generation this copy is bound to (`None`: never bound, or
    /// resynced since).
    ///
    /// # Errors
    /// [`ReplicatorError::BadMetadata`] or [`ReplicatorError::Io`] reading `lineage.meta`.
    pub fn bound_generation(&self) -> Result<Option<Bound>> {
        read_bound(&self.inner().dir)
    }

    /// Judges the lineage a `Hello` at `epoch` announced against this copy's binding and
    /// watermark (see [`crate::lineage::judge`]); when it accepts, binds the copy to the
    /// primary's current generation durably before returning. Holds the group's lock, so no
    /// batch is applied meanwhile.
    ///
    /// # Errors
    /// [`ReplicatorError::BadMetadata`] or [`ReplicatorError::Io`] on `lineage.meta`.
    pub fn judge_lineage(&self, epoch: Epoch, starts: &[GenerationStart]) -> Result<Judgement> {
        let inner = self.inner();
        let bound = read_bound(&inner.dir)?;
        let verdict = judge(
            bound,
            inner.watermark,
            epoch,
            starts,
            self.primary_durable(),
        );
        match &verdict {
            Judgement::Accept {
                bind: Some(generation),
            } => {
                let next = Bound {
                    generation: *generation,
                    epoch,
                };
                if bound != Some(next) {
                    write_bound(&inner.dir, Some(next))?;
                }
            }
            Judgement::Accept { bind: None } => {}
            Judgement::RollBack { watermark, kept } => {
                tracing::warn!(group = %self.name(), %watermark, %kept,
                    "this copy holds seqs the primary lost before its journal sync ended (never acknowledged): \
                     it must be resynced from the primary");
            }
            refused => {
                tracing::error!(group = %self.name(), reason = ?refused.reason(self.name()), "refusing the primary's history");
            }
        }
        Ok(verdict)
    }

    /// Forgets the binding: the copy is about to be replaced by a resync (call before its
    /// watermark is reset), after which any lineage of the primary it resynced from is
    /// accepted.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] writing `lineage.meta`.
    pub fn unbind_lineage(&self) -> Result<()> {
        let inner = self.inner();
        match read_bound(&inner.dir) {
            Ok(None) => Ok(()),
            Ok(Some(_)) | Err(ReplicatorError::BadMetadata { .. }) => write_bound(&inner.dir, None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::apply::StreamState;
    use crate::journal::{Journal, NewFrame, DEFAULT_SEGMENT_BYTES};
    use crate::lineage::jumps;
    use std::collections::HashMap;
    use tandem_core::frame::{Change, Encoder, FrameMeta};
    use tandem_core::ids::{GroupId, Seq};
    use tandem_core::proto::{ship_response, ShipResponse};

    const BLOCK: usize = 4096;

    /// A replica of group `g` with one 64 KiB volume, and a primary journal folder beside it.
    fn setup() -> (tempfile::TempDir, ReplicaGroup) {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol.img");
        std::fs::File::create(&vol)
            .unwrap()
            .set_len(64 << 10)
            .unwrap();
        let res = HashMap::from([("vol".to_owned(), vol)]);
        let g = ReplicaGroup::open("g", &dir.path().join("replica"), res).unwrap();
        (dir, g)
    }

    fn open_journal(dir: &Path) -> Journal {
        Journal::open(
            &dir.join("journal"),
            GroupId::from_name("g"),
            Epoch(1),
            DEFAULT_SEGMENT_BYTES,
        )
        .unwrap()
    }

    /// Journals one frame of two block writes (blocks `block`, `block + 1`) filled with
    /// `fill`, at the journal's next seq; returns its bytes.
    fn journal_writes(j: &Journal, block: u64, fill: u8) -> NewFrame {
        let first = j.next_seq();
        let changes: Vec<Change> = (0..2)
            .map(|i| Change::write("vol", (block + i) * BLOCK as u64, vec![fill; BLOCK], 1))
            .collect();
        let bytes = Encoder::new(1)
            .unwrap()
            .encode(
                FrameMeta {
                    group: GroupId::from_name("g"),
                    epoch: Epoch(1),
                    first_seq: first,
                },
                &changes,
            )
            .unwrap();
        let f = NewFrame {
            bytes,
            first_seq: first,
            last_seq: Seq(first.0 + 1),
            oldest_capture_ms: 1,
        };
        j.append(std::slice::from_ref(&f)).unwrap();
        f
    }

    fn acked(out: &[ShipResponse]) -> Option<u64> {
        out.iter().find_map(|r| match &r.msg {
            Some(ship_response::Msg::Ack(a)) => Some(a.durable_seq),
            _ => None,
        })
    }

    fn stream_for(g: &ReplicaGroup, j: &Journal) -> (Judgement, StreamState) {
        let judged = g.judge_lineage(Epoch(1), &j.lineage()).unwrap();
        let st = StreamState {
            jumps: jumps(&j.lineage()),
            ..StreamState::default()
        };
        (judged, st)
    }

    #[test]
    fn a_replica_refuses_a_history_after_a_lost_durable_tail_and_never_acks_writes_it_lacks() {
        let (dir, g) = setup();
        // 1. The primary journals three frames (seqs 1..=6, blocks 0..=5 filled with 0xA1..);
        //    the replica applies and acknowledges all of them.
        let j = open_journal(dir.path());
        let frames: Vec<NewFrame> = (0..3)
            .map(|i| journal_writes(&j, 2 * i, 0xA1 + i as u8))
            .collect();
        let (judged, mut st) = stream_for(&g, &j);
        assert_eq!(
            judged,
            Judgement::Accept {
                bind: Some(j.generation())
            }
        );
        let out = g
            .receive_batch(frames.iter().map(|f| f.bytes.clone()).collect(), &mut st)
            .unwrap();
        assert_eq!(acked(&out), Some(6));
        let old_generation = j.generation();
        drop(j);
        // 2. The primary's disk loses the last two frames it had fdatasync'd (seqs 3..=6).
        let seg = dir.path().join("journal").join("00000000000000000001.seg");
        let full = std::fs::read(&seg).unwrap();
        let keep = full.len() - frames[1].bytes.len() - frames[2].bytes.len();
        std::fs::write(&seg, &full[..keep]).unwrap();
        // 3. Restarted, it journals new writes (block 2, 0xEE) and ships them, as a primary
        //    that ignored the replica's refusal would.
        let j = open_journal(dir.path());
        assert_eq!(j.last_seq(), Seq(2));
        let new = journal_writes(&j, 2, 0xEE);
        let out = g
            .receive_batch(vec![new.bytes.clone()], &mut StreamState::default())
            .unwrap();
        let wm = g.watermark();
        if acked(&out).is_some_and(|a| a >= new.last_seq.0) || wm >= new.last_seq {
            let got = g.read_resource("vol", 2 * BLOCK as u64, BLOCK).unwrap();
            assert_eq!(
                got,
                vec![0xEE; BLOCK],
                "seqs {}..={} acknowledged (watermark {wm}) without their data: a reused seq \
                 taken for a duplicate",
                new.first_seq,
                new.last_seq
            );
        }
        // 4. The replica refuses the new generation's history, naming both generations and
        //    the seqs it holds that the primary lost.
        let (judged, _) = stream_for(&g, &j);
        let reason = judged.reason("g").expect("refused");
        assert!(
            matches!(
                judged,
                Judgement::LostTail {
                    watermark: Seq(6),
                    kept: Seq(2),
                    ..
                }
            ),
            "{judged:?}"
        );
        for part in [
            "seqs 3..=6".to_owned(),
            format!("{old_generation:016x}"),
            format!("{:016x}", j.generation()),
            "fail over".to_owned(),
        ] {
            assert!(reason.contains(&part), "{part:?} not in {reason}");
        }
        // 5. The binding is kept, so every later Hello is refused too; a resync unbinds it.
        assert_eq!(
            g.bound_generation().unwrap().map(|b| b.generation),
            Some(old_generation)
        );
        assert!(stream_for(&g, &j).0.reason("g").is_some());
        g.unbind_lineage().unwrap();
        assert_eq!(g.bound_generation().unwrap(), None);
    }

    #[test]
    fn a_replica_behind_the_kept_history_crosses_the_announced_gap_only() {
        let (dir, g) = setup();
        let j = open_journal(dir.path());
        let frames: Vec<NewFrame> = (0..3)
            .map(|i| journal_writes(&j, 2 * i, 0xB1 + i as u8))
            .collect();
        let (_, mut st) = stream_for(&g, &j);
        let out = g
            .receive_batch(vec![frames[0].bytes.clone()], &mut st)
            .unwrap();
        assert_eq!(acked(&out), Some(2));
        drop(j);
        // The primary restarts with nothing lost: its next seqs start after the reservation.
        let j = open_journal(dir.path());
        let next = journal_writes(&j, 8, 0xC1);
        assert!(next.first_seq > Seq(7));
        let (judged, mut st) = stream_for(&g, &j);
        assert_eq!(
            judged,
            Judgement::Accept {
                bind: Some(j.generation())
            }
        );
        // A frame past the gap before the kept history is refused (not at the jump)...
        let out = g.receive_batch(vec![next.bytes.clone()], &mut st).unwrap();
        assert_eq!(acked(&out), None);
        assert_eq!(g.watermark(), Seq(2));
        // ...and applied once the replica is at the jump.
        let batch = vec![
            frames[1].bytes.clone(),
            frames[2].bytes.clone(),
            next.bytes.clone(),
        ];
        let out = g
            .receive_batch(
                batch,
                &mut StreamState {
                    jumps: st.jumps.clone(),
                    ..StreamState::default()
                },
            )
            .unwrap();
        assert_eq!(acked(&out), Some(next.last_seq.0));
        assert_eq!(g.read_resource("vol", 8 * BLOCK as u64, 1).unwrap(), [0xC1]);
        assert_eq!(
            g.bound_generation().unwrap().map(|b| b.generation),
            Some(j.generation())
        );
    }

    #[test]
    fn a_replica_bound_to_an_unknown_generation_refuses_it_in_the_same_epoch_only() {
        let (dir, g) = setup();
        let a = open_journal(&dir.path().join("a"));
        let b = open_journal(&dir.path().join("b"));
        assert!(g
            .judge_lineage(Epoch(1), &a.lineage())
            .unwrap()
            .reason("g")
            .is_none());
        let foreign = g.judge_lineage(Epoch(1), &b.lineage()).unwrap();
        assert!(matches!(foreign, Judgement::Foreign { .. }), "{foreign:?}");
        let newer = g.judge_lineage(Epoch(2), &b.lineage()).unwrap();
        assert_eq!(
            newer,
            Judgement::Accept {
                bind: Some(b.generation())
            }
        );
    }
}
