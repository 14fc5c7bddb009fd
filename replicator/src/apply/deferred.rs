//! Volume writes of a batch held back until the undo records of their seqs are durable: with
//! a point-in-time history, a change's old bytes are appended to the history, the history is
//! fdatasync'ed, and only THEN are the new bytes written. Unsynced data may reach the disk at
//! any moment; if it got there before the undo record it overwrote, a power loss would leave
//! the new bytes with no record of the old ones, and the re-applied change would record its
//! own new bytes as "old".
//!
//! One history fdatasync per flush: a batch is flushed once before its data files are synced,
//! and earlier only when a change must read bytes a held write has not written yet (its range
//! overlaps one held on the same resource). Blocking file I/O.

use super::state::Resource;
use crate::error::{ReplicatorError, Result};
use crate::history::History;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;

/// What a held change writes.
#[derive(Debug)]
pub(super) enum Op {
    /// These bytes (moved out of the decoded change, never copied).
    Write(Vec<u8>),
    /// This many zero bytes (a trim).
    Zero(u64),
}

impl Op {
    fn len(&self) -> u64 {
        match self {
            Op::Write(d) => d.len() as u64,
            Op::Zero(n) => *n,
        }
    }
}

/// One held volume write.
#[derive(Debug)]
struct Held {
    resource: String,
    offset: u64,
    op: Op,
}

/// The volume writes of a batch waiting for their undo records to be durable, in seq order.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    held: Vec<Held>,
    /// History fdatasyncs done by [`Deferred::flush`] (tests count them).
    pub(super) flushes: u64,
}

impl Deferred {
    /// Whether reading `len` bytes at `offset` of `resource` now would miss a held write
    /// (their ranges overlap). Pure.
    pub(super) fn conflicts(&self, resource: &str, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let end = offset.saturating_add(len);
        self.held.iter().any(|h| {
            h.resource == resource && h.offset < end && offset < h.offset.saturating_add(h.op.len())
        })
    }

    /// Holds a write of `op` at `offset` of `resource` until the next [`Deferred::flush`].
    pub(super) fn hold(&mut self, resource: &str, offset: u64, op: Op) {
        self.held.push(Held {
            resource: resource.to_owned(),
            offset,
            op,
        });
    }

    /// Makes the history durable (every undo record appended so far), THEN writes every held
    /// change in order. An `Err` leaves the rest unwritten: the caller rolls the batch back
    /// to the durable watermark and the primary resends it.
    ///
    /// # Errors
    /// [`ReplicatorError::Io`] syncing the history or writing a resource.
    pub(super) fn flush(
        &mut self,
        history: Option<&mut History>,
        resources: &HashMap<String, Resource>,
    ) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        if let Some(h) = history {
            h.sync()?;
            self.flushes += 1;
        }
        for held in self.held.drain(..) {
            let Some(r) = resources.get(&held.resource) else {
                continue;
            };
            match held.op {
                Op::Write(data) => {
                    r.file
                        .write_all_at(&data, held.offset)
                        .map_err(|e| ReplicatorError::io("pwrite", &r.path, e))?;
                    // Written: the buffer serves a later frame's data.
                    tandem_core::buffers::give(data);
                }
                Op::Zero(n) => crate::volume::zero_fill(&r.file, held.offset, n, |_, e| {
                    ReplicatorError::io("pwrite zeroes", &r.path, e)
                })?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_overlapping_ranges_of_the_same_resource_conflict() {
        let mut d = Deferred::default();
        d.hold("a", 100, Op::Write(vec![1; 50]));
        d.hold("b", 0, Op::Zero(10));
        // (resource, offset, len) -> conflicts
        let cases = [
            ("a", 0, 100, false),
            ("a", 0, 101, true),
            ("a", 149, 1, true),
            ("a", 150, 10, false),
            ("b", 100, 50, false),
            ("b", 9, 1, true),
            ("c", 0, u64::MAX, false),
            ("a", 120, 0, false),
        ];
        for (i, (r, off, len, want)) in cases.into_iter().enumerate() {
            let got = d.conflicts(r, off, len);
            assert_eq!(got, want, "#{i}: expect {want} got {got}");
        }
    }
}
