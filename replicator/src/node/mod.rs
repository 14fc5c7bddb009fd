//! The replicator process: serves the Replication service (as replica) and the NBD exports (as
//! primary), sends heartbeats and progress to the coordinators, holds the primary lease and
//! fences itself when it cannot renew it, and changes roles when the coordinators promote or
//! demote its site.
//!
//! Roles come only from the coordinators' answers: a replicator that cannot reach a quorum
//! keeps no write lease, so it stops accepting writes before the coordinators may promote the
//! other site.
//!
//! The rooms:
//! - `startup`: [`run`], opening the groups' volumes and exports, the listeners, shutdown.
//! - `runtime`: the node's and each group's runtime state (roles), and the residency check.
//! - `layout`: where things live under the data folder, and the resources' local paths.
//! - `lock`: the mutex helper and the byte-range lock of the volume write path.
//! - `lease`: the lease gate ([`RoleCell`]): may a write be journaled; journal overflow.
//! - `volume`: [`GroupVolume`], the NBD backend that journals before it writes the image.
//! - `heartbeat`, `report`, `coordinators`: the heartbeat loop, what it reports, and dialing
//!   the coordinators (and asking their consent to degrade a sync group).
//! - `decide`: pure decisions (what to do with a lease, whether a write may pass the gate,
//!   how a replica starts), with their unit tests.
//! - `reconcile`: applies what `decide` says to one group.
//! - `primary`, `replica`, `transitions`, `replay`: role changes (become primary, become
//!   replica, stop a role and drain a switchover, replay journals onto the images).
//! - `resync`: resync orchestration at a replica (quarantine, merkle resync, retries).
//! - `blocks`, `copies`, `archive`: the node's block source for the Replication service
//!   (merkle and the Resync RPC; snapshots, checkpoints and recovered copies; PostgreSQL
//!   archive pushes).
//! - `metrics`: the `/metrics` endpoint.

mod archive;
mod blocks;
mod coordinators;
mod copies;
mod decide;
mod heartbeat;
mod hosting;
mod layout;
pub(crate) mod lease;
mod lock;
mod malloc;
mod metrics;
mod pg_standby;
mod pg_stream;
mod primary;
mod reconcile;
mod replay;
mod replica;
mod report;
mod resync;
mod runtime;
mod startup;
mod transitions;
mod volume;

pub use self::layout::archive_dir;
pub use self::lease::RoleCell;
pub use self::lock::{RangeGuard, RangeLock};
pub use self::report::describe_resync;
pub use self::startup::run;
pub use self::volume::GroupVolume;
