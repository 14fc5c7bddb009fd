//! mTLS with real processes: a foreign CA, a certificate speaking as another node, a plaintext
//! client and a role without the right are all refused (the role refusal is audited), and a
//! certificate rotation under replication load loses no write.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tandem_core::config::Topology;
use tandem_core::net::Net;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::raft_peer_client::RaftPeerClient;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{
    ship_request, HeartbeatRequest, Hello, RaftEnvelope, ShipRequest, StatusRequest,
};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

struct Cluster {
    topo: Topo,
    _procs: Vec<NodeProc>,
}

fn start(topo: Topo) -> Cluster {
    let mut names = topo.coordinators.clone();
    names.push("hanoi-rep".into());
    names.push("hcm-rep".into());
    let procs = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
    Cluster {
        topo,
        _procs: procs,
    }
}

impl Cluster {
    fn wait_protected(&self) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.topo
                .wait_status(&[], Duration::from_secs(30), "protected", |st| {
                    st["groups"]
                        .as_array()?
                        .iter()
                        .find(|g| g["name"] == "vol" && g["state"] == "protected")
                        .map(|_| ())
                })
        }));
        if let Err(e) = r {
            dump_logs(&self.topo);
            std::panic::resume_unwind(e);
        }
    }

    fn topology(&self) -> Topology {
        Topology::load(&self.topo.config).unwrap()
    }

    fn certs(&self) -> std::path::PathBuf {
        self.topo.path().join("certs")
    }

    /// A client context presenting the certificate files `name` of folder `dir`.
    fn client_as(&self, dir: &Path, name: &str) -> Net {
        Net::for_client(
            &self.topology(),
            name,
            Some((
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            )),
        )
        .unwrap()
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.topo.path().join(format!("{node}.log"))).unwrap_or_default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn coordinator(
    net: &Net,
    addr: &str,
) -> Result<CoordinatorClient<tonic::transport::Channel>, String> {
    let ep = net
        .endpoint(addr)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    net.connect(ep)
        .await
        .map(CoordinatorClient::new)
        .map_err(|e| e.to_string())
}

#[test]
fn certificates_from_another_ca_and_plaintext_clients_are_refused() {
    let c = start(Topo::new(TopoOpts::default()));
    c.wait_protected();
    let addr = c.topo.addr("hanoi-coord1").to_owned();
    // 1. A CA of our own making: its operator certificate is not trusted by the cluster.
    let other = tempfile::tempdir().unwrap();
    let topo = c.topology();
    let nodes: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    tandem_core::certs::init(other.path(), "evil", &nodes, Duration::from_secs(86_400)).unwrap();
    let foreign = c.client_as(other.path(), "operator");
    rt().block_on(async {
        let r = match coordinator(&foreign, &addr).await {
            Ok(mut cl) => cl
                .status(StatusRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            Err(e) => Err(e),
        };
        assert!(r.is_err(), "a certificate from another CA was accepted");
    });
    // 2. A node certificate from another CA (hcm-rep of the foreign CA) cannot heartbeat either.
    let foreign_node = c.client_as(other.path(), "hcm-rep");
    rt().block_on(async {
        let r = match coordinator(&foreign_node, &addr).await {
            Ok(mut cl) => cl
                .heartbeat(HeartbeatRequest {
                    node: "hcm-rep".into(),
                    site: "hcm".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            Err(e) => Err(e),
        };
        assert!(
            r.is_err(),
            "a node certificate from another CA was accepted"
        );
    });
    assert!(
        c.log("hanoi-coord1").contains("TLS handshake refused"),
        "the coordinator did not log the refused handshake"
    );
    // 3. A plaintext client cannot talk to a TLS node.
    rt().block_on(async {
        let plain = Net::plaintext();
        let r = match coordinator(&plain, &addr).await {
            Ok(mut cl) => cl
                .status(StatusRequest::default())
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
            Err(e) => Err(e),
        };
        assert!(
            r.is_err(),
            "a plaintext client got an answer from a TLS node"
        );
    });
    // 4. The cluster's own operator certificate works.
    let ok = c.client_as(&c.certs(), "operator");
    rt().block_on(async {
        let mut cl = coordinator(&ok, &addr).await.unwrap();
        let st = cl
            .status(StatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        let v: serde_json::Value = serde_json::from_str(&st.json).unwrap();
        assert_eq!(v["tls"]["enabled"], true);
        let certs = v["tls"]["certs"].as_array().unwrap();
        assert!(certs
            .iter()
            .any(|x| x["node"] == "hcm-rep" && x["expires_in_s"].as_i64() > Some(0)));
    });
}

#[test]
fn a_valid_certificate_cannot_speak_as_another_node() {
    let c = start(Topo::new(TopoOpts::default()));
    c.wait_protected();
    let dir = c.certs();
    // hcm-rep's own certificate, claiming to be hanoi-rep.
    let hcm = c.client_as(&dir, "hcm-rep");
    rt().block_on(async {
        // 1. A heartbeat for another node.
        let mut cl = coordinator(&hcm, c.topo.addr("hcm-coord1")).await.unwrap();
        let e = cl
            .heartbeat(HeartbeatRequest {
                node: "hanoi-rep".into(),
                site: "hanoi".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(
            e.message().contains("hcm-rep") && e.message().contains("hanoi-rep"),
            "{}",
            e.message()
        );
        // 2. A ship stream whose Hello claims another node.
        let ep = hcm.endpoint(c.topo.addr("hcm-rep")).unwrap();
        let ch = hcm.connect(ep).await.unwrap();
        let hello = ShipRequest {
            msg: Some(ship_request::Msg::Hello(Hello {
                group: "vol".into(),
                epoch: 1,
                from_node: "hanoi-rep".into(),
                lineage: Vec::new(),
            })),
        };
        let e = ReplicationClient::new(ch)
            .ship(tokio_stream::iter(vec![hello]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("hanoi-rep"), "{}", e.message());
        // 3. Raft messages under another coordinator's raft id (1 = hanoi-coord1), sent with
        // hcm-coord1's certificate.
        let hcm_coord = c.client_as(&dir, "hcm-coord1");
        let ep = hcm_coord.endpoint(c.topo.addr("danang-coord1")).unwrap();
        let ch = hcm_coord.connect(ep).await.unwrap();
        let env = RaftEnvelope {
            from_id: 1,
            to_id: 3,
            message: Vec::new(),
        };
        let e = RaftPeerClient::new(ch)
            .send(tokio_stream::iter(vec![env]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("hcm-coord1"), "{}", e.message());
    });
}

#[test]
fn the_auditor_cannot_start_a_drill_and_the_refusal_is_audited() {
    let c = start(Topo::new(TopoOpts::default()));
    c.wait_protected();
    // 1. The auditor asks for a drill: refused.
    let (code, _, err) = c.topo.tandem(&["drill", "vol", "--identity", "auditor"]);
    assert_ne!(code, 0, "the auditor started a drill");
    assert!(err.contains("auditor"), "{err}");
    // 2. The auditor may read the audit chain, where the refusal is, with its role and call.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = c.topo.tandem(&["audit", "--json", "--identity", "auditor"]);
        assert_eq!(code, 0, "{err}");
        let found = out.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kind"] == "refused"
                && v["actor"] == "auditor"
                && v["detail"]["role"] == "auditor"
                && v["detail"]["call"] == "StartRun"
        });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refused record in the chain:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // 3. A viewer may read the status but not the audit chain.
    let (code, _, err) = c.topo.tandem(&["status", "--identity", "viewer"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = c.topo.tandem(&["audit", "--identity", "viewer"]);
    assert_ne!(code, 0, "a viewer read the audit chain");
    // 4. The operator's pause is recorded under the certificate's name (no request names
    //    its caller).
    let (code, _, err) = c.topo.tandem(&["pause", "vol", "--identity", "operator"]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = c.topo.tandem(&["audit", "--json"]);
    let pause = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "replication_paused")
        .expect("pause record");
    assert_eq!(pause["actor"], "operator", "{pause}");
}

fn have_qemu() -> bool {
    let ok = Command::new("qemu-io").arg("--version").output().is_ok();
    if !ok {
        eprintln!("SKIPPED: qemu-io is not installed (apt-get install qemu-utils)");
    }
    ok
}

#[test]
fn a_certificate_rotation_under_replication_load_loses_no_write() {
    if !have_qemu() {
        return;
    }
    let c = start(Topo::new(TopoOpts {
        mode: "sync",
        ..TopoOpts::default()
    }));
    c.wait_protected();
    let url = format!("nbd://{}/disk0", c.topo.nbd_addr("hanoi-rep"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut batches = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut cmd = Command::new("qemu-io");
                cmd.args(["-f", "raw", "-t", "none", &url]);
                for i in 0..20u64 {
                    let off = ((batches * 20 + i) * 65_536) % (15 << 20);
                    cmd.arg("-c")
                        .arg(format!("write -P {} {off} 64k", (batches + i) % 250 + 1));
                }
                let out = cmd.output().unwrap();
                assert!(
                    out.status.success(),
                    "write batch {batches} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                batches += 1;
            }
            batches
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    // 1. Rotate both replicators under load, the replica onto a new CA (roots hold both).
    let dir = c.certs();
    let d = dir.to_str().unwrap();
    for (node, extra) in [("hcm-rep", Some("--new-ca")), ("hanoi-rep", None)] {
        let mut args = vec![
            "certs", "rotate", "--node", node, "--dir", d, "--days", "30",
        ];
        args.extend(extra);
        let (code, _, err) = c.topo.tandem(&args);
        assert_eq!(code, 0, "{err}");
    }
    // 2. The nodes pick the new files up by themselves (their heartbeats report the new
    // expiry), while the writer goes on.
    c.topo.wait_status(
        &[],
        Duration::from_secs(15),
        "rotated certificates reported",
        |st| {
            let certs = st["tls"]["certs"].as_array()?;
            let short = |n: &str| {
                certs
                    .iter()
                    .any(|x| x["node"] == n && x["expires_in_s"].as_i64() < Some(31 * 86_400))
            };
            (short("hcm-rep") && short("hanoi-rep")).then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let batches = writer.join().expect("writer");
    assert!(batches > 0);
    // 3. Every write is on the replica: the images are byte-identical.
    let img =
        |s: &str| std::fs::read(c.topo.path().join(format!("volumes/{s}/disk0.img"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while img("hanoi") != img("hcm") {
        if Instant::now() > deadline {
            dump_logs(&c.topo);
            panic!("the replica differs from the primary after the rotation");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, err) = c.topo.tandem(&["verify", "vol"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("EQUAL"), "{out}");
}
