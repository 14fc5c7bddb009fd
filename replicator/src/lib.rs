//! Tandem replicator: capture sources, journal, shipper, receiver/applier, merkle verify and
//! resync.
//!
//! - [`nbd`]: the NBD server that captures every write of a protected volume.
//! - [`volume`]: the `VolumeBackend` trait the NBD server writes through, and `FileVolume`.
//! - [`merkle`]: merkle trees of blake3 block hashes, their diff and wire form (pure).
//! - [`scan`]: hashing files into trees, and the `scan` capture source built on it.
//! - [`resync`]: resync and verify of a resource between two replicators over gRPC, client
//!   and server side.

pub mod merkle;
pub mod nbd;
pub mod resync;
pub mod scan;
pub mod volume;
