//! Signed evidence with real processes: a TLS cluster's `tandem evidence export` is signed by
//! the coordinator leader and `tandem evidence verify --ca` accepts it, naming the signer; then
//! three forgeries that pass the integrity check are each refused by `--ca` with the reason: a
//! chain rebuilt by hand (valid hashes, the old signature kept), a chain cut short, and the
//! honest folder checked under another CA.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::time::Duration;
use tandem_coordinator::audit::{AuditChain, AuditRecord};
use tandem_coordinator::evidence::{self, sign, AUDIT_FILE, MANIFEST_FILE};
use tandem_tests::{dump_logs, NodeProc, Topo, TopoOpts};

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

/// The folder `src` re-rendered from `records` (hashes recomputed from scratch: what anyone
/// holding the folder can do) with `src`'s signed head copied over unchanged.
fn forge(src: &Path, dst: &Path, records: &[AuditRecord]) {
    let mut chain = AuditChain::default();
    for r in records {
        chain.append(
            r.at_ms,
            &r.actor,
            r.kind,
            r.group.as_deref(),
            r.detail.clone(),
        );
    }
    let manifest =
        evidence::parse_manifest(&std::fs::read(src.join(MANIFEST_FILE)).unwrap()).unwrap();
    let head = sign::parse(&std::fs::read(src.join(sign::SIGNED_HEAD_FILE)).unwrap()).unwrap();
    let rendered = evidence::render_window(
        chain.records(),
        &manifest.chain.first_prev_hash,
        &manifest.options(),
    );
    evidence::write_rendered(rendered, Some(&head), dst).unwrap();
}

fn verify(topo: &Topo, dir: &Path, ca: &Path) -> (i32, String, String) {
    topo.tandem(&[
        "evidence",
        "verify",
        dir.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--config",
        topo.config.to_str().unwrap(),
    ])
}

#[test]
fn a_cluster_export_is_signed_and_forgeries_are_refused_under_the_ca() {
    // 1. A TLS cluster with its replicators, protected.
    let topo = Topo::new(TopoOpts::default());
    let mut names = topo.coordinators.clone();
    names.push("hanoi-rep".into());
    names.push("hcm-rep".into());
    let _procs: Vec<NodeProc> = names.iter().map(|n| NodeProc::start(&topo, n)).collect();
    wait_protected(&topo);
    let ca = topo.path().join("certs").join("ca.pem");
    let work = tempfile::tempdir().unwrap();
    let ev = work.path().join("ev");

    // 2. Export: the leader signs the head.
    let (code, out, err) = topo.tandem(&["evidence", "export", "--out", ev.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("signed by coordinator"), "{out}");
    let head = sign::parse(&std::fs::read(ev.join(sign::SIGNED_HEAD_FILE)).unwrap()).unwrap();
    assert!(topo.coordinators.contains(&head.claim.signer), "{head:?}");

    // 3. verify --ca accepts it and names signer, record and time; without --ca it says
    //    authenticity was not checked.
    let (code, out, err) = verify(&topo, &ev, &ca);
    assert_eq!(code, 0, "{out}\n{err}");
    let expect = format!(
        "AUTHENTIC: coordinator {} signed record {} (hash {})",
        head.claim.signer, head.claim.index, head.claim.hash
    );
    assert!(out.contains(&expect), "{out}");
    assert!(out.contains(&head.signed_at), "{out}");
    let (code, out, _) = topo.tandem(&["evidence", "verify", ev.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("authenticity NOT checked"), "{out}");

    // 4. A chain rebuilt by hand: one record's detail changed, every hash recomputed, every
    //    file re-derived, the signed head kept. Integrity alone accepts it; --ca does not.
    let records =
        evidence::parse_audit_jsonl(&std::fs::read(ev.join(AUDIT_FILE)).unwrap()).unwrap();
    assert!(records.len() >= 2, "{} records", records.len());
    let mut edited = records.clone();
    edited[1].detail = serde_json::json!({"forged": true});
    let rebuilt = work.path().join("rebuilt");
    forge(&ev, &rebuilt, &edited);
    let (code, out, err) = topo.tandem(&["evidence", "verify", rebuilt.to_str().unwrap()]);
    assert_eq!(code, 0, "the forgery is consistent: {out}\n{err}");
    let (code, out, err) = verify(&topo, &rebuilt, &ca);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("signed-head.json hash") && err.contains("the chain was rebuilt"),
        "{err}"
    );

    // 5. The chain cut short at the end (the last record dropped), the signed head kept.
    let cut = work.path().join("cut");
    forge(&ev, &cut, &records[..records.len() - 1]);
    let (code, out, err) = verify(&topo, &cut, &ca);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("signed-head.json index") && err.contains("cut short"),
        "{err}"
    );

    // 6. The honest folder checked under another CA: the signer's certificate is not its.
    let other = work.path().join("other-ca");
    tandem_core::certs::init(&other, "test", &["x"], Duration::from_secs(86_400)).unwrap();
    let (code, out, err) = verify(&topo, &ev, &other.join("ca.pem"));
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("signed-head.json certificate_pem: not issued by the CA"),
        "{err}"
    );
}
