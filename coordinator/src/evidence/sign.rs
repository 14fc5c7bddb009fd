//! Authenticity of an evidence folder: the signed head (`signed-head.json`), the message the
//! leader signs, the signing itself and the offline decision of `tandem evidence verify --ca`.
//!
//! The leader signs, with its node certificate's key (ECDSA P-256, as `tandem certs init`
//! makes it), the domain-separated text [`message`]: `tandem-audit-head-v1`, the cluster, the
//! signer, the head's index and hash and the signing time, one `key=value` per line. A verifier
//! holding only the folder and the cluster CA ([`check`]) proves that a node certificate of that
//! CA, naming a coordinator, signed exactly the head the folder's chain recomputes to. Pure
//! functions (the key PEM is passed in to [`sign`]) except [`verify_signed`], the thin I/O
//! layer that reads a folder and applies [`check`].

use super::ChainSummary;
use serde::{Deserialize, Serialize};
use tandem_core::certs::{parse_cert, CertSubject};

/// File name of the signed head in the folder.
pub const SIGNED_HEAD_FILE: &str = "signed-head.json";
/// `format` of [`SIGNED_HEAD_FILE`].
pub const SIGNED_HEAD_FORMAT: &str = "tandem-signed-head";
/// Version of [`SIGNED_HEAD_FILE`] this build writes and reads.
pub const SIGNED_HEAD_VERSION: u32 = 1;
/// First line of the signed message: names what is signed and its version.
pub const DOMAIN: &str = "tandem-audit-head-v1";
/// The only algorithm signed and accepted: ECDSA over P-256 with SHA-256, ASN.1 DER signature.
pub const ALGORITHM: &str = "ecdsa-p256-sha256";

/// What the leader vouches for: the head of a chain, in a cluster, at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadClaim {
    /// Cluster name.
    pub cluster: String,
    /// Node that signs (the leader), as its certificate names it.
    pub signer: String,
    /// Index of the head record.
    pub index: u64,
    /// Hash of the head record (lowercase hex).
    pub hash: String,
    /// When the leader signed, unix ms.
    pub signed_at_ms: i64,
}

/// Content of `signed-head.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// Always [`SIGNED_HEAD_FORMAT`].
    pub format: String,
    /// [`SIGNED_HEAD_VERSION`].
    pub version: u32,
    /// The claim signed.
    #[serde(flatten)]
    pub claim: HeadClaim,
    /// `signed_at_ms` as RFC 3339 UTC, for a reader (not signed; checked equal).
    pub signed_at: String,
    /// [`ALGORITHM`].
    pub algorithm: String,
    /// The signature over [`message`], lowercase hex of the ASN.1 DER.
    pub signature: String,
    /// The signer's certificate as PEM (leaf first, as the node's certificate file holds it).
    pub certificate_pem: String,
}

impl SignedHead {
    /// The file content for `claim` signed with `signature` (DER) by the certificate
    /// `certificate_pem`.
    pub fn new(claim: HeadClaim, signature: &[u8], certificate_pem: String) -> SignedHead {
        SignedHead {
            format: SIGNED_HEAD_FORMAT.into(),
            version: SIGNED_HEAD_VERSION,
            signed_at: super::derive::iso_ms(claim.signed_at_ms),
            claim,
            algorithm: ALGORITHM.into(),
            signature: hex(signature),
            certificate_pem,
        }
    }

    /// `signed-head.json` as written: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        super::pretty(self)
    }
}

/// Why a head cannot be signed or a signed head is refused. Each names the file and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// A claim that cannot be written unambiguously (a newline in the cluster or signer, a hash
    /// that is not 64 lowercase hex digits).
    #[error("{SIGNED_HEAD_FILE} {field}: {reason}")]
    BadClaim {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The node's key cannot sign (not ECDSA P-256, or unreadable).
    #[error("signing key: {0}")]
    Key(String),
    /// `signed-head.json` is not a signed head this build reads.
    #[error("{SIGNED_HEAD_FILE}: {0}")]
    Malformed(String),
    /// The signed head is for another cluster than the manifest's.
    #[error("{SIGNED_HEAD_FILE} cluster: {found:?}, the manifest says {expected:?}")]
    ClusterMismatch {
        /// Manifest cluster.
        expected: String,
        /// Signed cluster.
        found: String,
    },
    /// The certificate does not chain to the CA given.
    #[error("{SIGNED_HEAD_FILE} certificate_pem: not issued by the CA given ({reason})")]
    NotFromCa {
        /// What failed.
        reason: String,
    },
    /// The certificate is not a coordinator's node certificate, or not the signer's.
    #[error("{SIGNED_HEAD_FILE} signer: {reason}")]
    NotACoordinator {
        /// What is wrong.
        reason: String,
    },
    /// The certificate was not valid when the head was signed.
    #[error("{SIGNED_HEAD_FILE} signed_at: {reason}")]
    CertNotValidAt {
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify over the claim with the certificate's key.
    #[error("{SIGNED_HEAD_FILE} signature: does not verify over the signed head (index {index}, hash {hash}) with the certificate of {signer}: the file was altered or signed by another key")]
    BadSignature {
        /// Signed index.
        index: u64,
        /// Signed hash.
        hash: String,
        /// Claimed signer.
        signer: String,
    },
    /// The signed index is beyond the folder's last record: records were cut off.
    #[error("{SIGNED_HEAD_FILE} index: the signed head is record {signed}, but audit.jsonl ends at {found}: the chain was cut short")]
    ChainCutShort {
        /// Signed index.
        signed: u64,
        /// The folder's last index (`none` when empty).
        found: String,
    },
    /// The signed index is before the folder's last record: records were added unsigned.
    #[error("{SIGNED_HEAD_FILE} index: the signed head is record {signed}, but audit.jsonl ends at {found}: records after the signed head are not vouched for")]
    ChainExtended {
        /// Signed index.
        signed: u64,
        /// The folder's last index.
        found: u64,
    },
    /// The head the chain recomputes to is not the signed one: the chain was rebuilt.
    #[error("{SIGNED_HEAD_FILE} hash: record {index} was signed with hash {signed}, but audit.jsonl recomputes to {found}: the chain was rebuilt")]
    HeadMismatch {
        /// Index.
        index: u64,
        /// Signed hash.
        signed: String,
        /// Recomputed hash.
        found: String,
    },
}

/// The exact bytes signed for `c`: `tandem-audit-head-v1`, then `cluster=`, `signer=`,
/// `index=`, `hash=`, `signed_at_ms=` lines, each ending in `\n`.
///
/// # Errors
/// [`SignError::BadClaim`] when a field would make the text ambiguous.
pub fn message(c: &HeadClaim) -> Result<Vec<u8>, SignError> {
    for (field, v) in [("cluster", &c.cluster), ("signer", &c.signer)] {
        if v.is_empty() || v.contains(['\n', '\r']) {
            return Err(SignError::BadClaim {
                field,
                reason: format!("{v:?} is empty or holds a line break"),
            });
        }
    }
    let hex = c.hash.len() == 64
        && c.hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return Err(SignError::BadClaim {
            field: "hash",
            reason: format!("{:?} is not 64 lowercase hex digits", c.hash),
        });
    }
    Ok(format!(
        "{DOMAIN}\ncluster={}\nsigner={}\nindex={}\nhash={}\nsigned_at_ms={}\n",
        c.cluster, c.signer, c.index, c.hash, c.signed_at_ms
    )
    .into_bytes())
}

/// Signs `c` with the PKCS#8 PEM key `key_pem` (an ECDSA P-256 node key); returns the ASN.1
/// DER signature.
///
/// # Errors
/// [`SignError::BadClaim`] or [`SignError::Key`].
pub fn sign(c: &HeadClaim, key_pem: &str) -> Result<Vec<u8>, SignError> {
    use rcgen::SigningKey as _;
    let msg = message(c)?;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| SignError::Key(e.to_string()))?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(SignError::Key(format!(
            "the node key is {:?}; only ECDSA P-256 keys sign evidence",
            key.algorithm()
        )));
    }
    key.sign(&msg).map_err(|e| SignError::Key(e.to_string()))
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses `signed-head.json`.
///
/// # Errors
/// [`SignError::Malformed`] naming what is wrong.
pub fn parse(bytes: &[u8]) -> Result<SignedHead, SignError> {
    let h: SignedHead = serde_json::from_slice(bytes)
        .map_err(|e| SignError::Malformed(format!("not a signed head: {e}")))?;
    if h.format != SIGNED_HEAD_FORMAT || h.version != SIGNED_HEAD_VERSION {
        return Err(SignError::Malformed(format!(
            "format {:?} version {}: this build reads {SIGNED_HEAD_FORMAT:?} version {SIGNED_HEAD_VERSION}",
            h.format, h.version
        )));
    }
    if h.algorithm != ALGORITHM {
        return Err(SignError::Malformed(format!(
            "algorithm {:?}: only {ALGORITHM} is accepted",
            h.algorithm
        )));
    }
    Ok(h)
}

/// Who signed what, once [`check`] accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticity {
    /// The claim, proven.
    pub claim: HeadClaim,
    /// The CA subject the certificate chains to.
    pub ca_subject: String,
    /// Whether the signer was checked against a list of coordinators (else: any node
    /// certificate of the CA was accepted).
    pub coordinator_checked: bool,
}

fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

/// The decision of `tandem evidence verify --ca`: is `head` a signature, by a coordinator's
/// node certificate issued by one of `ca_ders`, over exactly the chain summarized by `chain`
/// of cluster `cluster`? `coordinators` (when not `None`) lists the coordinator node names the
/// signer must be one of. Checks in order: cluster, certificate chains to the CA, certificate
/// names a node (and a coordinator), certificate valid at `signed_at_ms`, signature, then the
/// signed head against the chain (cut short, extended, rebuilt).
///
/// # Errors
/// The first failed check as a [`SignError`] naming the field.
pub fn check(
    head: &SignedHead,
    cluster: &str,
    chain: &ChainSummary,
    ca_ders: &[Vec<u8>],
    coordinators: Option<&[String]>,
) -> Result<Authenticity, SignError> {
    let c = &head.claim;
    if c.cluster != cluster {
        return Err(SignError::ClusterMismatch {
            expected: cluster.to_string(),
            found: c.cluster.clone(),
        });
    }
    if head.signed_at != super::derive::iso_ms(c.signed_at_ms) {
        return Err(SignError::Malformed(format!(
            "signed_at {:?} is not signed_at_ms {}",
            head.signed_at, c.signed_at_ms
        )));
    }
    let ders = pem_ders(&head.certificate_pem);
    let leaf_der = ders
        .first()
        .ok_or_else(|| SignError::Malformed("certificate_pem holds no CERTIFICATE".into()))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
        .map_err(|e| SignError::Malformed(format!("certificate_pem: {e}")))?;
    let ca_subject = chains_to(&leaf, ca_ders)?;
    let info = parse_cert(leaf_der).map_err(SignError::Malformed)?;
    let node = match info.subject {
        CertSubject::Node(n) => n,
        other => {
            return Err(SignError::NotACoordinator {
                reason: format!("the certificate names {other}, not a node"),
            })
        }
    };
    if node != c.signer {
        return Err(SignError::NotACoordinator {
            reason: format!("the file names {:?}, its certificate {node:?}", c.signer),
        });
    }
    if let Some(list) = coordinators {
        if !list.contains(&node) {
            return Err(SignError::NotACoordinator {
                reason: format!(
                    "{node} is not a coordinator (coordinators: {})",
                    list.join(", ")
                ),
            });
        }
    }
    let at_s = c.signed_at_ms.div_euclid(1000);
    let v = leaf.validity();
    if at_s < v.not_before.timestamp() || at_s > v.not_after.timestamp() {
        return Err(SignError::CertNotValidAt {
            reason: format!(
                "{} is outside the certificate's validity ({} to {})",
                head.signed_at, v.not_before, v.not_after
            ),
        });
    }
    let bad = || SignError::BadSignature {
        index: c.index,
        hash: c.hash.clone(),
        signer: c.signer.clone(),
    };
    let sig = unhex(&head.signature).ok_or_else(bad)?;
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        leaf.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(&message(c)?, &sig).map_err(|_| bad())?;
    head_matches(c, chain)?;
    Ok(Authenticity {
        claim: c.clone(),
        ca_subject,
        coordinator_checked: coordinators.is_some(),
    })
}

/// The CA subject of `ca_ders` that issued and signed `leaf`.
fn chains_to(
    leaf: &x509_parser::certificate::X509Certificate<'_>,
    ca_ders: &[Vec<u8>],
) -> Result<String, SignError> {
    let mut tried = Vec::new();
    for der in ca_ders {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        tried.push(ca.subject().to_string());
        if ca.subject() == leaf.issuer() && leaf.verify_signature(Some(ca.public_key())).is_ok() {
            return Ok(ca.subject().to_string());
        }
    }
    Err(SignError::NotFromCa {
        reason: format!(
            "its issuer is {:?}; the CA file holds {}",
            leaf.issuer().to_string(),
            if tried.is_empty() {
                "no certificate".to_string()
            } else {
                tried.join("; ")
            }
        ),
    })
}

/// Is the signed head exactly the head of `chain`?
///
/// # Errors
/// [`SignError::ChainCutShort`], [`SignError::ChainExtended`] or [`SignError::HeadMismatch`].
pub fn head_matches(c: &HeadClaim, chain: &ChainSummary) -> Result<(), SignError> {
    match chain.last_index {
        None => Err(SignError::ChainCutShort {
            signed: c.index,
            found: "none".into(),
        }),
        Some(last) if c.index > last => Err(SignError::ChainCutShort {
            signed: c.index,
            found: last.to_string(),
        }),
        Some(last) if c.index < last => Err(SignError::ChainExtended {
            signed: c.index,
            found: last,
        }),
        Some(_) if c.hash != chain.head_hash => Err(SignError::HeadMismatch {
            index: c.index,
            signed: c.hash.clone(),
            found: chain.head_hash.clone(),
        }),
        Some(_) => Ok(()),
    }
}

/// [`super::verify`], then authenticity: the folder must hold `signed-head.json`, and [`check`]
/// must accept it against the CA certificates `ca_ders` (and, when given, the coordinator
/// names).
///
/// # Errors
/// As [`super::verify`]; [`super::EvidenceError::FileMissing`] for an unsigned folder;
/// [`super::EvidenceError::Signed`] naming the refused field.
pub fn verify_signed(
    dir: &std::path::Path,
    ca_ders: &[Vec<u8>],
    coordinators: Option<&[String]>,
) -> Result<(super::VerifyReport, Authenticity), super::EvidenceError> {
    let report = super::verify(dir)?;
    let head = report
        .signed_head
        .as_ref()
        .ok_or_else(|| super::EvidenceError::FileMissing {
            name: format!(
                "{} (the manifest does not list it: the folder is not signed)",
                SIGNED_HEAD_FILE
            ),
        })?;
    let ok = check(
        head,
        &report.manifest.cluster,
        &report.manifest.chain,
        ca_ders,
        coordinators,
    )?;
    Ok((report, ok))
}

#[cfg(test)]
mod tests;
