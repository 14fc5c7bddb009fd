//! What the runner needs from the program that runs it and cannot build itself without
//! linking the replicator or the CLI: the network identity it dials with, the reader of
//! quarantine files, and the verifier of database groups. Pure: types only.

use std::path::{Path, PathBuf};

use tandem_core::config::Topology;
use tandem_core::net::Net;

/// One quarantine file of a replicator: the blocks a resync kept aside.
pub struct KeptCopy {
    /// How many blocks it keeps.
    pub blocks: usize,
    /// The bytes it keeps of `[offset, offset + len)`, if it keeps all of them.
    pub range: Box<dyn Fn(u64, u64) -> Option<Vec<u8>>>,
}

/// Reads the quarantine files of resource `resource` in a folder.
pub type QuarantineReader = dyn Fn(&Path, &str) -> Vec<(PathBuf, Result<KeptCopy, String>)>;

/// Verifies a database group (`tandem verify GROUP` with the runner's topology file).
pub type DatabaseVerifier = dyn Fn(&Path, &str) -> anyhow::Result<()>;

/// The caller's side of a run.
pub struct Host<'a> {
    /// The network context for a scenario's topology (the CLI: its identity's certificate).
    pub net: &'a dyn Fn(&Topology) -> anyhow::Result<Net>,
    /// Reads quarantine files (their format belongs to the replicator).
    pub quarantine: &'a QuarantineReader,
    /// Verifies a database group: SQLite digests belong to the replicator; volumes are
    /// verified by the runner itself through the `Verify` RPC.
    pub verify_database: &'a DatabaseVerifier,
}
