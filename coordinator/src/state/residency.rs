//! Residency: where a plan would place a group's data, and the refusal of a placement outside
//! the group's allowed jurisdictions. Pure.

use super::machine::{get_group, State};
use super::rejection::Rejection;
use tandem_core::residency;
use tandem_runbooks::{Action, Plan, ResolvedSite};

/// Where a plan would place the group's data: its primary and replica sites and the site of
/// every step that will run (not skipped) and writes data there (a drill copy, a point-in-time
/// copy, a promotion, reversed replication). A step "at the coordinator" places its copy at
/// the replica site, as the executor does.
pub fn plan_placements(plan: &Plan) -> Vec<(String, String)> {
    let mut out = vec![
        ("primary".to_string(), plan.primary.clone()),
        ("replica".to_string(), plan.replica.clone()),
    ];
    for step in plan.steps.iter().filter(|s| s.skipped.is_none()) {
        let what = match &step.action {
            Action::Snapshot { .. } => "drill copy",
            Action::Recover { .. } => "point-in-time copy",
            Action::Promote => "promoted",
            Action::Reverse => "reverse replication",
            _ => continue,
        };
        let site = match &step.site {
            ResolvedSite::Site(s) => s.clone(),
            ResolvedSite::Coordinator => plan.replica.clone(),
        };
        out.push((format!("step {} ({what})", step.id), site));
    }
    out
}

/// Refuses placing `group`'s data at `site` (used as `what`) outside its allowed jurisdictions.
pub(super) fn check_residency(
    state: &State,
    group: &str,
    what: &str,
    site: &str,
) -> Result<(), Rejection> {
    let g = get_group(state, group)?;
    let j = state
        .sites
        .get(site)
        .and_then(|s| s.jurisdiction.as_deref());
    match residency::placement_refusal(what, &g.allowed_jurisdictions, site, j) {
        Some(message) => Err(Rejection::Residency {
            group: group.to_string(),
            message,
        }),
        None => Ok(()),
    }
}
