//! The simulated network: raft messages in flight with a delivery time, and the links a
//! partition cuts.

use raft::eraftpb::Message;
use std::collections::{BTreeMap, BTreeSet};

/// Messages in flight, ordered by (delivery time, send order), and the cut links.
#[derive(Default)]
pub(crate) struct Network {
    in_flight: BTreeMap<(u64, u64), Message>,
    next_seq: u64,
    /// Cut links, stored both ways (`(a, b)` and `(b, a)`).
    cut: BTreeSet<(u64, u64)>,
}

impl Network {
    /// Puts a message on the wire, to arrive at `deliver_at` ms.
    pub fn send(&mut self, deliver_at: u64, m: Message) {
        self.next_seq += 1;
        self.in_flight.insert((deliver_at, self.next_seq), m);
    }

    /// Takes every message due at `now` ms, in delivery order.
    pub fn due(&mut self, now: u64) -> Vec<Message> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        std::mem::replace(&mut self.in_flight, later)
            .into_values()
            .collect()
    }

    /// Whether `from` can reach `to` now.
    pub fn connected(&self, from: u64, to: u64) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether any link is cut.
    pub fn partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    fn cut_link(&mut self, a: u64, b: u64) {
        if a != b {
            self.cut.insert((a, b));
            self.cut.insert((b, a));
        }
    }

    /// Splits the nodes into `side` and the rest: no link crosses.
    pub fn split(&mut self, side: &[u64], all: &[u64]) {
        self.heal();
        for a in side {
            for b in all {
                if !side.contains(b) {
                    self.cut_link(*a, *b);
                }
            }
        }
    }

    /// Splits the nodes into `left`, `right` and a `bridge` node that reaches both sides while
    /// the sides cannot reach each other.
    pub fn bridge(&mut self, left: &[u64], right: &[u64]) {
        self.heal();
        for a in left {
            for b in right {
                self.cut_link(*a, *b);
            }
        }
    }
}
