//! Who may call what on the replicator's `Replication` service: the calls, one `allowed` cell
//! per (call, caller class), and the rows rendered into docs/SECURITY.md. Pure.
//!
//! Each cell is the least privilege that keeps a flow of today working:
//! - `Ship`: the shipper of the group's primary replicator (`replicator/src/ship.rs`).
//! - `Merkle`, `ReadBlocks`: the group's pair of replicators: the replica pulls from the
//!   primary during a resync (`node/resync.rs`, `resync/client.rs`), the primary's verify
//!   barrier asks the replica's `Merkle` (`node/blocks.rs`); both sites are allowed either way
//!   round, so a role swap the replicator has not heard of yet does not stop a resync. The
//!   operator role may read them by hand (it may already `Recover` whole volumes).
//! - `Snapshot`, `DeleteSnapshot`: the coordinators' drill step (`coordinator/src/runs/replica.rs`).
//! - `Recover`: the coordinators' `recover` step and `tandem recover` (operator).
//! - `Verify`: the coordinators' `verify` step and `tandem verify` (operator).
//! - `Checkpoint`, `Checkpoints`, `Resync`: `tandem checkpoint`, `checkpoints`, `resync`
//!   (operator; the chaos runner dials with the CLI's operator identity too); `Resync` also
//!   from the group's primary replicator, whose shipper asks its replica to resync when the
//!   journal overflowed (`replicator/src/ship.rs`).
//! - `ArchiveWal`: `tandem wal push` as PostgreSQL's `archive_command`, with the group's
//!   `wal-client` certificate the docs give the `postgres` user (docs/postgres.md), which may
//!   push only for the group it names; an operator may too.
//! - `RunStep`: the coordinator leader (the leader and plan checks are the call's own).
//!
//! Without TLS (`[tls] insecure = true`) nobody is authenticated and every call is allowed;
//! the Ship epoch bound still applies.

use tandem_core::authz::{render_markdown, CallerClass};

/// A call of the `Replication` service: a row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicationCall {
    /// `Ship`: the group's replication stream into this replica.
    Ship,
    /// `Merkle`: hashes of a resource (resync, verify barriers).
    Merkle,
    /// `ReadBlocks`: raw blocks of a resource (resync).
    ReadBlocks,
    /// `Snapshot`: a drill copy of the replica's volumes.
    Snapshot,
    /// `DeleteSnapshot`: removes a drill copy.
    DeleteSnapshot,
    /// `Checkpoint`: a tagged recovery point through the primary's stream.
    Checkpoint,
    /// `Checkpoints`: the replica's recovery points.
    Checkpoints,
    /// `Recover`: a point-in-time copy built under the recover root.
    Recover,
    /// `Resync`: the replica resyncs the group from its primary.
    Resync,
    /// `ArchiveWal`: a PostgreSQL archive file through the group's stream.
    ArchiveWal,
    /// `Verify`: the primary compares both copies at barriers.
    Verify,
    /// `RunStep`: a step of a committed run on this replicator's host.
    RunStep,
}

impl ReplicationCall {
    /// The RPC's name, as in the proto and in refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicationCall::Ship => "Ship",
            ReplicationCall::Merkle => "Merkle",
            ReplicationCall::ReadBlocks => "ReadBlocks",
            ReplicationCall::Snapshot => "Snapshot",
            ReplicationCall::DeleteSnapshot => "DeleteSnapshot",
            ReplicationCall::Checkpoint => "Checkpoint",
            ReplicationCall::Checkpoints => "Checkpoints",
            ReplicationCall::Recover => "Recover",
            ReplicationCall::Resync => "Resync",
            ReplicationCall::ArchiveWal => "ArchiveWal",
            ReplicationCall::Verify => "Verify",
            ReplicationCall::RunStep => "RunStep",
        }
    }

    /// True when a replicator's class depends on the group's sites for this call (some
    /// replicator class is allowed): the caller is then judged against the group's view.
    pub fn judged_by_sites(self) -> bool {
        allowed(self, CallerClass::PrimaryReplicator)
            || allowed(self, CallerClass::ReplicaReplicator)
    }
}

impl std::fmt::Display for ReplicationCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The table's rows: (call, name, what it is and any condition beyond the class).
pub const CALLS: [(ReplicationCall, &str, &str); 12] = [
    (
        ReplicationCall::Ship,
        "Ship",
        "the group's stream into this replica; only with `Hello.epoch` equal to the epoch the \
         coordinators gave this replicator for the group (older: fatal refusal; newer: refused, \
         the fence is never raised above it; no epoch heard yet: `unavailable`)",
    ),
    (
        ReplicationCall::Merkle,
        "Merkle",
        "hashes of a resource: resync (replica asks primary), verify barrier (primary asks \
         replica)",
    ),
    (
        ReplicationCall::ReadBlocks,
        "ReadBlocks",
        "raw blocks of a resource: resync pulls from the primary",
    ),
    (
        ReplicationCall::Snapshot,
        "Snapshot",
        "drill copy of the replica's volumes (runbook `snapshot` step)",
    ),
    (
        ReplicationCall::DeleteSnapshot,
        "DeleteSnapshot",
        "removes a drill copy (runbook `snapshot` step)",
    ),
    (
        ReplicationCall::Checkpoint,
        "Checkpoint",
        "tagged recovery point through the primary's stream (`tandem checkpoint`)",
    ),
    (
        ReplicationCall::Checkpoints,
        "Checkpoints",
        "lists the replica's recovery points (`tandem checkpoints`)",
    ),
    (
        ReplicationCall::Recover,
        "Recover",
        "point-in-time copy (runbook `recover` step, `tandem recover`); `out_dir` only under \
         the node's `recover_root`",
    ),
    (
        ReplicationCall::Resync,
        "Resync",
        "the replica resyncs the group from its primary (`tandem resync`; the primary's \
         shipper after a journal overflow)",
    ),
    (
        ReplicationCall::ArchiveWal,
        "ArchiveWal",
        "PostgreSQL `archive_command` (`tandem wal push`); a WAL client only for the group its certificate names (`NAME@GROUP`)",
    ),
    (
        ReplicationCall::Verify,
        "Verify",
        "compares both copies at barriers (runbook `verify` step, `tandem verify`)",
    ),
    (
        ReplicationCall::RunStep,
        "RunStep",
        "a step of a committed run on this host (the coordinator leader; the call checks the \
         run and step itself)",
    ),
];

/// Whether `class` may make `call`. The replicator classes are judged against the group's
/// sites as this replicator last heard them from the coordinators.
pub fn allowed(call: ReplicationCall, class: CallerClass) -> bool {
    use CallerClass as C;
    use ReplicationCall as R;
    match class {
        // Refused by the TLS handshake before any call is read.
        C::UnknownCa | C::NoCertificate => false,
        // Nobody is authenticated: everything is open (the Ship epoch bound still holds).
        C::Unauthenticated => true,
        C::Coordinator => matches!(
            call,
            R::Snapshot | R::DeleteSnapshot | R::Recover | R::Verify | R::RunStep
        ),
        // The primary's shipper asks its replica to resync after a journal overflow.
        C::PrimaryReplicator => matches!(call, R::Ship | R::Merkle | R::ReadBlocks | R::Resync),
        C::ReplicaReplicator => matches!(call, R::Merkle | R::ReadBlocks),
        C::OtherReplicator => false,
        C::Operator => matches!(
            call,
            R::Merkle
                | R::ReadBlocks
                | R::Checkpoint
                | R::Checkpoints
                | R::Recover
                | R::Resync
                | R::ArchiveWal
                | R::Verify
        ),
        C::Auditor | C::Viewer => false,
        // Only for its own group: checked beside the table (`Gate::authorize`).
        C::WalClient => call == R::ArchiveWal,
    }
}

/// The table as Markdown (for docs/SECURITY.md).
pub fn replication_table_markdown() -> String {
    render_markdown(&CALLS, allowed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use CallerClass as C;
    use ReplicationCall as R;

    fn cell(md: &str, call: &str, class: CallerClass) -> String {
        let header: Vec<&str> = md
            .lines()
            .next()
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        let col = header.iter().position(|h| *h == class.as_str()).unwrap();
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| `{call}` |")))
            .unwrap_or_else(|| panic!("no row {call} in\n{md}"));
        row.split('|').map(str::trim).nth(col).unwrap().to_owned()
    }

    #[test]
    fn the_rendered_table_holds_the_peer_rules() {
        let md = replication_table_markdown();
        assert_eq!(md.lines().count(), 2 + CALLS.len(), "{md}");
        let cases = [
            ("Ship", C::PrimaryReplicator, "yes"),
            ("Ship", C::Coordinator, "no"),
            ("Ship", C::ReplicaReplicator, "no"),
            ("Ship", C::OtherReplicator, "no"),
            ("Ship", C::Operator, "no"),
            ("ReadBlocks", C::ReplicaReplicator, "yes"),
            ("ReadBlocks", C::OtherReplicator, "no"),
            ("ReadBlocks", C::Coordinator, "no"),
            ("ReadBlocks", C::Auditor, "no"),
            ("Merkle", C::PrimaryReplicator, "yes"),
            ("Merkle", C::Viewer, "no"),
            ("Resync", C::OtherReplicator, "no"),
            ("Resync", C::PrimaryReplicator, "yes"),
            ("Resync", C::ReplicaReplicator, "no"),
            ("Resync", C::Operator, "yes"),
            ("Recover", C::Coordinator, "yes"),
            ("Recover", C::PrimaryReplicator, "no"),
            ("Snapshot", C::Coordinator, "yes"),
            ("Snapshot", C::ReplicaReplicator, "no"),
            ("ArchiveWal", C::Operator, "yes"),
            ("ArchiveWal", C::PrimaryReplicator, "no"),
            ("RunStep", C::Coordinator, "yes"),
            ("RunStep", C::Operator, "no"),
            ("Verify", C::UnknownCa, "TLS"),
            ("Verify", C::Unauthenticated, "yes"),
        ];
        for (i, (call, class, want)) in cases.iter().enumerate() {
            let got = cell(&md, call, *class);
            assert_eq!(
                &got, want,
                "#{i}: expect {want} got {got} for {call} / {class}\n{md}"
            );
        }
    }

    #[test]
    fn every_call_has_one_row_and_only_coordinator_or_person_calls_ignore_sites() {
        for (i, (call, name, _)) in CALLS.iter().enumerate() {
            assert_eq!(call.as_str(), *name, "#{i}");
            assert_eq!(
                CALLS.iter().filter(|(c, _, _)| c == call).count(),
                1,
                "#{i}"
            );
        }
        assert!(R::Ship.judged_by_sites() && R::ReadBlocks.judged_by_sites());
        assert!(R::Resync.judged_by_sites());
        assert!(!R::Recover.judged_by_sites() && !R::Verify.judged_by_sites());
        // No call is open to auditors, viewers or replicators outside the pair.
        for (call, _, _) in CALLS {
            for class in [C::Auditor, C::Viewer, C::OtherReplicator, C::UnknownCa] {
                assert!(!allowed(call, class), "{call} open to {class}");
            }
        }
    }

    const BEGIN: &str =
        "<!-- replication authorization table: generated by replicator/src/receive/authz.rs -->";
    const END: &str = "<!-- end of replication authorization table -->";

    #[test]
    fn the_security_doc_carries_the_replication_table_as_the_code_has_it() {
        let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SECURITY.md");
        let table = replication_table_markdown();
        if std::env::var_os("TANDEM_WRITE_SECURITY_DOC").is_some() {
            let doc = std::fs::read_to_string(doc_path).unwrap();
            let (head, rest) = doc.split_once(BEGIN).expect("begin marker");
            let (_, tail) = rest.split_once(END).expect("end marker");
            std::fs::write(doc_path, format!("{head}{BEGIN}\n{table}{END}{tail}")).unwrap();
        }
        let doc = std::fs::read_to_string(doc_path).unwrap();
        assert!(
            doc.contains(&format!("{BEGIN}\n{table}{END}")),
            "docs/SECURITY.md's replication table differs from replicator/src/receive/authz.rs; \
             regenerate it with TANDEM_WRITE_SECURITY_DOC=1 cargo test -p tandem-replicator security_doc"
        );
    }
}
