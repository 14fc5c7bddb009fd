//! Validation of protection groups: names, allowed jurisdictions, the primary and replica
//! sites (known, not witnesses, with a replicator, allowed by residency, different), and the
//! targets and limits (RPO, RTO against the failover floor, journal, history). Pure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::super::diagnostic::Diags;
use super::super::model::{Cluster, Group, Mode, Topology};
use super::super::units::{ByteSize, HumanDuration};
use super::{check_name, check_unique, cluster_clean, resources, unknown_site, Found};
use crate::residency;

/// Every group, then its resources.
pub(super) fn check_groups(t: &Topology, f: &Found, d: &mut Diags<'_>) {
    let mut seen = HashMap::new();
    let mut files: HashMap<(String, PathBuf), String> = HashMap::new();
    for (k, (g, i)) in t.groups.iter().zip(&f.groups_idx).enumerate() {
        let p = |field: &str| format!("groups[{i}].{field}");
        check_name(d, &p("name"), "group", &g.name);
        check_unique(d, &mut seen, &p("name"), "group name", &g.name);
        for (k, code) in g.allowed_jurisdictions.iter().enumerate() {
            if let Some(msg) = residency::jurisdiction_error(code) {
                d.push(&p(&format!("allowed_jurisdictions[{k}]")), msg);
            }
        }
        check_group_sites(t, f, d, g, *i);
        check_group_targets(&t.cluster, d, g, *i);
        resources::check_resources(t, f, d, g, (k, *i), &mut files);
    }
}

/// The primary and the replica: known sites, not witnesses, each with a replicator node,
/// allowed by the group's residency rule, and two different sites.
fn check_group_sites(t: &Topology, f: &Found, d: &mut Diags<'_>, g: &Group, i: usize) {
    let p = |field: &str| format!("groups[{i}].{field}");
    for field in ["primary", "replica"] {
        let name = if field == "primary" {
            &g.primary
        } else {
            &g.replica
        };
        match t.site(name) {
            None if f.sites_partial => {}
            None => d.push(&p(field), unknown_site(t, name)),
            Some(site) if site.witness => d.push(
                &p(field),
                format!(
                    "site \"{name}\" is a witness: it hosts only a coordinator, so it cannot \
                     be the {field} of a {} group",
                    g.mode
                ),
            ),
            Some(site) => {
                if t.replicators_at(&site.name).is_empty() && !f.nodes_partial {
                    d.push(
                        &p(field),
                        format!(
                            "site \"{name}\" has no replicator node; add a [[nodes]] entry \
                             with role = \"replicator\" and site = \"{name}\""
                        ),
                    );
                }
                if let Some(msg) = residency::placement_refusal(
                    field,
                    &g.allowed_jurisdictions,
                    name,
                    site.jurisdiction.as_deref(),
                ) {
                    d.push(&p("allowed_jurisdictions"), msg);
                }
            }
        }
    }
    if g.primary == g.replica {
        d.push(
            &p("replica"),
            format!(
                "replica site is the same as the primary (\"{}\"): a group needs two \
                 different sites",
                g.primary
            ),
        );
    }
}

/// The shortest `drill_every` accepted: seconds are allowed so that tests can watch a
/// scheduled drill start; production schedules are days.
const MIN_DRILL_EVERY: Duration = Duration::from_secs(1);

/// RTO and RPO targets, the approval threshold, and the journal/history/checkpoint limits.
fn check_group_targets(c: &Cluster, d: &mut Diags<'_>, g: &Group, i: usize) {
    let p = |field: &str| format!("groups[{i}].{field}");
    let bad = |d: &Diags<'_>, field: &str| d.bad.contains(&p(field));
    if g.rto_target.is_zero() {
        d.push(&p("rto_target"), "must be above 0s".to_string());
    }
    if g.mode == Mode::Async && g.rpo_target.is_zero() && !bad(d, "rpo_target") {
        d.push(
            &p("rpo_target"),
            "an async group always lags its primary, so an RPO target of 0s can never be \
             met: set the data loss you accept (e.g. \"5s\") or use mode = \"sync\""
                .to_string(),
        );
    }
    if let Some(max) = g.max_data_loss {
        if max < g.rpo_target && !bad(d, "rpo_target") {
            d.push(
                &p("max_data_loss"),
                format!(
                    "max_data_loss ({max}) is below rpo_target ({}): every failover within \
                     target would wait for approval",
                    g.rpo_target
                ),
            );
        }
    }
    check_rto_floor(c, d, g, i);
    if g.journal_max < ByteSize::mib(1) {
        d.push(
            &p("journal_max"),
            format!("journal_max ({}) must be at least 1MiB", g.journal_max),
        );
    }
    if g.ship_window < ByteSize::mib(1) || g.ship_window > ByteSize::gib(1) {
        d.push(
            &p("ship_window"),
            format!(
                "ship_window ({}) must be from 1MiB to 1GiB (frames are up to 1MiB; the window \
                 is memory at the primary, per group)",
                g.ship_window
            ),
        );
    }
    if g.history_max.is_some_and(|m| m < ByteSize::mib(1)) {
        d.push(
            &p("history_max"),
            "history_max must be at least 1MiB".to_string(),
        );
    }
    if g.drill_every
        .is_some_and(|e| Duration::from(e) < MIN_DRILL_EVERY)
        && !bad(d, "drill_every")
    {
        d.push(
            &p("drill_every"),
            format!(
                "drill_every ({}) must be at least 1s (a drill every few seconds is for tests; \
                 production schedules are days or weeks, e.g. \"30d\")",
                g.drill_every.unwrap_or_default()
            ),
        );
    }
    if g.history.is_some() && Duration::from(g.checkpoint_interval) < Duration::from_millis(100) {
        d.push(
            &p("checkpoint_interval"),
            format!(
                "checkpoint_interval ({}) must be at least 100ms",
                g.checkpoint_interval
            ),
        );
    }
}

/// An automatic failover may promote only after detect_after + lease_ttl + drift_margin: an
/// auto_failover group's rto_target must lie above that floor.
fn check_rto_floor(c: &Cluster, d: &mut Diags<'_>, g: &Group, i: usize) {
    let floor = c
        .detect_after
        .as_millis()
        .saturating_add(c.lease_ttl.as_millis())
        .saturating_add(c.drift_margin.as_millis());
    if g.auto_failover
        && !g.rto_target.is_zero()
        && g.rto_target.as_millis() <= floor
        && cluster_clean(d, &["detect_after", "lease_ttl", "drift_margin"])
    {
        d.push(
            &format!("groups[{i}].rto_target"),
            format!(
                "rto_target ({}) cannot be met: an automatic failover may promote only \
                 after detect_after ({}) + lease_ttl ({}) + drift_margin ({}) = {}",
                g.rto_target,
                c.detect_after,
                c.lease_ttl,
                c.drift_margin,
                HumanDuration::from_millis(floor)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;
    use crate::config::*;

    #[test]
    fn group_with_same_primary_and_replica_is_refused() {
        let text = edit(BASE, "replica = \"b\"", "replica = \"a\"");
        assert_diag(
            &text,
            "groups[0].replica",
            "replica = \"a\"",
            "same as the primary",
        );
    }

    #[test]
    fn ship_window_outside_1mib_to_1gib_is_refused_and_defaults_to_32mib() {
        let t = parse(BASE).unwrap();
        assert_eq!(t.groups[0].ship_window, ByteSize::mib(32));
        for bad in ["512KiB", "2GiB"] {
            let line = format!("rto_target = \"30s\"\nship_window = \"{bad}\"");
            let text = edit(BASE, "rto_target = \"30s\"", &line);
            assert_diag(
                &text,
                "groups[0].ship_window",
                &format!("ship_window = \"{bad}\""),
                "must be from 1MiB to 1GiB",
            );
        }
        let text = edit(
            BASE,
            "rto_target = \"30s\"",
            "rto_target = \"30s\"\nship_window = \"64MiB\"",
        );
        let t = parse(&text).unwrap();
        assert_eq!(t.groups[0].ship_window, ByteSize::mib(64));
    }

    #[test]
    fn history_compress_defaults_to_true() {
        assert!(parse(BASE).unwrap().groups[0].history_compress);
        let text = edit(
            BASE,
            "rto_target = \"30s\"",
            "rto_target = \"30s\"\nhistory = \"1h\"\nhistory_compress = false",
        );
        assert!(!parse(&text).unwrap().groups[0].history_compress);
    }

    #[test]
    fn group_on_unknown_site_is_refused() {
        let text = edit(BASE, "primary = \"a\"", "primary = \"hanoi\"");
        assert_diag(
            &text,
            "groups[0].primary",
            "primary = \"hanoi\"",
            "unknown site \"hanoi\"",
        );
    }

    #[test]
    fn duplicate_group_names_are_refused() {
        let text = format!(
            "{BASE}\n[[groups]]\nname = \"g\"\nprimary = \"b\"\nreplica = \"a\"\nmode = \"sync\"\nrto_target = \"30s\"\n\n[[groups.resources]]\nname = \"other\"\nkind = \"sqlite\"\npath = \"x.db\"\n"
        );
        let diags = diagnostics(&text);
        let d = diags.iter().find(|d| d.path == "groups[1].name").unwrap();
        assert_eq!(
            d.line,
            line_of(&text, "[[groups]]\nname = \"g\"\nprimary = \"b\"") + 1
        );
        assert!(d.message.contains("duplicate group name \"g\""));
    }

    #[test]
    fn sync_group_on_witness_site_is_refused() {
        let text = edit(BASE, "replica = \"b\"", "replica = \"w\"");
        assert_diag(
            &text,
            "groups[0].replica",
            "replica = \"w\"",
            "\"w\" is a witness",
        );
    }

    #[test]
    fn group_site_without_replicator_is_refused() {
        let text = edit(
            BASE,
            "name = \"b-rep\"\nsite = \"b\"",
            "name = \"b-rep\"\nsite = \"a\"",
        );
        assert_diag(
            &text,
            "groups[0].replica",
            "replica = \"b\"",
            "site \"b\" has no replicator",
        );
    }

    #[test]
    fn async_group_with_zero_rpo_target_is_refused() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"0s\"",
        );
        assert_diag(
            &text,
            "groups[0].rpo_target",
            "rpo_target = \"0s\"",
            "async group always lags",
        );
    }

    #[test]
    fn async_group_without_rpo_target_is_refused_at_the_group() {
        let text = edit(BASE, "mode = \"sync\"", "mode = \"async\"");
        assert_diag(
            &text,
            "groups[0].rpo_target",
            "[[groups]]",
            "async group always lags",
        );
    }

    #[test]
    fn async_group_with_rpo_target_and_sync_group_with_zero_are_accepted() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"5s\"",
        );
        assert_eq!(
            parse(&text).unwrap().groups[0].rpo_target,
            HumanDuration::from_secs(5)
        );
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nrpo_target = \"0s\"",
        );
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn max_data_loss_below_rpo_target_is_refused() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"10s\"\nmax_data_loss = \"5s\"",
        );
        assert_diag(
            &text,
            "groups[0].max_data_loss",
            "max_data_loss",
            "below rpo_target (10s)",
        );
    }

    #[test]
    fn auto_failover_with_unreachable_rto_target_is_refused() {
        let text = edit(
            BASE,
            "rto_target = \"30s\"",
            "rto_target = \"5s\"\nauto_failover = true",
        );
        assert_diag(
            &text,
            "groups[0].rto_target",
            "rto_target = \"5s\"",
            "= 7500ms",
        );
    }

    #[test]
    fn jurisdiction_outside_the_allowed_list_is_refused() {
        let text = edit(BASE, "name = \"b\"", "name = \"b\"\njurisdiction = \"SG\"");
        let text = edit(&text, "name = \"a\"", "name = \"a\"\njurisdiction = \"VN\"");
        let text = edit(
            &text,
            "mode = \"sync\"",
            "mode = \"sync\"\nallowed_jurisdictions = [\"VN\"]",
        );
        assert_diag(
            &text,
            "groups[0].allowed_jurisdictions",
            "allowed_jurisdictions = [\"VN\"]",
            "replica site \"b\" is in SG, allowed: VN",
        );
    }

    #[test]
    fn site_without_jurisdiction_cannot_hold_a_restricted_group() {
        let text = edit(BASE, "name = \"a\"", "name = \"a\"\njurisdiction = \"VN\"");
        let text = edit(
            &text,
            "mode = \"sync\"",
            "mode = \"sync\"\nallowed_jurisdictions = [\"VN\"]",
        );
        assert_diag(
            &text,
            "groups[0].allowed_jurisdictions",
            "allowed_jurisdictions = [\"VN\"]",
            "replica site \"b\" has no jurisdiction, allowed: VN",
        );
        let both = edit(&text, "name = \"b\"", "name = \"b\"\njurisdiction = \"VN\"");
        assert!(parse(&both).is_ok(), "both sites in VN is allowed");
    }
}
