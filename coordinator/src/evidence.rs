//! Evidence for auditors: export a window of the audit chain as a folder an auditor can read and
//! re-verify (`report.html`, `audit.jsonl`, `runs.json`, `rpo.csv`, `after-action.json`,
//! `manifest.json`), and verify
//! such a folder.
//!
//! The folder is a pure function of the records in the window and the [`ExportOptions`]:
//! [`render`] builds every file in memory, [`export`] writes them (tmp → fsync → rename, the
//! manifest last), and [`verify`] re-checks the chain, the manifest and each file's hash, then
//! renders the derived files again from `audit.jsonl` and compares them byte for byte, so an
//! edited file is caught even under a forged manifest. The format is described in
//! `docs/evidence.md`. Authenticity (`signed-head.json`, the leader's signature over the head)
//! is [`sign`]'s: [`write_rendered`] adds the file, [`verify_signed`] checks it against a CA.

pub mod derive;
pub mod html;
pub mod sign;

pub use sign::verify_signed;

use crate::audit::{verify_segment, AuditRecord, ChainError, ZERO_HASH};
use derive::{ResidencyStart, RpoRow, RunsDoc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// `format` of `manifest.json`.
pub const MANIFEST_FORMAT: &str = "tandem-evidence";
/// Version of the folder layout this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;
/// The audit records, one compact JSON object per line.
pub const AUDIT_FILE: &str = "audit.jsonl";
/// Runs, approvals, verify results and refusals derived from the records.
pub const RUNS_FILE: &str = "runs.json";
/// RPO samples derived from the records.
pub const RPO_FILE: &str = "rpo.csv";
/// The human-readable report.
pub const REPORT_FILE: &str = "report.html";
/// The after-action report of each exercise, derived from the records.
pub const AFTER_ACTION_FILE: &str = "after-action.json";
/// The manifest: window, chain summary and the hash of every other file.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The files the manifest lists, in the order it lists them.
pub const LISTED_FILES: [&str; 5] = [
    AUDIT_FILE,
    RUNS_FILE,
    RPO_FILE,
    AFTER_ACTION_FILE,
    REPORT_FILE,
];

/// What to export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOptions {
    /// Cluster name shown in the report and manifest.
    pub cluster: String,
    /// Keep records with `at_ms >= from_ms` (unix ms); `None` from the first record given.
    pub from_ms: Option<i64>,
    /// Keep records with `at_ms <= to_ms` (unix ms); `None` to the last record given.
    pub to_ms: Option<i64>,
    /// RTO target per group (ms): failovers, switchovers and drills are judged against it.
    pub rto_targets_ms: BTreeMap<String, i64>,
    /// RPO target per group (ms), used for samples whose record does not carry `target_ms`.
    pub rpo_targets_ms: BTreeMap<String, i64>,
    /// When the export was made (unix ms); written into the manifest and report, never read
    /// from a clock here so the output is reproducible.
    pub generated_at_ms: i64,
    /// Sites and groups as they stood at the window start ([`render`] derives it from the
    /// records before the window); the residency table starts from it.
    #[serde(default, skip_serializing_if = "ResidencyStart::is_empty")]
    pub residency_start: ResidencyStart,
    /// `drill_every` per group (ms): the drills of those groups are checked against it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drill_every_ms: BTreeMap<String, u64>,
    /// The language of `report.html` (`--lang`; English by default).
    #[serde(default, skip_serializing_if = "html::Lang::is_default")]
    pub lang: html::Lang,
}

/// Chain summary in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSummary {
    /// Index of the first record in `audit.jsonl` (`None` when the window is empty).
    pub first_index: Option<u64>,
    /// Index of the last record (`None` when the window is empty).
    pub last_index: Option<u64>,
    /// `prev_hash` of the first record: the hash of the record just before the window
    /// ([`ZERO_HASH`] when the window starts at record 0).
    pub first_prev_hash: String,
    /// Hash of the last record (equal to `first_prev_hash` when the window is empty).
    pub head_hash: String,
    /// Number of records.
    pub records: u64,
}

/// One file listed in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the folder (one of [`LISTED_FILES`]).
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// BLAKE3 of the content, lowercase hex.
    pub blake3: String,
}

/// Content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// Cluster name.
    pub cluster: String,
    /// Export time, RFC 3339 UTC.
    pub generated_at: String,
    /// Export time, unix ms.
    pub generated_at_ms: i64,
    /// Window start (unix ms), `null` for the start of the records given.
    pub from: Option<i64>,
    /// Window end (unix ms), `null` for the end of the records given.
    pub to: Option<i64>,
    /// RTO targets used (group → ms).
    pub rto_targets_ms: BTreeMap<String, i64>,
    /// RPO fallback targets used (group → ms).
    pub rpo_targets_ms: BTreeMap<String, i64>,
    /// Sites and groups as they stood at the window start (from the records before it).
    #[serde(default, skip_serializing_if = "ResidencyStart::is_empty")]
    pub residency_start: ResidencyStart,
    /// `drill_every` per group used for the drill cadence (group → ms).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drill_every_ms: BTreeMap<String, u64>,
    /// The language `report.html` is written in (absent: English), so `verify` renders it
    /// again in the same language.
    #[serde(default, skip_serializing_if = "html::Lang::is_default")]
    pub lang: html::Lang,
    /// The exported segment of the chain.
    pub chain: ChainSummary,
    /// Every other file with its size and BLAKE3.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The export options this manifest was made with (to render the derived files again).
    pub fn options(&self) -> ExportOptions {
        ExportOptions {
            cluster: self.cluster.clone(),
            from_ms: self.from,
            to_ms: self.to,
            rto_targets_ms: self.rto_targets_ms.clone(),
            rpo_targets_ms: self.rpo_targets_ms.clone(),
            generated_at_ms: self.generated_at_ms,
            residency_start: self.residency_start.clone(),
            drill_every_ms: self.drill_every_ms.clone(),
            lang: self.lang,
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The folder.
    pub dir: PathBuf,
    /// The manifest written (its `files` lists every other file).
    pub manifest: Manifest,
    /// Number of runs in `runs.json`.
    pub runs: usize,
    /// Number of RPO samples `rpo.csv` accounts for (its `samples` column added up).
    pub rpo_samples: u64,
    /// Number of rows of `rpo.csv` (RPO records: single samples and summaries).
    pub rpo_rows: usize,
}

/// What [`verify`] checked, when everything matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The manifest read.
    pub manifest: Manifest,
    /// Records verified.
    pub records: u64,
    /// Files whose size and hash matched the manifest (every listed file).
    pub files_checked: Vec<String>,
    /// Files rendered again from `audit.jsonl` that matched byte for byte.
    pub files_rederived: Vec<String>,
    /// Records made without TLS (actor `unauthenticated`).
    pub unauthenticated: derive::model::Unauthenticated,
    /// `signed-head.json`, parsed, when the manifest lists it (its hash checked; its
    /// signature only by [`verify_signed`]).
    pub signed_head: Option<sign::SignedHead>,
}

/// Why an export or a verification failed; every variant names the file, line, record or field.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// Reading or writing `path` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The records given to [`export`] do not form a valid chain segment.
    #[error("records to export: {0}")]
    InputChain(ChainError),
    /// `from_ms` is after `to_ms`.
    #[error("window: from {from_ms} is after to {to_ms}")]
    InvalidWindow {
        /// Window start.
        from_ms: i64,
        /// Window end.
        to_ms: i64,
    },
    /// `manifest.json` is not a valid manifest.
    #[error("{MANIFEST_FILE}: {reason}")]
    ManifestMalformed {
        /// What is wrong.
        reason: String,
    },
    /// `manifest.json` has a version this build cannot read.
    #[error("{MANIFEST_FILE}: version {found} is not supported (this build reads {supported})")]
    ManifestVersion {
        /// Version found.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A line of `audit.jsonl` is not a JSON audit record.
    #[error("{AUDIT_FILE} line {line}: not an audit record: {reason}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// The parser's message.
        reason: String,
    },
    /// A line of `audit.jsonl` parses but is not the record's canonical serialization.
    #[error("{AUDIT_FILE} line {line} (record {index}): not in canonical form")]
    NonCanonicalLine {
        /// 1-based line number.
        line: usize,
        /// The record's index.
        index: u64,
    },
    /// The chain in `audit.jsonl` is broken at record `index` (line `line`).
    #[error("{AUDIT_FILE} line {line} (record {index}): {source}")]
    Chain {
        /// 1-based line number.
        line: usize,
        /// The first bad record's index (as found on that line).
        index: u64,
        /// What is wrong with it.
        source: ChainError,
    },
    /// The chain in `audit.jsonl` is valid but does not match the manifest's `chain.<field>`.
    #[error("{AUDIT_FILE}: chain {field} is {found}, manifest says {expected}")]
    ChainSummaryMismatch {
        /// The manifest field (`head_hash`, `first_index`, ...).
        field: &'static str,
        /// What the manifest says.
        expected: String,
        /// What `audit.jsonl` has.
        found: String,
    },
    /// A file the manifest lists is missing.
    #[error("{name}: missing")]
    FileMissing {
        /// File name.
        name: String,
    },
    /// A file's size or BLAKE3 does not match the manifest.
    #[error("{name}: content does not match the manifest (blake3 {found}, manifest {expected})")]
    FileMismatch {
        /// File name.
        name: String,
        /// BLAKE3 in the manifest.
        expected: String,
        /// BLAKE3 of the file.
        found: String,
    },
    /// `signed-head.json` is missing, malformed or refused by [`sign::check`].
    #[error(transparent)]
    Signed(#[from] sign::SignError),
    /// A file differs from what `audit.jsonl` derives (first differing line given).
    #[error("{name} line {line}: does not match what {AUDIT_FILE} derives")]
    DerivedMismatch {
        /// File name.
        name: String,
        /// 1-based number of the first differing line.
        line: usize,
    },
}

impl EvidenceError {
    /// Whether retrying may succeed (only I/O errors may be transient).
    pub fn is_retryable(&self) -> bool {
        matches!(self, EvidenceError::Io { .. })
    }

    /// The file the error is about, if it names one.
    pub fn file(&self) -> Option<&str> {
        match self {
            EvidenceError::Io { .. }
            | EvidenceError::InputChain(_)
            | EvidenceError::InvalidWindow { .. } => None,
            EvidenceError::ManifestMalformed { .. } | EvidenceError::ManifestVersion { .. } => {
                Some(MANIFEST_FILE)
            }
            EvidenceError::MalformedLine { .. }
            | EvidenceError::NonCanonicalLine { .. }
            | EvidenceError::Chain { .. }
            | EvidenceError::ChainSummaryMismatch { .. } => Some(AUDIT_FILE),
            EvidenceError::Signed(_) => Some(sign::SIGNED_HEAD_FILE),
            EvidenceError::FileMissing { name }
            | EvidenceError::FileMismatch { name, .. }
            | EvidenceError::DerivedMismatch { name, .. } => Some(name),
        }
    }
}

/// Every file of an evidence folder, rendered in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `(name, content)` for each of [`LISTED_FILES`], in that order.
    pub files: Vec<(&'static str, Vec<u8>)>,
    /// The manifest, with `files` filled in.
    pub manifest: Manifest,
    /// Number of runs.
    pub runs: usize,
    /// Number of RPO samples the RPO rows account for.
    pub rpo_samples: u64,
    /// Number of RPO rows (`rpo.csv` lines after the header).
    pub rpo_rows: usize,
}

impl Rendered {
    /// `manifest.json` as written: pretty JSON and a final newline.
    pub fn manifest_bytes(&self) -> Vec<u8> {
        pretty(&self.manifest)
    }
}

fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    // Our types hold only strings, integers, maps with string keys and `Value`s: cannot fail.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `audit.jsonl`: each record as compact JSON (fields in declaration order) and `\n`.
pub fn audit_jsonl(records: &[AuditRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 400);
    for r in records {
        // A record is strings, integers and a `Value`: serializing cannot fail.
        out.extend_from_slice(&serde_json::to_vec(r).unwrap_or_default());
        out.push(b'\n');
    }
    out
}

/// The records of `records` inside the window: from the first with `at_ms >= from_ms` to the last
/// with `at_ms <= to_ms` (a contiguous run, since committed `at_ms` never decreases), and the
/// hash that precedes the window.
///
/// # Errors
/// [`EvidenceError::InvalidWindow`] if `from_ms > to_ms`.
pub fn window(
    records: &[AuditRecord],
    from_ms: Option<i64>,
    to_ms: Option<i64>,
) -> Result<(&[AuditRecord], String), EvidenceError> {
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f > t {
            return Err(EvidenceError::InvalidWindow {
                from_ms: f,
                to_ms: t,
            });
        }
    }
    let start = from_ms.map_or(0, |f| {
        records
            .iter()
            .position(|r| r.at_ms >= f)
            .unwrap_or(records.len())
    });
    let end = to_ms.map_or(records.len(), |t| {
        records
            .iter()
            .rposition(|r| r.at_ms <= t)
            .map_or(0, |p| p + 1)
    });
    let end = end.max(start);
    let prev = match records.get(start) {
        Some(r) => r.prev_hash.clone(),
        None => records
            .last()
            .map_or_else(|| ZERO_HASH.to_string(), |r| r.hash.clone()),
    };
    Ok((&records[start..end], prev))
}

/// Renders every file for an already-selected window (`records` is exactly what `audit.jsonl`
/// will hold, `first_prev_hash` the hash before it). Pure: same input, same bytes.
pub fn render_window(
    records: &[AuditRecord],
    first_prev_hash: &str,
    opts: &ExportOptions,
) -> Rendered {
    let mut runs: RunsDoc = derive::assemble(records, &opts.rto_targets_ms);
    runs.residency = derive::residency(records, &opts.residency_start);
    runs.drill_cadence = derive::drill_cadence(
        records,
        &runs.runs,
        &opts.drill_every_ms,
        opts.from_ms
            .or_else(|| records.first().map(|r| r.at_ms))
            .unwrap_or(opts.generated_at_ms),
        opts.to_ms
            .map_or(opts.generated_at_ms, |t| t.min(opts.generated_at_ms)),
    );
    let rpo: Vec<RpoRow> = derive::rpo_rows(records, &opts.rpo_targets_ms);
    let groups = derive::groups(records, &[&opts.rto_targets_ms, &opts.rpo_targets_ms]);
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        version: MANIFEST_VERSION,
        cluster: opts.cluster.clone(),
        generated_at: derive::iso_ms(opts.generated_at_ms),
        generated_at_ms: opts.generated_at_ms,
        from: opts.from_ms,
        to: opts.to_ms,
        rto_targets_ms: opts.rto_targets_ms.clone(),
        rpo_targets_ms: opts.rpo_targets_ms.clone(),
        residency_start: opts.residency_start.clone(),
        drill_every_ms: opts.drill_every_ms.clone(),
        lang: opts.lang,
        chain: ChainSummary {
            first_index: records.first().map(|r| r.index),
            last_index: records.last().map(|r| r.index),
            first_prev_hash: first_prev_hash.to_string(),
            head_hash: records
                .last()
                .map_or_else(|| first_prev_hash.to_string(), |r| r.hash.clone()),
            records: records.len() as u64,
        },
        files: Vec::new(),
    };
    let aar = derive::after_action(
        records,
        &runs,
        derive::AarInputs {
            rpo_targets_ms: &opts.rpo_targets_ms,
            generated_at_ms: opts.generated_at_ms,
        },
    );
    let report = html::render_report(&manifest, &groups, &runs, &rpo, &aar);
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        (AUDIT_FILE, audit_jsonl(records)),
        (RUNS_FILE, pretty(&runs)),
        (RPO_FILE, derive::rpo_csv(&rpo).into_bytes()),
        (AFTER_ACTION_FILE, pretty(&aar)),
        (REPORT_FILE, report.into_bytes()),
    ];
    manifest.files = files
        .iter()
        .map(|(name, bytes)| FileEntry {
            name: (*name).to_string(),
            bytes: bytes.len() as u64,
            blake3: blake3::hash(bytes).to_hex().to_string(),
        })
        .collect();
    Rendered {
        files,
        runs: runs.runs.len(),
        rpo_samples: derive::rpo_totals(&rpo).map_or(0, |t| t.0),
        rpo_rows: rpo.len(),
        manifest,
    }
}

/// Checks the input chain and renders the folder for the window in `opts`.
///
/// `records` must be a contiguous segment of the chain (for example everything `audit_range`
/// returns from index 0); if it starts at index 0 its first `prev_hash` must be [`ZERO_HASH`].
///
/// # Errors
/// [`EvidenceError::InputChain`] naming the first bad record, or
/// [`EvidenceError::InvalidWindow`].
pub fn render(records: &[AuditRecord], opts: &ExportOptions) -> Result<Rendered, EvidenceError> {
    if let Some(first) = records.first() {
        let prev = if first.index == 0 {
            ZERO_HASH
        } else {
            first.prev_hash.as_str()
        };
        verify_segment(records, first.index, prev).map_err(EvidenceError::InputChain)?;
    }
    let (win, prev) = window(records, opts.from_ms, opts.to_ms)?;
    let before = win.first().map_or(records.len(), |f| {
        records.partition_point(|r| r.index < f.index)
    });
    let mut opts = opts.clone();
    opts.residency_start = derive::residency_start(&records[..before]);
    Ok(render_window(win, &prev, &opts))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dir/name` through `dir/.name.tmp`: write, fsync, rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), EvidenceError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dest = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &dest).map_err(io(&dest))
}

/// Exports the window of `records` selected by `opts` into `out_dir` (created if missing):
/// `audit.jsonl`, `runs.json`, `rpo.csv`, `after-action.json`, `report.html`, then
/// `manifest.json` last, each written
/// tmp → fsync → rename, and the folder fsynced.
///
/// A window is verified as a segment: its first record's `prev_hash` is recorded in the manifest
/// as `chain.first_prev_hash` (the hash of the record just before the window).
///
/// # Errors
/// [`EvidenceError::InputChain`] if `records` is not a valid chain segment,
/// [`EvidenceError::InvalidWindow`], or [`EvidenceError::Io`] naming the path.
pub fn export(
    records: &[AuditRecord],
    opts: &ExportOptions,
    out_dir: &Path,
) -> Result<ExportSummary, EvidenceError> {
    write_rendered(render(records, opts)?, None, out_dir)
}

/// Writes a [`Rendered`] folder into `out_dir` as [`export`] does, with `signed` (the leader's
/// signature over the window's head) as `signed-head.json`, listed and hashed in the manifest.
///
/// # Errors
/// [`EvidenceError::Io`] naming the path.
pub fn write_rendered(
    mut rendered: Rendered,
    signed: Option<&sign::SignedHead>,
    out_dir: &Path,
) -> Result<ExportSummary, EvidenceError> {
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    for (name, bytes) in &rendered.files {
        write_atomic(out_dir, name, bytes)?;
    }
    if let Some(head) = signed {
        let bytes = head.to_bytes();
        write_atomic(out_dir, sign::SIGNED_HEAD_FILE, &bytes)?;
        rendered.manifest.files.push(FileEntry {
            name: sign::SIGNED_HEAD_FILE.into(),
            bytes: bytes.len() as u64,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
        });
    }
    write_atomic(out_dir, MANIFEST_FILE, &rendered.manifest_bytes())?;
    std::fs::File::open(out_dir)
        .and_then(|d| d.sync_all())
        .map_err(io(out_dir))?;
    Ok(ExportSummary {
        dir: out_dir.to_path_buf(),
        runs: rendered.runs,
        rpo_samples: rendered.rpo_samples,
        rpo_rows: rendered.rpo_rows,
        manifest: rendered.manifest,
    })
}

/// Parses `manifest.json` and checks its format, version and file list.
///
/// # Errors
/// [`EvidenceError::ManifestMalformed`] or [`EvidenceError::ManifestVersion`].
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, EvidenceError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| EvidenceError::ManifestMalformed {
            reason: format!("not JSON: {e}"),
        })?;
    if v.get("format").and_then(serde_json::Value::as_str) != Some(MANIFEST_FORMAT) {
        return Err(EvidenceError::ManifestMalformed {
            reason: format!("format is not {MANIFEST_FORMAT:?}"),
        });
    }
    let version = v.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(MANIFEST_VERSION)) {
        return Err(EvidenceError::ManifestVersion {
            found: version.and_then(|x| u32::try_from(x).ok()).unwrap_or(0),
            supported: MANIFEST_VERSION,
        });
    }
    let m: Manifest = serde_json::from_value(v).map_err(|e| EvidenceError::ManifestMalformed {
        reason: e.to_string(),
    })?;
    for f in &m.files {
        if !LISTED_FILES.contains(&f.name.as_str()) && f.name != sign::SIGNED_HEAD_FILE {
            return Err(EvidenceError::ManifestMalformed {
                reason: format!("files lists {:?}, which is not an evidence file", f.name),
            });
        }
    }
    for name in LISTED_FILES {
        let n = m.files.iter().filter(|f| f.name == name).count();
        if n != 1 {
            return Err(EvidenceError::ManifestMalformed {
                reason: format!("files lists {name} {n} times, expected once"),
            });
        }
    }
    let n = m
        .files
        .iter()
        .filter(|f| f.name == sign::SIGNED_HEAD_FILE)
        .count();
    if n > 1 {
        return Err(EvidenceError::ManifestMalformed {
            reason: format!(
                "files lists {} {n} times, expected at most once",
                sign::SIGNED_HEAD_FILE
            ),
        });
    }
    Ok(m)
}

/// Parses `audit.jsonl`: one canonical record per line.
///
/// # Errors
/// [`EvidenceError::MalformedLine`] or [`EvidenceError::NonCanonicalLine`] naming the line.
pub fn parse_audit_jsonl(bytes: &[u8]) -> Result<Vec<AuditRecord>, EvidenceError> {
    let mut out = Vec::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let body = bytes
        .strip_suffix(b"\n")
        .ok_or(EvidenceError::MalformedLine {
            line: bytes.split(|b| *b == b'\n').count(),
            reason: "the last line does not end with a newline".into(),
        })?;
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let line_no = n + 1;
        let rec: AuditRecord =
            serde_json::from_slice(line).map_err(|e| EvidenceError::MalformedLine {
                line: line_no,
                reason: e.to_string(),
            })?;
        if serde_json::to_vec(&rec).ok().as_deref() != Some(line) {
            return Err(EvidenceError::NonCanonicalLine {
                line: line_no,
                index: rec.index,
            });
        }
        out.push(rec);
    }
    Ok(out)
}

/// Checks a parsed window against the manifest's chain summary: the chain rule from
/// `first_prev_hash`, then first/last index, count and head.
///
/// # Errors
/// [`EvidenceError::Chain`] naming the first bad record and its line, or
/// [`EvidenceError::ChainSummaryMismatch`] naming the field.
pub fn check_chain(records: &[AuditRecord], chain: &ChainSummary) -> Result<(), EvidenceError> {
    let first_index = records
        .first()
        .map(|r| r.index)
        .or(chain.first_index)
        .unwrap_or(0);
    if let Err(e) = verify_segment(records, first_index, &chain.first_prev_hash) {
        let (position, index) = match &e {
            ChainError::IndexGap {
                position, found, ..
            } => (*position, *found),
            ChainError::PrevHashMismatch { index }
            | ChainError::HashMismatch { index }
            | ChainError::MalformedHash { index, .. } => (
                records.iter().position(|r| r.index == *index).unwrap_or(0),
                *index,
            ),
        };
        return Err(EvidenceError::Chain {
            line: position + 1,
            index,
            source: e,
        });
    }
    let show = |x: Option<u64>| x.map_or_else(|| "none".to_string(), |v| v.to_string());
    let found_first = records.first().map(|r| r.index);
    let found_last = records.last().map(|r| r.index);
    let head = records
        .last()
        .map_or(chain.first_prev_hash.as_str(), |r| r.hash.as_str());
    let checks: [(&'static str, String, String); 4] = [
        ("first_index", show(chain.first_index), show(found_first)),
        ("last_index", show(chain.last_index), show(found_last)),
        (
            "records",
            chain.records.to_string(),
            records.len().to_string(),
        ),
        ("head_hash", chain.head_hash.clone(), head.to_string()),
    ];
    for (field, expected, found) in checks {
        if expected != found {
            return Err(EvidenceError::ChainSummaryMismatch {
                field,
                expected,
                found,
            });
        }
    }
    Ok(())
}

fn first_differing_line(a: &[u8], b: &[u8]) -> usize {
    let mut la = a.split(|c| *c == b'\n');
    let mut lb = b.split(|c| *c == b'\n');
    let mut n = 1;
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => n += 1,
            _ => return n,
        }
    }
}

fn read_listed(dir: &Path, name: &str) -> Result<Vec<u8>, EvidenceError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(EvidenceError::FileMissing {
            name: name.to_string(),
        }),
        Err(e) => Err(EvidenceError::Io { path, source: e }),
    }
}

/// Verifies an evidence folder, stopping at the first problem:
/// 1. `manifest.json` parses, has the right format and version and lists the five files;
/// 2. `audit.jsonl` parses line by line, each line canonical, and the chain holds from the
///    manifest's `first_prev_hash` (a changed byte names that record's index and line);
/// 3. the chain's first/last index, count and head match the manifest;
/// 4. every listed file exists and matches its size and BLAKE3 (in manifest order);
/// 5. `runs.json`, `rpo.csv`, `after-action.json` and `report.html` equal what `audit.jsonl` derives with the
///    manifest's options (so a file edited under a re-hashed manifest is still named).
///
/// # Errors
/// The first mismatch, as an [`EvidenceError`] naming the record or file.
pub fn verify(dir: &Path) -> Result<VerifyReport, EvidenceError> {
    let manifest = parse_manifest(&read_listed(dir, MANIFEST_FILE)?)?;
    let audit_bytes = read_listed(dir, AUDIT_FILE)?;
    let records = parse_audit_jsonl(&audit_bytes)?;
    check_chain(&records, &manifest.chain)?;

    let mut contents: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    contents.insert(AUDIT_FILE, audit_bytes);
    let mut files_checked = Vec::new();
    for entry in &manifest.files {
        let name = LISTED_FILES
            .iter()
            .chain([sign::SIGNED_HEAD_FILE].iter())
            .find(|n| **n == entry.name)
            .copied()
            .unwrap_or(AUDIT_FILE);
        if !contents.contains_key(name) {
            contents.insert(name, read_listed(dir, name)?);
        }
        let bytes = contents.get(name).map_or(&[][..], Vec::as_slice);
        let found = blake3::hash(bytes).to_hex().to_string();
        if found != entry.blake3 || bytes.len() as u64 != entry.bytes {
            return Err(EvidenceError::FileMismatch {
                name: entry.name.clone(),
                expected: entry.blake3.clone(),
                found,
            });
        }
        files_checked.push(entry.name.clone());
    }

    let again = render_window(
        &records,
        &manifest.chain.first_prev_hash,
        &manifest.options(),
    );
    let mut files_rederived = Vec::new();
    for (name, derived) in &again.files {
        let on_disk = contents.get(name).map_or(&[][..], Vec::as_slice);
        if on_disk != derived.as_slice() {
            return Err(EvidenceError::DerivedMismatch {
                name: (*name).to_string(),
                line: first_differing_line(on_disk, derived),
            });
        }
        files_rederived.push((*name).to_string());
    }
    let signed_head = match contents.get(sign::SIGNED_HEAD_FILE) {
        Some(bytes) => Some(sign::parse(bytes)?),
        None => None,
    };
    Ok(VerifyReport {
        signed_head,
        records: manifest.chain.records,
        unauthenticated: derive::model::Unauthenticated::of(&records),
        manifest,
        files_checked,
        files_rederived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditChain, AuditKind};
    use serde_json::json;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let mut c = AuditChain::default();
        for k in 0..n {
            c.append(
                1_000 * k as i64,
                "coordinator",
                AuditKind::Note,
                Some("g"),
                json!({"n": k}),
            );
        }
        c.records().to_vec()
    }

    #[test]
    fn window_selects_contiguous_records_and_the_hash_before() {
        let recs = chain(10);
        let (w, prev) = window(&recs, Some(2_500), Some(6_000)).unwrap();
        assert_eq!(
            w.iter().map(|r| r.index).collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
        assert_eq!(prev, recs[2].hash);
        let (w, prev) = window(&recs, Some(99_000), None).unwrap();
        assert!(w.is_empty());
        assert_eq!(prev, recs[9].hash);
        let (w, prev) = window(&recs, None, Some(-1)).unwrap();
        assert!(w.is_empty());
        assert_eq!(prev, ZERO_HASH);
        assert!(matches!(
            window(&recs, Some(5), Some(4)),
            Err(EvidenceError::InvalidWindow { .. })
        ));
    }

    #[test]
    fn jsonl_round_trips_and_names_bad_lines() {
        let recs = chain(3);
        let bytes = audit_jsonl(&recs);
        assert_eq!(parse_audit_jsonl(&bytes).unwrap(), recs);
        let original = String::from_utf8(bytes).unwrap();
        let text = original.replacen("{\"index\":1,", "{\"index\":1 ,", 1);
        assert!(matches!(
            parse_audit_jsonl(text.as_bytes()),
            Err(EvidenceError::NonCanonicalLine { line: 2, index: 1 })
        ));
        let broken = original.replacen("{\"index\":2,", "{\"index\":2,,", 1);
        assert!(matches!(
            parse_audit_jsonl(broken.as_bytes()),
            Err(EvidenceError::MalformedLine { line: 3, .. })
        ));
        assert!(matches!(
            parse_audit_jsonl(b"{}"),
            Err(EvidenceError::MalformedLine { line: 1, .. })
        ));
    }

    #[test]
    fn records_made_without_tls_are_counted_and_flagged_in_the_report_and_verify() {
        let mut c = AuditChain::default();
        c.append(1_000, "operator", AuditKind::Note, None, json!({}));
        c.append(2_000, "unauthenticated", AuditKind::Note, None, json!({}));
        c.append(
            3_000,
            "unauthenticated",
            AuditKind::Operator,
            Some("g"),
            json!({}),
        );
        let dir = tempfile::tempdir().unwrap();
        export(c.records(), &ExportOptions::default(), dir.path()).unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!(
            (
                report.unauthenticated.records,
                report.unauthenticated.first_index
            ),
            (2, 1)
        );
        let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
        assert!(html.contains("id=\"unauthenticated\"") && html.contains("without TLS"));
        // A window made with TLS says nothing of it, and its runs.json has no such field.
        let dir = tempfile::tempdir().unwrap();
        export(&chain(3), &ExportOptions::default(), dir.path()).unwrap();
        assert!(verify(dir.path()).unwrap().unauthenticated.is_none());
        let runs = std::fs::read_to_string(dir.path().join("runs.json")).unwrap();
        assert!(!runs.contains("unauthenticated"), "{runs}");
    }

    #[test]
    fn render_is_deterministic() {
        let recs = chain(20);
        let opts = ExportOptions {
            cluster: "c".into(),
            generated_at_ms: 42,
            ..ExportOptions::default()
        };
        assert_eq!(render(&recs, &opts).unwrap(), render(&recs, &opts).unwrap());
    }

    #[test]
    fn broken_input_chain_is_refused() {
        let mut recs = chain(5);
        recs[3].actor = "mallory".into();
        assert!(matches!(
            render(&recs, &ExportOptions::default()),
            Err(EvidenceError::InputChain(ChainError::HashMismatch {
                index: 3
            }))
        ));
    }

    #[test]
    fn manifest_listing_a_foreign_file_is_refused() {
        let r = render(&chain(2), &ExportOptions::default()).unwrap();
        let mut m = r.manifest.clone();
        m.files[1].name = "../../etc/passwd".into();
        assert!(matches!(
            parse_manifest(&pretty(&m)),
            Err(EvidenceError::ManifestMalformed { .. })
        ));
        let mut m = r.manifest;
        m.version = 9;
        assert!(matches!(
            parse_manifest(&pretty(&m)),
            Err(EvidenceError::ManifestVersion { found: 9, .. })
        ));
    }
}
