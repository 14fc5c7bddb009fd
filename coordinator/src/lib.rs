//! Tandem coordinator: the Raft cluster that decides who is primary, tracks RPO, and keeps the
//! audit chain.
//!
//! - [`state`]: the replicated state machine (`apply(state, command) -> events`), pure and
//!   deterministic: topology, roles, epochs, leases, RPO history.
//! - [`cadence`]: drills on a schedule, decided (due, overdue, retry, cadence held), pure.
//! - [`host_loss`]: the loss of one replicator host of several at a site, decided (which
//!   groups fail over, which degrade), pure.
//! - [`audit`]: the blake3-chained audit log kept in that state, and its verifier.
//! - [`evidence`]: evidence export for auditors (report, JSONL, runs, RPO CSV, manifest) and its
//!   verifier.
//! - [`handle`]: the shared coordinator handle (propose, read, live figures, run drivers),
//!   below both `runs` and `server`.
//! - [`raft`]: the raft-rs node (sled storage, tonic peer transport, `RaftHandle`).
//! - [`runs`]: runbook runs on the leader: start, and the executor that commits each step's
//!   start before running it and its result after.
//! - [`server`]: the coordinator process: raft + state machine + admin API + failure detector.
//! - [`status`]: the status document the admin API returns.
//! - [`metrics`]: the Prometheus figures, mapped from the status document at every scrape.
//! - [`error`]: the crate's error type.

pub mod audit;
pub mod cadence;
pub mod error;
pub mod evidence;
pub mod handle;
pub mod host_loss;
pub mod metrics;
pub mod raft;
pub mod refusals;
pub mod runs;
pub mod server;
pub mod state;
pub mod status;
