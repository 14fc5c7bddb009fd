//! Tandem chaos harness: fault proxy, process, disk and clock faults, workloads and checkers.
//!
//! - [`sim`]: a deterministic, seeded simulation of the coordinators (raft-rs over an in-memory
//!   network, the replicated state machine, faults) with invariants checked after every step.

pub mod sim;
