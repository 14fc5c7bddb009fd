//! Tandem replicator: capture sources, journal, shipper, receiver/applier, merkle verify and resync.
//!
//! - [`merkle`]: merkle trees of blake3 block hashes, their diff and wire form (pure).
//! - [`scan`]: hashing files into trees, and the `scan` capture source built on it.
//! - [`resync`]: resync and verify of a resource between two replicators over gRPC, client
//!   and server side.

pub mod merkle;
pub mod resync;
pub mod scan;
