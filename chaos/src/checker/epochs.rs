//! Epoch checkers: one writable primary per epoch (no split brain, no write acknowledged
//! by a fenced primary, each epoch promoted once and in increasing order), and no observer
//! seeing epochs go backwards.
//!
//! Pure: over a history, or events read from one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tandem_core::ids::Epoch;

use super::verdict::Verdict;
use crate::history::{History, OpFn, OpKind};

/// Checks that no epoch had `ok` writes from two different sites (two writable primaries).
/// `ok` writes without an epoch or site are counted in a note.
pub fn split_brain(history: &History) -> Verdict {
    let mut sites: BTreeMap<Epoch, BTreeSet<&str>> = BTreeMap::new();
    let mut unlabeled = 0usize;
    for op in history.ops() {
        if op.f != OpFn::Write || op.kind != OpKind::Ok {
            continue;
        }
        match (op.epoch, op.site.as_deref()) {
            (Some(e), Some(s)) => {
                sites.entry(e).or_default().insert(s);
            }
            _ => unlabeled += 1,
        }
    }
    let violations = sites
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(e, s)| {
            let list: Vec<&str> = s.iter().copied().collect();
            format!(
                "epoch {e}: acknowledged writes from sites {}",
                list.join(", ")
            )
        })
        .collect();
    let mut notes = Vec::new();
    if unlabeled > 0 {
        notes.push(format!(
            "{unlabeled} acknowledged writes carry no epoch or site"
        ));
    }
    Verdict::new("split_brain", violations, notes)
}

/// Checks that `site` acknowledged no write after `fence_ms` (the end of its last lease, in
/// history time): a primary cut off from the coordinators must refuse writes once its lease
/// is over. Only `ok` writes labelled with `site` count; the acknowledgement time is used
/// (the server answered no later than that).
pub fn no_ack_after_fence(history: &History, site: &str, fence_ms: u64) -> Verdict {
    let mut violations = Vec::new();
    let mut before = 0usize;
    for op in history.ops() {
        if op.f != OpFn::Write || op.kind != OpKind::Ok || op.site.as_deref() != Some(site) {
            continue;
        }
        if op.time_ms > fence_ms {
            violations.push(format!(
                "{site} acknowledged a write (process {}, offset {}) at {} ms, {} ms after \
                 its lease ended at {fence_ms} ms",
                op.process,
                op.offset.unwrap_or(0),
                op.time_ms,
                op.time_ms - fence_ms
            ));
        } else {
            before += 1;
        }
    }
    Verdict::new(
        "no_ack_after_fence",
        violations,
        vec![format!(
            "{before} writes acknowledged by {site} before its lease ended"
        )],
    )
}

/// One epoch seen by one observer (a client process or a site), in the order seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochObservation {
    /// Who saw it.
    pub observer: String,
    /// The epoch seen.
    pub epoch: Epoch,
    /// When (ms since the run's origin).
    pub time_ms: u64,
}

/// Every epoch in a history as observations: the observer is the site, or `process N`.
pub fn epoch_observations(history: &History) -> Vec<EpochObservation> {
    history
        .ops()
        .iter()
        .filter_map(|op| {
            op.epoch.map(|epoch| EpochObservation {
                observer: op
                    .site
                    .clone()
                    .unwrap_or_else(|| format!("process {}", op.process)),
                epoch,
                time_ms: op.time_ms,
            })
        })
        .collect()
}

/// Checks that no observer ever sees an epoch lower than one it saw before.
pub fn epochs_monotonic(observations: &[EpochObservation]) -> Verdict {
    let mut highest: HashMap<&str, (Epoch, u64)> = HashMap::new();
    let mut violations = Vec::new();
    for o in observations {
        match highest.get(o.observer.as_str()) {
            Some(&(prev, at)) if o.epoch < prev => violations.push(format!(
                "{} saw epoch {} at {} ms after epoch {prev} at {at} ms",
                o.observer, o.epoch, o.time_ms
            )),
            Some(&(prev, _)) if o.epoch == prev => {}
            _ => {
                highest.insert(o.observer.as_str(), (o.epoch, o.time_ms));
            }
        }
    }
    Verdict::new("epochs_monotonic", violations, Vec::new())
}

/// A site made primary (writable) in an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The promoted site.
    pub site: String,
    /// The epoch of the promotion.
    pub epoch: Epoch,
    /// When (ms since the run's origin).
    pub time_ms: u64,
}

/// The `ok` promotions in a history (ops with `f: promote` carrying an epoch and a site).
pub fn promotions_from_history(history: &History) -> Vec<Promotion> {
    history
        .ops()
        .iter()
        .filter(|op| op.f == OpFn::Promote && op.kind == OpKind::Ok)
        .filter_map(|op| {
            Some(Promotion {
                site: op.site.clone()?,
                epoch: op.epoch?,
                time_ms: op.time_ms,
            })
        })
        .collect()
}

/// Checks that each epoch was promoted at most once and that promotions came in strictly
/// increasing epochs.
pub fn no_double_promotion(events: &[Promotion]) -> Verdict {
    let mut seen: HashMap<Epoch, &Promotion> = HashMap::new();
    let mut highest: Option<&Promotion> = None;
    let mut violations = Vec::new();
    for p in events {
        if let Some(first) = seen.get(&p.epoch) {
            violations.push(format!(
                "epoch {} promoted twice: {} at {} ms and {} at {} ms",
                p.epoch, first.site, first.time_ms, p.site, p.time_ms
            ));
        } else if let Some(h) = highest.filter(|h| p.epoch < h.epoch) {
            violations.push(format!(
                "{} promoted in epoch {} at {} ms after {} was promoted in epoch {}",
                p.site, p.epoch, p.time_ms, h.site, h.epoch
            ));
        }
        seen.entry(p.epoch).or_insert(p);
        if highest.is_none_or(|h| p.epoch > h.epoch) {
            highest = Some(p);
        }
    }
    Verdict::new("no_double_promotion", violations, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Op;

    fn labeled(process: u64, epoch: u64, site: &str) -> Op {
        Op::write(process, OpKind::Ok, 0, b"x", 0)
            .with_epoch(Epoch(epoch))
            .with_site(site)
    }

    #[test]
    fn two_sites_writing_in_one_epoch_is_split_brain() {
        let mut h = History::new();
        h.append(labeled(1, 1, "east"));
        h.append(labeled(2, 2, "west"));
        assert!(split_brain(&h).ok);
        h.append(labeled(3, 2, "east"));
        let v = split_brain(&h);
        assert!(!v.ok);
        assert_eq!(
            v.violations,
            vec!["epoch 2: acknowledged writes from sites east, west"]
        );
    }

    #[test]
    fn failed_writes_do_not_count_for_split_brain() {
        let mut h = History::new();
        h.append(labeled(1, 1, "east"));
        let mut failed = labeled(2, 1, "west");
        failed.kind = OpKind::Fail;
        h.append(failed);
        assert!(split_brain(&h).ok);
    }

    #[test]
    fn write_acknowledged_by_the_old_primary_after_its_lease_is_caught() {
        let mut h = History::new();
        let ok = |site: &str, t: u64| {
            let mut o = labeled(1, 2, site);
            o.time_ms = t;
            o
        };
        h.append(ok("east", 900));
        h.append(ok("west", 1500));
        let mut failed = ok("east", 1600);
        failed.kind = OpKind::Fail;
        h.append(failed);
        assert!(no_ack_after_fence(&h, "east", 1000).ok);
        h.append(ok("east", 1200));
        let v = no_ack_after_fence(&h, "east", 1000);
        assert!(!v.ok);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("200 ms after"),
            "{:?}",
            v.violations
        );
    }

    #[test]
    fn epoch_going_backwards_for_one_observer_is_caught() {
        let obs = |o: &str, e, t| EpochObservation {
            observer: o.into(),
            epoch: Epoch(e),
            time_ms: t,
        };
        let clean = [
            obs("a", 1, 0),
            obs("b", 3, 1),
            obs("a", 2, 2),
            obs("a", 2, 3),
        ];
        assert!(epochs_monotonic(&clean).ok);
        let bad = [obs("a", 2, 0), obs("b", 1, 1), obs("a", 1, 2)];
        let v = epochs_monotonic(&bad);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].starts_with("a saw epoch 1"));
    }

    #[test]
    fn epoch_observations_come_from_history() {
        let mut h = History::new();
        h.append(labeled(1, 2, "east"));
        h.append(Op::new(4, OpKind::Ok, OpFn::Read, 0).with_epoch(Epoch(1)));
        let obs = epoch_observations(&h);
        assert_eq!(obs[0].observer, "east");
        assert_eq!(obs[1].observer, "process 4");
    }

    fn promo(site: &str, epoch: u64, t: u64) -> Promotion {
        Promotion {
            site: site.into(),
            epoch: Epoch(epoch),
            time_ms: t,
        }
    }

    #[test]
    fn same_epoch_promoted_twice_is_caught() {
        assert!(no_double_promotion(&[promo("east", 1, 0), promo("west", 2, 5)]).ok);
        let v = no_double_promotion(&[promo("east", 1, 0), promo("west", 1, 5)]);
        assert!(v.violations[0].contains("epoch 1 promoted twice"));
        let v = no_double_promotion(&[promo("east", 3, 0), promo("west", 2, 5)]);
        assert!(v.violations[0].contains("after east was promoted in epoch 3"));
    }

    #[test]
    fn promotions_are_read_from_history() {
        let mut h = History::new();
        h.append(
            Op::new(0, OpKind::Ok, OpFn::Promote, 5)
                .with_epoch(Epoch(2))
                .with_site("west"),
        );
        h.append(
            Op::new(0, OpKind::Fail, OpFn::Promote, 6)
                .with_epoch(Epoch(2))
                .with_site("east"),
        );
        assert_eq!(promotions_from_history(&h), vec![promo("west", 2, 5)]);
    }
}
