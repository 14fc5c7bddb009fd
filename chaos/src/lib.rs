//! Tandem chaos harness: fault proxy, workloads, histories and the checkers that judge them.
//!
//! The harness follows the Jepsen pattern: a workload records every operation it invokes and
//! how each ended (`ok`, `fail`, or `info` = unknown) into a [`history::History`]; faults are
//! injected meanwhile; at the end pure [`checker`] functions compare the history with the
//! final state and return a [`checker::Verdict`] each.
//!
//! Modules:
//! - [`proxy`]: a TCP fault proxy (latency, jitter, bandwidth, blackhole, reset, slicing,
//!   bit corruption), changed live through a [`proxy::ProxyHandle`]. The pure parts (token
//!   bucket, corruption planner) are tested in-file.
//! - [`mesh`]: one fault proxy per ordered pair of nodes and the per-node topology files that
//!   make every node dial its peers through them (faults per link, node or site).
//! - [`history`]: operations and histories as JSON lines, plus a shared recorder with one clock.
//! - [`checker`]: pure checkers (lost acknowledged writes, split brain, monotonic epochs,
//!   replica prefix, identical after resync, RTO, double promotion, no write acknowledged
//!   after the lease ended, RPO rising under a fault and recovering; for the loss of one
//!   host among several: the RTO to the first write at the new primary, and the other hosts'
//!   groups keeping their role and never ceasing to write).
//! - [`dbcheck`]: pure checkers for the database workload (committed transactions lost, the
//!   database a commit prefix with integrity ok, replica identical to the primary).
//! - [`workload`]: a seeded block-writer workload over any async write function.
//! - [`nbd_client`]: a minimal NBD client (fixed newstyle, `NBD_OPT_GO`, read, write, flush,
//!   disconnect) so workloads can write through NBD without qemu.
//! - [`pg`]: throwaway PostgreSQL 15 servers run as the `postgres` user, pgbench's logs,
//!   and the pure judgement of what a PostgreSQL failover may lose.
//! - [`sim`]: a deterministic simulation of the coordinators (raft-rs + the state machine)
//!   over an in-memory network, swept over seeds with invariants checked after every step.
//! - [`scenario`]: chaos scenarios as TOML (fault timeline + checks).
//! - [`runner`]: the chaos runner: a scenario against real local processes, from bringing
//!   the cluster up to the report row (`tandem chaos run` only parses and prints).
//! - [`powerfs`]: a FUSE power-loss file system (unsynced writes and folder changes kept
//!   apart from the durable state and dropped by a power cut, optionally tearing the last
//!   write); its pure model is property-tested in-crate.
//! - [`rng`]: a small seeded PRNG whose output never changes between versions, so a seed
//!   replays the same workload and the same corruption.

pub mod checker;
pub mod dbcheck;
pub mod history;
pub mod mesh;
pub mod nbd_client;
pub mod pg;
pub mod powerfs;
pub mod proxy;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod sim;
pub mod workload;

use std::io;

use thiserror::Error;

/// Errors of the chaos harness.
#[derive(Debug, Error)]
pub enum ChaosError {
    /// Socket or file I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (and on which address or file).
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An operation did not finish in time.
    #[error("{what} timed out after {after_ms} ms")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// How long we waited.
        after_ms: u64,
    },
    /// A line of a history file could not be parsed.
    #[error("history line {line}: {reason}")]
    HistoryLine {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// An NBD server broke the protocol (bad magic, wrong handle, malformed reply).
    #[error("nbd protocol: {reason}")]
    NbdProtocol {
        /// What was wrong.
        reason: String,
    },
    /// The NBD server refused an option during the handshake.
    #[error("nbd server refused option {option} with reply {reply_type:#x}: {message}")]
    NbdRefused {
        /// The option (`NBD_OPT_*`).
        option: u32,
        /// The error reply (`NBD_REP_ERR_*`).
        reply_type: u32,
        /// The server's message, if any.
        message: String,
    },
    /// The NBD server answered a command with an error value.
    #[error("nbd {command} at offset {offset} length {length} failed with errno {errno}")]
    NbdCommand {
        /// `read`, `write` or `flush`.
        command: &'static str,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        length: u64,
        /// The NBD error value.
        errno: u32,
    },
    /// A workload or proxy was configured with values that cannot work.
    #[error("invalid configuration: {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

/// NBD `EPERM`: the export is read-only or fenced.
const NBD_EPERM: u32 = 1;
/// NBD `EINVAL`: the request was invalid.
const NBD_EINVAL: u32 = 22;
/// NBD `ENOSPC`: past the end of the export.
const NBD_ENOSPC: u32 = 28;
/// NBD `ESHUTDOWN`: the server is shutting down.
const NBD_ESHUTDOWN: u32 = 108;

impl ChaosError {
    /// Whether trying again (possibly after reconnecting) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ChaosError::Io { .. } | ChaosError::Timeout { .. } => true,
            ChaosError::NbdCommand { errno, .. } => *errno == NBD_ESHUTDOWN,
            _ => false,
        }
    }

    /// Whether a write that ended with this error certainly did not change the volume.
    ///
    /// Workloads record such writes as `fail`; every other error is `info` (indeterminate),
    /// because a timeout or a dropped connection says nothing about whether the write landed.
    pub fn write_definitely_not_applied(&self) -> bool {
        match self {
            ChaosError::NbdCommand { errno, .. } => {
                matches!(*errno, NBD_EPERM | NBD_EINVAL | NBD_ENOSPC)
            }
            ChaosError::Config { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        ChaosError::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_trouble_is_retryable_and_fencing_is_a_definite_failure() {
        let io = ChaosError::io("connect", io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(io.is_retryable());
        assert!(!io.write_definitely_not_applied());
        let fenced = ChaosError::NbdCommand {
            command: "write",
            offset: 0,
            length: 4096,
            errno: NBD_EPERM,
        };
        assert!(!fenced.is_retryable());
        assert!(fenced.write_definitely_not_applied());
        let eio = ChaosError::NbdCommand {
            command: "write",
            offset: 0,
            length: 4096,
            errno: 5,
        };
        assert!(!eio.write_definitely_not_applied());
        let line = ChaosError::HistoryLine {
            line: 7,
            reason: "x".into(),
        };
        assert!(line.to_string().contains("line 7"));
        assert!(!line.is_retryable());
    }
}
