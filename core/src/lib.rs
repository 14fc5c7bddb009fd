//! Tandem core: the pieces every other crate stands on.
//!
//! - [`net`]: the one place that makes gRPC channels and servers (plaintext or mutual TLS).
//! - [`client`]: the typed cluster client (coordinators and replicators) over gRPC.
//! - [`certs`]: the CA and node/role certificates (`tandem certs`), and reading them.
//! - [`buffers`]: reusable data buffers of the data path (bounded), so a write allocates none.
//! - [`bytes`]: hex, little-endian reads and the poison-tolerant mutex lock, defined once.
//! - [`ids`]: position and identity newtypes (`Seq`, `Epoch`, `GroupId`).
//! - [`frame`]: the frame codec, the unit on the wire and in the journal.
//! - [`group`]: a group's mode, a replicator's role and a group's state, defined once.
//! - [`ranges`]: the one formatter of differing byte ranges and their wire form.
//! - [`config`]: the topology config (TOML) and its validation.
//! - [`compression`]: the compression setting of a stream (`auto`, `off`, `zstd-N`).
//! - [`clock`]: the `Clock` that tests and the chaos harness can skew.
//! - [`limits`]: hard size limits on everything read from the network (gRPC messages).
//! - [`nbd`]: the pure NBD wire codec (handshake, requests, replies); no I/O.
//! - [`metrics`]: the Prometheus registry, text format and `GET /metrics` server.
//! - [`pgctl`]: PostgreSQL's tools (pg_ctl, pg_controldata, psql) run as the data dir's owner.
//! - [`walfile`]: PostgreSQL archive files (WAL segments) as changes of the stream.
//! - [`residency`]: jurisdiction codes and the rule for where a group's data may be placed.
//! - [`proto`]: the generated gRPC code (`proto/tandem.proto`).

pub mod authz;
pub mod buffers;
pub mod bytes;
pub mod certs;
pub mod client;
pub mod clock;
pub mod compression;
pub mod config;
pub mod fault;
pub mod frame;
pub mod group;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod mixed;
pub mod nbd;
pub mod net;
pub mod pgctl;
pub mod ports;
pub mod ranges;
pub mod residency;
pub mod walfile;

/// Generated gRPC code for the `tandem.v1` protocol.
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod proto {
    tonic::include_proto!("tandem.v1");
}
