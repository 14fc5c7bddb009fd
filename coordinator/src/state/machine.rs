//! The replicated [`State`]: its fields, its read accessors (leases, promotion window, runs,
//! audit) and the helpers every command room uses (group lookup, audit append, settings in
//! ms). Pure: no I/O, no clock.

use super::event::Event;
use super::model::CorrectiveAction;
use super::model::{ClusterSettings, Group, LeaseStatus, Run, Site};
use super::rejection::Rejection;
use crate::audit::{AuditChain, AuditKind, AuditRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The replicated state. Change it only through [`apply`](super::apply).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub(super) settings: Option<ClusterSettings>,
    pub(super) clock_ms: i64,
    pub(super) sites: BTreeMap<String, Site>,
    pub(super) groups: BTreeMap<String, Group>,
    pub(super) audit: AuditChain,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) runs: BTreeMap<String, Run>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) actions: BTreeMap<String, CorrectiveAction>,
}

impl State {
    /// An empty, not yet bootstrapped state.
    pub fn new() -> State {
        State::default()
    }

    /// Cluster settings, `None` before bootstrap.
    pub fn settings(&self) -> Option<&ClusterSettings> {
        self.settings.as_ref()
    }

    /// Highest `at_ms` applied so far (the state machine's notion of now).
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// All sites by name.
    pub fn sites(&self) -> &BTreeMap<String, Site> {
        &self.sites
    }

    /// One site.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.get(name)
    }

    /// All groups by name.
    pub fn groups(&self) -> &BTreeMap<String, Group> {
        &self.groups
    }

    /// One group.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// Current primary site of a group.
    pub fn primary_of(&self, group: &str) -> Option<&str> {
        self.groups.get(group).map(|g| g.primary_site.as_str())
    }

    /// Whether the group has an active (not revoked, not released) lease unexpired at `now_ms`,
    /// as the coordinators see it.
    pub fn lease_live(&self, group: &str, now_ms: i64) -> bool {
        self.groups
            .get(group)
            .and_then(|g| g.lease.as_ref())
            .is_some_and(|l| l.status == LeaseStatus::Active && now_ms < l.expires_ms)
    }

    /// Whether the group's last lease may still be believed live by its holder at `now_ms`:
    /// not released and `now_ms < expires_ms + drift_margin_ms` (revoked leases included).
    pub fn lease_may_be_live(&self, group: &str, now_ms: i64) -> bool {
        self.promotion_allowed_at(group)
            .is_some_and(|until| now_ms < until)
    }

    /// Earliest `at_ms` at which a promotion of the group is not blocked by a lease:
    /// `expires_ms + drift_margin_ms` of its last lease unless that lease was released.
    /// `None` when no lease blocks (no lease, released lease, unknown group). Other conditions
    /// (sites, planned catch-up) may still refuse a promotion.
    pub fn promotion_allowed_at(&self, group: &str) -> Option<i64> {
        let g = self.groups.get(group)?;
        let lease = g.lease.as_ref()?;
        if matches!(lease.status, LeaseStatus::Released { .. }) {
            return None;
        }
        Some(lease.expires_ms.saturating_add(self.drift_ms()))
    }

    /// All runbook runs by id.
    pub fn runs(&self) -> &BTreeMap<String, Run> {
        &self.runs
    }

    /// One run.
    pub fn run(&self, run_id: &str) -> Option<&Run> {
        self.runs.get(run_id)
    }

    /// Start (leader ms) of the group's last drill run, whatever its outcome or who started
    /// it; `None` when it never drilled. The drill schedule counts from it.
    pub fn last_drill_ms(&self, group: &str) -> Option<i64> {
        self.runs
            .values()
            .filter(|r| r.group == group && r.kind == tandem_runbooks::RunbookKind::Drill)
            .map(Run::started_ms)
            .max()
    }

    /// Corrective actions by id (`A-1`, `A-2`, ...; a map orders `A-10` before `A-2`).
    pub fn actions(&self) -> &BTreeMap<String, CorrectiveAction> {
        &self.actions
    }

    /// The audit chain.
    pub fn audit(&self) -> &AuditChain {
        &self.audit
    }

    /// Up to `limit` audit records from index `from`, oldest first, among those held in memory
    /// (empty past the end and below [`AuditChain::tail_first`]: read older ones from the
    /// coordinator's audit store).
    pub fn audit_range(&self, from: u64, limit: usize) -> &[AuditRecord] {
        self.audit.range(from, limit)
    }

    /// Drops the audit records below `index` from memory. The coordinator calls it once they
    /// are in its audit store; the chain's head is unchanged, so no command decides differently.
    pub fn drop_audit_before(&mut self, index: u64) {
        self.audit.drop_before(index);
    }

    /// The drift margin in ms (0 before bootstrap).
    pub(super) fn drift_ms(&self) -> i64 {
        self.settings.map_or(0, |s| ms(s.drift_margin_ms))
    }

    /// The lease length in ms (0 before bootstrap).
    pub(super) fn ttl_ms(&self) -> i64 {
        self.settings.map_or(0, |s| ms(s.lease_ttl_ms))
    }

    /// Appends an audit record and reports it.
    pub(super) fn record_audit(
        &mut self,
        ev: &mut Vec<Event>,
        at_ms: i64,
        actor: &str,
        kind: AuditKind,
        group: Option<&str>,
        detail: Value,
    ) {
        let index = self.audit.append(at_ms, actor, kind, group, detail);
        ev.push(Event::Audited { index, kind });
    }
}

/// A duration in ms as a signed offset (saturating: no setting is near 2^63).
pub(super) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A value as JSON (`Null` if it cannot be: never for the state's types).
pub(super) fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// The group, or `UnknownGroup`.
pub(super) fn get_group<'a>(state: &'a State, group: &str) -> Result<&'a Group, Rejection> {
    state
        .groups
        .get(group)
        .ok_or_else(|| Rejection::UnknownGroup {
            group: group.to_string(),
        })
}

/// Mutable access to a group already validated by `get_group`.
pub(super) fn group_mut<'a>(state: &'a mut State, group: &str) -> Result<&'a mut Group, Rejection> {
    state
        .groups
        .get_mut(group)
        .ok_or_else(|| Rejection::UnknownGroup {
            group: group.to_string(),
        })
}
