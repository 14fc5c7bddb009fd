//! The planner: a runbook plus a group's state becomes the exact list of steps a run will take,
//! computed before anything runs (`tandem runbook plan`, and the object a run executes).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tandem_core::config::{HumanDuration, Mode};
use tandem_core::ids::{Epoch, GroupId};

use crate::condition::ConditionEnv;
use crate::error::RunbookError;
use crate::model::{Action, OnFailure, ParamValue, Retries, Runbook, RunbookKind, SiteRef};

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
            (Some(text), _) => {
                p.ty.parse_value(text)
                    .map_err(|message| RunbookError::BadParameter {
                        name: p.name.clone(),
                        ty: p.ty,
                        message,
                    })?
            }
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
            OnFailure::Steps(ids) => {
                PlannedFailure::Run(ids.iter().filter_map(|id| index_of(id)).collect())
            }
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
            self.runbook,
            self.kind,
            self.group,
            self.primary,
            self.replica,
            self.mode,
            self.epoch.0
        )?;
        if !self.params.is_empty() {
            let ps: Vec<String> = self
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(f, "parameters: {}", ps.join(", "))?;
        }
        let header = [
            "#",
            "id",
            "action",
            "site",
            "timeout",
            "retries",
            "repeatable",
            "on_failure",
            "note",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ParamValue;

    const TEXT: &str = r#"
name = "t"
kind = "switchover"

[[parameters]]
name = "skip_checks"
type = "bool"
default = false

[[parameters]]
name = "who"
type = "string"

[[steps]]
id = "catch-up"
action = "wait_replicated"
when = 'mode == "sync"'
on_failure = { steps = ["aborted"] }

[[steps]]
id = "fence"
action = "fence"
retries = { count = 2, backoff = "1s" }

[[steps]]
id = "promote"
action = "promote"

[[steps]]
id = "demote"
action = "demote"
on_failure = "continue"

[[steps]]
id = "ready"
action = "check"
site = "replica"
command = "true"
when = "not param.skip_checks"

[[steps]]
id = "extra"
action = "exec"
site = "danang"
command = "true"

[[steps]]
id = "aborted"
action = "notify"
message = "stopped"
handler = true
"#;

    fn cx(mode: Mode, params: &[(&str, &str)]) -> PlanContext {
        PlanContext {
            group: "vol".into(),
            primary_site: "hanoi".into(),
            replica_site: "hcm".into(),
            mode,
            epoch: Epoch(4),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn runbook() -> Runbook {
        Runbook::parse(TEXT, "t.toml").unwrap()
    }

    #[test]
    fn plan_resolves_sites_defaults_and_references() {
        let p = plan(&runbook(), &cx(Mode::Sync, &[("who", "alice")])).unwrap();
        let sites: Vec<String> = p.steps.iter().map(|s| s.site.to_string()).collect();
        assert_eq!(
            sites,
            [
                "hcm",
                "coordinator",
                "hcm",
                "hanoi",
                "hcm",
                "danang",
                "coordinator"
            ]
        );
        let idx: Vec<usize> = p.steps.iter().map(|s| s.index).collect();
        assert_eq!(idx, [0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(p.steps[0].on_failure, PlannedFailure::Run(vec![6]));
        assert_eq!(p.steps[3].on_failure, PlannedFailure::Continue);
        assert_eq!(p.params.get("skip_checks"), Some(&ParamValue::Bool(false)));
        assert_eq!(
            p.params.get("who"),
            Some(&ParamValue::String("alice".into()))
        );
        assert!(p.steps.iter().all(|s| s.skipped.is_none()));
        assert_eq!(p.group_id, GroupId::from_name("vol"));
        let active: Vec<&str> = p.active_steps().map(|s| s.id.as_str()).collect();
        assert_eq!(
            active,
            ["catch-up", "fence", "promote", "demote", "ready", "extra"]
        );
    }

    #[test]
    fn when_false_marks_steps_skipped_with_the_reason() {
        let p = plan(
            &runbook(),
            &cx(Mode::Async, &[("who", "a"), ("skip_checks", "true")]),
        )
        .unwrap();
        assert_eq!(p.steps[0].skipped.as_deref(), Some("when mode == \"sync\""));
        assert_eq!(
            p.steps[4].skipped.as_deref(),
            Some("when not param.skip_checks")
        );
        assert_eq!(p.steps[1].skipped, None);
    }

    #[test]
    fn parameter_errors_are_named() {
        let rb = runbook();
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], "parameter \"who\" is required"),
            (
                vec![("who", "a"), ("nope", "1")],
                "has no parameter \"nope\"",
            ),
            (
                vec![("who", "a"), ("skip_checks", "maybe")],
                "parameter \"skip_checks\" (bool): expected true or false",
            ),
        ];
        for (i, (params, want)) in cases.iter().enumerate() {
            let err = plan(&rb, &cx(Mode::Sync, params)).unwrap_err().to_string();
            assert!(err.contains(want), "#{i}: expected {want:?}, got {err:?}");
        }
        let mut same = cx(Mode::Sync, &[("who", "a")]);
        same.replica_site = "hanoi".into();
        let err = plan(&rb, &same).unwrap_err().to_string();
        assert!(err.contains("same site"), "{err}");
    }

    #[test]
    fn plan_prints_a_table_an_sre_can_read() {
        let p = plan(&runbook(), &cx(Mode::Async, &[("who", "alice")])).unwrap();
        let text = p.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "runbook t (switchover) for group vol: primary hanoi, replica hcm, mode async, epoch 4"
        );
        assert_eq!(lines[1], "parameters: skip_checks=false, who=alice");
        assert!(
            lines[2].starts_with("#  id        action           site             timeout  retries")
        );
        assert!(
            lines[3].contains("catch-up") && lines[3].contains("skipped: when mode == \"sync\"")
        );
        assert!(lines[3].contains("hcm (replica)") && lines[3].contains("run aborted"));
        assert!(lines[4].contains("2 (1s..1m)"), "{}", lines[4]);
        assert!(
            lines[5].contains("promote") && lines[5].contains(" yes "),
            "{}",
            lines[5]
        );
        assert!(lines[9].ends_with("on failure only"), "{}", lines[9]);
        assert_eq!(lines.len(), 10);
    }

    #[test]
    fn plan_round_trips_through_json() {
        let p = plan(&runbook(), &cx(Mode::Sync, &[("who", "alice")])).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        let back: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(json.contains("\"action\":\"wait_replicated\""), "{json}");
    }
}
