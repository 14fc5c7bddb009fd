//! Whole-runbook rules (unique ids, step references, fencing order, a `check` step,
//! conditions against parameters) and validation against a topology's sites.
//!
//! Pure. Sits below the parser: the parser hands it the steps that parsed (`ParsedStep`)
//! and the `SourceMap` to locate problems with; it imports nothing of the parser.

use std::collections::{BTreeMap, HashSet};

use tandem_core::config::Diagnostic;

use crate::error::RunbookError;
use crate::model::{ActionKind, OnFailure, Parameter, Runbook, RunbookKind, SiteRef, Step};
use crate::source::{sort_diagnostics, suggest, SourceMap};

/// A step as parsed, before whole-runbook checks, with its index in the file.
pub(crate) struct ParsedStep {
    pub(crate) index: usize,
    pub(crate) step: Step,
}

/// Path of entry `j` of a step's `on_failure` list, in whichever form the file used.
fn on_failure_path(map: &SourceMap, i: usize, j: usize) -> String {
    let table_form = format!("steps[{i}].on_failure.steps[{j}]");
    if map.has(&table_form) {
        table_form
    } else {
        format!("steps[{i}].on_failure[{j}]")
    }
}

/// Checks that need every step: run by the parser on the steps that parsed. `known_ids` holds
/// the ids of all steps in the file, including those that did not parse, so a broken step
/// does not also make every reference to it an error.
pub(crate) fn check_steps(
    kind: RunbookKind,
    params: &[Parameter],
    steps: &[ParsedStep],
    known_ids: &HashSet<String>,
    map: &SourceMap,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();

    // Unique ids.
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for p in steps {
        let path = format!("steps[{}].id", p.index);
        match first.get(p.step.id.as_str()) {
            Some(line) => out.push(map.diagnostic(
                &path,
                format!(
                    "duplicate step id \"{}\" (first used at line {line})",
                    p.step.id
                ),
            )),
            None => {
                first.insert(&p.step.id, map.locate(&path).0);
            }
        }
    }

    // on_failure references, and handlers that nothing names.
    let mut named: HashSet<&str> = HashSet::new();
    for p in steps {
        if let OnFailure::Steps(ids) = &p.step.on_failure {
            for (j, id) in ids.iter().enumerate() {
                named.insert(id);
                let path = on_failure_path(map, p.index, j);
                if *id == p.step.id {
                    out.push(
                        map.diagnostic(&path, format!("step \"{id}\" names itself in on_failure")),
                    );
                } else if !known_ids.contains(id) {
                    let hint = suggest(id, known_ids.iter().map(String::as_str));
                    out.push(map.diagnostic(
                        &path,
                        format!("on_failure names unknown step \"{id}\"{hint}"),
                    ));
                }
            }
        }
    }
    for p in steps {
        if p.step.handler && !named.contains(p.step.id.as_str()) {
            out.push(map.diagnostic(
                &format!("steps[{}].handler", p.index),
                format!(
                    "handler \"{}\" never runs: no step names it in on_failure",
                    p.step.id
                ),
            ));
        }
    }

    // Fencing order: promote only after the old primary is fenced; never fence after promote
    // (that would fence the new primary's epoch).
    let mut promoted: Option<&str> = None;
    let mut fenced = false;
    for p in steps.iter().filter(|p| !p.step.handler) {
        let path = format!("steps[{}].action", p.index);
        match p.step.action.kind() {
            ActionKind::Fence => {
                if let Some(by) = promoted {
                    out.push(map.diagnostic(
                        &path,
                        format!(
                            "fence after promote \"{by}\": it would fence the new primary; \
                             move this step before the promote"
                        ),
                    ));
                }
                fenced = true;
            }
            ActionKind::Promote => {
                if !fenced && matches!(kind, RunbookKind::Failover | RunbookKind::Switchover) {
                    out.push(map.diagnostic(
                        &path,
                        format!(
                            "promote without a preceding fence in a {kind} runbook: two \
                             primaries could accept writes; add a fence step before it"
                        ),
                    ));
                }
                promoted.get_or_insert(&p.step.id);
            }
            _ => {}
        }
    }

    // A check step ends the RTO clock.
    let has_check = steps
        .iter()
        .any(|p| p.step.action.kind() == ActionKind::Check && !p.step.handler);
    // Every step id of the file parsed (a broken step might have been the check). Ids, not
    // step counts: duplicate ids must not turn the rule off.
    let parsed_ids: HashSet<&str> = steps.iter().map(|p| p.step.id.as_str()).collect();
    let all_parsed = parsed_ids.len() == known_ids.len();
    if !has_check && all_parsed && !steps.is_empty() {
        out.push(
            map.diagnostic(
                "steps",
                "the runbook has no `check` step: add one that declares the service ready (it \
             ends the RTO clock)"
                    .to_string(),
            ),
        );
    }

    // Conditions against the declared parameters.
    for p in steps {
        if let Some(cond) = &p.step.when {
            let path = format!("steps[{}].when", p.index);
            for e in cond.check(params) {
                let chars = cond.text()[..e.offset.min(cond.text().len())]
                    .chars()
                    .count();
                out.push(map.diagnostic_within(&path, chars, e.message));
            }
        }
    }
    out
}

/// Checks that every site a runbook names is one of `sites` (the topology's site names);
/// `primary`, `replica` and `coordinator` always pass (they are resolved per group).
///
/// # Errors
/// [`RunbookError::Invalid`] with one diagnostic per unknown site, located in the file.
pub fn validate_against(runbook: &Runbook, sites: &[String]) -> Result<(), RunbookError> {
    let mut out = Vec::new();
    for (i, step) in runbook.steps.iter().enumerate() {
        if let SiteRef::Named(name) = &step.site {
            if !sites.iter().any(|s| s == name) {
                let hint = suggest(name, sites.iter().map(String::as_str));
                out.push(runbook.source.diagnostic(
                    &format!("steps[{i}].site"),
                    format!(
                        "unknown site \"{name}\" (sites: {}; or primary, replica, coordinator){hint}",
                        sites.join(", ")
                    ),
                ));
            }
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        sort_diagnostics(&mut out);
        Err(RunbookError::Invalid(out))
    }
}
