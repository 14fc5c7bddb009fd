//! Pure NBD wire format: the codec lives in core (`tandem_core::nbd`) so that the chaos
//! harness's client can use it without linking the replicator; this room re-exports it so
//! `tandem_replicator::nbd::proto::X` keeps naming every item (server, fuzz targets, tests).

pub use tandem_core::nbd::*;
