//! Tandem coordinator: raft node, sled raft storage, peer transport, state machine, leases, audit chain, admin API.

//!
//!   deterministic: topology, roles, epochs, leases, RPO history.
//! - [`audit`]: the blake3-chained audit log kept in that state, and its verifier.
//! - [`error`]: the crate's error type.
//! - [`state`]: the replicated state machine (`apply(state, command) -> events`), pure and
pub mod audit;
pub mod error;
pub mod state;
pub mod status;
