//! The planner: a runbook plus a group's state becomes the exact list of steps a run will take,
//! computed before anything runs (`tandem runbook plan`, and the object a run executes).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tandem_core::config::{HumanDuration, Mode};
use tandem_core::ids::{Epoch, GroupId};

use crate::condition::ConditionEnv;
use crate::model::{Action, OnFailure, ParamValue, Retries, Runbook, RunbookKind, SiteRef};
use crate::RunbookError;

/// What the planner needs to know about the group the runbook will run for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanContext {
    /// The group's name.
    pub group: String,
    /// The group's primary site now.
    pub primary_site: String,
    /// The group's replica site now.
    pub replica_site: String,
    /// The group's replication mode.
    pub mode: Mode,
    /// The group's epoch now.
    pub epoch: Epoch,
    /// Parameter values as given by the caller (command-line text), by name.
    pub params: BTreeMap<String, String>,
}

/// Where a planned step runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolvedSite {
    /// On the coordinator leader.
    Coordinator,
    /// On the replicator of this site.
    Site(String),
}

impl fmt::Display for ResolvedSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvedSite::Coordinator => f.write_str("coordinator"),
            ResolvedSite::Site(s) => f.write_str(s),
        }
    }
}

/// What happens when a planned step fails for good, with step references resolved to indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlannedFailure {
    /// The run ends failed.
    Abort,
    /// The run goes on with the next step.
    Continue,
    /// These steps (by index) run if they have not run yet, then the run ends failed.
    Run(Vec<usize>),
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    /// Position in the plan (0-based); stable for the life of the run.
    pub index: usize,
    /// The step's id.
    pub id: String,
    /// The action and its arguments.
    pub action: Action,
    /// Where it runs, resolved.
    pub site: ResolvedSite,
    /// What the file said (`primary`, `replica`, ...), for display.
    pub site_ref: SiteRef,
    /// The step's description.
    pub description: Option<String>,
    /// Time allowed for one attempt.
    pub timeout: HumanDuration,
    /// Retry policy.
    pub retries: Retries,
    /// Safe to repeat after a leader change.
    pub repeatable: bool,
    /// Runs only when named by a failing step's `on_failure`.
    pub handler: bool,
    /// On final failure.
    pub on_failure: PlannedFailure,
    /// Why the step will not run (its `when` is false), if so.
    pub skipped: Option<String>,
}

/// A resolved runbook: what a run will do, step by step, for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The runbook's name.
    pub runbook: String,
    /// The runbook's kind.
    pub kind: RunbookKind,
    /// The group's name.
    pub group: String,
    /// The group's wire id.
    pub group_id: GroupId,
    /// The epoch when planned.
    pub epoch: Epoch,
    /// The group's mode when planned.
    pub mode: Mode,
    /// The primary site when planned.
    pub primary: String,
    /// The replica site when planned.
    pub replica: String,
    /// Every parameter's value (given or default).
    pub params: BTreeMap<String, ParamValue>,
    /// The steps, in order.
    pub steps: Vec<PlannedStep>,
}

/// Resolves `runbook` for a group: parameter values (given or default, type-checked), sites
/// (`primary`/`replica` become site names), `when` conditions (false ones mark the step
/// skipped) and `on_failure` references (to step indexes).
///
/// # Errors
/// [`RunbookError::UnknownParameter`], [`RunbookError::MissingParameter`] and
/// [`RunbookError::BadParameter`] for parameters; [`RunbookError::BadContext`] when the primary
/// and replica sites are missing or the same.
pub fn plan(runbook: &Runbook, cx: &PlanContext) -> Result<Plan, RunbookError> {
    let bad = |message: &str| RunbookError::BadContext {
        group: cx.group.clone(),
        message: message.to_string(),
    };
    if cx.primary_site.is_empty() || cx.replica_site.is_empty() {
        return Err(bad("the primary and replica sites must be named"));
    }
    if cx.primary_site == cx.replica_site {
        return Err(bad("primary and replica are the same site"));
    }
    if let Some(name) = cx.params.keys().find(|n| runbook.parameter(n).is_none()) {
        return Err(RunbookError::UnknownParameter {
            runbook: runbook.name.clone(),
            name: name.clone(),
        });
    }
    let mut params = BTreeMap::new();
    for p in &runbook.parameters {
        let value = match (cx.params.get(&p.name), &p.default) {
            (Some(text), _) => p
                .ty
                .parse_value(text)
                .map_err(|message| RunbookError::BadParameter {
                    name: p.name.clone(),
                    ty: p.ty,
                    message,
                })?,
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(RunbookError::MissingParameter {
                    name: p.name.clone(),
                })
            }
        };
        params.insert(p.name.clone(), value);
    }

    let env = ConditionEnv {
        mode: cx.mode,
        group: &cx.group,
        primary: &cx.primary_site,
        replica: &cx.replica_site,
        epoch: cx.epoch,
        params: &params,
    };
    let index_of = |id: &str| runbook.steps.iter().position(|s| s.id == id);
    let mut steps = Vec::with_capacity(runbook.steps.len());
    for (index, s) in runbook.steps.iter().enumerate() {
        let site = match &s.site {
            SiteRef::Coordinator => ResolvedSite::Coordinator,
            SiteRef::Primary => ResolvedSite::Site(cx.primary_site.clone()),
            SiteRef::Replica => ResolvedSite::Site(cx.replica_site.clone()),
            SiteRef::Named(n) => ResolvedSite::Site(n.clone()),
        };
        let on_failure = match &s.on_failure {
            OnFailure::Abort => PlannedFailure::Abort,
            OnFailure::Continue => PlannedFailure::Continue,
            // The parser checked every id; an unknown one (a hand-built runbook) is dropped.
            OnFailure::Steps(ids) => PlannedFailure::Run(ids.iter().filter_map(|id| index_of(id)).collect()),
        };
        let skipped = s
            .when
            .as_ref()
            .filter(|c| !c.eval(&env))
            .map(|c| format!("when {c}"));
        steps.push(PlannedStep {
            index,
            id: s.id.clone(),
            action: s.action.clone(),
            site,
            site_ref: s.site.clone(),
            description: s.description.clone(),
            timeout: s.timeout,
            retries: s.retries,
            repeatable: s.repeatable,
            handler: s.handler,
            on_failure,
            skipped,
        });
    }
    Ok(Plan {
        runbook: runbook.name.clone(),
        kind: runbook.kind,
        group: cx.group.clone(),
        group_id: GroupId::from_name(&cx.group),
        epoch: cx.epoch,
        mode: cx.mode,
        primary: cx.primary_site.clone(),
        replica: cx.replica_site.clone(),
        params,
        steps,
    })
}

impl Plan {
    /// The steps that will run in sequence (neither skipped nor handlers).
    pub fn active_steps(&self) -> impl Iterator<Item = &PlannedStep> {
        self.steps
            .iter()
            .filter(|s| s.skipped.is_none() && !s.handler)
    }
}

fn retries_text(r: &Retries) -> String {
    if r.count == 0 {
        "0".to_string()
    } else {
        format!("{} ({}..{})", r.count, r.backoff, r.max_backoff)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "runbook {} ({}) for group {}: primary {}, replica {}, mode {}, epoch {}",
            self.runbook, self.kind, self.group, self.primary, self.replica, self.mode, self.epoch.0
        )?;
        if !self.params.is_empty() {
            let ps: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "parameters: {}", ps.join(", "))?;
        }
        let header = [
            "#", "id", "action", "site", "timeout", "retries", "repeatable", "on_failure", "note",
        ];
        let rows: Vec<[String; 9]> = self
            .steps
            .iter()
            .map(|s| {
                let site = match (&s.site_ref, &s.site) {
                    (SiteRef::Primary | SiteRef::Replica, ResolvedSite::Site(n)) => {
                        format!("{n} ({})", s.site_ref)
                    }
                    _ => s.site.to_string(),
                };
                let on_failure = match &s.on_failure {
                    PlannedFailure::Abort => "abort".to_string(),
                    PlannedFailure::Continue => "continue".to_string(),
                    PlannedFailure::Run(ix) => {
                        let ids: Vec<&str> = ix
                            .iter()
                            .filter_map(|i| self.steps.get(*i).map(|s| s.id.as_str()))
                            .collect();
                        format!("run {}", ids.join(","))
                    }
                };
                let note = match (&s.skipped, s.handler) {
                    (Some(why), _) => format!("skipped: {why}"),
                    (None, true) => "on failure only".to_string(),
                    (None, false) => String::new(),
                };
                [
                    (s.index + 1).to_string(),
                    s.id.clone(),
                    s.action.name().to_string(),
                    site,
                    s.timeout.to_string(),
                    retries_text(&s.retries),
                    if s.repeatable { "yes" } else { "no" }.to_string(),
                    on_failure,
                    note,
                ]
            })
            .collect();
        let mut width = header.map(str::len);
        for row in &rows {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<w$}  "));
                }
            }
            writeln!(f, "{}", out.trim_end())
        };
        line(f, &header.map(String::from))?;
        for row in &rows {
            line(f, row)?;
        }
        Ok(())
    }
}
