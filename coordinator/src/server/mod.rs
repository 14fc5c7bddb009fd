//! The coordinator process: the raft node with the replicated state machine, the admin API
//! (status, audit, propose, heartbeat, operate), the failure detector and RPO sampling.
//! Failovers, switchovers, drills and failbacks are runbook runs driven by [`crate::runs`].
//! Every decision goes through raft; this module only stamps time, forwards to the leader and
//! waits.
//!
//! - [`process`]: the process (`run`) and the leader's periodic work.
//! - [`coordinator`]: the shared handle: propose, read, the leader.
//! - [`api`]: the admin API's gRPC service.
//! - [`authz`]: who may call what.
//! - [`heartbeat`]: a replicator's heartbeat on the leader.
//! - [`status_doc`]: the status document.
//! - [`live`]: the leader's live figures from heartbeats (pure).

mod api;
mod authz;
pub(crate) mod coordinator;
mod heartbeat;
mod live;
mod process;
mod status_doc;

pub use self::coordinator::{Coordinator, CoordinatorSm};
pub use self::heartbeat::heartbeat_command;
pub use self::live::{replica_caught_up, IN_SYNC_MAX_RPO_MS};
pub use self::process::{run, ServerError};
