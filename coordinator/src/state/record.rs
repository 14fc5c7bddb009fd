//! The `record` command: a generic audit record (operator commands, runbook steps, verify
//! results) of a recordable kind, whose detail hashes stably (no floating-point numbers). Pure.

use super::event::Event;
use super::machine::{get_group, State};
use super::rejection::Rejection;
use crate::audit::AuditKind;
use serde_json::Value;

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(o) => o.values().any(has_float),
        Value::Null | Value::Bool(_) | Value::String(_) => false,
    }
}

pub(super) fn record(
    state: &mut State,
    ev: &mut Vec<Event>,
    now: i64,
    actor: &str,
    kind: AuditKind,
    group: Option<&str>,
    detail: &Value,
) -> Result<(), Rejection> {
    if !kind.is_recordable() {
        return Err(Rejection::KindNotRecordable { kind });
    }
    if let Some(g) = group {
        get_group(state, g)?;
    }
    if has_float(detail) {
        return Err(Rejection::DetailHasFloat);
    }
    state.record_audit(ev, now, actor, kind, group, detail.clone());
    Ok(())
}
