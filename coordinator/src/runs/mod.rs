//! Runbook runs on the coordinator leader: starting a run (load, validate, plan, commit) and
//! the executor that drives every unfinished run — `StepStarted` is committed through Raft
//! before a step runs and its result after, so a new leader resumes where the old one stopped.
//!
//! The decisions (what is next, what an event does, retries, resume rules) are the pure run
//! state machine of `tandem_runbooks::run`, applied inside the replicated state
//! ([`crate::state`]); this module only acts: raft proposals, waits on the leader's live
//! figures, gRPC calls to replicators, child processes and HTTP calls.
//!
//! - [`admin`]: starting runs and the admin API's `Operate`.
//! - [`driver`]: the executor loop of a run and the dispatch of a step to its action.
//! - [`decide`]: what a `fence` step must do (pure, table-tested).
//! - [`failover`]: `fence`, `promote`, `demote`, `reverse`, `wait_replicated`, pause/resume.
//! - [`replica`]: `verify`, `snapshot`, `recover` (calls to replicators).
//! - [`host`]: `exec`, `check` and `http` (child processes and TCP on this host; commands of a
//!   step at a site go to [`site`]).
//! - [`site`]: a step's command run by the replicator of its site (`Replication.RunStep`).
//! - [`schedule`]: drills on a schedule (`drill_every`): the leader starts a due drill.
//! - [`failure`]: what an attempt returns.
//! - [`redact`]: credentials kept out of what the admin API shows.

pub(crate) mod admin;
pub(crate) mod driver;
pub(crate) mod schedule;

mod decide;
mod failover;
mod failure;
mod host;
pub mod redact;
mod replica;
mod site;

pub(crate) use self::host::command_env;

pub use self::redact::redact_secrets;
pub use crate::handle::drivers::Drivers;
