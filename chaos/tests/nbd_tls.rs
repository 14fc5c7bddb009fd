//! The chaos NBD client over TLS (`NBD_OPT_STARTTLS`) against the replicator's real NBD server
//! with the cluster's certificates (`tandem certs init`): reads and writes with a node or
//! operator certificate, and clear, quick refusals for a plaintext client, a client with no,
//! a foreign or a read-only-role certificate, one expecting another node, one that does not
//! trust the cluster's CA, and a TLS client against a plaintext server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_chaos::nbd_client::{NbdClient, NbdClientTls, NbdPool};
use tandem_chaos::ChaosError;
use tandem_core::certs;
use tandem_core::config::Topology;
use tandem_core::nbd::{OPT_GO, OPT_STARTTLS, REP_ERR_POLICY, REP_ERR_TLS_REQD, REP_ERR_UNSUP};
use tandem_core::net::Net;
use tandem_replicator::nbd::{serve_with_tls, ExportMap, NbdTls, ServerOptions};
use tandem_replicator::volume::{FileVolume, VolumeBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const SIZE: u64 = 4 * 1024 * 1024;
/// The replicator whose certificate the server presents.
const NODE: &str = "a-rep";
/// Longest a refusal may take: far below the client's 10 s handshake timeout, so a refusal is
/// an answer and not a hang.
const QUICK: Duration = Duration::from_secs(3);

/// A topology whose `[tls] dir` is `dir` (three coordinators, two replicators).
fn topology(dir: &Path) -> Topology {
    let mut text = String::from("[cluster]\nname = \"t\"\n");
    for (site, witness) in [("a", false), ("b", false), ("w", true)] {
        text.push_str(&format!(
            "\n[[sites]]\nname = \"{site}\"\nwitness = {witness}\n"
        ));
    }
    let nodes = [
        ("a-coord", "a", "coordinator"),
        ("b-coord", "b", "coordinator"),
        ("w-coord", "w", "coordinator"),
        ("a-rep", "a", "replicator"),
        ("b-rep", "b", "replicator"),
    ];
    for (i, (name, site, role)) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"{role}\"\n\
             listen = \"127.0.0.1:{}\"\ndata_dir = \"data/{name}\"\n",
            7001 + i
        ));
    }
    text.push_str(&format!("\n[tls]\ndir = \"{}\"\n", dir.display()));
    Topology::parse_in(&text, "t.toml", dir.to_path_buf()).unwrap()
}

/// The cluster's certificates in `ROOT/certs` and another CA's in `ROOT/other-ca`.
struct Pki {
    _root: tempfile::TempDir,
    cluster: PathBuf,
    other: PathBuf,
    topo: Topology,
}

fn make_pki() -> Pki {
    let root = tempfile::tempdir().unwrap();
    let cluster = root.path().join("certs");
    let nodes = ["a-coord", "b-coord", "w-coord", "a-rep", "b-rep"];
    certs::init(&cluster, "t", &nodes, certs::DEFAULT_VALIDITY).unwrap();
    let other = root.path().join("other-ca");
    certs::init(&other, "evil", &[], certs::DEFAULT_VALIDITY).unwrap();
    let topo = topology(&cluster);
    Pki {
        _root: root,
        cluster,
        other,
        topo,
    }
}

fn roots(path: &Path) -> Arc<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).unwrap() {
        store.add(c.unwrap()).unwrap();
    }
    Arc::new(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the roots in `roots_dir` and presenting `identity` from
/// `cert_dir` (no client certificate when `None`).
fn client_config(roots_dir: &Path, cert: Option<(&Path, &str)>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(&certs::roots_path(roots_dir)));
    Arc::new(match cert {
        None => builder.with_no_client_auth(),
        Some((dir, name)) => {
            let chain = CertificateDer::pem_file_iter(certs::cert_path(dir, name))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(certs::key_path(dir, name)).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

/// A server over one 4 MiB image exported as `disk0`; TLS with `a-rep`'s certificate when
/// `tls` is true.
struct Server {
    addr: SocketAddr,
    path: PathBuf,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start(pki: &Pki, tls: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk0.img");
    let volume = Arc::new(FileVolume::create(&path, SIZE).unwrap());
    let exports = ExportMap::new();
    exports
        .insert("disk0", volume as Arc<dyn VolumeBackend>)
        .unwrap();
    let tls = tls.then(|| NbdTls::from_net(Net::for_node(&pki.topo, NODE).unwrap()).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve_with_tls(
        listener,
        Arc::new(exports),
        ServerOptions::default(),
        tls,
        rx,
    ));
    Server {
        addr,
        path,
        _stop: stop,
        _dir: dir,
    }
}

/// Connects and expects a refusal within [`QUICK`]; returns it.
async fn refused(addr: SocketAddr, tls: Option<&NbdClientTls>) -> ChaosError {
    let started = Instant::now();
    let r = NbdClient::connect_with(addr, "disk0", tls).await;
    let took = started.elapsed();
    let e = r.expect_err("connected, expected a refusal");
    assert!(took < QUICK, "refusal took {took:?}: {e}");
    assert!(!matches!(e, ChaosError::Timeout { .. }), "{e}");
    println!("refused in {took:?}: {e}");
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_reads_and_writes_a_tls_export_with_a_node_or_operator_certificate() {
    let pki = make_pki();
    let server = start(&pki, true).await;
    // 1. The operator's certificate, from the CLI's network context.
    let operator = Net::for_client(&pki.topo, "operator", None).unwrap();
    let tls = NbdClientTls::new(operator.nbd_client_config().unwrap(), NODE).unwrap();
    let mut c = NbdClient::connect_with(server.addr, "disk0", Some(&tls))
        .await
        .unwrap();
    assert!(c.is_tls());
    assert_eq!(c.size(), SIZE);
    assert!(!c.read_only());
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    c.write(8192, &data, true).await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(c.read(8192, data.len()).await.unwrap(), data);
    c.disconnect().await.unwrap();
    let image = std::fs::read(&server.path).unwrap();
    assert_eq!(&image[8192..8192 + data.len()], &data[..], "not on disk");

    // 2. Another node's certificate (a runbook step runs with its node's), through a pool.
    let node = Net::for_node(&pki.topo, "b-rep").unwrap();
    let tls = NbdClientTls::new(node.nbd_client_config().unwrap(), NODE).unwrap();
    let pool = NbdPool::new(server.addr, "disk0", 2).with_tls(tls);
    for i in 0..4u64 {
        pool.write(i * 4096, &[0xa0 + i as u8; 4096], false)
            .await
            .unwrap();
    }
    pool.flush().await.unwrap();
    for i in 0..4u64 {
        assert_eq!(
            pool.read(i * 4096, 4096).await.unwrap(),
            vec![0xa0 + i as u8; 4096]
        );
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_export_refuses_wrong_clients_clearly_and_quickly() {
    let pki = make_pki();
    let server = start(&pki, true).await;
    let addr = server.addr;

    // 1. Plaintext: GO is refused with TLS_REQD and the error says what to do.
    match refused(addr, None).await {
        ChaosError::NbdRefused {
            option: OPT_GO,
            reply_type: REP_ERR_TLS_REQD,
            message,
        } => assert!(message.contains("requires TLS"), "{message}"),
        e => panic!("plaintext: {e}"),
    }

    // 2. No client certificate: the server ends the handshake.
    let tls = NbdClientTls::new(client_config(&pki.cluster, None), NODE).unwrap();
    let e = refused(addr, Some(&tls)).await;
    assert!(matches!(e, ChaosError::Io { .. }), "no certificate: {e}");
    assert!(
        e.to_string().contains("refused this client's certificate"),
        "{e}"
    );

    // 3. An operator certificate from another CA.
    let tls = NbdClientTls::new(
        client_config(&pki.cluster, Some((&pki.other, "operator"))),
        NODE,
    )
    .unwrap();
    let e = refused(addr, Some(&tls)).await;
    assert!(
        matches!(e, ChaosError::Io { .. }),
        "foreign certificate: {e}"
    );

    // 4. The client expects another node: its own check refuses the server's certificate.
    let operator = Net::for_client(&pki.topo, "operator", None).unwrap();
    let tls = NbdClientTls::new(operator.nbd_client_config().unwrap(), "b-rep").unwrap();
    let e = refused(addr, Some(&tls)).await.to_string();
    assert!(
        e.contains("TLS handshake") && e.contains("node b-rep") && e.contains("not valid for name"),
        "wrong node: {e}"
    );

    // 5. The client does not trust the cluster's CA.
    let tls = NbdClientTls::new(
        client_config(&pki.other, Some((&pki.other, "operator"))),
        NODE,
    )
    .unwrap();
    let e = refused(addr, Some(&tls)).await.to_string();
    assert!(
        e.contains("TLS handshake") && e.contains("UnknownIssuer"),
        "untrusted server: {e}"
    );

    // 6. A read-only role of the admin API may not use NBD.
    let viewer = Net::for_client(&pki.topo, "viewer", None).unwrap();
    let tls = NbdClientTls::new(viewer.nbd_client_config().unwrap(), NODE).unwrap();
    match refused(addr, Some(&tls)).await {
        ChaosError::NbdRefused {
            option: OPT_GO,
            reply_type: REP_ERR_POLICY,
            message,
        } => assert!(message.contains("may not use NBD"), "{message}"),
        e => panic!("viewer: {e}"),
    }

    // 7. The server still serves a good client afterwards.
    let tls = NbdClientTls::new(operator.nbd_client_config().unwrap(), NODE).unwrap();
    let c = NbdClient::connect_with(addr, "disk0", Some(&tls))
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_against_a_plaintext_server_is_refused_at_starttls() {
    let pki = make_pki();
    let server = start(&pki, false).await;
    let operator = Net::for_client(&pki.topo, "operator", None).unwrap();
    let tls = NbdClientTls::new(operator.nbd_client_config().unwrap(), NODE).unwrap();
    match refused(server.addr, Some(&tls)).await {
        ChaosError::NbdRefused {
            option: OPT_STARTTLS,
            reply_type: REP_ERR_UNSUP,
            ..
        } => {}
        e => panic!("plaintext server: {e}"),
    }
    // The plaintext path is unchanged.
    let mut c = NbdClient::connect(server.addr, "disk0").await.unwrap();
    assert!(!c.is_tls());
    c.write(0, &[7u8; 512], false).await.unwrap();
    assert_eq!(c.read(0, 512).await.unwrap(), vec![7u8; 512]);
    c.disconnect().await.unwrap();
}
