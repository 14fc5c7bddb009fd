//! Decisions about the audit chain on disk: which records the state may drop from its tail, which
//! records a node lacks after installing a snapshot, what to ask a peer for, and whether the page
//! a peer sent is the chain's own. Pure: numbers and records in, decisions out.
//!
//! A node's disk holds the records it applied (and those of the snapshots it installed); a
//! snapshot carries only the head and a tail, so after installing one a node may lack the records
//! between what it had and the tail: a [`Gap`]. It fills the gap from a peer *downwards*, page by
//! page, each page checked to end exactly at the hash the record above it names as `prev_hash`
//! (the anchor, which the node already holds through raft). A peer can compute hashes but cannot
//! find a different record with the same hash, so a page that verifies and meets the anchor is
//! the chain's own: a hostile peer can refuse to help, never inject a record.

use super::{verify_segment, AuditRecord, ChainError, ZERO_HASH};

/// Records `lo..hi` of the chain that a node does not hold on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Gap {
    /// First missing index.
    pub lo: u64,
    /// One past the last missing index: the node holds record `hi` (or `hi` is its tail's first).
    pub hi: u64,
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit records {}..{}", self.lo, self.hi)
    }
}

/// Why a page from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The peer sent fewer or more records than asked, or none.
    #[error("asked for records {from}..{to}, got {got}")]
    WrongLength {
        /// First index asked.
        from: u64,
        /// One past the last index asked.
        to: u64,
        /// Records received.
        got: usize,
    },
    /// The page does not verify as a segment (index gap, a bad link, a bad hash).
    #[error("page does not verify: {0}")]
    Chain(#[from] ChainError),
    /// The page's last record is not the one the record above it names.
    #[error("record {index} does not hash to the prev_hash of record {}", index + 1)]
    Anchor {
        /// The page's last index.
        index: u64,
    },
    /// The page starts the chain (index 0) without the zero hash, or does not link to the
    /// record the node holds below the gap.
    #[error("record {index} does not link to the record below it")]
    Below {
        /// The page's first index.
        index: u64,
    },
}

/// The gap after installing a snapshot whose tail starts at `tail_first`, on a node whose disk
/// holds records up to `disk_end` (exclusive) and already lacked `gap`. Records the node holds
/// above an old gap but below `tail_first` are asked again (simpler than tracking two gaps, and
/// harmless: a page is checked whatever the node already holds).
pub fn gap_after_restore(gap: Option<Gap>, disk_end: u64, tail_first: u64) -> Option<Gap> {
    if tail_first <= disk_end {
        return gap;
    }
    let lo = gap.map_or(disk_end, |g| g.lo.min(disk_end));
    Some(Gap { lo, hi: tail_first })
}

/// The next page to ask for, `(from, limit)`: the top `page` records of the gap (filling
/// downwards, so every page meets an anchor the node holds).
pub fn next_request(gap: Gap, page: u64) -> (u64, u64) {
    let from = gap.hi.saturating_sub(page.max(1)).max(gap.lo);
    (from, gap.hi - from)
}

/// Checks a page a peer sent for `next_request(gap, ..) = (from, _)`: exactly the records
/// `from..gap.hi`, verifying as a segment, its last record hashing to `anchor` (the `prev_hash`
/// of record `gap.hi`), and, at the bottom of the gap, linking to `below` (the hash of record
/// `gap.lo - 1`, or the zero hash at index 0). Returns the gap left (`None` when filled).
///
/// # Errors
/// [`PageError`] naming what did not match; the page must then be dropped, whole.
pub fn accept_page(
    gap: Gap,
    from: u64,
    page: &[AuditRecord],
    anchor: &str,
    below: Option<&str>,
) -> Result<Option<Gap>, PageError> {
    let want = gap.hi.saturating_sub(from);
    let (Some(first), Some(last)) = (page.first(), page.last()) else {
        return Err(PageError::WrongLength {
            from,
            to: gap.hi,
            got: 0,
        });
    };
    if page.len() as u64 != want || from < gap.lo {
        return Err(PageError::WrongLength {
            from,
            to: gap.hi,
            got: page.len(),
        });
    }
    verify_segment(page, from, &first.prev_hash)?;
    if last.hash != anchor {
        return Err(PageError::Anchor { index: last.index });
    }
    let bottom = if from == 0 { Some(ZERO_HASH) } else { below };
    if from == gap.lo {
        if let Some(b) = bottom {
            if first.prev_hash != b {
                return Err(PageError::Below { index: from });
            }
        }
        return Ok(None);
    }
    Ok(Some(Gap {
        lo: gap.lo,
        hi: from,
    }))
}

/// How many of the oldest tail records the state may drop: those below `next_index - keep`
/// that are durable on disk (`durable_end` exclusive), never a record the disk lacks.
pub fn evictable(tail_first: u64, next_index: u64, durable_end: u64, keep: u64) -> u64 {
    let upto = next_index.saturating_sub(keep).min(durable_end);
    upto.saturating_sub(tail_first)
}

/// Where a read of up to `limit` records from `from` comes from: `disk` records from the audit
/// store, then records from the state's tail starting at `tail_from` (if any room is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlan {
    /// Records to read from the store, from `from`.
    pub disk: u64,
    /// Then read from the tail from this index (`None`: nothing from the tail).
    pub tail_from: Option<u64>,
}

/// Plans a read of up to `limit` records from `from` on a node whose tail starts at
/// `tail_first` and whose disk lacks `gap`. A read never skips a missing record: it stops before
/// the gap, and one that starts inside it is refused with the gap, so the caller asks another
/// coordinator instead of taking a partial chain for a whole one.
///
/// # Errors
/// The gap, when `from` is inside it.
pub fn read_plan(
    from: u64,
    limit: u64,
    tail_first: u64,
    gap: Option<Gap>,
) -> Result<ReadPlan, Gap> {
    if from >= tail_first {
        return Ok(ReadPlan {
            disk: 0,
            tail_from: Some(from),
        });
    }
    let mut disk_end = tail_first;
    if let Some(g) = gap.filter(|g| g.lo < g.hi && g.hi > from && g.lo < tail_first) {
        if from >= g.lo {
            return Err(g);
        }
        disk_end = g.lo;
    }
    let disk = limit.min(disk_end - from);
    let tail_from = (disk_end == tail_first && disk < limit).then_some(tail_first);
    Ok(ReadPlan { disk, tail_from })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditChain, AuditKind};
    use serde_json::json;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut c = AuditChain::default();
        for i in 0..n {
            c.append(
                i as i64,
                "coordinator",
                AuditKind::Note,
                None,
                json!({"n": i}),
            );
        }
        c.records().to_vec()
    }

    #[test]
    fn a_snapshot_beyond_the_disk_opens_a_gap_and_one_within_does_not() {
        // Table: (gap, disk_end, tail_first) -> gap after.
        let g = |lo, hi| Some(Gap { lo, hi });
        let cases = [
            (None, 100, 80, None),
            (None, 100, 100, None),
            (None, 100, 150, g(100, 150)),
            (None, 0, 4_096, g(0, 4_096)),
            (g(10, 50), 120, 200, g(10, 200)),
            (g(10, 50), 120, 90, g(10, 50)),
        ];
        for (i, (gap, end, first, want)) in cases.into_iter().enumerate() {
            assert_eq!(gap_after_restore(gap, end, first), want, "#{i}");
        }
    }

    #[test]
    fn pages_fill_the_gap_downwards_until_it_closes() {
        let recs = chain(1_000);
        let mut gap = Some(Gap { lo: 100, hi: 900 });
        let mut pages = 0;
        while let Some(g) = gap {
            let (from, limit) = next_request(g, 300);
            assert_eq!(from + limit, g.hi);
            let page = &recs[from as usize..g.hi as usize];
            let anchor = recs[g.hi as usize].prev_hash.clone();
            let below = recs[g.lo as usize - 1].hash.clone();
            gap = accept_page(g, from, page, &anchor, Some(&below)).unwrap();
            pages += 1;
        }
        assert_eq!(pages, 3, "900..600, 600..300, 300..100");
    }

    #[test]
    fn the_first_page_of_the_chain_must_start_at_the_zero_hash() {
        let recs = chain(10);
        let g = Gap { lo: 0, hi: 5 };
        let anchor = recs[5].prev_hash.clone();
        assert_eq!(accept_page(g, 0, &recs[..5], &anchor, None), Ok(None));
    }

    #[test]
    fn a_hostile_peer_cannot_inject_a_record() {
        let recs = chain(20);
        let g = Gap { lo: 5, hi: 15 };
        let anchor = recs[15].prev_hash.clone();
        let below = recs[4].hash.clone();
        let good = recs[5..15].to_vec();
        assert_eq!(accept_page(g, 5, &good, &anchor, Some(&below)), Ok(None));
        // 1. An altered record, hash left as it was.
        let mut bad = good.clone();
        bad[3].actor = "mallory".into();
        assert_eq!(
            accept_page(g, 5, &bad, &anchor, Some(&below)),
            Err(PageError::Chain(ChainError::HashMismatch { index: 8 }))
        );
        // 2. An altered record re-hashed, and every record after it re-linked and re-hashed:
        //    a consistent forged segment, which no longer meets the anchor.
        let mut forged = good.clone();
        forged[3].actor = "mallory".into();
        for i in 3..forged.len() {
            if i > 3 {
                forged[i].prev_hash = forged[i - 1].hash.clone();
            }
            forged[i].hash = forged[i].compute_hash().unwrap();
        }
        assert_eq!(
            accept_page(g, 5, &forged, &anchor, Some(&below)),
            Err(PageError::Anchor { index: 14 })
        );
        // 3. A whole forged chain of the right length that meets nothing we hold.
        let mut other = AuditChain::default();
        for i in 0..15 {
            other.append(i, "mallory", AuditKind::Note, None, json!({}));
        }
        assert!(accept_page(g, 5, &other.records()[5..15], &anchor, Some(&below)).is_err());
        // 4. Too short, too long, empty, shifted.
        assert!(matches!(
            accept_page(g, 5, &good[1..], &anchor, Some(&below)),
            Err(PageError::WrongLength { .. })
        ));
        assert!(matches!(
            accept_page(g, 5, &[], &anchor, Some(&below)),
            Err(PageError::WrongLength { .. })
        ));
        assert!(matches!(
            accept_page(g, 5, &recs[4..14], &anchor, Some(&below)),
            Err(PageError::Chain(ChainError::IndexGap { .. }))
        ));
        // 5. The right records, but the node's record below the gap disagrees (its own disk
        //    is not this chain's): refused rather than stitched.
        assert_eq!(
            accept_page(g, 5, &good, &anchor, Some(&recs[7].hash)),
            Err(PageError::Below { index: 5 })
        );
    }

    #[test]
    fn only_records_on_disk_beyond_the_kept_tail_are_evictable() {
        // (tail_first, next, durable_end, keep) -> evictable
        let cases = [
            (0, 10_000, 10_000, 4_096, 5_904),
            (0, 10_000, 2_000, 4_096, 2_000),
            (0, 3_000, 3_000, 4_096, 0),
            (5_904, 10_000, 10_000, 4_096, 0),
            (5_000, 10_000, 4_000, 4_096, 0),
        ];
        for (i, (first, next, end, keep, want)) in cases.into_iter().enumerate() {
            assert_eq!(evictable(first, next, end, keep), want, "#{i}");
        }
    }

    #[test]
    fn a_read_takes_the_disk_then_the_tail_and_never_skips_the_gap() {
        let g = |lo, hi| Some(Gap { lo, hi });
        let plan = |disk, tail_from| Ok(ReadPlan { disk, tail_from });
        // (from, limit, tail_first, gap) -> plan
        let cases = [
            (500, 100, 400, None, plan(0, Some(500))),
            (100, 100, 400, None, plan(100, None)),
            (350, 100, 400, None, plan(50, Some(400))),
            (0, 1_000, 400, g(100, 300), plan(100, None)),
            (150, 10, 400, g(100, 300), Err(Gap { lo: 100, hi: 300 })),
            (300, 200, 400, g(100, 300), plan(100, Some(400))),
            (0, 50, 400, g(100, 300), plan(50, None)),
        ];
        for (i, (from, limit, first, gap, want)) in cases.into_iter().enumerate() {
            assert_eq!(read_plan(from, limit, first, gap), want, "#{i}");
        }
    }
}
