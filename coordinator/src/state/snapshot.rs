//! The durable snapshot of the [`State`]: JSON with magic, version and a blake3 checksum of the
//! state body, written byte-identically for identical states and read back with every check
//! (magic, version, checksum, audit chain). Pure: bytes in, bytes out.

use super::machine::State;
use crate::error::Error;
use serde::Deserialize;

/// Magic string at the start of a state snapshot.
pub const SNAPSHOT_MAGIC: &str = "tandem-coordinator-state";
/// Version of the snapshot format this build writes. Version 2: the audit chain may be a head and
/// a tail (`{"next_index", "head_hash", "tail"}`) instead of every record; this build reads
/// versions 1 and 2.
pub const SNAPSHOT_VERSION: u32 = 2;
/// Oldest snapshot version this build reads.
pub const SNAPSHOT_VERSION_MIN: u32 = 1;

/// Header of a snapshot, read first so a newer version is refused before its body is parsed.
#[derive(Deserialize)]
struct SnapshotHeader {
    magic: String,
    version: u32,
}

/// A whole snapshot as read back.
#[derive(Deserialize)]
struct SnapshotFile {
    checksum: String,
    state: State,
}

impl State {
    /// Serializes the state as a JSON snapshot:
    /// `{"magic":"tandem-coordinator-state","version":2,"checksum":"<blake3 hex of state>","state":{...}}`.
    /// Byte-identical for identical states.
    pub fn snapshot(&self) -> Vec<u8> {
        // Serializing strings, integers, maps with string keys and `Value`s cannot fail.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let checksum = blake3::hash(&body).to_hex();
        let mut out = Vec::with_capacity(body.len() + 160);
        out.extend_from_slice(
            format!(
                "{{\"magic\":\"{SNAPSHOT_MAGIC}\",\"version\":{SNAPSHOT_VERSION},\"checksum\":\"{checksum}\",\"state\":"
            )
            .as_bytes(),
        );
        out.extend_from_slice(&body);
        out.push(b'}');
        out
    }

    /// Reads a snapshot written by [`State::snapshot`] (or by a build of version 1), checking
    /// magic, version, checksum and the audit chain (the tail, ending at the head, when the
    /// chain is a head and a tail).
    ///
    /// # Errors
    /// [`Error::SnapshotDecode`], [`Error::SnapshotMagic`], [`Error::SnapshotVersion`],
    /// [`Error::SnapshotChecksum`], or [`Error::Chain`] naming the first bad audit record.
    pub fn restore(bytes: &[u8]) -> Result<State, Error> {
        let header: SnapshotHeader =
            serde_json::from_slice(bytes).map_err(|e| Error::SnapshotDecode {
                detail: e.to_string(),
            })?;
        if header.magic != SNAPSHOT_MAGIC {
            return Err(Error::SnapshotMagic {
                found: header.magic,
                expected: SNAPSHOT_MAGIC,
            });
        }
        if !(SNAPSHOT_VERSION_MIN..=SNAPSHOT_VERSION).contains(&header.version) {
            return Err(Error::SnapshotVersion {
                found: header.version,
                supported: SNAPSHOT_VERSION,
            });
        }
        let file: SnapshotFile =
            serde_json::from_slice(bytes).map_err(|e| Error::SnapshotDecode {
                detail: e.to_string(),
            })?;
        let body = serde_json::to_vec(&file.state).map_err(|e| Error::SnapshotDecode {
            detail: e.to_string(),
        })?;
        let computed = blake3::hash(&body).to_hex().to_string();
        if computed != file.checksum {
            return Err(Error::SnapshotChecksum {
                stored: file.checksum,
                computed,
            });
        }
        file.state.audit.verify()?;
        Ok(file.state)
    }
}
