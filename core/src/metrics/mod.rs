//! Prometheus metrics: a small registry (counters, gauges, histograms, with labels), the text
//! exposition format 0.0.4 (render and parse), and a tiny HTTP/1.1 server for `GET /metrics`.
//!
//! Why hand-written and not `prometheus-client` (evaluated for issue 19): that crate would
//! change what scrapers and dashboards see. It appends `_total` to every counter name (our
//! `tandem_..._total` counters would render as `..._total_total`, or their `# HELP`/`# TYPE`
//! lines would lose the suffix), it ends every help text with a `.`, its default encoder writes
//! OpenMetrics (`# EOF` line, another `Content-Type`), and it has no parser, which our tests
//! use as the oracle of the renderer and `tandem status` uses to read a node's figures. Its
//! registry also wants typed label sets where our collectors build families at scrape time.
//! The whole surface Tandem needs is a few hundred lines, with no unsafe code and no
//! dependency beyond tokio, so it stays here, split into rooms.
//!
//! Two ways to export a figure:
//! - a handle ([`Counter`], [`Gauge`], [`Histogram`]) registered once and updated by the code
//!   that sees the event (e.g. an NBD write, a batch acknowledged);
//! - a collector ([`Registry::register_collector`]): a closure called at every scrape that reads
//!   live structures and returns [`Family`] values, so gauges need no background loop.
//!
//! Rendering, parsing and the HTTP request head parser are pure; only [`serve`] touches sockets.
//!
//! Rooms: [`family`] (families and samples), [`handles`] (counter, gauge, histogram),
//! [`registry`] (registered metrics and collectors), [`text`] (render and parse the exposition),
//! [`http`] (request head and response, pure), [`server`] (the socket), [`error`].
//! Every public item is re-exported here.

pub mod error;
pub mod family;
pub mod handles;
pub mod http;
pub mod registry;
pub mod server;
pub mod text;

pub use error::MetricsError;
pub use family::{valid_label_name, valid_metric_name, Family, Kind, Labels, Sample};
pub use handles::{Counter, Gauge, Histogram, LATENCY_BUCKETS};
pub use http::{parse_request_head, respond, RequestHead, MAX_REQUEST_HEAD};
pub use registry::{global, Registry};
pub use server::{serve, start, MAX_CONNECTIONS, REQUEST_TIMEOUT};
pub use text::{format_value, parse_text, render, Exposition, CONTENT_TYPE};
