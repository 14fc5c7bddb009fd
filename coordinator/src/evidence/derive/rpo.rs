//! RPO samples from the records, and `rpo.csv`. Pure.

use super::fields::iso_ms;
use super::model::RpoRow;
use crate::audit::{AuditKind, AuditRecord};
use serde_json::Value;
use std::collections::BTreeMap;

/// Header line of `rpo.csv`.
pub const RPO_CSV_HEADER: &str = "group,at_ms,iso_time,rpo_ms,rpo_target_ms";

/// The RPO samples of `records`, in chain order. The target is the record's `target_ms` (what the
/// coordinators enforced then), else `rpo_targets_ms[group]`.
pub fn rpo_rows(records: &[AuditRecord], rpo_targets_ms: &BTreeMap<String, i64>) -> Vec<RpoRow> {
    records
        .iter()
        .filter(|r| r.kind == AuditKind::RpoSample)
        .filter_map(|r| {
            let group = r.group.clone()?;
            let rpo_ms = r.detail.get("rpo_ms").and_then(Value::as_u64)?;
            let target_ms = r
                .detail
                .get("target_ms")
                .and_then(Value::as_u64)
                .or_else(|| {
                    rpo_targets_ms
                        .get(&group)
                        .and_then(|t| u64::try_from(*t).ok())
                });
            Some(RpoRow {
                group,
                index: r.index,
                at_ms: r.at_ms,
                rpo_ms,
                target_ms,
            })
        })
        .collect()
}

pub(super) fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

/// `rpo.csv`: [`RPO_CSV_HEADER`], then one line per sample (RFC 4180 quoting, `\n` endings,
/// empty target when unknown).
pub fn rpo_csv(rows: &[RpoRow]) -> String {
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    out.push_str(RPO_CSV_HEADER);
    out.push('\n');
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            csv_field(&r.group),
            r.at_ms,
            iso_ms(r.at_ms),
            r.rpo_ms,
            r.target_ms.map(|t| t.to_string()).unwrap_or_default()
        ));
    }
    out
}
