//! Loading a topology: read the file, parse the TOML keeping spans, pre-check humane values
//! (`check_units`), deserialize section by section so one broken entry hides nothing else,
//! resolve relative paths against the file's folder, then validate. The only room that reads a
//! file (`Topology::load`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::{line_col, ConfigError, Diags};
use super::model::{Cluster, Group, Node, ResourceKind, Site, Tls, Topology};
use super::resource::RawResource;
use super::units::{Bandwidth, ByteSize, HumanDuration, UnitError};
use super::validate::{validate, Found};

impl Topology {
    /// Reads, parses and validates the config file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read, [`ConfigError::Syntax`] for bad
    /// TOML, [`ConfigError::Invalid`] with every problem found otherwise.
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Topology::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config `text`; `file` names it in messages, and its folder is the
    /// base of relative paths (the current directory when it has none).
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for bad TOML, [`ConfigError::Invalid`] with every problem found.
    pub fn parse(text: &str, file: &str) -> Result<Topology, ConfigError> {
        let parent = Path::new(file).parent().unwrap_or(Path::new(""));
        let base_dir = if parent.as_os_str().is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
        };
        Topology::parse_in(text, file, base_dir)
    }

    /// Parses and validates config `text`, resolving relative paths against `base_dir`.
    ///
    /// # Errors
    /// As [`Topology::parse`].
    pub fn parse_in(text: &str, file: &str, base_dir: PathBuf) -> Result<Topology, ConfigError> {
        let root = DeTable::parse(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let mut diags = Diags::new(file, text, &root);
        let root_span = root.span();
        let mut root = root.into_inner();
        check_units(&mut root, &mut diags);

        let mut cluster = None;
        let mut found = Found::default();
        let mut sites = Vec::new();
        let mut nodes = Vec::new();
        let mut groups = Vec::new();
        let mut tls = Tls::default();
        for (key, value) in root {
            match key.get_ref().as_ref() {
                "cluster" => cluster = diags.deserialize::<Cluster>("cluster", value),
                "sites" => {
                    found.sites_partial = !diags.each("sites", value, &mut sites, |d, path, v| {
                        d.deserialize::<Site>(path, v)
                    });
                }
                "nodes" => {
                    found.nodes_partial = !diags.each("nodes", value, &mut nodes, |d, path, v| {
                        d.deserialize::<Node>(path, v)
                    });
                }
                "groups" => {
                    diags.each("groups", value, &mut groups, deserialize_group);
                }
                "tls" => {
                    if let Some(t) = diags.deserialize::<Tls>("tls", value) {
                        tls = t;
                    }
                }
                other => diags.push(
                    other,
                    format!(
                        "unknown section `{other}`; expected cluster, sites, nodes, groups or tls"
                    ),
                ),
            }
        }
        let Some(cluster) = cluster else {
            if !diags.list.iter().any(|d| d.path.starts_with("cluster")) {
                diags.push_at(
                    "cluster",
                    root_span.start,
                    "missing [cluster] section (it needs at least `name`)".to_string(),
                );
            }
            return Err(diags.finish());
        };
        let (sites_idx, sites) = sites.into_iter().unzip();
        let (nodes_idx, nodes) = nodes.into_iter().unzip();
        let mut groups_out = Vec::new();
        for (i, (group, resources_idx, partial)) in groups {
            found.groups_idx.push(i);
            found.resources_idx.push(resources_idx);
            found.resources_partial.push(partial);
            groups_out.push(group);
        }
        found.sites_idx = sites_idx;
        found.nodes_idx = nodes_idx;
        let mut topology = Topology {
            cluster,
            sites,
            nodes,
            groups: groups_out,
            tls,
            base_dir,
        };
        topology.resolve_paths();
        validate(&topology, &found, &mut diags);
        if diags.list.is_empty() {
            Ok(topology)
        } else {
            Err(diags.finish())
        }
    }

    /// Makes every relative path absolute against `base_dir`.
    fn resolve_paths(&mut self) {
        let base = self.base_dir.clone();
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for node in &mut self.nodes {
            fix(&mut node.data_dir);
            if let Some(r) = node.recover_root.as_mut() {
                fix(r);
            }
        }
        fix(&mut self.tls.dir);
        for p in [&mut self.tls.peer_ca, &mut self.tls.client_ca]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        for group in &mut self.groups {
            for rb in [
                &mut group.runbooks.drill,
                &mut group.runbooks.failover,
                &mut group.runbooks.switchover,
                &mut group.runbooks.failback,
            ]
            .into_iter()
            .flatten()
            {
                fix(rb);
            }
            for r in &mut group.resources {
                match &mut r.kind {
                    ResourceKind::Volume {
                        path, replica_path, ..
                    }
                    | ResourceKind::Sqlite { path, replica_path } => {
                        fix(path);
                        fix(replica_path);
                    }
                    ResourceKind::Postgres {
                        data_dir,
                        replica_data_dir,
                        bin_dir,
                        ..
                    } => {
                        fix(data_dir);
                        fix(replica_data_dir);
                        fix(bin_dir);
                    }
                }
            }
        }
    }
}

/// A group with the file index of each of its resources, and whether any resource was broken.
type FoundGroup = (Group, Vec<usize>, bool);

/// Deserializes one `[[groups]]` element, its resources one by one so each is checked.
fn deserialize_group(
    diags: &mut Diags<'_>,
    path: &str,
    value: Spanned<DeValue<'_>>,
) -> Option<FoundGroup> {
    let span = value.span();
    let DeValue::Table(mut table) = value.into_inner() else {
        diags.push(path, "expected a table: write [[groups]]".to_string());
        return None;
    };
    let resources = table.remove("resources");
    let group = diags.deserialize::<Group>(path, Spanned::new(span, DeValue::Table(table)));
    let mut list = Vec::new();
    let complete = match resources {
        None => true,
        Some(value) => diags.each(
            &format!("{path}.resources"),
            value,
            &mut list,
            |d, rpath, v| {
                let raw = d.deserialize::<RawResource>(rpath, v)?;
                match raw.into_resource() {
                    Ok(r) => Some(r),
                    Err(problems) => {
                        for (field, msg) in problems {
                            d.push(&format!("{rpath}.{field}"), msg);
                        }
                        None
                    }
                }
            },
        ),
    };
    let mut group = group?;
    let (idx, resources) = list.into_iter().unzip();
    group.resources = resources;
    Some((group, idx, !complete))
}

/// The kind of humane value a field holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Duration,
    Size,
    Bandwidth,
}

const CLUSTER_UNITS: &[(&str, Unit)] = &[
    ("lease_ttl", Unit::Duration),
    ("drift_margin", Unit::Duration),
    ("heartbeat_interval", Unit::Duration),
    ("detect_after", Unit::Duration),
    ("rpo_sample_interval", Unit::Duration),
    ("rpo_audit_interval", Unit::Duration),
    ("snapshot_min_interval", Unit::Duration),
];
const GROUP_UNITS: &[(&str, Unit)] = &[
    ("rpo_target", Unit::Duration),
    ("rto_target", Unit::Duration),
    ("max_data_loss", Unit::Duration),
    ("max_bandwidth", Unit::Bandwidth),
    ("journal_max", Unit::Size),
    ("ship_window", Unit::Size),
    ("history", Unit::Duration),
    ("history_max", Unit::Size),
    ("checkpoint_interval", Unit::Duration),
    ("drill_every", Unit::Duration),
];
const NODE_UNITS: &[(&str, Unit)] = &[("capacity", Unit::Size)];
const RESOURCE_UNITS: &[(&str, Unit)] = &[
    ("size", Unit::Size),
    ("block_size", Unit::Size),
    ("scan_interval", Unit::Duration),
];

/// Checks every humane value in the document, reports each bad one, and replaces it with a
/// neutral placeholder so that the rest of the file can still be checked.
fn check_units(root: &mut DeTable<'_>, diags: &mut Diags<'_>) {
    fn check_table(
        table: &mut DeTable<'_>,
        prefix: &str,
        fields: &[(&str, Unit)],
        diags: &mut Diags<'_>,
    ) {
        for (field, unit) in fields {
            let Some(value) = table.get_mut(*field) else {
                continue;
            };
            let result = match (value.get_ref(), unit) {
                (DeValue::String(s), Unit::Duration) => s.parse::<HumanDuration>().map(drop),
                (DeValue::String(s), Unit::Size) => s.parse::<ByteSize>().map(drop),
                (DeValue::String(s), Unit::Bandwidth) => s.parse::<Bandwidth>().map(drop),
                // Sizes may be plain byte counts; serde checks the sign.
                (DeValue::Integer(_), Unit::Size) => Ok(()),
                (other, _) => Err(UnitError {
                    what: match unit {
                        Unit::Duration => "duration",
                        Unit::Size => "size",
                        Unit::Bandwidth => "bandwidth",
                    },
                    value: match other {
                        DeValue::Integer(i) => i.as_str().to_string(),
                        DeValue::Float(f) => f.as_str().to_string(),
                        DeValue::Boolean(b) => b.to_string(),
                        o => o.type_str().to_string(),
                    },
                    reason: format!(
                        "expected a quoted string with a unit, e.g. {}",
                        match unit {
                            Unit::Duration => "\"4s\"",
                            Unit::Size => "\"256MiB\"",
                            Unit::Bandwidth => "\"100MB/s\"",
                        }
                    ),
                }),
            };
            if let Err(e) = result {
                let path = format!("{prefix}.{field}");
                diags.push_at(&path, value.span().start, e.to_string());
                diags.bad.insert(path);
                let placeholder = match unit {
                    Unit::Duration => "0s",
                    Unit::Size => "0B",
                    Unit::Bandwidth => "1B/s",
                };
                *value.get_mut() = DeValue::String(Cow::Borrowed(placeholder));
            }
        }
    }

    if let Some(DeValue::Table(cluster)) = root.get_mut("cluster").map(Spanned::get_mut) {
        check_table(cluster, "cluster", CLUSTER_UNITS, diags);
    }
    if let Some(DeValue::Array(nodes)) = root.get_mut("nodes").map(Spanned::get_mut) {
        for (i, node) in nodes.iter_mut().enumerate() {
            if let DeValue::Table(node) = node.get_mut() {
                check_table(node, &format!("nodes[{i}]"), NODE_UNITS, diags);
            }
        }
    }
    if let Some(DeValue::Array(groups)) = root.get_mut("groups").map(Spanned::get_mut) {
        for (i, group) in groups.iter_mut().enumerate() {
            let DeValue::Table(group) = group.get_mut() else {
                continue;
            };
            let prefix = format!("groups[{i}]");
            check_table(group, &prefix, GROUP_UNITS, diags);
            if let Some(DeValue::Array(resources)) =
                group.get_mut("resources").map(Spanned::get_mut)
            {
                for (j, r) in resources.iter_mut().enumerate() {
                    if let DeValue::Table(r) = r.get_mut() {
                        check_table(
                            r,
                            &format!("{prefix}.resources[{j}]"),
                            RESOURCE_UNITS,
                            diags,
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;
    use crate::config::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn tls_defaults_to_mtls_with_certs_next_to_the_file_and_resolves_paths() {
        let t = parse(BASE).unwrap();
        assert!(!t.tls.insecure);
        assert_eq!(t.tls.dir, PathBuf::from("/etc/tandem/certs"));
        assert_eq!(
            t.tls.peer_ca_path(),
            PathBuf::from("/etc/tandem/certs/roots.pem")
        );
        assert_eq!(t.tls.client_ca_path(), t.tls.peer_ca_path());
        let text = format!("{BASE}\n[tls]\ndir = \"pki\"\nclient_ca = \"/x/clients.pem\"\n");
        let t = parse(&text).unwrap();
        assert_eq!(t.tls.dir, PathBuf::from("/etc/tandem/pki"));
        assert_eq!(
            t.tls.peer_ca_path(),
            PathBuf::from("/etc/tandem/pki/roots.pem")
        );
        assert_eq!(t.tls.client_ca_path(), PathBuf::from("/x/clients.pem"));
        let t = parse(&format!("{BASE}\n[tls]\ninsecure = true\n")).unwrap();
        assert!(t.tls.insecure);
    }

    #[test]
    fn an_unknown_tls_field_is_named_with_its_line() {
        let text = format!("{BASE}\n[tls]\ninsecur = true\n");
        let d = diagnostics(&text);
        assert!(
            d.iter()
                .any(|d| d.path.starts_with("tls") && d.message.contains("insecur")),
            "{d:?}"
        );
    }

    #[test]
    fn base_topology_is_valid() {
        let t = parse(BASE).unwrap();
        assert_eq!(t.groups[0].resources.len(), 1);
        assert_eq!(t.cluster.lease_ttl, HumanDuration::from_secs(4));
        assert_eq!(t.groups[0].journal_max, ByteSize::gib(1));
        assert_eq!(t.groups[0].rpo_target, HumanDuration::ZERO);
        assert!(!t.groups[0].auto_failover);
    }

    #[test]
    fn history_fields_parse_and_are_off_by_default() {
        let t = parse(BASE).unwrap();
        assert_eq!(t.groups[0].history, None);
        assert_eq!(t.groups[0].checkpoint_interval, HumanDuration::from_secs(5));
        let text = edit(
            BASE,
            "rto_target = \"30s\"\n",
            "rto_target = \"30s\"\nhistory = \"24h\"\nhistory_max = \"50GiB\"\ncheckpoint_interval = \"2s\"\n",
        );
        let t = parse(&text).unwrap();
        assert_eq!(t.groups[0].history, Some(HumanDuration::from_secs(86400)));
        assert_eq!(t.groups[0].history_max, Some(ByteSize::gib(50)));
        assert_eq!(t.groups[0].checkpoint_interval, HumanDuration::from_secs(2));
        let bad = edit(
            BASE,
            "rto_target = \"30s\"\n",
            "rto_target = \"30s\"\nhistory = \"1h\"\nhistory_max = \"4KiB\"\n",
        );
        assert_diag(
            &bad,
            "groups[0].history_max",
            "history_max = ",
            "at least 1MiB",
        );
        let bad = edit(
            BASE,
            "rto_target = \"30s\"\n",
            "rto_target = \"30s\"\nhistory = \"soon\"\n",
        );
        assert_diag(&bad, "groups[0].history", "history = ", "soon");
    }

    #[test]
    fn drill_every_parses_is_off_by_default_and_has_a_floor() {
        assert_eq!(parse(BASE).unwrap().groups[0].drill_every, None);
        let every = |v: &str| {
            edit(
                BASE,
                "rto_target = \"30s\"\n",
                &format!("rto_target = \"30s\"\ndrill_every = \"{v}\"\n"),
            )
        };
        let t = parse(&every("30d")).unwrap();
        assert_eq!(
            t.groups[0].drill_every,
            Some(HumanDuration::from_secs(30 * 86_400))
        );
        let t = parse(&every("1s")).unwrap();
        assert_eq!(t.groups[0].drill_every, Some(HumanDuration::from_secs(1)));
        assert_diag(
            &every("500ms"),
            "groups[0].drill_every",
            "drill_every = ",
            "at least 1s",
        );
        assert_diag(
            &every("monthly"),
            "groups[0].drill_every",
            "drill_every = ",
            "monthly",
        );
    }

    #[test]
    fn example_two_sites_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-sites.toml");
        let t = Topology::load(&path).unwrap();
        let examples = std::path::absolute(path.parent().unwrap()).unwrap();
        assert_eq!(t.base_dir, examples);
        let names: Vec<&str> = t.sites.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["hanoi", "hcm", "danang"]);
        assert!(t.site("danang").unwrap().witness);
        let coords: Vec<(u64, &str)> = t
            .coordinators()
            .iter()
            .map(|c| (c.raft_id, c.node.name.as_str()))
            .collect();
        assert_eq!(
            coords,
            [(1, "hanoi-coord"), (2, "hcm-coord"), (3, "danang-coord")]
        );
        assert_eq!(t.raft_id("danang-coord"), Some(3));
        assert_eq!(t.raft_id("hanoi-rep"), None);
        assert_eq!(t.replicators_at("hanoi")[0].name, "hanoi-rep");
        assert_eq!(t.replicators_at("hcm")[0].name, "hcm-rep");
        assert!(t.replicators_at("danang").is_empty());
        for (i, n) in t.nodes.iter().enumerate() {
            assert_eq!(n.listen, format!("127.0.0.1:{}", 7101 + i));
        }
        let rep = t.node("hanoi-rep").unwrap();
        assert_eq!(t.node_data_dir(rep), examples.join("data/hanoi-rep"));

        let vol = t.group("vol").unwrap();
        assert_eq!(vol.mode, Mode::Sync);
        assert_eq!(vol.resources.len(), 1);
        let disk = vol.resource("disk0").unwrap();
        assert!(
            matches!(disk.kind, ResourceKind::Volume { size, .. } if size == ByteSize::mib(256))
        );
        assert_eq!(
            t.resource_path(vol, disk, "hanoi").unwrap(),
            examples.join("volumes/hanoi/disk0.img")
        );
        assert_eq!(
            t.resource_path(vol, disk, "hcm").unwrap(),
            examples.join("volumes/hcm/disk0.img")
        );
        assert_eq!(t.resource_path(vol, disk, "danang"), None);

        let db = t.group("db").unwrap();
        assert_eq!(db.mode, Mode::Async);
        assert_eq!(db.resources.len(), 1);
        assert_eq!(db.resources[0].kind.name(), "sqlite");
        assert_eq!(db.max_bandwidth.unwrap().bytes_per_sec, 100_000_000);
    }

    #[test]
    fn topology_round_trips_through_toml_serialization() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-sites.toml");
        let t = Topology::load(&path).unwrap();
        let text = toml::to_string(&t).unwrap();
        let again = Topology::parse_in(&text, "again.toml", t.base_dir.clone()).unwrap();
        assert_eq!(again, t);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder_and_absolute_ones_stay() {
        let text = edit(
            BASE,
            "data_dir = \"data/a-rep\"",
            "data_dir = \"/srv/a-rep\"",
        );
        let t = Topology::parse(&text, "/opt/site/tandem.toml").unwrap();
        assert_eq!(t.base_dir, PathBuf::from("/opt/site"));
        assert_eq!(
            t.node("a-coord").unwrap().data_dir,
            PathBuf::from("/opt/site/data/a-coord")
        );
        assert_eq!(
            t.node("a-rep").unwrap().data_dir,
            PathBuf::from("/srv/a-rep")
        );
        let g = &t.groups[0];
        let r = &g.resources[0];
        assert_eq!(
            t.resource_path(g, r, "b").unwrap(),
            PathBuf::from("/opt/site/b/disk0.img")
        );
    }

    #[test]
    fn toml_syntax_error_is_its_own_variant_with_line_and_column() {
        let text = edit(BASE, "mode = \"sync\"", "mode = \"sync");
        match parse(&text) {
            Err(ConfigError::Syntax {
                file,
                line,
                column,
                message,
            }) => {
                assert_eq!(file, "t.toml");
                assert_eq!(line, line_of(&text, "mode = \"sync"));
                assert!(column > 1, "{column}");
                assert!(!message.is_empty());
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
    }

    #[test]
    fn missing_cluster_section_is_reported() {
        let text = edit(BASE, "[cluster]\nname = \"t\"\n", "");
        let diags = diagnostics(&text);
        assert_eq!(diags[0].path, "cluster");
        assert_eq!((diags[0].line, diags[0].column), (1, 1));
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let err = Topology::load(Path::new("/nonexistent/tandem.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err
            .to_string()
            .starts_with("/nonexistent/tandem.toml: cannot read config"));
        assert!(!err.is_retryable());
    }

    #[test]
    fn bad_duration_is_reported_with_its_value_and_line() {
        let text = edit(BASE, "rto_target = \"30s\"", "rto_target = \"30 secs\"");
        assert_diag(
            &text,
            "groups[0].rto_target",
            "rto_target = \"30 secs\"",
            "invalid duration \"30 secs\": unknown unit \"secs\"",
        );
        let diags = diagnostics(&text);
        assert_eq!(
            diags.len(),
            1,
            "the placeholder must not add errors: {diags:?}"
        );
        assert_eq!(diags[0].column, 14, "points at the value");
    }

    #[test]
    fn unquoted_duration_is_refused_with_a_hint() {
        let text = edit(BASE, "name = \"t\"", "name = \"t\"\nlease_ttl = 4");
        assert_diag(
            &text,
            "cluster.lease_ttl",
            "lease_ttl = 4",
            "invalid duration \"4\": expected a quoted string",
        );
    }

    #[test]
    fn bad_size_is_reported_with_its_value_and_line() {
        let text = edit(BASE, "size = \"1MiB\"", "size = \"1 mb\"");
        assert_diag(
            &text,
            "groups[0].resources[0].size",
            "size = \"1 mb\"",
            "invalid size \"1 mb\"",
        );
        assert_eq!(diagnostics(&text).len(), 1);
    }

    #[test]
    fn bad_bandwidth_is_reported_with_its_value_and_line() {
        let text = edit(
            BASE,
            "mode = \"sync\"",
            "mode = \"sync\"\nmax_bandwidth = \"100MB\"",
        );
        assert_diag(
            &text,
            "groups[0].max_bandwidth",
            "max_bandwidth",
            "invalid bandwidth \"100MB\": missing \"/s\"",
        );
    }
}
