//! Tandem core: the pieces every other crate stands on.
//!
//! - [`ids`]: position and identity newtypes (`Seq`, `Epoch`, `GroupId`).
//! - [`frame`]: the frame codec, the unit on the wire and in the journal.
//! - [`config`]: the topology config (TOML) and its validation.
//! - [`clock`]: the `Clock` that tests and the chaos harness can skew.
//! - [`metrics`]: the Prometheus registry, text format and `GET /metrics` server.
//! - [`proto`]: the generated gRPC code (`proto/tandem.proto`).

pub mod clock;
pub mod config;
pub mod frame;
pub mod ids;
pub mod metrics;
pub mod mixed;

/// Generated gRPC code for the `tandem.v1` protocol.
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]
pub mod proto {
    tonic::include_proto!("tandem.v1");
}
