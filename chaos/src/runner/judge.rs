//! What the checks of a run look at ([`Judge`]) and what they found ([`Findings`]), with the
//! small helpers every check room shares. I/O: reading the final volume image, status.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;
use tandem_coordinator::status::GroupStatus;

use super::cluster::Ctx;
use super::dbrun::FinalDbs;
use super::host::Host;
use super::load::Load;
use super::observe::Observed;
use super::topology::group;
use crate::checker::ReplicationMode;
use crate::history::History;
use crate::scenario::Scenario;

/// Everything a check may look at.
pub struct Judge<'a> {
    /// The running cluster.
    pub ctx: &'a Ctx,
    /// The caller's side.
    pub host: &'a Host<'a>,
    /// The scenario.
    pub s: &'a Scenario,
    /// The whole history.
    pub history: &'a History,
    /// What the runner saw.
    pub obs: &'a Observed,
    /// The writers.
    pub load: &'a Load,
    /// The volume group at the end.
    pub g_end: &'a GroupStatus,
    /// The final databases (after a recovery, with a database workload).
    pub db_final: Option<&'a FinalDbs>,
    /// Whether the woken old primary refused a write.
    pub old_primary_refused: Option<bool>,
    /// The cluster recovered.
    pub recovered: bool,
}

/// What the checks found.
#[derive(Default)]
pub struct Findings {
    /// Why the scenario fails (empty: it passes).
    pub failures: Vec<String>,
    /// Notes for the report.
    pub notes: Vec<String>,
    /// Acknowledged writes lost.
    pub lost: usize,
    /// Committed transactions lost.
    pub db_lost: usize,
    /// The failover's RTO from the audit chain.
    pub rto_ms: Value,
}

/// The first three violations, joined.
pub fn first3(v: &[String]) -> String {
    v.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
}

/// The scenario's replication mode.
pub fn mode_of(s: &Scenario) -> ReplicationMode {
    if s.mode == "sync" {
        ReplicationMode::Sync
    } else {
        ReplicationMode::Async
    }
}

/// A hash of `[off, off + len)` of the final primary's volume image.
pub fn image_hasher(j: &Judge<'_>) -> Result<impl Fn(u64, u64) -> blake3::Hash> {
    let img = std::fs::read(
        j.ctx
            .dir
            .join(format!("volumes/{}/disk0.img", j.g_end.primary)),
    )?;
    Ok(move |off: u64, len: u64| {
        blake3::hash(img.get(off as usize..(off + len) as usize).unwrap_or(&[]))
    })
}

/// The volume group's reason as status shows it, once it names a quarantine (bounded wait).
pub fn quarantine_shown(ctx: &Ctx) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reason = ctx
            .status()
            .as_ref()
            .and_then(group)
            .map(|g| g.reason.clone());
        match reason {
            Some(r) if r.contains("quarantined") => return Some(r),
            _ if Instant::now() > deadline => return None,
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first3;

    #[test]
    fn only_the_first_three_violations_are_named() {
        let v: Vec<String> = (1..=5).map(|i| format!("v{i}")).collect();
        assert_eq!(first3(&v), "v1; v2; v3");
        assert_eq!(first3(&[]), "");
    }
}
