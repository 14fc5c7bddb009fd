//! The pure per-frame decision on the replica: given a frame's header and the replica's
//! position (group, watermark, epoch fence), refuse, skip, or apply from which change. No I/O.

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
    /// The frame starts after watermark+1: refuse, resume from watermark+1.
    Gap,
    /// Apply, skipping the first `skip` changes (already applied).
    Apply {
        /// Changes at the start of the frame already at or below the watermark.
        skip: u64,
    },
}

/// Decides a frame's fate from its header, in the DESIGN order: group, epoch fence, seq
/// continuity. Payload checks (decompressed length, blake3) come after, on `Apply` only.
pub fn classify(header: &FrameHeader, group: GroupId, watermark: Seq, fence: Epoch) -> Verdict {
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
            let got = classify(&h, g, Seq(wm), Epoch(fence));
            assert_eq!(got, want, "#{i}: expect {want:?} got {got:?}");
        }
    }

    proptest! {
        #[test]
        fn classify_never_applies_a_seq_twice_or_skips_one(first in 1u64..50, n in 1usize..5, wm in 0u64..60) {
            let h = header("g", 1, first, n);
            match classify(&h, GroupId::from_name("g"), Seq(wm), Epoch(1)) {
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
