//! Tandem replicator: capture sources, journal, shipper, receiver/applier, merkle verify and resync.

pub mod nbd;
pub mod volume;
