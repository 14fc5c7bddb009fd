//! Replication peers over real mTLS sockets with the cluster's certificates: the replica's
//! `Replication` service accepts a Ship stream only from the group's primary replicator at the
//! epoch the coordinators gave it, never raises its fence above that epoch, lets only the
//! table's callers read blocks, and recovers only under its recover root. The replica files
//! are real and compared byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tandem_core::config::Topology;
use tandem_core::frame::{Change, Encoder, FrameMeta};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_core::net::Net;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{
    ship_request, ship_response, Hello, ReadBlocksRequest, RecoverRequest, ShipRequest,
};
use tandem_replicator::apply::ReplicaGroup;
use tandem_replicator::receive::{serve, GroupView, ReplicationService, Views};
use tonic::transport::Channel;

const VOL: u64 = 64 << 10;

/// A topology of four sites (hue holds a replicator outside group `vol`'s pair), the
/// cluster's certificates, and `hcm-rep`'s service listening with them.
struct Replica {
    dir: tempfile::TempDir,
    topo: Topology,
    views: Views,
    group: Arc<ReplicaGroup>,
    image: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

fn topology_text(port: u16) -> String {
    let mut t = String::from(
        "[cluster]\nname = \"peers\"\n\n[tls]\ndir = \"certs\"\n\n\
         [[sites]]\nname = \"hanoi\"\n\n[[sites]]\nname = \"hcm\"\n\n[[sites]]\nname = \"hue\"\n\n\
         [[sites]]\nname = \"danang\"\nwitness = true\n\n",
    );
    let nodes = [
        ("hanoi-coord1", "hanoi", "coordinator"),
        ("hcm-coord1", "hcm", "coordinator"),
        ("danang-coord1", "danang", "coordinator"),
        ("hanoi-rep", "hanoi", "replicator"),
        ("hcm-rep", "hcm", "replicator"),
        ("hue-rep", "hue", "replicator"),
    ];
    for (i, (name, site, role)) in nodes.iter().enumerate() {
        let p = if *name == "hcm-rep" {
            port
        } else {
            1 + i as u16
        };
        t.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\nsite = \"{site}\"\nrole = \"{role}\"\nlisten = \"127.0.0.1:{p}\"\ndata_dir = \"data/{name}\"\n\n"
        ));
    }
    t.push_str(
        "[[groups]]\nname = \"vol\"\nprimary = \"hanoi\"\nreplica = \"hcm\"\nmode = \"async\"\n\
         rpo_target = \"5s\"\nrto_target = \"1m\"\n\n[[groups.resources]]\nname = \"disk0\"\n\
         kind = \"volume\"\nsize = \"64KiB\"\npath = \"volumes/hanoi/disk0.img\"\n\
         replica_path = \"volumes/hcm/disk0.img\"\n",
    );
    t
}

async fn start() -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = dir.path().join("topology.toml");
    std::fs::write(&config, topology_text(port)).unwrap();
    let topo = Topology::load(&config).unwrap();
    let names: Vec<&str> = topo.nodes.iter().map(|n| n.name.as_str()).collect();
    tandem_core::certs::init(&topo.tls.dir, "peers", &names, Duration::from_secs(86_400)).unwrap();
    let image = dir.path().join("volumes/hcm/disk0.img");
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    // A recognisable image: every byte is 0x5a.
    std::fs::write(&image, vec![0x5a; VOL as usize]).unwrap();
    let group = Arc::new(
        ReplicaGroup::open(
            "vol",
            &dir.path().join("data/hcm-rep/replica/vol"),
            HashMap::from([("disk0".to_owned(), image.clone())]),
        )
        .unwrap(),
    );
    group.set_fence(Epoch(5)).unwrap();
    let views = Views::new();
    let service = ReplicationService::new()
        .with_net(Net::for_node(&topo, "hcm-rep").unwrap())
        .with_topology(&topo)
        .with_views(views.clone())
        .with_recover_root(dir.path().join("data/hcm-rep/recovered"));
    service.add_group(group.clone());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(service, listener, async {
        let _ = stop_rx.await;
    }));
    Replica {
        dir,
        topo,
        views,
        group,
        image,
        stop: Some(stop),
    }
}

impl Replica {
    /// A client of hcm-rep presenting the certificate `name` of the cluster.
    async fn client_as(&self, name: &str) -> ReplicationClient<Channel> {
        let certs = self.topo.tls.dir.clone();
        let net = Net::for_client(
            &self.topo,
            name,
            Some((
                certs.join(format!("{name}.pem")),
                certs.join(format!("{name}.key")),
            )),
        )
        .unwrap();
        let addr = self.topo.node("hcm-rep").unwrap().listen.clone();
        let ep = net
            .endpoint(&addr)
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        ReplicationClient::new(net.connect(ep).await.unwrap())
    }

    fn learn(&self, primary: &str, epoch: u64) {
        self.views.learn(
            "vol",
            GroupView {
                primary: primary.into(),
                replica: "hcm".into(),
                epoch: Epoch(epoch),
                hosts: Default::default(),
            },
        );
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(&self.image).unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn hello(from: &str, epoch: u64) -> ShipRequest {
    ShipRequest {
        msg: Some(ship_request::Msg::Hello(Hello {
            group: "vol".into(),
            epoch,
            from_node: from.into(),
            lineage: Vec::new(),
        })),
    }
}

/// A frame of group `vol` at `epoch` that overwrites the first 4 KiB with 0xee.
fn frame(epoch: u64) -> ShipRequest {
    let bytes = Encoder::new(1)
        .unwrap()
        .encode(
            FrameMeta {
                group: GroupId::from_name("vol"),
                epoch: Epoch(epoch),
                first_seq: Seq(1),
            },
            &[Change::write("disk0", 0, vec![0xee; 4096], 0)],
        )
        .unwrap();
    ShipRequest {
        msg: Some(ship_request::Msg::Frame(bytes)),
    }
}

/// Opens a Ship stream as `cert` with `msgs` and returns the first answer (or the status).
async fn ship(
    r: &Replica,
    cert: &str,
    msgs: Vec<ShipRequest>,
) -> Result<Vec<ship_response::Msg>, tonic::Status> {
    let mut c = r.client_as(cert).await;
    let mut inbound = c.ship(tokio_stream::iter(msgs)).await?.into_inner();
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
            Ok(Ok(Some(m))) => got.extend(m.msg),
            Ok(Ok(None)) | Err(_) => return Ok(got),
            Ok(Err(s)) if got.is_empty() => return Err(s),
            Ok(Err(_)) => return Ok(got),
        }
    }
}

#[tokio::test]
async fn a_ship_stream_is_taken_only_from_the_primary_replicator_at_the_coordinators_epoch() {
    let r = start().await;
    let before = r.image();
    // 1. Nothing heard from the coordinators yet: the rightful primary is asked to retry.
    let e = ship(&r, "hanoi-rep", vec![hello("hanoi-rep", 5), frame(5)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    assert!(e.message().contains("not heard the coordinators"), "{e}");
    r.learn("hanoi", 5);
    // 2. The witness coordinator's certificate, speaking as itself, even at a huge epoch.
    for epoch in [5, u64::MAX] {
        let e = ship(
            &r,
            "danang-coord1",
            vec![hello("danang-coord1", epoch), frame(epoch)],
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(
            e.message().contains("danang-coord1") && e.message().contains("Ship"),
            "{e}"
        );
    }
    // 3. The replica-site and an unrelated replicator may not ship either.
    for cert in ["hcm-rep", "hue-rep"] {
        let e = ship(&r, cert, vec![hello(cert, 5), frame(5)])
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{cert}: {e}");
    }
    assert_eq!(
        r.image(),
        before,
        "a refused stream changed the replica image"
    );
    assert_eq!(r.group.epoch(), Epoch(5));
    // 4. The primary with an epoch above the coordinators': refused, not fatal, no fence.
    let got = ship(&r, "hanoi-rep", vec![hello("hanoi-rep", 9), frame(9)])
        .await
        .unwrap();
    match got.first() {
        Some(ship_response::Msg::Refusal(x)) => {
            assert!(!x.fatal, "{x:?}");
            assert!(x.reason.contains("newer than the epoch 5"), "{x:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        r.group.epoch(),
        Epoch(5),
        "the fence rose above the coordinators' epoch"
    );
    // 5. At the right epoch, a frame claiming a newer one ends the stream unapplied.
    let got = ship(&r, "hanoi-rep", vec![hello("hanoi-rep", 5), frame(9)])
        .await
        .unwrap();
    assert!(
        matches!(got.first(), Some(ship_response::Msg::Welcome(w)) if w.epoch == 5),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|m| matches!(m, ship_response::Msg::Ack(_))),
        "{got:?}"
    );
    assert_eq!(r.group.epoch(), Epoch(5), "a frame raised the fence");
    assert_eq!(r.image(), before);
    // 6. An older epoch than the coordinators gave: fatal (the sender is fenced).
    r.learn("hanoi", 6);
    let got = ship(&r, "hanoi-rep", vec![hello("hanoi-rep", 5)])
        .await
        .unwrap();
    assert!(
        matches!(got.first(), Some(ship_response::Msg::Refusal(x)) if x.fatal),
        "{got:?}"
    );
    // 7. The rightful stream is applied.
    let got = ship(&r, "hanoi-rep", vec![hello("hanoi-rep", 6), frame(6)])
        .await
        .unwrap();
    assert!(
        got.iter()
            .any(|m| matches!(m, ship_response::Msg::Ack(a) if a.durable_seq == 1)),
        "{got:?}"
    );
    assert_eq!(r.image()[..4096], [0xee; 4096]);
    assert_eq!(r.group.epoch(), Epoch(6));
    // 8. After a failover the old primary's certificate is refused, the new one is heard.
    r.learn("hue", 7);
    let e = ship(&r, "hanoi-rep", vec![hello("hanoi-rep", 7)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
}

#[tokio::test]
async fn blocks_are_read_only_by_the_pair_and_recover_writes_only_under_its_root() {
    let r = start().await;
    r.learn("hanoi", 5);
    let read = ReadBlocksRequest {
        group: "vol".into(),
        resource: "disk0".into(),
        block_size: 4096,
        blocks: vec![0],
        ..Default::default()
    };
    // 1. Outside the pair, the witness coordinator, the auditor: refused by name.
    for cert in ["hue-rep", "danang-coord1", "auditor", "viewer"] {
        let e = r
            .client_as(cert)
            .await
            .read_blocks(read.clone())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{cert}: {e}");
        assert!(
            e.message().contains(cert) && e.message().contains("ReadBlocks"),
            "{cert}: {e}"
        );
    }
    // 2. The group's primary replicator passes the check (this service has no block source,
    // so the call itself answers unimplemented).
    let e = r
        .client_as("hanoi-rep")
        .await
        .read_blocks(read.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    // 3. Recover into a folder outside the root, directly or through `..` or a symlink.
    let root = r.dir.path().join("data/hcm-rep/recovered");
    std::fs::create_dir_all(&root).unwrap();
    let outside = r.dir.path().join("etc");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let recover = |out: &Path| RecoverRequest {
        group: "vol".into(),
        tag: "t".into(),
        out_dir: out.display().to_string(),
        ..Default::default()
    };
    for out in [
        outside.join("x"),
        root.join("../../../etc/x"),
        root.join("escape/x"),
    ] {
        let e = r
            .client_as("operator")
            .await
            .recover(recover(&out))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            tonic::Code::PermissionDenied,
            "{}: {e}",
            out.display()
        );
        assert!(
            e.message().contains(&out.display().to_string())
                && e.message().contains(&root.display().to_string()),
            "{e}"
        );
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    // 4. Inside the root the call goes on (no block source here: unimplemented).
    let e = r
        .client_as("operator")
        .await
        .recover(recover(&root.join("vol/copy")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    // 5. A replicator may not recover at all.
    let e = r
        .client_as("hanoi-rep")
        .await
        .recover(recover(&root.join("vol/copy")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
}
