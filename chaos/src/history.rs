//! Jepsen-style operation histories: one JSON object per line, appended in real-time order.
//!
//! Each operation appears as an `invoke` and later, from the same process, one completion:
//! `ok` (it happened), `fail` (it certainly did not happen) or `info` (unknown: a timeout or
//! a dropped connection). A process has at most one operation outstanding; after an `info` the
//! workload continues under a new process id, as Jepsen does.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tandem_core::ids::Epoch;

use crate::ChaosError;

/// Longest line accepted when loading a history; longer lines are an error, not a allocation.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// How an operation event relates to the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// The operation started.
    Invoke,
    /// The operation completed and took effect.
    Ok,
    /// The operation completed and certainly did not take effect.
    Fail,
    /// The outcome is unknown (timeout, connection lost, crash).
    Info,
}

impl OpKind {
    /// True for `ok`, `fail` and `info`.
    pub fn is_completion(self) -> bool {
        !matches!(self, OpKind::Invoke)
    }
}

/// What the operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpFn {
    /// A block write.
    Write,
    /// A block read.
    Read,
    /// A flush (make completed writes durable).
    Flush,
    /// An unplanned failover to another site.
    Failover,
    /// A planned switchover.
    Switchover,
    /// A site became primary (writable) in an epoch.
    Promote,
    /// A site stopped being primary (demoted or fenced).
    Demote,
    /// A resync between sites.
    Resync,
    /// A fault was injected (detail in `note`).
    Fault,
    /// A fault was lifted (detail in `note`).
    Heal,
    /// A database transaction (id in `txn`, the values it wrote in `values`).
    Txn,
}

/// One event of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The logical client that issued the operation.
    pub process: u64,
    /// Invoke or completion.
    pub kind: OpKind,
    /// What the operation does.
    pub f: OpFn,
    /// Byte offset (block operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Byte length (block operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// blake3 of the data written or read, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_hash: Option<String>,
    /// The epoch the operation ran in, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    /// The site that served the operation, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Milliseconds since the run's origin.
    pub time_ms: u64,
    /// Free text (error message, fault description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The transaction id (database transactions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<u64>,
    /// The values a database transaction wrote, one per row, in insertion order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<i64>>,
}

/// blake3 of `data` as lowercase hex, the form `value_hash` uses.
pub fn hash_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

impl Op {
    /// A bare event; fill the optional fields with the `with_*` methods.
    pub fn new(process: u64, kind: OpKind, f: OpFn, time_ms: u64) -> Self {
        Self {
            process,
            kind,
            f,
            offset: None,
            length: None,
            value_hash: None,
            epoch: None,
            site: None,
            time_ms,
            note: None,
            txn: None,
            values: None,
        }
    }

    /// An event about database transaction `txn` writing `values` (one per row).
    pub fn txn(process: u64, kind: OpKind, txn: u64, values: &[i64], time_ms: u64) -> Self {
        let mut op = Self::new(process, kind, OpFn::Txn, time_ms);
        op.txn = Some(txn);
        op.values = Some(values.to_vec());
        op
    }

    /// An event about a write of `data` at `offset` (hash and length computed here).
    pub fn write(process: u64, kind: OpKind, offset: u64, data: &[u8], time_ms: u64) -> Self {
        Self::new(process, kind, OpFn::Write, time_ms)
            .with_range(offset, data.len() as u64)
            .with_hash(hash_hex(data))
    }

    /// Sets offset and length.
    pub fn with_range(mut self, offset: u64, length: u64) -> Self {
        self.offset = Some(offset);
        self.length = Some(length);
        self
    }

    /// Sets the value hash (lowercase blake3 hex).
    pub fn with_hash(mut self, hash: String) -> Self {
        self.value_hash = Some(hash);
        self
    }

    /// Sets the epoch.
    pub fn with_epoch(mut self, epoch: Epoch) -> Self {
        self.epoch = Some(epoch);
        self
    }

    /// Sets the site.
    pub fn with_site(mut self, site: impl Into<String>) -> Self {
        self.site = Some(site.into());
        self
    }

    /// Sets the note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// An operation's invoke paired with its completion (if any) by index into the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpPair {
    /// Index of the `invoke` event.
    pub invoke: usize,
    /// Index of the completion; `None` when the history ends first (treat as `info`).
    pub completion: Option<usize>,
}

/// A list of operation events in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an event.
    pub fn append(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// The events in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there are no events.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Pairs every invoke with the next completion of the same process and function.
    /// Completions without an invoke are ignored.
    pub fn pairs(&self) -> Vec<OpPair> {
        let mut open: std::collections::HashMap<(u64, OpFn), usize> = Default::default();
        let mut pairs = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            let key = (op.process, op.f);
            if op.kind == OpKind::Invoke {
                // A second invoke without completion leaves the first one open forever.
                open.insert(key, pairs.len());
                pairs.push(OpPair {
                    invoke: i,
                    completion: None,
                });
            } else if let Some(p) = open.remove(&key) {
                pairs[p].completion = Some(i);
            }
        }
        pairs
    }

    /// The history as JSON lines (one event per line, each ending in `\n`).
    ///
    /// # Errors
    /// `Config` if an event cannot be serialized (not expected for these types).
    pub fn to_jsonl(&self) -> Result<String, ChaosError> {
        let mut out = String::new();
        for op in &self.ops {
            let line = serde_json::to_string(op).map_err(|e| ChaosError::Config {
                field: "history",
                reason: format!("cannot serialize an event: {e}"),
            })?;
            out.push_str(&line);
            out.push('\n');
        }
        Ok(out)
    }

    /// Parses JSON lines; blank lines are skipped.
    ///
    /// # Errors
    /// `HistoryLine` naming the 1-based line that is too long or malformed.
    pub fn parse_jsonl(text: &str) -> Result<Self, ChaosError> {
        let mut history = History::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.len() > MAX_LINE_LEN {
                return Err(ChaosError::HistoryLine {
                    line: line_no,
                    reason: format!("{} bytes, limit {MAX_LINE_LEN}", line.len()),
                });
            }
            if line.trim().is_empty() {
                continue;
            }
            let op: Op = serde_json::from_str(line).map_err(|e| ChaosError::HistoryLine {
                line: line_no,
                reason: e.to_string(),
            })?;
            history.append(op);
        }
        Ok(history)
    }

    /// Reads a history file.
    ///
    /// # Errors
    /// `Io` naming the file, or `HistoryLine` naming the bad line.
    pub fn load(path: &Path) -> Result<Self, ChaosError> {
        let text = fs::read_to_string(path)
            .map_err(|e| ChaosError::io(format!("read history {}", path.display()), e))?;
        Self::parse_jsonl(&text)
    }

    /// Writes the history to `path` atomically (temporary file, fsync, rename).
    ///
    /// # Errors
    /// `Io` naming the file.
    pub fn save(&self, path: &Path) -> Result<(), ChaosError> {
        let text = self.to_jsonl()?;
        let tmp = path.with_extension("jsonl.tmp");
        let ctx = |what: &str| format!("{what} history {}", tmp.display());
        let mut file = fs::File::create(&tmp).map_err(|e| ChaosError::io(ctx("create"), e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| ChaosError::io(ctx("write"), e))?;
        file.sync_all()
            .map_err(|e| ChaosError::io(ctx("fsync"), e))?;
        fs::rename(&tmp, path)
            .map_err(|e| ChaosError::io(format!("rename history to {}", path.display()), e))
    }
}

/// A history shared by every task of a run, with one clock so that workload events and fault
/// events (`failover`, `fault`) can be compared in time.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    history: Mutex<History>,
}

impl Recorder {
    /// A recorder whose `time_ms` counts from `origin`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            history: Mutex::new(History::new()),
        }
    }

    /// Milliseconds since the origin.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Appends `op` with its `time_ms` set to now; the stamp and the append happen under one
    /// lock, so history order and time order agree.
    pub fn record(&self, mut op: Op) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        op.time_ms = self.now_ms();
        history.append(op);
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The history, consuming the recorder.
    pub fn into_history(self) -> History {
        self.history.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> History {
        let mut h = History::new();
        h.append(Op::write(1, OpKind::Invoke, 4096, b"abc", 10));
        h.append(
            Op::write(1, OpKind::Ok, 4096, b"abc", 12)
                .with_epoch(Epoch(3))
                .with_site("east"),
        );
        h.append(Op::new(9, OpKind::Info, OpFn::Failover, 20).with_note("kill -9 east"));
        h
    }

    #[test]
    fn history_round_trips_through_json_lines() {
        let h = sample();
        let text = h.to_jsonl().unwrap();
        assert_eq!(text.lines().count(), 3);
        assert_eq!(History::parse_jsonl(&text).unwrap(), h);
    }

    #[test]
    fn json_uses_jepsen_field_names() {
        let text = sample().to_jsonl().unwrap();
        let first = text.lines().nth(1).unwrap();
        assert!(first.contains(r#""kind":"ok""#), "{first}");
        assert!(first.contains(r#""f":"write""#), "{first}");
        assert!(first.contains(r#""epoch":3"#), "{first}");
        assert!(first.contains(&hash_hex(b"abc")), "{first}");
    }

    #[test]
    fn malformed_line_is_reported_by_number() {
        let mut text = sample().to_jsonl().unwrap();
        text.push_str("\n{\"process\": 1, \"kind\": \"maybe\"}\n");
        match History::parse_jsonl(&text) {
            Err(ChaosError::HistoryLine { line, .. }) => assert_eq!(line, 5),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn overlong_line_is_refused() {
        let text = format!("{}\n", "x".repeat(MAX_LINE_LEN + 1));
        match History::parse_jsonl(&text) {
            Err(ChaosError::HistoryLine { line, reason }) => {
                assert_eq!(line, 1);
                assert!(reason.contains("limit"));
            }
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn save_then_load_gives_the_same_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        sample().save(&path).unwrap();
        assert_eq!(History::load(&path).unwrap(), sample());
        let missing = History::load(&dir.path().join("nope.jsonl")).unwrap_err();
        assert!(missing.to_string().contains("nope.jsonl"));
    }

    #[test]
    fn pairs_match_invokes_to_completions_per_process() {
        let mut h = History::new();
        h.append(Op::write(1, OpKind::Invoke, 0, b"a", 0));
        h.append(Op::write(2, OpKind::Invoke, 0, b"b", 0));
        h.append(Op::write(2, OpKind::Ok, 0, b"b", 1));
        h.append(Op::write(3, OpKind::Invoke, 0, b"c", 2));
        h.append(Op::write(1, OpKind::Fail, 0, b"a", 3));
        let pairs = h.pairs();
        assert_eq!(
            pairs,
            vec![
                OpPair {
                    invoke: 0,
                    completion: Some(4)
                },
                OpPair {
                    invoke: 1,
                    completion: Some(2)
                },
                OpPair {
                    invoke: 3,
                    completion: None
                },
            ]
        );
    }

    #[test]
    fn recorder_stamps_in_order() {
        let r = Recorder::new(Instant::now());
        r.record(Op::new(1, OpKind::Invoke, OpFn::Flush, 999_999));
        r.record(Op::new(1, OpKind::Ok, OpFn::Flush, 0));
        let h = r.into_history();
        assert!(h.ops()[0].time_ms <= h.ops()[1].time_ms);
        assert!(h.ops()[0].time_ms < 999_999);
    }

    proptest! {
        #[test]
        fn any_write_event_round_trips(process in any::<u64>(), offset in any::<u64>(),
                                       data in proptest::collection::vec(any::<u8>(), 0..64),
                                       epoch in proptest::option::of(any::<u64>()),
                                       time in any::<u64>()) {
            let mut op = Op::write(process, OpKind::Ok, offset, &data, time);
            if let Some(e) = epoch { op = op.with_epoch(Epoch(e)); }
            let mut h = History::new();
            h.append(op);
            let back = History::parse_jsonl(&h.to_jsonl().unwrap()).unwrap();
            prop_assert_eq!(back, h);
        }
    }
}
