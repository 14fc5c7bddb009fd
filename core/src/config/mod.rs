//! The topology config: the TOML file naming sites, nodes and protection groups, its loader and its validation.
//!
//! [`Topology::load`] reads a file, [`Topology::parse`] parses text; both validate and report
//! every problem found at once, each as `FILE:LINE:COL: field.path: message`. After a
//! successful load every path in the topology is absolute (relative paths in the file are
//! relative to the file's folder, kept in [`Topology::base_dir`]).
//!
//! Humane values: durations are written `"250ms"`, `"4s"`, `"5m"`, `"24h"`, `"7d"`
//! ([`HumanDuration`]); sizes `"64KiB"`, `"256MiB"`, `"1GiB"`, `"100MB"` ([`ByteSize`]);
//! bandwidths `"100MB/s"` ([`Bandwidth`]). The reference is `docs/config.md`.
//!
//! Rooms (all pure but `load`, which alone reads a file):
//! - `units`: the humane value types, their parsing, display and one shared serde visitor;
//! - `model`: the topology structs and enums and their lookups;
//! - `placement`: which replicator host serves a group at a site (pins, then weighted
//!   rendezvous hashing over declared capacity);
//! - `resource`: a resource's flat file form and its per-field checks;
//! - `diagnostic`: `Diagnostic`, `ConfigError`, `line_col` and the path-to-place collector;
//! - `load`: reading, TOML parsing with spans, unit pre-checks, path resolution;
//! - `validate`: the rules beyond syntax (cluster, sites and nodes, groups, resources).
//!
//! Every public item is re-exported here: `tandem_core::config::X` names it.

mod diagnostic;
mod load;
mod model;
mod placement;
mod resource;
#[cfg(test)]
mod testutil;
mod units;
mod validate;

pub use diagnostic::{display_lines, line_col, nearest, ConfigError, Diagnostic};
pub use model::{
    is_loopback_address, Capture, Cluster, Coordinator, Group, Mode, Node, NodeRole, PgStream,
    Resource, ResourceKind, Runbooks, Site, Tls, Topology, DEFAULT_POSTGRES_BIN_DIR,
};
pub use placement::place;
pub use units::{Bandwidth, BandwidthWindow, ByteSize, HumanDuration, TimeOfDay, UnitError};
