//! NBD capture source: Tandem serves protected volumes over the NBD protocol so that every
//! write passes through a [`VolumeBackend`](crate::volume::VolumeBackend) (and so through the
//! journal).
//!
//! - [`proto`]: pure wire format (parsers, validation, reply encoders); no I/O.
//! - [`slots`]: connection admission (total and per-peer caps on transmission slots).
//! - [`server`]: the TCP server; the only module here that touches sockets.
//! - [`tls`]: NBD over TLS (`NBD_OPT_STARTTLS`) with the cluster's certificates.

pub mod proto;
pub mod server;
pub mod slots;
pub mod tls;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::volume::VolumeBackend;

pub use server::{serve, serve_with, serve_with_tls, ServerOptions};
pub use slots::SlotRefusal;
pub use tls::NbdTls;

/// Errors of the NBD server and its export table.
#[derive(Debug, Error)]
pub enum NbdError {
    /// Socket I/O failed (includes the client closing mid-message).
    #[error("nbd socket i/o: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol; the session was closed.
    #[error("nbd protocol violation: {0}")]
    Protocol(#[from] proto::ProtoError),
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist; the spec allows only closing.
    #[error("client asked for unknown export {name:?} with NBD_OPT_EXPORT_NAME")]
    UnknownExport {
        /// The requested name.
        name: String,
    },
    /// The client did not reach transmission within the handshake timeout; it was dropped.
    #[error("nbd client did not finish the handshake within {after:?}; dropped")]
    HandshakeTimeout {
        /// The handshake timeout.
        after: Duration,
    },
    /// A connection in transmission sent no request (or stalled mid-request, or did not read
    /// its reply) for the idle timeout; it was closed and its slot freed.
    #[error("nbd connection idle or stalled for {after:?}; closed")]
    IdleTimeout {
        /// The idle timeout.
        after: Duration,
    },
    /// The client asked for transmission with every slot it may have taken; with
    /// `NBD_OPT_EXPORT_NAME` (which cannot carry an error) the connection is closed.
    #[error("nbd client refused: {0}")]
    TooManyConnections(SlotRefusal),
    /// The server requires TLS and the client asked for an export with `NBD_OPT_EXPORT_NAME`
    /// before upgrading: that option cannot carry an error, so the connection was closed.
    #[error(
        "nbd client sent NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a TLS-only server; closed"
    )]
    TlsRequired,
    /// The client sent bytes after `NBD_OPT_STARTTLS` without waiting for its reply: they
    /// would be read as plaintext options after the upgrade (an injection); closed.
    #[error("nbd client sent {bytes} byte(s) after NBD_OPT_STARTTLS before its reply; closed")]
    StartTlsPipelined {
        /// How many bytes were waiting.
        bytes: usize,
    },
    /// The TLS handshake after `NBD_OPT_STARTTLS` failed (no client certificate, one that does
    /// not chain to the cluster's roots, not TLS at all, ...).
    #[error("nbd TLS handshake refused: {0}")]
    TlsHandshake(String),
    /// The client's certificate may not use NBD (a read-only role) and it asked for an export
    /// with `NBD_OPT_EXPORT_NAME`, which cannot carry an error; closed.
    #[error("nbd client refused: {0}")]
    NotAllowed(String),
    /// The server was asked for TLS without certificates to present.
    #[error("nbd TLS configuration: {0}")]
    TlsConfig(String),
    /// An export name given to [`ExportMap::insert`] cannot be served.
    #[error("invalid export name {name:?}: {reason}")]
    InvalidExportName {
        /// The name.
        name: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

impl NbdError {
    /// Whether a client may succeed by reconnecting (socket trouble), as opposed to a request
    /// that will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            NbdError::Io(_) | NbdError::IdleTimeout { .. } | NbdError::TooManyConnections(_)
        )
    }
}

/// The exports a server offers, by name. Names are listed in sorted order by `NBD_OPT_LIST`.
/// Exports may be added and removed while the server runs (a group moved onto or off this
/// replicator); a connection keeps the backend it negotiated.
#[derive(Default)]
pub struct ExportMap {
    exports: std::sync::RwLock<BTreeMap<String, Arc<dyn VolumeBackend>>>,
}

impl std::fmt::Debug for ExportMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportMap")
            .field("names", &self.names())
            .finish()
    }
}

impl ExportMap {
    /// An empty export table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an export.
    ///
    /// # Errors
    /// `InvalidExportName` when the name is over 4096 bytes or contains NUL.
    pub fn insert(
        &self,
        name: impl Into<String>,
        backend: Arc<dyn VolumeBackend>,
    ) -> Result<(), NbdError> {
        let name = name.into();
        if name.len() > proto::MAX_NAME_LEN {
            return Err(NbdError::InvalidExportName {
                name,
                reason: "longer than 4096 bytes",
            });
        }
        if name.contains('\0') {
            return Err(NbdError::InvalidExportName {
                name,
                reason: "contains NUL",
            });
        }
        self.write().insert(name, backend);
        Ok(())
    }

    /// Removes an export; connections that negotiated it keep their backend until they close.
    pub fn remove(&self, name: &str) -> Option<Arc<dyn VolumeBackend>> {
        self.write().remove(name)
    }

    /// The backend of an export.
    pub fn get(&self, name: &str) -> Option<Arc<dyn VolumeBackend>> {
        self.read().get(name).cloned()
    }

    /// Export names in sorted order.
    pub fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when there are no exports.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The table for reading; a writer that panicked left it whole (every change is one map
    /// operation), so a poisoned lock is read as is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn VolumeBackend>>> {
        self.exports
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<dyn VolumeBackend>>> {
        self.exports
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
