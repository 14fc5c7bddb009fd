//! The typed cluster client: thin wrappers over the generated tonic clients that every caller
//! of the cluster (the CLI, the chaos runner, the runbook executor) uses instead of building
//! channels, requests and retries by hand.
//!
//! - [`coordinator`]: [`Cluster`], the coordinators of a topology: status, audit, propose,
//!   operate and order a run, find the leader.
//! - [`replication`]: [`Replicator`], one replicator: the `Resync` and `Verify` progress
//!   streams.
//! - [`verdict`]: the line and the audit detail of a volume's verify verdict.
//! - [`error`]: [`ClientError`], which says whether the peer could not be reached or said no,
//!   and names the call and the address.
//!
//! Connections go through [`crate::net::Net`] (plaintext or mTLS, as the topology says); the
//! client decides nothing about the cluster, it only carries calls and decodes replies.

pub mod coordinator;
pub mod error;
pub mod replication;
pub mod verdict;

pub use self::coordinator::Cluster;
pub use self::error::ClientError;
pub use self::replication::{ProgressStream, Replicator};
