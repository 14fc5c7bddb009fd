//! The tamper-evident audit chain: records chained by blake3 and the checker that re-verifies them.
//!
//! Each record's `hash = blake3(prev_hash (32 raw bytes) ‖ canonical bytes)`, where the canonical
//! bytes are the compact JSON of the record without its `hash`, fields in declaration order
//! (`index, at_ms, actor, kind, group, detail, prev_hash`). The first record's `prev_hash` is
//! [`ZERO_HASH`]. Hashes are stored as lowercase hex so exported JSON stays readable.
//!
//! The replicated state holds the head of the chain and a tail of recent records
//! ([`AuditChain`]); the coordinator writes every record to disk as it is applied
//! ([`store`]) and reads older ones from there. [`backfill`] decides what a node lacks after
//! installing a snapshot and whether a page a peer sends is the chain's own.

pub mod backfill;
pub mod store;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `prev_hash` of the first record of a chain: 32 zero bytes, in hex.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an audit record is about. Serialized in snake_case; new kinds may be added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    /// The topology was set or extended (`Bootstrap`).
    Bootstrap,
    /// A site was marked up (by the failure detector or a heartbeat).
    SiteUp,
    /// A site was marked down by the failure detector.
    SiteDown,
    /// A lease was granted to a replicator (renewals of a live lease are not recorded).
    LeaseGranted,
    /// A lease holder gave its lease up voluntarily (planned demotion).
    LeaseReleased,
    /// A group was fenced: epoch raised, lease revoked.
    Fence,
    /// A group's replica site was promoted to primary.
    Promote,
    /// A group's state changed (by command or automatically on site loss/return).
    GroupState,
    /// The primary of a sync group began acknowledging writes without the replica, with the
    /// coordinators' consent, or went back to synchronous acknowledgements.
    SyncDegraded,
    /// Replication of a group was paused.
    ReplicationPaused,
    /// Replication of a group was resumed.
    ReplicationResumed,
    /// An RPO sample was committed (clusters bootstrapped before `rpo_audit_every_ms`: one record
    /// per sample).
    RpoSample,
    /// A summary of a group's RPO samples since its previous RPO record: written when the RPO
    /// crosses the target (either way), and otherwise at most once per audit interval.
    RpoSummary,
    /// A role, epoch, lease or operator command was refused; the detail says why.
    Refused,
    /// An operator command recorded by the CLI or admin API.
    Operator,
    /// A runbook step started or finished.
    RunbookStep,
    /// A DR drill event.
    Drill,
    /// A human approval given to a runbook.
    Approval,
    /// The result of a `verify` (merkle root comparison).
    Verify,
    /// A free-form note.
    Note,
    /// A point-in-time recovery: the recovered point (time, seq) and the merkle roots of the
    /// recovered copy, so evidence shows exactly which state was recovered.
    Recover,
    /// A corrective action after an exercise was added, assigned or closed (`tandem action`);
    /// written only by the state machine's action commands.
    Action,
    /// An auditor signed the review of a finished run (`tandem review sign`); written only by
    /// the state machine's `sign_review` command.
    Review,
    /// A planned move of a group's replica side to another host started or completed
    /// (`tandem move`); written only by the state machine.
    Move,
}

impl AuditKind {
    /// Whether a generic `Record` command may use this kind.
    ///
    /// Kinds that describe decisions of the state machine itself (promotions, leases, fences,
    /// sync degradation) can only be written by the state machine, so the chain cannot be
    /// salted with fake ones. `Refused` is recordable because the admin API records the calls
    /// it refuses for a certificate's role (only an operator or a coordinator may propose).
    pub fn is_recordable(self) -> bool {
        matches!(
            self,
            AuditKind::Operator
                | AuditKind::RunbookStep
                | AuditKind::Drill
                | AuditKind::Approval
                | AuditKind::Verify
                | AuditKind::Note
                | AuditKind::Recover
                | AuditKind::Refused
        )
    }
}

/// One link of the audit chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 0, without gaps.
    pub index: u64,
    /// Leader-stamped time of the command that produced the record (unix ms).
    pub at_ms: i64,
    /// Who caused it: an operator, a node name, `coordinator` for the failure detector.
    pub actor: String,
    /// What it is about.
    pub kind: AuditKind,
    /// The group concerned, if any.
    pub group: Option<String>,
    /// Kind-specific detail (never contains floating-point numbers, so it round-trips exactly).
    pub detail: Value,
    /// Hash of the previous record (hex), [`ZERO_HASH`] for the first.
    pub prev_hash: String,
    /// `blake3(prev_hash ‖ canonical bytes)` in hex.
    pub hash: String,
}

/// The record without its hash, in the fixed field order that defines the canonical bytes.
#[derive(Serialize)]
struct Canonical<'a> {
    index: u64,
    at_ms: i64,
    actor: &'a str,
    kind: AuditKind,
    group: Option<&'a str>,
    detail: &'a Value,
    prev_hash: &'a str,
}

impl AuditRecord {
    /// Builds a record and computes its hash.
    ///
    /// # Errors
    /// [`ChainError::MalformedHash`] if `prev_hash` is not 64 hex digits.
    pub fn seal(
        index: u64,
        at_ms: i64,
        actor: &str,
        kind: AuditKind,
        group: Option<&str>,
        detail: Value,
        prev_hash: &str,
    ) -> Result<AuditRecord, ChainError> {
        let mut rec = AuditRecord {
            index,
            at_ms,
            actor: actor.to_string(),
            kind,
            group: group.map(str::to_string),
            detail,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        rec.hash = rec.compute_hash()?;
        Ok(rec)
    }

    /// The canonical bytes that are hashed: compact JSON of every field but `hash`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let c = Canonical {
            index: self.index,
            at_ms: self.at_ms,
            actor: &self.actor,
            kind: self.kind,
            group: self.group.as_deref(),
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        };
        // Serializing plain strings, integers and a `Value` into a Vec cannot fail.
        serde_json::to_vec(&c).unwrap_or_default()
    }

    /// Recomputes `blake3(prev_hash ‖ canonical bytes)` as hex, ignoring the stored `hash`.
    ///
    /// # Errors
    /// [`ChainError::MalformedHash`] if `prev_hash` is not 64 hex digits.
    pub fn compute_hash(&self) -> Result<String, ChainError> {
        let prev =
            blake3::Hash::from_hex(&self.prev_hash).map_err(|_| ChainError::MalformedHash {
                index: self.index,
                field: "prev_hash",
            })?;
        let mut h = blake3::Hasher::new();
        h.update(prev.as_bytes());
        h.update(&self.canonical_bytes());
        Ok(h.finalize().to_hex().to_string())
    }
}

/// Why a chain failed verification; every variant names the first bad record's index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Record `index` sits where index `expected` should be (a record was removed, added or moved).
    #[error("audit record at position {position}: index {found}, expected {expected}")]
    IndexGap {
        /// Position in the slice.
        position: usize,
        /// The index that should be there.
        expected: u64,
        /// The index found.
        found: u64,
    },
    /// Record `index`'s `prev_hash` is not the previous record's hash.
    #[error("audit record {index}: prev_hash does not match the previous record's hash")]
    PrevHashMismatch {
        /// The bad record's index.
        index: u64,
    },
    /// Record `index`'s content does not hash to its stored `hash` (it was altered).
    #[error("audit record {index}: content does not match its hash")]
    HashMismatch {
        /// The bad record's index.
        index: u64,
    },
    /// Record `index` has a `field` that is not 64 hex digits.
    #[error("audit record {index}: {field} is not a 64-digit hex hash")]
    MalformedHash {
        /// The bad record's index.
        index: u64,
        /// `prev_hash` or `hash`.
        field: &'static str,
    },
}

/// Verifies a whole chain: indexes from 0 without gaps, the first `prev_hash` is [`ZERO_HASH`],
/// each `prev_hash` is the previous `hash`, and every `hash` matches the record's content.
///
/// # Errors
/// The first bad record, as a [`ChainError`] naming its index.
pub fn verify_chain(records: &[AuditRecord]) -> Result<(), ChainError> {
    verify_segment(records, 0, ZERO_HASH)
}

/// Verifies a contiguous segment of a chain that starts at `first_index` and follows a record
/// whose hash is `prev_hash` (for example a page returned by `audit_range`).
///
/// # Errors
/// The first bad record, as a [`ChainError`] naming its index.
pub fn verify_segment(
    records: &[AuditRecord],
    first_index: u64,
    prev_hash: &str,
) -> Result<(), ChainError> {
    let mut prev = prev_hash.to_string();
    for (position, rec) in records.iter().enumerate() {
        let expected = first_index.saturating_add(position as u64);
        if rec.index != expected {
            return Err(ChainError::IndexGap {
                position,
                expected,
                found: rec.index,
            });
        }
        if rec.prev_hash != prev {
            return Err(ChainError::PrevHashMismatch { index: rec.index });
        }
        if blake3::Hash::from_hex(&rec.hash).is_err() {
            return Err(ChainError::MalformedHash {
                index: rec.index,
                field: "hash",
            });
        }
        if rec.compute_hash()? != rec.hash {
            return Err(ChainError::HashMismatch { index: rec.index });
        }
        prev.clone_from(&rec.hash);
    }
    Ok(())
}

/// The chain as the replicated state holds it: the head (the next index and the hash of the last
/// record) and a tail of the most recent records. Older records live on disk (the coordinator's
/// audit store); the state machine never needs them, it only appends after the head.
///
/// Serialized as the array of every record while nothing was dropped from the tail (the format
/// of every state before the tail existed, byte for byte), else as
/// `{"next_index", "head_hash", "tail": [...]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditChain {
    next_index: u64,
    head_hash: String,
    tail: Vec<AuditRecord>,
}

impl Default for AuditChain {
    fn default() -> Self {
        AuditChain {
            next_index: 0,
            head_hash: ZERO_HASH.to_string(),
            tail: Vec::new(),
        }
    }
}

/// The two serialized forms of [`AuditChain`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ChainForm {
    /// Every record from index 0.
    Whole(Vec<AuditRecord>),
    /// The head and a tail.
    Tail {
        next_index: u64,
        head_hash: String,
        tail: Vec<AuditRecord>,
    },
}

impl Serialize for AuditChain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.tail_first() == 0 {
            self.tail.serialize(s)
        } else {
            #[derive(Serialize)]
            struct TailRef<'a> {
                next_index: u64,
                head_hash: &'a str,
                tail: &'a [AuditRecord],
            }
            TailRef {
                next_index: self.next_index,
                head_hash: &self.head_hash,
                tail: &self.tail,
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for AuditChain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match ChainForm::deserialize(d)? {
            ChainForm::Whole(tail) => AuditChain {
                next_index: tail.len() as u64,
                head_hash: tail
                    .last()
                    .map_or_else(|| ZERO_HASH.to_string(), |r| r.hash.clone()),
                tail,
            },
            ChainForm::Tail {
                next_index,
                head_hash,
                tail,
            } => AuditChain {
                next_index,
                head_hash,
                tail,
            },
        })
    }
}

impl AuditChain {
    /// Appends a record after the current head and returns its index.
    pub fn append(
        &mut self,
        at_ms: i64,
        actor: &str,
        kind: AuditKind,
        group: Option<&str>,
        detail: Value,
    ) -> u64 {
        let index = self.next_index;
        let mut rec = AuditRecord {
            index,
            at_ms,
            actor: actor.to_string(),
            kind,
            group: group.map(str::to_string),
            detail,
            prev_hash: self.head_hash.clone(),
            hash: String::new(),
        };
        // The head hash is always one we computed ourselves (or verified on restore), so it is
        // valid hex; fall back to an empty hash that verify_chain would flag, never panic.
        rec.hash = rec.compute_hash().unwrap_or_default();
        self.head_hash.clone_from(&rec.hash);
        self.tail.push(rec);
        self.next_index = index.saturating_add(1);
        index
    }

    /// The records held in memory, oldest first: the whole chain until older records are
    /// dropped to the audit store ([`AuditChain::drop_before`]), then the tail from
    /// [`AuditChain::tail_first`].
    pub fn records(&self) -> &[AuditRecord] {
        &self.tail
    }

    /// Index of the oldest record held in memory (`len()` when none is).
    pub fn tail_first(&self) -> u64 {
        self.next_index.saturating_sub(self.tail.len() as u64)
    }

    /// Up to `limit` records from index `from`, if `from` is in the tail or at its end (empty
    /// past the end); `None` when `from` is older than the tail (read the audit store).
    pub fn tail_range(&self, from: u64, limit: usize) -> Option<&[AuditRecord]> {
        let first = self.tail_first();
        if from < first {
            return None;
        }
        let len = self.tail.len();
        let start = usize::try_from(from - first).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(limit).min(len);
        Some(&self.tail[start..end])
    }

    /// Up to `limit` records from index `from` among those held in memory (empty past the end
    /// and before the tail).
    pub fn range(&self, from: u64, limit: usize) -> &[AuditRecord] {
        self.tail_range(from, limit).unwrap_or(&[])
    }

    /// Drops the records below `index` from memory (they must be in the audit store first).
    /// The head is unchanged.
    pub fn drop_before(&mut self, index: u64) {
        let n = index
            .saturating_sub(self.tail_first())
            .min(self.tail.len() as u64);
        self.tail.drain(..usize::try_from(n).unwrap_or(0));
    }

    /// Hash of the last record, [`ZERO_HASH`] when empty.
    pub fn head_hash(&self) -> &str {
        &self.head_hash
    }

    /// Number of records in the chain (in memory or not): the index of the next one.
    pub fn len(&self) -> usize {
        usize::try_from(self.next_index).unwrap_or(usize::MAX)
    }

    /// Whether the chain has no record yet.
    pub fn is_empty(&self) -> bool {
        self.next_index == 0
    }

    /// Verifies what is held: the whole chain from index 0 when nothing was dropped (see
    /// [`verify_chain`]), else the tail as a segment that ends at the head (its own links and
    /// hashes, the last record's hash being the head, the indexes ending at `len() - 1`).
    ///
    /// # Errors
    /// The first bad record.
    pub fn verify(&self) -> Result<(), ChainError> {
        let first = self.tail_first();
        let prev = match self.tail.first() {
            Some(r) if first > 0 => r.prev_hash.as_str(),
            _ => ZERO_HASH,
        };
        verify_segment(&self.tail, first, prev)?;
        let last_hash = self.tail.last().map_or(ZERO_HASH, |r| r.hash.as_str());
        if self.tail.is_empty() && first > 0 {
            if blake3::Hash::from_hex(&self.head_hash).is_err() {
                return Err(ChainError::MalformedHash {
                    index: first.saturating_sub(1),
                    field: "hash",
                });
            }
        } else if self.head_hash != last_hash {
            return Err(ChainError::HashMismatch {
                index: first
                    .saturating_add(self.tail.len() as u64)
                    .saturating_sub(1),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain_of(n: usize) -> AuditChain {
        let mut c = AuditChain::default();
        for i in 0..n {
            c.append(
                1_000 + i as i64,
                "alice",
                AuditKind::Note,
                Some("vol"),
                json!({"text": format!("note number {i}"), "n": i}),
            );
        }
        c
    }

    #[test]
    fn appended_chain_verifies() {
        let c = chain_of(10);
        assert_eq!(c.len(), 10);
        assert_eq!(verify_chain(c.records()), Ok(()));
        assert_eq!(c.records()[0].prev_hash, ZERO_HASH);
        assert_eq!(c.records()[1].prev_hash, c.records()[0].hash);
    }

    #[test]
    fn record_hash_is_golden() {
        // Pins the canonical encoding: changing field order, names or the hash input breaks
        // every exported chain, so it must show up here first.
        let rec = AuditRecord::seal(
            0,
            1_700_000_000_000,
            "alice",
            AuditKind::Promote,
            Some("vol"),
            json!({"to": "hcm", "epoch": 2}),
            ZERO_HASH,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(rec.canonical_bytes()).unwrap(),
            r#"{"index":0,"at_ms":1700000000000,"actor":"alice","kind":"promote","group":"vol","detail":{"epoch":2,"to":"hcm"},"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000"}"#
        );
        let mut h = blake3::Hasher::new();
        h.update(&[0u8; 32]);
        h.update(&rec.canonical_bytes());
        assert_eq!(rec.hash, h.finalize().to_hex().to_string());
        assert_eq!(rec.hash, GOLDEN_HASH);
    }

    const GOLDEN_HASH: &str = "d6c8ef2de345fd0b16b9debfa322e8201db1a3add3917ea8b27056493ce16da6";

    #[test]
    fn tampered_detail_byte_is_named_by_index() {
        let c = chain_of(6);
        let mut bytes = serde_json::to_vec(c.records()).unwrap();
        // Flip one byte inside record 3's detail text ("note number 3" -> "note number 4").
        let needle = b"note number 3";
        let pos = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        bytes[pos + needle.len() - 1] = b'4';
        let tampered: Vec<AuditRecord> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            verify_chain(&tampered),
            Err(ChainError::HashMismatch { index: 3 })
        );
    }

    #[test]
    fn rehashed_tampered_record_breaks_the_next_link() {
        let c = chain_of(5);
        let mut recs = c.records().to_vec();
        recs[2].actor = "mallory".into();
        recs[2].hash = recs[2].compute_hash().unwrap();
        assert_eq!(
            verify_chain(&recs),
            Err(ChainError::PrevHashMismatch { index: 3 })
        );
    }

    #[test]
    fn removed_record_is_reported_as_index_gap() {
        let c = chain_of(5);
        let mut recs = c.records().to_vec();
        recs.remove(1);
        assert_eq!(
            verify_chain(&recs),
            Err(ChainError::IndexGap {
                position: 1,
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn malformed_hash_is_reported() {
        let c = chain_of(3);
        let mut recs = c.records().to_vec();
        recs[1].hash = "zz".into();
        assert_eq!(
            verify_chain(&recs),
            Err(ChainError::MalformedHash {
                index: 1,
                field: "hash"
            })
        );
    }

    #[test]
    fn range_pages_and_segment_verifies_from_previous_hash() {
        let c = chain_of(10);
        let page = c.range(4, 3);
        assert_eq!(
            page.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![4, 5, 6]
        );
        assert_eq!(verify_segment(page, 4, &c.records()[3].hash), Ok(()));
        assert_eq!(
            verify_segment(page, 4, ZERO_HASH),
            Err(ChainError::PrevHashMismatch { index: 4 })
        );
        assert!(c.range(10, 5).is_empty());
        assert!(c.range(u64::MAX, 5).is_empty());
        assert_eq!(c.range(8, 100).len(), 2);
    }

    #[test]
    fn a_whole_chain_serializes_as_the_array_it_always_was() {
        let c = chain_of(3);
        let as_array = serde_json::to_vec(c.records()).unwrap();
        assert_eq!(serde_json::to_vec(&c).unwrap(), as_array);
        let back: AuditChain = serde_json::from_slice(&as_array).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.verify(), Ok(()));
    }

    #[test]
    fn a_trimmed_chain_keeps_its_head_and_round_trips_as_head_and_tail() {
        let mut c = chain_of(10);
        let head = c.head_hash().to_string();
        c.drop_before(6);
        assert_eq!((c.len(), c.tail_first(), c.records().len()), (10, 6, 4));
        assert_eq!(c.head_hash(), head);
        assert_eq!(c.tail_range(2, 5), None, "older than the tail");
        assert_eq!(c.tail_range(8, 5).map(|r| r.len()), Some(2));
        assert_eq!(c.tail_range(10, 5).map(|r| r.len()), Some(0));
        assert_eq!(c.verify(), Ok(()));
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.starts_with(r#"{"next_index":10,"head_hash":""#),
            "{json}"
        );
        let back: AuditChain = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // Appending continues after the head, linked to it.
        let mut c2 = back.clone();
        let i = c2.append(2_000, "bob", AuditKind::Note, None, json!({}));
        assert_eq!(i, 10);
        assert_eq!(c2.records().last().unwrap().prev_hash, head);
        // Everything dropped: the head alone still verifies and appends.
        let mut all = c.clone();
        all.drop_before(10);
        assert!(all.records().is_empty());
        assert_eq!(all.verify(), Ok(()));
        let back: AuditChain = serde_json::from_str(&serde_json::to_string(&all).unwrap()).unwrap();
        assert_eq!(back.head_hash(), head);
    }

    #[test]
    fn a_tail_that_does_not_end_at_the_head_is_refused() {
        let mut c = chain_of(8);
        c.drop_before(4);
        let mut v: Value = serde_json::to_value(&c).unwrap();
        v["head_hash"] = json!("ab".repeat(32));
        let bad: AuditChain = serde_json::from_value(v).unwrap();
        assert_eq!(bad.verify(), Err(ChainError::HashMismatch { index: 7 }));
        let mut v: Value = serde_json::to_value(&c).unwrap();
        v["next_index"] = json!(9);
        let bad: AuditChain = serde_json::from_value(v).unwrap();
        assert!(matches!(bad.verify(), Err(ChainError::IndexGap { .. })));
    }

    #[test]
    fn only_external_kinds_are_recordable() {
        assert!(AuditKind::Verify.is_recordable());
        assert!(AuditKind::Recover.is_recordable());
        assert!(AuditKind::RunbookStep.is_recordable());
        assert!(!AuditKind::Promote.is_recordable());
        assert!(!AuditKind::LeaseGranted.is_recordable());
        assert!(!AuditKind::SyncDegraded.is_recordable());
        assert!(!AuditKind::Fence.is_recordable());
        // The admin API records the calls it refuses (wrong role) through `Record`.
        assert!(AuditKind::Refused.is_recordable());
    }
}
