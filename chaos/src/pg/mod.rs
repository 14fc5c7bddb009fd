//! PostgreSQL 15 in the harness: throwaway servers run as the `postgres` user
//! ([`server`]: initdb, configuration, start, kill -9, base backups, psql, pgbench) and the
//! pure reading of what pgbench saw committed and what a failover may lose ([`judge`]).
//! The chaos runner's PostgreSQL workload (`postgres = true`) and the end-to-end tests use
//! both.

pub mod judge;
pub mod server;

pub use self::judge::{commit_times, judge_loss, Loss, LossVerdict};
pub use self::server::*;
