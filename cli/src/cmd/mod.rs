//! One module per subcommand, each with `run(args) -> Result<()>`.

pub mod action;
pub mod bench;
pub mod bench_cluster;
pub mod bench_disk;
pub mod bench_hostloss;
pub mod bench_scale;
pub mod certs;
pub mod chaos;
pub mod config;
pub mod demo;
pub mod evidence;
pub mod local;
pub mod move_group;
pub mod node;
pub mod ops;
pub mod pitr;
pub mod probe;
pub mod quarantine;
pub mod resync;
pub mod review;
pub mod runbook;
pub mod runs;
pub mod status;
pub mod verify;
pub mod wal;
pub mod wal_rejoin;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use tandem_core::client::{Cluster, Replicator};
use tandem_core::config::{ConfigError, Topology};
use tandem_core::net::{Net, NetError};

/// Who the CLI is on the wire: a certificate of the topology's `[tls] dir` by name, or an
/// explicit certificate and key.
#[derive(Debug, Clone)]
pub struct Identity {
    /// File name (without `.pem`) in the certificate folder: `operator`, `auditor`, ...
    pub name: String,
    /// Explicit certificate and key, overriding `name`.
    pub cert_key: Option<(PathBuf, PathBuf)>,
}

static IDENTITY: OnceLock<Identity> = OnceLock::new();
static TOPOLOGY: Mutex<Option<Topology>> = Mutex::new(None);
static NET: Mutex<Option<Net>> = Mutex::new(None);

/// Sets the CLI's identity (from the global `--identity`, `--cert`, `--key` flags).
pub fn set_identity(id: Identity) {
    let _ = IDENTITY.set(id);
}

/// Loads a topology and remembers it as the one whose `[tls]` settings the CLI's connections
/// use.
///
/// # Errors
/// As [`Topology::load`].
pub fn load_topology(path: &Path) -> Result<Topology, ConfigError> {
    let topo = Topology::load(path)?;
    use_topology(&topo);
    Ok(topo)
}

/// Remembers `topo` for the CLI's connections; a different topology (the chaos runner loads
/// one per scenario) replaces it and the next [`net`] is built from it.
pub fn use_topology(topo: &Topology) {
    // Lock order as in `net`: NET, then TOPOLOGY.
    let mut n = NET.lock().unwrap_or_else(|p| p.into_inner());
    let mut t = TOPOLOGY.lock().unwrap_or_else(|p| p.into_inner());
    if t.as_ref() != Some(topo) {
        *t = Some(topo.clone());
        *n = None;
    }
}

/// The CLI's network context: mTLS with its identity when a topology with TLS was loaded,
/// plaintext when none was (only `--addr` given) or it says `insecure = true`.
///
/// # Errors
/// The identity's certificate files are missing or bad.
pub fn net() -> Result<Net, NetError> {
    let mut n = NET.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(net) = n.as_ref() {
        return Ok(net.clone());
    }
    let mut topo = TOPOLOGY.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if topo.is_none() {
        // Commands that take only `--addr` (probe, run by runbooks) still dial with the
        // topology named by TANDEM_CONFIG, when there is one.
        if let Some(p) = std::env::var_os("TANDEM_CONFIG") {
            let path = PathBuf::from(p);
            topo = Some(Topology::load(&path).map_err(|e| NetError::Config {
                path: path.clone(),
                reason: e.to_string(),
            })?);
        }
    }
    let net = match topo {
        Some(t) => {
            let id = IDENTITY.get().cloned().unwrap_or(Identity {
                name: "operator".into(),
                cert_key: None,
            });
            Net::for_client(&t, &id.name, id.cert_key)?
        }
        None => Net::plaintext(),
    };
    *n = Some(net.clone());
    Ok(net)
}

/// A client endpoint for `addr` through [`net`].
///
/// # Errors
/// As [`net`], or a bad address.
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, NetError> {
    net()?.endpoint(addr)
}

/// Connects an endpoint made by [`endpoint`] through [`net`].
pub trait ConnectNet {
    /// Connects; with TLS the server must prove it is the node that the topology places at
    /// the address.
    fn connect_net(
        self,
    ) -> impl std::future::Future<Output = Result<tonic::transport::Channel, NetError>> + Send;
}

impl ConnectNet for tonic::transport::Endpoint {
    async fn connect_net(self) -> Result<tonic::transport::Channel, NetError> {
        net()?.connect(self).await
    }
}

/// The coordinators at `addrs`, dialled through [`net`].
///
/// # Errors
/// As [`net`].
pub fn cluster(addrs: &[String]) -> Result<Cluster, NetError> {
    Ok(Cluster::new(net()?, addrs.to_vec()))
}

/// The replicator at `addr`, dialled through [`net`].
///
/// # Errors
/// As [`net`].
pub fn replicator(addr: &str) -> Result<Replicator, NetError> {
    Ok(Replicator::new(net()?, addr))
}
