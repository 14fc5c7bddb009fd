//! The topology config: the TOML file naming sites, nodes and protection groups, its loader and its validation.
//!
//! [`Topology::load`] reads a file, [`Topology::parse`] parses text; both validate and report
//! every problem found at once, each as `FILE:LINE:COL: field.path: message`. After a
//! successful load every path in the topology is absolute (relative paths in the file are
//! relative to the file's folder, kept in [`Topology::base_dir`]).
//!
//! Humane values: durations are written `"250ms"`, `"4s"`, `"5m"`, `"24h"`, `"7d"`
//! ([`HumanDuration`]); sizes `"64KiB"`, `"256MiB"`, `"1GiB"`, `"100MB"` ([`ByteSize`]);
//! bandwidths `"100MB/s"` ([`Bandwidth`]). The reference is `docs/config.md`.

use serde::de::{Error as _, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use crate::ids::GroupId;
use crate::residency;

// ---------------------------------------------------------------------------------------------
// Humane values
// ---------------------------------------------------------------------------------------------

/// A value written by a human that did not parse: names what was expected and the value given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} \"{value}\": {reason}")]
pub struct UnitError {
    /// What was expected: "duration", "size" or "bandwidth".
    pub what: &'static str,
    /// The text as written.
    pub value: String,
    /// Why it was refused, with a hint of the right form.
    pub reason: String,
}

impl UnitError {
    fn new(what: &'static str, value: &str, reason: impl Into<String>) -> UnitError {
        UnitError {
            what,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Splits `"256MiB"` into `(256, "MiB")`; the unit part is trimmed.
fn split_number(what: &'static str, text: &str, example: &str) -> Result<(u64, String), UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::new(
            what,
            text,
            format!("empty; write a whole number and a unit, e.g. \"{example}\""),
        ));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(UnitError::new(
            what,
            text,
            format!("must start with a whole number, e.g. \"{example}\""),
        ));
    }
    let number: u64 = t[..digits_end]
        .parse()
        .map_err(|_| UnitError::new(what, text, "number is too large"))?;
    let unit = t[digits_end..].trim();
    if unit.starts_with('.') || unit.starts_with(',') {
        return Err(UnitError::new(
            what,
            text,
            "fractions are not supported; use a smaller unit (\"1500ms\", not \"1.5s\")",
        ));
    }
    Ok((number, unit.to_string()))
}

/// A duration written the human way: `"250ms"`, `"4s"`, `"5m"`, `"24h"`, `"7d"` (whole
/// milliseconds; `"0"` alone is allowed).
///
/// Displays in the largest unit that represents it exactly, so display and parse round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(Duration);

const DURATION_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl HumanDuration {
    /// The zero duration.
    pub const ZERO: HumanDuration = HumanDuration(Duration::ZERO);

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> HumanDuration {
        HumanDuration(Duration::from_millis(ms))
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(secs))
    }

    /// The value as a `std::time::Duration`.
    pub const fn as_duration(self) -> Duration {
        self.0
    }

    /// Whole milliseconds (saturating at `u64::MAX`).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    /// True when the duration is zero.
    pub const fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<HumanDuration, UnitError> {
        let (n, unit) = split_number("duration", s, "4s")?;
        if unit.is_empty() {
            if n == 0 {
                return Ok(HumanDuration::ZERO);
            }
            return Err(UnitError::new(
                "duration",
                s,
                format!("missing unit; use ms, s, m, h or d, e.g. \"{n}s\""),
            ));
        }
        let per = DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or_else(|| {
                UnitError::new(
                    "duration",
                    s,
                    format!("unknown unit \"{unit}\"; use ms, s, m, h or d"),
                )
            })?;
        let ms = n
            .checked_mul(per)
            .ok_or_else(|| UnitError::new("duration", s, "too large"))?;
        Ok(HumanDuration::from_millis(ms))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (name, per) in DURATION_UNITS {
            if ms.is_multiple_of(per) {
                return write!(f, "{}{name}", ms / per);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\", \"4s\", \"5m\" or \"24h\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A size in bytes written the human way: `"64KiB"`, `"256MiB"`, `"1GiB"` (binary) or
/// `"100MB"` (decimal); a bare number (or TOML integer) is bytes.
///
/// Displays in the largest unit that represents it exactly, so display and parse round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: [(&str, u64); 10] = [
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
    ("", 1),
];

impl ByteSize {
    /// `n` KiB.
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    fn parse_as(what: &'static str, s: &str) -> Result<ByteSize, UnitError> {
        let (n, unit) = split_number(what, s, "256MiB")?;
        let per = SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, per)| *per)
            .ok_or_else(|| {
                let hint = match unit.to_ascii_lowercase().as_str() {
                    "k" | "m" | "g" | "t" | "kb" | "mb" | "gb" | "tb" => {
                        format!(
                            "unit \"{unit}\" is ambiguous or misspelt; write KiB, MiB, GiB, TiB \
                             (1024-based) or KB, MB, GB, TB (1000-based)"
                        )
                    }
                    _ => format!(
                        "unknown unit \"{unit}\"; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB"
                    ),
                };
                UnitError::new(what, s, hint)
            })?;
        let bytes = n
            .checked_mul(per)
            .ok_or_else(|| UnitError::new(what, s, "too large"))?;
        Ok(ByteSize(bytes))
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<ByteSize, UnitError> {
        ByteSize::parse_as("size", s)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0B");
        }
        for (name, per) in SIZE_UNITS {
            if self.0.is_multiple_of(per) {
                return write!(
                    f,
                    "{}{}",
                    self.0 / per,
                    if name.is_empty() { "B" } else { name }
                );
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64KiB\", \"256MiB\" or \"1GiB\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A bandwidth written the human way: `"100MB/s"`, `"1GiB/s"`; always above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bandwidth {
    /// Bytes per second.
    pub bytes_per_sec: u64,
}

impl FromStr for Bandwidth {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Bandwidth, UnitError> {
        let t = s.trim();
        let Some(size) = t.strip_suffix("/s") else {
            return Err(UnitError::new(
                "bandwidth",
                s,
                "missing \"/s\"; write a size per second, e.g. \"100MB/s\"",
            ));
        };
        let ByteSize(bytes_per_sec) =
            ByteSize::parse_as("bandwidth", size).map_err(|e| UnitError {
                value: s.to_string(),
                ..e
            })?;
        if bytes_per_sec == 0 {
            return Err(UnitError::new(
                "bandwidth",
                s,
                "must be above 0/s; leave max_bandwidth out for no limit",
            ));
        }
        Ok(Bandwidth { bytes_per_sec })
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", ByteSize(self.bytes_per_sec))
    }
}

impl Serialize for Bandwidth {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bandwidth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bandwidth, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bandwidth;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bandwidth such as \"100MB/s\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bandwidth, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A time of day, `"HH:MM"` in UTC (minutes since midnight inside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay(pub u16);

impl TimeOfDay {
    /// The time of day of `t` (UTC).
    pub fn of(t: chrono::DateTime<chrono::Utc>) -> TimeOfDay {
        use chrono::Timelike;
        TimeOfDay((t.hour() * 60 + t.minute()) as u16)
    }
}

impl FromStr for TimeOfDay {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<TimeOfDay, UnitError> {
        let bad = |why: &str| UnitError::new("time of day", s, why);
        let (h, m) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| bad("write HH:MM (UTC), e.g. \"08:30\""))?;
        let h: u16 = h.parse().map_err(|_| bad("hours are not a number"))?;
        let m: u16 = m.parse().map_err(|_| bad("minutes are not a number"))?;
        if h > 24 || m > 59 || (h == 24 && m != 0) {
            return Err(bad("out of range: 00:00 to 24:00"));
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<TimeOfDay, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// A daily window with its own replication bandwidth cap, as Zerto and AWS DRS offer: less
/// during office hours, more at night.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BandwidthWindow {
    /// Start of the window, `"HH:MM"` UTC.
    pub from: TimeOfDay,
    /// End of the window (exclusive), `"HH:MM"` UTC; earlier than `from` crosses midnight.
    pub to: TimeOfDay,
    /// The cap inside the window.
    pub max_bandwidth: Bandwidth,
}

impl BandwidthWindow {
    /// Whether `t` falls in the window.
    pub fn contains(&self, t: TimeOfDay) -> bool {
        if self.from <= self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// The whole topology: cluster timings, sites, nodes and protection groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// Cluster-wide name and timings (`[cluster]`).
    pub cluster: Cluster,
    /// The sites (`[[sites]]`), in file order.
    #[serde(default)]
    pub sites: Vec<Site>,
    /// The processes (`[[nodes]]`), in file order; coordinator raft ids follow this order.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The protection groups (`[[groups]]`), in file order.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Transport security of every link (`[tls]`); TLS with client certificates unless
    /// `insecure = true`.
    #[serde(default)]
    pub tls: Tls,
    /// The folder relative paths were resolved against: the config file's folder.
    ///
    /// Not part of the file; set by [`Topology::load`] / [`Topology::parse`].
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Transport security (`[tls]`): mutual TLS on every link, or plaintext behind an explicit
/// `insecure = true`.
///
/// Every node reads `DIR/NODE.pem` and `DIR/NODE.key` (made by `tandem certs init`); peers are
/// verified against `peer_ca`, people and tools (the CLI) against `client_ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Plaintext gRPC on every link. Shown in status and warned about at startup.
    #[serde(default)]
    pub insecure: bool,
    /// The certificate folder (`tandem certs init --out DIR`).
    #[serde(default = "defaults::tls_dir")]
    pub dir: PathBuf,
    /// Roots that node certificates must chain to (default `DIR/roots.pem`); may hold several
    /// CA certificates (old and new during a CA rotation).
    #[serde(default)]
    pub peer_ca: Option<PathBuf>,
    /// Roots that client (CLI, operator) certificates must chain to (default: `peer_ca`).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// How often nodes look for changed certificate files (they also reload on SIGHUP).
    #[serde(default = "defaults::tls_reload_interval")]
    pub reload_interval: HumanDuration,
}

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            insecure: false,
            dir: defaults::tls_dir(),
            peer_ca: None,
            client_ca: None,
            reload_interval: defaults::tls_reload_interval(),
        }
    }
}

impl Tls {
    /// The roots file for node certificates.
    pub fn peer_ca_path(&self) -> PathBuf {
        self.peer_ca
            .clone()
            .unwrap_or_else(|| self.dir.join("roots.pem"))
    }

    /// The roots file for client certificates.
    pub fn client_ca_path(&self) -> PathBuf {
        self.client_ca
            .clone()
            .unwrap_or_else(|| self.peer_ca_path())
    }
}

/// Cluster-wide name and timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Name of the cluster, shown in status, metrics and evidence.
    pub name: String,
    /// How long a primary replicator's lease lasts; it self-fences before this runs out.
    #[serde(default = "defaults::lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// Clock drift allowance added to the lease before an unplanned failover may promote.
    #[serde(default = "defaults::drift_margin")]
    pub drift_margin: HumanDuration,
    /// How often replicators send heartbeats and progress to the coordinators.
    #[serde(default = "defaults::heartbeat_interval")]
    pub heartbeat_interval: HumanDuration,
    /// A site is declared down after this long without a heartbeat from it.
    #[serde(default = "defaults::detect_after")]
    pub detect_after: HumanDuration,
    /// How often the leader commits an RPO sample to the replicated log.
    #[serde(default = "defaults::rpo_sample_interval")]
    pub rpo_sample_interval: HumanDuration,
}

/// One data centre, or a witness site that hosts only a coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Name of the site (`hanoi`).
    pub name: String,
    /// A witness site breaks ties: it hosts a coordinator and never holds data.
    #[serde(default)]
    pub witness: bool,
    /// Legal jurisdiction of the site (e.g. `VN`), matched against a group's
    /// `allowed_jurisdictions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdiction: Option<String>,
}

/// What a node (process) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// A member of the Raft cluster that decides roles, epochs and leases.
    Coordinator,
    /// Captures, ships, receives and applies the data of the groups at its site.
    Replicator,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Coordinator => "coordinator",
            NodeRole::Replicator => "replicator",
        })
    }
}

/// One Tandem process at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Name of the node (`hanoi-coord`); a certificate names its node.
    pub name: String,
    /// The site the node runs at.
    pub site: String,
    /// Coordinator or replicator.
    pub role: NodeRole,
    /// gRPC `host:port` the node listens on and peers dial.
    pub listen: String,
    /// Folder for the node's durable state (sled, journal); absolute after load.
    pub data_dir: PathBuf,
    /// Replicators only: `host:port` serving NBD exports of the volumes this node is primary for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_listen: Option<String>,
    /// `host:port` serving Prometheus metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// Replication mode of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Writes are acknowledged once the replica has them durable (DRBD protocol C): RPO 0.
    Sync,
    /// Writes are acknowledged once journaled locally (DRBD protocol A): RPO is the lag.
    Async,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        })
    }
}

/// The runbooks a group uses; `None` means the stock runbook of that name
/// (`runbooks/library/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbooks {
    /// DR drill runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<PathBuf>,
    /// Unplanned failover runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<PathBuf>,
    /// Planned, zero-loss switchover runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<PathBuf>,
    /// Failback (resync the old primary, then switch back) runbook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failback: Option<PathBuf>,
}

impl Runbooks {
    fn is_default(&self) -> bool {
        *self == Runbooks::default()
    }
}

/// A protection group: resources that replicate in one ordered stream and fail over together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Name of the group (`vol`); its wire id is [`Group::id`].
    pub name: String,
    /// The site that is primary when the cluster is first formed.
    pub primary: String,
    /// The paired site that holds the replica.
    pub replica: String,
    /// Sync or async replication.
    pub mode: Mode,
    /// Recovery point objective: alert when the live RPO exceeds it. Default 0s (sync only).
    #[serde(default)]
    pub rpo_target: HumanDuration,
    /// Recovery time objective: the runbook must have the service ready within it.
    pub rto_target: HumanDuration,
    /// An automatic failover that would lose more than this waits for human approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data_loss: Option<HumanDuration>,
    /// Sync groups: how long a write waits for the replica before the group degrades to
    /// acknowledging on the primary's journal alone (status shows it), once the coordinators
    /// have committed that (no automatic failover while it lasts). Default 5s; `0s` blocks
    /// writes until the replica answers (DRBD's `fencing resource-and-stonith` behaviour).
    #[serde(default = "defaults::sync_timeout")]
    pub sync_timeout: HumanDuration,
    /// Fail over automatically when the primary site is declared down. Default false.
    #[serde(default)]
    pub auto_failover: bool,
    /// Cap on replication traffic; no cap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<Bandwidth>,
    /// Daily windows with their own cap (`[[groups.bandwidth_schedule]]`); the first window
    /// that holds the time of day wins, `max_bandwidth` applies outside them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bandwidth_schedule: Vec<BandwidthWindow>,
    /// Most journal the primary keeps for frames not yet acknowledged. Default 1GiB.
    #[serde(default = "defaults::journal_max")]
    pub journal_max: ByteSize,
    /// Point-in-time recovery: how far back the replica keeps undo history (`"24h"`); no
    /// history is kept when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HumanDuration>,
    /// Most bytes of undo history the replica keeps; the oldest whole segments go first when
    /// it is exceeded. No size cap when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_max: Option<ByteSize>,
    /// With `history`: how often the replica marks a group-wide checkpoint (a consistent cut of
    /// the group's stream). Default 5s.
    #[serde(default = "defaults::checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
    /// When not empty, the only jurisdictions where this group's data may live.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_jurisdictions: Vec<String>,
    /// Runbooks for this group; stock runbooks where not given.
    #[serde(default, skip_serializing_if = "Runbooks::is_default")]
    pub runbooks: Runbooks,
    /// The protected resources (`[[groups.resources]]`), in file order.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

impl Group {
    /// The group's numeric wire id (derived from its name).
    pub fn id(&self) -> GroupId {
        GroupId::from_name(&self.name)
    }

    /// The replication cap at time of day `t`, bytes per second (None: no cap).
    pub fn bandwidth_at(&self, t: TimeOfDay) -> Option<u64> {
        self.bandwidth_schedule
            .iter()
            .find(|w| w.contains(t))
            .map(|w| w.max_bandwidth)
            .or(self.max_bandwidth)
            .map(|b| b.bytes_per_sec)
    }

    /// The resource of this group with that name.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The other site of the pair, when `site` is this group's primary or replica.
    pub fn peer_of(&self, site: &str) -> Option<&str> {
        if site == self.primary {
            Some(&self.replica)
        } else if site == self.replica {
            Some(&self.primary)
        } else {
            None
        }
    }
}

/// Default PostgreSQL server binaries folder.
pub const DEFAULT_POSTGRES_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// One protected thing in a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Name of the resource, unique within its group (`disk0`); also its NBD export name.
    pub name: String,
    /// The kind and its settings.
    pub kind: ResourceKind,
}

/// The kind of a resource, with the settings of that kind. Paths are absolute after load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceKind {
    /// A raw image file or block device.
    Volume {
        /// Size of the image.
        size: ByteSize,
        /// Path on the group's primary site.
        path: PathBuf,
        /// Path on the group's replica site (defaults to `path`).
        replica_path: PathBuf,
        /// Merkle block size for verify and resync. Default 64KiB.
        block_size: ByteSize,
        /// How changes are captured on the primary: through Tandem's NBD export (every write)
        /// or by a merkle scan of a volume written by others.
        capture: Capture,
        /// `scan` capture: how often the volume is re-hashed. Default 5s.
        scan_interval: HumanDuration,
    },
    /// A SQLite database file (WAL mode), followed like Litestream does.
    Sqlite {
        /// The database file on the primary site.
        path: PathBuf,
        /// The database file on the replica site (defaults to `path`).
        replica_path: PathBuf,
    },
    /// A PostgreSQL cluster, replicated by WAL archiving.
    Postgres {
        /// The cluster's data directory on the primary site.
        data_dir: PathBuf,
        /// The data directory on the replica site (defaults to `data_dir`).
        replica_data_dir: PathBuf,
        /// Port of the server on the primary site.
        port: u16,
        /// Port of the server on the replica site (defaults to `port`).
        replica_port: u16,
        /// Folder of `pg_ctl`, `initdb` and friends.
        bin_dir: PathBuf,
    },
}

/// How a volume's changes are captured on its primary site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// Tandem serves the volume over NBD; every write goes through the journal (RPO of a
    /// write, sync mode possible).
    #[default]
    Nbd,
    /// Others write the volume (a VM, a database, a file system); a blake3 merkle scan every
    /// `scan_interval` turns changed blocks into changes (RPO about one interval; the data
    /// of one pass is crash-consistent only per block).
    Scan,
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capture::Nbd => "nbd",
            Capture::Scan => "scan",
        })
    }
}

impl ResourceKind {
    /// The kind's name as written in the file: `volume`, `sqlite` or `postgres`.
    pub fn name(&self) -> &'static str {
        match self {
            ResourceKind::Volume { .. } => "volume",
            ResourceKind::Sqlite { .. } => "sqlite",
            ResourceKind::Postgres { .. } => "postgres",
        }
    }
}

impl Resource {
    /// The resource's main path (image, database file or data directory) on the configured
    /// primary site (`primary = true`) or replica site.
    pub fn path_on(&self, primary: bool) -> &Path {
        match (&self.kind, primary) {
            (ResourceKind::Volume { path, .. }, true)
            | (ResourceKind::Sqlite { path, .. }, true) => path,
            (ResourceKind::Volume { replica_path, .. }, false)
            | (ResourceKind::Sqlite { replica_path, .. }, false) => replica_path,
            (ResourceKind::Postgres { data_dir, .. }, true) => data_dir,
            (
                ResourceKind::Postgres {
                    replica_data_dir, ..
                },
                false,
            ) => replica_data_dir,
        }
    }
}

/// The flat form of a resource as written in the file; converted with per-field checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    kind: RawKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_size: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capture: Option<Capture>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scan_interval: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica_data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bin_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    #[default]
    Volume,
    Sqlite,
    Postgres,
}

impl RawResource {
    /// Converts to a [`Resource`], or returns `(field, message)` for every problem.
    fn into_resource(self) -> Result<Resource, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let kind_name = match self.kind {
            RawKind::Volume => "volume",
            RawKind::Sqlite => "sqlite",
            RawKind::Postgres => "postgres",
        };
        let mut not_for_kind = |field: &'static str, present: bool| {
            if present {
                problems.push((field, format!("`{field}` does not apply to a {kind_name}")));
            }
        };
        match self.kind {
            RawKind::Volume | RawKind::Sqlite => {
                not_for_kind("data_dir", self.data_dir.is_some());
                not_for_kind("replica_data_dir", self.replica_data_dir.is_some());
                not_for_kind("port", self.port.is_some());
                not_for_kind("replica_port", self.replica_port.is_some());
                not_for_kind("bin_dir", self.bin_dir.is_some());
                if self.kind == RawKind::Sqlite {
                    not_for_kind("size", self.size.is_some());
                    not_for_kind("block_size", self.block_size.is_some());
                    not_for_kind("capture", self.capture.is_some());
                    not_for_kind("scan_interval", self.scan_interval.is_some());
                }
            }
            RawKind::Postgres => {
                not_for_kind("size", self.size.is_some());
                not_for_kind("block_size", self.block_size.is_some());
                not_for_kind("path", self.path.is_some());
                not_for_kind("replica_path", self.replica_path.is_some());
                not_for_kind("capture", self.capture.is_some());
                not_for_kind("scan_interval", self.scan_interval.is_some());
            }
        }
        let kind = match self.kind {
            RawKind::Volume => {
                if self.size.is_none() {
                    problems.push((
                        "size",
                        "a volume needs a size, e.g. size = \"256MiB\"".to_string(),
                    ));
                }
                if self.path.is_none() {
                    problems.push((
                        "path",
                        "a volume needs a path (its image file or block device)".to_string(),
                    ));
                }
                match (self.size, self.path) {
                    (Some(size), Some(path)) => Some(ResourceKind::Volume {
                        size,
                        replica_path: self.replica_path.unwrap_or_else(|| path.clone()),
                        path,
                        block_size: self.block_size.unwrap_or(defaults::BLOCK_SIZE),
                        capture: self.capture.unwrap_or_default(),
                        scan_interval: self.scan_interval.unwrap_or_else(defaults::scan_interval),
                    }),
                    _ => None,
                }
            }
            RawKind::Sqlite => match self.path {
                Some(path) => Some(ResourceKind::Sqlite {
                    replica_path: self.replica_path.unwrap_or_else(|| path.clone()),
                    path,
                }),
                None => {
                    problems.push((
                        "path",
                        "a sqlite resource needs a path (the database file)".to_string(),
                    ));
                    None
                }
            },
            RawKind::Postgres => {
                if self.data_dir.is_none() {
                    problems.push((
                        "data_dir",
                        "a postgres resource needs a data_dir".to_string(),
                    ));
                }
                if self.port.is_none() {
                    problems.push(("port", "a postgres resource needs a port".to_string()));
                }
                match (self.data_dir, self.port) {
                    (Some(data_dir), Some(port)) => Some(ResourceKind::Postgres {
                        replica_data_dir: self.replica_data_dir.unwrap_or_else(|| data_dir.clone()),
                        data_dir,
                        port,
                        replica_port: self.replica_port.unwrap_or(port),
                        bin_dir: self
                            .bin_dir
                            .unwrap_or_else(|| PathBuf::from(DEFAULT_POSTGRES_BIN_DIR)),
                    }),
                    _ => None,
                }
            }
        };
        match kind {
            Some(kind) if problems.is_empty() => Ok(Resource {
                name: self.name,
                kind,
            }),
            _ => Err(problems),
        }
    }
}

impl From<&Resource> for RawResource {
    fn from(r: &Resource) -> RawResource {
        let mut raw = RawResource {
            name: r.name.clone(),
            ..RawResource::default()
        };
        match &r.kind {
            ResourceKind::Volume {
                size,
                path,
                replica_path,
                block_size,
                capture,
                scan_interval,
            } => {
                raw.kind = RawKind::Volume;
                raw.size = Some(*size);
                raw.path = Some(path.clone());
                raw.replica_path = Some(replica_path.clone());
                raw.block_size = Some(*block_size);
                raw.capture = Some(*capture);
                raw.scan_interval = Some(*scan_interval);
            }
            ResourceKind::Sqlite { path, replica_path } => {
                raw.kind = RawKind::Sqlite;
                raw.path = Some(path.clone());
                raw.replica_path = Some(replica_path.clone());
            }
            ResourceKind::Postgres {
                data_dir,
                replica_data_dir,
                port,
                replica_port,
                bin_dir,
            } => {
                raw.kind = RawKind::Postgres;
                raw.data_dir = Some(data_dir.clone());
                raw.replica_data_dir = Some(replica_data_dir.clone());
                raw.port = Some(*port);
                raw.replica_port = Some(*replica_port);
                raw.bin_dir = Some(bin_dir.clone());
            }
        }
        raw
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawResource::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Resource, D::Error> {
        RawResource::deserialize(d)?
            .into_resource()
            .map_err(|problems| {
                let text: Vec<String> = problems
                    .into_iter()
                    .map(|(field, msg)| format!("{field}: {msg}"))
                    .collect();
                D::Error::custom(text.join("; "))
            })
    }
}

/// Defaults of optional fields.
mod defaults {
    use super::{ByteSize, HumanDuration};

    pub(super) fn lease_ttl() -> HumanDuration {
        HumanDuration::from_secs(4)
    }
    pub(super) fn drift_margin() -> HumanDuration {
        HumanDuration::from_millis(500)
    }
    pub(super) fn heartbeat_interval() -> HumanDuration {
        HumanDuration::from_millis(500)
    }
    pub(super) fn detect_after() -> HumanDuration {
        HumanDuration::from_secs(3)
    }
    pub(super) fn rpo_sample_interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(super) fn sync_timeout() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(super) fn scan_interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(super) fn journal_max() -> ByteSize {
        ByteSize::gib(1)
    }
    pub(super) fn checkpoint_interval() -> HumanDuration {
        HumanDuration::from_secs(5)
    }
    pub(super) fn tls_dir() -> std::path::PathBuf {
        std::path::PathBuf::from("certs")
    }
    pub(super) fn tls_reload_interval() -> HumanDuration {
        HumanDuration::from_secs(2)
    }
    pub(super) const BLOCK_SIZE: ByteSize = ByteSize::kib(64);
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a config file, located by field path and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as named to the loader.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Field path such as `groups[0].replica` (0-based indexes in file order).
    pub path: String,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{file}:{line}:{column}: TOML syntax error: {message}")]
    Syntax {
        /// The file as named to the loader.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The TOML is well formed but the topology is not valid: every problem found, in file order.
    #[error("{}", display_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// True when trying again might succeed (only a read error can be transient).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConfigError::Read { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock))
    }

    /// The diagnostics of an [`ConfigError::Invalid`] error (empty for other variants).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            _ => &[],
        }
    }
}

/// Diagnostics one per line, as `ConfigError::Invalid` (and the runbook errors) print them.
pub fn display_lines(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(Diagnostic::to_string).collect();
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// A coordinator with its Raft id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coordinator<'a> {
    /// Raft id: 1-based position among the coordinators in file order. Append new
    /// coordinators at the end of the file so existing ids do not move.
    pub raft_id: u64,
    /// The node.
    pub node: &'a Node,
}

impl Topology {
    /// Reads, parses and validates the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Syntax`] for bad
    /// TOML, [`ConfigError::Invalid`] with every problem found otherwise.
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Topology::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config `text`; `file` names it in messages, and its folder is the
    /// base of relative paths (the current directory when it has none).
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for bad TOML, [`ConfigError::Invalid`] with every problem found.
    pub fn parse(text: &str, file: &str) -> Result<Topology, ConfigError> {
        let parent = Path::new(file).parent().unwrap_or(Path::new(""));
        let base_dir = if parent.as_os_str().is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
        };
        Topology::parse_in(text, file, base_dir)
    }

    /// Parses and validates config `text`, resolving relative paths against `base_dir`.
    ///
    /// # Errors
    /// As [`Topology::parse`].
    pub fn parse_in(text: &str, file: &str, base_dir: PathBuf) -> Result<Topology, ConfigError> {
        let root = DeTable::parse(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let mut diags = Diags::new(file, text, &root);
        let root_span = root.span();
        let mut root = root.into_inner();
        check_units(&mut root, &mut diags);

        let mut cluster = None;
        let mut found = Found::default();
        let mut sites = Vec::new();
        let mut nodes = Vec::new();
        let mut groups = Vec::new();
        let mut tls = Tls::default();
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "cluster" => cluster = diags.deserialize::<Cluster>("cluster", value),
                "sites" => {
                    found.sites_partial = !diags.each("sites", value, &mut sites, |d, path, v| {
                        d.deserialize::<Site>(path, v)
                    });
                }
                "nodes" => {
                    found.nodes_partial = !diags.each("nodes", value, &mut nodes, |d, path, v| {
                        d.deserialize::<Node>(path, v)
                    });
                }
                "groups" => {
                    diags.each("groups", value, &mut groups, deserialize_group);
                }
                "tls" => {
                    if let Some(t) = diags.deserialize::<Tls>("tls", value) {
                        tls = t;
                    }
                }
                other => diags.push(
                    other,
                    format!(
                        "unknown section `{other}`; expected cluster, sites, nodes, groups or tls"
                    ),
                ),
            }
        }
        let Some(cluster) = cluster else {
            if !diags.list.iter().any(|d| d.path.starts_with("cluster")) {
                diags.push_at(
                    "cluster",
                    root_span.start,
                    "missing [cluster] section (it needs at least `name`)".to_string(),
                );
            }
            return Err(diags.finish());
        };
        let (sites_idx, sites) = sites.into_iter().unzip();
        let (nodes_idx, nodes) = nodes.into_iter().unzip();
        let mut groups_out = Vec::new();
        for (i, (group, resources_idx, partial)) in groups {
            found.groups_idx.push(i);
            found.resources_idx.push(resources_idx);
            found.resources_partial.push(partial);
            groups_out.push(group);
        }
        found.sites_idx = sites_idx;
        found.nodes_idx = nodes_idx;
        let mut topology = Topology {
            cluster,
            sites,
            nodes,
            groups: groups_out,
            tls,
            base_dir,
        };
        topology.resolve_paths();
        validate(&topology, &found, &mut diags);
        if diags.list.is_empty() {
            Ok(topology)
        } else {
            Err(diags.finish())
        }
    }

    /// Makes every relative path absolute against `base_dir`.
    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for node in &mut self.nodes {
            fix(&mut node.data_dir);
        }
        fix(&mut self.tls.dir);
        for p in [&mut self.tls.peer_ca, &mut self.tls.client_ca]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        for group in &mut self.groups {
            for rb in [
                &mut group.runbooks.drill,
                &mut group.runbooks.failover,
                &mut group.runbooks.switchover,
                &mut group.runbooks.failback,
            ]
            .into_iter()
            .flatten()
            {
                fix(rb);
            }
            for r in &mut group.resources {
                match &mut r.kind {
                    ResourceKind::Volume {
                        path, replica_path, ..
                    }
                    | ResourceKind::Sqlite { path, replica_path } => {
                        fix(path);
                        fix(replica_path);
                    }
                    ResourceKind::Postgres {
                        data_dir,
                        replica_data_dir,
                        bin_dir,
                        ..
                    } => {
                        fix(data_dir);
                        fix(replica_data_dir);
                        fix(bin_dir);
                    }
                }
            }
        }
    }

    /// The site with that name.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The node with that name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The group with that name.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The coordinators in file order, with raft ids 1, 2, 3, …
    pub fn coordinators(&self) -> Vec<Coordinator<'_>> {
        self.nodes
            .iter()
            .filter(|n| n.role == NodeRole::Coordinator)
            .zip(1u64..)
            .map(|(node, raft_id)| Coordinator { raft_id, node })
            .collect()
    }

    /// The raft id of the coordinator with that node name.
    pub fn raft_id(&self, node: &str) -> Option<u64> {
        self.coordinators()
            .into_iter()
            .find(|c| c.node.name == node)
            .map(|c| c.raft_id)
    }

    /// The replicator nodes at `site`, in file order.
    pub fn replicators_at(&self, site: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.site == site && n.role == NodeRole::Replicator)
            .collect()
    }

    /// The node's data folder, absolute.
    pub fn node_data_dir(&self, node: &Node) -> PathBuf {
        self.base_dir.join(&node.data_dir)
    }

    /// Absolute path of `resource` (image, database file or postgres data dir) of `group` at
    /// `site`; `None` when `site` is neither the group's primary nor its replica.
    pub fn resource_path(&self, group: &Group, resource: &Resource, site: &str) -> Option<PathBuf> {
        let primary = if site == group.primary {
            true
        } else if site == group.replica {
            false
        } else {
            return None;
        };
        Some(self.base_dir.join(resource.path_on(primary)))
    }
}

/// What was deserialized, by original index in the file, so that checks name the right entry
/// and skip conclusions that a broken entry would make wrong.
#[derive(Default)]
struct Found {
    sites_idx: Vec<usize>,
    nodes_idx: Vec<usize>,
    groups_idx: Vec<usize>,
    /// Per group (as in `Topology::groups`): the file index of each resource.
    resources_idx: Vec<Vec<usize>>,
    /// Some `[[sites]]` entry could not be read: "unknown site" would be a guess.
    sites_partial: bool,
    /// Some `[[nodes]]` entry could not be read: counts of nodes would be wrong.
    nodes_partial: bool,
    /// Per group: some resource could not be read.
    resources_partial: Vec<bool>,
}

/// A group with the file index of each of its resources, and whether any resource was broken.
type FoundGroup = (Group, Vec<usize>, bool);

/// Deserializes one `[[groups]]` element, its resources one by one so each is checked.
fn deserialize_group(
    diags: &mut Diags<'_>,
    path: &str,
    value: Spanned<DeValue<'_>>,
) -> Option<FoundGroup> {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        diags.push(path, "expected a table: write [[groups]]".to_string());
        return None;
    };
    let resources = table.remove("resources");
    let group = diags.deserialize::<Group>(path, Spanned::new(span, DeValue::Table(table)));
    let mut list = Vec::new();
    let complete = match resources {
        None => true,
        Some(value) => diags.each(
            &format!("{path}.resources"),
            value,
            &mut list,
            |d, rpath, v| {
                let raw = d.deserialize::<RawResource>(rpath, v)?;
                match raw.into_resource() {
                    Ok(r) => Some(r),
                    Err(problems) => {
                        for (field, msg) in problems {
                            d.push(&format!("{rpath}.{field}"), msg);
                        }
                        None
                    }
                }
            },
        ),
    };
    let mut group = group?;
    let (idx, resources) = list.into_iter().unzip();
    group.resources = resources;
    Some((group, idx, !complete))
}

// ---------------------------------------------------------------------------------------------
// Diagnostics and spans
// ---------------------------------------------------------------------------------------------

/// 1-based line and column (in characters) of a byte offset; shared by every TOML parser
/// that reports `file:line:column` (topology, runbooks).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Collects diagnostics and maps field paths to places in the text.
struct Diags<'t> {
    file: String,
    text: &'t str,
    /// Span of every value (and table element) by field path.
    values: HashMap<String, Range<usize>>,
    /// Every key span and value span, with its path, to map a span back to a path.
    spans: Vec<(String, Range<usize>)>,
    /// Fields whose humane value did not parse; later checks of them are suppressed.
    bad: HashSet<String>,
    list: Vec<Diagnostic>,
}

impl<'t> Diags<'t> {
    fn new(file: &str, text: &'t str, root: &Spanned<DeTable<'_>>) -> Diags<'t> {
        let mut d = Diags {
            file: file.to_string(),
            text,
            values: HashMap::new(),
            spans: Vec::new(),
            bad: HashSet::new(),
            list: Vec::new(),
        };
        d.index_table("", root.get_ref());
        d
    }

    fn index_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            self.spans.push((path.clone(), key.span()));
            self.index_value(path, value);
        }
    }

    fn index_value(&mut self, path: String, value: &Spanned<DeValue<'_>>) {
        self.spans.push((path.clone(), value.span()));
        self.values.insert(path.clone(), value.span());
        match value.get_ref() {
            DeValue::Table(t) => self.index_table(&path, t),
            DeValue::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    self.index_value(format!("{path}[{i}]"), v);
                }
            }
            _ => {}
        }
    }

    /// The byte offset of `path`, or of its nearest ancestor present in the file.
    fn offset_of(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(span) = self.values.get(p) {
                return span.start;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return 0,
            }
        }
    }

    /// The innermost path whose key or value span contains `span`.
    fn path_at(&self, span: &Range<usize>) -> Option<&str> {
        self.spans
            .iter()
            .filter(|(_, s)| s.start <= span.start && span.end <= s.end.max(s.start + 1))
            // Smallest span first; on a tie (a table header) the deeper path.
            .min_by_key(|(p, s)| (s.end - s.start, std::cmp::Reverse(p.len())))
            .map(|(p, _)| p.as_str())
    }

    fn push(&mut self, path: &str, message: String) {
        if self.bad.contains(path) {
            return;
        }
        let offset = self.offset_of(path);
        self.push_at(path, offset, message);
    }

    fn push_at(&mut self, path: &str, offset: usize, message: String) {
        let (line, column) = line_col(self.text, offset);
        self.list.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            path: path.to_string(),
            message,
        });
    }

    /// Deserializes `value` (found at `path`) as a `T`, reporting the error on failure.
    fn deserialize<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        value: Spanned<DeValue<'_>>,
    ) -> Option<T> {
        let outer = value.span();
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().unwrap_or(outer);
                let mut at = self.path_at(&span).unwrap_or(path).to_string();
                if !at.starts_with(path) {
                    at = path.to_string();
                }
                let message = e.message().trim().to_string();
                // "missing field `x`" belongs to the field, at the table's place.
                if let Some(field) = message
                    .strip_prefix("missing field `")
                    .and_then(|rest| rest.strip_suffix('`'))
                {
                    let offset = self.offset_of(&at);
                    self.push_at(
                        &format!("{at}.{field}"),
                        offset,
                        format!("missing `{field}`"),
                    );
                } else {
                    self.push_at(&at, span.start, message);
                }
                None
            }
        }
    }

    /// Runs `f` on every element of the array `value` found at `path`, keeping each result with
    /// its index; false when any failed.
    fn each<T>(
        &mut self,
        path: &str,
        value: Spanned<DeValue<'_>>,
        out: &mut Vec<(usize, T)>,
        mut f: impl FnMut(&mut Self, &str, Spanned<DeValue<'_>>) -> Option<T>,
    ) -> bool {
        let DeValue::Array(items) = value.into_inner() else {
            self.push(
                path,
                format!("expected a list of tables: write [[{path}]] for each entry"),
            );
            return false;
        };
        let mut ok = true;
        for (i, item) in items.into_iter().enumerate() {
            match f(self, &format!("{path}[{i}]"), item) {
                Some(v) => out.push((i, v)),
                None => ok = false,
            }
        }
        ok
    }

    fn finish(mut self) -> ConfigError {
        self.list
            .sort_by(|a, b| (a.line, a.column, &a.path).cmp(&(b.line, b.column, &b.path)));
        self.list.dedup();
        ConfigError::Invalid(self.list)
    }
}

/// The kind of humane value a field holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Duration,
    Size,
    Bandwidth,
}

const CLUSTER_UNITS: &[(&str, Unit)] = &[
    ("lease_ttl", Unit::Duration),
    ("drift_margin", Unit::Duration),
    ("heartbeat_interval", Unit::Duration),
    ("detect_after", Unit::Duration),
    ("rpo_sample_interval", Unit::Duration),
];
const GROUP_UNITS: &[(&str, Unit)] = &[
    ("rpo_target", Unit::Duration),
    ("rto_target", Unit::Duration),
    ("max_data_loss", Unit::Duration),
    ("max_bandwidth", Unit::Bandwidth),
    ("journal_max", Unit::Size),
    ("history", Unit::Duration),
    ("history_max", Unit::Size),
    ("checkpoint_interval", Unit::Duration),
];
const RESOURCE_UNITS: &[(&str, Unit)] = &[
    ("size", Unit::Size),
    ("block_size", Unit::Size),
    ("scan_interval", Unit::Duration),
];

/// Checks every humane value in the document, reports each bad one, and replaces it with a
/// neutral placeholder so that the rest of the file can still be checked.
fn check_units(root: &mut DeTable<'_>, diags: &mut Diags<'_>) {
    fn check_table(
        table: &mut DeTable<'_>,
        prefix: &str,
        fields: &[(&str, Unit)],
        diags: &mut Diags<'_>,
    ) {
        for (field, unit) in fields {
            let Some(value) = table.get_mut(*field) else {
                continue;
            };
            let result = match (value.get_ref(), unit) {
                (DeValue::String(s), Unit::Duration) => s.parse::<HumanDuration>().map(drop),
                (DeValue::String(s), Unit::Size) => s.parse::<ByteSize>().map(drop),
                (DeValue::String(s), Unit::Bandwidth) => s.parse::<Bandwidth>().map(drop),
                // Sizes may be plain byte counts; serde checks the sign.
                (DeValue::Integer(_), Unit::Size) => Ok(()),
                (other, _) => Err(UnitError {
                    what: match unit {
                        Unit::Duration => "duration",
                        Unit::Size => "size",
                        Unit::Bandwidth => "bandwidth",
                    },
                    value: match other {
                        DeValue::Integer(i) => i.as_str().to_string(),
                        DeValue::Float(f) => f.as_str().to_string(),
                        DeValue::Boolean(b) => b.to_string(),
                        o => o.type_str().to_string(),
                    },
                    reason: format!(
                        "expected a quoted string with a unit, e.g. {}",
                        match unit {
                            Unit::Duration => "\"4s\"",
                            Unit::Size => "\"256MiB\"",
                            Unit::Bandwidth => "\"100MB/s\"",
                        }
                    ),
                }),
            };
            if let Err(e) = result {
                let path = format!("{prefix}.{field}");
                diags.push_at(&path, value.span().start, e.to_string());
                diags.bad.insert(path);
                let placeholder = match unit {
                    Unit::Duration => "0s",
                    Unit::Size => "0B",
                    Unit::Bandwidth => "1B/s",
                };
                *value.get_mut() = DeValue::String(Cow::Borrowed(placeholder));
            }
        }
    }

    if let Some(DeValue::Table(cluster)) = root.get_mut("cluster").map(Spanned::get_mut) {
        check_table(cluster, "cluster", CLUSTER_UNITS, diags);
    }
    if let Some(DeValue::Array(groups)) = root.get_mut("groups").map(Spanned::get_mut) {
        for (i, group) in groups.iter_mut().enumerate() {
            let DeValue::Table(group) = group.get_mut() else {
                continue;
            };
            let prefix = format!("groups[{i}]");
            check_table(group, &prefix, GROUP_UNITS, diags);
            if let Some(DeValue::Array(resources)) =
                group.get_mut("resources").map(Spanned::get_mut)
            {
                for (j, r) in resources.iter_mut().enumerate() {
                    if let DeValue::Table(r) = r.get_mut() {
                        check_table(
                            r,
                            &format!("{prefix}.resources[{j}]"),
                            RESOURCE_UNITS,
                            diags,
                        );
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

/// Names must be safe in paths, metrics labels, URLs and certificate names.
fn check_name(diags: &mut Diags<'_>, path: &str, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        diags.push(
            path,
            format!(
                "invalid {what} name \"{name}\": use 1-63 letters, digits, '-', '_' or '.', \
                 starting with a letter or digit"
            ),
        );
    }
}

/// Reports a second use of a name; `first` maps names to the line of their first use.
fn check_unique(
    diags: &mut Diags<'_>,
    first: &mut HashMap<String, usize>,
    path: &str,
    what: &str,
    name: &str,
) {
    let line = line_col(diags.text, diags.offset_of(path)).0;
    match first.get(name) {
        Some(at) => diags.push(
            path,
            format!("duplicate {what} \"{name}\" (first used at line {at})"),
        ),
        None => {
            first.insert(name.to_string(), line);
        }
    }
}

/// `host:port` with a non-empty host and a numeric port.
fn check_address(diags: &mut Diags<'_>, path: &str, addr: &str) {
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    });
    if !ok {
        diags.push(
            path,
            format!("invalid address \"{addr}\": write host:port, e.g. \"127.0.0.1:7101\""),
        );
    }
}

fn validate(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    let c = &t.cluster;
    check_name(d, "cluster.name", "cluster", &c.name);
    for (field, value) in [
        ("lease_ttl", c.lease_ttl),
        ("heartbeat_interval", c.heartbeat_interval),
        ("detect_after", c.detect_after),
        ("rpo_sample_interval", c.rpo_sample_interval),
    ] {
        if value.is_zero() {
            d.push(&format!("cluster.{field}"), "must be above 0s".to_string());
        }
    }
    let clean = |d: &Diags<'_>, fields: &[&str]| {
        fields
            .iter()
            .all(|name| !d.bad.contains(&format!("cluster.{name}")))
    };
    if clean(d, &["heartbeat_interval", "detect_after"])
        && c.detect_after.as_millis() < c.heartbeat_interval.as_millis().saturating_mul(2)
    {
        d.push(
            "cluster.detect_after",
            format!(
                "detect_after ({}) must be at least 2 heartbeat_intervals ({}): one lost \
                 heartbeat must not declare a site down",
                c.detect_after, c.heartbeat_interval
            ),
        );
    }
    if clean(d, &["heartbeat_interval", "lease_ttl"])
        && c.lease_ttl.as_millis() < c.heartbeat_interval.as_millis().saturating_mul(2)
    {
        d.push(
            "cluster.lease_ttl",
            format!(
                "lease_ttl ({}) must be at least 2 heartbeat_intervals ({}): a lease must \
                 survive one missed renewal",
                c.lease_ttl, c.heartbeat_interval
            ),
        );
    }
    if clean(d, &["drift_margin", "lease_ttl"]) && c.drift_margin >= c.lease_ttl {
        d.push(
            "cluster.drift_margin",
            format!(
                "drift_margin ({}) must be below lease_ttl ({})",
                c.drift_margin, c.lease_ttl
            ),
        );
    }

    // Sites.
    let mut seen = HashMap::new();
    for (s, i) in t.sites.iter().zip(&f.sites_idx) {
        let path = format!("sites[{i}].name");
        check_name(d, &path, "site", &s.name);
        check_unique(d, &mut seen, &path, "site name", &s.name);
        if let Some(msg) = s
            .jurisdiction
            .as_deref()
            .and_then(residency::jurisdiction_error)
        {
            d.push(&format!("sites[{i}].jurisdiction"), msg);
        }
    }
    let mut site_names: Vec<&str> = Vec::new();
    for s in &t.sites {
        if !site_names.contains(&s.name.as_str()) {
            site_names.push(&s.name);
        }
    }
    let unknown_site = |name: &str| {
        format!(
            "unknown site \"{name}\"; sites are: {}",
            if site_names.is_empty() {
                "(none: add [[sites]] entries)".to_string()
            } else {
                site_names.join(", ")
            }
        )
    };

    // Nodes.
    let mut seen = HashMap::new();
    let mut addresses = HashMap::new();
    let mut data_dirs: HashMap<PathBuf, String> = HashMap::new();
    for (n, i) in t.nodes.iter().zip(&f.nodes_idx) {
        let p = |field: &str| format!("nodes[{i}].{field}");
        check_name(d, &p("name"), "node", &n.name);
        check_unique(d, &mut seen, &p("name"), "node name", &n.name);
        match t.site(&n.site) {
            None if f.sites_partial => {}
            None => d.push(&p("site"), unknown_site(&n.site)),
            Some(site) if site.witness && n.role == NodeRole::Replicator => d.push(
                &p("role"),
                format!(
                    "site \"{}\" is a witness: it hosts only a coordinator, never a replicator \
                     or data",
                    site.name
                ),
            ),
            Some(_) => {}
        }
        let mut addrs = vec![("listen", &n.listen)];
        if let Some(a) = &n.nbd_listen {
            addrs.push(("nbd_listen", a));
            if n.role == NodeRole::Coordinator {
                d.push(
                    &p("nbd_listen"),
                    "only replicators serve NBD; remove nbd_listen from this coordinator"
                        .to_string(),
                );
            }
        }
        if let Some(a) = &n.metrics_listen {
            addrs.push(("metrics_listen", a));
        }
        for (field, addr) in addrs {
            check_address(d, &p(field), addr);
            check_unique(d, &mut addresses, &p(field), "listen address", addr);
        }
        let dir = t.node_data_dir(n);
        match data_dirs.get(&dir) {
            Some(other) => d.push(
                &p("data_dir"),
                format!(
                    "data_dir {} is also node \"{other}\"'s: two nodes must never share state",
                    dir.display()
                ),
            ),
            None => {
                data_dirs.insert(dir, n.name.clone());
            }
        }
    }
    let coordinators = t.coordinators();
    let count = coordinators.len();
    if !f.nodes_partial && (count < 3 || count.is_multiple_of(2)) {
        let why = if count < 3 {
            "at least 3 are needed so that losing one site or node leaves a quorum"
        } else {
            "an even count tolerates no more failures than one fewer and can split evenly"
        };
        let names: Vec<&str> = coordinators.iter().map(|c| c.node.name.as_str()).collect();
        let path = if t.nodes.is_empty() {
            "nodes"
        } else {
            "nodes[0]"
        };
        d.push_at(
            "nodes",
            d.offset_of(path),
            format!(
                "{count} coordinator(s) ({}): use an odd number, 3 or more (3 or 5); {why}",
                names.join(", ")
            ),
        );
    }

    // Groups.
    let auto = t.groups.iter().any(|g| g.auto_failover);
    if auto && count >= 3 && !f.nodes_partial {
        for s in &t.sites {
            let here = coordinators
                .iter()
                .filter(|c| c.node.site == s.name)
                .count();
            if here * 2 > count {
                d.push(
                    "nodes",
                    format!(
                        "site \"{}\" hosts {here} of {count} coordinators: losing it loses the \
                         quorum, so auto_failover could never happen; spread coordinators so \
                         that no site holds a majority (use a witness site)",
                        s.name
                    ),
                );
            }
        }
    }
    let mut seen = HashMap::new();
    let mut files: HashMap<(String, PathBuf), String> = HashMap::new();
    for (k, (g, i)) in t.groups.iter().zip(&f.groups_idx).enumerate() {
        let p = |field: &str| format!("groups[{i}].{field}");
        check_name(d, &p("name"), "group", &g.name);
        check_unique(d, &mut seen, &p("name"), "group name", &g.name);
        for (k, code) in g.allowed_jurisdictions.iter().enumerate() {
            if let Some(msg) = residency::jurisdiction_error(code) {
                d.push(&p(&format!("allowed_jurisdictions[{k}]")), msg);
            }
        }
        for field in ["primary", "replica"] {
            let name = if field == "primary" {
                &g.primary
            } else {
                &g.replica
            };
            match t.site(name) {
                None if f.sites_partial => {}
                None => d.push(&p(field), unknown_site(name)),
                Some(site) if site.witness => d.push(
                    &p(field),
                    format!(
                        "site \"{name}\" is a witness: it hosts only a coordinator, so it cannot \
                         be the {field} of a {} group",
                        g.mode
                    ),
                ),
                Some(site) => {
                    if t.replicators_at(&site.name).is_empty() && !f.nodes_partial {
                        d.push(
                            &p(field),
                            format!(
                                "site \"{name}\" has no replicator node; add a [[nodes]] entry \
                                 with role = \"replicator\" and site = \"{name}\""
                            ),
                        );
                    }
                    if let Some(msg) = residency::placement_refusal(
                        field,
                        &g.allowed_jurisdictions,
                        name,
                        site.jurisdiction.as_deref(),
                    ) {
                        d.push(&p("allowed_jurisdictions"), msg);
                    }
                }
            }
        }
        if g.primary == g.replica {
            d.push(
                &p("replica"),
                format!(
                    "replica site is the same as the primary (\"{}\"): a group needs two \
                     different sites",
                    g.primary
                ),
            );
        }
        let bad = |d: &Diags<'_>, field: &str| d.bad.contains(&p(field));
        if g.rto_target.is_zero() {
            d.push(&p("rto_target"), "must be above 0s".to_string());
        }
        if g.mode == Mode::Async && g.rpo_target.is_zero() && !bad(d, "rpo_target") {
            d.push(
                &p("rpo_target"),
                "an async group always lags its primary, so an RPO target of 0s can never be \
                 met: set the data loss you accept (e.g. \"5s\") or use mode = \"sync\""
                    .to_string(),
            );
        }
        if let Some(max) = g.max_data_loss {
            if max < g.rpo_target && !bad(d, "rpo_target") {
                d.push(
                    &p("max_data_loss"),
                    format!(
                        "max_data_loss ({max}) is below rpo_target ({}): every failover within \
                         target would wait for approval",
                        g.rpo_target
                    ),
                );
            }
        }
        let floor = c
            .detect_after
            .as_millis()
            .saturating_add(c.lease_ttl.as_millis())
            .saturating_add(c.drift_margin.as_millis());
        if g.auto_failover
            && !g.rto_target.is_zero()
            && g.rto_target.as_millis() <= floor
            && clean(d, &["detect_after", "lease_ttl", "drift_margin"])
        {
            d.push(
                &p("rto_target"),
                format!(
                    "rto_target ({}) cannot be met: an automatic failover may promote only \
                     after detect_after ({}) + lease_ttl ({}) + drift_margin ({}) = {}",
                    g.rto_target,
                    c.detect_after,
                    c.lease_ttl,
                    c.drift_margin,
                    HumanDuration::from_millis(floor)
                ),
            );
        }
        if g.journal_max < ByteSize::mib(1) {
            d.push(
                &p("journal_max"),
                format!("journal_max ({}) must be at least 1MiB", g.journal_max),
            );
        }
        if g.history_max.is_some_and(|m| m < ByteSize::mib(1)) {
            d.push(
                &p("history_max"),
                "history_max must be at least 1MiB".to_string(),
            );
        }
        if g.history.is_some() && Duration::from(g.checkpoint_interval) < Duration::from_millis(100)
        {
            d.push(
                &p("checkpoint_interval"),
                format!(
                    "checkpoint_interval ({}) must be at least 100ms",
                    g.checkpoint_interval
                ),
            );
        }
        let resources_partial = f.resources_partial.get(k).copied().unwrap_or(false);
        if g.resources.is_empty() && !resources_partial {
            d.push(
                &p("resources"),
                "a group needs at least one [[groups.resources]] entry".to_string(),
            );
        }
        let mut names = HashMap::new();
        let no_idx = Vec::new();
        let resources_idx = f.resources_idx.get(k).unwrap_or(&no_idx);
        for (r, j) in g.resources.iter().zip(resources_idx) {
            let rp = |field: &str| format!("groups[{i}].resources[{j}].{field}");
            check_name(d, &rp("name"), "resource", &r.name);
            check_unique(
                d,
                &mut names,
                &rp("name"),
                "resource name in this group",
                &r.name,
            );
            if let ResourceKind::Volume {
                size,
                block_size,
                capture,
                scan_interval,
                ..
            } = &r.kind
            {
                if *capture == Capture::Scan && scan_interval.as_millis() < 100 {
                    d.push(
                        &rp("scan_interval"),
                        format!("scan_interval ({scan_interval}) must be at least 100ms"),
                    );
                }
                if *capture == Capture::Scan && g.mode == Mode::Sync {
                    d.push(
                        &rp("capture"),
                        "a scanned volume cannot be replicated in sync mode: its writes never pass through Tandem (use capture = \"nbd\" or mode = \"async\")".to_string(),
                    );
                }
                if size.0 == 0 || !size.0.is_multiple_of(512) {
                    d.push(
                        &rp("size"),
                        format!("volume size ({size}) must be above 0 and a multiple of 512 bytes"),
                    );
                }
                let b = block_size.0;
                if !b.is_power_of_two() || !(4096..=(16 << 20)).contains(&b) {
                    d.push(
                        &rp("block_size"),
                        format!(
                            "block_size ({block_size}) must be a power of two from 4KiB to 16MiB"
                        ),
                    );
                }
            }
            if let ResourceKind::Postgres {
                port, replica_port, ..
            } = &r.kind
            {
                if *port == 0 {
                    d.push(&rp("port"), "port must not be 0".to_string());
                }
                if *replica_port == 0 {
                    d.push(
                        &rp("replica_port"),
                        "replica_port must not be 0".to_string(),
                    );
                }
            }
            let (pf, rf) = match r.kind {
                ResourceKind::Postgres { .. } => ("data_dir", "replica_data_dir"),
                _ => ("path", "replica_path"),
            };
            let sides = [(&g.primary, true, pf), (&g.replica, false, rf)];
            let sides = if g.primary == g.replica {
                &sides[..1]
            } else {
                &sides[..]
            };
            for &(site, primary, field) in sides {
                let key = (site.clone(), t.base_dir.join(r.path_on(primary)));
                let here = format!("groups[{i}].resources[{j}]");
                match files.get(&key) {
                    Some(other) => d.push(
                        &rp(field),
                        format!(
                            "{} at site \"{site}\" is also used by {other}",
                            key.1.display()
                        ),
                    ),
                    None => {
                        files.insert(key, here);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small valid topology; tests break one thing in it at a time.
    const BASE: &str = r#"[cluster]
name = "t"

[[sites]]
name = "a"

[[sites]]
name = "b"

[[sites]]
name = "w"
witness = true

[[nodes]]
name = "a-coord"
site = "a"
role = "coordinator"
listen = "127.0.0.1:7001"
data_dir = "data/a-coord"

[[nodes]]
name = "b-coord"
site = "b"
role = "coordinator"
listen = "127.0.0.1:7002"
data_dir = "data/b-coord"

[[nodes]]
name = "w-coord"
site = "w"
role = "coordinator"
listen = "127.0.0.1:7003"
data_dir = "data/w-coord"

[[nodes]]
name = "a-rep"
site = "a"
role = "replicator"
listen = "127.0.0.1:7004"
data_dir = "data/a-rep"

[[nodes]]
name = "b-rep"
site = "b"
role = "replicator"
listen = "127.0.0.1:7005"
data_dir = "data/b-rep"

[[groups]]
name = "g"
primary = "a"
replica = "b"
mode = "sync"
rto_target = "30s"

[[groups.resources]]
name = "disk0"
kind = "volume"
size = "1MiB"
path = "a/disk0.img"
replica_path = "b/disk0.img"
"#;

    /// `text` with the only occurrence of `from` replaced by `to`.
    fn edit(text: &str, from: &str, to: &str) -> String {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{from:?} must occur exactly once"
        );
        text.replace(from, to)
    }

    /// 1-based line of the only occurrence of `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        assert_eq!(
            text.matches(needle).count(),
            1,
            "{needle:?} must occur exactly once"
        );
        let at = text.find(needle).unwrap_or(0);
        text[..at].matches('\n').count() + 1
    }

    fn parse(text: &str) -> Result<Topology, ConfigError> {
        Topology::parse_in(text, "t.toml", PathBuf::from("/etc/tandem"))
    }

    #[test]
    fn tls_defaults_to_mtls_with_certs_next_to_the_file_and_resolves_paths() {
        let t = parse(BASE).unwrap();
        assert!(!t.tls.insecure);
        assert_eq!(t.tls.dir, PathBuf::from("/etc/tandem/certs"));
        assert_eq!(
            t.tls.peer_ca_path(),
            PathBuf::from("/etc/tandem/certs/roots.pem")
        );
        assert_eq!(t.tls.client_ca_path(), t.tls.peer_ca_path());
        let text = format!("{BASE}\n[tls]\ndir = \"pki\"\nclient_ca = \"/x/clients.pem\"\n");
        let t = parse(&text).unwrap();
        assert_eq!(t.tls.dir, PathBuf::from("/etc/tandem/pki"));
        assert_eq!(
            t.tls.peer_ca_path(),
            PathBuf::from("/etc/tandem/pki/roots.pem")
        );
        assert_eq!(t.tls.client_ca_path(), PathBuf::from("/x/clients.pem"));
        let t = parse(&format!("{BASE}\n[tls]\ninsecure = true\n")).unwrap();
        assert!(t.tls.insecure);
    }

    #[test]
    fn an_unknown_tls_field_is_named_with_its_line() {
        let text = format!("{BASE}\n[tls]\ninsecur = true\n");
        let d = diagnostics(&text);
        assert!(
            d.iter()
                .any(|d| d.path.starts_with("tls") && d.message.contains("insecur")),
            "{d:?}"
        );
    }

    fn diagnostics(text: &str) -> Vec<Diagnostic> {
        match parse(text) {
            Err(ConfigError::Invalid(d)) => d,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Asserts a diagnostic at `path` on the line of `needle`, whose message contains `words`.
    fn assert_diag(text: &str, path: &str, needle: &str, words: &str) {
        let diags = diagnostics(text);
        let all = display_lines(&diags);
        let line = line_of(text, needle);
        let d = diags
            .iter()
            .find(|d| d.path == path)
            .unwrap_or_else(|| panic!("no diagnostic at {path}; got:\n{all}"));
        assert_eq!(d.line, line, "{path} should be on line {line}; got:\n{all}");
        assert!(
            d.message.contains(words),
            "{path}: {:?} lacks {words:?}",
            d.message
        );
        assert!(
            d.to_string().starts_with(&format!("t.toml:{line}:")),
            "display form: {d}"
        );
    }

    #[test]
    fn base_topology_is_valid() {
        let t = parse(BASE).unwrap();
        assert_eq!(t.groups[0].resources.len(), 1);
        assert_eq!(t.cluster.lease_ttl, HumanDuration::from_secs(4));
        assert_eq!(t.groups[0].journal_max, ByteSize::gib(1));
        assert_eq!(t.groups[0].rpo_target, HumanDuration::ZERO);
        assert!(!t.groups[0].auto_failover);
    }

    #[test]
    fn history_fields_parse_and_are_off_by_default() {
        let t = parse(BASE).unwrap();
        assert_eq!(t.groups[0].history, None);
        assert_eq!(t.groups[0].checkpoint_interval, HumanDuration::from_secs(5));
        let text = edit(
            BASE,
            "rto_target = \"30s\"\n",
            "rto_target = \"30s\"\nhistory = \"24h\"\nhistory_max = \"50GiB\"\ncheckpoint_interval = \"2s\"\n",
        );
        let t = parse(&text).unwrap();
        assert_eq!(t.groups[0].history, Some(HumanDuration::from_secs(86400)));
        assert_eq!(t.groups[0].history_max, Some(ByteSize::gib(50)));
        assert_eq!(t.groups[0].checkpoint_interval, HumanDuration::from_secs(2));
        let bad = edit(
            BASE,
            "rto_target = \"30s\"\n",
            "rto_target = \"30s\"\nhistory = \"1h\"\nhistory_max = \"4KiB\"\n",
        );
        assert_diag(
            &bad,
            "groups[0].history_max",
            "history_max = ",
            "at least 1MiB",
        );
        let bad = edit(
            BASE,
            "rto_target = \"30s\"\n",
            "rto_target = \"30s\"\nhistory = \"soon\"\n",
        );
        assert_diag(&bad, "groups[0].history", "history = ", "soon");
    }

    #[test]
    fn example_two_sites_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-sites.toml");
        let t = Topology::load(&path).unwrap();
        let examples = std::path::absolute(path.parent().unwrap()).unwrap();
        assert_eq!(t.base_dir, examples);
        let names: Vec<&str> = t.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["hanoi", "hcm", "danang"]);
        assert!(t.site("danang").unwrap().witness);
        let coords: Vec<(u64, &str)> = t
            .coordinators()
            .iter()
            .map(|c| (c.raft_id, c.node.name.as_str()))
            .collect();
        assert_eq!(
            coords,
            [(1, "hanoi-coord"), (2, "hcm-coord"), (3, "danang-coord")]
        );
        assert_eq!(t.raft_id("danang-coord"), Some(3));
        assert_eq!(t.raft_id("hanoi-rep"), None);
        assert_eq!(t.replicators_at("hanoi")[0].name, "hanoi-rep");
        assert_eq!(t.replicators_at("hcm")[0].name, "hcm-rep");
        assert!(t.replicators_at("danang").is_empty());
        for (i, n) in t.nodes.iter().enumerate() {
            assert_eq!(n.listen, format!("127.0.0.1:{}", 7101 + i));
        }
        let rep = t.node("hanoi-rep").unwrap();
        assert_eq!(t.node_data_dir(rep), examples.join("data/hanoi-rep"));

        let vol = t.group("vol").unwrap();
        assert_eq!(vol.mode, Mode::Sync);
        assert_eq!(vol.resources.len(), 1);
        let disk = vol.resource("disk0").unwrap();
        assert!(
            matches!(disk.kind, ResourceKind::Volume { size, .. } if size == ByteSize::mib(256))
        );
        assert_eq!(
            t.resource_path(vol, disk, "hanoi").unwrap(),
            examples.join("volumes/hanoi/disk0.img")
        );
        assert_eq!(
            t.resource_path(vol, disk, "hcm").unwrap(),
            examples.join("volumes/hcm/disk0.img")
        );
        assert_eq!(t.resource_path(vol, disk, "danang"), None);

        let db = t.group("db").unwrap();
        assert_eq!(db.mode, Mode::Async);
        assert_eq!(db.resources.len(), 1);
        assert_eq!(db.resources[0].kind.name(), "sqlite");
        assert_eq!(db.max_bandwidth.unwrap().bytes_per_sec, 100_000_000);
    }

    #[test]
    fn topology_round_trips_through_toml_serialization() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-sites.toml");
        let t = Topology::load(&path).unwrap();
        let text = toml::to_string(&t).unwrap();
        let again = Topology::parse_in(&text, "again.toml", t.base_dir.clone()).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder_and_absolute_ones_stay() {
        let text = edit(
            BASE,
            "data_dir = \"data/a-rep\"",
            "data_dir = \"/srv/a-rep\"",
        );
        let t = Topology::parse(&text, "/opt/site/tandem.toml").unwrap();
        assert_eq!(t.base_dir, PathBuf::from("/opt/site"));
        assert_eq!(
            t.node("a-coord").unwrap().data_dir,
            PathBuf::from("/opt/site/data/a-coord")
        );
        assert_eq!(
            t.node("a-rep").unwrap().data_dir,
            PathBuf::from("/srv/a-rep")
        );
        let g = &t.groups[0];
        let r = &g.resources[0];
        assert_eq!(
            t.resource_path(g, r, "b").unwrap(),
            PathBuf::from("/opt/site/b/disk0.img")
        );
    }

    #[test]
    fn replica_path_defaults_to_path() {
        let text = edit(BASE, "replica_path = \"b/disk0.img\"\n", "");
        let t = parse(&text).unwrap();
        let (g, r) = (&t.groups[0], &t.groups[0].resources[0]);
        assert_eq!(t.resource_path(g, r, "a"), t.resource_path(g, r, "b"));
    }

    #[test]
    fn group_with_same_primary_and_replica_is_refused() {
        let text = edit(BASE, "replica = \"b\"", "replica = \"a\"");
        assert_diag(
            &text,
            "groups[0].replica",
            "replica = \"a\"",
            "same as the primary",
        );
    }

    #[test]
    fn node_on_unknown_site_is_refused() {
        let text = edit(
            BASE,
            "site = \"b\"\nrole = \"replicator\"",
            "site = \"x\"\nrole = \"replicator\"",
        );
        assert_diag(
            &text,
            "nodes[4].site",
            "site = \"x\"",
            "unknown site \"x\"; sites are: a, b, w",
        );
    }

    #[test]
    fn group_on_unknown_site_is_refused() {
        let text = edit(BASE, "primary = \"a\"", "primary = \"hanoi\"");
        assert_diag(
            &text,
            "groups[0].primary",
            "primary = \"hanoi\"",
            "unknown site \"hanoi\"",
        );
    }

    #[test]
    fn duplicate_site_names_are_refused() {
        let text = edit(BASE, "name = \"w\"", "name = \"b\"");
        // The duplicate is the later entry; its witness node now sits on "b" too.
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "sites[2].name").unwrap();
        assert_eq!(d.line, 11);
        assert!(d
            .message
            .contains("duplicate site name \"b\" (first used at line 8)"));
    }

    #[test]
    fn duplicate_node_names_are_refused() {
        let text = edit(BASE, "name = \"b-rep\"", "name = \"a-rep\"");
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "nodes[4].name").unwrap();
        assert_eq!(d.line, line_of(&text, "name = \"a-rep\"\nsite = \"b\""));
        assert!(
            d.message.contains("duplicate node name \"a-rep\""),
            "{}",
            d.message
        );
    }

    #[test]
    fn duplicate_group_names_are_refused() {
        let text = format!(
            "{BASE}\n[[groups]]\nname = \"g\"\nprimary = \"b\"\nreplica = \"a\"\nmode = \"sync\"\nrto_target = \"30s\"\n\n[[groups.resources]]\nname = \"other\"\nkind = \"sqlite\"\npath = \"x.db\"\n"
        );
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "groups[1].name").unwrap();
        assert_eq!(
            d.line,
            line_of(&text, "[[groups]]\nname = \"g\"\nprimary = \"b\"") + 1
        );
        assert!(d.message.contains("duplicate group name \"g\""));
    }

    #[test]
    fn duplicate_resource_names_within_a_group_are_refused() {
        let text = format!(
            "{BASE}\n[[groups.resources]]\nname = \"disk0\"\nkind = \"sqlite\"\npath = \"x.db\"\n"
        );
        let diags = diagnostics(&text);
        let d = diags
            .iter()
            .find(|d| d.path == "groups[0].resources[1].name")
            .unwrap();
        assert_eq!(
            d.line,
            line_of(&text, "name = \"disk0\"\nkind = \"sqlite\"")
        );
        assert!(d
            .message
            .contains("duplicate resource name in this group \"disk0\""));
    }

    #[test]
    fn duplicate_listen_addresses_are_refused_across_fields() {
        let text = edit(
            BASE,
            "listen = \"127.0.0.1:7005\"",
            "listen = \"127.0.0.1:7005\"\nmetrics_listen = \"127.0.0.1:7002\"",
        );
        assert_diag(
            &text,
            "nodes[4].metrics_listen",
            "metrics_listen = \"127.0.0.1:7002\"",
            "duplicate listen address \"127.0.0.1:7002\"",
        );
    }

    #[test]
    fn even_number_of_coordinators_is_refused() {
        let text = edit(
            BASE,
            "name = \"a-rep\"\nsite = \"a\"\nrole = \"replicator\"",
            "name = \"a-rep\"\nsite = \"a\"\nrole = \"coordinator\"",
        );
        // a-rep is now a coordinator: 4 of them, and site a loses its replicator.
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "nodes").unwrap();
        assert_eq!(d.line, line_of(&text, "[[nodes]]\nname = \"a-coord\""));
        assert!(d.message.starts_with("4 coordinator(s)"), "{}", d.message);
        assert!(d.message.contains("even"));
    }

    #[test]
    fn fewer_than_three_coordinators_is_refused() {
        let text = edit(
            BASE,
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"coordinator\"",
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"replicator\"",
        );
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "nodes").unwrap();
        assert_eq!(d.line, line_of(&text, "[[nodes]]\nname = \"a-coord\""));
        assert!(
            d.message.starts_with("2 coordinator(s) (a-coord, b-coord)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn sync_group_on_witness_site_is_refused() {
        let text = edit(BASE, "replica = \"b\"", "replica = \"w\"");
        assert_diag(
            &text,
            "groups[0].replica",
            "replica = \"w\"",
            "\"w\" is a witness",
        );
    }

    #[test]
    fn witness_site_hosting_a_replicator_is_refused() {
        let text = edit(
            BASE,
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"coordinator\"",
            "name = \"w-coord\"\nsite = \"w\"\nrole = \"replicator\"",
        );
        assert_diag(
            &text,
            "nodes[2].role",
            "role = \"replicator\"\nlisten = \"127.0.0.1:7003\"",
            "witness",
        );
    }

    #[test]
    fn group_site_without_replicator_is_refused() {
        let text = edit(
            BASE,
            "name = \"b-rep\"\nsite = \"b\"",
            "name = \"b-rep\"\nsite = \"a\"",
        );
        assert_diag(
            &text,
            "groups[0].replica",
            "replica = \"b\"",
            "site \"b\" has no replicator",
        );
    }

    #[test]
    fn bad_duration_is_reported_with_its_value_and_line() {
        let text = edit(BASE, "rto_target = \"30s\"", "rto_target = \"30 secs\"");
        assert_diag(
            &text,
            "groups[0].rto_target",
            "rto_target = \"30 secs\"",
            "invalid duration \"30 secs\": unknown unit \"secs\"",
        );
        let diags = diagnostics(&text);
        assert_eq!(
            diags.len(),
            1,
            "the placeholder must not add errors: {diags:?}"
        );
        assert_eq!(diags[0].column, 14, "points at the value");
    }

    #[test]
    fn unquoted_duration_is_refused_with_a_hint() {
        let text = edit(BASE, "name = \"t\"", "name = \"t\"\nlease_ttl = 4");
        assert_diag(
            &text,
            "cluster.lease_ttl",
            "lease_ttl = 4",
            "invalid duration \"4\": expected a quoted string",
        );
    }

    #[test]
    fn bad_size_is_reported_with_its_value_and_line() {
        let text = edit(BASE, "size = \"1MiB\"", "size = \"1 mb\"");
        assert_diag(
            &text,
            "groups[0].resources[0].size",
            "size = \"1 mb\"",
            "invalid size \"1 mb\"",
        );
        assert_eq!(diagnostics(&text).len(), 1);
    }

    #[test]
    fn bandwidth_schedule_windows_override_max_bandwidth_by_time_of_day() {
        let mut text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nmax_bandwidth = \"100MB/s\"",
        );
        text.push_str(
            "\n[[groups.bandwidth_schedule]]\nfrom = \"08:00\"\nto = \"18:00\"\nmax_bandwidth = \"10MB/s\"\n\n[[groups.bandwidth_schedule]]\nfrom = \"22:00\"\nto = \"02:00\"\nmax_bandwidth = \"1GB/s\"\n",
        );
        let t = parse(&text).unwrap();
        let g = &t.groups[0];
        let at = |s: &str| g.bandwidth_at(s.parse().unwrap());
        assert_eq!(at("07:59"), Some(100_000_000));
        assert_eq!(at("08:00"), Some(10_000_000));
        assert_eq!(at("17:59"), Some(10_000_000));
        assert_eq!(at("18:00"), Some(100_000_000));
        assert_eq!(at("23:30"), Some(1_000_000_000), "window across midnight");
        assert_eq!(at("01:59"), Some(1_000_000_000));
        assert_eq!(at("02:00"), Some(100_000_000));
        let bad = text.replace("\"22:00\"", "\"25:00\"");
        let all = display_lines(&diagnostics(&bad));
        assert!(
            all.contains("bandwidth_schedule") && all.contains("25:00"),
            "{all}"
        );
    }

    #[test]
    fn scan_capture_needs_async_and_a_sane_interval() {
        let text = edit(
            BASE,
            "size = \"1MiB\"",
            "size = \"1MiB\"\ncapture = \"scan\"\nscan_interval = \"10ms\"",
        );
        let all = display_lines(&diagnostics(&text));
        assert!(
            all.contains("groups[0].resources[0].capture") && all.contains("sync mode"),
            "{all}"
        );
        assert!(
            all.contains("groups[0].resources[0].scan_interval") && all.contains("at least 100ms"),
            "{all}"
        );
        let ok = edit(
            &text,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"10s\"",
        )
        .replace("\"10ms\"", "\"2s\"");
        let t = parse(&ok).unwrap();
        match &t.groups[0].resources[0].kind {
            ResourceKind::Volume {
                capture,
                scan_interval,
                ..
            } => {
                assert_eq!(*capture, Capture::Scan);
                assert_eq!(*scan_interval, HumanDuration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        let sqlite = edit(&ok, "kind = \"volume\"", "kind = \"sqlite\"");
        assert!(display_lines(&diagnostics(&sqlite)).contains("does not apply to a sqlite"));
    }

    #[test]
    fn bad_bandwidth_is_reported_with_its_value_and_line() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nmax_bandwidth = \"100MB\"",
        );
        assert_diag(
            &text,
            "groups[0].max_bandwidth",
            "max_bandwidth",
            "invalid bandwidth \"100MB\": missing \"/s\"",
        );
    }

    #[test]
    fn volume_without_size_is_refused() {
        let text = edit(BASE, "size = \"1MiB\"\n", "");
        assert_diag(
            &text,
            "groups[0].resources[0].size",
            "[[groups.resources]]",
            "a volume needs a size",
        );
    }

    #[test]
    fn volume_size_not_a_multiple_of_512_is_refused() {
        let text = edit(BASE, "size = \"1MiB\"", "size = 1000");
        assert_diag(
            &text,
            "groups[0].resources[0].size",
            "size = 1000",
            "multiple of 512",
        );
    }

    #[test]
    fn settings_of_another_kind_are_refused() {
        let text = edit(BASE, "kind = \"volume\"", "kind = \"sqlite\"");
        let diags = diagnostics(&text);
        let d = diags
            .iter()
            .find(|d| d.path == "groups[0].resources[0].size")
            .unwrap();
        assert!(d.message.contains("does not apply to a sqlite"));
    }

    #[test]
    fn async_group_with_zero_rpo_target_is_refused() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"0s\"",
        );
        assert_diag(
            &text,
            "groups[0].rpo_target",
            "rpo_target = \"0s\"",
            "async group always lags",
        );
    }

    #[test]
    fn async_group_without_rpo_target_is_refused_at_the_group() {
        let text = edit(BASE, "mode = \"sync\"", "mode = \"async\"");
        assert_diag(
            &text,
            "groups[0].rpo_target",
            "[[groups]]",
            "async group always lags",
        );
    }

    #[test]
    fn async_group_with_rpo_target_and_sync_group_with_zero_are_accepted() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"5s\"",
        );
        assert_eq!(
            parse(&text).unwrap().groups[0].rpo_target,
            HumanDuration::from_secs(5)
        );
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nrpo_target = \"0s\"",
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn max_data_loss_below_rpo_target_is_refused() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"10s\"\nmax_data_loss = \"5s\"",
        );
        assert_diag(
            &text,
            "groups[0].max_data_loss",
            "max_data_loss",
            "below rpo_target (10s)",
        );
    }

    #[test]
    fn auto_failover_with_unreachable_rto_target_is_refused() {
        let text = edit(
            BASE,
            "rto_target = \"30s\"",
            "rto_target = \"5s\"\nauto_failover = true",
        );
        assert_diag(
            &text,
            "groups[0].rto_target",
            "rto_target = \"5s\"",
            "= 7500ms",
        );
    }

    #[test]
    fn auto_failover_with_a_coordinator_majority_at_one_site_is_refused() {
        let text = edit(
            BASE,
            "rto_target = \"30s\"",
            "rto_target = \"30s\"\nauto_failover = true",
        );
        assert!(parse(&text).is_ok());
        let text = edit(
            &text,
            "name = \"w-coord\"\nsite = \"w\"",
            "name = \"w-coord\"\nsite = \"a\"",
        );
        let diags = diagnostics(&text);
        assert!(
            diags
                .iter()
                .any(|d| d.path == "nodes" && d.message.contains("site \"a\" hosts 2 of 3")),
            "{diags:?}"
        );
    }

    #[test]
    fn cluster_timings_that_contradict_each_other_are_refused() {
        let text = edit(
            BASE,
            "name = \"t\"",
            "name = \"t\"\nheartbeat_interval = \"3s\"",
        );
        assert_diag(
            &text,
            "cluster.detect_after",
            "[cluster]",
            "at least 2 heartbeat_intervals",
        );
        assert_diag(
            &text,
            "cluster.lease_ttl",
            "[cluster]",
            "survive one missed renewal",
        );
    }

    #[test]
    fn nodes_sharing_a_data_dir_are_refused() {
        let text = edit(
            BASE,
            "data_dir = \"data/b-rep\"",
            "data_dir = \"data/../data/a-rep\"",
        );
        // Not normalised: only the same written path is caught.
        assert!(parse(&text).is_ok());
        let text = edit(
            BASE,
            "data_dir = \"data/b-rep\"",
            "data_dir = \"data/a-rep\"",
        );
        assert_diag(
            &text,
            "nodes[4].data_dir",
            "data_dir = \"data/a-rep\"\n\n[[groups",
            "never share",
        );
    }

    #[test]
    fn resources_sharing_a_file_at_one_site_are_refused() {
        let text = format!(
            "{BASE}\n[[groups.resources]]\nname = \"disk1\"\nkind = \"volume\"\nsize = \"1MiB\"\npath = \"./a/disk0.img\"\n"
        );
        assert_diag(
            &text,
            "groups[0].resources[1].path",
            "path = \"./a/disk0.img\"",
            "also used by groups[0].resources[0]",
        );
    }

    #[test]
    fn jurisdiction_outside_the_allowed_list_is_refused() {
        let text = edit(BASE, "name = \"b\"", "name = \"b\"\njurisdiction = \"SG\"");
        let text = edit(&text, "name = \"a\"", "name = \"a\"\njurisdiction = \"VN\"");
        let text = edit(
            &text,
            "mode = \"sync\"",
            "mode = \"sync\"\nallowed_jurisdictions = [\"VN\"]",
        );
        assert_diag(
            &text,
            "groups[0].allowed_jurisdictions",
            "allowed_jurisdictions = [\"VN\"]",
            "replica site \"b\" is in SG, allowed: VN",
        );
    }

    #[test]
    fn site_without_jurisdiction_cannot_hold_a_restricted_group() {
        let text = edit(BASE, "name = \"a\"", "name = \"a\"\njurisdiction = \"VN\"");
        let text = edit(
            &text,
            "mode = \"sync\"",
            "mode = \"sync\"\nallowed_jurisdictions = [\"VN\"]",
        );
        assert_diag(
            &text,
            "groups[0].allowed_jurisdictions",
            "allowed_jurisdictions = [\"VN\"]",
            "replica site \"b\" has no jurisdiction, allowed: VN",
        );
        let both = edit(&text, "name = \"b\"", "name = \"b\"\njurisdiction = \"VN\"");
        assert!(parse(&both).is_ok(), "both sites in VN is allowed");
    }

    #[test]
    fn jurisdiction_codes_must_be_iso_3166_alpha_2() {
        let text = edit(BASE, "name = \"b\"", "name = \"b\"\njurisdiction = \"vn\"");
        assert_diag(
            &text,
            "sites[1].jurisdiction",
            "jurisdiction = \"vn\"",
            "\"VN\"",
        );
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nallowed_jurisdictions = [\"XX\"]",
        );
        assert_diag(
            &text,
            "groups[0].allowed_jurisdictions[0]",
            "allowed_jurisdictions = [\"XX\"]",
            "not an ISO 3166-1 alpha-2",
        );
    }

    #[test]
    fn unknown_field_is_reported_at_its_key() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nrpo_taget = \"1s\"",
        );
        assert_diag(
            &text,
            "groups[0].rpo_taget",
            "rpo_taget",
            "unknown field `rpo_taget`",
        );
    }

    #[test]
    fn unknown_enum_value_is_reported_at_its_value() {
        let text = edit(BASE, "mode = \"sync\"", "mode = \"semi\"");
        assert_diag(
            &text,
            "groups[0].mode",
            "mode = \"semi\"",
            "unknown variant `semi`",
        );
    }

    #[test]
    fn missing_required_field_is_reported_at_its_table() {
        let text = edit(BASE, "listen = \"127.0.0.1:7002\"\n", "");
        assert_diag(
            &text,
            "nodes[1].listen",
            "[[nodes]]\nname = \"b-coord\"",
            "missing `listen`",
        );
    }

    #[test]
    fn a_broken_entry_does_not_hide_errors_elsewhere_or_cause_false_ones() {
        // nodes[1] cannot be read; coordinator counts are then not judged, but the group's
        // error is still found.
        let text = edit(BASE, "listen = \"127.0.0.1:7002\"\n", "");
        let text = edit(&text, "replica = \"b\"", "replica = \"a\"");
        let diags = diagnostics(&text);
        let paths: Vec<&str> = diags.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["nodes[1].listen", "groups[0].replica"]);
    }

    #[test]
    fn broken_fixture_reports_every_error_with_path_and_line() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken-topology.toml");
        let err = Topology::load(&path).unwrap_err();
        let ConfigError::Invalid(diags) = &err else {
            panic!("expected Invalid, got {err:?}");
        };
        let got: Vec<(&str, usize)> = diags.iter().map(|d| (d.path.as_str(), d.line)).collect();
        assert_eq!(
            got,
            [
                ("cluster.lease_ttl", 5),
                ("sites[2].name", 14),
                ("nodes", 16),
                ("nodes[1].site", 25),
                ("nodes[1].listen", 27),
                ("groups[0].replica", 40),
                ("groups[0].journal_max", 43),
                ("groups[0].resources[0].size", 45),
            ],
            "\n{err}"
        );
        let unknown = diags.iter().find(|d| d.path == "nodes[1].site").unwrap();
        assert!(
            unknown.message.ends_with("sites are: hanoi, hcm"),
            "{}",
            unknown.message
        );
        // One line per diagnostic, each FILE:LINE:COL: path: message.
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), diags.len());
        let first = shown.lines().next().unwrap();
        assert!(
            first.ends_with(
                "broken-topology.toml:5:13: cluster.lease_ttl: invalid duration \"4 seconds\": \
                 unknown unit \"seconds\"; use ms, s, m, h or d"
            ),
            "{first}"
        );
    }

    #[test]
    fn toml_syntax_error_is_its_own_variant_with_line_and_column() {
        let text = edit(BASE, "mode = \"sync\"", "mode = \"sync");
        match parse(&text) {
            Err(ConfigError::Syntax {
                file,
                line,
                column,
                message,
            }) => {
                assert_eq!(file, "t.toml");
                assert_eq!(line, line_of(&text, "mode = \"sync"));
                assert!(column > 1, "{column}");
                assert!(!message.is_empty());
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
    }

    #[test]
    fn missing_cluster_section_is_reported() {
        let text = edit(BASE, "[cluster]\nname = \"t\"\n", "");
        let diags = diagnostics(&text);
        assert_eq!(diags[0].path, "cluster");
        assert_eq!((diags[0].line, diags[0].column), (1, 1));
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = Topology::load(Path::new("/nonexistent/tandem.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err
            .to_string()
            .starts_with("/nonexistent/tandem.toml: cannot read config"));
        assert!(!err.is_retryable());
    }

    #[test]
    fn durations_parse_every_unit() {
        let cases = [
            ("250ms", 250),
            ("4s", 4_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("7d", 604_800_000),
            ("0", 0),
            (" 3s ", 3_000),
        ];
        for (i, (text, ms)) in cases.iter().enumerate() {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.as_millis(), *ms, "#{i}: {text}");
        }
        assert_eq!(HumanDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(HumanDuration::from_secs(120).to_string(), "2m");
    }

    #[test]
    fn duration_parse_errors_name_the_value() {
        let cases = [
            ("", "empty"),
            ("4", "missing unit"),
            ("1.5s", "fractions"),
            ("4sec", "unknown unit \"sec\""),
            ("s", "must start with a whole number"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615d", "too large"),
        ];
        for (i, (text, words)) in cases.iter().enumerate() {
            let e = text.parse::<HumanDuration>().unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("invalid duration \"{text}\"")),
                "#{i}: {shown}"
            );
            assert!(shown.contains(words), "#{i}: {shown} lacks {words}");
        }
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        let cases = [
            ("64KiB", 65_536),
            ("256MiB", 268_435_456),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("100MB", 100_000_000),
            ("5KB", 5_000),
            ("512B", 512),
            ("4096", 4_096),
        ];
        for (i, (text, bytes)) in cases.iter().enumerate() {
            assert_eq!(
                text.parse::<ByteSize>().unwrap().bytes(),
                *bytes,
                "#{i}: {text}"
            );
        }
        assert_eq!(
            "100MB/s".parse::<Bandwidth>().unwrap().bytes_per_sec,
            100_000_000
        );
        assert_eq!(ByteSize::mib(256).to_string(), "256MiB");
        assert_eq!(ByteSize(100_000_000).to_string(), "100MB");
    }

    #[test]
    fn size_parse_errors_name_the_value() {
        let cases = [
            ("1.5GiB", "size", "fractions"),
            ("10M", "size", "ambiguous"),
            ("10 parsecs", "size", "unknown unit \"parsecs\""),
            ("99999999TiB", "size", "too large"),
        ];
        for (i, (text, what, words)) in cases.iter().enumerate() {
            let shown = text.parse::<ByteSize>().unwrap_err().to_string();
            assert!(
                shown.starts_with(&format!("invalid {what} \"{text}\"")),
                "#{i}: {shown}"
            );
            assert!(shown.contains(words), "#{i}: {shown} lacks {words}");
        }
        for (i, (text, words)) in [
            ("100MB", "missing \"/s\""),
            ("0MB/s", "above 0"),
            ("1x/s", "unknown unit"),
        ]
        .iter()
        .enumerate()
        {
            let shown = text.parse::<Bandwidth>().unwrap_err().to_string();
            assert!(
                shown.starts_with(&format!("invalid bandwidth \"{text}\"")),
                "#{i}: {shown}"
            );
            assert!(shown.contains(words), "#{i}: {shown} lacks {words}");
        }
    }

    #[test]
    fn line_col_counts_characters_not_bytes() {
        assert_eq!(line_col("a\nđà = 1", 7), (2, 4));
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("abc", 99), (1, 4));
    }

    proptest! {
        #[test]
        fn durations_round_trip_through_display(ms in 0u64..(1u64 << 50)) {
            let d = HumanDuration::from_millis(ms);
            prop_assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
        }

        #[test]
        fn whole_unit_durations_display_in_their_unit(n in 1u64..1_000, u in 0usize..5) {
            let (name, per) = DURATION_UNITS[u];
            let d = HumanDuration::from_millis(n * per);
            let shown = d.to_string();
            prop_assert!(shown.parse::<HumanDuration>().unwrap() == d);
            prop_assert!(shown.len() <= format!("{n}{name}").len(), "{} vs {}{}", shown, n, name);
        }

        #[test]
        fn sizes_round_trip_through_display(bytes in any::<u64>()) {
            let s = ByteSize(bytes);
            prop_assert_eq!(s.to_string().parse::<ByteSize>().unwrap(), s);
        }

        #[test]
        fn bandwidths_round_trip_through_display(bytes in 1u64..) {
            let b = Bandwidth { bytes_per_sec: bytes };
            prop_assert_eq!(b.to_string().parse::<Bandwidth>().unwrap(), b);
        }

        #[test]
        fn durations_and_sizes_round_trip_through_serde(ms in 0u64..(1u64 << 40), bytes in any::<u64>()) {
            #[derive(Serialize, Deserialize, PartialEq, Debug)]
            struct Both { d: HumanDuration, s: ByteSize }
            let v = Both { d: HumanDuration::from_millis(ms), s: ByteSize(bytes) };
            let text = toml::to_string(&v).unwrap();
            prop_assert_eq!(toml::from_str::<Both>(&text).unwrap(), v);
        }
    }
}
