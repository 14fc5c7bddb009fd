//! RPO history: commits an RPO sample into the group's bounded ring and audits it, flagged when
//! over the group's target. Pure.

use super::event::Event;
use super::machine::{get_group, group_mut, State};
use super::model::{RpoSample, COORDINATOR_ACTOR, RPO_RING_CAPACITY};
use super::rejection::Rejection;
use crate::audit::AuditKind;
use serde_json::json;

pub(super) fn rpo_sample(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    group: &str,
    rpo_ms: u64,
) -> Result<(), Rejection> {
    get_group(state, group)?;
    let g = group_mut(state, group)?;
    if g.rpo_samples.len() >= RPO_RING_CAPACITY {
        g.rpo_samples.pop_front();
    }
    g.rpo_samples.push_back(RpoSample { at_ms: now, rpo_ms });
    let target = g.rpo_target_ms;
    let over_target = rpo_ms > target;
    ev.push(Event::RpoSampled {
        group: group.to_string(),
        rpo_ms,
        over_target,
    });
    let detail = json!({"rpo_ms": rpo_ms, "target_ms": target, "over_target": over_target});
    state.record_audit(
        ev,
        now,
        COORDINATOR_ACTOR,
        AuditKind::RpoSample,
        Some(group),
        detail,
    );
    Ok(())
}
