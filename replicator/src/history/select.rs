//! Recovery points and how one is chosen for a [`Selector`] (time, tag or seq) within what the
//! history still holds. Pure.

use super::codec::RecordKind;
use tandem_core::ids::Seq;

/// A recovery point: the state of the whole group after the change at `seq` was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    /// The seq the state is at.
    pub seq: Seq,
    /// Capture time of that change on the primary, unix ms.
    pub captured_ms: i64,
    /// Barrier, periodic checkpoint or tagged checkpoint.
    pub kind: RecordKind,
    /// The tag (tagged checkpoints), the resource (barriers), or empty.
    pub tag: String,
}

/// How a recovery point is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// The latest point captured at or before this time (unix ms).
    At(i64),
    /// The latest checkpoint with this tag.
    Tag(String),
    /// Exactly this seq, if it is a point.
    Seq(Seq),
}

/// Picks the recovery point for `sel` among `points` (in seq order), given the oldest seq the
/// history can still rewind to and the watermark of the live copy (pure).
///
/// # Errors
/// A reason naming what was asked and what the history holds.
pub fn select_point(
    points: &[Point],
    sel: &Selector,
    oldest: Seq,
    watermark: Seq,
) -> std::result::Result<Point, String> {
    let usable = |p: &&Point| p.seq >= oldest && p.seq <= watermark;
    let found = match sel {
        Selector::At(ms) => points
            .iter()
            .filter(usable)
            .filter(|p| p.captured_ms <= *ms)
            .max_by_key(|p| (p.seq, p.kind == RecordKind::Tagged)),
        Selector::Tag(tag) => points
            .iter()
            .filter(|p| p.kind == RecordKind::Tagged && p.tag == *tag)
            .filter(usable)
            .max_by_key(|p| p.seq),
        Selector::Seq(s) => points.iter().filter(usable).find(|p| p.seq == *s),
    };
    if let Some(p) = found {
        return Ok(p.clone());
    }
    let range = match (
        points.iter().find(|p| p.seq >= oldest),
        points.iter().rev().find(|p| p.seq <= watermark),
    ) {
        (Some(a), Some(b)) => format!(
            "the history holds points from seq {} ({} ms) to seq {} ({} ms)",
            a.seq, a.captured_ms, b.seq, b.captured_ms
        ),
        _ => "the history holds no recovery point".to_string(),
    };
    Err(match sel {
        Selector::At(ms) => format!("no recovery point at or before {ms} ms: {range}"),
        Selector::Tag(t) => {
            if points
                .iter()
                .any(|p| p.kind == RecordKind::Tagged && p.tag == *t)
            {
                format!("checkpoint {t:?} is older than the history retains: {range}")
            } else {
                format!("no checkpoint tagged {t:?}: {range}")
            }
        }
        Selector::Seq(s) => format!("seq {s} is not a recovery point: {range}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(seq: u64, ms: i64, kind: RecordKind, tag: &str) -> Point {
        Point {
            seq: Seq(seq),
            captured_ms: ms,
            kind,
            tag: tag.into(),
        }
    }

    #[test]
    fn point_selection_table() {
        use RecordKind::*;
        let points = vec![
            pt(3, 100, Barrier, "v"),
            pt(5, 200, Checkpoint, ""),
            pt(8, 300, Tagged, "before"),
            pt(9, 300, Barrier, "v"),
            pt(12, 400, Tagged, "before"),
            pt(15, 500, Checkpoint, ""),
        ];
        let cases: Vec<(Selector, u64, u64, Option<u64>)> = vec![
            (Selector::At(250), 0, 20, Some(5)),
            (Selector::At(300), 0, 20, Some(9)),
            (Selector::At(99), 0, 20, None),
            (Selector::At(1000), 0, 20, Some(15)),
            (Selector::At(1000), 0, 13, Some(12)),
            (Selector::At(150), 4, 20, None),
            (Selector::Tag("before".into()), 0, 20, Some(12)),
            (Selector::Tag("before".into()), 0, 11, Some(8)),
            (Selector::Tag("before".into()), 13, 20, None),
            (Selector::Tag("nope".into()), 0, 20, None),
            (Selector::Seq(Seq(9)), 0, 20, Some(9)),
            (Selector::Seq(Seq(10)), 0, 20, None),
        ];
        for (i, (sel, oldest, wm, want)) in cases.into_iter().enumerate() {
            let got = select_point(&points, &sel, Seq(oldest), Seq(wm))
                .ok()
                .map(|p| p.seq.0);
            assert_eq!(got, want, "#{i}: {sel:?} expect {want:?} got {got:?}");
        }
        let e =
            select_point(&points, &Selector::Tag("before".into()), Seq(13), Seq(20)).unwrap_err();
        assert!(e.contains("older than the history retains"), "{e}");
    }
}
