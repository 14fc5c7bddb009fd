//! The chaos runner: runs a scenario ([`crate::scenario`]) against real local processes with
//! the built-in writers, injects its faults, recovers, and judges its checks into a report row.
//! `tandem chaos run` parses arguments and prints the table; everything else is here.
//!
//! Rooms:
//! - [`spine`]: one scenario as numbered steps ([`run_scenario`]).
//! - [`setup`]: bringing the cluster up (topology files, fault mesh, node files, processes).
//! - [`cluster`]: the running cluster ([`cluster::Ctx`]): status, waits, fault targets.
//! - [`faults`]: applying each fault of the timeline; [`power`]: the power-loss file
//!   systems under every node and power cuts; [`pitr`]: checkpoints and their recovery.
//! - [`observe`]: what the runner saw while the faults ran.
//! - [`load`], [`writer`], [`dbwriter`], [`dbrun`], [`pgrun`]: the workload writers and their
//!   runs (block, SQLite, PostgreSQL).
//! - [`recovery`]: healing, waking and restarting, then waiting until caught up.
//! - [`checks`], [`dbjudge`], [`pgjudge`], [`quarantine`]: evaluating each check; [`judge`]: what they
//!   look at and what they found.
//! - [`verify`]: verify and resync through the cluster client ([`tandem_core::client`]).
//! - [`processes`]: starting, stopping and signalling nodes (also `tandem local`).
//! - [`nodefiles`]: the clock program and failpoint files each node follows.
//! - [`topology`]: the embedded topology (also `tandem demo`).
//! - [`hosts`]: the hosts workload: several replicator hosts per site, a writer per group,
//!   single hosts killed; its own steps, checks and report row.
//! - [`host`]: what the caller provides (identity, quarantine reader, database verifier).
//!
//! Errors are `anyhow` throughout the runner: it is a test harness whose every error ends as
//! a line of the report, and none is matched on; a typed enum would be busywork here.
//! The runner links neither the replicator nor clap.

pub mod checks;
pub mod cluster;
pub mod dbjudge;
pub mod dbrun;
pub mod dbwriter;
pub mod faults;
pub mod host;
pub mod hosts;
pub mod judge;
pub mod load;
pub mod nodefiles;
pub mod observe;
pub mod pgjudge;
pub mod pgrun;
pub mod pitr;
pub mod power;
pub mod processes;
pub mod quarantine;
pub mod recovery;
pub mod setup;
pub mod spine;
pub mod topology;
pub mod verify;
pub mod writer;

pub use self::host::{Host, KeptCopy};
pub use self::spine::run_scenario;
