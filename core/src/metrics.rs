//! Prometheus metrics: a small registry (counters, gauges, histograms, with labels), the text
//! exposition format 0.0.4 (render and parse), and a tiny HTTP/1.1 server for `GET /metrics`.
//!
//! Why not a crate: the whole surface Tandem needs is a few hundred lines, has no unsafe code and
//! no dependency beyond tokio, and the parser doubles as the test oracle for the renderer.
//!
//! Two ways to export a figure:
//! - a handle ([`Counter`], [`Gauge`], [`Histogram`]) registered once and updated by the code
//!   that sees the event (e.g. an NBD write, a batch acknowledged);
//! - a collector ([`Registry::register_collector`]): a closure called at every scrape that reads
//!   live structures and returns [`Family`] values, so gauges need no background loop.
//!
//! Rendering, parsing and the HTTP request head parser are pure; only [`serve`] touches sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The `Content-Type` of the text exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest HTTP request head accepted (request line and headers); larger requests get 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Most scrapes served at once; further connections wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client may take to send its request head before the connection is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Default latency buckets, in seconds (1 ms to 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics listen address could not be bound.
    #[error("metrics_listen {addr}: cannot bind: {source}")]
    Bind {
        /// The address from the topology.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line of a text exposition is malformed.
    #[error("metrics text line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl MetricsError {
    /// True when trying again later may succeed (the port may be freed).
    pub fn is_retryable(&self) -> bool {
        matches!(self, MetricsError::Bind { .. })
    }
}

/// The type of a metric family, as written on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that only goes up (resets when the process restarts).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// Observations counted in cumulative buckets, with sum and count.
    Histogram,
    /// A family of unknown type (only met when parsing).
    Untyped,
}

impl Kind {
    /// The word on the `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Untyped => "untyped",
        }
    }
}

/// Label pairs of one series, in the order they are written.
pub type Labels = Vec<(String, String)>;

/// One line of the exposition: a series name (the family name, or `_bucket`/`_sum`/`_count` of a
/// histogram), its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name.
    pub name: String,
    /// Label pairs.
    pub labels: Labels,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A metric family: name, help text, type and samples, rendered as one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Family name (`tandem_group_rpo_seconds`).
    pub name: String,
    /// One line of help.
    pub help: String,
    /// Type.
    pub kind: Kind,
    /// The samples.
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    ///
    /// # Panics
    /// If `name` is not a valid metric name: names are code, not input.
    pub fn new(name: &str, help: &str, kind: Kind) -> Family {
        assert!(valid_metric_name(name), "invalid metric name {name:?}");
        Family {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample of the family's own name.
    ///
    /// # Panics
    /// If a label name is invalid (label names are code; label values may be anything).
    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let name = self.name.clone();
        self.push_series(&name, owned_labels(labels), value);
    }

    /// Builder form of [`Family::push`].
    pub fn with(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.push(labels, value);
        self
    }

    fn push_series(&mut self, name: &str, labels: Labels, value: f64) {
        self.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
}

fn owned_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| {
            assert!(valid_label_name(k), "invalid label name {k:?}");
            ((*k).to_owned(), (*v).to_owned())
        })
        .collect()
}

/// True for `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// True for `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------------------------
// Handles

/// A monotonically increasing count; cheap to clone and to update from any thread.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that can go up and down (an f64 stored as bits).
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

#[derive(Debug)]
struct HistInner {
    bounds: Vec<f64>,
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
}

/// Observations in fixed buckets (upper bounds, ascending), with their sum and count.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistInner>);

impl Histogram {
    /// A histogram with the given upper bounds (sorted, deduplicated, non-finite ones dropped).
    pub fn new(bounds: &[f64]) -> Histogram {
        let mut b: Vec<f64> = bounds.iter().copied().filter(|x| x.is_finite()).collect();
        b.sort_by(f64::total_cmp);
        b.dedup();
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistInner {
            bounds: b,
            counts,
            sum_bits: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one observation (NaN is ignored).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.0.bounds.partition_point(|b| *b < v);
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        let mut cur = self.0.sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self.0.sum_bits.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    /// (upper bound, cumulative count) per bucket, `+Inf` last; then the sum and the count.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0u64;
        let mut out = Vec::with_capacity(self.0.counts.len());
        for (i, c) in self.0.counts.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            let bound = self.0.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            out.push((bound, acc));
        }
        (
            out,
            f64::from_bits(self.0.sum_bits.load(Ordering::Relaxed)),
            acc,
        )
    }

    fn push_into(&self, family: &mut Family, labels: &Labels) {
        let (buckets, sum, count) = self.snapshot();
        for (bound, c) in buckets {
            let mut l = labels.clone();
            l.push(("le".to_owned(), format_value(bound)));
            family.push_series(&format!("{}_bucket", family.name), l, c as f64);
        }
        family.push_series(&format!("{}_sum", family.name), labels.clone(), sum);
        family.push_series(
            &format!("{}_count", family.name),
            labels.clone(),
            count as f64,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Registry

enum Series {
    Counter(BTreeMap<Labels, Counter>),
    Gauge(BTreeMap<Labels, Gauge>),
    Histogram(Vec<f64>, BTreeMap<Labels, Histogram>),
}

struct Registered {
    help: String,
    series: Series,
}

type Collector = Box<dyn Fn() -> Vec<Family> + Send + Sync>;

/// A set of metrics and collectors, rendered together on every scrape.
#[derive(Default)]
pub struct Registry {
    metrics: Mutex<BTreeMap<String, Registered>>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("metrics", &lock(&self.metrics).keys().collect::<Vec<_>>())
            .field("collectors", &lock(&self.collectors).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The process-wide registry that `tandem node` serves on its `metrics_listen` address.
pub fn global() -> &'static Arc<Registry> {
    static GLOBAL: OnceLock<Arc<Registry>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Registry::new()))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The counter `name{labels}`, created on first use.
    ///
    /// # Panics
    /// If `name` or a label name is invalid, or `name` is already registered with another
    /// type: metric names are code, so this is a programming error.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        let mut m = self.entry(name, help, || Series::Counter(BTreeMap::new()));
        match m.get_mut(name).map(|r| &mut r.series) {
            Some(Series::Counter(s)) => s.entry(owned_labels(labels)).or_default().clone(),
            _ => panic!("metric {name} is registered with another type"),
        }
    }

    /// The gauge `name{labels}`, created on first use.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        let mut m = self.entry(name, help, || Series::Gauge(BTreeMap::new()));
        match m.get_mut(name).map(|r| &mut r.series) {
            Some(Series::Gauge(s)) => s.entry(owned_labels(labels)).or_default().clone(),
            _ => panic!("metric {name} is registered with another type"),
        }
    }

    /// The histogram `name{labels}` with upper bounds `bounds` (seconds, bytes, ...), created on
    /// first use; every series of one name shares the bounds given first.
    ///
    /// # Panics
    /// As [`Registry::counter`].
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        bounds: &[f64],
        labels: &[(&str, &str)],
    ) -> Histogram {
        let mut m = self.entry(name, help, || {
            Series::Histogram(bounds.to_vec(), BTreeMap::new())
        });
        match m.get_mut(name).map(|r| &mut r.series) {
            Some(Series::Histogram(b, s)) => s
                .entry(owned_labels(labels))
                .or_insert_with(|| Histogram::new(b))
                .clone(),
            _ => panic!("metric {name} is registered with another type"),
        }
    }

    fn entry(
        &self,
        name: &str,
        help: &str,
        make: impl FnOnce() -> Series,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, Registered>> {
        assert!(valid_metric_name(name), "invalid metric name {name:?}");
        let mut m = lock(&self.metrics);
        m.entry(name.to_owned()).or_insert_with(|| Registered {
            help: help.to_owned(),
            series: make(),
        });
        m
    }

    /// Adds a closure called at every scrape; the families it returns are rendered with the
    /// registered ones. It must be quick and must not block (it runs on the server's task).
    pub fn register_collector(&self, f: impl Fn() -> Vec<Family> + Send + Sync + 'static) {
        lock(&self.collectors).push(Box::new(f));
    }

    /// Every family now: registered handles, then collectors' output; families of the same name
    /// are merged (first help and type win; a collector family whose type differs from a
    /// registered one is dropped), empty ones are left out, and the result is sorted by name.
    pub fn gather(&self) -> Vec<Family> {
        let mut out: BTreeMap<String, Family> = BTreeMap::new();
        for (name, r) in lock(&self.metrics).iter() {
            let kind = match r.series {
                Series::Counter(_) => Kind::Counter,
                Series::Gauge(_) => Kind::Gauge,
                Series::Histogram(..) => Kind::Histogram,
            };
            let mut f = Family::new(name, &r.help, kind);
            match &r.series {
                Series::Counter(s) => {
                    for (l, c) in s {
                        f.push_series(name, l.clone(), c.get() as f64);
                    }
                }
                Series::Gauge(s) => {
                    for (l, g) in s {
                        f.push_series(name, l.clone(), g.get());
                    }
                }
                Series::Histogram(_, s) => {
                    for (l, h) in s {
                        h.push_into(&mut f, l);
                    }
                }
            }
            out.insert(name.clone(), f);
        }
        let collected: Vec<Family> = lock(&self.collectors).iter().flat_map(|c| c()).collect();
        for f in collected {
            match out.get_mut(&f.name) {
                Some(existing) if existing.kind == f.kind => existing.samples.extend(f.samples),
                Some(_) => {}
                None => {
                    out.insert(f.name.clone(), f);
                }
            }
        }
        // A family with no series (a handle-less name, a collector with nothing to report yet)
        // would only be a HELP/TYPE pair: leave it out.
        out.into_values()
            .filter(|f| !f.samples.is_empty())
            .collect()
    }

    /// The text exposition of [`Registry::gather`].
    pub fn render(&self) -> String {
        render(&self.gather())
    }
}

// ---------------------------------------------------------------------------------------------
// Text format

/// Formats a sample value as Prometheus expects (`+Inf`, `-Inf`, `NaN`, else a decimal).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Renders families in the text exposition format 0.0.4: per family a `# HELP` and a `# TYPE`
/// line, then its samples, one per line.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        out.push_str("# HELP ");
        out.push_str(&f.name);
        out.push(' ');
        escape_help(&f.help, &mut out);
        out.push('\n');
        out.push_str("# TYPE ");
        out.push_str(&f.name);
        out.push(' ');
        out.push_str(f.kind.as_str());
        out.push('\n');
        for s in &f.samples {
            out.push_str(&s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push_str("=\"");
                    escape_label_value(v, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            out.push(' ');
            out.push_str(&format_value(s.value));
            out.push('\n');
        }
    }
    out
}

/// A parsed text exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Family name -> help text (unescaped).
    pub help: BTreeMap<String, String>,
    /// Family name -> type.
    pub types: BTreeMap<String, Kind>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The samples named `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.series(name)
            .find(|s| labels.iter().all(|(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
    }
}

fn parse_err(line: usize, reason: impl Into<String>) -> MetricsError {
    MetricsError::Parse {
        line,
        reason: reason.into(),
    }
}

/// Parses a sample value: a decimal or exponent float, `+Inf`, `-Inf`, `NaN`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

/// The family a series belongs to: its own name, or the histogram it is a `_bucket`, `_sum` or
/// `_count` of when such a histogram was declared.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, Kind>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base) == Some(&Kind::Histogram) {
                return base;
            }
        }
    }
    name
}

/// Parses a text exposition (format 0.0.4): `# HELP` and `# TYPE` lines, other comments, and
/// samples `name{label="value",...} value [timestamp]`.
///
/// Checks names, label syntax and escapes, values, at most one `TYPE` per family and that it
/// comes before the family's samples, and that histogram buckets carry an `le` label.
///
/// # Errors
/// [`MetricsError::Parse`] with the 1-based line number and what is wrong.
pub fn parse_text(text: &str) -> Result<Exposition, MetricsError> {
    let mut exp = Exposition::default();
    let mut seen_samples: std::collections::BTreeSet<String> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), help) => {
                    if !valid_metric_name(name) {
                        return Err(parse_err(n, format!("bad metric name {name:?} in HELP")));
                    }
                    let help = unescape(help.unwrap_or(""), false)
                        .map_err(|e| parse_err(n, format!("HELP of {name}: {e}")))?;
                    if exp.help.insert(name.to_owned(), help).is_some() {
                        return Err(parse_err(n, format!("second HELP for {name}")));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_metric_name(name) {
                        return Err(parse_err(n, format!("bad metric name {name:?} in TYPE")));
                    }
                    let kind = match kind.trim() {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "untyped" | "summary" => Kind::Untyped,
                        other => return Err(parse_err(n, format!("unknown type {other:?}"))),
                    };
                    if seen_samples.contains(name) {
                        return Err(parse_err(n, format!("TYPE of {name} after its samples")));
                    }
                    if exp.types.insert(name.to_owned(), kind).is_some() {
                        return Err(parse_err(n, format!("second TYPE for {name}")));
                    }
                }
                (Some("TYPE"), _, _) => return Err(parse_err(n, "TYPE line without a type")),
                _ => {} // a plain comment
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|reason| parse_err(n, reason))?;
        let family = family_of(&sample.name, &exp.types).to_owned();
        if exp.types.get(&family) == Some(&Kind::Histogram)
            && sample.name.ends_with("_bucket")
            && sample.label("le").and_then(parse_value).is_none()
        {
            return Err(parse_err(
                n,
                format!("{} has no numeric le label", sample.name),
            ));
        }
        seen_samples.insert(family);
        exp.samples.push(sample);
    }
    Ok(exp)
}

fn unescape(s: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            other => return Err(format!("bad escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or_else(|| "sample without a value".to_owned())?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut s = body;
        loop {
            s = s.trim_start();
            if let Some(after) = s.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = s
                .find('=')
                .ok_or_else(|| format!("label without '=' in {name}"))?;
            let key = s[..eq].trim();
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?} in {name}"));
            }
            let after_eq = s[eq + 1..].trim_start();
            let quoted = after_eq
                .strip_prefix('"')
                .ok_or_else(|| format!("label {key} of {name}: value not quoted"))?;
            // Find the closing quote, skipping escaped characters.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or_else(|| format!("label {key} of {name}: unterminated value"))?;
            let value = unescape(&quoted[..end], true)
                .map_err(|e| format!("label {key} of {name}: {e}"))?;
            if labels.iter().any(|(k, _)| k == key) {
                return Err(format!("label {key} twice in {name}"));
            }
            labels.push((key.to_owned(), value));
            s = quoted[end + 1..].trim_start();
            if let Some(after) = s.strip_prefix(',') {
                s = after;
            } else if !s.starts_with('}') {
                return Err(format!("expected ',' or '}}' after label {key} of {name}"));
            }
        }
    }
    if !rest.starts_with([' ', '\t']) {
        return Err(format!("no space before the value of {name}"));
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields
        .next()
        .ok_or_else(|| format!("{name} has no value"))?;
    let value =
        parse_value(value_text).ok_or_else(|| format!("{name}: bad value {value_text:?}"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("{name}: bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err(format!("{name}: trailing text after the value"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHead {
    /// More bytes are needed (no blank line yet).
    Incomplete,
    /// A complete request line and headers.
    Complete {
        /// Method (`GET`).
        method: String,
        /// Path without the query string.
        path: String,
    },
    /// The head is not HTTP/1.x.
    Malformed,
    /// The head is longer than [`MAX_REQUEST_HEAD`].
    TooLarge,
}

/// Parses the head of an HTTP/1.x request from the bytes read so far.
pub fn parse_request_head(buf: &[u8]) -> RequestHead {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        // Tolerate bare LF line ends too.
        if let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            return parse_request_line(&buf[..end]);
        }
        return if buf.len() > MAX_REQUEST_HEAD {
            RequestHead::TooLarge
        } else {
            RequestHead::Incomplete
        };
    };
    if end > MAX_REQUEST_HEAD {
        return RequestHead::TooLarge;
    }
    parse_request_line(&buf[..end])
}

fn parse_request_line(head: &[u8]) -> RequestHead {
    let Ok(text) = std::str::from_utf8(head) else {
        return RequestHead::Malformed;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None)
            if version.starts_with("HTTP/1.") && !method.is_empty() && target.starts_with('/') =>
        {
            let path = target.split('?').next().unwrap_or(target);
            RequestHead::Complete {
                method: method.to_owned(),
                path: path.to_owned(),
            }
        }
        _ => RequestHead::Malformed,
    }
}

/// The full HTTP/1.1 response (head and body) to `head`; `body` renders the exposition and is
/// called only for `GET /metrics`.
pub fn respond(head: &RequestHead, body: impl FnOnce() -> String) -> Vec<u8> {
    let (status, content_type, body) = match head {
        RequestHead::Complete { method, path } if method == "GET" && path == "/metrics" => {
            ("200 OK", CONTENT_TYPE, body())
        }
        RequestHead::Complete { .. } => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try GET /metrics\n".to_owned(),
        ),
        RequestHead::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "request head too large\n".to_owned(),
        ),
        RequestHead::Malformed | RequestHead::Incomplete => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Binds `addr` (the node's `metrics_listen`) and serves `registry` there until `shutdown`
/// turns true (or its sender is dropped); returns the bound address and the server task.
///
/// # Errors
/// [`MetricsError::Bind`] when the address cannot be bound.
pub async fn start(
    addr: &str,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((local, tokio::spawn(serve(listener, registry, shutdown))))
}

/// Serves `GET /metrics` on `listener`: one request per connection, at most
/// [`MAX_CONNECTIONS`] at once, each closed after its answer or after [`REQUEST_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        if *shutdown.borrow() {
            return;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            r = shutdown.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() { return; }
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request_head(&buf) {
            RequestHead::Incomplete => continue,
            other => break other,
        }
    };
    let response = respond(&head, || registry.render());
    stream.write_all(&response).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn render_writes_help_type_and_escaped_labels() {
        let f = Family::new("tandem_x", "A \\ help\nline", Kind::Gauge)
            .with(&[("group", "a\"b\\c\nd")], 1.5)
            .with(&[], f64::INFINITY);
        let text = render(&[f]);
        assert_eq!(
            text,
            "# HELP tandem_x A \\\\ help\\nline\n# TYPE tandem_x gauge\n\
             tandem_x{group=\"a\\\"b\\\\c\\nd\"} 1.5\ntandem_x +Inf\n"
        );
    }

    #[test]
    fn registry_renders_counters_gauges_and_cumulative_histogram_buckets() {
        let r = Registry::new();
        r.counter("c_total", "c", &[("k", "a")]).add(3);
        r.counter("c_total", "c", &[("k", "a")]).inc();
        r.gauge("g", "g", &[]).set(-2.5);
        let h = r.histogram("h_seconds", "h", &[0.1, 1.0], &[]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(0.5);
        h.observe(7.0);
        let exp = parse_text(&r.render()).unwrap();
        assert_eq!(exp.value("c_total", &[("k", "a")]), Some(4.0));
        assert_eq!(exp.value("g", &[]), Some(-2.5));
        assert_eq!(exp.value("h_seconds_bucket", &[("le", "0.1")]), Some(1.0));
        assert_eq!(exp.value("h_seconds_bucket", &[("le", "1")]), Some(3.0));
        assert_eq!(exp.value("h_seconds_bucket", &[("le", "+Inf")]), Some(4.0));
        assert_eq!(exp.value("h_seconds_count", &[]), Some(4.0));
        assert_eq!(exp.value("h_seconds_sum", &[]), Some(8.05));
        assert_eq!(exp.types.get("h_seconds"), Some(&Kind::Histogram));
        assert_eq!(exp.types.get("c_total"), Some(&Kind::Counter));
    }

    #[test]
    fn histogram_bucket_bound_is_inclusive() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(1.0);
        h.observe(2.0);
        h.observe(2.0001);
        let (b, _, count) = h.snapshot();
        assert_eq!(b, vec![(1.0, 1), (2.0, 2), (f64::INFINITY, 3)]);
        assert_eq!(count, 3);
    }

    #[test]
    fn collectors_are_called_at_every_scrape_and_merged_by_name() {
        let r = Registry::new();
        let n = Arc::new(AtomicU64::new(0));
        let n2 = n.clone();
        r.register_collector(move || {
            let v = n2.fetch_add(1, Ordering::SeqCst) as f64;
            vec![Family::new("live", "live", Kind::Gauge).with(&[("g", "x")], v)]
        });
        r.register_collector(|| {
            vec![Family::new("live", "live", Kind::Gauge).with(&[("g", "y")], 9.0)]
        });
        assert_eq!(
            parse_text(&r.render())
                .unwrap()
                .value("live", &[("g", "x")]),
            Some(0.0)
        );
        let exp = parse_text(&r.render()).unwrap();
        assert_eq!(exp.value("live", &[("g", "x")]), Some(1.0));
        assert_eq!(exp.value("live", &[("g", "y")]), Some(9.0));
        assert_eq!(r.render().matches("# TYPE live").count(), 1);
    }

    #[test]
    fn families_without_series_are_not_rendered() {
        let r = Registry::new();
        r.register_collector(|| vec![Family::new("nothing_yet", "n", Kind::Gauge)]);
        assert_eq!(r.render(), "");
    }

    #[test]
    #[should_panic(expected = "another type")]
    fn registering_a_name_with_two_types_is_a_programming_error() {
        let r = Registry::new();
        r.counter("x", "x", &[]);
        r.gauge("x", "x", &[]);
    }

    #[test]
    fn parse_rejects_malformed_lines_with_their_line_number() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok 1\n9bad 1\n", 2, "bad metric name"),
            ("a{b=\"c} 1\n", 1, "unterminated"),
            ("a{b=c} 1\n", 1, "not quoted"),
            ("a{1b=\"c\"} 1\n", 1, "bad label name"),
            ("a 1x\n", 1, "bad value"),
            ("a\n", 1, "without a value"),
            ("a{b=\"x\",b=\"y\"} 1\n", 1, "twice"),
            ("a 1\n# TYPE a gauge\n", 2, "after its samples"),
            ("# TYPE a gauge\n# TYPE a gauge\n", 2, "second TYPE"),
            ("# TYPE a widget\n", 1, "unknown type"),
            ("# TYPE h histogram\nh_bucket 1\n", 2, "le"),
            ("a{b=\"\\x\"} 1\n", 1, "bad escape"),
            ("a 1 2 3\n", 1, "trailing"),
            ("a 1 notatime\n", 1, "timestamp"),
        ];
        for (i, (text, line, what)) in cases.iter().enumerate() {
            match parse_text(text) {
                Err(MetricsError::Parse { line: l, reason }) => {
                    assert_eq!(l, *line, "#{i}: expect line {line}, got {l} ({reason})");
                    assert!(reason.contains(what), "#{i}: expect {what:?} in {reason:?}");
                }
                other => panic!("#{i}: expect a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn parse_accepts_timestamps_comments_and_special_values() {
        let exp = parse_text(
            "# a comment\n\n# TYPE a untyped\na{x=\"1\"} -Inf 1700000000000\nb NaN\nc 1e-3\n",
        )
        .unwrap();
        assert_eq!(exp.value("a", &[("x", "1")]), Some(f64::NEG_INFINITY));
        assert!(exp.value("b", &[]).unwrap().is_nan());
        assert_eq!(exp.value("c", &[]), Some(0.001));
    }

    #[test]
    fn request_head_parser_handles_partial_oversized_and_query() {
        assert_eq!(parse_request_head(b"GET /metr"), RequestHead::Incomplete);
        assert_eq!(
            parse_request_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            RequestHead::Complete {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            parse_request_head(b"GET /metrics HTTP/1.0\n\n"),
            RequestHead::Complete {
                method: "GET".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(
            parse_request_head(b"hello there\r\n\r\n"),
            RequestHead::Malformed
        );
        let big = vec![b'a'; MAX_REQUEST_HEAD + 1];
        assert_eq!(parse_request_head(&big), RequestHead::TooLarge);
    }

    #[test]
    fn respond_serves_metrics_only_on_get_metrics() {
        let get = |m: &str, p: &str| RequestHead::Complete {
            method: m.into(),
            path: p.into(),
        };
        let ok = String::from_utf8(respond(&get("GET", "/metrics"), || "a 1\n".into())).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(ok.contains("Content-Length: 4\r\n"));
        assert!(ok.ends_with("\r\n\r\na 1\n"));
        for head in [
            get("GET", "/"),
            get("POST", "/metrics"),
            get("GET", "/metricsx"),
        ] {
            let r = String::from_utf8(respond(&head, || panic!("rendered for {head:?}"))).unwrap();
            assert!(r.starts_with("HTTP/1.1 404"), "{head:?}: {r}");
        }
        let r = String::from_utf8(respond(&RequestHead::TooLarge, String::new)).unwrap();
        assert!(r.starts_with("HTTP/1.1 431"));
    }

    async fn http(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn server_answers_scrapes_and_closes_each_connection() {
        let r = Arc::new(Registry::new());
        r.counter("tandem_test_total", "t", &[("k", "v")]).add(7);
        let (tx, rx) = watch::channel(false);
        let (addr, task) = start("127.0.0.1:0", r.clone(), rx).await.unwrap();
        let reply = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let exp = parse_text(body).unwrap();
        assert_eq!(exp.value("tandem_test_total", &[("k", "v")]), Some(7.0));
        let reply = http(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD + 10));
        let reply = http(addr, &big).await;
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn start_reports_the_address_it_could_not_bind() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let (_tx, rx) = watch::channel(false);
        let err = start(&addr, Arc::new(Registry::new()), rx)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr), "{err}");
    }

    fn label_value() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\\'),
                Just('"'),
                Just('\n'),
                Just('x'),
                Just('é'),
                Just(' '),
                Just('}'),
                Just(',')
            ],
            0..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn parse_of_render_gives_back_every_sample(
            values in proptest::collection::vec((label_value(), -1e12f64..1e12), 1..8),
            help in label_value(),
        ) {
            let mut f = Family::new("tandem_prop", &help, Kind::Gauge);
            for (i, (lv, v)) in values.iter().enumerate() {
                f.push(&[("i", &i.to_string()), ("v", lv)], *v);
            }
            let exp = parse_text(&render(&[f.clone()])).unwrap();
            prop_assert_eq!(exp.samples, f.samples);
            prop_assert_eq!(exp.help.get("tandem_prop"), Some(&help));
        }
    }
}
