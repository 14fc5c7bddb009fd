//! RPO rows (single samples and summaries) from the records, and `rpo.csv`. Pure.

use super::fields::iso_ms;
use super::model::RpoRow;
use crate::audit::{AuditKind, AuditRecord};
use serde_json::Value;
use std::collections::BTreeMap;

/// Header line of `rpo.csv`. The first five columns are those of every version; the others say
/// what a summary row stands for (a single sample is a summary of one, with no time over target).
pub const RPO_CSV_HEADER: &str = "group,at_ms,iso_time,rpo_ms,rpo_target_ms,samples,over_samples,min_ms,max_ms,over_target_ms,since_ms";

/// The RPO records of `records` as rows, in chain order: `rpo_sample` records (one sample each)
/// and `rpo_summary` records (the samples since the group's previous RPO record). The target is
/// the record's `target_ms` (what the coordinators enforced then), else `rpo_targets_ms[group]`.
/// A record missing its RPO is skipped.
pub fn rpo_rows(records: &[AuditRecord], rpo_targets_ms: &BTreeMap<String, i64>) -> Vec<RpoRow> {
    records
        .iter()
        .filter(|r| matches!(r.kind, AuditKind::RpoSample | AuditKind::RpoSummary))
        .filter_map(|r| {
            let group = r.group.clone()?;
            let num = |k: &str| r.detail.get(k).and_then(Value::as_u64);
            let target_ms = num("target_ms").or_else(|| {
                rpo_targets_ms
                    .get(&group)
                    .and_then(|t| u64::try_from(*t).ok())
            });
            match r.kind {
                AuditKind::RpoSample => {
                    let rpo_ms = num("rpo_ms")?;
                    Some(RpoRow::single(group, r.index, r.at_ms, rpo_ms, target_ms))
                }
                AuditKind::RpoSummary => {
                    let rpo_ms = num("last_ms")?;
                    let max_ms = num("max_ms")?.max(rpo_ms);
                    Some(RpoRow {
                        group,
                        index: r.index,
                        at_ms: r.at_ms,
                        rpo_ms,
                        target_ms,
                        samples: num("samples")?.max(1),
                        over_samples: num("over_samples")?,
                        min_ms: num("min_ms").unwrap_or(rpo_ms).min(rpo_ms),
                        max_ms,
                        over_target_ms: num("over_target_ms"),
                        since_ms: r
                            .detail
                            .get("since_ms")
                            .and_then(Value::as_i64)
                            .unwrap_or(r.at_ms),
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Samples, samples over target and the worst RPO of `rows` (`None` when there is no row).
pub fn rpo_totals<'a>(rows: impl IntoIterator<Item = &'a RpoRow>) -> Option<(u64, u64, u64)> {
    rows.into_iter().fold(None, |acc, r| {
        let (n, over, max) = acc.unwrap_or((0, 0, 0));
        Some((
            n.saturating_add(r.samples),
            over.saturating_add(r.over_samples),
            max.max(r.max_ms),
        ))
    })
}

pub(super) fn csv_field(f: &str) -> String {
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

/// `rpo.csv`: [`RPO_CSV_HEADER`], then one line per RPO record (RFC 4180 quoting, `\n` endings,
/// empty target and time over target when unknown).
pub fn rpo_csv(rows: &[RpoRow]) -> String {
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    out.push_str(RPO_CSV_HEADER);
    out.push('\n');
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            csv_field(&r.group),
            r.at_ms,
            iso_ms(r.at_ms),
            r.rpo_ms,
            r.target_ms.map(|t| t.to_string()).unwrap_or_default(),
            r.samples,
            r.over_samples,
            r.min_ms,
            r.max_ms,
            r.over_target_ms.map(|t| t.to_string()).unwrap_or_default(),
            r.since_ms,
        ));
    }
    out
}
