//! Certificate authority and node/role certificates: generation (rcgen), file layout and parsing.
//!
//! The layout of a certificate folder (`[tls] dir`):
//! - `ca.pem`, `ca.key`: the CA that signs every certificate below (`ca.key` stays offline in
//!   production; `tandem certs rotate` needs it).
//! - `roots.pem`: the trusted roots, one or more CA certificates. Holds both the old and the
//!   new CA while a CA rotation overlaps.
//! - `NODE.pem`, `NODE.key`: one per node of the topology; the certificate's DNS SAN is the
//!   node id and its subject OU is `tandem-node`.
//! - `operator.pem`, `auditor.pem`, `viewer.pem` (and keys): client certificates for people and
//!   tools; subject CN is the name, OU the role, DNS SAN `NAME.ROLE.client.tandem`.
//!
//! Every key is written with mode 0600.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The subject OU of a node certificate.
pub const NODE_OU: &str = "tandem-node";

/// How long certificates issued by `certs init` / `certs rotate` are valid.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Why a certificate could not be made, read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM or DER document is not what it should be.
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rcgen refused to make a certificate.
    #[error("cannot generate certificate for {what}: {reason}")]
    Generate {
        /// The node or role.
        what: String,
        /// rcgen's message.
        reason: String,
    },
}

/// An admin role carried by a client certificate (subject OU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Drills, switchover, failover, approvals, runbook runs, corrective actions; everything
    /// an auditor may but sign a review.
    Operator,
    /// Read status, the audit chain and evidence, and sign the review of a finished run (its
    /// one write); nothing else.
    Auditor,
    /// Read status only.
    Viewer,
    /// Push the WAL of one group (`tandem wal push` as PostgreSQL's `archive_command`) and
    /// nothing else: the certificate the database's OS user holds. Its name is `NAME@GROUP`;
    /// the replicators refuse it for any other group ([`wal_client_group`]). Issued per group
    /// by `tandem certs wal-client`, not by `certs init`.
    WalClient,
}

/// The group a `wal-client` certificate named `name` (`NAME@GROUP`) may push WAL for: the
/// part after the last `@`, if both parts are non-empty.
pub fn wal_client_group(name: &str) -> Option<&str> {
    let (who, group) = name.rsplit_once('@')?;
    (!who.is_empty() && !group.is_empty()).then_some(group)
}

impl Role {
    /// The admin roles, in order of power: one certificate each from `certs init`.
    pub const ALL: [Role; 3] = [Role::Operator, Role::Auditor, Role::Viewer];

    /// The role's name as written in certificates and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
            Role::WalClient => "wal-client",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL
            .into_iter()
            .chain([Role::WalClient])
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertSubject {
    /// A node of the topology (its id).
    Node(String),
    /// A person or tool with an admin role.
    Client {
        /// The name (subject CN).
        name: String,
        /// The role (subject OU).
        role: Role,
    },
    /// Neither: a certificate that names no node and no known role.
    Unknown(String),
}

impl fmt::Display for CertSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertSubject::Node(n) => write!(f, "node {n}"),
            CertSubject::Client { name, role } => write!(f, "{name} ({role})"),
            CertSubject::Unknown(s) => write!(f, "unknown subject {s}"),
        }
    }
}

/// What Tandem reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Who it names.
    pub subject: CertSubject,
    /// The DNS names of its SAN extension.
    pub dns_names: Vec<String>,
    /// Not valid after, unix seconds.
    pub not_after: i64,
}

/// Parses the leaf certificate `der`: subject CN/OU, DNS SANs and not-after.
///
/// A node certificate must carry its id as a DNS SAN; its subject is the first DNS SAN.
///
/// # Errors
/// A reason when `der` is not an X.509 certificate.
pub fn parse_cert(der: &[u8]) -> Result<CertInfo, String> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a certificate: {e}"))?;
    let attr = |oid: &x509_parser::der_parser::oid::Oid<'_>| -> Option<String> {
        x509.subject()
            .iter_attributes()
            .find(|a| a.attr_type() == oid)
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned)
    };
    let cn = attr(&x509_parser::oid_registry::OID_X509_COMMON_NAME);
    let ou = attr(&x509_parser::oid_registry::OID_X509_ORGANIZATIONAL_UNIT);
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                dns_names.push((*d).to_owned());
            }
        }
    }
    let subject = match (ou.as_deref(), cn) {
        (Some(NODE_OU), _) => match dns_names.first() {
            Some(n) => CertSubject::Node(n.clone()),
            None => CertSubject::Unknown("node certificate without a DNS SAN".into()),
        },
        (Some(r), Some(name)) => match Role::parse(r) {
            Some(role) => CertSubject::Client { name, role },
            None => CertSubject::Unknown(format!("OU={r} CN={name}")),
        },
        (ou, cn) => CertSubject::Unknown(format!(
            "OU={} CN={}",
            ou.unwrap_or_default(),
            cn.unwrap_or_default()
        )),
    };
    Ok(CertInfo {
        subject,
        dns_names,
        not_after: x509.validity().not_after.timestamp(),
    })
}

/// Reads every certificate of PEM file `path` (DER bytes, in file order).
///
/// # Errors
/// [`CertError::Io`] when unreadable, [`CertError::Parse`] when it holds no certificate.
pub fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, CertError> {
    let text = std::fs::read(path).map_err(|source| CertError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for item in rustls_pemfile_certs(&text) {
        out.push(item.map_err(|reason| CertError::Parse {
            path: path.to_path_buf(),
            reason,
        })?);
    }
    if out.is_empty() {
        return Err(CertError::Parse {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block in the file".into(),
        });
    }
    Ok(out)
}

fn rustls_pemfile_certs(text: &[u8]) -> Vec<Result<Vec<u8>, String>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    CertificateDer::pem_slice_iter(text)
        .map(|r| r.map(|c| c.to_vec()).map_err(|e| format!("bad PEM: {e:?}")))
        .collect()
}

/// The not-after (unix seconds) of the first certificate in PEM file `path`.
///
/// # Errors
/// As [`read_pem_certs`], or [`CertError::Parse`] when the certificate does not parse.
pub fn cert_file_not_after(path: &Path) -> Result<i64, CertError> {
    let certs = read_pem_certs(path)?;
    let first = certs.first().ok_or_else(|| CertError::Parse {
        path: path.to_path_buf(),
        reason: "empty".into(),
    })?;
    parse_cert(first)
        .map(|i| i.not_after)
        .map_err(|reason| CertError::Parse {
            path: path.to_path_buf(),
            reason,
        })
}

/// The certificate file of `name` (a node id or a client identity) in `dir`.
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pem"))
}

/// The key file of `name` in `dir`.
pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// The roots file of `dir`.
pub fn roots_path(dir: &Path) -> PathBuf {
    dir.join("roots.pem")
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    // Rename so a node reloading its files never reads half a certificate.
    std::fs::rename(&tmp, path).map_err(io)
}

fn gen_err(what: &str) -> impl Fn(rcgen::Error) -> CertError + '_ {
    move |e| CertError::Generate {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

fn offset_time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or_else(|_| rcgen::date_time_ymd(2000, 1, 1))
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = SystemTime::now();
    // An hour of slack for clocks that run behind.
    params.not_before = offset_time(now - Duration::from_secs(3600));
    params.not_after = offset_time(now + valid_for);
}

/// The CA of a certificate folder: its key and the issuer made from its certificate.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA for cluster `cluster`, valid for `valid_for`.
    ///
    /// # Errors
    /// [`CertError::Generate`].
    pub fn generate(cluster: &str, valid_for: Duration) -> Result<Ca, CertError> {
        let e = gen_err("the CA");
        let key = KeyPair::generate().map_err(&e)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(&e)?;
        let mut dn = DistinguishedName::new();
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // A distinct name per CA, so old and new roots are told apart during an overlap.
        dn.push(DnType::CommonName, format!("tandem CA {cluster} {serial}"));
        dn.push(DnType::OrganizationName, "tandem");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, valid_for);
        let cert = params.self_signed(&key).map_err(&e)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of folder `dir` (`ca.pem`, `ca.key`).
    ///
    /// # Errors
    /// [`CertError::Io`] / [`CertError::Parse`] naming the file.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let (cp, kp) = (dir.join("ca.pem"), dir.join("ca.key"));
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CertError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let (pem, key) = (read(&cp)?, read(&kp)?);
        let key = KeyPair::from_pem(&key).map_err(|e| CertError::Parse {
            path: kp.clone(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| CertError::Parse {
            path: cp,
            reason: e.to_string(),
        })?;
        Ok(Ca { issuer, pem })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// Writes `ca.pem` and `ca.key` into `dir`.
    ///
    /// # Errors
    /// [`CertError::Io`].
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        write_file(&dir.join("ca.pem"), &self.pem, false)?;
        write_file(
            &dir.join("ca.key"),
            &self.issuer.key().serialize_pem(),
            true,
        )
    }

    fn issue(
        &self,
        what: &str,
        sans: Vec<String>,
        dn: DistinguishedName,
        eku: &[ExtendedKeyUsagePurpose],
        valid_for: Duration,
    ) -> Result<(String, String), CertError> {
        let e = gen_err(what);
        let key = KeyPair::generate().map_err(&e)?;
        let mut params = CertificateParams::new(sans).map_err(&e)?;
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        // keyEncipherment beside digitalSignature: qemu's TLS credentials (NBD over TLS)
        // refuse a certificate whose critical key usage lacks it.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = eku.to_vec();
        validity(&mut params, valid_for);
        let cert = params.signed_by(&key, &self.issuer).map_err(&e)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues node `node`'s certificate (DNS SAN = node id, server and client auth) and
    /// writes `NODE.pem` / `NODE.key` into `dir`.
    ///
    /// # Errors
    /// [`CertError`].
    pub fn issue_node(&self, dir: &Path, node: &str, valid_for: Duration) -> Result<(), CertError> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        dn.push(DnType::OrganizationalUnitName, NODE_OU);
        let (cert, key) = self.issue(
            node,
            vec![node.to_owned()],
            dn,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            valid_for,
        )?;
        write_file(&key_path(dir, node), &key, true)?;
        write_file(&cert_path(dir, node), &cert, false)
    }

    /// Issues a client certificate for `name` with `role` and writes `FILE.pem` / `FILE.key`.
    ///
    /// # Errors
    /// [`CertError`].
    pub fn issue_client(
        &self,
        dir: &Path,
        file: &str,
        name: &str,
        role: Role,
        valid_for: Duration,
    ) -> Result<(), CertError> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        let (cert, key) = self.issue(
            name,
            // `NAME@GROUP` (a wal-client) as `NAME.GROUP`: `@` has no place in a DNS name.
            vec![format!("{}.{role}.client.tandem", name.replace('@', "."))],
            dn,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            valid_for,
        )?;
        write_file(&key_path(dir, file), &key, true)?;
        write_file(&cert_path(dir, file), &cert, false)
    }
}

/// What `init` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Files written, in order.
    pub files: Vec<PathBuf>,
}

/// `tandem certs init`: a new CA in `dir`, `roots.pem` holding it, one certificate per node of
/// `nodes`, and one client certificate per role (`operator`, `auditor`, `viewer`, each named
/// after its role).
///
/// # Errors
/// [`CertError`] naming the file or certificate.
pub fn init(
    dir: &Path,
    cluster: &str,
    nodes: &[&str],
    valid_for: Duration,
) -> Result<InitReport, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = Ca::generate(cluster, valid_for.max(Duration::from_secs(86_400)) * 2)?;
    ca.save(dir)?;
    write_file(&roots_path(dir), ca.cert_pem(), false)?;
    let mut files = vec![dir.join("ca.pem"), dir.join("ca.key"), roots_path(dir)];
    for n in nodes {
        ca.issue_node(dir, n, valid_for)?;
        files.push(cert_path(dir, n));
        files.push(key_path(dir, n));
    }
    for role in Role::ALL {
        ca.issue_client(dir, role.as_str(), role.as_str(), role, valid_for)?;
        files.push(cert_path(dir, role.as_str()));
        files.push(key_path(dir, role.as_str()));
    }
    Ok(InitReport { files })
}

/// `tandem certs rotate`: a new certificate for `node`. With `new_ca`, a new CA is made first
/// (the old one kept as `ca-old.pem`/`ca-old.key`) and `roots.pem` then holds the new and the
/// old root, so nodes still on old certificates keep being accepted during the overlap.
///
/// # Errors
/// [`CertError`] naming the file.
pub fn rotate(
    dir: &Path,
    cluster: &str,
    node: &str,
    new_ca: bool,
    valid_for: Duration,
) -> Result<(), CertError> {
    let ca = if new_ca {
        let old = Ca::load(dir)?;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| CertError::Io { path: p, source }
        };
        std::fs::copy(dir.join("ca.pem"), dir.join("ca-old.pem"))
            .map_err(io(&dir.join("ca-old.pem")))?;
        std::fs::copy(dir.join("ca.key"), dir.join("ca-old.key"))
            .map_err(io(&dir.join("ca-old.key")))?;
        let ca = Ca::generate(cluster, valid_for.max(Duration::from_secs(86_400)) * 2)?;
        let mut roots = std::fs::read_to_string(roots_path(dir)).unwrap_or_default();
        if !roots.contains(old.cert_pem().trim()) {
            roots.push_str(old.cert_pem());
        }
        let roots = format!("{}{}", ca.cert_pem(), roots);
        write_file(&roots_path(dir), &roots, false)?;
        ca.save(dir)?;
        ca
    } else {
        Ca::load(dir)?
    };
    match Role::parse(node) {
        Some(Role::WalClient) => Err(CertError::Generate {
            what: node.to_owned(),
            reason: "a wal-client certificate belongs to one group: issue it with \
                     `tandem certs wal-client --group GROUP`"
                .into(),
        }),
        Some(role) => ca.issue_client(dir, node, node, role, valid_for),
        None => ca.issue_node(dir, node, valid_for),
    }
}

/// `tandem certs wal-client`: a `wal-client` certificate named `NAME@GROUP`, signed by the
/// folder's CA, written as `wal-client-GROUP.pem` / `.key`; returns the certificate's path.
///
/// # Errors
/// [`CertError`] naming the file; a name or group that is empty or holds `@`.
pub fn issue_wal_client(
    dir: &Path,
    group: &str,
    name: &str,
    valid_for: Duration,
) -> Result<PathBuf, CertError> {
    let bad = |reason: &str| CertError::Generate {
        what: format!("wal-client {name}@{group}"),
        reason: reason.into(),
    };
    if group.is_empty() || group.contains('@') || group.contains('/') {
        return Err(bad("the group must be a group name (no `@`, no `/`)"));
    }
    if name.is_empty() || name.contains('@') || name.contains('/') {
        return Err(bad("the name must be non-empty, without `@` or `/`"));
    }
    let file = format!("wal-client-{group}");
    let ca = Ca::load(dir)?;
    ca.issue_client(
        dir,
        &file,
        &format!("{name}@{group}"),
        Role::WalClient,
        valid_for,
    )?;
    Ok(cert_path(dir, &file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wal_client_certificate_names_its_group_and_parses_back() {
        let dir = tempfile_dir();
        init(&dir, "t", &["hanoi-rep"], DEFAULT_VALIDITY).unwrap();
        let p = issue_wal_client(&dir, "pg", "postgres-hanoi", DEFAULT_VALIDITY).unwrap();
        assert_eq!(p, cert_path(&dir, "wal-client-pg"));
        let info = parse_cert(&read_pem_certs(&p).unwrap()[0]).unwrap();
        assert_eq!(
            info.subject,
            CertSubject::Client {
                name: "postgres-hanoi@pg".into(),
                role: Role::WalClient
            }
        );
        assert_eq!(wal_client_group("postgres-hanoi@pg"), Some("pg"));
        assert_eq!(wal_client_group("a@b@pg"), Some("pg"));
        assert_eq!(wal_client_group("@pg"), None);
        assert_eq!(wal_client_group("pg@"), None);
        assert_eq!(wal_client_group("operator"), None);
        assert!(issue_wal_client(&dir, "p@g", "x", DEFAULT_VALIDITY).is_err());
        assert!(issue_wal_client(&dir, "pg", "", DEFAULT_VALIDITY).is_err());
        // Not by rotate: it would name no group.
        assert!(rotate(&dir, "t", "wal-client", false, DEFAULT_VALIDITY).is_err());
    }

    #[test]
    fn init_writes_node_and_role_certs_that_parse_back() {
        let dir = tempfile_dir();
        let r = init(&dir, "t", &["hanoi-rep", "hcm-coord"], DEFAULT_VALIDITY).unwrap();
        assert_eq!(r.files.len(), 3 + 2 * 2 + 3 * 2);
        let der = &read_pem_certs(&cert_path(&dir, "hanoi-rep")).unwrap()[0];
        let info = parse_cert(der).unwrap();
        assert_eq!(info.subject, CertSubject::Node("hanoi-rep".into()));
        assert_eq!(info.dns_names, vec!["hanoi-rep".to_string()]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!((info.not_after - now - DEFAULT_VALIDITY.as_secs() as i64).abs() < 10);
        let der = &read_pem_certs(&cert_path(&dir, "auditor")).unwrap()[0];
        assert_eq!(
            parse_cert(der).unwrap().subject,
            CertSubject::Client {
                name: "auditor".into(),
                role: Role::Auditor
            }
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for k in ["ca.key", "hanoi-rep.key", "operator.key"] {
                let mode = std::fs::metadata(dir.join(k)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{k}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rotate_with_new_ca_keeps_both_roots() {
        let dir = tempfile_dir();
        init(&dir, "t", &["a"], DEFAULT_VALIDITY).unwrap();
        let before = read_pem_certs(&roots_path(&dir)).unwrap();
        rotate(&dir, "t", "a", true, DEFAULT_VALIDITY).unwrap();
        let after = read_pem_certs(&roots_path(&dir)).unwrap();
        assert_eq!(before.len(), 1);
        assert_eq!(after.len(), 2);
        assert!(after.contains(&before[0]));
        rotate(&dir, "t", "a", false, DEFAULT_VALIDITY).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(parse_cert(b"nope").is_err());
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tandem-certs-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
