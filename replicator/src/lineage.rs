//! The identity of a group's history (pure): journal generations, where each one starts, and
//! the check that a replica's (generation, watermark) is a prefix of a primary's history.
//!
//! Every open of a primary's journal starts a new *generation*: a random id, persisted in
//! `journal.meta` before the journal writes anything, whose seqs start after the journal's
//! durable reservation (so no seq is ever handed out twice, leaving a gap after the frames the
//! journal still holds). The journal keeps the list of [`GenerationStart`]s its untrimmed
//! history crosses, and the shipper sends it in `Hello`. The replica stores the generation it
//! is bound to beside its watermark and, at each `Hello`, [`judge`]s the primary's lineage:
//! its copy must be a prefix of the primary's history.
//!
//! A replica may hold seqs past what the primary's journal kept: the primary ships a frame as
//! soon as it is written to its journal, while its own fdatasync runs (the two syncs overlap,
//! and a write is acknowledged only once both are done). [`judge_tail`] decides what becomes
//! of such a tail, on both sides of a (re)connect, from the highest seq the primary had
//! announced durable to the replica (`primary_durable`):
//! - every seq past what the primary kept was announced durable by nobody (`primary_durable`
//!   ≤ kept): the primary lost them before its own sync ended, so no write among them was
//!   acknowledged; the copy is rolled back by a resync from the primary (which replaces it
//!   and unbinds it) before the group is protected again;
//! - the primary had announced some of them durable, or the replica never heard any
//!   announcement: the primary lost frames it had made durable (a lost durable tail,
//!   which sync mode may have acknowledged): the group stops with that reason until an
//!   operator decides; it is never resynced silently in the direction that drops them.
//!
//! The replica persists `primary_durable` with each watermark (no sync of its own), so after
//! its own restart it knows the value as of its last durable batch; announcements that came
//! later are lost with the restart, which makes the rule roll back where it could have
//! stopped only if the primary's disk also lost frames it had made durable (two faults).

use tandem_core::ids::{Epoch, Seq};

/// One generation of a primary's journal and where it continues the history before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationStart {
    /// The generation's id (random, never 0).
    pub generation: u64,
    /// The first seq the generation hands out.
    pub first: Seq,
    /// The last seq of the history it continues that the journal still held when it was
    /// opened: seqs `after + 1 .. first` were never handed out in this history.
    pub after: Seq,
}

/// The generation a replica's copy is bound to (what it stores beside its watermark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The primary's journal generation whose history the copy is a prefix of.
    pub generation: u64,
    /// The epoch of the `Hello` that bound it.
    pub epoch: Epoch,
}

/// What a replica does with a primary's lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// The copy is a prefix of the primary's history: bind to `bind` (when set) and accept
    /// the stream, with the seq jumps (after → first) its generation starts announce.
    Accept {
        /// The generation to bind to (`None`: the sender announced no lineage).
        bind: Option<u64>,
    },
    /// The copy holds seqs past what the primary's journal kept, none of which the primary
    /// announced durable: they were never acknowledged; the copy is bound to nothing new and
    /// must be rolled back by a resync from the primary (which the primary asks for), before
    /// any frame.
    RollBack {
        /// The copy's watermark.
        watermark: Seq,
        /// The last seq of that history the primary kept.
        kept: Seq,
    },
    /// The copy holds seqs the primary's journal lost after making them durable.
    LostTail {
        /// The generation the copy is bound to.
        replica_generation: u64,
        /// The copy's watermark.
        watermark: Seq,
        /// The last seq of that history the primary kept.
        kept: Seq,
        /// The primary's generation that continued after `kept`.
        primary_generation: u64,
        /// Where that generation starts.
        first: Seq,
    },
    /// The copy is bound to a generation the primary does not know, in the same epoch: its
    /// history is not a prefix of the primary's.
    Foreign {
        /// The generation the copy is bound to.
        replica_generation: u64,
        /// The primary's current generation.
        primary_generation: u64,
    },
}

impl Judgement {
    /// The refusal text for a judgement that refuses, naming generations and seqs.
    pub fn reason(&self, group: &str) -> Option<String> {
        match self {
            Judgement::Accept { .. } | Judgement::RollBack { .. } => None,
            Judgement::LostTail {
                replica_generation,
                watermark,
                kept,
                primary_generation,
                first,
            } => Some(format!(
                "lost durable tail in group {group}: this replica holds seqs {}..={watermark} of \
                 journal generation {replica_generation:016x}, but the primary's journal kept \
                 that history only through seq {kept} (its generation \
                 {primary_generation:016x} continues at seq {first}); the primary lost frames \
                 it had made durable. Replication is stopped until an operator decides: fail \
                 over to this replica, which holds them, or resync it from the primary, which \
                 discards them",
                kept.0 + 1
            )),
            Judgement::Foreign {
                replica_generation,
                primary_generation,
            } => Some(format!(
                "history of group {group} is not a prefix: this replica is bound to journal \
                 generation {replica_generation:016x}, which the primary's lineage (current \
                 generation {primary_generation:016x}) does not contain, in the same epoch; \
                 replication is stopped until an operator decides"
            )),
        }
    }
}

/// Judges a replica bound to `bound` (`None`: never bound, or resynced since) at `watermark`
/// against a primary's lineage (`starts`, oldest first, the last being its current generation)
/// sent with a `Hello` at `epoch` (pure).
///
/// - No lineage (an older primary): accept, bind nothing.
/// - Unbound: accept (the primary compares the watermark with its journal), bind.
/// - Bound to a generation in the lineage: the primary's history keeps that generation's
///   history through the smallest `after` of every later start; a copy past it is rolled
///   back or stops the group, as [`judge_tail`] says with `primary_durable` (the highest seq
///   the primary announced durable to this replica, `None` when unknown).
/// - Bound to an unknown generation: accept if the `Hello` comes in a newer epoch than the
///   binding (the coordinators chose this primary since; the epoch fence and resync rules
///   decide), else the histories differ.
pub fn judge(
    bound: Option<Bound>,
    watermark: Seq,
    epoch: Epoch,
    starts: &[GenerationStart],
    primary_durable: Option<Seq>,
) -> Judgement {
    let Some(current) = starts.last() else {
        return Judgement::Accept { bind: None };
    };
    let bind = Some(current.generation);
    let Some(bound) = bound else {
        return Judgement::Accept { bind };
    };
    match starts.iter().position(|s| s.generation == bound.generation) {
        Some(k) => {
            let cut = starts[k + 1..].iter().min_by_key(|s| s.after);
            let Some(s) = cut else {
                return Judgement::Accept { bind };
            };
            match judge_tail(watermark, s.after, primary_durable) {
                Tail::Within => Judgement::Accept { bind },
                Tail::RollBack => Judgement::RollBack {
                    watermark,
                    kept: s.after,
                },
                Tail::LostDurable => Judgement::LostTail {
                    replica_generation: bound.generation,
                    watermark,
                    kept: s.after,
                    primary_generation: s.generation,
                    first: s.first,
                },
            }
        }
        None if epoch > bound.epoch => Judgement::Accept { bind },
        None => Judgement::Foreign {
            replica_generation: bound.generation,
            primary_generation: current.generation,
        },
    }
}

/// What becomes of a replica copy at `watermark` whose history the primary's journal keeps
/// only through `kept` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The copy holds nothing past `kept`: replication continues from the journal.
    Within,
    /// Every seq past `kept` is one the primary never announced durable: it lost them before
    /// its own journal sync ended, and none was acknowledged (a write is acknowledged only
    /// once the primary's journal holds it durably too). Resync the copy from the primary,
    /// which drops them, before the group is protected again.
    RollBack,
    /// The primary announced a seq past `kept` durable (it lost frames it had made durable,
    /// which may have been acknowledged), or the replica cannot tell (it never heard an
    /// announcement): stop until an operator decides.
    LostDurable,
}

/// Decides what becomes of a copy at `watermark` when the primary's journal keeps its
/// history only through `kept`, given the highest seq the primary announced durable to this
/// replica (`None`: it never heard one, e.g. from a primary of an older build) (pure).
///
/// The rule rests on two facts: the primary acknowledges a write only after its own journal
/// made it durable, and an honest disk keeps what was made durable, so a seq past `kept` that
/// was never announced durable was never acknowledged. When the replica heard the primary
/// announce durability past `kept`, the disk lost a durable tail and rolling back could drop
/// acknowledged writes: that case (and not knowing) stops the group instead.
pub fn judge_tail(watermark: Seq, kept: Seq, primary_durable: Option<Seq>) -> Tail {
    if watermark <= kept {
        return Tail::Within;
    }
    match primary_durable {
        Some(p) if p <= kept => Tail::RollBack,
        _ => Tail::LostDurable,
    }
}

/// The seq jumps a lineage announces: after seq `after` the history continues at `first`
/// (pure). A replica accepts a frame past `watermark + 1` only at one of these.
pub fn jumps(starts: &[GenerationStart]) -> Vec<(Seq, Seq)> {
    starts
        .iter()
        .filter(|s| s.first.0 > s.after.0 + 1)
        .map(|s| (s.after, s.first))
        .collect()
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

    fn bound(generation: u64, epoch: u64) -> Option<Bound> {
        Some(Bound {
            generation,
            epoch: Epoch(epoch),
        })
    }

    #[test]
    fn judge_table() {
        // Generation 7 started at 1; 8 reopened after 100 at 65537 (nothing lost); 9
        // reopened after 65540 at 131073, having lost 65541..=65600.
        let lineage = [
            start(7, 1, 0),
            start(8, 65537, 100),
            start(9, 131073, 65540),
        ];
        let accept9 = Judgement::Accept { bind: Some(9) };
        let cases: Vec<(Option<Bound>, u64, u64, Judgement)> = vec![
            (None, 5, 1, accept9.clone()),
            (bound(7, 1), 100, 1, accept9.clone()),
            (bound(7, 1), 40, 1, accept9.clone()),
            (bound(8, 1), 65540, 1, accept9.clone()),
            (bound(9, 1), 131080, 1, accept9.clone()),
            (
                bound(8, 1),
                65600,
                1,
                Judgement::LostTail {
                    replica_generation: 8,
                    watermark: Seq(65600),
                    kept: Seq(65540),
                    primary_generation: 9,
                    first: Seq(131073),
                },
            ),
            (
                bound(7, 1),
                101,
                1,
                Judgement::LostTail {
                    replica_generation: 7,
                    watermark: Seq(101),
                    kept: Seq(100),
                    primary_generation: 8,
                    first: Seq(65537),
                },
            ),
            (
                bound(3, 1),
                50,
                1,
                Judgement::Foreign {
                    replica_generation: 3,
                    primary_generation: 9,
                },
            ),
            (bound(3, 1), 50, 2, accept9.clone()),
        ];
        for (i, (b, wm, epoch, want)) in cases.into_iter().enumerate() {
            let got = judge(b, Seq(wm), Epoch(epoch), &lineage, None);
            assert_eq!(got, want, "#{i}: expect {want:?} got {got:?}");
        }
        assert_eq!(
            judge(bound(3, 1), Seq(9), Epoch(1), &[], None),
            Judgement::Accept { bind: None },
            "an older primary announces no lineage"
        );
    }

    #[test]
    fn a_later_deeper_loss_cuts_an_older_generation_shorter() {
        // 8 kept 7's history through 100; then 9 lost some of it too, keeping only 90.
        let lineage = [start(7, 1, 0), start(8, 65537, 100), start(9, 131073, 90)];
        let j = judge(bound(7, 1), Seq(95), Epoch(1), &lineage, None);
        assert!(
            matches!(
                j,
                Judgement::LostTail {
                    kept: Seq(90),
                    primary_generation: 9,
                    ..
                }
            ),
            "{j:?}"
        );
        let why = j.reason("g").unwrap_or_default();
        assert!(
            why.contains("seqs 91..=95") && why.contains("fail over"),
            "{why}"
        );
    }

    #[test]
    fn judge_tail_table() {
        // (watermark, kept, primary_durable) -> verdict
        let cases = [
            (10, 10, None, Tail::Within),
            (9, 10, Some(3), Tail::Within),
            (0, 0, None, Tail::Within),
            (12, 10, Some(10), Tail::RollBack),
            (12, 10, Some(4), Tail::RollBack),
            (12, 10, Some(0), Tail::RollBack),
            (12, 10, Some(11), Tail::LostDurable),
            (12, 10, Some(12), Tail::LostDurable),
            (12, 10, Some(99), Tail::LostDurable),
            (12, 10, None, Tail::LostDurable),
        ];
        for (i, (wm, kept, p, want)) in cases.into_iter().enumerate() {
            let got = judge_tail(Seq(wm), Seq(kept), p.map(Seq));
            assert_eq!(got, want, "#{i}: expect {want:?} got {got:?}");
        }
    }

    #[test]
    fn a_tail_the_primary_never_announced_durable_is_rolled_back_not_bound() {
        // The primary (generation 8) lost 101..=105 before its journal sync ended; it had
        // announced 100 durable. Reopened as generation 9 after 100.
        let lineage = [start(8, 1, 0), start(9, 65537, 100)];
        let j = judge(bound(8, 1), Seq(105), Epoch(1), &lineage, Some(Seq(100)));
        assert_eq!(
            j,
            Judgement::RollBack {
                watermark: Seq(105),
                kept: Seq(100)
            }
        );
        assert_eq!(
            j.reason("g"),
            None,
            "accepted: the primary asks for the resync"
        );
        let j = judge(bound(8, 1), Seq(105), Epoch(1), &lineage, Some(Seq(103)));
        assert!(matches!(j, Judgement::LostTail { .. }), "{j:?}");
        let j = judge(bound(8, 1), Seq(100), Epoch(1), &lineage, Some(Seq(100)));
        assert_eq!(j, Judgement::Accept { bind: Some(9) });
    }

    #[test]
    fn jumps_are_the_announced_gaps_only() {
        let lineage = [start(7, 1, 0), start(8, 65537, 100), start(9, 65538, 65537)];
        assert_eq!(jumps(&lineage), vec![(Seq(100), Seq(65537))]);
    }
}
