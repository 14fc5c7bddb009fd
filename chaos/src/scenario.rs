//! Chaos scenarios as TOML: a timeline of faults over a workload, and the checks to apply.
//!
//! ```toml
//! name = "primary-site-loss-sync"
//! description = "kill -9 every process of the primary site under sync writes"
//! mode = "sync"
//! duration = "8s"
//! auto_failover = true
//! checks = ["no_lost_acknowledged_writes", "identical_after_recovery", "rto_within_target"]
//!
//! [[faults]]
//! at = "3s"
//! action = "kill"
//! target = "site:primary"
//! ```
//!
//! Network faults (`partition`, `heal`, `corrupt`, `bandwidth`, `latency`, `flap`) act on the
//! links between the `target` nodes and the `peer` nodes (every other node when `peer` is
//! absent): the chaos runner puts a fault proxy on every link, one per ordered pair of nodes.
//! `flap` is expanded by [`Scenario::timeline`] into alternating `partition` / `heal` faults.
//! `torn-tail` cuts or garbles the last bytes of the newest journal segment of a killed node.

use serde::Deserialize;
use tandem_core::config::HumanDuration;

/// A fault action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAction {
    /// kill -9.
    Kill,
    /// SIGSTOP.
    Pause,
    /// SIGCONT.
    Resume,
    /// Start again every node this scenario killed (of the target).
    Restart,
    /// Cut the links between `target` and `peer`, both ways (bytes stall, as over a real
    /// partition that TCP outlives).
    Partition,
    /// Cut the links one way: bytes `target` sends to `peer` stall, bytes `peer` sends to
    /// `target` still flow (Jepsen's one-way partition).
    Cut,
    /// Remove every network fault from the links between `target` and `peer`
    /// (`target = "all"`: from every link).
    Heal,
    /// Flip one random bit in every `every` bytes sent from `target` to `peer`.
    Corrupt,
    /// Cap the links between `target` and `peer` at `bytes_per_sec`, both ways.
    Bandwidth,
    /// Add `delay` to the links between `target` and `peer`, both ways.
    Latency,
    /// Partition and heal the links between `target` and `peer` every `period` until `until`.
    Flap,
    /// Cut the last `bytes` of the newest journal segment of `target` (which must be killed
    /// first); with `garble = true`, flip them instead.
    TornTail,
    /// Order a run of the `runbook` runbook (`failover`, `switchover`) of the group through
    /// the admin API, as an operator would; `target` is not used (write `all`).
    Order,
    /// Set the `Clock` of the target's processes to `skew_ms` off the system time (a bump),
    /// drifting a further `drift_ms_per_s` every second from then on (default 0).
    Clock,
    /// Switch the target's `Clock` between `skew_ms` and no skew every `period` until
    /// `until` (then no skew).
    Strobe,
    /// Flip `bytes` bytes at seeded random offsets of the target's copy of the volume
    /// (`volumes/SITE/disk0.img`; the target must be killed first): silent corruption at rest,
    /// which only a verify sees.
    Bitrot,
    /// Set failpoint `failpoint` of the target's processes to `actions` (the `fail` crate's
    /// syntax, e.g. `1*return(lose)`, `sleep(300)`, `off`); needs a build with failpoints.
    /// A node that crashes at a failpoint counts as killed: `restart` and the recovery start
    /// it again, with its failpoints cleared.
    Failpoint,
    /// Cut the power of the target's nodes: kill -9 each process, then drop everything its
    /// folders on the power-loss file system ([`crate::powerfs`]) did not make durable (with
    /// `torn_write`, the default, the last unsynced write of each folder keeps a
    /// sector-aligned prefix). Several faults at the same `at` cut nodes that share a feed.
    PowerCut,
    /// Power the target's nodes back on: start again every node of the target this scenario
    /// cut (or killed), on what their disks kept.
    PowerRestore,
    /// Tag a point-in-time checkpoint `tag` (needs `history = true`): the writers stop, the
    /// primary marks the checkpoint and the replica holds it, the replica's image is hashed
    /// as the image at the checkpoint, then the writers go on. `recovers_to_checkpoint`
    /// rebuilds it at the end.
    Checkpoint,
}

impl FaultAction {
    /// True for the actions that change links (through the fault proxies).
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultAction::Partition
                | FaultAction::Cut
                | FaultAction::Heal
                | FaultAction::Corrupt
                | FaultAction::Bandwidth
                | FaultAction::Latency
                | FaultAction::Flap
        )
    }
}

/// One fault on the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When, from the start of the workload.
    pub at: HumanDuration,
    /// What.
    pub action: FaultAction,
    /// Whom: `site:primary`, `site:replica`, `site:NAME`, `node:NAME`, `leader`,
    /// `primary-replicator`, `replica-replicator`, `coordinators`, `replicators`, `all` —
    /// resolved at the moment the fault fires.
    pub target: String,
    /// Network faults: the other end of the links (same forms as `target`); default every
    /// node not in `target`.
    #[serde(default)]
    pub peer: Option<String>,
    /// `corrupt`: flip one bit in every window of this many bytes.
    #[serde(default)]
    pub every: Option<u64>,
    /// `bandwidth`: the cap in bytes per second.
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
    /// `latency`: the added delay.
    #[serde(default)]
    pub delay: Option<HumanDuration>,
    /// `flap`: time between switching the partition on and off.
    #[serde(default)]
    pub period: Option<HumanDuration>,
    /// `flap`: when to stop flapping (the links are healed then).
    #[serde(default)]
    pub until: Option<HumanDuration>,
    /// `torn-tail`: how many bytes of the tail to cut or garble.
    #[serde(default)]
    pub bytes: Option<u64>,
    /// `order`: the runbook to run (`failover`, `switchover`).
    #[serde(default)]
    pub runbook: Option<String>,
    /// `torn-tail`: how to tear the tail.
    #[serde(default)]
    pub tear: Tear,
    /// `clock` / `strobe`: the skew in milliseconds (may be negative).
    #[serde(default)]
    pub skew_ms: Option<i64>,
    /// `clock`: drift in milliseconds per second from the moment of the fault.
    #[serde(default)]
    pub drift_ms_per_s: Option<i64>,
    /// `failpoint`: the failpoint's name (one of `tandem_core::fault::POINTS`).
    #[serde(default)]
    pub failpoint: Option<String>,
    /// `failpoint`: its actions.
    #[serde(default)]
    pub actions: Option<String>,
    /// `power-cut`: tear the last unsynced write at a sector boundary (default true).
    #[serde(default)]
    pub torn_write: Option<bool>,
    /// `checkpoint`: the tag.
    #[serde(default)]
    pub tag: Option<String>,
}

/// How `torn-tail` damages the newest journal segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tear {
    /// Cut the last `bytes`: bytes that were fsynced (and maybe acknowledged) are gone, a
    /// fault stronger than a torn write.
    #[default]
    Cut,
    /// Flip the last `bytes`.
    Garble,
    /// Append the first `bytes` of the segment (a valid frame header and part of its body)
    /// after its end: a frame whose write the crash cut off before it was fsynced, as a real
    /// torn write leaves it.
    PartialFrame,
}

impl Fault {
    /// A fault with only the required fields set.
    pub fn new(at: HumanDuration, action: FaultAction, target: &str) -> Fault {
        Fault {
            at,
            action,
            target: target.to_owned(),
            peer: None,
            every: None,
            bytes_per_sec: None,
            delay: None,
            period: None,
            until: None,
            bytes: None,
            runbook: None,
            tear: Tear::Cut,
            skew_ms: None,
            drift_ms_per_s: None,
            failpoint: None,
            actions: None,
            torn_write: None,
            tag: None,
        }
    }
}

/// Whether `t` names a set of nodes the runner can resolve.
fn known_target(t: &str) -> bool {
    matches!(
        t,
        "site:primary"
            | "site:replica"
            | "leader"
            | "primary-replicator"
            | "replica-replicator"
            | "coordinators"
            | "replicators"
            | "all"
    ) || t.strip_prefix("site:").is_some_and(|n| !n.is_empty())
        || t.strip_prefix("node:").is_some_and(|n| !n.is_empty())
}

/// A check a scenario asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Sync: no acknowledged write lost; async: losses only inside the reported RPO window.
    NoLostAcknowledgedWrites,
    /// After recovery, primary and replica are byte-identical (merkle roots at a barrier).
    IdenticalAfterRecovery,
    /// The automatic failover's RTO is within the group's target.
    RtoWithinTarget,
    /// A failover happened (the primary site changed).
    FailedOver,
    /// No failover happened (the primary site did not change).
    NoFailover,
    /// Epochs observed by the client never went backwards.
    EpochsMonotonic,
    /// The audit chain verifies.
    AuditChainValid,
    /// The old primary, resumed after a pause, refuses writes (it lost its lease).
    OldPrimaryFenced,
    /// No epoch has acknowledged writes from two sites (clients write at both sites).
    NoSplitBrain,
    /// The first primary acknowledged no write after its last lease ended.
    NoAckAfterFence,
    /// The RPO rose above `rpo_peak_min_ms` while a network fault was on and fell back to 0
    /// after the last network fault was lifted.
    RpoRecovers,
    /// Every node whose journal tail was torn logged that it truncated the torn frame when
    /// it restarted.
    TornTailRepaired,
    /// No epoch was promoted twice and promotions never went back in epoch (read from the
    /// audit chain); with `order` faults, at most one promotion per accepted order.
    NoDoublePromotion,
    /// The proxies corrupted bytes on the replication link and the stream recovered from it
    /// (a refused frame or a reconnect).
    CorruptionCaught,
    /// Database workload (`database = true`): no committed transaction lost (sync: outside the
    /// capture window; async: outside the RPO window reported before the failure), judged on
    /// the promoted copy at the failover and on the final primary.
    DbNoLostCommits,
    /// Database workload: the promoted copy at the failover, the final primary and the final
    /// replica open with `integrity_check` = ok and hold a commit prefix (no partial
    /// transaction, no gap).
    DbConsistent,
    /// Database workload: after recovery `tandem verify db` finds the pages equal and the
    /// replica holds exactly the primary's transactions.
    DbIdenticalAfterRecovery,
    /// Database workload with a failback: the transactions the old primary committed that
    /// never reached the new primary are in the copy it quarantined before its resync.
    DbTailQuarantined,
    /// After a failback, every range the old primary acknowledged that the final volume does
    /// not hold (its unreplicated tail) is in the quarantine file its resync wrote; the run
    /// must have such a tail.
    TailQuarantined,
    /// After recovery `tandem verify` finds the copies different (the `bitrot` faults), then
    /// `tandem resync` repairs them and a second verify finds them equal.
    BitrotFoundAndRepaired,
    /// Every `failpoint` fault with a `return` action fired (its node logged it): a scenario
    /// whose fault never happened proves nothing.
    FailpointsFired,
    /// Every `checkpoint` of the run is rebuilt at the end by a point-in-time recovery at the
    /// replica (`tandem recover --checkpoint TAG`), and the recovered image equals the image
    /// hashed when the checkpoint was taken.
    RecoversToCheckpoint,
    /// Every `power-cut` dropped something not yet durable (unsynced bytes or folder
    /// changes) on at least one of the folders it cut: a cut that found everything synced
    /// proves nothing.
    PowerCutsDroppedWrites,
    /// PostgreSQL workload (`postgres = true`): every transaction pgbench saw committed at the
    /// old primary is in the promoted server (sync); async: the lost ones (the newest) span no
    /// more than the RPO status last showed before the loss, carried forward to it, plus the
    /// status's delay (500 ms).
    PgNoLostCommits,
    /// PostgreSQL workload with the old primary back: `tandem wal rejoin` turns its crashed
    /// server into a standby of the new primary with pg_rewind (no full copy), the group is
    /// protected again, and the standby replays the new primary's writes until both servers
    /// hold the same rows and balances.
    PgRejoined,
    /// Several hosts per site (`hosts_per_site`): the groups of every host the scenario did not
    /// kill never changed primary site, primary host or epoch (in any status sample, nor in
    /// the audit chain), and their writes never stopped: no write failed or ended unknown,
    /// and the longest gap between acknowledged writes stayed within `max_write_gap`
    /// (`max_write_gap` + the group's `sync_timeout` for a sync group whose replica host was
    /// killed: its writes wait that long for the replica before the coordinators' consent).
    OtherGroupsUndisturbed,
    /// Several hosts per site: every group whose replica host a `kill` took away is seen
    /// `degraded`, for that host's silence (the coordinators' reason names it), within
    /// `detect_after` + 1 s of the kill and in no sample `protected` again until the host is
    /// restarted; then it is seen `protected` again within 15 s of the restart. The kills
    /// must take some group's replica host, and a `restart` must bring it back in the run.
    ReplicaGroupsResync,
}

impl Check {
    /// True for the checks of the database workload (they need `database = true`).
    pub fn is_database(self) -> bool {
        matches!(
            self,
            Check::DbNoLostCommits
                | Check::DbConsistent
                | Check::DbIdenticalAfterRecovery
                | Check::DbTailQuarantined
        )
    }

    /// True for the checks of the PostgreSQL workload (they need `postgres = true`).
    pub fn is_postgres(self) -> bool {
        matches!(self, Check::PgNoLostCommits | Check::PgRejoined)
    }

    /// True for the checks a scenario with several hosts per site can judge (each group by
    /// itself); `other_groups_undisturbed` needs such a scenario.
    pub fn fits_hosts(self) -> bool {
        matches!(
            self,
            Check::NoLostAcknowledgedWrites
                | Check::IdenticalAfterRecovery
                | Check::RtoWithinTarget
                | Check::FailedOver
                | Check::EpochsMonotonic
                | Check::AuditChainValid
                | Check::NoDoublePromotion
                | Check::OtherGroupsUndisturbed
                | Check::ReplicaGroupsResync
        )
    }
}

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// `sync` or `async`.
    pub mode: String,
    /// Length of the workload (faults must fall inside it).
    pub duration: HumanDuration,
    /// Automatic failover on.
    #[serde(default)]
    pub auto_failover: bool,
    /// The timeline.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Checks to apply at the end.
    pub checks: Vec<Check>,
    /// `rpo_recovers`: the RPO must have reached at least this while the fault was on.
    #[serde(default)]
    pub rpo_peak_min_ms: Option<u64>,
    /// `rpo_recovers`: after the fault is lifted the RPO must come down to at most this
    /// (default 0; under continuous async writes a few hundred ms is "caught up").
    #[serde(default)]
    pub rpo_recovered_max_ms: Option<u64>,
    /// 4 KiB blocks per write of the workload (default 4); larger writes load the link more.
    #[serde(default)]
    pub blocks_per_write: Option<u64>,
    /// Nodes whose `Clock` is skewed for the whole run (restarts keep the skew).
    #[serde(default)]
    pub clock_skew: Vec<ClockSkew>,
    /// Write incompressible data (the wire carries every byte written), to load a link.
    #[serde(default)]
    pub incompressible: bool,
    /// The group's `sync_timeout` (default `1s`: a sync primary degrades to local
    /// acknowledgements after it); `0s` = strict sync, never degrade.
    #[serde(default)]
    pub sync_timeout: Option<HumanDuration>,
    /// Clients write at every data site (labelled with site and epoch), not only at the
    /// primary; needed by `no_split_brain` and `no_ack_after_fence`.
    #[serde(default)]
    pub clients_at_every_site: bool,
    /// Also protect a SQLite database: a second group `db` (same mode, automatic failover and
    /// `sync_timeout` as `vol`) under a transaction writer that follows its primary.
    #[serde(default)]
    pub database: bool,
    /// Also protect a PostgreSQL 15 cluster: a group `pg` (same mode and automatic failover as
    /// `vol`) whose resource `db` streams WAL through Tandem (`stream = true`; sync: the
    /// server names Tandem's slot in `synchronous_standby_names`), a standby at the replica
    /// site, and pgbench with per-transaction logs at the primary. Killing the primary site's
    /// replicator kills its server too (kill -9).
    #[serde(default)]
    pub postgres: bool,
    /// Record point-in-time history at the replica (`history = "1h"`, `checkpoint_interval =
    /// "1s"` on the volume group); needed by `checkpoint` faults.
    #[serde(default)]
    pub history: bool,
    /// Replicator hosts per data site (2 to 8; default one, `SITE-rep`): the topology gets
    /// hosts `SITE-rep-1` .. `SITE-rep-N` and `groups` volume groups pinned over them, each
    /// under its own writer (the hosts workload; `kill` faults of `node:` targets and
    /// `restart` of the nodes killed only).
    #[serde(default)]
    pub hosts_per_site: Option<u32>,
    /// With `hosts_per_site`: how many volume groups (at least one per host, at most 24).
    #[serde(default)]
    pub groups: Option<u32>,
    /// With `hosts_per_site`: the longest gap between two acknowledged writes of a group
    /// that `other_groups_undisturbed` allows (default the topology's `detect_after`).
    #[serde(default)]
    pub max_write_gap: Option<HumanDuration>,
}

/// A node started with a skewed `Clock`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSkew {
    /// The node's name.
    pub node: String,
    /// Milliseconds added to its clock (negative: behind).
    pub skew_ms: i64,
}

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not valid TOML for the schema.
    #[error("{file}: {message}")]
    Parse {
        /// File name.
        file: String,
        /// toml's message (with line and column).
        message: String,
    },
    /// Valid TOML, wrong content.
    #[error("{file}: {field}: {message}")]
    Invalid {
        /// File name.
        file: String,
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ScenarioError {
    /// Scenario errors are never retryable: the file must change.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl Scenario {
    /// Parses and validates a scenario.
    ///
    /// # Errors
    /// [`ScenarioError`] naming the file and field.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        let bad = |field: String, message: String| ScenarioError::Invalid {
            file: file.to_owned(),
            field,
            message,
        };
        if s.mode != "sync" && s.mode != "async" {
            return Err(bad(
                "mode".into(),
                format!("{:?}: expected sync or async", s.mode),
            ));
        }
        if s.duration.as_millis() == 0 || s.duration.as_millis() > 120_000 {
            return Err(bad(
                "duration".into(),
                "must be between 1ms and 120s".into(),
            ));
        }
        for (i, c) in s.clock_skew.iter().enumerate() {
            if c.node.is_empty() {
                return Err(bad(format!("clock_skew[{i}].node"), "names no node".into()));
            }
            if c.skew_ms.unsigned_abs() > 3_600_000 {
                return Err(bad(
                    format!("clock_skew[{i}].skew_ms"),
                    "more than an hour".into(),
                ));
            }
        }
        if s.blocks_per_write.is_some_and(|b| b == 0 || b > 1024) {
            return Err(bad(
                "blocks_per_write".into(),
                "must be between 1 and 1024".into(),
            ));
        }
        if s.checks.is_empty() {
            return Err(bad(
                "checks".into(),
                "a scenario needs at least one check".into(),
            ));
        }
        for (i, f) in s.faults.iter().enumerate() {
            if f.at.as_millis() >= s.duration.as_millis() {
                return Err(bad(
                    format!("faults[{i}].at"),
                    "falls after the end of the workload".into(),
                ));
            }
            if !known_target(&f.target) {
                return Err(bad(
                    format!("faults[{i}].target"),
                    format!("unknown target {:?}", f.target),
                ));
            }
            if let Some(p) = &f.peer {
                if !f.action.is_network() {
                    return Err(bad(
                        format!("faults[{i}].peer"),
                        format!("only network faults have a peer, not {:?}", f.action),
                    ));
                }
                if !known_target(p) {
                    return Err(bad(
                        format!("faults[{i}].peer"),
                        format!("unknown peer {p:?}"),
                    ));
                }
            }
            let need = |field: &str, present: bool| -> Result<(), ScenarioError> {
                if present {
                    Ok(())
                } else {
                    Err(bad(
                        format!("faults[{i}].{field}"),
                        format!("required by action {:?}", f.action),
                    ))
                }
            };
            match f.action {
                FaultAction::Corrupt => need("every", f.every.is_some_and(|e| e > 0))?,
                FaultAction::Bandwidth => {
                    need("bytes_per_sec", f.bytes_per_sec.is_some_and(|b| b > 0))?
                }
                FaultAction::Latency => need("delay", f.delay.is_some())?,
                FaultAction::Flap => {
                    need("period", f.period.is_some_and(|p| p.as_millis() >= 100))?;
                    need("until", f.until.is_some_and(|u| u > f.at && u < s.duration))?;
                }
                FaultAction::TornTail | FaultAction::Bitrot => {
                    need("bytes", f.bytes.is_some_and(|b| b > 0))?
                }
                FaultAction::Clock => need("skew_ms", f.skew_ms.is_some())?,
                FaultAction::Strobe => {
                    need("skew_ms", f.skew_ms.is_some_and(|k| k != 0))?;
                    need("period", f.period.is_some_and(|p| p.as_millis() >= 100))?;
                    need("until", f.until.is_some_and(|u| u > f.at && u < s.duration))?;
                }
                FaultAction::Failpoint => {
                    need(
                        "failpoint",
                        f.failpoint
                            .as_deref()
                            .is_some_and(tandem_core::fault::known),
                    )?;
                    need(
                        "actions",
                        f.actions.as_deref().is_some_and(|a| !a.trim().is_empty()),
                    )?;
                    if let Some(n) = f.failpoint.as_deref() {
                        // The runner writes `NAME=ACTIONS` lines: check them as the node will.
                        let line = format!("{n}={}", f.actions.as_deref().unwrap_or(""));
                        tandem_core::fault::parse_program(&line)
                            .map_err(|e| bad(format!("faults[{i}]"), e))?;
                    }
                }
                FaultAction::Checkpoint => {
                    need(
                        "tag",
                        f.tag.as_deref().is_some_and(|t| !t.trim().is_empty()),
                    )?;
                    if !s.history {
                        return Err(bad(
                            format!("faults[{i}].action"),
                            "checkpoint needs `history = true`".into(),
                        ));
                    }
                }
                FaultAction::Order => need(
                    "runbook",
                    f.runbook
                        .as_deref()
                        .is_some_and(|r| matches!(r, "failover" | "switchover")),
                )?,
                _ => {}
            }
        }
        if !s.database {
            if let Some(c) = s.checks.iter().find(|c| c.is_database()) {
                return Err(bad(
                    "checks".into(),
                    format!("{c:?} needs `database = true`"),
                ));
            }
        }
        if !s.postgres {
            if let Some(c) = s.checks.iter().find(|c| c.is_postgres()) {
                return Err(bad(
                    "checks".into(),
                    format!("{c:?} needs `postgres = true`"),
                ));
            }
        }
        let has = |a: FaultAction| s.faults.iter().any(|f| f.action == a);
        if s.postgres && s.faults.iter().any(|f| f.action != FaultAction::Kill) {
            // The workload follows one loss of the primary site; other faults would need
            // their own PostgreSQL judgement.
            return Err(bad(
                "postgres".into(),
                "the PostgreSQL workload supports only `kill` faults".into(),
            ));
        }
        if s.checks.contains(&Check::RecoversToCheckpoint) && !has(FaultAction::Checkpoint) {
            return Err(bad(
                "checks".into(),
                "recovers_to_checkpoint needs a `checkpoint` fault".into(),
            ));
        }
        if s.checks.contains(&Check::PowerCutsDroppedWrites) && !has(FaultAction::PowerCut) {
            return Err(bad(
                "checks".into(),
                "power_cuts_dropped_writes needs a `power-cut` fault".into(),
            ));
        }
        if s.database && has(FaultAction::PowerCut) {
            // SQLite maps its -shm file; the power-loss file system serves files without the
            // page cache (direct I/O), which shared mappings need.
            return Err(bad(
                "database".into(),
                "power-cut faults do not support the database workload".into(),
            ));
        }
        if s.faults.windows(2).any(|w| w[1].at < w[0].at) {
            return Err(bad("faults".into(), "faults must be in time order".into()));
        }
        s.check_hosts().map_err(|(f, m)| bad(f, m))?;
        Ok(s)
    }

    /// True for a scenario with several replicator hosts per site (the hosts workload).
    pub fn has_hosts(&self) -> bool {
        self.hosts_per_site.is_some()
    }

    /// The hosts workload's volume groups: `groups`, by default one per host.
    pub fn group_count(&self) -> u32 {
        self.groups.or(self.hosts_per_site).unwrap_or(1)
    }

    /// The fields of the hosts workload fit together; returns (field, message) otherwise.
    fn check_hosts(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((f.to_owned(), m.to_owned()));
        let Some(hosts) = self.hosts_per_site else {
            if self.groups.is_some() || self.max_write_gap.is_some() {
                return err("hosts_per_site", "`groups` and `max_write_gap` need it");
            }
            if let Some(c) = self.checks.iter().find(|c| {
                matches!(
                    c,
                    Check::OtherGroupsUndisturbed | Check::ReplicaGroupsResync
                )
            }) {
                return Err(("checks".into(), format!("{c:?} needs `hosts_per_site`")));
            }
            return Ok(());
        };
        if !(2..=8).contains(&hosts) {
            return err("hosts_per_site", "must be between 2 and 8");
        }
        if self.groups.is_some_and(|g| g < hosts || g > 24) {
            return err(
                "groups",
                "must be between hosts_per_site and 24 (one per host)",
            );
        }
        if self.database || self.postgres || self.history || self.clients_at_every_site {
            return err(
                "hosts_per_site",
                "the hosts workload writes volume groups only (no database, postgres, \
                 history or clients_at_every_site)",
            );
        }
        if let Some(c) = self.checks.iter().find(|c| !c.fits_hosts()) {
            return Err((
                "checks".into(),
                format!("{c:?} does not judge the hosts workload"),
            ));
        }
        for (i, f) in self.faults.iter().enumerate() {
            let node_kill = f.action == FaultAction::Kill && f.target.starts_with("node:");
            // A restart brings back a node an earlier fault killed.
            let restart = f.action == FaultAction::Restart
                && self.faults[..i]
                    .iter()
                    .any(|k| k.action == FaultAction::Kill && k.target == f.target);
            if !node_kill && !restart {
                return Err((
                    format!("faults[{i}]"),
                    "the hosts workload supports only `kill` of `node:NAME` targets and \
                     `restart` of a node killed before"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// True when a fault moves a clock (`clock`, `strobe`): every node then follows a clock file.
    pub fn has_clock_faults(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f.action, FaultAction::Clock | FaultAction::Strobe))
    }

    /// True when a fault cuts the power: every node's folders then live on the power-loss
    /// file system.
    pub fn has_power_cuts(&self) -> bool {
        self.faults
            .iter()
            .any(|f| f.action == FaultAction::PowerCut)
    }

    /// True when a fault sets a failpoint: every node then follows a failpoint file.
    pub fn has_failpoints(&self) -> bool {
        self.faults
            .iter()
            .any(|f| f.action == FaultAction::Failpoint)
    }

    /// The fault timeline with every `flap` expanded into `partition` and `heal` faults
    /// (`partition` at `at`, `heal` one `period` later, and so on; a final `heal` at
    /// `until`), sorted by time (faults at the same time keep their file order).
    pub fn timeline(&self) -> Vec<Fault> {
        let mut out = Vec::new();
        for f in &self.faults {
            let (Some(period), Some(until)) = (f.period, f.until) else {
                out.push(f.clone());
                continue;
            };
            // The switch times: on at `at`, off one period later, ...; off at `until`.
            let step = period.as_millis().max(1);
            let mut switches = Vec::new();
            let (mut t, mut on) = (f.at.as_millis(), true);
            while t < until.as_millis() {
                switches.push((t, on));
                on = !on;
                t += step;
            }
            switches.push((until.as_millis(), false));
            for (t, on) in switches {
                let mut x = f.clone();
                x.at = HumanDuration::from_millis(t);
                match f.action {
                    FaultAction::Flap => {
                        x.action = if on {
                            FaultAction::Partition
                        } else {
                            FaultAction::Heal
                        };
                    }
                    FaultAction::Strobe => {
                        x.action = FaultAction::Clock;
                        x.skew_ms = Some(if on { f.skew_ms.unwrap_or(0) } else { 0 });
                        x.drift_ms_per_s = None;
                    }
                    _ => {
                        out.push(f.clone());
                        break;
                    }
                }
                out.push(x);
            }
        }
        out.sort_by_key(|f| f.at);
        out
    }
}

#[cfg(test)]
mod tests;
