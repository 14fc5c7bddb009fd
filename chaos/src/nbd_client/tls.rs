//! The client side of NBD over TLS (`NBD_OPT_STARTTLS`): which certificate the client presents
//! and which server certificate it accepts ([`NbdClientTls`]), and the socket type the client
//! reads and writes (plaintext TCP, or TLS over it after the upgrade).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::ChaosError;

/// A byte stream the client speaks NBD over: a TCP socket or TLS over it.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream of one connection.
pub(super) type Stream = Box<dyn Io>;

/// How a client upgrades to TLS with `NBD_OPT_STARTTLS`: the rustls client configuration (the
/// roots that the server's certificate must chain to, and the client certificate presented;
/// e.g. [`tandem_core::net::Net::nbd_client_config`]) and the node id the server's certificate
/// must carry as a DNS name (the replicator that serves the export). Cheap to clone.
#[derive(Clone)]
pub struct NbdClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    node: String,
}

impl std::fmt::Debug for NbdClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClientTls")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NbdClientTls {
    /// TLS with `config`, expecting the server to present the certificate of node `node`.
    ///
    /// # Errors
    /// `Config` when `node` is not a valid DNS name.
    pub fn new(config: Arc<rustls::ClientConfig>, node: &str) -> Result<Self, ChaosError> {
        let server_name =
            ServerName::try_from(node.to_owned()).map_err(|e| ChaosError::Config {
                field: "nbd tls server name",
                reason: format!("{node:?} is not a DNS name: {e}"),
            })?;
        Ok(Self {
            config,
            server_name,
            node: node.to_owned(),
        })
    }

    /// The node whose certificate the server must present.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Runs the client side of the TLS handshake on `tcp` (right after the server's
    /// `NBD_REP_ACK` to `NBD_OPT_STARTTLS`).
    ///
    /// # Errors
    /// `Io` naming the address and the expected node: the server's certificate does not chain
    /// to the roots or does not name the node, the server is not speaking TLS, ...
    pub(super) async fn upgrade(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<Stream, ChaosError> {
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                ChaosError::io(
                    format!(
                        "nbd TLS handshake with {addr} (expecting the certificate of node {})",
                        self.node
                    ),
                    e,
                )
            })?;
        Ok(Box::new(tls))
    }
}
