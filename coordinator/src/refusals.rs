//! Refused calls, aggregated so that a caller who keeps knocking cannot grow the audit chain
//! without bound: the first refusal of an (actor, call) pair is recorded at once; later ones in
//! the same window are counted and recorded as one record with the count when the window
//! ends. Memory is bounded too: at most [`MAX_PAIRS`] pairs are tracked; past that, refusals
//! of new pairs are only counted in `overflow` (and recorded as one record per window).
//! Pure: the caller supplies the time and commits what [`Refusals::note`] and
//! [`Refusals::flush`] hand back.

use std::collections::HashMap;

/// How long a window of counted refusals lasts.
pub const WINDOW_MS: i64 = 60_000;
/// Most (actor, call) pairs tracked at once.
pub const MAX_PAIRS: usize = 1024;

/// One refusal as the audit chain records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The certificate's identity.
    pub actor: String,
    /// Its class (role).
    pub role: String,
    /// The call refused.
    pub call: String,
    /// Why (the first refusal's reason in the window).
    pub reason: String,
    /// How many refusals this record stands for (1 for the first one of a window).
    pub count: u64,
    /// When the first of them happened.
    pub first_ms: i64,
    /// When the last of them happened.
    pub last_ms: i64,
}

#[derive(Debug)]
struct Window {
    role: String,
    reason: String,
    started_ms: i64,
    /// Refusals since the one recorded at once (not yet recorded).
    counted: u64,
    first_counted_ms: i64,
    last_ms: i64,
}

/// The aggregator.
#[derive(Debug, Default)]
pub struct Refusals {
    windows: HashMap<(String, String), Window>,
    overflow: Option<Refused>,
}

impl Refusals {
    /// A refusal at `now`: returns the record to commit now (the first of its window), or
    /// `None` when it was only counted.
    pub fn note(
        &mut self,
        now: i64,
        actor: &str,
        role: &str,
        call: &str,
        reason: &str,
    ) -> Option<Refused> {
        let key = (actor.to_owned(), call.to_owned());
        if let Some(w) = self.windows.get_mut(&key) {
            if now - w.started_ms < WINDOW_MS {
                if w.counted == 0 {
                    w.first_counted_ms = now;
                }
                w.counted += 1;
                w.last_ms = now;
                return None;
            }
        }
        if !self.windows.contains_key(&key) && self.windows.len() >= MAX_PAIRS {
            let o = self.overflow.get_or_insert_with(|| Refused {
                actor: "(many)".into(),
                role: "(many)".into(),
                call: "(many)".into(),
                reason: format!(
                    "more than {MAX_PAIRS} distinct callers and calls refused in a window"
                ),
                count: 0,
                first_ms: now,
                last_ms: now,
            });
            o.count += 1;
            o.last_ms = now;
            return None;
        }
        // A new window (an ended one was flushed or is replaced: flush first to keep its count).
        self.windows.insert(
            key,
            Window {
                role: role.to_owned(),
                reason: reason.to_owned(),
                started_ms: now,
                counted: 0,
                first_counted_ms: now,
                last_ms: now,
            },
        );
        Some(Refused {
            actor: actor.to_owned(),
            role: role.to_owned(),
            call: call.to_owned(),
            reason: reason.to_owned(),
            count: 1,
            first_ms: now,
            last_ms: now,
        })
    }

    /// Ends the windows that are over at `now`: the records of their counted refusals (one per
    /// pair with a count > 0, plus the overflow's), to commit. Pairs whose window ended are
    /// forgotten.
    pub fn flush(&mut self, now: i64) -> Vec<Refused> {
        let mut out = Vec::new();
        self.windows.retain(|(actor, call), w| {
            if now - w.started_ms < WINDOW_MS {
                return true;
            }
            if w.counted > 0 {
                out.push(Refused {
                    actor: actor.clone(),
                    role: w.role.clone(),
                    call: call.clone(),
                    reason: w.reason.clone(),
                    count: w.counted,
                    first_ms: w.first_counted_ms,
                    last_ms: w.last_ms,
                });
            }
            false
        });
        if let Some(o) = self.overflow.take() {
            if now - o.first_ms < WINDOW_MS {
                self.overflow = Some(o);
            } else {
                out.push(o);
            }
        }
        out.sort_by(|a, b| (&a.actor, &a.call).cmp(&(&b.actor, &b.call)));
        out
    }

    /// Pairs tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    /// Refusals counted but not yet recorded (the overflow's included).
    pub fn pending(&self) -> u64 {
        self.windows.values().map(|w| w.counted).sum::<u64>()
            + self.overflow.as_ref().map_or(0, |o| o.count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_first_refusal_is_recorded_at_once_and_the_rest_of_its_window_as_one_count() {
        let mut r = Refusals::default();
        let first = r
            .note(0, "hcm-rep", "replica replicator", "Pause", "no")
            .unwrap();
        assert_eq!((first.count, first.actor.as_str()), (1, "hcm-rep"));
        for t in 1..=1000 {
            assert!(r
                .note(t, "hcm-rep", "replica replicator", "Pause", "no")
                .is_none());
        }
        assert!(r.flush(WINDOW_MS - 1).is_empty(), "the window is not over");
        let out = r.flush(WINDOW_MS);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].count, out[0].first_ms, out[0].last_ms),
            (1000, 1, 1000)
        );
        assert_eq!(r.tracked(), 0);
        // The next refusal opens a new window and is recorded at once again.
        assert!(r
            .note(WINDOW_MS + 5, "hcm-rep", "x", "Pause", "no")
            .is_some());
    }

    #[test]
    fn pairs_are_counted_apart_and_a_window_without_repeats_flushes_nothing() {
        let mut r = Refusals::default();
        assert!(r.note(0, "a", "viewer", "Pause", "no").is_some());
        assert!(r.note(0, "a", "viewer", "Resume", "no").is_some());
        assert!(r.note(0, "b", "viewer", "Pause", "no").is_some());
        assert!(r.note(1, "b", "viewer", "Pause", "no").is_none());
        let out = r.flush(WINDOW_MS);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].actor.as_str(), out[0].count), ("b", 1));
    }

    #[test]
    fn memory_and_records_stay_bounded_under_many_distinct_callers() {
        let mut r = Refusals::default();
        let mut recorded = 0;
        for i in 0..(MAX_PAIRS * 3) {
            if r.note(0, &format!("n{i}"), "viewer", "Pause", "no")
                .is_some()
            {
                recorded += 1;
            }
        }
        assert_eq!(recorded, MAX_PAIRS);
        assert_eq!(r.tracked(), MAX_PAIRS);
        assert_eq!(r.pending(), (MAX_PAIRS * 2) as u64);
        let out = r.flush(WINDOW_MS);
        assert_eq!(out.len(), 1, "only the overflow's count is left to record");
        assert_eq!(out[0].count, (MAX_PAIRS * 2) as u64);
    }
}
