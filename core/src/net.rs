//! The one place that makes gRPC client channels and servers for a node: plaintext or mutual TLS.
//!
//! A [`Net`] is built once per process from the topology's `[tls]` section and the process's
//! identity: [`Net::for_node`] for replicators and coordinators (their `NODE.pem`),
//! [`Net::for_client`] for the CLI (a role certificate such as `operator.pem`), or
//! [`Net::plaintext`] for tests of pieces that have no topology.
//!
//! - Clients: [`Net::endpoint`] makes a `tonic` [`Endpoint`] (TCP_NODELAY on), and
//!   [`Net::connect`] / [`Net::connect_lazy`] open it. With TLS the server's certificate must
//!   carry, as a DNS SAN, the id of the node that listens at that address in the topology.
//! - Servers: [`Net::serve`] serves a router on a listener; with TLS every client must present a
//!   certificate chaining to the peer or client roots.
//! - Identity: [`Net::caller`] tells who called (from the client certificate), and
//!   [`Net::check_node`] refuses a node certificate that speaks as another node.
//! - Rotation: [`Net::spawn_reloader`] re-reads the certificate and root files when they change
//!   (polled) or on SIGHUP; new connections use the new files, existing ones go on.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{info, warn};

use crate::certs::{self, CertSubject, Role};
use crate::config::Topology;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a network context or a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A certificate, key or roots file is missing or bad.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration from {}: {reason}", path.display())]
    Config {
        /// The certificate file.
        path: PathBuf,
        /// rustls's message.
        reason: String,
    },
    /// The node is not in the topology.
    #[error("no node named {0} in the topology")]
    UnknownNode(String),
    /// An address that names no node of the topology (TLS needs the node id to verify).
    #[error("{0} is not the listen address of any node in the topology: cannot tell which node certificate to expect")]
    UnknownPeer(String),
    /// A malformed address.
    #[error("bad address {addr}: {reason}")]
    Address {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection failed.
    #[error("connect {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why (with the transport's cause chain).
        reason: String,
    },
}

impl NetError {
    /// True when trying again might succeed (a connection failure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, NetError::Connect { .. })
    }
}

/// Who called a server, as its client certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plaintext (`insecure = true`): nobody is authenticated.
    Anonymous,
    /// A node of the topology.
    Node(String),
    /// A person or tool with an admin role.
    Client {
        /// The certificate's name (CN).
        name: String,
        /// The certificate's role (OU).
        role: Role,
    },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("anonymous (plaintext)"),
            Caller::Node(n) => write!(f, "node {n}"),
            Caller::Client { name, role } => write!(f, "{name} ({role})"),
        }
    }
}

/// The files of one TLS identity.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    peer_ca: PathBuf,
    client_ca: PathBuf,
}

impl Files {
    fn all(&self) -> [&Path; 4] {
        [&self.cert, &self.key, &self.peer_ca, &self.client_ca]
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.all()
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// Configurations built from the files; replaced whole on reload.
struct Loaded {
    server: Arc<rustls::ServerConfig>,
    /// As `server`, without the HTTP/2 ALPN: for NBD's `STARTTLS`.
    nbd: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    peer_verifier: Arc<dyn ClientCertVerifier>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    not_after: i64,
    stamps: Vec<Option<SystemTime>>,
}

struct TlsCtx {
    name: String,
    files: Files,
    reload_every: Duration,
    loaded: RwLock<Arc<Loaded>>,
}

struct Inner {
    tls: Option<TlsCtx>,
    /// listen address (host:port) -> node id, for the server name to verify.
    addrs: HashMap<String, String>,
}

/// The network context of one process: plaintext or mTLS, cheap to clone.
#[derive(Clone)]
pub struct Net {
    inner: Arc<Inner>,
}

impl Default for Net {
    /// Plaintext, as [`Net::plaintext`].
    fn default() -> Net {
        Net::plaintext()
    }
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("tls", &self.is_tls())
            .field("identity", &self.identity())
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_err(path: &Path) -> impl Fn(rustls::Error) -> NetError + '_ {
    move |e| NetError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, NetError> {
    let mut store = rustls::RootCertStore::empty();
    for der in certs::read_pem_certs(path)? {
        store
            .add(CertificateDer::from(der))
            .map_err(config_err(path))?;
    }
    Ok(Arc::new(store))
}

fn load(files: &Files) -> Result<Loaded, NetError> {
    let stamps = files.stamps();
    let chain: Vec<CertificateDer<'static>> = certs::read_pem_certs(&files.cert)?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let not_after = chain
        .first()
        .map(|c| certs::parse_cert(c))
        .transpose()
        .map_err(|reason| certs::CertError::Parse {
            path: files.cert.clone(),
            reason,
        })?
        .map_or(0, |i| i.not_after);
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| certs::CertError::Parse {
        path: files.key.clone(),
        reason: format!("not a PEM private key: {e:?}"),
    })?;
    let peer_roots = roots(&files.peer_ca)?;
    let client_roots = roots(&files.client_ca)?;
    let mut both = (*peer_roots).clone();
    if files.client_ca != files.peer_ca {
        both.roots.extend(client_roots.roots.iter().cloned());
    }
    let verifier = |r: Arc<rustls::RootCertStore>| {
        rustls::server::WebPkiClientVerifier::builder_with_provider(r, provider())
            .build()
            .map_err(|e| NetError::Config {
                path: files.peer_ca.clone(),
                reason: e.to_string(),
            })
    };
    let any_verifier = verifier(Arc::new(both))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err(&files.cert))?
        .with_client_cert_verifier(any_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config_err(&files.cert))?;
    let nbd = server.clone();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_err(&files.cert))?
        .with_root_certificates(peer_roots.clone())
        .with_client_auth_cert(chain, key)
        .map_err(config_err(&files.cert))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        nbd: Arc::new(nbd),
        client: Arc::new(client),
        peer_verifier: verifier(peer_roots)?,
        client_verifier: verifier(client_roots)?,
        not_after,
        stamps,
    })
}

fn strip_scheme(addr: &str) -> &str {
    addr.strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr)
        .trim_end_matches('/')
}

impl Net {
    /// Plaintext on every link, for tests of pieces without a topology.
    pub fn plaintext() -> Net {
        Net {
            inner: Arc::new(Inner {
                tls: None,
                addrs: HashMap::new(),
            }),
        }
    }

    fn build(topo: &Topology, name: &str, files: Files) -> Result<Net, NetError> {
        let addrs = topo
            .nodes
            .iter()
            .map(|n| (n.listen.clone(), n.name.clone()))
            .collect();
        if topo.tls.insecure {
            return Ok(Net {
                inner: Arc::new(Inner { tls: None, addrs }),
            });
        }
        let loaded = load(&files)?;
        let net = Net {
            inner: Arc::new(Inner {
                tls: Some(TlsCtx {
                    name: name.to_owned(),
                    files,
                    reload_every: topo.tls.reload_interval.as_duration(),
                    loaded: RwLock::new(Arc::new(loaded)),
                }),
                addrs,
            }),
        };
        net.publish_expiry();
        Ok(net)
    }

    /// The context of node `node`: its certificate `DIR/NODE.pem`, or plaintext when the
    /// topology says `insecure = true`.
    ///
    /// # Errors
    /// [`NetError::UnknownNode`], or a [`NetError::Cert`] / [`NetError::Config`] naming the file.
    pub fn for_node(topo: &Topology, node: &str) -> Result<Net, NetError> {
        if topo.node(node).is_none() {
            return Err(NetError::UnknownNode(node.to_owned()));
        }
        let t = &topo.tls;
        let files = Files {
            cert: certs::cert_path(&t.dir, node),
            key: certs::key_path(&t.dir, node),
            peer_ca: t.peer_ca_path(),
            client_ca: t.client_ca_path(),
        };
        Net::build(topo, node, files)
    }

    /// The context of a client (the CLI) with identity `identity`: `DIR/IDENTITY.pem`, or an
    /// explicit certificate and key.
    ///
    /// # Errors
    /// A [`NetError::Cert`] / [`NetError::Config`] naming the file.
    pub fn for_client(
        topo: &Topology,
        identity: &str,
        cert_key: Option<(PathBuf, PathBuf)>,
    ) -> Result<Net, NetError> {
        let t = &topo.tls;
        let (cert, key) = cert_key.unwrap_or_else(|| {
            (
                certs::cert_path(&t.dir, identity),
                certs::key_path(&t.dir, identity),
            )
        });
        let files = Files {
            cert,
            key,
            peer_ca: t.peer_ca_path(),
            client_ca: t.client_ca_path(),
        };
        Net::build(topo, identity, files)
    }

    /// True when links use mutual TLS.
    pub fn is_tls(&self) -> bool {
        self.inner.tls.is_some()
    }

    /// The identity this context presents (node id or client identity); `None` in plaintext.
    pub fn identity(&self) -> Option<&str> {
        self.inner.tls.as_ref().map(|t| t.name.as_str())
    }

    /// The TLS server configuration for NBD (`NBD_OPT_STARTTLS`), from the files loaded now (a
    /// reload applies to the next handshake): this process's certificate, and a client
    /// certificate required that chains to the peer or client roots. `None` in plaintext.
    pub fn nbd_server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.tls.as_ref().map(|t| current(t).nbd.clone())
    }

    /// The TLS client configuration for NBD (`NBD_OPT_STARTTLS` to a replicator's export), from
    /// the files loaded now: this process's certificate presented, the server's verified
    /// against the peer roots; as the gRPC client's without the HTTP/2 ALPN. `None` in
    /// plaintext.
    pub fn nbd_client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner.tls.as_ref().map(|t| {
            let mut config = (*current(t).client).clone();
            config.alpn_protocols.clear();
            Arc::new(config)
        })
    }

    /// Not-after of this process's own certificate, unix seconds; `None` in plaintext.
    pub fn cert_not_after(&self) -> Option<i64> {
        self.inner.tls.as_ref().map(|t| current(t).not_after)
    }

    fn publish_expiry(&self) {
        if let (Some(name), Some(at)) = (self.identity(), self.cert_not_after()) {
            crate::metrics::global()
                .gauge(
                    "tandem_cert_expiry_seconds",
                    "Not-after of this process's TLS certificate, unix seconds.",
                    &[("node", name)],
                )
                .set(at as f64);
        }
    }

    /// A client endpoint for `addr` (`host:port` or `http://host:port`), TCP_NODELAY on.
    ///
    /// # Errors
    /// [`NetError::Address`] when `addr` is not a valid URI authority.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, NetError> {
        let uri = format!("http://{}", strip_scheme(addr));
        Endpoint::from_shared(uri)
            .map(|e| e.tcp_nodelay(true))
            .map_err(|e| NetError::Address {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })
    }

    /// The node id that listens at `addr` in the topology.
    pub fn node_at(&self, addr: &str) -> Option<&str> {
        self.inner.addrs.get(strip_scheme(addr)).map(String::as_str)
    }

    fn connector(&self, ep: &Endpoint, node: Option<&str>) -> Result<Option<Connector>, NetError> {
        let Some(tls) = &self.inner.tls else {
            return Ok(None);
        };
        let addr = ep
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let node = match node {
            Some(n) => n.to_owned(),
            None => self
                .node_at(&addr)
                .ok_or_else(|| NetError::UnknownPeer(addr.clone()))?
                .to_owned(),
        };
        let server_name = ServerName::try_from(node.clone()).map_err(|e| NetError::Address {
            addr: node.clone(),
            reason: format!("not a DNS name: {e}"),
        })?;
        Ok(Some(Connector {
            config: current(tls).client.clone(),
            server_name,
        }))
    }

    /// Connects `ep`; with TLS the server must prove it is the node the topology places at
    /// that address.
    ///
    /// # Errors
    /// [`NetError::UnknownPeer`] (TLS, address not in the topology), [`NetError::Connect`].
    pub async fn connect(&self, ep: Endpoint) -> Result<Channel, NetError> {
        self.connect_as(ep, None).await
    }

    /// As [`Net::connect`], expecting node `node` (when the address is not in the topology, as
    /// behind a proxy the topology does not know).
    ///
    /// # Errors
    /// As [`Net::connect`].
    pub async fn connect_to(&self, ep: Endpoint, node: &str) -> Result<Channel, NetError> {
        self.connect_as(ep, Some(node)).await
    }

    async fn connect_as(&self, ep: Endpoint, node: Option<&str>) -> Result<Channel, NetError> {
        let addr = ep.uri().to_string();
        let res = match self.connector(&ep, node)? {
            None => ep.connect().await,
            Some(c) => ep.connect_with_connector(c).await,
        };
        res.map_err(|e| NetError::Connect {
            addr,
            reason: error_chain(&e),
        })
    }

    /// A channel to `ep` that connects on first use (and reconnects by itself).
    ///
    /// # Errors
    /// [`NetError::UnknownPeer`] (TLS, address not in the topology).
    pub fn connect_lazy(&self, ep: Endpoint) -> Result<Channel, NetError> {
        Ok(match self.connector(&ep, None)? {
            None => ep.connect_lazy(),
            Some(c) => ep.connect_with_connector_lazy(c),
        })
    }

    /// Serves `router` on `listener` until `shutdown` completes. With TLS each accepted
    /// connection completes a handshake (client certificate required) before it reaches the
    /// router; a failed handshake is logged and dropped. TCP_NODELAY is set on every socket.
    ///
    /// # Errors
    /// The transport error.
    pub async fn serve(
        &self,
        router: tonic::transport::server::Router,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let Some(_) = &self.inner.tls else {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            return router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>,
        >(64);
        let net = self.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (sock, peer) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                let Some(tls) = &net.inner.tls else { return };
                let acceptor = tokio_rustls::TlsAcceptor::from(current(tls).server.clone());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send(Ok(s)).await;
                        }
                        Ok(Err(e)) => warn!(%peer, "TLS handshake refused: {e}"),
                        Err(_) => warn!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let r = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        accept.abort();
        r
    }

    /// Who made `req`, from its client certificate, re-verified against the roots of its kind
    /// (node certificates against `peer_ca`, role certificates against `client_ca`).
    ///
    /// # Errors
    /// `Unauthenticated` when TLS is on and the certificate is missing, unknown or does not
    /// chain to the roots of its kind.
    pub fn caller<T>(&self, req: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        let Some(tls) = &self.inner.tls else {
            return Ok(Caller::Anonymous);
        };
        let certs = req
            .peer_certs()
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| tonic::Status::unauthenticated("no client certificate"))?;
        let info = certs::parse_cert(leaf).map_err(tonic::Status::unauthenticated)?;
        let loaded = current(tls);
        let (caller, verifier) = match info.subject {
            CertSubject::Node(n) => (Caller::Node(n), &loaded.peer_verifier),
            CertSubject::Client { name, role } => {
                (Caller::Client { name, role }, &loaded.client_verifier)
            }
            CertSubject::Unknown(s) => {
                return Err(tonic::Status::unauthenticated(format!(
                    "client certificate names neither a node nor a role: {s}"
                )))
            }
        };
        verifier
            .verify_client_cert(leaf, &certs[1..], UnixTime::now())
            .map_err(|e| {
                tonic::Status::unauthenticated(format!(
                    "certificate of {caller} is not trusted for its kind: {e}"
                ))
            })?;
        Ok(caller)
    }

    /// Refuses `req` unless its certificate names node `claimed` (plaintext accepts anyone).
    ///
    /// # Errors
    /// `PermissionDenied` naming both ids when the certificate names another node or a client;
    /// `Unauthenticated` as [`Net::caller`].
    pub fn check_node<T>(
        &self,
        req: &tonic::Request<T>,
        claimed: &str,
    ) -> Result<(), tonic::Status> {
        match self.caller(req)? {
            Caller::Anonymous => Ok(()),
            Caller::Node(n) if n == claimed => Ok(()),
            other => Err(tonic::Status::permission_denied(format!(
                "certificate names {other} but the request claims to be node {claimed}"
            ))),
        }
    }

    /// Refuses `req` unless it comes from a node of the topology (any node; plaintext accepts
    /// anyone). Returns the node id (`None` in plaintext).
    ///
    /// # Errors
    /// `PermissionDenied` for a client certificate; `Unauthenticated` as [`Net::caller`].
    pub fn require_node<T>(
        &self,
        req: &tonic::Request<T>,
    ) -> Result<Option<String>, tonic::Status> {
        match self.caller(req)? {
            Caller::Anonymous => Ok(None),
            Caller::Node(n) if self.inner.addrs.values().any(|v| *v == n) => Ok(Some(n)),
            other => Err(tonic::Status::permission_denied(format!(
                "certificate names {other}, not a node of this topology"
            ))),
        }
    }

    /// Re-reads the certificate, key and roots files now.
    ///
    /// # Errors
    /// As [`Net::for_node`]; the old configuration stays in force.
    pub fn reload(&self) -> Result<bool, NetError> {
        let Some(tls) = &self.inner.tls else {
            return Ok(false);
        };
        let loaded = load(&tls.files)?;
        let at = loaded.not_after;
        if let Ok(mut g) = tls.loaded.write() {
            *g = Arc::new(loaded);
        }
        self.publish_expiry();
        info!(identity = %tls.name, not_after = at, "TLS certificate files reloaded");
        Ok(true)
    }

    /// Starts the task that reloads the files when they change (polled every
    /// `[tls] reload_interval`) or on SIGHUP. Does nothing in plaintext.
    pub fn spawn_reloader(&self) {
        let Some(tls) = &self.inner.tls else {
            warn!(
                "TLS is OFF (`[tls] insecure = true`): every link is plaintext and unauthenticated"
            );
            return;
        };
        let every = tls.reload_every.max(Duration::from_millis(100));
        let net = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = {
                    let hup_recv = async {
                        match hup.as_mut() {
                            Some(h) => {
                                h.recv().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(every) => false,
                        _ = hup_recv => true,
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    tokio::time::sleep(every).await;
                    false
                };
                let Some(tls) = &net.inner.tls else { return };
                if !forced && current(tls).stamps == tls.files.stamps() {
                    continue;
                }
                if let Err(e) = net.reload() {
                    warn!(identity = %tls.name, "TLS reload failed, keeping the old certificate: {e}");
                }
            }
        });
    }
}

fn current(tls: &TlsCtx) -> Arc<Loaded> {
    match tls.loaded.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// An error with its sources, `a: b: c` (tonic's transport errors hide the cause otherwise).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The client side of a TLS connection: dials TCP, then TLS with the expected node id.
#[derive(Clone)]
struct Connector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

type ConnectFuture = Pin<
    Box<
        dyn Future<
                Output = Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    std::io::Error,
                >,
            > + Send,
    >,
>;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        let name = self.server_name.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1");
            let port = uri.port_u16().unwrap_or(80);
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
