//! The coordinator process: the raft node with the replicated state machine, the admin API
//! (status, audit, propose, heartbeat, operate), the failure detector and RPO sampling.
//! Failovers, switchovers, drills and failbacks are runbook runs driven by [`crate::runs`].
//! Every decision goes through raft; this module only stamps time, forwards to the leader and
//! waits.
//!
//! - [`process`]: the process (`run`) and the leader's periodic work.
//! - [`api`]: the admin API's gRPC service.
//! - [`authz`]: who is calling, checked against [`table`], the authorization table.
//! - [`heartbeat`]: a replicator's heartbeat on the leader.
//! - [`status_doc`]: the status document.
//! - [`sign_head`]: the leader signs an audit-chain head for an evidence export.
//! - [`actions`]: corrective actions and the auditor's sign-off of a run's review.
//! - [`backfill`]: after a snapshot, the audit records this node lacks, from a peer, verified.
//! - [`steps`]: `PlannedStep`, the committed step a replicator is asked to run.
//!
//! The shared handle ([`crate::handle`]) lies below this module and [`crate::runs`].

mod actions;
mod api;
mod authz;
mod backfill;
mod heartbeat;
mod process;
mod sign_head;
mod status_doc;
mod steps;
pub mod table;

pub use self::actions::add_action_command;
pub use self::api::record_command;
pub use self::heartbeat::heartbeat_command;
pub use self::process::{run, ServerError};
pub use crate::handle::coordinator::{Coordinator, CoordinatorSm};
pub use crate::handle::live::{replica_caught_up, IN_SYNC_MAX_RPO_MS};
