//! The pure per-frame decision on the replica: given a frame's header and the replica's
//! position (group, watermark, epoch fence) and the seq jumps its stream's `Hello` announced,
//! refuse, skip, or apply from which change. No I/O.

use tandem_core::frame::FrameHeader;
use tandem_core::ids::{Epoch, GroupId, Seq};

/// What to do with a frame whose header parsed, given the replica's position (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame belongs to another group: refuse, fatal.
    WrongGroup,
    /// The frame's epoch is older than the fence: refuse, fatal.
    OldEpoch,
    /// Every change is at or below the watermark: acknowledge, do not apply.
    Duplicate,
    /// The frame starts after watermark+1, and not at a jump its stream announced: refuse,
    /// resume from watermark+1.
    Gap,
    /// Apply, skipping the first `skip` changes (already applied).
    Apply {
        /// Changes at the start of the frame already at or below the watermark.
        skip: u64,
    },
}

/// Decides a frame's fate from its header, in the DESIGN order: group, epoch fence, seq
/// continuity. Payload checks (decompressed length, blake3) come after, on `Apply` only.
///
/// `jumps` are the (after, first) seq jumps the stream's `Hello` announced (a journal
/// generation start after a reopen, [`crate::lineage::jumps`]): a frame starting at `first`
/// when the watermark is exactly `after` continues the history; any other gap is refused.
pub fn classify(
    header: &FrameHeader,
    group: GroupId,
    watermark: Seq,
    fence: Epoch,
    jumps: &[(Seq, Seq)],
) -> Verdict {
    if header.meta.group != group {
        return Verdict::WrongGroup;
    }
    if header.meta.epoch < fence {
        return Verdict::OldEpoch;
    }
    if header.change_count == 0 || header.last_seq() <= watermark {
        return Verdict::Duplicate;
    }
    let first = header.meta.first_seq.0;
    if first > watermark.0.saturating_add(1) {
        if jumps.contains(&(watermark, header.meta.first_seq)) {
            return Verdict::Apply { skip: 0 };
        }
        return Verdict::Gap;
    }
    Verdict::Apply {
        skip: watermark.0 + 1 - first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tandem_core::frame::{Change, Encoder, FrameMeta};

    fn header(group: &str, epoch: u64, first: u64, n: usize) -> FrameHeader {
        let changes: Vec<Change> = (0..n)
            .map(|i| Change::write("v", i as u64, vec![1], 0))
            .collect();
        let b = Encoder::new(1)
            .unwrap()
            .encode(
                FrameMeta {
                    group: GroupId::from_name(group),
                    epoch: Epoch(epoch),
                    first_seq: Seq(first),
                },
                &changes,
            )
            .unwrap();
        FrameHeader::parse(&b).unwrap()
    }

    #[test]
    fn classify_table() {
        let g = GroupId::from_name("g");
        let cases = [
            (header("other", 1, 1, 1), 0, 1, Verdict::WrongGroup),
            (header("g", 1, 1, 1), 0, 2, Verdict::OldEpoch),
            (header("g", 2, 1, 1), 0, 2, Verdict::Apply { skip: 0 }),
            (header("g", 3, 1, 1), 0, 2, Verdict::Apply { skip: 0 }),
            (header("g", 1, 1, 3), 3, 1, Verdict::Duplicate),
            (header("g", 1, 1, 3), 2, 1, Verdict::Apply { skip: 2 }),
            (header("g", 1, 5, 1), 3, 1, Verdict::Gap),
            (header("g", 1, 4, 2), 3, 1, Verdict::Apply { skip: 0 }),
        ];
        for (i, (h, wm, fence, want)) in cases.into_iter().enumerate() {
            let got = classify(&h, g, Seq(wm), Epoch(fence), &[]);
            assert_eq!(got, want, "#{i}: expect {want:?} got {got:?}");
        }
    }

    #[test]
    fn a_gap_is_applied_only_at_an_announced_jump() {
        let g = GroupId::from_name("g");
        let jumps = [(Seq(100), Seq(65537))];
        let h = header("g", 1, 65537, 2);
        let cases = [
            (100, &jumps[..], Verdict::Apply { skip: 0 }),
            (99, &jumps[..], Verdict::Gap),
            (101, &jumps[..], Verdict::Gap),
            (100, &[][..], Verdict::Gap),
            (65537, &jumps[..], Verdict::Apply { skip: 1 }),
            (65538, &jumps[..], Verdict::Duplicate),
        ];
        for (i, (wm, j, want)) in cases.into_iter().enumerate() {
            let got = classify(&h, g, Seq(wm), Epoch(1), j);
            assert_eq!(got, want, "#{i}: expect {want:?} got {got:?}");
        }
    }

    proptest! {
        #[test]
        fn classify_never_applies_a_seq_twice_or_skips_one(first in 1u64..50, n in 1usize..5, wm in 0u64..60) {
            let h = header("g", 1, first, n);
            match classify(&h, GroupId::from_name("g"), Seq(wm), Epoch(1), &[]) {
                Verdict::Apply { skip } => {
                    prop_assert_eq!(first + skip, wm + 1);
                    prop_assert!(skip < n as u64);
                }
                Verdict::Duplicate => prop_assert!(first + n as u64 - 1 <= wm),
                Verdict::Gap => prop_assert!(first > wm + 1),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}
