//! NBD over TLS (`NBD_OPT_STARTTLS`): the socket type the server reads and writes (plaintext
//! TCP, then TLS on the same socket after an upgrade) and the upgrade itself.
//!
//! The TLS configuration is the cluster's ([`Net::nbd_server_config`]): the replicator presents
//! its node certificate, and a client must present a certificate that chains to the cluster's
//! roots (`[tls] peer_ca` or `client_ca`); any other client fails the handshake. The files
//! loaded now are used for each handshake, so a certificate reload applies to the next client.

use std::sync::Arc;

use tandem_core::certs;
use tandem_core::net::Net;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

use super::NbdError;

/// A byte stream the NBD server speaks over: a TCP socket or TLS over it.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The stream of one connection.
pub(super) type Stream = Box<dyn Io>;

/// An NBD server's TLS: every client must upgrade with `NBD_OPT_STARTTLS` before any option
/// other than `NBD_OPT_ABORT` is served. Cheap to clone.
#[derive(Clone)]
pub struct NbdTls {
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// The process's network context: reloads apply.
    Net(Net),
    /// A fixed configuration (tests, tools without a topology).
    Fixed(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Net(net) => net.identity().unwrap_or("?").to_owned(),
            Source::Fixed(_) => "fixed configuration".to_owned(),
        };
        f.debug_struct("NbdTls").field("identity", &source).finish()
    }
}

impl NbdTls {
    /// TLS with the certificates of `net` (the node's identity and the cluster's roots).
    ///
    /// # Errors
    /// [`NbdError::TlsConfig`] when `net` is plaintext (`[tls] insecure = true`): there is no
    /// certificate to present.
    pub fn from_net(net: Net) -> Result<NbdTls, NbdError> {
        if net.nbd_server_config().is_none() {
            return Err(NbdError::TlsConfig(
                "NBD over TLS needs the cluster's certificates, but [tls] insecure = true"
                    .to_owned(),
            ));
        }
        Ok(NbdTls {
            source: Source::Net(net),
        })
    }

    /// TLS with a fixed rustls configuration (which must require client certificates).
    pub fn from_config(config: Arc<rustls::ServerConfig>) -> NbdTls {
        NbdTls {
            source: Source::Fixed(config),
        }
    }

    fn config(&self) -> Result<Arc<rustls::ServerConfig>, NbdError> {
        match &self.source {
            Source::Net(net) => net
                .nbd_server_config()
                .ok_or_else(|| NbdError::TlsConfig("the network context is plaintext".into())),
            Source::Fixed(c) => Ok(Arc::clone(c)),
        }
    }

    /// Runs the server side of the TLS handshake on `stream` (right after the `NBD_REP_ACK`
    /// to `NBD_OPT_STARTTLS`). Returns the TLS stream and who the client certificate names
    /// (with the reason it may not use NBD, if it may not).
    ///
    /// # Errors
    /// [`NbdError::TlsHandshake`]: the handshake failed (no client certificate, one from
    /// another CA, an expired one, not TLS at all, ...).
    pub(super) async fn upgrade(&self, stream: Stream) -> Result<(Stream, Peer), NbdError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config()?);
        let tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| NbdError::TlsHandshake(e.to_string()))?;
        let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => match certs::parse_cert(leaf) {
                Ok(info) => Peer {
                    refusal: refusal(&info.subject),
                    name: info.subject.to_string(),
                },
                Err(e) => Peer {
                    name: format!("unreadable certificate: {e}"),
                    refusal: Some("the client certificate cannot be read".to_owned()),
                },
            },
            // rustls requires a certificate; this is only a guard.
            None => Peer {
                name: "no certificate".to_owned(),
                refusal: Some("no client certificate".to_owned()),
            },
        };
        Ok((Box::new(tls), peer))
    }
}

/// Who an upgraded client is, and why it may not use NBD (if it may not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Peer {
    /// What its certificate names (`node app-host`, `alice (operator)`).
    pub(super) name: String,
    /// Why it is refused every option (`NBD_REP_ERR_POLICY`), or `None`.
    pub(super) refusal: Option<String>,
}

/// Which certificates may read and write volumes over NBD: node certificates (a replicator,
/// or a host certificate issued with `tandem certs rotate --node HOST`) and the operator
/// role. The auditor and viewer roles are read-only roles of the admin API, and a certificate
/// that names neither a node nor a role is nobody's: both are refused.
fn refusal(subject: &certs::CertSubject) -> Option<String> {
    match subject {
        certs::CertSubject::Node(_)
        | certs::CertSubject::Client {
            role: certs::Role::Operator,
            ..
        } => None,
        other => Some(format!(
            "the certificate of {other} may not use NBD (node or operator certificates only)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::certs::{CertSubject, Role};

    #[test]
    fn nodes_and_operators_may_use_nbd_and_read_only_roles_may_not() {
        assert_eq!(refusal(&CertSubject::Node("app-host".into())), None);
        let client = |role| CertSubject::Client {
            name: "x".into(),
            role,
        };
        assert_eq!(refusal(&client(Role::Operator)), None);
        for role in [Role::Auditor, Role::Viewer] {
            let why = refusal(&client(role)).unwrap();
            assert!(
                why.contains(&format!("x ({role}) may not use NBD")),
                "{why}"
            );
        }
        assert!(refusal(&CertSubject::Unknown("CN=?".into())).is_some());
    }
}
