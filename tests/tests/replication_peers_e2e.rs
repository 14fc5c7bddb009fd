//! Replication peers with real processes and the cluster's certificates: the witness
//! coordinator cannot write into the replica (the image is unchanged byte for byte), blocks
//! are read only by the group's pair of replicators, and `Recover` writes only under the
//! replica's recover root; the group stays protected throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;
use tandem_core::config::Topology;
use tandem_core::frame::{Change, Encoder, FrameMeta};
use tandem_core::ids::{Epoch, GroupId, Seq};
use tandem_core::net::Net;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::{ship_request, Hello, ReadBlocksRequest, RecoverRequest, ShipRequest};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};
use tonic::transport::Channel;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client of `node` presenting the cluster's certificate `cert`.
async fn client(topo: &Topo, cert: &str, node: &str) -> ReplicationClient<Channel> {
    let t = Topology::load(&topo.config).unwrap();
    let dir = topo.path().join("certs");
    let net = Net::for_client(
        &t,
        cert,
        Some((
            dir.join(format!("{cert}.pem")),
            dir.join(format!("{cert}.key")),
        )),
    )
    .unwrap();
    let ep = net
        .endpoint(topo.addr(node))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    ReplicationClient::new(net.connect(ep).await.unwrap())
}

fn hostile_stream(epoch: u64) -> Vec<ShipRequest> {
    let frame = Encoder::new(1)
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
    vec![
        ShipRequest {
            msg: Some(ship_request::Msg::Hello(Hello {
                group: "vol".into(),
                epoch,
                from_node: "danang-coord1".into(),
                lineage: Vec::new(),
            })),
        },
        ShipRequest {
            msg: Some(ship_request::Msg::Frame(frame)),
        },
    ]
}

#[test]
fn only_the_groups_peers_ship_and_read_blocks_and_recover_stays_under_its_root() {
    let topo = Topo::new(TopoOpts::default());
    let mut names = topo.coordinators.clone();
    names.extend(["hanoi-rep".to_owned(), "hcm-rep".to_owned()]);
    let _procs: Vec<NodeProc> = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| steps(&topo)));
    if let Err(e) = r {
        dump_logs(&topo);
        std::panic::resume_unwind(e);
    }
}

fn wait_protected(topo: &Topo) {
    topo.wait_status(&[], Duration::from_secs(30), "protected", |st| {
        st["groups"]
            .as_array()?
            .iter()
            .find(|g| g["name"] == "vol" && g["state"] == "protected")
            .map(|_| ())
    });
}

fn steps(topo: &Topo) {
    // 1. The group is protected: both replicators have heard the coordinators.
    wait_protected(topo);
    let image = topo.path().join("volumes/hcm/disk0.img");
    let before = std::fs::read(&image).unwrap();
    rt().block_on(async {
        // 2. The witness coordinator's certificate ships into the replica, at the current and
        // at the highest epoch: refused by name, nothing written.
        for epoch in [1, u64::MAX] {
            let mut c = client(topo, "danang-coord1", "hcm-rep").await;
            let e = match c.ship(tokio_stream::iter(hostile_stream(epoch))).await {
                Err(e) => e,
                Ok(s) => match s.into_inner().message().await {
                    Err(e) => e,
                    Ok(m) => panic!("the witness's Ship stream was answered: {m:?}"),
                },
            };
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
            assert!(
                e.message().contains("danang-coord1") && e.message().contains("Ship"),
                "{e}"
            );
        }
        // 3. Blocks of the primary: the auditor and the witness are refused, the replica's
        // replicator (as the primary learned it from the coordinators) reads them.
        let read = ReadBlocksRequest {
            group: "vol".into(),
            resource: "disk0".into(),
            block_size: 4096,
            blocks: vec![0, 1],
            ..Default::default()
        };
        for cert in ["auditor", "danang-coord1"] {
            let e = client(topo, cert, "hanoi-rep")
                .await
                .read_blocks(read.clone())
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{cert}: {e}");
            assert!(e.message().contains(cert), "{e}");
        }
        let ok = client(topo, "hcm-rep", "hanoi-rep")
            .await
            .read_blocks(read)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.blocks.len(), 2, "{ok:?}");
        // 4. Recover outside the replica's recover root: refused, nothing created.
        let out = topo.path().join("outside-root");
        let e = client(topo, "operator", "hcm-rep")
            .await
            .recover(RecoverRequest {
                group: "vol".into(),
                at_ms: 1,
                out_dir: out.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        let root = topo.path().join("data/hcm-rep/recovered");
        assert!(
            e.message().contains(&out.display().to_string())
                && e.message().contains(&root.display().to_string()),
            "{e}"
        );
        assert!(!out.exists());
    });
    // 5. The replica image is byte for byte what it was, and the group is still protected.
    assert!(
        std::fs::read(&image).unwrap() == before,
        "the witness's stream changed the replica image"
    );
    wait_protected(topo);
    let log = std::fs::read_to_string(topo.path().join("hcm-rep.log")).unwrap_or_default();
    assert!(
        log.contains("refused Replication call"),
        "no refusal logged"
    );
}
