//! Pure checkers: each takes a history (or logs) and final state and returns a [`Verdict`].
//!
//! No checker does I/O; the caller reads the final volume, logs and timings and hands them in.
//! Each checker has tests that feed it a known violation and see it caught.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use tandem_core::ids::{Epoch, Seq};

use crate::history::{History, OpFn, OpKind};

/// The outcome of one checker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The checker's name.
    pub name: String,
    /// True when no violation was found.
    pub ok: bool,
    /// One line per violation, naming the operation, block, epoch or site involved.
    pub violations: Vec<String>,
    /// What the checker could not judge, or counted (not failures).
    pub notes: Vec<String>,
}

impl Verdict {
    pub(crate) fn new(name: &str, violations: Vec<String>, notes: Vec<String>) -> Self {
        Self {
            name: name.to_string(),
            ok: violations.is_empty(),
            violations,
            notes,
        }
    }
}

/// The replication mode the run was configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReplicationMode {
    /// Writes are acknowledged only once the replica has them: no acknowledged write may be lost.
    Sync,
    /// Writes are acknowledged before shipping: loss is allowed within the reported RPO.
    Async,
}

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `ok`, at this history index and time.
    Acked { index: usize, time_ms: u64 },
    /// `fail`: certainly not applied.
    Failed,
    /// `info` or no completion: may or may not be applied.
    Unknown,
}

#[derive(Debug, Clone)]
struct WriteRec {
    process: u64,
    invoke: usize,
    outcome: Outcome,
    hash: Option<blake3::Hash>,
    /// The site that served it, when labelled.
    site: Option<String>,
}

impl WriteRec {
    /// The last history index at which this write could have taken effect.
    fn end(&self) -> usize {
        match self.outcome {
            Outcome::Acked { index, .. } => index,
            Outcome::Failed | Outcome::Unknown => usize::MAX,
        }
    }
}

fn short(h: &blake3::Hash) -> String {
    h.to_hex()[..12].to_string()
}

/// The writes of a history grouped by exact byte range, with the ranges that partly overlap
/// another (which whole-range hashes cannot judge).
struct WriteRanges {
    ranges: BTreeMap<(u64, u64), Vec<WriteRec>>,
    overlapping: BTreeSet<(u64, u64)>,
    violations: Vec<String>,
    notes: Vec<String>,
}

fn write_ranges(history: &History) -> WriteRanges {
    let ops = history.ops();
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    let mut ranges: BTreeMap<(u64, u64), Vec<WriteRec>> = BTreeMap::new();

    for pair in history.pairs() {
        let invoke = &ops[pair.invoke];
        if invoke.f != OpFn::Write {
            continue;
        }
        let completion = pair.completion.map(|i| &ops[i]);
        let outcome = match completion {
            Some(c) if c.kind == OpKind::Ok => Outcome::Acked {
                index: pair.completion.unwrap_or(usize::MAX),
                time_ms: c.time_ms,
            },
            Some(c) if c.kind == OpKind::Fail => Outcome::Failed,
            _ => Outcome::Unknown,
        };
        let field = |f: fn(&crate::history::Op) -> Option<u64>| {
            f(invoke).or_else(|| completion.and_then(f))
        };
        let (Some(offset), Some(length)) = (field(|o| o.offset), field(|o| o.length)) else {
            notes.push(format!(
                "write invoked at history index {} has no offset/length; skipped",
                pair.invoke
            ));
            continue;
        };
        let hash_text = invoke
            .value_hash
            .as_deref()
            .or_else(|| completion.and_then(|c| c.value_hash.as_deref()));
        let hash = hash_text.and_then(|t| blake3::Hash::from_hex(t).ok());
        if hash.is_none() && matches!(outcome, Outcome::Acked { .. }) {
            violations.push(format!(
                "acknowledged write at offset {offset} length {length} (history index {}) \
                 has no valid value_hash, so it cannot be verified",
                pair.invoke
            ));
        }
        let site = invoke
            .site
            .clone()
            .or_else(|| completion.and_then(|c| c.site.clone()));
        ranges.entry((offset, length)).or_default().push(WriteRec {
            process: invoke.process,
            invoke: pair.invoke,
            outcome,
            hash,
            site,
        });
    }

    // Ranges that partly overlap a different range.
    let keys: Vec<(u64, u64)> = ranges.keys().copied().collect();
    let mut overlapping = BTreeSet::new();
    for (i, &(off_a, len_a)) in keys.iter().enumerate() {
        let end_a = off_a.saturating_add(len_a);
        for &(off_b, len_b) in &keys[i + 1..] {
            if off_b >= end_a {
                break;
            }
            overlapping.insert((off_a, len_a));
            overlapping.insert((off_b, len_b));
        }
    }
    if !overlapping.is_empty() {
        notes.push(format!(
            "{} block ranges partly overlap other ranges and were not checked",
            overlapping.len()
        ));
    }

    WriteRanges {
        ranges,
        overlapping,
        violations,
        notes,
    }
}

/// Checks that no acknowledged write is missing from the final volume.
///
/// Writes are grouped by exact byte range (offset, length). For each range the final content
/// must equal the value of some write that may legitimately be last: one that did not `fail`
/// and that no *definite* write followed (invoked after it completed). In `Sync` mode every
/// `ok` write is definite. In `Async` mode an `ok` whose acknowledgement falls within
/// `reported_rpo_before_failure_ms` before `failure_time_ms` may be lost, so it is treated like
/// an `info` write (it may or may not be there). Ranges with no definite write are skipped
/// (their content may still be the initial one). Ranges that partly overlap a different range
/// cannot be judged by whole-range hashes and are skipped with a note.
///
/// `final_blocks(offset, length)` returns the blake3 of the final content of that range.
pub fn lost_acknowledged_writes(
    history: &History,
    final_blocks: &dyn Fn(u64, u64) -> blake3::Hash,
    mode: ReplicationMode,
    reported_rpo_before_failure_ms: u64,
    failure_time_ms: u64,
) -> Verdict {
    const NAME: &str = "lost_acknowledged_writes";
    let WriteRanges {
        ranges,
        overlapping,
        mut violations,
        mut notes,
    } = write_ranges(history);

    let window_start = failure_time_ms.saturating_sub(reported_rpo_before_failure_ms);
    let definite = |w: &WriteRec| match (w.outcome, mode) {
        (Outcome::Acked { .. }, ReplicationMode::Sync) => true,
        (Outcome::Acked { time_ms, .. }, ReplicationMode::Async) => {
            !(time_ms >= window_start && time_ms <= failure_time_ms)
        }
        _ => false,
    };

    let mut checked = 0usize;
    let mut without_definite = 0usize;
    for ((offset, length), writes) in &ranges {
        if overlapping.contains(&(*offset, *length)) {
            continue;
        }
        if !writes.iter().any(definite) {
            without_definite += 1;
            continue;
        }
        checked += 1;
        // A write may be last when it did not fail and no definite write began after it ended.
        let may_be_last = |x: &WriteRec| {
            x.outcome != Outcome::Failed
                && !writes
                    .iter()
                    .any(|y| definite(y) && x.end() != usize::MAX && y.invoke > x.end())
        };
        let allowed: Vec<&WriteRec> = writes.iter().filter(|x| may_be_last(x)).collect();
        let actual = final_blocks(*offset, *length);
        if allowed.iter().any(|x| x.hash == Some(actual)) {
            continue;
        }
        let lost: Vec<String> = writes
            .iter()
            .filter(|w| definite(w) && may_be_last(w))
            .map(|w| {
                let at = match w.outcome {
                    Outcome::Acked { time_ms, .. } => time_ms,
                    _ => 0,
                };
                format!(
                    "process {} acked at {at} ms (hash {})",
                    w.process,
                    w.hash.as_ref().map(short).unwrap_or_else(|| "?".into())
                )
            })
            .collect();
        violations.push(format!(
            "block range offset {offset} length {length}: final content {} is none of the \
             {} values that may be last; lost acknowledged write(s): {}",
            short(&actual),
            allowed.len(),
            lost.join(", ")
        ));
    }
    notes.push(format!(
        "{checked} ranges checked, {without_definite} without a definite acknowledged write"
    ));
    Verdict::new(NAME, violations, notes)
}

/// Checks that on failback the old primary's unreplicated tail was quarantined, not dropped.
///
/// A range is in the tail when `old_site` acknowledged a write to it, no other site ever wrote
/// it, and the final volume holds none of the old site's values that may be last (as in
/// [`lost_acknowledged_writes`]): the old primary had a value the new primary never got. Each
/// such range must be found in the quarantine with one of those values;
/// `quarantined(offset, length)` gives the blake3 of every copy of the range the quarantine
/// files hold. Returns the verdict and how many tail ranges there were (a run with none shows
/// nothing about quarantine).
pub fn tail_quarantined(
    history: &History,
    old_site: &str,
    final_blocks: &dyn Fn(u64, u64) -> blake3::Hash,
    quarantined: &dyn Fn(u64, u64) -> Vec<blake3::Hash>,
) -> (Verdict, usize) {
    let WriteRanges {
        ranges,
        overlapping,
        mut violations,
        mut notes,
    } = write_ranges(history);
    let mut tail = 0usize;
    let mut kept = 0usize;
    for ((offset, length), writes) in &ranges {
        if overlapping.contains(&(*offset, *length)) {
            continue;
        }
        let ours = |w: &WriteRec| w.site.as_deref() == Some(old_site);
        if writes
            .iter()
            .any(|w| !ours(w) && w.outcome != Outcome::Failed)
            || !writes
                .iter()
                .any(|w| ours(w) && matches!(w.outcome, Outcome::Acked { .. }))
        {
            continue;
        }
        let may_be_last = |x: &WriteRec| {
            x.outcome != Outcome::Failed
                && !writes.iter().any(|y| {
                    matches!(y.outcome, Outcome::Acked { .. })
                        && x.end() != usize::MAX
                        && y.invoke > x.end()
                })
        };
        let last: Vec<blake3::Hash> = writes
            .iter()
            .filter(|w| may_be_last(w))
            .filter_map(|w| w.hash)
            .collect();
        if last.contains(&final_blocks(*offset, *length)) {
            continue;
        }
        tail += 1;
        let copies = quarantined(*offset, *length);
        if copies.iter().any(|h| last.contains(h)) {
            kept += 1;
            continue;
        }
        violations.push(format!(
            "block range offset {offset} length {length}: {old_site} acknowledged a value the \
             final volume does not hold and the quarantine does not keep it ({} copies of the \
             range there, none of the {} values that may be last)",
            copies.len(),
            last.len()
        ));
    }
    notes.push(format!(
        "{tail} ranges of {old_site}'s unreplicated tail, {kept} of them found in quarantine"
    ));
    (Verdict::new("tail_quarantined", violations, notes), tail)
}

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

/// One RPO reading taken from the status over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpoSample {
    /// When, in history time (ms).
    pub time_ms: u64,
    /// The RPO reported then, ms.
    pub rpo_ms: i64,
}

/// Checks that the RPO rose to at least `min_peak_ms` between `fault_from_ms` and
/// `fault_until_ms` (the fault really held replication back) and that a reading of at most
/// `recovered_max_ms` came after `fault_until_ms` (it recovered once the fault was lifted;
/// 0 = fully caught up). `samples` are in time order.
pub fn rpo_recovers(
    samples: &[RpoSample],
    fault_from_ms: u64,
    fault_until_ms: u64,
    min_peak_ms: i64,
    recovered_max_ms: i64,
) -> Verdict {
    let mut violations = Vec::new();
    let peak = samples
        .iter()
        .filter(|s| s.time_ms >= fault_from_ms && s.time_ms <= fault_until_ms)
        .map(|s| s.rpo_ms)
        .max();
    match peak {
        None => violations.push(format!(
            "no RPO reading between {fault_from_ms} and {fault_until_ms} ms"
        )),
        Some(p) if p < min_peak_ms => violations.push(format!(
            "RPO peaked at {p} ms while the fault was on, expected at least {min_peak_ms} ms \
             (the fault did not hold replication back)"
        )),
        Some(_) => {}
    }
    let recovered = samples
        .iter()
        .find(|s| s.time_ms > fault_until_ms && s.rpo_ms <= recovered_max_ms);
    let mut notes = vec![format!(
        "peak RPO under the fault: {} ms",
        peak.unwrap_or(0)
    )];
    match recovered {
        Some(s) => notes.push(format!(
            "RPO back to {} ms at {} ms, {} ms after the fault was lifted",
            s.rpo_ms,
            s.time_ms,
            s.time_ms - fault_until_ms
        )),
        None => violations.push(format!(
            "RPO never came back to {recovered_max_ms} ms or less after the fault was lifted at \
             {fault_until_ms} ms (last reading {} ms)",
            samples.last().map(|s| s.rpo_ms).unwrap_or(0)
        )),
    }
    Verdict::new("rpo_recovers", violations, notes)
}

/// Checks that corruption injected on a link was noticed and survived: some bytes were
/// corrupted in flight (`corrupted_bytes`, from the proxy) and the receiver refused frames
/// that were then re-sent (`refused_frames`, from the sender's log) or the stream broke and
/// reconnected (`reconnects`). The caller also checks that the data ended identical.
pub fn corruption_caught(corrupted_bytes: u64, refused_frames: u64, reconnects: u64) -> Verdict {
    let mut violations = Vec::new();
    if corrupted_bytes == 0 {
        violations.push("no byte was corrupted in flight: the fault did not bite".to_owned());
    } else if refused_frames == 0 && reconnects == 0 {
        violations.push(format!(
            "{corrupted_bytes} bytes were corrupted in flight but no frame was refused and the \
             stream never reconnected: corruption went through unnoticed"
        ));
    }
    Verdict::new(
        "corruption_caught",
        violations,
        vec![format!(
            "{corrupted_bytes} bytes corrupted in flight, {refused_frames} frames refused and \
             resent, {reconnects} reconnects"
        )],
    )
}

/// Checks that every node whose journal tail was torn reported truncating it when it
/// restarted: `logs` holds (node, its log text). A tear without any node is a violation (the
/// fault never fired).
pub fn torn_tail_repaired(logs: &[(String, String)]) -> Verdict {
    let mut violations = Vec::new();
    if logs.is_empty() {
        violations.push("no journal tail was torn".to_owned());
    }
    for (node, log) in logs {
        if !log.contains("truncating torn tail") {
            violations.push(format!(
                "{node} restarted without truncating its torn journal tail"
            ));
        }
    }
    Verdict::new("torn_tail_repaired", violations, Vec::new())
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

/// One entry of a replica's apply log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// The replica applied this change.
    Applied(Seq),
    /// The replica reported this durable applied watermark.
    Watermark(Seq),
    /// The replica crashed and restarted from this durable watermark; it re-applies from the
    /// next change.
    Restarted {
        /// The watermark it restarted from.
        watermark: Seq,
    },
}

/// Checks that the replica applied a prefix of the primary's sequence: in order, no gaps, no
/// reordering, no change the primary never made; that watermarks never go backwards (also
/// across restarts) and never pass what was applied. Re-applying changes after a restart from
/// the durable watermark is allowed.
pub fn replica_prefix(primary_seq_log: &[Seq], replica_applied_log: &[ReplicaEvent]) -> Verdict {
    let mut violations = Vec::new();
    for (i, w) in primary_seq_log.windows(2).enumerate() {
        if w[1] <= w[0] {
            violations.push(format!(
                "primary log is not increasing at index {}: {} then {}",
                i + 1,
                w[0],
                w[1]
            ));
        }
    }
    let position: HashMap<Seq, usize> = primary_seq_log
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, i))
        .collect();
    let mut next = 0usize; // index into the primary log of the next change to apply
    let mut highest_applied = Seq(0);
    let mut watermark = Seq(0);
    for (i, event) in replica_applied_log.iter().enumerate() {
        match *event {
            ReplicaEvent::Applied(s) => {
                let expected = primary_seq_log.get(next).copied();
                if expected == Some(s) {
                    next += 1;
                    highest_applied = highest_applied.max(s);
                    continue;
                }
                let what = match (position.get(&s), expected) {
                    (None, _) => "a change the primary never made".to_string(),
                    (Some(_), None) => "past the end of the primary log".to_string(),
                    (Some(&p), Some(e)) if p > next => format!("a gap: expected {e}"),
                    (Some(_), Some(e)) => format!("reordered or repeated: expected {e}"),
                };
                violations.push(format!("replica event {i}: applied {s}, {what}"));
                // Resynchronise on the primary's order so one fault is reported once.
                if let Some(&p) = position.get(&s) {
                    next = p + 1;
                    highest_applied = highest_applied.max(s);
                }
            }
            ReplicaEvent::Watermark(w) | ReplicaEvent::Restarted { watermark: w } => {
                if w < watermark {
                    violations.push(format!(
                        "replica event {i}: watermark went back from {watermark} to {w}"
                    ));
                }
                if w > highest_applied {
                    violations.push(format!(
                        "replica event {i}: watermark {w} is past the highest applied change \
                         {highest_applied}"
                    ));
                }
                watermark = watermark.max(w);
                if let ReplicaEvent::Restarted { .. } = event {
                    next = primary_seq_log.partition_point(|s| *s <= w);
                }
            }
        }
    }
    Verdict::new("replica_prefix", violations, Vec::new())
}

/// Checks that two volumes hash the same after a resync.
pub fn identical_after_resync(hash_a: &blake3::Hash, hash_b: &blake3::Hash) -> Verdict {
    let violations = if hash_a == hash_b {
        Vec::new()
    } else {
        vec![format!(
            "volumes differ after resync: {} vs {}",
            hash_a.to_hex(),
            hash_b.to_hex()
        )]
    };
    Verdict::new("identical_after_resync", violations, Vec::new())
}

/// Checks that the measured recovery time is within the target.
pub fn rto_within_target(measured_ms: u64, target_ms: u64) -> Verdict {
    let violations = if measured_ms <= target_ms {
        Vec::new()
    } else {
        vec![format!(
            "recovery took {measured_ms} ms, target {target_ms} ms"
        )]
    };
    Verdict::new(
        "rto_within_target",
        violations,
        vec![format!("measured {measured_ms} ms, target {target_ms} ms")],
    )
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
    use proptest::prelude::*;

    const B: u64 = 4096;

    fn data(tag: u8) -> Vec<u8> {
        vec![tag; B as usize]
    }

    /// A volume map for `final_blocks`: offset -> data tag; 0 = never written.
    fn finals(map: &[(u64, u8)]) -> impl Fn(u64, u64) -> blake3::Hash + '_ {
        move |offset, len| {
            let tag = map
                .iter()
                .find(|(o, _)| *o == offset)
                .map(|(_, t)| *t)
                .unwrap_or(0);
            blake3::hash(&vec![tag; len as usize])
        }
    }

    struct H {
        h: History,
        t: u64,
    }

    impl H {
        fn new() -> Self {
            Self {
                h: History::new(),
                t: 0,
            }
        }
        fn ev(&mut self, process: u64, kind: OpKind, offset: u64, tag: u8) -> &mut Self {
            self.t += 10;
            self.h
                .append(Op::write(process, kind, offset, &data(tag), self.t));
            self
        }
        fn at(&mut self, t: u64) -> &mut Self {
            self.t = t - 10;
            self
        }
    }

    fn lost(h: &History, map: &[(u64, u8)]) -> Verdict {
        lost_acknowledged_writes(h, &finals(map), ReplicationMode::Sync, 0, 0)
    }

    /// Writes labelled with a site (the tail checker tells sites apart).
    fn site_ev(h: &mut H, site: &str, kind: OpKind, offset: u64, tag: u8) {
        h.t += 10;
        h.h.append(Op::write(1, kind, offset, &data(tag), h.t).with_site(site));
    }

    #[test]
    fn an_unreplicated_tail_missing_from_quarantine_is_caught() {
        let mut h = H::new();
        // hanoi (old primary) writes 1 at 0 and 2 at B; 3 at 2B is also its, replicated.
        for (off, tag) in [(0, 1), (B, 2), (2 * B, 3)] {
            site_ev(&mut h, "hanoi", OpKind::Invoke, off, tag);
            site_ev(&mut h, "hanoi", OpKind::Ok, off, tag);
        }
        // After the failover hcm writes 9 at 3B.
        site_ev(&mut h, "hcm", OpKind::Invoke, 3 * B, 9);
        site_ev(&mut h, "hcm", OpKind::Ok, 3 * B, 9);
        // The final volume lacks hanoi's writes at 0 and B (the tail), holds 3 and 9.
        let fin = finals(&[(2 * B, 3), (3 * B, 9)]);
        let none = |_: u64, _: u64| Vec::new();
        let (v, tail) = tail_quarantined(&h.h, "hanoi", &fin, &none);
        assert_eq!(tail, 2);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        // Only block 0 kept, with the wrong value: still caught, for both.
        let wrong = |o: u64, l: u64| {
            if o == 0 {
                vec![blake3::hash(&vec![7u8; l as usize])]
            } else {
                Vec::new()
            }
        };
        let (v, _) = tail_quarantined(&h.h, "hanoi", &fin, &wrong);
        assert_eq!(v.violations.len(), 2, "{:?}", v.violations);
        // Both kept with hanoi's values: passes.
        let kept = |o: u64, l: u64| {
            let tag = if o == 0 { 1u8 } else { 2 };
            vec![blake3::hash(&vec![tag; l as usize])]
        };
        let (v, tail) = tail_quarantined(&h.h, "hanoi", &fin, &kept);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(tail, 2);
        // A range the new primary also wrote is not hanoi's tail to keep.
        site_ev(&mut h, "hcm", OpKind::Invoke, 0, 8);
        site_ev(&mut h, "hcm", OpKind::Ok, 0, 8);
        let (v, tail) = tail_quarantined(&h.h, "hanoi", &finals(&[(0, 8), (2 * B, 3)]), &none);
        assert_eq!((tail, v.violations.len()), (1, 1), "{:?}", v.violations);
    }

    #[test]
    fn acknowledged_write_missing_from_final_state_is_caught() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(1, OpKind::Invoke, B, 2).ev(1, OpKind::Ok, B, 2);
        let v = lost(&h.h, &[(0, 1)]);
        assert!(!v.ok);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(
            v.violations[0].contains("offset 4096"),
            "{:?}",
            v.violations
        );
        assert!(lost(&h.h, &[(0, 1), (B, 2)]).ok);
    }

    #[test]
    fn later_write_to_same_block_replaces_the_earlier_one() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(2, OpKind::Invoke, 0, 2).ev(2, OpKind::Ok, 0, 2);
        assert!(lost(&h.h, &[(0, 2)]).ok);
        // Holding the older value means the newer acknowledged write was lost.
        let v = lost(&h.h, &[(0, 1)]);
        assert!(!v.ok);
        assert!(v.violations[0].contains("process 2"), "{:?}", v.violations);
    }

    #[test]
    fn concurrent_writes_may_land_in_either_order() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(2, OpKind::Invoke, 0, 2);
        h.ev(1, OpKind::Ok, 0, 1).ev(2, OpKind::Ok, 0, 2);
        assert!(lost(&h.h, &[(0, 1)]).ok);
        assert!(lost(&h.h, &[(0, 2)]).ok);
        assert!(!lost(&h.h, &[(0, 3)]).ok);
        assert!(!lost(&h.h, &[]).ok);
    }

    #[test]
    fn indeterminate_write_may_or_may_not_be_present() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(2, OpKind::Invoke, 0, 2).ev(2, OpKind::Info, 0, 2);
        h.ev(3, OpKind::Invoke, 0, 3); // never completed
        assert!(lost(&h.h, &[(0, 1)]).ok);
        assert!(lost(&h.h, &[(0, 2)]).ok);
        assert!(lost(&h.h, &[(0, 3)]).ok);
        assert!(!lost(&h.h, &[(0, 9)]).ok);
    }

    #[test]
    fn failed_write_must_not_be_the_final_content() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Ok, 0, 1);
        h.ev(2, OpKind::Invoke, 0, 2).ev(2, OpKind::Fail, 0, 2);
        assert!(lost(&h.h, &[(0, 1)]).ok);
        assert!(!lost(&h.h, &[(0, 2)]).ok);
    }

    #[test]
    fn range_with_only_unacknowledged_writes_is_not_judged() {
        let mut h = H::new();
        h.ev(1, OpKind::Invoke, 0, 1).ev(1, OpKind::Info, 0, 1);
        let v = lost(&h.h, &[(0, 7)]);
        assert!(v.ok);
        assert!(
            v.notes.iter().any(|n| n.contains("1 without")),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn async_mode_allows_loss_only_within_the_reported_rpo() {
        let mut h = H::new();
        h.at(100)
            .ev(1, OpKind::Invoke, 0, 1)
            .ev(1, OpKind::Ok, 0, 1);
        h.at(940)
            .ev(1, OpKind::Invoke, 0, 2)
            .ev(1, OpKind::Ok, 0, 2); // acked at 950
        let check = |rpo, map: &[(u64, u8)]| {
            lost_acknowledged_writes(&h.h, &finals(map), ReplicationMode::Async, rpo, 1000)
        };
        assert!(
            check(100, &[(0, 1)]).ok,
            "write at 950 is within 100 ms of 1000"
        );
        assert!(!check(10, &[(0, 1)]).ok, "write at 950 is older than 10 ms");
        assert!(check(10, &[(0, 2)]).ok);
        // The write acknowledged at 110 is outside any small window: losing both is a violation.
        assert!(!check(100, &[]).ok);
        // Sync mode never allows it.
        assert!(
            !lost_acknowledged_writes(&h.h, &finals(&[(0, 1)]), ReplicationMode::Sync, 100, 1000)
                .ok
        );
    }

    #[test]
    fn acknowledged_write_without_hash_is_a_violation() {
        let mut h = History::new();
        h.append(Op::new(1, OpKind::Invoke, OpFn::Write, 0).with_range(0, B));
        h.append(Op::new(1, OpKind::Ok, OpFn::Write, 1).with_range(0, B));
        assert!(!lost(&h, &[]).ok);
    }

    #[test]
    fn partly_overlapping_ranges_are_noted_not_judged() {
        let mut h = History::new();
        h.append(Op::write(1, OpKind::Invoke, 0, &data(1), 0));
        h.append(Op::write(1, OpKind::Ok, 0, &data(1), 1));
        h.append(Op::write(1, OpKind::Invoke, B / 2, &data(2), 2));
        h.append(Op::write(1, OpKind::Ok, B / 2, &data(2), 3));
        let v = lost(&h, &[]);
        assert!(v.ok);
        assert!(v.notes[0].contains("2 block ranges"), "{:?}", v.notes);
    }

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

    fn rpo(v: &[(u64, i64)]) -> Vec<RpoSample> {
        v.iter()
            .map(|&(time_ms, rpo_ms)| RpoSample { time_ms, rpo_ms })
            .collect()
    }

    #[test]
    fn rpo_that_rises_and_recovers_passes() {
        let s = rpo(&[(0, 0), (1000, 400), (2000, 1500), (3000, 900), (3500, 0)]);
        let v = rpo_recovers(&s, 500, 3000, 1000, 0);
        assert!(v.ok, "{:?}", v.violations);
    }

    #[test]
    fn rpo_that_never_recovers_or_never_rises_is_caught() {
        let stuck = rpo(&[(1000, 400), (2000, 1500), (3500, 2500), (4000, 3000)]);
        let v = rpo_recovers(&stuck, 500, 3000, 1000, 0);
        assert!(!v.ok);
        assert!(
            v.violations[0].contains("never came back"),
            "{:?}",
            v.violations
        );
        // A tolerance lets a reading of 2500 count; 3000 alone would not.
        assert!(rpo_recovers(&stuck, 500, 3000, 1000, 2500).ok);
        assert!(!rpo_recovers(&stuck, 500, 3000, 1000, 2000).ok);
        let flat = rpo(&[(1000, 0), (2000, 20), (3500, 0)]);
        let v = rpo_recovers(&flat, 500, 3000, 1000, 0);
        assert!(
            v.violations[0].contains("peaked at 20"),
            "{:?}",
            v.violations
        );
        // A 0 reading before the lift does not count as recovery.
        let early = rpo(&[(1000, 1500), (2000, 0), (3500, 700)]);
        assert!(!rpo_recovers(&early, 500, 3000, 1000, 0).ok);
        assert!(!rpo_recovers(&[], 500, 3000, 1000, 0).ok);
    }

    #[test]
    fn corruption_that_nobody_noticed_or_that_never_happened_is_caught() {
        assert!(corruption_caught(29, 29, 2).ok);
        assert!(corruption_caught(5, 0, 1).ok);
        let v = corruption_caught(0, 0, 0);
        assert!(
            v.violations[0].contains("did not bite"),
            "{:?}",
            v.violations
        );
        let v = corruption_caught(12, 0, 0);
        assert!(v.violations[0].contains("unnoticed"), "{:?}", v.violations);
    }

    #[test]
    fn torn_tail_restart_without_truncation_is_caught() {
        let ok = "... WARN journal: truncating torn tail segment=x".to_owned();
        assert!(torn_tail_repaired(&[("a".into(), ok.clone())]).ok);
        let v = torn_tail_repaired(&[("a".into(), ok), ("b".into(), "started".into())]);
        assert_eq!(v.violations.len(), 1, "{:?}", v.violations);
        assert!(v.violations[0].starts_with("b restarted"));
        assert!(!torn_tail_repaired(&[]).ok);
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

    fn seqs(v: &[u64]) -> Vec<Seq> {
        v.iter().map(|s| Seq(*s)).collect()
    }

    use ReplicaEvent::{Applied as A, Restarted as R, Watermark as W};

    #[test]
    fn replica_applying_a_prefix_in_order_passes() {
        let primary = seqs(&[1, 2, 3, 4, 5]);
        let log = [A(Seq(1)), A(Seq(2)), W(Seq(2)), A(Seq(3))];
        assert!(replica_prefix(&primary, &log).ok);
        // Restart from watermark 2 and re-apply 3.
        let log = [
            A(Seq(1)),
            A(Seq(2)),
            W(Seq(2)),
            A(Seq(3)),
            R { watermark: Seq(2) },
            A(Seq(3)),
            A(Seq(4)),
        ];
        assert!(replica_prefix(&primary, &log).ok);
    }

    #[test]
    fn replica_gap_reorder_and_unknown_change_are_caught() {
        let primary = seqs(&[1, 2, 3, 4]);
        let gap = replica_prefix(&primary, &[A(Seq(1)), A(Seq(3))]);
        assert!(gap.violations[0].contains("gap"), "{:?}", gap.violations);
        let reorder = replica_prefix(&primary, &[A(Seq(2)), A(Seq(1))]);
        assert_eq!(reorder.violations.len(), 2, "{:?}", reorder.violations);
        assert!(reorder.violations[1].contains("reordered"));
        let unknown = replica_prefix(&primary, &[A(Seq(1)), A(Seq(9))]);
        assert!(unknown.violations[0].contains("never made"));
    }

    #[test]
    fn watermark_going_back_across_restart_is_caught() {
        let primary = seqs(&[1, 2, 3]);
        let log = [A(Seq(1)), A(Seq(2)), W(Seq(2)), R { watermark: Seq(1) }];
        let v = replica_prefix(&primary, &log);
        assert!(!v.ok);
        assert!(v.violations[0].contains("went back"));
        let ahead = replica_prefix(&primary, &[A(Seq(1)), W(Seq(3))]);
        assert!(ahead.violations[0].contains("past the highest applied"));
    }

    #[test]
    fn non_increasing_primary_log_is_caught() {
        assert!(!replica_prefix(&seqs(&[1, 3, 2]), &[]).ok);
    }

    #[test]
    fn resync_and_rto_verdicts() {
        let a = blake3::hash(b"a");
        let b = blake3::hash(b"b");
        assert!(identical_after_resync(&a, &a).ok);
        assert!(!identical_after_resync(&a, &b).ok);
        assert!(rto_within_target(900, 1000).ok);
        assert!(rto_within_target(1000, 1000).ok);
        let v = rto_within_target(1001, 1000);
        assert!(!v.ok);
        assert_eq!(v.violations, vec!["recovery took 1001 ms, target 1000 ms"]);
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

    proptest! {
        /// A replica that applies a prefix in order, restarting from any durable watermark it
        /// reached, passes; swapping two adjacent applied changes is always caught.
        #[test]
        fn replica_prefix_with_restarts_passes_and_any_swap_is_caught(
            n in 2u64..40,
            applied in 2usize..40,
            restarts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
            swap in any::<proptest::sample::Index>(),
        ) {
            let primary: Vec<Seq> = (1..=n).map(|s| Seq(s * 3)).collect();
            let applied = applied.min(primary.len());
            let mut log = Vec::new();
            let mut restart_points: Vec<usize> =
                restarts.iter().map(|i| i.index(applied)).collect();
            restart_points.sort_unstable();
            let mut i = 0;
            let mut durable = 0usize; // number of changes durable
            for r in restart_points {
                while i <= r {
                    log.push(ReplicaEvent::Applied(primary[i]));
                    i += 1;
                }
                durable = durable.max(r / 2 + 1).min(i);
                log.push(ReplicaEvent::Watermark(primary[durable - 1]));
                log.push(ReplicaEvent::Restarted { watermark: primary[durable - 1] });
                i = durable;
            }
            while i < applied {
                log.push(ReplicaEvent::Applied(primary[i]));
                i += 1;
            }
            prop_assert!(replica_prefix(&primary, &log).ok, "{:?}", log);
            let applied_at: Vec<usize> = log
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e, ReplicaEvent::Applied(_)))
                .map(|(k, _)| k)
                .collect();
            let pairs: Vec<(usize, usize)> = applied_at
                .windows(2)
                .filter(|w| w[1] == w[0] + 1)
                .map(|w| (w[0], w[1]))
                .collect();
            if !pairs.is_empty() {
                let (a, b) = pairs[swap.index(pairs.len())];
                log.swap(a, b);
                prop_assert!(!replica_prefix(&primary, &log).ok, "{:?}", log);
            }
        }
    }

    proptest! {
        /// Sequential writes (one at a time) with the final state holding the last write of
        /// each block always pass; changing one block's final content is always caught.
        #[test]
        fn sequential_history_passes_and_any_lost_block_is_caught(
            writes in proptest::collection::vec((0u64..8, 1u8..=255), 1..40),
            victim in any::<proptest::sample::Index>(),
        ) {
            let mut h = History::new();
            let mut last: BTreeMap<u64, u8> = BTreeMap::new();
            for (i, (block, tag)) in writes.iter().enumerate() {
                let t = i as u64 * 2;
                h.append(Op::write(1, OpKind::Invoke, block * B, &data(*tag), t));
                h.append(Op::write(1, OpKind::Ok, block * B, &data(*tag), t + 1));
                last.insert(block * B, *tag);
            }
            let map: Vec<(u64, u8)> = last.iter().map(|(o, t)| (*o, *t)).collect();
            prop_assert!(lost(&h, &map).ok);
            let mut broken = map.clone();
            let i = victim.index(broken.len());
            broken[i].1 = 0; // tag 0 is never written
            let v = lost(&h, &broken);
            prop_assert!(!v.ok);
            prop_assert_eq!(v.violations.len(), 1);
        }
    }
}
