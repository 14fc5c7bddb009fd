//! The coordinator API's authorization table: for each call, which caller classes may make
//! it. One table, pure; `authz` checks every call against it and docs/SECURITY.md carries it
//! as rendered by [`table_markdown`] (a test keeps the two equal).

use tandem_core::authz::{render_markdown, CallerClass};

/// A call of the coordinator API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// Cluster status.
    Status,
    /// Pages of the audit chain.
    Audit,
    /// The list of runbook runs.
    Runs,
    /// One run, whole.
    GetRun,
    /// Pause a group's replication.
    Pause,
    /// Resume it.
    Resume,
    /// Start a run of one of the group's runbooks.
    StartRun,
    /// Approve, confirm or reject a step; cancel a run.
    RunAction,
    /// Add a note or an operator's result to the audit chain.
    Record,
    /// Start a planned move of a group's replica side to another host at its site.
    Move,
    /// A replicator's liveness, progress and lease renewal.
    Heartbeat,
    /// The lease holder gives its lease up.
    ReleaseLease,
    /// A sync group's primary acknowledges without (or again with) the replica.
    SyncDegraded,
    /// A replicator reads the committed step it was asked to run.
    PlannedStep,
    /// A follower hands a state-machine command to the leader.
    Propose,
    /// The leader signs an audit-chain head for an evidence export.
    SignAuditHead,
    /// Add a corrective action after an exercise.
    AddAction,
    /// Give an open corrective action to a new owner.
    AssignAction,
    /// Close a corrective action.
    CloseAction,
    /// The list of corrective actions.
    Actions,
    /// An auditor signs the review of a finished run.
    SignReview,
}

/// Every call with its name and what it is (the table's rows, in order).
pub const CALLS: [(Call, &str, &str); 21] = [
    (Call::Status, "Status", "cluster status"),
    (Call::Audit, "Audit", "pages of the audit chain"),
    (Call::Runs, "Runs", "the list of runbook runs"),
    (Call::GetRun, "GetRun", "one run with its plan and step outputs (credentials redacted)"),
    (Call::Pause, "Pause", "pause a group's replication"),
    (Call::Resume, "Resume", "resume it"),
    (
        Call::StartRun,
        "StartRun",
        "start a failover, switchover, drill or failback of a group; the leader plans it from the topology's runbooks",
    ),
    (
        Call::RunAction,
        "RunAction",
        "approve, confirm or reject a step; cancel a run",
    ),
    (
        Call::Record,
        "Record",
        "a note, or a verify/recover/resync result the CLI produced (kinds note, operator, verify, recover only)",
    ),
    (
        Call::Move,
        "Move",
        "start a planned move of a group's replica side to another replicator host at that site (the leader checks the host against the topology)",
    ),
    (
        Call::Heartbeat,
        "Heartbeat",
        "liveness, progress, lease renewal; node = the certificate's, site = the topology's; only groups whose site pair holds that site",
    ),
    (
        Call::ReleaseLease,
        "ReleaseLease",
        "the holder gives up its lease (the state machine also checks the holder is this node)",
    ),
    (
        Call::SyncDegraded,
        "SyncDegraded",
        "a sync group's primary acknowledges without the replica, or with it again",
    ),
    (
        Call::PlannedStep,
        "PlannedStep",
        "the committed step a replicator was asked to run; only a replicator of the topology, for a step planned at its own site",
    ),
    (
        Call::Propose,
        "Propose",
        "a state-machine command handed to the leader (coordinators' own decisions)",
    ),
    (
        Call::SignAuditHead,
        "SignAuditHead",
        "the leader signs the head of an evidence export (a record in its own chain) with its node key",
    ),
    (
        Call::AddAction,
        "AddAction",
        "add a corrective action (title, owner, due date) against a run of a group",
    ),
    (Call::AssignAction, "AssignAction", "give an open corrective action to a new owner"),
    (Call::CloseAction, "CloseAction", "close a corrective action with a note"),
    (Call::Actions, "Actions", "the list of corrective actions"),
    (
        Call::SignReview,
        "SignReview",
        "sign the after-action review of a finished run: the auditor's one write (a review record in the chain); an operator may not",
    ),
];

/// May a caller of `class` make `call`? Group-scoped calls are classed by the group's sites
/// as the coordinators' committed state has them now. A coordinator may make every call but
/// `PlannedStep`: it forwards the calls its own callers made (naming them; the leader checks
/// again), and coordinators decide the rest.
pub fn allowed(call: Call, class: CallerClass) -> bool {
    use CallerClass as C;
    match class {
        // Coordinators never run steps: only a replicator reads the step it was asked to run.
        C::Coordinator => call != Call::PlannedStep,
        C::Unauthenticated => true,
        C::UnknownCa | C::NoCertificate => false,
        C::Operator => !matches!(
            call,
            Call::Heartbeat
                | Call::ReleaseLease
                | Call::SyncDegraded
                | Call::PlannedStep
                | Call::Propose
                | Call::SignReview
        ),
        // Read-only but for one write: signing a run's review.
        C::Auditor => matches!(
            call,
            Call::Status
                | Call::Audit
                | Call::Runs
                | Call::GetRun
                | Call::SignAuditHead
                | Call::Actions
                | Call::SignReview
        ),
        C::Viewer => call == Call::Status,
        // A database's WAL client talks to its replicator only.
        C::WalClient => false,
        C::PrimaryReplicator => matches!(
            call,
            Call::Status
                | Call::Heartbeat
                | Call::ReleaseLease
                | Call::SyncDegraded
                | Call::PlannedStep
        ),
        C::ReplicaReplicator => matches!(call, Call::Status | Call::Heartbeat | Call::PlannedStep),
        // PlannedStep: any replicator may ask; the step must be planned at its own site
        // (checked against the run in `steps`), which is narrower than the group's pair.
        C::OtherReplicator => matches!(call, Call::Status | Call::Heartbeat | Call::PlannedStep),
    }
}

/// Which calls are about one group (and so class a replicator by the group's sites).
pub fn group_scoped(call: Call) -> bool {
    matches!(call, Call::ReleaseLease | Call::SyncDegraded)
}

/// The table as Markdown, as docs/SECURITY.md carries it.
pub fn table_markdown() -> String {
    render_markdown(&CALLS, allowed)
}

/// The name of a call, as refusals and the audit chain name it.
pub fn name(call: Call) -> &'static str {
    CALLS
        .iter()
        .find(|(c, _, _)| *c == call)
        .map_or("?", |(_, n, _)| n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_call_has_one_row() {
        for (i, (c, _, _)) in CALLS.iter().enumerate() {
            assert_eq!(
                CALLS.iter().filter(|(d, _, _)| d == c).count(),
                1,
                "row {i}"
            );
        }
    }

    #[test]
    fn the_holes_of_issue_16_are_closed_in_the_table() {
        use CallerClass as C;
        // A replicator cannot pause, start runs, approve, write records or propose.
        for class in [
            C::PrimaryReplicator,
            C::ReplicaReplicator,
            C::OtherReplicator,
        ] {
            for call in [
                Call::Pause,
                Call::Resume,
                Call::StartRun,
                Call::RunAction,
                Call::Record,
                Call::Move,
                Call::Propose,
                Call::Audit,
            ] {
                assert!(!allowed(call, class), "{class} {call:?}");
            }
        }
        // Only the primary's replicator releases leases or degrades a sync group.
        assert!(allowed(Call::ReleaseLease, C::PrimaryReplicator));
        assert!(!allowed(Call::ReleaseLease, C::ReplicaReplicator));
        assert!(!allowed(Call::SyncDegraded, C::ReplicaReplicator));
        // People never propose raw commands or speak as a node.
        for class in [C::Operator, C::Auditor, C::Viewer] {
            assert!(!allowed(Call::Propose, class));
            assert!(!allowed(Call::Heartbeat, class));
        }
        assert!(!allowed(Call::Pause, C::Auditor));
        assert!(!allowed(Call::Audit, C::Viewer));
        assert!(allowed(Call::Pause, C::Operator));
    }

    #[test]
    fn only_an_auditor_signs_a_review_and_only_an_operator_changes_actions() {
        use CallerClass as C;
        assert!(allowed(Call::SignReview, C::Auditor));
        for class in [
            C::Operator,
            C::Viewer,
            C::PrimaryReplicator,
            C::ReplicaReplicator,
            C::OtherReplicator,
            C::UnknownCa,
            C::NoCertificate,
        ] {
            assert!(!allowed(Call::SignReview, class), "{class}");
        }
        for call in [Call::AddAction, Call::AssignAction, Call::CloseAction] {
            assert!(allowed(call, C::Operator), "{call:?}");
            assert!(!allowed(call, C::Auditor), "{call:?}");
            assert!(!allowed(call, C::Viewer), "{call:?}");
        }
        // The auditor's only writes: the review, and asking the leader to sign an export.
        let writes: Vec<_> = CALLS
            .iter()
            .map(|(c, _, _)| *c)
            .filter(|c| allowed(*c, C::Auditor))
            .filter(|c| {
                !matches!(
                    c,
                    Call::Status | Call::Audit | Call::Runs | Call::GetRun | Call::Actions
                )
            })
            .collect();
        assert_eq!(writes, vec![Call::SignAuditHead, Call::SignReview]);
    }

    #[test]
    fn the_security_doc_carries_the_table_as_the_code_has_it() {
        let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/SECURITY.md");
        let table = table_markdown();
        if std::env::var_os("TANDEM_WRITE_SECURITY_DOC").is_some() {
            let doc = std::fs::read_to_string(doc_path).unwrap();
            let (head, rest) = doc
                .split_once(BEGIN)
                .expect("docs/SECURITY.md has the table's begin marker");
            let (_, tail) = rest.split_once(END).expect("and its end marker");
            std::fs::write(doc_path, format!("{head}{BEGIN}\n{table}{END}{tail}")).unwrap();
        }
        let doc = std::fs::read_to_string(doc_path).unwrap();
        assert!(
            doc.contains(&format!("{BEGIN}\n{table}{END}")),
            "docs/SECURITY.md's coordinator table differs from coordinator/src/server/table.rs; \
             regenerate it with TANDEM_WRITE_SECURITY_DOC=1 cargo test -p tandem-coordinator security_doc"
        );
    }

    const BEGIN: &str =
        "<!-- coordinator authorization table: generated by coordinator/src/server/table.rs -->";
    const END: &str = "<!-- end of coordinator authorization table -->";
}
