//! Validation of a group's resources: at least one, unique names, volume geometry and capture
//! mode, SQLite only in async groups, database ports, and no file used by two resources at one
//! site. Pure.

use std::collections::HashMap;
use std::path::PathBuf;

use super::super::diagnostic::Diags;
use super::super::model::{Capture, Group, Mode, Resource, ResourceKind, Topology};
use super::{check_name, check_unique, Found};

/// The resources of group number `k` in `t.groups` (file index `i`); `files` maps every
/// (site, absolute path) used so far in the topology to the resource that uses it.
pub(super) fn check_resources(
    t: &Topology,
    f: &Found,
    d: &mut Diags<'_>,
    g: &Group,
    (k, i): (usize, usize),
    files: &mut HashMap<(String, PathBuf), String>,
) {
    let resources_partial = f.resources_partial.get(k).copied().unwrap_or(false);
    if g.resources.is_empty() && !resources_partial {
        d.push(
            &format!("groups[{i}].resources"),
            "a group needs at least one [[groups.resources]] entry".to_string(),
        );
    }
    let mut names = HashMap::new();
    let no_idx = Vec::new();
    let resources_idx = f.resources_idx.get(k).unwrap_or(&no_idx);
    for (r, j) in g.resources.iter().zip(resources_idx) {
        let here = format!("groups[{i}].resources[{j}]");
        let rp = |field: &str| format!("{here}.{field}");
        check_name(d, &rp("name"), "resource", &r.name);
        check_unique(
            d,
            &mut names,
            &rp("name"),
            "resource name in this group",
            &r.name,
        );
        check_volume(d, g, r, &here);
        check_sqlite(d, g, r, &here);
        check_postgres(d, g, r, &here);
        check_shared_files(t, d, g, r, &here, files);
    }
}

/// A volume: scan capture only in async mode and at 100ms or slower, a size that is a
/// non-zero multiple of 512, a power-of-two block size from 4KiB to 16MiB.
fn check_volume(d: &mut Diags<'_>, g: &Group, r: &Resource, here: &str) {
    let rp = |field: &str| format!("{here}.{field}");
    let ResourceKind::Volume {
        size,
        block_size,
        capture,
        scan_interval,
        ..
    } = &r.kind
    else {
        return;
    };
    if *capture == Capture::Scan && scan_interval.as_millis() < 100 {
        d.push(
            &rp("scan_interval"),
            format!("scan_interval ({scan_interval}) must be at least 100ms"),
        );
    }
    if *capture == Capture::Scan && g.mode == Mode::Sync {
        d.push(
            &rp("capture"),
            "a scanned volume cannot be replicated in sync mode: its writes never pass through Tandem (use capture = \"nbd\" or mode = \"async\")".to_string(),
        );
    }
    if size.0 == 0 || !size.0.is_multiple_of(512) {
        d.push(
            &rp("size"),
            format!("volume size ({size}) must be above 0 and a multiple of 512 bytes"),
        );
    }
    let b = block_size.0;
    if !b.is_power_of_two() || !(4096..=(16 << 20)).contains(&b) {
        d.push(
            &rp("block_size"),
            format!("block_size ({block_size}) must be a power of two from 4KiB to 16MiB"),
        );
    }
}

/// A SQLite database only in an async group: Tandem reads its WAL after the application's
/// COMMIT has returned, so in a sync group the COMMIT would still never wait for the replica
/// and the group would promise an RPO of 0 it cannot keep.
fn check_sqlite(d: &mut Diags<'_>, g: &Group, r: &Resource, here: &str) {
    if matches!(r.kind, ResourceKind::Sqlite { .. }) && g.mode == Mode::Sync {
        d.push(
            &format!("{here}.kind"),
            "a SQLite database cannot be replicated in sync mode: Tandem reads its WAL after \
             the application's COMMIT has returned, so the COMMIT never waits for the replica \
             and an RPO of 0 cannot be kept; put it in a group with mode = \"async\" and \
             the data loss you accept as rpo_target (e.g. \"1s\")"
                .to_string(),
        );
    }
}

/// A PostgreSQL resource: neither port may be 0; a sync group streams its WAL (archiving
/// alone never makes a COMMIT wait for the replica site); a streaming role and host are named.
fn check_postgres(d: &mut Diags<'_>, g: &Group, r: &Resource, here: &str) {
    let ResourceKind::Postgres {
        port,
        replica_port,
        stream,
        ..
    } = &r.kind
    else {
        return;
    };
    match stream {
        None if g.mode == Mode::Sync => d.push(
            &format!("{here}.kind"),
            "a postgres resource in a sync group needs stream = true: archived WAL reaches the \
             replica only after the COMMIT has returned, so without streaming (and Tandem named \
             in synchronous_standby_names) the COMMIT never waits for the replica and an RPO of \
             0 cannot be kept"
                .to_string(),
        ),
        Some(st) if st.user.is_empty() => d.push(
            &format!("{here}.stream_user"),
            "stream_user is empty".to_string(),
        ),
        Some(st) if st.host.is_empty() => d.push(
            &format!("{here}.stream_host"),
            "stream_host is empty".to_string(),
        ),
        _ => {}
    }
    if *port == 0 {
        d.push(&format!("{here}.port"), "port must not be 0".to_string());
    }
    if *replica_port == 0 {
        d.push(
            &format!("{here}.replica_port"),
            "replica_port must not be 0".to_string(),
        );
    }
}

/// The resource's file (or data folder) on each side is used by no other resource at that
/// site.
fn check_shared_files(
    t: &Topology,
    d: &mut Diags<'_>,
    g: &Group,
    r: &Resource,
    here: &str,
    files: &mut HashMap<(String, PathBuf), String>,
) {
    let (pf, rf) = match r.kind {
        ResourceKind::Postgres { .. } => ("data_dir", "replica_data_dir"),
        _ => ("path", "replica_path"),
    };
    let sides = [(&g.primary, true, pf), (&g.replica, false, rf)];
    let sides = if g.primary == g.replica {
        &sides[..1]
    } else {
        &sides[..]
    };
    for &(site, primary, field) in sides {
        let key = (site.clone(), t.base_dir.join(r.path_on(primary)));
        match files.get(&key) {
            Some(other) => d.push(
                &format!("{here}.{field}"),
                format!(
                    "{} at site \"{site}\" is also used by {other}",
                    key.1.display()
                ),
            ),
            None => {
                files.insert(key, here.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;
    use crate::config::*;

    #[test]
    fn duplicate_resource_names_within_a_group_are_refused() {
        let text = format!(
            "{BASE}\n[[groups.resources]]\nname = \"disk0\"\nkind = \"sqlite\"\npath = \"x.db\"\n"
        );
        let diags = diagnostics(&text);
        let d = diags
            .iter()
            .find(|d| d.path == "groups[0].resources[1].name")
            .unwrap();
        assert_eq!(
            d.line,
            line_of(&text, "name = \"disk0\"\nkind = \"sqlite\"")
        );
        assert!(d
            .message
            .contains("duplicate resource name in this group \"disk0\""));
    }

    #[test]
    fn scan_capture_needs_async_and_a_sane_interval() {
        let text = edit(
            BASE,
            "size = \"1MiB\"",
            "size = \"1MiB\"\ncapture = \"scan\"\nscan_interval = \"10ms\"",
        );
        let all = display_lines(&diagnostics(&text));
        assert!(
            all.contains("groups[0].resources[0].capture") && all.contains("sync mode"),
            "{all}"
        );
        assert!(
            all.contains("groups[0].resources[0].scan_interval") && all.contains("at least 100ms"),
            "{all}"
        );
        let ok = edit(
            &text,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"10s\"",
        )
        .replace("\"10ms\"", "\"2s\"");
        let t = parse(&ok).unwrap();
        match &t.groups[0].resources[0].kind {
            ResourceKind::Volume {
                capture,
                scan_interval,
                ..
            } => {
                assert_eq!(*capture, Capture::Scan);
                assert_eq!(*scan_interval, HumanDuration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
        let sqlite = edit(&ok, "kind = \"volume\"", "kind = \"sqlite\"");
        assert!(display_lines(&diagnostics(&sqlite)).contains("does not apply to a sqlite"));
    }

    #[test]
    fn sqlite_in_a_sync_group_is_refused_and_async_is_accepted() {
        let text = edit(
            BASE,
            "kind = \"volume\"\nsize = \"1MiB\"",
            "kind = \"sqlite\"",
        );
        assert!(text.contains("mode = \"sync\""), "{text}");
        let diags = diagnostics(&text);
        let d = diags
            .iter()
            .find(|d| d.path == "groups[0].resources[0].kind")
            .unwrap_or_else(|| panic!("{}", display_lines(&diags)));
        assert!(
            d.message.contains("cannot be replicated in sync mode")
                && d.message.contains("mode = \"async\"")
                && d.message.contains("rpo_target"),
            "{}",
            d.message
        );
        let ok = edit(
            &text,
            "mode = \"sync\"",
            "mode = \"async\"\nrpo_target = \"1s\"",
        );
        let t = parse(&ok).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            t.groups[0].resources[0].kind,
            ResourceKind::Sqlite { .. }
        ));
    }

    #[test]
    fn volume_size_not_a_multiple_of_512_is_refused() {
        let text = edit(BASE, "size = \"1MiB\"", "size = 1000");
        assert_diag(
            &text,
            "groups[0].resources[0].size",
            "size = 1000",
            "multiple of 512",
        );
    }

    #[test]
    fn resources_sharing_a_file_at_one_site_are_refused() {
        let text = format!(
            "{BASE}\n[[groups.resources]]\nname = \"disk1\"\nkind = \"volume\"\nsize = \"1MiB\"\npath = \"./a/disk0.img\"\n"
        );
        assert_diag(
            &text,
            "groups[0].resources[1].path",
            "path = \"./a/disk0.img\"",
            "also used by groups[0].resources[0]",
        );
    }
}
