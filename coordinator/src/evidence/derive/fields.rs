//! Reading audit record details: typed field getters, timestamps as text, status words as
//! outcomes, and the groups the records name. Pure.

use crate::audit::{AuditKind, AuditRecord};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Unix ms as RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.000Z`); empty if out of range.
pub fn iso_ms(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub(super) fn s(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(x) => Some(x.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn i(v: &Value, key: &str) -> Option<i64> {
    v.get(key).and_then(Value::as_i64)
}

pub(super) fn b(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

pub(super) fn ok_of_status(status: &str) -> Option<bool> {
    match status {
        "ok" | "done" | "succeeded" | "success" | "passed" | "completed" | "finished" => Some(true),
        "failed" | "error" | "aborted" | "rejected" | "timed_out" | "timeout" => Some(false),
        _ => None,
    }
}

/// Every group named in the records (record groups and bootstrap `groups_added`) or the targets.
pub fn groups(records: &[AuditRecord], targets: &[&BTreeMap<String, i64>]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = records.iter().filter_map(|r| r.group.clone()).collect();
    for r in records.iter().filter(|r| r.kind == AuditKind::Bootstrap) {
        if let Some(added) = r.detail.get("groups_added").and_then(Value::as_array) {
            out.extend(added.iter().filter_map(|g| s(g, "name")));
        }
    }
    for t in targets {
        out.extend(t.keys().cloned());
    }
    out
}
