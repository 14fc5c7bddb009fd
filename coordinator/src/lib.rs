//! Tandem coordinator: raft node, sled raft storage, peer transport, state machine, leases, audit chain, admin API.

pub mod raft;
