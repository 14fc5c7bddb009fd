//! NBD over TLS (`NBD_OPT_STARTTLS`) with the cluster's certificates, against qemu's own TLS
//! client (`qemu-io --object tls-creds-x509,...`) and a hand-written raw client for what qemu
//! does not exercise (plaintext options refused, EXPORT_NAME closed, a stalled TLS handshake).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::certs;
use tandem_core::config::Topology;
use tandem_core::net::Net;
use tandem_replicator::nbd::proto;
use tandem_replicator::nbd::{serve_with_tls, ExportMap, NbdTls, ServerOptions};
use tandem_replicator::volume::{FileVolume, VolumeBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const SIZE: u64 = 64 * 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(50);
/// The replicator whose certificate the server presents (qemu checks it as `tls-hostname`).
const NODE: &str = "a-rep";

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

/// The cluster's certificates (`tandem certs init`) in `ROOT/certs`, and a folder laid out as
/// qemu wants (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`) in `ROOT/qemu-good`: the
/// cluster's roots and the operator's certificate. `ROOT/qemu-foreign` trusts the same roots
/// but presents an operator certificate from another CA.
struct Pki {
    certs: PathBuf,
    good: PathBuf,
    foreign: PathBuf,
}

fn make_pki(root: &Path) -> Pki {
    let cluster = root.join("certs");
    let nodes = ["a-coord", "b-coord", "w-coord", "a-rep", "b-rep"];
    certs::init(&cluster, "t", &nodes, certs::DEFAULT_VALIDITY).unwrap();
    let other = root.join("other-ca");
    certs::init(&other, "evil", &[], certs::DEFAULT_VALIDITY).unwrap();
    let qemu_dir = |name: &str, from: &Path| {
        let d = root.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(certs::roots_path(&cluster), d.join("ca-cert.pem")).unwrap();
        std::fs::copy(from.join("operator.pem"), d.join("client-cert.pem")).unwrap();
        std::fs::copy(from.join("operator.key"), d.join("client-key.pem")).unwrap();
        d
    };
    let good = qemu_dir("qemu-good", &cluster);
    let foreign = qemu_dir("qemu-foreign", &other);
    // qemu checks its own certificate against ca-cert.pem before connecting: the foreign
    // client trusts both CAs, so the refusal seen is the server's, not qemu's self-check.
    let mut both = std::fs::read_to_string(certs::roots_path(&cluster)).unwrap();
    both.push_str(&std::fs::read_to_string(certs::roots_path(&other)).unwrap());
    std::fs::write(foreign.join("ca-cert.pem"), both).unwrap();
    Pki {
        good,
        foreign,
        certs: cluster,
    }
}

/// A server over one 64 MiB image exported as `disk0`; TLS with `a-rep`'s certificate when
/// `tls` is true.
struct Server {
    addr: SocketAddr,
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(pki: &Pki, tls: bool, options: ServerOptions) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk0.img");
        let volume = Arc::new(FileVolume::create(&path, SIZE).unwrap());
        let exports = ExportMap::new();
        exports
            .insert("disk0", volume as Arc<dyn VolumeBackend>)
            .unwrap();
        let tls = tls.then(|| {
            let topo = topology(&pki.certs);
            NbdTls::from_net(Net::for_node(&topo, NODE).unwrap()).unwrap()
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(serve_with_tls(
            listener,
            Arc::new(exports),
            options,
            tls,
            rx,
        ));
        Server {
            addr,
            path,
            stop,
            task,
            _dir: dir,
        }
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server did not stop within 10 s")
            .unwrap();
    }
}

/// True when qemu-io is installed; otherwise prints why the calling test is skipped.
fn have_qemu(test: &str) -> bool {
    let found = std::process::Command::new("which")
        .arg("qemu-io")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        println!("SKIPPED {test}: qemu-io is not installed (which qemu-io failed)");
    }
    found
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs qemu-io against `disk0` at `addr`: over TLS with the credentials folder `creds`
/// (checking the server certificate names `a-rep`), or plaintext when `creds` is `None`.
async fn qemu_io(addr: SocketAddr, creds: Option<&Path>, commands: &[&str]) -> Output {
    let mut image = format!(
        "driver=nbd,host={},port={},export=disk0",
        addr.ip(),
        addr.port()
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(dir) = creds {
        args.push("--object".into());
        args.push(format!(
            "tls-creds-x509,id=tls0,endpoint=client,dir={}",
            dir.display()
        ));
        image.push_str(&format!(",tls-creds=tls0,tls-hostname={NODE}"));
    }
    args.push("--image-opts".into());
    args.push(image);
    for c in commands {
        args.push("-c".into());
        args.push((*c).to_string());
    }
    let mut cmd = tokio::process::Command::new("qemu-io");
    cmd.args(&args).kill_on_drop(true);
    tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("qemu-io {args:?} did not finish in {LIMIT:?}"))
        .unwrap()
}

/// The server ended the TLS handshake (TLS 1.3: qemu sees the alert, or the closed socket
/// when it next writes), and not qemu's own check of its credentials.
fn assert_refused_by_server(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("failed validation"),
        "qemu refused its own credentials: {}",
        describe(out)
    );
    assert!(
        ["TLS fatal alert", "Broken pipe", "Connection reset"]
            .iter()
            .any(|w| err.contains(w)),
        "not refused by the server's TLS handshake: {}",
        describe(out)
    );
}

/// qemu-io prints errors on stdout or stderr and may exit 0 after a failed command.
fn qemu_failed(out: &Output) -> bool {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    !out.status.success() || text.contains("failed") || text.contains("error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_over_tls_with_a_cluster_certificate_and_reads_it_back() {
    if !have_qemu("qemu_io_writes_over_tls_with_a_cluster_certificate_and_reads_it_back") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    // 1. The whole 64 MiB volume, written over TLS.
    let started = Instant::now();
    let out = qemu_io(
        server.addr,
        Some(&pki.good),
        &["write -P 0x5a 0 64M", "flush"],
    )
    .await;
    let tls_took = started.elapsed();
    assert!(!qemu_failed(&out), "qemu-io over TLS: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("wrote 67108864/67108864 bytes"),
        "{}",
        describe(&out)
    );
    // 2. The bytes are on disk.
    assert!(server.file().iter().all(|&b| b == 0x5a), "image not 0x5a");
    // 3. A second session reads them back over TLS.
    let out = qemu_io(server.addr, Some(&pki.good), &["read -P 0x5a 0 64M"]).await;
    assert!(!qemu_failed(&out), "read back over TLS: {}", describe(&out));
    server.stop().await;
    // The same through plaintext, for the figure only (not asserted).
    let plain = Server::start(&pki, false, ServerOptions::default()).await;
    let started = Instant::now();
    let out = qemu_io(plain.addr, None, &["write -P 0x5a 0 64M", "flush"]).await;
    let plain_took = started.elapsed();
    assert!(!qemu_failed(&out), "qemu-io plaintext: {}", describe(&out));
    println!(
        "FIGURE qemu-io 64 MiB write + flush (one process each, debug build): TLS {tls_took:?}, plaintext {plain_took:?}"
    );
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_with_a_certificate_from_another_ca_is_refused_and_writes_nothing() {
    if !have_qemu("qemu_io_with_a_certificate_from_another_ca_is_refused_and_writes_nothing") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    let out = qemu_io(server.addr, Some(&pki.foreign), &["write -P 0xee 0 1M"]).await;
    println!("foreign CA: {}", describe(&out));
    assert!(
        qemu_failed(&out),
        "a foreign certificate was accepted: {}",
        describe(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("wrote"),
        "{}",
        describe(&out)
    );
    assert_refused_by_server(&out);
    // A client without a certificate at all is refused the same way.
    let bare = root.path().join("qemu-bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(pki.good.join("ca-cert.pem"), bare.join("ca-cert.pem")).unwrap();
    let out = qemu_io(server.addr, Some(&bare), &["write -P 0xee 0 1M"]).await;
    println!("no certificate: {}", describe(&out));
    assert!(
        qemu_failed(&out),
        "no certificate accepted: {}",
        describe(&out)
    );
    assert_refused_by_server(&out);
    assert!(server.file().iter().all(|&b| b == 0), "the image changed");
    // The server still serves the rightful client.
    let out = qemu_io(server.addr, Some(&pki.good), &["write -P 0x11 0 64k"]).await;
    assert!(!qemu_failed(&out), "{}", describe(&out));
    assert!(server.file()[..65536].iter().all(|&b| b == 0x11));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_qemu_io_against_a_tls_export_is_refused() {
    if !have_qemu("plaintext_qemu_io_against_a_tls_export_is_refused") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    let out = qemu_io(server.addr, None, &["write -P 0xee 0 1M"]).await;
    println!("plaintext: {}", describe(&out));
    assert!(qemu_failed(&out), "plaintext accepted: {}", describe(&out));
    let text = describe(&out);
    assert!(
        text.contains("not permitted before NBD_OPT_STARTTLS"),
        "qemu did not get NBD_REP_ERR_TLS_REQD with its message: {text}"
    );
    assert!(server.file().iter().all(|&b| b == 0), "the image changed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_tcp_connections_do_not_lock_qemu_out_of_a_tls_export() {
    if !have_qemu("two_hundred_idle_tcp_connections_do_not_lock_qemu_out_of_a_tls_export") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::time::timeout(
        Duration::from_secs(8),
        qemu_io(
            server.addr,
            Some(&pki.good),
            &["write -P 0xab 0 64k", "read -P 0xab 0 64k"],
        ),
    )
    .await
    .expect("qemu-io was locked out by 200 idle connections");
    assert!(!qemu_failed(&out), "{}", describe(&out));
    assert!(server.file()[..65536].iter().all(|&b| b == 0xab));
    drop(idle);
    server.stop().await;
}

// ------------------------------------------------------------------------------------------
// Raw protocol client: the plaintext side of a TLS-only server.
// ------------------------------------------------------------------------------------------

/// Connects and completes the greeting with FIXED_NEWSTYLE | NO_ZEROES.
async fn greet(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; proto::GREETING_LEN];
    stream.read_exact(&mut greeting).await.unwrap();
    proto::parse_greeting(&greeting).unwrap();
    stream.write_all(&3u32.to_be_bytes()).await.unwrap();
    stream
}

/// Sends an option; returns the final reply's type and payload (skipping `NBD_REP_SERVER` /
/// `NBD_REP_INFO` replies).
async fn option(stream: &mut TcpStream, option: u32, payload: &[u8]) -> (u32, Vec<u8>) {
    let mut out = Vec::new();
    proto::encode_option(option, payload, &mut out);
    stream.write_all(&out).await.unwrap();
    loop {
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        stream.read_exact(&mut h).await.unwrap();
        let reply = proto::parse_option_reply(&h).unwrap();
        assert_eq!(reply.option, option);
        let mut body = vec![0u8; reply.length as usize];
        stream.read_exact(&mut body).await.unwrap();
        if reply.reply_type != proto::REP_SERVER && reply.reply_type != proto::REP_INFO {
            return (reply.reply_type, body);
        }
    }
}

/// Reads until EOF or a reset; the time it took, or `None` if still open after `limit`.
async fn eof_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn before_starttls_every_option_gets_tls_reqd_and_export_name_is_closed() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    let mut c = greet(server.addr).await;
    let go = proto::encode_info_request(&proto::InfoRequest {
        name: "disk0".into(),
        requests: vec![],
    });
    // 1. Known and unknown options, well-formed or not: NBD_REP_ERR_TLS_REQD, and the
    //    connection stays usable.
    for (code, payload) in [
        (proto::OPT_LIST, &[][..]),
        (proto::OPT_GO, &go[..]),
        (proto::OPT_INFO, &go[..]),
        (proto::OPT_GO, &b"garbage"[..]),
        (proto::OPT_STRUCTURED_REPLY, &[][..]),
        (0xdead, &b"x"[..]),
    ] {
        let (reply, message) = option(&mut c, code, payload).await;
        assert_eq!(reply, proto::REP_ERR_TLS_REQD, "option {code}");
        assert!(
            String::from_utf8_lossy(&message).contains("not permitted before NBD_OPT_STARTTLS"),
            "option {code}: {message:?}"
        );
    }
    // 2. STARTTLS with a payload is invalid (and not an upgrade).
    let (reply, _) = option(&mut c, proto::OPT_STARTTLS, b"x").await;
    assert_eq!(reply, proto::REP_ERR_INVALID);
    // 3. ABORT is served.
    let (reply, _) = option(&mut c, proto::OPT_ABORT, &[]).await;
    assert_eq!(reply, proto::REP_ACK);
    assert!(eof_within(&mut c, Duration::from_secs(3)).await.is_some());
    // 4. EXPORT_NAME before TLS cannot carry an error: closed, nothing sent.
    let mut c = greet(server.addr).await;
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_EXPORT_NAME, b"disk0", &mut out);
    c.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "EXPORT_NAME before TLS was not closed");
    assert!(got.is_empty(), "the server answered EXPORT_NAME: {got:?}");
    server.stop().await;
}

#[tokio::test]
async fn bytes_pipelined_after_starttls_are_refused_and_a_plaintext_server_says_unsupported() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    // 1. STARTTLS followed at once by a plaintext option: an injection; the server closes
    //    before the upgrade (the ACK may or may not have been sent).
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    let mut c = greet(server.addr).await;
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_STARTTLS, &[], &mut out);
    proto::encode_option(proto::OPT_LIST, &[], &mut out);
    c.write_all(&out).await.unwrap();
    // Give the server one read of both options, so both sit in its buffer.
    let closed = eof_within(&mut c, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "pipelined STARTTLS was not closed");
    server.stop().await;
    // 2. A server without TLS answers STARTTLS with NBD_REP_ERR_UNSUP.
    let server = Server::start(&pki, false, ServerOptions::default()).await;
    let mut c = greet(server.addr).await;
    let (reply, message) = option(&mut c, proto::OPT_STARTTLS, &[]).await;
    assert_eq!(reply, proto::REP_ERR_UNSUP);
    assert!(String::from_utf8_lossy(&message).contains("TLS is not configured"));
    let (reply, _) = option(&mut c, proto::OPT_LIST, &[]).await;
    assert_eq!(reply, proto::REP_ACK);
    server.stop().await;
}

#[tokio::test]
async fn client_stalled_in_the_tls_handshake_is_dropped_after_the_handshake_timeout() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let timeout = Duration::from_secs(1);
    let options = ServerOptions {
        handshake_timeout: timeout,
        ..ServerOptions::default()
    };
    let server = Server::start(&pki, true, options).await;
    // 1. STARTTLS is acknowledged, then the client sends half a TLS record and stalls.
    let mut c = greet(server.addr).await;
    let (reply, _) = option(&mut c, proto::OPT_STARTTLS, &[]).await;
    assert_eq!(reply, proto::REP_ACK);
    c.write_all(&[0x16, 0x03, 0x01, 0x02]).await.unwrap();
    // 2. Closed after the timeout, not before.
    let took = eof_within(&mut c, timeout + Duration::from_secs(3))
        .await
        .expect("a stalled TLS handshake was still open after the timeout");
    assert!(
        took + Duration::from_millis(300) >= timeout,
        "dropped after {took:?}, before the {timeout:?} timeout"
    );
    // 3. A client that is not TLS at all after the ACK is refused at once.
    let mut c = greet(server.addr).await;
    let (reply, _) = option(&mut c, proto::OPT_STARTTLS, &[]).await;
    assert_eq!(reply, proto::REP_ACK);
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_LIST, &[], &mut out);
    c.write_all(&out).await.unwrap();
    let took = eof_within(&mut c, Duration::from_secs(3))
        .await
        .expect("plaintext after the STARTTLS ACK was not refused");
    assert!(took < timeout, "plaintext after the ACK took {took:?}");
    server.stop().await;
}

/// A rustls client presenting `cert`/`key` (PEM files), trusting the cluster's roots.
fn rustls_client(pki: &Pki, cert: &Path, key: &Path) -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for der in certs::read_pem_certs(&certs::roots_path(&pki.certs)).unwrap() {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = certs::read_pem_certs(cert)
        .unwrap()
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn inside_tls_options_are_served_and_a_second_starttls_is_invalid() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    let mut c = greet(server.addr).await;
    let (reply, _) = option(&mut c, proto::OPT_STARTTLS, &[]).await;
    assert_eq!(reply, proto::REP_ACK);
    let connector = rustls_client(
        &pki,
        &pki.certs.join("operator.pem"),
        &pki.certs.join("operator.key"),
    );
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(NODE).unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, c))
        .await
        .unwrap()
        .unwrap();
    // 1. LIST inside TLS: the export, then ACK.
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_LIST, &[], &mut out);
    tls.write_all(&out).await.unwrap();
    let mut types = Vec::new();
    loop {
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        tls.read_exact(&mut h).await.unwrap();
        let reply = proto::parse_option_reply(&h).unwrap();
        let mut body = vec![0u8; reply.length as usize];
        tls.read_exact(&mut body).await.unwrap();
        types.push(reply.reply_type);
        if reply.reply_type == proto::REP_ACK {
            break;
        }
    }
    assert_eq!(types, [proto::REP_SERVER, proto::REP_ACK]);
    // 2. A second STARTTLS is invalid, and the session goes on.
    let mut out = Vec::new();
    proto::encode_option(proto::OPT_STARTTLS, &[], &mut out);
    tls.write_all(&out).await.unwrap();
    let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
    tls.read_exact(&mut h).await.unwrap();
    let reply = proto::parse_option_reply(&h).unwrap();
    assert_eq!(reply.reply_type, proto::REP_ERR_INVALID);
    let mut body = vec![0u8; reply.length as usize];
    tls.read_exact(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("already negotiated"));
    server.stop().await;
}

#[tokio::test]
async fn a_read_only_role_certificate_is_refused_every_option_inside_tls() {
    let root = tempfile::tempdir().unwrap();
    let pki = make_pki(root.path());
    let server = Server::start(&pki, true, ServerOptions::default()).await;
    let mut c = greet(server.addr).await;
    let (reply, _) = option(&mut c, proto::OPT_STARTTLS, &[]).await;
    assert_eq!(reply, proto::REP_ACK);
    let connector = rustls_client(
        &pki,
        &pki.certs.join("viewer.pem"),
        &pki.certs.join("viewer.key"),
    );
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(NODE).unwrap();
    let mut tls = connector.connect(name, c).await.unwrap();
    let go = proto::encode_info_request(&proto::InfoRequest {
        name: "disk0".into(),
        requests: vec![],
    });
    for (code, payload) in [(proto::OPT_GO, &go[..]), (proto::OPT_LIST, &[][..])] {
        let mut out = Vec::new();
        proto::encode_option(code, payload, &mut out);
        tls.write_all(&out).await.unwrap();
        let mut h = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        tls.read_exact(&mut h).await.unwrap();
        let reply = proto::parse_option_reply(&h).unwrap();
        let mut body = vec![0u8; reply.length as usize];
        tls.read_exact(&mut body).await.unwrap();
        assert_eq!(reply.reply_type, proto::REP_ERR_POLICY, "option {code}");
        assert!(
            String::from_utf8_lossy(&body).contains("viewer (viewer) may not use NBD"),
            "{:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert!(server.file().iter().all(|&b| b == 0));
    server.stop().await;
}
