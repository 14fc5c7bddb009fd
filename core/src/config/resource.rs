//! A resource as written in the file: the flat `[[groups.resources]]` table, its per-field
//! checks when turned into a typed [`Resource`], and its serde both ways. Pure; no I/O.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::path::PathBuf;

use super::model::{defaults, Capture, PgStream, Resource, ResourceKind, DEFAULT_POSTGRES_BIN_DIR};
use super::units::{ByteSize, HumanDuration};

/// The flat form of a resource as written in the file; converted with per-field checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResource {
    name: String,
    kind: RawKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_size: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capture: Option<Capture>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scan_interval: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica_data_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replica_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bin_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream_password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    #[default]
    Volume,
    Sqlite,
    Postgres,
}

impl RawResource {
    /// Converts to a [`Resource`], or returns `(field, message)` for every problem.
    pub(super) fn into_resource(self) -> Result<Resource, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let kind_name = match self.kind {
            RawKind::Volume => "volume",
            RawKind::Sqlite => "sqlite",
            RawKind::Postgres => "postgres",
        };
        let mut not_for_kind = |field: &'static str, present: bool| {
            if present {
                problems.push((field, format!("`{field}` does not apply to a {kind_name}")));
            }
        };
        match self.kind {
            RawKind::Volume | RawKind::Sqlite => {
                not_for_kind("data_dir", self.data_dir.is_some());
                not_for_kind("replica_data_dir", self.replica_data_dir.is_some());
                not_for_kind("port", self.port.is_some());
                not_for_kind("replica_port", self.replica_port.is_some());
                not_for_kind("bin_dir", self.bin_dir.is_some());
                not_for_kind("stream", self.stream.is_some());
                not_for_kind("stream_user", self.stream_user.is_some());
                not_for_kind("stream_host", self.stream_host.is_some());
                not_for_kind("stream_password_file", self.stream_password_file.is_some());
                if self.kind == RawKind::Sqlite {
                    not_for_kind("size", self.size.is_some());
                    not_for_kind("block_size", self.block_size.is_some());
                    not_for_kind("capture", self.capture.is_some());
                    not_for_kind("scan_interval", self.scan_interval.is_some());
                }
            }
            RawKind::Postgres => {
                not_for_kind("size", self.size.is_some());
                not_for_kind("block_size", self.block_size.is_some());
                not_for_kind("path", self.path.is_some());
                not_for_kind("replica_path", self.replica_path.is_some());
                not_for_kind("capture", self.capture.is_some());
                not_for_kind("scan_interval", self.scan_interval.is_some());
                if self.stream != Some(true) {
                    for (field, present) in [
                        ("stream_user", self.stream_user.is_some()),
                        ("stream_host", self.stream_host.is_some()),
                        ("stream_password_file", self.stream_password_file.is_some()),
                    ] {
                        if present {
                            problems.push((
                                field,
                                format!("`{field}` applies only with stream = true"),
                            ));
                        }
                    }
                }
            }
        }
        let stream = (self.stream == Some(true)).then(|| PgStream {
            user: self
                .stream_user
                .clone()
                .unwrap_or_else(|| "postgres".into()),
            host: self
                .stream_host
                .clone()
                .unwrap_or_else(|| "127.0.0.1".into()),
            password_file: self.stream_password_file.clone(),
        });
        let kind = match self.kind {
            RawKind::Volume => {
                if self.size.is_none() {
                    problems.push((
                        "size",
                        "a volume needs a size, e.g. size = \"256MiB\"".to_string(),
                    ));
                }
                if self.path.is_none() {
                    problems.push((
                        "path",
                        "a volume needs a path (its image file or block device)".to_string(),
                    ));
                }
                match (self.size, self.path) {
                    (Some(size), Some(path)) => Some(ResourceKind::Volume {
                        size,
                        replica_path: self.replica_path.unwrap_or_else(|| path.clone()),
                        path,
                        block_size: self.block_size.unwrap_or(defaults::BLOCK_SIZE),
                        capture: self.capture.unwrap_or_default(),
                        scan_interval: self.scan_interval.unwrap_or_else(defaults::scan_interval),
                    }),
                    _ => None,
                }
            }
            RawKind::Sqlite => match self.path {
                Some(path) => Some(ResourceKind::Sqlite {
                    replica_path: self.replica_path.unwrap_or_else(|| path.clone()),
                    path,
                }),
                None => {
                    problems.push((
                        "path",
                        "a sqlite resource needs a path (the database file)".to_string(),
                    ));
                    None
                }
            },
            RawKind::Postgres => {
                if self.data_dir.is_none() {
                    problems.push((
                        "data_dir",
                        "a postgres resource needs a data_dir".to_string(),
                    ));
                }
                if self.port.is_none() {
                    problems.push(("port", "a postgres resource needs a port".to_string()));
                }
                match (self.data_dir, self.port) {
                    (Some(data_dir), Some(port)) => Some(ResourceKind::Postgres {
                        replica_data_dir: self.replica_data_dir.unwrap_or_else(|| data_dir.clone()),
                        data_dir,
                        port,
                        replica_port: self.replica_port.unwrap_or(port),
                        bin_dir: self
                            .bin_dir
                            .unwrap_or_else(|| PathBuf::from(DEFAULT_POSTGRES_BIN_DIR)),
                        stream,
                    }),
                    _ => None,
                }
            }
        };
        match kind {
            Some(kind) if problems.is_empty() => Ok(Resource {
                name: self.name,
                kind,
            }),
            _ => Err(problems),
        }
    }
}

impl From<&Resource> for RawResource {
    fn from(r: &Resource) -> RawResource {
        let mut raw = RawResource {
            name: r.name.clone(),
            ..RawResource::default()
        };
        match &r.kind {
            ResourceKind::Volume {
                size,
                path,
                replica_path,
                block_size,
                capture,
                scan_interval,
            } => {
                raw.kind = RawKind::Volume;
                raw.size = Some(*size);
                raw.path = Some(path.clone());
                raw.replica_path = Some(replica_path.clone());
                raw.block_size = Some(*block_size);
                raw.capture = Some(*capture);
                raw.scan_interval = Some(*scan_interval);
            }
            ResourceKind::Sqlite { path, replica_path } => {
                raw.kind = RawKind::Sqlite;
                raw.path = Some(path.clone());
                raw.replica_path = Some(replica_path.clone());
            }
            ResourceKind::Postgres {
                data_dir,
                replica_data_dir,
                port,
                replica_port,
                bin_dir,
                stream,
            } => {
                raw.kind = RawKind::Postgres;
                if let Some(st) = stream {
                    raw.stream = Some(true);
                    raw.stream_user = Some(st.user.clone());
                    raw.stream_host = Some(st.host.clone());
                    raw.stream_password_file = st.password_file.clone();
                }
                raw.data_dir = Some(data_dir.clone());
                raw.replica_data_dir = Some(replica_data_dir.clone());
                raw.port = Some(*port);
                raw.replica_port = Some(*replica_port);
                raw.bin_dir = Some(bin_dir.clone());
            }
        }
        raw
    }
}

impl Serialize for Resource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RawResource::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Resource, D::Error> {
        RawResource::deserialize(d)?
            .into_resource()
            .map_err(|problems| {
                let text: Vec<String> = problems
                    .into_iter()
                    .map(|(field, msg)| format!("{field}: {msg}"))
                    .collect();
                D::Error::custom(text.join("; "))
            })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testutil::*;

    #[test]
    fn replica_path_defaults_to_path() {
        let text = edit(BASE, "replica_path = \"b/disk0.img\"\n", "");
        let t = parse(&text).unwrap();
        let (g, r) = (&t.groups[0], &t.groups[0].resources[0]);
        assert_eq!(t.resource_path(g, r, "a"), t.resource_path(g, r, "b"));
    }

    #[test]
    fn volume_without_size_is_refused() {
        let text = edit(BASE, "size = \"1MiB\"\n", "");
        assert_diag(
            &text,
            "groups[0].resources[0].size",
            "[[groups.resources]]",
            "a volume needs a size",
        );
    }

    #[test]
    fn settings_of_another_kind_are_refused() {
        let text = edit(BASE, "kind = \"volume\"", "kind = \"sqlite\"");
        let diags = diagnostics(&text);
        let d = diags
            .iter()
            .find(|d| d.path == "groups[0].resources[0].size")
            .unwrap();
        assert!(d.message.contains("does not apply to a sqlite"));
    }
}
