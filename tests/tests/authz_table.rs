//! The coordinator API's authorization table, walked with real processes: every caller class
//! we can hold a certificate for (a coordinator, the primary's and the replica's replicator, a
//! replicator of no pair, operator, auditor, viewer, another CA's operator, no certificate)
//! against every call. Allowed calls pass the gate (they may still fail on their own terms: an
//! unknown run is not found); refused ones answer PermissionDenied naming the certificate and
//! the call, and the chain holds a `refused` record whose actor is that certificate. The
//! reproduction of issue 16 (a replica replicator's certificate used to pause) is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use tandem_coordinator::server::table::{allowed, Call, CALLS};
use tandem_core::authz::CallerClass;
use tandem_core::config::Topology;
use tandem_core::net::Net;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::*;
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};
use tonic::transport::Channel;

fn start(topo: &Topo) -> Vec<NodeProc> {
    let mut names = topo.coordinators.clone();
    names.push("hanoi-rep".into());
    names.push("hcm-rep".into());
    names.iter().map(|n| NodeProc::start(topo, n)).collect()
}

fn wait_protected(topo: &Topo) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        topo.wait_status(&[], Duration::from_secs(30), "protected", |st| {
            st["groups"]
                .as_array()?
                .iter()
                .find(|g| g["name"] == "vol" && g["state"] == "protected")
                .map(|_| ())
        })
    }));
    if let Err(e) = r {
        dump_logs(topo);
        std::panic::resume_unwind(e);
    }
}

fn net_as(topo: &Topology, dir: &Path, name: &str) -> Net {
    Net::for_client(
        topo,
        name,
        Some((
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        )),
    )
    .unwrap()
}

async fn client(net: &Net, addr: &str) -> Result<CoordinatorClient<Channel>, String> {
    let ep = net
        .endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    net.connect(ep)
        .await
        .map(CoordinatorClient::new)
        .map_err(|e| e.to_string())
}

/// One call of the table with a request that has no lasting effect beyond a pause that the
/// next row resumes (unknown runs, an unknown group for StartRun and Move, an epoch-0 lease release).
async fn make(
    c: &mut CoordinatorClient<Channel>,
    call: Call,
    node: &str,
) -> Result<(), tonic::Status> {
    let unknown_run = "no-such-run".to_string();
    match call {
        Call::Status => c.status(StatusRequest::default()).await.map(drop),
        Call::Audit => c
            .audit(AuditRequest {
                from_index: 0,
                limit: 1,
            })
            .await
            .map(drop),
        Call::Runs => c.runs(RunsRequest::default()).await.map(drop),
        Call::GetRun => c
            .get_run(GetRunRequest {
                run_id: unknown_run,
            })
            .await
            .map(drop),
        Call::Pause => c
            .pause(GroupCall {
                group: "vol".into(),
                reason: "authz walk".into(),
            })
            .await
            .map(drop),
        Call::Resume => c
            .resume(GroupCall {
                group: "vol".into(),
                reason: "authz walk".into(),
            })
            .await
            .map(drop),
        Call::StartRun => c
            .start_run(StartRunRequest {
                kind: RunKind::Drill.into(),
                group: "no-such-group".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        Call::RunAction => c
            .run_action(RunActionRequest {
                run_id: unknown_run,
                action: RunAction::Cancel.into(),
                step: String::new(),
            })
            .await
            .map(drop),
        Call::Record => c
            .record(RecordRequest {
                kind: RecordKind::Note.into(),
                group: String::new(),
                detail_json: r#"{"text":"authz walk"}"#.into(),
            })
            .await
            .map(drop),
        Call::Move => c
            .r#move(MoveRequest {
                group: "no-such-group".into(),
                site: "hcm".into(),
                to: "hcm-rep".into(),
                reason: "authz walk".into(),
            })
            .await
            .map(drop),
        Call::Heartbeat => c
            .heartbeat(HeartbeatRequest {
                node: node.into(),
                ..Default::default()
            })
            .await
            .map(drop),
        Call::ReleaseLease => c
            .release_lease(ReleaseLeaseRequest {
                group: "vol".into(),
                epoch: 0,
                node: node.into(),
            })
            .await
            .map(drop),
        Call::SyncDegraded => c
            .sync_degraded(SyncDegradedRequest {
                group: "vol".into(),
                epoch: 0,
                on: false,
                node: node.into(),
            })
            .await
            .map(drop),
        Call::PlannedStep => c
            .planned_step(PlannedStepRequest {
                run_id: unknown_run,
                step: 0,
            })
            .await
            .map(drop),
        Call::Propose => c
            .propose(ProposeRequest {
                command: r#"{"op":"record","at_ms":0,"actor":"walk","kind":"note","group":null,"detail":{}}"#.into(),
            })
            .await
            .map(drop),
        // A head no chain has: an allowed caller passes the gate and the leader refuses to sign.
        Call::SignAuditHead => c
            .sign_audit_head(SignAuditHeadRequest {
                index: 0,
                hash: "0".repeat(64),
            })
            .await
            .map(drop),
        // Actions on an unknown run or action and a review of an unknown run: an allowed
        // caller passes the gate and the state machine refuses them.
        Call::AddAction => c
            .add_action(AddActionRequest {
                group: "vol".into(),
                run_id: unknown_run.clone(),
                title: "walk".into(),
                owner: "walk".into(),
                due: "2030-01-01".into(),
            })
            .await
            .map(drop),
        Call::AssignAction => c
            .assign_action(AssignActionRequest {
                id: "A-0".into(),
                owner: "walk".into(),
            })
            .await
            .map(drop),
        Call::CloseAction => c
            .close_action(CloseActionRequest {
                id: "A-0".into(),
                note: "walk".into(),
            })
            .await
            .map(drop),
        Call::Actions => c.actions(ActionsRequest::default()).await.map(drop),
        Call::SignReview => c
            .sign_review(SignReviewRequest {
                run_id: unknown_run.clone(),
                note: String::new(),
            })
            .await
            .map(drop),
    }
}

fn audit(topo: &Topo) -> Vec<Value> {
    let (code, out, err) = topo.tandem(&["audit", "--json", "--limit", "100000"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn every_caller_class_against_every_call_as_the_table_says() {
    let topo = Topo::new(TopoOpts::default());
    let _procs = start(&topo);
    wait_protected(&topo);
    let t = Topology::load(&topo.config).unwrap();
    let certs = topo.path().join("certs");
    // A replicator certificate from the cluster CA for a node no pair holds.
    tandem_core::certs::rotate(
        &certs,
        &t.cluster.name,
        "ghost-rep",
        false,
        Duration::from_secs(86_400),
    )
    .unwrap();
    // A database's WAL client: it may call no coordinator at all.
    tandem_core::certs::issue_wal_client(&certs, "vol", "postgres", Duration::from_secs(86_400))
        .unwrap();
    let other_ca = tempfile::tempdir().unwrap();
    tandem_core::certs::init(
        other_ca.path(),
        "evil",
        &["hanoi-rep"],
        Duration::from_secs(86_400),
    )
    .unwrap();
    let coordinator = topo.coordinators[0].clone();
    let classes: Vec<(CallerClass, String, Net)> = vec![
        (
            CallerClass::Coordinator,
            coordinator.clone(),
            net_as(&t, &certs, &coordinator),
        ),
        (
            CallerClass::PrimaryReplicator,
            "hanoi-rep".into(),
            net_as(&t, &certs, "hanoi-rep"),
        ),
        (
            CallerClass::ReplicaReplicator,
            "hcm-rep".into(),
            net_as(&t, &certs, "hcm-rep"),
        ),
        (
            CallerClass::OtherReplicator,
            "ghost-rep".into(),
            net_as(&t, &certs, "ghost-rep"),
        ),
        (
            CallerClass::Operator,
            "operator".into(),
            net_as(&t, &certs, "operator"),
        ),
        (
            CallerClass::Auditor,
            "auditor".into(),
            net_as(&t, &certs, "auditor"),
        ),
        (
            CallerClass::Viewer,
            "viewer".into(),
            net_as(&t, &certs, "viewer"),
        ),
        (
            CallerClass::WalClient,
            "postgres@vol".into(),
            net_as(&t, &certs, "wal-client-vol"),
        ),
        (
            CallerClass::UnknownCa,
            "operator".into(),
            net_as(&t, other_ca.path(), "operator"),
        ),
        (CallerClass::NoCertificate, String::new(), Net::plaintext()),
    ];
    // Ask a follower, so forwarding to the leader (naming the caller) is walked too.
    let addr = topo.addr(&topo.coordinators[1]).to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut expect_refused: Vec<(String, &str)> = Vec::new();
    for (class, name, net) in &classes {
        for (call, call_name, _) in CALLS {
            let r = rt.block_on(async {
                match client(net, &addr).await {
                    Ok(mut c) => make(&mut c, call, name)
                        .await
                        .map_err(|s| (s.code(), s.message().to_owned())),
                    Err(e) => Err((tonic::Code::Unavailable, e)),
                }
            });
            if class.refused_at_handshake() {
                // Turned away by the TLS handshake: no call was read, so nothing names them.
                let e = r.expect_err(&format!("{class} made {call_name}"));
                assert_ne!(
                    e.0,
                    tonic::Code::PermissionDenied,
                    "{class} {call_name}: {e:?}"
                );
                continue;
            }
            // The table lets any replicator ask for a step planned at its own site; ghost-rep
            // is at no site of the topology, so that condition refuses it.
            let allowed_here = allowed(call, *class)
                && !(call == Call::PlannedStep && name.as_str() == "ghost-rep");
            match (allowed_here, r) {
                (true, Err((code, msg))) => assert!(
                    !matches!(
                        code,
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                    ),
                    "{class} ({name}) may make {call_name} but was refused: {msg}"
                ),
                (true, Ok(())) => {}
                (false, Ok(())) => {
                    panic!("{class} ({name}) made {call_name}, which the table refuses")
                }
                (false, Err((code, msg))) => {
                    assert_eq!(
                        code,
                        tonic::Code::PermissionDenied,
                        "{class} {call_name}: {msg}"
                    );
                    assert!(
                        msg.contains(name.as_str()) && msg.contains(call_name),
                        "{msg}"
                    );
                    expect_refused.push((name.clone(), call_name));
                }
            }
        }
    }
    assert!(
        expect_refused.len() > 40,
        "the walk refused only {} calls",
        expect_refused.len()
    );
    assert_audited_once(&topo, &expect_refused);
}

/// Every refusal is in the chain under the certificate's name, once (the first of its window).
fn assert_audited_once(topo: &Topo, expect_refused: &[(String, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let chain = audit(topo);
        let missing: Vec<_> = expect_refused
            .iter()
            .filter(|(actor, call)| {
                chain
                    .iter()
                    .filter(|r| {
                        r["kind"] == "refused"
                            && r["actor"] == actor.as_str()
                            && r["detail"]["call"] == *call
                    })
                    .count()
                    != 1
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not audited exactly once: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_replica_replicators_certificate_cannot_pause_and_the_chain_names_it() {
    let topo = Topo::new(TopoOpts::default());
    let _procs = start(&topo);
    wait_protected(&topo);
    let certs = topo.path().join("certs");
    let pem = certs.join("hcm-rep.pem");
    let key = certs.join("hcm-rep.key");
    let args = [
        "pause",
        "vol",
        "--cert",
        pem.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let (code, out, err) = topo.tandem(&args);
    assert_eq!(code, 1, "the replicator paused: {out} {err}");
    assert!(err.contains("hcm-rep") && err.contains("Pause"), "{err}");
    // Knocking again does not grow the chain: still one record, the rest counted.
    for _ in 0..5 {
        let (code, _, _) = topo.tandem(&args);
        assert_eq!(code, 1);
    }
    let chain = audit(&topo);
    let refused: Vec<&Value> = chain
        .iter()
        .filter(|r| r["kind"] == "refused" && r["detail"]["call"] == "Pause")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["actor"], "hcm-rep", "{}", refused[0]);
    assert!(
        !chain.iter().any(|r| r["kind"] == "replication_paused"),
        "replication was paused"
    );
}
