//! The journal's metadata record ([`JournalMeta`]: epoch, trim point, reservation, lineage)
//! and the pure rules on it: its two layouts, which generation starts to keep, new ids.

use super::MAX_GENERATION_STARTS;
use crate::lineage::GenerationStart;
use std::path::Path;
use tandem_core::ids::{Epoch, Seq};

/// The contents of `journal.meta`.
///
/// Values (u64, in a [`crate::meta`] record): `epoch, trimmed_through, reserved_through,
/// generation, n, then n × (generation, first, after)`. A record of exactly 3 values is the
/// older layout `epoch, next_seq, trimmed_through` (read as reserved through `next_seq - 1`,
/// generation 0, no starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalMeta {
    /// The journal's epoch.
    pub epoch: Epoch,
    /// Highest seq trimmed (acknowledged by the replica).
    pub trimmed_through: Seq,
    /// Highest seq reserved: no seq at or below it is handed out again.
    pub reserved_through: Seq,
    /// The current generation (0: none yet).
    pub generation: u64,
    /// The generation starts of the journal's history, oldest first.
    pub starts: Vec<GenerationStart>,
}

impl JournalMeta {
    /// The record's values (pure).
    pub fn encode(&self) -> Vec<u64> {
        let mut v = vec![
            self.epoch.0,
            self.trimmed_through.0,
            self.reserved_through.0,
            self.generation,
            self.starts.len() as u64,
        ];
        for s in &self.starts {
            v.extend([s.generation, s.first.0, s.after.0]);
        }
        v
    }

    /// Reads the record's values, either layout (pure).
    ///
    /// # Errors
    /// A reason naming the value that does not fit.
    pub fn decode(v: &[u64]) -> std::result::Result<JournalMeta, String> {
        if let [epoch, next, trimmed] = *v {
            return Ok(JournalMeta {
                epoch: Epoch(epoch),
                trimmed_through: Seq(trimmed),
                reserved_through: Seq(next.saturating_sub(1).max(trimmed)),
                generation: 0,
                starts: Vec::new(),
            });
        }
        let [epoch, trimmed, reserved, generation, n, rest @ ..] = v else {
            return Err(format!("{} values (expected 3, or 5 and more)", v.len()));
        };
        if rest.len() as u64 != n.saturating_mul(3) {
            return Err(format!(
                "{n} generation starts declared at value 4, {} values follow",
                rest.len()
            ));
        }
        Ok(JournalMeta {
            epoch: Epoch(*epoch),
            trimmed_through: Seq(*trimmed),
            reserved_through: Seq(*reserved),
            generation: *generation,
            starts: rest
                .chunks_exact(3)
                .map(|c| GenerationStart {
                    generation: c[0],
                    first: Seq(c[1]),
                    after: Seq(c[2]),
                })
                .collect(),
        })
    }
}

/// Drops the generation starts no replica can still need (pure): a start whose successor
/// begins at or below `trimmed` (the replica acknowledged past it, so it is bound to a later
/// one), and the oldest beyond [`MAX_GENERATION_STARTS`]. The last one always stays.
pub(super) fn prune_starts(starts: &mut Vec<GenerationStart>, trimmed: Seq) {
    let keep_from = starts
        .windows(2)
        .rposition(|w| w[1].first <= trimmed)
        .map_or(0, |i| i + 1);
    let keep_from = keep_from.max(starts.len().saturating_sub(MAX_GENERATION_STARTS));
    starts.drain(..keep_from);
}

/// A new generation id: random enough that two opens never share one (never 0).
pub(super) fn new_generation_id(dir: &Path, previous: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(dir.as_os_str().as_encoded_bytes());
    h.update(&previous.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(&now.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(generation: u64, first: u64, after: u64) -> GenerationStart {
        GenerationStart {
            generation,
            first: Seq(first),
            after: Seq(after),
        }
    }

    #[test]
    fn journal_meta_golden_values_and_the_older_layout() {
        let m = JournalMeta {
            epoch: Epoch(3),
            trimmed_through: Seq(10),
            reserved_through: Seq(65546),
            generation: 0xabc,
            starts: vec![start(0xabc, 65547, 12)],
        };
        assert_eq!(m.encode(), [3, 10, 65546, 0xabc, 1, 0xabc, 65547, 12]);
        assert_eq!(JournalMeta::decode(&m.encode()), Ok(m));
        let old = JournalMeta::decode(&[2, 11, 7]).unwrap();
        assert_eq!(
            (
                old.epoch,
                old.trimmed_through,
                old.reserved_through,
                old.generation
            ),
            (Epoch(2), Seq(7), Seq(10), 0)
        );
        assert!(old.starts.is_empty());
    }

    #[test]
    fn journal_meta_refuses_a_start_count_that_does_not_fit() {
        for (i, v) in [vec![1, 2], vec![1, 2, 3, 4, 2, 9, 9, 9], vec![1, 2, 3, 4]]
            .into_iter()
            .enumerate()
        {
            assert!(JournalMeta::decode(&v).is_err(), "#{i}: {v:?} accepted");
        }
    }

    #[test]
    fn prune_keeps_the_starts_a_replica_past_the_trim_may_be_bound_to() {
        let all = vec![start(1, 1, 0), start(2, 100, 50), start(3, 200, 150)];
        let cases = [
            (0, vec![1, 2, 3]),
            (99, vec![1, 2, 3]),
            (100, vec![2, 3]),
            (500, vec![3]),
        ];
        for (i, (trimmed, want)) in cases.into_iter().enumerate() {
            let mut s = all.clone();
            prune_starts(&mut s, Seq(trimmed));
            let got: Vec<u64> = s.iter().map(|s| s.generation).collect();
            assert_eq!(got, want, "#{i}: expect {want:?} got {got:?}");
        }
        let mut many: Vec<GenerationStart> = (1..=100).map(|g| start(g, 10, 9)).collect();
        prune_starts(&mut many, Seq(0));
        assert_eq!(many.len(), MAX_GENERATION_STARTS);
        assert_eq!(many.last().map(|s| s.generation), Some(100));
    }
}
