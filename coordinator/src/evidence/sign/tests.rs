//! The signed message and each decision of [`check`], with real certificates from
//! `tandem_core::certs::init`: the honest case, then every tamper case refused the right way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::audit::{AuditChain, AuditKind, AuditRecord, ZERO_HASH};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const CLUSTER: &str = "c1";
const NOW_MS: i64 = 1_800_000_000_000;

fn chain(n: usize, tag: &str) -> Vec<AuditRecord> {
    let mut c = AuditChain::default();
    for k in 0..n {
        c.append(
            1_000 * k as i64,
            "operator",
            AuditKind::Note,
            None,
            json!({"n": k, "tag": tag}),
        );
    }
    c.records().to_vec()
}

fn summary(recs: &[AuditRecord]) -> ChainSummary {
    ChainSummary {
        first_index: recs.first().map(|r| r.index),
        last_index: recs.last().map(|r| r.index),
        first_prev_hash: ZERO_HASH.into(),
        head_hash: recs.last().map_or(ZERO_HASH.into(), |r| r.hash.clone()),
        records: recs.len() as u64,
    }
}

struct Pki {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Pki {
    fn new(cluster: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        tandem_core::certs::init(
            &path,
            cluster,
            &["coord-1", "coord-2", "hanoi-rep"],
            Duration::from_secs(86_400 * 365 * 20),
        )
        .unwrap();
        Pki { _dir: dir, path }
    }
    fn ca(&self) -> Vec<Vec<u8>> {
        tandem_core::certs::read_pem_certs(&self.path.join("ca.pem")).unwrap()
    }
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(Path::new(&self.path).join(name)).unwrap()
    }
    /// `name` (a node or client file) signs the head of `recs`.
    fn sign(&self, name: &str, recs: &[AuditRecord]) -> SignedHead {
        let last = recs.last().unwrap();
        let claim = HeadClaim {
            cluster: CLUSTER.into(),
            signer: name.into(),
            index: last.index,
            hash: last.hash.clone(),
            signed_at_ms: NOW_MS,
        };
        let sig = sign(&claim, &self.read(&format!("{name}.key"))).unwrap();
        SignedHead::new(claim, &sig, self.read(&format!("{name}.pem")))
    }
}

fn coordinators() -> Vec<String> {
    vec!["coord-1".into(), "coord-2".into()]
}

#[test]
fn the_signed_message_is_domain_separated_text_and_refuses_ambiguous_fields() {
    let c = HeadClaim {
        cluster: "prod".into(),
        signer: "coord-1".into(),
        index: 42,
        hash: "ab".repeat(32),
        signed_at_ms: 1_700_000_000_123,
    };
    let golden = format!(
        "tandem-audit-head-v1\ncluster=prod\nsigner=coord-1\nindex=42\nhash={}\nsigned_at_ms=1700000000123\n",
        "ab".repeat(32)
    );
    assert_eq!(message(&c).unwrap(), golden.into_bytes());
    let mut bad = c.clone();
    bad.cluster = "prod\nindex=1".into();
    assert!(matches!(
        message(&bad),
        Err(SignError::BadClaim {
            field: "cluster",
            ..
        })
    ));
    let mut bad = c;
    bad.hash = "AB".repeat(32);
    assert!(matches!(
        message(&bad),
        Err(SignError::BadClaim { field: "hash", .. })
    ));
}

#[test]
fn an_honest_signed_head_verifies_and_names_signer_index_and_time() {
    let pki = Pki::new(CLUSTER);
    let recs = chain(5, "a");
    let head = pki.sign("coord-1", &recs);
    let round = parse(&head.to_bytes()).unwrap();
    assert_eq!(round, head);
    let ok = check(
        &round,
        CLUSTER,
        &summary(&recs),
        &pki.ca(),
        Some(&coordinators()),
    )
    .unwrap();
    assert_eq!(ok.claim.signer, "coord-1");
    assert_eq!(ok.claim.index, 4);
    assert_eq!(ok.claim.hash, recs[4].hash);
    assert!(ok.coordinator_checked);
    assert!(ok.ca_subject.contains(CLUSTER), "{}", ok.ca_subject);
}

#[test]
fn a_rebuilt_chain_is_refused_as_rebuilt_and_a_re_pointed_head_as_a_bad_signature() {
    let pki = Pki::new(CLUSTER);
    let honest = chain(5, "a");
    let head = pki.sign("coord-1", &honest);
    // Same length, valid hashes, other content: the signed hash is not the head any more.
    let rebuilt = chain(5, "forged");
    let err = check(&head, CLUSTER, &summary(&rebuilt), &pki.ca(), None).unwrap_err();
    assert!(
        matches!(&err, SignError::HeadMismatch { index: 4, signed, found }
            if *signed == honest[4].hash && *found == rebuilt[4].hash),
        "{err}"
    );
    assert!(err.to_string().contains("signed-head.json hash"), "{err}");
    // Pointing the file at the rebuilt head breaks the signature.
    let mut moved = head;
    moved.claim.hash = rebuilt[4].hash.clone();
    let err = check(&moved, CLUSTER, &summary(&rebuilt), &pki.ca(), None).unwrap_err();
    assert!(
        matches!(err, SignError::BadSignature { index: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("signed-head.json signature"));
}

#[test]
fn a_chain_cut_short_or_extended_is_refused_with_both_indexes() {
    let pki = Pki::new(CLUSTER);
    let recs = chain(6, "a");
    let head = pki.sign("coord-1", &recs);
    let err = check(&head, CLUSTER, &summary(&recs[..4]), &pki.ca(), None).unwrap_err();
    assert_eq!(
        err,
        SignError::ChainCutShort {
            signed: 5,
            found: "3".into()
        }
    );
    assert!(err.to_string().contains("cut short"), "{err}");
    let err = check(&head, CLUSTER, &summary(&[]), &pki.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::ChainCutShort { signed: 5, .. }));
    // A head signed at 3 does not vouch for records 4 and 5.
    let early = pki.sign("coord-1", &recs[..4]);
    let err = check(&early, CLUSTER, &summary(&recs), &pki.ca(), None).unwrap_err();
    assert_eq!(
        err,
        SignError::ChainExtended {
            signed: 3,
            found: 5
        }
    );
}

#[test]
fn a_signature_under_another_ca_is_refused_even_with_the_same_names() {
    let ours = Pki::new(CLUSTER);
    let theirs = Pki::new(CLUSTER);
    let recs = chain(3, "a");
    let head = theirs.sign("coord-1", &recs);
    let err = check(&head, CLUSTER, &summary(&recs), &ours.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::NotFromCa { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("signed-head.json certificate_pem: not issued by the CA"),
        "{err}"
    );
    // Their certificate with a signature made by our key: still not from our CA.
    let mut swapped = ours.sign("coord-1", &recs);
    swapped.certificate_pem = theirs.read("coord-1.pem");
    let err = check(&swapped, CLUSTER, &summary(&recs), &ours.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::NotFromCa { .. }), "{err}");
    // Our certificate with their key's signature: the signature fails.
    let mut mixed = theirs.sign("coord-1", &recs);
    mixed.certificate_pem = ours.read("coord-1.pem");
    let err = check(&mixed, CLUSTER, &summary(&recs), &ours.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::BadSignature { .. }), "{err}");
}

#[test]
fn only_a_coordinator_node_certificate_may_sign() {
    let pki = Pki::new(CLUSTER);
    let recs = chain(3, "a");
    // A replicator's node certificate: a node, but not a coordinator.
    let rep = pki.sign("hanoi-rep", &recs);
    let err = check(
        &rep,
        CLUSTER,
        &summary(&recs),
        &pki.ca(),
        Some(&coordinators()),
    );
    assert!(
        matches!(&err, Err(SignError::NotACoordinator { reason }) if reason.contains("hanoi-rep is not a coordinator")),
        "{err:?}"
    );
    // Without a coordinator list any node of the CA passes, and the report says so.
    let ok = check(&rep, CLUSTER, &summary(&recs), &pki.ca(), None).unwrap();
    assert!(!ok.coordinator_checked);
    // An operator's client certificate is not a node.
    let op = pki.sign("operator", &recs);
    let err = check(&op, CLUSTER, &summary(&recs), &pki.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::NotACoordinator { .. }), "{err}");
    // The file naming another node than its certificate.
    let mut renamed = pki.sign("coord-1", &recs);
    renamed.claim.signer = "coord-2".into();
    let err = check(&renamed, CLUSTER, &summary(&recs), &pki.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::NotACoordinator { .. }), "{err}");
}

#[test]
fn another_cluster_a_bad_time_and_a_foreign_format_are_refused() {
    let pki = Pki::new(CLUSTER);
    let recs = chain(3, "a");
    let head = pki.sign("coord-1", &recs);
    let err = check(&head, "other", &summary(&recs), &pki.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::ClusterMismatch { .. }), "{err}");
    // Signed (and so claimed) long before the certificate existed.
    let mut claim = head.claim.clone();
    claim.signed_at_ms = 1_000;
    let sig = sign(&claim, &pki.read("coord-1.key")).unwrap();
    let old = SignedHead::new(claim, &sig, pki.read("coord-1.pem"));
    let err = check(&old, CLUSTER, &summary(&recs), &pki.ca(), None).unwrap_err();
    assert!(matches!(err, SignError::CertNotValidAt { .. }), "{err}");
    let mut text: serde_json::Value = serde_json::from_slice(&head.to_bytes()).unwrap();
    text["algorithm"] = json!("none");
    let err = parse(text.to_string().as_bytes()).unwrap_err();
    assert!(matches!(err, SignError::Malformed(_)), "{err}");
}
